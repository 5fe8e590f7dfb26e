#!/usr/bin/env python3
"""dbqueue: a database-backed job queue and worker in one file.

One Python file, standard library only (CPython 3.8+). Copy it into your
project. Jobs live in a ``jobs`` table (Laravel-compatible columns) in SQLite,
the embedded default, or PostgreSQL, through whichever of ``psycopg`` (3) or
``psycopg2`` is installed, when you grow to many workers on many machines, or
MySQL 8 / MariaDB 10.6+, through PyMySQL or mysqlclient.

    import dbqueue

    @dbqueue.job("resize_image")
    def resize_image(data):
        ...                                    # raise dbqueue.PermanentError to give up

    q = dbqueue.Queue.from_env()               # QUEUE_DATABASE_URL, or sqlite:///dbqueue.sqlite3
    q.push("resize_image", {"path": "a.png"}, queue="default", delay=0)
    dbqueue.queue_template_email("ann@example.com", "verify_email",
                                 {"name": "Ann", "url": "https://example.com/v/1"})

    $ python3 dbqueue.py migrate                # PostgreSQL; SQLite creates its tables itself
    $ python3 dbqueue.py work --queue=emails,default --import myapp.jobs
    $ python3 dbqueue.py stats

Guarantees: at least once. A job is deleted only after its handler returns,
so a crash can run a handler twice; a job is never handed to two live workers
at once. ``python3 dbqueue.py --help`` lists every command.

Copyright (c) 2026 the dbqueue authors. MIT licence: use, copy, modify and
distribute freely; keep this notice; no warranty (full text in LICENSE and at
https://opensource.org/licenses/MIT).
"""

__version__ = "1.1.0"
__license__ = "MIT"
__all__ = [
    "Config",
    "ConfigError",
    "DatabaseError",
    "Job",
    "JobTimeout",
    "MissingTableError",
    "PermanentError",
    "Queue",
    "QueueError",
    "Worker",
    "current_job",
    "job",
    "main",
    "queue_email",
    "queue_template_email",
]

import os
import sys
import threading
import time

# Modules that only some commands need (sqlite3, argparse, smtplib, email,
# traceback, ...) are imported where they are used, so that `import dbqueue`
# in a web app costs almost nothing.


class _Lazy:
    """A module imported on its first use. json and re (with the enum,
    functools and collections they pull in) are 3/4 of what `import dbqueue`
    would cost a bare interpreter, and a producer may never need them."""

    def __init__(self, name):
        self.__name = name

    def __getattr__(self, attr):
        module = __import__(self.__name)
        globals()[self.__name] = module     # from now on the real module
        return getattr(module, attr)


class _Pattern:
    """A regular expression compiled on its first use (see _Lazy)."""

    def __init__(self, source):
        self.source = source

    def __getattr__(self, attr):      # called once per method: then it is an attribute
        compiled = self.__dict__.get("_compiled") or re.compile(self.source)
        self.__dict__["_compiled"] = compiled
        value = self.__dict__[attr] = getattr(compiled, attr)
        return value


json = _Lazy("json")
re = _Lazy("re")


###############################################################################
# Configuration ###############################################################
###############################################################################

_DEFAULT_URL = "sqlite:///dbqueue.sqlite3"
# \Z, not $: "$" also matches before a final newline ("emails\n" would pass).
_IDENT = _Pattern(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_QUEUE_NAME = _Pattern(r"^[A-Za-z0-9_.:\-]{1,100}\Z")


_ENV_KEY = _Pattern(r"^[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_ENV_REF = _Pattern(r"\$\{([A-Za-z0-9_.]+)\}")


def _read_env_file(path, required, environ=None):
    """Parse a .env file as Laravel's and CodeIgniter's readers do.

    Returns ({key: (value, line number)}, [warnings]). KEY=VALUE lines (spaces
    around = allowed, dotted CodeIgniter keys too), # comments, `export`,
    quotes. In unquoted and double-quoted values ${NAME} is NAME's value: the
    environment's (`environ`) if set, else an earlier line's; an unknown NAME
    becomes empty, with a warning. Single-quoted values are literal. Nothing
    else is evaluated. A line that is not KEY=VALUE is a warning naming it. A
    missing file is an error only when the user named it (`--env-file`).
    """
    environ = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8-sig") as fh:   # -sig: an editor's BOM is not part of a key
            lines = fh.read().splitlines()
    except FileNotFoundError:
        if required:
            raise ConfigError("--env-file %s: no such file" % path)
        return {}, []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read env file %s: %s" % (path, exc))
    values, warnings = {}, []

    def expand(text, where):
        def replace(match):
            name = match.group(1)
            if name in environ:
                return environ[name]
            if name in values:
                return values[name][0]
            warnings.append("%s: ${%s} is not set; it was replaced by nothing" % (where, name))
            return ""
        return _ENV_REF.sub(replace, text)

    for number, line in enumerate(lines, 1):
        where = "%s:%d" % (path, number)
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        key, equals, rest = line.partition("=")
        key, rest = key.strip(), rest.strip()
        if not equals or not _ENV_KEY.match(key):
            warnings.append("%s: not a KEY=VALUE line; ignored" % where)
            continue
        if rest[:1] in ("'", '"'):
            # Pieces of the value: (text, expand?). In double quotes \" and \\
            # stand for themselves and \$ is a literal $ that starts no ${NAME}.
            quote, pieces, chunk, i, closed = rest[0], [], [], 1, False
            while i < len(rest):
                ch = rest[i]
                if ch == quote:
                    closed = True
                    break
                if quote == '"' and ch == "\\" and rest[i + 1:i + 2] in ('"', "\\", "$"):
                    if rest[i + 1] == "$":
                        pieces += [("".join(chunk), True), ("$", False)]
                        chunk = []
                    else:
                        chunk.append(rest[i + 1])
                    i += 2
                    continue
                chunk.append(ch)
                i += 1
            pieces.append(("".join(chunk), quote == '"'))
            after = rest[i + 1:].strip()
            if not closed:
                warnings.append("%s: %s has no closing %s quote; ignored" % (where, key, quote))
                continue
            if after and not after.startswith("#"):
                warnings.append("%s: text after the closing quote of %s is ignored" % (where, key))
            value = "".join(expand(text, where) if live else text for text, live in pieces)
        else:
            # A comment starts at a # after whitespace: a#b is a value.
            value = re.split(r"\s#", rest, maxsplit=1)[0].rstrip()
            value = expand(value, where)
        values[key] = (value, number)
    return values, warnings


def _userinfo(url):
    """(start, colon, at): where the user:password part of a database URL lies
    (colon None when there is no password), or None when there is none.

    The one place that decides where the password is, for the parsers (the
    MySQL arguments, the URL handed to libpq) and for every mask: the user
    ends at the first ":", the password at the last "@" before the query. So
    a password pasted with "@", ":", "/", "#" or "?" in it is read whole, never
    half read as the host, and hidden whole. A "?" followed by an "@" before
    any "=" or "&" is the password's, not a query's (libpq reads it so).
    """
    start = url.find("://") + 3
    if start < 3:
        return None
    query = re.compile(r"\?(?![^=&]*@)").search(url, start)
    at = url.rfind("@", start, query.start() if query else len(url))
    if at < 0:
        return None
    colon = url.find(":", start, at)
    if "/" in url[start:at if colon < 0 else colon]:
        return None    # an "@" in the path (postgresql://host/db@x): no user
    return start, (None if colon < 0 else colon), at


def _mask_url(url):
    """The URL with its password replaced by ***, for logs and errors; in a
    longer text (a driver's message), every URL in it.

    libpq also takes the password as a query parameter (?password=..., and
    sslpassword=... for a client key): both are masked.
    """
    def hide(found):
        info = _userinfo(found)
        if info is None or info[1] is None:
            return found
        return found[:info[1] + 1] + "***" + found[info[2]:]
    url = url or ""
    # A URL alone is masked whole, a space in its password included; then
    # each URL in the text, which ends where the next one's scheme begins
    # ('sqlite:///x','postgresql://...'; ?target=postgresql://...).
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^\n]*\Z", url):
        url = hide(url)
    masked = re.sub(r"://(?:(?![A-Za-z][A-Za-z0-9+.-]{0,15}://)\S)*",
                    lambda match: hide(match.group(0)), url)
    masked = re.sub(r"(\b(?:ssl)?password\s*=\s*)[^&#\s]*", r"\1***", masked, flags=re.IGNORECASE)
    return masked


def _command(config, words):
    """A dbqueue command line to suggest, with the --database-url it was given
    (masked): without it the command would reach another database."""
    flag = ""
    if config.sources.get("QUEUE_DATABASE_URL") == "--database-url":
        flag = " --database-url '%s'" % _mask_url(config.database_url)
    return "python3 dbqueue.py %s%s" % (words, flag)


def _without_password(text, url):
    """`text` (a driver's message) without the password of `url`, raw or decoded.

    libpq quotes parts of a URL it cannot parse, a bad %-escape in the password
    included, so masking the URL alone is not enough.
    """
    from urllib.parse import unquote
    info = _userinfo(url or "")
    secrets = []
    if info and info[1] is not None and info[2] > info[1] + 1:
        secrets = [url[info[1] + 1:info[2]], unquote(url[info[1] + 1:info[2]])]
    match = re.search(r"\b(?:ssl)?password\s*=\s*([^&#\s]+)", url or "", re.IGNORECASE)
    if match:
        secrets.append(match.group(1))
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _mask_url(text)


# A CodeIgniter 4 app's .env names, read where dbqueue's own is unset:
# dbqueue's name -> (CodeIgniter's name, {its value: ours}).
_CODEIGNITER_NAMES = {
    "MAIL_MAILER": ("EMAIL_PROVIDER", {"none": "log"}),
    "MAIL_HOST": ("EMAIL_SMTP_HOST", {}),
    "MAIL_PORT": ("EMAIL_SMTP_PORT", {}),
    "MAIL_USERNAME": ("EMAIL_SMTP_USER", {}),
    "MAIL_PASSWORD": ("EMAIL_SMTP_PASS", {}),
    "MAIL_ENCRYPTION": ("EMAIL_SMTP_CRYPTO", {}),
    "MAIL_FROM_ADDRESS": ("EMAIL_FROM_ADDRESS", {}),
    "MAIL_FROM_NAME": ("EMAIL_FROM_NAME", {}),
}
# database.default.DBDriver -> URL scheme. CodeIgniter's own default is MySQLi.
_CODEIGNITER_DRIVERS = {"mysqli": "mysql", "postgre": "postgresql", "sqlite3": "sqlite"}
_CODEIGNITER_DB = tuple("database.default." + k for k in (
    "DBDriver", "hostname", "port", "database", "username", "password", "DBPrefix"))
# Read by other parts of dbqueue: known names for the typo check.
_OTHER_NAMES = ("DATABASE_URL",)
_SECRET_NAME = _Pattern(r"(PASSWORD|PASS|SECRET|TOKEN)\Z")


def _one_edit_apart(a, b):
    """True when b is a with one letter added, dropped, changed or two swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1:] == b[i + 1:] or (a[i:i + 2] == b[i:i + 2][::-1] and a[i + 2:] == b[i + 2:])
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1:] == shorter[i:]


def _codeigniter_url(find, env_path):
    """(url, source) from the CodeIgniter database.default.* settings, or None."""
    from urllib.parse import quote
    value = {}
    where = None
    for name in _CODEIGNITER_DB:
        raw, source = find(name)
        value[name.rpartition(".")[2]] = raw if raw is not None else ""
        if raw is not None and where is None and name.endswith(("DBDriver", "database")):
            where = source
    driver, database = value["DBDriver"].strip(), value["database"].strip()
    if not driver and not database:
        return None
    source = "derived from database.default.* (%s)" % where
    scheme = _CODEIGNITER_DRIVERS.get((driver or "MySQLi").lower())
    if scheme is None:
        raise ConfigError("database.default.DBDriver=%s (%s) is not one dbqueue supports (MySQLi,"
                          " Postgre or SQLite3): set QUEUE_DATABASE_URL" % (driver, where))
    if not database:
        raise ConfigError("database.default.database is empty (%s): name the database, or set"
                          " QUEUE_DATABASE_URL" % where)
    if scheme == "sqlite":
        # As CodeIgniter resolves it: a relative file lives in writable/.
        if not os.path.isabs(database):
            database = os.path.join(os.path.dirname(os.path.abspath(env_path)), "writable",
                                    database)
        return "sqlite:///" + database, source
    host, port, user = value["hostname"].strip(), value["port"].strip(), value["username"].strip()
    if port and not port.isdigit():
        raise ConfigError("database.default.port=%s is not a port number" % port)
    if ":" in host and not host.startswith("["):
        host = "[%s]" % host     # an IPv6 address
    auth = ""
    if user or value["password"]:
        auth = quote(user, safe="")
        if value["password"]:
            auth += ":" + quote(value["password"], safe="")
        auth += "@"
    return ("%s://%s%s%s/%s" % (scheme, auth, host, ":" + port if port else "",
                                quote(database, safe="")), source)


class Config:
    """Validated settings. `Config.from_env()` reads them; every field has a default.

    Bad values raise `ConfigError` with one line that names the variable.
    After from_env(), `sources` maps each setting's name (QUEUE_TIMEOUT) to
    where its value came from (environment, FILE:LINE, derived, default) and
    `warnings` lists what looked wrong but was not fatal (a likely typo).
    """

    def __init__(self, **settings):
        self.driver = "database"
        self.database_url = _DEFAULT_URL
        self.listen_url = ""          # PostgreSQL behind a pooler: the server itself, for LISTEN
        self.max_attempts = 3
        self.retry_after = 90
        self.backoff = [10, 60, 300]
        self.timeout = 60
        self.table = "jobs"
        self.failed_table = "failed_jobs"
        self.mail_mailer = "smtp"
        self.mail_host = "localhost"
        self.mail_port = 25
        self.mail_username = ""
        self.mail_password = ""
        self.mail_encryption = "none"
        self.mail_from_address = "no-reply@localhost"
        self.mail_from_name = ""
        self.mail_timeout = 30
        self.mail_verify_peer = True
        self.mail_template_dir = ""
        self.mail_ehlo_domain = ""     # empty: the host's name, made ASCII (_ehlo_name)
        self.mail_rate_limit = ""     # "14/s", "600/m", "10000/h", "50000/d", "14/s,50000/d"
        self.mail_template_validity = ""   # "password-reset=2h,invitation=0": over _VALIDITY
        self.mail_log_days = 14       # days the sent log (dbqueue_sent) keeps; 0: no log
        self.mail_sendmail_path = "/usr/sbin/sendmail -t -i"
        self.app_name = ""
        self.dashboard_token = ""     # DBQUEUE_DASHBOARD_TOKEN; checked by the dashboard command
        self.sources = {}
        self.warnings = []
        for name, value in settings.items():
            if not hasattr(self, name):
                raise TypeError("Config has no setting %r" % name)
            setattr(self, name, value)

    def __repr__(self):
        shown = dict(vars(self))
        del shown["sources"], shown["warnings"]
        shown["database_url"] = _mask_url(self.database_url)
        shown["listen_url"] = _mask_url(self.listen_url)
        for secret in ("mail_password", "dashboard_token"):
            if shown[secret]:
                shown[secret] = "***"
        return "Config(%s)" % ", ".join("%s=%r" % kv for kv in sorted(shown.items()))

    @classmethod
    def from_env(cls, environ=None, env_file=None, database_url=None):
        """Settings from `environ` (default os.environ) over a .env file.

        The .env file in the working directory is read unless `env_file` names
        another; it never overrides a variable that is already set. Where
        dbqueue's own name is unset, the CodeIgniter app's is read (see the
        README). `database_url` (the --database-url flag) wins over both.
        """
        environ = os.environ if environ is None else environ
        path = env_file or ".env"
        file_values, warnings = _read_env_file(path, required=bool(env_file), environ=environ)
        c = cls()
        c.warnings = warnings
        env = _Env(environ, file_values, path, c.sources)
        c._read_queue(env, database_url)
        c._read_mail(env)
        c.app_name = env.get("APP_NAME")
        c.dashboard_token = env.get("DBQUEUE_DASHBOARD_TOKEN")
        typos = _typos(environ, file_values, path, c.sources)
        for var, where, meant in typos:
            if (meant in ("QUEUE_DATABASE_URL", "DATABASE_URL")
                    and c.sources["QUEUE_DATABASE_URL"] == "default"):
                # Carrying on would put the jobs in a new SQLite file that no
                # worker of the real database reads.
                raise ConfigError("%s is set (%s) but dbqueue reads %s, and no database URL is"
                                  " set: rename it (or set QUEUE_DATABASE_URL=%s to use that"
                                  " file on purpose)" % (var, where, meant, _DEFAULT_URL))
        c.warnings += ["%s is set (%s) but dbqueue does not read it: did you mean %s?" % typo
                       for typo in typos]
        return c

    def _read_queue(self, env, database_url):
        """The database, the tables and the worker's defaults."""
        driver = env.get("QUEUE_DRIVER", "database").lower()
        if driver != "database":
            raise ConfigError(
                "QUEUE_DRIVER=%s is not supported: dbqueue only has the 'database' driver"
                " (set QUEUE_DRIVER=database or remove it)" % driver)
        self.database_url, self.sources["QUEUE_DATABASE_URL"] = _database_url(
            env.find, env.path, database_url)
        self.listen_url = env.get("QUEUE_LISTEN_URL")
        _listen_target(self.listen_url, _parse_url(self.database_url)[0])
        self.max_attempts = _int_setting("QUEUE_MAX_ATTEMPTS", env.get("QUEUE_MAX_ATTEMPTS", "3"),
                                         1, _MAX_TRIES)
        self.retry_after = _int_setting("QUEUE_RETRY_AFTER", env.get("QUEUE_RETRY_AFTER", "90"),
                                        1, _MAX_SECONDS)
        self.backoff = _backoff_setting("QUEUE_BACKOFF", env.get("QUEUE_BACKOFF", "10,60,300"))
        self.timeout = _int_setting("QUEUE_TIMEOUT", env.get("QUEUE_TIMEOUT", "60"), 0,
                                    _MAX_SECONDS)
        prefix, prefix_source = env.find("database.default.DBPrefix")
        prefix = (prefix or "").strip()
        for setting, table in (("QUEUE_TABLE", "jobs"), ("QUEUE_FAILED_TABLE", "failed_jobs")):
            value = env.get(setting, table)
            label = setting
            if prefix and self.sources[setting] == "default":
                # CodeIgniter puts DBPrefix before every table name. The prefix
                # is checked first, so an error names what was written.
                if not re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", prefix):
                    raise ConfigError("database.default.DBPrefix=%s (%s) is not a plain table"
                                      " name prefix (letters, digits and _, not starting with a"
                                      " digit)" % (prefix, prefix_source))
                if not _IDENT.match(prefix + table):
                    raise ConfigError("database.default.DBPrefix=%s (%s) makes the table name %s%s"
                                      " longer than 63 characters" % (prefix, prefix_source,
                                                                      prefix, table))
                value, label = prefix + table, "database.default.DBPrefix"
                self.sources[setting] = ("derived from database.default.DBPrefix (%s)"
                                         % prefix_source)
            setattr(self, "table" if table == "jobs" else "failed_table",
                    _ident_setting(label, value))

    def _read_mail(self, env):
        """How email leaves: the mailer, its server, the sender, the limits."""
        self.mail_mailer = _choice_setting(env.name("MAIL_MAILER"),
                                           env.get("MAIL_MAILER", "smtp").lower(),
                                           ("smtp", "sendmail", "log"))
        self.mail_host = env.get("MAIL_HOST", "localhost")
        self.mail_port = _int_setting(env.name("MAIL_PORT"), env.get("MAIL_PORT", "25"), 1, 65535)
        self.mail_username = env.get("MAIL_USERNAME")
        password, self.sources["MAIL_PASSWORD"], _ = env.lookup("MAIL_PASSWORD")
        self.mail_password = password or ""      # as written: a password may end in a space
        if self.mail_mailer == "smtp":
            # smtplib writes AUTH in ASCII: found at the first send, this would
            # be every email failing. The password itself is never shown.
            if not self.mail_username.isascii():
                raise ConfigError("%s=%s holds characters that are not ASCII: SMTP AUTH in"
                                  " smtplib cannot send them" % (env.name("MAIL_USERNAME"),
                                                                 self.mail_username))
            if not self.mail_password.isascii():
                raise ConfigError("%s holds characters that are not ASCII: SMTP AUTH in smtplib"
                                  " cannot send them (the value is not shown)"
                                  % env.name("MAIL_PASSWORD"))
        encryption = env.get("MAIL_ENCRYPTION", "none").lower()
        encryption = {"tls": "starttls", "": "none", "null": "none"}.get(encryption, encryption)
        self.mail_encryption = _choice_setting(env.name("MAIL_ENCRYPTION"), encryption,
                                               ("none", "starttls", "ssl"))
        self.mail_from_address = env.get("MAIL_FROM_ADDRESS", "no-reply@localhost")
        try:
            # The mail code's own check: found there, it would fail every email.
            _addresses(env.name("MAIL_FROM_ADDRESS"), self.mail_from_address, required=True)
        except PermanentError:
            shown = self.mail_from_address
            raise ConfigError("%s=%s is not one email address dbqueue can send from (such as"
                              " app@example.com or Acme <app@example.com>)"
                              % (env.name("MAIL_FROM_ADDRESS"),
                                 shown if shown.isprintable() else repr(shown)))
        self.mail_from_name = env.get("MAIL_FROM_NAME")
        self.mail_timeout = _int_setting("MAIL_TIMEOUT", env.get("MAIL_TIMEOUT", "30"), 1)
        self.mail_verify_peer = _bool_setting("MAIL_VERIFY_PEER",
                                              env.get("MAIL_VERIFY_PEER", "true"))
        self.mail_template_dir = env.get("MAIL_TEMPLATE_DIR")
        self.mail_ehlo_domain = _ehlo_setting("MAIL_EHLO_DOMAIN", env.get("MAIL_EHLO_DOMAIN"))
        if self.mail_template_dir and not os.path.isdir(self.mail_template_dir):
            # Found late, this would be every templated email failing as unknown.
            raise ConfigError("%s=%s is not a folder (no such directory)"
                              % (env.name("MAIL_TEMPLATE_DIR"), self.mail_template_dir))
        self.mail_sendmail_path = env.get("MAIL_SENDMAIL_PATH", "/usr/sbin/sendmail -t -i")
        try:
            if self.mail_mailer == "sendmail" and not _split_command(self.mail_sendmail_path):
                raise ValueError("no program")
        except ValueError as exc:
            raise ConfigError("%s=%s cannot be read as a command: %s"
                              % (env.name("MAIL_SENDMAIL_PATH"), self.mail_sendmail_path, exc))
        self.mail_rate_limit = _rate_setting("MAIL_RATE_LIMIT", env.get("MAIL_RATE_LIMIT"))
        self.mail_template_validity = _validity_setting("MAIL_TEMPLATE_VALIDITY",
                                                        env.get("MAIL_TEMPLATE_VALIDITY"))
        self.mail_log_days = _int_setting("MAIL_LOG_DAYS", env.get("MAIL_LOG_DAYS", "14"), 0,
                                          _MAX_LOG_DAYS)


class _Env:
    """The variables Config.from_env reads: the environment over the .env
    file at `path`, dbqueue's names over the CodeIgniter app's. Each setting
    read records where its value came from in `sources`."""

    def __init__(self, environ, file_values, path, sources):
        self.environ, self.file_values, self.path = environ, file_values, path
        self.sources = sources

    def find(self, name):
        """(value, source) of one variable as set, or (None, None)."""
        # A shell cannot export a dotted name: CodeIgniter also reads
        # database_default_hostname for database.default.hostname.
        for key in (name, name.replace(".", "_")) if "." in name else (name,):
            if key in self.environ:
                return self.environ[key], "environment" if key == name else "environment (%s)" % key
            if key in self.file_values:
                value, line = self.file_values[key]
                return value, "%s:%d" % (self.path, line)
        return None, None

    def lookup(self, name):
        """(value, source, variable): dbqueue's name, else CodeIgniter's."""
        ours = [(name, {})]
        if name in _CODEIGNITER_NAMES:
            ours.append(_CODEIGNITER_NAMES[name])
        for key, meaning in ours:
            value, source = self.find(key)
            if value is not None and value.strip():
                if key != name:
                    value = meaning.get(value.strip().lower(), value)
                    source = "%s (%s)" % (source, key)
                return value, source, key
        return None, "default", name

    def name(self, setting):
        """The variable a setting's value came from, for error messages."""
        return self.lookup(setting)[2]

    def get(self, setting, default=""):
        value, source, _ = self.lookup(setting)
        self.sources[setting] = source
        return default if value is None else value.strip()




def _database_url(find, env_path, flag):
    """(url, source) of the database: --database-url, QUEUE_DATABASE_URL,
    DATABASE_URL, the CodeIgniter database.default.*, the default. Checked
    here, and an error names where the URL came from."""
    if flag is not None:
        url, source, origin = flag, "--database-url", "--database-url"
    else:
        for var in ("QUEUE_DATABASE_URL", "DATABASE_URL"):
            url, where = find(var)
            if url is not None:
                origin = var if where == "environment" else "%s in %s" % (var, where)
                source = where if var == "QUEUE_DATABASE_URL" else "%s (%s)" % (where, var)
                break
        else:
            derived = _codeigniter_url(find, env_path)
            if derived is None:
                return _DEFAULT_URL, "default"
            url, source = derived
            origin = "the URL " + source
    url = url.strip()
    if not url:
        raise ConfigError("%s is empty: give a database URL (sqlite:///dbqueue.sqlite3,"
                          " postgresql://user@host/db), or remove it" % origin)
    _parse_url(url, origin)
    return url, source


def _listen_target(url, dialect):
    """The connect target of QUEUE_LISTEN_URL, or None when it is unset.

    Behind a transaction-mode pooler LISTEN hears nothing (each transaction
    may run on another server session): idle workers poll, or LISTEN on one
    direct connection to the server this URL names.
    """
    if not url:
        return None
    listen, target, _ = _parse_url(url, "QUEUE_LISTEN_URL")
    if listen is not _Postgres or dialect is not _Postgres:
        raise ConfigError("QUEUE_LISTEN_URL=%s: LISTEN is PostgreSQL's; it needs a postgresql://"
                          " URL beside a PostgreSQL database URL" % _mask_url(url))
    if target["pooled"]:
        raise ConfigError("QUEUE_LISTEN_URL=%s goes through the pooler: name the PostgreSQL"
                          " server itself" % _mask_url(url))
    return target


def _typos(environ, file_values, env_path, sources):
    """(name, where, the setting meant) per set variable whose name is one edit
    away from a setting's."""
    known = set(sources) | set(_CODEIGNITER_DB) | set(_OTHER_NAMES)
    known.update(alias for alias, _ in _CODEIGNITER_NAMES.values())
    known.update(n.replace(".", "_") for n in _CODEIGNITER_DB)
    by_upper = {}
    for k in known:
        by_upper.setdefault(k.upper(), k)
    warnings = []
    seen = set()
    given = [(k, "environment") for k in environ]
    given += [(k, "%s:%d" % (env_path, line)) for k, (_, line) in file_values.items()]
    candidates = sorted(by_upper)
    for var, where in given:
        if var in known or var in seen:
            continue
        upper = var.upper()
        match = by_upper.get(upper)      # the right name in the wrong case
        if match is None:
            for candidate in candidates:
                if _one_edit_apart(upper, candidate):
                    match = by_upper[candidate]
                    break
        if match is not None:
            seen.add(var)
            warnings.append((var, where, match))
    return warnings


def _int_setting(name, value, minimum, maximum=None):
    try:
        number = int(str(value).strip())
    except ValueError:
        try:
            too_large = maximum is not None and float(str(value).strip()) > maximum
        except ValueError:
            too_large = False
        if too_large:
            raise ConfigError("%s=%s is too large: at most %d" % (name, value, maximum))
        raise ConfigError("%s=%s is not a whole number" % (name, value))
    if number < minimum or (maximum is not None and number > maximum):
        bound = ">= %d" % minimum if maximum is None else "from %d to %d" % (minimum, maximum)
        raise ConfigError("%s=%s must be %s" % (name, value, bound))
    return number


# Upper bounds for seconds and attempts: a value past them is a mistake, and
# would overflow the database's integers after the job had already run.
_MAX_SECONDS = 10 * 365 * 24 * 3600
_MAX_TRIES = 1000000
_MAX_CONCURRENCY = 1024     # work --concurrency: threads in one process
# MAIL_LOG_DAYS: ten years, so that "now - the log's age" stays positive (an
# unsigned subtraction below zero is an error on MySQL).
_MAX_LOG_DAYS = 3650


def _backoff_setting(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ConfigError("%s=%r must be seconds separated by commas, such as 10,60,300" % (name, value))
    parts = [p.strip() for p in value.split(",")]
    try:
        delays = [int(p) for p in parts]
    except ValueError:
        raise ConfigError("%s=%s must be seconds separated by commas, such as 10,60,300" % (name, value))
    if not delays or any(d < 0 or d > _MAX_SECONDS for d in delays):
        raise ConfigError("%s=%s must be seconds from 0 to %d separated by commas"
                          % (name, value, _MAX_SECONDS))
    return delays


_RATE = _Pattern(r"^[ \t]*([0-9]{1,7})[ \t]*/[ \t]*([smhd])[ \t]*\Z")
_RATE_WINDOWS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE_UNITS = {seconds: unit for unit, seconds in _RATE_WINDOWS.items()}
# A window of a minute or more is counted in this many slices (Queue.rate_take).
# The slice of a minute is 2 s, so a slice's number (unix ms over its
# length) fits the slot column's INTEGER until 2106.
_RATE_BUCKETS = 30


def _rate_setting(name, value):
    """A rate limit such as "14/s,50000/d" as written (normalised), or "" for none."""
    if value is None or not str(value).strip():
        return ""
    windows = []
    for part in str(value).split(","):
        match = _RATE.match(part)
        if not match or int(match.group(1)) < 1:
            raise ConfigError("%s=%s must be a number of messages per second, minute, hour or day,"
                              " such as 14/s, 600/m, 10000/h or 50000/d, or several separated by"
                              " commas such as 14/s,50000/d (empty for no limit)" % (name, value))
        if any(w.endswith("/" + match.group(2)) for w in windows):
            raise ConfigError("%s=%s gives the /%s window twice: give each of s, m, h and d at"
                              " most once" % (name, value, match.group(2)))
        windows.append("%d/%s" % (int(match.group(1)), match.group(2)))
    return ",".join(windows)


def _rate_limit(text):
    """[(messages, window in seconds), ...] of a MAIL_RATE_LIMIT value,
    shortest window first, or None for none."""
    text = _rate_setting("MAIL_RATE_LIMIT", text)
    if not text:
        return None
    windows = [(int(count), _RATE_WINDOWS[unit])
               for count, unit in (w.split("/") for w in text.split(","))]
    return sorted(windows, key=lambda window: window[1])


# How long the built-in templates' mail is worth sending, counted from the
# job's creation: what their text tells the reader (a reset link "expires in
# 60 minutes"). MAIL_TEMPLATE_VALIDITY changes them; 0 means no deadline.
_VALIDITY = {"password_reset": 3600, "password-reset": 3600, "verify_email": 86400,
             "verification": 86400, "invitation": 259200}
_DURATION = _Pattern(r"^[ \t]*([0-9]{1,9})[ \t]*([smhd]?)[ \t]*\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_seconds(text):
    """Seconds from a duration such as 90, 90s, 30m, 2h or 7d; None when it is not one."""
    match = _DURATION.match(text or "")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else None


def _validity_setting(name, value):
    """MAIL_TEMPLATE_VALIDITY as written (normalised to seconds), or "" for the defaults."""
    if not (value or "").strip():
        return ""
    pairs = []
    for part in value.split(","):
        template, _, duration = part.partition("=")
        seconds = _duration_seconds(duration)
        if (not _TEMPLATE_NAME.match(template.strip()) or seconds is None
                or seconds > _MAX_SECONDS):
            raise ConfigError("%s=%s must be TEMPLATE=DURATION pairs separated by commas, such"
                              " as password-reset=2h,invitation=0 (s, m, h or d; 0 for no"
                              " deadline)" % (name, value))
        pairs.append("%s=%d" % (template.strip(), seconds))
    return ",".join(pairs)


def _validities(setting, _parsed={}):
    """{template: seconds} of a MAIL_TEMPLATE_VALIDITY value over the defaults."""
    table = _parsed.get(setting)
    if table is None:
        table = dict(_VALIDITY)
        for pair in filter(None, _validity_setting("MAIL_TEMPLATE_VALIDITY", setting).split(",")):
            template, _, seconds = pair.partition("=")
            table[template] = int(seconds)
        if len(_parsed) < 100:
            _parsed[setting] = table
    return table


def _ident_setting(name, value):
    if not _IDENT.match(value):
        raise ConfigError("%s=%s is not a plain identifier (letters, digits and _, not starting"
                          " with a digit, at most 63)" % (name, value))
    return value


def _choice_setting(name, value, choices):
    if value not in choices:
        raise ConfigError("%s=%s must be one of: %s" % (name, value, ", ".join(choices)))
    return value


def _bool_setting(name, value):
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError("%s=%s must be true or false" % (name, value))


def _ehlo_setting(name, value):
    """MAIL_EHLO_DOMAIN: a host name (an internationalised one as IDNA) or an
    address literal such as [192.0.2.1]; empty means the host's own name."""
    if not value:
        return ""
    ascii_name = _ascii_host(value)
    if ascii_name is None:
        raise ConfigError("%s=%s is not a host name (such as mail.example.com) or an address"
                          " literal (such as [192.0.2.1])" % (name, value))
    return ascii_name


def _ascii_host(name):
    """`name` as an ASCII host name for EHLO (IDNA for other scripts), or None.

    smtplib writes commands in ASCII: a host named "bücher-pc" would make
    every EHLO fail with UnicodeEncodeError.
    """
    if re.match(r"^\[(?:IPv6:)?[0-9A-Fa-f:.]{2,45}\]\Z", name):
        return name
    try:
        ascii_name = name.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not re.match(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z", ascii_name):
        return None
    return ascii_name if len(ascii_name) <= 253 else None


def _queue_name(name):
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        raise ValueError("queue name %r must be 1-100 letters, digits, '_', '-', '.' or ':'"
                         % (name,))
    return name


# A unique key is any text the app builds ("verify:ann@example.com") that
# jobs.unique_key (VARCHAR(255)) holds, without control characters: keys
# are shown in logs and on the dashboard.
_UNIQUE_KEY = _Pattern(r"^[^\x00-\x1f\x7f-\x9f]{1,255}\Z")


def _unique_key(key):
    if not isinstance(key, str) or not _UNIQUE_KEY.match(key):
        shown = "a string of %d characters" % len(key) if isinstance(key, str) and len(
            key) > 255 else repr(key)
        raise ValueError("unique_key must be a non-empty string of at most 255 characters"
                         " without control characters, not %s" % shown)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("unique_key %r is not valid text (a lone surrogate)" % (key,))
    return key


def _decode_payload(raw):
    """(value, None) for a payload's JSON (text or bytes), or (None, why) when
    it cannot be read: the worker, `failed` and the dashboard all read
    payloads that anyone may have written, and one row must never break them."""
    try:
        return json.loads(raw), None
    except UnicodeDecodeError:
        return None, "payload is not valid UTF-8"
    except ValueError as exc:
        return None, "payload is not valid JSON: %s" % exc
    except RecursionError:
        # [[[[... a hundred thousand deep: json's decoder recurses per level.
        return None, "payload is JSON nested too deeply to read"
    except TypeError:
        return None, "payload is not text"


def _payload_unique_key(payload):
    """The unique key a payload (JSON text) was pushed with, or None."""
    decoded, _ = _decode_payload(payload)
    try:
        key = decoded.get("uniqueKey")
        return _unique_key(key) if key is not None else None
    except (ValueError, AttributeError):
        return None   # a payload dbqueue did not write: retried without a key


def _parse_url(url, origin="QUEUE_DATABASE_URL"):
    """(dialect class, target, driver name) for a database URL; ConfigError if unknown.

    `origin` says where the URL came from (--database-url, QUEUE_DATABASE_URL
    in .env:3, ...): every error names it.
    """
    if "://" not in url:
        scheme, colon, path = url.partition(":")
        base = scheme.lower().partition("+")[0]
        if colon and base in ("sqlite", "postgresql", "postgres", "mysql", "mariadb"):
            # postgresql:/db would be a SQLite file of that name: say what was meant.
            rest = path if base == "sqlite" else path.lstrip("/")
            meant = "%s://%s%s" % (scheme, "" if "@" in rest else "/", rest)
            raise ConfigError("%s: not a database URL (the // after %s: is missing): did you"
                              " mean %s?" % (origin, scheme, _mask_url(meant)))
        looks_like_file = "/" in url or url.lower().endswith((".db", ".sqlite", ".sqlite3"))
        if not looks_like_file or "=" in url or url != url.strip():
            # A typo, a libpq keyword string ("dbname=app password=…"): not a
            # file name. Treating it as one would create a stray SQLite database.
            raise ConfigError("%s: %r is not a database URL (sqlite:///path.db,"
                              " postgresql://user@host/db); a value without a scheme is a SQLite"
                              " file only when it holds a / or ends in .db, .sqlite or .sqlite3"
                              % (origin, _mask_url(url)))
        # A bare path is a SQLite file: friendly for scripts and tests.
        return _SQLite, url, None
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:":
            raise ConfigError("%s: %s: SQLite needs a file (sqlite:///path.db);"
                              " an in-memory database cannot be shared with the worker"
                              % (origin, url))
        return _SQLite, path, None
    base, _, driver = scheme.partition("+")
    if base in ("postgresql", "postgres"):
        if driver not in ("", "psycopg", "psycopg2"):
            raise ConfigError("%s: unknown PostgreSQL driver %r (psycopg or psycopg2)"
                              % (origin, driver))
        target = "postgresql://" + rest
        info = _userinfo(target)
        if info:
            # libpq ends the user:password at the first "@", and sees none
            # past a "/": those are encoded, so that it reads what _userinfo
            # does; a "?" too, so that parse finds the query where it begins.
            start, _, at = info
            target = (target[:start] + target[start:at].replace("@", "%40").replace("/", "%2F")
                      .replace("?", "%3F") + target[at:])
        return _Postgres, _Postgres.parse(target, origin), driver or None
    if base in ("mysql", "mariadb"):
        if driver not in ("", "pymysql", "mysqldb"):
            raise ConfigError("%s: unknown MySQL driver %r (pymysql or mysqldb)" % (origin, driver))
        return (_MySQL, _MySQL.parse(rest, origin),
                {"pymysql": "pymysql", "mysqldb": "MySQLdb"}.get(driver))
    raise ConfigError("%s: unknown scheme %r in %s (use sqlite:///path.db,"
                      " postgresql://user@host/db or mysql://user@host/db)"
                      % (origin, scheme, _mask_url(url)))


###############################################################################
# Exceptions ##################################################################
###############################################################################

class QueueError(Exception):
    """The root of every error dbqueue raises on purpose."""


class ConfigError(QueueError):
    """A bad setting or flag: the command line exits 2 before touching the database."""


class DatabaseError(QueueError):
    """The database failed or went away.

    `transient` is true for a lost connection or a lock (the worker waits those
    out with backoff) and false for an error that retrying cannot cure.
    """

    def __init__(self, message, transient=True, conflict=False):
        super().__init__(message)
        self.transient = transient
        # A deadlock or lock-wait timeout (MySQL): the transaction was rolled
        # back and is run again at once, never reported as an outage.
        self.conflict = conflict


class MissingTableError(DatabaseError):
    """The queue tables do not exist (run `python3 dbqueue.py migrate`)."""


class PermanentError(QueueError):
    """Raise from a handler to fail the job at once, without retries."""


class JobTimeout(BaseException):
    """Raised inside a handler that ran past its timeout.

    It derives from BaseException so that a handler's `except Exception` does
    not swallow it; a handler that swallows it anyway still counts as timed out.
    """


class _Abort(BaseException):
    """A second SIGINT: stop the running handler now and release its job."""


class _MailOutage(QueueError):
    """The mail server cannot take mail at all (down, refusing us, rejecting
    our login): not the fault of the message in hand. The worker gives the job
    back without spending an attempt and pauses the queue (Worker._mail_outage)."""


###############################################################################
# SQL #########################################################################
###############################################################################

_FAILED_COLUMNS = "id, uuid, {queue_text}, {payload_text}, exception, failed_at"
# The one INSERT that moves a job to failed_jobs, for the job a worker holds
# (its token) or, with _WAITING, for one no worker runs: cancelled, or past
# its deadline. failed_at is written, not left to a default: the CodeIgniter
# app's failed_jobs.failed_at is a DATETIME NOT NULL without one (its PHP
# code writes the time itself), in UTC (see _Dialect.failed_now). ({j} is
# MySQL's alias.)
_FAIL = ("INSERT INTO {failed} (uuid, connection, queue, payload, exception, failed_at)"
         " SELECT :uuid, 'database', {j}queue, COALESCE(:payload, {j}payload), :exception,"
         " {failed_now} FROM {jobs} {j_alias}WHERE {j}id = :id AND %s")
_HELD = "{j}attempts = :attempts AND {j}reserved_at IS NOT NULL"
_FAIL_UPSERT = (" ON CONFLICT (uuid) DO UPDATE SET queue = excluded.queue,"
                " payload = excluded.payload, exception = excluded.exception,"
                " failed_at = excluded.failed_at")
# Not running: never reserved, or its reservation lapsed (see _EXPIRED).
_WAITING = "(reserved_at IS NULL OR {expired})"
# LIMIT takes no "all" that every database reads alike: this stands for it.
_NO_LIMIT = 2 ** 62
# `stats` counts a queue's ready and delayed jobs up to this many; more show as "100,000+".
_COUNT_CAP = 100000

# Every row that enters {jobs} is written by this one INSERT (_Dialect.insert_job),
# given per statement the columns after created_at and where its rows come from.
_JOB_INSERT = ("INSERT{ignore} INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
               " created_at%s) %s")
_JOB_ROWS = {
    # expires_at: the payload's retryUntil (a deadline), where the worker's
    # sweep finds it through an index (Worker._expire).
    "push": (", expires_at",
             "VALUES (:queue, :payload, 0, NULL, {now} + :delay, {now}, :expires_at)"),
    # Unique jobs: the unique index "<jobs>_unique" decides, never a read
    # before the insert, so two producers racing with one key insert one row
    # (the dialect's unique_ignore and unique_conflict). Inserted nothing
    # (rowcount 0, or no row RETURNING): read the holder's id with unique_holder.
    "push_unique": (", unique_key, expires_at",
                    "VALUES (:queue, :payload, 0, NULL, {now} + :delay, {now}, :unique_key,"
                    " :expires_at)"),
    # :payload (else the failed row's own) is the job without its deadline.
    "retry": ("", "SELECT queue, COALESCE(:payload, payload), 0, NULL, {now}, {now} FROM {failed}"
                  " WHERE id = :id"),
    "retry_unique": (", unique_key",
                     "SELECT queue, COALESCE(:payload, payload), 0, NULL, {now}, {now},"
                     " :unique_key FROM {failed} WHERE id = :id"),
}
# push(): the dialect's insert_wrap adds the wakeup of waiting workers.
_JOB_ROWS["push_notify"] = _JOB_ROWS["push"]

# SQL is written once with :name parameters; each dialect turns it into its
# driver's placeholder style. {jobs} and {failed} are the validated table names,
# {now} is the clock expression (see _Dialect.now).
_SQL = {
    "unique_holder": "SELECT id FROM {jobs} WHERE queue = :queue AND unique_key = :unique_key",
    # A reservation lapses at reserved_until, which its holder sets from its
    # own retry_after (the lease) at the claim and at every heartbeat: no
    # other worker's setting can shorten it. A row without one (or with a
    # stale one, see _EXPIRED) was reserved by the PHP app's worker, which
    # knows only reserved_at: it lapses after the rescuer's retry_after. One
    # queue at a time: a worker takes back only what it would run itself.
    "rescue": "UPDATE {jobs} SET reserved_at = NULL, reserved_until = NULL"
              " WHERE queue = :queue AND reserved_at IS NOT NULL AND {expired}",
    "ack": "DELETE FROM {jobs} WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL",
    "touch": "UPDATE {jobs} SET reserved_at = {now}, reserved_until = {now} + :lease"
             " WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL",
    "unclaim": "UPDATE {jobs} SET reserved_at = NULL, reserved_until = NULL,"
               " attempts = attempts - 1"
               " WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL",
    # :payload is NULL except for a handler that did part of its work and
    # left what remains in the payload (an email's recipients still to serve).
    # A NULL :delay keeps available_at: the job keeps its place and its age.
    "release": "UPDATE {jobs} SET reserved_at = NULL, reserved_until = NULL,"
               " available_at = COALESCE({now} + :delay, available_at),"
               " attempts = attempts - :uncount,"
               " payload = COALESCE(:payload, payload)"
               " WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL",
    "fail": _FAIL % _HELD + _FAIL_UPSERT,
    "fail_waiting": _FAIL % _WAITING + _FAIL_UPSERT,
    "drop_waiting": "DELETE FROM {jobs} WHERE id = :id AND " + _WAITING,
    # Jobs no worker runs whose deadline has passed (the worker's sweep): the
    # "<jobs>_expires" index holds only jobs with a deadline.
    "past_deadline": "SELECT id, {queue_text}, {payload_text}, attempts, expires_at FROM {jobs}"
                     " WHERE queue = :queue AND expires_at <= {now} AND " + _WAITING
                     + " ORDER BY expires_at LIMIT :limit{for_update}",
    # cancel: the jobs named, or those of a queue (a page at a time, by id);
    # the last column says whether a worker runs it now.
    "cancel_ids": "SELECT id, {queue_text}, {payload_text}, attempts,"
                  " CASE WHEN " + _WAITING + " THEN 0 ELSE 1 END FROM {jobs}"
                  " WHERE id = :id{for_update}",
    "cancel_queue": "SELECT id, {queue_text}, {payload_text}, attempts, 0 FROM {jobs}"
                    " WHERE queue = :queue AND id > :after AND " + _WAITING
                    + " ORDER BY id LIMIT :limit{for_update}",
    "next_due": "SELECT MIN(available_at) - {now} FROM {jobs}"
                " WHERE queue = :queue AND reserved_at IS NULL",
    # `stats` reads the indexes, never every row: a GROUP BY over a million
    # waiting jobs took 0.7 s, and the dashboard asks every 5 seconds. The
    # waiting queues one by one, each one probe of <jobs>_ready (a skip
    # scan); then per queue its ready and delayed jobs counted up to :cap + 1
    # (see Queue.stats) and the oldest ready job's age, one more probe.
    # (ORDER BY ... LIMIT 1, not MIN(): MySQL would read MIN() off another index.)
    "stats_queues": "WITH RECURSIVE q(queue) AS (SELECT (SELECT queue FROM {jobs}"
                    " WHERE reserved_at IS NULL ORDER BY queue LIMIT 1) UNION ALL"
                    " SELECT (SELECT queue FROM {jobs} WHERE reserved_at IS NULL"
                    " AND queue > q.queue ORDER BY queue LIMIT 1) FROM q WHERE q.queue IS NOT NULL)"
                    " SELECT {queue_text} FROM q WHERE queue IS NOT NULL",
    "stats_waiting": "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM {jobs} WHERE {queue_is}"
                     " AND reserved_at IS NULL AND available_at <= {now} LIMIT :cap) AS r),"
                     " (SELECT COUNT(*) FROM (SELECT 1 FROM {jobs} WHERE {queue_is}"
                     " AND reserved_at IS NULL AND available_at > {now} LIMIT :cap) AS d),"
                     " {now} - (SELECT MIN(available_at) FROM {jobs} WHERE {queue_is}"
                     " AND reserved_at IS NULL AND available_at <= {now})",
    # Reserved jobs are as many as workers hold: counted exactly, through
    # <jobs>_reserved.
    "stats_reserved": "SELECT {queue_text}, COUNT(*), SUM(CASE WHEN {expired} THEN 1 ELSE 0 END)"
                      " FROM {jobs} WHERE reserved_at IS NOT NULL GROUP BY queue",
    # Expired: moved there because their deadline passed (see Worker._expire).
    "failed_counts": "SELECT {queue_text}, COUNT(*),"
                     " SUM(CASE WHEN exception LIKE 'expired:%' THEN 1 ELSE 0 END)"
                     " FROM {failed} GROUP BY queue",
    # {order} is ASC (the CLI: oldest first) or DESC (the dashboard: newest
    # first); the dashboard pages by id (:before, :after: a walk down the
    # primary key, however deep the page), not by OFFSET; :search is a LIKE
    # pattern over the exception and the recipients ({recipient}: the
    # payload's data.to, see _Dialect), never the whole payload: a search
    # there would tell a dashboard user, one prefix at a time, the link
    # tokens the pages mask.
    "failed_list": "SELECT " + _FAILED_COLUMNS + " FROM {failed}"
                   " WHERE id < :before AND id > :after"
                   " AND (CAST(:queue AS {text_type}) IS NULL OR queue = :queue)"
                   " AND (CAST(:search AS {text_type}) IS NULL"
                   " OR LOWER(exception) LIKE :search ESCAPE '!'"
                   " OR LOWER({recipient}) LIKE :search ESCAPE '!')"
                   " ORDER BY id {order} LIMIT :limit OFFSET :offset",
    "failed_one": "SELECT " + _FAILED_COLUMNS + " FROM {failed} WHERE id = :id",
    "failed_ids": "SELECT id FROM {failed} WHERE (CAST(:queue AS {text_type}) IS NULL OR queue = :queue)"
                  " ORDER BY id",
    # A failed unique job gets its key back from its payload ("uniqueKey").
    # {for_update} locks the row until the retry commits: a second retry of
    # the same job at once (a double click on Retry) waits, then finds it
    # gone, instead of copying it too under READ COMMITTED.
    "retry_source": "SELECT {queue_text}, {payload_text} FROM {failed} WHERE id = :id{for_update}",
    "forget": "DELETE FROM {failed} WHERE id = :id",
    "flush": "DELETE FROM {failed} WHERE failed_at < {failed_cutoff}",
    "clear": "DELETE FROM {jobs} WHERE queue = :queue AND reserved_at IS NULL",
    # MAIL_RATE_LIMIT, per window of it (see Queue.rate_take). A window of a
    # second is a ring of at most N send slots in {rate}, each holding when
    # its last message left (ms, the database's clock). A message may leave
    # only by taking a slot that is at least one window old, so no window of
    # that length ever holds more than N. One row: the clock, the oldest
    # slot, the last slot made. Slots are 0..N-1; a negative slot is free for
    # a dialect's lock row.
    "rate_oldest": "SELECT {now_ms}, r.slot, r.sent_at,"
                   " (SELECT MAX(slot) FROM {rate} WHERE name = :name)"
                   " FROM (SELECT 1 AS one) AS o LEFT JOIN"
                   " (SELECT slot, sent_at FROM {rate} WHERE name = :name AND slot >= 0"
                   " ORDER BY sent_at, slot LIMIT 1) AS r ON 1 = 1",
    "rate_take": "UPDATE {rate} SET sent_at = :until WHERE name = :name AND slot = :slot",
    "rate_add": "INSERT INTO {rate} (name, slot, sent_at) VALUES (:name, :slot, :until)",
    # After the send: the slot holds the moment it ended (rounded up), unless
    # it was taken over meanwhile (a send that outlived its hold).
    "rate_sent": "UPDATE {rate} SET sent_at = {now_ms} + 1"
                 " WHERE name = :name AND slot = :slot AND sent_at = :until",
    "rate_use": "SELECT COUNT(*) FROM {rate} WHERE name = :name AND sent_at > {now_ms} - :window_ms",
    # The sent log: one row per message a mail server (or sendmail) took,
    # written in the transaction that records its job's attempt (see
    # Queue._log_sent). {sent} serves every jobs table of the database: tbl
    # says whose row it is.
    "sent_add": "INSERT INTO {sent} (tbl, sent_at, queue, uuid, job, template, subject, sender,"
                " recipients, message_id, reply) VALUES (:tbl, {now}, :queue, :uuid, :job,"
                " :template, :subject, :sender, :recipients, :message_id, :reply)",
    # MAIL_LOG_DAYS: :batch rows per statement, found by the (tbl, sent_at)
    # index, so that no statement holds the table (on SQLite, the write
    # lock) for long. The derived table is for MySQL, which takes neither
    # LIMIT in an IN subquery nor a subquery of the table it deletes from.
    "sent_prune": "DELETE FROM {sent} WHERE id IN (SELECT id FROM (SELECT id FROM {sent}"
                  " WHERE tbl = :tbl AND sent_at < {now} - :age ORDER BY sent_at LIMIT :batch)"
                  " AS old)",
    # Newest first. :to and :search are LIKE patterns in lower case (NULL:
    # no filter); :since is seconds back from now.
    "sent_list": "SELECT id, sent_at, queue, uuid, job, template, subject, sender, recipients,"
                 " message_id, reply FROM {sent} WHERE tbl = :tbl AND sent_at >= {now} - :since"
                 " AND (CAST(:queue AS {text_type}) IS NULL OR queue = :queue)"
                 " AND (CAST(:to AS {text_type}) IS NULL OR LOWER(recipients) LIKE :to ESCAPE '!')"
                 " AND (CAST(:search AS {text_type}) IS NULL"
                 " OR LOWER(recipients) LIKE :search ESCAPE '!'"
                 " OR LOWER(subject) LIKE :search ESCAPE '!'"
                 " OR LOWER(message_id) LIKE :search ESCAPE '!')"
                 " ORDER BY sent_at DESC, id DESC LIMIT :limit OFFSET :offset",
    "sent_counts": "SELECT queue, COUNT(*) FROM {sent} WHERE tbl = :tbl AND sent_at >= {now} - 3600"
                   " GROUP BY queue",
    # A window of a minute or more is _RATE_BUCKETS counters instead (50000/d
    # would be a ring of 50,000 rows): slot is the bucket's number (the unix
    # time in ms over the bucket's length), sent_at the messages counted in it.
    "rate_now": "SELECT {now_ms}",
    "rate_count": "SELECT MIN(slot), SUM(sent_at) FROM {rate}"
                  " WHERE name = :name AND slot >= :first AND sent_at > 0",
    "rate_bump": "UPDATE {rate} SET sent_at = sent_at + :by WHERE name = :name AND slot = :slot",
    "rate_prune": "DELETE FROM {rate} WHERE name = :name AND slot >= 0 AND slot < :first",
    "version": "SELECT version FROM dbqueue_migrations WHERE tbl = :tbl",
    "set_version": "INSERT INTO dbqueue_migrations (tbl, version) VALUES (:tbl, :version)"
                   " ON CONFLICT (tbl) DO UPDATE SET version = excluded.version",
    # Writes that match no row: they change nothing but need the rights (and,
    # on SQLite, the write lock) the worker's own writes need. See check_write().
    "probe_update": "UPDATE {jobs} SET reserved_at = reserved_at WHERE 1 = 0",
    "probe_delete": "DELETE FROM {jobs} WHERE 1 = 0",
    "probe_failed": "DELETE FROM {failed} WHERE 1 = 0",
    "probe_sent": "INSERT INTO {sent} (tbl, sent_at, queue, job, subject, sender, recipients,"
                  " message_id, reply) SELECT tbl, sent_at, queue, job, subject, sender,"
                  " recipients, message_id, reply FROM {sent} WHERE 1 = 0",
    # dbqueue_state: what workers tell other processes (a mail outage).
    "state_get": "SELECT value, {now} - updated_at FROM dbqueue_state WHERE name = :name",
    "state_set": "INSERT INTO dbqueue_state (name, value, updated_at) VALUES (:name, :value, {now})"
                 " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                 " updated_at = excluded.updated_at",
    "state_clear": "DELETE FROM dbqueue_state WHERE name = :name",
    # Compare-and-set of one row (Queue._swap_state): a write lands only
    # where the row still holds what was read.
    "state_read": "SELECT s.value, {now_ms} FROM (SELECT 1 AS one) AS o"
                  " LEFT JOIN dbqueue_state s ON s.name = :name",
    "state_add": "INSERT INTO dbqueue_state (name, value, updated_at) VALUES (:name, :value, {now})"
                 " ON CONFLICT (name) DO NOTHING",
    "state_swap": "UPDATE dbqueue_state SET value = :value, updated_at = {now}"
                  " WHERE name = :name AND value = :old",
    "state_drop": "DELETE FROM dbqueue_state WHERE name = :name AND value = :old",
    # Idle workers that cannot be told of a push (MySQL; PostgreSQL behind a
    # transaction-mode pooler) look for a ready job: one index probe.
    "ready": "SELECT 1 FROM {jobs} WHERE queue = :queue AND reserved_at IS NULL"
             " AND available_at <= {now} LIMIT 1",
    # After a claim that found nothing though a job was ready (another
    # session holds its row lock), idle workers wait for this to change
    # instead: a push, a claim or a give-back moves it (see Worker._wait_poll).
    "ready_mark": "SELECT COUNT(*), MAX(id) FROM {jobs} WHERE queue = :queue"
                  " AND reserved_at IS NULL AND available_at <= {now}",
    # The rows whose name starts with a prefix (LIKE's _ matches any
    # character: callers keep the exact prefix), with the clock to judge them by.
    "state_list": "SELECT name, value, updated_at, {now} FROM dbqueue_state WHERE name LIKE :prefix",
}

# When a reservation has lapsed (see "rescue"), for rows with reserved_at set.
# dbqueue writes reserved_until with reserved_at, always later than it. A
# reserved_until not later than reserved_at is stale: the PHP app's worker
# took the row over (Laravel's pop re-reserves an expired row by setting
# reserved_at and attempts only), so that reservation is judged as the PHP
# app's are, by reserved_at.
_EXPIRED = ("((reserved_until > reserved_at AND reserved_until < {now})"
            " OR ((reserved_until IS NULL OR reserved_until <= reserved_at)"
            " AND reserved_at < {now} - :retry_after))")

_PARAM = _Pattern(r"(?<![:\w]):([a-z_]+)\b")
# The name of each index a DDL statement makes (MySQL's inside its SET @dbqueue_ddl).
_INDEX_NAME = _Pattern(r"INDEX (?:IF NOT EXISTS )?[`\"](\w+)[`\"] ON ")


###############################################################################
# Dialects: the common part and SQLite ########################################
###############################################################################

class _Dialect:
    """What differs between databases, as data. One subclass per database."""

    name = ""
    label = ""
    # The DB-API modules that can reach this database, in the order they are
    # tried, each with the package that installs it (none for SQLite: stdlib).
    drivers = {}
    placeholder = "?"
    now = ":now"                   # the clock: a parameter, or the server's own
    begin = "BEGIN"
    payload_text = "payload"       # how to read a payload column as text
    queue_text = "queue"           # how `stats` and `failed` read a queue column
    queue_is = "queue = :queue"    # matches the queue that queue_text read as :queue
    # The recipients of a failed job as text (its payload's data.to: a string
    # or a JSON array), NULL when there are none or the payload is not JSON;
    # what failed_list searches besides the exception.
    failed_recipient = "NULL"
    autoincrement = ""
    bigint = "INTEGER"
    unique_key_type = "VARCHAR(255)"
    failed_at = ""
    failed_cutoff = ""
    failed_now = "CURRENT_TIMESTAMP"
    # One writer at a time (SQLite's write lock): work --concurrency's slots
    # queue for it on a lock in the process, not in SQLite's busy handler,
    # which sleeps up to 100 ms between looks.
    one_writer = False
    claim = ""                     # one statement, or "" when claim_select/claim_update are used
    claim_select = ""
    claim_update = ""
    claim_update_many = ""         # claim_update for a list of {ids} at once
    tokens_lock_many = ""          # without RETURNING: lock the rows a batch of tokens names
    migrate_lock = ""              # run first in migrate's transaction: one migration at a time
    notify = ""                    # wakes waiting workers of :queue ("" where there is no LISTEN)
    now_ms = ":now_ms"             # the clock in milliseconds (MAIL_RATE_LIMIT)
    rate_table = "dbqueue_rate"
    sent_table = "dbqueue_sent"
    rate_lock = ""                 # run first when a send slot is taken: one taker at a time
    denied_fix = ""                # what to do about a database dbqueue may not write (is_denied)
    for_update = " FOR UPDATE"     # locks a row read before it is changed ("" where BEGIN locks all)
    migrate_unlock = ""            # run after it, when the lock outlives the transaction
    ident_quote = '"'
    text_type = "TEXT"             # what CAST(... AS ...) calls a string
    wakeup = "data_version"        # how an idle worker learns of new jobs: see Worker._idle
    fail_alias = ""                # the jobs table's alias in _FAIL
    # A unique job's insert: DO NOTHING, not a caught unique violation: inside
    # the caller's own transaction (connection=) a violation would abort it on
    # PostgreSQL.
    unique_ignore = ""
    unique_conflict = " ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING"
    job_rows = {}                  # the dialect's own statements of _JOB_ROWS's kind
    push_many_statement = False    # push_many is one statement: no transaction around it
    token_arrays = False           # ack_many/touch_many take the tokens as two bound arrays
    # A file this process opens itself (SQLite): no server, so the process's
    # clock, tables made on first use, and a path to name in errors.
    embedded = False
    insert_wrap = {}               # statement: the text around its {insert}
    autoinc_settings = ""

    @classmethod
    def driver(cls, name=None):
        """The driver module: the first of `drivers` installed, unless one is named."""
        import importlib
        for candidate in [name] if name else list(cls.drivers):
            try:
                return importlib.import_module(candidate)
            except ImportError:
                continue
        first = next(iter(cls.drivers))
        raise ConfigError("QUEUE_DATABASE_URL is %s but the %s driver is not installed:"
                          " pip install %s" % (cls.label, name or first,
                                               cls.drivers.get(name, cls.drivers[first])))

    @classmethod
    def ident(cls, name):
        """A table or index name, validated and quoted."""
        return cls.ident_quote + _quote(name)[1:-1] + cls.ident_quote

    @classmethod
    def prepare(cls, template, jobs="jobs", failed="failed_jobs", **extra):
        """(sql, names): the template for this dialect and its parameter order."""
        if "{expired}" in template:
            template = template.replace("{expired}", _EXPIRED)
        text = template.format(jobs=cls.ident(jobs), failed=cls.ident(failed), now=cls.now,
                               now_ms=cls.now_ms, rate=cls.ident(cls.rate_table),
                               sent=cls.ident(cls.sent_table),
                               payload_text=cls.payload_text, queue_text=cls.queue_text,
                               failed_cutoff=cls.failed_cutoff, failed_now=cls.failed_now,
                               text_type=cls.text_type,
                               for_update=cls.for_update, recipient=cls.failed_recipient,
                               j=cls.fail_alias and cls.fail_alias + ".",
                               j_alias=cls.fail_alias and cls.fail_alias + " ", queue_is=cls.queue_is, **extra)
        names = _PARAM.findall(text)
        if cls.placeholder == "%s":
            text = text.replace("%", "%%")
        return _PARAM.sub(cls.placeholder, text), tuple(names)

    @staticmethod
    def new_id(cur):
        """The id of the row a push just wrote."""
        return cur.lastrowid

    @staticmethod
    def retried_id(cur):
        """The id of the row a retry (INSERT ... SELECT) just wrote."""
        return cur.lastrowid

    @staticmethod
    def driver_errors(driver):
        """The errors that `driver` (the imported module) raises."""
        return (driver.Error,)

    @staticmethod
    def is_transient(exc, driver):
        """True for an error that waiting may cure (a lost server, a lock)."""
        return isinstance(exc, (driver.OperationalError, driver.InterfaceError))

    @classmethod
    def insert_job(cls, key):
        """The template of the _JOB_INSERT that statement `key` names."""
        columns, rows = cls.job_rows.get(key) or _JOB_ROWS[key]
        unique = "unique_key" in columns
        text = (_JOB_INSERT % (columns, rows)).replace(
            "{ignore}", cls.unique_ignore if unique else "", 1)
        if unique:
            text += cls.unique_conflict
        return cls.insert_wrap.get(key, "{insert}").replace("{insert}", text)

    @classmethod
    def start(cls, cur, write):
        """Open a transaction on cursor `cur` (a write transaction takes the write lock)."""
        cur.execute(cls.begin if write else "BEGIN")

    @staticmethod
    def push_lock(target):
        """A lock push() holds around its INSERT (see _PushLock), one per queue, or None."""
        return None

    @staticmethod
    def inserted_id(cur):
        """The id of the row a push_unique (or retry_unique) just wrote, or None
        when the key was taken and it wrote nothing (INSERT IGNORE alike)."""
        return cur.lastrowid if cur.rowcount == 1 else None

    @staticmethod
    def is_denied(exc):
        """True for an error that says dbqueue may not write (not an outage: see translate)."""
        return False

    @classmethod
    def ddl(cls, jobs, failed):
        """The statements that create the current schema on an empty database
        (idempotent: IF NOT EXISTS throughout). `migrate` runs them, then adds
        to tables that already existed the columns of `added_columns`, then
        makes the indexes."""
        return cls.table_ddl(jobs, failed) + cls.index_ddl(jobs, failed)

    @classmethod
    def table_ddl(cls, jobs, failed):
        j, f = _quote(jobs), _quote(failed)
        return [
            "CREATE TABLE IF NOT EXISTS %s (\n"
            "    id %s,\n"
            "    queue VARCHAR(255) NOT NULL,\n"
            "    payload TEXT NOT NULL,\n"
            "    attempts INTEGER NOT NULL DEFAULT 0,\n"
            "    reserved_at %s,\n"
            "    available_at %s NOT NULL,\n"
            "    created_at %s NOT NULL,\n"
            "    reserved_until %s,\n"
            "    unique_key %s,\n"
            "    expires_at %s\n"
            ")" % (j, cls.autoincrement, cls.bigint, cls.bigint, cls.bigint, cls.bigint,
                   cls.unique_key_type, cls.bigint),
            "CREATE TABLE IF NOT EXISTS %s (\n"
            "    id %s,\n"
            "    uuid VARCHAR(255) NOT NULL UNIQUE,\n"
            "    connection TEXT NOT NULL,\n"
            "    queue TEXT NOT NULL,\n"
            "    payload TEXT NOT NULL,\n"
            "    exception TEXT NOT NULL,\n"
            "    failed_at %s\n"
            ")" % (f, cls.autoincrement, cls.failed_at),
        ]

    @classmethod
    def retyped_columns(cls, cur, jobs):
        """ALTER TABLEs that give columns of an existing jobs table their current type."""
        return []

    @classmethod
    def added_columns(cls):
        """(table, column, type) of every column added after schema version 1.

        A table made by an older dbqueue, or by the PHP app's own migrations,
        gets each one it lacks as a nullable column: the app's INSERTs, which
        name only the columns they know, keep working.
        """
        return [
            # Version 2. When the holder's reservation lapses (unix seconds),
            # renewed by its heartbeat; NULL (a PHP worker's reservation)
            # falls back to reserved_at + the rescuer's retry_after.
            ("jobs", "reserved_until", cls.bigint),
            # Version 2. Unique jobs: see the unique index below.
            ("jobs", "unique_key", cls.unique_key_type),
            # Version 2. The CodeIgniter app's failed_jobs has no uuid; its
            # own rows keep NULL there (see the unique index below).
            ("failed", "uuid", "VARCHAR(255)"),
            # Version 3. A job's deadline (its payload's retryUntil), for the
            # worker's sweep; NULL in the PHP app's rows (read from the payload).
            ("jobs", "expires_at", cls.bigint),
        ]

    @classmethod
    def index_ddl(cls, jobs, failed):
        j = _quote(jobs)
        return [
            # The claim reads `WHERE queue = ? AND reserved_at IS NULL AND
            # available_at <= now ORDER BY available_at, id LIMIT n`: this index
            # answers it without a sort and without touching reserved or delayed
            # rows, so a claim costs the same with 50 or 5 million jobs waiting.
            "CREATE INDEX IF NOT EXISTS %s ON %s (queue, available_at, id)"
            " WHERE reserved_at IS NULL" % (_quote(jobs + "_ready"), j),
            # Finds expired reservations (and counts reserved jobs) cheaply.
            "CREATE INDEX IF NOT EXISTS %s ON %s (reserved_at)"
            " WHERE reserved_at IS NOT NULL" % (_quote(jobs + "_reserved"), j),
            # At most one waiting or running job per (queue, unique_key): the
            # database, not a read before the insert, refuses the second.
            "CREATE UNIQUE INDEX IF NOT EXISTS %s ON %s (queue, unique_key)"
            " WHERE unique_key IS NOT NULL" % (_quote(jobs + "_unique"), j),
            # The worker's sweep of jobs past their deadline ("past_deadline").
            "CREATE INDEX IF NOT EXISTS %s ON %s (queue, expires_at)"
            " WHERE expires_at IS NOT NULL" % (_quote(jobs + "_expires"), j),
            # What `fail`'s ON CONFLICT (uuid) needs on a failed_jobs table
            # that had no uuid column (the CodeIgniter app's); on our own it
            # repeats the column's UNIQUE. An index, not a constraint: many
            # NULLs (the PHP app's own rows) are allowed on every database,
            # and not partial, so that ON CONFLICT (uuid) can use it.
            # (A failed table name may have 63 characters: the index's is cut
            # to fit, since a longer one would be cut to the table's own.)
            "CREATE UNIQUE INDEX IF NOT EXISTS %s ON %s (uuid)"
            % (_quote(failed[:58] + "_uuid"), _quote(failed)),
            # `stats` finds the failed jobs of each queue through this index;
            # its count of those past their deadline still reads each one's
            # exception (0.2 s for 100,000 long tracebacks on SQLite).
            # (MySQL has no such index: failed_jobs.queue is TEXT there.)
            "CREATE INDEX IF NOT EXISTS %s ON %s (queue)"
            % (_quote(failed[:57] + "_queue"), _quote(failed)),
        ]

    # The names of a table's columns (lower case), or an empty set when the
    # table does not exist. Bound parameter: the table name.
    columns_sql = ("SELECT column_name FROM information_schema.columns"
                   " WHERE table_schema = current_schema() AND table_name = %s")

    @classmethod
    def columns(cls, cur, table):
        cur.execute(cls.columns_sql, (table,))
        return {str(row[0]).lower() for row in cur.fetchall()}

    @staticmethod
    def is_missing_column(exc):
        return False

    # The names of a table's indexes (lower case). Bound parameter: the table name.
    index_names_sql = ("SELECT indexname FROM pg_indexes"
                       " WHERE schemaname = current_schema() AND tablename = %s")

    @classmethod
    def index_names(cls, cur, table):
        cur.execute(cls.index_names_sql, (table,))
        return {str(row[0]).lower() for row in cur.fetchall()}

    @classmethod
    def add_column_sql(cls, table, column, type_):
        return "ALTER TABLE %s ADD COLUMN %s %s" % (_quote(table), column, type_)

    @staticmethod
    def plain_cursor(conn):
        """A cursor on an app's connection (push(connection=...)) that returns
        tuples, whatever row factory the app gave the connection."""
        return conn.cursor()

    @classmethod
    def rate_ddl(cls):
        """MAIL_RATE_LIMIT's table: one row per send slot, a ring of them per
        jobs table and limit (see _rate_name)."""
        return ["CREATE TABLE IF NOT EXISTS %s (\n"
                "    name VARCHAR(100) NOT NULL,\n"
                "    slot INTEGER NOT NULL,\n"
                "    sent_at %s NOT NULL,\n"
                "    PRIMARY KEY (name, slot)\n"
                ")" % (_quote(cls.rate_table), cls.bigint),
                "CREATE INDEX IF NOT EXISTS %s ON %s (name, sent_at)"
                % (_quote(cls.rate_table + "_sent"), _quote(cls.rate_table))]

    @classmethod
    def sent_ddl(cls):
        """The sent log's table (see "sent_add") and its index, which serves
        pruning, `sent` and `stats` alike."""
        return ["CREATE TABLE IF NOT EXISTS %s (\n    id %s,\n%s\n)"
                % (_quote(cls.sent_table), cls.autoincrement, cls._sent_columns()),
                "CREATE INDEX IF NOT EXISTS %s ON %s (tbl, sent_at, id)"
                % (_quote(cls.sent_table + "_time"), _quote(cls.sent_table))]

    @classmethod
    def _sent_columns(cls):
        # Texts are TEXT: what fits is decided in _sent_row, so that no value
        # can fail the acknowledgement it is written with.
        return ("    tbl VARCHAR(63) NOT NULL,\n"
                "    sent_at %s NOT NULL,\n"
                "    queue TEXT NOT NULL,\n"
                "    uuid TEXT,\n"
                "    job TEXT NOT NULL,\n"
                "    template TEXT,\n"
                "    subject TEXT NOT NULL,\n"
                "    sender TEXT NOT NULL,\n"
                "    recipients TEXT NOT NULL,\n"
                "    message_id TEXT NOT NULL,\n"
                "    reply TEXT NOT NULL" % cls.bigint)

    @classmethod
    def version_ddl(cls):
        return ("CREATE TABLE IF NOT EXISTS dbqueue_migrations (\n"
                "    tbl VARCHAR(63) PRIMARY KEY,\n"
                "    version INTEGER NOT NULL\n"
                ")")

    @classmethod
    def state_ddl(cls):
        """The table workers write shared state to (a mail outage), for every
        jobs table of the database. Created by every migrate, like
        dbqueue_migrations, so that a database at any version has it."""
        return ("CREATE TABLE IF NOT EXISTS dbqueue_state (\n"
                "    name VARCHAR(190) PRIMARY KEY,\n"
                "    value TEXT NOT NULL,\n"
                "    updated_at BIGINT NOT NULL\n"
                ")")

    @staticmethod
    def is_closed(conn):
        return getattr(conn, "closed", False)

    @staticmethod
    def is_conflict(exc):
        """A deadlock or lock-wait timeout: run the transaction again at once."""
        return False

    @staticmethod
    def is_deadlock(exc):
        """A deadlock: the server rolled the transaction back (in autocommit, the statement)."""
        return False

    @staticmethod
    def is_lost(exc):
        """The connection is gone, whatever the driver's connection object says."""
        return False

    @staticmethod
    def describe(exc):
        """A driver's exception as one line."""
        return _first_line(exc)


class _SQLite(_Dialect):
    name = "sqlite"
    placeholder = "?"
    now = ":now"
    begin = "BEGIN IMMEDIATE"
    one_writer = True
    embedded = True
    # No SELECT ... FOR UPDATE: BEGIN IMMEDIATE already holds the write lock.
    for_update = ""
    # A payload is read as bytes so that a row holding invalid UTF-8 (written
    # by hand) fails alone instead of breaking every claim that returns it.
    payload_text = "CAST(payload AS BLOB)"
    # json_extract fails on text that is not JSON: json_valid first.
    failed_recipient = ("CASE WHEN json_valid(payload)"
                        " THEN json_extract(payload, '$.data.to') END")
    # Likewise a queue name written by hand as a BLOB or invalid UTF-8: `stats`
    # and `failed` show it (decoded with replacement) instead of failing.
    queue_text = "CAST(queue AS BLOB)"
    # ... and such a name, read as bytes, finds its rows again (through the index).
    queue_is = "queue IN (:queue, CAST(:queue AS TEXT))"
    # AUTOINCREMENT: ids are never reused, so an (id, attempts) fencing token
    # can never match a later job that happens to get a deleted job's id.
    autoincrement = "INTEGER PRIMARY KEY AUTOINCREMENT"
    bigint = "INTEGER"
    failed_at = "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP"
    failed_cutoff = "datetime('now', :age)"
    # attempts + 1 is capped at the largest INTEGER, so that a row written by
    # hand with that many attempts is claimed (and fails alone, over its
    # tries) instead of failing the claim of its whole batch.
    claim = ("UPDATE {jobs} SET reserved_at = :now, reserved_until = :now + :lease,"
             " attempts = MIN(attempts, 2147483646) + 1"
             " WHERE id IN (SELECT id FROM {jobs} WHERE queue = :queue AND reserved_at IS NULL"
             " AND available_at <= :now ORDER BY available_at, id LIMIT :limit)"
             " RETURNING id, queue, CAST(payload AS BLOB), attempts, available_at, created_at")
    # SQLite before 3.35 has no RETURNING: select, then update, in one
    # BEGIN IMMEDIATE transaction, which no other writer can interleave.
    claim_select = ("SELECT id, queue, CAST(payload AS BLOB), MIN(attempts, 2147483646) + 1,"
                    " available_at, created_at FROM {jobs}"
                    " WHERE queue = :queue AND reserved_at IS NULL AND available_at <= :now"
                    " ORDER BY available_at, id LIMIT :limit")
    claim_update = ("UPDATE {jobs} SET reserved_at = :now, reserved_until = :now + :lease,"
                    " attempts = MIN(attempts, 2147483646) + 1"
                    " WHERE id = :id AND reserved_at IS NULL")
    # A batch of (id, attempts) tokens in one statement (3.35+, for RETURNING).
    # `id IN (...)` is what lets SQLite find the rows by primary key: the row
    # values alone, `(id, attempts) IN (VALUES ...)`, plan as a table scan.
    ack_many = ("DELETE FROM {jobs} WHERE id IN ({ids}) AND reserved_at IS NOT NULL"
                " AND (id, attempts) IN (VALUES {pairs}) RETURNING id")
    touch_many = ("UPDATE {jobs} SET reserved_at = :now, reserved_until = :now + :lease"
                  " WHERE id IN ({ids})"
                  " AND reserved_at IS NOT NULL AND (id, attempts) IN (VALUES {pairs}) RETURNING id")
    # Seconds a write waits for another connection's write lock before
    # "database is locked"; the worker then logs once and keeps waiting.
    busy_timeout = 5.0

    @staticmethod
    def has_returning():
        import sqlite3
        return sqlite3.sqlite_version_info >= (3, 35, 0)

    @classmethod
    def connect(cls, target, driver=None, timeout=None, create=True):
        import sqlite3
        if timeout is None:
            timeout = cls.busy_timeout
        if not create:
            # `health` looks without touching: a missing file is an answer,
            # not something to create; mode=rw refuses to create one too.
            if not os.path.isfile(target):
                raise DatabaseError("SQLite database %s does not exist (this command only reads,"
                                    " so it creates none: check the URL, or run `python3 dbqueue.py"
                                    " migrate` to create it)" % os.path.abspath(target),
                                    transient=False)
            from urllib.parse import quote
            target = "file:%s?mode=rw" % quote(os.path.abspath(target))
            conn = sqlite3.connect(target, timeout=timeout, isolation_level=None,
                                   check_same_thread=False, uri=True)
            return conn
        if target and not os.path.exists(target):
            # Create the file ourselves so it is private from its first byte;
            # SQLite gives the -wal and -shm files the database file's mode.
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise DatabaseError("cannot create SQLite database %s: %s" % (target, exc.strerror))
        conn = sqlite3.connect(target, timeout=timeout, isolation_level=None,
                               check_same_thread=False)
        # WAL lets readers (stats, the web app) run while a worker writes.
        # synchronous stays FULL, SQLite's default: a pushed job survives a
        # power cut once push() returns.
        cls._journal_wal(conn, timeout)
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @classmethod
    def start(cls, cur, write):
        # The write lock is waited for here in steps of a fraction of a
        # millisecond. SQLite's own busy handler sleeps 1, 2, 5, 10 ms ...
        # between tries, while a worker's commit holds the lock for about
        # 0.2 ms: two workers then spent their waits asleep, and a second
        # worker made a drain no faster. The handler still covers everything
        # else (a read during recovery, push()), so it is off only meanwhile.
        if not write:
            cur.execute("BEGIN")
            return
        import sqlite3
        restore = "PRAGMA busy_timeout = %d" % (cls.busy_timeout * 1000)
        try:
            cur.execute("PRAGMA busy_timeout = 0")
            pause, deadline = 0.0001, None
            while True:
                try:
                    cur.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if not cls.is_locked(exc):
                        raise
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + cls.busy_timeout
                    elif now >= deadline:
                        raise
                    time.sleep(pause)
                    pause = min(pause * 2, 0.002)
            cur.execute(restore)
        except BaseException:
            # Also when a signal (a handler's JobTimeout, Ctrl-C) lands between
            # any two statements above: the handler back, no transaction open.
            try:
                cur.execute(restore)
                if cur.connection.in_transaction:
                    cur.execute("ROLLBACK")
            except Exception:
                pass
            raise

    @staticmethod
    def push_lock(target):
        # Producers in several processes: SQLite's busy handler polls for the
        # write lock, sleeping 1, 2, 5, 10 ... 100 ms between tries, while a
        # push holds it for about 0.2 ms. Under a steady stream of pushes the
        # lock is nearly always taken when a sleeper wakes, and a process that
        # has just pushed takes it again at once: one push waited 4 s (8
        # processes), some hit the 5 s busy timeout. An flock() on a folder
        # beside the database queues the producers in the kernel instead,
        # which hands the lock to a waiter as it is released: the worst wait
        # is a few pushes long. Its cost is a threading.Lock and three system
        # calls (getpid and two flock, 1-2 us a push), no SQL. Workers do not
        # take it (their claims wait in start()).
        return _PushLock.open(target + "-dbqueue.lock", target, _SQLite.busy_timeout)

    @classmethod
    def _journal_wal(cls, conn, timeout):
        # Turning a new file into WAL needs an exclusive lock, and SQLite
        # answers "database is locked" at once instead of calling the busy
        # handler: workers that start together on a fresh file wait here.
        import sqlite3
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not cls.is_locked(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def errors():
        import sqlite3
        return (sqlite3.Error,)

    @classmethod
    def driver_errors(cls, driver):
        return cls.errors()

    @staticmethod
    def is_transient(exc, driver):
        import sqlite3
        return isinstance(exc, sqlite3.OperationalError)   # locked, busy, I/O

    @staticmethod
    def bench_settings(cur):
        """The settings that decide what a commit costs, for `bench`."""
        import sqlite3
        sync = cur.execute("PRAGMA synchronous").fetchone()[0]
        mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
        return "SQLite %s, journal_mode=%s, synchronous=%s" % (
            sqlite3.sqlite_version, mode, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                sync, sync))

    @classmethod
    def columns(cls, cur, table):
        cur.execute("PRAGMA table_info(%s)" % _quote(table))
        return {str(row[1]).lower() for row in cur.fetchall()}

    @classmethod
    def index_names(cls, cur, table):
        cur.execute("PRAGMA index_list(%s)" % _quote(table))
        return {str(row[1]).lower() for row in cur.fetchall()}

    @staticmethod
    def is_missing_table(exc):
        return "no such table" in str(exc)

    @staticmethod
    def is_missing_column(exc):
        return "no such column" in str(exc) or "has no column named" in str(exc)

    @staticmethod
    def is_locked(exc):
        return "locked" in str(exc) or "busy" in str(exc)

    # A database dbqueue may read but not write is a setup problem, not an
    # outage: waiting does not cure it (see Queue.translate).
    denied_fix = ("make the file and its folder writable by the user that runs dbqueue"
                  " (SQLite writes -wal and -shm files beside it)")

    @staticmethod
    def is_denied(exc):
        # SQLITE_READONLY (8) and its extended codes; before 3.11 only the text says so.
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == 8) or "readonly database" in str(exc)

    @staticmethod
    def in_transaction(conn):
        return conn.in_transaction

    @staticmethod
    def plain_cursor(conn):
        cur = conn.cursor()
        cur.row_factory = None      # tuples, whatever conn.row_factory says
        return cur


class _PushLock:
    """`lock.acquire(cur)`, the INSERT on `cur`, `lock.release(cur)`: an
    exclusive flock() on one open file (see _SQLite.push_lock), then the
    INSERT, all within ONE busy timeout.

    One per Queue and process, not per thread: the threads of a process take
    turns on a threading.Lock first (an flock() belongs to the open file, so
    threads sharing one would not exclude each other), and a process with
    hundreds of short-lived producer threads holds one descriptor, not one
    each. After a fork the child opens its own file: sharing the parent's
    open file, its flock() would not exclude the parent's.

    The wait is bounded: the flock() is polled (LOCK_NB, sleeps growing from
    0.1 to 2 ms, as _SQLite.start polls BEGIN IMMEDIATE) against the deadline
    of the busy timeout, and SQLite gets only the time that is left. While a
    long write holds SQLite's lock, N producers then all fail at the busy
    timeout, not one after another at N times it. A process that dies
    releases its flock().
    """

    __slots__ = ("path", "mode", "timeout", "fd", "pid", "_mutex", "_fcntl", "_waited",
                 "__weakref__")
    _all = None            # every lock, for the fork hook (a WeakSet, made at the first)

    def __init__(self, path, mode, timeout, fcntl):
        self.path, self.mode, self.timeout, self._fcntl = path, mode, timeout, fcntl
        self.fd, self.pid = None, None
        self._mutex = threading.Lock()
        self._waited = False
        if _PushLock._all is None:
            import weakref
            _PushLock._all = weakref.WeakSet()
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_PushLock._after_fork)
        _PushLock._all.add(self)
        self._reopen()

    @staticmethod
    def _after_fork():
        # Only the forking thread lives on in the child: a mutex another
        # thread held at the fork would stay held forever.
        for lock in list(_PushLock._all):
            lock._mutex = threading.Lock()

    @classmethod
    def open(cls, path, beside, timeout):
        """The lock on file `path` (made with the mode of file `beside`), or None
        where there is none to have: no flock() (Windows), or a file that
        cannot be made or opened. Pushes then wait in the busy handler alone."""
        try:
            import fcntl
            return cls(path, os.stat(beside).st_mode & 0o666, timeout, fcntl)
        except (ImportError, OSError):
            return None

    def _reopen(self):
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                os.close(fd)       # the parent's copy: its flock() stays the parent's
            except OSError:
                pass
        # An empty directory, not a file: git shows no empty directory, so the
        # lock stays out of `git status` of the project the database sits in.
        # flock() takes a directory's descriptor alike. A file of this name
        # (made by dbqueue 1.1) is used as it is: old and new processes agree.
        try:
            os.mkdir(self.path, self.mode)
        except FileExistsError:
            pass
        self.fd = os.open(self.path, os.O_RDONLY)
        self.pid = os.getpid()

    def acquire(self, cur):
        """Take the lock for an INSERT on `cur`, or raise sqlite3's "database is locked".

        From here to the end of release(), a worker's interruption of the
        handler that pushes (its timeout, a second SIGINT) waits: landing in
        between, it would leave the lock held (Worker._defer)."""
        _hold_interrupts(True)
        taken = False
        try:
            deadline = time.monotonic() + self.timeout
            taken = self._mutex.acquire(True, self.timeout)
            if not taken:
                self._locked()
            if self.pid != os.getpid() or self.fd is None:
                try:
                    self._reopen()
                except OSError:
                    self.fd = None     # as with no lock file: the busy handler alone
                    self._waited = False
                    return
            flock, fd, pause = self._fcntl.flock, self.fd, 0.0001
            mode = self._fcntl.LOCK_EX | self._fcntl.LOCK_NB
            while True:
                try:
                    flock(fd, mode)
                    break
                except BlockingIOError:
                    now = time.monotonic()
                    if now >= deadline:
                        self._locked()
                    time.sleep(min(pause, deadline - now))
                    pause = min(pause * 2, 0.002)
            left = deadline - time.monotonic()
            # Uncontended (the usual case) SQLite keeps its whole busy timeout:
            # no PRAGMA on the hot path. A wait of a millisecond or more is
            # taken off what SQLite may still wait.
            self._waited = left < self.timeout - 0.001
            if self._waited:
                try:
                    cur.execute("PRAGMA busy_timeout = %d" % max(1, int(left * 1000)))
                except BaseException:
                    flock(fd, self._fcntl.LOCK_UN)
                    raise
        except BaseException:
            if taken:
                self._mutex.release()
            _hold_interrupts(False)
            raise

    def release(self, cur):
        try:
            if self._waited:
                self._waited = False
                try:
                    cur.execute("PRAGMA busy_timeout = %d" % (self.timeout * 1000))
                except Exception:
                    pass    # the connection is gone: nothing left to restore
            if self.fd is not None:
                self._fcntl.flock(self.fd, self._fcntl.LOCK_UN)
        finally:
            self._mutex.release()
            _hold_interrupts(False)

    def _locked(self):
        import sqlite3
        # As SQLite's own busy timeout says it: the caller's one-line error.
        raise sqlite3.OperationalError("database is locked")

    def close(self):
        with self._mutex:
            if self.fd is not None:
                try:
                    os.close(self.fd)
                except OSError:
                    pass
            self.fd = None


###############################################################################
# Dialects: PostgreSQL and MySQL ##############################################
###############################################################################

class _Postgres(_Dialect):
    name = "postgresql"
    label = "PostgreSQL"
    drivers = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}
    placeholder = "%s"
    # Server databases decide expiry and availability by the database's clock,
    # so workers on machines with skewed clocks agree. Tests pass their own.
    now = "COALESCE(:now, FLOOR(EXTRACT(EPOCH FROM now()))::bigint)"
    # What every statement here is written for, whatever the server's
    # default_transaction_isolation: under REPEATABLE READ or SERIALIZABLE a
    # claim that meets a row another worker just changed fails with "could not
    # serialize access" instead of skipping it, and a migration waiting on the
    # lock below would not see the tables the one before it made.
    begin = "BEGIN ISOLATION LEVEL READ COMMITTED"
    # CREATE TABLE IF NOT EXISTS is not safe against itself on PostgreSQL: two
    # sessions creating the same table at once both pass the check, and one
    # fails on pg_type's unique index (two hosts running `migrate` at deploy).
    # A transaction-scoped advisory lock ("dbqueue" as a number) makes the
    # second wait for the first and then find everything in place.
    migrate_lock = "SELECT pg_advisory_xact_lock(28255737111475557)"
    wakeup = "notify"
    # The database's clock, which every worker on every host shares; and
    # clock_timestamp(), not now(): the moment of the statement, not of the
    # transaction's start.
    now_ms = ("COALESCE(:now_ms, FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint)")
    # Takers of one limit's slots queue here, for the few statements of a
    # take (a number made from the limit's name: Queue._rate_lock_key).
    rate_lock = "SELECT pg_advisory_xact_lock(:lock_key)"
    payload_text = "payload"
    # A cast to json would fail the whole statement on one payload that is
    # not JSON (PostgreSQL 15 has no IS JSON): the value of the first "to"
    # key, a JSON string or array, taken by a regular expression.
    failed_recipient = (r"""substring(payload from '"to"\s*:\s*"""
                        r"""("(?:[^"\\]|\\.)*"|\[[^]]*\])')""")
    autoincrement = "BIGSERIAL PRIMARY KEY"
    bigint = "BIGINT"
    failed_at = "TIMESTAMPTZ NOT NULL DEFAULT now()"
    # The CodeIgniter app's failed_at is a TIMESTAMP its PHP code writes in
    # UTC: compared with now(), it would be read in the session's TimeZone
    # (Asia/Tokyo: 9 hours older, deleted too soon). The epoch of a TIMESTAMP
    # reads it as UTC, and that of our TIMESTAMPTZ is exact, in any session.
    flush = ("DELETE FROM {failed} WHERE EXTRACT(EPOCH FROM failed_at)"
             " < EXTRACT(EPOCH FROM now()) - :hours * 3600")
    # So that dbqueue writes UTC there too: CURRENT_TIMESTAMP would go into a
    # TIMESTAMP in the session's TimeZone. The text 'YYYY-MM-DD HH:MM:SS+00',
    # untyped, takes the column's type: a TIMESTAMP ignores the +00, a
    # TIMESTAMPTZ reads it; both get the same instant.
    failed_now = ":failed_at"
    # One statement: lock n ready rows, skipping those another worker has
    # locked, and mark them reserved. No two workers can return the same row.
    # attempts + 1 is capped: `integer out of range` for one row written by
    # hand would fail the whole batch, on every worker, on every restart.
    claim = ("WITH c AS (SELECT id FROM {jobs} WHERE queue = :queue AND reserved_at IS NULL"
             " AND available_at <= {now} ORDER BY available_at, id LIMIT :limit"
             " FOR UPDATE SKIP LOCKED)"
             " UPDATE {jobs} j SET reserved_at = {now}, reserved_until = {now} + :lease,"
             " attempts = LEAST(j.attempts, 2147483646) + 1 FROM c"
             " WHERE j.id = c.id RETURNING j.id, j.queue, j.payload, j.attempts, j.available_at,"
             " j.created_at")
    notify = "SELECT pg_notify(:channel, :queue)"
    # The payloads travel as one JSON array of the payload objects, joined
    # as text: `json` (unlike jsonb) hands each element back as the exact text
    # it was given, and one string parameter costs the driver nothing, where a
    # text[] parameter is escaped element by element in Python.
    # expires_at is each payload's retryUntil (a number, or JSON null).
    job_rows = {"push_many": (", expires_at",
                              "SELECT :queue, p::text, 0, NULL, {now} + :delay, {now},"
                              " CAST(p->>'retryUntil' AS bigint)"
                              " FROM json_array_elements(CAST(:payloads AS json)) WITH ORDINALITY"
                              " AS t(p, n) ORDER BY n")}
    # An insert and its notification are one statement: atomic in
    # autocommit, one round trip. A unique push that inserted nothing
    # returns no row and wakes no one.
    insert_wrap = {
        "push_notify": ("WITH j AS ({insert} RETURNING id)"
                        " SELECT id, pg_notify(:channel, :queue) FROM j"),
        "push_unique": ("WITH j AS ({insert} RETURNING id)"
                        " SELECT id, pg_notify(:channel, :queue) FROM j"),
        "retry_unique": "{insert} RETURNING id",
        "push_many": ("WITH j AS ({insert} RETURNING id)"
                      " SELECT j.id FROM j, (SELECT pg_notify(:channel, :queue)) AS n ORDER BY j.id"),
    }
    # Batches of tokens travel as two arrays: one round trip for any number.
    ack_many = ("DELETE FROM {jobs} WHERE reserved_at IS NOT NULL AND (id, attempts) IN"
                " (SELECT * FROM unnest(:ids::bigint[], :attempts::int[])) RETURNING id")
    touch_many = ("UPDATE {jobs} SET reserved_at = {now}, reserved_until = {now} + :lease"
                  " WHERE reserved_at IS NOT NULL"
                  " AND (id, attempts) IN (SELECT * FROM unnest(:ids::bigint[], :attempts::int[]))"
                  " RETURNING id")

    push_many_statement = True
    token_arrays = True

    @staticmethod
    def has_returning():
        return True

    @staticmethod
    def inserted_id(cur):
        row = cur.fetchone()   # RETURNING id: no row when nothing was inserted
        return row[0] if row else None

    @staticmethod
    def new_id(cur):
        return cur.fetchone()[0]     # RETURNING id

    @staticmethod
    def retried_id(cur):
        cur.execute("SELECT lastval()")
        return cur.fetchone()[0]

    @staticmethod
    def bench_settings(cur):
        cur.execute("SELECT current_setting('server_version'),"
                    " current_setting('synchronous_commit')")
        version, sync = cur.fetchone()
        return "PostgreSQL %s, synchronous_commit=%s" % (version.split()[0], sync)

    @staticmethod
    def parse(url, origin="QUEUE_DATABASE_URL"):
        """{"dsn": the libpq URI, "pooled": bool} from a postgresql:// URL.

        dbqueue's own parameter, ?pooler=transaction (PgBouncer in transaction
        mode, RDS Proxy, Supavisor: each transaction may run on another server
        session), is taken out: libpq refuses parameters it does not know.
        """
        base, _, query = url.partition("?")
        kept, pooled = [], False
        for item in query.split("&") if query else []:
            key, _, value = item.partition("=")
            if key != "pooler":
                kept.append(item)
            elif value == "transaction":
                pooled = True
            else:
                raise ConfigError("%s: %s: pooler=%s is not known (pooler=transaction, for a"
                                  " transaction-mode pooler such as PgBouncer)"
                                  % (origin, _mask_url(url), value))
        return {"dsn": base + ("?" + "&".join(kept) if kept else ""), "pooled": pooled}

    @classmethod
    def connect(cls, target, driver=None, timeout=None, create=True):
        module = driver if not isinstance(driver, (str, type(None))) else cls.driver(driver)
        dsn = target["dsn"]
        try:
            if module.__name__.startswith("psycopg2"):
                conn = module.connect(dsn)
                conn.autocommit = True
            elif target["pooled"]:
                # psycopg 3 prepares a statement on the server after its fifth
                # run; behind a pooler the next run may find another session.
                conn = module.connect(dsn, autocommit=True, prepare_threshold=None)
            else:
                conn = module.connect(dsn, autocommit=True)
        except module.Error as exc:
            # Raised outside the except block: the driver's own exception,
            # which may quote the password, is not chained into tracebacks.
            error = DatabaseError("cannot connect to %s: %s"
                                  % (_mask_url(dsn), _without_password(_first_line(exc), dsn)))
        else:
            return conn
        raise error

    @staticmethod
    def describe(exc):
        # One of psycopg 3's own prepared statements (_pg3_0, ...) missing,
        # already there or taking other parameters: a pooler gave this
        # connection another client's server session.
        if 'prepared statement "_pg3_' in str(exc):
            return ("the server session changed between statements: behind a transaction-mode"
                    " pooler such as PgBouncer add ?pooler=transaction to the URL")
        return _first_line(exc)

    @staticmethod
    def in_transaction(conn):
        # psycopg 3 and psycopg2 (2.8+) both have info.transaction_status; 0 is idle.
        return conn.info.transaction_status != 0

    @staticmethod
    def plain_cursor(conn):
        """A cursor returning tuples, whatever row or cursor factory `conn` has."""
        if type(conn).__module__.split(".")[0] == "psycopg2":
            import psycopg2.extensions
            return conn.cursor(cursor_factory=psycopg2.extensions.cursor)
        from psycopg.rows import tuple_row
        return conn.cursor(row_factory=tuple_row)

    @staticmethod
    def is_missing_table(exc):
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        return code == "42P01"

    @staticmethod
    def is_missing_column(exc):
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        return code == "42703"

    @staticmethod
    def is_locked(exc):
        return False

    @staticmethod
    def is_conflict(exc):
        # A serialization failure (an app's transaction at REPEATABLE READ or
        # SERIALIZABLE, see push) or a deadlock: the transaction must run again.
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        return code in ("40001", "40P01")

    denied_fix = ("grant the role SELECT, INSERT, UPDATE and DELETE on both queue tables, and"
                  " USAGE on the jobs table's id sequence")

    @staticmethod
    def is_denied(exc):
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        return code == "42501"   # insufficient_privilege


class _MySQL(_Dialect):
    """MySQL 8.0.1+ and MariaDB 10.6+ (InnoDB), through PyMySQL or mysqlclient."""

    name = "mysql"
    label = "MySQL"
    drivers = {"pymysql": "PyMySQL", "MySQLdb": "mysqlclient"}
    placeholder = "%s"
    # Backticks, not ANSI double quotes: an app's own connection (push with
    # connection=) runs in the server's sql_mode, where "jobs" is a string.
    ident_quote = "`"
    text_type = "CHAR"
    now = "COALESCE(:now, UNIX_TIMESTAMP())"      # the server's clock, as on PostgreSQL
    # Every dbqueue session runs at READ COMMITTED (set at connect). At the
    # server's default REPEATABLE READ a locking read takes next-key locks on
    # the gaps it walks (blocking push() into them), and a plain read keeps
    # the snapshot of its transaction's first read.
    begin = "START TRANSACTION"
    # GET_LOCK is held by the session across the implicit commit of every DDL
    # statement: a second host running migrate waits, then finds the tables.
    migrate_lock = "SELECT GET_LOCK(LEFT(CONCAT('dbqueue.migrate.', DATABASE()), 64), 60)"
    migrate_unlock = "DO RELEASE_LOCK(LEFT(CONCAT('dbqueue.migrate.', DATABASE()), 64))"
    failed_cutoff = "CURRENT_TIMESTAMP - INTERVAL (:hours * 3600) SECOND"
    table_options = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    # No RETURNING on MySQL (MariaDB has it for INSERT and DELETE only): lock
    # the ready rows, skipping those another worker holds, then mark them
    # reserved, in one short transaction. With the jobs_ready index below this
    # touches exactly the rows it returns.
    # The lease runs from the claim (reserved_until, see "rescue"); attempts
    # stop one short of INTEGER's top, so a row claimed forever cannot overflow.
    claim_select = ("SELECT id, queue, payload, LEAST(attempts, 2147483646) + 1, available_at,"
                    " created_at"
                    " FROM {jobs}"
                    " WHERE queue = :queue AND reserved_at IS NULL AND available_at <= {now}"
                    " ORDER BY available_at, id LIMIT :limit FOR UPDATE SKIP LOCKED")
    claim_update_many = ("UPDATE {jobs} SET reserved_at = {now}, reserved_until = {now} + :lease,"
                         " attempts = LEAST(attempts, 2147483646) + 1 WHERE id IN ({ids})")
    # A batch of (id, attempts) tokens: lock the rows that still carry them,
    # then delete or touch exactly those (two round trips for any number).
    tokens_lock_many = ("SELECT id FROM {jobs} WHERE id IN ({ids}) AND reserved_at IS NOT NULL"
                        " AND (id, attempts) IN ({pairs}) FOR UPDATE")
    ack_locked_many = "DELETE FROM {jobs} WHERE id IN ({ids})"
    touch_locked_many = ("UPDATE {jobs} SET reserved_at = {now}, reserved_until = {now} + :lease"
                         " WHERE id IN ({ids})")
    # Unique jobs: no partial index and no ON CONFLICT here. INSERT IGNORE over
    # the plain unique (queue, unique_key) index inserts nothing for a taken
    # key (rowcount 0, which the default inserted_id reads as "held"). Not ON
    # DUPLICATE KEY UPDATE id = id: with CLIENT_FOUND_ROWS (set at connect)
    # its no-op update reports 1 row, as an insert does.
    unique_ignore = " IGNORE"
    unique_conflict = ""
    # A locking read sees the latest committed holder, where a plain one in
    # an app's REPEATABLE READ transaction (push with connection=) would see
    # its snapshot: a holder finished since, or none. INSERT IGNORE took this
    # share lock already; LOCK IN SHARE MODE, not FOR SHARE, which MariaDB lacks.
    unique_holder = _SQL["unique_holder"] + " LOCK IN SHARE MODE"
    # MAIL_RATE_LIMIT: the server's clock in ms, shared by every host.
    # SYSDATE(3), not NOW(3): the moment it is read, not when the statement
    # began (which may have waited for a lock first); an integer, not a DECIMAL.
    now_ms = "COALESCE(:now_ms, CAST(FLOOR(UNIX_TIMESTAMP(SYSDATE(3)) * 1000) AS SIGNED))"
    # Takers of one limit's slots queue on its lock row (slot -1, which
    # rate_oldest skips and rate_use never counts: sent_at 0). The first
    # taker makes it; ON DUPLICATE KEY locks the existing row exclusively, so
    # one statement serves whether the row is there or not (a SELECT ... FOR
    # UPDATE of a missing row would lock nothing at READ COMMITTED).
    rate_lock = ("INSERT INTO {rate} (name, slot, sent_at) VALUES (:name, -1, 0)"
                 " ON DUPLICATE KEY UPDATE sent_at = 0")
    fail_alias = "j"
    fail_upsert = (" ON DUPLICATE KEY UPDATE queue = VALUES(queue), payload = VALUES(payload),"
                   " exception = VALUES(exception), failed_at = CURRENT_TIMESTAMP")
    fail = _FAIL % _HELD + fail_upsert
    fail_waiting = _FAIL % _WAITING + fail_upsert
    set_version = ("INSERT INTO dbqueue_migrations (tbl, version) VALUES (:tbl, :version)"
                   " ON DUPLICATE KEY UPDATE version = VALUES(version)")
    state_set = ("INSERT INTO dbqueue_state (name, value, updated_at) VALUES (:name, :value, {now})"
                 " ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = VALUES(updated_at)")
    state_add = ("INSERT IGNORE INTO dbqueue_state (name, value, updated_at)"
                 " VALUES (:name, :value, {now})")
    # The dashboard's search over recipients: json_extract fails on text that
    # is not JSON, so JSON_VALID first (MySQL 5.7.8+, MariaDB 10.2.3+).
    failed_recipient = ("CASE WHEN JSON_VALID(payload)"
                        " THEN JSON_UNQUOTE(JSON_EXTRACT(payload, '$.data.to')) END")
    # `stats`: every queue, read off jobs_ready (which holds every row here)
    # one entry per queue, by a loose index scan; MariaDB walks the whole
    # index for the skip scan that the partial index serves elsewhere.
    stats_queues = "SELECT queue FROM {jobs} GROUP BY queue"
    # failed_jobs.queue is TEXT here (Laravel's layout): grouped as it is, it
    # sends MariaDB to an on-disk temporary table (1.4 s for 100,000 rows,
    # 0.2 s like this). A jobs table's queue has at most 255 characters.
    failed_counts = ("SELECT LEFT(queue, 255) AS q, COUNT(*),"
                     " SUM(CASE WHEN exception LIKE 'expired:%' THEN 1 ELSE 0 END)"
                     " FROM {failed} GROUP BY q")
    wakeup = "poll"     # no NOTIFY here: see "ready"
    # push_many: a multi-row INSERT reports its first id; the rest follow in
    # steps of auto_increment_increment, except under innodb_autoinc_lock_mode
    # 2 (MySQL 8's default), where a concurrent INSERT ... SELECT may take
    # ids in between: there each row is inserted (and asks its id) alone.
    autoinc_settings = "SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment"
    # Seconds a session waits for a row lock before error 1205 (retried).
    lock_wait_timeout = 10
    needs = {"mysql": (8, 0, 1), "mariadb": (10, 6, 0)}   # the first with SKIP LOCKED
    bigint = "BIGINT"
    # Bytes, compared exactly as on the other databases: a utf8mb4_bin
    # VARCHAR pads (PAD SPACE), so "k" and "k " were one key. 255 characters
    # of up to 4 bytes each.
    unique_key_type = "VARBINARY(1020)"
    columns_sql = ("SELECT column_name FROM information_schema.columns"
                   " WHERE table_schema = DATABASE() AND table_name = %s")
    index_names_sql = ("SELECT DISTINCT index_name FROM information_schema.statistics"
                       " WHERE table_schema = DATABASE() AND table_name = %s")

    @staticmethod
    def bench_settings(cur):
        cur.execute("SELECT VERSION(), @@innodb_flush_log_at_trx_commit, @@sync_binlog,"
                    " @@log_bin")
        version, flush, binlog_sync, binlog = cur.fetchone()
        return "%s %s, innodb_flush_log_at_trx_commit=%s, binary log %s" % (
            "MariaDB" if "mariadb" in version.lower() else "MySQL", version.split("-")[0],
            flush, "on (sync_binlog=%s)" % binlog_sync if binlog else "off")

    @classmethod
    def table_ddl(cls, jobs, failed):
        j, f = cls.ident(jobs), cls.ident(failed)
        # InnoDB keeps the AUTO_INCREMENT counter across restarts (MySQL 8,
        # MariaDB 10.2.4+): ids are never reused, as the fencing tokens need.
        return [
            "CREATE TABLE IF NOT EXISTS %s (\n"
            "    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n"
            "    queue VARCHAR(255) NOT NULL,\n"
            "    payload LONGTEXT NOT NULL,\n"
            "    attempts INTEGER NOT NULL DEFAULT 0,\n"
            "    reserved_at BIGINT,\n"
            "    available_at BIGINT NOT NULL,\n"
            "    created_at BIGINT NOT NULL,\n"
            "    reserved_until BIGINT,\n"
            "    unique_key %s,\n"
            "    expires_at BIGINT\n"
            ") %s" % (j, cls.unique_key_type, cls.table_options),
            "CREATE TABLE IF NOT EXISTS %s (\n"
            "    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n"
            "    uuid VARCHAR(255) NOT NULL UNIQUE,\n"
            "    connection TEXT NOT NULL,\n"
            "    queue TEXT NOT NULL,\n"
            "    payload LONGTEXT NOT NULL,\n"
            "    exception LONGTEXT NOT NULL,\n"
            "    failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n"
            ") %s" % (f, cls.table_options)]

    @classmethod
    def index_ddl(cls, jobs, failed):
        # MySQL has no partial index. The claim reads `queue = ? AND
        # reserved_at IS NULL AND available_at <= now ORDER BY available_at, id`:
        # with reserved_at second, the ready rows of a queue are one contiguous
        # stretch of this index already in claim order, so the locking read
        # starts at the first ready row and stops after LIMIT rows, without a
        # sort and without stepping over (or locking) reserved or delayed rows.
        return (cls._index(jobs, "_ready", "queue, reserved_at, available_at, id")
                # Finds expired reservations cheaply (NULLs sort first, skipped).
                + cls._index(jobs, "_reserved", "reserved_at")
                # At most one job per (queue, unique_key); InnoDB lets any
                # number of rows share a NULL key, as the partial index would.
                + cls._index(jobs, "_unique", "queue, unique_key", unique=True)
                + cls._index(jobs, "_expires", "queue, expires_at")
                # What `fail`'s ON DUPLICATE KEY needs on a failed table that had
                # no uuid column (the CodeIgniter app's); many NULLs allowed.
                + cls._index(failed, "_uuid", "uuid", unique=True, name=failed[:58] + "_uuid"))

    @classmethod
    def add_column_sql(cls, table, column, type_):
        return "ALTER TABLE %s ADD COLUMN %s %s" % (cls.ident(table), column, type_)

    @classmethod
    def retyped_columns(cls, cur, jobs):
        # A key column made by an earlier migrate (VARCHAR, which pads: "a"
        # and "a " collide) is changed once to the byte-exact type.
        cur.execute("SELECT data_type FROM information_schema.columns WHERE table_schema"
                    " = DATABASE() AND table_name = %s AND column_name = 'unique_key'", (jobs,))
        row = cur.fetchone()
        if row and str(row[0]).lower() != "varbinary":
            return ["ALTER TABLE %s MODIFY unique_key %s" % (cls.ident(jobs), cls.unique_key_type)]
        return []

    @classmethod
    def _index(cls, table, suffix, columns, unique=False, name=None):
        # MySQL 8 has no CREATE INDEX IF NOT EXISTS (MariaDB has).
        name = name or table + suffix
        create = "CREATE %sINDEX %s ON %s (%s)" % ("UNIQUE " if unique else "", cls.ident(name),
                                                   cls.ident(table), columns)
        return cls._unless(create, "statistics",
                           "table_name = '%s' AND index_name = '%s'" % (table, name))

    @staticmethod
    def _unless(statement, view, where):
        # `statement` unless information_schema.`view` has a row `where`: asked
        # in SQL, so that the printed script is idempotent too.
        return ["SET @dbqueue_ddl = (SELECT IF(COUNT(*) = 0, '%s', 'DO 0')"
                " FROM information_schema.%s WHERE table_schema = DATABASE() AND %s)"
                % (statement, view, where),
                "PREPARE dbqueue_ddl FROM @dbqueue_ddl",
                "EXECUTE dbqueue_ddl",
                "DEALLOCATE PREPARE dbqueue_ddl"]

    @classmethod
    def version_ddl(cls):
        return ("CREATE TABLE IF NOT EXISTS dbqueue_migrations (\n"
                "    tbl VARCHAR(63) PRIMARY KEY,\n"
                "    version INTEGER NOT NULL\n"
                ") %s" % cls.table_options)

    @classmethod
    def state_ddl(cls):
        return _Dialect.state_ddl() + " " + cls.table_options

    @classmethod
    def rate_ddl(cls):
        # The (name, sent_at) index inside CREATE TABLE: MySQL 8 has no
        # CREATE INDEX IF NOT EXISTS.
        return ["CREATE TABLE IF NOT EXISTS %s (\n"
                "    name VARCHAR(100) NOT NULL,\n"
                "    slot INTEGER NOT NULL,\n"
                "    sent_at BIGINT NOT NULL,\n"
                "    PRIMARY KEY (name, slot),\n"
                "    INDEX %s (name, sent_at)\n"
                ") %s" % (cls.ident(cls.rate_table), cls.ident(cls.rate_table + "_sent"),
                          cls.table_options)]

    @classmethod
    def sent_ddl(cls):
        return ["CREATE TABLE IF NOT EXISTS %s (\n"
                "    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n%s,\n"
                "    INDEX %s (tbl, sent_at, id)\n"
                ") %s" % (cls.ident(cls.sent_table), cls._sent_columns(),
                          cls.ident(cls.sent_table + "_time"), cls.table_options)]

    @staticmethod
    def plain_cursor(conn):
        """A cursor returning tuples, whatever cursorclass the app's connection
        has (PyMySQL's or MySQLdb's DictCursor, ...)."""
        import importlib
        cursors = importlib.import_module(type(conn).__module__.split(".")[0] + ".cursors")
        return conn.cursor(cursors.Cursor)

    @staticmethod
    def parse(rest, origin="QUEUE_DATABASE_URL"):
        """Connection arguments from what follows mysql:// (ConfigError when bad)."""
        from urllib.parse import parse_qsl, unquote, urlsplit
        url = "mysql://" + rest
        user = password = ""
        info = _userinfo(url)
        try:
            if info:
                start, colon, at = info
                user = url[start:colon or at]
                password = url[colon + 1:at] if colon else ""
                # urlsplit would end the password at a "/" or "#" in it.
                parts = urlsplit("mysql://" + url[at + 1:])
            else:
                parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigError("%s: %s: %s" % (origin, _mask_url(url), exc))
        database = unquote(parts.path[1:])
        if not database or "/" in database:
            raise ConfigError("%s: %s names no database (mysql://user:password@host:3306/dbname)"
                              % (origin, _mask_url(url)))
        args = {"host": parts.hostname or "localhost", "port": port or 3306,
                "user": unquote(user), "password": unquote(password),
                "database": database, "charset": "utf8mb4", "connect_timeout": 10}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "unix_socket" and value:
                args["unix_socket"] = value
            elif key == "connect_timeout":
                args["connect_timeout"] = _int_setting("%s connect_timeout" % origin,
                                                       value, 1, 3600)
            elif key == "charset" and _IDENT.match(value):
                args["charset"] = value
            else:
                raise ConfigError("%s: %s: unknown or empty parameter %r (MySQL URLs take"
                                  " unix_socket, connect_timeout and charset)"
                                  % (origin, _mask_url(url), key))
        args["url"] = _mask_url(url)    # for messages: never the password
        return args

    @staticmethod
    def has_returning():
        return False

    @classmethod
    def connect(cls, target, driver=None, timeout=None, create=True):
        module = driver if not isinstance(driver, (str, type(None))) else cls.driver(driver)
        client = __import__(module.__name__ + ".constants.CLIENT", fromlist=["CLIENT"])
        args = {k: v for k, v in target.items() if k != "url"}
        # FOUND_ROWS: an UPDATE reports the rows it matched, not those it
        # changed, so a heartbeat in the second of the last one still counts.
        args.update(autocommit=True, client_flag=client.FOUND_ROWS)
        if module.__name__ == "pymysql":
            # PyMySQL sends a str password as Latin-1 (a crash for "€"); the
            # mysql client and mysqlclient send the UTF-8 that was typed.
            args["password"] = args["password"].encode("utf-8")
        try:
            conn = module.connect(**args)
        except module.Error as exc:
            # Raised outside the except block: the driver's exception is not chained.
            error = DatabaseError("cannot connect to %s: %s" % (target["url"], cls.describe(exc)),
                                  transient=cls.code(exc) not in (1044, 1045, 1049))
        else:
            error = None
        if error is not None:
            raise error
        try:
            version = conn.get_server_info()
            if isinstance(version, bytes):
                version = version.decode("ascii", "replace")
            problem = cls.version_problem(version)
            if problem:
                raise DatabaseError(problem, transient=False)
            cur = conn.cursor()
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            # NO_UNSIGNED_SUBTRACTION: `available_at - now` stays a number below
            # zero on tables whose seconds are INT UNSIGNED (the CodeIgniter
            # app's); UTC, so failed_at reads the same from every host.
            cur.execute("SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@sql_mode, ''),"
                        " 'NO_UNSIGNED_SUBTRACTION'), time_zone = '+00:00',"
                        " innodb_lock_wait_timeout = %d" % cls.lock_wait_timeout)
            cur.close()
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def version_problem(cls, version):
        """None when the server has FOR UPDATE SKIP LOCKED, else why not, in one line."""
        # MariaDB before 11 says "5.5.5-10.11.6-MariaDB" in its handshake.
        text = version[6:] if version.startswith("5.5.5-") else version
        kind = "mariadb" if "mariadb" in text.lower() else "mysql"
        match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
        found = tuple(int(n) for n in match.groups()) if match else (0, 0, 0)
        need = cls.needs[kind]
        if found >= need:
            return None
        name = {"mysql": "MySQL", "mariadb": "MariaDB"}[kind]
        return ("%s %s is too old: dbqueue needs %s %s or later (FOR UPDATE SKIP LOCKED)"
                % (name, text.split("-")[0], name, ".".join(map(str, need[:2] if need[2] == 0
                                                                   else need))))

    @staticmethod
    def code(exc):
        args = getattr(exc, "args", ())
        return args[0] if args and isinstance(args[0], int) else None

    @classmethod
    def describe(cls, exc):
        args = getattr(exc, "args", ())
        if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
            return _first_line("%s (MySQL error %d)" % (args[1] or type(exc).__name__, args[0]))
        return _first_line(exc)

    @staticmethod
    def in_transaction(conn):
        status = getattr(conn, "server_status", None)     # PyMySQL; MySQLdb cannot tell
        return True if status is None else bool(status & 1)   # SERVER_STATUS_IN_TRANS

    @staticmethod
    def is_closed(conn):
        return not conn.open

    @classmethod
    def is_missing_table(cls, exc):
        return cls.code(exc) == 1146

    @classmethod
    def is_missing_column(cls, exc):
        return cls.code(exc) == 1054

    denied_fix = ("grant the account SELECT, INSERT, UPDATE and DELETE on both queue tables"
                  " (and make sure the server is not read-only)")

    @classmethod
    def is_denied(cls, exc):
        # Table or database access denied, a missing privilege, --read-only.
        return cls.code(exc) in (1142, 1143, 1044, 1227, 1290, 1836)

    @classmethod
    def is_conflict(cls, exc):
        # A deadlock (the server rolled the transaction back) or a lock wait
        # past innodb_lock_wait_timeout: the transaction is simply run again.
        return cls.code(exc) in (1213, 1205)

    @classmethod
    def is_deadlock(cls, exc):
        return cls.code(exc) == 1213

    @classmethod
    def is_lost(cls, exc):
        # Server gone away, lost during a query, could not connect, closed.
        return cls.code(exc) in (0, 2003, 2006, 2013, 2055)

    @staticmethod
    def is_locked(exc):
        return False


def _quote(identifier):
    if not _IDENT.match(identifier):
        raise ConfigError("table name %r is not a plain identifier" % (identifier,))
    return '"%s"' % identifier


def _first_line(exc):
    try:
        text = str(exc).strip()
    except Exception:   # an exception whose __str__ fails must not take the worker down
        text = ""
    return (text or type(exc).__name__).splitlines()[0]


_SCHEMA_VERSION = 3


def schema_sql(dialect, jobs="jobs", failed="failed_jobs"):
    """The DDL `migrate` runs, as one SQL script."""
    statements = ([dialect.version_ddl(), dialect.state_ddl()] + dialect.ddl(jobs, failed)
                  + dialect.rate_ddl() + dialect.sent_ddl())
    return "".join(s + ";\n" for s in statements)


###############################################################################
# The queue ###################################################################
###############################################################################

def _text(value):
    """A column read as bytes (see queue_text, payload_text) as str, bad bytes replaced."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# A recorded mail outage that no worker has confirmed for this long is left
# over from a worker that stopped during it: shown by `stats`, ignored by `health`.
_OUTAGE_STALE = 300


def _like(text):
    """A LIKE pattern (ESCAPE '!') that finds `text` anywhere, in lower case; None for none."""
    if not text:
        return None
    return "%" + re.sub(r"([!%_])", r"!\1", text.lower()) + "%"


def _uuid4():
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def _dumps(value, _encoder=[]):
    if not _encoder:   # one encoder for every payload: json.dumps() with options builds one per call
        _encoder.append(json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode)
    try:
        return _encoder[0](value)
    except ValueError as exc:  # NaN or infinity: JSON has no such numbers
        raise TypeError("job data is not JSON-serialisable: %s" % exc)


# A payload without per-job options, filled in: half what json.dumps() of
# the whole object costs, on the hot path of every push(). The same text,
# key for key, as the general case in Queue.payload().
_PAYLOAD = ('{"uuid":"%s","job":%s,"data":%s,"maxTries":null,"backoff":null,"timeout":null,'
            '"createdAt":%d}')


class Queue:
    """The jobs table of one database.

    `push()` is safe to call from several threads: each thread gets its own
    connection. Use `Queue.from_env()` to read QUEUE_* settings, or pass a URL.
    """

    def __init__(self, url=None, config=None, clock=None, driver=None):
        self.config = config or Config()
        if url is not None:
            self.config.database_url = url
        self.dialect, self._target, driver_name = _parse_url(self.config.database_url)
        self._driver = driver or driver_name
        if self.dialect.drivers and isinstance(self._driver, (str, type(None))):
            self._driver = self.dialect.driver(self._driver)   # a missing driver: ConfigError now
        # How idle workers learn of a push (see Worker._idle), and where.
        self.wakeup = self.dialect.wakeup
        self._listen_target = _listen_target(self.config.listen_url, self.dialect)
        if self.wakeup == "notify" and self._target["pooled"] and not self._listen_target:
            self.wakeup = "poll"
        self._clock = clock
        self.channel = "dbqueue_" + self.config.table
        self._sql = {}
        self._local = threading.local()
        self._conns = []
        self._push_lock_made = None    # (lock or None,) once the first push made it
        self._conns_lock = threading.Lock()
        self._schema_ready = False
        self._returning = self.dialect.has_returning()
        self._queues_seen = set()     # names push() has validated already
        # Table names go into SQL as quoted identifiers: check them now, not at the
        # first query. The jobs table's index names add up to 9 characters and
        # PostgreSQL keeps 63, so the name itself may have 54.
        _quote(self.config.failed_table)
        if len(_quote(self.config.table)) - 2 > 54:
            raise ConfigError("QUEUE_TABLE=%s is too long: at most 54 characters (index names"
                              " add _reserved to it)" % self.config.table)

    @classmethod
    def from_env(cls, environ=None, env_file=None, **kwargs):
        """A Queue configured from the environment and .env (see the README's table)."""
        return cls(config=Config.from_env(environ, env_file), **kwargs)

    def __repr__(self):
        return "Queue(%r)" % _mask_url(self.config.database_url)

    # -- connections and transactions ------------------------------------

    def now(self):
        """The queue's clock in whole seconds, or None where the server's clock decides."""
        if self._clock is not None:
            return int(self._clock())
        return int(time.time()) if self.dialect.embedded else None

    def sql(self, key):
        """(text, parameter names) of one statement, prepared once per queue."""
        prepared = self._sql.get(key)
        if prepared is None:
            template = (getattr(self.dialect, key, None) or _SQL.get(key)
                        or self.dialect.insert_job(key))
            prepared = self._sql[key] = self.dialect.prepare(
                template, self.config.table, self.config.failed_table)
        return prepared

    def execute(self, cur, key, **params):
        text, names = self.sql(key)
        if "now" in names and "now" not in params:
            params["now"] = self.now()
        cur.execute(text, [params[n] for n in names])
        return cur

    def connect(self, create=True, listen=False):
        """A new connection of the queue's own (the worker holds its own).

        `create=False` opens an existing database only and creates no tables
        (on SQLite, where first use would otherwise create both). `listen=True`:
        the connection an idle worker LISTENs on (QUEUE_LISTEN_URL's, if set).
        """
        target = (listen and self._listen_target) or self._target
        try:
            conn = self.dialect.connect(target, self._driver, create=create)
        except self._errors() as exc:
            raise DatabaseError("cannot open %s: %s" % (_mask_url(self.config.database_url),
                                                        _first_line(exc)))
        with self._conns_lock:
            self._conns.append(conn)
        if create and not self._schema_ready and self.dialect.embedded:
            # SQLite creates its tables on first use; a server database is
            # migrated on purpose (`python3 dbqueue.py migrate`). Tables that
            # are up to date are only read: no write lock at every start.
            try:
                current = self._schema_current(conn.cursor())
            except self._errors() as exc:
                raise self.translate(exc) from exc
            if current:
                self._schema_ready = True
            else:
                self._migrate(conn)
        return conn

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and (self.dialect.is_closed(conn) or getattr(self._local, "lost", False)):
            self._local.lost = False
            self.discard(conn)     # the server went away; a new connection may work
            conn = None
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    def _push_lock(self):
        """The queue's push lock (see _PushLock), made at the first push, or None."""
        made = self._push_lock_made
        if made is None:
            with self._conns_lock:
                made = self._push_lock_made
                if made is None:
                    made = self._push_lock_made = (self.dialect.push_lock(self._target),)
        return made[0]

    def close(self):
        """Close every connection this queue opened."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
            made, self._push_lock_made = self._push_lock_made, None
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
        if made is not None and made[0] is not None:
            made[0].close()
        self._local = threading.local()

    def discard(self, conn):
        """Forget a connection that failed; the next use opens a new one."""
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._conns_lock:
            if conn in self._conns:
                self._conns.remove(conn)
        try:
            conn.close()
        except Exception:
            pass

    def _errors(self):
        return self.dialect.driver_errors(self._driver)

    def statement(self, key, conn=None, **params):
        """Run one statement on its own: in autocommit it is its own transaction,
        one round trip where BEGIN/COMMIT would take three."""
        try:
            cur = (conn or self._conn()).cursor()
            return self.execute(cur, key, **params)
        except self._errors() as exc:
            raise self.translate(exc) from exc

    def transaction(self, conn=None):
        """`with q.transaction() as cur:` BEGIN (IMMEDIATE on SQLite) ... COMMIT."""
        return _Transaction(self, conn or self._conn())

    def translate(self, exc):
        """A driver exception as a dbqueue exception, with a one-line message."""
        if isinstance(exc, QueueError):
            return exc
        if self.dialect.is_missing_table(exc):
            return MissingTableError("the queue tables do not exist in %s: run `%s`" % (
                _mask_url(self.config.database_url), _command(self.config, "migrate")))
        if self.dialect.is_missing_column(exc):
            # Tables made by an older dbqueue or by the PHP app's migrations.
            return MissingTableError("the queue tables in %s lack columns of this version (%s):"
                                     " run `%s`" % (_mask_url(self.config.database_url),
                                                    _first_line(exc),
                                                    _command(self.config, "migrate")))
        if self.dialect.is_denied(exc):
            where = (os.path.abspath(self._target) if self.dialect.embedded
                     else _mask_url(self.config.database_url))
            return DatabaseError("cannot write to %s (%s): %s" % (
                where, _without_password(_first_line(exc), self.config.database_url),
                self.dialect.denied_fix), transient=False)
        transient = self.dialect.is_transient(exc, self._driver)
        if self.dialect.is_lost(exc):
            # mysqlclient still calls such a connection open: this thread's
            # next statement opens a new one (see _conn).
            self._local.lost = True
        return DatabaseError(self.dialect.describe(exc), transient=transient,
                             conflict=self.dialect.is_conflict(exc))

    # -- schema ----------------------------------------------------------

    def migrate(self):
        """Create or upgrade the tables; running it again changes nothing. Returns the version."""
        conn = self._conn()
        return self._migrate(conn)

    def _migrate(self, conn):
        try:
            return self._migrate_locked(conn)
        finally:
            if self.dialect.migrate_unlock:
                try:
                    conn.cursor().execute(self.dialect.migrate_unlock)
                except self._errors():
                    pass   # a lost connection took its lock with it

    def _migrate_locked(self, conn):
        # The plan is read from the tables as they are, not from the version
        # recorded: a failed table that was dropped, or a new QUEUE_FAILED_TABLE
        # beside an old jobs table, is made again. Read under the lock, so two
        # migrates never run the same step.
        with _Transaction(self, conn) as cur:
            if self.dialect.migrate_lock:
                cur.execute(self.dialect.migrate_lock)
                if cur.fetchone() == (0,):
                    raise DatabaseError("migrate: another migrate held the lock for 60 s")
            self._migrate_steps(cur)
            self._probe_write(cur)   # up to date is not "migrated" when no job could be written
        self._schema_ready = True
        return _SCHEMA_VERSION

    def _migrate_steps(self, cur):
        """The steps the tables still need (_migrate_plan), on `cur`, inside a transaction
        already open."""
        for statement in self._migrate_plan(cur):
            cur.execute(statement)

    def _migrate_plan(self, cur):
        """The statements `migrate` runs on this database now, in order, as
        plain SQL text: only what is missing (an empty list when up to date).
        `migrate --print` prints them, so what a DBA reviews is what runs.

        A table that exists is never made again: its missing columns are
        added instead (ALTER TABLE), before the indexes that use them.
        """
        d, jobs, failed = self.dialect, self.config.table, self.config.failed_table
        found = {name: d.columns(cur, name) for name in
                 ("dbqueue_migrations", "dbqueue_state", jobs, failed, d.rate_table,
                  d.sent_table)}
        plan = [d.version_ddl()] if not found["dbqueue_migrations"] else []
        plan += [d.state_ddl()] if not found["dbqueue_state"] else []
        tables = {"jobs": jobs, "failed": failed}
        plan += [ddl for table, ddl in zip((jobs, failed), d.table_ddl(jobs, failed))
                 if not found[table]]
        plan += [d.add_column_sql(tables[role], column, type_)
                 for role, column, type_ in d.added_columns()
                 if found[tables[role]] and column not in found[tables[role]]]
        plan += d.retyped_columns(cur, jobs) if found[jobs] else []

        def missing_indexes(statements, *names):
            have = set()
            for name in names:
                have |= d.index_names(cur, name) if found[name] else set()
            return any(name.lower() not in have for name in _INDEX_NAME.findall(
                "\n".join(statements)))
        indexes = d.index_ddl(jobs, failed)
        plan += indexes if missing_indexes(indexes, jobs, failed) else []
        rate = d.rate_ddl()
        plan += rate if not found[d.rate_table] or missing_indexes(rate, d.rate_table) else []
        sent = d.sent_ddl()
        plan += sent if not found[d.sent_table] or missing_indexes(sent, d.sent_table) else []
        version = None
        if found["dbqueue_migrations"]:
            self.execute(cur, "version", tbl=jobs)
            version = (cur.fetchone() or (None,))[0]
        if version is None or version < _SCHEMA_VERSION:
            # Literal values, so that the printed script runs as it is: the
            # table name is a validated identifier, the version a number.
            template = getattr(d, "set_version", None) or _SQL["set_version"]
            plan.append(template.replace(":tbl", "'%s'" % _quote(jobs)[1:-1])
                        .replace(":version", str(_SCHEMA_VERSION)))
        return plan

    def _schema_current(self, cur):
        """True when the tables are at this version: a read, which takes no write lock.

        The version record and each table's columns are looked at (the record
        alone would miss a failed table dropped, or a new QUEUE_FAILED_TABLE).
        """
        tables = {"jobs": self.config.table, "failed": self.config.failed_table}
        try:
            self.execute(cur, "version", tbl=tables["jobs"])
            row = cur.fetchone()
        except self._errors() as exc:
            if self.dialect.is_missing_table(exc):
                return False
            raise
        if not row or row[0] < _SCHEMA_VERSION:
            return False
        found = {role: self.dialect.columns(cur, table) for role, table in tables.items()}
        if not self.dialect.columns(cur, self.dialect.rate_table):
            return False      # MAIL_RATE_LIMIT's table, new beside a version-2 schema
        if not self.dialect.columns(cur, self.dialect.sent_table):
            return False      # the sent log's, likewise
        if found["jobs"] and self.dialect.retyped_columns(cur, tables["jobs"]):
            return False
        return all(found[role] and column in found[role]
                   for role, column, _ in self.dialect.added_columns())

    def schema_version(self):
        """The schema version recorded in the database (0 when never migrated)."""
        with self.transaction() as cur:
            try:
                self.execute(cur, "version", tbl=self.config.table)
            except self._errors() as exc:
                if self.dialect.is_missing_table(exc):
                    return 0
                raise
            row = cur.fetchone()
        return row[0] if row else 0

    def check(self, conn=None):
        """Raise MissingTableError unless both tables exist (and, with
        MAIL_RATE_LIMIT, the slots' table); else return True."""
        tables = [self.config.table, self.config.failed_table]
        if self.config.mail_rate_limit:
            tables.append(self.dialect.rate_table)
        with _Transaction(self, conn or self._conn(), write=False) as cur:
            for table in tables:
                cur.execute("SELECT 1 FROM %s WHERE 1 = 0" % self.dialect.ident(table))
                cur.fetchall()
        return True

    def check_write(self, conn=None):
        """Raise DatabaseError (not transient) unless the queue may write both
        tables: a read-only SQLite file, a role without rights. Changes nothing."""
        with _Transaction(self, conn or self._conn()) as cur:
            self._probe_write(cur)
        return True

    def check_sent(self, conn=None):
        """Raise DatabaseError (MissingTableError) unless the sent log's table
        exists and may be read and written. Changes nothing."""
        with _Transaction(self, conn or self._conn()) as cur:
            self.execute(cur, "probe_sent")
        return True

    def _probe_write(self, cur):
        for key in ("probe_update", "probe_delete", "probe_failed"):
            self.execute(cur, key)

    # -- producing -------------------------------------------------------

    def payload(self, job, data=None, max_tries=None, backoff=None, timeout=None,
                unique_key=None, expires_in=None):
        """The JSON text stored for one job (raises TypeError for non-JSON data)."""
        return self._payload(job, data, max_tries, backoff, timeout, unique_key, expires_in)[0]

    def _payload(self, job, data, max_tries, backoff, timeout, unique_key, expires_in):
        """(payload text, its deadline in unix seconds or None)."""
        if not isinstance(job, str) or not job:
            raise TypeError("job name must be a non-empty string, not %r" % (job,))
        if data is None:
            data = {}
        dated, until = self._deadline(job, data, expires_in)
        if (max_tries is None and backoff is None and timeout is None and unique_key is None
                and not dated):
            return _PAYLOAD % (_uuid4(), _dumps(job), _dumps(data), int(time.time())), None
        if max_tries is not None:
            max_tries = _int_setting("max_tries", max_tries, 1, _MAX_TRIES)
        if backoff is not None:
            backoff = ",".join(str(d) for d in _backoff_setting("backoff", backoff))
        if timeout is not None:
            timeout = _int_setting("timeout", timeout, 0, _MAX_SECONDS)
        payload = {"uuid": _uuid4(), "job": job, "data": data, "maxTries": max_tries,
                   "backoff": backoff, "timeout": timeout, "createdAt": int(time.time())}
        if unique_key is not None:
            # Also in the payload, which failed_jobs keeps: `retry` gives the
            # job its key back.
            payload["uniqueKey"] = unique_key
        if dated:
            payload["retryUntil"] = until
        return _dumps(payload), until

    def _deadline(self, job, data, expires_in):
        """(dated, retryUntil): `expires_in` seconds from now (0: none, said
        in the payload as null), else a template email's default validity;
        (False, None) when the payload says nothing (no retryUntil key)."""
        if expires_in is not None:
            seconds = _int_setting("expires_in", expires_in, 0, _MAX_SECONDS)
        else:
            seconds = _validity(self.config, job, data)
            if not seconds:
                return False, None
        return True, (self.now() or int(time.time())) + seconds if seconds else None

    def push(self, job, data=None, queue="default", delay=0, connection=None,
             max_tries=None, backoff=None, timeout=None, unique_key=None, expires_in=None):
        """Enqueue one job; returns its id.

        With `connection=` (your app's sqlite3, psycopg, psycopg2, PyMySQL or MySQLdb connection)
        the row is written inside your open transaction and is not committed:
        the job exists exactly when your own change commits.

        With `unique_key=` (a string), while a job with that key waits, is
        delayed or runs on `queue`, pushing again inserts nothing and returns
        that job's id; once it is done (or has failed) the key is free. The
        database's unique index decides, so this holds for any number of
        producers at once.

        With `expires_in=` (seconds), the job is never started after that
        deadline: it moves to failed_jobs as expired. The built-in templates'
        emails have one by default (MAIL_TEMPLATE_VALIDITY); 0 means none.
        """
        if unique_key is not None:
            return self._push_unique(job, data, queue, delay, connection, max_tries, backoff,
                                     timeout, unique_key, expires_in)
        payload, until = self._payload(job, data, max_tries, backoff, timeout, None, expires_in)
        if delay != 0 or type(delay) is not int:   # the common case skips the checks
            delay = _int_setting("delay", delay, 0, _MAX_SECONDS)
        if type(queue) is not str or queue not in self._queues_seen:
            _queue_name(queue)
            if len(self._queues_seen) < 1000:
                self._queues_seen.add(queue)
        params = dict(queue=queue, payload=payload, delay=delay, channel=self.channel,
                      expires_at=until)
        if connection is not None:
            cur = self._foreign_cursor(connection)
            self.execute(cur, "push_notify", **params)
            return self.dialect.new_id(cur)
        # The hot path of a web app: one autocommit statement, no kwargs copies.
        text, names = self.sql("push_notify")
        params["now"] = self.now()
        try:
            cur = self._conn().cursor()
            lock = self._push_lock()
            if lock is None:
                cur.execute(text, [params[n] for n in names])
            else:
                lock.acquire(cur)
                try:
                    cur.execute(text, [params[n] for n in names])
                finally:
                    lock.release(cur)
            return self.dialect.new_id(cur)
        except self._errors() as exc:
            raise self.translate(exc) from exc

    def _push_unique(self, job, data, queue, delay, connection, max_tries, backoff, timeout,
                     key, expires_in):
        _unique_key(key)
        payload, until = self._payload(job, data, max_tries, backoff, timeout, key, expires_in)
        delay = _int_setting("delay", delay, 0, _MAX_SECONDS)
        _queue_name(queue)
        params = dict(queue=queue, payload=payload, delay=delay, channel=self.channel,
                      unique_key=key, expires_at=until)
        if connection is not None:
            try:
                return self._insert_unique(self._foreign_cursor(connection), "push_unique",
                                           params)[0]
            except Exception as exc:     # the app's driver may not be ours: read its code
                if not self.dialect.is_conflict(exc):
                    raise
                # A deadlock rolled the app's transaction back, or (PostgreSQL,
                # REPEATABLE READ and up) a holder committed after its snapshot
                # aborted it: only the app can run its transaction again.
                raise DatabaseError("unique key %r: your transaction conflicted with another"
                                    " (%s): roll it back and run it again"
                                    % (key, self.dialect.describe(exc)), conflict=True) from exc
        for turn in range(1, 101):
            try:
                cur = self._conn().cursor()
                lock = self._push_lock()
                if lock is None:
                    return self._insert_unique(cur, "push_unique", params)[0]
                lock.acquire(cur)
                try:
                    return self._insert_unique(cur, "push_unique", params)[0]
                finally:
                    lock.release(cur)
            except self._errors() as exc:
                if not self.dialect.is_deadlock(exc) or turn == 100:
                    raise self.translate(exc) from exc
            # InnoDB: pushes that met on a key just freed each hold a share
            # lock on it and wait to insert; the server rolled one back (1213).
            # Each statement is its own transaction here, so it simply runs
            # again, after a short random pause so that the two part.
            import random
            time.sleep(random.uniform(0, 0.001 * min(turn, 20)))

    def _insert_unique(self, cur, key, params):
        """(id, True) for a row inserted by statement `key`, or (holder's id, False)."""
        # The holder can finish (its ack deletes the row) between the insert
        # that met its key and the read of its id: the key is free again, so
        # the insert is tried again. Each turn needs another job to take and
        # free the key in between: a few turns at most.
        for _ in range(100):
            self.execute(cur, key, **params)
            new_id = self.dialect.inserted_id(cur)
            if new_id is not None:
                return new_id, True
            row = self.execute(cur, "unique_holder", queue=params["queue"],
                               unique_key=params["unique_key"]).fetchone()
            if row is not None:
                return row[0], False
        raise DatabaseError("unique key %r: its holder kept finishing while this push ran"
                            % params["unique_key"])

    def push_many(self, job, items, queue="default", delay=0, connection=None,
                  max_tries=None, backoff=None, timeout=None, unique_key=None, expires_in=None):
        """Enqueue one job per item of `items` (data dicts) in one transaction; returns the ids."""
        if unique_key is not None:
            # One key for many jobs would keep all but the first: say so
            # rather than guess what was meant.
            raise TypeError("push_many() takes no unique_key: push each unique job with push()")
        payloads = [self._payload(job, data, max_tries, backoff, timeout, None, expires_in)
                    for data in items]
        delay = _int_setting("delay", delay, 0, _MAX_SECONDS)
        _queue_name(queue)
        if not payloads:
            return []
        if connection is not None:
            return self._insert_many(self._foreign_cursor(connection), queue, payloads, delay)
        if self.dialect.push_many_statement:
            try:
                return self._insert_many(self._conn().cursor(), queue, payloads, delay)
            except self._errors() as exc:
                raise self.translate(exc) from exc
        with self.transaction() as cur:
            return self._insert_many(cur, queue, payloads, delay)

    def _insert_many(self, cur, queue, payloads, delay):
        if self.dialect.push_many_statement:
            self.execute(cur, "push_many", queue=queue, delay=delay, channel=self.channel,
                         payloads="[%s]" % ",".join(p for p, _ in payloads))
            return [row[0] for row in cur.fetchall()]
        text, names = self.sql("push")
        now = self.now()
        params = dict(queue=queue, delay=delay, now=now)
        rows = []
        for payload, until in payloads:
            params["payload"], params["expires_at"] = payload, until
            rows.append([params[n] for n in names])
        if self.dialect.autoinc_settings:
            return self._insert_rows(cur, text, rows)
        conn = cur.connection
        if not conn.in_transaction and (conn.isolation_level is None
                                        or getattr(conn, "autocommit", None) is True):
            # The caller's connection is in autocommit mode: each row commits on
            # its own and another writer may take the ids between two, so ask
            # for each row's id.
            ids = []
            for row in rows:
                ids.append(cur.execute(text, row).lastrowid)
            return ids
        cur.executemany(text, rows)
        # AUTOINCREMENT ids inside one write transaction are consecutive.
        last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
        return list(range(last - len(payloads) + 1, last + 1))

    def _insert_rows(self, cur, text, rows):
        """MySQL: multi-row INSERTs of up to 1 MB of payloads; their ids (see autoinc_settings)."""
        cur.execute(self.dialect.autoinc_settings)
        mode, step = (int(v) for v in cur.fetchone())
        ids = []
        if mode == 2:
            for row in rows:
                cur.execute(text, row)
                ids.append(cur.lastrowid)
            return ids
        head, _, values = text.partition(" VALUES ")
        chunks, chunk, size = [], [], 0
        for row in rows:
            # Well inside max_allowed_packet (16 MB on MariaDB, 64 MB on MySQL 8).
            length = sum(len(v) for v in row if isinstance(v, str))
            if chunk and size + length > 1000000:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(row)
            size += length
        chunks.append(chunk)
        for chunk in chunks:
            cur.execute(head + " VALUES " + ", ".join([values] * len(chunk)),
                        [v for row in chunk for v in row])
            first = cur.lastrowid
            ids.extend(range(first, first + step * len(chunk), step))
        return ids

    def _foreign_cursor(self, connection):
        """A cursor on the app's connection that returns plain tuples, whatever
        row factory the app chose (psycopg's dict_row, sqlite3.Row, ...)."""
        self._check_foreign(connection)
        return self.dialect.plain_cursor(connection)

    def _check_foreign(self, connection):
        module = type(connection).__module__.split(".")[0]
        kind = {"sqlite3": _SQLite, "psycopg": _Postgres, "psycopg2": _Postgres,
                "pymysql": _MySQL, "MySQLdb": _MySQL}.get(module)
        if kind is not None and kind is not self.dialect:
            raise TypeError("connection= is a %s connection but this queue is %s"
                            % (module, self.dialect.name))
        if self.dialect.embedded and not self._schema_ready:
            self._ready_through(connection)

    def _ready_through(self, connection):
        """Make sure the tables exist for a push on the app's own SQLite connection.

        Not through a connection of ours: when the app's transaction already
        holds the write lock, ours would wait for it on this same thread, and
        fail after busy_timeout with "database is locked". The schema is read
        through the app's connection instead, and made there, inside its
        transaction, when missing (then it is checked again on the next push,
        since the app may roll it back).
        """
        try:
            cur = self.dialect.plain_cursor(connection)
            if self._schema_current(cur):
                self._schema_ready = True
            elif self.dialect.in_transaction(connection):
                self._migrate_steps(cur)
            else:
                self._conn()   # no lock held by the app: migrate as usual
        except self._errors() as exc:
            raise self.translate(exc) from exc

    # -- reserving and finishing (the worker's side) ---------------------

    def reserve(self, conn, queues, limit=1, acks=(), rescue_after=None, lease=None):
        """Reserve up to `limit` ready jobs in one transaction, in queue priority order.

        Each reserved job's attempts is incremented here, before its handler
        runs, so a job that kills its worker still uses up its attempts. `acks`
        ((id, attempts) tokens of finished jobs) are deleted in the same
        transaction: one commit acknowledges a batch and claims the next.
        `rescue_after` (seconds) first takes back the lapsed reservations of
        `queues`: those whose holder's lease (reserved_until) has passed, and
        those without a lease (reserved by the PHP app) older than that.
        `lease` (default: QUEUE_RETRY_AFTER) is how long the new reservations
        last unless touched. Returns (jobs, tokens of acks that were refused because the
        reservation had been lost).
        """
        jobs = []
        with _Transaction(self, conn) as cur:
            lost = self._ack(cur, acks) if acks else []
            now = self.now()
            if lease is None:
                lease = self.config.retry_after
            if rescue_after is not None:
                for queue in queues:
                    self.execute(cur, "rescue", queue=queue, retry_after=rescue_after, now=now)
            for queue in queues:
                want = limit - len(jobs)
                if want <= 0:
                    break
                if self._returning:
                    rows = self.execute(cur, "claim", queue=queue, limit=want, now=now,
                                        lease=lease).fetchall()
                else:
                    rows = list(self.execute(cur, "claim_select", queue=queue, limit=want,
                                             now=now).fetchall())
                    if rows and self.dialect.claim_update_many:
                        text, names = self._many_sql("claim_update", len(rows))
                        values = dict(now=now, lease=lease)
                        # The named parameters (SET ...) all come before the ids.
                        cur.execute(text, [values[n] for n in names if n != "id"]
                                    + [row[0] for row in rows])
                    else:
                        for row in rows:
                            self.execute(cur, "claim_update", id=row[0], now=now, lease=lease)
                rows.sort(key=lambda r: (r[4], r[0]))
                jobs.extend(Job(r[0], r[1], r[2], r[3], r[5]) for r in rows)
            if len(jobs) > 1:
                # A job on its second or later attempt may be the one that
                # killed its last worker: it runs in a batch of its own, so
                # that it can never cost jobs claimed beside it an attempt (or
                # their acks) again. The rest go back unclaimed, attempt
                # restored, available_at unchanged.
                keep = 1 if jobs[0].attempts > 1 else next(
                    (i for i, j in enumerate(jobs) if j.attempts > 1), len(jobs))
                for j in jobs[keep:]:
                    self.execute(cur, "unclaim", id=j.id, attempts=j.attempts)
                del jobs[keep:]
        return jobs, lost

    def _ack(self, cur, tokens):
        """Delete finished jobs; returns the tokens whose reservation was lost.
        The sent-log rows a token carries (see _Ack) are written with it."""
        lost = self._by_token(cur, "ack", tokens)
        self._log_sent(cur, [row for t in tokens for row in getattr(t, "sent", ())])
        return lost

    def _log_sent(self, cur, rows):
        """Write sent-log rows (see _sent_row) in the transaction that records
        their job's attempt, so that a message is in the log exactly when its
        job is done (or released, or failed), never after a crash before that.
        A worker whose reservation was lost writes them too: the server took
        the message all the same."""
        for row in rows:
            self.execute(cur, "sent_add", tbl=self.config.table, **row)

    def _by_token(self, cur, key, tokens, **params):
        if self.dialect.token_arrays:
            self.execute(cur, key + "_many", ids=[t[0] for t in tokens],
                         attempts=[t[1] for t in tokens], **params)
            done = {row[0] for row in cur.fetchall()}
            return [t for t in tokens if t[0] not in done]
        if self.dialect.tokens_lock_many and len(tokens) > 1:
            # No RETURNING: lock the rows that still carry their tokens, then
            # delete (or touch) exactly those.
            done = set()
            for start in range(0, len(tokens), 200):
                chunk = tokens[start:start + 200]
                args = [t[0] for t in chunk]
                for token in chunk:
                    args += token
                cur.execute(self._many_sql("tokens_lock", len(chunk))[0], args)
                mine = [row[0] for row in cur.fetchall()]
                if mine:
                    text, names = self._many_sql(key + "_locked", len(mine))
                    values = dict(params, now=self.now())
                    # The named parameters (SET ...) all come before the ids.
                    cur.execute(text, [values[n] for n in names if n != "id"] + mine)
                done.update(mine)
            return [t for t in tokens if t[0] not in done]
        if self._returning and len(tokens) > 1:
            # One statement per 200 tokens instead of one per job: most of
            # what acknowledging a batch of fast jobs costs.
            params["now"] = self.now()
            done = set()
            for start in range(0, len(tokens), 200):
                chunk = tokens[start:start + 200]
                text, names = self._many_sql(key, len(chunk))
                # The named parameters (SET ...) all come before the ids.
                args = [params[n] for n in names if n not in ("id", "attempts")]
                args += [t[0] for t in chunk]
                for token in chunk:
                    args += token
                cur.execute(text, args)
                done.update(row[0] for row in cur.fetchall())
            return [t for t in tokens if t[0] not in done]
        lost = []
        for token in tokens:
            self.execute(cur, key, id=token[0], attempts=token[1], **params)
            if cur.rowcount != 1:
                lost.append(token)
        return lost

    def _many_sql(self, key, count):
        """The dialect's `key`_many statement for `count` ids or (id, attempts) tokens."""
        prepared = self._sql.get((key, count))
        if prepared is None:
            prepared = self._sql[(key, count)] = self.dialect.prepare(
                getattr(self.dialect, key + "_many"), self.config.table,
                self.config.failed_table, ids=", ".join([":id"] * count),
                pairs=", ".join(["(:id, :attempts)"] * count))
        return prepared

    def ack(self, conn, tokens):
        """Delete finished jobs named by (id, attempts) tokens; returns the lost ones."""
        with _Transaction(self, conn) as cur:
            return self._ack(cur, tokens)

    def touch(self, conn, tokens, lease=None):
        """Heartbeat: renew held jobs' reservations for `lease` seconds (default:
        QUEUE_RETRY_AFTER) from now; returns the tokens that were lost."""
        if lease is None:
            lease = self.config.retry_after
        with _Transaction(self, conn) as cur:
            return self._by_token(cur, "touch", tokens, lease=lease)

    def unclaim(self, conn, jobs):
        """Give back held jobs that never started: attempt restored, available_at
        unchanged, so they are the next to be claimed. Returns how many were still ours."""
        count = 0
        with _Transaction(self, conn) as cur:
            for j in jobs:
                self.execute(cur, "unclaim", id=j.id, attempts=j.attempts)
                count += cur.rowcount
            if self.dialect.notify:
                for queue in sorted({j.queue for j in jobs}):
                    self.execute(cur, "notify", channel=self.channel, queue=queue)
        return count

    def release(self, conn, token, delay=0, uncount=False, acks=(), payload=None, sent=()):
        """Make a held job available again after `delay` seconds. False if it was lost.

        `delay=None` leaves its available_at as it was (a mail outage: the job
        keeps its place in the queue and its age). `uncount` gives back the
        attempt (for a job that never started, or one a mail outage stopped).
        `payload` (text) replaces the job's payload. `sent`: the sent-log
        rows of this attempt (the recipients that took an email, before
        others deferred it).
        """
        with _Transaction(self, conn) as cur:
            lost = self._ack(cur, acks) if acks else []
            self.execute(cur, "release", id=token[0], attempts=token[1],
                         delay=None if delay is None else int(delay),
                         uncount=1 if uncount else 0, payload=payload)
            released = cur.rowcount == 1
            self._log_sent(cur, sent)
            return released, lost

    def fail(self, conn, token, uuid, exception, acks=(), payload=None, sent=()):
        """Move a held job to failed_jobs, in one transaction. False if it was lost.

        `payload` (text) is stored instead of the job's own; `sent` as for release().
        """
        with _Transaction(self, conn) as cur:
            lost = self._ack(cur, acks) if acks else []
            self._log_sent(cur, sent)
            return self._to_failed(cur, "fail", "ack", uuid, exception, payload, id=token[0],
                                   attempts=token[1]), lost

    def _to_failed(self, cur, insert, delete, uuid, exception, payload=None, **where):
        """Move one job to failed_jobs: statement `insert` ("fail", or
        "fail_waiting" for a job no worker runs) copies it, `delete` removes it.
        False when the row no longer matches (taken, finished)."""
        # PostgreSQL's {failed_now}: UTC as text, which a TIMESTAMP column (the
        # app's) and a TIMESTAMPTZ one read alike, whatever the session's zone.
        failed_at = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime())
        self.execute(cur, insert, uuid=uuid, exception=exception, payload=payload,
                     failed_at=failed_at, **where)
        if cur.rowcount < 1:     # MySQL counts an upsert's update as 2
            return False
        self.execute(cur, delete, **where)
        return True

    def _fail_waiting(self, cur, rows, exception):
        """Move jobs no worker runs to failed_jobs; `rows` are (id, queue,
        payload, attempts) as read (locked) in this transaction, `exception`
        a function of the Job. Returns (Job, exception) of each one moved."""
        moved = []
        for row in rows:
            job = Job(row[0], _text(row[1]), row[2], row[3])
            text = exception(job)
            if self._to_failed(cur, "fail_waiting", "drop_waiting", job.uuid or _uuid4(), text,
                               id=job.id, retry_after=self.config.retry_after):
                moved.append((job, text))
        return moved

    def expire(self, conn, queues, now=None, limit=100):
        """Move up to `limit` jobs of `queues` that no worker runs and whose
        deadline (jobs.expires_at, from retryUntil) has passed to failed_jobs
        as expired; returns (Job, exception) of each. What the worker sweeps every few
        seconds: jobs that wait unclaimed (a mail outage, a paused queue)
        expire on time too. The PHP app's rows, which have no expires_at,
        expire when claimed."""
        moved = []
        now = now or self.now()
        with _Transaction(self, conn) as cur:
            for queue in queues:
                rows = self.execute(cur, "past_deadline", queue=queue, limit=limit, now=now,
                                    retry_after=self.config.retry_after).fetchall()
                if rows:
                    at = now or int(time.time())
                    deadline = {r[0]: r[4] for r in rows}
                    moved += self._fail_waiting(
                        cur, rows, lambda j: _expired_text(j, deadline[j.id], at))
        return moved

    def cancel(self, ids=None, queue=None, job=None):
        """Move waiting or delayed jobs to failed_jobs as cancelled (`retry`
        brings them back): those with `ids`, or every one of `queue` (whose
        job name is `job`, when given). A running job is never cancelled.

        Returns (cancelled ids, running ids, unknown ids). One transaction
        per batch of up to 500.
        """
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        text = lambda j: "cancelled: taken off the queue on %s before it ran" % stamp  # noqa: E731
        done, running, unknown = [], [], []
        if ids is not None:
            for start in range(0, len(ids), 500):
                with self.transaction() as cur:
                    rows = []
                    for job_id in ids[start:start + 500]:
                        row = self.execute(cur, "cancel_ids", id=job_id,
                                           retry_after=self.config.retry_after).fetchone()
                        if row is None:
                            unknown.append(job_id)
                        elif row[4]:
                            running.append(job_id)
                        else:
                            rows.append(row)
                    done += [j.id for j, _ in self._fail_waiting(cur, rows, text)]
            return done, running, unknown
        after = 0
        while True:
            with self.transaction() as cur:
                rows = self.execute(cur, "cancel_queue", queue=_queue_name(queue), after=after,
                                    limit=500, retry_after=self.config.retry_after).fetchall()
                if not rows:
                    return done, running, unknown
                after = rows[-1][0]
                if job is not None:
                    rows = [r for r in rows if Job(r[0], None, r[2], 0).name == job]
                done += [j.id for j, _ in self._fail_waiting(cur, rows, text)]

    def any_ready(self, conn, queues):
        """True when one of `queues` has a job ready now (one plain read, no lock)."""
        for queue in queues:
            if self.statement("ready", conn, queue=queue).fetchone() is not None:
                return True
        return False

    def ready_mark(self, conn, queues):
        """(count, highest id) of the ready jobs of each of `queues`: changes
        when a job becomes ready or is claimed (one plain read per queue)."""
        return tuple(tuple(self.statement("ready_mark", conn, queue=queue).fetchone())
                     for queue in queues)

    def next_due(self, conn, queues):
        """Seconds until the next delayed job of `queues` is due (None: nothing waiting)."""
        due = None
        with _Transaction(self, conn, write=False) as cur:
            for queue in queues:
                value = self.execute(cur, "next_due", queue=queue).fetchone()[0]
                if value is not None and (due is None or value < due):
                    due = value
        return due

    # -- shared state (dbqueue_state) -------------------------------------

    def _mail_outage_key(self):
        return "mail_outage:" + self.config.table

    def set_state(self, conn, name, value):
        """Write one dbqueue_state row (value: a JSON-able dict), stamped now."""
        with _Transaction(self, conn) as cur:
            self.execute(cur, "state_set", name=name, value=_dumps(value))

    def clear_state(self, conn, name):
        with _Transaction(self, conn) as cur:
            self.execute(cur, "state_clear", name=name)

    def _state_rows(self, conn, key, **params):
        """The rows of one read of dbqueue_state; [] also when the table is
        missing (a database migrated by an older dbqueue) or may not be read
        (a role granted only the queue tables): what it holds is extra, never
        a reason for `stats`, `health` or a worker to fail."""
        try:
            return self.statement(key, conn, **params).fetchall()
        except DatabaseError as exc:
            if exc.transient and not isinstance(exc, MissingTableError):
                raise
            return []

    def get_state(self, conn, name):
        """(value dict, seconds since it was written) or None (see _state_rows)."""
        row = next(iter(self._state_rows(conn, "state_get", name=name)), None)
        if row is None:
            return None
        try:
            value = json.loads(_text(row[0]))
        except ValueError:
            return None
        return (value, int(row[1] or 0)) if isinstance(value, dict) else None

    def mail_outage(self, conn=None):
        """The mail outage a worker recorded, or None.

        A dict: since (unix seconds), seconds (how long), error, queues (the
        paused ones), checked_ago (seconds since a worker last probed) and
        stale (true when no worker has probed for _OUTAGE_STALE seconds: its
        worker stopped during the outage).
        """
        found = self.get_state(conn or self._conn(), self._mail_outage_key())
        if found is None:
            return None
        value, age = found
        since = value.get("since") if isinstance(value.get("since"), int) else int(time.time())
        queues = value.get("queues") if isinstance(value.get("queues"), list) else []
        return {"since": since, "seconds": max(0, int(time.time()) - since),
                "error": str(value.get("error", "")), "queues": [str(q) for q in queues],
                "checked_ago": age, "stale": age > _OUTAGE_STALE}

    # -- pausing queues (dbqueue_state) -----------------------------------
    # One row per paused queue, "pause:TABLE:QUEUE", written when it was
    # paused (updated_at, by the database's clock or the queue's) with
    # {"seconds": N} when the pause ends by itself at updated_at + N: the
    # row is the whole pause, so it holds for every worker on every host and
    # ends on time with no process left to end it.

    def _pause_prefix(self):
        return "pause:%s:" % self.config.table

    def pause(self, queues, seconds=None, conn=None):
        """Stop every worker claiming jobs of `queues` (a name or a list), for
        `seconds` or until resume(). Workers see it within a second; a job
        already running finishes. A queue with no jobs may be paused too."""
        names = [_queue_name(q) for q in ([queues] if isinstance(queues, str) else queues)]
        if seconds is not None:
            if not 0 < seconds <= _MAX_SECONDS:
                raise ValueError("a pause lasts from 1 second to 10 years, not %r seconds"
                                 % (seconds,))
            seconds = int(-(-seconds // 1))     # whole seconds, as the table keeps time
        value = _dumps({} if seconds is None else {"seconds": seconds})
        with _Transaction(self, conn or self._conn()) as cur:
            for name in names:
                self.execute(cur, "state_set", name=self._pause_prefix() + name, value=value)

    def resume(self, queues, conn=None):
        """End the pause of `queues` (a name or a list); returns those that had one."""
        names = [_queue_name(q) for q in ([queues] if isinstance(queues, str) else queues)]
        resumed = []
        with _Transaction(self, conn or self._conn()) as cur:
            for name in names:
                if self.execute(cur, "state_clear", name=self._pause_prefix() + name).rowcount:
                    resumed.append(name)
        return resumed

    def paused(self, conn=None):
        """The paused queues: {queue: {"since", "until" (None: until resume()),
        "seconds_left"}}, times in unix seconds by the database's clock. One
        read of dbqueue_state: workers make it every Worker.pause_check seconds."""
        prefix = self._pause_prefix()
        found = {}
        for name, value, since, now in self._state_rows(conn or self._conn(), "state_list",
                                                        prefix=prefix + "%"):
            name = _text(name)
            try:
                value = json.loads(_text(value))
            except ValueError:
                continue
            seconds = value.get("seconds") if isinstance(value, dict) else None
            until = int(since) + seconds if isinstance(seconds, int) else None
            if name.startswith(prefix) and (until is None or until > int(now)):
                found[name[len(prefix):]] = {"since": int(since), "until": until,
                                             "seconds_left": None if until is None
                                             else until - int(now)}
        return found

    # -- a mail server's throttling (dbqueue_state) -------------------------
    # One row per jobs table, {queue: {"since": unix s, "wait": s, "next": ms
    # by the database's clock, "error": the reply}}, read before every send
    # and changed by compare-and-set, so that of all the workers on the
    # database exactly one takes a throttled queue's next turn.

    throttle_max = 300    # seconds: the wait between sends doubles from 1 up to this

    def _throttle_key(self):
        return "mail_throttle:" + self.config.table

    def _swap_state(self, name, change, conn=None):
        """Change one dbqueue_state row: change(value, now_ms) returns (the
        new value, or the same object to write nothing; a result). Read, then
        written only if no one changed it meanwhile, else again."""
        while True:
            old, now = self.statement("state_read", conn, name=name,
                                      now_ms=self._now_ms()).fetchone()
            try:
                value = json.loads(_text(old)) if old is not None else {}
            except ValueError:
                value = {}
            new, result = change(value if isinstance(value, dict) else {}, int(now))
            if new is value:
                return result
            if old is None:
                key, params = "state_add", {"value": _dumps(new)}
            elif new:
                key, params = "state_swap", {"value": _dumps(new), "old": old}
            else:
                key, params = "state_drop", {"old": old}
            if self.statement(key, conn, name=name, **params).rowcount == 1:
                return result

    def throttle_take(self, queue, conn=None):
        """Before a send on `queue`: None when the mail server is not
        throttling it, 0 when this send is its next turn (the next after it
        is a whole wait later), else the ms until that turn."""
        def take(value, now):
            entry = value.get(queue)
            if not isinstance(entry, dict):
                return value, None
            if entry["next"] > now:
                return value, entry["next"] - now
            return dict(value, **{queue: dict(entry, next=now + entry["wait"] * 1000)}), 0
        try:
            return self._swap_state(self._throttle_key(), take, conn)
        except DatabaseError as exc:
            if exc.transient and not isinstance(exc, MissingTableError):
                raise
            return None   # no dbqueue_state (an older migrate), or not ours to read

    def throttle(self, queue, error, turn, conn=None):
        """The mail server throttled a send on `queue`: returns (seconds until
        the queue's next turn, True when this began the throttling). The wait
        doubles when the send was a turn after a wait (`turn`); a reply to a
        send that left before the throttling was known changes nothing."""
        def throttled(value, now):
            entry = value.get(queue)
            if isinstance(entry, dict) and not turn:
                return value, (max(0, entry["next"] - now) / 1000.0, False)
            wait = min(entry["wait"] * 2, self.throttle_max) if isinstance(entry, dict) else 1
            since = entry["since"] if isinstance(entry, dict) else now // 1000
            return (dict(value, **{queue: {"since": since, "wait": wait, "next": now + wait * 1000,
                                           "error": error}}),
                    (float(wait), not isinstance(entry, dict)))
        return self._swap_state(self._throttle_key(), throttled, conn)

    def throttle_clear(self, queue, conn=None):
        """A message accepted on its turn: the queue sends at full speed again.
        True when it was throttled."""
        def clear(value, now):
            if queue not in value:
                return value, False
            return {q: e for q, e in value.items() if q != queue}, True
        return self._swap_state(self._throttle_key(), clear, conn)

    def mail_throttle(self, conn=None):
        """{queue: {since, seconds (throttled for), wait (seconds between
        sends), next_send (seconds until the next may leave), error}} of the
        queues the mail server throttles; {} when none (or no dbqueue_state)."""
        try:
            old, now = self.statement("state_read", conn, name=self._throttle_key(),
                                      now_ms=self._now_ms()).fetchone()
            value = json.loads(_text(old)) if old is not None else {}
        except DatabaseError as exc:
            if exc.transient and not isinstance(exc, MissingTableError):
                raise
            return {}
        except ValueError:
            return {}
        found = {}
        for queue, entry in (value.items() if isinstance(value, dict) else ()):
            try:
                found[str(queue)] = {
                    "since": int(entry["since"]),
                    "seconds": max(0, int(now) // 1000 - int(entry["since"])),
                    "wait": int(entry["wait"]),
                    "next_send": max(0, -(-(int(entry["next"]) - int(now)) // 1000)),
                    "error": str(entry.get("error", ""))}
            except (KeyError, TypeError, ValueError):
                continue
        return found

    # -- inspecting and operating -----------------------------------------

    def stats(self, conn=None, cap=_COUNT_CAP):
        """Per queue: ready, delayed, reserved, expired, failed, past_deadline,
        oldest_ready_age (seconds) and capped.

        expired counts reservations whose lease ran out; past_deadline the
        failed jobs that expired unstarted (their exception begins "expired:").
        oldest_ready_age counts from the job's available_at: when it was pushed
        (after its delay) or its retry's backoff ended; a mail outage keeps it.

        Ready and delayed jobs are counted up to `cap` + 1 (None: all): a
        count that found more is given as `cap` and named in the entry's
        `capped` list (there only then), to be shown as "100,000+". Counting a million index
        entries costs PostgreSQL 0.1-0.2 s, and an exact figure that large
        tells an operator nothing the cap does not.
        """
        limit = _NO_LIMIT if cap is None else cap + 1
        out = {}

        def entry(queue):
            queue = _text(queue)
            return out.setdefault(queue, dict(_no_jobs(queue), capped=[]))
        # A read transaction: on SQLite it never waits for a worker's write lock.
        with _Transaction(self, conn or self._conn(), write=False) as cur:
            for (queue,) in self.execute(cur, "stats_queues").fetchall():
                ready, delayed, age = self.execute(cur, "stats_waiting", queue=queue,
                                                   cap=limit).fetchone()
                counts = entry(queue)
                for key, value in (("ready", ready), ("delayed", delayed)):
                    counts[key] = min(int(value), limit - 1)
                    if value >= limit:
                        counts["capped"].append(key)
                counts["oldest_ready_age"] = int(age) if age is not None else None
            self.execute(cur, "stats_reserved", retry_after=self.config.retry_after)
            for queue, reserved, expired in cur.fetchall():
                entry(queue).update(reserved=int(reserved), expired=int(expired or 0))
            self.execute(cur, "failed_counts")
            for queue, failed, past in cur.fetchall():
                entry(queue).update(failed=int(failed), past_deadline=int(past or 0))
        for counts in out.values():
            if not counts["capped"]:
                del counts["capped"]
        return [out[q] for q in sorted(out)]

    def failed(self, queue=None, search=None, limit=None, offset=0, newest_first=False,
               before=None, after=None):
        """Failed jobs, oldest first, as dicts (payload and exception as text).

        `search` keeps those whose exception or recipients (data.to) contain
        it, in any case (ASCII letters on SQLite); `limit` and `offset` take
        one page; `before` and `after` keep only ids below or above them.
        """
        pattern = _like(search)
        key = ("failed_list", newest_first)
        prepared = self._sql.get(key)
        if prepared is None:
            prepared = self._sql[key] = self.dialect.prepare(
                getattr(self.dialect, "failed_list", None) or _SQL["failed_list"],
                self.config.table, self.config.failed_table,
                order="DESC" if newest_first else "ASC")
        text, names = prepared
        params = dict(queue=queue, search=pattern, offset=int(offset),
                      limit=_NO_LIMIT if limit is None else int(limit),
                      before=_NO_LIMIT if before is None else int(before),
                      after=-1 if after is None else int(after))
        with _Transaction(self, self._conn(), write=False) as cur:
            cur.execute(text, [params[n] for n in names])
            rows = cur.fetchall()
        return [self._failed_row(row) for row in rows]

    def failed_job(self, failed_id):
        """One failed job as a dict (as in failed()), or None when there is no such id."""
        with _Transaction(self, self._conn(), write=False) as cur:
            row = self.execute(cur, "failed_one", id=failed_id).fetchone()
        return self._failed_row(row) if row else None

    @staticmethod
    def _failed_row(row):
        id_, uuid, queue, payload, exception, failed_at = row
        return {"id": id_, "uuid": uuid, "queue": _text(queue), "payload": _text(payload),
                "exception": exception, "failed_at": str(failed_at)}

    # -- the sent log (dbqueue_sent) ----------------------------------------

    prune_batch = 500        # sent-log rows deleted per statement

    def sent(self, to=None, since=None, queue=None, search=None, limit=50, offset=0):
        """The sent log of this jobs table, newest first, as dicts: id, sent_at
        (unix seconds), queue, uuid, job, template, subject, from, to (the
        recipients that took it), message_id, reply (the server's last).

        `to` keeps the rows whose recipients contain it, `search` those whose
        recipients, subject or Message-ID do (in any case: ASCII letters on
        SQLite); `since` is seconds back from now.
        """
        with _Transaction(self, self._conn(), write=False) as cur:
            rows = self.execute(cur, "sent_list", tbl=self.config.table, queue=queue,
                                to=_like(to), search=_like(search),
                                since=_MAX_SECONDS if since is None else int(since),
                                limit=int(limit), offset=int(offset)).fetchall()
        keys = ("id", "sent_at", "queue", "uuid", "job", "template", "subject", "from", "to",
                "message_id", "reply")
        found = [dict(zip(keys, row)) for row in rows]
        for entry in found:
            entry["queue"] = _text(entry["queue"])
            entry["to"] = entry["to"].split(", ")
        return found

    def sent_counts(self, conn=None):
        """{queue: messages sent in the last hour}; empty when the sent log's
        table does not exist (a database migrated before it did) or may not
        be read: it is extra, never a reason for `stats` to fail."""
        with _Transaction(self, conn or self._conn(), write=False) as cur:
            try:
                rows = self.execute(cur, "sent_counts", tbl=self.config.table).fetchall()
            except self._errors() as exc:
                if not (self.dialect.is_missing_table(exc) or self.dialect.is_denied(exc)):
                    raise
                return {}
        return {_text(queue): int(count) for queue, count in rows}

    def prune_sent(self, conn=None, batches=20):
        """Delete this jobs table's sent-log rows older than MAIL_LOG_DAYS,
        `prune_batch` rows per statement, at most `batches` statements (a
        worker comes back a minute later for more). Returns how many."""
        total = 0
        for _ in range(batches):
            count = self.statement("sent_prune", conn, tbl=self.config.table,
                                   age=self.config.mail_log_days * 86400,
                                   batch=self.prune_batch).rowcount
            total += count
            if count < self.prune_batch:
                break
        return total

    def retry(self, ids=None, queue=None, undated=None):
        """Move failed jobs back to the queue with attempts reset; one transaction per job.

        `ids=None` retries all (of `queue`). Returns the new job ids. A job's
        deadline (its retryUntil, or its template's validity) is removed: the
        operator asked for it to run. `undated`, a list, receives the new ids
        of the jobs that had one.
        """
        if ids is None:
            with self.transaction() as cur:
                ids = [r[0] for r in self.execute(cur, "failed_ids", queue=queue).fetchall()]
        new_ids = []
        for failed_id in ids:
            try:
                with self.transaction() as cur:
                    row = self.execute(cur, "retry_source", id=failed_id).fetchone()
                    if row is None:
                        continue
                    key = _payload_unique_key(_text(row[1]))
                    payload = self._undated(_text(row[1]))
                    if key is None:
                        self.execute(cur, "retry", id=failed_id, payload=payload)
                        new_id = self.dialect.retried_id(cur)
                    else:
                        # The job gets its unique key back. When a live job holds
                        # it meanwhile (pushed again after this one failed), the
                        # retry is that push again: nothing is inserted, and the
                        # failed job is answered by the live one.
                        new_id = self._insert_unique(
                            cur, "retry_unique", dict(id=failed_id, queue=_text(row[0]),
                                                      unique_key=key, payload=payload))[0]
                    # The row read above is locked, so this deletes it; should a
                    # dialect's lock not hold, a copy whose original another
                    # retry took is rolled back rather than made twice.
                    if self.execute(cur, "forget", id=failed_id).rowcount != 1:
                        raise _RetryLost()
            except _RetryLost:
                continue
            new_ids.append(new_id)
            if payload is not None and undated is not None:
                undated.append(new_id)
            if self.dialect.notify:
                with self.transaction() as cur:
                    self.execute(cur, "notify", channel=self.channel, queue="")
        return new_ids

    def _undated(self, payload):
        """The payload (text) with its deadline removed ("retryUntil": null),
        or None when it has none."""
        job = Job(0, None, payload, 0, created_at=0)    # any time: is there a deadline?
        if job.payload is None or _job_deadline(job, self.config)[0] is None:
            return None
        return _dumps(dict(job.payload, retryUntil=None))

    def forget(self, ids):
        """Delete failed jobs by id; returns how many were deleted."""
        count = 0
        with self.transaction() as cur:
            for failed_id in ids:
                self.execute(cur, "forget", id=failed_id)
                count += cur.rowcount
        return count

    def flush(self, hours=None):
        """Delete failed jobs (older than `hours` when given); returns how many."""
        with self.transaction() as cur:
            if hours is None:
                cur.execute("DELETE FROM %s" % self.dialect.ident(self.config.failed_table))
            else:
                self.execute(cur, "flush", hours=float(hours), age="-%f hours" % float(hours))
            return cur.rowcount

    def clear(self, queue):
        """Delete the waiting (not reserved) jobs of one queue; returns how many."""
        _queue_name(queue)
        with self.transaction() as cur:
            self.execute(cur, "clear", queue=queue)
            return cur.rowcount

    # -- MAIL_RATE_LIMIT ---------------------------------------------------

    def _now_ms(self):
        if self._clock is not None:
            return int(self._clock() * 1000)
        return int(time.time() * 1000) if self.dialect.embedded else None

    @staticmethod
    def _rate_lock_key(name):
        import hashlib
        digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _rate_now(self, cur):
        now = self._now_ms()
        return now if now is not None else int(self.execute(cur, "rate_now", now_ms=None)
                                                .fetchone()[0])

    def _rate_lock(self, cur, windows):
        # Every taker locks its windows shortest first: two never wait on each other.
        if self.dialect.rate_lock:
            for name, _, _ in windows:
                self.execute(cur, "rate_lock", lock_key=self._rate_lock_key(name), name=name)

    def _rate_count(self, cur, name, bucket, by=1):
        """Add `by` to a window's counter `bucket`, made (and the buckets that
        have left the window dropped) when it is the first of its bucket."""
        if self.execute(cur, "rate_bump", name=name, slot=bucket, by=by).rowcount == 0 and by > 0:
            self.execute(cur, "rate_add", name=name, slot=bucket, until=by)
            self.execute(cur, "rate_prune", name=name, first=bucket - _RATE_BUCKETS)

    def rate_take(self, windows, hold_ms):
        """Make room for one message in every window of a limit, or in none.

        `windows`: (name, messages, window_ms) of each, shortest first.
        Returns (taken, 0) when each had room; the caller sends, then calls
        rate_sent(taken). Returns (None, ms) when one is full: the first
        message may try again in `ms`. All in one transaction, so no window
        is ever taken without the others.

        A window under a minute is a ring of `messages` send slots, taken by
        when each message's send ended: a message takes a slot only when the
        slot's previous message finished a whole window earlier, so two
        messages inside one window never share a slot, and there are
        `messages`. A taken slot is held `hold_ms` ahead (a worker that dies
        while sending blocks it no longer than that).

        A longer window is _RATE_BUCKETS counters, each a slice of it: a
        message may leave when the counters of the slices that the last
        window touches, its own slice's included, hold fewer than `messages`;
        it is counted in its slice, and moved to a later one by rate_sent
        when its send ends there. So no window holds more than `messages`
        ends either, at the cost of holding the next one back by up to a
        slice (1/30 of the window) longer than a ring would.
        """
        taken = {"ring": [], "counters": []}
        writes, waits = [], []
        with self.transaction() as cur:
            self._rate_lock(cur, windows)
            now = taken["now"] = self._rate_now(cur)
            for name, count, window_ms in windows:
                if window_ms < 60000:
                    _, slot, sent_at, last = self.execute(cur, "rate_oldest", name=name,
                                                          now_ms=now).fetchone()
                    if slot is not None and sent_at + window_ms <= now:
                        key = "rate_take"
                    elif last is None or last + 1 < count:
                        # The ring grows one slot at a time up to `count`.
                        key, slot = "rate_add", 0 if last is None else last + 1
                    else:
                        waits.append(sent_at + window_ms - now)
                        continue
                    taken["ring"].append((name, slot, now + hold_ms))
                    writes.append(lambda k=key, n=name, s=slot: self.execute(
                        cur, k, name=n, slot=s, until=now + hold_ms))
                else:
                    size = window_ms // _RATE_BUCKETS
                    bucket = now // size
                    oldest, used = self.execute(cur, "rate_count", name=name,
                                                first=bucket - _RATE_BUCKETS).fetchone()
                    if int(used or 0) >= count:
                        # Until the oldest counted slice leaves the window.
                        waits.append((int(oldest) + _RATE_BUCKETS + 1) * size - now)
                        continue
                    taken["counters"].append((name, bucket, size))
                    writes.append(lambda n=name, b=bucket: self._rate_count(cur, n, b))
            if waits:
                return None, max(1, max(waits))
            for write in writes:
                write()
        return taken, 0

    def rate_sent(self, taken, windows):
        """The message rate_take() made room for has left (or failed): each
        ring slot holds the moment it ended, and a counter whose slice ended
        meanwhile counts the message in the slice it ended in."""
        for name, slot, until in taken["ring"]:
            self.statement("rate_sent", name=name, slot=slot, until=until, now_ms=self._now_ms())
        if not taken["counters"]:
            return
        now = self._now_ms()
        if now is None:
            now = int(self.statement("rate_now", now_ms=None).fetchone()[0])
        moved = [(name, bucket, now // size) for name, bucket, size in taken["counters"]
                 if now // size != bucket]
        if moved:
            with self.transaction() as cur:
                self._rate_lock(cur, windows)
                for name, bucket, ended in moved:
                    self.execute(cur, "rate_bump", name=name, slot=bucket, by=-1)
                    self._rate_count(cur, name, ended)

    def rate_use(self, conn=None):
        """MAIL_RATE_LIMIT's use now, as a dict (None when no limit is set):
        limit ("14/s,50000/d"), windows (for each: limit "14/s", messages,
        window_seconds, used: messages sent or being sent within the last
        window), and the messages, window_seconds and used of the window
        nearest to full."""
        limits = _rate_limit(self.config.mail_rate_limit)
        if limits is None:
            return None
        windows = [{"limit": "%d/%s" % (count, _RATE_UNITS[seconds]), "messages": count,
                    "window_seconds": seconds, "used": 0} for count, seconds in limits]
        with _Transaction(self, conn or self._conn(), write=False) as cur:
            try:
                now = self._rate_now(cur)
                for window in windows:
                    name = _rate_name(self.config, window["limit"])
                    if window["window_seconds"] < 60:
                        self.execute(cur, "rate_use", name=name, now_ms=now,
                                     window_ms=window["window_seconds"] * 1000)
                        window["used"] = int(cur.fetchone()[0])
                    else:
                        size = window["window_seconds"] * 1000 // _RATE_BUCKETS
                        self.execute(cur, "rate_count", name=name,
                                     first=now // size - _RATE_BUCKETS)
                        window["used"] = int(cur.fetchone()[1] or 0)
            except self._errors() as exc:
                if not self.dialect.is_missing_table(exc):
                    raise
                # Not migrated since: no worker has sent under the limit.
        fullest = max(windows, key=lambda w: w["used"] / w["messages"])
        return dict(fullest, limit=self.config.mail_rate_limit, windows=windows)


def _no_jobs(queue):
    """A queue's row of Queue.stats() before anything is counted."""
    return {"queue": queue, "ready": 0, "delayed": 0, "reserved": 0, "expired": 0, "failed": 0,
            "past_deadline": 0, "oldest_ready_age": None}


class _RetryLost(Exception):
    """Inside Queue.retry: another retry took the failed row; roll back this copy."""


class _Transaction:
    """BEGIN (IMMEDIATE on SQLite) ... COMMIT, ROLLBACK on any error.

    Connections stay in autocommit mode so that nothing holds a lock between
    transactions; every read-then-write happens inside one of these. Driver
    errors leave as DatabaseError (or MissingTableError) with one line.
    """

    __slots__ = ("queue", "conn", "cur", "write")

    def __init__(self, queue, conn, write=True):
        self.queue, self.conn, self.write = queue, conn, write

    def __enter__(self):
        try:
            self.cur = self.conn.cursor()
            self.queue.dialect.start(self.cur, self.write)
            return self.cur
        except self.queue._errors() as exc:
            raise self.queue.translate(exc) from exc
        except BaseException:
            # A signal that lands after BEGIN and before the with-block: __exit__
            # will not run, and an open transaction would hold its locks forever.
            self._rollback()
            raise

    def _rollback(self):
        try:
            self.cur.execute("ROLLBACK")
        except Exception:
            pass   # no transaction was open, or the connection is gone

    @staticmethod
    def end_abandoned(queue):
        """Roll back a transaction left open on this thread's connection of `queue`.

        A signal (a handler's JobTimeout) that lands just as a `with
        q.transaction()` in the handler ends can skip its COMMIT and ROLLBACK
        alike; the worker calls this after a handler fails, so that the open
        transaction cannot keep its locks (on SQLite: the write lock the
        worker itself then waits for, forever).
        """
        conn = getattr(queue._local, "conn", None)
        if conn is None or not queue.dialect.in_transaction(conn):
            return
        try:
            conn.cursor().execute("ROLLBACK")
        except Exception:
            queue.discard(conn)   # a connection in an unknown state is not reused

    def __exit__(self, kind, exc, tb):
        try:
            if kind is None:
                self.cur.execute("COMMIT")
                return False
            self._rollback()   # the error that got us here is the one that matters
        except self.queue._errors() as error:
            raise self.queue.translate(error) from error
        finally:
            try:
                self.cur.close()
            except Exception:
                pass
        if exc is not None and isinstance(exc, self.queue._errors()):
            raise self.queue.translate(exc) from exc
        return False


###############################################################################
# Jobs ########################################################################
###############################################################################

_registry = {}


class _Current(threading.local):
    job = None      # the Job this thread's handler runs: a class default reads fast (push())


_current = _Current()


def job(name=None, max_tries=None, backoff=None, timeout=None):
    """Register a handler under `name` (default: the function's name).

        @dbqueue.job("resize_image", max_tries=5, backoff="5,30", timeout=120)
        def resize_image(data): ...

    Handlers are looked up by this name only, never imported from a payload.
    The options are defaults that a job's own payload can override.
    """
    def register(func):
        key = name or func.__name__
        old = _registry.get(key, (func,))[0]
        # The same function again (a reload, or this file both as __main__
        # and as dbqueue) replaces itself quietly; another one is a mistake
        # that would otherwise run the wrong handler without a word.
        where = [(getattr(f, "__module__", "?"), getattr(f, "__qualname__", repr(f)))
                 for f in (func, old)]
        if where[0][1] != where[1][1] or len({m for m, _ in where} - {"__main__"}) > 1:
            import warnings
            warnings.warn("dbqueue: job %r registered twice: %s.%s replaces %s.%s"
                          % ((key,) + where[0] + where[1]), RuntimeWarning, stacklevel=2)
        _registry[key] = (func, max_tries, backoff, timeout)
        return func
    if callable(name):
        func, name = name, None
        return register(func)
    return register


def current_job():
    """The Job the calling handler is running (None outside a handler)."""
    return getattr(_current, "job", None)


def _hold_interrupts(hold):
    """Defer (True) or allow again (False) the interruption of the handler that
    runs in this thread (see Worker._defer); nothing outside a handler."""
    job = _current.job
    if job is not None and job.worker is not None:
        if hold:
            job.worker._defer()
        else:
            job.worker._undefer()


class Job:
    """One reserved job: `id`, `queue`, `attempts` (this try is number `attempts`),
    `uuid`, `name`, `data`, and `error` when the payload could not be read."""

    __slots__ = ("id", "queue", "raw", "attempts", "uuid", "name", "data", "payload",
                 "error", "worker", "started", "next_payload", "created_at", "sent")

    def __init__(self, id, queue, raw, attempts, created_at=None):
        self.id, self.queue, self.raw, self.attempts = id, queue, raw, attempts
        self.created_at = created_at      # unix seconds (jobs.created_at)
        self.uuid = self.name = self.error = self.worker = None
        # Payload text to store when the job is released or failed: set by a
        # handler that did part of its work (the recipients an email still needs).
        self.next_payload = None
        self.sent = []     # the sent log's rows of this attempt (see _sent_row)
        self.data = self.payload = None
        self.started = 0.0
        # Built inside the claim transaction: an escaping error would roll
        # the claim back and stop every worker on this row, again and again.
        payload, self.error = _decode_payload(raw)
        if self.error:
            return
        if not isinstance(payload, dict):
            self.error = "payload is JSON but not an object"
            return
        self.payload = payload
        uuid = payload.get("uuid")
        # failed_jobs.uuid is VARCHAR(255) and PostgreSQL text holds no NUL:
        # a hand-written uuid that fits neither is replaced, not stored.
        ok = isinstance(uuid, str) and 0 < len(uuid) <= 255 and "\x00" not in uuid
        self.uuid = uuid if ok else None
        name = payload.get("job")
        if not isinstance(name, str) or not name:
            self.error = "payload names no job"
            return
        self.name = name
        data = payload.get("data", {})
        self.data = {} if data is None else data

    @property
    def token(self):
        """(id, attempts): names this reservation; a stale worker's token no longer matches."""
        return (self.id, self.attempts)

    def __repr__(self):
        return "Job(id=%r, name=%r, queue=%r, attempts=%r)" % (self.id, self.name, self.queue,
                                                                self.attempts)


###############################################################################
# The worker ##################################################################
###############################################################################

class _Ack(tuple):
    """A finished job's (id, attempts) token that carries `sent`, the sent-log
    rows its acknowledgement writes: wherever the ack is written (with the
    next claim, on its own, at exit), they are written in its transaction."""

    def __new__(cls, token, sent):
        ack = super().__new__(cls, token)
        ack.sent = sent
        return ack


class _Log:
    """One line per event on stderr: text (`key=value`) or JSON (one object a line).

        2026-05-04T10:00:00.123Z INFO    job id=7 name=send_email queue=emails attempt=1/3 outcome=done ms=41.7
        {"time": "2026-05-04T10:00:00.123Z", "level": "info", "message": "job", "id": 7, ...}

    Times are UTC. Fields that are None are left out. Job data is never
    logged: it holds addresses and tokens.
    """

    LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

    def __init__(self, stream=None, level="info", fmt="text"):
        self.stream = stream
        self.level = self.LEVELS[level]
        self.json = fmt == "json"
        self._second = None
        self._stamp = ""
        self._lock = threading.RLock()  # re-entrant: the signal handler logs too, possibly mid-line

    def _time(self, now):
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%03dZ" % (self._stamp, int((now - second) * 1000))

    def log(self, level, message, **fields):
        if self.LEVELS[level] < self.level:
            return
        stamp = self._time(time.time())
        if self.json:
            record = {"time": stamp, "level": level, "message": message}
            record.update((k, v) for k, v in fields.items() if v is not None)
            line = json.dumps(record, default=str)
        else:
            parts = ["%s %-7s %s" % (stamp, level.upper(), message)]
            for key, value in fields.items():
                if value is None:
                    continue
                value = str(value)
                if not value or " " in value or '"' in value or "=" in value:
                    # Backslashes as written (a PHP class name is searched for)
                    # unless a quote or a control character needs escaping, or
                    # a reader would take one for an escape: one at the end (of
                    # the closing quote) or two in a row.
                    plain = (value.isascii() and value.isprintable() and '"' not in value
                             and not value.endswith("\\") and "\\\\" not in value)
                    value = '"%s"' % value if plain else json.dumps(value)
                parts.append("%s=%s" % (key, value))
            line = " ".join(parts)
        stream = self.stream or sys.stderr
        with self._lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed stderr must not stop the worker

    def debug(self, message, **fields):
        self.log("debug", message, **fields)

    def info(self, message, **fields):
        self.log("info", message, **fields)

    def warning(self, message, **fields):
        self.log("warning", message, **fields)

    def error(self, message, **fields):
        self.log("error", message, **fields)


def _rss_mb():
    """Resident memory of this process in MB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1048576.0
    except (OSError, ValueError, IndexError):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1048576.0 if sys.platform == "darwin" else 1024.0)


class Worker:
    """Reserves jobs from `queues` (list order is priority order) and runs their handlers.

    At least once: a job is deleted only after its handler returns, so a crash
    between the handler's side effect and the delete runs it again. While a
    job is held, a heartbeat moves its reservation forward every
    retry_after/3 seconds, so a long job is never handed to a second worker
    while this one lives; retry_after only measures how long a dead worker's
    jobs wait.
    """

    # A worker holds at most this much work ahead of the handler it runs, so
    # that a second worker is never left idle behind a long prefetched batch.
    batch_seconds = 0.05
    batch_max = 100
    # The batch is sized by how long recent jobs took; when jobs turn slow,
    # a job that has run this long gives the rest of its batch back (attempts
    # restored), for an idle worker to take, instead of holding it.
    hold_seconds = 0.2
    # Acks of jobs shorter than this ride along with the next claim (one
    # commit per batch); slower jobs are acknowledged as soon as they finish.
    ack_delay_seconds = 0.005
    # How long a handler that ignores its timeout may keep running before the
    # worker records the attempt and exits so that its supervisor restarts it.
    timeout_grace = 10.0
    poll_interval = 0.01
    # Where idle workers poll (MySQL): the longest pause between two looks,
    # about half of it the push -> start latency of a long-idle worker.
    poll_max = 0.1
    # A held job starts only while its reservation is known to be ours: when
    # the last confirmation of the batch (its claim, or a heartbeat) is older
    # than this (or a quarter of the lease, if less), one touch of the batch
    # confirms it first, and jobs it finds lost are dropped, never started.
    # Well under the lease, so a pause of the process (SIGSTOP, a frozen VM)
    # is noticed before anything it held is started.
    confirm_seconds = 1.0
    # How often a worker moves the jobs of its queues that wait past their
    # deadline to failed_jobs (one indexed read, see Queue.expire).
    sweep_seconds = 5.0
    # How often the paused queues (`pause`) are read again: a pause reaches a
    # busy worker, and a resume an idle one, within about this.
    pause_check = 0.5

    def __init__(self, queue, queues=("default",), tries=None, backoff=None, timeout=None,
                 sleep=3.0, memory=None, log=None, concurrency=1):
        self.queue = queue
        self.queues = [_queue_name(q) for q in ([queues] if isinstance(queues, str) else queues)]
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        config = queue.config
        self.tries = tries if tries is not None else config.max_attempts
        self.backoff = _backoff_setting("backoff", backoff) if backoff is not None else config.backoff
        self.timeout = timeout if timeout is not None else config.timeout
        self.sleep = sleep
        self.memory = memory
        self.log = log or _Log()
        self.resources = {}       # per-worker objects handlers reuse (an SMTP connection); closed at exit
        self._listen = self.resources   # where the LISTEN connection lives (slots share the pool's)
        self.concurrency = _int_setting("concurrency", concurrency, 1, _MAX_CONCURRENCY)
        self._alarm_lock = threading.Lock()     # see _defer; before _running is set (_Slot)
        self.processed = 0
        self.exit_code = 0
        self._stop = False
        self._sigints = 0
        self._conn = None
        self._held = []           # reserved, not started
        self._running = None      # the Job whose handler runs
        self._acks = []           # tokens of finished jobs not yet deleted
        self._done_lines = {}     # their log lines, written once the ack is known
        self._lock = threading.Lock()
        self._avg = None          # moving average of handler seconds
        self._timed_out = False
        self._aborting = False    # a second SIGINT is stopping the running handler
        self._deferring = False   # see _defer
        self._pending = None      # the interruption _undefer raises
        self._rate_held = []      # _RateSlots taken by the running handler, not yet stamped
        self._hard_deadline = None
        self._heart = None
        self._locked_since = None
        self._last_rescue = 0.0
        self._last_sweep = 0.0
        self._last_prune = -60.0   # monotonic time the sent log was last pruned
        self.sent_log = bool(queue.config.mail_log_days)   # off: see _connect_first
        self._confirmed = (0.0, 0.0)   # (monotonic, wall) time the held batch was last confirmed
        self._missed_ready = False     # the last claim found nothing though a job was ready
        self._settings_cache = {}  # job name -> (registry entry, settings) for plain payloads
        self._main_thread = False
        self._mail_pause = None    # a mail outage: see "mail outages" below
        self._throttle = {}        # queue -> time.monotonic() until which the mail server throttles it
        self._outage_row = True    # a dbqueue_state outage row may exist (cleared once mail flows)
        self._state_warned = False
        self._prune_warned = False
        self._stop_on_outage = False
        self._hinted = False      # the hint about other queues' ready jobs is given once
        self._pauses = (float("-inf"), frozenset())   # (monotonic time read, paused queues of ours)

    # -- control ---------------------------------------------------------

    def stop(self):
        """Ask the worker to exit after the current job (what SIGTERM does)."""
        self._stop = True
        if getattr(self, "_idle_cond", None) is not None:   # concurrency N: wake idle slots
            self._wake_idle()

    def _on_signal(self, signum, frame):
        import signal
        if signum == signal.SIGINT:
            self._sigints += 1
        if self._sigints >= 2 and self._running is not None:
            self.log.warning("second interrupt: stopping the job now", job=self._running.id)
            self._aborting = True
            self._hard_deadline = time.monotonic() + 2.0
            self._raise(_Abort)
            return
        if not self._stop:
            self.log.info("stopping after the current job", signal=signum)
        self._stop = True

    def _on_alarm(self, signum, frame):
        if self._running is not None and not self._timed_out:
            self._timed_out = True
            self._hard_deadline = time.monotonic() + self.timeout_grace
            self._raise(JobTimeout)

    # -- interruptions -----------------------------------------------------
    # JobTimeout and a second SIGINT's _Abort land in the handler's thread
    # between any two bytecodes. Landing inside the taking or giving back of
    # something the process or other workers share (the push lock and its
    # file lock, a rate-limit slot), one would leave it held for good. Such
    # code runs between _defer() and _undefer() (through _hold_interrupts):
    # an interruption asked for meanwhile is raised by _undefer(), after the
    # thing is given back. _alarm_lock makes both atomic for a concurrent
    # worker's watchdog (_Slot._interrupt decides and raises under it); a
    # signal handler runs between two bytecodes of this thread and sees
    # _deferring set or not. A plain `with lock:` is left as it is: from 3.10
    # on, Python calls its __exit__ whatever lands (3.8 and 3.9 have a window
    # of one bytecode at its end).

    def _defer(self):
        with self._alarm_lock:
            if self.__dict__.pop("_raised", False):
                self._take_raised()    # raised before: it lands here, while nothing is held
            self._deferring = True

    def _undefer(self):
        with self._alarm_lock:
            self._deferring = False
            pending, self._pending = self._pending, None
        if pending is not None:
            raise pending()

    @staticmethod
    def _take_raised():
        for _ in range(1000):
            pass        # a backward jump: Python delivers a pending one here

    def _raise(self, exc_class):
        """Interrupt the running handler with exc_class now, or at _undefer()."""
        if not self._deferring:
            raise exc_class()
        if self._pending is not _Abort:   # a second SIGINT outranks a timeout
            self._pending = exc_class

    # -- the loop ----------------------------------------------------------

    def run(self, once=False, max_jobs=None, max_time=None, stop_when_empty=False):
        """Process jobs until stopped; returns the number of jobs handled.

        `once` handles at most one job. `max_jobs`, `max_time` (seconds) and
        `stop_when_empty` end the loop after the current job. SIGTERM and
        SIGINT (when run in the main thread) finish the current job first.
        """
        if self.concurrency > 1 and not once:
            return self._run_slots(max_jobs, max_time, stop_when_empty)
        import signal
        started = time.monotonic()
        self._main_thread = threading.current_thread() is threading.main_thread()
        previous = {}
        if self._main_thread:
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
            previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        self._heart = _Heartbeat(self)
        self._heart.start()
        # Counted from this run's start: a worker that ran before still
        # handles exactly one job with once=True.
        count = 1 if once else max_jobs
        limit = None if count is None else self.processed + count
        self._stop_on_outage = bool(once or stop_when_empty)
        try:
            self._connect_first()
            while not self._stop:
                if limit is not None and self.processed >= limit:
                    break
                if max_time is not None and time.monotonic() - started >= max_time:
                    break
                if not self._held:
                    want = self._batch_size(None if limit is None else limit - self.processed)
                    claimed = self._claim(want)
                    if not self._hinted:
                        # Only the first claim: later, other queues holding
                        # ready jobs while this one drained is normal.
                        self._hinted = True
                        if not claimed:
                            self._hint_other_queues()
                    if not claimed:
                        if once or stop_when_empty:
                            break
                        self._idle(started, max_time)
                        continue
                with self._lock:
                    # Its age is read with the pop: a heartbeat that confirms
                    # the batch from now on no longer covers this job.
                    current = self._held.pop(0) if self._held else None
                    age = self._unconfirmed_for()
                if current is None or self._paused_since_claim(current) \
                        or not self._confirm(current, age):
                    continue
                if self._process(current) is not False:   # False: given back by a mail outage
                    self.processed += 1
                if self.memory and self._over_memory():
                    break
        except _Abort:
            pass
        except DatabaseError as exc:
            # Asked to stop while the database is away and nothing is held:
            # there is nothing to lose, so this is a clean stop, not a failure.
            if not self._stop or isinstance(exc, MissingTableError):
                raise
        finally:
            self._shutdown()
            if self._main_thread:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return self.processed

    def _hint_other_queues(self):
        """Once, when this worker's queues are empty: name the queues that hold
        ready jobs, since `--queue emial` would otherwise just wait, quietly."""
        stats = self._db(lambda c: self.queue.stats(c))
        others = ["%s (%d)" % (s["queue"], s["ready"]) for s in stats
                  if s["ready"] and s["queue"] not in self.queues]
        if others:
            self.log.warning("this worker's queues are empty, but other queues have ready jobs:"
                             " is --queue right?", queues=",".join(self.queues),
                             ready_elsewhere=", ".join(others[:10]))

    def _batch_size(self, remaining):
        if self._avg is None:
            size = 1
        else:
            size = int(self.batch_seconds / max(self._avg, 1e-6))
        size = max(1, min(size, self.batch_max))
        return size if remaining is None else max(1, min(size, remaining))

    def _claim(self, want):
        """Reserve a batch (acknowledging finished jobs in the same commit)."""
        now = time.monotonic()
        rescue = None
        if now - self._last_rescue >= 1.0:
            rescue = self.queue.config.retry_after
            self._last_rescue = now
        if now - self._last_sweep >= self.sweep_seconds:
            self._last_sweep = now
            self._expire()
        if now - self._last_prune >= 60.0 and self.sent_log:
            self._last_prune = now
            self._prune_sent()
        acks = list(self._acks)
        queues = self._active_queues()
        if self._mail_pause is not None and queues == self.queues:
            want = 1    # a probe is due: fetch no batch that a failed probe hands back
        queues = self._unpaused(queues)
        confirmed = (time.monotonic(), time.time())
        jobs, lost = self._db(lambda c: self.queue.reserve(c, queues, want, acks, rescue))
        self._acked(acks, lost)
        for j in jobs:
            j.worker = self
        with self._lock:
            self._held.extend(jobs)
            self._confirmed = confirmed
        if jobs:
            self._missed_ready = False
        return bool(jobs)

    def _expire(self):
        """Move this worker's waiting jobs past their deadline to failed_jobs,
        also those of a queue it does not claim from now (a mail outage)."""
        for job, text in self._db(lambda c: self.queue.expire(c, self.queues)):
            self._log_job(job, "expired", 0, None, reason=text, level="warning")

    def _prune_sent(self):
        """MAIL_LOG_DAYS: delete the sent log's old rows; never fatal (logged once)."""
        try:
            deleted = self._db(lambda c: self.queue.prune_sent(c))
        except QueueError as exc:
            if not self._prune_warned:
                self._prune_warned = True
                self.log.warning("cannot delete old rows of the sent log", error=_first_line(exc))
            return
        if deleted:
            self.log.debug("sent log pruned", deleted=deleted, days=self.queue.config.mail_log_days)

    def _unconfirmed_for(self):
        """Seconds since the held batch's reservations were last known to be ours.
        Both clocks: a frozen VM may stop the monotonic one, not the wall clock."""
        mono, wall = self._confirmed
        return max(time.monotonic() - mono, abs(time.time() - wall))

    def _confirm(self, job, age):
        """True if `job` (just taken from the held batch) may start: its
        reservation is recent enough, or a touch of it and of the rest of the
        batch finds it still ours. Lost ones are dropped, never started."""
        limit = min(self.confirm_seconds, self.queue.config.retry_after / 4.0)
        if age < limit:
            return True
        with self._lock:
            tokens = [job.token] + [j.token for j in self._held]
        confirmed = (time.monotonic(), time.time())
        lost = set(self._db(lambda c: self.queue.touch(c, tokens)))
        with self._lock:
            self._confirmed = confirmed
        self._drop_lost(lost)
        if job.token in lost:
            self._log_lost_held(job)
            return False
        return True

    def _drop_lost(self, lost):
        """Take jobs whose reservation was lost out of the held batch (logged once each)."""
        with self._lock:
            gone = [j for j in self._held if j.token in lost]
            self._held = [j for j in self._held if j.token not in lost]
        for j in gone:
            self._log_lost_held(j)

    def _log_lost_held(self, job):
        self.log.warning("reservation lost while held (expired and taken over by another"
                         " worker?); the job is not started here", job=job.id, name=job.name,
                         attempt=job.attempts)

    def _acked(self, sent, lost):
        """After an ack of `sent` tokens: each finished job's line, now that
        its outcome is known (done, or lost when the ack was refused)."""
        lost = set(lost)
        with self._lock:
            del self._acks[:len(sent)]
            lines = [self._done_lines.pop(t, None) for t in sent]
        for token, line in zip(sent, lines):
            if line is None:
                continue
            job, elapsed, tries = line
            if token in lost:
                # The handler finished, but the reservation had lapsed and
                # another worker took the job: its run there decides.
                self._log_job(job, "lost", elapsed, tries, level="warning",
                              reason="finished after its reservation passed to another worker;"
                                     " not acknowledged here")
            else:
                self._log_job(job, "done", elapsed, tries)

    def _flush_acks(self):
        if self._acks:
            acks = list(self._acks)
            lost = self._db(lambda c: self.queue.ack(c, acks))
            self._acked(acks, lost)

    def _idle(self, started, max_time):
        """Wait until a job may be ready: a commit by someone else, a delayed job's
        time, the next rescue, `sleep` seconds, or a stop."""
        queues = self._unpaused(self._active_queues())
        due = self._db(lambda c: self.queue.next_due(c, queues)) if queues else None
        if due is not None and due <= 0:
            # A job is ready, yet the claim just found none: it came in since
            # (claim again at once), or, the second time in a row, another
            # session holds its row lock (PostgreSQL's claim skips locked
            # rows): a worker in mid-claim, or a lost client's transaction,
            # which can last until TCP keepalive ends it. Waiting 0 again
            # would spin; wait as idle workers do: a NOTIFY, a commit, `sleep`.
            if self._missed_ready:
                due = None
            self._missed_ready = True
        else:
            self._missed_ready = False
        wait = self.sleep if due is None else max(0.0, min(self.sleep, due))
        if self._mail_pause is not None:    # wake for the next probe of the mail server
            wait = min(wait, max(0.0, self._mail_pause["until"] - time.monotonic()))
        turns = [until for until in list(self._throttle.values()) if until > time.monotonic()]
        if turns:                           # and for a throttled queue's next turn
            wait = min(wait, max(0.0, min(turns) - time.monotonic()))
        deadline = time.monotonic() + wait
        if max_time is not None:
            deadline = min(deadline, started + max_time)
        wait = {"notify": self._wait_notify, "poll": self._wait_poll}.get(
            self.queue.wakeup, self._wait_sqlite)
        while True:
            end = deadline
            if self._pauses[1]:     # one of our queues is paused: look for its resume
                end = min(end, time.monotonic() + self.pause_check)
            wait(end)
            paused = self._pauses[1]
            if self._stop or end >= deadline or time.monotonic() < end or self._paused() != paused:
                return

    def _wait_poll(self, deadline):
        # No NOTIFY (MySQL; PostgreSQL behind a transaction-mode pooler): ask
        # for a ready job, often right after the queue ran dry, then every
        # poll_max seconds: one index probe each.
        # After a claim that missed a ready job (its row locked by another
        # session: SKIP LOCKED), a ready job is no news, and returning for it
        # would spin: wait for the ready rows to change instead, as a NOTIFY
        # or a commit ends the other databases' waits.
        pause = self.poll_interval
        queues = self._unpaused(self._active_queues())   # a paused queue is no news
        try:
            mark = self.queue.ready_mark(self._conn, queues) if self._missed_ready else None
        except QueueError:
            mark = None
        while not self._stop:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(pause, left))
            try:
                if mark is None:
                    if self.queue.any_ready(self._conn, queues):
                        return
                elif self.queue.ready_mark(self._conn, queues) != mark:
                    return
            except QueueError:
                return     # the next claim waits the outage out
            pause = min(pause * 1.5, self.poll_max)

    def _wait_sqlite(self, deadline):
        # PRAGMA data_version changes when another connection commits: a cheap
        # look at the WAL index, not a query of the jobs table.
        cur = self._conn.cursor()
        try:
            start = cur.execute("PRAGMA data_version").fetchone()[0]
            while not self._stop and time.monotonic() < deadline:
                time.sleep(self.poll_interval)
                if cur.execute("PRAGMA data_version").fetchone()[0] != start:
                    return
        except self.queue._errors():
            return
        finally:
            cur.close()

    # LISTEN refused (QUEUE_LISTEN_URL naming a wrong host or password): tried
    # again after these waits, seconds; idle workers poll meanwhile. Not at
    # every poll: that would be a failed login twice a second.
    listen_retry = (1, 2, 5, 10, 30)

    def _wait_notify(self, deadline):
        import select
        listener = self._listen.get("_listener")
        if listener is None:
            try:
                if time.monotonic() >= self._listen.get("_listen_retry", 0):
                    listener = self.queue.connect(listen=True)
                    cur = listener.cursor()
                    cur.execute('LISTEN "%s"' % self.queue.channel)
                    cur.close()
            except (QueueError,) + self.queue._errors() as exc:
                if listener is not None:      # connected, but LISTEN failed
                    self.queue.discard(listener)
                    listener = None
                self._listen_refused(exc)
            if listener is None:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                return
            self._listen["_listener"] = listener
            if self._listen.pop("_listen_failures", 0):
                self.log.info("listening for new jobs again")
        while not self._stop:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                ready = select.select([listener], [], [], min(left, 0.2))[0]
            except (OSError, ValueError):
                ready = [listener]
            if ready:
                if self._drain_notifies(listener):
                    return

    def _listen_refused(self, exc):
        failures = self._listen.get("_listen_failures", 0)
        if not failures:
            url = self.queue.config.listen_url or self.queue.config.database_url
            self.log.warning("cannot LISTEN for new jobs: polling meanwhile, trying again with"
                             " backoff", url=_mask_url(url),
                             error=_without_password(_first_line(exc), url))
        self._listen["_listen_failures"] = failures + 1
        wait = self.listen_retry[min(failures, len(self.listen_retry) - 1)]
        self._listen["_listen_retry"] = time.monotonic() + wait

    def _drain_notifies(self, listener):
        """Consume pending notifications; True if one names a queue we serve."""
        try:
            if hasattr(listener, "pgconn"):          # psycopg 3
                pgconn = listener.pgconn
                pgconn.consume_input()
                names = []
                while True:
                    note = pgconn.notifies()
                    if note is None:
                        break
                    names.append(note.extra.decode("utf-8", "replace"))
            else:                                    # psycopg2
                listener.poll()
                names = [n.payload for n in listener.notifies]
                del listener.notifies[:]
        except Exception:
            self._listen.pop("_listener", None)
            self.queue.discard(listener)
            return True
        return any(not n or (n in self.queues and n not in self._pauses[1]) for n in names)

    def _over_memory(self):
        rss = _rss_mb()
        if rss > self.memory:
            self.log.warning("memory limit reached: exiting so the supervisor restarts the worker",
                             rss_mb=round(rss, 1), limit_mb=self.memory)
            return True
        return False

    # -- concurrency -------------------------------------------------------
    # `concurrency` N > 1 (not with once=True): the calling thread keeps the
    # signals and supervises; N slot threads (_Slot) each claim one job at a
    # time (no prefetched batch, so nothing waits behind a long job) on their
    # own database connection and run it with their own `resources` (SMTP
    # session). One heartbeat thread (_SlotHeartbeat, its own connection)
    # renews every slot's job and is the watchdog of their timeouts; idle
    # slots share one wait (one LISTEN connection on PostgreSQL). State that
    # spans slots (stop, the count for max_jobs, the mail pause) lives here,
    # under self._pool_lock.

    def _run_slots(self, max_jobs, max_time, stop_when_empty):
        import signal
        self._started = time.monotonic()
        self._max_time = max_time
        self._stop_when_empty = self._stop_on_outage = bool(stop_when_empty)
        self._limit = None if max_jobs is None else self.processed + max_jobs
        self._taken = self.processed   # finished + running: a slot claims only under the limit
        self._pool_lock = threading.RLock()
        self._write_lock = threading.Lock()     # see _Dialect.one_writer
        self._idle_cond = threading.Condition(self._pool_lock)
        self._idle_gen = 0
        self._idle_leader = False
        self._slot_errors = []
        self._main_thread = threading.current_thread() is threading.main_thread()
        previous = {}
        try:
            # Checked once here (a wrong URL or a missing table is a setup
            # error: exit 1); the slots then open their own connections.
            self._connect_first()
            self.queue.discard(self._conn)
            self._conn = None
            self._slots = [_Slot(self, i) for i in range(self.concurrency)]
            if self._main_thread:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    previous[sig] = signal.signal(sig, self._on_slot_signal)
            self._heart = _SlotHeartbeat(self)
            self._heart.start()
            for slot in self._slots:
                slot.thread.start()
            while True:
                alive = [s for s in self._slots if s.thread.is_alive()]
                if not alive:
                    break
                alive[0].thread.join(0.1)   # signals run here, between the waits
                if (max_time is not None and not self._stop
                        and time.monotonic() - self._started >= max_time):
                    self.stop()     # stop claiming; the jobs in hand finish
        finally:
            if self._main_thread:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            self._shutdown()
        if self._slot_errors:
            raise self._slot_errors[0]
        return self.processed

    def _on_slot_signal(self, signum, frame):
        import signal
        if signum == signal.SIGINT:
            self._sigints += 1
        if self._sigints >= 2:
            running = [s for s in self._slots if s._running is not None]
            if running:
                self.log.warning("second interrupt: stopping the jobs now",
                                 jobs=",".join(str(s._running.id) for s in running
                                               if s._running is not None))
            self.stop()
            for slot in self._slots:     # each aborted job sets exit_code 130 (Worker._process)
                slot._interrupt(_Abort, 2.0)
            return
        if not self._stop:
            self.log.info("stopping after the jobs in hand", signal=signum)
        self.stop()

    def _wake_idle(self):
        with self._idle_cond:
            self._idle_gen += 1
            self._idle_cond.notify_all()

    def _take(self):
        """A slot may claim one job: under max_jobs counting the jobs in hand."""
        with self._pool_lock:
            if self._limit is not None and self._taken >= self._limit:
                return False
            self._taken += 1
            return True

    def _untake(self, done=False):
        with self._pool_lock:
            if done:
                self.processed += 1
            else:
                self._taken -= 1

    # -- one job -----------------------------------------------------------

    def _settings(self, job):
        """(max tries, backoff list, timeout) for a job: payload over handler over worker."""
        entry = _registry.get(job.name)
        payload = job.payload or {}
        if (payload.get("maxTries") is None and payload.get("backoff") is None
                and payload.get("timeout") is None):
            # The common case: the handler's or the worker's settings, which
            # are the same for every job of a name (until it is registered anew).
            cached = self._settings_cache.get(job.name)
            if cached is not None and cached[0] is entry:
                return cached[1]
            settings = self._resolve_settings(entry, payload)
            if len(self._settings_cache) < 1000:
                self._settings_cache[job.name] = (entry, settings)
            return settings
        return self._resolve_settings(entry, payload)

    def _resolve_settings(self, entry, payload):
        tries = payload.get("maxTries") or (entry and entry[1]) or self.tries
        backoff = payload.get("backoff") or (entry and entry[2])
        timeout = payload.get("timeout")
        if timeout is None:
            timeout = entry[3] if entry and entry[3] is not None else self.timeout
        try:
            tries = _int_setting("maxTries", tries, 1, _MAX_TRIES)
            backoff = _backoff_setting("backoff", backoff) if backoff else self.backoff
            timeout = _int_setting("timeout", timeout, 0, _MAX_SECONDS)
        except ConfigError:
            return self.tries, self.backoff, self.timeout
        return tries, backoff, timeout

    def _process(self, job):
        import signal
        tries, backoff, timeout = self._settings(job)
        job.started = time.monotonic()
        outcome = None
        try:
            deadline, basis = _job_deadline(job, self.queue.config)
            now = self.queue.now() or time.time()
            if deadline is not None and now >= deadline:
                # Whatever it waited for (backoff, a mail outage, a rate
                # limit), it is stale now: failed at once, never started.
                raise _NotStarted(_expired_text(job, deadline, now, basis))
            if job.error:
                raise PermanentError(job.error)
            if job.attempts > tries:
                raise PermanentError(
                    "attempt %d of %d: the job was reserved again after its last attempt's worker"
                    " died or lost the reservation (timed out or killed)" % (job.attempts, tries))
            entry = _registry.get(job.name) or _aliases().get(job.name)
            if entry is None:
                raise PermanentError(_unknown_job(job.name, job.queue))
            if not isinstance(job.data, dict):
                raise PermanentError("job data must be a JSON object")
            self._timed_out, self._pending = False, None
            _current.job = job
            self._running = job
            try:
                if timeout and self._main_thread:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                    # SIGALRM's handler runs only between bytecodes: a handler
                    # blocked inside one C call (a socket without a timeout, a
                    # database lock) is ended by the heartbeat's hard exit.
                    self._hard_deadline = job.started + timeout + self.timeout_grace
                entry[0](job.data)
            finally:
                if timeout and self._main_thread:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                self._running = None
                _current.job = None
            if self._timed_out:
                raise JobTimeout("job ran longer than its timeout (%ss)" % timeout)
        except _Abort:
            _Transaction.end_abandoned(self.queue)
            self._finish(job, "released", delay=0, reason="interrupted", uncount=True,
                         elapsed=time.monotonic() - job.started)
            self.exit_code = 130
            raise
        except _RateWait as exc:
            outcome = ("wait", exc)
        except PermanentError as exc:
            outcome = ("failed", exc)
        except _MailOutage as exc:
            outcome = ("outage", exc)
        except _MailThrottle as exc:
            outcome = ("throttle", exc)
        except JobTimeout as exc:
            outcome = ("retry", JobTimeout("job ran longer than its timeout (%ss)" % timeout))
            self._hard_deadline = None
        except BaseException as exc:   # a handler's SystemExit counts as a failure too
            outcome = ("retry", exc)
        finally:
            self._hard_deadline = None
            if self._running is not None:
                # The alarm (or a second SIGINT) landed after the handler returned,
                # inside the cleanup above, and cut it short: finish it here, or
                # the timer, the heartbeat and current_job() would all see a job
                # that is over.
                if timeout and self._main_thread:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                self._running = None
                _current.job = None
            for held in list(self._rate_held):    # cut short in _RateSlot.__exit__
                held.sent()
        elapsed = time.monotonic() - job.started
        self._avg = elapsed if self._avg is None else self._avg * 0.8 + elapsed * 0.2
        if outcome is None:
            with self._lock:
                self._acks.append(_Ack(job.token, job.sent) if job.sent else job.token)
                self._done_lines[job.token] = (job, elapsed, tries)
            # A fast job's ack waits for the next claim, also when this was the
            # batch's last job: that claim's transaction commits it whether or
            # not it finds more work, and leaving the loop flushes it too
            # (_shutdown). One commit per batch instead of two. Its log line
            # waits for the ack too (_acked).
            if elapsed >= self.ack_delay_seconds:
                self._flush_acks()
            return
        _Transaction.end_abandoned(self.queue)
        kind, exc = outcome
        if kind == "outage":
            self._mail_outage(job, exc)
            return False
        if kind == "throttle":
            self._mail_throttle(job, exc)
            return False
        if kind == "wait":
            # MAIL_RATE_LIMIT: back until the next free slot, attempt unspent.
            self._finish(job, "released", delay=exc.delay, reason=_first_line(exc), uncount=True,
                         tries=tries, elapsed=elapsed)
        elif kind == "retry" and job.attempts < tries:
            delay = backoff[min(job.attempts - 1, len(backoff) - 1)]
            self._finish(job, "released", delay=delay, reason=_first_line(exc), tries=tries,
                         elapsed=elapsed)
        else:
            self._finish(job, "failed", exc=exc, tries=tries, elapsed=elapsed)

    def _finish(self, job, outcome, delay=0, exc=None, reason=None, uncount=False, tries=None,
                elapsed=None):
        acks = list(self._acks)
        if outcome == "failed":
            text = _format_exception(exc)
            uuid = job.uuid or _uuid4()
            ok, lost = self._db(lambda c: self.queue.fail(c, job.token, uuid, text, acks,
                                                          job.next_payload, job.sent))
            reason = _first_line(exc)
        else:
            ok, lost = self._db(lambda c: self.queue.release(c, job.token, delay, uncount, acks,
                                                             job.next_payload, job.sent))
        self._acked(acks, lost)
        if not ok:
            self._log_job(job, "lost", elapsed, tries, level="warning",
                          reason="reservation lost: another worker took the job over; this"
                                 " attempt's outcome (%s) is not recorded" % outcome)
            return
        self._log_job(job, outcome, elapsed, tries, delay=delay if outcome == "released" else None,
                      reason=reason)

    def _log_job(self, job, outcome, elapsed, tries, delay=None, reason=None, level="info"):
        if reason:     # a handler's exception text: a password or a reset link may be in it
            reason = _mask_text(reason, self.queue.config, links=True)
        self.log.log(level, "job", id=job.id, name=job.name, queue=job.queue,
                     attempt="%d/%d" % (job.attempts, tries or self.tries), outcome=outcome,
                     delay=delay, ms=round((elapsed or 0) * 1000, 1), reason=reason)

    # -- paused queues -------------------------------------------------------
    # `pause` writes a dbqueue_state row per queue (Queue.pause); a worker
    # reads them at most every pause_check seconds, claims nothing from a
    # paused queue and gives back held jobs of one unstarted. An idle worker
    # with a paused queue reads them every pause_check seconds, and nothing
    # else of that queue: a resume, or the end of `--for`, is seen as soon.

    def _paused(self):
        """This worker's queues that are paused."""
        read, paused = self._pauses
        now = time.monotonic()
        if now - read < self.pause_check:
            return paused
        found = self._db(lambda c: self.queue.paused(c))
        self._pauses = (now, frozenset(q for q in self.queues if q in found))
        current = self._pauses[1]
        for name in sorted(current - paused):
            until = found[name]["until"]
            self.log.info("queue paused: its jobs wait; running ones finish", queue=name,
                          until="resume" if until is None else time.strftime(
                              "%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)))
        for name in sorted(paused - current):
            self.log.info("queue resumed", queue=name)
        return current

    def _unpaused(self, queues):
        paused = self._paused()
        return [q for q in queues if q not in paused] if paused else queues

    def _paused_since_claim(self, job):
        """True if job's queue was paused after its batch was claimed: it and
        the held jobs of paused queues go back unstarted, attempt restored and
        available_at kept (their place in the queue and their age)."""
        paused = self._paused()
        if job.queue not in paused:
            return False
        with self._lock:
            back = [job] + [j for j in self._held if j.queue in paused]
            self._held = [j for j in self._held if j.queue not in paused]
        self._db(lambda c: self.queue.unclaim(c, back))
        return True

    # -- mail outages --------------------------------------------------------
    # A mail server that is down, or refuses our login, is not the fault of the
    # mail in hand. The job goes back with its attempt given back and its
    # available_at untouched (its place in the queue, and the wait that stats
    # shows), and the queue it came from is not claimed from until the next
    # probe: the pause is the queue's, not each job's; the other
    # queues keep running. The first mail sent from that queue after the
    # probe time is the probe. Other processes see the outage as a
    # dbqueue_state row (stats, health), written here and removed when mail
    # flows again (_mail_flowing, called by the mailer).

    mail_probe = (1, 2, 5, 10, 30, 60)   # seconds between probes; the last repeats

    def _active_queues(self):
        pause = self._mail_pause
        if pause is None or time.monotonic() >= pause["until"]:
            return self._unthrottled()
        return [q for q in self._unthrottled() if q not in pause["queues"]]

    def _give_back(self, job, queues):
        """Release `job` and the held jobs of `queues`: attempts unspent,
        available_at kept (their place in the queue, and the wait stats shows)."""
        with self._lock:
            back = [job] + [j for j in self._held if j.queue in queues]
            self._held = [j for j in self._held if j.queue not in queues]
        for j in back:
            acks = list(self._acks)
            _, lost = self._db(lambda c: self.queue.release(c, j.token, None, True, acks,
                                                            j.next_payload, j.sent))
            self._acked(acks, lost)

    def _mail_outage(self, job, exc):
        now = time.monotonic()
        pause = self._mail_pause
        first = pause is None
        if first:
            pause = self._mail_pause = {"since": time.time(), "step": 0, "until": now,
                                        "queues": set()}
        elif now >= pause["until"]:
            pause["step"] += 1                 # a probe that failed
        pause["queues"].add(job.queue)
        wait = self.mail_probe[min(pause["step"], len(self.mail_probe) - 1)]
        pause["until"] = max(pause["until"], now + wait)
        self._give_back(job, pause["queues"])
        error = _first_line(exc)
        queues = ",".join(sorted(pause["queues"]))
        if self._stop_on_outage:
            self.log.error("mail server unavailable: the job was given back unspent; stopping",
                           error=error, job=job.id, queue=queues)
            self.exit_code = 1
            self._stop = True
        elif first:
            self.log.warning("mail server unavailable: pausing mail; jobs go back unspent and the"
                             " server is probed with backoff", error=error, queue=queues)
        else:
            self.log.debug("mail server still unavailable", error=error, next_probe_s=wait)
        self._outage_row = True
        self._write_outage({"since": int(pause["since"]), "error": error,
                            "queues": sorted(pause["queues"]),
                            "next_probe": int(time.time() + wait)})

    def _mail_flowing(self):
        """The mail server took (or answered about) a message: end a pause."""
        if self._mail_pause is None and not self._outage_row:
            return
        pause, self._mail_pause, self._outage_row = self._mail_pause, None, False
        if pause is not None:
            self.log.info("mail server available again; mail resumes",
                          paused_s=int(time.time() - pause["since"]))
        self._write_outage(None)

    # -- a mail server's throttling -------------------------------------------
    # A reply that says we send too fast is not the mail's fault either: the
    # job goes back as in an outage, and the queue's sends are spaced by a
    # wait kept in the database for every worker (Queue.throttle, _RateSlot).
    # Locally the queue is not claimed from until its next turn, looked at
    # again at least every throttle_recheck seconds (a turn taken elsewhere
    # may end the throttling sooner).

    throttle_recheck = 10.0

    def _unthrottled(self):
        if not self._throttle:
            return self.queues
        now = time.monotonic()
        return [q for q in self.queues if self._throttle.get(q, 0) <= now]

    def _mail_throttle(self, job, exc):
        wait = 1.0 if exc.wait is None else exc.wait     # None: not recorded in the database
        self._throttle[job.queue] = time.monotonic() + min(wait, self.throttle_recheck)
        self._give_back(job, {job.queue})
        error = _first_line(exc)
        if self._stop_on_outage:
            self.log.error("mail server throttling: the job was given back unspent; stopping",
                           error=error, job=job.id, queue=job.queue)
            self.exit_code = 1
            self._stop = True
        elif exc.first:
            self.log.warning("mail server throttling: sending on this queue slows down for every"
                             " worker (the wait between sends doubles from 1s up to %ds); jobs go"
                             " back unspent" % self.queue.throttle_max, error=error,
                             queue=job.queue)
        else:
            self.log.debug("mail server throttling", error=error, queue=job.queue,
                           next_send_s=round(wait, 1))

    def _write_outage(self, value):
        """Record (or with None remove) the outage row; never fatal."""
        key = self.queue._mail_outage_key()
        try:
            if value is None:
                self._db(lambda c: self.queue.clear_state(c, key))
            else:
                self._db(lambda c: self.queue.set_state(c, key, value))
        except QueueError as exc:
            if not self._state_warned:
                self._state_warned = True
                self.log.warning("cannot update the mail outage record that stats and health"
                                 " read: run `%s`, and grant the worker's role SELECT, INSERT,"
                                 " UPDATE and DELETE on dbqueue_state"
                                 % _command(self.queue.config, "migrate"), error=_first_line(exc))

    # -- the database connection -------------------------------------------

    def _connect_first(self):
        # The first connection is not retried: a wrong URL, password or missing
        # table at start is a configuration problem to report (exit 1, and the
        # supervisor's restart delay retries). Later losses are waited out.
        if self._conn is None:
            self._conn = self.queue.connect()
        self.queue.check(self._conn)
        self.queue.check_write(self._conn)
        if self.sent_log:
            try:
                self.queue.check_sent(self._conn)
            except DatabaseError as exc:
                if exc.transient and not isinstance(exc, MissingTableError):
                    raise
                # Mail matters more than its log: it is sent, unrecorded, and
                # the operator is told how to turn the log on.
                self.sent_log = False
                self.log.warning("the sent log is off: this worker cannot write %s; run `%s` and"
                                 " grant the worker's role SELECT, INSERT and DELETE on it (or"
                                 " set MAIL_LOG_DAYS=0)" % (self.queue.dialect.sent_table,
                                                           _command(self.queue.config, "migrate")),
                                 error=_first_line(exc))

    def _db(self, action):
        """Run action(conn), reconnecting with backoff while the database is away.

        A lost connection or a lock held past the busy timeout is waited out,
        logged once, not a crash. A missing table is not retried.
        """
        import random
        pause = 0.1
        complained = False
        conflicts = 0
        while True:
            try:
                if self._conn is None:
                    self._conn = self.queue.connect()
                result = action(self._conn)
                if complained:
                    self.log.info("database available again")
                return result
            except MissingTableError:
                raise
            except QueueError as exc:
                if isinstance(exc, DatabaseError) and exc.conflict:
                    # A deadlock or lock-wait timeout: the server rolled the
                    # transaction back; nothing to wait out. A short random
                    # pause keeps two colliding workers from meeting again.
                    conflicts += 1
                    self.log.debug("lock conflict; running the transaction again",
                                   error=_first_line(exc), tries=conflicts)
                    time.sleep(random.uniform(0, 0.001 * min(conflicts, 20)))
                    continue
                if not isinstance(exc, DatabaseError) or not exc.transient:
                    # Retrying forever would hide it: the worker exits 1 with
                    # the reason, and the job comes back after retry_after
                    # with its attempt counted, so it cannot loop forever.
                    raise
                locked = "locked" in str(exc) or "busy" in str(exc)
                if not complained:
                    if locked:
                        self.log.warning("SQLite write lock held by another connection for over"
                                         " the busy timeout; waiting")
                    else:
                        self.log.warning("database unavailable; retrying with backoff",
                                         error=_first_line(exc))
                    complained = True
                if not locked and self._conn is not None:
                    self.queue.discard(self._conn)
                    self._conn = None
                    listener = self._listen.pop("_listener", None)
                    if listener is not None:
                        self.queue.discard(listener)
                if self._stop and not (self._held or self._acks or self._running):
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _shutdown(self):
        """Give back jobs that never started, write pending acks, close everything."""
        try:
            with self._lock:
                unstarted, self._held = self._held, []
            for j in unstarted:
                acks = list(self._acks)
                _, lost = self._db(lambda c: self.queue.release(c, j.token, 0, True, acks))
                self._acked(acks, lost)
            self._flush_acks()
        except QueueError as exc:
            self.log.error("could not give back held jobs; they return after retry_after",
                           error=_first_line(exc))
        finally:
            if self._heart is not None:
                self._heart.stop()
            for name, resource in list(self.resources.items()):
                try:
                    if name == "_listener":
                        self.queue.discard(resource)
                    else:
                        resource.close()
                except Exception:
                    pass
            self.resources.clear()
            if self._conn is not None:
                self.queue.discard(self._conn)
                self._conn = None

    def _running_jobs(self):
        slots = getattr(self, "_slots", None)
        if slots is not None:
            return [j for j in (s._running for s in slots) if j is not None]
        running = self._running
        return [] if running is None else [running]

    def held_tokens(self):
        """Tokens of every job this worker holds: waiting, running and finished-unacked."""
        slots = getattr(self, "_slots", None)
        if slots is not None:
            return [t for s in slots for t in s.held_tokens()]
        with self._lock:
            tokens = [j.token for j in self._held] + list(self._acks)
            if self._running is not None:
                tokens.append(self._running.token)
        return tokens


# A PHP class name as the app's jobs carry it: App\Libraries\Queue\Jobs\SendSmsJob.
_PHP_CLASS = _Pattern(r"^\\?[A-Za-z_]\w*(?:\\[A-Za-z_]\w*)+\Z")


def _unknown_job(name, queue):
    """Why a job has no handler, and what to do about it, in one line."""
    if _PHP_CLASS.match(name):
        # As written, not repr()'s doubled backslashes: the name is searched for.
        return ("unknown job %s: a PHP job class that dbqueue does not run (queue %s);"
                " keep `php spark queue:work --queue=%s` for that queue, or register a Python"
                " handler under this exact name" % (name, queue, queue))
    return ("unknown job %r: no handler is registered under that name"
            " (start the worker with --import MODULE)" % name)


def _format_exception(exc):
    """The traceback as text that any database stores: no NUL (PostgreSQL text
    refuses it), no lone surrogates (not encodable as UTF-8)."""
    import traceback
    try:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).strip()
        if isinstance(exc, _NotStarted):
            text = str(exc)      # "expired: ...": what stats and people search for
    except Exception:   # a broken __str__ inside the traceback
        text = ""
    text = text or "%s (no message)" % type(exc).__name__
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


class _NotStarted(PermanentError):
    """A claimed job the worker does not start (past its deadline): its
    message, not a traceback, is what failed_jobs records."""


def _job_deadline(job, config):
    """(deadline in unix seconds, what set it) of a job, or (None, None).

    The payload's retryUntil (also in rows the PHP app or Laravel wrote; null
    means none); without one, a template email's default validity from the
    job's creation (jobs.created_at).
    """
    payload = job.payload if isinstance(job.payload, dict) else {}
    if "retryUntil" in payload:
        until = payload["retryUntil"]
        if isinstance(until, str) and until.strip().isdigit():
            until = int(until)
        if isinstance(until, bool) or not isinstance(until, (int, float)):
            return None, None
        return int(until), "retryUntil %s" % _utc(until)
    seconds = _validity(config, job.name, job.data)
    if not seconds or job.created_at is None:
        return None, None
    return int(job.created_at) + seconds, "queued %s; %s mail is valid for %s" % (
        _utc(job.created_at), _seed_template_name(job.data.get("template")), _duration(seconds))


def _utc(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _expired_text(job, deadline, now, basis=None):
    """The failed_jobs exception of a job not started because its deadline passed."""
    return "expired: its deadline passed %s ago (%s); it was not %s" % (
        _duration(int(now) - int(deadline)), basis or "retryUntil %s" % _utc(deadline),
        "sent" if job.name in _EMAIL_JOBS else "run")


###############################################################################
# Heartbeats and concurrency ##################################################
###############################################################################

class _Heartbeat(threading.Thread):
    """Keeps the worker's reservations alive and enforces hard timeouts.

    It has its own connection: the main thread may be inside a handler (or
    a transaction) at any moment.
    """

    def __init__(self, worker):
        super().__init__(name="dbqueue-heartbeat", daemon=True)
        self.worker = worker
        self.interval = max(worker.queue.config.retry_after / 3.0, 0.2)
        self._done = threading.Event()
        self._conn = None
        self._failing = False
        self._reported = set()    # running jobs whose loss was logged
        self._give_back_after = 0.0

    def stop(self):
        self._done.set()
        self.join(5)
        if self._conn is not None:
            self.worker.queue.discard(self._conn)
            self._conn = None

    def run(self):
        last = time.monotonic()
        while not self._done.wait(self._pause()):
            worker = self.worker
            deadline = worker._hard_deadline
            if deadline is not None and time.monotonic() > deadline and worker._main_thread:
                self._hard_exit()
            self._give_back()
            if time.monotonic() - last >= self.interval:
                last = time.monotonic()
                stamp = (last, time.time())
                tokens = worker.held_tokens()
                if tokens:
                    self._touch(tokens, stamp)

    def _pause(self):
        # Often while a job runs with others held behind it (see _give_back).
        worker = self.worker
        if worker._held and worker._running is not None:
            return min(self.interval, 0.05)
        return min(self.interval, 0.5)

    def _give_back(self):
        """The running job has run past hold_seconds: unclaim the held batch."""
        worker = self.worker
        running = worker._running
        now = time.monotonic()
        if (running is None or not worker._held or now < self._give_back_after
                or now - running.started < worker.hold_seconds):
            return
        with worker._lock:
            jobs, worker._held = worker._held, []
        try:
            count = self._with_conn(lambda c: worker.queue.unclaim(c, jobs))
        except QueueError:
            with worker._lock:
                worker._held[:0] = jobs     # still held: the heartbeat keeps them, tries again
            self._give_back_after = now + 1.0
            return
        worker.log.debug("job runs long: gave back the jobs held behind it", job=running.id,
                         count=count)

    def _with_conn(self, action):
        """action(conn) on the heartbeat's connection; a connection that died while
        idle (killed, restarted server) is replaced and the action tried once more."""
        failures = conflicts = 0
        while True:
            if self._conn is None:
                self._conn = self.worker.queue.connect()
            try:
                return action(self._conn)
            except QueueError as exc:
                if getattr(exc, "conflict", False) and conflicts < 20:
                    conflicts += 1      # rolled back by the server (MySQL): run it again
                    time.sleep(0.001 * conflicts)
                    continue
                self.worker.queue.discard(self._conn)
                self._conn = None
                failures += 1
                if failures == 2:
                    raise

    def _touch(self, tokens, confirmed=None):
        """Renew `tokens` (taken from the worker at time `confirmed`)."""
        worker = self.worker
        if confirmed is None:
            confirmed = (time.monotonic(), time.time())
        try:
            lost = self._with_conn(lambda c: worker.queue.touch(c, tokens))
        except QueueError as exc:
            # The main loop reports the outage too; say it once per outage here.
            if not self._failing:
                worker.log.warning("heartbeat failed; retrying", error=_first_line(exc))
            self._failing = True
            return
        if self._failing:
            worker.log.info("heartbeat working again")
        self._failing = False
        # A job the worker finished while the touch ran (acknowledged, released
        # or failed) is gone for a good reason, and a refused acknowledgement is
        # reported where it happens. A job still waiting here was taken over
        # by someone else: it leaves the batch and never starts here.
        lost = set(lost)
        worker._drop_lost(lost)
        for running in worker._running_jobs():
            if running.token not in lost or running.token in self._reported:
                continue
            self._reported.add(running.token)
            worker.log.warning("reservation lost while the job runs (expired and taken over by"
                               " another worker?); it may run there too, and its outcome here"
                               " will not be recorded", job=running.id, name=running.name,
                               attempt=running.attempts)
        # Every job still held was in this touch or claimed after it began.
        with worker._lock:
            worker._confirmed = max(worker._confirmed, confirmed)

    @staticmethod
    def _record_stuck(conn, owner, running):
        """The attempt of a handler that ignored its interruption, as the
        graceful path would record it, and the acks its owner still owes."""
        queue = owner.queue
        # What the handler had done counts: the recipients that took its mail
        # (the sent log, and no second copy for them) stay recorded.
        done = {"payload": getattr(running, "next_payload", None),
                "sent": getattr(running, "sent", None) or ()}
        if running is not None and owner._aborting:
            # A second SIGINT: give the job back as the graceful path does.
            queue.release(conn, running.token, 0, True, **done)
        elif running is not None:
            tries, backoff, _ = owner._settings(running)
            if running.attempts >= tries:
                queue.fail(conn, running.token, running.uuid or _uuid4(),
                           "JobTimeout: the handler did not stop after its timeout", **done)
            else:
                delay = backoff[min(running.attempts - 1, len(backoff) - 1)]
                queue.release(conn, running.token, delay, **done)
        if owner._acks:
            acks = list(owner._acks)
            owner._acked(acks, queue.ack(conn, acks))

    def _hard_exit(self):
        """The handler ignored its interruption: record the attempt and end the process."""
        worker = self.worker
        running = worker._running
        worker.log.error("handler did not stop after its timeout or interrupt; recording the"
                         " attempt and exiting so that the supervisor restarts the worker",
                         job=getattr(running, "id", None))
        def record(conn):
            self._record_stuck(conn, worker, running)
            for held in list(worker._held):
                worker.queue.release(conn, held.token, 0, True)

        try:
            self._with_conn(record)
        except Exception as exc:
            worker.log.error("could not record the attempt", error=_first_line(exc))
        os._exit(1)


class _Shared:
    """A _Slot attribute that is the pool's (the Worker that runs the slots)."""

    def __init__(self, name):
        self.name = name

    def __get__(self, slot, owner=None):
        return self if slot is None else getattr(slot.pool, self.name)

    def __set__(self, slot, value):
        if "pool" in slot.__dict__:      # Worker.__init__'s defaults leave the pool alone
            setattr(slot.pool, self.name, value)


class _Slot(Worker):
    """One of a concurrent worker's threads: claims and runs one job at a time.

    A Worker of its own for its connection, its `resources` (the SMTP session
    handlers reuse), its acks and the job it runs; stopping, the mail pause
    and the rescue timer are the pool's (_Shared). Its timeout cannot be
    SIGALRM (only the main thread gets signals): the heartbeat raises
    JobTimeout in this thread instead (_interrupt).
    """

    _stop = _Shared("_stop")
    exit_code = _Shared("exit_code")
    _mail_pause = _Shared("_mail_pause")
    _throttle = _Shared("_throttle")
    _outage_row = _Shared("_outage_row")
    _state_warned = _Shared("_state_warned")
    _stop_on_outage = _Shared("_stop_on_outage")
    _last_rescue = _Shared("_last_rescue")
    _last_sweep = _Shared("_last_sweep")
    _pauses = _Shared("_pauses")
    _last_prune = _Shared("_last_prune")
    sent_log = _Shared("sent_log")

    def __init__(self, pool, index):
        super().__init__(pool.queue, pool.queues, tries=pool.tries, backoff=pool.backoff,
                         timeout=pool.timeout, sleep=pool.sleep, memory=pool.memory, log=pool.log)
        self.pool = pool
        self._listen = pool.resources
        self.reuse_smtp = getattr(pool, "reuse_smtp", True)
        self._soft_deadline = None
        self.thread = threading.Thread(target=self._loop, name="dbqueue-slot-%d" % index,
                                       daemon=True)

    # The job being run is set and cleared under _alarm_lock, so that the
    # heartbeat interrupts only a handler that runs, never the bookkeeping
    # after it (see _interrupt): an interruption asked for just as the
    # handler ended, not yet delivered, is taken here, while Worker._process
    # still reads _timed_out for it, instead of in the middle of recording
    # the outcome.
    @property
    def _running(self):
        return self.__dict__.get("_running_job")

    @_running.setter
    def _running(self, job):
        with self._alarm_lock:
            self.__dict__["_running_job"] = job
            raised = job is None and self.__dict__.pop("_raised", False)
            if job is None:
                self._soft_deadline = None
        if raised:
            try:
                self._take_raised()
            except (JobTimeout, _Abort):
                pass

    def _interrupt(self, exc_class, grace, job=None):
        """Raise exc_class in this slot's thread if its handler runs (the handler
        of `job`, if given); True if raised or deferred (Worker._defer).

        Python checks for it between bytecodes: a handler inside one C call
        (time.sleep, a socket read without a timeout) sees it only when the
        call returns. If it has not stopped `grace` seconds later, the
        heartbeat records its attempt and ends the process (_SlotHeartbeat).
        """
        with self._alarm_lock:
            running = self._running
            if running is None or running is not (job or running) or self.thread.ident is None:
                return False      # over: a timeout is never the next job's
            if exc_class is _Abort:
                self._aborting = True
            else:
                self._timed_out = True
            self._hard_deadline = time.monotonic() + grace
            self._raise(exc_class)
            return True

    def _raise(self, exc_class):     # from _interrupt, in another thread
        if self._deferring:
            return Worker._raise(self, exc_class)
        import ctypes
        self.__dict__["_raised"] = True
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread.ident),
                                                   ctypes.py_object(exc_class))

    def _process(self, job):
        timeout = self._settings(job)[2]
        if timeout:
            now = time.monotonic()
            self._soft_deadline = now + timeout
            # _RateSlot reads it: a wait for the rate limit ends before the timeout.
            self._hard_deadline = now + timeout + self.timeout_grace
        try:
            return Worker._process(self, job)
        finally:
            self._soft_deadline = None

    def _loop(self):
        pool = self.pool
        try:
            while not self._stop:
                if not pool._take():
                    break
                started = False
                try:
                    if not self._claim(1):
                        if pool._stop_when_empty:
                            break
                        self._idle(pool._started, pool._max_time)
                        continue
                    with self._lock:
                        job = self._held.pop(0) if self._held else None
                        age = self._unconfirmed_for()
                    if job is None or not self._confirm(job, age):
                        continue
                    started = self._process(job) is not False  # False: given back (mail outage)
                finally:
                    pool._untake(done=started)
                if self.memory and not self._stop:
                    with pool._pool_lock:          # one slot says it
                        if not self._stop and self._over_memory():
                            pool.stop()
        except _Abort:
            pass
        except DatabaseError as exc:
            if not self._stop or isinstance(exc, MissingTableError):
                pool._slot_errors.append(exc)
                pool.stop()
        except BaseException as exc:   # noqa: B036 -- handed to the main thread, raised there
            pool._slot_errors.append(exc)
            pool.stop()
        finally:
            pool._wake_idle()
            try:
                self._shutdown()
            finally:
                app = getattr(self.queue._local, "conn", None)    # a handler's queue.transaction()
                if app is not None:
                    self.queue.discard(app)

    def _idle(self, started, max_time):
        """One idle slot waits on the database (LISTEN or data_version); the others
        wait for it to come back, then every idle slot claims again."""
        pool = self.pool
        with pool._idle_cond:
            if pool._idle_leader:
                gen = pool._idle_gen
                end = time.monotonic() + self.sleep
                while pool._idle_gen == gen and not self._stop:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    pool._idle_cond.wait(left)   # stop() wakes it too
                return
            pool._idle_leader = True
        try:
            Worker._idle(self, started, max_time)
        finally:
            with pool._idle_cond:
                pool._idle_leader = False
            pool._wake_idle()

    def _db(self, action):
        if not self.queue.dialect.one_writer:
            return Worker._db(self, action)
        with self.pool._write_lock:
            return Worker._db(self, action)

    # The mail pause is one for all slots: read and changed under the pool's lock.

    def _active_queues(self):
        with self.pool._pool_lock:
            pause = self._mail_pause
            if pause is None or time.monotonic() < pause["until"]:
                return Worker._active_queues(self)
            # A probe is due: one slot probes (the first to ask, until the
            # probe ends the pause or extends it); the rest keep waiting.
            if pause.setdefault("prober", self) is self:
                return self._unthrottled()
            return [q for q in self._unthrottled() if q not in pause["queues"]]

    def _mail_outage(self, job, exc):
        with self.pool._pool_lock:
            Worker._mail_outage(self, job, exc)
            if self._mail_pause is not None:
                self._mail_pause.pop("prober", None)

    def _mail_flowing(self):
        if self._mail_pause is None and not self._outage_row:
            return       # the common case, read without the lock
        with self.pool._pool_lock:
            Worker._mail_flowing(self)


class _SlotHeartbeat(_Heartbeat):
    """The heartbeat of a concurrent worker: renews every slot's job and is
    their timeout watchdog.

    A handler past its timeout gets JobTimeout raised in its thread (a normal
    failed attempt, retried with backoff). One that is still running
    timeout_grace seconds later (it caught the exception, or sits in a C call)
    cannot be stopped from outside: its attempt is recorded as timed out
    (fenced by its token), the other slots stop claiming and get
    timeout_grace seconds to finish their jobs, jobs still running then are
    given back unspent (ready at once, not after QUEUE_RETRY_AFTER), and the
    process exits 1 for its supervisor to restart it. After a second SIGINT
    the same happens 2 s after it, without the wait, and the exit is 130.
    """

    def _pause(self):
        return min(self.interval, 0.1)    # the watchdog's resolution

    def _give_back(self):
        pass     # slots hold no batch

    def run(self):
        pool = self.worker
        last = time.monotonic()
        while not self._done.wait(self._pause()):
            now = time.monotonic()
            for slot in pool._slots:
                job, deadline = slot._running, slot._soft_deadline
                if job and deadline is not None and now > deadline and not slot._timed_out:
                    slot._interrupt(JobTimeout, pool.timeout_grace, job)
                hard = slot._hard_deadline
                if (hard is not None and now > hard and slot._running is not None
                        and (slot._timed_out or slot._aborting)):
                    self._hard_exit_slot(slot)
            if now - last >= self.interval:
                last = now
                tokens = pool.held_tokens()
                if tokens:
                    self._touch(tokens, (now, time.time()))

    def _hard_exit_slot(self, stuck):
        pool = self.worker
        running = stuck._running
        # After a second SIGINT every slot was told to stop: the others get no
        # more time, and the exit is 130 as with one slot, where the signal
        # also ends a handler's wait inside a C call (here it cannot).
        aborting = pool._sigints >= 2
        if aborting:
            pool.log.warning("second interrupt: a handler did not stop (inside a C call?);"
                             " giving every job in hand back", job=getattr(running, "id", None))
        else:
            pool.log.error("handler did not stop after its timeout or interrupt; recording the"
                           " attempt, letting the other jobs finish, then exiting so that the"
                           " supervisor restarts the worker", job=getattr(running, "id", None))
        pool.stop()
        pool._wake_idle()

        try:
            self._with_conn(lambda conn: self._record_stuck(conn, stuck, running))
        except Exception as exc:
            pool.log.error("could not record the attempt", error=_first_line(exc))
        others = [s for s in pool._slots if s is not stuck]
        end = time.monotonic() + (0 if aborting else pool.timeout_grace)
        touched = time.monotonic()
        while time.monotonic() < end and any(s.thread.is_alive() for s in others):
            time.sleep(0.05)
            if time.monotonic() - touched >= self.interval:
                touched = time.monotonic()
                tokens = [t for s in others for t in s.held_tokens()]
                if tokens:
                    self._touch(tokens)

        def give_back(conn):
            for slot in others:
                job = slot._running
                if job is not None:
                    pool.queue.release(conn, job.token, 0, True)
                    pool.log.warning("job still running at exit: given back unspent",
                                     job=job.id, name=job.name)
                if slot._acks:
                    acks = list(slot._acks)
                    slot._acked(acks, pool.queue.ack(conn, acks))

        try:
            self._with_conn(give_back)
        except Exception as exc:
            pool.log.error("could not give back the jobs in hand; they return after"
                           " retry_after", error=_first_line(exc))
        os._exit(130 if aborting else 1)


###############################################################################
# Email #######################################################################
###############################################################################

# Two built-in jobs send email: `send_email` (a ready message) and
# `send_template_email` (a named template and its variables). queue_email()
# and queue_template_email() enqueue them on the "emails" queue, as the seed
# app's EmailService::queue / queueTemplate did. Everything is checked twice:
# when enqueued (ValueError in the web request) and when sent (PermanentError),
# since rows can be written by other programs.

_EMAIL_QUEUE = "emails"
_SEED_NAMESPACE = "App\\Libraries\\Queue\\Jobs\\"
# \Z, not $, here too: "X-Campaign\n" would pass as a header name, and go
# out with a bare LF that ends the message's headers early.
_TEMPLATE_NAME = _Pattern(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,99}\Z")
_HEADER_NAME = _Pattern(r"^[A-Za-z][A-Za-z0-9-]{0,75}\Z")
_ADDR_SPEC = _Pattern(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@"
                      r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")
# A payload's uuid that can go into a Message-ID as it is.
_MESSAGE_ID_UUID = _Pattern(r"^[A-Za-z0-9-]{1,64}\Z")
_HTML_TAG = _Pattern(r"<\s*[A-Za-z!/]")
# Headers dbqueue writes itself, or that would change who receives the mail:
# `headers` may not set them (use the fields of the same name).
_OWN_HEADERS = frozenset(h.lower() for h in (
    "To", "Cc", "Bcc", "From", "Sender", "Reply-To", "Subject", "Date", "Message-ID",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
    "Return-Path", "Received", "Resent-To", "Resent-Cc", "Resent-Bcc", "Resent-From",
    "Resent-Sender", "Resent-Date", "Resent-Message-ID"))


def _aliases():
    """Job names the seed app wrote, mapped to the handlers that serve them."""
    entries = {
        "SendEmailJob": (_seed_send_email, None, None, None),
        "SendTemplateEmailJob": (_seed_send_template_email, None, None, None),
    }
    names = {}
    for short, entry in entries.items():
        names[_SEED_NAMESPACE + short] = entry
        names["\\" + _SEED_NAMESPACE + short] = entry   # PHP's fully qualified spelling
    return names


def queue_email(to, subject, text=None, html=None, cc=None, bcc=None, reply_to=None,
                sender=None, headers=None, delay=0, connection=None, using=None,
                queue=_EMAIL_QUEUE, unique_key=None, expires_in=None):
    """Enqueue a `send_email` job on the "emails" queue; returns its id.

        dbqueue.queue_email("ann@example.com", "Your report", text="...", html="<p>...</p>")

    `to`, `cc`, `bcc` and `reply_to` take one address ("Ann <ann@example.com>")
    or a list; bcc never appears in the headers. `sender` overrides the From of
    MAIL_FROM_ADDRESS / MAIL_FROM_NAME; `headers` adds headers such as
    List-Unsubscribe. `connection=` writes the job inside your open
    transaction; `using=` is the Queue to use (default: Queue.from_env(),
    opened and closed for this call). `unique_key=` as for Queue.push(): while
    a message with that key waits or is being sent, another is not queued
    ("verify:ann@example.com" for a "resend" button clicked twice).
    `expires_in=` (seconds): never sent after that; it moves to failed_jobs
    as expired. Bad addresses or a CR/LF in any header raise ValueError
    here, before anything is stored.
    """
    data = {"to": to, "subject": subject, "text": text, "html": html, "cc": cc, "bcc": bcc,
            "reply_to": reply_to, "from": sender, "headers": headers}
    data = {k: v for k, v in data.items() if v is not None}
    _check_email_job("send_email", data, None)
    return _enqueue("send_email", data, delay, connection, using, queue, unique_key, expires_in)


def queue_template_email(to, template, variables=None, cc=None, bcc=None, reply_to=None,
                         sender=None, headers=None, delay=0, connection=None, using=None,
                         queue=_EMAIL_QUEUE, unique_key=None, expires_in=None):
    """Enqueue a `send_template_email` job on the "emails" queue; returns its id.

        dbqueue.queue_template_email("ann@example.com", "verify_email",
                                     {"name": "Ann", "url": "https://example.com/verify/abc"})

    The worker renders the template, with the same configuration as the
    producer (MAIL_TEMPLATE_DIR included), so what can be checked here is:
    a template that is neither built in nor in MAIL_TEMPLATE_DIR, and a
    built-in template's missing required variable (its link) raise
    ValueError, and nothing is stored. The built-in templates' mail is
    never sent once stale: a password reset 60 minutes after it was queued,
    a verification 24 hours, an invitation 72 (MAIL_TEMPLATE_VALIDITY
    changes them; `expires_in=` seconds wins, 0 for none). Other options as
    for queue_email().
    """
    data = {"to": to, "template": template, "vars": dict(variables or {}), "cc": cc, "bcc": bcc,
            "reply_to": reply_to, "from": sender, "headers": headers}
    data = {k: v for k, v in data.items() if v is not None}
    config = using.config if isinstance(using, Queue) else Config.from_env()
    _check_email_job("send_template_email", data, config)
    return _enqueue("send_template_email", data, delay, connection, using, queue, unique_key,
                    expires_in)


def _check_email_job(name, data, config):
    """What a producer can check of a built-in email job before it is stored
    (queue_email, queue_template_email, `push`): ValueError for a bad one.

    The seed app's job classes are checked in their own shape, the errors
    naming its fields (`data`, not `vars`). Other jobs are not checked.
    """
    handler = (_registry.get(name) or _aliases().get(name) or (None,))[0]
    field = "data" if handler in (_seed_send_email, _seed_send_template_email) else "vars"
    try:
        if handler is _seed_send_email:
            data, handler = _seed_email_fields(data), _send_email
        elif handler is _seed_send_template_email:
            data, handler = _seed_template_fields(data), _send_template_email
        if handler is _send_email:
            _email_fields(data, None)
        elif handler is _send_template_email:
            variables = data.get("vars")
            _find_template(data.get("template"), _template_values(
                {} if variables is None else variables, field), config, warn=False, field=field)
            _email_fields(dict(data, subject="", text="-"), None)
    except PermanentError as exc:
        raise ValueError(str(exc))


def _enqueue(name, data, delay, connection, using, queue_name, unique_key, expires_in):
    if using is not None and not isinstance(using, Queue):
        raise TypeError("using= must be a dbqueue.Queue (the queue's name is queue=)")
    if unique_key is not None:
        _unique_key(unique_key)   # a ValueError before Queue.from_env() opens anything
    target = using if using is not None else Queue.from_env()
    try:
        return target.push(name, data, queue=queue_name, delay=delay, connection=connection,
                           unique_key=unique_key, expires_in=expires_in)
    finally:
        if using is None:
            target.close()


# -- the handlers --------------------------------------------------------------

def _send_email(data):
    """The `send_email` job: to, subject, text and/or html, cc, bcc, reply_to, from, headers."""
    config = _mail_config()
    _deliver(_email_fields(data, config), config)


def _send_template_email(data, field="vars"):
    """The `send_template_email` job: to, template, vars (plus the send_email options).
    `field` is what errors call the variables (the seed app's job: `data`)."""
    config = _mail_config()
    variables = data.get("vars")
    if variables is None:
        variables = {}
    subject, text, html = _render(data.get("template"), variables, config, field)
    fields = dict(data, subject=subject, text=text, html=html)
    fields.pop("template", None)
    fields.pop("vars", None)
    _deliver(_email_fields(fields, config), config)


def _seed_send_email(data):
    """The seed app's SendEmailJob: `message` is the HTML body, `textMessage` the text.

    A `message` without any HTML tag is sent as the text part.
    """
    _send_email(_seed_email_fields(data))


def _seed_email_fields(data):
    """A SendEmailJob's data as send_email's."""
    fields = {k: v for k, v in data.items() if k not in ("message", "textMessage")}
    message, text = data.get("message"), data.get("textMessage")
    if not (message or text or data.get("text") or data.get("html")):
        raise PermanentError("the message has no body: give message and/or textMessage")
    if isinstance(message, str) and message and not _HTML_TAG.search(message) and not text:
        fields["text"] = message
    else:
        if message:
            fields["html"] = message
        if text:
            fields["text"] = text
    return fields


def _seed_send_template_email(data):
    """The seed app's SendTemplateEmailJob: `template`, `to` and `data` (the variables).

    A view path such as "emails/verify_email" names the template "verify_email".
    """
    _send_template_email(_seed_template_fields(data), field="data")


def _seed_template_fields(data):
    """A SendTemplateEmailJob's data as send_template_email's."""
    template = _seed_template_name(data.get("template"))
    moved = ("subject", "textMessage", "locale")
    fields = {k: v for k, v in data.items() if k not in ("template", "data") + moved}
    fields["template"] = template
    variables = data.get("data") or {}
    if isinstance(variables, dict):
        # The app's own variables; `subject`, `textMessage` and `locale` count
        # there also when the job carries them beside `data`.
        variables = dict(variables)
        for key in moved:
            if data.get(key) is not None and key not in variables:
                variables[key] = data[key]
    fields["vars"] = variables
    return fields


job("send_email")(_send_email)
job("send_template_email")(_send_template_email)


def _seed_template_name(template):
    """A view path such as "emails/verify_email" (or .php) as the template's name."""
    if isinstance(template, str) and "/" in template:
        template = template.rstrip("/").rsplit("/", 1)[-1]
        if template.endswith(".php"):
            template = template[:-4]
    return template


# The jobs that send a template's email: theirs is the templates' validity.
_TEMPLATE_JOBS = frozenset(("send_template_email", _SEED_NAMESPACE + "SendTemplateEmailJob",
                            "\\" + _SEED_NAMESPACE + "SendTemplateEmailJob"))
_EMAIL_JOBS = _TEMPLATE_JOBS | frozenset(("send_email", _SEED_NAMESPACE + "SendEmailJob",
                                          "\\" + _SEED_NAMESPACE + "SendEmailJob"))


def _validity(config, name, data):
    """Seconds a template email stays worth sending from its creation (0: no
    deadline), by MAIL_TEMPLATE_VALIDITY over the built-in defaults."""
    if name not in _TEMPLATE_JOBS or not isinstance(data, dict):
        return 0
    template = _seed_template_name(data.get("template"))
    if not isinstance(template, str):
        return 0
    return _validities(config.mail_template_validity).get(template, 0)


def _mail_config():
    running = current_job()
    worker = getattr(running, "worker", None)
    if worker is not None:
        return worker.queue.config
    return Config.from_env()


# -- checking fields and building the message ----------------------------------

def _one_line(field, value):
    """A header value as text; CR, LF or NUL in it is a header injection: refuse."""
    if not isinstance(value, str):
        raise PermanentError("%s must be a string, not %s" % (field, type(value).__name__))
    # splitlines() knows every line boundary the email package refuses in a
    # header (\v, \f, \x1c-\x1e, \x85, \u2028, \u2029), not only CR and LF.
    if "\x00" in value or len((value + "x").splitlines()) > 1:
        raise PermanentError("%s contains a line break (CR/LF): refused as a header injection"
                             % field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PermanentError("%s is not valid Unicode text (a lone surrogate)" % field)
    return value


def _addresses(field, value, required=False):
    """[(display name, addr-spec)] from one address string or a list of them."""
    import email.utils
    if value is None or value == "" or value == []:
        if required:
            raise PermanentError("%s: at least one address is needed" % field)
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise PermanentError("%s must be an address or a list of addresses" % field)
    result = []
    for item in items:
        _one_line(field, item)
        parsed = email.utils.getaddresses([item])
        if not parsed or any(not addr for _, addr in parsed):
            raise PermanentError("%s: %r is not an email address" % (field, item))
        if len(parsed) != 1:
            # "evil@attacker.example <ann@example.com>" parses as two
            # addresses: a display name taken from user input must never add
            # a recipient. Several recipients are given as a list.
            raise PermanentError("%s: %r is more than one address (pass a list for several"
                                 " recipients)" % (field, item))
        for name, addr in parsed:
            local, _, domain = addr.rpartition("@")
            try:
                domain = domain.encode("idna").decode("ascii")
            except UnicodeError:
                raise PermanentError("%s: %r has an invalid domain" % (field, item))
            addr = "%s@%s" % (local, domain)
            if not _ADDR_SPEC.match(addr):
                raise PermanentError("%s: %r is not an email address dbqueue can send to"
                                     " (plain ASCII local@domain)" % (field, item))
            result.append((name, addr))
    return result


def _email_fields(data, config):
    """Check a send_email data dict; returns the parts of the message.

    Raises PermanentError (naming the field) for anything that cannot be sent,
    before any connection is made.
    """
    if not isinstance(data, dict):
        raise PermanentError("email data must be a JSON object")
    subject = data.get("subject")
    if subject is None:
        raise PermanentError("subject is missing")
    fields = {"subject": _one_line("subject", subject)}
    for key in ("text", "html"):
        body = data.get(key)
        if body is not None and not isinstance(body, str):
            raise PermanentError("%s must be a string" % key)
        fields[key] = body or None
    if not (fields["text"] or fields["html"]):
        raise PermanentError("the message has no body: give text and/or html")
    fields["to"] = _addresses("to", data.get("to"), required=True)
    fields["cc"] = _addresses("cc", data.get("cc"))
    fields["bcc"] = _addresses("bcc", data.get("bcc"))
    fields["reply_to"] = _addresses("reply_to", data.get("reply_to"))
    sender = data.get("from")
    if sender is not None:
        found = _addresses("from", sender, required=True)
        if len(found) != 1:
            raise PermanentError("from: exactly one address, please")
        fields["from"] = found[0]
    elif config is not None:
        name = _one_line("MAIL_FROM_NAME", config.mail_from_name or "")
        found = _addresses("MAIL_FROM_ADDRESS", config.mail_from_address, required=True)
        fields["from"] = (name or found[0][0], found[0][1])
    extra = data.get("headers") or {}
    if not isinstance(extra, dict):
        raise PermanentError("headers must be an object of name: value")
    fields["headers"] = []
    for name, value in extra.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise PermanentError("headers: %r is not a header name (letters, digits and -)"
                                 % (name,))
        if name.lower() in _OWN_HEADERS:
            raise PermanentError("headers: %s is set by dbqueue; use the email's own field"
                                 % name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        fields["headers"].append((name, _one_line("headers[%s]" % name, value)))
    return fields


def _message_id(domain):
    """<uuid@domain> from the running job, so that a retried send keeps its id."""
    import email.utils
    running = current_job()
    if running is not None and running.uuid and _MESSAGE_ID_UUID.match(running.uuid):
        return "<%s@%s>" % (running.uuid, domain)
    if running is not None and running.id is not None:
        # A payload without a uuid (the seed app's): the row id is stable across retries.
        return "<dbqueue-job-%s-%s@%s>" % (running.id, running.queue, domain)
    return email.utils.make_msgid(domain=domain)


def _build_message(fields, seven_bit=False):
    """An EmailMessage from checked fields: multipart/alternative when both parts exist.

    An HTML-only message gets a text part made from the HTML (spam filters
    mark down mail without one). `fields["date"]`, when set, is the Date (the
    same on every attempt). `seven_bit` encodes a body that is not ASCII as
    quoted-printable or base64, for a server that does not offer 8BITMIME.
    """
    import email.policy
    import email.utils
    from email.headerregistry import Address
    from email.message import EmailMessage

    def address(pair):
        name, addr = pair
        local, _, domain = addr.rpartition("@")
        return Address(display_name=name, username=local, domain=domain)

    policy = email.policy.default
    msg = EmailMessage(policy=policy.clone(cte_type="7bit") if seven_bit else policy)
    msg["From"] = address(fields["from"])
    msg["To"] = [address(a) for a in fields["to"]]
    if fields["cc"]:
        msg["Cc"] = [address(a) for a in fields["cc"]]
    if fields["reply_to"]:
        msg["Reply-To"] = [address(a) for a in fields["reply_to"]]
    msg["Subject"] = _plain_header("Subject", fields["subject"])
    msg["Date"] = _plain_header("Date", fields.get("date") or email.utils.formatdate(localtime=True))
    msg["Message-ID"] = _plain_header("Message-ID",
                                      _message_id(fields["from"][1].rpartition("@")[2]))
    for name, value in fields["headers"]:
        msg[name] = _plain_header(name, value)
    text, html = fields["text"], fields["html"]
    if text is None and html is not None:
        text = _html_to_text(html)
    msg.set_content(text or "")
    if html:
        msg.add_alternative(html, subtype="html")
    # add_alternative() gives the part it makes its own MIME-Version: the
    # header belongs to the message only (RFC 2045, section 4).
    for part in msg.iter_parts():
        del part["MIME-Version"]
    return msg


def _html_to_text(html):
    """The text part for an HTML-only message: paragraphs and line breaks kept,
    links written as "text (url)", scripts, styles and the head left out."""
    from html.parser import HTMLParser

    paragraphs = {"p", "div", "table", "tr", "ul", "ol", "blockquote", "h1", "h2", "h3",
                  "h4", "h5", "h6", "hr", "section", "article", "header", "footer", "pre"}
    hidden = {"script", "style", "head", "title", "template"}

    class Text(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.out, self.links, self.hiding = [], [], 0

        def handle_starttag(self, tag, attrs):
            if tag in hidden:
                self.hiding += 1
            elif tag == "br":
                self.out.append("\n")
            elif tag == "li":
                self.out.append("\n- ")
            elif tag in paragraphs or tag in ("td", "th"):
                self.out.append("\n\n" if tag in paragraphs else " ")
            elif tag == "a":
                self.links.append((dict(attrs).get("href") or "", len(self.out)))

        def handle_endtag(self, tag):
            if tag in hidden:
                self.hiding = max(0, self.hiding - 1)
            elif tag in paragraphs:
                self.out.append("\n\n")
            elif tag == "a" and self.links:
                href, start = self.links.pop()
                label = "".join(self.out[start:]).strip()
                shown = href[7:] if href.lower().startswith("mailto:") else href
                if re.match(r"(?i)^(https?|mailto):", href) and shown != label:
                    self.out.append(" (%s)" % shown if label else shown)

        def handle_data(self, data):
            if not self.hiding:
                self.out.append(re.sub(r"\s+", " ", data))

    parser = Text()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.out).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")
    return text + "\n"


class _FoldedHeader(str):
    """An ASCII header value that the email package writes as it is, folded at
    its spaces. Left to itself the package RFC 2047-encodes a long ASCII value
    (a List-Unsubscribe URL becomes =?utf-8?q?...?=), which breaks it."""

    name = ""

    def fold(self, policy):
        limit = policy.max_line_length or 78
        lines = ["%s:" % self.name]
        # Breaks go before a run of spaces, which then starts the next line:
        # unfolding (removing the CRLF) gives back the value exactly.
        for space, word in re.findall(r"([ \t]*)([^ \t]+)", " " + self):
            if len(lines[-1]) + len(space) + len(word) > limit and len(lines[-1]) > len(self.name) + 1:
                lines.append(space + word)
            else:
                lines[-1] += space + word
        if any(len(line) > 998 for line in lines):
            raise ValueError("header %s has a word longer than an SMTP line may be (998)"
                             % self.name)
        return policy.linesep.join(lines) + policy.linesep


def _plain_header(name, value):
    """`value` as a folded ASCII header; other text is left to RFC 2047."""
    if not value.isascii():
        return value
    header = _FoldedHeader(value.strip(" \t"))
    header.name = name
    return header


###############################################################################
# Email templates #############################################################
###############################################################################

# The original built-in templates, in English. Each needs only `name` (which
# may be empty) and `url`; `app_name` defaults to APP_NAME, then
# MAIL_FROM_NAME, then the link's host; `expires` (such as "24 hours") and,
# for invitations, `inviter` are optional. Written as the seed templates below
# are, and sent in their layout; `greeting` names the variable the greeting
# uses, and a sentence (variable, text, otherwise) says `otherwise` when the
# variable is empty.
_BUILTIN_TEMPLATES = {
    "verify_email": {
        "link": "url", "greeting": "name", "defaults": {"en": {}},
        "en": {
            "subject": "Confirm your email address for $app_name",
            "heading": "Confirm your email address",
            "intro": ["Please confirm that this is your email address for $app_name."],
            "button": "Confirm email address",
            "after": [("expires", "This link expires in $expires."),
                      "If you did not create an account with $app_name, you can ignore this"
                      " email: nothing will change and no account will be activated."],
        },
    },
    "password_reset": {
        "link": "url", "greeting": "name", "defaults": {"en": {}},
        "en": {
            "subject": "Reset your $app_name password",
            "heading": "Reset your password",
            "intro": ["We received a request to reset the password of your $app_name account."],
            "button": "Choose a new password",
            "after": [("expires", "This link expires in $expires."),
                      "If you did not ask to reset your password, you can ignore this email:"
                      " your password stays as it is. If this keeps happening, tell us."],
        },
    },
    "invitation": {
        "link": "url", "greeting": "name", "defaults": {"en": {}},
        "en": {
            "subject": "You are invited to join $app_name",
            "heading": "You are invited to $app_name",
            "intro": [("inviter", "$inviter has invited you to join $app_name.",
                       "You have been invited to join $app_name.")],
            "button": "Accept the invitation",
            "after": [("expires", "This link expires in $expires."),
                      "If you were not expecting this invitation, you can ignore this email:"
                      " no account is created unless you accept it."],
        },
    },
}


# The CodeIgniter app's own templates, built in with its variable names and
# the defaults its views used. One table per template: per language its
# subject and sentences. `link` is the variable holding the button's link (a
# missing one is a permanent failure that names it); a sentence given as
# (variable, text) is left out when that variable is empty; `defaults` are
# per language, so that a Spanish email never says "soon".
_SEED_TEMPLATES = {
    "verification": {
        "link": "verification_link",
        "defaults": {"en": {"display_name": "User", "expires_at": "soon"},
                     "es": {"display_name": "usuario", "expires_at": "pronto"}},
        "en": {
            "subject": "Confirm your email address for $app_name",
            "heading": "Confirm your email address",
            "intro": ["Thanks for signing up for $app_name. Please confirm that this is your"
                      " email address."],
            "button": "Confirm email address",
            "after": [("expires_at", "This link expires $expires_at."),
                      "If you did not create an account, you can ignore this email."],
        },
        "es": {
            "subject": "Confirma tu correo electrónico en $app_name",
            "heading": "Confirma tu correo electrónico",
            "intro": ["Gracias por registrarte en $app_name. Confirma que esta es tu dirección"
                      " de correo electrónico."],
            "button": "Confirmar mi correo",
            "after": [("expires_at", "Este enlace caduca $expires_at."),
                      "Si no has creado una cuenta, puedes ignorar este mensaje."],
        },
    },
    "password-reset": {
        "link": "reset_link",
        "defaults": {"en": {"display_name": "User", "expires_in": "60 minutes"},
                     "es": {"display_name": "usuario", "expires_in": "60 minutos"}},
        "en": {
            "subject": "Reset your $app_name password",
            "heading": "Reset your password",
            "intro": ["We received a request to reset the password of your $app_name account."],
            "button": "Choose a new password",
            "after": [("expires_in", "This link expires in $expires_in."),
                      "If you did not ask for this, you can ignore this email: your password"
                      " stays as it is."],
        },
        "es": {
            "subject": "Restablece tu contraseña de $app_name",
            "heading": "Restablece tu contraseña",
            "intro": ["Hemos recibido una solicitud para restablecer la contraseña de tu cuenta"
                      " de $app_name."],
            "button": "Elegir una contraseña nueva",
            "after": [("expires_in", "Este enlace caduca en $expires_in."),
                      "Si no lo has pedido tú, puedes ignorar este mensaje: tu contraseña"
                      " no cambiará."],
        },
    },
    "invitation": {
        "link": "reset_link",
        "defaults": {"en": {"display_name": "User"}, "es": {"display_name": "usuario"}},
        "en": {
            "subject": "You are invited to join $app_name",
            "heading": "You are invited to $app_name",
            "intro": ["You have been invited to join $app_name. To accept, choose a password"
                      " for your account."],
            "button": "Choose your password",
            "after": [("expires_in", "This link expires in $expires_in."),
                      "If you were not expecting this invitation, you can ignore this email:"
                      " no account is activated unless you accept it."],
        },
        "es": {
            "subject": "Te han invitado a unirte a $app_name",
            "heading": "Invitación a $app_name",
            "intro": ["Te han invitado a unirte a $app_name. Para aceptar, elige una contraseña"
                      " para tu cuenta."],
            "button": "Elegir mi contraseña",
            "after": [("expires_in", "Este enlace caduca en $expires_in."),
                      "Si no esperabas esta invitación, puedes ignorar este mensaje: la cuenta"
                      " no se activará a menos que la aceptes."],
        },
    },
    "account-approved": {
        "link": "login_link",
        "defaults": {"en": {"display_name": "User"}, "es": {"display_name": "usuario"}},
        "en": {
            "subject": "Your $app_name account has been approved",
            "heading": "Your account has been approved",
            "intro": ["Good news: your $app_name account has been approved. You can sign in"
                      " now."],
            "button": "Sign in",
            "after": [],
        },
        "es": {
            "subject": "Hemos aprobado tu cuenta de $app_name",
            "heading": "Tu cuenta está aprobada",
            "intro": ["¡Buenas noticias! Hemos aprobado tu cuenta de $app_name y ya puedes"
                      " iniciar sesión."],
            "button": "Iniciar sesión",
            "after": [],
        },
    },
    "pending-approval-google": {
        "link": None,
        "defaults": {"en": {"display_name": "User"}, "es": {"display_name": "usuario"}},
        "en": {
            "subject": "Your $app_name account is awaiting approval",
            "heading": "Your account is awaiting approval",
            "intro": ["Thanks for signing up for $app_name with your Google account.",
                      "An administrator needs to approve your account before you can sign in."
                      " We will email you as soon as it is approved."],
            "button": None,
            "after": ["You do not need to do anything else for now."],
        },
        "es": {
            "subject": "Tu cuenta de $app_name está pendiente de aprobación",
            "heading": "Tu cuenta está pendiente de aprobación",
            "intro": ["Gracias por registrarte en $app_name con tu cuenta de Google.",
                      "Un administrador tiene que aprobar tu cuenta antes de que puedas iniciar"
                      " sesión. Te escribiremos en cuanto esté aprobada."],
            "button": None,
            "after": ["Por ahora no tienes que hacer nada más."],
        },
    },
}

# The words every seed template shares, per language.
# The words every seed template shares, per language. `greeting` is used
# without a name ("Hello,", never "Hi User,") when the caller gave none:
# display_name's default stays in the variables, for MAIL_TEMPLATE_DIR's
# templates. `unnamed` rewrites our sentences for when no app name is known
# (no APP_NAME, MAIL_FROM_NAME or link host): "Reset your password", never
# "Reset your our site password"; what remains of $app_name is the signature,
# left out then.
_SEED_WORDS = {
    "en": {"greeting": "Hi $display_name,", "greeting_unnamed": "Hello,",
           "app_name": "our site",
           "unnamed": [(r" (?:for|with|to join|to) \$app_name\b", ""),
                       (r"\b([Yy]our) \$app_name ", r"\1 ")],
           "fallback": "If the button does not work, copy this link into your browser:"},
    "es": {"greeting": "Hola, $display_name:", "greeting_unnamed": "Hola:",
           "app_name": "nuestro sitio",
           "unnamed": [(r" (?:en|de|a unirte a|a) \$app_name\b", "")],
           "fallback": "Si el botón no funciona, copia este enlace en tu navegador:"},
}
_LOCALES = ("en", "es")

# The seed templates' HTML: the built-ins' look, written for what mail
# clients keep: inline styles only (Gmail drops <style>), tables for layout,
# bgcolor beside background (Outlook), no images or fonts to fetch, and a
# button that is a table cell, so that Outlook's Word engine, which ignores
# padding on links, still shows a button.
_SEED_HTML = """<!DOCTYPE html>
<html lang="@LANG@">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@SUBJECT@</title>
</head>
<body style="margin:0;padding:0;background:#f3f4f6;">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" bgcolor="#f3f4f6" style="background:#f3f4f6;padding:24px 12px;">
<tr><td align="center">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" bgcolor="#ffffff" style="max-width:560px;background:#ffffff;border-radius:8px;font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1f2937;">
<tr><td style="padding:32px 32px 0;font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;font-size:22px;font-weight:600;color:#1f2937;">@HEADING@</td></tr>
<tr><td style="padding:16px 32px 8px;font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;font-size:16px;line-height:1.6;color:#1f2937;">
@BODY@
</td></tr>
<tr><td style="padding:8px 32px 32px;font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;font-size:13px;color:#6b7280;">$app_name</td></tr>
</table>
</td></tr>
</table>
</body>
</html>
"""
_SEED_P = '<p style="margin:0 0 16px;">%s</p>'
_SEED_SMALL = '<p style="margin:0 0 16px;font-size:14px;color:#4b5563;">%s</p>'
_SEED_BUTTON = ('<table role="presentation" cellpadding="0" cellspacing="0" align="center"'
                ' style="margin:8px auto 24px;"><tr><td bgcolor="#2563eb" style="background:'
                '#2563eb;border-radius:6px;"><a href="$%s" style="display:inline-block;'
                'padding:12px 24px;color:#ffffff;text-decoration:none;font-weight:600;">%s</a>'
                '</td></tr></table>\n'
                '<p style="margin:0 0 16px;font-size:14px;color:#4b5563;">%s<br><a href="$%s"'
                ' style="color:#2563eb;word-break:break-all;">$%s</a></p>')


def _template_name(name):
    if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
        raise PermanentError("template name %r must be a plain name (letters, digits, _ and -)"
                             % (name,))
    return name


def _template_values(variables, field="vars"):
    if not isinstance(variables, dict):
        raise PermanentError("%s must be an object of name: value" % field)
    values = {}
    for key, value in variables.items():
        if value is None:
            value = ""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise PermanentError("template variable %r must be a string or a number" % (key,))
        values[str(key)] = str(value)
    return values


def _locale(value):
    """The language tag of a `locale` variable ("es-MX" -> "es"); "en" when empty, None when odd."""
    if not value:
        return "en"
    tag = value.strip().lower().replace("_", "-").split("-")[0]
    return tag if re.match(r"^[a-z]{2,3}\Z", tag) else None


def _seed_form(name, values):
    """True when `name` with these variables is one of the CodeIgniter app's templates.

    `invitation` is also the original built-in (name and url): a caller that
    gives `url` and no `reset_link` gets that one, as before.
    """
    if name not in _SEED_TEMPLATES:
        return False
    return not (name == "invitation" and "url" in values and "reset_link" not in values)


def _seed_template(table, locale, values, unnamed=False):
    """(subject, text, html) string.Template sources of a built-in template
    (a _SEED_TEMPLATES or _BUILTIN_TEMPLATES entry) in one language; with
    `unnamed` (the caller gave no name), a greeting without a name."""
    import html as html_module
    common = _SEED_WORDS[locale]
    words, link = table[locale], table["link"]
    greeting = (common["greeting_unnamed"] if unnamed else common["greeting"].replace(
        "$display_name", "$" + table.get("greeting", "display_name")))
    esc = html_module.escape     # our own sentences: their $placeholders pass through

    def keep(lines):
        kept = []
        for line in lines:
            if not isinstance(line, tuple):
                kept.append(line)
            elif values.get(line[0]):
                kept.append(line[1])
            elif len(line) > 2:
                kept.append(line[2])
        return kept
    intro, after = keep(words["intro"]), keep(words["after"])
    text = [greeting, ""]
    for line in intro:
        text += [line, ""]
    if words["button"]:
        text += [words["button"] + ":", "$" + link, ""]
    for line in after:
        text += [line, ""]
    text += ["-- ", "$app_name", ""]
    body = [_SEED_P % esc(greeting)] + [_SEED_P % esc(line) for line in intro]
    if words["button"]:
        body.append(_SEED_BUTTON % (link, esc(words["button"]), esc(common["fallback"]),
                                    link, link))
    body += [_SEED_SMALL % esc(line) for line in after]
    # The title is the subject as sent (the app's own `subject` may replace it).
    html = (_SEED_HTML.replace("@LANG@", locale).replace("@SUBJECT@", "${_subject}")
            .replace("@HEADING@", esc(words["heading"])).replace("@BODY@", "\n".join(body)))
    return words["subject"], "\n".join(text), html


def _job_log():
    """The running worker's log, else one on stderr."""
    worker = getattr(current_job(), "worker", None)
    return worker.log if worker is not None else _Log()


def _find_template(name, values, config, warn=True, field="vars"):
    """(kind, locale, (subject, text, html or None) sources) of the template to render;
    a seed template's defaults for that language are put into `values`.

    kind is "dir" (MAIL_TEMPLATE_DIR, which wins), "seed" (the CodeIgniter
    app's) or "builtin". Raises PermanentError for an unknown template and
    for a built-in one's missing required variable: what the producer can
    check at enqueue as well as the worker at send.
    """
    _template_name(name)
    asked = values.get("locale", "")
    locale = _locale(asked)
    if config.mail_template_dir:
        source = _read_template(config.mail_template_dir, name, locale)
        if source is not None:
            return "dir", locale, source
    if _seed_form(name, values):
        kind, needs, available = "seed", [_SEED_TEMPLATES[name]["link"]], _LOCALES
    elif name in _BUILTIN_TEMPLATES:
        kind, needs, available = "builtin", ["name", "url"], ("en",)
    else:
        import difflib
        known = sorted(set(_BUILTIN_TEMPLATES) | set(_SEED_TEMPLATES)
                       | set(_template_dir_names(config)))
        close = difflib.get_close_matches(name, known, 1)
        raise PermanentError("unknown email template %r%s (known: %s)"
                             % (name, " - did you mean %r?" % close[0] if close else "",
                                ", ".join(known)))
    for variable in needs:
        # A link must have a value; the original built-ins accept an empty name.
        if variable is not None and (not values.get(variable) if kind == "seed"
                                     else variable not in values):
            raise PermanentError("email template %r needs the variable %r in %s"
                                 % (name, variable, field))
    if locale not in available:
        if warn:
            _job_log().warning("email template has no version in this locale; sent in English",
                               template=name, locale=re.sub(r"[^\w.-]", "?", asked[:40]))
        locale = "en"
    table = _SEED_TEMPLATES[name] if kind == "seed" else _BUILTIN_TEMPLATES[name]
    # The defaults of that language go into `values` first: the sentence that
    # shows one ("This link expires soon.") is kept only when set. The
    # greeting is by name only when the caller gave one (not "Hi User,").
    unnamed = not values.get(table.get("greeting", "display_name"))
    for key, value in table["defaults"][locale].items():
        if not values.get(key):
            values[key] = value
    return kind, locale, _seed_template(table, locale, values, unnamed)


def _read_template(directory, name, locale=None):
    """(subject, text, html or None) from MAIL_TEMPLATE_DIR, or None when it has no NAME.txt.

    NAME.LOCALE.txt and NAME.LOCALE.html, when there, win over NAME.txt and
    NAME.html for that locale.
    """
    def first(ext):
        names = ([name + "." + locale + ext] if locale else []) + [name + ext]
        for candidate in names:
            path = os.path.join(directory, candidate)
            if os.path.exists(path):
                return path
        return os.path.join(directory, names[-1])
    path, html_path = first(".txt"), first(".html")
    try:
        with open(path, encoding="utf-8") as fh:
            source = fh.read()
    except FileNotFoundError:
        if os.path.exists(html_path):
            raise PermanentError("template %r: %s has no %s.txt (the text part and the"
                                 " Subject: line live there)"
                                 % (name, os.path.basename(html_path), name))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError("template %r: cannot read %s: %s" % (name, path, exc))
    first_line, _, body = source.lstrip("\ufeff").replace("\r\n", "\n").partition("\n")
    if not first_line.lower().startswith("subject:"):
        raise PermanentError("template %r: %s must start with a 'Subject: ...' line"
                             % (name, path))
    subject = first_line[len("subject:"):].strip()
    if body.startswith("\n"):
        body = body[1:]   # the blank line after Subject:
    html = None
    try:
        with open(html_path, encoding="utf-8") as fh:
            html = fh.read()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError("template %r: cannot read %s: %s" % (name, html_path, exc))
    return subject, body, html


def _render(name, variables, config, field="vars"):
    """(subject, text, html or None) of a template filled with `variables`.

    A template in MAIL_TEMPLATE_DIR wins over the built-in one of the same
    name. Values are HTML-escaped in the HTML part; a placeholder without a
    value is a PermanentError that names it. In the variables, `locale`
    picks the language, `subject` (when set) is the subject and `textMessage`
    (a string) the text part, as the CodeIgniter app's EmailService passed them.
    """
    import html as html_module
    from string import Template
    values = _template_values(variables, field)
    # The seed templates' defaults are filled into values here.
    kind, locale, source = _find_template(name, values, config, field=field)
    link = values.get(_SEED_TEMPLATES[name]["link"] or "", "") if kind == "seed" else ""
    url = values.get("url", "") or link
    host = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/:?#@]+)", url)
    fallback = _SEED_WORDS[locale]["app_name"] if locale in _SEED_WORDS else "our site"
    app_name = values.get("app_name") or (config.app_name or config.mail_from_name
                                          or (host.group(1) if host else ""))
    if not app_name and kind != "dir":
        # Our own sentences, written without a name, and no signature.
        source = tuple(None if part is None else _unnamed(part, locale) for part in source)
    values["app_name"] = app_name or fallback
    subject_src, text_src, html_src = source

    def fill(part, src, vals):
        try:
            return Template(src).substitute(vals)
        except KeyError as exc:
            raise PermanentError("email template %r needs the variable %r in %s (%s)"
                                 % (name, exc.args[0], field, part))
        except ValueError as exc:
            raise PermanentError("email template %r has a bad placeholder in its %s: %s"
                                 % (name, part, exc))

    subject = fill("subject", subject_src, values)
    if isinstance(variables.get("subject"), str) and variables["subject"].strip():
        subject = variables["subject"]
    text = fill("text", text_src, values)
    if isinstance(variables.get("textMessage"), str) and variables["textMessage"].strip():
        text = variables["textMessage"]
    html = None
    if html_src is not None:
        escaped = {k: html_module.escape(v, quote=True) for k, v in values.items()}
        escaped["_subject"] = html_module.escape(subject, quote=True)
        html = fill("html", html_src, escaped)
    return subject, text, html


def _unnamed(source, locale):
    """A built-in template's source as it reads when no app name is known."""
    for pattern, replacement in _SEED_WORDS[locale]["unnamed"]:
        source = re.sub(pattern, replacement, source)
    source = source.replace("\n\n-- \n$app_name\n", "\n")    # the text part's signature
    return source.replace("$app_name", "")                    # the HTML footer's


def _template_dir_names(config):
    try:
        return [f[:-4] for f in os.listdir(config.mail_template_dir)
                if f.endswith(".txt") and _TEMPLATE_NAME.match(f[:-4])]
    except (OSError, TypeError):
        return []


###############################################################################
# Email delivery ##############################################################
###############################################################################

def _message_parts(fields):
    """(message, its bytes, None or a function returning its bytes for a
    server without 8BITMIME) for checked fields.

    The 7-bit copy (the body as QP or base64) is built only when called: a
    server that offers 8BITMIME, and sendmail, never need it.
    """
    def built(seven_bit=False):
        try:
            msg = _build_message(fields, seven_bit)
            return msg, _message_bytes(msg)
        except (QueueError, MemoryError):
            raise
        except Exception as exc:
            # The email package refusing the message, or tripping over it
            # (Python 3.8 raises TypeError for a blank Orig-Date), is about
            # the data, which a retry cannot change (smtplib's own errors are
            # classified in _smtp_error).
            raise PermanentError("the message cannot be built: %s: %s"
                                 % (type(exc).__name__, _first_line(exc)))
    msg, data = built()
    if data.isascii():
        return msg, data, None
    kept = []

    def seven_bit():
        if not kept:
            kept.append(built(True)[1])
        return kept[0]
    return msg, data, seven_bit


def _deliver(fields, config):
    """Send (or, with MAIL_MAILER=log, log) one checked message.

    Between attempts the job's payload keeps, under "mail", the message's
    Date and the recipients it still has to reach: a retry sends the same
    message (same Date, same Message-ID) to those only. Accepted recipients
    get it once; the ones deferred (4xx, or 503) are retried; the ones still refused
    when the attempts run out are named in failed_jobs.
    """
    import email.utils
    running = current_job()
    worker = getattr(running, "worker", None)
    log = worker.log if worker is not None else _Log()
    state = _mail_state(running)
    state.setdefault("date", email.utils.formatdate(localtime=True))
    fields = dict(fields, date=state["date"])
    msg, data, data_7bit = _message_parts(fields)
    sender = fields["from"][1]
    everyone = []
    for _, addr in fields["to"] + fields["cc"] + fields["bcc"]:
        if addr not in everyone:
            everyone.append(addr)
    if config.mail_mailer == "log":
        _log_message(log, msg, sender, everyone)
        return
    tries = worker._settings(running)[0] if worker is not None else 1
    last = running is None or running.attempts >= tries
    if config.mail_mailer == "sendmail":
        try:
            with _RateSlot(config, worker) as gate:
                reply = _Sendmail(config).send(sender, everyone, data)
                gate.accepted = True
        except _RateWait:
            raise
        except QueueError as exc:
            outage = isinstance(exc, (_MailOutage, _MailThrottle))
            _keep_mail_state(running, state, failing=not outage and (
                isinstance(exc, PermanentError) or last))
            if worker is not None and not outage:
                worker._mail_flowing()            # sendmail ran and judged the message
            raise
        if worker is not None:
            worker._mail_flowing()
        _sent_row(running, msg, fields, everyone, reply)
        return
    # A stored list can only narrow the message's own recipients, never add one.
    pending = state.get("pending")
    recipients = [a for a in everyone if pending is None or a in pending]
    rejected = {a: r for a, r in state.get("refused", {}).items() if a in everyone}
    refused = {}
    if recipients:
        reuse = worker is not None and getattr(worker, "reuse_smtp", True)
        mailer = worker.resources.get("smtp") if reuse else None
        if mailer is None:
            mailer = _Mailer(config, log)
            if reuse:
                worker.resources["smtp"] = mailer
        try:
            with _RateSlot(config, worker) as gate:
                # SMTP lines end in CRLF; smtplib fixes line ends only of str messages.
                refused = mailer.send(sender, recipients, data, data_7bit)
                gate.accepted = len(refused) < len(recipients)
        except _RateWait:
            raise      # nothing was sent: not a word about the server
        except QueueError as exc:
            outage = isinstance(exc, (_MailOutage, _MailThrottle))
            # The same Date on the next attempt (an outage gives the job back).
            _keep_mail_state(running, state, failing=not outage and (
                isinstance(exc, PermanentError) or last))
            if worker is not None and not isinstance(exc, _MailOutage):
                worker._mail_flowing()            # the server answered: it is up
            raise
        finally:
            if not reuse:
                mailer.close()
        if worker is not None:
            worker._mail_flowing()
        _sent_row(running, msg, fields, [a for a in recipients if a not in refused], mailer.reply)
    _refusals(config, running, state, msg, everyone, recipients, pending, refused, rejected,
              tries, last)


def _refusals(config, running, state, msg, everyone, recipients, pending, refused, rejected,
              tries, last):
    """After _deliver's SMTP send: return when nobody refused the message;
    else keep the deferred recipients for the next attempt (QueueError), or,
    on the last one or for refusals only, fail naming everyone who has not had it."""
    # A 503 says the session was out of step (the transaction is reset),
    # never that the address is bad: retried like a 4xx.
    deferred = {a: _reply_text(*r) for a, r in refused.items()
                if 400 <= r[0] < 500 or r[0] == 503}
    rejected.update((a, _reply_text(*r)) for a, r in refused.items() if a not in deferred)
    if not (deferred or rejected):
        return
    delivered = len(recipients) - len(refused)
    where = "SMTP %s:%s %s" % (config.mail_host, config.mail_port, (
        "delivered %s to %d of %d recipient(s)" % (msg["Message-ID"], delivered, len(recipients))
        if delivered else "refused every recipient (%s)" % ", ".join(
            sorted({str(code) for code, _ in refused.values()}))))

    def listing(replies):
        return "; ".join("%s: %s" % (a, replies[a]) for a in everyone if a in replies)

    if deferred and not last:
        _keep_mail_state(running, dict(state, pending=[a for a in everyone if a in deferred],
                                       refused=rejected))
        text = "%s; deferred: %s" % (where, listing(deferred))
        if rejected:
            text += "; refused: %s" % listing(rejected)
        raise QueueError(_scrub(text, config))
    # Failing: the stored payload names everyone who has not had it, so that
    # `python3 dbqueue.py retry` sends to them only.
    missing = set(rejected) | set(deferred)
    failed_state = {"date": state["date"]}
    if pending is not None or delivered:
        failed_state["pending"] = [a for a in everyone if a in missing]
    _keep_mail_state(running, failed_state, failing=True)
    text = where
    if deferred:
        text += "; still deferred after %d attempt(s): %s" % (tries, listing(deferred))
    if rejected:
        text += "; refused: %s" % listing(rejected)
    if deferred:   # the last attempt: the worker moves the job to failed_jobs
        raise QueueError(_scrub(text, config))
    raise PermanentError(_scrub(text + " (permanent)", config))


def _sent_row(running, msg, fields, accepted, reply):
    """Keep, for the sent log, who took the running job's message and the
    server's last reply: the worker writes it with the attempt's outcome
    (Queue._log_sent). Each value is cut to what every database's column
    takes, so that it can never fail that transaction. The body is not kept."""
    if running is None or not accepted or not getattr(running.worker, "sent_log", False):
        return

    def cut(value, size):
        return None if value is None else str(value).replace("\x00", "")[:size]
    template = running.data.get("template") if isinstance(running.data, dict) else None
    running.sent.append({
        "queue": cut(running.queue, 255), "uuid": running.uuid, "job": cut(running.name, 255),
        "template": cut(template, 255) if isinstance(template, str) else None,
        "subject": cut(fields["subject"], 1000), "sender": cut(fields["from"][1], 255),
        # Addresses are ASCII (_addresses): 60000 characters fit MySQL's TEXT.
        "recipients": cut(", ".join(accepted), 60000), "message_id": cut(msg["Message-ID"], 255),
        "reply": cut(reply or "", 1000)})


def _message_bytes(msg):
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def _reply_text(code, reply):
    """'450 4.2.0 mailbox busy': one SMTP reply as stored and shown (bounded)."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return ("%s %s" % (code, " ".join(str(reply).split())))[:200]


def _mail_state(running):
    """The running job's payload["mail"], checked: date, pending, refused (each optional).

    Written by dbqueue between attempts, but it is a payload like any other:
    anything malformed in it is ignored.
    """
    import email.utils
    state = (getattr(running, "payload", None) or {}).get("mail")
    checked = {}
    if not isinstance(state, dict):
        return checked
    date = state.get("date")
    if (isinstance(date, str) and date.isascii() and len(date) <= 64
            and len((date + "x").splitlines()) == 1 and email.utils.parsedate_tz(date)):
        checked["date"] = date
    pending = state.get("pending")
    if isinstance(pending, list) and all(isinstance(a, str) for a in pending):
        checked["pending"] = pending
    refused = state.get("refused")
    if isinstance(refused, dict):
        checked["refused"] = {a: str(r)[:200] for a, r in refused.items() if isinstance(a, str)}
    return checked


def _keep_mail_state(running, state, failing=False):
    """Store `state` in the job's payload when the worker releases or fails it.

    It can only name the message's own recipients (see _deliver) and is
    written with the job's fencing token, like any release. A job that fails
    keeps its payload as it was written (the app that wrote the row may read
    failed_jobs too) unless some recipients already have the message: then
    the payload says who has not, so that `retry` sends to them only.
    """
    if running is None or not isinstance(running.payload, dict):
        return
    if failing and "pending" not in state:
        running.next_payload = None
        return
    running.next_payload = _dumps(dict(running.payload, mail=state))


###############################################################################
# Rate limits and throttling ##################################################
###############################################################################

class _RateWait(QueueError):
    """MAIL_RATE_LIMIT's next free slot is further off than a handler should
    wait: the worker gives the job back, its attempt unspent, until then."""

    def __init__(self, message, delay):
        super().__init__(message)
        self.delay = delay


def _rate_name(config, window):
    # Shared by every worker of this jobs table, on any host. The name holds
    # the window's limit itself ("14/s"): workers that disagree on it (during
    # a deploy that changes it) each keep their own, never a mix.
    return "%s mail %s" % (config.table, window)


class _MailThrottle(QueueError):
    """The mail server said we send too fast (a throttling reply), or another
    worker learned so: the job goes back unspent and its queue waits
    (_RateSlot records it, Worker._mail_throttle gives the job back)."""

    def __init__(self, message, wait=None):
        super().__init__(message)
        self.wait = wait       # seconds until the queue's next send; None until recorded
        self.first = False     # this reply began the throttling: the worker says so


class _RateSlot:
    """`with _RateSlot(config, worker) as gate:` around one send: under
    MAIL_RATE_LIMIT, and on a queue that the mail server throttles.

    Makes room for the message in every window of the limit before the
    block (Queue.rate_take), waiting in the handler for up to `wait_inline`
    seconds (the next slot of 14/s is at most a second away); a longer wait
    raises _RateWait. After the block each slot holds the moment the send
    ended, so a slot's next message starts a whole window after its last one
    arrived: the limit holds for what the server receives, not only for when
    the workers started sending.

    A worker's send also waits its turn on a throttled queue (Queue.
    throttle_take), raising _MailThrottle for a longer wait. A throttling
    reply in the block is recorded (the queue's wait doubles); the caller
    sets `gate.accepted` when the server took the message, which ends the
    throttling when this send was the turn after a wait.
    """

    wait_inline = 5.0

    def __init__(self, config, worker):
        self.config, self.worker = config, worker
        self.queue = self.taken = None
        self.windows = [(_rate_name(config, "%d/%s" % (count, _RATE_UNITS[seconds])), count,
                         seconds * 1000) for count, seconds in _rate_limit(config.mail_rate_limit)
                        or ()]
        running = current_job() if worker is not None else None
        self.throttle_queue = getattr(running, "queue", None)
        # The throttle is read before every send: on the worker's own
        # connection, idle while its handler runs, not on one more per thread.
        self.conn = getattr(worker, "_conn", None)
        self.paced = False       # this send is a throttled queue's turn (Queue.throttle_take)
        self.accepted = False

    def __enter__(self):
        if not self.windows and self.throttle_queue is None:
            return self
        own = self.worker is None     # _deliver() outside a worker: a queue for this send
        self.queue = Queue(config=self.config) if own else self.worker.queue
        # A job's timeout keeps running while it waits here: wait less than what is left.
        inline = self.wait_inline
        deadline = getattr(self.worker, "_hard_deadline", None)
        if deadline is not None:
            inline = min(inline, deadline - self.worker.timeout_grace - time.monotonic() - 1.0)
        waited = 0.0
        try:
            while True:
                try:
                    throttled, wait_ms = self._take()
                except DatabaseError as exc:
                    if isinstance(exc, MissingTableError) or not exc.transient:
                        raise
                    # The database is away: not this message's fault.
                    raise _RateWait("MAIL_RATE_LIMIT: the database did not answer: %s"
                                    % _first_line(exc), 1)
                if not wait_ms:
                    return self
                if waited + wait_ms / 1000.0 > inline and throttled:
                    raise _MailThrottle("the mail server is throttling queue %s: its next message"
                                        " may leave in %.1fs" % (self.throttle_queue,
                                                                 wait_ms / 1000.0),
                                        wait=wait_ms / 1000.0)
                if waited + wait_ms / 1000.0 > inline:
                    raise _RateWait("MAIL_RATE_LIMIT %s: the next message may leave in %.1fs"
                                    % (self.config.mail_rate_limit, wait_ms / 1000.0),
                                    int(wait_ms // 1000))
                time.sleep(wait_ms / 1000.0)
                waited += wait_ms / 1000.0
        finally:
            if own and self.taken is None:
                self.queue.close()

    # A worker's interruption of the handler (its timeout, a second SIGINT)
    # waits while slots are taken and while they are stamped (Worker._defer).
    # One that lands in __exit__ before that leaves them in the worker's
    # _rate_held, and the worker stamps them when the handler has ended.

    def _take(self):
        """(throttled, ms to wait): 0 ms when the message may leave now."""
        if self.throttle_queue is not None and not self.paced:
            wait_ms = self.queue.throttle_take(self.throttle_queue, self.conn)
            if wait_ms:
                return True, wait_ms
            self.paced = wait_ms == 0
        if not self.windows:
            return False, 0
        _hold_interrupts(True)
        try:
            self.taken, wait_ms = self.queue.rate_take(
                self.windows, max(60, 4 * self.config.mail_timeout) * 1000)
            if self.taken is not None and self.worker is not None:
                self.worker._rate_held.append(self)
            return False, wait_ms
        finally:
            _hold_interrupts(False)

    def __exit__(self, kind, exc, tb):
        if self.queue is None:
            return False
        if self.taken is not None:
            _hold_interrupts(True)
            try:
                self.sent()
            finally:
                _hold_interrupts(False)
        try:
            if self.throttle_queue is None:
                pass
            elif isinstance(exc, _MailThrottle) and exc.wait is None:
                exc.wait, exc.first = self.queue.throttle(self.throttle_queue, _first_line(exc),
                                                          self.paced, self.conn)
            elif self.paced and self.accepted and self.queue.throttle_clear(self.throttle_queue,
                                                                             self.conn):
                self.worker.log.info("the mail server accepts mail again: queue %s sends at full"
                                     " speed" % self.throttle_queue)
        except QueueError:
            pass   # not recorded: this worker still waits (Worker._mail_throttle)
        finally:
            if self.worker is None:
                self.queue.close()
        return False

    def sent(self):
        """Stamp the slots: the message has left (also after a failed send: it
        may have reached the server)."""
        if self.worker is not None:
            self.worker._rate_held.remove(self)
        try:
            self.queue.rate_sent(self.taken, self.windows)
        except QueueError:
            pass   # a slot stays held until its hold lapses: later, never sooner
        finally:
            self.taken = None


###############################################################################
# SMTP and sendmail ###########################################################
###############################################################################

def _log_message(log, msg, sender, recipients):
    """MAIL_MAILER=log: the whole message in the worker's log, nothing sent.

    The headers are shown as they would be sent; each part decoded (not
    quoted-printable), so that a developer can read it and click the link.
    """
    head = msg.as_string().split("\n\n", 1)[0]
    parts = [head, ""]
    for part in msg.walk():
        if part.is_multipart():
            continue
        parts.append("[%s part]" % part.get_content_type())
        parts.append(part.get_content().rstrip("\n"))
        parts.append("")
    text = "\n".join(parts)
    fields = {"message_id": msg["Message-ID"], "envelope_from": sender,
              "envelope_to": ",".join(recipients)}
    if isinstance(log, _Log) and not log.json:
        # Text logs get the message as a readable block under the log line.
        log.info("MAIL_MAILER=log: email not sent, shown here", **fields)
        stream = log.stream or sys.stderr
        with log._lock:
            stream.write("-" * 72 + "\n" + text.rstrip("\n") + "\n" + "-" * 72 + "\n")
            stream.flush()
    else:
        log.info("MAIL_MAILER=log: email not sent, shown here", email=text, **fields)


class _Mailer:
    """One SMTP session, reused for consecutive messages of one worker.

    A reused session is checked with NOOP before each message and reopened when
    the server has dropped it, so nothing is ever half-sent on a dead line.
    After a failed transaction the session is reset (RSET) or, when that fails
    too, closed: one message's failure never leaves the session out of step
    for the next (Postfix answers a MAIL inside an unfinished transaction with
    "503 nested MAIL command"). The worker closes it (QUIT) when it exits.
    """

    def __init__(self, config, log):
        self.config = config
        self.log = log
        self.smtp = None
        self.opened = 0      # sessions opened, for logs and the benchmark
        self.ehlo_name = None
        self.reply = None    # the last message's final reply ("250 2.0.0 Ok: queued as ...")

    def close(self):
        smtp, self.smtp = self.smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except Exception:
            try:
                smtp.close()
            except Exception:
                pass

    def _alive(self):
        import smtplib
        try:
            return self.smtp.noop()[0] == 250
        except (smtplib.SMTPException, OSError):
            return False

    def _open(self):
        import smtplib
        import ssl
        c = self.config
        if self.ehlo_name is None:
            self.ehlo_name = _ehlo_name(c)
        context = None
        if c.mail_encryption != "none":
            context = ssl.create_default_context()
            if not c.mail_verify_peer:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        if c.mail_encryption == "ssl":
            smtp = _session_smtp(ssl=True)(local_hostname=self.ehlo_name,
                                           timeout=c.mail_timeout, context=context)
        else:
            smtp = _session_smtp()(local_hostname=self.ehlo_name, timeout=c.mail_timeout)
        smtp.session_deadline = self._session_deadline()
        smtp._host = c.mail_host     # what SMTP(host) keeps for TLS's server_hostname
        try:
            code, reply = smtp.connect(c.mail_host, c.mail_port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, reply)
            if c.mail_encryption == "starttls":
                smtp.ehlo()
                smtp.starttls(context=context)   # never falls back to plain text
            smtp.ehlo_or_helo_if_needed()
            if c.mail_username:
                self._check_auth(smtp)
                self._login(smtp)
        except BaseException:
            smtp.close()
            raise
        smtp.session_deadline = None     # from here on, MAIL_TIMEOUT per reply only
        if smtp.sock is not None:
            smtp.sock.settimeout(c.mail_timeout)
        self.smtp = smtp
        self.opened += 1
        debug = getattr(self.log, "debug", None)
        if debug is not None:
            debug("smtp session opened", host=c.mail_host, port=c.mail_port,
                  encryption=c.mail_encryption, ehlo=self.ehlo_name)

    @staticmethod
    def _session_deadline():
        """When the session must be open by (time.monotonic()), or None.

        A job has its timeout: a server that answers each line just within
        MAIL_TIMEOUT (a tarpit), or a blackholed name with two addresses
        (2 x MAIL_TIMEOUT, which is the whole default QUEUE_TIMEOUT), would
        otherwise run the job out of time and spend an attempt on what is an
        outage. Opening the session may take half of what is left of the
        job's time; the other half is the message's.
        """
        worker = getattr(current_job(), "worker", None)
        deadline = getattr(worker, "_hard_deadline", None)
        if deadline is None:
            return None
        now = time.monotonic()
        return now + max(0.0, deadline - worker.timeout_grace - now) / 2.0

    def _check_auth(self, smtp):
        """Refuse, before trying, AUTH that no retry could make work."""
        c = self.config
        if not (c.mail_username.isascii() and c.mail_password.isascii()):
            # smtplib writes AUTH in ASCII: every attempt would fail alike.
            raise PermanentError("MAIL_USERNAME and MAIL_PASSWORD must be ASCII: smtplib"
                                 " cannot send other characters in SMTP AUTH")
        smtp.ehlo_or_helo_if_needed()
        offered = smtp.esmtp_features.get("auth", "").split()
        if smtp.has_extn("auth") and not set(offered) & {"CRAM-MD5", "PLAIN", "LOGIN"}:
            raise PermanentError("the server offers no AUTH mechanism that smtplib has"
                                 " (CRAM-MD5, PLAIN, LOGIN): %s" % (" ".join(offered) or "none"))

    def _login(self, smtp):
        """AUTH once. smtplib's login() tries every mechanism the server offers,
        so a wrong password cost two or three refusals (and a lockout sooner);
        here a mechanism the server turns down as such (504) is the only reason
        to try the next."""
        import smtplib
        if not smtp.has_extn("auth"):
            raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        offered = smtp.esmtp_features["auth"].upper().split()
        smtp.user, smtp.password = self.config.mail_username, self.config.mail_password
        for mechanism in [m for m in ("CRAM-MD5", "PLAIN", "LOGIN") if m in offered]:
            method = getattr(smtp, "auth_" + mechanism.lower().replace("-", "_"))
            try:
                smtp.auth(mechanism, method)
                return
            except smtplib.SMTPAuthenticationError as exc:
                if exc.smtp_code != 504:
                    raise

    def send(self, sender, recipients, data, data_7bit=None):
        """One mail transaction; returns {recipient: (code, reply)} of those not
        accepted. The message went to the others; to nobody when none was.

        `data_7bit` gives the message for a server without 8BITMIME (when
        `data` is not ASCII): bytes, or a function that builds them, called
        only for such a server. Failures leave as _MailThrottle (a reply
        that says we send too fast: one with 421 closes the session, as 421
        says it does, and the next send opens another; a 454 keeps it, reset),
        _MailOutage (no session: the connection, greeting, TLS or AUTH failed
        or is not offered, or another 421), PermanentError (a 5xx about this
        message) or QueueError (retried), with any secret removed from the text.
        """
        import smtplib
        stage = "session"
        try:
            if self.smtp is not None and not self._alive():
                self.close()
            if self.smtp is None:
                self._open()
            smtp, stage = self.smtp, "transaction"
            eight_bit = data_7bit is not None and smtp.has_extn("8bitmime")
            body = data
            if data_7bit is not None and not eight_bit:
                body = data_7bit() if callable(data_7bit) else data_7bit
            options = ["BODY=8BITMIME"] if eight_bit else []
            if smtp.has_extn("size"):
                options.append("SIZE=%d" % len(body))
            code, reply = smtp.mail(sender, options)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, sender)
            refused = {}
            for recipient in recipients:
                code, reply = smtp.rcpt(recipient)
                if code not in (250, 251):
                    refused[recipient] = (code, reply)
                if code == 421 or _throttling(code, reply):
                    # Not this recipient's answer but the session's: the
                    # message goes to nobody now (no DATA), to all later.
                    raise smtplib.SMTPRecipientsRefused(refused)
            if len(refused) == len(recipients):
                self._reset()       # no DATA: the transaction ends here, nobody got it
                return refused
            code, reply = smtp.data(body)   # raises SMTPDataError if DATA itself is refused
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
            self.reply = _reply_text(code, reply)
            return refused
        except BaseException as exc:
            self._after_failure(exc)
            if isinstance(exc, JobTimeout) and stage == "session":
                # The job's time ran out before the server let us send: no
                # message was offered, so it is the server's outage.
                error = _MailOutage(_scrub(
                    "SMTP %s:%s timed out: the session did not open before the job's"
                    " timeout (outage)" % (self.config.mail_host, self.config.mail_port),
                    self.config))
            elif not isinstance(exc, Exception):
                raise   # JobTimeout, KeyboardInterrupt: not ours to translate
            else:
                error = _smtp_error(exc, self.config, stage)
        raise error   # outside the except block: no chained traceback with smtplib's text

    def _after_failure(self, exc):
        """RSET after a refusal, so that the next message starts a clean
        transaction; close after anything else (timeout, hang-up, 421), or
        when RSET is not answered with 250."""
        import smtplib
        if self.smtp is None:
            return
        answered = isinstance(exc, (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused))
        if answered and 421 not in _smtp_codes(exc):
            self._reset()
            return
        self._drop()

    def _reset(self):
        import smtplib
        try:
            if self.smtp.rset()[0] == 250:
                return
        except (smtplib.SMTPException, OSError):
            pass
        self._drop()

    def _drop(self):
        smtp, self.smtp = self.smtp, None
        try:
            smtp.close()
        except Exception:
            pass


class _SessionDeadline(OSError):
    """Opening the SMTP session took longer than the job's time allows."""


_session_classes = []


def _session_smtp(ssl=False):
    """The SMTP class _Mailer opens sessions with (SMTP_SSL's with `ssl`)."""
    if not _session_classes:
        _session_classes.extend(_make_session_classes())
    return _session_classes[1 if ssl else 0]


def _make_session_classes():
    import smtplib

    class SessionSMTP(smtplib.SMTP):
        """smtplib's SMTP with one deadline over the whole session opening
        (connect to each address, greeting, EHLO, STARTTLS, AUTH), on top of
        MAIL_TIMEOUT for each reply; `session_deadline` None turns it off."""

        session_deadline = None

        def _left(self):
            if self.session_deadline is None:
                return self.timeout
            left = self.session_deadline - time.monotonic()
            if left <= 0:
                raise _SessionDeadline("timed out: the session did not open within the time"
                                       " the job's timeout leaves (QUEUE_TIMEOUT)")
            return min(self.timeout, left)

        def _get_socket(self, host, port, timeout):
            if self.session_deadline is None:
                return super()._get_socket(host, port, timeout)
            import socket
            last = None
            # Each address within what is left, not MAIL_TIMEOUT each.
            for family, kind, proto, _, address in socket.getaddrinfo(
                    host, port, 0, socket.SOCK_STREAM):
                sock = socket.socket(family, kind, proto)
                try:
                    sock.settimeout(self._left())
                    if self.source_address:
                        sock.bind(self.source_address)
                    sock.connect(address)
                    return sock
                except _SessionDeadline:
                    sock.close()
                    raise
                except OSError as exc:
                    sock.close()
                    last = exc
            raise last or OSError("no address for %s" % host)

        def _timed(self, method, *args):
            if self.session_deadline is not None and self.sock is not None:
                self.sock.settimeout(self._left())
            try:
                return method(*args)
            except smtplib.SMTPServerDisconnected:
                if (self.session_deadline is not None
                        and time.monotonic() >= self.session_deadline):
                    self._left()     # raises _SessionDeadline
                raise

        def send(self, s):
            return self._timed(super().send, s)

        def getreply(self):
            return self._timed(super().getreply)

    class SessionSMTPS(smtplib.SMTP_SSL, SessionSMTP):
        def _get_socket(self, host, port, timeout):
            # Python 3.8's SMTP_SSL connects by itself: the deadline's socket, then TLS.
            sock = SessionSMTP._get_socket(self, host, port, timeout)
            try:
                return self.context.wrap_socket(sock, server_hostname=self._host)
            except BaseException:
                sock.close()
                raise

    return SessionSMTP, SessionSMTPS


def _ehlo_name(config, hostname=None):
    """MAIL_EHLO_DOMAIN, else this host's name (as smtplib would pick it) in ASCII.

    smtplib sends its commands in ASCII, so a host named "bücher-pc.example"
    would break every EHLO: it goes as IDNA (xn--bcher-pc-...), and a name
    that has no ASCII form as "localhost".
    """
    import socket
    if config.mail_ehlo_domain:
        return config.mail_ehlo_domain
    name = hostname if hostname is not None else socket.getfqdn()
    if not (name.isascii() and name.isprintable() and " " not in name):
        name = _ascii_host(name) or "localhost"
    if "." not in name and name != "localhost":
        # smtplib's rule: a name without a domain is sent as an address literal.
        try:
            return "[%s]" % socket.gethostbyname(socket.gethostname())
        except (OSError, UnicodeError):
            return "[127.0.0.1]"
    return name


def _split_command(text):
    """A command line as its words, as a POSIX shell splits them (no shell runs it)."""
    import shlex
    return shlex.split(text)


class _Sendmail:
    """MAIL_MAILER=sendmail: each message piped to MAIL_SENDMAIL_PATH, one process each.

    The recipients are given as arguments (after `-f sender`), and a `-t` in
    the command is dropped: with -t, sendmail would take them from the To,
    Cc and Bcc headers, and Bcc recipients would have to be written into the
    message for it to find them, relying on every sendmail to delete that
    header again (ssmtp, for one, did not).

    The exit status decides, as sysexits.h defines them. The mail system
    being unable to take mail at all (the program missing or hanging, killed
    by a signal, 69 EX_UNAVAILABLE, 71 EX_OSERR, 74 EX_IOERR, 75 EX_TEMPFAIL:
    ssmtp and msmtp exit so when their relay is down) is an outage, as for
    SMTP; 64 EX_USAGE, 65 EX_DATAERR, 67 EX_NOUSER and 68 EX_NOHOST are about
    this message and fail it at once; any other status is retried.
    """

    OUTAGE = {69: "EX_UNAVAILABLE", 71: "EX_OSERR", 74: "EX_IOERR", 75: "EX_TEMPFAIL"}
    PERMANENT = {64: "EX_USAGE", 65: "EX_DATAERR", 67: "EX_NOUSER", 68: "EX_NOHOST"}

    def __init__(self, config):
        self.config = config

    def command(self, sender, recipients):
        argv = []
        for arg in _split_command(self.config.mail_sendmail_path):
            if arg in ("-ti", "-it"):
                arg = "-i"
            if arg != "-t":
                argv.append(arg)
        for addr in recipients:
            if addr.startswith("-"):
                # It would be read as an option: "-oQ/tmp@x.test" is a valid address.
                raise PermanentError("%r cannot be passed to sendmail (it starts with -)" % addr)
        if "-f" not in argv and not any(a.startswith("-f") and len(a) > 2 for a in argv):
            argv += ["-f", sender]
        return argv + list(recipients)

    def send(self, sender, recipients, data):
        import subprocess
        argv = self.command(sender, recipients)
        where = "sendmail (%s)" % argv[0]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        except OSError as exc:
            # A program that is missing here may be installed in a minute:
            # waited out, and the line says which setting names it.
            raise _MailOutage("%s cannot be started: %s (check MAIL_SENDMAIL_PATH) (outage)"
                              % (where, exc.strerror or exc))
        try:
            # A local program reads UNIX line ends; sendmail makes them CRLF.
            _, err = proc.communicate(data.replace(b"\r\n", b"\n"),
                                      timeout=self.config.mail_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise _MailOutage("%s did not finish within MAIL_TIMEOUT=%ss (outage)"
                              % (where, self.config.mail_timeout))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        code = proc.returncode
        if code == 0:
            return "%s exited 0" % where     # the sent log's reply
        line = (err or b"").decode("utf-8", "replace").strip().splitlines()
        detail = _scrub(line[0][:300], self.config) if line else "no message"
        if code < 0:
            raise _MailOutage("%s was killed by signal %d: %s (outage)" % (where, -code, detail))
        if code in self.OUTAGE:
            raise _MailOutage("%s exited %d (%s): %s (outage)"
                              % (where, code, self.OUTAGE[code], detail))
        if code in self.PERMANENT:
            raise PermanentError("%s exited %d (%s): %s (permanent)"
                                 % (where, code, self.PERMANENT[code], detail))
        # Only "(permanent)" and "(outage)" are said, as for SMTP: a last
        # attempt must not read "temporary" in failed_jobs.
        raise QueueError("%s exited %d: %s" % (where, code, detail))


def _smtp_replies(exc):
    """[(code, reply)] of the server's answers an smtplib exception carries."""
    replies = list((getattr(exc, "recipients", None) or {}).values())
    if getattr(exc, "smtp_code", None) is not None:
        replies.append((exc.smtp_code, exc.smtp_error))
    return replies


def _smtp_codes(exc):
    return {code for code, _ in _smtp_replies(exc)}


# A reply that says the sender is going too fast: a 4xx with one of these
# words ("too much" is Postfix's "450 4.7.1 Error: too much mail from ..."),
# unless its enhanced status code is about an address or a mailbox (Gmail's
# "450 4.2.1 ... receiving mail at a rate that prevents additional messages"
# and "452 4.2.2 ... over quota" are that one recipient's) or the protocol
# ("452 4.5.3 Too many recipients" is this message's): those stay deferrals.
_THROTTLE = _Pattern(r"(?i)(?<![a-z])rate|too many|too much|throttl|limit exceeded|quota")
_NOT_THROTTLE = _Pattern(r"\s*4\.[125]\.[0-9]")


def _throttling(code, reply):
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return 400 <= code < 500 and not _NOT_THROTTLE.match(text) and bool(_THROTTLE.search(text))


def _timed_out(exc):
    """True when `exc` is (or was raised while handling) a socket timeout:
    smtplib reports a reply that never came as a closed connection."""
    import socket
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, socket.timeout) or (isinstance(exc, OSError) and "timed out" in str(exc)):
            return True
        exc, seen = exc.__context__, seen + 1
    return False


def _smtp_error(exc, config, stage="transaction"):
    """The exception a failed send raises.

    A throttling reply anywhere (_throttling): _MailThrottle, which gives the
    job back unspent and slows its queue down for every worker. No session
    (stage "session": connecting, greeting, STARTTLS, EHLO, AUTH, for any
    reason, a missing extension included) or a 421 anywhere: _MailOutage,
    which pauses the worker's mail without spending attempts.
    Otherwise PermanentError for a 5xx about the message (503, a command out
    of sequence, is never one: it is about the session), else QueueError,
    retried with backoff.
    """
    import smtplib
    where = "SMTP %s:%s" % (config.mail_host, config.mail_port)
    if stage == "session" and isinstance(exc, (QueueError, smtplib.SMTPNotSupportedError)):
        # A server without STARTTLS or AUTH (Postfix stops offering STARTTLS
        # when it cannot load its certificate), or credentials smtplib cannot
        # send: no message can go until the server or the settings are
        # fixed, and none of them is this message's fault.
        return _MailOutage(_scrub(
            "%s %s (check MAIL_ENCRYPTION=%s, MAIL_USERNAME) (outage)"
            % (where, _first_line(exc), config.mail_encryption), config))
    if isinstance(exc, PermanentError):
        return PermanentError(_scrub("%s %s (permanent)" % (where, exc), config))

    def reply(value):
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    codes = _smtp_codes(exc)
    detail = ""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        permanent = bool(codes) and all(code >= 500 and code != 503 for code in codes)
        what = "every recipient was refused (%s)" % ", ".join(str(c) for c in sorted(codes))
        detail = "\n".join("%s: %s %s" % (addr, code, reply(resp))
                           for addr, (code, resp) in sorted(exc.recipients.items()))
    elif isinstance(exc, smtplib.SMTPResponseException):
        permanent = exc.smtp_code >= 500 and exc.smtp_code != 503
        kind = {smtplib.SMTPAuthenticationError: "authentication failed",
                smtplib.SMTPSenderRefused: "sender refused",
                smtplib.SMTPDataError: "message refused",
                smtplib.SMTPConnectError: "connection refused by the server",
                smtplib.SMTPHeloError: "greeting refused"}.get(type(exc), "server refused")
        what = "%s: %s %s" % (kind, exc.smtp_code, reply(exc.smtp_error))
    elif isinstance(exc, smtplib.SMTPNotSupportedError):
        # A configuration problem that retrying cannot help.
        return PermanentError(_scrub(
            "%s the server does not support this (check MAIL_ENCRYPTION, MAIL_USERNAME): %s"
            " (permanent)" % (where, exc), config))
    elif isinstance(exc, _SessionDeadline) or isinstance(exc.__context__, _SessionDeadline):
        permanent = False
        what = str(exc if isinstance(exc, _SessionDeadline) else exc.__context__)
    elif _timed_out(exc):
        permanent = False
        what = ("timed out: no answer from the server within MAIL_TIMEOUT=%ss"
                % config.mail_timeout)
    elif isinstance(exc, smtplib.SMTPServerDisconnected):
        permanent = False
        what = "the server closed the connection: %s" % (exc or "unexpectedly")
    elif isinstance(exc, OSError):
        # Refused, unreachable, TLS handshake or certificate failure.
        import ssl
        permanent = False
        what = "%s: %s" % ("TLS failed" if isinstance(exc, ssl.SSLError) else "unreachable", exc)
    else:
        permanent = False
        what = "%s: %s" % (type(exc).__name__, exc)
    throttled = any(_throttling(code, reply) for code, reply in _smtp_replies(exc))
    outage = not throttled and (stage == "session" or 421 in codes)
    # Only "(permanent)", "(outage)" and "(throttled)" are said: whether a
    # temporary error is retried is the worker's to decide (the log says
    # released or failed), and a job's last attempt that failed on one must
    # not read "temporary" in failed_jobs.
    text = "%s %s%s" % (where, what, " (throttled)" if throttled else " (outage)" if outage
                        else " (permanent)" if permanent else "")
    if detail:
        text += "\n" + detail
    text = _scrub(text, config)
    if throttled:
        return _MailThrottle(text)
    if outage:
        return _MailOutage(text)
    return PermanentError(text) if permanent else QueueError(text)


def _scrub(text, config):
    """Remove the SMTP password (also as sent in AUTH, base64) from a message."""
    import base64
    secret = config.mail_password
    if not secret:
        return text
    forms = {secret}
    user = config.mail_username or ""
    for raw in (secret, "\0%s\0%s" % (user, secret)):
        forms.add(base64.b64encode(raw.encode("utf-8")).decode("ascii"))
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


###############################################################################
# Dashboard ###################################################################
###############################################################################

# `python3 dbqueue.py dashboard`: a small admin page in the manner of Sidekiq's
# web UI. Plain server-rendered HTML, one view per task, every action a POST
# form with a CSRF token; it reads and changes the tables only through the
# Queue methods the CLI uses (stats, failed, retry, forget).
#
# Rules, as for any admin page:
# - Every value reaches the HTML through _esc() (directly or through _fill()),
#   the one escaping helper; markup built from escaped parts is _HTML.
# - Nothing secret leaves: the database URL is masked, payloads and exceptions
#   are masked as below, the token is never shown or logged.
# - It binds 127.0.0.1 unless DBQUEUE_DASHBOARD_TOKEN is set; with no token
#   it answers only requests addressed to a loopback name, so that a web page
#   cannot reach it through DNS rebinding either.
# - The Content-Security-Policy allows nothing but the page's own inline CSS
#   and script (by hash), its own forms and images from data: URLs.

_DASHBOARD_PAGE = 50            # failed jobs per page
_DASHBOARD_REFRESH = 5          # seconds between reloads of the overview
_DASHBOARD_TOKEN_MIN = 16       # characters: a token on a network is a password
_DASHBOARD_AUTH_COOKIE = "dbqueue_auth"
_DASHBOARD_SESSION_COOKIE = "dbqueue_session"
# Keys whose values are hidden in a payload; and key=value pairs in free text.
_SECRET_KEY = _Pattern(r"(?i)pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|access[-_]?key"
                       r"|private[-_]?key|auth(?!or)|credential|cookie|session|signature|otp"
                       r"|code\Z")
# "password=x", "api_key: x", '"token": "x"' in an exception or a payload that is not JSON.
# "Authorization: Bearer x" and "Basic x" too: there the secret is the word
# after the scheme, which the key=value rule would leave (it would hide "Bearer").
_SECRET_PAIR = _Pattern(r"(?i)\b((?:bearer|basic)\s+)([^\s\"'<>]+)"
                        r"|\b([\w.-]*?(?:pass(?:word|wd)?|pwd|secret|token|api[-_]?key"
                        r"|access[-_]?key|auth|signature|key)[\"']?\s*[=:]\s*[\"']?)"
                        r"(?!(?:bearer|basic)\s)([^\s&\"'<>,;()]+)")
# A URL: scheme, optional user:password@, host[:port], then the rest.
_LINK = _Pattern(r"\b([A-Za-z][A-Za-z0-9+.-]{1,15}://)[^\s\"'<>]*")
_LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")


class _HTML(str):
    """Text that is HTML already: _esc() passes it through unchanged."""

    __slots__ = ()


def _esc(value):
    """The one escaping helper: any value as HTML text (quotes too, for attributes)."""
    if isinstance(value, _HTML):
        return value
    import html
    return _HTML(html.escape("" if value is None else str(value), quote=True))


def _fill(_template, **values):
    """`_template` (a constant) with each {name} replaced by its escaped value."""
    return _HTML(_template.format(**{k: _esc(v) for k, v in values.items()}))


def _join(parts, sep=""):
    return _HTML(_esc(sep).join(_esc(p) for p in parts))


def _url(_path, **query):
    """A link to one of the dashboard's own pages; empty parameters are left out."""
    from urllib.parse import urlencode
    query = [(k, v) for k, v in query.items()
             if v is not None and v != "" and not (k == "page" and v == 1)]
    return _path + ("?" + urlencode(query) if query else "")


def _jobs(count, what="job"):
    """'1 failed job', '1,204 failed jobs': counts as a page says them."""
    return "{:,} {}{}".format(count, what, "" if count == 1 else "s")


def _mask_links(text):
    """Each URL in `text` as scheme://host/***: in a mail queue a link's path is the
    secret (a verification or password reset link opens an account)."""
    def repl(match):
        scheme, link = match.group(1), _mask_url(match.group(0))
        info = _userinfo(link)
        start = len(scheme) if info is None else info[2] + 1
        host = re.match(r"[^/\s?#\"'<>]*", link[start:]).group(0)
        rest = link[start + len(host):]
        # A user alone may be a token (https://TOKEN@host); one before a password is shown.
        userinfo = "" if info is None else "***@" if info[1] is None else link[len(scheme):start]
        return scheme + userinfo + host + ("/***" if rest.strip("/") else rest)
    return _LINK.sub(repl, text)


def _mask_text(text, config, links=False):
    """Free text for a page: passwords of URLs, key=value secrets and the SMTP
    password hidden; with `links`, every link's path too."""
    text = _scrub(text or "", config)
    text = _mask_links(text) if links else _mask_url(text)
    return _SECRET_PAIR.sub(lambda m: (m.group(1) or m.group(3)) + "***", text)


def _mask_payload(value, config, key=""):
    """A decoded payload with secrets replaced by "***", as shown on the job's page."""
    if key and value not in (None, "", [], {}) and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, dict):
        return {k: _mask_payload(v, config, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_payload(v, config, key) for v in value]
    if isinstance(value, str):
        return _mask_text(value, config, links=True)
    return value


def _failed_summary(row, config):
    """What the failed list shows of one row: job, recipient, error line, when."""
    job, template, recipient = _job_name(row["payload"] or ""), "", ""
    payload, _ = _decode_payload(row["payload"] or "")
    data = payload.get("data") if isinstance(payload, dict) else None
    if isinstance(data, dict):
        to = data.get("to")
        if isinstance(to, list):
            to = ", ".join(str(t) for t in to)
        recipient = to if isinstance(to, str) else ""
        if isinstance(data.get("template"), str):
            template = data["template"].rstrip("/").rsplit("/", 1)[-1]
    return {"job": job, "template": template, "recipient": _mask_text(recipient, config),
            "error": _mask_text(_error_line(row["exception"]), config, links=True),
            "failed_at": re.sub(r"\.\d+", "", row["failed_at"])}


def _dashboard_alerts(queue, stats):
    """Banners for the top of the overview and the failed list: [(kind, text)],
    kind "warn" or "info"."""
    alerts = []
    # ---- THE MAIL OUTAGE AND RATE-LIMIT STATE (issues 10 and 13) ----
    # The outage is what a worker recorded in dbqueue_state, the rate what
    # the workers' send slots hold. Both are extra, as in `stats`: never a
    # failed page.
    try:
        outage = queue.mail_outage()
    except QueueError:
        outage = None
    try:
        rate = queue.rate_use()
    except QueueError:
        rate = None
    try:
        throttle = queue.mail_throttle()
    except QueueError:
        throttle = {}
    for name in sorted(throttle):
        alerts.append(("warn", "Q" + _mask_text(_throttle_text(name, throttle[name]),
                                                queue.config)[1:]
                       + ". No email fails because of it; every worker waits its turn."))
    if isinstance(outage, dict):
        since = outage.get("since")
        text = "The mail server has been unreachable for %s%s" % (
            _duration(outage.get("seconds", 0)),
            " (since %s UTC)" % time.strftime("%H:%M", time.gmtime(since))
            if isinstance(since, int) else "")
        if outage.get("error"):
            text += ": %s" % _mask_text(str(outage["error"]), queue.config)
        queues = outage.get("queues") or []
        text += (". Sending is paused%s and no email fails because of it; workers keep trying."
                 % (" on %s" % ", ".join(str(q) for q in queues) if queues else ""))
        if outage.get("stale"):
            text += (" No worker has tried for %s: is one running?"
                     % _duration(outage.get("checked_ago", 0)))
        alerts.append(("warn", text))
    if isinstance(rate, dict) and rate.get("limit"):
        full = any(w["used"] >= w["messages"] for w in rate["windows"])
        alerts.append(("warn" if full else "info", "MAIL_RATE_LIMIT=%s: %s%s." % (
            rate["limit"], ", ".join("%s of %s sent in the last %s" % (
                "{:,}".format(w["used"]), "{:,}".format(w["messages"]),
                _WINDOW_WORDS[w["window_seconds"]]) for w in rate["windows"]),
            "; the next emails wait their turn" if full else "")))
    for s in stats:
        if s.get("paused"):
            until = s["paused"]["until"]
            alerts.append(("info", "Queue %s is paused %s: workers start none of its jobs." % (
                s["queue"], "until it is resumed" if until is None else "until %s UTC"
                % time.strftime("%H:%M:%S", time.gmtime(until)))))
        if s["expired"]:
            alerts.append(("warn", "Queue %s: %s held by a worker that stopped renewing %s"
                           " reservation (QUEUE_RETRY_AFTER has passed). The next worker to look"
                           " takes %s back." % (s["queue"], _jobs(s["expired"]),
                                                "its" if s["expired"] == 1 else "their",
                                                "it" if s["expired"] == 1 else "them")))
    return alerts


_DASHBOARD_CSS = """
:root{--bg:#f6f7f9;--card:#fff;--text:#1d2430;--muted:#5d6778;--line:#e2e5eb;--accent:#2457c5;
--ok:#1f6e46;--ok-bg:#e6f4ec;--warn-bg:#fff6e0;--warn:#8a5a00;--bad:#b3261e;--bad-bg:#fdecea;--info-bg:#e8f0fe;
--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--card:#1c2027;--text:#e4e7ec;--muted:#9aa3b2;
--line:#2d333d;--accent:#7aa2f7;--ok:#5cc98b;--ok-bg:#17301f;--warn-bg:#3a2f14;--warn:#f0c060;--bad:#ff8a80;
--bad-bg:#3b1f1f;--info-bg:#1d2a44}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);font:15px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
header{background:var(--card);border-bottom:1px solid var(--line)}
.bar{max-width:1200px;margin:0 auto;padding:10px 20px;display:flex;flex-wrap:wrap;
align-items:center;gap:6px 22px}
.brand{font-weight:700;font-size:17px;color:var(--text)}
nav{display:flex;gap:4px}
nav a{padding:6px 10px;border-radius:6px;color:var(--muted)}
nav a[aria-current]{background:var(--info-bg);color:var(--accent);font-weight:600}
.where{margin-left:auto;color:var(--muted);font:12px/1.4 var(--mono);overflow-wrap:anywhere}
.pill{display:inline-block;padding:1px 8px;border-radius:99px;font:600 12px/1.6 system-ui,sans-serif;
background:var(--line);color:var(--muted)}
.pill.bad{background:var(--bad-bg);color:var(--bad)}
main{max-width:1200px;margin:0 auto;padding:20px}
h1{font-size:22px;margin:4px 0 16px}h2{font-size:17px;margin:26px 0 10px}
.note{padding:10px 14px;border-radius:8px;margin:0 0 14px;background:var(--info-bg)}
.note.warn{background:var(--warn-bg);color:var(--warn)}
.note.ok{background:var(--ok-bg);color:var(--ok)}
.note.bad{background:var(--bad-bg);color:var(--bad)}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:0 0 20px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
.tile b{display:block;font-size:26px;line-height:1.2;font-variant-numeric:tabular-nums}
.tile span{color:var(--muted);font-size:13px}
.tile.bad b{color:var(--bad)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;overflow-x:auto}
table{width:100%;border-collapse:collapse}
th,td{padding:9px 12px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);font-weight:600}
tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.zero{color:var(--muted)}
td.bad{color:var(--bad);font-weight:600}
td.err{max-width:460px;overflow-wrap:anywhere}td.err a{color:var(--text)}
.sub{display:block;color:var(--muted);font-size:13px}
td.acts,td.when{white-space:nowrap}td.acts{text-align:right}
.mono{font-family:var(--mono);font-size:13px}
.muted{color:var(--muted)}
form.inline{display:inline}
button,.button{font:inherit;font-size:13px;padding:5px 12px;border-radius:6px;cursor:pointer;
border:1px solid var(--line);background:var(--card);color:var(--text)}
button.primary,.button.primary{background:var(--accent);border-color:var(--accent);color:#fff}
button.danger{color:var(--bad)}
button:hover,.button:hover{filter:brightness(.96);text-decoration:none}
.filters{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 14px;align-items:center}
.filters input,.filters select{font:inherit;padding:5px 9px;border:1px solid var(--line);
border-radius:6px;background:var(--card);color:var(--text)}
.filters input[type=search]{flex:1 1 260px}
.pager{display:flex;gap:12px;align-items:center;margin:14px 0;color:var(--muted)}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 18px;margin:0;padding:14px 16px}
dt{color:var(--muted)}dd{margin:0;overflow-wrap:anywhere}
pre{margin:0;padding:14px 16px;font:13px/1.5 var(--mono);white-space:pre-wrap;overflow-wrap:anywhere}
.actions{display:flex;gap:8px;margin:14px 0}
footer{max-width:1200px;margin:0 auto;padding:0 20px 24px;color:var(--muted);font-size:13px}
@media (max-width:720px){
.bar{padding:8px 14px}.where{margin-left:0;width:100%}main{padding:14px}footer{padding:0 14px 20px}
.tiles{grid-template-columns:1fr 1fr;gap:10px}.tiles .tile:last-child{grid-column:1/-1}
.panel.cards{background:none;border:0;overflow:visible}
.cards table,.cards tbody,.cards tr,.cards td{display:block;width:100%}
.cards thead{display:none}
.cards tr{background:var(--card);border:1px solid var(--line);border-radius:10px;margin:0 0 10px;
padding:6px 0}
.cards td{border:0;padding:3px 14px;display:flex;gap:12px;justify-content:space-between;text-align:right}
.cards td::before{content:attr(data-label);color:var(--muted);font:13px/1.6 system-ui,sans-serif;
text-align:left;flex:0 0 auto}
.cards td.err{max-width:none;display:block;text-align:left}.cards td.err::before{display:block}
.cards td.acts{justify-content:flex-end;padding-top:8px}.cards td.acts::before{content:none}
dl{grid-template-columns:1fr}dt{margin-top:6px}
}
"""

# Forms with data-confirm ask first (Forget). Without JavaScript they simply submit.
_DASHBOARD_JS = ('document.addEventListener("submit",function(e){'
                 'var m=e.target.getAttribute("data-confirm");'
                 'if(m&&!window.confirm(m))e.preventDefault();});')


def _csp_hash(text):
    import base64
    import hashlib
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()


class _Dashboard:
    """The dashboard's pages: handle() turns one request into (status, headers, body).

    Knows nothing of sockets (the server is _dashboard_server()); every
    request runs on a connection of its own, closed when it is answered.
    """

    def __init__(self, queue, read_only=False, token=None, log=None, page_size=_DASHBOARD_PAGE):
        self.queue = queue
        self.config = queue.config
        self.read_only = read_only
        self.token = (self.config.dashboard_token if token is None else token) or None
        self.log = log or _Log()
        self.page_size = page_size
        # Per process: forms rendered before a restart are refused (403).
        self.secret = os.urandom(32)
        self.flash = {}                 # session -> the message for its next page
        self.flash_lock = threading.Lock()
        self.csp = ("default-src 'none'; style-src %s; script-src %s; img-src 'self' data:;"
                    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
                    % (_csp_hash(_DASHBOARD_CSS), _csp_hash(_DASHBOARD_JS)))

    # -- secrets ---------------------------------------------------------

    def _mac(self, key, message):
        import hashlib
        import hmac
        return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()

    def auth_cookie(self):
        """The cookie ?token= sets: derived from the token, never the token itself."""
        return self._mac(self.token.encode("utf-8"), "dbqueue dashboard session")

    def csrf(self, session):
        return self._mac(self.secret, "csrf " + session)

    @staticmethod
    def _same(a, b):
        import hmac
        return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))

    # -- one request -----------------------------------------------------

    def handle(self, method, target, headers, body=b""):
        """(status, [(header, value)], body bytes) for one request."""
        from urllib.parse import parse_qs, urlsplit
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        cookies = self._cookies(headers.get("Cookie", ""))
        out = []
        if self.token is None and not self._loopback_host(headers.get("Host", "")):
            return self._error(403, "Wrong address", "This dashboard answers only at 127.0.0.1"
                               " or localhost (set DBQUEUE_DASHBOARD_TOKEN to serve it on a"
                               " network).", out, anonymous=True)
        if self.token is not None:
            given = query.get("token")
            if given is not None and method in ("GET", "HEAD"):
                if not self._same(given, self.token):
                    return self._error(401, "Wrong token", "That is not this dashboard's token.",
                                       out, anonymous=True)
                # The token leaves the address bar: a cookie carries the session.
                query.pop("token")
                out.append(("Set-Cookie", "%s=%s; Path=/; HttpOnly; SameSite=Strict"
                            % (_DASHBOARD_AUTH_COOKIE, self.auth_cookie())))
                path = parts.path if re.match(r"^(/[A-Za-z0-9_-]+)*/?\Z", parts.path) else "/"
                return 303, out + [("Location", _url(path or "/", **query))], b""
            if not self._authorised(headers, cookies):
                return self._error(401, "Token needed", "This dashboard needs its token: open"
                                   " it once as /?token=… (DBQUEUE_DASHBOARD_TOKEN), or send the"
                                   " header Authorization: Bearer ….", out, anonymous=True)
        session = cookies.get(_DASHBOARD_SESSION_COOKIE, "")
        if not re.match(r"^[0-9a-f]{32}\Z", session):
            session = os.urandom(16).hex()
            out.append(("Set-Cookie", "%s=%s; Path=/; HttpOnly; SameSite=Strict"
                        % (_DASHBOARD_SESSION_COOKIE, session)))
        path = parts.path or "/"
        try:
            if method == "POST":
                return self._post(path, body, session, cookies, out)
            if method not in ("GET", "HEAD"):
                return self._error(405, "Not allowed", "Use GET or POST.", out)
            return self._get(path, query, session, out)
        except DatabaseError as exc:
            self.log.warning("dashboard: database error", error=_mask_url(_first_line(exc)))
            return self._error(503, "The database did not answer", _mask_url(_first_line(exc)),
                               out, refresh=True)
        finally:
            self._release_connection()

    def _release_connection(self):
        conn = getattr(self.queue._local, "conn", None)
        if conn is not None:
            self.queue.discard(conn)

    def _connect(self):
        # Opens, never creates: the dashboard is no reason to make a database.
        if getattr(self.queue._local, "conn", None) is None:
            self.queue._local.conn = self.queue.connect(create=False)

    @staticmethod
    def _cookies(header):
        cookies = {}
        for part in header.split(";"):
            name, _, value = part.strip().partition("=")
            if name:
                cookies.setdefault(name, value)
        return cookies

    @staticmethod
    def _loopback_host(host):
        """Whether a Host header names this machine's loopback (any port: a tunnel's)."""
        host = host.strip()
        if host.startswith("["):
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        return _is_loopback(host)

    def _authorised(self, headers, cookies):
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            return self._same(auth[7:].strip(), self.token)
        cookie = cookies.get(_DASHBOARD_AUTH_COOKIE)
        return cookie is not None and self._same(cookie, self.auth_cookie())

    # -- GET -------------------------------------------------------------

    def _get(self, path, query, session, out):
        self._connect()
        if path == "/":
            return self._overview(session, out)
        if path == "/failed":
            return self._failed_list(query, session, out)
        if path == "/sent":
            return self._sent_list(query, session, out)
        match = re.match(r"^/failed/([0-9]{1,18})\Z", path)
        if match:
            return self._failed_job(int(match.group(1)), session, out)
        if path == "/retry-all" and not self.read_only:
            return self._retry_all_page(query.get("queue", ""), session, out)
        return self._error(404, "Not found", "There is no such page.", out)

    def _overview(self, session, out):
        stats = _with_pauses(self.queue.stats(), self.queue.paused())
        total = _totals(stats)
        ages = [s["oldest_ready_age"] for s in stats if s["oldest_ready_age"] is not None]
        tiles = []
        for key, label in (("ready", "ready"), ("delayed", "delayed"), ("reserved", "running"),
                           ("failed", "failed")):
            tiles.append(_fill('<div class="tile{bad}" data-total="{key}"><b>{n}</b>'
                               '<span>{label}</span></div>',
                               bad=" bad" if key == "failed" and total[key] else "", key=key,
                               n=_count(total, key), label=label))
        tiles.append(_fill('<div class="tile"><b>{age}</b><span>{label}</span></div>',
                           age=_duration(max(ages)) if ages else "–",
                           label="oldest ready job's wait"))
        rows = []
        for s in stats:
            failed_link = _fill('<a href="{href}">{n}</a>', href=_url("/failed", queue=s["queue"]),
                                n="{:,}".format(s["failed"])) if s["failed"] else "0"
            if s["past_deadline"]:
                failed_link = _join([failed_link, _fill(" ({n} past deadline)",
                                                        n="{:,}".format(s["past_deadline"]))])
            actions = ""
            if s["failed"] and not self.read_only:
                actions = _fill('<a class="button" href="{href}">Retry all</a>',
                                href=_url("/retry-all", queue=s["queue"]))
            if not self.read_only:
                actions = _join([a for a in (actions, _fill(
                    '<form class="inline" method="post" action="/{action}">'
                    '<input type="hidden" name="csrf" value="{csrf}">'
                    '<input type="hidden" name="queue" value="{queue}">'
                    '<button type="submit">{label}</button></form>',
                    action="resume" if s.get("paused") else "pause", csrf=self.csrf(session),
                    queue=s["queue"], label="Resume" if s.get("paused") else "Pause")) if a],
                                " ")
            reserved = "{:,}".format(s["reserved"])
            if s["expired"]:
                reserved += " (%d expired)" % s["expired"]
            rows.append(_fill(
                '<tr data-queue="{queue}"><td data-label="Queue" class="mono">{queue}{paused}</td>'
                '<td data-label="Ready" class="num{z1}">{ready}</td>'
                '<td data-label="Delayed" class="num{z2}">{delayed}</td>'
                '<td data-label="Running" class="num{z3}">{reserved}</td>'
                '<td data-label="Failed" class="num{bad}">{failed}</td>'
                '<td data-label="Oldest ready" class="num">{age}</td>'
                '<td data-label="" class="acts">{actions}</td></tr>',
                queue=s["queue"], ready=_count(s, "ready"),
                paused=_HTML(' <span class="pill">paused</span>') if s.get("paused") else "",
                delayed=_count(s, "delayed"), reserved=reserved, failed=failed_link,
                age=_duration(s["oldest_ready_age"]) or "–", actions=actions,
                z1="" if s["ready"] else " zero", z2="" if s["delayed"] else " zero",
                z3="" if s["reserved"] else " zero", bad=" bad" if s["failed"] else " zero"))
        if rows:
            table = _fill('<div class="panel cards"><table><thead><tr><th>Queue</th>'
                          '<th class="num">Ready</th><th class="num">Delayed</th>'
                          '<th class="num">Running</th><th class="num">Failed</th>'
                          '<th class="num">Oldest ready</th><th></th></tr></thead>'
                          '<tbody>{rows}</tbody></table></div>', rows=_join(rows))
        else:
            table = _fill('<p class="note">No jobs yet: {jobs} and {failed} are empty.</p>',
                          jobs=self.config.table, failed=self.config.failed_table)
        body = _join([_HTML('<div class="tiles">'), _join(tiles), _HTML("</div>"),
                      _HTML("<h2>Queues</h2>"), table,
                      _fill('<p class="muted">Updated {time} UTC; this page reloads every {n}'
                            ' seconds.</p>', time=time.strftime("%H:%M:%S", time.gmtime()),
                            n=_DASHBOARD_REFRESH)])
        return self._page(200, "Overview", body, session, out, nav="overview", stats=stats,
                          refresh=True)

    def _failed_list(self, query, session, out):
        queue_name = query.get("queue") or None
        search = (query.get("q") or "").strip() or None
        for value in (queue_name, search):
            if value is not None and ("\x00" in value or len(value) > 255):
                return self._error(400, "Bad request", "That filter is too long or holds a"
                                   " control character.", out)
        try:
            page = max(1, min(int(query.get("page") or 1), 10 ** 6))
            before, after = (max(0, min(int(query[k]), _NO_LIMIT)) if query.get(k) else None
                             for k in ("before", "after"))
        except ValueError:
            page, before, after = 1, None, None
        size = self.page_size
        # "Older" and "Newer" name the id the next page starts from, so a
        # deep page costs what the first does; `page` only numbers the rows
        # (an address without an id, as older versions made, still works).
        if after is not None:
            rows = self.queue.failed(queue_name, search=search, limit=size + 1, after=after)
            more, rows = True, rows[:size][::-1]
        else:
            rows = self.queue.failed(queue_name, search=search, limit=size + 1,
                                     offset=0 if before else (page - 1) * size,
                                     newest_first=True, before=before)
            more, rows = len(rows) > size, rows[:size]
        stats = self.queue.stats()   # after the page: a total never smaller than the rows shown
        queues = [s["queue"] for s in stats if s["failed"]]
        if queue_name and queue_name not in queues:
            queues.append(queue_name)
        options = [_fill('<option value="">All queues</option>')]
        for name in queues:
            options.append(_fill('<option value="{v}"{sel}>{v}</option>', v=name,
                                 sel=" selected" if name == queue_name else ""))
        filters = _fill(
            '<form class="filters" method="get" action="/failed" role="search">'
            '<select name="queue" aria-label="Queue">{options}</select>'
            '<input type="search" name="q" value="{q}" placeholder="Recipient or error text"'
            ' aria-label="Search by recipient or error text">'
            '<button type="submit">Filter</button>{clear}</form>',
            options=_join(options), q=search or "",
            clear=_fill('<a href="/failed">Clear</a>') if queue_name or search else "")
        here = _url("/failed", queue=queue_name, q=search, page=page, before=before, after=after)
        lines = []
        for row in rows:
            info = _failed_summary(row, self.config)
            lines.append(_fill(
                '<tr data-id="{id}"><td data-label="ID" class="num"><a href="/failed/{id}">{id}</a>'
                '</td><td data-label="Failed at" class="mono when">{when}</td>'
                '<td data-label="Queue" class="mono">{queue}</td>'
                '<td data-label="Job"><span>{job}{template}</span></td>'
                '<td data-label="Recipient">{to}</td>'
                '<td data-label="Error" class="err"><a href="/failed/{id}">{error}</a></td>'
                '<td data-label="" class="acts">{buttons}</td></tr>',
                id=row["id"], when=info["failed_at"], queue=row["queue"],
                # A PHP class name may break at its backslashes, not squeeze the error.
                job=_HTML(_esc(info["job"]).replace("\\", "\\<wbr>")),
                template=_fill('<span class="sub">{t}</span>', t=info["template"])
                if info["template"] else "",
                to=info["recipient"] or "–", error=info["error"] or "(no message)",
                buttons=self._buttons(row["id"], session, here)))
        if lines:
            table = _fill('<div class="panel cards"><table><thead><tr><th class="num">ID</th>'
                          '<th>Failed at</th><th>Queue</th><th>Job</th><th>Recipient</th>'
                          '<th>Error</th><th></th></tr></thead><tbody>{rows}</tbody></table>'
                          '</div>', rows=_join(lines))
        elif search:
            table = _fill('<p class="note">No failed jobs{inq} match “{q}”.</p>', q=search,
                          inq=" in queue %s" % queue_name if queue_name else "")
        elif queue_name or page > 1:
            table = _fill('<p class="note">No failed jobs{inq} here.</p>',
                          inq=" of queue %s" % queue_name if queue_name else "")
        else:
            table = _fill('<p class="note">No failed jobs. Everything that ran has succeeded'
                          ' or is still being retried.</p>')
        first = (page - 1) * size + 1
        pager = []
        if page > 1:
            pager.append(_fill('<a href="{href}">‹ Newer</a>', href=_url(
                "/failed", queue=queue_name, q=search, page=page - 1,
                after=rows[0]["id"] if rows and page > 2 else None)))
        if rows:
            total = sum(s["failed"] for s in stats if queue_name in (None, s["queue"]))
            pager.append(_fill("<span>{a}–{b}{of}</span>", a=first, b=first + len(rows) - 1,
                               of="" if search else " of {:,}".format(total)))
        if more and rows:
            pager.append(_fill('<a href="{href}">Older ›</a>', href=_url(
                "/failed", queue=queue_name, q=search, page=page + 1, before=rows[-1]["id"])))
        retry_all = ""
        if queue_name and rows and not self.read_only:
            retry_all = _fill('<a class="button" href="{href}">Retry all of {q}</a>',
                              href=_url("/retry-all", queue=queue_name), q=queue_name)
        body = _join([filters, table,
                      _fill('<div class="pager">{p}{r}</div>', p=_join(pager, " "), r=retry_all)])
        return self._page(200, "Failed jobs", body, session, out, nav="failed", stats=stats)

    def _sent_list(self, query, session, out):
        """The sent log, newest first, a page at a time; searched by recipient,
        subject or Message-ID."""
        search = (query.get("q") or "").strip() or None
        if search is not None and ("\x00" in search or len(search) > 255):
            return self._error(400, "Bad request", "That search is too long or holds a control"
                               " character.", out)
        try:
            page = max(1, min(int(query.get("page") or 1), 10 ** 6))
        except ValueError:
            page = 1
        size = self.page_size
        rows = self.queue.sent(search=search, limit=size + 1, offset=(page - 1) * size)
        more, rows = len(rows) > size, rows[:size]
        form = _fill(
            '<form class="filters" method="get" action="/sent" role="search">'
            '<input type="search" name="q" value="{q}" placeholder="Recipient, subject or'
            ' Message-ID" aria-label="Search by recipient, subject or Message-ID">'
            '<button type="submit">Search</button>{clear}</form>',
            q=search or "", clear=_fill('<a href="/sent">Clear</a>') if search else "")
        lines = [_fill('<tr><td data-label="Sent at" class="mono when">{when}</td>'
                       '<td data-label="Queue" class="mono">{queue}</td>'
                       '<td data-label="To">{to}</td><td data-label="Subject">{subject}</td>'
                       '<td data-label="Message-ID" class="mono">{mid}</td>'
                       '<td data-label="Reply" class="mono">{reply}</td></tr>',
                       when=_utc(r["sent_at"]), queue=r["queue"], to=", ".join(r["to"]),
                       subject=r["subject"], mid=r["message_id"], reply=r["reply"])
                 for r in rows]
        if lines:
            table = _fill('<div class="panel cards"><table><thead><tr><th>Sent at (UTC)</th>'
                          '<th>Queue</th><th>To</th><th>Subject</th><th>Message-ID</th>'
                          '<th>Reply</th></tr></thead><tbody>{rows}</tbody></table></div>',
                          rows=_join(lines))
        elif search:
            table = _fill('<p class="note">No sent mail matches “{q}”.</p>', q=search)
        else:
            table = _fill('<p class="note">No sent mail{why}.</p>',
                          why=" here" if page > 1 else " in the last %d days" % (
                              self.config.mail_log_days) if self.config.mail_log_days
                          else ": the sent log is off (MAIL_LOG_DAYS=0)")
        pager = []
        if page > 1:
            pager.append(_fill('<a href="{href}">‹ Newer</a>',
                               href=_url("/sent", q=search, page=page - 1)))
        if more:
            pager.append(_fill('<a href="{href}">Older ›</a>',
                               href=_url("/sent", q=search, page=page + 1)))
        body = _join([form, table, _fill('<div class="pager">{p}</div>', p=_join(pager, " "))])
        return self._page(200, "Sent", body, session, out, nav="sent")

    def _buttons(self, failed_id, session, back):
        if self.read_only:
            return ""
        form = ('<form class="inline" method="post" action="/failed/{id}/{action}"{confirm}>'
                '<input type="hidden" name="csrf" value="{csrf}">'
                '<input type="hidden" name="next" value="{back}">'
                '<button type="submit" class="{cls}">{label}</button></form>')
        csrf = self.csrf(session)
        return _join([
            _fill(form, id=failed_id, action="retry", confirm="", csrf=csrf, back=back,
                  cls="primary", label="Retry"),
            _fill(form, id=failed_id, action="forget", csrf=csrf, back=back, cls="danger",
                  label="Forget", confirm=_fill(' data-confirm="{m}"', m="Delete failed job %d"
                                                " for good?" % failed_id))], " ")

    def _failed_job(self, failed_id, session, out):
        row = self.queue.failed_job(failed_id)
        if row is None:
            return self._error(404, "Not found", "There is no failed job %d: it has been retried"
                               " or deleted." % failed_id, out)
        info = _failed_summary(row, self.config)
        decoded, error = _decode_payload(row["payload"] or "")
        payload = None
        if error is None:
            try:
                payload = json.dumps(_mask_payload(decoded, self.config), indent=2,
                                     ensure_ascii=False)
            except RecursionError:
                pass    # read, but too deep to mask and indent: shown as written
        if payload is None:
            payload = _mask_text(row["payload"], self.config, links=True)
        facts = _fill(
            '<p><a href="/failed">‹ Failed jobs</a></p><p class="note bad">{error}</p>'
            '<div class="panel"><dl><dt>Queue</dt><dd class="mono">{queue}</dd>'
            '<dt>Job</dt><dd>{job}</dd><dt>Template</dt><dd>{template}</dd>'
            '<dt>Recipient</dt><dd>{to}</dd><dt>Failed at</dt><dd class="mono">{when}</dd>'
            '<dt>UUID</dt><dd class="mono">{uuid}</dd></dl></div>',
            queue=row["queue"], job=info["job"], template=info["template"] or "–",
            to=info["recipient"] or "–", when=info["failed_at"], uuid=row["uuid"] or "–",
            error=info["error"] or "(no message)")
        buttons = ""
        if not self.read_only:
            buttons = _fill('<div class="actions">{b}</div>',
                            b=self._buttons(failed_id, session, "/failed"))
        body = _join([
            facts, buttons,
            _fill('<h2>Exception</h2><div class="panel"><pre>{exc}</pre></div>',
                  exc=_mask_text(row["exception"], self.config, links=True) or "(empty)"),
            _fill('<h2>Payload</h2><p class="muted">Secrets are masked: values of keys such as'
                  ' password or token, and the path of every link.</p>'
                  '<div class="panel"><pre>{payload}</pre></div>', payload=payload)])
        return self._page(200, "Failed job %d" % failed_id, body, session, out, nav="failed",
                          stats=self.queue.stats())

    def _retry_all_page(self, queue_name, session, out):
        stats = self.queue.stats()
        count = sum(s["failed"] for s in stats if s["queue"] == queue_name)
        if not count:
            return self._error(404, "Nothing to retry", "Queue %s has no failed jobs."
                               % queue_name, out)
        body = _fill(
            '<div class="panel"><dl><dt>Queue</dt><dd class="mono">{queue}</dd>'
            '<dt>Failed jobs</dt><dd>{n}</dd></dl></div>'
            '<p>Each goes back to its queue with its attempts reset, and a worker runs it again'
            ' (an email is sent again).</p>'
            '<form class="actions" method="post" action="/retry-all">'
            '<input type="hidden" name="csrf" value="{csrf}">'
            '<input type="hidden" name="queue" value="{queue}">'
            '<button type="submit" class="primary">Retry {jobs}</button>'
            '<a class="button" href="{back}">Cancel</a></form>',
            queue=queue_name, n="{:,}".format(count), jobs=_jobs(count), csrf=self.csrf(session),
            back=_url("/failed", queue=queue_name))
        return self._page(200, "Retry every failed job of queue %s?" % queue_name, body, session,
                          out, nav="failed", stats=stats)

    # -- POST ------------------------------------------------------------

    def _post(self, path, body, session, cookies, out):
        from urllib.parse import parse_qs
        if self.read_only:
            out.append(("Allow", "GET, HEAD"))
            return self._error(405, "Read-only", "This dashboard was started with --read-only:"
                               " it changes nothing.", out)
        try:
            form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), strict_parsing=False,
                                                  keep_blank_values=True).items()}
        except UnicodeDecodeError:
            form = {}
        given = form.get("csrf", "")
        if _DASHBOARD_SESSION_COOKIE not in cookies or not self._same(given, self.csrf(session)):
            return self._error(403, "Form expired", "This form did not come from this page of"
                               " the dashboard, or the dashboard has restarted since. Reload the"
                               " page and try again.", out)
        self._connect()
        match = re.match(r"^/failed/([0-9]{1,18})/(retry|forget)\Z", path)
        if match:
            failed_id, action = int(match.group(1)), match.group(2)
            new_id = None
            if action == "retry":
                new_ids = self.queue.retry([failed_id])
                done = bool(new_ids)
                new_id = new_ids[0] if new_ids else None
                message = "Failed job %d is back in its queue as job %s." % (failed_id, new_id)
            else:
                done = bool(self.queue.forget([failed_id]))
                message = "Failed job %d has been deleted." % failed_id
            if done:
                self.log.info("dashboard", action=action, failed_id=failed_id, job=new_id)
            else:
                message = ("There is no failed job %d: it has already been retried or deleted."
                           % failed_id)
            return self._redirect(self._next(form.get("next")), session, message, out)
        if path in ("/pause", "/resume"):
            try:
                name = _queue_name(form.get("queue", ""))
            except ValueError:
                return self._error(400, "Bad request", "That is not a queue name.", out)
            if path == "/pause":
                self.queue.pause(name)
                message = ("Queue %s is paused: workers start none of its jobs until you resume"
                           " it; running ones finish." % name)
            else:
                self.queue.resume(name)
                message = "Queue %s is resumed: workers take its jobs again." % name
            self.log.info("dashboard", action=path[1:], queue=name)
            return self._redirect("/", session, message, out)
        if path == "/retry-all":
            name = form.get("queue", "")
            if len(name) > 255 or re.search(r"[\x00-\x1f\x7f]", name):
                return self._error(400, "Bad request", "That is not a queue name.", out)
            new_ids = self.queue.retry(None, queue=name) if name else []
            self.log.info("dashboard", action="retry all", queue=name, retried=len(new_ids))
            return self._redirect(_url("/failed", queue=name), session,
                                  "%s of queue %s %s back in the queue."
                                  % (_jobs(len(new_ids), "failed job"), name,
                                     "is" if len(new_ids) == 1 else "are"), out)
        return self._error(404, "Not found", "There is no such action.", out)

    @staticmethod
    def _next(value):
        """Where a form returns to: only this dashboard's own list pages."""
        from urllib.parse import urlsplit
        parts = urlsplit(value or "")
        # No control character either: the value ends up in a Location header.
        if (parts.scheme or parts.netloc or parts.path not in ("/", "/failed")
                or re.search(r"[\x00-\x1f\x7f]", value)):
            return "/failed"
        return parts.path + ("?" + parts.query if parts.query else "")

    def _redirect(self, location, session, message, out):
        with self.flash_lock:
            if len(self.flash) > 1000:   # sessions that never came back
                self.flash.clear()
            self.flash[session] = message
        return 303, out + [("Location", location)], b""

    # -- page frame ------------------------------------------------------

    def _page(self, status, title, body, session, out, nav=None, stats=None, refresh=False,
              anonymous=False):
        with self.flash_lock:
            message = self.flash.pop(session, None)
        notes = []
        if message:
            notes.append(_fill('<p class="note ok" role="status">{m}</p>', m=message))
        if stats is not None:
            for kind, text in _dashboard_alerts(self.queue, stats):
                notes.append(_fill('<p class="note {kind}">{text}</p>', kind=kind, text=text))
        failed = sum(s["failed"] for s in stats) if stats is not None else None
        links = []
        for key, href, label in (("overview", "/", "Overview"),
                                 ("failed", "/failed", "Failed jobs"), ("sent", "/sent", "Sent")):
            badge = ""
            if key == "failed" and failed:
                badge = _fill(' <span class="pill bad">{n}</span>', n="{:,}".format(failed))
            links.append(_fill('<a href="{href}"{cur}>{label}{badge}</a>', href=href,
                               label=label, badge=badge,
                               cur=_HTML(' aria-current="page"') if key == nav else ""))
        page = _fill(
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
            '<title>{title} · dbqueue</title><link rel="icon" href="data:,">'
            '<style>{css}</style></head><body><header><div class="bar">'
            '<a class="brand" href="/">dbqueue</a>{links}{where}</div></header>'
            '<main><h1>{title}</h1>{notes}{body}</main>'
            '<footer>dbqueue {version}</footer><script>{js}</script></body></html>',
            refresh=_fill('<meta http-equiv="refresh" content="{n}">', n=_DASHBOARD_REFRESH)
            if refresh else "", title=title, css=_HTML(_DASHBOARD_CSS),
            links="" if anonymous else _fill("<nav>{links}</nav>", links=_join(links)),
            where="" if anonymous else _fill(
                '<span class="where">{url} · {jobs}, {failed}{ro}</span>',
                url=_mask_url(self.config.database_url), jobs=self.config.table,
                failed=self.config.failed_table,
                ro=_HTML(' <span class="pill">read-only</span>') if self.read_only else ""),
            notes=_join(notes), body=body, version=__version__, js=_HTML(_DASHBOARD_JS))
        return status, out + [("Content-Type", "text/html; charset=utf-8")], page.encode("utf-8")

    def _error(self, status, title, text, out, anonymous=False, refresh=False):
        """An error page; `anonymous` for one that a stranger sees: it names nothing."""
        if status == 401:
            out.append(("WWW-Authenticate", 'Bearer realm="dbqueue"'))
        body = _fill('<p class="note bad">{text}</p>{back}', text=text,
                     back="" if anonymous else _HTML('<p><a href="/">Overview</a></p>'))
        return self._page(status, title, body, "", out, refresh=refresh, anonymous=anonymous)


def _dashboard_server(dashboard, host, port):
    """A ThreadingHTTPServer for `dashboard` on host:port (port 0: any free port)."""
    import http.server
    import socket

    class Handler(http.server.BaseHTTPRequestHandler):
        def version_string(self):
            return "dbqueue"   # no Python version for a scanner to look up
        timeout = 30                    # a client that stops sending frees its thread

        def do_GET(self):
            self._serve("GET")

        def do_HEAD(self):
            self._serve("HEAD")

        def do_POST(self):
            self._serve("POST")

        def _serve(self, method):
            body = b""
            if method == "POST":
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= 65536:
                    self.send_error(413 if length > 0 else 400)
                    return
                body = self.rfile.read(length)
            try:
                status, headers, content = dashboard.handle(method, self.path, self.headers, body)
            except Exception as exc:   # a bug must cost one page, not the server
                dashboard.log.error("dashboard: internal error", error="%s: %s" % (
                    type(exc).__name__, _mask_text(_first_line(exc), dashboard.config)))
                status, headers, content = 500, [("Content-Type", "text/plain; charset=utf-8")], \
                    b"Internal error: see the dashboard's log.\n"
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(content)

        def end_headers(self):
            # On every response, the errors http.server writes itself included.
            self.send_header("Content-Security-Policy", dashboard.csp)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        def log_message(self, format, *args):
            pass   # actions are logged by the dashboard; a ?token= must not be

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        def handle_error(self, request, client_address):
            # A browser that closes the connection mid-answer is no error.
            if not isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
                super().handle_error(request, client_address)

    return Server((host, port), Handler)


def _is_loopback(host):
    import ipaddress
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


###############################################################################
# Benchmark ###################################################################
###############################################################################

# `bench` measures the configured database the way .bench/ measures dbqueue
# against other queues: W1 push() one commit each, W2 push_many() 1000 per
# call, W3/W4 drains by 1 and K real worker processes, and the latency from
# push() to the handler's start with an idle worker. It works on tables of its
# own (dbqueue_bench_<pid>), which it drops afterwards.

_BENCH_JOB = "dbqueue_bench"

# A worker process: the real Worker with a no-op handler that reports when a
# latency probe started. Start-up is not timed: it prints READY, then waits
# for "G" on stdin; stdin closing (or the bench dying) stops it like SIGTERM.
_BENCH_CHILD = r"""
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
import dbqueue
out = sys.stdout

@dbqueue.job("dbqueue_bench")
def _bench_job(data):
    if "probe" in data:
        out.write("%d %.6f\n" % (data["probe"], time.time()))
        out.flush()

worker = dbqueue.Worker(dbqueue.Queue.from_env(), ["bench"])
out.write("READY\n")
out.flush()
if sys.stdin.read(1) == "G":
    def _watch():
        sys.stdin.read()
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, daemon=True).start()
    worker.run()
"""


def _bench_data(i):
    """A job body like a verification email's: about 200 bytes of JSON."""
    return {"i": i, "to": "user%d@example.com" % i, "template": "verify_email",
            "vars": {"name": "User %d" % i, "url": "https://example.com/verify?token=%040x"
                     % (i * 2654435761), "locale": "en-US", "expires_h": 24}}


def _bench_progress(text, _last=[""]):
    """One progress line on stderr: rewritten in place on a terminal, else
    one line per phase (the text before its colon)."""
    stream = sys.stderr
    try:
        if stream.isatty():
            stream.write("\r\x1b[Kbench: %s" % text)
        elif text.split(":")[0] != _last[0]:
            _last[0] = text.split(":")[0]
            stream.write("bench: %s\n" % _last[0])
        stream.flush()
    except (OSError, ValueError):
        pass


class _BenchWorkers:
    """K worker processes on the bench tables, started together."""

    def __init__(self, env, count, logdir):
        import subprocess
        here = os.path.dirname(os.path.abspath(__file__))
        self.procs = []
        self.logs = []
        for k in range(count):
            log = open(os.path.join(logdir, "worker-%d.log" % len(os.listdir(logdir))), "w+b")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-c", _BENCH_CHILD, here], env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log))
        deadline = time.monotonic() + 60
        for proc in self.procs:
            line = proc.stdout.readline()
            if line.strip() != b"READY" or time.monotonic() > deadline:
                self.stop()
                raise QueueError("bench: a worker process did not start: %s" % self.log_tail())

    def go(self):
        for proc in self.procs:
            proc.stdin.write(b"G")
            proc.stdin.flush()

    def alive(self):
        return all(proc.poll() is None for proc in self.procs)

    def log_tail(self):
        tails = []
        for log in self.logs:
            log.flush()
            log.seek(0)
            text = log.read()[-300:].decode("utf-8", "replace").strip()
            if text:
                tails.append(text.splitlines()[-1])
        return "; ".join(tails) or "no output"

    def stop(self):
        import subprocess
        for proc in self.procs:
            try:
                proc.stdin.close()        # the worker's watcher turns this into SIGTERM
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        for log in self.logs:
            log.close()


def _cpu_seconds(pid):
    """User + system CPU seconds of a process (Linux /proc), None elsewhere."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]


def _bench(args, config):
    import shutil
    import tempfile
    n, k = args.jobs, args.workers
    config, workdir, where = _bench_config(config)
    dialect = _parse_url(config.database_url)[0]
    logdir = tempfile.mkdtemp(prefix="dbqueue-bench-logs-")
    floor_table = config.table + "_floor"
    env = dict(os.environ, QUEUE_DATABASE_URL=config.database_url, QUEUE_TABLE=config.table,
               QUEUE_FAILED_TABLE=config.failed_table)
    queue = Queue(config=config)
    floor_conn = None
    try:
        _bench_progress("creating tables %s" % config.table)
        queue.migrate()
        conn = queue._conn()
        floor_conn = queue.connect()
        cur = floor_conn.cursor()
        for statement in dialect.ddl(floor_table, floor_table + "_failed"):
            cur.execute(statement)
        settings = dialect.bench_settings(cur)
        cur.close()
        rows = _bench_push(queue, conn, floor_conn, floor_table, n)
        rows += _bench_drain(queue, conn, env, logdir, n, k)
        latencies, window, idle_cpu = _bench_latency(queue, env, logdir, n)
    finally:
        _bench_progress("cleaning up")
        try:
            if floor_conn is not None:
                cur = floor_conn.cursor()
                for table in (config.table, config.failed_table, floor_table,
                              floor_table + "_failed"):
                    cur.execute("DROP TABLE IF EXISTS %s" % dialect.ident(table))
                prepared = dialect.prepare("DELETE FROM dbqueue_migrations WHERE tbl = :tbl")[0]
                cur.execute(prepared, (config.table,))
                cur.close()
        except Exception as exc:
            _err("bench: could not drop its tables %s*: %s" % (config.table, _first_line(exc)))
        queue.close()
        shutil.rmtree(logdir, True)
        if workdir:
            shutil.rmtree(workdir, True)
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
    out = ["dbqueue %s bench on %s" % (__version__, where),
           "%s; Python %s; %d jobs, %d workers for W4; tables %s"
           % (settings, sys.version.split()[0], n, k, config.table), "",
           "%-6s %-52s %7s %9s %9s" % ("", "workload", "jobs", "seconds", "jobs/s")]
    for label, what, jobs, seconds, note in rows:
        out.append("%-6s %-52s %7d %9.3f %9.0f  %s" % (label, what, jobs, seconds,
                                                      jobs / max(seconds, 1e-9), note))
    ms = [x * 1000 for x in latencies]
    out.append("")
    out.append("latency push() -> handler start, idle worker, %d samples: p50 %.1f ms, p95 %.1f ms,"
               " p99 %.1f ms, max %.1f ms" % (len(ms), _percentile(ms, 50), _percentile(ms, 95),
                                              _percentile(ms, 99), max(ms)))
    out.append("idle worker CPU over %g s: %s" % (window, "%.1f%% of one core" % idle_cpu
                                                  if idle_cpu is not None else "n/a (no /proc)"))
    print("\n".join(out).rstrip())
    return 0


def _bench_config(config):
    """(config, temporary folder or None, where): bench's copy of the
    settings, with tables of its own."""
    import copy
    import tempfile
    config = copy.copy(config)
    workdir = None
    if config.database_url == _DEFAULT_URL:    # a SQLite file
        # Never the app's own database: a temporary file, on the same disk as
        # the default database would be (the working directory) when possible.
        try:
            workdir = tempfile.mkdtemp(prefix=".dbqueue-bench-", dir=os.getcwd())
        except OSError:
            workdir = tempfile.mkdtemp(prefix="dbqueue-bench-")
        config.database_url = "sqlite:///" + os.path.join(workdir, "bench.sqlite3")
        where = "a temporary file %s (not your database; deleted afterwards)" % (
            os.path.join(workdir, "bench.sqlite3"))
    else:
        where = "%s (tables of its own, dropped afterwards)" % _mask_url(config.database_url)
    config.table = "dbqueue_bench_%d" % os.getpid()
    config.failed_table = config.table + "_failed"
    return config, workdir, where


def _bench_empty(queue, conn):
    c = conn.cursor()
    c.execute("DELETE FROM %s" % queue.dialect.ident(queue.config.table))
    c.close()


def _bench_push(queue, conn, floor_conn, floor_table, n):
    """The rows of floor, W1 and W2: push's INSERT alone, push(), push_many()."""
    rows = []
    # floor and W1, interleaved in blocks so that a noisy disk hits both alike
    datas = [_bench_data(i) for i in range(n)]
    texts = [queue.payload(_BENCH_JOB, d) for d in datas]
    floor_sql, names = queue.dialect.prepare(queue.dialect.insert_job("push"), floor_table)
    floor_s = push_s = 0.0
    stamp = int(time.time())
    for start in range(0, n, 100):
        _bench_progress("W1 push, one commit each: %d/%d" % (start, n))
        fcur = floor_conn.cursor()
        t0 = time.perf_counter()
        for text in texts[start:start + 100]:
            fcur.execute(floor_sql, [dict(queue="bench", payload=text, now=stamp, delay=0,
                                          expires_at=None)[name] for name in names])
        t1 = time.perf_counter()
        for data in datas[start:start + 100]:
            queue.push(_BENCH_JOB, data, queue="bench")
        t2 = time.perf_counter()
        fcur.close()
        floor_s += t1 - t0
        push_s += t2 - t1
    rows.append(("floor", "bare INSERT + COMMIT loop, same connection settings", n, floor_s, ""))
    rows.append(("W1", "push(), one commit each", n, push_s,
                 "%.0f%% of the floor" % (100.0 * floor_s / push_s)))
    _bench_empty(queue, conn)

    bulk = 4 * n
    payload_data = [_bench_data(i) for i in range(min(bulk, 1000))]
    t0 = time.perf_counter()
    for start in range(0, bulk, 1000):
        _bench_progress("W2 push_many, 1000 per call: %d/%d" % (start, bulk))
        queue.push_many(_BENCH_JOB, payload_data[:min(1000, bulk - start)], queue="bench")
    rows.append(("W2", "push_many(), 1000 per call", bulk, time.perf_counter() - t0, ""))
    _bench_empty(queue, conn)
    return rows


def _bench_drain(queue, conn, env, logdir, n, k):
    """The rows of W3 and W4: n jobs drained by one worker process, then by k."""
    # Is any job left? One index probe from the top, where the drain
    # finishes last (COUNT(*) would read the whole backlog every 5 ms).
    left_sql = "SELECT id FROM %s ORDER BY id DESC LIMIT 1" % queue.dialect.ident(
        queue.config.table)

    def any_left():
        c = conn.cursor()
        c.execute(left_sql)
        value = c.fetchone() is not None
        c.close()
        return value

    datas = [_bench_data(i) for i in range(n)]
    rows = []
    for label, workers in (("W3", 1), ("W4", k)):
        for start in range(0, n, 1000):
            queue.push_many(_BENCH_JOB, datas[start:start + 1000], queue="bench")
        _bench_progress("%s drain with %d worker(s): starting" % (label, workers))
        procs = _BenchWorkers(env, workers, logdir)
        try:
            deadline = time.monotonic() + 60 + n / 100.0
            procs.go()
            t0 = time.perf_counter()
            while any_left():
                time.sleep(0.005)
                if not procs.alive() or time.monotonic() > deadline:
                    raise QueueError("bench: %s did not finish: %s"
                                     % (label, procs.log_tail()))
            elapsed = time.perf_counter() - t0
        finally:
            procs.stop()
        rows.append((label, "drain, %d worker%s" % (workers, "" if workers == 1 else "s"),
                     n, elapsed, ""))
    return rows


def _bench_latency(queue, env, logdir, n):
    """(latencies, window, idle CPU % or None): push() to handler start on an
    idle worker, then that worker's CPU use over `window` seconds of idling."""
    import random
    import select
    samples = max(5, min(100, n // 50))
    latencies = []
    idle_cpu = None
    procs = _BenchWorkers(env, 1, logdir)
    try:
        procs.go()
        reader = procs.procs[0].stdout
        rng = random.Random(1)
        time.sleep(0.3)              # let the worker settle into its idle wait
        for i in range(samples):
            _bench_progress("latency: %d/%d" % (i, samples))
            time.sleep(rng.uniform(0.02, 0.06))
            sent = time.time()
            queue.push(_BENCH_JOB, {"probe": i}, queue="bench")
            if not select.select([reader], [], [], 30)[0]:
                raise QueueError("bench: no job started within 30 s of its push: %s"
                                 % procs.log_tail())
            line = reader.readline()
            if not line:
                raise QueueError("bench: the latency worker stopped: %s" % procs.log_tail())
            latencies.append(float(line.split()[1]) - sent)
        window = 3.0 if n >= 1000 else 0.5      # tiny runs are smoke tests
        _bench_progress("idle worker CPU: %g s" % window)
        time.sleep(0.5)
        before = _cpu_seconds(procs.procs[0].pid)
        t0 = time.monotonic()
        time.sleep(window)
        after = _cpu_seconds(procs.procs[0].pid)
        if before is not None and after is not None:
            idle_cpu = 100.0 * (after - before) / (time.monotonic() - t0)
    finally:
        procs.stop()
    return latencies, window, idle_cpu


###############################################################################
# Command line ################################################################
###############################################################################

class _UsageError(Exception):
    pass


def _parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("allow_abbrev", False)   # --data must never mean --database-url
            super().__init__(*args, **kwargs)

        def error(self, message):
            raise _UsageError("%s: %s" % (self.prog, message))

    common = Parser(add_help=False)
    common.add_argument("--env-file", metavar="PATH", help="read settings from this file"
                        " instead of ./.env")
    common.add_argument("--database-url", metavar="URL", help="overrides QUEUE_DATABASE_URL")

    top = Parser(prog="dbqueue", description="A database-backed job queue and worker.",
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="example:\n"
                        "  python3 dbqueue.py migrate\n"
                        "  python3 dbqueue.py work --queue=emails,default --import myapp.jobs\n"
                        "  python3 dbqueue.py push send_email --queue emails --data '{...}'\n"
                        "  python3 dbqueue.py stats\n"
                        "  python3 dbqueue.py health --max-age 300 --max-failed 0\n\n"
                        "Every command takes --env-file PATH and --database-url URL;"
                        " `python3 dbqueue.py COMMAND --help` shows its options.\n"
                        "Exit codes: 0 ok, 1 failure or unhealthy, 2 bad flag or setting.")
    top.add_argument("--version", action="version", version="dbqueue " + __version__)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def command(name, help, example):
        return sub.add_parser(name, help=help, description=help, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="example:\n  " + example)

    for name, help, example, arguments in _SUBCOMMANDS:
        p = command(name, help, example)
        group = None
        for flags, kwargs in arguments:
            if kwargs.get("exclusive"):
                kwargs = dict(kwargs)
                del kwargs["exclusive"]
                group = group or p.add_mutually_exclusive_group()
                group.add_argument(*flags, **kwargs)
            else:
                p.add_argument(*flags, **kwargs)
    return top


def _number(kind, minimum, value, maximum=None, unit=""):
    import argparse
    try:
        number = kind(value)
    except ValueError:
        try:
            approx = float(value)
        except ValueError:
            approx = None
        if approx is not None and maximum is not None and approx > maximum:
            # 1e9 is a number, only too large: say that, not "not a whole number".
            raise argparse.ArgumentTypeError("%r is too large: at most %d%s" % (value, maximum, unit))
        raise argparse.ArgumentTypeError("%r is not a %s" % (
            value, "whole number" if kind is int else "number"))
    if not number >= minimum or number in (float("inf"),):
        raise argparse.ArgumentTypeError("%r must be >= %s" % (value, minimum))
    if maximum is not None and number > maximum:
        raise argparse.ArgumentTypeError("%r is too large: at most %d%s" % (value, maximum, unit))
    return number


def _nonneg_int(value):
    return _number(int, 0, value)


def _seconds(value):
    # Whole seconds: the tables store unix seconds.
    return _number(int, 0, value, _MAX_SECONDS, " seconds (10 years)")


def _tries(value):
    import argparse
    number = _number(int, 1, value)
    if number > _MAX_TRIES:
        raise argparse.ArgumentTypeError("%r must be at most %d" % (value, _MAX_TRIES))
    return number


def _pos_int(value):
    return _number(int, 1, value)


def _concurrency(value):
    return _number(int, 1, value, _MAX_CONCURRENCY)


def _duration_arg(value):
    """Seconds from a duration such as 90s, 30m, 2h or 7d (pause --for, sent --since)."""
    import argparse
    seconds = _duration_seconds(value)
    if seconds is None:
        raise argparse.ArgumentTypeError("%r is not a duration such as 90s, 30m, 2h or 7d" % value)
    if not 1 <= seconds <= _MAX_SECONDS:
        raise argparse.ArgumentTypeError("%r must be from 1 second to 10 years" % value)
    return seconds


def _nonneg_float(value):
    return _number(float, 0, value)


def _queue_arg(value):
    import argparse
    try:
        return _queue_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _unique_arg(value):
    import argparse
    try:
        return _unique_key(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("unique_key", "the key"))


def _row_id(value):
    import argparse
    number = _number(int, 1, value)
    if number > 2 ** 63 - 1:   # no database integer is larger: an id that cannot exist
        raise argparse.ArgumentTypeError("%r is not a job id" % value)
    return number


def _retry_id(value):
    return "all" if value == "all" else _row_id(value)


def _host_arg(value):
    import argparse
    host = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if not re.match(r"^[A-Za-z0-9.:%-]{1,253}\Z", host):
        raise argparse.ArgumentTypeError("%r is not a host name or IP address" % value)
    return host


def _port_arg(value):
    import argparse
    number = _number(int, 0, value)
    if number > 65535:
        raise argparse.ArgumentTypeError("%r is not a port (0 to 65535)" % value)
    return number


def _err(message, stream=None):
    (stream or sys.stderr).write("dbqueue: %s\n" % message)


def _arg(*flags, **kwargs):
    """One argument of a command in _SUBCOMMANDS, as add_argument takes it."""
    return flags, kwargs


# The commands: (name, help, example, arguments); _parser makes them, and
# main runs _cmd_<name>. An argument marked exclusive=True excludes the
# command's other such arguments.
_SUBCOMMANDS = (
    ("migrate", "create or upgrade the queue tables (idempotent)",
     "python3 dbqueue.py migrate --database-url postgresql://app@/appdb",
     [_arg("--print", action="store_true",
           help="show the SQL migrate would run on this database now, without running it"),
      _arg("--all", action="store_true", help="with --print: every supported database")]),
    ("work", "process jobs until stopped",
     "python3 dbqueue.py work --queue=emails,default --import myapp.jobs --max-time 3600",
     [_arg("--queue", default="default", help="queues in priority order, comma separated"
           " (default: default)"),
      _arg("--once", action="store_true", help="handle at most one job, then exit"),
      _arg("--max-jobs", type=_pos_int, metavar="N", help="exit after N jobs (N >= 1)"),
      _arg("--max-time", type=_nonneg_float, metavar="S", help="exit after S seconds"),
      _arg("--sleep", type=_nonneg_float, default=3.0, metavar="S",
           help="longest wait between looks at an idle queue (default 3)"),
      _arg("--stop-when-empty", action="store_true", help="exit when no job is ready"),
      _arg("--concurrency", type=_concurrency, default=1, metavar="N",
           help="run up to N jobs at once, each on its own thread, database connection"
                " and SMTP session (default 1)"),
      _arg("--timeout", type=_seconds, metavar="S",
           help="seconds one job may run, 0 for no limit (default QUEUE_TIMEOUT)"),
      _arg("--tries", type=_tries, metavar="N",
           help="attempts before a job fails (default QUEUE_MAX_ATTEMPTS)"),
      _arg("--backoff", metavar="S,S", help="seconds before retries, e.g. 10,60"),
      _arg("--memory", type=_pos_int, metavar="MB",
           help="exit after the current job when RSS passes MB"),
      _arg("--import", dest="imports", action="append", default=[], metavar="MODULE",
           help="import MODULE to register its handlers (repeatable)"),
      _arg("--log-format", choices=("text", "json"), default="text",
           help="text (key=value, the default) or json: one object per line"),
      _arg("-v", "--verbose", action="store_true", help="also log debug lines"),
      _arg("-q", "--quiet", action="store_true", help="log warnings and errors only")]),
    ("push", "enqueue a job from a shell or cron; prints its id",
     "python3 dbqueue.py push send_email --queue emails --data"
     " '{\"to\": \"a@example.com\", \"subject\": \"Hi\", \"text\": \"Hello\"}'",
     [_arg("job", help="the registered job name"),
      _arg("--data", default="{}", metavar="JSON",
           help="the job's data as a JSON object (default {})"),
      _arg("--queue", type=_queue_arg, default="default", help="default: default"),
      _arg("--delay", type=_seconds, default=0, metavar="S",
           help="seconds before the job may run (default 0)"),
      _arg("--unique-key", type=_unique_arg, metavar="KEY",
           help="while a job with this key waits or runs on the queue, add nothing"
                " and print that job's id"),
      _arg("--expires-in", type=_seconds, metavar="S",
           help="never start the job more than S seconds from now: it moves to the"
                " failed jobs as expired (0: no deadline, also for a template email)")]),
    ("stats", "ready, delayed, reserved, expired and failed jobs per queue",
     "python3 dbqueue.py stats\n"
     "  python3 dbqueue.py stats --format prometheus > /var/lib/node_exporter/dbqueue.prom.$$"
     " \\\n    && mv /var/lib/node_exporter/dbqueue.prom.$$"
     " /var/lib/node_exporter/dbqueue.prom",
     [_arg("--json", action="store_true", help="same as --format json", exclusive=True),
      _arg("--format", choices=("table", "json", "prometheus"), default="table",
           help="table (default), json, or the Prometheus text format", exclusive=True)]),
    ("health", "exit 0 when the queue is healthy, else 1 with one line per reason",
     "python3 dbqueue.py health --max-ready 1000 --max-age 300 --max-failed 0",
     [_arg("--max-ready", type=_nonneg_int, metavar="N",
           help="unhealthy when a queue has more than N ready jobs"),
      _arg("--max-age", type=_nonneg_int, metavar="S",
           help="unhealthy when a queue's oldest ready job has waited more than S seconds"),
      _arg("--max-failed", type=_nonneg_int, metavar="N",
           help="unhealthy when a queue has more than N failed jobs")]),
    ("pause", "stop workers starting jobs of queues (running ones finish), on every"
     " host within a second", "python3 dbqueue.py pause emails --for 30m",
     [_arg("queues", nargs="+", type=_queue_arg, metavar="QUEUE", help="the queues to pause"),
      _arg("--for", dest="seconds", type=_duration_arg, metavar="DURATION",
           help="resume by itself after DURATION: 90s, 30m, 2h or 1d"
                " (default: until `resume`)")]),
    ("resume", "let workers start jobs of paused queues again",
     "python3 dbqueue.py resume emails",
     [_arg("queues", nargs="+", type=_queue_arg, metavar="QUEUE", help="the queues to resume")]),
    ("failed", "list failed jobs (id, uuid, queue, job, failed at, error)",
     "python3 dbqueue.py failed --queue emails",
     [_arg("--queue", type=_queue_arg, help="only this queue"),
      _arg("--json", action="store_true", help="JSON, with each full traceback")]),
    ("sent", "list the mail that servers took, newest first (the sent log,"
     " kept MAIL_LOG_DAYS days)",
     "python3 dbqueue.py sent --to ann@example.com --since 2h",
     [_arg("--to", metavar="ADDRESS", help="only mail whose recipients contain ADDRESS"),
      _arg("--since", type=_duration_arg, metavar="DURATION",
           help="only mail sent within the last DURATION: 90s, 30m, 2h, 7d"),
      _arg("--queue", type=_queue_arg, help="only this queue"),
      _arg("--limit", type=_pos_int, default=50, metavar="N",
           help="at most N messages (default 50)"),
      _arg("--json", action="store_true", help="JSON, with the uuid, job and template")]),
    ("retry", "move failed jobs back to the queue with attempts reset",
     "python3 dbqueue.py retry 12 13\n  python3 dbqueue.py retry all --queue emails",
     [_arg("ids", nargs="+", type=_retry_id, metavar="ID|all",
           help="failed job ids (see `failed`), or all"),
      _arg("--queue", type=_queue_arg, help="with all: only this queue")]),
    ("cancel", "move waiting or delayed jobs to the failed jobs as cancelled (`retry`"
     " brings them back); a running job is left to finish",
     "python3 dbqueue.py cancel 41 42\n"
     "  python3 dbqueue.py cancel --queue emails --job send_template_email",
     [_arg("ids", nargs="*", type=_row_id, metavar="ID", help="job ids"),
      _arg("--queue", type=_queue_arg, help="every waiting job of this queue"),
      _arg("--job", metavar="NAME", help="with --queue: only the jobs of this name")]),
    ("forget", "delete failed jobs by id", "python3 dbqueue.py forget 12 13",
     [_arg("ids", nargs="+", type=_row_id, metavar="ID", help="failed job ids (see `failed`)")]),
    ("flush", "delete every failed job, or those older than H hours",
     "python3 dbqueue.py flush --hours 168",
     [_arg("--hours", type=_nonneg_float, metavar="H",
           help="only failed jobs older than H hours")]),
    ("clear", "delete the waiting (ready and delayed) jobs of a queue",
     "python3 dbqueue.py clear --queue default --force",
     [_arg("--queue", type=_queue_arg, required=True, help="the queue to empty"),
      _arg("--force", action="store_true",
           help="do not ask (required when stdin is not a terminal)")]),
    ("config", "show every effective setting, its value (secrets masked) and where"
     " it came from: the first thing to run when jobs never process",
     "python3 dbqueue.py config --env-file /srv/app/.env",
     [_arg("--json", action="store_true", help="JSON: settings and warnings")]),
    ("bench", "measure enqueue, drain and latency on the configured database",
     "python3 dbqueue.py bench --jobs 5000 --workers 2",
     [_arg("--jobs", type=_pos_int, default=5000, metavar="N",
           help="jobs to enqueue and drain (default 5000)"),
      _arg("--workers", type=_pos_int, default=2, metavar="K",
           help="worker processes that drain them (default 2)")]),
    ("dashboard", "a web page of the queue: counts, failed jobs, Retry and Forget",
     "python3 dbqueue.py dashboard --port 8765\n"
     "  ssh -L 8765:127.0.0.1:8765 server   # from your laptop; then open"
     " http://127.0.0.1:8765/\n"
     "  DBQUEUE_DASHBOARD_TOKEN=... python3 dbqueue.py dashboard --host 0.0.0.0"
     " --read-only",
     [_arg("--host", type=_host_arg, default="127.0.0.1",
           help="address to listen on (default 127.0.0.1); any address but a loopback"
           " one needs DBQUEUE_DASHBOARD_TOKEN"),
      _arg("--port", type=_port_arg, default=8765, metavar="PORT",
           help="default 8765; 0 picks a free one"),
      _arg("--read-only", action="store_true",
           help="show everything, change nothing: no buttons, and every POST is refused")]),
)


def main(argv=None):
    """The command line; returns the exit code (0 ok, 1 failure, 2 usage or configuration).

    Flags and settings are all checked before the database is opened, so a
    typo never half-runs a command.
    """
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        sys.stderr.write("%s\n" % exc)
        return 2
    except SystemExit as exc:   # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        config = Config.from_env(env_file=args.env_file, database_url=args.database_url)
        if args.command != "work":     # the worker logs them, in its log's format
            for warning in config.warnings:
                _err("warning: " + warning)
        handler = _COMMANDS[args.command]
        return handler(args, config)
    except ConfigError as exc:
        _err(_first_line(exc))
        return 2
    except QueueError as exc:
        _err(_first_line(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _cmd_migrate(args, config):
    if args.all and not args.print:
        raise ConfigError("migrate: --all goes with --print (it shows the SQL of every database;"
                          " migrate itself runs on the configured one)")
    if args.print and args.all:
        out = []
        for dialect in (_SQLite, _Postgres, _MySQL):
            out.append("-- %s (schema version %d)\n" % (dialect.name, _SCHEMA_VERSION))
            out.append(schema_sql(dialect, config.table, config.failed_table))
        sys.stdout.write("\n".join(out))
        return 0
    if args.print:
        plan = _migrate_plan(config)
        print("-- %s (schema version %d): %s" % (
            _parse_url(config.database_url)[0].name, _SCHEMA_VERSION,
            "what `migrate` runs on this database now" if plan
            else "nothing to do, the tables are up to date"))
        sys.stdout.write("".join(s + ";\n" for s in plan))
        return 0
    queue = Queue(config=config)
    try:
        version = queue.migrate()
    finally:
        queue.close()
    print("migrated %s: %s and %s at schema version %d"
          % (_mask_url(config.database_url), config.table, config.failed_table, version))
    return 0


def _migrate_plan(config):
    """Queue._migrate_plan of the configured database, read without changing it
    (a SQLite file that does not exist yet: the plan for an empty one)."""
    import sqlite3
    dialect, target, _ = _parse_url(config.database_url)
    if dialect.embedded and not os.path.exists(target):
        conn = sqlite3.connect(":memory:")
        try:
            return Queue(config=config)._migrate_plan(conn.cursor())
        finally:
            conn.close()
    queue = _reader(config)
    try:
        return queue._migrate_plan(queue._local.conn.cursor())
    except queue._errors() as exc:
        raise queue.translate(exc) from exc
    finally:
        queue.close()


def _cmd_work(args, config):
    import importlib
    queues = [q.strip() for q in args.queue.split(",") if q.strip()]
    try:
        for name in queues:
            _queue_name(name)
    except ValueError as exc:
        raise ConfigError("--queue: %s" % exc)
    if not queues:
        raise ConfigError("--queue: name at least one queue")
    backoff = _backoff_setting("--backoff", args.backoff) if args.backoff is not None else None
    level = "debug" if args.verbose else "warning" if args.quiet else "info"
    log = _Log(level=level, fmt=args.log_format)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:   # ImportError, or the module's own SyntaxError or crash
            raise ConfigError("--import %s: %s: %s" % (module, type(exc).__name__,
                                                       _first_line(exc)))
    queue = Queue(config=config)
    worker = Worker(queue, queues, tries=args.tries, backoff=backoff, timeout=args.timeout,
                    sleep=args.sleep, memory=args.memory, log=log, concurrency=args.concurrency)
    for warning in config.warnings:
        log.warning(warning)
    log.info("worker starting", database=_mask_url(config.database_url), queues=",".join(queues),
             tries=worker.tries, backoff=",".join(map(str, worker.backoff)),
             timeout=worker.timeout, retry_after=config.retry_after, sleep=args.sleep,
             memory_mb=args.memory, max_jobs=args.max_jobs, max_time=args.max_time,
             concurrency=args.concurrency if args.concurrency > 1 else None, pid=os.getpid(), version=__version__)
    log.debug("handlers registered", jobs=",".join(sorted(_registry)) or "(none)")
    try:
        if queue.dialect.embedded:
            # A path SQLite cannot open (a missing folder, a directory) does not
            # heal by waiting: fail now. A lock held by another connection is
            # waited out by the worker.
            try:
                queue.dialect.connect(queue._target).close()
            except queue.dialect.errors() as exc:
                if not queue.dialect.is_locked(exc):
                    raise DatabaseError("cannot open %s: %s" % (_mask_url(config.database_url),
                                                                 _first_line(exc)))
        worker.run(once=args.once, max_jobs=args.max_jobs, max_time=args.max_time,
                   stop_when_empty=args.stop_when_empty)
    finally:
        queue.close()
    log.info("worker stopped", processed=worker.processed)
    return worker.exit_code


def _cmd_push(args, config):
    if not args.job.strip():
        raise ConfigError("push: the job name is empty")
    def no_constant(name):
        raise ValueError("%s is not a JSON number" % name)
    try:
        data = json.loads(args.data, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise ConfigError("--data is not valid JSON: %s" % _first_line(exc))
    if not isinstance(data, dict):
        raise ConfigError("--data must be a JSON object, such as '{\"to\": \"a@example.com\"}'")
    try:
        _dumps(data)   # 1e999 parses as infinity: refuse it here, before any database
    except (TypeError, RecursionError) as exc:
        raise ConfigError("--data: %s" % _first_line(exc))
    try:
        _check_email_job(args.job, data, config)
    except ValueError as exc:
        raise ConfigError("push %s: %s" % (args.job, exc))
    queue = Queue(config=config)
    try:
        print(queue.push(args.job, data, queue=args.queue, delay=args.delay,
                         unique_key=args.unique_key, expires_in=args.expires_in))
    finally:
        queue.close()
    return 0


def _table(headers, rows):
    """Rows as aligned columns; numbers right-aligned, the last column left ragged."""
    cells = [list(headers)] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    # A column of numbers is right-aligned; one of "-" only (no value) is not.
    numeric = [all(isinstance(row[i], int) or row[i] is None for row in rows)
               and any(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, value in enumerate(row):
            if i == len(row) - 1 and not numeric[i]:
                parts.append(value)
            elif numeric[i]:
                parts.append(value.rjust(widths[i]))
            else:
                parts.append(value.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _count(entry, key, fmt="{:,}"):
    """A count of `stats` as shown: "100,000+" when it reached the cap."""
    return fmt.format(entry[key]) + ("+" if key in entry.get("capped", ()) else "")


def _totals(stats):
    """The counts of `stats` summed over its queues (capped where any queue's was)."""
    total = {k: sum(s[k] for s in stats) for k in ("ready", "delayed", "reserved", "failed")}
    total["capped"] = {k for s in stats for k in s.get("capped", ())}
    return total


def _duration(seconds):
    """125 -> '2m05s': short enough for a table, exact to the second."""
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    if seconds < 86400:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dd%02dh" % (seconds // 86400, seconds % 86400 // 3600)


def _prom_label(value):
    # The text format's escapes for label values: backslash, quote, newline.
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_PROM_METRICS = (
    ("dbqueue_jobs", "Jobs in the jobs table by queue and state (ready, delayed, reserved).",
     lambda s: [("ready", s["ready"]), ("delayed", s["delayed"]), ("reserved", s["reserved"])]),
    ("dbqueue_expired_reservations", "Reserved jobs whose lease ran out: their worker stopped"
     " renewing the reservation for longer than its QUEUE_RETRY_AFTER; a worker takes them back.",
     lambda s: [(None, s["expired"])]),
    ("dbqueue_failed_jobs", "Jobs in the failed jobs table by queue.",
     lambda s: [(None, s["failed"])]),
    ("dbqueue_past_deadline_jobs", "Failed jobs that were never started because their deadline"
     " passed first (their exception begins expired:).", lambda s: [(None, s["past_deadline"])]),
    ("dbqueue_oldest_ready_age_seconds", "Seconds the oldest ready job of the queue has waited"
     " (0 when none is ready).", lambda s: [(None, s["oldest_ready_age"] or 0)]),
    ("dbqueue_sent_last_hour", "Messages a mail server took in the last hour (the sent log).",
     lambda s: [(None, s.get("sent_last_hour", 0))]),
    ("dbqueue_mail_outage_seconds", "Seconds the mail server has been unavailable to the"
     " workers of this queue, whose mail waits unspent (0 when mail flows).",
     lambda s: [(None, (s.get("mail_outage") or {}).get("seconds", 0))]),
    ("dbqueue_queue_paused", "1 while the queue is paused (`pause`): no worker starts its jobs.",
     lambda s: [(None, 1 if s.get("paused") else 0)]),
    ("dbqueue_mail_throttle_wait_seconds", "Seconds between sends on this queue while the mail"
     " server throttles it, for every worker (0 when it does not).",
     lambda s: [(None, (s.get("mail_throttle") or {}).get("wait", 0))]),
)


def _with_pauses(stats, paused):
    """Mark the paused queues in `stats` (Queue.paused()); one without jobs gets a row."""
    _with_rows(stats, paused)
    for entry in stats:
        if entry["queue"] in paused:
            entry["paused"] = paused[entry["queue"]]
    return stats


def _paused_line(paused):
    return "paused: " + ", ".join(
        "%s (%s)" % (name, "until resumed" if p["until"] is None
                     else "resumes in %s" % _duration(p["seconds_left"]))
        for name, p in sorted(paused.items()))


def _with_sent(stats, counts):
    """Add each queue's mail sent in the last hour (the sent log) to its stats;
    a queue that has no jobs left but sent mail is listed too."""
    _with_rows(stats, counts)
    for entry in stats:
        entry["sent_last_hour"] = counts.get(entry["queue"], 0)
    return stats


def _with_mail_outage(stats, outage):
    """Add the recorded mail outage to the stats of the queues it pauses."""
    if outage is None:
        return stats
    shown = {k: outage[k] for k in ("since", "seconds", "error", "checked_ago", "stale")}
    _with_rows(stats, outage["queues"])
    for entry in stats:
        if entry["queue"] in outage["queues"]:
            entry["mail_outage"] = shown
    return stats


def _with_rows(stats, queues):
    """Give each of `queues` a row of `stats` (in place, in order) if it has none:
    a paused, throttled or mail-less queue is shown even with no jobs left."""
    have = {s["queue"] for s in stats}
    stats += [_no_jobs(name) for name in sorted(queues) if name not in have]
    stats.sort(key=lambda s: s["queue"])


def _with_mail_throttle(stats, throttle):
    """Add each throttled queue's state (Queue.mail_throttle) to its stats."""
    _with_rows(stats, throttle)
    for entry in stats:
        if entry["queue"] in throttle:
            entry["mail_throttle"] = throttle[entry["queue"]]
    return stats


def _throttle_text(queue, entry):
    return ("queue %s is throttled by the mail server: next send in %s, %s between sends, for %s"
            " now: %s" % (queue, _duration(entry["next_send"]), _duration(entry["wait"]),
                          _duration(entry["seconds"]), entry["error"]))


def _outage_line(outage):
    return ("mail server unavailable for %s (queue %s; %s): %s"
            % (_duration(outage["seconds"]), ",".join(outage["queues"]) or "-",
               "stale: no worker has checked for %s" % _duration(outage["checked_ago"])
               if outage["stale"] else "last checked %s ago" % _duration(outage["checked_ago"]),
               outage["error"]))


_WINDOW_WORDS = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


def _prometheus(stats, rate=None):
    lines = []
    for name, help_text, values in _PROM_METRICS:
        lines.append("# HELP %s %s" % (name, help_text))
        lines.append("# TYPE %s gauge" % name)
        for entry in stats:
            for state, value in values(entry):
                labels = 'queue="%s"' % _prom_label(entry["queue"])
                if state is not None:
                    labels += ',state="%s"' % state
                lines.append("%s{%s} %d" % (name, labels, value))
    if rate is not None:
        for name, help_text, key in (
                ("dbqueue_mail_rate_used", "Messages sent (or being sent) within the last"
                 " window of MAIL_RATE_LIMIT, by every worker on the database.", "used"),
                ("dbqueue_mail_rate_limit", "Messages MAIL_RATE_LIMIT lets leave in one window.",
                 "messages")):
            lines += ["# HELP %s %s" % (name, help_text), "# TYPE %s gauge" % name]
            lines += ['%s{limit="%s"} %d' % (name, _prom_label(window["limit"]), window[key])
                      for window in rate["windows"]]
    return "\n".join(lines) + "\n"


def _reader(config):
    """A Queue for a command that only reads: it opens an existing database and
    creates neither a SQLite file nor tables (a mistyped path is an error, not
    an empty queue)."""
    queue = Queue(config=config)
    try:
        queue._local.conn = queue.connect(create=False)
    except DatabaseError as exc:
        queue.close()
        # The SQLite file's hint, with the --database-url it needs.
        text = _first_line(exc).replace("python3 dbqueue.py migrate", _command(config, "migrate"))
        raise DatabaseError("%s; the URL came from %s" % (text, _url_origin(config)),
                            transient=False)
    return queue


def _url_origin(config):
    """Where the database URL came from, in words for an error message."""
    source = config.sources.get("QUEUE_DATABASE_URL", "default")
    if source == "default":
        return "dbqueue's default (set QUEUE_DATABASE_URL to choose)"
    if source.startswith("--"):
        return source
    if source.startswith("derived from "):
        return "the CodeIgniter " + source[len("derived from "):]
    var = "DATABASE_URL" if source.endswith("(DATABASE_URL)") else "QUEUE_DATABASE_URL"
    where = source.replace(" (DATABASE_URL)", "")
    return "%s in the %s" % (var, where) if where == "environment" else "%s in %s" % (var, where)


def _cmd_stats(args, config):
    fmt = "json" if args.json else args.format
    queue = _reader(config)
    try:
        stats = queue.stats()
        outage = queue.mail_outage()
        rate = queue.rate_use()
        paused = queue.paused()
        sent = queue.sent_counts()
        throttle = queue.mail_throttle()
    finally:
        queue.close()
    for add, found in ((_with_pauses, paused), (_with_mail_outage, outage),
                       (_with_mail_throttle, throttle), (_with_sent, sent)):
        add(stats, found)       # in place; the sent counts last, on every row
    if fmt == "json":
        if rate is not None:
            # The list stays a list of queues, as scripts read it; the limit
            # is shared by all of them, so each carries the same figures.
            for entry in stats:
                entry["mail_rate"] = rate
        print(json.dumps(stats, indent=2))
    elif fmt == "prometheus":
        sys.stdout.write(_prometheus(stats, rate))
    else:
        rows = [(s["queue"], _count(s, "ready"), _count(s, "delayed"), s["reserved"],
                 s["expired"], s["failed"], s["past_deadline"], _duration(s["oldest_ready_age"]),
                 s["sent_last_hour"]) for s in stats]
        print(_table(("queue", "ready", "delayed", "reserved", "expired", "failed",
                      "past deadline", "oldest ready", "sent 1h"), rows))
        if not stats:
            print("(no jobs: %s and %s are empty)" % (config.table, config.failed_table))
        if outage is not None:
            print(_outage_line(outage))
        if paused:
            print(_paused_line(paused))
        for name in sorted(throttle):
            print(_throttle_text(name, throttle[name]))
        for window in (rate or {}).get("windows", ()):
            print("MAIL_RATE_LIMIT %s: %d of %d messages used in the last %s"
                  % (window["limit"], window["used"], window["messages"],
                     _WINDOW_WORDS[window["window_seconds"]]))
    return 0


def _cmd_health(args, config):
    # The seed's HealthChecker: the database answers, both tables exist, and
    # the counts are within the thresholds. It only reads: on SQLite it opens
    # an existing file and creates neither the file nor the tables.
    queue = Queue(config=config)
    try:
        conn = queue.connect(create=False)
        queue.check(conn)
        queue.check_write(conn)     # a worker must be able to write, not only read
        # --max-ready N needs to know only whether a queue holds more than N.
        stats = queue.stats(conn, cap=max(_COUNT_CAP, args.max_ready or 0))
        outage = queue.mail_outage(conn)
        paused = queue.paused(conn)
    except DatabaseError as exc:
        print("unhealthy: %s" % _first_line(exc))
        return 1
    finally:
        queue.close()
    problems = []
    for s in stats:
        name = s["queue"]
        # A paused queue's jobs wait on purpose: the pause is named, not a failure.
        over = s["ready"] > (args.max_ready or 0) or "ready" in s.get("capped", ())
        if args.max_ready is not None and over and name not in paused:
            problems.append("queue %s has %s ready jobs (--max-ready %d)"
                            % (name, _count(s, "ready", "{}"), args.max_ready))
        age = s["oldest_ready_age"] if name not in paused else None
        if args.max_age is not None and age is not None and age > args.max_age:
            problems.append("queue %s: the oldest ready job has waited %ds (--max-age %d);"
                            " is a worker running for it?" % (name, age, args.max_age))
        if args.max_failed is not None and s["failed"] > args.max_failed:
            problems.append("queue %s has %d failed jobs (--max-failed %d); see `%s`"
                            % (name, s["failed"], args.max_failed,
                               _command(config, "failed --queue %s" % name)))
    if outage is not None and not outage["stale"]:
        problems.append(_outage_line(outage))
    for problem in problems:
        print("unhealthy: %s" % problem)
    if not problems:
        total = _totals(stats)
        print("ok: %s answers; %s ready, %s delayed, %d reserved, %d failed in %d queue(s)"
              % (_mask_url(config.database_url), _count(total, "ready", "{}"),
                 _count(total, "delayed", "{}"), total["reserved"], total["failed"], len(stats)))
    if paused:
        print(_paused_line(paused))
    return 1 if problems else 0


def _cmd_pause(args, config):
    queue = _reader(config)    # an existing database: a mistyped path is an error, not a pause
    try:
        if args.command == "resume":
            resumed = queue.resume(args.queues)
        else:
            queue.pause(args.queues, args.seconds)
            paused = queue.paused()
    finally:
        queue.close()
    if args.command == "pause":
        print(_paused_line({q: paused[q] for q in args.queues if q in paused}) +
              "; workers start none of their jobs from now on, running ones finish")
        return 0
    if resumed:
        print("resumed: %s" % ", ".join(resumed))
    others = [q for q in args.queues if q not in resumed]
    if others:
        print("not paused: %s" % ", ".join(others))
    return 0


def _job_name(payload):
    """The job name a payload carries, without trusting it to be well formed."""
    decoded, error = _decode_payload(payload)
    if error is not None:
        return "(unreadable)"   # still listed, so it can be retried or forgotten
    if isinstance(decoded, dict):
        for key in ("job", "displayName"):
            if isinstance(decoded.get(key), str) and decoded[key]:
                return decoded[key]
    return "?"


def _error_line(exception):
    """One line for an exception text: a Python traceback's last line names the
    error; other texts (such as the seed app's) put the message first."""
    lines = [line.strip() for line in (exception or "").splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def _cmd_failed(args, config):
    queue = _reader(config)
    try:
        rows = queue.failed(args.queue)
    finally:
        queue.close()
    # The payload stays out: job data holds addresses and tokens. Exceptions
    # are masked as the dashboard masks them (a reset link opens an account).
    listed = [{"id": r["id"], "uuid": r["uuid"], "queue": r["queue"],
               "job": _job_name(r["payload"]),
               "failed_at": re.sub(r"\.\d+", "", r["failed_at"]),   # no microseconds
               "error": _mask_text(_error_line(r["exception"]), config, links=True),
               "exception": _mask_text(r["exception"], config, links=True)} for r in rows]
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    if not listed:
        print("no failed jobs" + (" in queue %s" % args.queue if args.queue else ""))
        return 0
    cut = lambda text: text if len(text) <= 120 else text[:119] + "..."  # noqa: E731
    print(_table(("id", "uuid", "queue", "job", "failed at", "error"),
                 [(f["id"], f["uuid"], f["queue"], f["job"], f["failed_at"], cut(f["error"]))
                  for f in listed]))
    return 0


def _cmd_sent(args, config):
    queue = _reader(config)
    try:
        rows = queue.sent(to=args.to, since=args.since, queue=args.queue, limit=args.limit)
    finally:
        queue.close()
    for row in rows:
        row["sent_at"] = _utc(row["sent_at"])
        del row["id"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sent mail%s%s" % (" matches" if args.to or args.since or args.queue else "",
                                   "" if config.mail_log_days else
                                   " (MAIL_LOG_DAYS=0: the sent log is off)"))
        return 0
    cut = lambda text: text if len(text) <= 60 else text[:59] + "..."  # noqa: E731
    print(_table(("sent at (UTC)", "queue", "to", "subject", "message-id", "reply"),
                 [(r["sent_at"], r["queue"], ", ".join(r["to"]), cut(r["subject"]),
                   r["message_id"], r["reply"]) for r in rows]))
    return 0


def _cmd_retry(args, config):
    everything = "all" in args.ids
    if everything and len(args.ids) > 1:
        raise ConfigError("retry: give failed job ids or `all`, not both")
    if args.queue and not everything:
        raise ConfigError("retry: --queue goes with `all` (ids name their jobs already)")
    undated = []
    if everything:
        queue = Queue(config=config)
        try:
            # One transaction per job inside retry(): an interruption leaves
            # each job either still failed or back in the queue, never both.
            new_ids = queue.retry(None, queue=args.queue, undated=undated)
        finally:
            queue.close()
        print("retried %d failed job(s)%s%s" % (len(new_ids),
              " of queue %s" % args.queue if args.queue else "",
              "; the deadline of %d was removed" % len(undated) if undated else ""))
        return 0

    def retry_one(queue, failed_id):
        new_ids = queue.retry([failed_id], undated=undated)
        return new_ids and "retried failed job %d as job %d%s" % (
            failed_id, new_ids[0], " (its deadline removed)" if new_ids[0] in undated else "")
    return _each_failed_id(config, args.ids, retry_one)


def _cmd_cancel(args, config):
    if bool(args.ids) == bool(args.queue):
        raise ConfigError("cancel: give job ids or --queue Q (one of the two)")
    if args.job is not None and not args.queue:
        raise ConfigError("cancel: --job goes with --queue")
    queue = Queue(config=config)
    try:
        done, running, unknown = queue.cancel(args.ids or None, args.queue, args.job)
    finally:
        queue.close()
    if args.queue:
        print("cancelled %d waiting job(s) of queue %s%s" % (
            len(done), args.queue, " named %s" % args.job if args.job else ""))
    for job_id in done if args.ids else ():
        print("cancelled job %d: it is in the failed jobs (`retry` brings it back)" % job_id)
    for job_id in running:
        _err("job %d is running: not cancelled (it finishes as it would have)" % job_id)
    if unknown:
        _err("no waiting job with id %s" % ", ".join(map(str, unknown)))
    return 1 if running or unknown else 0


def _cmd_forget(args, config):
    def forget_one(queue, failed_id):
        return queue.forget([failed_id]) and "deleted failed job %d" % failed_id
    return _each_failed_id(config, args.ids, forget_one)


def _each_failed_id(config, ids, action):
    """action(queue, id) -> the line to print, or a false value for an unknown id.

    Every id is tried; unknown ones are named on stderr at the end (exit 1).
    """
    queue = Queue(config=config)
    missing = []
    try:
        for failed_id in ids:
            line = action(queue, failed_id)
            if line:
                print(line)
            else:
                missing.append(str(failed_id))
    finally:
        queue.close()
    if missing:
        _err("no failed job with id %s" % ", ".join(missing))
        return 1
    return 0


def _cmd_flush(args, config):
    queue = Queue(config=config)
    try:
        count = queue.flush(args.hours)
    finally:
        queue.close()
    print("deleted %d failed job(s)%s" % (count, "" if args.hours is None
                                          else " older than %g hours" % args.hours))
    return 0


def _isatty(stream):
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def _cmd_clear(args, config):
    ask = not args.force
    if ask and not _isatty(sys.stdin):
        raise ConfigError("clear deletes the waiting jobs of queue %s: add --force (stdin is not"
                          " a terminal, so there is no one to ask)" % args.queue)
    queue = Queue(config=config)
    try:
        if ask:
            counts = {s["queue"]: s for s in queue.stats(cap=None)}.get(args.queue)
            waiting = counts["ready"] + counts["delayed"] if counts else 0
            if not waiting:
                print("queue %s has no waiting jobs" % args.queue)
                return 0
            sys.stderr.write("Delete the %d waiting job(s) of queue %s? [y/N] "
                             % (waiting, args.queue))
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        count = queue.clear(args.queue)
    finally:
        queue.close()
    # Reserved jobs are running: a worker holds them and finishes them.
    print("deleted %d waiting job(s) of queue %s" % (count, args.queue))
    return 0


def _setting_value(config, setting):
    """A setting's effective value for `config`, with secrets masked."""
    attr = setting.lower()
    for prefix in ("queue_", "dbqueue_"):
        attr = attr[len(prefix):] if attr.startswith(prefix) else attr
    value = getattr(config, attr, None)
    if isinstance(value, str) and "://" in value:
        value = _mask_url(value)
    if _SECRET_NAME.search(setting) and value:
        value = "***"
    return value


def _cmd_config(args, config):
    # Reads no database: it shows what a worker started here would use.
    settings = [{"name": name, "value": _setting_value(config, name), "source": source}
                for name, source in config.sources.items()]
    if args.json:
        print(json.dumps({"settings": settings, "warnings": config.warnings}, indent=2))
        return 0

    def shown(value):
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return '""' if value in ("", None) else str(value)
    print(_table(("setting", "value", "source"),
                 [(s["name"], shown(s["value"]), s["source"]) for s in settings]))
    return 0


def _dashboard_token(config):
    """The checked DBQUEUE_DASHBOARD_TOKEN (a Config setting), or None if unset."""
    token = config.dashboard_token
    if token and (len(token) < _DASHBOARD_TOKEN_MIN or not re.match(r"^[\x21-\x7e]+\Z", token)):
        raise ConfigError("DBQUEUE_DASHBOARD_TOKEN must be at least %d characters, with no spaces"
                          " or non-ASCII ones (python -c 'import secrets;"
                          " print(secrets.token_urlsafe())' makes one)" % _DASHBOARD_TOKEN_MIN)
    return token or None


def _cmd_dashboard(args, config):
    import signal
    import socket
    token = _dashboard_token(config)
    if token is None and not _is_loopback(args.host):
        raise ConfigError("dashboard --host %s: an address other than 127.0.0.1 needs"
                          " DBQUEUE_DASHBOARD_TOKEN set (or reach 127.0.0.1 through an SSH tunnel)"
                          % args.host)
    # Opened once now, so that a wrong URL or a missing table is one line at
    # the start rather than an error page later; never created.
    queue = _reader(config)
    try:
        queue.check(queue._local.conn)
        queue.discard(queue._local.conn)
        try:
            server = _dashboard_server(_Dashboard(queue, read_only=args.read_only, token=token),
                                       args.host, args.port)
        except socket.gaierror as exc:
            raise ConfigError("dashboard --host %s: %s" % (args.host, exc.strerror or exc))
        except OSError as exc:
            raise QueueError("dashboard: cannot listen on %s port %d: %s"
                             % (args.host, args.port, exc.strerror or exc))
        try:
            host, port = server.server_address[:2]
            shown = "[%s]" % host if ":" in host else host
            print("dbqueue dashboard on http://%s:%d/ for %s%s%s; Ctrl-C stops it"
                  % (shown, port, _mask_url(config.database_url),
                     " (read-only)" if args.read_only else "",
                     "; open it once with ?token=<DBQUEUE_DASHBOARD_TOKEN>" if token else ""),
                  flush=True)

            def stop(signum, frame):
                raise KeyboardInterrupt
            signal.signal(signal.SIGTERM, stop)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
        finally:
            server.server_close()
    finally:
        queue.close()
    print("dbqueue dashboard stopped", flush=True)
    return 0


_COMMANDS = {
    "migrate": _cmd_migrate,
    "work": _cmd_work,
    "push": _cmd_push,
    "stats": _cmd_stats,
    "health": _cmd_health,
    "pause": _cmd_pause,
    "resume": _cmd_pause,
    "failed": _cmd_failed,
    "sent": _cmd_sent,
    "retry": _cmd_retry,
    "cancel": _cmd_cancel,
    "forget": _cmd_forget,
    "flush": _cmd_flush,
    "clear": _cmd_clear,
    "bench": lambda args, config: _bench(args, config),
    "config": _cmd_config,
    "dashboard": _cmd_dashboard,
}


if __name__ == "__main__":
    # Handler modules do `import dbqueue`; make that the module running now,
    # not a second copy with a second (empty) registry.
    sys.modules.setdefault("dbqueue", sys.modules[__name__])
    sys.exit(main())
