#!/usr/bin/env python3
"""dbqueue: a database-backed job queue and worker in one file.

One Python file, standard library only (CPython 3.8+). Copy it into your
project. Jobs live in a ``jobs`` table (Laravel-compatible columns) in SQLite,
the embedded default, or PostgreSQL, through whichever of ``psycopg`` (3) or
``psycopg2`` is installed, when you grow to many workers on many machines.

    import dbqueue

    @dbqueue.job("resize_image")
    def resize_image(data):
        ...                                    # raise dbqueue.PermanentError to give up

    q = dbqueue.Queue.from_env()               # QUEUE_DATABASE_URL, or sqlite:///dbqueue.sqlite3
    q.push("resize_image", {"path": "a.png"}, queue="default", delay=0)
    dbqueue.queue_template_email("ann@example.com", "verify_email",
                                 {"name": "Ann", "url": "https://example.com/v/1"})

    $ python dbqueue.py migrate                # PostgreSQL; SQLite creates its tables itself
    $ python dbqueue.py work --queue=emails,default --import myapp.jobs
    $ python dbqueue.py stats

Guarantees: at least once. A job is deleted only after its handler returns,
so a crash can run a handler twice; a job is never handed to two live workers
at once. ``python dbqueue.py --help`` lists every command.

Copyright (c) 2026 the dbqueue authors. MIT licence: use, copy, modify and
distribute freely; keep this notice; no warranty (full text in LICENSE and at
https://opensource.org/licenses/MIT).
"""

__version__ = "1.0.0"
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

    def __getattr__(self, attr):
        compiled = re.compile(self.source)
        self.__dict__.update(match=compiled.match, sub=compiled.sub, findall=compiled.findall)
        return getattr(compiled, attr)


json = _Lazy("json")
re = _Lazy("re")


###############################################################################
# Configuration ###############################################################
###############################################################################

_DEFAULT_URL = "sqlite:///dbqueue.sqlite3"
_IDENT = _Pattern(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_QUEUE_NAME = _Pattern(r"^[A-Za-z0-9_.:\-]{1,100}$")


def _read_env_file(path, required):
    """Parse a .env file: KEY=VALUE lines, # comments, optional quotes and `export`.

    Values are never evaluated or interpolated. A missing file is an error only
    when the user named it (`--env-file`).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        if required:
            raise ConfigError("--env-file %s: no such file" % path)
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read env file %s: %s" % (path, exc))
    values = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key.startswith("export "):
            key = key[7:].strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def _mask_url(url):
    """The URL with its password replaced by ***, for logs and errors."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url or "")


class Config:
    """Validated settings. `Config.from_env()` reads them; every field has a default.

    Bad values raise `ConfigError` with one line that names the variable.
    """

    def __init__(self, **settings):
        self.driver = "database"
        self.database_url = _DEFAULT_URL
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
        self.app_name = ""
        for name, value in settings.items():
            if not hasattr(self, name):
                raise TypeError("Config has no setting %r" % name)
            setattr(self, name, value)

    def __repr__(self):
        shown = dict(vars(self))
        shown["database_url"] = _mask_url(self.database_url)
        if shown["mail_password"]:
            shown["mail_password"] = "***"
        return "Config(%s)" % ", ".join("%s=%r" % kv for kv in sorted(shown.items()))

    @classmethod
    def from_env(cls, environ=None, env_file=None):
        """Settings from `environ` (default os.environ) over a .env file.

        The .env file in the working directory is read unless `env_file` names
        another; it never overrides a variable that is already set.
        """
        env = dict(_read_env_file(env_file or ".env", required=bool(env_file)))
        env.update(os.environ if environ is None else environ)

        def get(name, default=""):
            value = env.get(name)
            return default if value is None or value.strip() == "" else value.strip()

        c = cls()
        driver = get("QUEUE_DRIVER", "database").lower()
        if driver != "database":
            raise ConfigError(
                "QUEUE_DRIVER=%s is not supported: dbqueue only has the 'database' driver"
                " (set QUEUE_DRIVER=database or remove it)" % driver)
        c.database_url = get("QUEUE_DATABASE_URL") or get("DATABASE_URL") or _DEFAULT_URL
        _parse_url(c.database_url)  # an unknown scheme is a configuration error now
        c.max_attempts = _int_setting("QUEUE_MAX_ATTEMPTS", get("QUEUE_MAX_ATTEMPTS", "3"), 1)
        c.retry_after = _int_setting("QUEUE_RETRY_AFTER", get("QUEUE_RETRY_AFTER", "90"), 1)
        c.backoff = _backoff_setting("QUEUE_BACKOFF", get("QUEUE_BACKOFF", "10,60,300"))
        c.timeout = _int_setting("QUEUE_TIMEOUT", get("QUEUE_TIMEOUT", "60"), 0)
        c.table = _ident_setting("QUEUE_TABLE", get("QUEUE_TABLE", "jobs"))
        c.failed_table = _ident_setting("QUEUE_FAILED_TABLE", get("QUEUE_FAILED_TABLE", "failed_jobs"))
        c.mail_mailer = _choice_setting("MAIL_MAILER", get("MAIL_MAILER", "smtp").lower(), ("smtp", "log"))
        c.mail_host = get("MAIL_HOST", "localhost")
        c.mail_port = _int_setting("MAIL_PORT", get("MAIL_PORT", "25"), 1, 65535)
        c.mail_username = get("MAIL_USERNAME")
        c.mail_password = env.get("MAIL_PASSWORD", "")
        encryption = get("MAIL_ENCRYPTION", "none").lower()
        encryption = {"tls": "starttls", "": "none", "null": "none"}.get(encryption, encryption)
        c.mail_encryption = _choice_setting("MAIL_ENCRYPTION", encryption, ("none", "starttls", "ssl"))
        c.mail_from_address = get("MAIL_FROM_ADDRESS", "no-reply@localhost")
        c.mail_from_name = get("MAIL_FROM_NAME")
        c.mail_timeout = _int_setting("MAIL_TIMEOUT", get("MAIL_TIMEOUT", "30"), 1)
        c.mail_verify_peer = _bool_setting("MAIL_VERIFY_PEER", get("MAIL_VERIFY_PEER", "true"))
        c.mail_template_dir = get("MAIL_TEMPLATE_DIR")
        c.app_name = get("APP_NAME")
        return c


def _int_setting(name, value, minimum, maximum=None):
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError("%s=%s is not a whole number" % (name, value))
    if number < minimum or (maximum is not None and number > maximum):
        bound = ">= %d" % minimum if maximum is None else "from %d to %d" % (minimum, maximum)
        raise ConfigError("%s=%s must be %s" % (name, value, bound))
    return number


def _float_setting(name, value, minimum):
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError("%s=%s is not a number" % (name, value))
    if not number >= minimum or number == float("inf"):
        raise ConfigError("%s=%s must be a number >= %s" % (name, value, minimum))
    return number


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
    if not delays or any(d < 0 for d in delays):
        raise ConfigError("%s=%s must be seconds >= 0 separated by commas" % (name, value))
    return delays


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


def _queue_name(name):
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        raise ValueError("queue name %r must be 1-100 letters, digits, '_', '-', '.' or ':'"
                         % (name,))
    return name


def _parse_url(url):
    """(dialect class, target, driver name) for a database URL; ConfigError if unknown."""
    if "://" not in url:
        # A bare path is a SQLite file: friendly for scripts and tests.
        return _SQLite, url, None
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:":
            raise ConfigError("QUEUE_DATABASE_URL=%s: SQLite needs a file (sqlite:///path.db);"
                              " an in-memory database cannot be shared with the worker" % url)
        return _SQLite, path, None
    base, _, driver = scheme.partition("+")
    if base in ("postgresql", "postgres"):
        if driver not in ("", "psycopg", "psycopg2"):
            raise ConfigError("QUEUE_DATABASE_URL: unknown PostgreSQL driver %r (psycopg or psycopg2)"
                              % driver)
        return _Postgres, "postgresql://" + rest, driver or None
    if base in ("mysql", "mariadb"):
        raise ConfigError("QUEUE_DATABASE_URL: MySQL is not supported yet; use sqlite:/// or postgresql://")
    raise ConfigError("QUEUE_DATABASE_URL=%s: unknown scheme %r (use sqlite:///path.db or"
                      " postgresql://user@host/db)" % (_mask_url(url), scheme))


###############################################################################
# Exceptions ##################################################################
###############################################################################

class QueueError(Exception):
    """The root of every error dbqueue raises on purpose."""


class ConfigError(QueueError):
    """A bad setting or flag: the command line exits 2 before touching the database."""


class DatabaseError(QueueError):
    """The database failed or went away; the worker retries these with backoff."""


class MissingTableError(DatabaseError):
    """The queue tables do not exist (run `python dbqueue.py migrate`)."""


class PermanentError(QueueError):
    """Raise from a handler to fail the job at once, without retries."""


class JobTimeout(BaseException):
    """Raised inside a handler that ran past its timeout.

    It derives from BaseException so that a handler's `except Exception` does
    not swallow it; a handler that swallows it anyway still counts as timed out.
    """


class _Abort(BaseException):
    """A second SIGINT: stop the running handler now and release its job."""


###############################################################################
# Dialects and SQL ############################################################
###############################################################################

# SQL is written once with :name parameters; each dialect turns it into its
# driver's placeholder style. {jobs} and {failed} are the validated table names,
# {now} is the clock expression (see _Dialect.now).
_SQL = {
    "push": "INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at, created_at)"
            " VALUES (:queue, :payload, 0, NULL, {now} + :delay, {now})",
    "rescue": "UPDATE {jobs} SET reserved_at = NULL"
              " WHERE reserved_at IS NOT NULL AND reserved_at < {now} - :retry_after",
    "ack": "DELETE FROM {jobs} WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL",
    "touch": "UPDATE {jobs} SET reserved_at = {now}"
             " WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL",
    "release": "UPDATE {jobs} SET reserved_at = NULL, available_at = {now} + :delay,"
               " attempts = attempts - :uncount"
               " WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL",
    "fail": "INSERT INTO {failed} (uuid, connection, queue, payload, exception)"
            " SELECT :uuid, 'database', queue, payload, :exception FROM {jobs}"
            " WHERE id = :id AND attempts = :attempts AND reserved_at IS NOT NULL"
            " ON CONFLICT (uuid) DO UPDATE SET queue = excluded.queue, payload = excluded.payload,"
            " exception = excluded.exception, failed_at = excluded.failed_at",
    "next_due": "SELECT MIN(available_at) - {now} FROM {jobs}"
                " WHERE queue = :queue AND reserved_at IS NULL",
    "stats": "SELECT queue,"
             " SUM(CASE WHEN reserved_at IS NULL AND available_at <= {now} THEN 1 ELSE 0 END),"
             " SUM(CASE WHEN reserved_at IS NULL AND available_at > {now} THEN 1 ELSE 0 END),"
             " SUM(CASE WHEN reserved_at IS NOT NULL THEN 1 ELSE 0 END),"
             " SUM(CASE WHEN reserved_at IS NOT NULL AND reserved_at < {now} - :retry_after"
             " THEN 1 ELSE 0 END),"
             " {now} - MIN(CASE WHEN reserved_at IS NULL AND available_at <= {now}"
             " THEN available_at END)"
             " FROM {jobs} GROUP BY queue",
    "failed_counts": "SELECT queue, COUNT(*) FROM {failed} GROUP BY queue",
    "failed_list": "SELECT id, uuid, queue, {payload_text}, exception, failed_at FROM {failed}"
                   " WHERE (CAST(:queue AS TEXT) IS NULL OR queue = :queue) ORDER BY id",
    "failed_ids": "SELECT id FROM {failed} WHERE (CAST(:queue AS TEXT) IS NULL OR queue = :queue) ORDER BY id",
    "retry": "INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at, created_at)"
             " SELECT queue, payload, 0, NULL, {now}, {now} FROM {failed} WHERE id = :id",
    "forget": "DELETE FROM {failed} WHERE id = :id",
    "flush": "DELETE FROM {failed} WHERE failed_at < {failed_cutoff}",
    "clear": "DELETE FROM {jobs} WHERE queue = :queue AND reserved_at IS NULL",
    "version": "SELECT version FROM dbqueue_migrations WHERE tbl = :tbl",
    "set_version": "INSERT INTO dbqueue_migrations (tbl, version) VALUES (:tbl, :version)"
                   " ON CONFLICT (tbl) DO UPDATE SET version = excluded.version",
}

_PARAM = _Pattern(r"(?<![:\w]):([a-z_]+)\b")


class _Dialect:
    """What differs between databases, as data. One subclass per database."""

    name = ""
    placeholder = "?"
    now = ":now"                   # the clock: a parameter, or the server's own
    begin = "BEGIN"
    payload_text = "payload"       # how to read a payload column as text
    autoincrement = ""
    bigint = "INTEGER"
    failed_at = ""
    failed_cutoff = ""
    claim = ""                     # one statement, or "" when claim_select/claim_update are used
    claim_select = ""
    claim_update = ""

    @classmethod
    def prepare(cls, template, jobs="jobs", failed="failed_jobs", **extra):
        """(sql, names): the template for this dialect and its parameter order."""
        text = template.format(jobs=_quote(jobs), failed=_quote(failed), now=cls.now,
                               payload_text=cls.payload_text,
                               failed_cutoff=cls.failed_cutoff, **extra)
        names = _PARAM.findall(text)
        if cls.placeholder == "%s":
            text = text.replace("%", "%%")
        return _PARAM.sub(cls.placeholder, text), tuple(names)

    @classmethod
    def ddl(cls, jobs, failed):
        """The statements of schema version 1 (idempotent: IF NOT EXISTS throughout)."""
        j, f = _quote(jobs), _quote(failed)
        return [
            "CREATE TABLE IF NOT EXISTS %s (\n"
            "    id %s,\n"
            "    queue VARCHAR(255) NOT NULL,\n"
            "    payload TEXT NOT NULL,\n"
            "    attempts INTEGER NOT NULL DEFAULT 0,\n"
            "    reserved_at %s,\n"
            "    available_at %s NOT NULL,\n"
            "    created_at %s NOT NULL\n"
            ")" % (j, cls.autoincrement, cls.bigint, cls.bigint, cls.bigint),
            # The claim reads `WHERE queue = ? AND reserved_at IS NULL AND
            # available_at <= now ORDER BY available_at, id LIMIT n`: this index
            # answers it without a sort and without touching reserved or delayed
            # rows, so a claim costs the same with 50 or 5 million jobs waiting.
            "CREATE INDEX IF NOT EXISTS %s ON %s (queue, available_at, id)"
            " WHERE reserved_at IS NULL" % (_quote(jobs + "_ready"), j),
            # Finds expired reservations (and counts reserved jobs) cheaply.
            "CREATE INDEX IF NOT EXISTS %s ON %s (reserved_at)"
            " WHERE reserved_at IS NOT NULL" % (_quote(jobs + "_reserved"), j),
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
    def version_ddl(cls):
        return ("CREATE TABLE IF NOT EXISTS dbqueue_migrations (\n"
                "    tbl VARCHAR(63) PRIMARY KEY,\n"
                "    version INTEGER NOT NULL\n"
                ")")


class _SQLite(_Dialect):
    name = "sqlite"
    placeholder = "?"
    now = ":now"
    begin = "BEGIN IMMEDIATE"
    # A payload is read as bytes so that a row holding invalid UTF-8 (written
    # by hand) fails alone instead of breaking every claim that returns it.
    payload_text = "CAST(payload AS BLOB)"
    # AUTOINCREMENT: ids are never reused, so an (id, attempts) fencing token
    # can never match a later job that happens to get a deleted job's id.
    autoincrement = "INTEGER PRIMARY KEY AUTOINCREMENT"
    bigint = "INTEGER"
    failed_at = "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP"
    failed_cutoff = "datetime('now', :age)"
    claim = ("UPDATE {jobs} SET reserved_at = :now, attempts = attempts + 1"
             " WHERE id IN (SELECT id FROM {jobs} WHERE queue = :queue AND reserved_at IS NULL"
             " AND available_at <= :now ORDER BY available_at, id LIMIT :limit)"
             " RETURNING id, queue, CAST(payload AS BLOB), attempts, available_at")
    # SQLite before 3.35 has no RETURNING: select, then update, in one
    # BEGIN IMMEDIATE transaction, which no other writer can interleave.
    claim_select = ("SELECT id, queue, CAST(payload AS BLOB), attempts + 1, available_at FROM {jobs}"
                    " WHERE queue = :queue AND reserved_at IS NULL AND available_at <= :now"
                    " ORDER BY available_at, id LIMIT :limit")
    claim_update = ("UPDATE {jobs} SET reserved_at = :now, attempts = attempts + 1"
                    " WHERE id = :id AND reserved_at IS NULL")
    driver_errors = ()

    @staticmethod
    def has_returning():
        import sqlite3
        return sqlite3.sqlite_version_info >= (3, 35, 0)

    @staticmethod
    def connect(target, driver=None, timeout=5.0):
        import sqlite3
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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @staticmethod
    def errors():
        import sqlite3
        return (sqlite3.Error,)

    @staticmethod
    def is_missing_table(exc):
        return "no such table" in str(exc)

    @staticmethod
    def is_locked(exc):
        return "locked" in str(exc) or "busy" in str(exc)


class _Postgres(_Dialect):
    name = "postgresql"
    placeholder = "%s"
    # Server databases decide expiry and availability by the database's clock,
    # so workers on machines with skewed clocks agree. Tests pass their own.
    now = "COALESCE(:now, FLOOR(EXTRACT(EPOCH FROM now()))::bigint)"
    begin = "BEGIN"
    payload_text = "payload"
    autoincrement = "BIGSERIAL PRIMARY KEY"
    bigint = "BIGINT"
    failed_at = "TIMESTAMPTZ NOT NULL DEFAULT now()"
    failed_cutoff = "now() - :hours * INTERVAL '1 hour'"
    # One statement: lock n ready rows, skipping those another worker has
    # locked, and mark them reserved. No two workers can return the same row.
    claim = ("WITH c AS (SELECT id FROM {jobs} WHERE queue = :queue AND reserved_at IS NULL"
             " AND available_at <= {now} ORDER BY available_at, id LIMIT :limit"
             " FOR UPDATE SKIP LOCKED)"
             " UPDATE {jobs} j SET reserved_at = {now}, attempts = j.attempts + 1 FROM c"
             " WHERE j.id = c.id RETURNING j.id, j.queue, j.payload, j.attempts, j.available_at")
    push_notify = ("WITH j AS (INSERT INTO {jobs} (queue, payload, attempts, reserved_at,"
                   " available_at, created_at) VALUES (:queue, :payload, 0, NULL, {now} + :delay,"
                   " {now}) RETURNING id) SELECT id, pg_notify(:channel, :queue) FROM j")
    # The payloads travel as one JSON array of the payload objects, joined
    # as text: `json` (unlike jsonb) hands each element back as the exact text
    # it was given, and one string parameter costs the driver nothing, where a
    # text[] parameter is escaped element by element in Python. The insert
    # and its notification are one statement: atomic in autocommit, one round trip.
    push_many = ("WITH j AS (INSERT INTO {jobs} (queue, payload, attempts, reserved_at,"
                 " available_at, created_at) SELECT :queue, p::text, 0, NULL, {now} + :delay,"
                 " {now} FROM json_array_elements(CAST(:payloads AS json)) WITH ORDINALITY"
                 " AS t(p, n) ORDER BY n RETURNING id)"
                 " SELECT j.id FROM j, (SELECT pg_notify(:channel, :queue)) AS n ORDER BY j.id")
    # Batches of tokens travel as two arrays: one round trip for any number.
    ack_many = ("DELETE FROM {jobs} WHERE reserved_at IS NOT NULL AND (id, attempts) IN"
                " (SELECT * FROM unnest(:ids::bigint[], :attempts::int[])) RETURNING id")
    touch_many = ("UPDATE {jobs} SET reserved_at = {now} WHERE reserved_at IS NOT NULL"
                  " AND (id, attempts) IN (SELECT * FROM unnest(:ids::bigint[], :attempts::int[]))"
                  " RETURNING id")

    @staticmethod
    def has_returning():
        return True

    @staticmethod
    def driver(name=None):
        """The driver module: psycopg (3) first, then psycopg2, unless one is named."""
        import importlib
        names = [name] if name else ["psycopg", "psycopg2"]
        for candidate in names:
            try:
                return importlib.import_module(candidate)
            except ImportError:
                continue
        wanted = {"psycopg2": "psycopg2-binary"}.get(name, "psycopg[binary]")
        raise ConfigError("QUEUE_DATABASE_URL is PostgreSQL but the %s driver is not installed:"
                          " pip install %s" % (name or "psycopg", wanted))

    @classmethod
    def connect(cls, target, driver=None, timeout=None):
        module = driver if not isinstance(driver, (str, type(None))) else cls.driver(driver)
        try:
            if module.__name__.startswith("psycopg2"):
                conn = module.connect(target)
                conn.autocommit = True
            else:
                conn = module.connect(target, autocommit=True)
        except module.Error as exc:
            raise DatabaseError("cannot connect to %s: %s"
                                % (_mask_url(target), _first_line(exc)))
        return conn

    @staticmethod
    def is_missing_table(exc):
        code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
        return code == "42P01"

    @staticmethod
    def is_locked(exc):
        return False


def _quote(identifier):
    if not _IDENT.match(identifier):
        raise ConfigError("table name %r is not a plain identifier" % (identifier,))
    return '"%s"' % identifier


def _first_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


_SCHEMA_VERSION = 1


def schema_sql(dialect, jobs="jobs", failed="failed_jobs"):
    """The DDL `migrate` runs, as one SQL script."""
    statements = [dialect.version_ddl()] + dialect.ddl(jobs, failed)
    return "".join(s + ";\n" for s in statements)


###############################################################################
# The queue ###################################################################
###############################################################################

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
        if self.dialect is _Postgres and isinstance(self._driver, (str, type(None))):
            self._driver = _Postgres.driver(self._driver)   # a missing driver: ConfigError now
        self._clock = clock
        self.channel = "dbqueue_" + self.config.table
        self._sql = {}
        self._local = threading.local()
        self._conns = []
        self._conns_lock = threading.Lock()
        self._schema_ready = False
        self._returning = self.dialect.has_returning()
        self._queues_seen = set()     # names push() has validated already

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
        return int(time.time()) if self.dialect is _SQLite else None

    def sql(self, key):
        """(text, parameter names) of one statement, prepared once per queue."""
        prepared = self._sql.get(key)
        if prepared is None:
            template = getattr(self.dialect, key, None) or _SQL[key]
            prepared = self._sql[key] = self.dialect.prepare(
                template, self.config.table, self.config.failed_table)
        return prepared

    def execute(self, cur, key, **params):
        text, names = self.sql(key)
        if "now" in names and "now" not in params:
            params["now"] = self.now()
        cur.execute(text, [params[n] for n in names])
        return cur

    def connect(self):
        """A new connection of the queue's own (the worker holds its own)."""
        try:
            conn = self.dialect.connect(self._target, self._driver)
        except self._errors() as exc:
            raise DatabaseError("cannot open %s: %s" % (_mask_url(self.config.database_url),
                                                        _first_line(exc)))
        with self._conns_lock:
            self._conns.append(conn)
        if not self._schema_ready and self.dialect is _SQLite:
            # SQLite creates its tables on first use; a server database is
            # migrated on purpose (`python dbqueue.py migrate`).
            self._migrate(conn)
        return conn

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(conn, "closed", False):
            self.discard(conn)     # the server went away; a new connection may work
            conn = None
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    def close(self):
        """Close every connection this queue opened."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass
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
        if self.dialect is _SQLite:
            return _SQLite.errors()
        return (self._driver.Error,)

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
            return MissingTableError("the queue tables do not exist in %s: run `python dbqueue.py"
                                     " migrate`" % _mask_url(self.config.database_url))
        return DatabaseError(_first_line(exc))

    # -- schema ----------------------------------------------------------

    def migrate(self):
        """Create or upgrade the tables; running it again changes nothing. Returns the version."""
        conn = self._conn()
        return self._migrate(conn)

    def _migrate(self, conn):
        tbl = self.config.table
        with _Transaction(self, conn) as cur:
            cur.execute(self.dialect.version_ddl())
            self.execute(cur, "version", tbl=tbl)
            row = cur.fetchone()
            current = row[0] if row else 0
            if current < _SCHEMA_VERSION:
                for statement in self.dialect.ddl(tbl, self.config.failed_table):
                    cur.execute(statement)
                self.execute(cur, "set_version", tbl=tbl, version=_SCHEMA_VERSION)
        self._schema_ready = True
        return _SCHEMA_VERSION

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

    def check(self):
        """Raise MissingTableError unless both tables exist; else return True."""
        with self.transaction() as cur:
            for table in (self.config.table, self.config.failed_table):
                cur.execute("SELECT 1 FROM %s WHERE 1 = 0" % _quote(table))
                cur.fetchall()
        return True

    # -- producing -------------------------------------------------------

    def payload(self, job, data=None, max_tries=None, backoff=None, timeout=None):
        """The JSON text stored for one job (raises TypeError for non-JSON data)."""
        if not isinstance(job, str) or not job:
            raise TypeError("job name must be a non-empty string, not %r" % (job,))
        if data is None:
            data = {}
        if max_tries is not None or backoff is not None or timeout is not None:
            if max_tries is not None:
                _int_setting("max_tries", max_tries, 1)
            if backoff is not None:
                backoff = ",".join(str(d) for d in _backoff_setting("backoff", backoff))
            if timeout is not None:
                _int_setting("timeout", timeout, 0)
        return _dumps({"uuid": _uuid4(), "job": job, "data": data, "maxTries": max_tries,
                       "backoff": backoff, "timeout": timeout, "createdAt": int(time.time())})

    def push(self, job, data=None, queue="default", delay=0, connection=None,
             max_tries=None, backoff=None, timeout=None):
        """Enqueue one job; returns its id.

        With `connection=` (your app's sqlite3, psycopg or psycopg2 connection)
        the row is written inside your open transaction and is not committed:
        the job exists exactly when your own change commits.
        """
        payload = self.payload(job, data, max_tries, backoff, timeout)
        if delay != 0 or type(delay) is not int:   # the common case skips the checks
            delay = _int_setting("delay", delay, 0)
        if type(queue) is not str or queue not in self._queues_seen:
            _queue_name(queue)
            if len(self._queues_seen) < 1000:
                self._queues_seen.add(queue)
        key = "push_notify" if self.dialect is _Postgres else "push"
        params = dict(queue=queue, payload=payload, delay=delay, channel=self.channel)
        if connection is not None:
            self._check_foreign(connection)
            cur = connection.cursor()
            self.execute(cur, key, **params)
            return self._new_id(cur)
        # The hot path of a web app: one autocommit statement, no kwargs copies.
        text, names = self.sql(key)
        params["now"] = self.now()
        try:
            cur = self._conn().cursor()
            cur.execute(text, [params[n] for n in names])
            return self._new_id(cur)
        except self._errors() as exc:
            raise self.translate(exc) from exc

    def push_many(self, job, items, queue="default", delay=0, connection=None,
                  max_tries=None, backoff=None, timeout=None):
        """Enqueue one job per item of `items` (data dicts) in one transaction; returns the ids."""
        payloads = [self.payload(job, data, max_tries, backoff, timeout) for data in items]
        delay = _int_setting("delay", delay, 0)
        _queue_name(queue)
        if not payloads:
            return []
        if connection is not None:
            self._check_foreign(connection)
            return self._insert_many(connection.cursor(), queue, payloads, delay)
        if self.dialect is _Postgres:
            try:
                return self._insert_many(self._conn().cursor(), queue, payloads, delay)
            except self._errors() as exc:
                raise self.translate(exc) from exc
        with self.transaction() as cur:
            return self._insert_many(cur, queue, payloads, delay)

    def _insert_many(self, cur, queue, payloads, delay):
        if self.dialect is _Postgres:
            self.execute(cur, "push_many", queue=queue, payloads="[%s]" % ",".join(payloads),
                         delay=delay, channel=self.channel)
            return [row[0] for row in cur.fetchall()]
        text, names = self.sql("push")
        now = self.now()
        params = dict(queue=queue, delay=delay, now=now)
        rows = []
        for payload in payloads:
            params["payload"] = payload
            rows.append([params[n] for n in names])
        cur.executemany(text, rows)
        # AUTOINCREMENT ids inside one write transaction are consecutive.
        last = cur.execute("SELECT last_insert_rowid()").fetchone()[0]
        return list(range(last - len(payloads) + 1, last + 1))

    def _new_id(self, cur):
        if self.dialect is _Postgres:
            return cur.fetchone()[0]
        return cur.lastrowid

    def _check_foreign(self, connection):
        module = type(connection).__module__.split(".")[0]
        kind = {"sqlite3": _SQLite, "psycopg": _Postgres, "psycopg2": _Postgres}.get(module)
        if kind is not None and kind is not self.dialect:
            raise TypeError("connection= is a %s connection but this queue is %s"
                            % (module, self.dialect.name))
        if self.dialect is _SQLite and not self._schema_ready:
            self._conn()  # creates the tables through our own connection first

    # -- reserving and finishing (the worker's side) ---------------------

    def reserve(self, conn, queues, limit=1, acks=(), rescue_after=None):
        """Reserve up to `limit` ready jobs in one transaction, in queue priority order.

        Each reserved job's attempts is incremented here, before its handler
        runs, so a job that kills its worker still uses up its attempts. `acks`
        ((id, attempts) tokens of finished jobs) are deleted in the same
        transaction: one commit acknowledges a batch and claims the next.
        `rescue_after` (seconds) first gives back reservations older than that.
        Returns (jobs, tokens of acks that were refused because the
        reservation had been lost).
        """
        jobs = []
        with _Transaction(self, conn) as cur:
            lost = self._ack(cur, acks) if acks else []
            if rescue_after is not None:
                self.execute(cur, "rescue", retry_after=rescue_after)
            now = self.now()
            for queue in queues:
                want = limit - len(jobs)
                if want <= 0:
                    break
                if self._returning:
                    rows = self.execute(cur, "claim", queue=queue, limit=want, now=now).fetchall()
                else:
                    rows = self.execute(cur, "claim_select", queue=queue, limit=want,
                                        now=now).fetchall()
                    for row in rows:
                        self.execute(cur, "claim_update", id=row[0], now=now)
                rows.sort(key=lambda r: (r[4], r[0]))
                jobs.extend(Job(r[0], r[1], r[2], r[3]) for r in rows)
        return jobs, lost

    def _ack(self, cur, tokens):
        """Delete finished jobs; returns the tokens whose reservation was lost."""
        return self._by_token(cur, "ack", tokens)

    def _by_token(self, cur, key, tokens):
        if self.dialect is _Postgres:
            self.execute(cur, key + "_many", ids=[t[0] for t in tokens],
                         attempts=[t[1] for t in tokens])
            done = {row[0] for row in cur.fetchall()}
            return [t for t in tokens if t[0] not in done]
        lost = []
        for token in tokens:
            self.execute(cur, key, id=token[0], attempts=token[1])
            if cur.rowcount != 1:
                lost.append(token)
        return lost

    def ack(self, conn, tokens):
        """Delete finished jobs named by (id, attempts) tokens; returns the lost ones."""
        with _Transaction(self, conn) as cur:
            return self._ack(cur, tokens)

    def touch(self, conn, tokens):
        """Heartbeat: move reserved_at forward for held jobs; returns the lost ones."""
        with _Transaction(self, conn) as cur:
            return self._by_token(cur, "touch", tokens)

    def release(self, conn, token, delay=0, uncount=False, acks=()):
        """Make a held job available again after `delay` seconds. False if it was lost.

        `uncount` gives back the attempt (for a job that never started).
        """
        with _Transaction(self, conn) as cur:
            lost = self._ack(cur, acks) if acks else []
            self.execute(cur, "release", id=token[0], attempts=token[1], delay=int(delay),
                         uncount=1 if uncount else 0)
            return cur.rowcount == 1, lost

    def fail(self, conn, token, uuid, exception, acks=()):
        """Move a held job to failed_jobs, in one transaction. False if it was lost."""
        with _Transaction(self, conn) as cur:
            lost = self._ack(cur, acks) if acks else []
            self.execute(cur, "fail", id=token[0], attempts=token[1], uuid=uuid,
                         exception=exception)
            if cur.rowcount != 1:
                return False, lost
            self.execute(cur, "ack", id=token[0], attempts=token[1])
            return True, lost

    def next_due(self, conn, queues):
        """Seconds until the next delayed job of `queues` is due (None: nothing waiting)."""
        due = None
        with _Transaction(self, conn, write=False) as cur:
            for queue in queues:
                value = self.execute(cur, "next_due", queue=queue).fetchone()[0]
                if value is not None and (due is None or value < due):
                    due = value
        return due

    # -- inspecting and operating -----------------------------------------

    def stats(self):
        """Per queue: ready, delayed, reserved, expired, failed, oldest_ready_age (seconds)."""
        out = {}
        with self.transaction() as cur:
            self.execute(cur, "stats", retry_after=self.config.retry_after)
            for queue, ready, delayed, reserved, expired, age in cur.fetchall():
                out[queue] = {"queue": queue, "ready": int(ready or 0), "delayed": int(delayed or 0),
                              "reserved": int(reserved or 0), "expired": int(expired or 0),
                              "failed": 0, "oldest_ready_age": int(age) if age is not None else None}
            self.execute(cur, "failed_counts")
            for queue, failed in cur.fetchall():
                entry = out.setdefault(queue, {"queue": queue, "ready": 0, "delayed": 0,
                                               "reserved": 0, "expired": 0, "failed": 0,
                                               "oldest_ready_age": None})
                entry["failed"] = int(failed)
        return [out[q] for q in sorted(out)]

    def failed(self, queue=None):
        """Failed jobs, oldest first, as dicts (payload and exception as text)."""
        with self.transaction() as cur:
            rows = self.execute(cur, "failed_list", queue=queue).fetchall()
        result = []
        for id_, uuid, queue_, payload, exception, failed_at in rows:
            if isinstance(payload, bytes):
                payload = payload.decode("utf-8", "replace")
            result.append({"id": id_, "uuid": uuid, "queue": queue_, "payload": payload,
                           "exception": exception, "failed_at": str(failed_at)})
        return result

    def retry(self, ids=None, queue=None):
        """Move failed jobs back to the queue with attempts reset; one transaction per job.

        `ids=None` retries all (of `queue`). Returns the new job ids.
        """
        if ids is None:
            with self.transaction() as cur:
                ids = [r[0] for r in self.execute(cur, "failed_ids", queue=queue).fetchall()]
        new_ids = []
        for failed_id in ids:
            with self.transaction() as cur:
                self.execute(cur, "retry", id=failed_id)
                if cur.rowcount != 1:
                    continue
                new_ids.append(self._retried_id(cur))
                self.execute(cur, "forget", id=failed_id)
            if self.dialect is _Postgres:
                with self.transaction() as cur:
                    cur.execute("SELECT pg_notify(%s, '')", (self.channel,))
        return new_ids

    def _retried_id(self, cur):
        if self.dialect is _Postgres:
            cur.execute("SELECT lastval()")
            return cur.fetchone()[0]
        return cur.lastrowid

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
                cur.execute("DELETE FROM %s" % _quote(self.config.failed_table))
            else:
                self.execute(cur, "flush", hours=float(hours), age="-%f hours" % float(hours))
            return cur.rowcount

    def clear(self, queue):
        """Delete the waiting (not reserved) jobs of one queue; returns how many."""
        _queue_name(queue)
        with self.transaction() as cur:
            self.execute(cur, "clear", queue=queue)
            return cur.rowcount


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
            self.cur.execute(self.queue.dialect.begin if self.write else "BEGIN")
        except self.queue._errors() as exc:
            raise self.queue.translate(exc) from exc
        return self.cur

    def __exit__(self, kind, exc, tb):
        try:
            if kind is None:
                self.cur.execute("COMMIT")
                return False
            try:
                self.cur.execute("ROLLBACK")
            except Exception:
                pass  # the connection may be gone; the error that got us here matters
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
# The worker ##################################################################
###############################################################################

_registry = {}
_current = threading.local()


def job(name=None, max_tries=None, backoff=None, timeout=None):
    """Register a handler under `name` (default: the function's name).

        @dbqueue.job("resize_image", max_tries=5, backoff="5,30", timeout=120)
        def resize_image(data): ...

    Handlers are looked up by this name only, never imported from a payload.
    The options are defaults that a job's own payload can override.
    """
    def register(func):
        _registry[name or func.__name__] = (func, max_tries, backoff, timeout)
        return func
    if callable(name):
        func, name = name, None
        return register(func)
    return register


def current_job():
    """The Job the calling handler is running (None outside a handler)."""
    return getattr(_current, "job", None)


class Job:
    """One reserved job: `id`, `queue`, `attempts` (this try is number `attempts`),
    `uuid`, `name`, `data`, and `error` when the payload could not be read."""

    __slots__ = ("id", "queue", "raw", "attempts", "uuid", "name", "data", "payload",
                 "error", "worker", "started")

    def __init__(self, id, queue, raw, attempts):
        self.id, self.queue, self.raw, self.attempts = id, queue, raw, attempts
        self.uuid = self.name = self.error = self.worker = None
        self.data = self.payload = None
        self.started = 0.0
        try:
            payload = json.loads(raw)
        except UnicodeDecodeError:
            self.error = "payload is not valid UTF-8"
            return
        except ValueError as exc:
            self.error = "payload is not valid JSON: %s" % exc
            return
        if not isinstance(payload, dict):
            self.error = "payload is JSON but not an object"
            return
        self.payload = payload
        uuid = payload.get("uuid")
        self.uuid = uuid if isinstance(uuid, str) and uuid else None
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


class _Log:
    """One line per event on stderr: text (`key=value`) or JSON.

    Job data is never logged: it holds addresses and tokens.
    """

    LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

    def __init__(self, stream=None, level="info", fmt="text"):
        self.stream = stream
        self.level = self.LEVELS[level]
        self.json = fmt == "json"
        self._second = None
        self._stamp = ""
        self._lock = threading.Lock()

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
            record.update(fields)
            line = json.dumps(record, default=str)
        else:
            parts = ["%s %-7s %s" % (stamp, level.upper(), message)]
            for key, value in fields.items():
                if value is None:
                    continue
                value = str(value)
                if not value or " " in value or '"' in value or "=" in value:
                    value = json.dumps(value)
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
    # Acks of jobs shorter than this ride along with the next claim (one
    # commit per batch); slower jobs are acknowledged as soon as they finish.
    ack_delay_seconds = 0.005
    # How long a handler that ignores its timeout may keep running before the
    # worker records the attempt and exits so that its supervisor restarts it.
    timeout_grace = 10.0
    poll_interval = 0.01

    def __init__(self, queue, queues=("default",), tries=None, backoff=None, timeout=None,
                 sleep=3.0, memory=None, log=None):
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
        self.processed = 0
        self.exit_code = 0
        self._stop = False
        self._sigints = 0
        self._conn = None
        self._held = []           # reserved, not started
        self._running = None      # the Job whose handler runs
        self._acks = []           # tokens of finished jobs not yet deleted
        self._lock = threading.Lock()
        self._avg = None          # moving average of handler seconds
        self._timed_out = False
        self._hard_deadline = None
        self._heart = None
        self._locked_since = None
        self._last_rescue = 0.0
        self._main_thread = False

    # -- control ---------------------------------------------------------

    def stop(self):
        """Ask the worker to exit after the current job (what SIGTERM does)."""
        self._stop = True

    def _on_signal(self, signum, frame):
        import signal
        if signum == signal.SIGINT:
            self._sigints += 1
        if self._sigints >= 2 and self._running is not None:
            self.log.warning("second interrupt: stopping the job now", job=self._running.id)
            self._hard_deadline = time.monotonic() + 2.0
            raise _Abort()
        if not self._stop:
            self.log.info("stopping after the current job", signal=signum)
        self._stop = True

    def _on_alarm(self, signum, frame):
        if self._running is not None and not self._timed_out:
            self._timed_out = True
            self._hard_deadline = time.monotonic() + self.timeout_grace
            raise JobTimeout("job ran longer than its timeout")

    # -- the loop ----------------------------------------------------------

    def run(self, once=False, max_jobs=None, max_time=None, stop_when_empty=False):
        """Process jobs until stopped; returns the number of jobs handled.

        `once` handles at most one job. `max_jobs`, `max_time` (seconds) and
        `stop_when_empty` end the loop after the current job. SIGTERM and
        SIGINT (when run in the main thread) finish the current job first.
        """
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
        try:
            self._connect_with_backoff()
            while not self._stop:
                if limit is not None and self.processed >= limit:
                    break
                if max_time is not None and time.monotonic() - started >= max_time:
                    break
                if not self._held:
                    want = self._batch_size(None if limit is None else limit - self.processed)
                    if not self._claim(want):
                        if once or stop_when_empty:
                            break
                        self._idle(started, max_time)
                        continue
                with self._lock:
                    current = self._held.pop(0)
                self._process(current)
                self.processed += 1
                if self.memory and self._over_memory():
                    break
        except _Abort:
            pass
        finally:
            self._shutdown()
            if self._main_thread:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return self.processed

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
        acks = list(self._acks)
        jobs, lost = self._db(lambda c: self.queue.reserve(c, self.queues, want, acks, rescue))
        self._acked(acks, lost)
        for j in jobs:
            j.worker = self
        with self._lock:
            self._held.extend(jobs)
        return bool(jobs)

    def _acked(self, sent, lost):
        with self._lock:
            del self._acks[:len(sent)]
        for token in lost:
            self.log.warning("reservation lost before the job was acknowledged; it will run again",
                             job=token[0], attempt=token[1])

    def _flush_acks(self):
        if self._acks:
            acks = list(self._acks)
            lost = self._db(lambda c: self.queue.ack(c, acks))
            self._acked(acks, lost)

    def _idle(self, started, max_time):
        """Wait until a job may be ready: a commit by someone else, a delayed job's
        time, the next rescue, `sleep` seconds, or a stop."""
        due = self._db(lambda c: self.queue.next_due(c, self.queues))
        wait = self.sleep if due is None else max(0.0, min(self.sleep, due))
        deadline = time.monotonic() + wait
        if max_time is not None:
            deadline = min(deadline, started + max_time)
        if self.queue.dialect is _Postgres:
            self._wait_notify(deadline)
        else:
            self._wait_sqlite(deadline)

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

    def _wait_notify(self, deadline):
        import select
        listener = self.resources.get("_listener")
        if listener is None:
            try:
                listener = self.queue.connect()
                cur = listener.cursor()
                cur.execute('LISTEN "%s"' % self.queue.channel)
                cur.close()
            except (QueueError,) + self.queue._errors():
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                return
            self.resources["_listener"] = listener
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
            self.resources.pop("_listener", None)
            self.queue.discard(listener)
            return True
        return any(not n or n in self.queues for n in names)

    def _over_memory(self):
        rss = _rss_mb()
        if rss > self.memory:
            self.log.warning("memory limit reached: exiting so the supervisor restarts the worker",
                             rss_mb=round(rss, 1), limit_mb=self.memory)
            return True
        return False

    # -- one job -----------------------------------------------------------

    def _settings(self, job):
        """(max tries, backoff list, timeout) for a job: payload over handler over worker."""
        entry = _registry.get(job.name)
        payload = job.payload or {}
        tries = payload.get("maxTries") or (entry and entry[1]) or self.tries
        backoff = payload.get("backoff") or (entry and entry[2])
        timeout = payload.get("timeout")
        if timeout is None:
            timeout = entry[3] if entry and entry[3] is not None else self.timeout
        try:
            tries = _int_setting("maxTries", tries, 1)
            backoff = _backoff_setting("backoff", backoff) if backoff else self.backoff
            timeout = _int_setting("timeout", timeout, 0)
        except ConfigError:
            return self.tries, self.backoff, self.timeout
        return tries, backoff, timeout

    def _process(self, job):
        import signal
        tries, backoff, timeout = self._settings(job)
        job.started = time.monotonic()
        outcome = None
        try:
            if job.error:
                raise PermanentError(job.error)
            if job.attempts > tries:
                raise PermanentError(
                    "attempt %d of %d: the job was reserved again after its last attempt's worker"
                    " died or lost the reservation (timed out or killed)" % (job.attempts, tries))
            entry = _registry.get(job.name) or _aliases().get(job.name)
            if entry is None:
                raise PermanentError("unknown job %r: no handler is registered under that name"
                                     " (start the worker with --import MODULE)" % job.name)
            if not isinstance(job.data, dict):
                raise PermanentError("job data must be a JSON object")
            self._timed_out = False
            _current.job = job
            self._running = job
            try:
                if timeout and self._main_thread:
                    signal.setitimer(signal.ITIMER_REAL, timeout)
                entry[0](job.data)
            finally:
                if timeout and self._main_thread:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                self._running = None
                _current.job = None
            if self._timed_out:
                raise JobTimeout("job ran longer than its timeout (%ss)" % timeout)
        except _Abort:
            self._finish(job, "released", delay=0, reason="interrupted", uncount=True)
            self.exit_code = 130
            raise
        except PermanentError as exc:
            outcome = ("failed", exc)
        except JobTimeout as exc:
            outcome = ("retry", JobTimeout("job ran longer than its timeout (%ss)" % timeout))
            self._hard_deadline = None
        except BaseException as exc:   # a handler's SystemExit counts as a failure too
            outcome = ("retry", exc)
        finally:
            self._hard_deadline = None
        elapsed = time.monotonic() - job.started
        self._avg = elapsed if self._avg is None else self._avg * 0.8 + elapsed * 0.2
        if outcome is None:
            with self._lock:
                self._acks.append(job.token)
            if elapsed >= self.ack_delay_seconds or not self._held:
                self._flush_acks()
            self._log_job(job, "done", elapsed, tries)
            return
        kind, exc = outcome
        if kind == "retry" and job.attempts < tries:
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
            ok, lost = self._db(lambda c: self.queue.fail(c, job.token, uuid, text, acks))
            reason = _first_line(exc)
        else:
            ok, lost = self._db(lambda c: self.queue.release(c, job.token, delay, uncount, acks))
        self._acked(acks, lost)
        if not ok:
            self.log.warning("reservation lost: another worker took the job over; outcome not"
                             " recorded", job=job.id, name=job.name, attempt=job.attempts)
            return
        self._log_job(job, outcome, elapsed, tries, delay=delay if outcome == "released" else None,
                      reason=reason)

    def _log_job(self, job, outcome, elapsed, tries, delay=None, reason=None):
        self.log.info("job", id=job.id, name=job.name, queue=job.queue,
                      attempt="%d/%d" % (job.attempts, tries or self.tries), outcome=outcome,
                      delay=delay, ms="%.1f" % ((elapsed or 0) * 1000), reason=reason)

    # -- the database connection -------------------------------------------

    def _connect_with_backoff(self):
        self._db(lambda c: None)

    def _db(self, action):
        """Run action(conn), reconnecting with backoff while the database is away.

        A lost connection or a lock held past the busy timeout is waited out,
        logged once, not a crash. A missing table is not retried.
        """
        pause = 0.1
        complained = False
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
                if not isinstance(exc, DatabaseError):
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
                    listener = self.resources.pop("_listener", None)
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

    def held_tokens(self):
        """Tokens of every job this worker holds: waiting, running and finished-unacked."""
        with self._lock:
            tokens = [j.token for j in self._held] + list(self._acks)
            if self._running is not None:
                tokens.append(self._running.token)
        return tokens


def _format_exception(exc):
    import traceback
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text.strip() or repr(exc)


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

    def stop(self):
        self._done.set()
        self.join(5)
        if self._conn is not None:
            self.worker.queue.discard(self._conn)
            self._conn = None

    def run(self):
        last = time.monotonic()
        while not self._done.wait(min(self.interval, 0.5)):
            worker = self.worker
            deadline = worker._hard_deadline
            if deadline is not None and time.monotonic() > deadline and worker._main_thread:
                self._hard_exit()
            if time.monotonic() - last >= self.interval:
                last = time.monotonic()
                tokens = worker.held_tokens()
                if tokens:
                    self._touch(tokens)

    def _touch(self, tokens):
        worker = self.worker
        try:
            if self._conn is None:
                self._conn = worker.queue.connect()
            lost = worker.queue.touch(self._conn, tokens)
        except QueueError as exc:
            worker.log.warning("heartbeat failed; retrying", error=_first_line(exc))
            if self._conn is not None:
                worker.queue.discard(self._conn)
                self._conn = None
            return
        for token in lost:
            worker.log.warning("reservation lost while held (expired and taken over?)",
                               job=token[0], attempt=token[1])

    def _hard_exit(self):
        """The handler ignored its interruption: record the attempt and end the process."""
        worker = self.worker
        running = worker._running
        worker.log.error("handler did not stop after its timeout or interrupt; recording the"
                         " attempt and exiting so that the supervisor restarts the worker",
                         job=getattr(running, "id", None))
        try:
            if self._conn is None:
                self._conn = worker.queue.connect()
            if running is not None:
                tries, backoff, _ = worker._settings(running)
                if running.attempts >= tries:
                    worker.queue.fail(self._conn, running.token, running.uuid or _uuid4(),
                                      "JobTimeout: the handler did not stop after its timeout")
                else:
                    delay = backoff[min(running.attempts - 1, len(backoff) - 1)]
                    worker.queue.release(self._conn, running.token, delay)
            if worker._acks:
                worker.queue.ack(self._conn, list(worker._acks))
            for held in list(worker._held):
                worker.queue.release(self._conn, held.token, 0, True)
        except Exception as exc:
            worker.log.error("could not record the attempt", error=_first_line(exc))
        os._exit(1)


###############################################################################
# Jobs and email ##############################################################
###############################################################################

def _aliases():
    """Job names the seed app wrote, mapped to the handlers that serve them."""
    return {}


def queue_email(to, subject, text=None, html=None, queue_obj=None, **extra):
    """Enqueue a `send_email` job on the "emails" queue; returns its id."""
    raise NotImplementedError


def queue_template_email(to, template, variables=None, queue_obj=None, **extra):
    """Enqueue a `send_template_email` job on the "emails" queue; returns its id."""
    raise NotImplementedError


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
    import copy
    import random
    import shutil
    import tempfile
    n, k = args.jobs, args.workers
    config = copy.copy(config)
    dialect, target, _ = _parse_url(config.database_url)
    workdir = None
    if dialect is _SQLite and config.database_url == _DEFAULT_URL:
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
    logdir = tempfile.mkdtemp(prefix="dbqueue-bench-logs-")
    config.table = "dbqueue_bench_%d" % os.getpid()
    config.failed_table = config.table + "_failed"
    floor_table = config.table + "_floor"
    env = dict(os.environ, QUEUE_DATABASE_URL=config.database_url, QUEUE_TABLE=config.table,
               QUEUE_FAILED_TABLE=config.failed_table)
    queue = Queue(config=config)
    floor_conn = None
    rows = []
    try:
        _bench_progress("creating tables %s" % config.table)
        queue.migrate()
        conn = queue._conn()
        floor_conn = queue.connect()
        cur = floor_conn.cursor()
        for statement in dialect.ddl(floor_table, floor_table + "_failed"):
            cur.execute(statement)
        if dialect is _SQLite:
            import sqlite3
            sync = cur.execute("PRAGMA synchronous").fetchone()[0]
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            settings = "SQLite %s, journal_mode=%s, synchronous=%s" % (
                sqlite3.sqlite_version, mode, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(
                    sync, sync))
        else:
            cur.execute("SELECT current_setting('server_version'),"
                        " current_setting('synchronous_commit')")
            version, sync = cur.fetchone()
            settings = "PostgreSQL %s, synchronous_commit=%s" % (version.split()[0], sync)
        cur.close()
        # Is any job left? One index probe from the top, where the drain
        # finishes last (COUNT(*) would read the whole backlog every 5 ms).
        left_sql = "SELECT id FROM %s ORDER BY id DESC LIMIT 1" % _quote(config.table)

        def any_left():
            c = conn.cursor()
            c.execute(left_sql)
            value = c.fetchone() is not None
            c.close()
            return value

        def empty_table():
            c = conn.cursor()
            c.execute("DELETE FROM %s" % _quote(config.table))
            c.close()

        # floor and W1, interleaved in blocks so that a noisy disk hits both alike
        datas = [_bench_data(i) for i in range(n)]
        texts = [queue.payload(_BENCH_JOB, d) for d in datas]
        floor_sql = dialect.prepare(
            "INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
            " created_at) VALUES ('bench', :payload, 0, NULL, :now, :now)", floor_table)[0]
        floor_s = push_s = 0.0
        stamp = int(time.time())
        for start in range(0, n, 250):
            _bench_progress("W1 push, one commit each: %d/%d" % (start, n))
            fcur = floor_conn.cursor()
            t0 = time.perf_counter()
            for text in texts[start:start + 250]:
                fcur.execute(floor_sql, (text, stamp, stamp))
            t1 = time.perf_counter()
            for data in datas[start:start + 250]:
                queue.push(_BENCH_JOB, data, queue="bench")
            t2 = time.perf_counter()
            fcur.close()
            floor_s += t1 - t0
            push_s += t2 - t1
        rows.append(("floor", "bare INSERT + COMMIT loop, same connection settings", n, floor_s, ""))
        rows.append(("W1", "push(), one commit each", n, push_s,
                     "%.0f%% of the floor" % (100.0 * floor_s / push_s)))
        empty_table()

        bulk = 4 * n
        payload_data = [_bench_data(i) for i in range(min(bulk, 1000))]
        t0 = time.perf_counter()
        for start in range(0, bulk, 1000):
            _bench_progress("W2 push_many, 1000 per call: %d/%d" % (start, bulk))
            queue.push_many(_BENCH_JOB, payload_data[:min(1000, bulk - start)], queue="bench")
        rows.append(("W2", "push_many(), 1000 per call", bulk, time.perf_counter() - t0, ""))
        empty_table()

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
    finally:
        _bench_progress("cleaning up")
        try:
            if floor_conn is not None:
                cur = floor_conn.cursor()
                for table in (config.table, config.failed_table, floor_table,
                              floor_table + "_failed"):
                    cur.execute("DROP TABLE IF EXISTS %s" % _quote(table))
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


###############################################################################
# Command line ################################################################
###############################################################################

class _UsageError(Exception):
    pass


def _parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise _UsageError("%s: %s" % (self.prog, message))

    common = Parser(add_help=False)
    common.add_argument("--env-file", metavar="PATH", help="read settings from this file"
                        " instead of ./.env")
    common.add_argument("--database-url", metavar="URL", help="overrides QUEUE_DATABASE_URL")

    top = Parser(prog="dbqueue", description="A database-backed job queue and worker.",
                 formatter_class=argparse.RawDescriptionHelpFormatter,
                 epilog="example:\n  python dbqueue.py work --queue=emails,default"
                        " --import myapp.jobs\n\n`python dbqueue.py COMMAND --help` shows each"
                        " command's options.")
    top.add_argument("--version", action="version", version="dbqueue " + __version__)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def command(name, help, example):
        return sub.add_parser(name, help=help, description=help, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="example:\n  " + example)

    p = command("migrate", "create or upgrade the queue tables (idempotent)",
                "python dbqueue.py migrate --database-url postgresql://app@/appdb")
    p.add_argument("--print", action="store_true", help="show the SQL instead of running it")
    p.add_argument("--all", action="store_true", help="with --print: every supported database")

    p = command("work", "process jobs until stopped",
                "python dbqueue.py work --queue=emails,default --import myapp.jobs --max-time 3600")
    p.add_argument("--queue", default="default", help="queues in priority order, comma separated"
                   " (default: default)")
    p.add_argument("--once", action="store_true", help="handle at most one job, then exit")
    p.add_argument("--max-jobs", type=_nonneg_int, metavar="N", help="exit after N jobs")
    p.add_argument("--max-time", type=_nonneg_float, metavar="S", help="exit after S seconds")
    p.add_argument("--sleep", type=_nonneg_float, default=3.0, metavar="S",
                   help="longest wait between looks at an idle queue (default 3)")
    p.add_argument("--stop-when-empty", action="store_true", help="exit when no job is ready")
    p.add_argument("--timeout", type=_nonneg_int, metavar="S",
                   help="seconds one job may run, 0 for no limit (default QUEUE_TIMEOUT)")
    p.add_argument("--tries", type=_pos_int, metavar="N",
                   help="attempts before a job fails (default QUEUE_MAX_ATTEMPTS)")
    p.add_argument("--backoff", metavar="S,S", help="seconds before retries, e.g. 10,60")
    p.add_argument("--memory", type=_pos_int, metavar="MB",
                   help="exit after the current job when RSS passes MB")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE to register its handlers (repeatable)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("-v", "--verbose", action="store_true", help="also log debug lines")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")

    p = command("push", "enqueue a job from a shell or cron; prints its id",
                "python dbqueue.py push send_email --queue emails --data"
                " '{\"to\": \"a@example.com\", \"subject\": \"Hi\", \"text\": \"Hello\"}'")
    p.add_argument("job", help="the registered job name")
    p.add_argument("--data", default="{}", help="the job's data as a JSON object")
    p.add_argument("--queue", default="default")
    p.add_argument("--delay", type=_nonneg_int, default=0, metavar="S")

    p = command("stats", "ready, delayed, reserved, expired and failed jobs per queue",
                "python dbqueue.py stats --format prometheus > /var/lib/node_exporter/dbqueue.prom")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true")
    group.add_argument("--format", choices=("table", "json", "prometheus"), default="table")

    p = command("health", "exit 0 when the queue is healthy, else 1 with the reasons",
                "python dbqueue.py health --max-ready 1000 --max-age 300 --max-failed 0")
    p.add_argument("--max-ready", type=_nonneg_int, metavar="N")
    p.add_argument("--max-age", type=_nonneg_int, metavar="S")
    p.add_argument("--max-failed", type=_nonneg_int, metavar="N")

    p = command("failed", "list failed jobs", "python dbqueue.py failed --queue emails")
    p.add_argument("--queue")
    p.add_argument("--json", action="store_true")

    p = command("retry", "move failed jobs back to the queue with attempts reset",
                "python dbqueue.py retry all --queue emails")
    p.add_argument("ids", nargs="+", metavar="ID|all")
    p.add_argument("--queue")

    p = command("forget", "delete failed jobs", "python dbqueue.py forget 12 13")
    p.add_argument("ids", nargs="+", type=_pos_int, metavar="ID")

    p = command("flush", "delete failed jobs (older than H hours)",
                "python dbqueue.py flush --hours 168")
    p.add_argument("--hours", type=_nonneg_float, metavar="H")

    p = command("clear", "delete the waiting jobs of a queue",
                "python dbqueue.py clear --queue default --force")
    p.add_argument("--queue", required=True)
    p.add_argument("--force", action="store_true", help="do not ask")

    p = command("bench", "measure enqueue, drain and latency on the configured database",
                "python dbqueue.py bench --jobs 5000 --workers 2")
    p.add_argument("--jobs", type=_pos_int, default=5000, metavar="N")
    p.add_argument("--workers", type=_pos_int, default=2, metavar="K")
    return top


def _number(kind, minimum, value):
    import argparse
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % value)
    if not number >= minimum or number in (float("inf"),):
        raise argparse.ArgumentTypeError("%r must be >= %s" % (value, minimum))
    return number


def _nonneg_int(value):
    return _number(int, 0, value)


def _pos_int(value):
    return _number(int, 1, value)


def _nonneg_float(value):
    return _number(float, 0, value)


def _err(message, stream=None):
    (stream or sys.stderr).write("dbqueue: %s\n" % message)


def main(argv=None):
    """The command line; returns the exit code (0 ok, 1 failure, 2 usage or configuration)."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        _err(str(exc))
        return 2
    except SystemExit as exc:   # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        config = Config.from_env(env_file=args.env_file)
        if args.database_url:
            _parse_url(args.database_url)
            config.database_url = args.database_url
        handler = _COMMANDS[args.command]
        return handler(args, config)
    except ConfigError as exc:
        _err(str(exc))
        return 2
    except QueueError as exc:
        _err(_first_line(exc))
        return 1
    except KeyboardInterrupt:
        return 130


def _cmd_migrate(args, config):
    if args.print:
        dialects = (_SQLite, _Postgres) if args.all else (_parse_url(config.database_url)[0],)
        out = []
        for dialect in dialects:
            out.append("-- %s (schema version %d)\n" % (dialect.name, _SCHEMA_VERSION))
            out.append(schema_sql(dialect, config.table, config.failed_table))
        sys.stdout.write("\n".join(out))
        return 0
    queue = Queue(config=config)
    try:
        version = queue.migrate()
    finally:
        queue.close()
    print("migrated %s: %s and %s at schema version %d"
          % (_mask_url(config.database_url), config.table, config.failed_table, version))
    return 0


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
    backoff = _backoff_setting("--backoff", args.backoff) if args.backoff else None
    level = "debug" if args.verbose else "warning" if args.quiet else "info"
    log = _Log(level=level, fmt=args.log_format)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError("--import %s: %s" % (module, exc))
    queue = Queue(config=config)
    worker = Worker(queue, queues, tries=args.tries, backoff=backoff, timeout=args.timeout,
                    sleep=args.sleep, memory=args.memory, log=log)
    log.info("worker starting", database=_mask_url(config.database_url), queues=",".join(queues),
             tries=worker.tries, backoff=",".join(map(str, worker.backoff)),
             timeout=worker.timeout, retry_after=config.retry_after, pid=os.getpid(),
             version=__version__)
    try:
        if queue.dialect is _Postgres:
            queue.check()
        worker.run(once=args.once, max_jobs=args.max_jobs, max_time=args.max_time,
                   stop_when_empty=args.stop_when_empty)
    finally:
        queue.close()
    log.info("worker stopped", processed=worker.processed)
    return worker.exit_code


def _cmd_push(args, config):
    try:
        data = json.loads(args.data)
    except ValueError as exc:
        raise ConfigError("--data is not valid JSON: %s" % exc)
    if not isinstance(data, dict):
        raise ConfigError("--data must be a JSON object")
    try:
        _queue_name(args.queue)
    except ValueError as exc:
        raise ConfigError("--queue: %s" % exc)
    queue = Queue(config=config)
    try:
        print(queue.push(args.job, data, queue=args.queue, delay=args.delay))
    finally:
        queue.close()
    return 0


def _cmd_stats(args, config):
    raise QueueError("stats: not written yet")


def _cmd_health(args, config):
    raise QueueError("health: not written yet")


def _cmd_failed(args, config):
    raise QueueError("failed: not written yet")


def _cmd_retry(args, config):
    raise QueueError("retry: not written yet")


def _cmd_forget(args, config):
    raise QueueError("forget: not written yet")


def _cmd_flush(args, config):
    raise QueueError("flush: not written yet")


def _cmd_clear(args, config):
    raise QueueError("clear: not written yet")


_COMMANDS = {
    "migrate": _cmd_migrate,
    "work": _cmd_work,
    "push": _cmd_push,
    "stats": _cmd_stats,
    "health": _cmd_health,
    "failed": _cmd_failed,
    "retry": _cmd_retry,
    "forget": _cmd_forget,
    "flush": _cmd_flush,
    "clear": _cmd_clear,
    "bench": lambda args, config: _bench(args, config),
}


if __name__ == "__main__":
    # Handler modules do `import dbqueue`; make that the module running now,
    # not a second copy with a second (empty) registry.
    sys.modules.setdefault("dbqueue", sys.modules[__name__])
    sys.exit(main())
