"""The dbqueue test suite: `python -m unittest -v test_dbqueue`.

Every queue and worker test runs against a real SQLite file and, when a
server is reachable, a real PostgreSQL through psycopg (3) and psycopg2.
Tests that need PostgreSQL, a driver or aiosmtpd skip with the reason when
they are missing; with DBQUEUE_REQUIRE_ALL=1 (set by .ci/run) those skips
are failures instead.

PostgreSQL: DBQUEUE_TEST_PG names a libpq URL of a database the tests may
create tables in, such as postgresql:///dbqueue_test?host=/var/run/postgresql
(created when missing; .ci/run sets it). Unset, no server is touched and the
PostgreSQL tests skip. Each test uses tables of its own. A run ends with one
line saying what was skipped and how to run it.

MySQL/MariaDB: DBQUEUE_TEST_MYSQL names a database the tests may create tables
in (mysql://user:password@127.0.0.1:3306/dbqueue_test); unset, they skip. They
run through PyMySQL and, when it is installed, mysqlclient (MySQLdb).
"""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from contextlib import redirect_stderr, redirect_stdout

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dbqueue  # noqa: E402

REQUIRE_ALL = os.environ.get("DBQUEUE_REQUIRE_ALL") == "1"
# Only a server the user named: a laptop's own PostgreSQL is not the suite's to use.
PG_URL = os.environ.get("DBQUEUE_TEST_PG") or None
PG_HINT = ("PostgreSQL tests: set DBQUEUE_TEST_PG to a database they may create tables in,"
           " e.g. DBQUEUE_TEST_PG=postgresql:///dbqueue_test?host=/var/run/postgresql")
# No default either: the MySQL/MariaDB tests only touch a server someone named.
MYSQL_URL = os.environ.get("DBQUEUE_TEST_MYSQL", "")


def need(condition, reason):
    """Skip (or, under DBQUEUE_REQUIRE_ALL=1, fail) when something external is missing."""
    if condition:
        return
    if REQUIRE_ALL:
        raise AssertionError("required by DBQUEUE_REQUIRE_ALL but missing: " + reason)
    raise unittest.SkipTest(reason)


def wait_for(predicate, timeout=10.0, interval=0.01, message="condition"):
    """Poll `predicate` until it returns a true value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, message))
        time.sleep(interval)


def in_threads(target, count, timeout=60.0):
    """Run target() in `count` threads at once; returns the exceptions they raised."""
    errors = []

    def run():
        try:
            target()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


_pg_state = {}


def pg_available(driver):
    """None when PostgreSQL through `driver` can be used, else the reason it cannot."""
    key = driver
    if key in _pg_state:
        return _pg_state[key]
    reason = None
    if PG_URL is None:
        _pg_state[key] = PG_HINT
        return PG_HINT
    try:
        module = __import__(driver)
    except ImportError:
        reason = "PostgreSQL driver %s is not installed (pip install %s)" % (
            driver, "psycopg[binary]" if driver == "psycopg" else "psycopg2-binary")
    else:
        try:
            _ensure_pg_database(module)
        except Exception as exc:  # any failure to reach the server is a reason to skip
            reason = "PostgreSQL is not reachable at %s: %s" % (PG_URL, str(exc).strip()[:200])
    _pg_state[key] = reason
    return reason


def _ensure_pg_database(module):
    try:
        conn = _pg_connect(module, PG_URL)
        conn.close()
        return
    except module.Error:
        pass
    # Create the database through the maintenance database.
    base, _, rest = PG_URL.partition("://")
    path, _, query = rest.partition("?")
    host, _, dbname = path.partition("/")
    admin = "%s://%s/postgres%s" % (base, host, "?" + query if query else "")
    conn = _pg_connect(module, admin)
    try:
        cur = conn.cursor()
        cur.execute('CREATE DATABASE "%s"' % dbname)
    except module.Error:
        pass  # created meanwhile by another run
    finally:
        conn.close()
    _pg_connect(module, PG_URL).close()


def _pg_connect(module, url):
    if module.__name__ == "psycopg2":
        conn = module.connect(url)
        conn.autocommit = True
        return conn
    return module.connect(url, autocommit=True)


_table_counter = [0]


def unique_table():
    _table_counter[0] += 1
    return "t%d_%d_%d" % (os.getpid(), int(time.time() * 1000) % 100000000, _table_counter[0])


class Backend:
    """One database to test on: a temp SQLite file, or PostgreSQL with one driver."""

    name = "sqlite"
    driver = None

    def __init__(self, testcase):
        self.testcase = testcase
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        testcase.addCleanup(shutil.rmtree, self.tmp, True)
        self.table = unique_table()
        self.failed_table = self.table + "_failed"
        self.url = self.make_url()

    def make_url(self):
        return "sqlite:///" + os.path.join(self.tmp, "queue.db")

    def env(self, **extra):
        """Environment variables for a subprocess or `main([...])` on this backend."""
        env = {"QUEUE_DATABASE_URL": self.url, "QUEUE_TABLE": self.table,
               "QUEUE_FAILED_TABLE": self.failed_table}
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def config(self, **settings):
        config = dbqueue.Config(database_url=self.url, table=self.table,
                                failed_table=self.failed_table)
        for key, value in settings.items():
            setattr(config, key, value)
        return config

    def queue(self, clock=None, migrate=True, **settings):
        q = dbqueue.Queue(config=self.config(**settings), clock=clock)
        self.testcase.addCleanup(q.close)
        if migrate:
            q.migrate()
        return q

    def raw(self, sql, params=()):
        """Run SQL directly on the database (outside dbqueue); returns fetched rows."""
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(sql.format(jobs='"%s"' % self.table, failed='"%s"' % self.failed_table),
                        params)
            rows = list(cur.fetchall()) if cur.description else []
            if self.name == "sqlite":
                conn.commit()
            return rows
        finally:
            conn.close()

    def connect(self):
        import sqlite3
        return sqlite3.connect(self.url[len("sqlite:///"):], timeout=10)

    @property
    def param(self):
        return "?"


class PsycopgBackend(Backend):
    name = "postgresql"
    driver = "psycopg"

    def __init__(self, testcase):
        need(pg_available(self.driver) is None, pg_available(self.driver) or "")
        super().__init__(testcase)
        testcase.addCleanup(self.drop)

    def make_url(self):
        base, _, rest = PG_URL.partition("://")
        return "%s+%s://%s" % (base, self.driver, rest)

    def connect(self):
        return _pg_connect(__import__(self.driver), PG_URL)

    @property
    def param(self):
        return "%s"

    def drop(self):
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute('DROP TABLE IF EXISTS "%s", "%s"' % (self.table, self.failed_table))
            cur.execute("DELETE FROM dbqueue_migrations WHERE tbl = %s", (self.table,))
        except Exception:
            pass
        finally:
            conn.close()


class Psycopg2Backend(PsycopgBackend):
    driver = "psycopg2"


# A transaction-mode PgBouncer in front of that server (.ci/run starts one):
# DBQUEUE_TEST_PGBOUNCER names the database through it, DBQUEUE_TEST_PG_TCP
# the same database directly (what QUEUE_LISTEN_URL names). Unset, they skip.
PGBOUNCER_URL = os.environ.get("DBQUEUE_TEST_PGBOUNCER") or None
PG_TCP_URL = os.environ.get("DBQUEUE_TEST_PG_TCP") or None
PGBOUNCER_HINT = ("PgBouncer tests: set DBQUEUE_TEST_PGBOUNCER to a database behind a"
                  " transaction-mode PgBouncer, e.g. postgresql://user:pass@127.0.0.1:6432/db")


def pgbouncer_available(driver):
    """None when the PgBouncer at DBQUEUE_TEST_PGBOUNCER can be used, else the reason."""
    key = ("pgbouncer", driver)
    if key not in _pg_state:
        reason = None if PGBOUNCER_URL else PGBOUNCER_HINT
        if reason is None:
            try:
                _pg_connect(__import__(driver), PGBOUNCER_URL).close()
            except ImportError:
                reason = "PostgreSQL driver %s is not installed" % driver
            except Exception as exc:  # any failure to reach it is a reason to skip
                reason = "PgBouncer is not reachable at %s: %s" % (
                    dbqueue._mask_url(PGBOUNCER_URL), str(exc).strip()[:200])
        _pg_state[key] = reason
    return _pg_state[key]


class PgBouncerPsycopgBackend(PsycopgBackend):
    """PostgreSQL through PgBouncer in transaction mode, with ?pooler=transaction."""

    suffix = "PgBouncerPsycopg"
    pooled = True

    def __init__(self, testcase):
        need(pgbouncer_available(self.driver) is None, pgbouncer_available(self.driver) or "")
        Backend.__init__(self, testcase)
        testcase.addCleanup(self.drop)

    def make_url(self):
        base, _, rest = PGBOUNCER_URL.partition("://")
        return url_with("%s+%s://%s" % (base, self.driver, rest), "pooler=transaction")

    def connect(self):
        # Through the bouncer too: one statement per connection needs no session.
        return _pg_connect(__import__(self.driver), PGBOUNCER_URL)


class PgBouncerPsycopg2Backend(PgBouncerPsycopgBackend):
    suffix = "PgBouncerPsycopg2"
    driver = "psycopg2"


PGBOUNCER_BACKENDS = [PgBouncerPsycopgBackend, PgBouncerPsycopg2Backend]


_mysql_state = {}


def mysql_available(driver):
    """None when MySQL/MariaDB through `driver` can be used, else the reason it cannot."""
    if driver in _mysql_state:
        return _mysql_state[driver]
    reason = None
    if not MYSQL_URL:
        reason = ("MySQL/MariaDB is not available: DBQUEUE_TEST_MYSQL is not set (a database the"
                  " tests may create tables in: mysql://user:password@127.0.0.1:3306/dbqueue_test)")
    else:
        try:
            __import__(driver)
        except ImportError:
            reason = "MySQL driver %s is not installed (pip install %s)" % (
                driver, "PyMySQL" if driver == "pymysql" else "mysqlclient")
        else:
            try:
                _mysql_connect(driver).close()
            except Exception as exc:  # any failure to reach the server is a reason to skip
                reason = "MySQL/MariaDB is not reachable at %s: %s" % (
                    dbqueue._mask_url(MYSQL_URL), str(exc).strip()[:200])
    _mysql_state[driver] = reason
    return reason


# MySQL 8.0.3 removed tx_isolation for transaction_isolation; MariaDB
# before 11.1 has only tx_isolation: ask for whichever the server has.
_ISOLATION_VARIABLES = ("SHOW VARIABLES WHERE Variable_name IN"
                        " ('tx_isolation', 'transaction_isolation')")


def _mysql_connect(driver, url=None):
    """A raw autocommit connection (dbqueue's own session settings) to the test server."""
    target = dbqueue._MySQL.parse((url or MYSQL_URL).partition("://")[2])
    return dbqueue._MySQL.connect(target, __import__(driver))


class MariaDBBackend(Backend):
    """MySQL 8 or MariaDB (CI: MariaDB 10.11) at DBQUEUE_TEST_MYSQL, through PyMySQL."""

    name = "mysql"
    driver = "pymysql"

    def __init__(self, testcase):
        need(mysql_available(self.driver) is None, mysql_available(self.driver) or "")
        super().__init__(testcase)
        testcase.addCleanup(self.drop)

    def make_url(self):
        return "mysql+%s://%s" % (self.driver.lower(), MYSQL_URL.partition("://")[2])

    def connect(self):
        conn = _mysql_connect(self.driver)
        # The tests' own SQL quotes names as "jobs", as on the other databases.
        cur = conn.cursor()
        cur.execute("SET SESSION sql_mode = CONCAT_WS(',', @@sql_mode, 'ANSI_QUOTES')")
        cur.close()
        return conn

    @property
    def param(self):
        return "%s"

    def drop(self):
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute('DROP TABLE IF EXISTS "%s", "%s"' % (self.table, self.failed_table))
            cur.execute("DELETE FROM dbqueue_migrations WHERE tbl = %s", (self.table,))
        except Exception:
            pass
        finally:
            conn.close()

    def app_connect(self):
        """A connection as an app opens it: the driver's defaults (autocommit off)."""
        args = dbqueue._MySQL.parse(MYSQL_URL.partition("://")[2])
        del args["url"]
        return __import__(self.driver).connect(**args)

    def fresh_database(self, name):
        """The URL of a new, empty database (dropped at cleanup)."""
        self.raw('CREATE DATABASE "%s"' % name)
        self.testcase.addCleanup(self.raw, 'DROP DATABASE IF EXISTS "%s"' % name)
        base, _, rest = self.url.partition("://")
        where, _, query = rest.partition("?")
        return "%s://%s/%s%s" % (base, where.rpartition("/")[0], name, "?" + query if query else "")


class MariaDBMySQLdbBackend(MariaDBBackend):
    driver = "MySQLdb"


# The shared suite runs once more through mysqlclient unless
# DBQUEUE_TEST_MYSQLDB=0: that second pass tests the driver, not the queue,
# so CI makes it on the oldest and the newest Python only.
BACKENDS = [Backend, PsycopgBackend, Psycopg2Backend, MariaDBBackend] + (
    [] if os.environ.get("DBQUEUE_TEST_MYSQLDB") == "0" else [MariaDBMySQLdbBackend])


def sqlite_only(test):
    """Mark a test that needs one backend only (SQLite): it is not made for the others."""
    test.sqlite_only = True
    return test


# Named groups of backends a mixin of tests is made for (on_backends below).
ALL = BACKENDS
SQLITE = [Backend]
SQLITE_PG = [Backend, PsycopgBackend]
# One backend per database: psycopg2 adds little that psycopg does not show, nor
# MySQLdb beside PyMySQL, so slow tests run on these; a new backend in BACKENDS
# for a new database gets them too.
SQLITE_PG_MARIADB = [b for b in BACKENDS if b.driver not in ("psycopg2", "MySQLdb")]
PG = [PsycopgBackend, Psycopg2Backend]
MARIADB = [MariaDBBackend, MariaDBMySQLdbBackend]
PGBOUNCER = PGBOUNCER_BACKENDS


def on_backends(mixin=None, *groups):
    """Make one TestCase per backend in `groups` (default ALL) from a mixin of tests
    that use self.db, named <Mixin without Tests><Backend suffix>Tests. Used as
    `@on_backends`, `@on_backends(SQLITE_PG)` or `on_backends(Mixin, PGBOUNCER)`."""
    if not isinstance(mixin, type):
        groups = (mixin,) + groups if mixin is not None else groups
        return lambda cls: on_backends(cls, *groups)
    module = sys.modules[mixin.__module__]
    backends = [b for group in groups or (ALL,) for b in group]
    for backend in backends:
        suffix = getattr(backend, "suffix", None) or {
            "sqlite": "SQLite", "psycopg": "Psycopg", "psycopg2": "Psycopg2",
            "pymysql": "MariaDB", "MySQLdb": "MariaDBMySQLdb"}[backend.driver or "sqlite"]
        name = mixin.__name__.replace("Tests", "") + suffix + "Tests"

        def setUp(self, _backend=backend, _mixin=mixin):
            self.db = _backend(self)
            if hasattr(_mixin, "setUp"):
                _mixin.setUp(self)

        attrs = {"setUp": setUp, "backend": backend}
        if backend.name != "sqlite":
            # Not a skip: a test that is not about the database is simply not made twice.
            attrs.update({n: None for n in dir(mixin)
                          if getattr(getattr(mixin, n, None), "sqlite_only", False)})
        cls = type(name, (mixin, unittest.TestCase), attrs)
        cls.__module__ = mixin.__module__
        setattr(module, name, cls)
    return mixin


class Clock:
    """A clock the test moves by hand, so delays and backoff need no waiting."""

    def __init__(self, start=1_800_000_000):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def quiet_log():
    return dbqueue._Log(stream=io.StringIO())


# What a developer's shell may hold that dbqueue reads: its own settings, the
# CodeIgniter app's (EMAIL_*, database.default.* and the underscore forms a shell
# can export, app.*, APP_NAME) and the dashboard's token. None reaches a test.
_SCRUBBED = ("QUEUE_", "MAIL_", "EMAIL_", "DATABASE_URL", "database.default.",
             "database_default_", "DBQUEUE_DASHBOARD_TOKEN", "app.", "app_", "APP_")


def clean_env(*also, **values):
    """os.environ without anything dbqueue reads (nor names starting with any of
    `also`), then `values` (as strings): the environment every test starts from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED + also)}
    env.update({k: str(v) for k, v in values.items()})
    return env


def run_main(argv, env=None):
    """main(argv) in-process with `env` as the environment: (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved, clean = dict(os.environ), clean_env(**(env or {}))
    cwd = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="dbqueue-cwd-")
    try:
        os.environ.clear()
        os.environ.update(clean)
        os.chdir(tmp)   # no stray .env is read, nothing is written to the repo
        with redirect_stdout(out), redirect_stderr(err):
            code = dbqueue.main(argv)
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(tmp, True)
    return code, out.getvalue(), err.getvalue()


# Handlers the tests use. Registered once; they record into RECORD.
RECORD = []


@dbqueue.job("t_record")
def _t_record(data):
    RECORD.append(data)


@dbqueue.job("t_fail")
def _t_fail(data):
    raise RuntimeError("boom %s" % data.get("n", ""))


@dbqueue.job("t_permanent")
def _t_permanent(data):
    raise dbqueue.PermanentError("this cannot work")


###############################################################################
# The queue and the worker: push, claim, retry, heartbeats, migrations ########
###############################################################################

@on_backends
class CoreTests:

    def setUp(self):
        del RECORD[:]

    def worker(self, q, queues=("default",), **kw):
        return dbqueue.Worker(q, list(queues), log=quiet_log(), **kw)

    def count(self, table="{jobs}"):
        return self.db.raw("SELECT COUNT(*) FROM %s" % table)[0][0]

    def insert_raw(self, payload, queue="default"):
        """A row written by hand, as a broken producer might write it."""
        p = self.db.param
        self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                    " created_at) VALUES (%s, %s, 0, NULL, 0, 0)" % (p, p), (queue, payload))

    # -- ordering, delay, priority -------------------------------------------

    def test_push_and_work_in_order(self):
        q = self.db.queue()
        for i in range(5):
            q.push("t_record", {"i": i})
        self.assertEqual(self.worker(q).run(stop_when_empty=True), 5)
        self.assertEqual([d["i"] for d in RECORD], [0, 1, 2, 3, 4])
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)

    def test_delay_waits_for_the_clock(self):
        clock = Clock()
        q = self.db.queue(clock=clock)
        q.push("t_record", {"i": "late"}, delay=30)
        q.push("t_record", {"i": "now"})
        self.assertEqual(self.worker(q).run(stop_when_empty=True), 1)
        self.assertEqual(RECORD, [{"i": "now"}])
        clock.advance(29)
        self.assertEqual(self.worker(q).run(stop_when_empty=True), 0)
        clock.advance(1)
        self.assertEqual(self.worker(q).run(stop_when_empty=True), 1)
        self.assertEqual(RECORD, [{"i": "now"}, {"i": "late"}])
        self.assertEqual(self.count(), 0)

    def test_earlier_available_at_runs_first(self):
        clock = Clock()
        q = self.db.queue(clock=clock)
        q.push("t_record", {"i": "b"}, delay=5)
        q.push("t_record", {"i": "a"}, delay=1)
        clock.advance(10)
        self.worker(q).run(stop_when_empty=True)
        self.assertEqual([d["i"] for d in RECORD], ["a", "b"])

    def test_queue_order_is_priority(self):
        q = self.db.queue()
        for i in range(3):
            q.push("t_record", {"i": "d%d" % i}, queue="default")
        for i in range(3):
            q.push("t_record", {"i": "e%d" % i}, queue="emails")
        q.push("t_record", {"i": "other"}, queue="other")
        self.assertEqual(self.worker(q, ["emails", "default"]).run(stop_when_empty=True), 6)
        self.assertEqual([d["i"] for d in RECORD], ["e0", "e1", "e2", "d0", "d1", "d2"])
        self.assertEqual(self.db.raw("SELECT queue FROM {jobs}"), [("other",)])

    def test_current_job_and_stop_from_a_handler(self):
        q = self.db.queue()
        ids = q.push_many("t_record", [{"i": i} for i in range(20)])
        stop_id = q.push("c_stop", {})
        later = q.push_many("t_record", [{"i": i} for i in range(20, 60)])
        w = self.worker(q)
        self.assertEqual(w.run(), 21)      # stops after c_stop, no stop_when_empty needed
        self.assertEqual([d["i"] for d in RECORD], list(range(20)))
        seen = _SEEN.pop()
        self.assertEqual((seen.id, seen.attempts, seen.queue, seen.name),
                         (stop_id, 1, "default", "c_stop"))
        self.assertIsNone(dbqueue.current_job())
        # Jobs the worker had prefetched in its batch are given back untouched.
        rows = self.db.raw("SELECT id, attempts, reserved_at FROM {jobs} ORDER BY id")
        self.assertEqual(rows, [(i, 0, None) for i in later])
        self.assertNotIn(ids[0], [r[0] for r in rows])

    def test_longest_table_name(self):
        self.db.table = (self.db.table + "_" + "x" * 60)[:54]
        self.db.failed_table = (self.db.table + "_" + "y" * 60)[:63]
        q = self.db.queue()
        q.push("t_record", {"i": 1})
        q.push_many("t_record", [{"i": 2}])
        self.assertEqual(self.worker(q).run(stop_when_empty=True), 2)
        self.assertEqual(self.count(), 0)
        with self.assertRaises(dbqueue.ConfigError):
            self.db.queue(migrate=False, table=self.db.table + "z")

    # -- failures ------------------------------------------------------------

    def test_failure_retries_then_moves_to_failed_jobs(self):
        clock = Clock()
        q = self.db.queue(clock=clock)
        q.push("t_fail", {"n": 1})
        w = self.worker(q, backoff="10,60", tries=3)
        self.assertEqual(w.run(stop_when_empty=True), 1)
        row = self.db.raw("SELECT attempts, reserved_at, available_at FROM {jobs}")[0]
        self.assertEqual(row[0], 1)
        self.assertIsNone(row[1])
        self.assertEqual(row[2], clock.now + 10)
        self.assertEqual(self.worker(q).run(stop_when_empty=True), 0)  # not due yet
        clock.advance(10)
        self.worker(q, backoff="10,60", tries=3).run(stop_when_empty=True)
        self.assertEqual(self.db.raw("SELECT available_at FROM {jobs}")[0][0], clock.now + 60)
        clock.advance(60)
        self.worker(q, backoff="10,60", tries=3).run(stop_when_empty=True)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn("RuntimeError: boom 1", failed[0]["exception"])
        self.assertIn("Traceback", failed[0]["exception"])
        # The full traceback: it names the handler's own frame.
        self.assertIn("_t_fail", failed[0]["exception"])
        self.assertEqual(json.loads(failed[0]["payload"])["data"], {"n": 1})
        self.assertEqual(failed[0]["queue"], "default")

    @sqlite_only   # payload() is the same text whatever the database
    def test_payload_is_the_laravel_shape_with_and_without_options(self):
        q = self.db.queue()
        data = {"to": "ånn@example.com", "n": [1, 2.5, None, True], "nested": {"k": "\u2028"}}
        plain = q.payload("send_email", data)
        with_options = q.payload("send_email", data, max_tries=5, backoff="5,30", timeout=7)
        for text, options in ((plain, (None, None, None)), (with_options, (5, "5,30", 7))):
            obj = json.loads(text)
            self.assertEqual(list(obj), ["uuid", "job", "data", "maxTries", "backoff", "timeout",
                                         "createdAt"])
            self.assertEqual((obj["job"], obj["data"]), ("send_email", data))
            self.assertEqual((obj["maxTries"], obj["backoff"], obj["timeout"]), options)
            self.assertRegex(obj["uuid"], r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}"
                                          r"-[0-9a-f]{12}$")
            self.assertLessEqual(abs(obj["createdAt"] - time.time()), 5)
            # Byte for byte what the general encoder writes (ASCII, no spaces).
            self.assertEqual(text, json.dumps(obj, separators=(",", ":")))
        # Options given as text (from a form, a CLI) are stored as the numbers they name.
        obj = json.loads(q.payload("send_email", {}, max_tries="5", timeout=" 7 "))
        self.assertEqual((obj["maxTries"], obj["timeout"]), (5, 7))
        with self.assertRaises(TypeError):
            q.payload("send_email", {"bad": float("nan")})
        with self.assertRaises(TypeError):
            q.payload("send_email", {"bad": object()})

    def test_last_backoff_value_repeats_and_payload_overrides(self):
        clock = Clock()
        q = self.db.queue(clock=clock)
        q.push("t_fail", {}, max_tries=4, backoff="5")
        for attempt in range(3):
            self.worker(q, backoff="10,60").run(stop_when_empty=True)
            row = self.db.raw("SELECT attempts, available_at FROM {jobs}")[0]
            self.assertEqual(row, (attempt + 1, clock.now + 5))
            clock.advance(5)
        self.worker(q, backoff="10,60").run(stop_when_empty=True)
        self.assertEqual(self.count(), 0)
        self.assertEqual(len(q.failed()), 1)

    def test_bad_jobs_fail_at_once_and_the_worker_carries_on(self):
        q = self.db.queue()
        q.push("t_permanent", {})
        q.push("c_no_such_job", {})
        self.insert_raw("{not json")
        self.insert_raw("[1, 2]")
        self.insert_raw('{"job": "t_record", "data": [1]}')
        if self.db.name == "sqlite":
            self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                        " created_at) VALUES ('default', CAST(X'7B22FF22' AS TEXT), 0, NULL, 0, 0)")
        q.push("t_record", {"i": "good"})
        w = self.worker(q, tries=5)
        handled = w.run(stop_when_empty=True)
        self.assertEqual(RECORD, [{"i": "good"}])
        self.assertEqual(self.count(), 0)
        failed = q.failed()
        self.assertEqual(len(failed), handled - 1)
        text = "\n".join(f["exception"] for f in failed)
        self.assertIn("PermanentError: this cannot work", text)
        self.assertIn("unknown job 'c_no_such_job'", text)
        self.assertIn("payload is not valid JSON", text)
        self.assertIn("payload is JSON but not an object", text)
        self.assertIn("job data must be a JSON object", text)
        if self.db.name == "sqlite":
            self.assertIn("payload is not valid UTF-8", text)
        # Every one failed on its first attempt: no retries were scheduled.
        self.assertEqual(len({f["uuid"] for f in failed}), len(failed))

    def test_job_reserved_past_its_tries_fails_saying_why(self):
        clock = Clock()
        q = self.db.queue(clock=clock, retry_after=90)
        job_id = q.push("t_record", {"i": 1}, max_tries=2)
        conn = q.connect()
        for _ in range(2):    # two workers reserve it and die
            jobs, _ = q.reserve(conn, ["default"], 1, rescue_after=90)
            self.assertEqual([j.id for j in jobs], [job_id])
            clock.advance(91)
        self.assertEqual(self.worker(q).run(once=True), 1)
        self.assertEqual(RECORD, [])
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn("attempt 3 of 2", failed[0]["exception"])
        self.assertIn("worker died", failed[0]["exception"])
        self.assertEqual(self.count(), 0)

    # -- reservations, fencing, heartbeat ---------------------------------------

    def test_expired_reservation_is_taken_over_and_the_stale_token_is_refused(self):
        clock = Clock()
        q = self.db.queue(clock=clock, retry_after=60)
        job_id = q.push("t_record", {"i": 1})
        stale, fresh = q.connect(), q.connect()
        (a,), _ = q.reserve(stale, ["default"], 1, rescue_after=60)
        self.assertEqual(a.token, (job_id, 1))
        clock.advance(60)      # not older than retry_after yet
        self.assertEqual(q.reserve(fresh, ["default"], 1, rescue_after=60)[0], [])
        clock.advance(1)
        (b,), _ = q.reserve(fresh, ["default"], 1, rescue_after=60)
        self.assertEqual(b.token, (job_id, 2))
        # The first worker wakes up: every write with its old token is refused.
        self.assertEqual(q.ack(stale, [a.token]), [a.token])
        self.assertEqual(q.release(stale, a.token, 5), (False, []))
        self.assertEqual(q.fail(stale, a.token, a.uuid, "late"), (False, []))
        self.assertEqual(q.touch(stale, [a.token]), [a.token])
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"),
                         [(2, clock.now)])
        self.assertEqual(q.failed(), [])
        # The new holder's token still works.
        self.assertEqual(q.ack(fresh, [b.token]), [])
        self.assertEqual(self.count(), 0)

    def test_worker_takes_over_an_expired_reservation(self):
        clock = Clock()
        q = self.db.queue(clock=clock, retry_after=30)
        q.push("t_record", {"i": 1})
        q.reserve(q.connect(), ["default"], 1)          # its worker dies
        self.assertEqual(self.worker(q).run(once=True), 0)
        clock.advance(31)
        self.assertEqual(self.worker(q).run(once=True), 1)
        self.assertEqual(RECORD, [{"i": 1}])
        self.assertEqual(self.count(), 0)

    def test_heartbeat_keeps_a_long_job(self):
        # Queue time is the test's clock: each step moves it by retry_after, far
        # past the reservation, and only the heartbeat (real time) can keep it.
        clock = Clock()
        q = self.db.queue(clock=clock, retry_after=1)
        job_id = q.push("c_block", {})
        _BLOCK["started"].clear()
        _BLOCK["release"].clear()
        _BLOCK["runs"] = 0
        a = self.worker(q)
        thread = threading.Thread(target=a.run, kwargs={"once": True})
        thread.start()
        self.addCleanup(thread.join, 30)
        self.addCleanup(_BLOCK["release"].set)
        self.assertTrue(_BLOCK["started"].wait(30))
        for _ in range(2):
            clock.advance(2)
            wait_for(lambda: self.db.raw("SELECT reserved_at FROM {jobs}")[0][0] == clock.now,
                     30, message="a heartbeat")
            self.assertEqual(self.worker(q).run(once=True), 0)   # B finds nothing to take
        self.assertEqual(self.db.raw("SELECT id, attempts FROM {jobs}"), [(job_id, 1)])
        _BLOCK["release"].set()
        thread.join(30)
        self.assertEqual(a.processed, 1)
        self.assertEqual(_BLOCK["runs"], 1)
        self.assertEqual(self.count(), 0)

    def test_heartbeat_reports_only_jobs_taken_from_it(self):
        clock = Clock()
        q = self.db.queue(clock=clock, retry_after=10)
        q.push_many("t_record", [{"i": 1}, {"i": 2}])
        stream = io.StringIO()
        w = dbqueue.Worker(q, ["default"], log=dbqueue._Log(stream=stream))
        conn = q.connect()
        (done, held), _ = q.reserve(conn, ["default"], 2)
        # `done` finished and was acknowledged while a heartbeat was on its way;
        # `held` waits in the worker's batch but another worker took it over.
        self.assertEqual(q.ack(conn, [done.token]), [])
        clock.advance(11)
        (thief,), _ = q.reserve(q.connect(), ["default"], 1, rescue_after=10)
        w._acks.append(done.token)
        w._held.append(held)
        heart = dbqueue._Heartbeat(w)    # not started: one beat by hand
        heart._touch(w.held_tokens())
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("reservation lost while held", lines[0])
        self.assertIn("job=%d" % held.id, lines[0])
        self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(2,)])

    # -- producing ---------------------------------------------------------------

    def app_connection(self):
        """A connection of the app's own, in its driver's default (transactional) mode."""
        if self.db.name == "sqlite":
            import sqlite3
            conn = sqlite3.connect(self.db.url[len("sqlite:///"):], timeout=10)
        elif self.db.name == "mysql":
            conn = self.db.app_connect()
        else:   # behind the pooler, the app's connection goes through it too
            conn = __import__(self.db.driver).connect(
                PGBOUNCER_URL if getattr(self.db, "pooled", False) else PG_URL)
        self.addCleanup(conn.close)
        return conn

    def test_push_with_connection_joins_the_callers_transaction(self):
        q = self.db.queue()
        app = self.app_connection()
        first = q.push("t_record", {"i": 1}, connection=app)
        self.assertIsInstance(first, int)
        self.assertEqual(self.count(), 0)          # nothing visible before the commit
        app.commit()
        self.assertEqual(self.db.raw("SELECT id FROM {jobs}"), [(first,)])
        q.push("t_record", {"i": 2}, connection=app)
        q.push_many("t_record", [{"i": 3}, {"i": 4}], connection=app)
        app.rollback()
        self.assertEqual(self.db.raw("SELECT id FROM {jobs}"), [(first,)])
        self.worker(q).run(stop_when_empty=True)
        self.assertEqual(RECORD, [{"i": 1}])

    def test_non_json_data_is_refused_at_push_and_nothing_is_written(self):
        q = self.db.queue()
        for bad in ({"x": object()}, {"x": float("nan")}, {"x": b"bytes"}):
            with self.assertRaises(TypeError):
                q.push("t_record", bad)
            with self.assertRaises(TypeError):
                q.push_many("t_record", [{"ok": 1}, bad])
        self.assertEqual(self.count(), 0)

    def test_push_many_returns_ids_in_order(self):
        q = self.db.queue()
        q.push("t_record", {"i": "before"})
        ids = q.push_many("t_record", [{"i": i} for i in range(50)], queue="bulk")
        self.assertEqual(len(ids), 50)
        rows = dict(self.db.raw("SELECT id, payload FROM {jobs} WHERE queue = 'bulk'"))
        self.assertEqual([json.loads(rows[i])["data"]["i"] for i in ids], list(range(50)))
        self.assertEqual(q.push_many("t_record", []), [])
        if self.db.name == "sqlite":
            # An app connection in autocommit mode, with another writer between
            # two of its rows: the ids still name the right rows.
            import sqlite3
            app = sqlite3.connect(self.db.url[len("sqlite:///"):], timeout=10,
                                  isolation_level=None)
            self.addCleanup(app.close)
            other = q.connect()

            def between(statement):
                if statement.startswith("INSERT"):
                    q.push("t_record", {"i": "between"}, connection=other)
            app.set_trace_callback(between)
            ids = q.push_many("t_record", [{"i": i} for i in range(3)], queue="mixed",
                              connection=app)
            app.set_trace_callback(None)
            rows = dict(self.db.raw("SELECT id, payload FROM {jobs} WHERE queue = 'mixed'"))
            self.assertEqual([json.loads(rows[i])["data"]["i"] for i in ids], [0, 1, 2])

    # -- schema ----------------------------------------------------------------

    def test_missing_tables(self):
        q = self.db.queue(migrate=False)
        if self.db.name == "sqlite":
            q.push("t_record", {"i": 1})           # SQLite creates its tables on first use
            self.assertEqual(self.count(), 1)
            return
        with self.assertRaises(dbqueue.MissingTableError) as caught:
            q.push("t_record", {})
        self.assertIn("python3 dbqueue.py migrate", str(caught.exception))
        code, out, err = run_main(["work", "--once"], self.db.env())
        self.assertEqual(code, 1, err)
        errors = [line for line in err.splitlines() if line.startswith("dbqueue:")]
        self.assertEqual(len(errors), 1, err)
        self.assertIn("python3 dbqueue.py migrate", errors[0])
        self.assertNotIn("Traceback", err)

    def test_migrate_is_idempotent(self):
        q = self.db.queue()
        q.push("t_record", {"i": 1})
        self.assertEqual(q.migrate(), dbqueue._SCHEMA_VERSION)
        code, out, err = run_main(["migrate"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(q.schema_version(), dbqueue._SCHEMA_VERSION)
        p = self.db.param
        self.assertEqual(self.db.raw("SELECT version FROM dbqueue_migrations WHERE tbl = %s" % p,
                                     (self.db.table,)), [(dbqueue._SCHEMA_VERSION,)])
        self.assertEqual(self.count(), 1)          # the data survived
        code, out, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(out, "-- %s (schema version %d): nothing to do, the tables are up to"
                         " date\n" % (self.db.name, dbqueue._SCHEMA_VERSION))

    def test_migrate_upgrades_version_1_tables_in_place(self):
        # Tables as schema version 1 made them (and as a Laravel-style app's
        # migrations make them): migrate adds the newer columns as nullable
        # ones and keeps the rows; an INSERT naming only the old columns works.
        bigint = "INTEGER" if self.db.name == "sqlite" else "BIGINT"
        auto = ("INTEGER PRIMARY KEY AUTOINCREMENT" if self.db.name == "sqlite"
                else "BIGSERIAL PRIMARY KEY")
        if self.db.name == "mysql":
            # The Laravel/CodeIgniter migration's types: unsigned INT seconds.
            bigint = "INT UNSIGNED"
            auto = "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY"
        self.db.raw("CREATE TABLE {jobs} (id %s, queue VARCHAR(255) NOT NULL, payload TEXT NOT NULL,"
                    " attempts INTEGER NOT NULL DEFAULT 0, reserved_at %s, available_at %s NOT NULL,"
                    " created_at %s NOT NULL)" % (auto, bigint, bigint, bigint))
        old = "INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at, created_at)"
        payload = json.dumps({"uuid": "u-1", "job": "t_record", "data": {"i": 1}})
        p = self.db.param
        self.db.raw(old + " VALUES (%s, %s, 0, NULL, 0, 0)" % (p, p), ("default", payload))
        q = self.db.queue(migrate=False)
        self.assertEqual(q.migrate(), dbqueue._SCHEMA_VERSION)
        self.assertEqual(q.schema_version(), dbqueue._SCHEMA_VERSION)
        names = [row[0] for row in self.db.raw(
            "SELECT reserved_until, unique_key, expires_at, queue FROM {jobs}")]
        self.assertEqual(names, [None])
        self.db.raw(old + " VALUES (%s, %s, 0, NULL, 0, 0)" % (p, p), ("default", payload))
        self.assertEqual(self.count(), 2)
        self.assertEqual(q.migrate(), dbqueue._SCHEMA_VERSION)   # and again: nothing to add

    def test_migrate_makes_a_missing_failed_table_again(self):
        q = self.db.queue()
        self.db.raw("DROP TABLE {failed}")
        code, out, err = run_main(["migrate"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {failed}"), [(0,)])
        # A new failed table beside the old jobs table is made too.
        other = self.db.failed_table + "_new"
        self.addCleanup(self.db.raw, 'DROP TABLE IF EXISTS "%s"' % other)
        code, out, err = run_main(["migrate"], self.db.env(QUEUE_FAILED_TABLE=other))
        self.assertEqual(code, 0, err)
        self.assertEqual(self.db.raw('SELECT COUNT(*) FROM "%s"' % other), [(0,)])

    def test_concurrent_migrations_on_a_fresh_database(self):
        # Two hosts running `migrate` at deploy time, on a database that has
        # no dbqueue table yet: every one succeeds and the schema is recorded once.
        # (MySQL has no per-connection default isolation to set from the URL,
        # and PgBouncer does not pass the URL's `options` on.)
        direct = self.db.name == "postgresql" and not getattr(self.db, "pooled", False)
        for isolation in ((None, "serializable") if direct else (None,)):
            with self.subTest(isolation=isolation):
                self.check_concurrent_migrations(isolation)

    def check_concurrent_migrations(self, isolation):
        url, tables = self.db.url, {}
        if self.db.name == "mysql":
            url = self.db.fresh_database("s_%s" % self.db.table)
        elif getattr(self.db, "pooled", False):
            # No fresh schema through the pooler (no `options`): fresh tables.
            tables = {"table": self.db.table + "_fresh", "failed_table": self.db.table + "_ff"}
            self.addCleanup(self.db.raw, 'DROP TABLE IF EXISTS "%(table)s", "%(failed_table)s"'
                            % tables)
        elif self.db.name != "sqlite":
            # A fresh schema: no dbqueue table exists there yet. The server's
            # default isolation must not matter (the waiting migration must see
            # the tables the first one made).
            schema = "s_%s_%s" % (self.db.table, isolation or "default")
            self.db.raw('CREATE SCHEMA "%s"' % schema)
            self.addCleanup(self.db.raw, 'DROP SCHEMA "%s" CASCADE' % schema)
            option = "options=-csearch_path%%3D%s" % schema
            if isolation:
                option += "%%20-cdefault_transaction_isolation%%3D%s" % isolation
            url = url_with(url, option)
        else:
            url = "sqlite:///" + os.path.join(self.db.tmp, "fresh.db")
        barrier = threading.Barrier(6)

        def migrate():
            q = dbqueue.Queue(config=dbqueue.Config(database_url=url, **tables))
            try:
                barrier.wait(10)
                q.migrate()
            finally:
                q.close()

        self.assertEqual(in_threads(migrate, 6), [])
        q = dbqueue.Queue(config=dbqueue.Config(database_url=url, **tables))
        self.addCleanup(q.close)
        self.assertEqual(q.schema_version(), dbqueue._SCHEMA_VERSION)
        self.assertEqual(q.push("t_record", {"i": 1}), 1)

    def test_two_workers_drain_concurrently_whatever_the_server_isolation(self):
        # On PostgreSQL the server defaults to SERIALIZABLE here: dbqueue's own
        # transactions still run as READ COMMITTED, so a claim that meets a row
        # the other worker just took skips it instead of failing.
        url = self.db.url
        pooled = getattr(self.db, "pooled", False)     # PgBouncer does not pass `options` on
        if self.db.name == "postgresql" and not pooled:
            url = url_with(url, "options=-cdefault_transaction_isolation%3Dserializable")
        q = dbqueue.Queue(config=self.db.config(database_url=url))
        self.addCleanup(q.close)
        q.migrate()
        if self.db.name == "mysql":
            with q.transaction() as cur:
                cur.execute(_ISOLATION_VARIABLES)   # this session's value
                self.assertEqual({value for _, value in cur.fetchall()}, {"READ-COMMITTED"})
        elif self.db.name != "sqlite" and not pooled:
            with q.transaction() as cur:
                cur.execute("SELECT current_setting('default_transaction_isolation'),"
                            " current_setting('transaction_isolation')")
                self.assertEqual(cur.fetchone(), ("serializable", "read committed"))
        q.push_many("t_record", [{"i": i} for i in range(400)])

        def drain():
            w = dbqueue.Worker(dbqueue.Queue(config=self.db.config(database_url=url)),
                               ["default"], log=quiet_log())
            try:
                w.run(stop_when_empty=True)
            finally:
                w.queue.close()

        self.assertEqual(in_threads(drain, 2), [])
        self.assertEqual(sorted(d["i"] for d in RECORD), list(range(400)))   # each once
        self.assertEqual(self.count(), 0)

    def test_a_transaction_a_failed_handler_left_open_is_rolled_back(self):
        # As when a JobTimeout lands just as the handler's `with q.transaction()`
        # ends: neither COMMIT nor ROLLBACK ran. On SQLite that transaction held
        # the write lock the worker then waited for, forever.
        q = self.db.queue()

        @dbqueue.job("t_open_transaction")
        def _open(data):
            cur = q.transaction().__enter__()
            q.execute(cur, "push", queue="elsewhere", payload=q.payload("t_record"), delay=0,
                      expires_at=None)
            raise RuntimeError("interrupted inside a transaction")

        self.addCleanup(dbqueue._registry.pop, "t_open_transaction", None)
        q.push("t_open_transaction", {})
        q.push("t_record", {"i": "after"})
        done = []
        w = self.worker(q, tries=1)
        t = threading.Thread(target=lambda: done.append(w.run(stop_when_empty=True)),
                             daemon=True)   # a regression hangs here: it must not hang the suite
        t.start()
        t.join(30)
        w.stop()
        self.assertEqual(done, [2])                     # it finished, and went on
        self.assertEqual(RECORD, [{"i": "after"}])
        self.assertEqual(len(q.failed()), 1)
        self.assertIn("interrupted inside a transaction", q.failed()[0]["exception"])
        # The handler's half-done write was rolled back, not committed later.
        p = self.db.param
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs} WHERE queue = %s" % p,
                                     ("elsewhere",))[0][0], 0)

    @sqlite_only   # the fallback exists for SQLite before 3.35 only
    def test_worker_without_returning(self):
        q = self.db.queue()
        q._returning = False
        for i in range(5):
            q.push("t_record", {"i": i})
        q.push("t_fail", {})
        self.assertEqual(self.worker(q, tries=1).run(stop_when_empty=True), 6)
        self.assertEqual([d["i"] for d in RECORD], [0, 1, 2, 3, 4])
        self.assertEqual(len(q.failed()), 1)
        self.assertEqual(self.count(), 0)

    # -- the work command's limits (in-process) --------------------------------

    def test_work_limits(self):
        q = self.db.queue()
        q.push_many("t_record", [{"i": i} for i in range(6)])
        env = self.db.env()
        code, _, err = run_main(["work", "--once"], env)
        self.assertEqual((code, len(RECORD)), (0, 1), err)
        code, _, err = run_main(["work", "--max-jobs", "2"], env)
        self.assertEqual((code, len(RECORD)), (0, 3), err)
        code, _, err = run_main(["work", "--memory", "1"], env)
        self.assertEqual((code, len(RECORD)), (0, 4), err)
        self.assertIn("memory limit reached", err)
        code, _, err = run_main(["work", "--stop-when-empty"], env)
        self.assertEqual((code, len(RECORD)), (0, 6), err)
        q.push("t_record", {"i": "late"}, delay=3600)
        started = time.monotonic()
        code, _, err = run_main(["work", "--max-time", "0.3", "--sleep", "0.05"], env)
        self.assertEqual((code, len(RECORD)), (0, 6), err)
        self.assertLess(time.monotonic() - started, 20)   # it did stop by itself
        self.assertIn("worker stopped", err)


# The core again, through PgBouncer in transaction mode (?pooler=transaction).
on_backends(CoreTests, PGBOUNCER)


_BLOCK = {"started": threading.Event(), "release": threading.Event(), "runs": 0}
_SOCKETS = []


@dbqueue.job("c_block")
def _c_block(data):
    _BLOCK["runs"] += 1
    _BLOCK["started"].set()
    _BLOCK["release"].wait(60)


_SEEN = []


@dbqueue.job("c_stop")
def _c_stop(data):
    job = dbqueue.current_job()
    _SEEN.append(job)
    job.worker.stop()


@dbqueue.job("c_sleep")
def _c_sleep(data):
    time.sleep(60)


@dbqueue.job("c_recv")
def _c_recv(data):
    _SOCKETS[0].recv(1)


class CoreConfigTests(unittest.TestCase):
    """Bad settings: one line naming the variable, exit 2, nothing touched."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "never.db")

    def refused(self, env, argv=("work", "--once"), names=None):
        env = dict({"QUEUE_DATABASE_URL": "sqlite:///" + self.path}, **env)
        code, out, err = run_main(list(argv), env)
        self.assertEqual(code, 2, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(names or list(env)[-1], err)
        self.assertFalse(os.path.exists(self.path), "a database file was created")
        return err

    def test_bad_settings(self):
        err = self.refused({"QUEUE_DRIVER": "redis"})
        self.assertIn("redis", err)
        self.refused({"QUEUE_MAX_ATTEMPTS": "abc"})
        self.refused({"QUEUE_MAX_ATTEMPTS": "0"})
        self.refused({"QUEUE_TIMEOUT": "-1"})
        self.refused({"QUEUE_RETRY_AFTER": "soon"})
        self.refused({"QUEUE_BACKOFF": "10,x"})
        self.refused({"QUEUE_TABLE": "jobs; DROP TABLE users"})
        self.refused({"QUEUE_FAILED_TABLE": "1failed"})
        err = self.refused({"QUEUE_TABLE": "j" * 55})
        self.assertIn("at most 54", err)
        err = self.refused({"QUEUE_DATABASE_URL": "mongodb://u:secret@host/db"})
        self.assertIn("unknown scheme", err)
        self.assertNotIn("secret", err)
        err = self.refused({"QUEUE_DATABASE_URL": "postgresql+nosuchdriver://u@host/db"})
        self.assertIn("nosuchdriver", err)
        self.refused({"QUEUE_TIMEOUT": "-1"}, argv=("push", "t_record"))
        self.refused({"QUEUE_DRIVER": "redis"}, argv=("migrate",))

    def test_missing_postgres_driver_names_pip_install(self):
        with self.assertRaises(dbqueue.ConfigError) as caught:
            dbqueue._Postgres.driver("nonexistent_mod")
        self.assertIn("pip install", str(caught.exception))
        self.assertIn("nonexistent_mod", str(caught.exception))

    def test_schema_sql_matches_the_module(self):
        code, out, err = run_main(["migrate", "--print", "--all"], {})
        self.assertEqual(code, 0, err)
        with open(os.path.join(HERE, "schema.sql"), encoding="utf-8") as fh:
            self.assertEqual(fh.read(), out, "schema.sql drifted: regenerate it with"
                             " `python3 dbqueue.py migrate --print --all > schema.sql`")


class CoreJobRegistrationTests(unittest.TestCase):
    """@dbqueue.job twice under one name warns, naming both handlers' modules;
    the same function registered again (a reload, __main__ and dbqueue) does not."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-reg-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        sys.path.insert(0, self.tmp)
        self.addCleanup(sys.path.remove, self.tmp)
        self.addCleanup(dbqueue._registry.pop, "reg_dup", None)
        for module in ("reg_first", "reg_second"):
            with open(os.path.join(self.tmp, module + ".py"), "w") as fh:
                fh.write("import dbqueue\n\n@dbqueue.job('reg_dup')\ndef handle(data):\n"
                         "    pass\n")
            self.addCleanup(sys.modules.pop, module, None)

    def test_a_second_handler_under_one_name_warns_naming_both(self):
        import importlib
        importlib.import_module("reg_first")
        with self.assertWarns(RuntimeWarning) as caught:
            importlib.import_module("reg_second")
        self.assertEqual(str(caught.warning), "dbqueue: job 'reg_dup' registered twice:"
                         " reg_second.handle replaces reg_first.handle")
        self.assertIs(dbqueue._registry["reg_dup"][0], sys.modules["reg_second"].handle)

    def test_the_same_function_again_does_not_warn(self):
        import importlib
        import warnings
        module = importlib.import_module("reg_first")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            importlib.reload(module)
            # This file as __main__ and as dbqueue: one function, two module names.
            func = dbqueue._registry["send_email"][0]
            twin = type(func)(func.__code__, func.__globals__, func.__name__)
            twin.__module__, twin.__qualname__ = "__main__", func.__qualname__
            self.addCleanup(dbqueue.job("send_email"), func)
            dbqueue.job("send_email")(twin)


class PoolerConfigTests(unittest.TestCase):
    """?pooler=transaction and QUEUE_LISTEN_URL: read, checked, and shown masked."""

    def test_the_pooler_parameter_never_reaches_the_driver(self):
        for url, dsn in (("postgresql://app:pw@pool:6432/app?pooler=transaction",
                          "postgresql://app:pw@pool:6432/app"),
                         ("postgres+psycopg2://app@pool/app?sslmode=require&pooler=transaction"
                          "&connect_timeout=5",
                          "postgresql://app@pool/app?sslmode=require&connect_timeout=5")):
            dialect, target, _ = dbqueue._parse_url(url)
            self.assertEqual((dialect, target), (dbqueue._Postgres, {"dsn": dsn, "pooled": True}))
        plain = "postgresql:///app?host=/var/run/postgresql"
        self.assertEqual(dbqueue._parse_url(plain)[1], {"dsn": plain, "pooled": False})

    def test_bad_pooler_and_listen_settings_are_one_line_exit_2(self):
        pooled = "postgresql://app:s3cret@pool:6432/app?pooler=transaction"
        for env, words in (
                ({"QUEUE_DATABASE_URL": "postgresql://app:s3cret@db/app?pooler=yes"},
                 "pooler=yes is not known"),
                ({"QUEUE_DATABASE_URL": pooled, "QUEUE_LISTEN_URL": pooled}, "through the pooler"),
                ({"QUEUE_DATABASE_URL": pooled, "QUEUE_LISTEN_URL": "mysql://app:s3cret@db/app"},
                 "postgresql://"),
                ({"QUEUE_DATABASE_URL": "sqlite:///q.db",
                  "QUEUE_LISTEN_URL": "postgresql://app:s3cret@db/app"}, "QUEUE_LISTEN_URL")):
            code, out, err = run_main(["config"], env)
            self.assertEqual((code, len(err.strip().splitlines())), (2, 1), err)
            self.assertIn(words, err)
            self.assertNotIn("s3cret", err)

    def test_config_shows_the_listen_url_masked(self):
        env = {"QUEUE_DATABASE_URL": "postgresql://app:s3cret@pool:6432/app?pooler=transaction",
               "QUEUE_LISTEN_URL": "postgresql://app:s3cret@db:5432/app"}
        code, out, err = run_main(["config", "--json"], env)
        self.assertEqual(code, 0, err)
        shown = {s["name"]: s for s in json.loads(out)["settings"]}
        self.assertEqual((shown["QUEUE_LISTEN_URL"]["value"], shown["QUEUE_LISTEN_URL"]["source"]),
                         ("postgresql://app:***@db:5432/app", "environment"))
        code, out, err = run_main(["config"], env)
        self.assertIn("postgresql://app:***@db:5432/app", out)
        self.assertNotIn("s3cret", out + err)
        self.assertNotIn("s3cret", repr(dbqueue.Config(listen_url=env["QUEUE_LISTEN_URL"])))
        code, out, err = run_main(["config"], {})
        self.assertRegex(out, r"QUEUE_LISTEN_URL\s+\"\"\s+default")


# -- worker subprocesses ------------------------------------------------------

_HANDLERS = '''
import os, sys, time
import dbqueue

dbqueue.Worker.timeout_grace = float(os.environ.get("T_GRACE", "10"))
if os.environ.get("T_MAIL_PROBE"):     # the mail outage's probe schedule, shortened
    dbqueue.Worker.mail_probe = tuple(float(s) for s in os.environ["T_MAIL_PROBE"].split(","))
OUT = os.environ["T_OUT"]


def mark(line):
    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


@dbqueue.job("p_append")
def append(data):
    mark("done %s" % data["n"])
    if data.get("sleep"):
        time.sleep(data["sleep"])


@dbqueue.job("p_until")
def until(data):
    mark("start")
    while not os.path.exists(data["flag"]):
        time.sleep(0.01)
    mark("end")


@dbqueue.job("p_crash")
def crash(data):
    mark("crash")
    os._exit(9)          # a segfault or the OOM killer, as far as the queue can tell


@dbqueue.job("p_blocked_in_c")
def blocked_in_c(data):
    import sqlite3
    mark("start")
    # Waits inside one C call (SQLite's busy handler) for a lock the test holds:
    # SIGALRM's Python handler cannot run until it returns.
    sqlite3.connect(data["lockdb"], timeout=120).execute("BEGIN IMMEDIATE")


@dbqueue.job("p_stubborn")
def stubborn(data):
    mark("start")
    while True:
        try:
            time.sleep(0.05)
        except BaseException as exc:
            mark("caught " + type(exc).__name__)
'''


class _WorkerProcesses:
    """Real `python dbqueue.py work` subprocesses; always killed in cleanup."""

    def process_setup(self):
        self.ptmp = tempfile.mkdtemp(prefix="dbqueue-proc-")
        self.addCleanup(shutil.rmtree, self.ptmp, True)
        with open(os.path.join(self.ptmp, "dbq_test_handlers.py"), "w") as fh:
            fh.write(_HANDLERS)
        self.out = os.path.join(self.ptmp, "out.txt")

    def start_worker(self, *args, **env_extra):
        env = clean_env()
        env.update(self.db.env())
        env.update({"PYTHONPATH": self.ptmp, "T_OUT": self.out})
        env.update({k: str(v) for k, v in env_extra.items()})
        self._procs = getattr(self, "_procs", 0) + 1
        return launch_worker(self, ["--sleep", "0.2", "--import", "dbq_test_handlers"]
                             + list(args), env, self.ptmp,
                             os.path.join(self.ptmp, "stderr%d.txt" % self._procs))

    def stderr(self, proc):
        return worker_stderr(proc)

    def lines(self):
        try:
            with open(self.out) as fh:
                return fh.read().splitlines()
        except FileNotFoundError:
            return []

    def finish(self, proc, timeout=30):
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("worker still running after %ss:\n%s" % (timeout, self.stderr(proc)))


@on_backends(SQLITE_PG_MARIADB)
class CoreProcessTests(_WorkerProcesses):

    def setUp(self):
        self.process_setup()

    # -- timeouts --------------------------------------------------------------

    # SIGALRM is the worker's, not the database's: one backend is enough
    # (the hard-exit test below covers PostgreSQL's release and fail).
    @sqlite_only
    def test_timeout_interrupts_sleep_and_socket_read(self):
        import socket
        clock = Clock()
        q = self.db.queue(clock=clock)
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        _SOCKETS[:] = [left]
        q.push("c_sleep", {}, timeout=1, max_tries=2, backoff="7")
        q.push("c_recv", {}, timeout=1, max_tries=1)
        w = dbqueue.Worker(q, ["default"], log=quiet_log())
        self.assertEqual(w.run(stop_when_empty=True), 2)
        # The sleeper: a failed attempt, released with backoff.
        row = self.db.raw("SELECT attempts, reserved_at, available_at FROM {jobs}")
        self.assertEqual(row, [(1, None, clock.now + 7)])
        # The socket reader: interrupted too, and out of tries.
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn("c_recv", failed[0]["payload"])
        self.assertIn("JobTimeout", failed[0]["exception"])
        self.assertIsNone(w._running)
        self.assertIsNone(dbqueue.current_job())

    def test_sigterm_finishes_the_job_then_exits_0(self):
        q = self.db.queue()
        flag = os.path.join(self.ptmp, "flag")
        job_id = q.push("p_until", {"flag": flag})
        q.push("p_append", {"n": "next"})
        proc = self.start_worker()
        wait_for(lambda: self.lines() == ["start"], 30, message="the job to start")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping after the current job" in self.stderr(proc), 30,
                 message="the worker to note SIGTERM")
        self.assertIsNone(proc.poll())          # still running the job
        open(flag, "w").close()
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertEqual(self.lines(), ["start", "end"])    # once, and not the next job
        self.assertEqual(self.db.raw("SELECT queue, attempts, reserved_at FROM {jobs}"),
                         [("default", 0, None)])
        self.assertNotIn((job_id,), self.db.raw("SELECT id FROM {jobs}"))

    def test_second_sigint_stops_at_once_and_releases_the_job(self):
        q = self.db.queue()
        job_id = q.push("p_until", {"flag": os.path.join(self.ptmp, "never")})
        proc = self.start_worker()
        wait_for(lambda: self.lines() == ["start"], 30, message="the job to start")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping after the current job" in self.stderr(proc), 30,
                 message="the worker to note the first SIGINT")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(self.finish(proc), 130, self.stderr(proc))
        self.assertEqual(self.lines(), ["start"])
        # Back in jobs, unreserved, the interrupted attempt given back.
        self.assertEqual(self.db.raw("SELECT id, attempts, reserved_at FROM {jobs}"),
                         [(job_id, 0, None)])

    @sqlite_only   # the hard exit is the worker's; the next test covers PostgreSQL
    def test_second_sigint_stops_a_handler_that_ignores_it(self):
        q = self.db.queue()
        job_id = q.push("p_stubborn", {}, timeout=0)
        proc = self.start_worker()
        wait_for(lambda: self.lines() == ["start"], 30, message="the job to start")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping after the current job" in self.stderr(proc), 30,
                 message="the worker to note the first SIGINT")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(self.finish(proc), 1, self.stderr(proc))
        self.assertIn("caught _Abort", self.lines())
        # Given back as a graceful second SIGINT would: free, the attempt not counted.
        self.assertEqual(self.db.raw("SELECT id, attempts, reserved_at FROM {jobs}"),
                         [(job_id, 0, None)])

    def test_handler_that_ignores_its_timeout_cannot_stop_the_worker(self):
        # Two workers, two stubborn jobs: one has a try left (released with
        # backoff), one is on its last (failed). Each worker exits 1.
        q = self.db.queue()
        again = q.push("p_stubborn", {}, timeout=1, max_tries=2, backoff="600")
        q.push("p_stubborn", {}, timeout=1, max_tries=1)
        procs = [self.start_worker("--once", T_GRACE="0.5") for _ in range(2)]
        for proc in procs:
            self.assertEqual(self.finish(proc), 1, self.stderr(proc))
            self.assertIn("did not stop after its timeout", self.stderr(proc))
        self.assertEqual(self.lines().count("caught JobTimeout"), 2)
        (id_, attempts, reserved_at, available_at, created_at), = self.db.raw(
            "SELECT id, attempts, reserved_at, available_at, created_at FROM {jobs}")
        self.assertEqual((id_, attempts, reserved_at), (again, 1, None))
        self.assertGreaterEqual(available_at - created_at, 590)   # released with backoff
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn("did not stop after its timeout", failed[0]["exception"])

    def count(self):
        return self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0]

    def test_four_workers_run_every_job_exactly_once(self):
        q = self.db.queue()
        total = 2000
        q.push_many("p_append", [{"n": i} for i in range(total)])
        procs = [self.start_worker("--stop-when-empty") for _ in range(4)]
        for proc in procs:
            self.assertEqual(self.finish(proc, 120), 0, self.stderr(proc))
        done = [line.split()[1] for line in self.lines()]
        self.assertEqual(len(done), total)
        self.assertEqual(set(done), {str(i) for i in range(total)})
        for proc in procs:
            self.assertNotIn("database is locked", self.stderr(proc))
            self.assertNotIn("Traceback", self.stderr(proc))
        self.assertEqual(self.count(), 0)
        self.assertEqual(q.failed(), [])


class PoolerProcessTests(_WorkerProcesses):
    """Workers behind PgBouncer in transaction mode: each transaction may run on
    another server session, so nothing may depend on one (?pooler=transaction)."""

    def setUp(self):
        self.process_setup()

    def push_one_at_a_time(self, q, proc, count=5):
        """Push jobs one by one, each when the last has run: every one must start
        long before the worker's --sleep 90 is over (a loaded machine may take
        seconds; a worker that did not poll would take 90)."""
        for n in range(count):
            q.push("p_append", {"n": n})
            wait_for(lambda: "done %d" % n in self.lines(), 45, 0.01,
                     "job %d to start before --sleep 90 ended" % n)
        self.assertIsNone(proc.poll(), self.stderr(proc))

    def test_idle_workers_poll_behind_the_pooler(self):
        q = self.db.queue()
        proc = self.start_worker("--sleep", "90", "--concurrency", "2")
        self.push_one_at_a_time(q, proc)
        proc.terminate()
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertNotIn("Traceback", self.stderr(proc))

    def test_queue_listen_url_wakes_an_idle_worker(self):
        need(PG_TCP_URL, "QUEUE_LISTEN_URL test: set DBQUEUE_TEST_PG_TCP to the database behind"
                         " the PgBouncer, reached directly (postgresql://user:pass@host:5432/db)")
        q = self.db.queue()
        name = "dbq-listen-%d" % os.getpid()
        proc = self.start_worker("--sleep", "90",
                                 QUEUE_LISTEN_URL=url_with(PG_TCP_URL, "application_name=" + name))
        listening = 'LISTEN "dbqueue_%s"' % self.db.table
        wait_for(lambda: self.db.raw("SELECT COUNT(*) FROM pg_stat_activity WHERE"
                                     " application_name = %s AND query = %s",
                                     (name, listening))[0][0] == 1,
                 30, 0.05, "the worker's LISTEN on its direct connection")
        self.push_one_at_a_time(q, proc)
        proc.terminate()
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))

    def test_without_the_option_a_changed_session_is_one_clear_line(self):
        # psycopg 3 prepares a statement after its fifth run. Server sessions
        # where earlier clients left their own "_pg3_0": prepared in open
        # transactions, so that each holds a session of its own.
        q = self.db.queue()
        q.push_many("p_append", [{"n": n} for n in range(300)])
        if self.db.driver == "psycopg":
            import psycopg
            clients = [psycopg.connect(PGBOUNCER_URL) for _ in range(8)]
            for client in clients:
                try:
                    client.execute("SELECT 1", prepare=True)
                except psycopg.errors.DuplicatePreparedStatement:
                    pass     # left there before: as good
            for client in clients:
                client.rollback()     # a prepared statement outlives its transaction
                client.close()
        plain = self.db.url.replace("?pooler=transaction", "").replace("&pooler=transaction", "")
        procs = [self.start_worker("--stop-when-empty", "--concurrency", "4",
                                   QUEUE_DATABASE_URL=plain) for _ in range(2)]
        codes = [self.finish(proc, 120) for proc in procs]
        if self.db.driver == "psycopg2":    # it prepares nothing: it drains
            self.assertEqual(codes, [0, 0], [self.stderr(p) for p in procs])
            return
        self.assertIn(1, codes, [self.stderr(p) for p in procs])
        for proc, code in zip(procs, codes):
            if code:
                last = self.stderr(proc).strip().splitlines()[-1]
                self.assertIn("the server session changed between statements: behind a"
                              " transaction-mode pooler such as PgBouncer add"
                              " ?pooler=transaction to the URL", last)
                self.assertNotIn("_pg3_", self.stderr(proc))
                self.assertNotIn("Traceback", self.stderr(proc))


on_backends(PoolerProcessTests, PGBOUNCER)

# A handler that waits inside one C call, for SecondInterruptTests.
_SLEEPING_HANDLERS = """
import os, time
import dbqueue


@dbqueue.job("s_sleep")
def sleep(data):
    fd = os.open(os.environ["T_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"start\\n")
    os.close(fd)
    time.sleep(3600)    # a slot's interruption cannot land in here; SIGINT's can in one slot
"""


@on_backends(SQLITE_PG)
class SecondInterruptTests(_WorkerProcesses):
    """A second Ctrl-C gives every job in hand back unspent and exits 130, with one
    slot as with four, also while the handlers wait inside a C call."""

    def setUp(self):
        self.process_setup()
        with open(os.path.join(self.ptmp, "dbq_sleeping_handlers.py"), "w") as fh:
            fh.write(_SLEEPING_HANDLERS)

    def interrupt_twice(self, slots):
        q = self.db.queue()
        q.push_many("s_sleep", [{}] * 4)
        proc = self.start_worker("--import", "dbq_sleeping_handlers", "--concurrency", str(slots))
        wait_for(lambda: len(self.lines()) == slots, 30, message="%d jobs running" % slots)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping after the" in self.stderr(proc), 30,
                 message="the worker to note the first SIGINT")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(self.finish(proc, 20), 130, self.stderr(proc))
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)] * 4)
        self.assertEqual(len(self.lines()), slots)       # nothing started after the first

    def test_one_slot(self):
        self.interrupt_twice(1)

    def test_four_slots(self):
        self.interrupt_twice(4)


class ListenUrlRefusedTests(_WorkerProcesses):
    """QUEUE_LISTEN_URL names a server that refuses the worker (a wrong host or
    password): one warning, password-free; connection attempts back off, and
    jobs are still picked up by polling meanwhile."""

    def setUp(self):
        self.process_setup()

    def refusing_server(self):
        """(port, accepted times): a loopback server that closes every connection."""
        import socket
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        self.addCleanup(server.close)
        times = []

        def serve():
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return      # closed by the cleanup
                times.append(time.monotonic())
                conn.close()
        threading.Thread(target=serve, daemon=True).start()
        return server.getsockname()[1], times

    def test_one_warning_backoff_and_polling(self):
        q = self.db.queue()
        port, attempts = self.refusing_server()
        proc = self.start_worker("--sleep", "30", QUEUE_LISTEN_URL="postgresql://app:Wr0ngPw"
                                 "@127.0.0.1:%d/db?connect_timeout=5" % port)
        wait_for(lambda: attempts, 30, 0.05, "the worker's first LISTEN connection")
        first = attempts[0]
        for n in range(3):        # polled, not heard: each starts long before --sleep 30 ends
            q.push("p_append", {"n": n})
            wait_for(lambda: "done %d" % n in self.lines(), 15, 0.05, "job %d" % n)
        # Tried again after 1 s, then 2 s more, ...: not twice a second.
        time.sleep(max(0.0, first + 4.0 - time.monotonic()))
        self.assertLessEqual(len([t for t in attempts if t < first + 4.0]), 3, attempts)
        proc.terminate()
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        err = self.stderr(proc)
        self.assertNotIn("Wr0ngPw", err)
        warnings = [line for line in err.splitlines() if "LISTEN" in line]
        self.assertEqual(len(warnings), 1, err)
        self.assertIn("WARNING", warnings[0])
        self.assertIn("postgresql://app:***@127.0.0.1:%d/db" % port, warnings[0])


on_backends(ListenUrlRefusedTests, PG)


class CoreLostConnectionTests(_WorkerProcesses, unittest.TestCase):
    """PostgreSQL kills the worker's connections mid-run: it reconnects and carries on."""

    driver = "psycopg"

    def setUp(self):
        self.db = {"psycopg": PsycopgBackend, "psycopg2": Psycopg2Backend}[self.driver](self)
        self.process_setup()

    def test_lost_connection_is_retried(self):
        q = self.db.queue()
        flag = os.path.join(self.ptmp, "flag")
        q.push("p_until", {"flag": flag})
        total = 30
        q.push_many("p_append", [{"n": i} for i in range(total)])
        app_name = "dbqtest_%s" % self.db.table
        # retry_after=2: the heartbeat opens its own connection within a second.
        proc = self.start_worker("--stop-when-empty", PGAPPNAME=app_name, QUEUE_RETRY_AFTER=2)
        pids = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        # Two: the worker's and the heartbeat's.
        wait_for(lambda: self.lines() == ["start"] and len(self.db.raw(pids, (app_name,))) >= 2,
                 30, message="the job to start and the heartbeat to connect")
        killed = self.db.raw("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE application_name = %s", (app_name,))
        self.assertEqual([ok for _, ok in killed], [True, True])
        # The main thread is still in the handler: a new connection is the heartbeat's.
        old = {pid for pid, _ in killed}
        wait_for(lambda: {pid for pid, in self.db.raw(pids, (app_name,))} - old, 30,
                 message="the heartbeat to reconnect")
        open(flag, "w").close()
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        err = self.stderr(proc)
        warnings = [line for line in err.splitlines() if " WARNING " in line or " ERROR " in line]
        self.assertEqual(len(warnings), 1, err)
        self.assertIn("database unavailable; retrying with backoff", warnings[0])
        self.assertIn("database available again", err)
        self.assertNotIn("Traceback", err)
        lines = self.lines()
        self.assertEqual(lines[:2], ["start", "end"])
        self.assertEqual(sorted(lines[2:]), sorted("done %d" % i for i in range(total)))
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)


class CoreLostConnectionPsycopg2Tests(CoreLostConnectionTests):
    driver = "psycopg2"


@on_backends(SQLITE_PG_MARIADB)
class CoreIsolationTests(_WorkerProcesses):
    """A job that kills its worker costs only itself, never the jobs claimed beside it."""

    def setUp(self):
        self.process_setup()

    def test_a_job_that_kills_its_worker_never_fails_its_batch(self):
        q = self.db.queue()
        q.push_many("p_append", [{"n": i} for i in range(5)])
        q.push("p_crash", {})
        q.push_many("p_append", [{"n": i} for i in range(5, 10)])
        deadline = time.monotonic() + 60
        codes = []
        while self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0] and time.monotonic() < deadline:
            proc = self.start_worker("--stop-when-empty", QUEUE_RETRY_AFTER=1, QUEUE_BACKOFF=0)
            codes.append(self.finish(proc, 60))
            time.sleep(0.2)   # a dead worker's jobs come back after retry_after
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0, codes)
        self.assertEqual(codes.count(9), 3, codes)        # the crasher used its 3 attempts
        failed = q.failed()
        self.assertEqual([json.loads(f["payload"])["job"] for f in failed], ["p_crash"])
        self.assertIn("attempt 4 of 3", failed[0]["exception"])
        done = [line for line in self.lines() if line.startswith("done")]
        self.assertEqual(set(done), {"done %d" % i for i in range(10)})


class CoreTimeoutInCTests(_WorkerProcesses, unittest.TestCase):
    """A handler stuck inside one C call past its timeout is ended by the hard exit."""

    def setUp(self):
        self.db = Backend(self)
        self.process_setup()

    def test_timeout_ends_a_handler_blocked_in_a_c_call(self):
        import sqlite3
        lockdb = os.path.join(self.ptmp, "lock.db")
        holder = sqlite3.connect(lockdb, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        self.addCleanup(holder.close)
        q = self.db.queue()
        job_id = q.push("p_blocked_in_c", {"lockdb": lockdb}, timeout=1)
        started = time.monotonic()
        proc = self.start_worker(T_GRACE=1, QUEUE_BACKOFF=30)
        self.assertEqual(self.finish(proc, 60), 1, self.stderr(proc))
        self.assertLess(time.monotonic() - started, 50)   # not the handler's 120 s
        self.assertIn("did not stop after its timeout", self.stderr(proc))
        self.assertEqual(self.lines(), ["start"])
        # Released with backoff, the attempt counted: it will be tried again.
        (attempts, reserved_at), = self.db.raw("SELECT attempts, reserved_at FROM {jobs}"
                                               " WHERE id = %d" % job_id)
        self.assertEqual((attempts, reserved_at), (1, None))


_TX_HANDLERS = """
import os, time
import dbqueue


@dbqueue.job("tx_held")
def held(data):
    q = dbqueue.current_job().worker.queue
    with q.transaction() as cur:
        q.execute(cur, "push", queue="elsewhere", payload=q.payload("p_append", {"n": 0}),
                  delay=0, expires_at=None)
        fd = os.open(os.environ["T_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, b"inside\\n")
        os.close(fd)
        while True:
            time.sleep(0.01)     # QUEUE_TIMEOUT lands here, the transaction open
"""


class CoreTransactionTimeoutTests(_WorkerProcesses):
    """A handler's timeout that lands inside its `with q.transaction()`, in a real
    worker: the transaction is rolled back, nothing half-written stays, and the
    worker goes on with the next job."""

    def setUp(self):
        self.process_setup()
        with open(os.path.join(self.ptmp, "dbq_tx_handlers.py"), "w") as fh:
            fh.write(_TX_HANDLERS)

    def test_the_transaction_is_rolled_back_and_the_worker_carries_on(self):
        q = self.db.queue()
        held = q.push("tx_held", {}, timeout=1)
        q.push("p_append", {"n": 1})
        proc = self.start_worker("--import", "dbq_tx_handlers", "--stop-when-empty",
                                 QUEUE_MAX_ATTEMPTS=1)
        self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc))
        self.assertEqual(self.lines(), ["inside", "done 1"])
        failed = q.failed()
        self.assertEqual(len(failed), 1, failed)
        self.assertIn("timeout", failed[0]["exception"].lower())
        self.assertIn("id=%d" % held, self.stderr(proc))
        # The row the handler wrote inside its transaction was never committed.
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs} WHERE queue = 'elsewhere'"),
                         [(0,)])
        # No lock left behind: a write goes through at once.
        q.push("p_append", {"n": 2})
        self.assertNotIn("Traceback", self.stderr(proc))


on_backends(CoreTransactionTimeoutTests, SQLITE_PG_MARIADB)


@on_backends
class CoreStorableFailureTests:
    """What a failure records is storable whatever the handler raised or the row held."""

    def setUp(self):
        del RECORD[:]

    def test_nul_surrogates_and_broken_str_in_the_error_are_stored(self):
        class Broken(Exception):
            def __str__(self):
                raise RuntimeError("no text")

        @dbqueue.job("t_ugly_error")
        def ugly(data):
            if data["kind"] == "broken":
                raise Broken()
            raise dbqueue.PermanentError("bad \x00 byte and \udcff surrogate")

        q = self.db.queue()
        q.push("t_ugly_error", {"kind": "text"})
        q.push("t_ugly_error", {"kind": "broken"}, max_tries=1)
        q.push("t_record", {"n": 1})
        dbqueue.Worker(q, ["default"], log=quiet_log()).run(stop_when_empty=True)
        failed = sorted(f["exception"] for f in q.failed())
        self.assertEqual(len(failed), 2)
        self.assertTrue(any("bad \\x00 byte" in f and "\\udcff" in f for f in failed), failed)
        self.assertTrue(any("Broken" in f for f in failed), failed)
        self.assertEqual(RECORD, [{"n": 1}])

    def test_deeply_nested_payload_fails_alone(self):
        q = self.db.queue()
        deep = "[" * 100000 + "]" * 100000
        self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, available_at, created_at)"
                    " VALUES ('default', %s, 0, 0, 0)" % self.db.param, (deep,))
        q.push("t_record", {"n": 2})
        dbqueue.Worker(q, ["default"], log=quiet_log()).run(stop_when_empty=True)
        self.assertEqual(RECORD, [{"n": 2}])
        (failed,) = q.failed()
        self.assertIn("nested too deeply", failed["exception"])

    def test_out_of_range_settings_are_refused_at_push(self):
        q = self.db.queue()
        for kwargs in ({"backoff": "99999999999999999999"}, {"timeout": 10 ** 12},
                       {"delay": 10 ** 12}, {"max_tries": 10 ** 12}):
            with self.assertRaises(dbqueue.ConfigError, msg=kwargs):
                q.push("t_record", {}, **kwargs)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)


# -- core tests end here --


###############################################################################
# Email: messages, SMTP, TLS, the seed templates ##############################
###############################################################################

# Email tests talk to a real SMTP server on loopback (aiosmtpd's Controller in
# a thread). They run on SQLite; one seed-payload test runs on every backend.

def _aiosmtpd():
    try:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult
    except ImportError:
        return None
    import logging
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)  # its warnings are not ours
    return Controller, AuthResult


def free_port():
    """A loopback TCP port that was free a moment ago; nothing listens on it now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_mail(raw):
    import email
    import email.policy
    return email.message_from_bytes(raw, policy=email.policy.default)


class SMTPSink:
    """A real SMTP server on 127.0.0.1 that records what it receives.

    `data_replies` (consumed first) script answers to DATA such as "451 ...";
    `refuse` maps recipients to RCPT replies; `connections` counts the TCP
    connections clients opened; `messages` holds (envelope, parsed message,
    session) for every accepted message.
    """

    good_login = ("mailer", "right-password")

    def __init__(self, testcase, port=None, auth=False, **controller_kw):
        found = _aiosmtpd()
        need(found is not None, "aiosmtpd is not installed (pip install aiosmtpd)")
        self.Controller, self.AuthResult = found
        self.port = port or free_port()
        self.kw = controller_kw
        if auth:
            self.kw["authenticator"] = self.authenticate
        self.messages = []
        self.attempted = []
        self.data_replies = []
        self.refuse = {}
        self.logins = []
        self.protocols = []
        self.connections = 0
        self.controller = None
        testcase.addCleanup(self.stop)
        self.start()

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append(login)
        return self.AuthResult(success=login == self.good_login, handled=False)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = parse_mail(envelope.content)
        self.attempted.append(msg)
        if self.data_replies:
            return self.data_replies.pop(0)
        self.messages.append(((envelope.mail_from, list(envelope.rcpt_tos)), msg, session))
        if server not in self.protocols:
            self.protocols.append(server)
        return "250 OK"

    def start(self):
        sink = self

        class Counting(self.Controller):
            def factory(self):
                sink.connections += 1
                return super().factory()

        self.controller = Counting(self, hostname="127.0.0.1", port=self.port, **self.kw)
        self.controller.start()
        self.connections -= 1   # Controller.start() connects once to check the server is up

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def drop_connections(self):
        """Close every client connection from the server's side."""
        loop = self.controller.loop
        for proto in self.protocols:
            loop.call_soon_threadsafe(proto.transport.close)
        wait_for(lambda: all(p.transport is None or p.transport.is_closing()
                             for p in self.protocols), 10, message="server-side close")
        del self.protocols[:]

    def subjects(self):
        return sorted(m["Subject"] for _, m, _ in self.messages)


# A job that runs a test's callback between two email jobs, in the worker's
# own thread: the server can be stopped or restarted at an exact point.
ACTIONS = {}


@dbqueue.job("t_action")
def _t_action(data):
    ACTIONS[data["key"]]()


def tls_files(tmp):
    """(certificate, key) for 127.0.0.1, made with openssl."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    need(shutil.which("openssl") is not None, "openssl is not installed")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


class EmailTestMixin:

    def mail_queue(self, sink=None, clock=None, **settings):
        settings.setdefault("mail_host", "127.0.0.1")
        settings.setdefault("mail_port", sink.port if sink else free_port())
        settings.setdefault("mail_from_address", "app@example.com")
        settings.setdefault("mail_from_name", "Äpp Team")
        settings.setdefault("app_name", "Acme")
        settings.setdefault("mail_timeout", 10)
        return self.db.queue(clock=clock, **settings)

    def work(self, q, **kw):
        kw.setdefault("backoff", "0")
        log = quiet_log()
        worker = dbqueue.Worker(q, ["emails"], log=log, **kw)
        worker.run(stop_when_empty=True)
        return worker, log.stream.getvalue()

    def jobs_left(self):
        return self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0]

    def uuid_of(self, job_id):
        payload = self.db.raw("SELECT payload FROM {jobs} WHERE id = %d" % job_id)[0][0]
        return json.loads(payload)["uuid"]


class EmailTests(EmailTestMixin, unittest.TestCase):

    def setUp(self):
        self.db = Backend(self)

    def test_each_builtin_template_is_delivered_with_both_parts_and_escaping(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        name = '<script>alert("x")</script> Zoë'
        uuids = {}
        for template in ("verify_email", "password_reset", "invitation"):
            job_id = dbqueue.queue_template_email(
                "Ann Ünlü <ann@example.com>", template,
                {"name": name, "url": "https://example.com/t/%s?a=1&b=2" % template},
                bcc="audit@example.com", using=q)
            uuids[template] = self.uuid_of(job_id)
        self.work(q)
        self.assertEqual(len(sink.messages), 3)
        self.assertEqual(self.jobs_left(), 0)
        for (envelope, msg, _), template in zip(sink.messages, uuids):
            url = "https://example.com/t/%s?a=1&b=2" % template
            self.assertEqual(envelope, ("app@example.com",
                                        ["ann@example.com", "audit@example.com"]))
            self.assertEqual(msg.get_content_type(), "multipart/alternative")
            self.assertIn("Acme", msg["Subject"])
            self.assertEqual(msg["From"].addresses[0].display_name, "Äpp Team")
            self.assertEqual(msg["To"].addresses[0].display_name, "Ann Ünlü")
            self.assertIsNone(msg["Bcc"])
            self.assertEqual(msg["Message-ID"], "<%s@example.com>" % uuids[template])
            self.assertTrue(msg["Date"])
            text = msg.get_body(("plain",)).get_content()
            html = msg.get_body(("html",)).get_content()
            self.assertIn(name, text)
            self.assertIn(url, text)
            self.assertIn("ignore this email", text)
            self.assertNotIn("<script>", html)
            self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; Zoë", html)
            self.assertIn('href="https://example.com/t/%s?a=1&amp;b=2"' % template, html)
            self.assertIn("ignore this email", html)
        # Raw header bytes are encoded words, never bare UTF-8.
        self.assertNotIn("Ü", sink.messages[0][1].as_string().split("\n\n")[0].replace(
            "Ann Ünlü", ""))

    def test_send_email_fields_single_part_reply_to_cc_and_extra_headers(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        dbqueue.queue_email(["a@example.com", "B <b@example.com>"], "Grüße", text="plain only",
                            cc="c@example.com", reply_to="help@example.com",
                            sender="Sales <sales@example.com>",
                            headers={"List-Unsubscribe": "<mailto:u@example.com>"}, using=q)
        dbqueue.queue_email("a@example.com", "html only", html="<p>Hi</p>", using=q)
        self.work(q)
        (env1, m1, _), (env2, m2, _) = sink.messages
        self.assertEqual(env1, ("sales@example.com",
                                ["a@example.com", "b@example.com", "c@example.com"]))
        self.assertEqual(m1.get_content_type(), "text/plain")
        self.assertEqual(m1["Subject"], "Grüße")
        self.assertEqual(str(m1["Reply-To"]), "help@example.com")
        self.assertEqual(str(m1["Cc"]), "c@example.com")
        self.assertEqual(m1["List-Unsubscribe"], "<mailto:u@example.com>")
        self.assertEqual(m2.get_content_type(), "multipart/alternative")   # a text part is made
        self.assertEqual(m2.get_body(("plain",)).get_content().strip(), "Hi")

    def test_template_dir_adds_and_overrides_templates(self):
        sink = SMTPSink(self)
        tdir = os.path.join(self.db.tmp, "templates")
        os.mkdir(tdir)
        with open(os.path.join(tdir, "welcome.txt"), "w", encoding="utf-8") as fh:
            fh.write("Subject: Welcome to ${app_name}, $name\n\nHello $name, see $url\n")
        with open(os.path.join(tdir, "welcome.html"), "w", encoding="utf-8") as fh:
            fh.write("<p>Hello <b>$name</b></p>")
        with open(os.path.join(tdir, "verify_email.txt"), "w", encoding="utf-8") as fh:
            fh.write("Subject: Our own verify\n\nClick $url\n")
        q = self.mail_queue(sink, mail_template_dir=tdir)
        for template in ("welcome", "verify_email"):
            dbqueue.queue_template_email("a@example.com", template,
                                         {"name": "<Ann>", "url": "https://x.test/1"}, using=q)
        self.work(q)
        (_, welcome, _), (_, verify, _) = sink.messages
        self.assertEqual(welcome["Subject"], "Welcome to Acme, <Ann>")
        self.assertEqual(welcome.get_body(("plain",)).get_content().strip(),
                         "Hello <Ann>, see https://x.test/1")
        self.assertIn("<b>&lt;Ann&gt;</b>", welcome.get_body(("html",)).get_content())
        self.assertEqual(verify["Subject"], "Our own verify")
        self.assertEqual(verify.get_content_type(), "text/plain")

    def test_template_errors_fail_at_once_and_name_the_problem(self):
        sink = SMTPSink(self)
        tdir = os.path.join(self.db.tmp, "templates")
        os.mkdir(tdir)
        with open(os.path.join(tdir, "needs.txt"), "w", encoding="utf-8") as fh:
            fh.write("Subject: Hi\n\n$greeting $name\n")
        q = self.mail_queue(sink, mail_template_dir=tdir)
        q.push("send_template_email", {"to": "a@example.com", "template": "verify_email",
                                       "vars": {"url": "https://x.test"}}, queue="emails")
        q.push("send_template_email", {"to": "a@example.com", "template": "needs",
                                       "vars": {"name": "A"}}, queue="emails")
        q.push("send_template_email", {"to": "a@example.com", "template": "no_such",
                                       "vars": {}}, queue="emails")
        q.push("send_template_email", {"to": "a@example.com", "template": "../needs",
                                       "vars": {}}, queue="emails")
        with self.assertRaises(ValueError):
            dbqueue.queue_template_email("a@example.com", "../../etc/passwd", {}, using=q)
        self.work(q, tries=3)
        failed = [f["exception"] for f in q.failed()]
        self.assertEqual(len(failed), 4)
        self.assertIn("needs the variable 'name'", failed[0])
        self.assertIn("needs the variable 'greeting'", failed[1])
        self.assertIn("unknown email template 'no_such'", failed[2])
        self.assertIn("must be a plain name", failed[3])
        self.assertEqual(sink.connections, 0)

    def test_header_injection_in_every_field_is_refused_before_connecting(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        bad = "x@example.com\r\nBcc: victim@example.com"
        base = {"to": "a@example.com", "subject": "s", "text": "t"}
        cases = [dict(base, to=bad), dict(base, to=["ok@example.com", bad]), dict(base, cc=bad),
                 dict(base, bcc=bad), dict(base, reply_to=bad), dict(base, **{"from": bad}),
                 dict(base, subject="Hi\nBcc: victim@example.com"),
                 dict(base, headers={"X-Tag": "a\r\nBcc: victim@example.com"}),
                 dict(base, headers={"X-Tag\r\nBcc": "v"}),
                 dict(base, headers={"Bcc": "victim@example.com"})]
        for data in cases:
            q.push("send_email", data, queue="emails")
            kwargs = {k: v for k, v in data.items() if k not in ("to", "subject", "text")}
            if "from" in kwargs:
                kwargs["sender"] = kwargs.pop("from")
            with self.assertRaises(ValueError, msg=repr(data)):
                dbqueue.queue_email(data["to"], data["subject"], text="t", using=q, **kwargs)
        q.push("send_template_email", {"to": "a@example.com", "template": "invitation",
                                       "vars": {"name": "n", "url": "https://x.test",
                                                "app_name": "Evil\r\nBcc: victim@example.com"}},
               queue="emails")
        self.work(q, tries=3)
        failed = q.failed()
        self.assertEqual(len(failed), len(cases) + 1)
        for row in failed:
            self.assertRegex(row["exception"], r"line break|not a header name|set by dbqueue")
        self.assertEqual(sink.messages, [])
        self.assertEqual(sink.connections, 0)

    def test_451_is_retried_with_the_same_message_id_then_sent(self):
        sink = SMTPSink(self)
        sink.data_replies = ["451 4.3.0 try again later"]
        q = self.mail_queue(sink)
        job_id = dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        uuid = self.uuid_of(job_id)
        _, log = self.work(q, tries=3)
        self.assertEqual(len(sink.messages), 1)
        self.assertEqual([m["Message-ID"] for m in sink.attempted], ["<%s@example.com>" % uuid] * 2)
        self.assertIn("outcome=released", log)
        self.assertIn("451", log)
        self.assertEqual(q.failed(), [])
        self.assertEqual(self.jobs_left(), 0)

    def test_5xx_fails_at_once_without_retry(self):
        sink = SMTPSink(self)
        sink.data_replies = ["554 5.6.0 message rejected"]
        sink.refuse = {"nobody@example.com": "550 5.1.1 no such user"}
        q = self.mail_queue(sink)
        dbqueue.queue_email("a@example.com", "rejected", text="t", using=q)
        dbqueue.queue_email("nobody@example.com", "unknown user", text="t", using=q)
        dbqueue.queue_email(["nobody@example.com", "b@example.com"], "partly", text="t", using=q)
        self.work(q, tries=3)
        failed = q.failed()
        self.assertEqual(len(failed), 3)    # "partly" too: b@ got it, nobody@ never will
        self.assertIn("554", failed[0]["exception"])
        self.assertIn("(permanent)", failed[0]["exception"])
        for row in failed[1:]:
            self.assertIn("nobody@example.com: 550", row["exception"])
            self.assertIn("(permanent)", row["exception"])
        self.assertEqual(len(sink.attempted), 2)   # rejected once, then "partly"; no retries
        self.assertEqual([e for e, _, _ in sink.messages], [("app@example.com", ["b@example.com"])])

    def test_server_down_is_an_outage_that_spends_no_attempt(self):
        q = self.mail_queue(None)
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=1)
        self.assertEqual(worker.exit_code, 1)
        self.assertIn("unreachable", log)
        self.assertIn("(outage)", log)
        self.assertEqual(q.failed(), [])
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)])

    def test_one_session_is_reused_and_a_dropped_one_reopened(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        ACTIONS["drop"] = sink.drop_connections
        self.addCleanup(ACTIONS.pop, "drop", None)
        for i in range(3):
            dbqueue.queue_email("a@example.com", "m%d" % i, text="t", using=q)
        q.push("t_action", {"key": "drop"}, queue="emails")
        for i in range(3, 5):
            dbqueue.queue_email("a@example.com", "m%d" % i, text="t", using=q)
        _, log = self.work(q, tries=1)
        self.assertEqual(sink.subjects(), ["m0", "m1", "m2", "m3", "m4"])
        self.assertNotIn("outcome=failed", log)
        self.assertEqual(sink.connections, 2)
        sessions = [s for _, _, s in sink.messages]
        self.assertTrue(all(s is sessions[0] for s in sessions[:3]))
        self.assertTrue(all(s is sessions[3] for s in sessions[3:]))
        # Without reuse, one connection per message.
        for i in range(3):
            dbqueue.queue_email("a@example.com", "n%d" % i, text="t", using=q)
        worker = dbqueue.Worker(q, ["emails"], log=quiet_log())
        worker.reuse_smtp = False
        worker.run(stop_when_empty=True)
        self.assertEqual(sink.connections, 5)

    def tls_sink(self, implicit):
        import ssl
        cert, key = tls_files(self.db.tmp)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if implicit:
            # aiosmtpd offers AUTH only after STARTTLS unless told that TLS is there already.
            sink = SMTPSink(self, auth=True, ssl_context=context, auth_require_tls=False)
        else:
            sink = SMTPSink(self, auth=True, tls_context=context, require_starttls=True,
                            auth_require_tls=True)
        return sink, cert

    def test_starttls_and_implicit_tls_with_auth(self):
        for implicit in (False, True):
            with self.subTest(implicit=implicit):
                sink, cert = self.tls_sink(implicit)
                user, password = SMTPSink.good_login
                q = self.mail_queue(sink, mail_encryption="ssl" if implicit else "starttls",
                                    mail_username=user, mail_password=password,
                                    mail_verify_peer=False)
                dbqueue.queue_template_email("a@example.com", "verify_email",
                                             {"name": "A", "url": "https://x.test/v"}, using=q)
                self.work(q, tries=1)
                self.assertEqual(len(sink.messages), 1)
                self.assertEqual(sink.logins, [SMTPSink.good_login])
                # Verification is on by default: it passes when the CA is trusted...
                saved = os.environ.get("SSL_CERT_FILE")
                os.environ["SSL_CERT_FILE"] = cert
                try:
                    q.config.mail_verify_peer = True
                    dbqueue.queue_email("a@example.com", "verified", text="t", using=q)
                    self.work(q, tries=1)
                finally:
                    if saved is None:
                        os.environ.pop("SSL_CERT_FILE", None)
                    else:
                        os.environ["SSL_CERT_FILE"] = saved
                self.assertEqual(len(sink.messages), 2)
                # ...and a self-signed certificate that is not trusted is an outage:
                # the mail waits, unspent.
                dbqueue.queue_email("a@example.com", "unverified", text="t", using=q)
                worker, log = self.work(q, tries=1)
                self.assertEqual(len(sink.messages), 2)
                self.assertEqual(q.failed(), [])
                self.assertEqual(worker.exit_code, 1)
                self.assertIn("TLS failed", log)
                self.assertIn("certificate", log)
                self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(0,)])
                self.db.raw("DELETE FROM {jobs}")
                sink.stop()

    def test_password_never_appears_when_auth_fails(self):
        sink, _ = self.tls_sink(False)
        env = self.db.env(MAIL_HOST="127.0.0.1", MAIL_PORT=sink.port, MAIL_ENCRYPTION="starttls",
                          MAIL_VERIFY_PEER="false", MAIL_USERNAME="mailer",
                          MAIL_PASSWORD="Wr0ng-S3cret-pw", QUEUE_BACKOFF="0")
        q = self.mail_queue(sink)
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        code, out, err = run_main(["work", "--queue", "emails", "--stop-when-empty", "-v"], env)
        self.assertEqual(code, 1)    # an outage: the job went back unspent
        self.assertIn(("mailer", "Wr0ng-S3cret-pw"), sink.logins)   # it really was sent
        self.assertEqual(q.failed(), [])
        self.assertIn("authentication failed: 535", err)
        import base64
        everything = out + err + json.dumps(q.failed())
        for secret in ("Wr0ng-S3cret-pw", base64.b64encode(b"Wr0ng-S3cret-pw").decode(),
                       base64.b64encode(b"\0mailer\0Wr0ng-S3cret-pw").decode()):
            self.assertNotIn(secret, everything)
        # A server that is down: the error text does not carry it either.
        sink.stop()
        code, out, err = run_main(["work", "--queue", "emails", "--stop-when-empty"], env)
        self.assertIn("unreachable", err)
        self.assertNotIn("Wr0ng-S3cret-pw", out + err + json.dumps(q.failed()))

    def test_auth_that_no_retry_can_fix_is_an_outage_naming_the_setting(self):
        # A password smtplib cannot send (it writes AUTH in ASCII) and a server
        # whose only AUTH mechanism smtplib lacks: configuration or server to
        # fix, never the message's fault, so no attempt is spent.
        class OAuthOnly(SMTPSink):
            async def auth_XOAUTH2(self, server, args):
                return self.AuthResult(success=False, handled=False)

        cases = [(SMTPSink(self, auth=True, auth_require_tls=False), "pässwörd-S3cret",
                  "must be ASCII"),
                 (OAuthOnly(self, auth=True, auth_require_tls=False,
                            auth_exclude_mechanism=["LOGIN", "PLAIN"]), "plain-S3cret",
                  "no AUTH mechanism that smtplib has (CRAM-MD5, PLAIN, LOGIN): XOAUTH2")]
        for sink, password, reason in cases:
            with self.subTest(reason=reason):
                q = self.mail_queue(sink, mail_username="mailer", mail_password=password)
                dbqueue.queue_email("a@example.com", "s", text="t", using=q)
                worker, log = self.work(q, tries=3)
                self.assertEqual(worker.exit_code, 1, log)
                self.assertEqual(q.failed(), [])
                self.assertIn(reason, log)
                self.assertIn("MAIL_USERNAME", log)
                self.assertIn("(outage)", log)
                self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(0,)])
                self.assertEqual(sink.messages, [])
                self.assertNotIn(password, log)
                self.db.raw("DELETE FROM {jobs}")

    def test_log_mailer_prints_the_message_and_sends_nothing(self):
        q = self.mail_queue(None, mail_mailer="log")
        dbqueue.queue_template_email("a@example.com", "verify_email",
                                     {"name": "Ann", "url": "https://example.com/v/1"}, using=q)
        _, log = self.work(q, tries=1)
        self.assertIn("Subject: Confirm your email address for Acme", log)
        self.assertIn("Hi Ann,", log)
        self.assertIn("https://example.com/v/1", log)
        self.assertIn("[text/html part]", log)
        self.assertIn("outcome=done", log)

    def test_readme_quick_start_with_the_log_mailer(self):
        tmp = self.db.tmp
        shutil.copy(os.path.join(HERE, "dbqueue.py"), tmp)
        env = clean_env()
        env["MAIL_MAILER"] = "log"
        data = json.dumps({"to": "ann@example.com", "template": "verify_email",
                           "vars": {"name": "Ann", "url": "https://example.com/verify/abc"}})
        push = subprocess.run([sys.executable, "dbqueue.py", "push", "send_template_email",
                               "--queue", "emails", "--data", data], cwd=tmp, env=env,
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(push.returncode, 0, push.stderr)
        work = subprocess.run([sys.executable, "dbqueue.py", "work", "--queue", "emails",
                               "--stop-when-empty"], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(work.returncode, 0, work.stderr)
        self.assertIn("To: ann@example.com", work.stderr)
        self.assertIn("Subject: Confirm your email address", work.stderr)
        self.assertIn('<a href="https://example.com/verify/abc"', work.stderr)
        self.assertIn("outcome=done", work.stderr)


@on_backends
class EmailSeedTests(EmailTestMixin):

    def test_seed_app_payload_rows_are_delivered(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        now = int(time.time()) - 1
        rows = [
            {"job": "App\\Libraries\\Queue\\Jobs\\SendEmailJob",
             "data": {"to": "a@example.com", "subject": "Seed mail",
                      "message": "<p>Hello <b>there</b></p>", "textMessage": "Hello there"}},
            {"job": "App\\Libraries\\Queue\\Jobs\\SendTemplateEmailJob",
             "data": {"template": "emails/password_reset", "to": "b@example.com",
                      "data": {"name": "Bea", "url": "https://example.com/r/1"}}},
        ]
        p = self.db.param
        for payload in rows:
            self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                        " created_at) VALUES (%s, %s, 0, NULL, %s, %s)" % (p, p, p, p),
                        ("emails", json.dumps(payload), now, now))
        _, log = self.work(q, tries=1)
        self.assertEqual(len(sink.messages), 2, log)
        (_, seed, _), (_, template, _) = sink.messages
        self.assertEqual(seed["Subject"], "Seed mail")
        self.assertEqual(seed.get_body(("plain",)).get_content().strip(), "Hello there")
        self.assertIn("<b>there</b>", seed.get_body(("html",)).get_content())
        self.assertTrue(seed["Message-ID"].startswith("<dbqueue-job-"))
        self.assertEqual(template["Subject"], "Reset your Acme password")
        self.assertIn("https://example.com/r/1", template.get_body(("plain",)).get_content())
        self.assertEqual(self.jobs_left(), 0)


class EmailDataTests(unittest.TestCase):
    """Bad message data fails at once and reaches no one (MAIL_MAILER=log: no server needed)."""

    def setUp(self):
        self.db = Backend(self)

    def test_a_display_name_never_adds_a_recipient(self):
        q = self.db.queue(mail_mailer="log")
        for to in ("evil@attacker.example <ann@example.com>",
                   "Eve <evil@attacker.example> <ann@example.com>",
                   "Eve, evil@attacker.example <ann@example.com>"):
            with self.assertRaises(ValueError, msg=to):
                dbqueue.queue_email(to, "Hi", text="x", using=q)
            # Written by another program: the worker refuses it too, at once.
            q.push("send_email", {"to": to, "subject": "Hi", "text": "x"}, queue="emails")
        log = io.StringIO()
        dbqueue.Worker(q, ["emails"], log=dbqueue._Log(stream=log)).run(stop_when_empty=True)
        failed = q.failed()
        self.assertEqual(len(failed), 3)
        for f in failed:
            # Python 3.13's stricter email.utils.getaddresses already refuses
            # some of these as malformed; either way no one gets the mail.
            self.assertRegex(f["exception"], "more than one address|is not an email address")
        self.assertNotIn("evil@attacker.example", "".join(
            line for line in log.getvalue().splitlines() if "envelope_to" in line))
        self.assertNotIn("released", log.getvalue())    # no retries: failed at once

    def test_unicode_line_breaks_and_surrogates_fail_at_once(self):
        q = self.db.queue(mail_mailer="log")
        for subject in ("a\u2028b", "a\x0bb", "a\x85b", "a\ud800b"):
            q.push("send_email", {"to": "ann@example.com", "subject": subject, "text": "x"},
                   queue="emails")
        q.push("send_email", {"to": "ann@example.com", "subject": "ok", "text": "caf\ud800"},
               queue="emails")
        log = io.StringIO()
        dbqueue.Worker(q, ["emails"], log=dbqueue._Log(stream=log)).run(stop_when_empty=True)
        self.assertEqual(len(q.failed()), 5)
        self.assertNotIn("released", log.getvalue())


# -- email tests end here --


###############################################################################
# Operating: the command line, stats, cancel, logs ############################
###############################################################################

# A handler that fails while FLAKY["fail"] is set: a failed job that a retry
# can then deliver.
FLAKY = {"fail": True}


@dbqueue.job("t_flaky")
def _t_flaky(data):
    if FLAKY["fail"]:
        raise RuntimeError("flaky is down")
    RECORD.append(data)


def one_line(testcase, text):
    """Assert `text` is exactly one line with no traceback; return it."""
    lines = text.splitlines()
    testcase.assertEqual(len(lines), 1, text)
    testcase.assertNotIn("Traceback", text)
    return lines[0]


def assert_refused(testcase, result, *paths, code=2, context=None):
    """Assert a command `result` (code, out, err) was refused: exit `code`, nothing
    on stdout, one line on stderr and no traceback, none of `paths` created.
    Return the line."""
    got, out, err = result
    testcase.assertEqual(got, code, (context, out, err))
    testcase.assertEqual(out, "", (context, out))
    line = one_line(testcase, err.strip())
    for path in paths:
        testcase.assertFalse(os.path.exists(path), "%s was created: %s" % (path, context))
    return line


class _NoTerminal:
    """Runs main() with an stdin that is not a terminal (as under cron or CI)."""

    def __enter__(self):
        self.saved, sys.stdin = sys.stdin, io.StringIO("")

    def __exit__(self, *exc):
        sys.stdin = self.saved


@on_backends
class OpsTests:

    def setUp(self):
        del RECORD[:]
        FLAKY["fail"] = True

    def cli(self, *argv, **env):
        return run_main(list(argv), self.db.env(**env))

    def count(self, sql="SELECT COUNT(*) FROM {jobs}", params=()):
        return self.db.raw(sql, params)[0][0]

    def add_failed(self, queue="emails", failed_at=None, exception="RuntimeError: x"):
        p = self.db.param
        payload = json.dumps({"uuid": unique_table(), "job": "t_record", "data": {}})
        if failed_at is None:
            self.db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception)"
                        " VALUES (%s, 'database', %s, %s, %s)" % (p, p, p, p),
                        (unique_table(), queue, payload, exception))
        else:
            self.db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception,"
                        " failed_at) VALUES (%s, 'database', %s, %s, %s, %s)" % (p, p, p, p, p),
                        (unique_table(), queue, payload, exception, failed_at))
        return self.count("SELECT MAX(id) FROM {failed}")

    # -- push ------------------------------------------------------------

    def test_push_prints_the_id_and_a_worker_runs_the_job(self):
        self.db.queue()
        code, out, err = self.cli("push", "t_record", "--data", '{"n": 7}', "--queue", "q1")
        self.assertEqual((code, err), (0, ""))
        job_id = int(out.strip())
        queue, payload = self.db.raw("SELECT queue, payload FROM {jobs} WHERE id = %s"
                                     % self.db.param, (job_id,))[0]
        self.assertEqual(queue, "q1")
        self.assertEqual(json.loads(payload)["data"], {"n": 7})
        code, out, _ = self.cli("push", "t_record", "--delay", "3600")
        self.assertEqual(code, 0)
        self.assertEqual(self.count("SELECT available_at - created_at FROM {jobs} WHERE id = %s"
                                    % self.db.param, (int(out),)), 3600)
        code, _, err = self.cli("work", "--queue", "q1", "--stop-when-empty")
        self.assertEqual(code, 0, err)
        self.assertEqual(RECORD, [{"n": 7}])
        self.assertIn("outcome=done", err)

    def test_push_refuses_bad_input_with_one_line_and_writes_nothing(self):
        self.db.queue()
        for argv in (["--data", "{bad json"], ["--data", "[1, 2]"], ["--bogus"],
                     ["--delay", "-5"], ["--delay", "soon"], ["--queue", "has space"],
                     ["--data"]):
            code, out, err = self.cli("push", "t_record", *argv)
            self.assertEqual(code, 2, argv)
            self.assertEqual(out, "", argv)
            one_line(self, err)
        code, _, err = self.cli("push", " ")
        self.assertEqual(code, 2)
        one_line(self, err)
        self.assertEqual(self.count(), 0)

    # -- stats -----------------------------------------------------------

    def test_stats_as_table_json_and_prometheus(self):
        q = self.db.queue()
        p = self.db.param
        for i in range(3):
            q.push("t_record", {"i": i}, queue="emails")
        q.push("t_record", {}, queue="emails", delay=3600)
        # The ready ones have waited two minutes.
        self.db.raw("UPDATE {jobs} SET available_at = available_at - 120"
                    " WHERE queue = %s AND available_at = created_at" % p, ("emails",))
        q.push("t_record", {}, queue="default")
        q.push("t_record", {}, queue="slow")
        conn = q.connect()
        self.assertEqual(len(q.reserve(conn, ["default", "slow"], 2)[0]), 2)
        # The worker that holds the "slow" job has stopped renewing it.
        self.db.raw("UPDATE {jobs} SET reserved_at = reserved_at - 1000,"
                    " reserved_until = reserved_until - 1000 WHERE queue = %s" % p, ("slow",))
        self.add_failed("emails")

        code, out, err = self.cli("stats", "--json")
        self.assertEqual((code, err), (0, ""))
        stats = {s["queue"]: s for s in json.loads(out)}
        self.assertEqual(sorted(stats), ["default", "emails", "slow"])
        emails = stats["emails"]
        self.assertEqual([emails[k] for k in ("ready", "delayed", "reserved", "expired", "failed")],
                         [3, 1, 0, 0, 1])
        self.assertTrue(120 <= emails["oldest_ready_age"] < 180, emails)
        self.assertEqual(stats["default"], {"queue": "default", "ready": 0, "delayed": 0,
                                            "reserved": 1, "expired": 0, "failed": 0,
                                            "past_deadline": 0, "oldest_ready_age": None,
                                            "sent_last_hour": 0})
        self.assertEqual((stats["slow"]["reserved"], stats["slow"]["expired"]), (1, 1))
        # The same answer, except that a second may tick between the two calls.
        same = [dict(s, oldest_ready_age=None) for s in json.loads(out)]
        self.assertEqual([dict(s, oldest_ready_age=None)
                          for s in json.loads(self.cli("stats", "--format", "json")[1])], same)

        code, out, _ = self.cli("stats")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["queue", "ready", "delayed", "reserved", "expired",
                                            "failed", "past", "deadline", "oldest", "ready", "sent", "1h"])
        rows = {line.split()[0]: line for line in lines[1:]}
        self.assertEqual(rows["emails"].split()[1:6], ["3", "1", "0", "0", "1"])
        self.assertRegex(rows["emails"].split()[7], r"^2m\d\ds$")
        self.assertEqual(rows["default"].split()[7], "-")
        end = lines[0].index("failed") + len("failed")   # numbers are right-aligned
        for line in lines[1:]:
            self.assertTrue(line[end - 1].isdigit() and line[end] == " ", lines)

        code, out, _ = self.cli("stats", "--format", "prometheus")
        self.assertEqual(code, 0)
        samples = {}
        declared = set()
        for line in out.splitlines():
            if line.startswith("# TYPE "):
                name, kind = line.split()[2:4]
                self.assertEqual(kind, "gauge")
                declared.add(name)
            elif not line.startswith("# HELP "):
                self.assertRegex(line, r'^[a-z_]+\{queue="[^"]*"(,state="[a-z]+")?\} \d+$')
                name, _, value = line.partition(" ")
                self.assertIn(name.split("{")[0], declared)   # TYPE comes before the samples
                samples[name] = int(value)
        self.assertEqual(samples['dbqueue_jobs{queue="emails",state="ready"}'], 3)
        self.assertEqual(samples['dbqueue_jobs{queue="emails",state="delayed"}'], 1)
        self.assertEqual(samples['dbqueue_jobs{queue="default",state="reserved"}'], 1)
        self.assertEqual(samples['dbqueue_expired_reservations{queue="slow"}'], 1)
        self.assertEqual(samples['dbqueue_failed_jobs{queue="emails"}'], 1)
        self.assertEqual(samples['dbqueue_oldest_ready_age_seconds{queue="default"}'], 0)
        self.assertGreaterEqual(samples['dbqueue_oldest_ready_age_seconds{queue="emails"}'], 120)
        q.discard(conn)

    def test_stats_of_an_empty_queue_and_escaped_prometheus_labels(self):
        self.db.queue()
        code, out, _ = self.cli("stats")
        self.assertEqual(code, 0)
        self.assertIn("(no jobs", out)
        self.assertEqual(json.loads(self.cli("stats", "--json")[1]), [])
        # Another app wrote a queue name no dbqueue producer would accept.
        self.add_failed('we"ird\\q\nx')
        out = self.cli("stats", "--format", "prometheus")[1]
        self.assertIn('dbqueue_failed_jobs{queue="we\\"ird\\\\q\\nx"} 1\n', out)

    # -- health ----------------------------------------------------------

    def test_health_passes_and_fails_on_each_threshold(self):
        q = self.db.queue()
        for i in range(3):
            q.push("t_record", {}, queue="emails")
        self.db.raw("UPDATE {jobs} SET available_at = available_at - 600")
        self.add_failed("emails")
        self.add_failed("emails")
        code, out, _ = self.cli("health")
        self.assertEqual(code, 0)
        self.assertTrue(one_line(self, out).startswith("ok:"))
        code, out, _ = self.cli("health", "--max-ready", "3", "--max-age", "3600",
                                "--max-failed", "2")
        self.assertEqual(code, 0, out)   # equal to a threshold is not over it
        for flag, value, words in (("--max-ready", "2", "has 3 ready jobs"),
                                   ("--max-age", "300", "oldest ready job has waited"),
                                   ("--max-failed", "1", "has 2 failed jobs")):
            code, out, _ = self.cli("health", flag, value)
            self.assertEqual(code, 1, flag)
            line = one_line(self, out)
            self.assertIn("unhealthy: queue emails", line)
            self.assertIn(words, line)
            self.assertIn(flag, line)
        code, out, _ = self.cli("health", "--max-ready", "0", "--max-age", "0", "--max-failed", "0")
        self.assertEqual(code, 1)
        self.assertEqual(len(out.splitlines()), 3, out)

    def test_health_fails_without_tables_and_creates_none(self):
        if self.db.name == "sqlite":
            import sqlite3
            sqlite3.connect(self.db.url[len("sqlite:///"):]).close()   # an empty database file
        code, out, err = self.cli("health")
        self.assertEqual(code, 1)
        self.assertIn("migrate", one_line(self, out))
        if self.db.name == "sqlite":
            self.assertEqual(self.db.raw("SELECT name FROM sqlite_master"), [])
        elif self.db.name == "mysql":
            self.assertEqual(self.db.raw("SELECT table_name FROM information_schema.tables"
                                         " WHERE table_schema = DATABASE() AND table_name IN"
                                         " (%s, %s)", (self.db.table, self.db.failed_table)), [])
        else:
            self.assertIsNone(self.db.raw("SELECT to_regclass(%s)", ('"%s"' % self.db.table,))[0][0])

    # -- failed jobs -----------------------------------------------------

    def test_failed_list_then_retry_delivers_the_job(self):
        self.db.queue()
        self.cli("push", "t_permanent", "--queue", "emails", "--data", '{"token": "SECRET-DATA"}')
        self.cli("push", "t_flaky", "--data", '{"n": 2}')
        code, _, err = self.cli("work", "--queue", "emails,default", "--stop-when-empty",
                                "--tries", "1")
        self.assertEqual(code, 0, err)
        self.assertEqual(self.count(), 0)

        code, out, _ = self.cli("failed")
        self.assertEqual(code, 0)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["id", "uuid", "queue", "job", "failed", "at", "error"])
        self.assertEqual(len(lines), 3)
        self.assertIn("t_permanent", lines[1])
        self.assertIn("PermanentError: this cannot work", lines[1])
        self.assertIn("RuntimeError: flaky is down", lines[2])
        self.assertNotIn("SECRET-DATA", out)
        code, out, _ = self.cli("failed", "--queue", "emails", "--json")
        listed = json.loads(out)
        self.assertEqual([(f["queue"], f["job"]) for f in listed], [("emails", "t_permanent")])
        self.assertEqual(set(listed[0]), {"id", "uuid", "queue", "job", "failed_at", "error",
                                          "exception"})
        self.assertIn("Traceback", listed[0]["exception"])
        self.assertRegex(listed[0]["failed_at"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
        flaky_id = json.loads(self.cli("failed", "--queue", "default", "--json")[1])[0]["id"]

        FLAKY["fail"] = False
        code, out, _ = self.cli("retry", str(flaky_id))
        self.assertEqual(code, 0)
        self.assertRegex(out, r"^retried failed job %d as job \d+\n$" % flaky_id)
        self.assertEqual(self.count("SELECT attempts FROM {jobs}"), 0)
        code, _, err = self.cli("work", "--stop-when-empty")
        self.assertEqual(code, 0, err)
        self.assertEqual(RECORD, [{"n": 2}])
        self.assertEqual(self.count(), 0)

        code, _, err = self.cli("retry", str(flaky_id))   # already retried
        self.assertEqual(code, 1)
        self.assertIn("no failed job with id %d" % flaky_id, one_line(self, err))
        self.assertEqual(self.count(), 0)

        self.add_failed("other")
        code, out, _ = self.cli("retry", "all", "--queue", "emails")
        self.assertEqual((code, out), (0, "retried 1 failed job(s) of queue emails\n"))
        self.assertEqual(self.db.raw("SELECT queue, attempts FROM {jobs}"), [("emails", 0)])
        self.assertEqual(self.db.raw("SELECT queue FROM {failed}"), [("other",)])
        code, out, _ = self.cli("retry", "all")
        self.assertEqual((code, out), (0, "retried 1 failed job(s)\n"))
        self.assertEqual(self.count("SELECT COUNT(*) FROM {failed}"), 0)
        self.assertEqual(self.count(), 2)

    def test_forget_and_flush(self):
        self.db.queue()
        old = "2000-01-01 00:00:00+00" if self.db.name == "postgresql" else "2000-01-01 00:00:00"
        first = self.add_failed()
        self.add_failed(failed_at=old)
        self.add_failed()
        code, out, _ = self.cli("forget", str(first))
        self.assertEqual((code, out), (0, "deleted failed job %d\n" % first))
        code, _, err = self.cli("forget", str(first))
        self.assertEqual(code, 1)
        self.assertIn("no failed job with id %d" % first, one_line(self, err))
        code, out, _ = self.cli("flush", "--hours", "168")
        self.assertEqual((code, out), (0, "deleted 1 failed job(s) older than 168 hours\n"))
        self.assertEqual(self.count("SELECT COUNT(*) FROM {failed}"), 1)
        code, out, _ = self.cli("flush")
        self.assertEqual((code, out), (0, "deleted 1 failed job(s)\n"))
        self.assertEqual(self.count("SELECT COUNT(*) FROM {failed}"), 0)

    def test_clear_needs_force_without_a_terminal_and_spares_running_jobs(self):
        q = self.db.queue()
        q.push("t_record", {}, queue="q")
        conn = q.connect()
        self.assertEqual(len(q.reserve(conn, ["q"])[0]), 1)   # running: clear leaves it
        q.push("t_record", {}, queue="q")
        q.push("t_record", {}, queue="q", delay=600)
        q.push("t_record", {}, queue="other")
        with _NoTerminal():
            code, out, err = self.cli("clear", "--queue", "q")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("--force", one_line(self, err))
        self.assertEqual(self.count(), 4)
        with _NoTerminal():
            code, out, _ = self.cli("clear", "--queue", "q", "--force")
        self.assertEqual((code, out), (0, "deleted 2 waiting job(s) of queue q\n"))
        self.assertEqual(sorted(self.db.raw("SELECT queue, reserved_at IS NOT NULL FROM {jobs}")),
                         [("other", False), ("q", True)])
        q.discard(conn)


on_backends(OpsTests, PGBOUNCER)   # stats and the other commands, through PgBouncer

class CancelTests(_WorkerProcesses):
    """`cancel`: waiting and delayed jobs go to failed_jobs (retry brings them
    back); a running one is never touched."""

    def setUp(self):
        self.process_setup()

    def ids_left(self):
        return sorted(r[0] for r in self.db.raw("SELECT id FROM {jobs}"))

    def test_cancel_by_id_by_queue_and_by_queue_and_job_then_retry(self):
        q = self.db.queue()
        ready = q.push("p_append", {"n": 1}, queue="q1")
        delayed = q.push("p_append", {"n": 2}, queue="q1", delay=3600)
        other_name = q.push("t_record", {}, queue="q2")
        named = q.push("p_append", {"n": 3}, queue="q2")
        whole = [q.push("p_append", {"n": n}, queue="q3") for n in (4, 5)]
        env = self.db.env()
        code, out, err = run_main(["cancel", str(ready), str(delayed)], env)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(out.splitlines(), ["cancelled job %d: it is in the failed jobs (`retry`"
                                            " brings it back)" % i for i in (ready, delayed)])
        code, out, err = run_main(["cancel", "--queue", "q2", "--job", "p_append"], env)
        self.assertEqual((code, out, err), (0, "cancelled 1 waiting job(s) of queue q2 named"
                                               " p_append\n", ""))
        code, out, err = run_main(["cancel", "--queue", "q3"], env)
        self.assertEqual((code, out), (0, "cancelled 2 waiting job(s) of queue q3\n"), err)
        self.assertEqual(self.ids_left(), [other_name])
        failed = q.failed()
        self.assertEqual(sorted(json.loads(f["payload"])["data"].get("n") for f in failed),
                         [1, 2, 3, 4, 5])
        for f in failed:
            self.assertTrue(f["exception"].startswith("cancelled: "), f["exception"])
            self.assertNotIn("\n", f["exception"])
        code, out, err = run_main(["cancel", "999999"], env)
        self.assertEqual(code, 1)
        self.assertEqual(one_line(self, err), "dbqueue: no waiting job with id 999999")
        for argv in (["cancel"], ["cancel", "1", "--queue", "q1"], ["cancel", "--job", "x"]):
            code, _, err = run_main(argv, env)
            self.assertEqual(code, 2, argv)
            one_line(self, err)
        # Cancelled is not lost: retry brings them back, and a worker runs them.
        code, out, err = run_main(["retry", "all", "--queue", "q1"], env)
        self.assertEqual((code, out), (0, "retried 2 failed job(s) of queue q1\n"), err)
        self.assertEqual(len(self.ids_left()), 3)
        self.db.raw("UPDATE {jobs} SET available_at = 0")     # the delayed one too
        proc = self.start_worker("--queue", "q1", "--stop-when-empty")
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertEqual(sorted(self.lines()), ["done 1", "done 2"])

    def test_a_running_job_is_not_cancelled(self):
        q = self.db.queue()
        flag = os.path.join(self.ptmp, "flag")
        job_id = q.push("p_until", {"flag": flag})
        proc = self.start_worker("--queue", "default")
        wait_for(lambda: "start" in self.lines(), 30, message="the job to start")
        held = "SELECT id, attempts, reserved_at IS NOT NULL FROM {jobs}"
        before = self.db.raw(held)
        code, out, err = run_main(["cancel", str(job_id)], self.db.env())
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(one_line(self, err), "dbqueue: job %d is running: not cancelled (it"
                                              " finishes as it would have)" % job_id)
        self.assertEqual(self.db.raw(held), before)
        self.assertEqual(q.failed(), [])
        with open(flag, "w"):
            pass
        wait_for(lambda: self.lines() == ["start", "end"], 30, message="the job to end")
        wait_for(lambda: self.ids_left() == [], 30, message="its ack")
        self.assertEqual(q.failed(), [])
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0)


on_backends(CancelTests, SQLITE_PG_MARIADB)

# Rows made by the database itself, fast: n numbered i = 1..n.
_SERIES = {
    "sqlite": "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
              " SELECT {cols} FROM s",
    "postgresql": "SELECT {cols} FROM generate_series(1, {n}) AS s(i)",
    "mysql": "SELECT {cols} FROM (SELECT seq AS i FROM seq_1_to_{n}) AS s",
}


def _fill_jobs(db, n, queue, available_at):
    db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at, created_at) "
           + _SERIES[db.name].format(n=n, cols="'%s', '{{}}', 0, NULL, %d, 0"
                                     % (queue, available_at)))


def _fill_failed(db, n, queue="emails"):
    uuid = {"mysql": "CONCAT('u-', s.i)"}.get(db.name, "'u-' || s.i")
    db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception, failed_at) "
           + _SERIES[db.name].format(n=n, cols="%s, 'database', '%s', '{{}}', 'RuntimeError: x',"
                                     " CURRENT_TIMESTAMP" % (uuid, queue)))


class StatsAtScaleTests:
    """`stats`, `health` and the dashboard with big tables: capped counts,
    pages by id, plans that read indexes."""

    def setUp(self):
        del RECORD[:]

    def test_counts_over_the_cap_show_the_marker_and_health_still_decides(self):
        q = self.db.queue()
        _fill_jobs(self.db, dbqueue._COUNT_CAP + 1, "big", 0)
        _fill_jobs(self.db, 3, "small", 0)
        _fill_jobs(self.db, 2, "small", 2 ** 40)
        stats = {s["queue"]: s for s in q.stats()}
        self.assertEqual((stats["big"]["ready"], stats["big"]["capped"]),
                         (dbqueue._COUNT_CAP, ["ready"]))
        self.assertEqual((stats["small"]["ready"], stats["small"]["delayed"]), (3, 2))
        self.assertNotIn("capped", stats["small"])
        self.assertEqual({s["queue"]: s["ready"] for s in q.stats(cap=None)},
                         {"big": dbqueue._COUNT_CAP + 1, "small": 3})
        code, out, _ = run_main(["stats"], self.db.env())
        self.assertEqual(code, 0)
        self.assertRegex(out, r"(?m)^big +100,000\+ ")
        self.assertRegex(out, r"(?m)^small +3 +2 ")
        code, out, _ = run_main(["stats", "--json"], self.db.env())
        self.assertEqual(json.loads(out)[0]["capped"], ["ready"])
        # --max-ready N counts up to N + 1: exact on either side of N.
        code, out, _ = run_main(["health", "--max-ready", "100000"], self.db.env())
        self.assertEqual((code, out), (1, "unhealthy: queue big has 100000+ ready jobs"
                                          " (--max-ready 100000)\n"))
        code, out, _ = run_main(["health", "--max-ready", "100001"], self.db.env())
        self.assertEqual(code, 0, out)
        self.assertIn("; 100004 ready, 2 delayed,", out)
        code, out, _ = run_main(["health", "--max-ready", "2"], self.db.env())
        self.assertEqual(out, "unhealthy: queue big has 100000+ ready jobs (--max-ready 2)\n"
                              "unhealthy: queue small has 3 ready jobs (--max-ready 2)\n")
        client = DashboardClient(start_dashboard(self, q))
        page = client.get("/").page
        self.assertEqual(page.row(Queue="big")["Ready"].strip(), "100,000+")
        self.assertEqual(page.row(Queue="small")["Ready"].strip(), "3")
        self.assertEqual(page.tiles["ready"], "100,003+")

    def test_failed_list_pages_by_id_through_many_rows(self):
        q = self.db.queue()
        _fill_failed(self.db, 100)
        ids = [r[0] for r in self.db.raw("SELECT id FROM {failed} ORDER BY id DESC")]
        client = DashboardClient(start_dashboard(self, q, page_size=7))
        seen, pages, path = [], [], "/failed"
        while path:
            page = client.get(path).page
            pages.append([int(r["ID"]) for r in page.rows])
            seen += pages[-1]
            older = [link for link in page.links if "before=" in link]
            path = older[0] if older else None
            self.assertLessEqual(len(pages), 20)
        self.assertEqual(seen, ids)
        self.assertEqual([len(p) for p in pages], [7] * 14 + [2])
        # Back again by "Newer": the same pages, the first one without an id.
        back = []
        for n in range(len(pages), 1, -1):      # from page n to page n - 1
            newer = "/failed" if n == 2 else "/failed?page=%d&after=%d" % (n - 1, pages[n - 1][0])
            self.assertIn(newer, page.links)
            page = client.get(newer).page
            back.append([int(r["ID"]) for r in page.rows])
        self.assertEqual(back, pages[-2::-1])
        # An address without an id, as older versions made, still works.
        old = client.get("/failed?page=3").page
        self.assertEqual([int(r["ID"]) for r in old.rows], pages[2])

    def plan(self, cur, prepared, params):
        """The query plan of one of dbqueue's statements, as text."""
        text, names = prepared
        values = [params.get(n) for n in names]
        if self.db.name == "sqlite":
            cur.execute("EXPLAIN QUERY PLAN " + text, values)
            return "\n".join(str(r[-1]) for r in cur.fetchall())
        cur.execute("EXPLAIN " + text, values)
        if self.db.name == "postgresql":
            return "\n".join(r[0] for r in cur.fetchall())
        columns = [d[0].lower() for d in cur.description]
        rows = [dict(zip(columns, r)) for r in cur.fetchall()]
        # Only the reads of the tables (not of a CTE's own rows).
        return "\n".join(repr(r) for r in rows if r["table"] in (self.db.table,
                                                                  self.db.failed_table))

    def test_stats_claims_and_the_failed_list_read_indexes(self):
        q = self.db.queue()
        _fill_jobs(self.db, 2000, "emails", 0)
        _fill_jobs(self.db, 50, "emails", 2 ** 40)
        _fill_failed(self.db, 500)
        conn = q.connect()
        self.addCleanup(q.discard, conn)
        cur = conn.cursor()
        if self.db.name == "postgresql":
            # Whether an index *can* answer: the planner's choice on a small
            # table would be a sequential scan either way.
            cur.execute("SET enable_seqscan = off")
        elif self.db.name == "mysql":
            for table in (self.db.table, self.db.failed_table):
                cur.execute("ANALYZE TABLE %s" % q.dialect.ident(table))
                cur.fetchall()
        ready = self.db.table + "_ready"
        checks = [("stats_queues", {}, ready),
                  ("stats_waiting", {"queue": "emails", "cap": 11}, ready),
                  ("stats_reserved", {"retry_after": 90}, self.db.table + "_reserved"),
                  ("failed_list", {"before": 10 ** 6, "after": -1, "limit": 51, "offset": 0}, None)]
        checks.append(("claim", {"queue": "emails", "limit": 10}, ready) if q.dialect.claim
                      else ("claim_select", {"queue": "emails", "limit": 10}, ready))
        if self.db.name != "mysql":
            checks.append(("failed_counts", {}, self.db.failed_table[:57] + "_queue"))
        for key, params, index in checks:
            prepared = q.sql(key) if key != "failed_list" else q.dialect.prepare(
                dbqueue._SQL["failed_list"], self.db.table, self.db.failed_table, order="DESC")
            plan = self.plan(cur, prepared, params)
            if index:
                self.assertIn(index, plan, (key, plan))
            if self.db.name == "sqlite":
                self.assertNotRegex(plan, r"SCAN %s(\n|$)" % self.db.table, (key, plan))
                self.assertNotIn("USE TEMP B-TREE FOR ORDER BY", plan, (key, plan))
            elif self.db.name == "postgresql":
                self.assertNotIn("Seq Scan", plan, (key, plan))
            else:
                self.assertNotIn("'type': 'ALL'", plan, (key, plan))


on_backends(StatsAtScaleTests, SQLITE_PG_MARIADB)


class OpsCommandLineTests(unittest.TestCase):
    """Flags, help, configuration and logs: one database (SQLite) is enough."""

    def setUp(self):
        del RECORD[:]
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-ops-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "q.db")
        self.env = {"QUEUE_DATABASE_URL": "sqlite:///" + self.path}

    def test_help_shows_an_example_for_every_command(self):
        code, out, _ = run_main(["--help"])
        self.assertEqual(code, 0)
        self.assertIn("example:", out)
        for command in sorted(dbqueue._COMMANDS):
            code, out, _ = run_main([command, "--help"])
            self.assertEqual(code, 0, command)
            self.assertIn("example:\n  python3 dbqueue.py %s" % command, out)
            self.assertIn("--env-file", out)
            self.assertIn("--database-url", out)

    def test_bad_flags_exit_2_before_touching_the_database(self):
        cases = [
            [], ["nosuch"], ["push"], ["work", "--max-jobs", "-1"], ["work", "--sleep", "x"],
            ["work", "--timeout", "-3"], ["work", "--tries", "0"], ["work", "--bogus"],
            ["work", "--queue", "a b"], ["work", "--log-format", "xml"],
            ["work", "--backoff", "10,x"], ["stats", "--format", "xml"],
            ["stats", "--json", "--format", "json"], ["health", "--max-age", "-1"],
            ["health", "--max-ready", "lots"], ["health", "--max-failed", "1.5"],
            ["failed", "--queue", "a/b"], ["retry"], ["retry", "x"], ["retry", "all", "3"],
            ["retry", "3", "--queue", "q"], ["forget"], ["forget", "0"],
            ["flush", "--hours", "-1"], ["flush", "--hours", "nan"], ["flush", "--hours", "inf"],
            ["clear"], ["clear", "--queue", "bad queue"], ["clear", "--queue", "q"],
            ["stats", "--database-url", "mysql://u:s3cret@host/db?bogus=1"],
            ["stats", "--database-url", "ftp://u:s3cret@host/db"],
            ["stats", "--env-file", os.path.join(self.tmp, "missing.env")],
            ["migrate", "--bogus"], ["push", "t_record", "--dat", "{}"],
        ]
        for argv in cases:
            with _NoTerminal():
                line = assert_refused(self, run_main(argv, self.env), context=argv)
            self.assertNotIn("s3cret", line)
        code, _, err = run_main(["stats"], dict(self.env, QUEUE_MAX_ATTEMPTS="many"))
        self.assertEqual(code, 2)
        self.assertIn("QUEUE_MAX_ATTEMPTS", one_line(self, err))
        self.assertFalse(os.path.exists(self.path), "a bad flag opened the database")
        code, _, err = run_main(["work", "--max-jobs", "9" * 30, "--stop-when-empty"], self.env)
        self.assertEqual(code, 0, err)

    def test_every_command_takes_env_file_and_database_url(self):
        argvs = [["migrate"], ["work", "--stop-when-empty"], ["push", "t_record"], ["stats"],
                 ["health"], ["failed"], ["retry", "all"], ["cancel", "1"], ["forget", "1"],
                 ["flush"],
                 ["clear", "--queue", "q", "--force"], ["bench"], ["config"],
                 ["dashboard", "--port", "0"], ["pause", "q"], ["resume", "q"],
                 ["sent"]]
        self.assertEqual(sorted(a[0] for a in argvs), sorted(dbqueue._COMMANDS))
        missing = os.path.join(self.tmp, "missing.env")
        for argv in argvs:
            code, _, err = run_main(argv + ["--env-file", missing])
            self.assertEqual(code, 2, argv)
            self.assertIn("missing.env", one_line(self, err))
            code, _, err = run_main(argv + ["--database-url", "mysql://u@h/d?bogus=1"])
            self.assertEqual(code, 2, argv)
            self.assertIn("MySQL URLs take", one_line(self, err))
        env_file = os.path.join(self.tmp, "app.env")
        with open(env_file, "w") as fh:
            fh.write("# the app's settings\nQUEUE_DATABASE_URL=sqlite:///%s\n" % self.path)
        code, out, _ = run_main(["push", "t_record", "--env-file", env_file])
        self.assertEqual(code, 0)
        stats = json.loads(run_main(["stats", "--json", "--env-file", env_file])[1])
        self.assertEqual([(s["queue"], s["ready"]) for s in stats], [("default", 1)])
        other = "sqlite:///" + os.path.join(self.tmp, "other.db")
        self.assertEqual(run_main(["migrate", "--database-url", other])[0], 0)
        out = run_main(["stats", "--json", "--env-file", env_file, "--database-url", other])[1]
        self.assertEqual(json.loads(out), [])

    def test_health_of_a_missing_sqlite_database_creates_nothing(self):
        for path in (self.path, os.path.join(self.tmp, "no", "such", "dir", "q.db")):
            code, out, err = run_main(["health", "--database-url", "sqlite:///" + path])
            self.assertEqual(code, 1)
            self.assertIn("does not exist", one_line(self, out))
            self.assertEqual(err, "")
            self.assertFalse(os.path.exists(path))
        self.assertEqual(os.listdir(self.tmp), [])

    def test_unreachable_postgresql_is_one_line_without_the_password(self):
        import importlib.util
        need(any(importlib.util.find_spec(d) for d in ("psycopg", "psycopg2")),
             "no PostgreSQL driver is installed (pip install psycopg)")   # no server needed
        port = free_port()
        for url in ("postgresql://app:s3cret@127.0.0.1:%d/app?connect_timeout=10" % port,
                    "postgresql://app@127.0.0.1:%d/app?password=s3cret&connect_timeout=10" % port):
            code, out, err = run_main(["health", "--database-url", url])
            self.assertEqual(code, 1)
            line = one_line(self, out)
            self.assertTrue(line.startswith("unhealthy: cannot connect"), line)
            self.assertNotIn("s3cret", out + err)
            code, out, err = run_main(["stats", "--database-url", url])
            self.assertEqual((code, out), (1, ""))
            self.assertNotIn("s3cret", one_line(self, err))

    # -- worker logs -------------------------------------------------------

    def push_three(self):
        q = dbqueue.Queue(self.env["QUEUE_DATABASE_URL"])
        self.addCleanup(q.close)
        q.push("t_record", {"token": "SECRET-DATA"})
        q.push("t_fail", {"n": 1, "token": "SECRET-DATA"})
        q.push("t_permanent", {"token": "SECRET-DATA"})

    def test_worker_logs_one_text_line_per_job(self):
        self.push_three()
        code, _, err = run_main(["work", "--stop-when-empty", "--tries", "2", "--backoff", "30"],
                                self.env)
        self.assertEqual(code, 0, err)
        self.assertNotIn("SECRET-DATA", err)
        lines = err.splitlines()
        self.assertIn("worker starting database=sqlite:///%s queues=default tries=2 backoff=30"
                      % self.path, lines[0])
        self.assertEqual(sum("worker starting" in line for line in lines), 1)
        jobs = [line for line in lines if " job " in line]
        self.assertEqual(len(jobs), 3, err)
        stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    job id=\d+ "
        self.assertRegex(jobs[0], stamp + r"name=t_record queue=default attempt=1/2"
                         r" outcome=done ms=\d+\.\d$")
        self.assertRegex(jobs[1], stamp + r"name=t_fail queue=default attempt=1/2"
                         r" outcome=released delay=30 ms=[\d.]+ reason=\"boom 1\"$")
        self.assertRegex(jobs[2], stamp + r"name=t_permanent queue=default attempt=1/2"
                         r" outcome=failed ms=[\d.]+ reason=\"this cannot work\"$")

    def test_worker_logs_json_and_levels(self):
        self.push_three()
        code, _, err = run_main(["work", "--stop-when-empty", "--log-format", "json", "-v"],
                                self.env)
        self.assertEqual(code, 0, err)
        self.assertNotIn("SECRET-DATA", err)
        records = [json.loads(line) for line in err.splitlines()]
        self.assertEqual(records[0]["message"], "worker starting")
        self.assertEqual(records[0]["database"], "sqlite:///" + self.path)
        self.assertIn("handlers registered", [r["message"] for r in records])   # -v: debug
        jobs = [r for r in records if r["message"] == "job"]
        self.assertEqual([(r["name"], r["outcome"]) for r in jobs],
                         [("t_record", "done"), ("t_fail", "released"),
                          ("t_permanent", "failed")])
        for record in jobs:
            self.assertEqual(record["level"], "info")
            self.assertIsInstance(record["ms"], float)
            self.assertIsInstance(record["id"], int)
            self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertNotIn("delay", jobs[0])
        self.assertEqual(jobs[1]["delay"], 10)
        q = dbqueue.Queue(self.env["QUEUE_DATABASE_URL"])
        self.addCleanup(q.close)  # 3.13 warns on an unclosed sqlite3 connection, into a later test's stderr
        q.push("t_record", {})
        code, _, err = run_main(["work", "--stop-when-empty", "-q"], self.env)
        self.assertEqual(code, 0)
        self.assertEqual(err, "")        # -q: warnings and errors only
        self.assertEqual(len(RECORD), 2)

    def test_worker_startup_line_masks_the_password(self):
        need(pg_available("psycopg") is None, pg_available("psycopg") or "")
        db = PsycopgBackend(self)
        url = db.url + ("&" if "?" in db.url else "?") + "password=s3cret"
        env = db.env(QUEUE_DATABASE_URL=url)
        self.assertEqual(run_main(["migrate"], env)[0], 0)
        code, _, err = run_main(["work", "--stop-when-empty"], env)
        self.assertEqual(code, 0, err)
        self.assertNotIn("s3cret", err)
        self.assertIn("password=***", err.splitlines()[0])

    def test_interactive_clear_asks_on_the_terminal(self):
        import pty
        q = dbqueue.Queue(self.env["QUEUE_DATABASE_URL"])
        self.addCleanup(q.close)
        q.push("t_record", {})
        q.push("t_record", {})
        env = clean_env(**self.env)
        for answer, code, words, left in (("n\n", 1, "nothing deleted", 2),
                                          ("y\n", 0, "deleted 2 waiting job(s)", 0)):
            master, slave = pty.openpty()
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "dbqueue.py"), "clear",
                                     "--queue", "default"], stdin=slave, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=env, cwd=self.tmp)
            self.addCleanup(proc.kill)
            os.close(slave)
            os.write(master, answer.encode())
            try:
                out, err = proc.communicate(timeout=30)
            finally:
                os.close(master)
            self.assertEqual(proc.returncode, code, err)
            self.assertIn(b"Delete the 2 waiting job(s) of queue default? [y/N]", err)
            self.assertIn(words.encode(), out)
            self.assertEqual(sum(s["ready"] for s in q.stats()), left)


class OpsWorkerLogMaskTests(unittest.TestCase):
    """A handler's exception text in the worker's log (text and JSON) has its
    URL passwords and links' paths hidden, as in `failed` and the dashboard."""

    ERROR = ("cannot reach postgresql://app:S3cretPw@db.internal/app;"
             " reset link https://example.com/reset/TOKEN123")

    def run_worker(self, *args):
        tmp = tempfile.mkdtemp(prefix="dbqueue-logmask-")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(tmp, "dbq_leaky.py"), "w") as fh:
            fh.write("import dbqueue\n\n@dbqueue.job('p_leaky')\ndef leaky(data):\n"
                     "    raise RuntimeError(%r)\n" % self.ERROR)
        env = clean_env()
        env.update(PYTHONPATH=tmp, QUEUE_DATABASE_URL="sqlite:///" + os.path.join(tmp, "q.db"))
        q = dbqueue.Queue(env["QUEUE_DATABASE_URL"])
        self.addCleanup(q.close)
        q.push("p_leaky", {})
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "dbqueue.py"), "work", "--import", "dbq_leaky",
             "--stop-when-empty", "--tries", "2", "--backoff", "0"] + list(args),
            cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for secret in ("S3cretPw", "TOKEN123"):
            self.assertNotIn(secret, proc.stdout + proc.stderr)
        return proc.stderr

    def test_text_log(self):
        jobs = [line for line in self.run_worker().splitlines() if " job " in line]
        self.assertEqual(len(jobs), 2, jobs)
        for line, outcome in zip(jobs, ("released", "failed")):
            self.assertIn("outcome=%s " % outcome, line)
            self.assertIn('reason="cannot reach postgresql://app:***@db.internal/***'
                          ' reset link https://example.com/***"', line)

    def test_json_log(self):
        records = [json.loads(line) for line in self.run_worker("--log-format", "json")
                   .splitlines()]
        jobs = [r for r in records if r["message"] == "job"]
        self.assertEqual([r["outcome"] for r in jobs], ["released", "failed"])
        for record in jobs:
            self.assertEqual(record["reason"], "cannot reach"
                             " postgresql://app:***@db.internal/***"
                             " reset link https://example.com/***")


class OpsLogQuotingTests(unittest.TestCase):
    """Each text log value reads back as it was with a logfmt reader, a
    backslash at its end or before a quote included."""

    @staticmethod
    def read_logfmt(line):
        """{key: value} of a logfmt line; in a quoted value \\ and \\" are escapes,
        JSON's \\n, \\t, \\uXXXX too, any other backslash is itself."""
        fields, i = {}, 0
        while i < len(line):
            if line[i] == " ":
                i += 1
                continue
            eq = line.index("=", i)
            key, i = line[i:eq], eq + 1
            if line[i:i + 1] != '"':
                end = line.find(" ", i)
                end = len(line) if end < 0 else end
                fields[key], i = line[i:end], end
                continue
            value, i = [], i + 1
            while True:
                if i >= len(line):
                    raise ValueError("unterminated quoted value of %s: %s" % (key, line))
                ch = line[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < len(line) and line[i + 1] in '"\\ntu':
                    nxt = line[i + 1]
                    if nxt == "u":
                        value.append(chr(int(line[i + 2:i + 6], 16)))
                        i += 6
                        continue
                    value.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
                    i += 2
                    continue
                value.append(ch)
                i += 1
            fields[key] = "".join(value)
        return fields

    def test_values_read_back(self):
        values = ["C:\\dir\\ end\\", "ends\\", 'say "hi"', "App\\Jobs\\SendEmailJob failed",
                  "\\\\server\\share x", "tab\there", "a=b", "", "plain", "é ü"]
        for value in values:
            stream = io.StringIO()
            dbqueue._Log(stream=stream).warning("event", reason=value)
            line = stream.getvalue().rstrip("\n").split(" ", 3)[3]
            self.assertEqual(self.read_logfmt(line), {"reason": value}, line)
        stream = io.StringIO()
        dbqueue._Log(stream=stream).warning("event", job="App\\Jobs\\SendEmailJob failed")
        self.assertIn('job="App\\Jobs\\SendEmailJob failed"', stream.getvalue())   # as written


class OpsStatsTableTests(unittest.TestCase):
    """`stats` as a table: an empty column's "-" sits under its header, left-aligned."""

    def test_no_ready_job_shows_the_dash_under_oldest_ready(self):
        db = Backend(self)
        db.queue().push("t_record", {}, queue="later", delay=3600)
        code, out, err = run_main(["stats"], db.env())
        self.assertEqual(code, 0, err)
        header, row = out.splitlines()[:2]
        self.assertIn(" - ", row, out)
        self.assertEqual(row.rindex("-"), header.index("oldest ready"), out)


class OpsHelperTests(unittest.TestCase):

    def test_error_line_names_the_exception(self):
        text = 'Traceback (most recent call last):\n  File "x", line 1\nValueError: bad\n'
        self.assertEqual(dbqueue._error_line(text), "ValueError: bad")
        self.assertEqual(dbqueue._error_line("SMTP refused\n#0 stack"), "SMTP refused")
        self.assertEqual(dbqueue._error_line(""), "")

    def test_durations_and_masks(self):
        self.assertEqual([dbqueue._duration(s) for s in (None, 5, 125, 7260, 190000)],
                         [None, "5s", "2m05s", "2h01m", "2d04h"])
        self.assertEqual(dbqueue._mask_url("postgresql://u:pw@h/d?sslmode=require&password=x"),
                         "postgresql://u:***@h/d?sslmode=require&password=***")
        self.assertEqual(dbqueue._prom_label('a"b\\c\nd'), 'a\\"b\\\\c\\nd')


class OpsOddInputTests(unittest.TestCase):
    """Odd command-line input: one line on stderr, exit 2, nothing written."""

    def setUp(self):
        self.db = Backend(self)

    def test_odd_input_is_one_line_and_exit_2(self):
        env = self.db.env()
        module_dir = tempfile.mkdtemp(prefix="dbqueue-mod-")
        self.addCleanup(shutil.rmtree, module_dir, True)
        with open(os.path.join(module_dir, "dbq_broken_mod.py"), "w") as fh:
            fh.write("def broken(:\n")
        sys.path.insert(0, module_dir)
        self.addCleanup(sys.path.remove, module_dir)
        cases = [
            ["push", "t_record", "--data", '{"a": NaN}'],
            ["push", "t_record", "--data", '{"a": 1e999}'],
            ["push", "t_record", "--data", "[" * 5000 + "]" * 5000],
            ["retry", "99999999999999999999999"],
            ["forget", "99999999999999999999999"],
            ["work", "--once", "--import", ""],
            ["work", "--once", "--import", "dbq_broken_mod"],
            ["work", "--once", "--backoff", ""],
            ["work", "--once", "--timeout", "99999999999999"],
        ]
        for argv in cases:
            assert_refused(self, run_main(argv, env), os.path.join(self.db.tmp, "queue.db"),
                           context=argv)


# -- operations tests end here --


###############################################################################
# Speed #######################################################################
###############################################################################

# The batching that makes the worker fast must not weaken a guarantee: a
# prefetched batch survives a crash, the heartbeat keeps it alive, and --once
# still means one job. No timings are asserted here; .bench/ measures speed.

_BATCH_WORKER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import dbqueue

@dbqueue.job("t_batch")
def _t_batch(data):
    if data["i"] >= 5:             # the first five are fast: the next claim is a batch
        open(sys.argv[2], "w").close()
        time.sleep(600)

dbqueue.Worker.hold_seconds = 600    # the batch stays held behind the blocked job
dbqueue.Worker(dbqueue.Queue.from_env(), ["default"], log=dbqueue._Log(stream=sys.stdout)).run()
"""


@dbqueue.job("t_batch")
def _t_batch_record(data):
    RECORD.append(data)


@on_backends
class SpeedTests:

    def setUp(self):
        del RECORD[:]

    def reserved(self):
        return self.db.raw("SELECT id, attempts, reserved_at FROM {jobs}"
                           " WHERE reserved_at IS NOT NULL ORDER BY id")

    def test_killed_worker_loses_no_prefetched_job(self):
        q = self.db.queue()
        q.push_many("t_batch", [{"i": i} for i in range(20)])
        marker = os.path.join(self.db.tmp, "blocked")
        env = clean_env(**self.db.env())
        proc = subprocess.Popen([sys.executable, "-c", _BATCH_WORKER, HERE, marker], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        wait_for(lambda: os.path.exists(marker), 30, message="the worker to block on job 5")
        held = self.reserved()
        self.assertGreater(len(held), 1, "the worker should hold a prefetched batch")
        # attempts are counted when a job is reserved, prefetched ones included
        self.assertEqual({row[1] for row in held}, {1})
        proc.kill()
        proc.wait()
        # retry_after later (by the queue's clock) another worker takes them all back
        clock = Clock(int(time.time()) + q.config.retry_after + 5)
        q2 = self.db.queue(clock=clock)
        dbqueue.Worker(q2, ["default"], log=quiet_log()).run(stop_when_empty=True)
        # 5..19 were held (running or prefetched); jobs before 5 may run again
        # too when their acknowledgement was still riding with the next claim
        # (at least once), but none is lost
        handled = sorted(d["i"] for d in RECORD)
        self.assertEqual(handled, sorted(set(handled)))
        self.assertTrue(set(range(5, 20)) <= set(handled), handled)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)
        self.assertEqual(q2.failed(), [])

    def test_heartbeat_covers_prefetched_jobs(self):
        q = self.db.queue(retry_after=1)   # heartbeat every 1/3 s
        q.push_many("t_gate", [{"i": i} for i in range(20)])
        gate = threading.Event()
        started = []

        @dbqueue.job("t_gate")
        def _gate(data):
            started.append(data["i"])
            if data["i"] >= 5:
                gate.wait(30)

        self.addCleanup(dbqueue._registry.pop, "t_gate", None)
        w = dbqueue.Worker(q, ["default"], log=quiet_log())
        w.hold_seconds = 600    # the batch stays held behind the blocked job
        thread = threading.Thread(target=w.run, kwargs={"stop_when_empty": True})
        thread.start()
        self.addCleanup(thread.join, 30)
        self.addCleanup(gate.set)
        wait_for(lambda: 5 in started, 30, message="job 5 to start")
        held = self.reserved()
        self.assertGreater(len(held), 1, "the worker should hold a prefetched batch")
        first = max(row[2] for row in held)
        # every held row, not only the running one, gets a newer reserved_at
        wait_for(lambda: all(row[2] > first for row in self.reserved()), 15,
                 message="the heartbeat to touch every held job")
        self.assertEqual(len(self.reserved()), len(held))
        gate.set()
        thread.join(30)
        self.assertEqual(sorted(started), list(range(20)))
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)

    def test_batched_ack_and_touch_check_every_token(self):
        clock = Clock()
        q = self.db.queue(clock=clock)
        q.push_many("t_record", [{"i": i} for i in range(5)])
        conn = q.connect()
        jobs, _ = q.reserve(conn, ["default"], limit=5)
        tokens = [j.token for j in jobs]
        self.assertEqual(len(tokens), 5)
        # job 2 was taken over by another worker (new attempt); job 4 given back
        self.db.raw("UPDATE {jobs} SET attempts = attempts + 1 WHERE id = %d" % tokens[2][0])
        self.db.raw("UPDATE {jobs} SET reserved_at = NULL WHERE id = %d" % tokens[4][0])
        clock.advance(7)
        self.assertEqual(q.touch(conn, tokens), [tokens[2], tokens[4]])
        touched = self.db.raw("SELECT id FROM {jobs} WHERE reserved_at = %d ORDER BY id" % clock.now)
        self.assertEqual([r[0] for r in touched], [t[0] for t in tokens[:2]] + [tokens[3][0]])
        self.assertEqual(q.ack(conn, tokens), [tokens[2], tokens[4]])
        left = self.db.raw("SELECT id FROM {jobs} ORDER BY id")
        self.assertEqual([r[0] for r in left], [tokens[2][0], tokens[4][0]])

    def test_once_handles_one_job_when_many_are_ready(self):
        q = self.db.queue()
        q.push_many("t_record", [{"i": i} for i in range(10)])
        w = dbqueue.Worker(q, ["default"], log=quiet_log())
        self.assertEqual(w.run(max_jobs=3), 3)          # warm: the worker now batches
        w.run(once=True)
        self.assertEqual(w.processed, 4)
        code, out, err = run_main(["work", "--once", "-q"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual([d["i"] for d in RECORD], [0, 1, 2, 3, 4])
        rows = self.db.raw("SELECT attempts, reserved_at FROM {jobs}")
        self.assertEqual(len(rows), 5)
        # nothing was reserved ahead and left with a used-up attempt
        self.assertEqual(set(rows), {(0, None)})

    def test_bench_command_on_own_tables(self):
        q = self.db.queue()
        q.push("t_record", {"keep": True})
        code, out, err = run_main(["bench", "--jobs", "20", "--workers", "2"], self.db.env())
        self.assertEqual(code, 0, err)
        for label in ("floor", "W1", "W2", "W3", "W4"):
            self.assertRegex(out, r"(?m)^%s\s+\S.*\s\d+\s+\d+\.\d+\s+\d+" % label)
        self.assertRegex(out, r"latency push\(\) -> handler start.*p50 [\d.]+ ms, p95 [\d.]+ ms,"
                              r" p99 [\d.]+ ms")
        self.assertIn("tables of its own, dropped afterwards", out)
        self.assertIn("bench: W3", err)           # the progress line
        # the user's jobs are untouched and no bench table is left behind
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 1)
        if self.db.name == "sqlite":
            tables = self.db.raw("SELECT name FROM sqlite_master WHERE name LIKE 'dbqueue_bench%'")
        else:
            catalog = ("SELECT table_name FROM information_schema.tables WHERE table_schema ="
                       " DATABASE() AND table_name" if self.db.name == "mysql"
                       else "SELECT tablename FROM pg_tables WHERE tablename")
            tables = self.db.raw(catalog + " LIKE 'dbqueue_bench%%' AND " + catalog.split()[-1]
                                 + " LIKE %s", ("%%_%d%%" % os.getpid(),))
            tables += self.db.raw("SELECT tbl FROM dbqueue_migrations WHERE tbl LIKE"
                                  " 'dbqueue_bench_%d'" % os.getpid())
        self.assertEqual(tables, [])


class SpeedDefaultDatabaseTests(unittest.TestCase):

    def test_bench_never_touches_the_default_sqlite_database(self):
        code, out, err = run_main(["bench", "--jobs", "10", "--workers", "1"], {})
        self.assertEqual(code, 0, err)
        self.assertIn("a temporary file", out)
        self.assertIn("not your database", out)
        self.assertIn("synchronous=FULL", out)

    def test_import_leaves_json_and_re_for_later(self):
        # what `import dbqueue` costs a web app at start-up (see .bench/checks.py)
        code = ("import sys; sys.path.insert(0, %r); import dbqueue;"
                " print(' '.join(m for m in ('json', 're', 'sqlite3', 'argparse', 'email')"
                " if m in sys.modules))" % HERE)
        out = subprocess.run([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout
        self.assertEqual(out.split(), [])


# -- speed tests end here --


###############################################################################
# Faults: crashes, contention, private servers, secrets, hostile input ########
###############################################################################

# The fault suite shows the guarantees under real failures: real worker
# processes killed with SIGKILL, real lock contention, a real PostgreSQL
# server restarted under running workers, hostile rows written by hand.
# The heavy part (crash loop, contention, restart) runs only with
# DBQUEUE_FAULTS=1; the rest is quick and always runs. DBQUEUE_FAULTS=only
# runs the heavy part alone (CI gives it a job of its own).

import atexit  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402

FAULTS = os.environ.get("DBQUEUE_FAULTS") in ("1", "only")


def heavy(test):
    """Mark a test of the heavy fault suite: skipped unless DBQUEUE_FAULTS is set."""
    test = unittest.skipUnless(FAULTS, "fault suite: set DBQUEUE_FAULTS=1 to run the crash loop,"
                                       " contention and database restart tests")(test)
    test.heavy = True
    return test


DBQUEUE_PY = os.path.join(HERE, "dbqueue.py")

# A handler module for worker subprocesses (`work --import fault_jobs`).
# Every run appends one line to FAULT_LOG with O_APPEND, so lines from
# several processes never overwrite each other and a SIGKILL loses at most
# the line being written.
FAULT_JOBS = '''
import os, random, signal, time
import dbqueue

if os.environ.get("FAULT_BUSY_TIMEOUT"):
    dbqueue._SQLite.busy_timeout = float(os.environ["FAULT_BUSY_TIMEOUT"])
_fd = os.open(os.environ["FAULT_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _record(*fields):
    os.write(_fd, (" ".join(str(f) for f in fields) + "\\n").encode())


@dbqueue.job("fault_sleep")
def fault_sleep(data):
    attempt = dbqueue.current_job().attempts
    _record("start", data["n"], attempt, os.getpid())
    time.sleep(random.uniform(0, data.get("ms", 20)) / 1000.0)
    if data.get("fail"):
        raise RuntimeError("planned failure of job %d" % data["n"])
    _record("end", data["n"], attempt, os.getpid())


@dbqueue.job("fault_kill_self")
def fault_kill_self(data):
    _record("start", data["n"], dbqueue.current_job().attempts, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


@dbqueue.job("fault_count")
def fault_count(data):
    _record("run", data["n"], os.getpid())
'''


def _fault_env(extra):
    env = clean_env("FAULT_")
    env.update(extra)
    return env


def _die_with_parent():
    """preexec_fn: the kernel SIGKILLs the worker if the test process dies first
    (Linux PR_SET_PDEATHSIG), so a test run killed from outside leaves none behind."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except Exception:
        pass


def launch_worker(testcase, args, env, cwd, log):
    """A real `python dbqueue.py work ARGS` in `cwd` with exactly `env`: stdin
    closed, stdout dropped, stderr into the file `log` (proc.log, read with
    worker_stderr). Killed in the test's cleanup, and by the kernel if the test
    process dies first."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, DBQUEUE_PY, "work"] + list(args), cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    proc.log = log

    def stop():
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    testcase.addCleanup(stop)
    return proc


def worker_stderr(proc):
    with open(proc.log, encoding="utf-8", errors="replace") as fh:
        return fh.read()


class _Procs:
    """Worker subprocesses of one test running fault_jobs, in one temp dir."""

    def __init__(self, testcase, tmp, env):
        self.testcase, self.tmp, self.env, self.count = testcase, tmp, env, 0
        with open(os.path.join(tmp, "fault_jobs.py"), "w") as fh:
            fh.write(FAULT_JOBS)

    def start(self, *args, **env):
        self.count += 1
        return launch_worker(self.testcase, ["--import", "fault_jobs"] + list(args),
                             dict(self.env, **env), self.tmp,
                             os.path.join(self.tmp, "worker%d.err" % self.count))

    stderr = staticmethod(worker_stderr)


def _records(path):
    """The lines the fault_jobs handlers wrote, split into fields."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        # The last line may be cut by a SIGKILL mid-write: keep whole lines only.
        return [line.split() for line in fh.read().split("\n")[:-1] if line]


def _count_jobs(db):
    return db.raw("SELECT COUNT(*) FROM {jobs}")[0][0]


class CrashTests:
    """Workers killed with SIGKILL at random points lose no job (heavy)."""

    @heavy
    def test_sigkill_at_random_points_loses_nothing(self):
        rounds, tries, jobs = 20, 3, 300
        seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
        rng = random.Random(seed)
        print("\n[crash %s] seed %d" % (self.db.name, seed), file=sys.stderr)
        log = os.path.join(self.db.tmp, "runs.log")
        procs = _Procs(self, self.db.tmp, _fault_env(self.db.env(
            QUEUE_RETRY_AFTER=2, QUEUE_MAX_ATTEMPTS=tries, QUEUE_BACKOFF=0, QUEUE_TIMEOUT=30,
            FAULT_LOG=log)))
        q = self.db.queue(retry_after=2)
        planned = {n for n in range(jobs) if n % 25 == 7}
        kamikaze = {100001, 100002}
        q.push_many("fault_sleep", [{"n": n, "ms": 30, "fail": n in planned}
                                    for n in range(jobs // 2)])
        q.push("fault_kill_self", {"n": 100001})
        q.push_many("fault_sleep", [{"n": n, "ms": 30, "fail": n in planned}
                                    for n in range(jobs // 2, jobs)])
        q.push("fault_kill_self", {"n": 100002})
        started = time.monotonic()
        for _ in range(rounds):
            proc = procs.start("--sleep", "0.1", "-q")
            # Not synchronisation: the random moment of the kill, from before the
            # worker connects to well inside its handlers and acks.
            time.sleep(rng.uniform(0.05, 1.0))
            proc.kill()
            proc.wait(10)
        # A final worker drains what is left, expired reservations included. A
        # fault_kill_self job with attempts left kills it: restart it then, as
        # its supervisor (systemd) would.
        final = [procs.start("--sleep", "0.2")]

        def drained():
            if final[-1].poll() is not None:
                self.assertEqual(final[-1].returncode, -signal.SIGKILL)
                final.append(procs.start("--sleep", "0.2"))
            return _count_jobs(self.db) == 0
        try:
            wait_for(drained, 60, 0.1, "the final drain")
        except AssertionError:
            rows = self.db.raw("SELECT id, attempts, reserved_at, available_at FROM {jobs}")
            raise AssertionError("final drain stuck; jobs left: %r\nworker log:\n%s"
                                 % (rows[:10], procs.stderr(final[-1])[-3000:]))
        final = final[-1]
        final.terminate()
        self.assertEqual(final.wait(30), 0, procs.stderr(final))
        self.assertNotIn("Traceback", procs.stderr(final))
        elapsed = time.monotonic() - started

        runs, ends = {}, {}
        for fields in _records(log):
            n, attempt = int(fields[1]), int(fields[2])
            (runs if fields[0] == "start" else ends).setdefault(n, []).append(attempt)
        failed = {}
        for row in q.failed():
            failed[json.loads(row["payload"])["data"]["n"]] = row["exception"]
        everything = set(range(jobs)) | kamikaze
        lost = everything - set(ends) - set(failed)
        self.assertEqual(lost, set(), "jobs neither completed nor failed")
        for n, attempts in runs.items():
            # Attempts are counted at reservation: no attempt runs twice, none past the limit.
            self.assertEqual(len(attempts), len(set(attempts)), (n, attempts))
            self.assertLessEqual(max(attempts), tries, (n, attempts))
        for n in planned:
            if n in failed:
                self.assertTrue("planned failure" in failed[n] or "died" in failed[n], failed[n])
        died = 0
        for n, text in failed.items():
            if n not in planned:
                # Only a worker's death can fail a job whose handler never raises.
                self.assertIn("worker died", text)
                died += 1
        for n in kamikaze:
            self.assertIn(n, failed)
            self.assertIn("attempt %d of %d" % (tries + 1, tries), failed[n])
            self.assertIn("worker died", failed[n])
        twice = sum(1 for n, a in ends.items() if len(a) > 1)
        print("[crash %s] %d rounds of SIGKILL in %.1fs: %d jobs, %d completed (%d completed"
              " twice: killed between handler and ack), %d failed (%d by worker deaths), 0 lost"
              % (self.db.name, rounds, elapsed, len(everything), len(set(ends)), twice,
                 len(failed), died), file=sys.stderr)


on_backends(CrashTests, SQLITE_PG_MARIADB)


class ContentionTests:
    """More worker processes than cores, a producer pushing during the drain (heavy)."""

    workers = 8
    total = 20000
    upfront = 5000

    @heavy
    def test_eight_workers_drain_while_a_producer_pushes(self):
        log = os.path.join(self.db.tmp, "runs.log")
        procs = _Procs(self, self.db.tmp, _fault_env(self.db.env(FAULT_LOG=log)))
        q = self.db.queue()
        for start in range(0, self.upfront, 1000):
            q.push_many("fault_count", [{"n": n} for n in range(start, start + 1000)])
        errors, produced = [], []

        def produce():
            begun = time.monotonic()
            try:
                for start in range(self.upfront, self.total, 100):
                    q.push_many("fault_count", [{"n": n} for n in range(start, start + 100)])
                    time.sleep(0.002)   # spread the pushes over the drain
            except Exception as exc:   # reported below, in the test's thread
                errors.append(exc)
            produced.append(time.monotonic() - begun)

        producer = threading.Thread(target=produce)
        started = time.monotonic()
        workers = [procs.start("-q", "--sleep", "0.5") for _ in range(self.workers)]
        producer.start()
        producer.join(120)
        self.assertEqual(errors, [])
        wait_for(lambda: _count_jobs(self.db) == 0, 120, 0.05, "the drain")
        elapsed = time.monotonic() - started
        for proc in workers:
            self.assertIsNone(proc.poll(), "a worker died: " + procs.stderr(proc)[-2000:])
            proc.terminate()
        for proc in workers:
            self.assertEqual(proc.wait(30), 0)
            text = procs.stderr(proc)
            self.assertNotIn("locked", text.lower())
            self.assertNotIn("lock held", text)
            self.assertNotIn("deadlock", text.lower())     # MySQL 1213: retried, never shown
            self.assertNotIn("Traceback", text)
        counts = {}
        for fields in _records(log):
            counts[int(fields[1])] = counts.get(int(fields[1]), 0) + 1
        self.assertEqual(set(counts), set(range(self.total)), "lost jobs")
        self.assertEqual([n for n, c in counts.items() if c != 1], [], "jobs run twice")
        self.assertEqual(q.failed(), [])
        print("\n[contention %s] %d workers, %d jobs (%d up front, the rest pushed by a producer"
              " over %.1fs of the drain): drained in %.1fs (worker start-up included),"
              " %.0f jobs/s, each run exactly once"
              % (self.db.name, self.workers, self.total, self.upfront, produced[0], elapsed,
                 self.total / elapsed), file=sys.stderr)


on_backends(ContentionTests, SQLITE_PG_MARIADB)


class PoolerContentionTests(ContentionTests):
    """The same through PgBouncer in transaction mode: 4 workers, 5,000 jobs each (heavy)."""

    workers = 4


on_backends(PoolerContentionTests, PGBOUNCER)


PG_BIN = "/usr/lib/postgresql/15/bin"
PG_PASSWORD = "Zq7-s3cr3t-w9Xk"      # the password role's password; must never be printed


class _PrivateServer:
    """A database server the suite starts itself: a temp dir owned by the
    server's user, its own port and socket, so it can be stopped or killed
    without touching the shared one. Started once per test run when first
    needed (get()), stopped at the end; a watchdog stops it if the test
    process dies without cleaning up. Subclasses: check(), __init__, halt()."""

    _instance = None
    _failure = None
    what, user = "a private server", "root"

    @classmethod
    def get(cls):
        need(hasattr(os, "geteuid") and os.geteuid() == 0,
             "%s needs root (it runs as the %s user)" % (cls.what, cls.user))
        cls.check()
        if cls._instance is None and cls._failure is None:
            try:
                server = cls()
            except Exception as exc:
                cls._failure = "could not start %s: %s" % (cls.what, exc)
            else:
                cls._instance = server
                unittest.addModuleCleanup(server.stop)
                atexit.register(server.stop)    # also when run outside unittest's runner
        if cls._failure:
            raise AssertionError(cls._failure)
        return cls._instance

    def make_dir(self, prefix):
        import pwd
        user = pwd.getpwnam(self.user)
        self.dir = tempfile.mkdtemp(prefix=prefix)
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()

    _WATCHDOG = textwrap.dedent("""
        import os, shutil, subprocess, sys, time
        parent, tmp, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
        while os.path.exists(tmp):
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                try:
                    subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   timeout=60)
                except Exception:
                    pass
                time.sleep(1)
                shutil.rmtree(tmp, True)
                break
            time.sleep(0.5)
        """)

    def _watch(self, *stop):
        # A test run killed from outside (a CI timeout, ^C twice) runs no
        # cleanup: this watchdog, in a session of its own, runs `stop` and
        # removes the dir once the test process is gone.
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", self._WATCHDOG, str(os.getpid()), self.dir] + list(stop),
            start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def stop(self):
        try:
            self.halt()
        except Exception:
            pass
        shutil.rmtree(self.dir, True)
        watchdog = getattr(self, "watchdog", None)
        if watchdog is not None:
            watchdog.wait(10)    # it sees the dir gone within half a second
        if type(self)._instance is self:
            type(self)._instance = None


class PrivateCluster(_PrivateServer):
    """A PostgreSQL server of the fault tests' own, in a temp dir, on its own
    port and socket dir: it can be restarted without touching the shared one.

    Started once per test run when first needed and stopped at the end.
    Role `dbq_pw` (password PG_PASSWORD) may log in over TCP on 127.0.0.1
    only with scram-sha-256; the socket trusts `postgres`.
    """

    what, user = "a private PostgreSQL cluster", "postgres"

    @classmethod
    def check(cls):
        need(os.path.exists(os.path.join(PG_BIN, "initdb")), "PostgreSQL 15 binaries are missing"
             " at %s" % PG_BIN)
        need(pg_available("psycopg") is None, pg_available("psycopg") or "")

    def __init__(self):
        self.make_dir("dbqueue-pg-")
        try:
            self._pg("initdb", "-D", self.data, "-U", "postgres", "-N",
                     "--auth-local=trust", "--auth-host=scram-sha-256")
            options = ("-c port=%d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s"
                       " -c fsync=off -c max_connections=40" % (self.port, self.dir))
            self._pg("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"),
                     "-o", options, "-w", "-t", "60", "start")
            self._watch("runuser", "-u", "postgres", "--", os.path.join(PG_BIN, "pg_ctl"),
                        "-D", self.data, "-m", "immediate", "-w", "stop")
            conn = _pg_connect(__import__("psycopg"), self.url(database="postgres"))
            try:
                cur = conn.cursor()
                cur.execute("CREATE ROLE dbq_pw LOGIN PASSWORD '%s'" % PG_PASSWORD)
                cur.execute("CREATE DATABASE dbq OWNER dbq_pw")
            finally:
                conn.close()
        except BaseException:
            self.stop()
            raise

    def _pg(self, program, *args):
        result = subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(PG_BIN, program)]
                                + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            raise RuntimeError("%s failed: %s" % (program, result.stdout.decode()[-1000:]))

    def url(self, driver="", database="dbq"):
        """The superuser's URL over this cluster's own socket."""
        return "postgresql%s://postgres@/%s?host=%s&port=%d" % (
            "+" + driver if driver else "", database, self.dir, self.port)

    def restart(self):
        # -l again: without it the new server would write to (and hold open) our pipe.
        self._pg("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"),
                 "-m", "fast", "-w", "-t", "60", "restart")

    def halt(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")


class PrivateClusterTests(unittest.TestCase):
    """PostgreSQL going away under running workers, and secrets in its errors."""

    def setUp(self):
        self.cluster = PrivateCluster.get()
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.table = unique_table()

    def config(self, url):
        return dbqueue.Config(database_url=url, table=self.table, failed_table=self.table + "_f",
                              retry_after=5, backoff=[0])

    @heavy
    def test_restart_mid_drain_workers_reconnect_and_finish(self):
        total = 3000
        q = dbqueue.Queue(config=self.config(self.cluster.url("psycopg")))
        self.addCleanup(q.close)
        q.migrate()
        q.push_many("fault_sleep", [{"n": n, "ms": 4} for n in range(total)])
        log = os.path.join(self.tmp, "runs.log")
        env = _fault_env({"QUEUE_TABLE": self.table, "QUEUE_FAILED_TABLE": self.table + "_f",
                          "QUEUE_RETRY_AFTER": "5", "QUEUE_BACKOFF": "0", "FAULT_LOG": log})
        procs = _Procs(self, self.tmp, env)
        # Both drivers at once: each detects a dead connection its own way.
        workers = [procs.start("--sleep", "0.5", QUEUE_DATABASE_URL=self.cluster.url(driver))
                   for driver in ("psycopg", "psycopg2", "psycopg")]

        def done():
            return len([f for f in _records(log) if f[0] == "end"])
        wait_for(lambda: done() >= total // 5, 60, 0.05, "a fifth of the jobs")
        before = done()
        restarted = time.monotonic()
        self.cluster.restart()
        restart_seconds = time.monotonic() - restarted
        q.close()
        wait_for(lambda: _pg_count(q) == 0, 120, 0.2, "the drain after the restart")
        after = time.monotonic() - restarted
        for proc in workers:
            self.assertIsNone(proc.poll(), "a worker died: " + procs.stderr(proc)[-2000:])
            proc.terminate()
        logs = []
        for proc in workers:
            self.assertEqual(proc.wait(30), 0)
            logs.append(procs.stderr(proc))
        for text in logs:
            # Every worker's connection died with the server: each noticed and came back.
            self.assertIn("database unavailable; retrying with backoff", text)
            self.assertIn("database available again", text)
            self.assertNotIn("Traceback", text)
        ends = {}
        for fields in _records(log):
            if fields[0] == "end":
                ends[int(fields[1])] = ends.get(int(fields[1]), 0) + 1
        self.assertEqual(set(ends), set(range(total)), "lost jobs")
        self.assertEqual(q.failed(), [])
        print("\n[restart] pg_ctl restart -m fast after %d of %d jobs (took %.1fs); 3 workers"
              " reconnected by themselves and drained the rest %.1fs after the restart began;"
              " %d jobs ran twice, none lost"
              % (before, total, restart_seconds, after,
                 sum(1 for c in ends.values() if c > 1)), file=sys.stderr)

    def secret_free(self, url, label):
        """Run every CLI command against `url`; none may print the password."""
        env = {"QUEUE_DATABASE_URL": url, "QUEUE_TABLE": self.table,
               "QUEUE_FAILED_TABLE": self.table + "_f"}
        results = {}
        for argv in (["migrate"], ["push", "t_record", "--data", '{"a": 1}'], ["work", "--once"],
                     ["stats"], ["stats", "--json"], ["stats", "--format", "prometheus"],
                     ["health"], ["failed"], ["failed", "--json"]):
            code, out, err = run_main(argv, env)
            results[" ".join(argv)] = (code, out + err)
            self.assertNotIn(PG_PASSWORD, out + err, "%s: %s" % (label, argv))
        return results

    def test_password_never_shown_when_authentication_fails(self):
        for driver in ("psycopg", "psycopg2"):
            need(pg_available(driver) is None, pg_available(driver) or "")
            for url in ("postgresql+%s://dbq_pw:%s@127.0.0.1:%d/dbq",
                        "postgresql+%s://dbq_pw@127.0.0.1:%d/dbq?password=%s"):
                wrong = "wr0ng-" + PG_PASSWORD
                if "?password" in url:
                    url = url % (driver, self.cluster.port, wrong)
                else:
                    url = url % (driver, wrong, self.cluster.port)
                code, out, err = run_main(["migrate"], {"QUEUE_DATABASE_URL": url})
                self.assertEqual(code, 1)
                self.assertIn("password authentication failed", err)
                for argv, (code, text) in self.secret_free(url, "auth failed").items():
                    self.assertNotIn(wrong, text, argv)
                    self.assertNotIn("wr0ng", text, argv)

    def test_password_never_shown_in_logs_stats_or_failed_jobs(self):
        url = "postgresql://dbq_pw:%s@127.0.0.1:%d/dbq" % (PG_PASSWORD, self.cluster.port)
        env = {"QUEUE_DATABASE_URL": url, "QUEUE_TABLE": self.table,
               "QUEUE_FAILED_TABLE": self.table + "_f"}
        self.assertEqual(run_main(["migrate"], env)[0], 0)
        self.assertEqual(run_main(["push", "t_fail", "--data", '{"n": 1}'], env)[0], 0)
        self.assertEqual(run_main(["push", "t_permanent"], env)[0], 0)
        q = dbqueue.Queue(config=self.config(url))
        self.addCleanup(q.close)
        log = io.StringIO()
        dbqueue.Worker(q, ["default"], tries=1, log=dbqueue._Log(stream=log, level="debug")).run(
            stop_when_empty=True)
        failed = q.failed()
        self.assertEqual(len(failed), 2)
        texts = [log.getvalue()] + [json.dumps(row) for row in failed]
        texts += [text for _, text in self.secret_free(url, "correct password").values()]
        texts.append(repr(q) + repr(q.config))
        for text in texts:
            self.assertNotIn(PG_PASSWORD, text)


def _pg_count(q):
    """Jobs left, counted through the queue's own (reconnecting) connection."""
    try:
        return sum(s["ready"] + s["delayed"] + s["reserved"] for s in q.stats())
    except dbqueue.QueueError:
        q.close()
        return None


class SecretsTests(unittest.TestCase):
    """A password in QUEUE_DATABASE_URL never reaches output, whichever error occurs."""

    def test_password_never_shown_when_connection_is_refused(self):
        port = free_port()   # nothing listens there now
        for driver in ("psycopg", "psycopg2"):
            need(pg_available(driver) is None, pg_available(driver) or "")
            for url in ("postgresql+%s://app:%s@127.0.0.1:%d/appdb?connect_timeout=5"
                        % (driver, PG_PASSWORD, port),
                        "postgresql+%s://app@127.0.0.1:%d/appdb?password=%s"
                        % (driver, port, PG_PASSWORD),
                        "postgresql+%s://app:%s@127.0.0.1:notaport/appdb"
                        % (driver, PG_PASSWORD)):
                env = {"QUEUE_DATABASE_URL": url}
                for argv in (["migrate"], ["push", "t_record"], ["work", "--once"], ["stats"],
                             ["health"]):
                    code, out, err = run_main(argv, env)
                    # An unreachable database is a failure, not a usage error (2).
                    self.assertEqual(code, 1, (argv, out, err))
                    self.assertNotIn(PG_PASSWORD, out + err, (url, argv))
                    # One clear reason, from main() or from `health`'s report.
                    self.assertIn("cannot connect to postgresql://app", out + err)


class SecretsUrlPasswordTests(unittest.TestCase):
    """A password holding @ : / # %40 or non-ASCII text is read whole by the
    parser and hidden whole wherever the URL is shown."""

    PASSWORDS = ["Alpha@Bravo!x", "Alpha:Bravo", "Alpha/Bravo", "Alpha%40Bravo", "Alpha#Bravo",
                 "Alphä€Bravo", "Al@pha/Br#avo:x", "Al?pha", "Al?pha@Bravo", "Al@pha?Bravo"]
    SCHEMES = ["postgresql", "postgres", "mysql", "mariadb", "mysql+pymysql", "mysql+mysqldb"]

    def url(self, scheme, password, port=3306):
        return "%s://app:%s@127.0.0.1:%d/appdb" % (scheme, password, port)

    def assert_hidden(self, password, text):
        import re
        from urllib.parse import unquote
        for fragment in set(re.findall(r"\w{3,}", password) + re.findall(r"\w{3,}",
                                                                        unquote(password))):
            self.assertNotIn(fragment, text, (password, text))

    def test_the_parser_reads_user_host_and_database_whatever_the_password(self):
        from urllib.parse import unquote
        for scheme in self.SCHEMES:
            for password in self.PASSWORDS:
                url = self.url(scheme, password)
                dialect, target, _ = dbqueue._parse_url(url)
                if dialect is dbqueue._MySQL:
                    got = {k: target[k] for k in ("user", "password", "host", "port", "database")}
                    self.assertEqual(got, {"user": "app", "password": unquote(password),
                                           "host": "127.0.0.1", "port": 3306,
                                           "database": "appdb"}, url)
                    self.assert_hidden(password, target["url"])
                else:
                    # What libpq itself takes from the URL handed to it.
                    need(pg_available("psycopg") is None, pg_available("psycopg") or "")
                    from psycopg.conninfo import conninfo_to_dict
                    self.assertEqual(conninfo_to_dict(target["dsn"]), {
                        "user": "app", "password": unquote(password), "host": "127.0.0.1",
                        "port": "3306", "dbname": "appdb"}, url)
                masked = dbqueue._mask_url(url)
                self.assertEqual(masked, "%s://app:***@127.0.0.1:3306/appdb" % scheme)
                self.assertEqual(dbqueue._mask_links(url), masked[:-len("appdb")] + "***")
                self.assertEqual(dbqueue._without_password("failed: " + url + " for "
                                                           + password + " / "
                                                           + unquote(password), url),
                                 "failed: %s for *** / ***" % masked)
                self.assertEqual(dbqueue._mask_url("Queue(%r) failed" % url),
                                 "Queue(%r) failed" % masked)

    def test_config_the_worker_and_errors_never_show_it(self):
        port = free_port()   # nothing listens there now
        for scheme in ("postgresql", "mysql"):
            need((pg_available("psycopg") if scheme == "postgresql"
                  else mysql_available("pymysql")) is None, "no driver for %s" % scheme)
            for password in self.PASSWORDS:
                # Not url_with: a "?" in the password is not the query's.
                url = self.url(scheme, password, port) + "?connect_timeout=5"
                shown = "%s://app:***@127.0.0.1:%d/appdb" % (scheme, port)
                env = {"QUEUE_DATABASE_URL": url}
                code, out, err = run_main(["config"], env)
                self.assertEqual(code, 0, err)
                self.assertIn(shown, out)
                self.assert_hidden(password, out + err)
                code, out, err = run_main(["config", "--json"], env)
                self.assertEqual(code, 0, err)
                value = [s["value"] for s in json.loads(out)["settings"]
                         if s["name"] == "QUEUE_DATABASE_URL"]
                self.assertEqual(value, [shown + "?connect_timeout=5"])
                self.assert_hidden(password, out + err)
                code, out, err = run_main(["migrate"], env)
                self.assertEqual(code, 1, err)
                self.assertIn("cannot connect to %s" % shown, one_line(self, err))
                self.assert_hidden(password, out + err)
                proc = subprocess.run(
                    [sys.executable, os.path.join(HERE, "dbqueue.py"), "work", "--once"],
                    env=clean_env(**env), cwd=tempfile.gettempdir(),
                    capture_output=True, text=True, timeout=60)
                self.assertEqual(proc.returncode, 1, proc.stderr)
                self.assertIn('worker starting database="%s?' % shown, proc.stderr)
                self.assertIn("cannot connect to " + shown, proc.stderr)
                self.assert_hidden(password, proc.stdout + proc.stderr)


class SecretsTwoUrlsInOneTokenTests(unittest.TestCase):
    """Two URLs with no space between them (a tuple's repr, compact JSON, a URL
    passed in another's query): each one's password is hidden."""

    TEXTS = ["('sqlite:///x','postgresql://u:secretpw@h/db')",
             '{"a":"https://x.com/p","db":"postgresql://u:secretpw@h/db"}',
             "https://proxy/fetch?target=postgresql://u:secretpw@h/db"]

    def test_each_url_is_masked(self):
        for text in self.TEXTS:
            shown = text.replace("secretpw", "***")
            self.assertEqual(dbqueue._mask_url(text), shown)
            self.assertEqual(dbqueue._mask_url("failed: %s; retrying" % text),
                             "failed: %s; retrying" % shown)
            self.assertNotIn("secretpw", dbqueue._mask_links(text))


class SQLiteLockTests(unittest.TestCase):
    """Another connection holds SQLite's write lock past the busy timeout."""

    def hold_lock(self, db):
        import sqlite3
        holder = sqlite3.connect(db.url[len("sqlite:///"):], isolation_level=None,
                                 check_same_thread=False)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        return holder

    def test_write_transaction_waits_for_the_lock_then_restores_the_busy_timeout(self):
        db = Backend(self)
        q = db.queue()
        conn = q.connect()
        holder = self.hold_lock(db)
        release = threading.Timer(0.3, holder.execute, ["ROLLBACK"])
        release.start()
        self.addCleanup(release.join)
        started = time.monotonic()
        with q.transaction(conn) as cur:
            waited = time.monotonic() - started
            q.execute(cur, "push", queue="default", payload=q.payload("t_record"), delay=0,
                      expires_at=None)
        self.assertGreaterEqual(waited, 0.25)       # it did wait for the other writer
        self.assertEqual(_count_jobs(db), 1)
        # SQLite's own busy handler is back for everything that is not BEGIN IMMEDIATE.
        self.assertEqual(conn.execute("PRAGMA busy_timeout").fetchone()[0], 5000)

    def test_an_interruption_anywhere_in_begin_leaves_no_lock_behind(self):
        # A signal (a handler's JobTimeout, Ctrl-C) may land between any two
        # statements of _SQLite.start and _Transaction.__enter__. A trace function
        # raises at each of their lines in turn, as such a signal would.
        import inspect
        db = Backend(self)
        q = db.queue()
        conn = q.connect()
        targets = []
        for func in (dbqueue._SQLite.start, dbqueue._Transaction.__enter__):
            lines, first = inspect.getsourcelines(func)
            # Not the `try:` lines: CPython 3.11+ reports a line event there on an
            # instruction outside the try, where no signal is ever delivered.
            body = [first + n for n, text in enumerate(lines) if text.strip()
                    and not text.strip().startswith(("#", "except", "raise", "try:"))]
            # From the first statement inside the try to its end (the cleanup
            # itself is not protected against a second signal).
            start = next(n for n, text in enumerate(lines) if text.strip() == "try:")
            stop = next(n for n, text in enumerate(lines) if text.strip().startswith("except"))
            targets += [(func.__code__, line) for line in body
                        if first + start < line < first + stop]
        interrupted = []

        class Interrupt(BaseException):
            pass

        for code, line in targets:
            fired = []

            def trace(frame, event, arg):
                if frame.f_code is code:
                    def local(frame, event, arg):
                        if event == "line" and frame.f_lineno == line and not fired:
                            fired.append(line)
                            raise Interrupt()
                        return local
                    return local
                return None

            sys.settrace(trace)
            try:
                with q.transaction(conn):
                    pass
            except Interrupt:
                pass
            finally:
                sys.settrace(None)
            if not fired:
                continue   # no line event there on this interpreter (3.8: `while True:`)
            interrupted.append(line)
            with self.subTest(line=line):
                self.assertFalse(conn.in_transaction)
                self.assertEqual(conn.execute("PRAGMA busy_timeout").fetchone()[0], 5000)
        self.assertGreaterEqual(len(interrupted), 6)
        # And the write lock is free: another connection can take it at once.
        other = self.hold_lock(db)
        other.execute("ROLLBACK")

    def test_write_lock_held_past_the_busy_timeout_is_a_transient_error(self):
        saved = dbqueue._SQLite.busy_timeout
        dbqueue._SQLite.busy_timeout = 0.2
        self.addCleanup(setattr, dbqueue._SQLite, "busy_timeout", saved)
        db = Backend(self)
        q = db.queue()
        conn = q.connect()
        self.hold_lock(db)
        started = time.monotonic()
        with self.assertRaises(dbqueue.DatabaseError) as caught:
            with q.transaction(conn):
                pass
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        self.assertTrue(caught.exception.transient)
        self.assertIn("locked", str(caught.exception))
        self.assertEqual(conn.execute("PRAGMA busy_timeout").fetchone()[0], 200)

    def test_worker_waits_out_a_held_write_lock_and_says_so_once(self):
        import sqlite3
        db = Backend(self)
        log = os.path.join(db.tmp, "runs.log")
        busy = 0.5     # the worker's busy timeout, lowered from 5 s to keep the test short
        procs = _Procs(self, db.tmp, _fault_env(db.env(FAULT_LOG=log,
                                                        FAULT_BUSY_TIMEOUT=busy)))
        q = db.queue()
        q.push_many("fault_sleep", [{"n": n, "ms": 100} for n in range(20)])
        worker = procs.start("--sleep", "0.2")
        wait_for(lambda: _records(log), 30, 0.01, "the first job to start")
        holder = sqlite3.connect(db.url[len("sqlite:///"):], isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN IMMEDIATE")
        held_from = time.monotonic()
        wait_for(lambda: "write lock" in procs.stderr(worker), 30, 0.05,
                 "the worker to report the lock")
        # Hold it well past the busy timeout, so the worker retries while blocked.
        wait_for(lambda: time.monotonic() - held_from > 4 * busy, 10, 0.05)
        ended_while_held = len([f for f in _records(log) if f[0] == "end"])
        holder.execute("ROLLBACK")
        wait_for(lambda: _count_jobs(db) == 0, 30, 0.05, "the jobs to finish after the lock")
        worker.terminate()
        self.assertEqual(worker.wait(30), 0)
        text = procs.stderr(worker)
        lock_lines = [line for line in text.splitlines() if "lock" in line.lower()]
        self.assertEqual(len(lock_lines), 1, text)
        self.assertIn("WARNING", lock_lines[0])
        self.assertIn("database available again", text)
        self.assertNotIn("Traceback", text)
        runs = [int(f[1]) for f in _records(log) if f[0] == "end"]
        self.assertEqual(sorted(runs), list(range(20)))   # all ran, each once
        self.assertLess(ended_while_held, 20)


class HostileInputTests:
    """Broken and hostile rows, names and values: each a clear error, nothing else disturbed."""

    def setUp(self):
        del RECORD[:]

    def insert(self, payload, queue="default"):
        """A row written by hand, as a buggy or hostile producer would."""
        p = self.db.param
        self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                    " created_at) VALUES (%s, %s, 0, NULL, 0, 0)" % (p, p), (queue, payload))

    def drain(self, q, queues=("default",)):
        log = io.StringIO()
        w = dbqueue.Worker(q, list(queues), tries=1, log=dbqueue._Log(stream=log))
        w.run(stop_when_empty=True)
        return log.getvalue()

    def failed_reasons(self, q):
        return [row["exception"] for row in q.failed()]

    def test_broken_payloads_fail_alone_with_a_reason(self):
        q = self.db.queue()
        q.push("t_record", {"i": 1})
        bad = {
            "not json at all": "payload is not valid JSON",
            '{"job": "t_record", "data": ': "payload is not valid JSON",
            "[1, 2, 3]": "payload is JSON but not an object",
            '"just a string"': "payload is JSON but not an object",
            '{"data": {}}': "payload names no job",
            '{"job": 42, "data": {}}': "payload names no job",
            '{"job": "no_such_job", "data": {}}': "unknown job 'no_such_job'",
            '{"job": "t_record", "data": [1, 2]}': "job data must be a JSON object",
        }
        for payload in bad:
            self.insert(payload)
        q.push("t_record", {"i": 2})
        log = self.drain(q)
        self.assertEqual(RECORD, [{"i": 1}, {"i": 2}])
        self.assertEqual(_count_jobs(self.db), 0)
        reasons = self.failed_reasons(q)
        self.assertEqual(len(reasons), len(bad))
        for expected, reason in zip(bad.values(), reasons):
            self.assertIn(expected, reason)
        self.assertNotIn("Traceback (most recent call last)", log)   # reasons, not crashes
        self.assertEqual(log.count("outcome=failed"), len(bad))

    def test_job_names_that_name_python_objects_are_never_imported(self):
        marker = os.path.join(self.db.tmp, "called")
        module = "dbq_fault_evil_%d" % os.getpid()
        with open(os.path.join(self.db.tmp, module + ".py"), "w") as fh:
            fh.write("open(%r, 'w').close()\ndef run(*a):\n    open(%r, 'w').close()\n"
                     % (marker, marker))
        sys.path.insert(0, self.db.tmp)
        self.addCleanup(sys.path.remove, self.db.tmp)
        q = self.db.queue()
        names = ["os.system", "builtins.eval", "subprocess.call", module + ".run", module,
                 "%s:run" % module, "__import__", "dbqueue._cmd_clear", "dbqueue.main"]
        for name in names:
            q.push(name, {"cmd": "touch " + marker, "0": "touch " + marker})
        q.push("t_record", {"ok": True})
        before = set(sys.modules)
        self.drain(q)
        self.assertFalse(os.path.exists(marker), "a job name was imported or called")
        self.assertEqual(set(sys.modules) - before, set())
        self.assertEqual(RECORD, [{"ok": True}])
        reasons = self.failed_reasons(q)
        self.assertEqual(len(reasons), len(names))
        for name, reason in zip(names, reasons):
            self.assertIn("unknown job %r" % name, reason)

    def test_oversized_payload_runs_and_stays_out_of_the_log(self):
        q = self.db.queue()
        big = "x" * (5 * 1024 * 1024)
        q.push("t_record", {"big": big})
        q.push("t_record", {"i": 1})
        self.insert('{"job": "t_record", "data": {"big": "' + big)  # 5 MB, cut short
        q.push("t_record", {"i": 2})
        log = self.drain(q)
        self.assertEqual([len(d.get("big", "")) for d in RECORD], [len(big), 0, 0])
        self.assertEqual(RECORD[1:], [{"i": 1}, {"i": 2}])
        reasons = self.failed_reasons(q)
        self.assertEqual(len(reasons), 1)
        self.assertIn("payload is not valid JSON", reasons[0])
        self.assertLess(len(reasons[0]), 10000)      # the reason, not the payload again
        self.assertLess(len(log), 10000)             # job data is never logged

    def test_nul_bytes_and_odd_unicode_are_data_not_damage(self):
        q = self.db.queue()
        # Escaped in JSON, NUL and a lone surrogate are fine on every database.
        q.push("t_record", {"s": "a\x00b", "t": "\ud800", "u": "\u2028\U0001f600"})
        q.push("t_record", {"i": 1})
        self.drain(q)
        self.assertEqual(RECORD, [{"s": "a\x00b", "t": "\ud800", "u": "\u2028\U0001f600"},
                                  {"i": 1}])

    def test_hostile_queue_names_are_rejected_and_rows_with_them_ignored(self):
        q = self.db.queue()
        hostile = ["x'; DROP TABLE jobs; --", 'a"b', "a;b", "q) OR 1=1 --", "", " ",
                   "default ", "a\nb", "a\x00b", "é", "x" * 101, "emails,default", "%", "_*"]
        for name in hostile:
            with self.assertRaisesRegex(ValueError, "queue name"):
                q.push("t_record", {}, queue=name)
            with self.assertRaisesRegex(ValueError, "queue name"):
                dbqueue.Worker(q, [name], log=quiet_log())
        env = self.db.env()
        for name in hostile[:4]:
            code, out, err = run_main(["push", "t_record", "--queue", name], env)
            self.assertEqual((code, out), (2, ""))
            self.assertIn("--queue", err)
            code, out, err = run_main(["work", "--once", "--queue", name], env)
            self.assertEqual((code, out), (2, ""))
        for name in hostile[:4]:
            if "\x00" not in name:
                self.insert('{"job": "t_record", "data": {"hostile": true}}', queue=name)
        q.push("t_record", {"i": 1})
        self.drain(q)
        self.assertEqual(RECORD, [{"i": 1}])
        self.assertEqual(_count_jobs(self.db), 4)       # the hand-written rows, untouched
        self.assertEqual(q.failed(), [])
        code, out, err = run_main(["stats", "--json"], env)
        self.assertEqual(code, 0, err)
        self.assertEqual(sorted(s["queue"] for s in json.loads(out)), sorted(hostile[:4]))
        code, out, err = run_main(["stats", "--format", "prometheus"], env)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.splitlines())
        for line in out.splitlines():    # escaped: no name can start a line of its own
            self.assertRegex(line, r"^(# (HELP|TYPE) )?dbqueue_")


on_backends(HostileInputTests)


class SQLiteHostileBytesTests(unittest.TestCase):
    """Bytes only SQLite can hold: raw NUL and invalid UTF-8 in the payload column."""

    def test_invalid_utf8_and_raw_nul_fail_alone(self):
        import sqlite3
        del RECORD[:]
        db = Backend(self)
        q = db.queue()
        q.push("t_record", {"i": 1})
        rows = [sqlite3.Binary(b'{"job": "t_record", "data": {"s": "\xff\xfe"}}'),
                '{"job": "t_record", "data": {"s": "a\x00b"}}',
                sqlite3.Binary(b'{"job": "t_record", "data": {"s": "a\x00b"}}'),
                sqlite3.Binary(b"\x00\x00\x00"),
                sqlite3.Binary(b"\xc3\x28 not utf-8")]
        for payload in rows:
            db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                   " created_at) VALUES ('default', ?, 0, NULL, 0, 0)", (payload,))
        q.push("t_record", {"i": 2})
        log = io.StringIO()
        dbqueue.Worker(q, ["default"], log=dbqueue._Log(stream=log)).run(stop_when_empty=True)
        self.assertEqual(RECORD, [{"i": 1}, {"i": 2}])
        self.assertEqual(_count_jobs(db), 0)
        failed = q.failed()
        self.assertEqual(len(failed), len(rows))
        for row in failed:
            self.assertRegex(row["exception"], "not valid (UTF-8|JSON)")
        self.assertNotIn("Traceback", log.getvalue())

    def test_queue_names_of_raw_bytes_do_not_break_stats_or_the_worker(self):
        import sqlite3
        del RECORD[:]
        db = Backend(self)
        q = db.queue()
        db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
               " created_at) VALUES (?, '{{}}', 0, NULL, 0, 0)", (sqlite3.Binary(b"\xff\xfe"),))
        db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
               " created_at) VALUES (CAST(x'41ff' AS TEXT), '{{}}', 0, NULL, 0, 0)")
        db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception)"
               " VALUES ('u1', 'database', CAST(x'42ff' AS TEXT), CAST(x'ff' AS TEXT), 'e')")
        q.push("t_record", {"i": 1})
        dbqueue.Worker(q, ["default"], log=quiet_log()).run(stop_when_empty=True)
        self.assertEqual(RECORD, [{"i": 1}])
        env = db.env()
        for argv in (["stats"], ["stats", "--json"], ["stats", "--format", "prometheus"],
                     ["health"], ["failed"], ["failed", "--json"]):
            code, out, err = run_main(argv, env)
            self.assertEqual((code, err), (0, ""), argv)
        code, out, err = run_main(["stats", "--json"], env)
        self.assertEqual(sorted(s["queue"] for s in json.loads(out)),
                         ["A\ufffd", "B\ufffd", "\ufffd\ufffd"])


class BadSettingsTests(unittest.TestCase):
    """Bad flags and settings: exit 2 with one line naming the culprit; nothing touched."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "q.db")
        self.env = {"QUEUE_DATABASE_URL": "sqlite:///" + self.path}

    def check(self, argv, env, culprit):
        line = assert_refused(self, run_main(argv, dict(self.env, **env)), self.path,
                              context=(argv, env))
        self.assertIn(culprit, line)

    def test_bad_table_names_exit_2(self):
        for value in ("jobs; DROP TABLE users", 'jobs"', "1jobs", "jobs-x", "a b", "x" * 64,
                      "jobs--", "ジョブ"):
            for argv in (["migrate"], ["work", "--once"], ["push", "t_record"], ["stats"]):
                self.check(argv, {"QUEUE_TABLE": value}, "QUEUE_TABLE")
                self.check(argv, {"QUEUE_FAILED_TABLE": value}, "QUEUE_FAILED_TABLE")

    def test_bad_numbers_exit_2(self):
        for name, value in (("QUEUE_MAX_ATTEMPTS", "-1"), ("QUEUE_MAX_ATTEMPTS", "0"),
                            ("QUEUE_MAX_ATTEMPTS", "three"), ("QUEUE_RETRY_AFTER", "1e3"),
                            ("QUEUE_RETRY_AFTER", "-5"), ("QUEUE_TIMEOUT", "-1"),
                            ("QUEUE_TIMEOUT", "nan"), ("QUEUE_BACKOFF", "10,-1"),
                            ("QUEUE_BACKOFF", "a,b"), ("QUEUE_BACKOFF", ",,"),
                            ("MAIL_PORT", "0"), ("MAIL_PORT", "99999"), ("MAIL_TIMEOUT", "x"),
                            ("QUEUE_DRIVER", "redis"), ("QUEUE_DATABASE_URL", "mongodb://x/y")):
            for argv in (["work", "--once"], ["push", "t_record"]):
                self.check(argv, {name: value}, name)
        for flag, value in (("--max-jobs", "-1"), ("--max-jobs", "ten"), ("--max-time", "-3"),
                            ("--max-time", "nan"), ("--max-time", "inf"), ("--sleep", "-0.5"),
                            ("--sleep", "soon"), ("--timeout", "-1"), ("--tries", "0"),
                            ("--memory", "-5"), ("--backoff", "-1"), ("--backoff", "1;2"),
                            ("--queue", "")):
            self.check(["work", "--once", flag, value], {}, flag)
        self.check(["push", "t_record", "--delay", "-5"], {}, "--delay")
        self.check(["push", "t_record", "--data", "[1]"], {}, "--data")
        self.check(["push", "t_record", "--data", "{not json"], {}, "--data")
        self.check(["stats", "--format", "xml"], {}, "--format")

    def test_a_sqlite_path_that_cannot_be_opened_fails_the_worker_at_once(self):
        for url in ("sqlite:///" + os.path.join(self.tmp, "missing", "q.db"),
                    "sqlite:///" + self.tmp):     # a directory
            code, out, err = run_main(["work", "--once"], {"QUEUE_DATABASE_URL": url})
            self.assertEqual(code, 1, err)
            self.assertRegex(err.strip().splitlines()[-1], "^dbqueue: cannot (open|create)")
            self.assertNotIn("retrying", err)

    def test_huge_max_jobs_is_just_a_large_limit(self):
        del RECORD[:]
        q = dbqueue.Queue("sqlite:///" + self.path)
        self.addCleanup(q.close)
        for i in range(3):
            q.push("t_record", {"i": i})
        code, out, err = run_main(["work", "--stop-when-empty", "--max-jobs", "9" * 40], self.env)
        self.assertEqual(code, 0, err)
        self.assertEqual([d["i"] for d in RECORD], [0, 1, 2])


class FileModeTests(unittest.TestCase):
    """A SQLite database dbqueue creates is its owner's alone, whatever the umask."""

    def test_database_wal_and_shm_are_0600(self):
        tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        old = os.umask(0)      # the most permissive umask: the mode must not come from it
        try:
            path = os.path.join(tmp, "api.db")
            q = dbqueue.Queue("sqlite:///" + path)
            q.push("t_record", {})
            cli = os.path.join(tmp, "cli.db")
            code, _, err = run_main(["push", "t_record"],
                                    {"QUEUE_DATABASE_URL": "sqlite:///" + cli})
            self.assertEqual(code, 0, err)
            # The -wal and -shm files exist while a connection is open.
            for db in (path, cli):
                reader = dbqueue.Queue("sqlite:///" + db)
                reader.stats()
                for suffix in ("", "-wal", "-shm"):
                    mode = os.stat(db + suffix).st_mode & 0o777
                    self.assertEqual(mode, 0o600, "%s%s is %o" % (db, suffix, mode))
                reader.close()
            q.close()
        finally:
            os.umask(old)


class PropertyTests:
    """Generated payload texts and queue names (hypothesis): the worker never
    crashes and a good job pushed alongside always completes."""

    examples = 25

    def setUp(self):
        del RECORD[:]
        try:
            from hypothesis import configuration
        except ImportError:
            need(False, "hypothesis is not installed (pip install hypothesis)")
        # hypothesis caches (a Unicode table, even with database=None) under
        # ./.hypothesis: keep that out of the repository.
        configuration.set_hypothesis_home_dir(self.db.tmp)

    def insert(self, payload, queue="default"):
        HostileInputTests.insert(self, payload, queue)

    def settings(self):
        from hypothesis import HealthCheck, settings
        return settings(max_examples=self.examples, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))

    def text_ok(self, text):
        # PostgreSQL TEXT cannot hold NUL: the driver refuses such a row before it exists.
        return self.db.name == "sqlite" or "\x00" not in text

    def test_generated_payloads_never_disturb_a_good_job(self):
        from hypothesis import given, strategies as st
        q = self.db.queue()
        names = st.sampled_from(["t_record", "t_permanent", "t_fail", "os.system", "builtins.eval",
                                 "subprocess.call", "", "nope"]) | st.text(max_size=20)
        scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                   | st.floats(allow_nan=False, allow_infinity=False))
        values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3)
                              | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                              max_leaves=8)
        structured = st.fixed_dictionaries(
            {"job": names, "data": values},
            optional={"uuid": values, "maxTries": values, "backoff": values,
                      "timeout": values}).map(json.dumps)
        texts = (st.text(max_size=300) | structured).filter(self.text_ok)

        @self.settings()
        @given(texts)
        def check(payload):
            del RECORD[:]
            self.db.raw("DELETE FROM {jobs}")
            self.insert(payload)
            good = {"good": dbqueue._uuid4()}
            q.push("t_record", good)
            worker = dbqueue.Worker(q, ["default"], tries=1, backoff="0", timeout=5,
                                    log=quiet_log())
            worker.run(stop_when_empty=True, max_jobs=20)
            self.assertIn(good, RECORD)
            self.assertEqual(worker.exit_code, 0)
            # The generated row completed, failed or waits for a retry: never stuck reserved.
            reserved = self.db.raw("SELECT COUNT(*) FROM {jobs} WHERE reserved_at IS NOT NULL")
            self.assertEqual(reserved[0][0], 0)
        check()

    def test_generated_queue_names_are_accepted_only_when_plain(self):
        import re
        from hypothesis import given, strategies as st
        q = self.db.queue()
        plain = re.compile(r"[A-Za-z0-9_.:\-]{1,100}")

        @self.settings()
        @given(st.text(max_size=110) | st.sampled_from(["a';--", "x;DROP TABLE t", "a b"]))
        def check(name):
            del RECORD[:]
            self.db.raw("DELETE FROM {jobs}")
            try:
                q.push("t_record", {"on": name}, queue=name)
            except ValueError as exc:
                self.assertIsNone(plain.fullmatch(name))
                self.assertIn("queue name", str(exc))
                if self.text_ok(name) and len(name) <= 255:
                    self.insert('{"job": "t_record", "data": {"hostile": 1}}', queue=name)
                served = "default"
            else:
                self.assertIsNotNone(plain.fullmatch(name))
                served = name
            good = {"good": dbqueue._uuid4()}
            q.push("t_record", good, queue=served)
            dbqueue.Worker(q, [served], tries=1, log=quiet_log()).run(stop_when_empty=True)
            self.assertIn(good, RECORD)
            self.assertNotIn({"hostile": 1}, RECORD)
        check()


on_backends(PropertyTests, SQLITE_PG_MARIADB)


# -- fault tests end here --


# ---- Leases and double runs: a job never runs twice at once; input validation ----
#
# Real worker processes paused with SIGSTOP,
# workers with different settings side by side, a second database session
# holding a row lock, rows written by hand. The double-run loops run with
# DBQUEUE_FAULTS=1 (see DoubleRunFaultTests).

# A handler module for worker subprocesses (`work --import double_run_jobs`): every
# start and end of a job is one O_APPEND line "start|end N ATTEMPT PID", so
# the lines of several processes come in one order, the order they happened.
DOUBLE_RUN_JOBS = """
import os, time
import dbqueue

if os.environ.get("DOUBLE_RUN_HOLD"):
    dbqueue.Worker.hold_seconds = float(os.environ["DOUBLE_RUN_HOLD"])
_fd = os.open(os.environ["DOUBLE_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


def _record(what, data):
    line = "%s %d %d %d\\n" % (what, data["n"], dbqueue.current_job().attempts, os.getpid())
    os.write(_fd, line.encode())


@dbqueue.job("run_sleep")
def run_sleep(data):
    _record("start", data)
    time.sleep(data.get("s", 0))
    _record("end", data)
"""


def _double_starts(starts):
    """Starts of an attempt no later than one already started for that job:
    a job started again by the same attempt, or by a worker whose
    reservation had been taken over. [(n, attempt, pid)]."""
    latest, bad = {}, []
    for n, attempt, pid in starts:
        if attempt <= latest.get(n, 0):
            bad.append((n, attempt, pid))
        latest[n] = max(latest.get(n, 0), attempt)
    return bad


class _DoubleRunProcesses:
    """Worker subprocesses running double_run_jobs, all logging into one file."""

    def double_run_setup(self):
        self.log = os.path.join(self.db.tmp, "double_runs.log")
        with open(os.path.join(self.db.tmp, "double_run_jobs.py"), "w") as fh:
            fh.write(DOUBLE_RUN_JOBS)
        self.procs = _Procs(self, self.db.tmp, _fault_env(self.db.env(
            FAULT_LOG=self.log, DOUBLE_RUN_LOG=self.log, QUEUE_BACKOFF=0, QUEUE_MAX_ATTEMPTS=50)))

    def worker(self, *args, **env):
        return self.procs.start("--import", "double_run_jobs", "--sleep", "0.2", *args,
                                **{k: str(v) for k, v in env.items()})

    def records(self, kind="start"):
        return [(int(f[1]), int(f[2]), int(f[3])) for f in _records(self.log) if f[0] == kind]

    def stop_all(self, procs):
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        for proc in procs:
            self.assertEqual(proc.wait(30), 0, self.procs.stderr(proc)[-3000:])
            self.assertNotIn("Traceback", self.procs.stderr(proc))


class LeaseRescueTests:
    """A reservation lasts for its holder's lease, in its own queue."""

    def test_rescue_keeps_the_holders_lease_and_stays_in_its_queues(self):
        clock = Clock()
        holder = self.db.queue(clock=clock, retry_after=600)
        rescuer = self.db.queue(clock=clock, retry_after=1, migrate=False)
        long_id = holder.push("t_record", {"i": 1}, queue="reports")
        (held,), _ = holder.reserve(holder.connect(), ["reports"], 1)
        p = self.db.param
        insert = ("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                  " created_at) VALUES (%s, %s, 1, %s, 0, 0)" % (p, p, p))
        # Reserved by the PHP app's worker: no reserved_until, only reserved_at.
        payload = json.dumps({"uuid": "u-php", "job": "t_record", "data": {"i": 2}})
        self.db.raw(insert, ("reports", payload, clock.now - 100))
        self.db.raw(insert, ("elsewhere", payload, clock.now - 100))
        # A row the PHP worker took over from a dead dbqueue worker 10 s ago:
        # Laravel sets reserved_at (and attempts) only, so the dead worker's
        # reserved_until is left behind, older than reserved_at.
        taken = json.dumps({"uuid": "u-taken", "job": "t_record", "data": {"i": 3}})
        self.db.raw(insert, ("reports", taken, clock.now - 10))
        self.db.raw("UPDATE {jobs} SET reserved_until = %s WHERE payload = %s" % (p, p),
                    (clock.now - 50, taken))
        self.assertEqual(self.db.raw("SELECT reserved_until FROM {jobs} WHERE id = %s" % p,
                                     (long_id,)), [(clock.now + 600,)])
        clock.advance(5)
        # Seen with QUEUE_RETRY_AFTER=90, only the old PHP row has expired.
        watcher = self.db.queue(clock=clock, retry_after=90, migrate=False)
        by_queue = {s["queue"]: s for s in watcher.stats()}
        self.assertEqual(by_queue["reports"]["reserved"], 3)
        self.assertEqual(by_queue["reports"]["expired"], 1)
        conn = rescuer.connect()
        jobs, _ = rescuer.reserve(conn, ["reports"], 10, rescue_after=90)
        self.assertEqual([(j.data, j.attempts) for j in jobs], [({"i": 2}, 2)])
        self.assertEqual(rescuer.ack(conn, [jobs[0].token]), [])
        # The other queue's lapsed reservation is not this worker's to take back.
        self.assertEqual(self.db.raw("SELECT reserved_at FROM {jobs} WHERE queue = 'elsewhere'"),
                         [(clock.now - 105,)])
        # The row the PHP worker took over lapses by its reserved_at.
        self.assertEqual(self.db.raw("SELECT reserved_at FROM {jobs} WHERE payload = %s" % p,
                                     (taken,)), [(clock.now - 15,)])
        clock.advance(90)
        (php,), _ = rescuer.reserve(conn, ["reports"], 10, rescue_after=100)
        self.assertEqual(php.data, {"i": 3})
        self.assertEqual(rescuer.ack(conn, [php.token]), [])
        # The holder's heartbeat renews its own lease, whoever else runs.
        clock.advance(500)
        self.assertEqual(holder.touch(holder.connect(), [held.token]), [])
        clock.advance(599)
        self.assertEqual(rescuer.reserve(conn, ["reports"], 10, rescue_after=1)[0], [])
        clock.advance(2)
        (again,), _ = rescuer.reserve(conn, ["reports"], 10, rescue_after=1)
        self.assertEqual(again.token, (long_id, 2))
        self.assertEqual(holder.ack(holder.connect(), [held.token]), [held.token])


on_backends(LeaseRescueTests, SQLITE_PG_MARIADB)


# A handler during which another worker takes its job over (the test's
# clock jumps past the lease), as after a pause longer than retry_after.
_THIEF = {}


@dbqueue.job("stolen_job")
def _stolen_job(data):
    thief = _THIEF
    thief["clock"].advance(1000)
    jobs, _ = thief["queue"].reserve(thief["conn"], ["default"], 1, rescue_after=1)
    thief["jobs"].extend(jobs)
    if data.get("slow"):
        time.sleep(0.02)     # past ack_delay_seconds: acknowledged at once, not with the next claim


@on_backends
class LeaseEdgeCaseTests:

    def setUp(self):
        del RECORD[:]

    def test_push_with_a_connection_of_any_row_factory(self):
        # An app's connection that returns dicts (psycopg's dict_row,
        # psycopg2's RealDictCursor, a sqlite3 row_factory) got KeyError: 0.
        q = self.db.queue()
        if self.db.name == "sqlite":
            import sqlite3
            app = sqlite3.connect(self.db.url[len("sqlite:///"):], timeout=10)
            app.row_factory = lambda cur, row: {d[0]: v for d, v in zip(cur.description, row)}
        elif self.db.driver == "psycopg":
            import psycopg
            from psycopg.rows import dict_row
            app = psycopg.connect(PG_URL, row_factory=dict_row)
        elif self.db.name == "mysql":
            driver = __import__(self.db.driver)
            __import__(self.db.driver + ".cursors")
            app = self.db.app_connect()
            app.cursorclass = driver.cursors.DictCursor   # what cursor() makes by default
        else:
            import psycopg2
            import psycopg2.extras
            app = psycopg2.connect(PG_URL, cursor_factory=psycopg2.extras.RealDictCursor)
        self.addCleanup(app.close)
        first = q.push("t_record", {"i": 1}, connection=app)
        more = q.push_many("t_record", [{"i": 2}, {"i": 3}], connection=app)
        unique = q.push("t_record", {"i": 4}, connection=app, unique_key="k")
        self.assertEqual(q.push("t_record", {"i": 5}, connection=app, unique_key="k"), unique)
        app.commit()
        ids = [row[0] for row in self.db.raw("SELECT id FROM {jobs} ORDER BY id")]
        self.assertEqual([first] + more + [unique], ids)
        self.assertIsInstance(first, int)
        # The app's own cursors still return what it asked for.
        cur = app.cursor()
        cur.execute("SELECT 1 AS one")
        self.assertEqual(cur.fetchone(), {"one": 1})
        dbqueue.Worker(q, ["default"], log=quiet_log()).run(stop_when_empty=True)
        self.assertEqual(sorted(d["i"] for d in RECORD), [1, 2, 3, 4])

    def test_an_ack_refused_after_a_takeover_is_logged_as_lost(self):
        # It said outcome=done, then "it will run again".
        for slow in (False, True):
            with self.subTest(slow=slow):
                clock = Clock()
                q = self.db.queue(clock=clock, retry_after=10)
                thief = self.db.queue(clock=clock, retry_after=10, migrate=False)
                _THIEF.update(clock=clock, queue=thief, conn=thief.connect(), jobs=[])
                job_id = q.push("stolen_job", {"slow": slow})
                stream = io.StringIO()
                w = dbqueue.Worker(q, ["default"], log=dbqueue._Log(stream=stream))
                self.assertEqual(w.run(once=True), 1)
                self.assertEqual([j.token for j in _THIEF["jobs"]], [(job_id, 2)])
                lines = [line for line in stream.getvalue().splitlines() if " job " in line]
                self.assertEqual(len(lines), 1, stream.getvalue())
                self.assertIn("outcome=lost", lines[0])
                self.assertIn("WARNING", lines[0])
                self.assertIn("passed to another worker", lines[0])
                self.assertNotIn("run again", stream.getvalue())
                # The new holder's reservation is untouched.
                self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(2,)])
                self.assertEqual(thief.ack(_THIEF["conn"], [(job_id, 2)]), [])

    def test_held_jobs_are_confirmed_after_a_wall_clock_jump(self):
        # A VM resumed after a freeze: the monotonic clock may not
        # have moved, the wall clock has. A held batch is confirmed before
        # its next job starts; jobs taken over meanwhile are dropped.
        clock = Clock()
        q = self.db.queue(clock=clock, retry_after=10)
        q.push_many("t_record", [{"i": i} for i in range(3)])
        stream = io.StringIO()
        w = dbqueue.Worker(q, ["default"], log=dbqueue._Log(stream=stream))
        self.addCleanup(w._shutdown)
        self.assertTrue(w._claim(3))
        self.assertEqual(len(w._held), 3)
        clock.advance(11)
        thief = self.db.queue(clock=clock, retry_after=10, migrate=False)
        taken, _ = thief.reserve(thief.connect(), ["default"], 3, rescue_after=10)
        self.assertEqual(len(taken), 1)          # a taken-over job is claimed alone
        mono, wall = w._confirmed
        w._confirmed = (time.monotonic(), wall - 3600)
        # All three leases ran out: none of the held jobs starts; the two
        # the thief left are claimed again (attempt 2) and run.
        self.assertEqual(w.run(stop_when_empty=True), 2)
        self.assertEqual(sorted(d["i"] for d in RECORD), [1, 2])
        self.assertEqual(stream.getvalue().count("not started here"), 3, stream.getvalue())
        self.assertEqual(stream.getvalue().count("attempt=2/3 outcome=done"), 2)
        self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(2,)])

    def test_a_row_with_the_largest_attempts_fails_alone(self):
        # On PostgreSQL the claim's attempts + 1 overflowed INTEGER
        # for the whole batch, and every worker exited 1 on every restart.
        # MySQL has no RETURNING: its claim is always the select, then the update.
        for returning in {"sqlite": (True, False), "mysql": (False,)}.get(self.db.name, (True,)):
            with self.subTest(returning=returning):
                del RECORD[:]
                self.check_largest_attempts(returning)
                self.db.raw("DELETE FROM {failed}")

    def check_largest_attempts(self, returning):
        q = self.db.queue()
        q._returning = returning          # False: SQLite before 3.35 (select, then update)
        q.push("t_record", {"i": 1})
        p = self.db.param
        payload = json.dumps({"uuid": "u-max", "job": "t_record", "data": {"i": "max"}})
        self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                    " created_at) VALUES ('default', %s, 2147483647, NULL, 0, 0)" % p, (payload,))
        q.push_many("t_record", [{"i": 2}, {"i": 3}])
        w = dbqueue.Worker(q, ["default"], log=quiet_log())
        self.assertEqual(w.run(stop_when_empty=True), 4)
        self.assertEqual(sorted(d["i"] for d in RECORD), [1, 2, 3])
        failed = q.failed()
        self.assertEqual([f["uuid"] for f in failed], ["u-max"])
        self.assertIn("attempt 2147483647 of 3", failed[0]["exception"])
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}"), [(0,)])


class DoubleRunProcessTests(_DoubleRunProcesses):
    """The two double runs (a holder paused past its lease, workers with other
    settings), one round each, with real processes."""

    def setUp(self):
        self.double_run_setup()

    def test_a_paused_worker_never_starts_a_held_job_that_was_taken_over(self):
        # Worker A holds a batch and is stopped (SIGSTOP) past its
        # lease; B takes the jobs over and runs them. A, continued, finishes
        # the job it was in, and starts none of those it held.
        q = self.db.queue()
        a = self.worker(QUEUE_RETRY_AFTER=1, DOUBLE_RUN_HOLD=1000)
        q.push("run_sleep", {"n": 0})
        wait_for(lambda: self.records("end"), 30, message="the warm-up job")
        q.push_many("run_sleep", [{"n": 1, "s": 1.5}] + [{"n": n} for n in range(2, 7)])
        wait_for(lambda: self.records()[1:], 30, message="job 1 to start")
        os.kill(a.pid, signal.SIGSTOP)
        held = self.db.raw("SELECT attempts FROM {jobs} WHERE reserved_at IS NOT NULL")
        self.assertEqual(held, [(1,)] * 6, "A holds the whole batch")
        b = self.worker(QUEUE_RETRY_AFTER=1)
        wait_for(lambda: {n for n, _, pid in self.records() if pid == b.pid} >= set(range(1, 7)),
                 30, message="B to take over the batch")
        os.kill(a.pid, signal.SIGCONT)
        wait_for(lambda: self.procs.stderr(a).count("not started here") == 5, 30,
                 message="A to drop the five held jobs")
        wait_for(lambda: _count_jobs(self.db) == 0, 30, message="the drain")
        self.stop_all([a, b])
        self.assertEqual([s for s in self.records() if s[2] == a.pid], [(0, 1, a.pid),
                                                                        (1, 1, a.pid)])
        self.assertEqual(_double_starts(self.records()), [])
        self.assertEqual(q.failed(), [])

    def test_workers_with_other_settings_never_take_a_running_job(self):
        # The issue's setup: two `reports` workers with a long
        # retry_after, an `emails` worker with a short one, plus a `reports`
        # worker with a short one. A 3 s report runs once.
        q = self.db.queue()
        first = self.worker("--queue", "reports", QUEUE_RETRY_AFTER=600)
        q.push("run_sleep", {"n": 1, "s": 3}, queue="reports")
        wait_for(self.records, 30, message="the report to start")
        others = [self.worker("--queue", "reports", QUEUE_RETRY_AFTER=600),
                  self.worker("--queue", "emails", QUEUE_RETRY_AFTER=1),
                  self.worker("--queue", "reports", QUEUE_RETRY_AFTER=1)]
        wait_for(lambda: _count_jobs(self.db) == 0, 30, message="the report to finish")
        self.stop_all([first] + others)
        self.assertEqual(self.records(), [(1, 1, first.pid)])
        self.assertEqual(self.records("end"), [(1, 1, first.pid)])
        self.assertEqual(q.failed(), [])

    def test_jobs_that_turn_slow_are_shared_by_two_workers(self):
        # After fast jobs warm the workers up (a large batch each),
        # 20 jobs of 0.5 s arrive: the worker that claims them gives back
        # what it holds once its job runs long, and the other takes them.
        q = self.db.queue()
        workers = [self.worker(), self.worker()]
        q.push_many("run_sleep", [{"n": n} for n in range(300)])
        wait_for(lambda: _count_jobs(self.db) == 0, 60, message="the warm-up")
        started = time.monotonic()
        q.push_many("run_sleep", [{"n": n, "s": 0.5} for n in range(1000, 1020)])
        wait_for(lambda: _count_jobs(self.db) == 0, 60, message="the slow jobs")
        elapsed = time.monotonic() - started
        self.stop_all(workers)
        slow = [s for s in self.records("end") if s[0] >= 1000]
        self.assertEqual(sorted(n for n, _, _ in slow), list(range(1000, 1020)))
        shares = [sum(1 for s in slow if s[2] == w.pid) for w in workers]
        self.assertTrue(all(shares), shares)          # each worker took some of them
        self.assertEqual(_double_starts(self.records()), [])
        print("\n[double run %s] 20 jobs of 0.5 s after a warm-up, two workers: drained in %.1fs"
              " (%d + %d jobs)" % (self.db.name, elapsed, shares[0], shares[1]), file=sys.stderr)


on_backends(DoubleRunProcessTests, SQLITE_PG_MARIADB)


class DoubleRunFaultTests(_DoubleRunProcesses):
    """The double-run cases in loops of 20 rounds (heavy: DBQUEUE_FAULTS=1)."""

    def setUp(self):
        self.double_run_setup()

    @heavy
    def test_workers_paused_past_their_lease_never_start_a_job_taken_over(self):
        # Five workers drain short jobs; 20 times one of them is stopped
        # (SIGSTOP) for 1.5-3.5 s, longer than its 1 s lease, while the
        # others take over what it held, then continued (SIGCONT).
        seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
        rng = random.Random(seed)
        q = self.db.queue()
        workers = [self.worker("-q", QUEUE_RETRY_AFTER=1) for _ in range(5)]
        stopped, timers, n = set(), [], 0
        started = time.monotonic()

        def resume(w):
            if w.poll() is None:
                os.kill(w.pid, signal.SIGCONT)
            stopped.discard(w)

        # SIGCONT comes from a timer, not from this loop: on SQLite a worker
        # stopped inside a transaction holds the write lock, and the push
        # below waits for it.
        while len(timers) < 20:
            q.push_many("run_sleep", [{"n": i, "s": rng.uniform(0, 0.02)}
                                      for i in range(n, n + 120)])
            n += 120      # more than the running workers finish meanwhile: none is idle
            running = [w for w in workers if w not in stopped]
            if len(running) > 2:
                victim = rng.choice(running)
                stopped.add(victim)
                os.kill(victim.pid, signal.SIGSTOP)
                timers.append(threading.Timer(rng.uniform(1.5, 3.5), resume, (victim,)))
                timers[-1].start()
            time.sleep(rng.uniform(0.3, 0.7))
        for timer in timers:
            timer.join()
        pauses = len(timers)
        wait_for(lambda: _count_jobs(self.db) == 0, 60, 0.1, "the drain")
        elapsed = time.monotonic() - started
        self.stop_all(workers)
        starts = self.records()
        self.assertEqual({e[0] for e in self.records("end")}, set(range(n)), "lost jobs")
        self.assertEqual(_double_starts(starts), [], "seed %d" % seed)
        self.assertEqual(q.failed(), [])
        taken = len({s[0] for s in starts if s[1] > 1})
        dropped = sum(self.procs.stderr(w).count("not started here") for w in workers)
        self.assertGreater(taken, 0, "no reservation was taken over: the pauses were too short")
        print("\n[double run pause %s] seed %d: %d pauses of 1.5-3.5 s past a 1 s lease, %d jobs in"
              " %.1fs: %d taken over, %d held jobs dropped unstarted, 0 double starts"
              % (self.db.name, seed, pauses, n, elapsed, taken, dropped), file=sys.stderr)

    @heavy
    def test_workers_with_other_retry_after_never_run_a_job_twice(self):
        # 20 reports of 2.2 s, run by two workers with retry_after 600 and one
        # with 1, beside an `emails` worker with 1: every report runs once.
        q = self.db.queue()
        workers = [self.worker("-q", "--queue", "reports", QUEUE_RETRY_AFTER=600),
                   self.worker("-q", "--queue", "reports", QUEUE_RETRY_AFTER=600),
                   self.worker("-q", "--queue", "reports", QUEUE_RETRY_AFTER=1),
                   self.worker("-q", "--queue", "emails", QUEUE_RETRY_AFTER=1)]
        started = time.monotonic()
        q.push_many("run_sleep", [{"n": i, "s": 2.2} for i in range(20)], queue="reports")
        q.push_many("run_sleep", [{"n": i} for i in range(100, 150)], queue="emails")
        wait_for(lambda: _count_jobs(self.db) == 0, 60, 0.1, "the drain")
        elapsed = time.monotonic() - started
        self.stop_all(workers)
        starts = self.records()
        self.assertEqual(sorted(s[0] for s in starts), list(range(20)) + list(range(100, 150)))
        self.assertEqual(_double_starts(starts), [])
        self.assertEqual(q.failed(), [])
        print("\n[double run settings %s] 20 reports of 2.2 s beside retry_after 1 s workers:"
              " drained in %.1fs, each started once" % (self.db.name, elapsed), file=sys.stderr)


on_backends(DoubleRunFaultTests, SQLITE_PG_MARIADB)


class LockedRowIdleTests:
    """A ready row that another session has locked leaves a worker idle."""

    def test_a_row_locked_by_another_session_does_not_make_the_worker_spin(self):
        q = self.db.queue()
        q.push("t_record", {"i": 1})
        # A second session (a worker cut off mid-claim, or any client) holds
        # the row lock: the claim skips the row, which is still ready.
        locker = self.db.connect()
        self.addCleanup(locker.close)
        cur = locker.cursor()
        cur.execute("BEGIN")
        cur.execute('SELECT id FROM "%s" FOR UPDATE' % self.db.table)
        claims = []

        class CountingQueue(dbqueue.Queue):
            def reserve(self, *args, **kwargs):
                claims.append(time.monotonic())
                return super().reserve(*args, **kwargs)

        counted = CountingQueue(config=self.db.config())
        self.addCleanup(counted.close)
        w = dbqueue.Worker(counted, ["default"], sleep=0.5, log=quiet_log())
        self.assertEqual(w.run(max_time=2.0), 0)
        # One claim per idle wait (at most 0.5 s), plus the one retried at
        # once: a spinning worker makes thousands.
        self.assertLessEqual(len(claims), 10, "claims in 2 s: %d" % len(claims))
        cur.execute("ROLLBACK")
        del RECORD[:]
        self.assertEqual(dbqueue.Worker(q, ["default"], log=quiet_log()).run(once=True), 1)
        self.assertEqual(RECORD, [{"i": 1}])


on_backends(LockedRowIdleTests, [b for b in SQLITE_PG_MARIADB if b.name != "sqlite"])



class ValidatorNewlineTests(unittest.TestCase):
    """Every pattern that validates ends in \Z: "$" matches before a final newline."""

    def test_every_validating_pattern_refuses_a_trailing_newline(self):
        patterns = {name: value for name, value in vars(dbqueue).items()
                    if isinstance(value, dbqueue._Pattern) and value.source.startswith("^")}
        good = {"_IDENT": "jobs", "_QUEUE_NAME": "emails", "_TEMPLATE_NAME": "verify_email",
                "_HEADER_NAME": "X-Campaign", "_ADDR_SPEC": "ann@example.com",
                "_MESSAGE_ID_UUID": dbqueue._uuid4()}
        self.assertLessEqual(set(good), set(patterns))
        for name, pattern in patterns.items():
            with self.subTest(pattern=name):
                self.assertTrue(pattern.source.endswith(r"\Z"), pattern.source)
                if name in good:
                    self.assertTrue(pattern.match(good[name]))
                    self.assertIsNone(pattern.match(good[name] + "\n"))
        # And where each one is used.
        with self.assertRaises(dbqueue.ConfigError):
            dbqueue._quote("jobs\n")
        with self.assertRaises(ValueError):
            dbqueue._queue_name("emails\n")
        with self.assertRaises(dbqueue.PermanentError):
            dbqueue._template_name("verify_email\n")
        base = {"to": "a@example.com", "subject": "s", "text": "t"}
        with self.assertRaisesRegex(dbqueue.PermanentError, "not a header name"):
            dbqueue._email_fields(dict(base, headers={"X-Campaign\n": "spring"}), None)
        self.assertEqual(dbqueue._email_fields(dict(base, headers={"X-Campaign": "spring"}),
                                               None)["headers"], [("X-Campaign", "spring")])


class EmailTrailingNewlineTests(EmailTestMixin, unittest.TestCase):
    """A trailing newline in a uuid or a header name, with the real SMTP test server."""

    def setUp(self):
        self.db = Backend(self)

    def test_a_header_name_ending_in_a_newline_fails_and_nothing_is_sent(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        base = {"to": "a@example.com", "subject": "s", "text": "t"}
        q.push("send_email", dict(base, headers={"X-Campaign\n": "spring"}), queue="emails")
        q.push("send_email", dict(base, subject="fine", headers={"X-Campaign": "spring"}),
               queue="emails")
        self.work(q, tries=3)
        (failed,) = q.failed()
        self.assertIn("is not a header name", failed["exception"])
        ((_, msg, _),) = sink.messages
        self.assertEqual((msg["Subject"], msg["X-Campaign"]), ("fine", "spring"))
        self.assertEqual(msg.get_content().strip(), "t")

    def test_a_hand_written_uuid_ending_in_a_newline_gets_the_fallback_message_id(self):
        # "$" let "…\n" into the Message-ID, and the job failed.
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        payload = json.dumps({"uuid": "0c3e8b7a-1d2f-4e5a-9b6c-7d8e9f0a1b2c\n",
                              "job": "send_email",
                              "data": {"to": "a@example.com", "subject": "s", "text": "t"}})
        self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                    " created_at) VALUES ('emails', ?, 0, NULL, 0, 0)", (payload,))
        job_id = self.db.raw("SELECT id FROM {jobs}")[0][0]
        self.work(q, tries=3)
        self.assertEqual(q.failed(), [])
        ((_, msg, _),) = sink.messages
        self.assertTrue(msg["Message-ID"].startswith("<dbqueue-job-%d-emails@" % job_id),
                        msg["Message-ID"])



class MessageFuzzTests(unittest.TestCase):
    """Whatever a payload holds, building its message either works or
    is a PermanentError: never another exception, which would be retried."""

    # Pieces the generator combines: header names the email package parses
    # in its own way (dates, addresses, ids, MIME), and values that trip it.
    names = ["X-Campaign", "Orig-Date", "Keywords", "Comments", "In-Reply-To", "References",
             "List-Unsubscribe", "List-Id", "Importance", "Expires", "Auto-Submitted",
             "Content-Language", "Content-Base", "Content-ID", "Content-Description",
             "Disposition-Notification-To", "Errors-To", "Precedence", "X-Priority"]
    values = [" ", "", "\t", "  \t ", "<>", "<", ">", "()", "(", '"', '""', "@", ",", ";", ":",
              "a, b", "<a@b>", "<a@b> <c@d>", "=?utf-8?q?x?=", "=?", "?=", "=?x?b?###?=",
              "Mon, 32 Foo 2020 99:99:99", "Tue, 1 Dec 2026 21:00:00 +0000", "0", "-1",
              "Zoë", "日本語", "\u00a0", "x" * 200, "a " * 60, "<mailto:u@example.com>",
              "(comment (nested)) value", "\\", "\\\\", "%", "{}", "[a]", "a\\tb"]
    texts = ["", " ", "plain", "Zoë ümlaut", "日本語", "x" * 1000, "line\nline", "\r\n",
             "<p>Hi</p>", "<b>unclosed", "=?utf-8?q?x?=", ". \n.\n", "\u2028"]
    addresses = ["a@example.com", "Ann <ann@example.com>", '"Ann, B" <ann@example.com>',
                 "Zoë <zoe@example.com>", "ann@bücher.example", "(c) a@example.com",
                 '"" <a@example.com>', "=?utf-8?q?x?= <a@example.com>", "a@[127.0.0.1]",
                 "a.@example.com", "<a@example.com>", "a@example.com (comment)", "@", ""]

    def one(self, rng):
        pick = rng.choice
        data = {"to": pick(self.addresses) if rng.random() < 0.8 else
                [pick(self.addresses) for _ in range(rng.randint(0, 3))],
                "subject": pick(self.values + self.texts)}
        for key in ("text", "html"):
            if rng.random() < 0.7:
                data[key] = pick(self.texts)
        for key in ("cc", "bcc", "reply_to", "from"):
            if rng.random() < 0.2:
                data[key] = pick(self.addresses)
        if rng.random() < 0.8:
            data["headers"] = {pick(self.names): pick(self.values)
                               for _ in range(rng.randint(1, 4))}
        return data

    def test_generated_messages_build_or_fail_permanently(self):
        self.build_or_fail(1000)

    @heavy
    def test_twenty_thousand_generated_messages_build_or_fail_permanently(self):
        self.build_or_fail(20000)

    def build_or_fail(self, count):
        seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
        rng = random.Random(seed)
        config = dbqueue.Config(mail_from_address="app@example.com", mail_from_name="Äpp")
        built = refused = 0
        for _ in range(count):
            data = self.one(rng)
            try:
                fields = dbqueue._email_fields(data, config)
                msg, raw, raw_7bit = dbqueue._message_parts(fields)
                raw_7bit = raw_7bit() if raw_7bit is not None else None   # built when asked
            except dbqueue.PermanentError:
                refused += 1
                continue
            except Exception as exc:
                self.fail("seed %d: %r escaped as %s: %s" % (seed, data, type(exc).__name__, exc))
            built += 1
            for text in (raw, raw_7bit or raw):
                self.assertIn(b"\r\n\r\n", text)
                self.assertNotIn(b"\n", text.replace(b"\r\n", b""), (seed, data))
            if raw_7bit is not None:
                self.assertTrue(raw_7bit.isascii(), (seed, data))
        self.assertGreater(built, count // 10)
        self.assertGreater(refused, count // 10)

    def test_a_blank_orig_date_is_sent_or_fails_at_once(self):
        # Python 3.8's email package raised TypeError on it (when dbqueue
        # still let the email package parse extra headers): that was
        # retried, as if the mail server had failed. Either it is sent, or
        # it fails at once; it is never given back for another attempt.
        db = Backend(self)
        q = db.queue(mail_mailer="log", mail_from_address="app@example.com")
        q.push("send_email", {"to": "a@example.com", "subject": "s", "text": "t",
                              "headers": {"Orig-Date": " "}}, queue="emails")
        w = dbqueue.Worker(q, ["emails"], tries=3, backoff="0", log=quiet_log())
        self.assertEqual(w.run(once=True), 1)
        self.assertEqual(db.raw("SELECT COUNT(*) FROM {jobs}"), [(0,)])
        for row in q.failed():
            self.assertIn("cannot be built", row["exception"])


# ---- Configuration: the .env file, settings and their sources, the newcomer's mistakes ----

def env_file(testcase, text, name=".env"):
    """A .env file with `text` in a temp folder of its own; returns its path."""
    folder = tempfile.mkdtemp(prefix="dbqueue-env-")
    testcase.addCleanup(shutil.rmtree, folder, True)
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(textwrap.dedent(text).lstrip("\n"))
    return path


class ConfigEnvFileTests(unittest.TestCase):
    """The .env file is read as Laravel's and CodeIgniter's readers read it."""

    def read(self, text, environ=None):
        path = env_file(self, text)
        return dbqueue.Config.from_env(environ or {}, env_file=path), path

    def test_names_are_expanded_from_the_environment_then_earlier_lines(self):
        config, _ = self.read('''
            APP_NAME=Acme
            MAIL_FROM_NAME="${APP_NAME} Support"
            MAIL_HOST=${SMTP_RELAY}
            MAIL_USERNAME=${APP_NAME}-bot
            ''', environ={"SMTP_RELAY": "relay.internal"})
        self.assertEqual(config.mail_from_name, "Acme Support")
        self.assertEqual(config.mail_host, "relay.internal")
        self.assertEqual(config.mail_username, "Acme-bot")
        self.assertEqual(config.warnings, [])
        # The environment wins over an earlier line, as it does for the setting itself.
        config, _ = self.read('''
            APP_NAME=FromFile
            MAIL_FROM_NAME="${APP_NAME}"
            ''', environ={"APP_NAME": "FromEnv"})
        self.assertEqual(config.mail_from_name, "FromEnv")

    def test_an_unknown_name_becomes_empty_with_a_warning_naming_the_line(self):
        config, path = self.read('''
            # the sender
            MAIL_FROM_NAME="${APP_NAME} Team"
            ''')
        self.assertEqual(config.mail_from_name, "Team")
        self.assertEqual(len(config.warnings), 1, config.warnings)
        self.assertIn("%s:2" % path, config.warnings[0])
        self.assertIn("${APP_NAME}", config.warnings[0])

    def test_single_quotes_are_literal_and_an_escaped_dollar_stays(self):
        config, _ = self.read(r'''
            APP_NAME=Acme
            MAIL_FROM_NAME='${APP_NAME} $x'
            MAIL_USERNAME="\${APP_NAME}"
            MAIL_PASSWORD="p\"w\\d"
            ''')
        self.assertEqual(config.mail_from_name, "${APP_NAME} $x")
        self.assertEqual(config.mail_username, "${APP_NAME}")
        self.assertEqual(config.mail_password, 'p"w\\d')
        self.assertEqual(config.warnings, [])

    def test_a_comment_after_a_quoted_value_keeps_the_value(self):
        tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        db = os.path.join(tmp, "c.db")
        config, _ = self.read('''
            QUEUE_DATABASE_URL="sqlite:///%s" # the queue
            MAIL_FROM_NAME='Acme # Support'   # the sender
            MAIL_HOST=smtp.example.com # relay
            MAIL_USERNAME=a#b
            ''' % db)
        self.assertEqual(config.database_url, "sqlite:///" + db)
        self.assertEqual(config.mail_from_name, "Acme # Support")
        self.assertEqual(config.mail_host, "smtp.example.com")
        self.assertEqual(config.mail_username, "a#b")
        self.assertEqual(config.warnings, [])

    def test_a_line_that_is_not_key_value_is_a_warning_naming_it(self):
        config, path = self.read('''
            MAIL_HOST=smtp.example.com
            this is not a setting
            MAIL_PORT 587
            MAIL_FROM_NAME="unterminated
            export MAIL_USERNAME=bot
            ''')
        self.assertEqual(config.mail_host, "smtp.example.com")
        self.assertEqual(config.mail_username, "bot")
        self.assertEqual(config.mail_from_name, "")
        lines = [w.split(":")[1] for w in config.warnings if w.startswith(path + ":")]
        self.assertEqual(lines, ["2", "3", "4"], config.warnings)
        # The command line prints each one and carries on.
        code, out, err = run_main(["migrate", "--print", "--env-file", path], {})
        self.assertEqual(code, 0, err)
        self.assertIn("%s:2" % path, err)
        self.assertIn("warning", err)

    def test_codeigniter_style_lines_with_spaces_and_dotted_keys(self):
        config, path = self.read('''
            CI_ENVIRONMENT = production
            QUEUE_MAX_ATTEMPTS = 5
            database.default.DBPrefix = app_
            ''')
        self.assertEqual(config.max_attempts, 5)
        self.assertEqual(config.table, "app_jobs")
        self.assertEqual(config.warnings, [])


def url_with(url, param):
    """`url` with one more query parameter, joined by ? or & as the URL needs."""
    return url + ("&" if "?" in url else "?") + param


def run_main_as_reader(testcase, argv, env, timeout=30.0):
    """main(argv) in a forked child that cannot write a file of mode 0444: run
    as `nobody` when the tests run as root (root writes any file), else as the
    current user. Forked, not exec'd, so the interpreter need not be one that
    `nobody` may run. Returns (code, stdout, stderr); code None if it hung."""
    import pwd
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into the test runner
        result = {"code": 99, "out": "", "err": "child failed"}
        try:
            os.close(read_fd)
            # Imported while still root: nobody may not read root's interpreter's library.
            for module in ("argparse", "sqlite3", "urllib.parse", "json", "re", "traceback",
                           "importlib", "signal", "select", "random", "string"):
                __import__(module)
            if os.getuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.setgroups([])
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
            code, out, err = run_main(argv, env)
            result = {"code": code, "out": out, "err": err}
        except BaseException as exc:
            result["err"] = "child failed: %r" % exc
        finally:
            try:
                os.write(write_fd, json.dumps(result).encode())
            finally:
                os._exit(0)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            import select
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return None, "", "timed out after %.0fs: %r" % (timeout, argv)
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks).decode())
    return result["code"], result["out"], result["err"]


class ConfigReadOnlyDatabaseTests(unittest.TestCase):
    """A database dbqueue may read but not write is one line and exit 1, not an outage."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        # The folder is the user's own (writable: SQLite's -shm goes there); the file is 0444.
        os.chmod(self.tmp, 0o777)
        self.path = os.path.join(self.tmp, "q.db")
        q = dbqueue.Queue("sqlite:///" + self.path)
        q.push("t_record", {"i": 1})
        q.close()
        os.chmod(self.path, 0o444)
        self.env = {"QUEUE_DATABASE_URL": "sqlite:///" + self.path}

    def test_work_names_the_file_and_the_fix_and_exits_1(self):
        code, out, err = run_main_as_reader(self, ["work", "--once"], self.env)
        self.assertEqual(code, 1, err)
        last = err.strip().splitlines()[-1]
        self.assertIn(self.path, last)
        self.assertIn("writable", last)
        self.assertNotIn("retrying", err)

    def test_health_fails_and_migrate_does_not_say_migrated(self):
        code, out, err = run_main_as_reader(self, ["health"], self.env)
        self.assertEqual(code, 1, out + err)
        self.assertIn("unhealthy: cannot write to %s" % self.path, out)
        code, out, err = run_main_as_reader(self, ["migrate"], self.env)
        self.assertEqual(code, 1, out + err)
        self.assertNotIn("migrated", out)
        self.assertIn(self.path, err)
        # Reading still works: stats is what a read-only user may run.
        code, out, err = run_main_as_reader(self, ["stats"], self.env)
        self.assertEqual(code, 0, err)
        self.assertIn("default", out)


class ConfigPostgresRightsTests(unittest.TestCase):
    """A PostgreSQL role without rights (SQLSTATE 42501) is the same kind of error."""

    def setUp(self):
        self.db = PsycopgBackend(self)
        self.db.queue().push("t_record", {"i": 1})
        self.role = "dbq_role_" + self.db.table
        self.db.raw('CREATE ROLE "%s" NOLOGIN' % self.role)
        self.addCleanup(self.db.raw, 'DROP ROLE IF EXISTS "%s"' % self.role)
        self.addCleanup(self.db.raw, 'REVOKE ALL ON "%s", "%s" FROM "%s"'
                        % (self.db.table, self.db.failed_table, self.role))
        # libpq's options: the session runs as that role from its first statement.
        self.env = self.db.env(QUEUE_DATABASE_URL=url_with(
            self.db.url, "options=-crole%%3D%s" % self.role))

    def test_a_role_without_rights_stops_the_worker_with_the_fix(self):
        code, out, err = run_main(["work", "--once"], self.env)
        self.assertEqual(code, 1, err)
        last = err.strip().splitlines()[-1]
        self.assertIn("permission denied", last)
        self.assertIn("grant", last)
        self.assertNotIn("retrying", err)
        code, out, err = run_main(["health"], self.env)
        self.assertEqual(code, 1, out + err)
        self.assertIn("unhealthy", out)

    def test_a_role_that_may_only_read_is_unhealthy_and_cannot_work(self):
        self.db.raw('GRANT SELECT ON "%s", "%s" TO "%s"'
                    % (self.db.table, self.db.failed_table, self.role))
        code, out, err = run_main(["stats"], self.env)
        self.assertEqual(code, 0, err)
        code, out, err = run_main(["health"], self.env)
        self.assertEqual(code, 1, out + err)
        self.assertIn("unhealthy: cannot write to", out)
        self.assertIn("grant", out)
        code, out, err = run_main(["work", "--once"], self.env)
        self.assertEqual(code, 1, err)
        self.assertIn("permission denied", err.strip().splitlines()[-1])
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs} WHERE reserved_at IS NULL"),
                         [(1,)])


class ConfigCodeIgniterEnvTests(unittest.TestCase):
    """The seed CodeIgniter app's .env works as it is; dbqueue's own names win."""

    def read(self, text, environ=None, **kwargs):
        path = env_file(self, text)
        return dbqueue.Config.from_env(environ or {}, env_file=path, **kwargs), path

    def test_database_default_builds_the_url_and_dbprefix_both_table_names(self):
        config, path = self.read('''
            database.default.hostname = db.internal
            database.default.database = app_db
            database.default.username = app user
            database.default.password = "p@ss:w/rd%"
            database.default.DBDriver = Postgre
            database.default.DBPrefix = ci_
            database.default.port = 5433
            ''')
        self.assertEqual(config.database_url,
                         "postgresql://app%20user:p%40ss%3Aw%2Frd%25@db.internal:5433/app_db")
        self.assertEqual((config.table, config.failed_table), ("ci_jobs", "ci_failed_jobs"))
        self.assertEqual(config.sources["QUEUE_DATABASE_URL"],
                         "derived from database.default.* (%s:5)" % path)
        # A driver can be asked for it: the URL parses as the libpq URI it is.
        from urllib.parse import unquote, urlsplit
        parts = urlsplit(config.database_url)
        self.assertEqual((unquote(parts.username), unquote(parts.password), parts.port),
                         ("app user", "p@ss:w/rd%", 5433))
        # dbqueue's names win over CodeIgniter's.
        config, _ = self.read('''
            database.default.DBDriver = Postgre
            database.default.database = app_db
            database.default.DBPrefix = ci_
            QUEUE_TABLE = queue_jobs
            ''', environ={"QUEUE_DATABASE_URL": "sqlite:///q.db"})
        self.assertEqual(config.database_url, "sqlite:///q.db")
        self.assertEqual((config.table, config.failed_table), ("queue_jobs", "ci_failed_jobs"))

    def test_mysqli_builds_a_mysql_url(self):
        # The MySQL dialect is another part's; the URL built here is what it reads.
        values = {"database.default.DBDriver": "MySQLi", "database.default.hostname": "::1",
                  "database.default.database": "app", "database.default.username": "root",
                  "database.default.password": "a b", "database.default.port": "3306"}
        url, source = dbqueue._codeigniter_url(lambda n: (values.get(n), ".env:1"), ".env")
        self.assertEqual(url, "mysql://root:a%20b@[::1]:3306/app")
        values["database.default.DBDriver"] = "SQLSRV"
        with self.assertRaises(dbqueue.ConfigError) as caught:
            dbqueue._codeigniter_url(lambda n: (values.get(n), ".env:1"), ".env")
        self.assertIn("database.default.DBDriver=SQLSRV", str(caught.exception))

    def test_a_relative_sqlite3_database_is_a_file_under_writable_beside_the_env(self):
        path = env_file(self, '''
            database.default.DBDriver = SQLite3
            database.default.database = app.db
            ''')
        writable = os.path.join(os.path.dirname(path), "writable")
        os.mkdir(writable)
        code, out, err = run_main(["push", "t_record", "--env-file", path], {})
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(writable, "app.db")))
        config, _ = self.read('''
            database.default.DBDriver = SQLite3
            database.default.database = /var/lib/app/app.db
            ''')
        self.assertEqual(config.database_url, "sqlite:////var/lib/app/app.db")
        # The underscore spelling a shell can export, as CodeIgniter also reads it.
        config = dbqueue.Config.from_env({"database_default_DBDriver": "Postgre",
                                          "database_default_database": "app"},
                                         env_file=env_file(self, "\n"))
        self.assertEqual(config.database_url, "postgresql:///app")

    def test_email_settings_stand_for_the_mail_ones(self):
        config, path = self.read('''
            EMAIL_PROVIDER = smtp
            EMAIL_FROM_ADDRESS = hello@example.com
            EMAIL_FROM_NAME = "Acme"
            EMAIL_SMTP_HOST = smtp.example.com
            EMAIL_SMTP_PORT = 587
            EMAIL_SMTP_USER = mailer
            EMAIL_SMTP_PASS = " secret "
            EMAIL_SMTP_CRYPTO = tls
            ''')
        self.assertEqual((config.mail_mailer, config.mail_from_address, config.mail_from_name,
                          config.mail_host, config.mail_port, config.mail_username,
                          config.mail_password, config.mail_encryption),
                         ("smtp", "hello@example.com", "Acme", "smtp.example.com", 587, "mailer",
                          " secret ", "starttls"))
        self.assertEqual(config.sources["MAIL_PORT"], "%s:5 (EMAIL_SMTP_PORT)" % path)
        for crypto, expected in (("ssl", "ssl"), ("", "none"), ("tls", "starttls")):
            config, _ = self.read("EMAIL_SMTP_CRYPTO = %s\n" % crypto)
            self.assertEqual(config.mail_encryption, expected)
        for provider, expected in (("none", "log"), ("sendmail", "sendmail"), ("smtp", "smtp")):
            config, _ = self.read("EMAIL_PROVIDER = %s\n" % provider)
            self.assertEqual(config.mail_mailer, expected)
        self.assertEqual(config.mail_sendmail_path, "/usr/sbin/sendmail -t -i")
        config, _ = self.read('''
            EMAIL_SMTP_HOST = ci.example.com
            EMAIL_PROVIDER = none
            ''', environ={"MAIL_HOST": "ours.example.com", "MAIL_MAILER": "smtp"})
        self.assertEqual((config.mail_host, config.mail_mailer), ("ours.example.com", "smtp"))
        # A bad value is named by the variable that held it.
        code, out, err = run_main(["config", "--env-file", env_file(self, "EMAIL_SMTP_PORT = x\n")],
                                  {})
        self.assertEqual(code, 2)
        self.assertIn("EMAIL_SMTP_PORT=x", err)

    def test_config_shows_every_setting_its_source_and_masks_secrets(self):
        path = env_file(self, '''
            QUEUE_MAX_ATTEMPTS = 5
            MAIL_PASSWORD = hunter2
            database.default.DBPrefix = ci_
            ''')
        env = {"QUEUE_TIMEOUT": "120",
               "QUEUE_DATABASE_URL": "postgresql://app:topsecret@db/app?sslpassword=keypass"}
        code, out, err = run_main(["config", "--json", "--env-file", path], env)
        self.assertEqual(code, 0, err)
        for secret in ("hunter2", "topsecret", "keypass"):
            self.assertNotIn(secret, out + err)
        got = {s["name"]: (s["value"], s["source"]) for s in json.loads(out)["settings"]}
        self.assertEqual(got["QUEUE_TIMEOUT"], (120, "environment"))
        self.assertEqual(got["QUEUE_MAX_ATTEMPTS"], (5, "%s:1" % path))
        self.assertEqual(got["MAIL_PASSWORD"], ("***", "%s:2" % path))
        self.assertEqual(got["QUEUE_TABLE"],
                         ("ci_jobs", "derived from database.default.DBPrefix (%s:3)" % path))
        self.assertEqual(got["QUEUE_RETRY_AFTER"], (90, "default"))
        self.assertEqual(got["QUEUE_DATABASE_URL"][1], "environment")
        for name in ("QUEUE_DRIVER", "QUEUE_BACKOFF", "QUEUE_FAILED_TABLE", "MAIL_MAILER",
                     "MAIL_HOST", "MAIL_PORT", "MAIL_USERNAME", "MAIL_ENCRYPTION",
                     "MAIL_FROM_ADDRESS", "MAIL_FROM_NAME", "MAIL_TIMEOUT", "MAIL_VERIFY_PEER",
                     "MAIL_TEMPLATE_DIR", "MAIL_SENDMAIL_PATH"):
            self.assertIn(name, got)
        code, out, err = run_main(["config", "--env-file", path, "--database-url",
                                   "sqlite:///x.db"], env)
        self.assertEqual(code, 0, err)
        line = [l for l in out.splitlines() if l.startswith("QUEUE_DATABASE_URL")][0]
        self.assertEqual(line.split(), ["QUEUE_DATABASE_URL", "sqlite:///x.db", "--database-url"])
        self.assertNotIn("hunter2", out)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(path), "x.db")))


class ConfigSilentFallbackTests(unittest.TestCase):
    """No mistake quietly points dbqueue at another database."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "q.db")

    def one_line_error(self, argv, env, code=2):
        return assert_refused(self, run_main(argv, env), code=code, context=(argv, env))

    def test_a_name_one_edit_from_a_setting_is_a_warning_naming_both(self):
        path = env_file(self, '''
            QUEUE_MAX_ATTEMPT=5
            MAIL_PASWORD=secret
            ''')
        config = dbqueue.Config.from_env({"DATABSE_URL": "sqlite:///x.db", "HOME": "/root",
                                          "QUEUE_DATABASE_URL": self.path}, env_file=path)
        text = "\n".join(config.warnings)
        self.assertEqual(len(config.warnings), 3, text)
        self.assertIn("DATABSE_URL is set (environment)", text)
        self.assertIn("DATABASE_URL?", text)
        self.assertIn("QUEUE_MAX_ATTEMPT is set (%s:1)" % path, text)
        self.assertIn("QUEUE_MAX_ATTEMPTS?", text)
        self.assertIn("MAIL_PASWORD is set (%s:2)" % path, text)
        self.assertNotIn("secret", text)
        code, out, err = run_main(["push", "t_record"], {"DATABSE_URL": "sqlite:///x.db",
                                                         "QUEUE_DATABASE_URL": self.path})
        self.assertEqual(code, 0, err)
        self.assertIn("warning: DATABSE_URL", err)

    def test_empty_and_garbage_urls_are_errors_naming_their_origin(self):
        for argv, env, origin in (
                (["push", "t_record", "--database-url", ""], {}, "--database-url"),
                (["stats", "--database-url", "garbage"], {"QUEUE_DATABASE_URL": self.path},
                 "--database-url"),
                (["push", "t_record"], {"QUEUE_DATABASE_URL": ""}, "QUEUE_DATABASE_URL"),
                (["push", "t_record"], {"DATABASE_URL": "garbage"}, "DATABASE_URL"),
                (["work", "--once", "--database-url", "mongodb://u:pw@h/db"], {},
                 "--database-url")):
            err = self.one_line_error(argv, env)
            self.assertIn(origin, err)
            if argv[-1].startswith("--") or "--database-url" in argv:
                self.assertNotIn("QUEUE_DATABASE_URL", err)
            self.assertNotIn(":pw@", err)
        path = env_file(self, "# db\nQUEUE_DATABASE_URL = oops\n")
        err = self.one_line_error(["push", "t_record", "--env-file", path], {})
        self.assertIn("QUEUE_DATABASE_URL in %s:2" % path, err)
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(path), "oops")))

    def test_a_bare_value_is_a_sqlite_file_only_when_it_looks_like_one(self):
        for bare in ("q.db", "data.sqlite", "x.SQLITE3", os.path.join(self.tmp, "plain")):
            dialect, target, _ = dbqueue._parse_url(bare)
            self.assertIs(dialect, dbqueue._SQLite)
            self.assertEqual(target, bare)
        for bare in ("garbage", "queue", "dbname=app", "localhost:5432"):
            with self.assertRaises(dbqueue.ConfigError):
                dbqueue._parse_url(bare)

    def test_read_commands_never_create_a_database(self):
        missing = os.path.join(self.tmp, "typo.db")
        env = {"QUEUE_DATABASE_URL": "sqlite:///" + missing}
        for argv in (["stats"], ["stats", "--json"], ["failed"], ["failed", "--json"]):
            err = self.one_line_error(argv, env, code=1)
            self.assertIn(missing, err)
            self.assertIn("does not exist", err)
            self.assertIn("QUEUE_DATABASE_URL", err)
        code, out, err = run_main(["health"], env)
        self.assertEqual(code, 1)
        self.assertIn("does not exist", out)
        code, out, err = run_main(["config"], env)
        self.assertEqual(code, 0, err)
        self.assertFalse(os.path.exists(missing))
        # A file without the tables is a clear answer too, and gains none.
        open(missing, "w").close()
        err = self.one_line_error(["stats"], env, code=1)
        self.assertIn("migrate", err)
        import sqlite3
        conn = sqlite3.connect(missing)
        self.assertEqual(conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone(), (0,))
        conn.close()


class ConfigUrlTypoRefusalTests(unittest.TestCase):
    """No URL set, and a name one edit from a URL variable set: every command
    refuses in one line, exit 2, before it could make ./dbqueue.sqlite3."""

    def run_cli(self, argv, env, cwd):
        clean = clean_env()
        clean.update(env)
        proc = subprocess.run([sys.executable, os.path.join(HERE, "dbqueue.py")] + argv,
                              cwd=cwd, env=clean, capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    def test_every_command_refuses_and_creates_nothing(self):
        url = "postgresql://app:Typo-Pw-77@127.0.0.1:1/appdb"
        for typo, meant in (("QUEUE_DATABSE_URL", "QUEUE_DATABASE_URL"),
                            ("DATABSE_URL", "DATABASE_URL"),
                            ("database_url", "DATABASE_URL")):
            for in_file in (False, True):
                tmp = tempfile.mkdtemp(prefix="dbqueue-typo-")
                self.addCleanup(shutil.rmtree, tmp, True)
                env = {}
                if in_file:
                    with open(os.path.join(tmp, ".env"), "w") as fh:
                        fh.write("%s=%s\n" % (typo, url))
                else:
                    env[typo] = url
                for argv in (["push", "t_record"], ["work", "--once"], ["migrate"], ["stats"],
                             ["config"]):
                    code, out, err = self.run_cli(argv, env, tmp)
                    self.assertEqual(code, 2, (typo, in_file, argv, out, err))
                    line = one_line(self, err)
                    self.assertIn(typo, line)
                    self.assertIn(meant, line)
                    self.assertNotIn("Typo-Pw-77", out + err)
                    self.assertEqual(out, "")
                    self.assertEqual(sorted(os.listdir(tmp)), [".env"] if in_file else [],
                                     (typo, argv))
        # Set beside the right name, the typo stays a warning and the command runs.
        tmp = tempfile.mkdtemp(prefix="dbqueue-typo-")
        self.addCleanup(shutil.rmtree, tmp, True)
        code, out, err = self.run_cli(["push", "t_record"], {
            "DATABSE_URL": url, "QUEUE_DATABASE_URL": "sqlite:///q.db"}, tmp)
        self.assertEqual(code, 0, err)
        self.assertIn("warning: DATABSE_URL", err)
        self.assertIn("q.db", os.listdir(tmp))


class ConfigSmallFixesTests(EmailTestMixin, unittest.TestCase):
    """The small things a newcomer trips on (issue 15, item 5)."""

    def setUp(self):
        self.db = Backend(self)
        self.env = {"QUEUE_DATABASE_URL": "sqlite:///" + os.path.join(self.db.tmp, "q.db")}

    def test_a_final_failure_does_not_call_its_error_temporary(self):
        sink = SMTPSink(self)
        sink.data_replies = ["451 4.3.0 try again later"] * 3
        q = self.mail_queue(sink)
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        _, log = self.work(q, tries=3)
        self.assertEqual(log.count("outcome=released"), 2, log)
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn("451", failed[0]["exception"])
        self.assertNotIn("temporary", failed[0]["exception"])

    def test_an_interrupted_job_logs_the_time_it_ran(self):
        # A real worker process: a SIGINT sent to the test runner would reach
        # whatever else runs in it.
        with open(os.path.join(self.db.tmp, "dbq_sleeping_handlers.py"), "w") as fh:
            fh.write(_SLEEPING_HANDLERS)
        out = os.path.join(self.db.tmp, "out.txt")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QUEUE_", "MAIL_", "DATABASE_URL"))}
        env.update(self.db.env(PYTHONPATH=self.db.tmp, T_OUT=out))
        self.db.queue().push("s_sleep", {})
        with open(os.path.join(self.db.tmp, "stderr.txt"), "w+") as err:
            proc = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "dbqueue.py"), "work", "--once",
                 "--import", "dbq_sleeping_handlers"], cwd=self.db.tmp, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait(30)))
            wait_for(lambda: os.path.exists(out), 30, message="the job to start")
            time.sleep(0.3)     # a lower bound on how long it ran: load only lengthens it
            proc.send_signal(signal.SIGINT)
            wait_for(lambda: "stopping after the" in open(err.name).read(), 30,
                     message="the worker to note the first SIGINT")
            proc.send_signal(signal.SIGINT)
            self.assertEqual(proc.wait(30), 130)
            err.seek(0)
            text = err.read()
        lines = [l for l in text.splitlines() if "reason=interrupted" in l]
        self.assertEqual(len(lines), 1, text)
        ms = float(lines[0].split("ms=")[1].split()[0])
        self.assertGreaterEqual(ms, 250, lines[0])

    def test_bad_flags_found_late_are_usage_errors(self):
        for argv, culprit in ((["work", "--max-jobs", "0"], "--max-jobs"),
                              (["migrate", "--all"], "--all"),
                              (["push", "t_record", "--delay", "1e9"], "too large"),
                              (["work", "--timeout", "1e12"], "too large")):
            code, out, err = run_main(argv, self.env)
            self.assertEqual(code, 2, (argv, out, err))
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn(culprit, err)
            self.assertNotIn("not a whole number", err)
            self.assertFalse(os.path.exists(self.env["QUEUE_DATABASE_URL"][10:]))
        code, out, err = run_main(["push", "t_record", "--delay", "1.5"], self.env)
        self.assertEqual(code, 2)
        self.assertIn("whole number", err)

    def test_every_flag_has_help_text(self):
        import argparse
        top = dbqueue._parser()
        sub = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)][0]
        missing = []
        for name, parser in sorted(sub.choices.items()):
            for action in parser._actions:
                if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                    missing.append("%s %s" % (name, "/".join(action.option_strings) or action.dest))
        self.assertEqual(missing, [])
        self.assertEqual(sorted(sub.choices), sorted(dbqueue._COMMANDS))

    def test_the_html_part_carries_no_mime_version_header(self):
        config = dbqueue.Config(mail_from_address="app@example.com")
        fields = dbqueue._email_fields({"to": "a@example.com", "subject": "s", "text": "t",
                                        "html": "<p>h</p>"}, config)
        msg = dbqueue._build_message(fields)
        self.assertEqual(msg.get_all("MIME-Version"), ["1.0"])
        parts = list(msg.iter_parts())
        self.assertEqual([p.get_content_type() for p in parts], ["text/plain", "text/html"])
        for part in parts:
            self.assertIsNone(part["MIME-Version"], part.get_content_type())
        self.assertEqual(msg.as_bytes().count(b"MIME-Version"), 1)


class ConfigCommandHintTests(unittest.TestCase):
    """A command that dbqueue suggests runs as it is on a stock Debian (python3) and
    reaches the same database (the --database-url the user gave)."""

    def setUp(self):
        self.db = Backend(self)

    def test_a_missing_sqlite_file_suggests_migrate_with_the_url_given(self):
        url = "sqlite:///" + os.path.join(self.db.tmp, "elsewhere.db")
        code, out, err = run_main(["failed", "--database-url", url])
        self.assertEqual(code, 1, err)
        self.assertIn("`python3 dbqueue.py migrate --database-url '%s'`" % url, err)

    def test_tables_missing_on_a_server_suggest_migrate_with_the_url_given(self):
        pg = PsycopgBackend(self)
        code, out, err = run_main(["stats", "--database-url", pg.url],
                                  {"QUEUE_TABLE": pg.table, "QUEUE_FAILED_TABLE": pg.failed_table})
        self.assertEqual(code, 1, err)
        self.assertIn("run `python3 dbqueue.py migrate --database-url '%s'`" % pg.url, err)

    def test_health_names_the_failed_command_with_python3(self):
        q = self.db.queue()
        q.push("t_fail", {}, queue="emails")
        dbqueue.Worker(q, ["emails"], tries=1, log=quiet_log()).run(stop_when_empty=True)
        code, out, err = run_main(["health", "--max-failed", "0"], self.db.env())
        self.assertEqual(code, 1, out)
        self.assertIn("see `python3 dbqueue.py failed --queue emails`", out)
        code, out, err = run_main(["failed", "--database-url", "sqlite:///nowhere.db"])
        self.assertNotIn("python dbqueue.py", err)
        self.assertIn("python3 dbqueue.py", err)

    def test_a_url_missing_its_slashes_is_not_taken_for_a_sqlite_file(self):
        for given, meant in (("postgresql:/db", "postgresql:///db"),
                             ("mysql:app", "mysql:///app"),
                             ("sqlite:/srv/app/q.db", "sqlite:////srv/app/q.db"),
                             ("postgres:/u:secret@h/db", "postgres://u:***@h/db")):
            code, out, err = run_main(["migrate", "--database-url", given])
            self.assertEqual(code, 2, err)
            self.assertIn("did you mean %s?" % meant, err)
            self.assertNotIn("secret", err)
            self.assertNotIn("SQLite", err)


class ConfigSuiteOnALaptopTests(unittest.TestCase):
    """The suite touches only a server the user named, and says what it skipped."""

    def test_options_are_joined_to_a_url_with_or_without_a_query(self):
        self.assertEqual(url_with("postgresql://u@h/db", "options=-cx%3D1"),
                         "postgresql://u@h/db?options=-cx%3D1")
        self.assertEqual(url_with("postgresql:///db?host=/run/pg", "options=-cx%3D1"),
                         "postgresql:///db?host=/run/pg&options=-cx%3D1")

    def test_without_dbqueue_test_pg_no_server_is_touched(self):
        module = sys.modules[__name__]
        saved = module.PG_URL, dict(_pg_state), module._pg_connect
        calls = []
        try:
            module.PG_URL = None
            _pg_state.clear()
            module._pg_connect = lambda *args: calls.append(args)
            for driver in ("psycopg", "psycopg2"):
                self.assertEqual(pg_available(driver), PG_HINT)
        finally:
            module.PG_URL, module._pg_connect = saved[0], saved[2]
            _pg_state.clear()
            _pg_state.update(saved[1])
        self.assertEqual(calls, [])

    def test_a_run_ends_with_one_line_naming_what_was_skipped(self):
        self.assertEqual(_skip_summary(10, [(None, "a (do x)"), (None, "b"), (None, "a (do x)")]),
                         "skipped 3 of 10: 2 a (do x); 1 b")
        self.assertIsNone(_skip_summary(10, []))
        code = ("import sys, unittest, test_dbqueue as t\n"
                "loader = unittest.TestLoader()\n"
                "tests = loader.loadTestsFromName('test_dbqueue.ConfigPostgresRightsTests')\n"
                "unittest.TextTestRunner(stream=sys.stdout).run(t.load_tests(loader, tests, None))\n")
        env = {k: v for k, v in os.environ.items()
               if k not in ("DBQUEUE_TEST_PG", "DBQUEUE_REQUIRE_ALL")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        proc = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, timeout=60,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
        self.assertIn("OK (skipped=2)", proc.stdout)
        last = proc.stderr.strip().splitlines()[-1]
        self.assertTrue(last.startswith("skipped 2 of 2: 2 PostgreSQL tests: set DBQUEUE_TEST_PG"),
                        proc.stderr)


README = os.path.join(HERE, "README.md")
# A trailing `# needs …` comment marks a README command the SQLite run leaves out.
_NEEDS = r"\s#\s*needs\b"


def readme_blocks(language):
    """The fenced blocks of README.md in `language`, as lists of lines (continuations joined)."""
    import re
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    return [block.replace("\\\n", " ").splitlines()
            for block in re.findall(r"^```%s\n(.*?)^```" % language, text, re.M | re.S)]


class ConfigReadmeTests(unittest.TestCase):
    """Every shell command in README.md works as written, in a fresh folder with a copy
    of dbqueue.py and the embedded SQLite default; every transcript's flags parse."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-readme-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        shutil.copy(os.path.join(HERE, "dbqueue.py"), self.tmp)
        bin_dir = os.path.join(self.tmp, ".bin")
        os.mkdir(bin_dir)
        for name in ("python3", "python"):      # the interpreter running these tests
            # A script, not a symlink: a venv's interpreter must be started by its own path.
            path = os.path.join(bin_dir, name)
            with open(path, "w") as fh:
                fh.write('#!/bin/sh\nexec "%s" "$@"\n' % sys.executable)
            os.chmod(path, 0o755)
        self.env = clean_env("DBQUEUE_")
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"

    def run_block(self, lines, env):
        """Run one block's lines as one bash script (so `export` reaches the next line)."""
        script = "set -e -o pipefail\n" + "\n".join(lines) + "\n"
        proc = subprocess.run(["bash", "-c", script], cwd=self.tmp, env=env, timeout=300,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
        self.assertEqual(proc.returncode, 0, "a README command failed (mark one that needs a"
                         " server with a trailing `# needs …` comment):\n%s\n%s"
                         % ("\n".join(lines), proc.stderr[-3000:]))
        return proc

    def commands(self, block, keep):
        import re
        out = []
        for line in block:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "-m unittest" in line and "test_dbqueue" in line and "DBQUEUE_FAULTS" not in line:
                continue      # the suite running now
            if keep(re.search(_NEEDS + r"(.*)", line)):
                out.append(line)
        return out

    def test_the_shell_commands_work(self):
        import re
        ran = 0
        for block in readme_blocks("sh"):
            lines = self.commands(block, lambda needs: needs is None)
            if lines:
                self.run_block(lines, self.env)
                ran += len(lines)
        self.assertGreaterEqual(ran, 10)
        # What the examples queued, they also sent (MAIL_MAILER=log), and nothing failed.
        stats = json.loads(self.run_block(["python3 dbqueue.py stats --json"], self.env).stdout)
        self.assertEqual([s for s in stats if s["queue"] == "emails" and s["ready"]], [])
        failed = json.loads(self.run_block(["python3 dbqueue.py failed --json"], self.env).stdout)
        self.assertEqual(failed, [])
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "dbqueue.sqlite3")))
        self.assertIsNotNone(re.search(_NEEDS, "x  # needs PostgreSQL"))

    def test_the_postgresql_commands_work_on_the_test_server(self):
        import re
        import shlex
        db = PsycopgBackend(self)
        env = dict(self.env, QUEUE_TABLE=db.table, QUEUE_FAILED_TABLE=db.failed_table)
        ran = 0
        for block in readme_blocks("sh"):
            lines = self.commands(block, lambda needs: needs is not None
                                  and needs.group(1).strip().startswith("PostgreSQL"))
            lines = [re.sub(r"'?postgresql://[^\s']+'?", shlex.quote(PG_URL), l) for l in lines]
            if lines:
                self.run_block(lines, env)
                ran += len(lines)
        self.assertGreaterEqual(ran, 4)
        self.assertEqual(db.raw("SELECT COUNT(*) FROM {jobs}"), [(0,)])

    def test_transcripts_use_real_flags_and_env_examples_parse_cleanly(self):
        import shlex
        checked = errors = 0
        for block in readme_blocks("console"):
            for i, line in enumerate(block):
                if not line.startswith("$ "):
                    continue
                words = shlex.split(line[2:], comments=True)
                env = {}
                while words and "=" in words[0] and not words[0].startswith("-"):
                    name, _, value = words.pop(0).partition("=")    # VAR=value before the command
                    env[name] = value
                if words[:2] != ["python3", "dbqueue.py"]:
                    continue
                following = block[i + 1] if i + 1 < len(block) else ""
                if following.startswith("dbqueue: "):
                    # An error shown with its command is the real one, word for word.
                    code, out, err = run_main(words[2:], env)
                    self.assertEqual(err.strip(), following, line)
                    errors += 1
                    continue
                try:
                    dbqueue._parser().parse_args(words[2:])
                except dbqueue._UsageError as exc:
                    self.fail("README: %s: %s" % (line, exc))
                checked += 1
        self.assertGreaterEqual(checked, 5)
        self.assertGreaterEqual(errors, 3)
        self.assertTrue(readme_blocks("dotenv"))
        for block in readme_blocks("dotenv"):
            path = env_file(self, "\n".join(block) + "\n")
            values, warnings = dbqueue._read_env_file(path, True, environ={})
            self.assertEqual(warnings, [])
            self.assertTrue(values)


# The closing line of a run says what did not run and how to run it.

def _skip_summary(ran, skipped):
    """One line: how many tests skipped, grouped by reason, each with how to run them."""
    if not skipped:
        return None
    counts = {}
    for _, reason in skipped:
        counts[reason] = counts.get(reason, 0) + 1
    groups = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return "skipped %d of %d: %s" % (len(skipped), ran, "; ".join(
        "%d %s" % (count, reason) for reason, count in groups))


class _SummarySuite(unittest.TestSuite):
    """The whole module's tests; after the runner's own closing lines (atexit,
    so after "OK (skipped=N)"), one line on stderr names what was skipped."""

    def run(self, result, debug=False):
        result = super().run(result, debug)
        line = _skip_summary(result.testsRun, getattr(result, "skipped", []))
        if line and not getattr(_SummarySuite, "registered", False):
            _SummarySuite.registered = True
            atexit.register(lambda: sys.stderr.write(line + "\n"))
        return result


def _only_heavy(suite):
    """The tests of `suite` marked @heavy, in a suite of the same shape."""
    kept = []
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            kept.append(_only_heavy(test))
        elif getattr(getattr(test, getattr(test, "_testMethodName", ""), None), "heavy", False):
            kept.append(test)
    return type(suite)(kept)


def load_tests(loader, tests, pattern):
    """unittest's hook when the whole module is loaded (`python -m unittest test_dbqueue`)."""
    if os.environ.get("DBQUEUE_FAULTS") == "only":
        tests = _only_heavy(tests)
    return _SummarySuite([tests])


# ---- Takeover: the CodeIgniter app's tables, templates and sendmail, taken over in place ----

# The tables as the CodeIgniter app's two migrations make them, per database:
# what CodeIgniter 4's Forge writes for its addField() arrays (BIGINT unsigned
# auto_increment id, VARCHAR(255) queue, LONGTEXT payload, TINYINT unsigned
# attempts, INT unsigned NULL reserved_at, INT unsigned times, an index on
# (queue, reserved_at); failed_jobs with TEXT columns and failed_at DATETIME
# NOT NULL, no uuid). %(jobs)s and %(failed)s are the quoted table names,
# %(index)s the index's.
CI4_DDL = {
    "sqlite": [
        'CREATE TABLE %(jobs)s (\n\t"id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,\n'
        '\t"queue" VARCHAR(255) NOT NULL,\n\t"payload" LONGTEXT NOT NULL,\n'
        '\t"attempts" TINYINT NOT NULL DEFAULT 0,\n\t"reserved_at" INT NULL,\n'
        '\t"available_at" INT NOT NULL,\n\t"created_at" INT NOT NULL\n)',
        'CREATE INDEX %(index)s ON %(jobs)s ("queue", "reserved_at")',
        'CREATE TABLE %(failed)s (\n\t"id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,\n'
        '\t"connection" TEXT NOT NULL,\n\t"queue" TEXT NOT NULL,\n\t"payload" LONGTEXT NOT NULL,\n'
        '\t"exception" LONGTEXT NOT NULL,\n\t"failed_at" DATETIME NOT NULL\n)',
    ],
    "postgresql": [
        'CREATE TABLE %(jobs)s (\n\t"id" BIGSERIAL NOT NULL,\n\t"queue" VARCHAR(255) NOT NULL,\n'
        '\t"payload" TEXT NOT NULL,\n\t"attempts" SMALLINT NOT NULL DEFAULT 0,\n'
        '\t"reserved_at" BIGINT NULL,\n\t"available_at" BIGINT NOT NULL,\n'
        '\t"created_at" BIGINT NOT NULL,\n\tCONSTRAINT %(pk_jobs)s PRIMARY KEY("id")\n)',
        'CREATE INDEX %(index)s ON %(jobs)s ("queue", "reserved_at")',
        'CREATE TABLE %(failed)s (\n\t"id" BIGSERIAL NOT NULL,\n\t"connection" TEXT NOT NULL,\n'
        '\t"queue" TEXT NOT NULL,\n\t"payload" TEXT NOT NULL,\n\t"exception" TEXT NOT NULL,\n'
        '\t"failed_at" TIMESTAMP NOT NULL,\n\tCONSTRAINT %(pk_failed)s PRIMARY KEY("id")\n)',
    ],
    "mysql": [
        'CREATE TABLE %(jobs)s (\n\t`id` BIGINT(20) UNSIGNED NOT NULL AUTO_INCREMENT,\n'
        '\t`queue` VARCHAR(255) NOT NULL,\n\t`payload` LONGTEXT NOT NULL,\n'
        '\t`attempts` TINYINT(3) UNSIGNED NOT NULL DEFAULT 0,\n'
        '\t`reserved_at` INT(10) UNSIGNED NULL,\n\t`available_at` INT(10) UNSIGNED NOT NULL,\n'
        '\t`created_at` INT(10) UNSIGNED NOT NULL,\n\tCONSTRAINT %(pk_jobs)s PRIMARY KEY(`id`),\n'
        '\tKEY %(index)s (`queue`, `reserved_at`)\n'
        ') DEFAULT CHARACTER SET = utf8mb4 COLLATE = utf8mb4_general_ci',
        'CREATE TABLE %(failed)s (\n\t`id` BIGINT(20) UNSIGNED NOT NULL AUTO_INCREMENT,\n'
        '\t`connection` TEXT NOT NULL,\n\t`queue` TEXT NOT NULL,\n\t`payload` LONGTEXT NOT NULL,\n'
        '\t`exception` LONGTEXT NOT NULL,\n\t`failed_at` DATETIME NOT NULL,\n'
        '\tCONSTRAINT %(pk_failed)s PRIMARY KEY(`id`)\n'
        ') DEFAULT CHARACTER SET = utf8mb4 COLLATE = utf8mb4_general_ci',
    ],
}


def qi(db, name):
    """A table name quoted for SQL written by hand in a test (MySQL's backticks elsewhere)."""
    return ("`%s`" if db.name == "mysql" else '"%s"') % name


def ci4_tables(db):
    """Make db's two tables as the CodeIgniter app's migrations do (`php spark migrate`)."""
    names = {"jobs": qi(db, db.table), "failed": qi(db, db.failed_table),
             "index": qi(db, db.table + "_queue_reserved_at"), "pk_jobs": qi(db, "pk_" + db.table),
             "pk_failed": qi(db, "pk_" + db.failed_table)}
    for statement in CI4_DDL[db.name]:
        db.raw((statement % names).replace("{", "{{").replace("}", "}}"))


def php_json(value):
    """JSON text as PHP's json_encode() writes it: \\/ for /, \\u00e9 for é."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def php_push(db, payload, queue="emails", available_at=None):
    """The PHP app's own INSERT into jobs (QueueManager::push): the columns it names."""
    now = int(time.time()) if available_at is None else available_at
    p = db.param
    db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at, created_at)"
           " VALUES (%s, %s, %s, NULL, %s, %s)" % (p, p, p, p, p),
           (queue, payload if isinstance(payload, str) else php_json(payload), 0, now, now))


def php_fail(db, payload, failed_at, queue="emails"):
    """The PHP app's own INSERT into failed_jobs: no uuid, failed_at as DATETIME text."""
    p = db.param
    db.raw("INSERT INTO {failed} (connection, queue, payload, exception, failed_at)"
           " VALUES (%s, %s, %s, %s, %s)" % (p, p, p, p, p),
           ("database", queue, payload if isinstance(payload, str) else php_json(payload),
            "RuntimeException: SMTP connect() failed in SendTemplateEmailJob.php:41", failed_at))


def utc_datetime(seconds_ago=0):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - seconds_ago))


@on_backends
class TakeoverTablesTests:
    """The CodeIgniter app's own jobs and failed_jobs, used as they are (issue 12)."""

    def work(self, q, queues=("emails",), tries=1):
        log = quiet_log()
        dbqueue.Worker(q, list(queues), tries=tries, backoff="0", log=log).run(
            stop_when_empty=True)
        return log.stream.getvalue()

    def failed_count(self):
        return self.db.raw("SELECT COUNT(*) FROM {failed}")[0][0]

    def test_migrate_adds_only_what_it_needs_and_php_inserts_still_work(self):
        ci4_tables(self.db)
        php_fail(self.db, {"job": "t_record", "data": {"old": 1}}, "2020-01-01 00:00:00")
        q = self.db.queue()
        self.assertEqual(q.migrate(), dbqueue._SCHEMA_VERSION)   # twice: changes nothing
        # The PHP code's INSERTs, which name only the columns it knows, still
        # succeed; many of its failed rows (uuid NULL) live beside the unique index.
        php_push(self.db, {"job": "t_record", "data": {"from": "php"}})
        php_fail(self.db, {"job": "t_record", "data": {"old": 2}}, "2020-01-02 00:00:00")
        php_fail(self.db, {"job": "t_record", "data": {"new": 3}}, utc_datetime())
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {failed} WHERE uuid IS NULL")[0][0], 3)
        self.assertEqual(self.db.raw("SELECT attempts, reserved_until, unique_key FROM {jobs}"),
                         [(0, None, None)])
        del RECORD[:]
        self.work(q)
        self.assertEqual(RECORD, [{"from": "php"}])
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)

    def test_fail_failed_retry_forget_and_flush_on_the_apps_tables(self):
        ci4_tables(self.db)
        php_fail(self.db, {"job": "t_record", "data": {"old": 1}}, "2020-01-01 00:00:00")
        q = self.db.queue()
        php_fail(self.db, {"job": "t_record", "data": {"recent": 1}}, utc_datetime(60))
        # A job of ours and a row the PHP app wrote (no uuid in it) both fail.
        q.push("t_fail", {"n": 1}, queue="emails")
        php_push(self.db, {"job": "t_fail", "data": {"n": 2}})
        log = self.work(q)
        self.assertIn("outcome=failed", log)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)
        failed = q.failed()
        self.assertEqual(len(failed), 4)
        self.assertEqual([f["uuid"] is None for f in failed], [True, True, False, False])
        self.assertIn("boom 1", failed[2]["exception"])
        self.assertIn("boom 2", failed[3]["exception"])
        self.assertTrue(all(f["failed_at"] for f in failed))
        # The same job failing again (same uuid) updates its row: ON CONFLICT
        # (uuid) found the unique index migrate made on the app's table.
        again = self.db.raw("SELECT payload FROM {failed} WHERE id = %d" % failed[2]["id"])[0][0]
        php_push(self.db, again)
        self.work(q)
        self.assertEqual(self.failed_count(), 4)
        # The command line lists them, the PHP app's rows included.
        code, out, err = run_main(["failed"], env=self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn("boom 2", out)
        self.assertIn("2020-01-01 00:00:00", out)
        # retry brings a PHP-written failed row back; it runs.
        new_ids = q.retry([failed[0]["id"]])
        self.assertEqual(len(new_ids), 1)
        del RECORD[:]
        self.work(q, queues=("emails",))
        self.assertEqual(RECORD, [{"old": 1}])
        self.assertEqual(q.forget([failed[1]["id"]]), 1)
        # flush --hours compares the app's DATETIME text with the database's clock.
        php_fail(self.db, {"job": "t_record", "data": {"old": 3}}, "2020-01-03 00:00:00")
        self.assertEqual(q.flush(hours=1), 1)
        self.assertEqual(self.failed_count(), 2)
        code, out, err = run_main(["flush"], env=self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(self.failed_count(), 0)

    def test_a_worker_on_the_apps_tables_before_migrate_never_loops(self):
        ci4_tables(self.db)
        q = self.db.queue(migrate=False)
        php_push(self.db, {"job": "t_fail", "data": {"n": 1}})
        worker = dbqueue.Worker(q, ["emails"], tries=1, log=quiet_log())
        if self.db.name == "sqlite":
            worker.run(stop_when_empty=True)     # SQLite's tables are brought up to date
            self.assertEqual(len(q.failed()), 1)
            return
        # A server database is migrated on purpose: the worker stops with the
        # one line that says so (issue 12: it retried "no column named uuid" forever).
        with self.assertRaises(dbqueue.MissingTableError) as caught:
            worker.run(stop_when_empty=True)
        self.assertIn("run `python3 dbqueue.py migrate`", str(caught.exception))

    def test_before_migrate_a_server_database_says_to_run_it(self):
        ci4_tables(self.db)
        php_fail(self.db, {"job": "t_record", "data": {}}, "2020-01-01 00:00:00")
        # `failed` only reads (it never creates or changes tables, SQLite's either).
        code, out, err = run_main(["failed"], env=self.db.env())
        self.assertEqual(code, 1, out)
        self.assertIn("lack columns of this version", err)
        self.assertIn("run `python3 dbqueue.py migrate`", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        code, out, err = run_main(["migrate"], env=self.db.env())
        self.assertEqual(code, 0, err)
        code, out, err = run_main(["failed"], env=self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn("2020-01-01", out)


class TakeoverFlushTimeZoneTests:
    """flush --hours reads the app's failed_at as UTC, as its PHP code writes it,
    whatever the time zone of the database session or of the host."""

    def test_a_recent_failure_survives_flush_in_a_tokyo_session(self):
        ci4_tables(self.db)
        self.db.queue()    # migrated
        php_fail(self.db, {"job": "send_email", "data": {"n": "recent"}}, utc_datetime(2 * 3600))
        php_fail(self.db, {"job": "send_email", "data": {"n": "old"}}, utc_datetime(6 * 3600))
        url = self.db.url
        if self.db.name == "postgresql":
            url = url_with(url, "options=-c%20TimeZone%3DAsia/Tokyo")
            q = dbqueue.Queue(config=self.db.config(database_url=url))
            self.addCleanup(q.close)
            cur = q.connect().cursor()
            cur.execute("SHOW TimeZone")
            self.assertEqual(cur.fetchone()[0], "Asia/Tokyo")    # the session dbqueue gets
        tmp = tempfile.mkdtemp(prefix="dbqueue-tz-")
        self.addCleanup(shutil.rmtree, tmp, True)
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "dbqueue.py"), "flush", "--hours", "4"],
            env=clean_env(TZ="Asia/Tokyo", **self.db.env(QUEUE_DATABASE_URL=url)),
            cwd=tmp, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout, "deleted 1 failed job(s) older than 4 hours\n")
        left = [json.loads(p)["data"]["n"] for (p,) in self.db.raw("SELECT payload FROM {failed}")]
        self.assertEqual(left, ["recent"])

    def fail_and_flush_in_each_zone(self, app_tables):
        """dbqueue fails a job in a New York and in a Tokyo session: flush --hours 4
        keeps it (and PHP's row of 2 hours ago), and failed() shows when it failed."""
        from datetime import datetime, timezone
        for zone in ("America/New_York", "Asia/Tokyo"):
            url = self.db.url
            if self.db.name == "postgresql":    # MariaDB's sessions are UTC, SQLite has none
                url = url_with(url, "options=-c%20TimeZone%3D" + zone.replace("/", "%2F"))
            q = dbqueue.Queue(config=self.db.config(database_url=url))
            self.addCleanup(q.close)
            q.push("t_permanent", {"n": "dbqueue"}, queue="emails")
            dbqueue.Worker(q, ["emails"], log=quiet_log()).run(stop_when_empty=True)
            if app_tables:
                php_fail(self.db, {"job": "send_email", "data": {"n": "recent"}},
                         utc_datetime(2 * 3600))
                php_fail(self.db, {"job": "send_email", "data": {"n": "old"}},
                         utc_datetime(6 * 3600))
            self.assertEqual(q.flush(4), 1 if app_tables else 0, zone)
            failed = q.failed()
            left = sorted(json.loads(f["payload"])["data"]["n"] for f in failed)
            self.assertEqual(left, ["dbqueue", "recent"] if app_tables else ["dbqueue"], zone)
            when = datetime.fromisoformat([f["failed_at"] for f in failed
                                           if "dbqueue" in f["payload"]][0])
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)    # a TIMESTAMP / DATETIME is UTC
            # Hours off would be a zone's offset; a loaded machine is never that slow.
            self.assertLess(abs(when.timestamp() - time.time()), 1800, (zone, str(when)))
            self.assertEqual(q.flush(), len(left))

    def test_a_failure_dbqueue_writes_into_the_apps_table_survives_flush(self):
        ci4_tables(self.db)
        self.db.queue()    # migrated
        self.fail_and_flush_in_each_zone(app_tables=True)

    def test_a_failure_in_dbqueues_own_table_survives_flush(self):
        self.db.queue()    # migrated: failed_at TIMESTAMPTZ on PostgreSQL
        self.fail_and_flush_in_each_zone(app_tables=False)


on_backends(TakeoverFlushTimeZoneTests, SQLITE, PG, [MariaDBBackend])



def apply_with_client(testcase, db, script):
    """Run an SQL script with the database's own command-line client, as a DBA does."""
    from urllib.parse import unquote, urlsplit
    if db.name == "sqlite":
        argv = ["sqlite3", "-bail", db.url[len("sqlite:///"):]]
    elif db.name == "postgresql":
        argv = ["psql", "-q", "-v", "ON_ERROR_STOP=1", PG_URL]
    else:
        url = urlsplit(MYSQL_URL)
        argv = ["mariadb", "--no-defaults", "-h", url.hostname, "-P", str(url.port or 3306),
                "-u", unquote(url.username), "-p" + unquote(url.password or ""), url.path[1:]]
    need(shutil.which(argv[0]) is not None, "%s (the database's client) is not installed" % argv[0])
    done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60)
    testcase.assertEqual(done.returncode, 0, done.stderr)


class TakeoverPrintedMigrationTests:
    """`migrate --print` on the CodeIgniter app's tables is what `migrate` runs: a DBA
    applies it with the database's own client and nothing is left to do."""

    def test_printed_plan_applied_by_hand_upgrades_the_apps_tables(self):
        ci4_tables(self.db)
        code, out, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        jobs, failed = qi(self.db, self.db.table), qi(self.db, self.db.failed_table)
        self.assertNotIn("CREATE TABLE IF NOT EXISTS %s" % jobs, out)
        for table, column in ((jobs, "reserved_until"), (jobs, "unique_key"), (failed, "uuid")):
            self.assertIn("ALTER TABLE %s ADD COLUMN %s " % (table, column), out)
        # The columns come before the indexes that use them (ERROR 1072 on MariaDB).
        self.assertLess(out.index("ADD COLUMN unique_key"), out.index("_unique"))
        apply_with_client(self, self.db, out)
        code, again, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn("nothing to do", again)
        self.assertNotIn(";", again)
        q = self.db.queue(migrate=False)
        self.assertEqual(q.schema_version(), dbqueue._SCHEMA_VERSION)
        php_push(self.db, {"job": "t_record", "data": {"from": "php"}})
        del RECORD[:]
        dbqueue.Worker(q, ["emails"], log=quiet_log()).run(stop_when_empty=True)
        self.assertEqual(RECORD, [{"from": "php"}])
        code, out, err = run_main(["migrate"], self.db.env())
        self.assertEqual(code, 0, err)

    def test_printed_plan_of_a_database_without_tables_makes_everything(self):
        code, out, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn("CREATE TABLE IF NOT EXISTS %s" % qi(self.db, self.db.table), out)
        if self.db.name == "sqlite":
            self.assertFalse(os.path.exists(self.db.url[len("sqlite:///"):]))   # only read
        apply_with_client(self, self.db, out)
        code, again, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn("nothing to do", again)


on_backends(TakeoverPrintedMigrationTests, SQLITE_PG_MARIADB)


class TakeoverOtherPHPJobTests:
    """A row of a PHP job class dbqueue does not run (the app's SendSmsJob) fails with
    what it is and the ways out, its name as PHP wrote it (single backslashes)."""

    def test_an_unknown_php_job_class_says_so_everywhere_with_its_name_as_written(self):
        ci4_tables(self.db)
        q = self.db.queue()
        name = "App\\Libraries\\Queue\\Jobs\\SendSmsJob"
        payload = php_json({"job": name, "data": {"to": "+15550100", "text": "Hi"}})
        self.assertIn("App\\\\Libraries", payload)      # as json_encode writes it
        php_push(self.db, payload, queue="sms")
        log = quiet_log()
        dbqueue.Worker(q, ["sms"], log=log).run(stop_when_empty=True)
        exception = q.failed()[0]["exception"]
        line = exception.strip().splitlines()[-1]
        for words in (name, "a PHP job class that dbqueue does not run", "queue sms",
                      "php spark queue:work --queue=sms", "register a Python handler"):
            self.assertIn(words, line)
        self.assertNotIn("--import", line)
        self.assertNotIn("\\\\", line)
        text = log.stream.getvalue()
        self.assertIn("name=" + name + " ", text)
        self.assertIn(name + ":", text)
        self.assertNotIn("\\\\", text)
        code, out, err = run_main(["failed"], env=self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn(name, out)
        self.assertNotIn("\\\\", out)
        page = DashboardClient(start_dashboard(self, q)).get("/failed")
        self.assertEqual(page.status, 200)
        self.assertIn("unknown job %s:" % name, page.text)
        self.assertNotIn("\\\\", page.text)


on_backends(TakeoverOtherPHPJobTests, SQLITE_PG_MARIADB)


def app_connection(db):
    """A connection as a web app holds it: not in autocommit, so writes open a transaction."""
    conn = db.connect()
    if db.name == "sqlite":
        conn.isolation_level = ""      # the sqlite3 default: BEGIN before the first write
    elif callable(getattr(conn, "autocommit", None)):
        conn.autocommit(False)         # PyMySQL, MySQLdb
    else:
        conn.autocommit = False        # psycopg, psycopg2
    return conn


@on_backends
class TakeoverColdPushTests:
    """push(connection=app) while the app's transaction holds the write lock, from a
    Queue that has never connected in that thread (issue 12: a 5 s wait, then
    "database is locked", on every web server thread's first push)."""

    threads = 4

    def setUp(self):
        self.app_table = qi(self.db, self.db.table + "_app")
        self.db.raw("CREATE TABLE %s (id INTEGER PRIMARY KEY, note VARCHAR(100))"
                    % self.app_table)
        self.addCleanup(self.db.raw, "DROP TABLE IF EXISTS %s" % self.app_table)

    def order(self, q, n, commit=True):
        """One web request: the app writes its row, the job goes in its transaction."""
        app = app_connection(self.db)
        try:
            cur = app.cursor()
            cur.execute("INSERT INTO %s (id, note) VALUES (%s, %s)"
                        % (self.app_table, self.db.param, self.db.param), (n, "order %d" % n))
            job_id = q.push("t_record", {"order": n}, connection=app)
            self.assertIsInstance(job_id, int)
            if commit:
                app.commit()
            else:
                app.rollback()
        finally:
            app.close()

    def run_orders(self, make_queue):
        counter = iter(range(1, 1000))
        lock = threading.Lock()

        def request():
            with lock:
                n = next(counter)
            self.order(make_queue(), n)
        errors = in_threads(request, self.threads)
        self.assertEqual(errors, [])
        rows = self.db.raw("SELECT payload FROM {jobs}")
        self.assertEqual(sorted(json.loads(r[0])["data"]["order"] for r in rows),
                         list(range(1, self.threads + 1)))
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM %s" % self.app_table)[0][0],
                         self.threads)

    def test_each_thread_with_a_queue_of_its_own(self):
        self.db.queue().close()   # the tables exist; these queues have never connected
        self.run_orders(lambda: self.db.queue(migrate=False))

    def test_threads_sharing_one_cold_queue(self):
        self.db.queue().close()
        shared = self.db.queue(migrate=False)
        self.run_orders(lambda: shared)
        # A rolled-back request leaves no job behind.
        self.order(shared, 99, commit=False)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], self.threads)

    @sqlite_only
    def test_first_push_on_a_fresh_sqlite_file_makes_the_tables_in_the_apps_transaction(self):
        self.run_orders(lambda: self.db.queue(migrate=False))
        q = self.db.queue(migrate=False)
        self.assertEqual(q.schema_version(), dbqueue._SCHEMA_VERSION)
        self.assertEqual(dbqueue.Worker(q, tries=1, log=quiet_log()).run(stop_when_empty=True),
                         self.threads)



# Each seed template's variables as the app sends them, and what the message
# says in each language (subject; a sentence of the text part).
SEED_CASES = {
    "verification": ({"display_name": "José <b>", "verification_link": "https://app.test/verify?t=1&u=2",
                      "expires_at": "in 24 hours"},
                     {"en": ("Confirm your email address for Acme", "Hi José <b>,"),
                      "es": ("Confirma tu correo electrónico en Acme", "Hola, José <b>:")}),
    "password-reset": ({"display_name": "Zoë", "reset_link": "https://app.test/reset?t=1&u=2"},
                       {"en": ("Reset your Acme password", "This link expires in 60 minutes."),
                        "es": ("Restablece tu contraseña de Acme",
                               "Este enlace caduca en 60 minutos.")}),
    "invitation": ({"display_name": "Ann", "reset_link": "https://app.test/invite?t=1&u=2",
                    "expires_in": "48 hours"},
                   {"en": ("You are invited to join Acme", "This link expires in 48 hours."),
                    "es": ("Te han invitado a unirte a Acme", "Este enlace caduca en 48 horas.")}),
    "account-approved": ({"display_name": "Ann", "login_link": "https://app.test/login?t=1&u=2"},
                         {"en": ("Your Acme account has been approved", "Sign in:"),
                          "es": ("Hemos aprobado tu cuenta de Acme", "¡Buenas noticias!")}),
    "pending-approval-google": ({"display_name": "Ann"},
                                {"en": ("Your Acme account is awaiting approval",
                                        "with your Google account"),
                                 "es": ("Tu cuenta de Acme está pendiente de aprobación",
                                        "con tu cuenta de Google")}),
}
# The app passes values in the user's language too.
IN_SPANISH = {"in 24 hours": "en 24 horas", "48 hours": "48 horas"}


def seed_variables(variables, locale):
    if locale == "es":
        variables = {k: IN_SPANISH.get(v, v) for k, v in variables.items()}
    return dict(variables, locale=locale)


class TakeoverTemplateTests(EmailTestMixin, unittest.TestCase):
    """The CodeIgniter app's five templates, built in, in English and Spanish (issue 12)."""

    def setUp(self):
        self.db = Backend(self)

    def by_subject(self, sink):
        return {m["Subject"]: m for _, m, _ in sink.messages}

    def test_each_seed_template_in_both_languages_has_text_and_html(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        for name, (variables, expected) in SEED_CASES.items():
            for locale in ("en", "es"):
                dbqueue.queue_template_email("a@example.com", name,
                                             seed_variables(variables, locale), using=q)
        _, log = self.work(q, tries=1)
        self.assertEqual(q.failed(), [])
        messages = self.by_subject(sink)
        self.assertEqual(len(messages), 10, log)
        for name, (variables, expected) in SEED_CASES.items():
            for locale, (subject, sentence) in expected.items():
                with self.subTest(template=name, locale=locale):
                    msg = messages[subject]
                    self.assertEqual(msg.get_content_type(), "multipart/alternative")
                    text = msg.get_body(("plain",)).get_content()
                    html = msg.get_body(("html",)).get_content()
                    self.assertIn(sentence, text)
                    self.assertIn('<html lang="%s">' % locale, html)
                    greeting = {"en": "Hi %s,", "es": "Hola, %s:"}[locale]
                    self.assertIn(greeting % variables["display_name"], text)
                    if "<" in variables["display_name"]:
                        self.assertNotIn(variables["display_name"], html)
                        self.assertIn(variables["display_name"].replace("<", "&lt;")
                                      .replace(">", "&gt;"), html)
                    link = next((v for k, v in variables.items() if k.endswith("_link")), None)
                    if link:
                        self.assertIn(link, text)
                        self.assertIn('href="%s"' % link.replace("&", "&amp;"), html)
                        # The button is a table cell (Outlook ignores padding on links).
                        self.assertIn('<td bgcolor="#2563eb"', html)
                    # What mail clients keep: inline styles, tables, nothing fetched.
                    for absent in ("<style", "<img", "<link", "<script", "url("):
                        self.assertNotIn(absent, html)
                    self.assertIn('role="presentation"', html)
                    other = {"en": "es", "es": "en"}[locale]
                    self.assertNotIn(expected[other][0], text + html)

    def test_defaults_read_naturally_in_each_language(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        for locale in ("en", "es"):
            dbqueue.queue_template_email("a@example.com", "verification",
                                         {"verification_link": "https://app.test/v",
                                          "locale": locale}, using=q)
            dbqueue.queue_template_email("a@example.com", "password-reset",
                                         {"reset_link": "https://app.test/r", "locale": locale},
                                         using=q)
        self.work(q, tries=1)
        texts = [m.get_body(("plain",)).get_content() for _, m, _ in sink.messages]
        self.assertIn("Hello,", texts[0])        # not "Hi User,": no name was given
        self.assertIn("This link expires soon.", texts[0])
        self.assertIn("This link expires in 60 minutes.", texts[1])
        self.assertIn("Hola:", texts[2])
        self.assertIn("Este enlace caduca pronto.", texts[2])
        self.assertIn("Este enlace caduca en 60 minutos.", texts[3])

    def test_locale_subject_and_text_message_from_the_variables(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        base = {"display_name": "Ann", "login_link": "https://app.test/l"}
        dbqueue.queue_template_email("a@example.com", "account-approved",
                                     dict(base, locale="fr"), using=q)
        dbqueue.queue_template_email("a@example.com", "account-approved",
                                     dict(base, locale="es_MX", subject="¡Bienvenida, Ann!",
                                          textMessage="Texto propio de la app."), using=q)
        _, log = self.work(q, tries=1)
        (_, french, _), (_, own, _) = sink.messages
        self.assertEqual(french["Subject"], "Your Acme account has been approved")
        self.assertIn("sent in English", log)
        self.assertIn("locale=fr", log)
        self.assertEqual(log.count("sent in English"), 1)
        self.assertEqual(own["Subject"], "¡Bienvenida, Ann!")
        self.assertEqual(own.get_body(("plain",)).get_content().strip(), "Texto propio de la app.")
        self.assertIn("Iniciar sesión", own.get_body(("html",)).get_content())
        self.assertIn("<title>¡Bienvenida, Ann!</title>", own.get_body(("html",)).get_content())

    def test_a_missing_link_is_a_permanent_failure_that_names_it(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        for name, link in (("verification", "verification_link"), ("password-reset", "reset_link"),
                           ("invitation", "reset_link"), ("account-approved", "login_link")):
            q.push("send_template_email", {"to": "a@example.com", "template": name,
                                           "vars": {"display_name": "Ann", link: ""}},
                   queue="emails")
            with self.assertRaises(ValueError) as caught:
                dbqueue.queue_template_email("a@example.com", name, {"display_name": "Ann"},
                                             using=q)
            self.assertIn(repr(link), str(caught.exception))
        _, log = self.work(q, tries=3)
        failed = q.failed()
        self.assertEqual(len(failed), 4)
        for row, link in zip(failed, ("verification_link", "reset_link", "reset_link",
                                      "login_link")):
            self.assertIn("needs the variable %r" % link, row["exception"])
        self.assertNotIn("outcome=released", log)
        self.assertEqual(sink.connections, 0)

    def test_template_dir_locale_files_win_for_their_locale(self):
        sink = SMTPSink(self)
        tdir = os.path.join(self.db.tmp, "templates")
        os.mkdir(tdir)
        files = {"verification.es.txt": "Subject: Verifica, $display_name\n\nEnlace: $verification_link\n",
                 "verification.es.html": "<p>Hola <b>$display_name</b></p>",
                 "welcome.txt": "Subject: Welcome $name\n\nHello\n",
                 "welcome.es.txt": "Subject: Bienvenida $name\n\nHola\n"}
        for fname, body in files.items():
            with open(os.path.join(tdir, fname), "w", encoding="utf-8") as fh:
                fh.write(body)
        q = self.mail_queue(sink, mail_template_dir=tdir)
        link = {"display_name": "<Ann>", "verification_link": "https://app.test/v"}
        dbqueue.queue_template_email("a@example.com", "verification", dict(link, locale="es"),
                                     using=q)
        dbqueue.queue_template_email("a@example.com", "verification", dict(link, locale="en"),
                                     using=q)
        dbqueue.queue_template_email("a@example.com", "welcome", {"name": "A", "locale": "es"},
                                     using=q)
        dbqueue.queue_template_email("a@example.com", "welcome", {"name": "A"}, using=q)
        self.work(q, tries=1)
        (_, es, _), (_, en, _), (_, w_es, _), (_, w_en, _) = sink.messages
        self.assertEqual(es["Subject"], "Verifica, <Ann>")
        self.assertEqual(es.get_body(("plain",)).get_content().strip(), "Enlace: https://app.test/v")
        self.assertIn("<b>&lt;Ann&gt;</b>", es.get_body(("html",)).get_content())
        self.assertEqual(en["Subject"], "Confirm your email address for Acme")   # built in
        self.assertEqual((w_es["Subject"], w_en["Subject"]), ("Bienvenida A", "Welcome A"))



# A stand-in sendmail: records its arguments and stdin, and exits with the
# codes listed in codes.txt, one per call (the last one repeats).
FAKE_SENDMAIL = r"""
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
calls = sorted(f for f in os.listdir(here) if f.startswith("call"))
with open(os.path.join(here, "codes.txt")) as fh:
    codes = fh.read().split()
code = int(codes[min(len(calls), len(codes) - 1)])
data = sys.stdin.buffer.read()
with open(os.path.join(here, "call%03d.json" % len(calls)), "w") as fh:
    json.dump({"argv": sys.argv[1:], "stdin": data.decode("utf-8")}, fh)
if code:
    sys.stderr.write("sendmail: fatal: <nobody@example.com>: no such user\nsecond line\n")
sys.exit(code)
"""


class TakeoverSendmailTests(EmailTestMixin, unittest.TestCase):
    """MAIL_MAILER=sendmail: the message piped to a real program (issue 12)."""

    def setUp(self):
        self.db = Backend(self)
        self.bin = os.path.join(self.db.tmp, "bin")
        os.mkdir(self.bin)
        self.script = os.path.join(self.bin, "fake sendmail.py")   # a space: shlex quoting
        with open(self.script, "w") as fh:
            fh.write(FAKE_SENDMAIL)

    def queue(self, codes, command="-t -i"):
        with open(os.path.join(self.bin, "codes.txt"), "w") as fh:
            fh.write(" ".join(str(c) for c in codes))
        path = "%s '%s' %s" % (sys.executable, self.script, command)
        return self.mail_queue(None, mail_mailer="sendmail", mail_sendmail_path=path)

    def calls(self):
        found = []
        for name in sorted(os.listdir(self.bin)):
            if name.startswith("call"):
                with open(os.path.join(self.bin, name)) as fh:
                    found.append(json.load(fh))
        return found

    def test_exit_0_is_sent_with_recipients_as_arguments_and_no_bcc_header(self):
        q = self.queue([0])
        dbqueue.queue_template_email("Ann <ann@example.com>", "verification",
                                     {"display_name": "Ann", "locale": "es",
                                      "verification_link": "https://app.test/v"},
                                     cc="cc@example.com", bcc="hidden@example.com", using=q)
        _, log = self.work(q, tries=3)
        self.assertIn("outcome=done", log)
        (call,) = self.calls()
        self.assertEqual(call["argv"], ["-i", "-f", "app@example.com", "ann@example.com",
                                        "cc@example.com", "hidden@example.com"])
        self.assertNotIn("\r\n", call["stdin"])
        msg = parse_mail(call["stdin"].encode("utf-8"))
        self.assertIsNone(msg["Bcc"])
        self.assertNotIn("hidden@example.com", call["stdin"])
        self.assertEqual(msg["Subject"], "Confirma tu correo electrónico en Acme")
        self.assertIn("Hola, Ann:", msg.get_body(("plain",)).get_content())
        self.assertEqual(self.jobs_left(), 0)

    def test_exit_1_is_retried_and_67_fails_with_the_first_stderr_line(self):
        q = self.queue([1, 0])
        dbqueue.queue_email("a@example.com", "retried", text="t", using=q)
        _, log = self.work(q, tries=3)
        self.assertEqual(len(self.calls()), 2)
        self.assertIn("exited 1", log)
        self.assertNotIn("(temporary)", log)
        self.assertEqual(q.failed(), [])
        for name in os.listdir(self.bin):
            if name.startswith("call"):
                os.remove(os.path.join(self.bin, name))
        q = self.queue([67], command="-i")
        dbqueue.queue_email("a@example.com", "refused", text="t", using=q)
        _, log = self.work(q, tries=3)
        self.assertEqual(len(self.calls()), 1)          # no second attempt
        (row,) = q.failed()
        self.assertIn("exited 67 (EX_NOUSER): sendmail: fatal: <nobody@example.com>: no such user"
                      " (permanent)", row["exception"])
        self.assertNotIn("second line", row["exception"])

    def test_a_missing_program_is_an_outage_and_names_the_setting(self):
        q = self.mail_queue(None, mail_mailer="sendmail",
                            mail_sendmail_path=os.path.join(self.bin, "no-such-sendmail") + " -t")
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=1)
        self.assertEqual(worker.exit_code, 1)
        self.assertEqual(q.failed(), [])
        self.assertIn("MAIL_SENDMAIL_PATH", log)
        self.assertIn("(outage)", log)
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)])

    def test_settings(self):
        config = dbqueue.Config.from_env({"MAIL_MAILER": "sendmail"})
        self.assertEqual((config.mail_mailer, config.mail_sendmail_path),
                         ("sendmail", "/usr/sbin/sendmail -t -i"))
        code, _, err = run_main(["stats"], {"MAIL_MAILER": "sendmail",
                                            "MAIL_SENDMAIL_PATH": "/usr/sbin/sendmail 'oops"})
        self.assertEqual(code, 2)
        self.assertIn("MAIL_SENDMAIL_PATH", err)


# A private Postfix for one test: its own config, queue and data directories
# in a temp folder, no listener of its own (master.cf has no `smtp inet`, so
# it never takes port 25), relaying everything to a sink on loopback.
POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {tmp}/queue
data_directory = {tmp}/data
maillog_file = {tmp}/maillog
maillog_file_prefixes = {tmp}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = dbqueue-test.localdomain
mydestination =
alias_maps =
local_recipient_maps =
relayhost = [127.0.0.1]:{port}
default_transport = smtp
relay_transport = smtp
smtp_tls_security_level = none
"""
# The services a sendmail → pickup → cleanup → qmgr → smtp delivery uses; none chrooted.
POSTFIX_MASTER_CF = "".join(
    "%-10s unix  %s  -  n  %s  %s  %s\n" % service for service in (
        ("pickup", "n", "60", "1", "pickup"), ("cleanup", "n", "-", "0", "cleanup"),
        ("qmgr", "n", "300", "1", "qmgr"), ("rewrite", "-", "-", "-", "trivial-rewrite"),
        ("bounce", "-", "-", "0", "bounce"), ("defer", "-", "-", "0", "bounce"),
        ("trace", "-", "-", "0", "bounce"), ("verify", "-", "-", "1", "verify"),
        ("proxymap", "-", "-", "-", "proxymap"), ("smtp", "-", "-", "-", "smtp"),
        ("relay", "-", "-", "-", "smtp"), ("showq", "n", "-", "-", "showq"),
        ("error", "-", "-", "-", "error"), ("retry", "-", "-", "-", "error"),
        ("discard", "-", "-", "-", "discard"), ("anvil", "-", "-", "1", "anvil"),
        ("scache", "-", "-", "1", "scache"), ("flush", "n", "1000?", "0", "flush"))
) + "postlog unix-dgram n  -  n  -  1  postlogd\n"     # writes maillog_file


def start_postfix(testcase, relay_port):
    """A private Postfix relaying to 127.0.0.1:relay_port; returns its config directory."""
    sendmail = "/usr/sbin/sendmail"
    try:
        with open(sendmail, "rb") as fh:
            postfixs = b"postdrop" in fh.read()
    except OSError:
        postfixs = False
    need(postfixs and os.path.exists("/usr/sbin/postfix"),
         "Postfix is not installed: /usr/sbin/sendmail is not Postfix's (apt-get install postfix)")
    need(os.geteuid() == 0, "the real sendmail test starts a private Postfix, which needs root")
    tmp = tempfile.mkdtemp(prefix="dbqueue-postfix-")
    testcase.addCleanup(shutil.rmtree, tmp, True)
    os.chmod(tmp, 0o755)        # its daemons run as the postfix user
    conf = os.path.join(tmp, "conf")
    for sub in ("conf", "queue", "data"):
        os.mkdir(os.path.join(tmp, sub))
    shutil.chown(os.path.join(tmp, "data"), "postfix")
    with open(os.path.join(conf, "main.cf"), "w") as fh:
        fh.write(POSTFIX_MAIN_CF.format(tmp=tmp, port=relay_port))
    with open(os.path.join(conf, "master.cf"), "w") as fh:
        fh.write(POSTFIX_MASTER_CF)

    def postfix(command):
        return subprocess.run(["/usr/sbin/postfix", "-c", conf, command], timeout=60,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True)

    def stop():
        postfix("stop")
        # `postfix status` fails once master has let go of its lock: gone.
        wait_for(lambda: postfix("status").returncode != 0, 30, 0.1, "Postfix to stop")
    started = postfix("start")
    testcase.assertEqual(started.returncode, 0, "postfix start failed: " + started.stdout)
    testcase.addCleanup(stop)
    return conf


class SendmailPostfixTests(EmailTestMixin, unittest.TestCase):
    """MAIL_MAILER=sendmail through Debian's real Postfix sendmail, relayed to a sink."""

    def test_to_cc_and_bcc_each_get_the_message_once_without_a_bcc_header(self):
        sink = SMTPSink(self)
        conf = start_postfix(self, sink.port)
        self.db = Backend(self)
        q = self.mail_queue(None, mail_mailer="sendmail",
                            mail_sendmail_path="/usr/sbin/sendmail -C %s -t -i" % conf)
        dbqueue.queue_email("Ann <ann@example.com>", "Through Postfix", text="Hallo, Ann",
                            cc="cc@example.com", bcc="hidden@example.com", using=q)
        _, log = self.work(q, tries=1)
        self.assertIn("outcome=done", log)
        maillog = os.path.join(os.path.dirname(conf), "maillog")

        def removed():      # qmgr's last word on a message: every recipient done
            with open(maillog) as fh:
                return ": removed" in fh.read()
        wait_for(removed, 60, 0.05, "Postfix to relay the message to every recipient")
        self.assertEqual(sorted(r for (_, rcpts), _, _ in sink.messages for r in rcpts),
                         ["ann@example.com", "cc@example.com", "hidden@example.com"])
        for (sender, _), msg, _ in sink.messages:
            self.assertEqual(sender, "app@example.com")
            self.assertEqual(msg["Subject"], "Through Postfix")
            self.assertEqual((msg["To"], msg["Cc"]), ("Ann <ann@example.com>", "cc@example.com"))
            self.assertIsNone(msg["Bcc"])
            self.assertNotIn("hidden@example.com", msg.as_string())
            self.assertIn("Hallo, Ann", msg.get_body(("plain",)).get_content())
        self.assertEqual(self.jobs_left(), 0)



class TakeoverEarlyMistakesTests(unittest.TestCase):
    """Mistakes a producer or an operator can see are found at once (issue 15, item 4)."""

    def setUp(self):
        self.db = Backend(self)

    def test_unknown_template_or_missing_variable_is_a_value_error_and_stores_nothing(self):
        q = self.db.queue()
        with self.assertRaises(ValueError) as caught:
            dbqueue.queue_template_email("a@example.com", "verify_emial",
                                         {"name": "A", "url": "https://x.test"}, using=q)
        self.assertIn("unknown email template 'verify_emial'", str(caught.exception))
        self.assertIn("did you mean 'verify_email'?", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            dbqueue.queue_template_email("a@example.com", "verify_email", {"name": "A"}, using=q)
        self.assertIn("needs the variable 'url'", str(caught.exception))
        with self.assertRaises(ValueError):
            dbqueue.queue_template_email("a@example.com", "password-reset",
                                         {"display_name": "A", "locale": "es"}, using=q)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)
        # What MAIL_TEMPLATE_DIR holds is the producer's to see too: its own
        # template, and its override of a built-in (whose variables are its own).
        tdir = os.path.join(self.db.tmp, "templates")
        os.mkdir(tdir)
        for name in ("welcome", "verify_email"):
            with open(os.path.join(tdir, name + ".txt"), "w") as fh:
                fh.write("Subject: Hi\n\nHello\n")
        q.config.mail_template_dir = tdir
        dbqueue.queue_template_email("a@example.com", "welcome", {}, using=q)
        dbqueue.queue_template_email("a@example.com", "verify_email", {}, using=q)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 2)

    def test_a_template_dir_that_does_not_exist_is_a_configuration_error(self):
        missing = os.path.join(self.db.tmp, "nonexistent")
        with self.assertRaises(dbqueue.ConfigError):
            dbqueue.Config.from_env({"MAIL_TEMPLATE_DIR": missing})
        code, out, err = run_main(["work", "--once"], self.db.env(MAIL_TEMPLATE_DIR=missing))
        self.assertEqual(code, 2)
        self.assertEqual(err.strip(), "dbqueue: MAIL_TEMPLATE_DIR=%s is not a folder"
                         " (no such directory)" % missing)
        self.assertFalse(os.path.exists(os.path.join(self.db.tmp, "queue.db")))

    def test_an_empty_queue_while_others_hold_ready_jobs_gives_a_hint_once(self):
        q = self.db.queue()
        for _ in range(3):
            q.push("t_record", {}, queue="emails")
        q.push("t_record", {}, queue="reports", delay=3600)   # not ready: not named
        log = quiet_log()
        worker = dbqueue.Worker(q, ["emial"], sleep=0.02, log=log)
        worker.run(max_time=0.3)
        text = log.stream.getvalue()
        self.assertEqual(text.count("other queues have ready jobs"), 1, text)
        self.assertIn('ready_elsewhere="emails (3)"', text)
        self.assertIn("queues=emial", text)
        # No hint when the worker's own queue had work, also once it is drained
        # while another queue's jobs wait for their own workers.
        q.push("t_record", {}, queue="default")
        log = quiet_log()
        dbqueue.Worker(q, ["emails"], log=log).run(stop_when_empty=True)
        self.assertIn("outcome=done", log.stream.getvalue())
        self.assertNotIn("other queues", log.stream.getvalue())
        code, out, err = run_main(["work", "--queue", "reprots", "--once"], self.db.env())
        self.assertEqual(code, 0, err)
        # The command line says it too; reports' job is delayed: not named.
        self.assertIn('ready_elsewhere="default (1)"', err)
        self.assertNotIn("reports (", err)


class TakeoverPushChecksTests(unittest.TestCase):
    """`push` of an email job from the shell is checked as queue_email() and
    queue_template_email() check it: one line, exit 2, nothing stored."""

    SEED = "App\\Libraries\\Queue\\Jobs\\"

    def setUp(self):
        self.db = Backend(self)
        self.db.queue()

    def push(self, job, data):
        return run_main(["push", job, "--queue", "emails", "--data", php_json(data)],
                        self.db.env())

    def test_bad_email_jobs_are_refused_before_anything_is_stored(self):
        to = "ann@example.com"
        cases = [
            ("send_template_email", {"to": to, "template": "verify_emial",
                                     "vars": {"name": "A", "url": "https://x.test"}},
             "unknown email template 'verify_emial' - did you mean 'verify_email'?"),
            ("send_template_email", {"to": to, "template": "verify_email", "vars": {"name": "A"}},
             "needs the variable 'url' in vars"),
            ("send_template_email", {"template": "verify_email",
                                     "vars": {"name": "A", "url": "https://x.test"}}, "to"),
            ("send_email", {"to": to, "subject": "Hi"}, "the message has no body"),
            # The PHP app's shape: its field names in the errors.
            (self.SEED + "SendTemplateEmailJob",
             {"template": "emails/verify_email", "to": to, "data": {"name": "A"}},
             "needs the variable 'url' in data"),
            ("\\" + self.SEED + "SendTemplateEmailJob",
             {"template": "verification", "to": to, "data": {"display_name": "A"}},
             "needs the variable 'verification_link' in data"),
            (self.SEED + "SendTemplateEmailJob", {"template": "verification", "to": to,
                                                  "data": "x"}, "data must be an object"),
            (self.SEED + "SendEmailJob", {"to": to, "subject": "Hi"},
             "give message and/or textMessage"),
        ]
        for job, data, words in cases:
            code, out, err = self.push(job, data)
            self.assertEqual((code, out), (2, ""), (job, data, err))
            self.assertIn(words, err)
            self.assertNotIn("vars" if "Jobs" in job else "\n", err.strip())
            self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)

    def test_good_email_jobs_and_other_jobs_are_stored(self):
        to = "ann@example.com"
        for job, data in (
                ("send_template_email", {"to": to, "template": "verify_email",
                                         "vars": {"name": "A", "url": "https://x.test/v"}}),
                ("send_email", {"to": to, "subject": "Hi", "text": "Hello"}),
                (self.SEED + "SendTemplateEmailJob", {"template": "verification", "to": to,
                 "data": {"verification_link": "https://x.test/v"}}),
                (self.SEED + "SendEmailJob", {"to": to, "subject": "Hi", "message": "<p>Hi</p>"}),
                ("t_record", {"anything": True})):
            code, out, err = self.push(job, data)
            self.assertEqual(code, 0, err)
            self.assertTrue(out.strip().isdigit(), out)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 5)



class TakeoverEndToEndTests:
    """The CodeIgniter app taken over in place: its .env, its tables, rows its PHP code
    wrote, a real `python dbqueue.py work` in place of `php spark queue:work`, and the
    real SMTP test server receiving every template in both languages (issue 12)."""

    def setUp(self):
        # The tables are named as CodeIgniter names them: DBPrefix + jobs.
        prefix = unique_table() + "_"
        self.db.table, self.db.failed_table = prefix + "jobs", prefix + "failed_jobs"
        lines = ["CI_ENVIRONMENT = production", "app.baseURL = 'https://app.test/'"]
        if self.db.name == "sqlite":
            # A relative SQLite3 database lives in writable/, as CodeIgniter resolves it.
            os.mkdir(os.path.join(self.db.tmp, "writable"))
            self.db.url = "sqlite:///" + os.path.join(self.db.tmp, "writable", "app.db")
            lines += ["database.default.DBDriver = SQLite3", "database.default.database = app.db"]
        self.sink = SMTPSink(self)
        lines += ["database.default.DBPrefix = " + prefix,
                  "QUEUE_DRIVER = database", "QUEUE_MAX_ATTEMPTS = 3", "QUEUE_RETRY_AFTER = 90",
                  "EMAIL_PROVIDER = smtp", "EMAIL_FROM_ADDRESS = no-reply@app.test",
                  'EMAIL_FROM_NAME = "Acme"', "EMAIL_SMTP_HOST = 127.0.0.1",
                  "EMAIL_SMTP_PORT = %d" % self.sink.port, "EMAIL_SMTP_CRYPTO ="]
        with open(os.path.join(self.db.tmp, ".env"), "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def dbqueue(self, *args):
        env = clean_env("database")
        if self.db.name != "sqlite":
            # The server's URL (a socket directory, the test's own database);
            # everything else comes from the app's .env.
            env["QUEUE_DATABASE_URL"] = self.db.url
        return subprocess.run([sys.executable, os.path.join(HERE, "dbqueue.py")] + list(args),
                              cwd=self.db.tmp, env=env, capture_output=True, text=True,
                              timeout=120)

    def test_the_apps_rows_are_sent_failed_and_retried_by_a_real_worker(self):
        ci4_tables(self.db)
        config = self.dbqueue("config")
        self.assertEqual(config.returncode, 0, config.stderr)
        self.assertIn(self.db.table, config.stdout)
        self.assertIn("(EMAIL_SMTP_HOST)", config.stdout)
        done = self.dbqueue("migrate")
        self.assertEqual(done.returncode, 0, done.stderr)
        job_class = "App\\Libraries\\Queue\\Jobs\\SendTemplateEmailJob"
        expected = {}
        for n, (name, (variables, subjects)) in enumerate(sorted(SEED_CASES.items())):
            for locale in ("en", "es"):
                data = seed_variables(dict(variables, display_name="José"), locale)
                php_push(self.db, {"job": ("\\" if n % 2 else "") + job_class,
                                   "data": {"template": name, "to": "ann@example.com",
                                            "data": data}})
                expected[subjects[locale][0]] = data
        payload = php_json({"job": job_class, "data": {
            "template": "account-approved", "to": "bounce@example.com",
            "data": {"display_name": "Bea", "login_link": "https://app.test/login"}}})
        self.assertIn("https:\\/\\/app.test\\/login", payload)
        self.assertIn("\\\\Libraries\\\\", payload)
        php_push(self.db, payload)
        self.assertIn("Jos\\u00e9", self.db.raw("SELECT payload FROM {jobs} ORDER BY id")[0][0])
        self.sink.refuse["bounce@example.com"] = "550 5.1.1 no such mailbox"

        work = self.dbqueue("work", "--queue=emails", "--stop-when-empty")
        self.assertEqual(work.returncode, 0, work.stderr)
        received = {m["Subject"]: m for _, m, _ in self.sink.messages}
        self.assertEqual(sorted(received), sorted(expected), work.stderr)
        for subject, data in expected.items():
            msg = received[subject]
            self.assertEqual(msg.get_content_type(), "multipart/alternative")
            text = msg.get_body(("plain",)).get_content()
            self.assertIn("José", text)
            html = msg.get_body(("html",)).get_content()
            self.assertIn('<html lang="%s">' % data["locale"], html)
            for key, value in data.items():
                if key.endswith("_link"):
                    self.assertIn(value, text)
        # The refused one is in the app's own failed_jobs, one attempt spent.
        rows = self.db.raw("SELECT uuid, connection, queue, payload, exception FROM {failed}")
        self.assertEqual(len(rows), 1)
        uuid, connection, queue_name, stored, exception = rows[0]
        self.assertTrue(uuid)
        self.assertEqual((connection, queue_name, stored), ("database", "emails", payload))
        self.assertIn("550", exception)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)
        listed = self.dbqueue("failed")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("SendTemplateEmailJob", listed.stdout)

        # The mailbox exists now: retry brings the row back and it is sent.
        del self.sink.refuse["bounce@example.com"]
        retried = self.dbqueue("retry", "all")
        self.assertEqual(retried.returncode, 0, retried.stderr)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {failed}")[0][0], 0)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 1)
        work = self.dbqueue("work", "--queue=emails", "--stop-when-empty")
        self.assertEqual(work.returncode, 0, work.stderr)
        self.assertEqual(self.sink.messages[-1][0], ("no-reply@app.test", ["bounce@example.com"]))
        self.assertEqual(self.sink.messages[-1][1]["Subject"], "Your Acme account has been approved")
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)


on_backends(TakeoverEndToEndTests, [b for b in BACKENDS if b is not Psycopg2Backend])


# ---- Email against mail servers that answer as Postfix does: the sent log, outages, deadlines, pause ----

class PostfixSink(SMTPSink):
    """SMTPSink with the replies a Postfix 3.7 with access maps gives.

    `data_command_replies` answer the DATA command itself (Postfix's
    smtpd_data_restrictions), before any message byte is read; `rcpt_script`
    maps a recipient to replies used up one RCPT at a time (then 250);
    `eight_bit=False` leaves 8BITMIME out of the EHLO reply. It records the
    EHLO names, the MAIL FROM options and the raw bytes of every message.
    """

    def __init__(self, testcase, eight_bit=True, **kw):
        self.eight_bit = eight_bit
        self.data_command_replies = []
        self.rcpt_script = {}
        self.ehlo_names = []
        self.mail_options = []
        self.raw = []
        super().__init__(testcase, **kw)

    def start(self):
        from aiosmtpd.smtp import SMTP
        sink = self

        class PostfixSMTP(SMTP):
            async def smtp_DATA(self, arg):
                if sink.data_command_replies and self.envelope.rcpt_tos:
                    await self.push(sink.data_command_replies.pop(0))
                    return
                await super().smtp_DATA(arg)

        class Counting(self.Controller):
            def factory(self):
                sink.connections += 1
                return PostfixSMTP(self.handler, **self.SMTP_kwargs)

        self.controller = Counting(self, hostname="127.0.0.1", port=self.port, **self.kw)
        self.controller.start()
        self.connections -= 1

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.ehlo_names.append(hostname)
        session.host_name = hostname
        if not self.eight_bit:
            responses = [r for r in responses if "8BITMIME" not in r]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.mail_options.append(list(mail_options))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        script = self.rcpt_script.get(address)
        if script:
            return script.pop(0)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        self.raw.append(envelope.original_content or envelope.content)
        return await super().handle_DATA(server, session, envelope)

    def delivered_to(self):
        """{recipient: [subjects of the messages it received]}"""
        got = {}
        for (_, rcpts), msg, _ in self.messages:
            for rcpt in rcpts:
                got.setdefault(rcpt, []).append(msg["Subject"])
        return got


class SilentServer:
    """A TCP listener on loopback that accepts connections and never says a word."""

    def __init__(self, testcase):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        testcase.addCleanup(self.close)

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class MailServerTests(EmailTestMixin, unittest.TestCase):
    """Issue 10: each row of the Postfix trial, on a real SMTP server on loopback."""

    def setUp(self):
        self.db = Backend(self)

    def payload_of(self, job_id, table="{jobs}"):
        rows = self.db.raw("SELECT payload FROM %s WHERE id = %d" % (table, job_id))
        return json.loads(rows[0][0]) if rows else None

    def test_451_at_data_for_one_job_never_fails_the_next(self):
        sink = PostfixSink(self)
        # Postfix's smtpd_data_restrictions: the DATA command itself is deferred,
        # before the message is read; smtplib does not RSET after that.
        sink.data_command_replies = ["451 4.3.0 <a@example.com>: Temporary lookup failure"]
        q = self.mail_queue(sink)
        dbqueue.queue_email("a@example.com", "job A", text="a", using=q)
        dbqueue.queue_email("b@example.com", "job B", text="b", using=q)
        _, log = self.work(q, tries=3)
        self.assertEqual(q.failed(), [], log)
        self.assertEqual(sink.subjects(), ["job A", "job B"])
        self.assertEqual(self.jobs_left(), 0)
        self.assertIn("451", log)
        self.assertNotIn("503", log)

    def test_503_is_never_a_permanent_failure(self):
        sink = PostfixSink(self)
        sink.data_command_replies = ["503 5.5.1 Error: need RCPT command"]
        q = self.mail_queue(sink)
        dbqueue.queue_email("a@example.com", "sequence", text="a", using=q)
        _, log = self.work(q, tries=3)
        self.assertEqual(q.failed(), [], log)
        self.assertIn("outcome=released", log)
        self.assertEqual(sink.subjects(), ["sequence"])

    def test_partly_deferred_recipients_get_it_once_and_the_rest_on_retry(self):
        sink = PostfixSink(self)
        sink.rcpt_script = {"b@example.com": ["450 4.2.0 <b@example.com>: Recipient address"
                                              " rejected: Greylisted"]}
        q = self.mail_queue(sink)
        job_id = dbqueue.queue_email(["a@example.com", "b@example.com"], "both", text="t",
                                     bcc="c@example.com", using=q)
        uuid = self.uuid_of(job_id)
        _, log = self.work(q, tries=3)
        self.assertEqual(sink.delivered_to(), {"a@example.com": ["both"], "b@example.com": ["both"],
                                               "c@example.com": ["both"]}, log)
        # The retry went to the deferred recipient only, as the same message.
        self.assertEqual([env for env, _, _ in sink.messages],
                         [("app@example.com", ["a@example.com", "c@example.com"]),
                          ("app@example.com", ["b@example.com"])])
        self.assertEqual({m["Message-ID"] for m in sink.attempted}, {"<%s@example.com>" % uuid})
        self.assertEqual(len({m["Date"] for m in sink.attempted}), 1)
        self.assertEqual([str(m["To"]) for m in sink.attempted],
                         ["a@example.com, b@example.com"] * 2)
        self.assertIn("outcome=released", log)
        self.assertIn("deferred: b@example.com: 450", log)
        self.assertEqual(q.failed(), [])
        self.assertEqual(self.jobs_left(), 0)

    def test_recipients_still_deferred_when_attempts_run_out_are_named(self):
        sink = PostfixSink(self)
        busy = "450 4.2.1 <b@example.com>: Recipient address rejected: mailbox busy"
        sink.rcpt_script = {"b@example.com": [busy] * 2}
        sink.refuse = {"x@example.com": "550 5.1.1 <x@example.com>: Recipient address rejected:"
                                        " User unknown"}
        q = self.mail_queue(sink)
        job_id = dbqueue.queue_email(["a@example.com", "b@example.com", "x@example.com"], "partly",
                                     text="t", using=q)
        self.work(q, tries=2)
        self.assertEqual(sink.delivered_to(), {"a@example.com": ["partly"]})
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn("b@example.com: 450 4.2.1", failed[0]["exception"])
        self.assertIn("x@example.com: 550 5.1.1", failed[0]["exception"])
        self.assertNotIn("a@example.com:", failed[0]["exception"])
        # `retry` sends to those who have not had it, never again to a@.
        self.assertEqual(json.loads(failed[0]["payload"])["mail"]["pending"],
                         ["b@example.com", "x@example.com"])
        sink.refuse = {}
        q.retry()
        self.work(q, tries=2)
        self.assertEqual(sink.delivered_to(), {"a@example.com": ["partly"],
                                               "b@example.com": ["partly"],
                                               "x@example.com": ["partly"]})
        self.assertEqual(q.failed(), [])
        self.assertEqual(len({m["Message-ID"] for _, m, _ in sink.messages}), 1)
        del job_id

    def test_partly_refused_message_is_a_failure_naming_the_refused(self):
        sink = PostfixSink(self)
        sink.refuse = {"nobody@example.com": "550 5.1.1 <nobody@example.com>: User unknown"}
        q = self.mail_queue(sink)
        dbqueue.queue_email(["nobody@example.com", "b@example.com"], "partly", text="t", using=q)
        _, log = self.work(q, tries=3)
        self.assertEqual(sink.delivered_to(), {"b@example.com": ["partly"]})
        self.assertNotIn("outcome=released", log)    # permanent: no second copy for b@
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn("refused: nobody@example.com: 550 5.1.1", failed[0]["exception"])
        self.assertIn("(permanent)", failed[0]["exception"])

    def test_long_ascii_headers_are_folded_never_encoded(self):
        sink = PostfixSink(self)
        q = self.mail_queue(sink)
        unsubscribe = ("<https://example.com/unsubscribe/" + "a1b2c3d4" * 8 + "?list=news&u=42>,"
                       " <mailto:unsubscribe@example.com?subject=unsubscribe>")
        token = "T" * 120
        subject = "An ASCII subject line that is long enough to be folded by any mail writer"
        dbqueue.queue_email("a@example.com", subject, text="t", using=q,
                            headers={"List-Unsubscribe": unsubscribe, "X-Token": token,
                                     "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})
        self.work(q, tries=1)
        raw = sink.raw[0]
        head = raw.split(b"\r\n\r\n", 1)[0]
        self.assertNotIn(b"=?", head.split(b"\r\nTo:", 1)[1])   # (the From name is not ASCII)
        self.assertTrue(all(len(line) <= 998 for line in head.split(b"\r\n")))
        self.assertTrue(all(len(line) <= 78 for line in head.split(b"\r\n")
                            if b"T" * 120 not in line and b"a1b2c3d4" * 8 not in line))
        msg = parse_mail(raw)
        self.assertEqual(msg["List-Unsubscribe"], unsubscribe)
        self.assertEqual(msg["X-Token"], token)
        self.assertEqual(msg["Subject"], subject)
        self.assertIn(b"\r\n <mailto:unsubscribe@example.com", head)   # folded at its space

    def test_without_8bitmime_a_non_ascii_body_goes_7bit(self):
        for eight_bit in (False, True):
            with self.subTest(eight_bit=eight_bit):
                sink = PostfixSink(self, eight_bit=eight_bit)
                q = self.mail_queue(sink)
                dbqueue.queue_email("a@example.com", "Grüße", text="Grüße aus Köln\n" * 3,
                                    html="<p>Grüße aus Köln</p>", using=q)
                self.work(q, tries=1)
                raw = sink.raw[0]
                msg = parse_mail(raw)
                self.assertEqual(msg.get_body(("plain",)).get_content().replace("\r\n", "\n"),
                                 "Grüße aus Köln\n" * 3)
                self.assertIn("Grüße aus Köln", msg.get_body(("html",)).get_content())
                if eight_bit:
                    self.assertIn("BODY=8BITMIME", sink.mail_options[0])
                    self.assertFalse(raw.isascii())
                else:
                    self.assertNotIn("BODY=8BITMIME", sink.mail_options[0])
                    self.assertTrue(raw.isascii())
                    for part in msg.walk():
                        if not part.is_multipart():
                            self.assertIn(part["Content-Transfer-Encoding"],
                                          ("quoted-printable", "base64"))
                sink.stop()

    def test_a_server_that_never_answers_is_a_timeout_naming_mail_timeout(self):
        silent = SilentServer(self)
        q = self.mail_queue(None, mail_port=silent.port, mail_timeout=1)
        job_id = dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        log = quiet_log()
        worker = dbqueue.Worker(q, ["emails"], log=log, tries=3, backoff="0")
        worker.run(once=True)
        text = log.stream.getvalue()
        self.assertIn("timed out", text)
        self.assertIn("MAIL_TIMEOUT=1", text)
        self.assertNotIn("closed the connection", text)
        self.assertEqual(worker.exit_code, 1)
        self.assertEqual(self.db.raw("SELECT attempts FROM {jobs} WHERE id = %d" % job_id),
                         [(0,)])
        self.assertEqual(q.failed(), [])

    def test_421_anywhere_is_an_outage_and_a_stall_mid_message_a_spent_attempt(self):
        sink = PostfixSink(self)
        q = self.mail_queue(sink, mail_timeout=1)
        job_id = dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        for script in ({"rcpt_script": {"a@example.com": ["421 4.3.2 Service shutting down"]}},
                       {"data_replies": ["421 4.4.2 Error: timeout exceeded"]}):
            for name, value in script.items():
                setattr(sink, name, value)
            worker, log = self.work(q, tries=3)
            self.assertEqual(worker.exit_code, 1, log)
            self.assertIn("(outage)", log)
            self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(0,)])
        self.assertEqual(sink.messages, [])
        # The server takes the data and then says nothing: the message may have
        # gone, so the attempt counts (a message that stalls the server cannot
        # loop unspent), and the error says timeout.
        import asyncio
        stalls = [3.0]

        async def slow_data(server, session, envelope):
            if stalls:
                await asyncio.sleep(stalls.pop())
                return "451 4.3.0 too late"
            return await PostfixSink.handle_DATA(sink, server, session, envelope)

        sink.handle_DATA = slow_data
        worker, log = self.work(q, tries=3)
        self.assertEqual(worker.exit_code, 0, log)
        self.assertIn("outcome=released", log)
        self.assertIn("timed out: no answer from the server within MAIL_TIMEOUT=1s", log)
        self.assertEqual(len(sink.messages), 1)
        self.assertEqual(self.jobs_left(), 0)
        del job_id

    def test_the_same_date_on_every_attempt(self):
        sink = PostfixSink(self)
        sink.data_replies = ["451 4.3.0 Error: queue file write error"]
        q = self.mail_queue(sink)
        job_id = dbqueue.queue_email("a@example.com", "dated", text="t", using=q)
        self.work(q, tries=3, backoff="3600")
        self.assertEqual(len(sink.attempted), 1)
        first = sink.attempted[0]["Date"]
        self.assertEqual(self.payload_of(job_id)["mail"]["date"], first)
        # The next attempt starts in a later second than the first one's Date.
        import email.utils
        sent = email.utils.parsedate_to_datetime(first).timestamp()
        wait_for(lambda: time.time() >= sent + 1.05, 5, message="the next second")
        self.db.raw("UPDATE {jobs} SET available_at = 0")
        self.work(q, tries=3)
        self.assertEqual(len(sink.messages), 1)
        self.assertEqual([m["Date"] for m in sink.attempted], [first, first])

    def test_wrong_password_is_one_auth_attempt_and_an_outage(self):
        sink = PostfixSink(self, auth=True, auth_require_tls=False)
        q = self.mail_queue(sink, mail_username="mailer", mail_password="Wr0ng-S3cret-pw")
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        dbqueue.queue_email("b@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=3)
        self.assertEqual(sink.logins, [("mailer", "Wr0ng-S3cret-pw")])   # one AUTH, not two
        self.assertEqual(worker.exit_code, 1)
        self.assertIn("authentication failed: 535", log)
        self.assertEqual(q.failed(), [])
        self.assertEqual(self.db.raw("SELECT attempts FROM {jobs} ORDER BY id"), [(0,), (0,)])
        self.assertNotIn("Wr0ng-S3cret-pw", log)

    def test_html_only_message_gets_a_text_part_made_from_it(self):
        sink = PostfixSink(self)
        q = self.mail_queue(sink)
        html = ("<html><head><title>Ignored</title><style>p {color: red}</style></head><body>"
                "<h1>Welcome, Zoë</h1><p>Please <a href=\"https://example.com/v?a=1&amp;b=2\">"
                "confirm your address</a> today.<br>Thanks &amp; regards</p>"
                "<ul><li>one</li><li>two</li></ul><script>alert(1)</script></body></html>")
        dbqueue.queue_email("a@example.com", "html only", html=html, using=q)
        self.work(q, tries=1)
        msg = sink.messages[0][1]
        self.assertEqual(msg.get_content_type(), "multipart/alternative")
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        self.assertEqual(text, "Welcome, Zoë\n\nPlease confirm your address"
                               " (https://example.com/v?a=1&b=2) today.\nThanks & regards\n\n"
                               "- one\n- two\n")
        self.assertEqual(msg.get_body(("html",)).get_content().rstrip("\r\n"), html)

    def test_a_database_without_the_state_table_still_works(self):
        # Migrated by an older dbqueue: no dbqueue_state. Nothing breaks; the
        # worker says what to run.
        q = self.mail_queue(None)
        self.db.raw("DROP TABLE dbqueue_state")
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=1)
        self.assertEqual(worker.exit_code, 1)
        self.assertIn("python3 dbqueue.py migrate", log)
        self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(0,)])
        code, out, _ = run_main(["health"], self.db.env())
        self.assertEqual(code, 0, out)
        self.assertEqual(run_main(["stats", "--json"], self.db.env())[0], 0)
        q.migrate()
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM dbqueue_state"), [(0,)])

    def test_mail_ehlo_domain_and_a_host_name_that_is_not_ascii(self):
        sink = PostfixSink(self)
        for setting, sent in (("mta.example.com", "mta.example.com"),
                              ("bücher.example", "xn--bcher-kva.example")):
            config = dbqueue.Config.from_env({"MAIL_EHLO_DOMAIN": setting})
            q = self.mail_queue(sink, mail_ehlo_domain=config.mail_ehlo_domain)
            dbqueue.queue_email("a@example.com", setting, text="t", using=q)
            self.work(q, tries=1)
            self.assertEqual(sink.ehlo_names[-1], sent)
        # Unset: the host's name, in ASCII whatever it is.
        q = self.mail_queue(sink)
        dbqueue.queue_email("a@example.com", "default", text="t", using=q)
        self.work(q, tries=1)
        self.assertEqual(sink.ehlo_names[-1], dbqueue._ehlo_name(q.config))
        self.assertTrue(sink.ehlo_names[-1].isascii())
        self.assertEqual(len(sink.messages), 3)


class MailBadSequenceAtRcptTests(EmailTestMixin, unittest.TestCase):
    """A 503 at RCPT is about the session, never the mail: the job is retried."""

    def setUp(self):
        self.db = Backend(self)

    def test_503_for_every_recipient_is_retried_and_the_session_recovers(self):
        sink = PostfixSink(self)
        bad = "503 5.5.1 Error: need MAIL command"
        sink.rcpt_script = {"a@example.com": [bad], "b@example.com": [bad]}
        q = self.mail_queue(sink)
        first = dbqueue.queue_email(["a@example.com", "b@example.com"], "first", text="t",
                                    using=q)
        dbqueue.queue_email("c@example.com", "second", text="t", using=q)
        # The first attempt; its retry waits out a backoff, the next job
        # goes through the same session at once.
        _, log = self.work(q, tries=3, backoff="60")
        self.assertEqual(q.failed(), [], log)
        self.assertNotIn("(permanent)", log)
        self.assertEqual(self.db.raw("SELECT id, attempts FROM {jobs}"), [(first, 1)])
        self.assertEqual(sink.delivered_to(), {"c@example.com": ["second"]})
        self.assertEqual(sink.connections, 1, log)
        self.db.raw("UPDATE {jobs} SET available_at = available_at - 120")
        _, log = self.work(q, tries=3)
        self.assertEqual(q.failed(), [], log)
        self.assertEqual(sink.delivered_to(), {"a@example.com": ["first"],
                                               "b@example.com": ["first"],
                                               "c@example.com": ["second"]})
        self.assertEqual(self.jobs_left(), 0)


class QueuedAsSink(PostfixSink):
    """PostfixSink whose DATA reply names the queue id, as Postfix's does."""

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            return "250 2.0.0 Ok: queued as 4QwXk%d" % len(self.messages)
        return reply


def _sent_log_row(**fields):
    """A sent-log row as the mailer keeps it (dbqueue._sent_row)."""
    row = {"queue": "default", "uuid": None, "job": "t_record", "template": None,
           "subject": "Hi", "sender": "app@example.com", "recipients": "a@example.com",
           "message_id": "<1@example.com>", "reply": "250 OK"}
    row.update(fields)
    return row


@dbqueue.job("t_sent_then_outage")
def _t_sent_then_outage(data):
    running = dbqueue.current_job()
    running.sent.append({"queue": running.queue, "uuid": running.uuid, "job": running.name,
                         "template": None, "subject": "one", "sender": "a@example.com",
                         "recipients": "b@example.com", "message_id": "<first@example.com>",
                         "reply": "250 2.0.0 Ok"})
    raise dbqueue._MailOutage("SMTP 127.0.0.1:1 unreachable (outage)")


class SentLogTests(EmailTestMixin):
    """The sent log (dbqueue_sent): what a mail server took, written with the job's ack."""

    def setUp(self):
        def forget():
            try:
                self.db.raw("DELETE FROM dbqueue_sent WHERE tbl = %s" % self.db.param,
                            (self.db.table,))
            except Exception:
                pass      # never migrated: nothing to forget
        self.addCleanup(forget)

    def shift(self, seconds, subject):
        """Move the rows of `subject` back in time, as if sent `seconds` earlier."""
        p = self.db.param
        self.db.raw("UPDATE dbqueue_sent SET sent_at = sent_at - %d WHERE tbl = %s AND subject = %s"
                    % (seconds, p, p), (self.db.table, subject))

    def test_mail_taken_before_an_outage_stays_in_the_log_when_the_job_goes_back(self):
        # The first message of a job was taken, the second met the outage: the
        # job goes back unspent, and the log keeps the one that left.
        q = self.db.queue()
        q.push("t_sent_then_outage", {}, queue="emails")
        worker = dbqueue.Worker(q, ["emails"], log=quiet_log())
        worker.run(once=True)
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)])
        self.assertEqual([r["message_id"] for r in q.sent()], ["<first@example.com>"])

    def test_a_sent_mail_is_logged_with_the_servers_reply_and_who_took_it(self):
        sink = QueuedAsSink(self)
        q = self.mail_queue(sink)
        job_id = dbqueue.queue_email(["a@example.com", "b@example.com"], "Hello", text="BODY-1",
                                     bcc="c@example.com", using=q)
        uuid = self.uuid_of(job_id)
        dbqueue.queue_template_email("d@example.com", "verify_email",
                                     {"name": "Ann", "url": "https://app.example/v/1"}, using=q)
        _, log = self.work(q)
        self.assertEqual(self.jobs_left(), 0, log)
        rows = q.sent()
        self.assertEqual([r["job"] for r in rows], ["send_template_email", "send_email"])
        plain, templated = rows[1], rows[0]
        self.assertEqual(plain["to"], ["a@example.com", "b@example.com", "c@example.com"])
        self.assertEqual(plain["reply"], "250 2.0.0 Ok: queued as 4QwXk1")
        self.assertEqual(templated["reply"], "250 2.0.0 Ok: queued as 4QwXk2")
        self.assertEqual(plain["message_id"], "<%s@example.com>" % uuid)
        self.assertEqual(sink.messages[0][1]["Message-ID"], plain["message_id"])
        self.assertEqual((plain["queue"], plain["uuid"], plain["subject"], plain["from"],
                          plain["template"]), ("emails", uuid, "Hello", "app@example.com", None))
        self.assertEqual(templated["template"], "verify_email")
        self.assertEqual(templated["to"], ["d@example.com"])
        self.assertIsInstance(plain["sent_at"], int)
        # The body is never stored.
        raw = self.db.raw("SELECT * FROM dbqueue_sent WHERE tbl = %s" % self.db.param,
                          (self.db.table,))
        self.assertEqual(len(raw), 2)
        self.assertNotIn("BODY-1", repr(raw))

    def test_refused_recipients_are_not_logged(self):
        sink = QueuedAsSink(self)
        sink.refuse = {"x@example.com": "550 5.1.1 <x@example.com>: User unknown"}
        q = self.mail_queue(sink)
        dbqueue.queue_email(["x@example.com", "b@example.com"], "partly", text="t", using=q)
        dbqueue.queue_email("x@example.com", "nobody", text="t", using=q)
        self.work(q, tries=3)
        self.assertEqual(len(q.failed()), 2)     # each names x@ as refused
        rows = q.sent()
        self.assertEqual([(r["subject"], r["to"]) for r in rows], [("partly", ["b@example.com"])])
        self.assertTrue(rows[0]["reply"].startswith("250 2.0.0 Ok: queued as"), rows[0])

    def test_partly_deferred_mail_is_logged_per_attempt(self):
        sink = QueuedAsSink(self)
        sink.rcpt_script = {"b@example.com": ["450 4.2.0 <b@example.com>: Greylisted"]}
        q = self.mail_queue(sink)
        dbqueue.queue_email(["a@example.com", "b@example.com"], "both", text="t", using=q)
        # The first attempt: a@ took it, b@ deferred it. a@ is logged with
        # the attempt's release, while the job waits for its retry.
        worker = dbqueue.Worker(q, ["emails"], log=quiet_log(), backoff="0")
        worker.run(max_jobs=1)
        self.assertEqual(self.jobs_left(), 1)
        self.assertEqual([r["to"] for r in q.sent()], [["a@example.com"]])
        self.work(q, tries=3)
        self.assertEqual(self.jobs_left(), 0)
        rows = q.sent()
        self.assertEqual([r["to"] for r in rows], [["b@example.com"], ["a@example.com"]])
        self.assertEqual(len({r["message_id"] for r in rows}), 1)
        self.assertEqual([r["reply"] for r in rows], ["250 2.0.0 Ok: queued as 4QwXk2",
                                                      "250 2.0.0 Ok: queued as 4QwXk1"])

    def test_the_ack_and_its_log_rows_commit_together(self):
        q = self.db.queue()
        q.push("t_record", {})
        conn = q.connect()
        (job,), _ = q.reserve(conn, ["default"])
        good, bad = _sent_log_row(subject="good"), _sent_log_row(subject=None)
        # A log row that cannot be written fails the ack: the job stays
        # reserved and the row written before it is rolled back too.
        with self.assertRaises(dbqueue.DatabaseError):
            q.ack(conn, [dbqueue._Ack(job.token, [good, bad])])
        with self.assertRaises(dbqueue.DatabaseError):
            q.release(conn, job.token, 0, sent=[good, bad])
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at IS NOT NULL FROM {jobs}"),
                         [(1, 1)])
        self.assertEqual(q.sent(), [])
        self.assertEqual(q.ack(conn, [dbqueue._Ack(job.token, [good])]), [])
        self.assertEqual(self.jobs_left(), 0)
        self.assertEqual([r["subject"] for r in q.sent()], ["good"])

    def test_mail_log_days_0_and_the_log_mailer_write_nothing(self):
        sink = QueuedAsSink(self)
        q = self.mail_queue(sink, mail_log_days=0)
        dbqueue.queue_email("a@example.com", "off", text="t", using=q)
        self.work(q)
        self.assertEqual(len(sink.messages), 1)
        q = self.mail_queue(sink, mail_mailer="log")
        dbqueue.queue_email("a@example.com", "shown only", text="t", using=q)
        self.work(q)
        self.assertEqual(self.jobs_left(), 0)
        self.assertEqual(len(sink.messages), 1)
        self.assertEqual(q.sent(), [])

    def test_workers_delete_old_rows_in_batches_once_a_minute(self):
        sink = QueuedAsSink(self)
        q = self.mail_queue(sink, mail_log_days=2)
        for subject in ("old", "old", "old", "old", "old", "new"):
            dbqueue.queue_email("a@example.com", subject, text="t", using=q)
        self.work(q)
        self.shift(3 * 86400, "old")
        q.prune_batch = 2
        self.assertEqual(q.prune_sent(), 5)         # three statements of at most 2
        self.assertEqual([r["subject"] for r in q.sent()], ["new"])
        # A worker prunes at its first claim, then not again within a minute.
        dbqueue.queue_email("a@example.com", "older", text="t", using=q)
        self.work(q)
        self.shift(3 * 86400, "older")
        worker = dbqueue.Worker(q, ["emails"], log=quiet_log())
        try:
            worker._claim(1)
            self.assertEqual([r["subject"] for r in q.sent()], ["new"])
            dbqueue.queue_email("a@example.com", "oldest", text="t", using=q)
            worker._claim(1)
            worker._process(worker._held.pop(0))
            worker._flush_acks()
            self.shift(3 * 86400, "oldest")
            worker._claim(1)
            self.assertEqual([r["subject"] for r in q.sent()], ["new", "oldest"])
            worker._last_prune -= 61
            worker._claim(1)
            self.assertEqual([r["subject"] for r in q.sent()], ["new"])
        finally:
            worker._shutdown()

    def test_sent_command_filters_newest_first(self):
        sink = QueuedAsSink(self)
        q = self.mail_queue(sink)
        dbqueue.queue_email("ann@example.com", "to ann", text="t", using=q)
        dbqueue.queue_email(["bob@example.com", "Ann@Example.com"], "to bob", text="t", using=q)
        dbqueue.queue_email("carla@example.com", "to carla", text="t", using=q, queue="other")
        self.work(q)
        dbqueue.Worker(q, ["other"], log=quiet_log()).run(stop_when_empty=True)
        self.shift(3 * 3600, "to ann")
        env = self.db.env()

        def listed(*args):
            code, out, err = run_main(["sent", "--json"] + list(args), env)
            self.assertEqual((code, err), (0, ""))
            return [r["subject"] for r in json.loads(out)]
        self.assertEqual(listed(), ["to carla", "to bob", "to ann"])
        self.assertEqual(listed("--to", "ANN@example.com"), ["to bob", "to ann"])
        self.assertEqual(listed("--since", "2h"), ["to carla", "to bob"])
        self.assertEqual(listed("--since", "4h", "--to", "ann@"), ["to bob", "to ann"])
        self.assertEqual(listed("--queue", "other"), ["to carla"])
        self.assertEqual(listed("--limit", "1"), ["to carla"])
        code, out, err = run_main(["sent", "--to", "bob@example.com"], env)
        self.assertEqual(code, 0, err)
        self.assertIn("sent at (UTC)", out)
        self.assertIn("bob@example.com, Ann@Example.com", out)
        self.assertIn("250 2.0.0 Ok: queued as", out)
        code, out, err = run_main(["sent", "--to", "nobody@example.com"], env)
        self.assertEqual((code, out), (0, "no sent mail matches\n"))
        code, out, err = run_main(["sent", "--since", "2 hours"], env)
        self.assertEqual(code, 2)
        one_line(self, err)
        self.assertIn("90s, 30m, 2h or 7d", err)
        code, out, err = run_main(["sent"], dict(env, MAIL_LOG_DAYS="two weeks"))
        self.assertEqual(code, 2)
        one_line(self, err)
        self.assertIn("MAIL_LOG_DAYS=two weeks", err)

    def test_stats_count_the_mail_sent_in_the_last_hour(self):
        sink = QueuedAsSink(self)
        q = self.mail_queue(sink)
        for subject in ("a", "b", "earlier"):
            dbqueue.queue_email("a@example.com", subject, text="t", using=q)
        q.push("t_record", {}, queue="default")
        self.work(q)
        self.shift(2 * 3600, "earlier")
        env = self.db.env()
        code, out, err = run_main(["stats", "--json"], env)
        self.assertEqual(code, 0, err)
        counts = {s["queue"]: s["sent_last_hour"] for s in json.loads(out)}
        # emails has no job left, and is listed for its mail all the same.
        self.assertEqual(counts, {"default": 0, "emails": 2})
        code, out, err = run_main(["stats", "--format", "prometheus"], env)
        self.assertIn('dbqueue_sent_last_hour{queue="emails"} 2\n', out)
        code, out, err = run_main(["stats"], env)
        self.assertIn("sent 1h", out.splitlines()[0])
        self.assertEqual(out.splitlines()[2].split(), ["emails", "0", "0", "0", "0", "0", "0", "-", "2"])

    def test_the_dashboards_sent_page_lists_searches_and_escapes(self):
        sink = QueuedAsSink(self)
        q = self.mail_queue(sink)
        dbqueue.queue_email("ann@example.com", HOSTILE + ' & "quoted"', text="t", using=q)
        job_id = dbqueue.queue_email("bob@example.com", "Your invoice", text="t", using=q)
        uuid = self.uuid_of(job_id)
        self.work(q)
        client = DashboardClient(start_dashboard(self, self.db.queue(), page_size=1))
        page = client.get("/sent")
        self.assertEqual(page.status, 200)
        self.assertIn('href="/sent"', page.text)
        self.assertIn("Your invoice", page.text)            # newest first, one per page
        self.assertNotIn("ann@example.com", page.text)
        self.assertIn('href="/sent?page=2"', page.text)
        page = client.get("/sent?page=2")
        self.assertIn("ann@example.com", page.text)
        self.assertNotIn(HOSTILE, page.text)
        self.assertIn("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;", page.text)
        self.assertIn("250 2.0.0 Ok: queued as 4QwXk1", page.text)
        for search in ("BOB@", "invoice", uuid[:13]):
            page = client.get("/sent?q=" + search)
            self.assertIn("Your invoice", page.text, search)
            self.assertNotIn("ann@example.com", page.text, search)
        page = client.get("/sent?q=%3Cscript%3E")
        self.assertIn("ann@example.com", page.text)
        self.assertIn('value="&lt;script&gt;"', page.text)
        page = client.get("/sent?q=nobody")
        self.assertIn("No sent mail matches", page.text)

    @sqlite_only
    def test_sendmail_is_logged_with_its_exit_status(self):
        bin_dir = os.path.join(self.db.tmp, "bin")
        os.mkdir(bin_dir)
        script = os.path.join(bin_dir, "sendmail.py")
        with open(script, "w") as fh:
            fh.write(FAKE_SENDMAIL)
        with open(os.path.join(bin_dir, "codes.txt"), "w") as fh:
            fh.write("0")
        q = self.mail_queue(None, mail_mailer="sendmail",
                            mail_sendmail_path="%s %s -t -i" % (sys.executable, script))
        dbqueue.queue_email(["a@example.com", "b@example.com"], "piped", text="t", using=q)
        self.work(q)
        (row,) = q.sent()
        self.assertEqual(row["to"], ["a@example.com", "b@example.com"])
        self.assertEqual(row["reply"], "sendmail (%s) exited 0" % sys.executable)

    @sqlite_only
    def test_a_database_made_before_the_log_gets_its_table_from_migrate(self):
        q = self.db.queue()
        q.close()
        self.db.raw("DROP TABLE dbqueue_sent")
        code, out, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn('CREATE TABLE IF NOT EXISTS "dbqueue_sent"', out)
        self.assertIn('CREATE INDEX IF NOT EXISTS "dbqueue_sent_time"', out)
        self.assertEqual(run_main(["migrate"], self.db.env())[0], 0)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM dbqueue_sent"), [(0,)])
        code, out, err = run_main(["migrate", "--print"], self.db.env())
        self.assertIn("nothing to do", out)


on_backends(SentLogTests, SQLITE_PG_MARIADB)


def limited_role(testcase, db, more=""):
    """A PostgreSQL role granted the queue tables (and `more`, e.g. ", dbqueue_state")
    only, dropped after the test; returns it and the URL that acts as it."""
    role = "dbq_role_" + db.table
    db.raw('CREATE ROLE "%s" NOLOGIN' % role)
    testcase.addCleanup(db.raw, 'DROP ROLE IF EXISTS "%s"' % role)
    testcase.addCleanup(db.raw, 'REVOKE ALL ON "%s", "%s", "%s_id_seq"%s FROM "%s"'
                        % (db.table, db.failed_table, db.table, more, role))
    db.raw('GRANT SELECT, INSERT, UPDATE, DELETE ON "%s", "%s"%s TO "%s"'
           % (db.table, db.failed_table, more, role))
    db.raw('GRANT USAGE ON SEQUENCE "%s_id_seq" TO "%s"' % (db.table, role))
    return role, url_with(db.url, "options=-crole%%3D%s" % role)


class SentLogRightsTests(unittest.TestCase):
    """A PostgreSQL role granted the queue tables only: mail goes out, unrecorded, and the
    worker says once what to grant."""

    def setUp(self):
        self.db = PsycopgBackend(self)
        self.sink = QueuedAsSink(self)
        self.q = self.db.queue(mail_host="127.0.0.1", mail_port=self.sink.port)
        dbqueue.queue_email("a@example.com", "s", text="t", using=self.q)
        self.role, url = limited_role(self, self.db, ", dbqueue_state")
        self.env = self.db.env(QUEUE_DATABASE_URL=url, MAIL_HOST="127.0.0.1",
                               MAIL_PORT=str(self.sink.port))

    def test_mail_is_sent_and_the_worker_says_what_to_grant(self):
        code, _, err = run_main(["work", "--queue", "emails", "--stop-when-empty"], self.env)
        self.assertEqual(code, 0, err)
        self.assertEqual(len(self.sink.messages), 1)
        self.assertEqual(err.count("the sent log is off"), 1, err)
        self.assertIn("SELECT, INSERT and DELETE on it", err)
        self.assertEqual(self.q.sent(), [])
        code, out, err = run_main(["stats", "--json"], self.env)     # extra: never fatal
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), [])


class SentLogProcessTests(_WorkerProcesses, EmailTestMixin):
    """work --concurrency: every slot writes the log rows of the mail it sent."""

    def setUp(self):
        self.process_setup()
        SentLogTests.setUp(self)

    def test_every_slot_logs_its_own_mail(self):
        sink = QueuedAsSink(self)
        q = self.mail_queue(sink)
        count = 24
        for i in range(count):
            dbqueue.queue_email("r%d@example.com" % i, "m%d" % i, text="t", using=q)
        proc = self.start_worker("--queue", "emails", "--concurrency", "4", "--stop-when-empty",
                                 MAIL_HOST="127.0.0.1", MAIL_PORT=sink.port,
                                 MAIL_FROM_ADDRESS="app@example.com")
        self.assertEqual(self.finish(proc, 120), 0, self.stderr(proc))
        rows = q.sent(limit=1000)
        self.assertEqual(sorted(r["subject"] for r in rows), sorted("m%d" % i for i in range(count)))
        self.assertEqual(len({r["message_id"] for r in rows}), count)
        self.assertEqual({r["to"][0] for r in rows}, {"r%d@example.com" % i for i in range(count)})
        # The replies are the server's own, one queue id per message.
        self.assertEqual(sorted(r["reply"] for r in rows),
                         sorted("250 2.0.0 Ok: queued as 4QwXk%d" % (i + 1) for i in range(count)))


on_backends(SentLogProcessTests, SQLITE_PG_MARIADB)


class MailMessageTests(unittest.TestCase):
    """The parts of issue 10 that need no server (they run on every Python)."""

    def fields(self, **extra):
        fields = {"from": ("Äpp", "app@example.com"), "to": [("", "a@example.com")], "cc": [],
                  "reply_to": [], "subject": "s", "headers": [], "text": "t", "html": None}
        fields.update(extra)
        return fields

    def test_ehlo_name_is_ascii_whatever_the_host_is_called(self):
        config = dbqueue.Config()
        self.assertEqual(dbqueue._ehlo_name(config, "bücher-pc.example.org"),
                         "xn--bcher-pc-65a.example.org")
        self.assertEqual(dbqueue._ehlo_name(config, "\u0661\u0662.\u00e9 \u2028"), "localhost")
        self.assertEqual(dbqueue._ehlo_name(config, "host.example.org"), "host.example.org")
        self.assertTrue(dbqueue._ehlo_name(config, "bücher-pc").startswith("["))
        self.assertTrue(dbqueue._ehlo_name(config).isascii())
        self.assertEqual(dbqueue._ehlo_name(dbqueue.Config(mail_ehlo_domain="mx.example")),
                         "mx.example")
        self.assertEqual(dbqueue.Config.from_env({"MAIL_EHLO_DOMAIN": "[192.0.2.1]"})
                         .mail_ehlo_domain, "[192.0.2.1]")
        tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        for bad in ("a b", "-x.example", "[nope]", "a..b"):
            code, _, err = run_main(["stats"], {"QUEUE_DATABASE_URL": os.path.join(tmp, "q.db"),
                                                "MAIL_EHLO_DOMAIN": bad})
            self.assertEqual(code, 2, bad)
            self.assertIn("MAIL_EHLO_DOMAIN=%s" % bad, err)
        self.assertFalse(os.path.exists(os.path.join(tmp, "q.db")))

    def test_headers_fold_at_spaces_and_unfold_to_the_value(self):
        value = "<https://example.com/u/" + "x" * 70 + ">,  <mailto:u@example.com?subject=u>"
        msg = dbqueue._build_message(self.fields(
            subject="word " * 30 + "end", headers=[("List-Unsubscribe", value),
                                                   ("X-Token", "T" * 300)]))
        raw = dbqueue._message_bytes(msg)
        head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
        self.assertNotIn("=?", head.split("\r\nTo:", 1)[1])
        parsed = parse_mail(raw)
        self.assertEqual(parsed["List-Unsubscribe"], value)   # two spaces kept
        self.assertEqual(parsed["X-Token"], "T" * 300)
        self.assertEqual(parsed["Subject"], "word " * 30 + "end")
        self.assertTrue(all(len(line) <= 78 for line in head.split("\r\n")
                            if "T" * 300 not in line and "x" * 70 not in line))
        with self.assertRaises(dbqueue.PermanentError):
            dbqueue._deliver(self.fields(headers=[("X-Token", "T" * 1000)]),
                             dbqueue.Config(mail_mailer="log"))

    def test_seven_bit_message_and_text_from_html(self):
        fields = self.fields(text=None, html="<p>Grüße, <a href='https://x.test/a'>hier</a>"
                                             "<br>Zeile</p><script>x()</script>")
        raw = dbqueue._message_bytes(dbqueue._build_message(fields, seven_bit=True))
        self.assertTrue(raw.isascii())
        parsed = parse_mail(raw)
        self.assertEqual(parsed.get_body(("plain",)).get_content().replace("\r\n", "\n"),
                         "Grüße, hier (https://x.test/a)\nZeile\n")
        self.assertFalse(dbqueue._message_bytes(dbqueue._build_message(fields)).isascii())


@on_backends(SQLITE_PG)
class MailOutageTests(_WorkerProcesses, EmailTestMixin):
    """The mail server down for longer than the whole backoff: nothing is spent."""

    def setUp(self):
        self.process_setup()

    def test_outage_pauses_mail_while_other_queues_run_then_every_mail_goes_once(self):
        need(_aiosmtpd() is not None, "aiosmtpd is not installed (pip install aiosmtpd)")
        port = free_port()
        q = self.mail_queue(None, mail_port=port)
        subjects = ["m%d" % i for i in range(5)]
        for s in subjects:
            dbqueue.queue_email("a@example.com", s, text="t", using=q)
        proc = self.start_worker("--queue", "emails,default", "-v", MAIL_HOST="127.0.0.1",
                                 MAIL_PORT=port, MAIL_FROM_ADDRESS="app@example.com",
                                 QUEUE_MAX_ATTEMPTS=2, QUEUE_BACKOFF=1, T_MAIL_PROBE="0.5,1")
        wait_for(lambda: "mail server unavailable" in self.stderr(proc), 30,
                 message="the outage to be noticed")
        # Other queues keep running while mail waits.
        for n in range(3):
            q.push("p_append", {"n": n}, queue="default")
        wait_for(lambda: len(self.lines()) == 3, 30, message="the default queue's jobs")
        env = self.db.env()
        code, out, _ = run_main(["stats", "--json"], env)
        emails = {s["queue"]: s for s in json.loads(out)}["emails"]
        self.assertEqual(emails["ready"], 5)
        self.assertIn("unreachable", emails["mail_outage"]["error"])
        code, out, _ = run_main(["stats"], env)
        self.assertIn("mail server unavailable", out)
        code, out, _ = run_main(["stats", "--format", "prometheus"], env)
        self.assertRegex(out, r'dbqueue_mail_outage_seconds\{queue="emails"\} \d+')
        code, out, _ = run_main(["health"], env)
        self.assertEqual(code, 1)
        self.assertIn("mail server unavailable", out)
        # Down for longer than the whole backoff (1 s) and several probes (0.5 s, then 1 s each).
        wait_for(lambda: self.stderr(proc).count("mail server still unavailable") >= 2, 30,
                 message="two failed probes")
        sink = PostfixSink(self, port=port)
        wait_for(lambda: len(sink.messages) == 5, 60, message="every mail")
        wait_for(lambda: self.jobs_left() == 0, 30, message="the jobs to be deleted")
        self.assertEqual(sink.subjects(), subjects)
        self.assertEqual(q.failed(), [])
        err = self.stderr(proc)
        self.assertEqual(err.count("pausing mail"), 1, err)     # logged once
        self.assertIn("mail server available again", err)
        self.assertNotIn("outcome=failed", err)
        code, out, _ = run_main(["health"], env)
        self.assertEqual(code, 0, out)
        self.assertNotIn("mail_outage", run_main(["stats", "--json"], env)[1])
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0)

    def test_once_and_stop_when_empty_give_the_job_back_and_exit_1(self):
        port = free_port()
        q = self.mail_queue(None, mail_port=port)
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        q.push("p_append", {"n": 1}, queue="default")
        for flag in ("--once", "--stop-when-empty"):
            with self.subTest(flag=flag):
                proc = self.start_worker("--queue", "emails,default", flag, MAIL_HOST="127.0.0.1",
                                         MAIL_PORT=port, QUEUE_MAX_ATTEMPTS=1)
                self.assertEqual(self.finish(proc), 1)
                err = self.stderr(proc)
                lines = [line for line in err.splitlines() if "mail server unavailable" in line]
                self.assertEqual(len(lines), 1, err)
                self.assertIn("given back unspent", lines[0])
                self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"
                                             " WHERE queue = 'emails'"), [(0, None)])
                self.assertEqual(q.failed(), [])


on_backends(MailOutageTests, [MariaDBBackend])    # stats and health on all three


class MailOutageProbeTests(_WorkerProcesses, EmailTestMixin):
    """While the mail server is down, a worker probes it on Worker.mail_probe's
    schedule, one step further after each failed probe, the last step repeating."""

    def setUp(self):
        self.process_setup()

    def test_the_default_schedule(self):
        self.assertEqual(dbqueue.Worker.mail_probe, (1, 2, 5, 10, 30, 60))

    def test_each_failed_probe_waits_the_next_step_and_the_last_repeats(self):
        port = free_port()       # nothing listens: refused at every probe
        q = self.mail_queue(None, mail_port=port)
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        proc = self.start_worker("--queue", "emails", "-v", MAIL_HOST="127.0.0.1",
                                 MAIL_PORT=port, T_MAIL_PROBE="0.1,0.2,0.3")
        probes = lambda: [line for line in self.stderr(proc).splitlines()
                          if "mail server still unavailable" in line]
        wait_for(lambda: len(probes()) >= 4, 30, message="four failed probes")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        waits = [line.split("next_probe_s=")[1].split()[0] for line in probes()]
        self.assertEqual(waits[:4], ["0.2", "0.3", "0.3", "0.3"], waits)
        self.assertEqual(set(waits[4:]) - {"0.3"}, set(), waits)
        err = self.stderr(proc)
        self.assertEqual(err.count("pausing mail"), 1, err)
        self.assertLess(err.index("pausing mail"), err.index("mail server still unavailable"))
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)])
        self.assertEqual(q.failed(), [])


on_backends(MailOutageProbeTests, SQLITE)


class MailOutageUnspentTests(EmailTestMixin):
    """A mail outage in the middle of a batch: the job that met it and every job
    the worker had fetched with it go back unspent, on every database."""

    def test_smtp_outage_mid_drain_delivers_every_email_exactly_once(self):
        sink = SMTPSink(self)
        clock = Clock()
        q = self.mail_queue(sink, clock=clock)

        def back():
            sink.start()
            clock.advance(10)

        ACTIONS.update(down=sink.stop, up=back)
        self.addCleanup(ACTIONS.pop, "down", None)
        self.addCleanup(ACTIONS.pop, "up", None)
        subjects = ["e%d" % i for i in range(6)]
        for s in subjects[:3]:
            dbqueue.queue_email("a@example.com", s, text="t", using=q)
        q.push("t_action", {"key": "down"}, queue="emails")
        for s in subjects[3:]:
            dbqueue.queue_email("a@example.com", s, text="t", using=q)
        worker, log = self.work(q, tries=1, backoff="10")
        self.assertEqual(worker.exit_code, 1, log)
        self.assertEqual(sink.subjects(), subjects[:3])
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"),
                         [(0, None)] * 3)
        back()
        worker, log = self.work(q, tries=1, backoff="10")
        self.assertEqual(worker.exit_code, 0, log)
        self.assertEqual(sink.subjects(), subjects)
        self.assertNotIn("outcome=released", log)
        self.assertEqual(len({m["Message-ID"] for _, m, _ in sink.messages}), 6)
        self.assertEqual(q.failed(), [])
        self.assertEqual(self.jobs_left(), 0)


on_backends(MailOutageUnspentTests, SQLITE_PG_MARIADB)


class MailOutageStaleTests:
    """A recorded outage no worker has probed for over 5 minutes (its worker
    stopped during it) is shown as stale, and no longer makes `health` fail."""

    def test_an_outage_record_older_than_five_minutes_is_stale(self):
        q = self.db.queue()
        key = q._mail_outage_key()
        q.set_state(q.connect(), key, {"since": int(time.time()) - 900, "queues": ["emails"],
                                        "error": "SMTP 127.0.0.1:25 unreachable"})
        self.addCleanup(lambda: q.clear_state(q.connect(), key))
        q.push("t_record", {}, queue="emails")
        env = self.db.env()

        def back(seconds):
            p = self.db.param
            self.db.raw("UPDATE dbqueue_state SET updated_at = updated_at - %s WHERE name = %s"
                        % (p, p), (seconds, key))
        back(240)          # probed 4 minutes ago: current
        self.assertFalse(q.mail_outage()["stale"])
        code, out, _ = run_main(["health"], env)
        self.assertEqual(code, 1, out)
        self.assertIn("mail server unavailable", out)
        self.assertIn("last checked 4m", run_main(["stats"], env)[1])
        back(120)          # 6 minutes ago: stale
        outage = q.mail_outage()
        self.assertTrue(outage["stale"], outage)
        self.assertGreaterEqual(outage["checked_ago"], 360)
        code, out, _ = run_main(["health"], env)
        self.assertEqual(code, 0, out)
        self.assertIn("stale: no worker has checked for 6m", run_main(["stats"], env)[1])
        emails = {s["queue"]: s for s in json.loads(run_main(["stats", "--json"], env)[1])}
        self.assertTrue(emails["emails"]["mail_outage"]["stale"])


on_backends(MailOutageStaleTests, SQLITE_PG_MARIADB)


class MailOutageOrderTests(_WorkerProcesses, EmailTestMixin):
    """An outage gives jobs back as they were: same order, same age, no attempt spent."""

    def setUp(self):
        self.process_setup()

    def test_jobs_keep_their_place_and_their_wait_through_an_outage(self):
        need(_aiosmtpd() is not None, "aiosmtpd is not installed (pip install aiosmtpd)")
        port = free_port()      # nothing listens: connection refused
        q = self.mail_queue(None, mail_port=port)
        for i in range(3):
            dbqueue.queue_email("a@example.com", "m%d" % i, text="t", using=q)
        # Queued three minutes before the server went down.
        self.db.raw("UPDATE {jobs} SET available_at = available_at - 180,"
                    " created_at = created_at - 180")
        rows = lambda: self.db.raw("SELECT id, available_at, attempts FROM {jobs} ORDER BY id")
        before = rows()
        env = dict(MAIL_HOST="127.0.0.1", MAIL_PORT=port, MAIL_FROM_ADDRESS="app@example.com")
        proc = self.start_worker("--queue", "emails", "--stop-when-empty", **env)
        self.assertEqual(self.finish(proc), 1, self.stderr(proc))
        self.assertEqual(rows(), before)
        # A worker that keeps probing: each probe takes a job and gives it back.
        proc = self.start_worker("--queue", "emails", "-v", **env)
        wait_for(lambda: self.stderr(proc).count("mail server still unavailable") >= 2, 30,
                 message="two failed probes")
        wait_for(lambda: rows() == before, 15, message="the rows as they were pushed")
        stats = {s["queue"]: s for s in json.loads(run_main(["stats", "--json"],
                                                            self.db.env())[1])}
        self.assertGreaterEqual(stats["emails"]["oldest_ready_age"], 180)
        code, out, _ = run_main(["health", "--max-age", "120"], self.db.env())
        self.assertEqual(code, 1, out)
        self.assertIn("the oldest ready job has waited", out)
        page = DashboardClient(start_dashboard(self, q)).get("/").text
        self.assertRegex(page, r'data-label="Oldest ready" class="num">[3-9]m\d\ds<')
        sink = PostfixSink(self, port=port)
        wait_for(lambda: len(sink.messages) == 3, 60, message="every mail")
        self.assertEqual([m["Subject"] for _, m, _ in sink.messages], ["m0", "m1", "m2"])
        wait_for(lambda: self.jobs_left() == 0, 30, message="the jobs to be deleted")
        self.assertEqual(q.failed(), [])
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0)


on_backends(MailOutageOrderTests, SQLITE_PG_MARIADB)


class DeadlineTests(_WorkerProcesses, EmailTestMixin):
    """Stale mail is never sent: a job past its deadline (its retryUntil, or
    its template's validity) moves to failed_jobs as expired, unstarted."""

    seed = "App\\Libraries\\Queue\\Jobs\\"

    def setUp(self):
        self.process_setup()

    def env(self, port, **extra):
        return dict(MAIL_HOST="127.0.0.1", MAIL_PORT=port, MAIL_FROM_ADDRESS="app@example.com",
                    **extra)

    def php_reset(self, to, seconds_ago):
        """The seed app's password-reset job, queued `seconds_ago` (no retryUntil)."""
        php_push(self.db, {"job": self.seed + "SendTemplateEmailJob", "data": {
            "template": "emails/password-reset", "to": to,
            "data": {"reset_link": "https://app.test/reset?t=%s" % to}}},
            available_at=int(time.time()) - seconds_ago)

    def failed_by_recipient(self, q):
        return {json.loads(f["payload"])["data"]["to"]: f for f in q.failed()}

    def test_stale_mail_is_expired_unsent_and_the_rest_goes(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        # Queued 61 minutes ago through the API: a reset link valid for 60.
        earlier = self.mail_queue(sink, clock=Clock(time.time() - 61 * 60))
        reset = {"name": "Ann", "url": "https://app.test/reset?t=1"}
        dbqueue.queue_template_email("old@example.com", "password_reset", reset, using=earlier)
        dbqueue.queue_template_email("new@example.com", "password_reset", reset, using=q)
        dbqueue.queue_template_email("verify@example.com", "verify_email", reset, using=earlier)
        # The PHP app's rows: its password reset, 61 minutes old, and
        # Laravel-style retryUntil, past and to come.
        self.php_reset("php-old@example.com", 61 * 60)
        for to, until in (("late@example.com", -5), ("on-time@example.com", 600)):
            php_push(self.db, {"job": self.seed + "SendEmailJob", "retryUntil":
                               int(time.time()) + until, "data": {"to": to, "subject": "s",
                                                                  "message": "m"}})
        proc = self.start_worker("--queue", "emails", "--stop-when-empty", "--concurrency", "2",
                                 **self.env(sink.port))
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertEqual(sorted(to for (_, tos), _, _ in sink.messages for to in tos),
                         ["new@example.com", "on-time@example.com", "verify@example.com"])
        self.assertEqual(self.jobs_left(), 0)
        failed = self.failed_by_recipient(q)
        self.assertEqual(sorted(failed), ["late@example.com", "old@example.com",
                                          "php-old@example.com"])
        for f in failed.values():
            self.assertRegex(f["exception"], r"^expired: its deadline passed \d+[smhd]\S* ago"
                                             r" \(.+\); it was not sent$")
        self.assertRegex(failed["old@example.com"]["exception"],
                         r"passed [12]m\d\ds ago \(retryUntil 20\d\d-\d\d-\d\d ")
        self.assertIn("password-reset mail is valid for 1h00m",
                      failed["php-old@example.com"]["exception"])
        stats = json.loads(run_main(["stats", "--json"], self.db.env())[1])
        self.assertEqual([(s["queue"], s["failed"], s["past_deadline"]) for s in stats],
                         [("emails", 3, 3)])
        prom = run_main(["stats", "--format", "prometheus"], self.db.env())[1]
        self.assertIn('dbqueue_past_deadline_jobs{queue="emails"} 3', prom)
        page = DashboardClient(start_dashboard(self, q)).get("/").text
        self.assertIn("(3 past deadline)", page)

    def test_a_deadline_passes_during_a_mail_outage(self):
        need(_aiosmtpd() is not None, "aiosmtpd is not installed (pip install aiosmtpd)")
        port = free_port()      # nothing listens: connection refused
        q = self.mail_queue(None, mail_port=port)
        for i in range(2):
            dbqueue.queue_email("a@example.com", "m%d" % i, text="t", using=q)
        dbqueue.queue_email("late@example.com", "late", text="t", using=q, expires_in=2)
        proc = self.start_worker("--queue", "emails", "-v", **self.env(port))
        wait_for(lambda: "mail server unavailable" in self.stderr(proc), 30,
                 message="the outage to be noticed")
        # Never claimed (each probe takes the oldest job): the sweep expires it.
        wait_for(lambda: len(q.failed()) == 1, 30, message="the late job to expire")
        # The worker logs the expiry after its transaction commits: wait for the line.
        wait_for(lambda: "outcome=expired" in self.stderr(proc), 30, message="the expiry logged")
        err = self.stderr(proc)
        self.assertNotIn("mail server available again", err)
        self.assertTrue(q.failed()[0]["exception"].startswith("expired: its deadline passed "))
        self.assertEqual(self.db.raw("SELECT COUNT(*), MAX(attempts) FROM {jobs}"), [(2, 0)])
        sink = SMTPSink(self, port=port)
        wait_for(lambda: len(sink.messages) == 2, 60, message="the other mail")
        wait_for(lambda: self.jobs_left() == 0, 30, message="the jobs to be deleted")
        self.assertEqual(sink.subjects(), ["m0", "m1"])
        self.assertEqual(list(self.failed_by_recipient(q)), ["late@example.com"])
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0)

    def test_template_validity_setting_and_retry_remove_the_deadline(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        self.php_reset("kept@example.com", 2 * 3600)
        proc = self.start_worker("--queue", "emails", "--stop-when-empty",
                                 **self.env(sink.port, MAIL_TEMPLATE_VALIDITY="password-reset=0"))
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertEqual([tos for (_, tos), _, _ in sink.messages], [["kept@example.com"]])
        self.php_reset("retried@example.com", 2 * 3600)
        proc = self.start_worker("--queue", "emails", "--stop-when-empty",
                                 **self.env(sink.port, MAIL_TEMPLATE_VALIDITY="invitation=3d"))
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertEqual(len(sink.messages), 1)
        (failed,) = q.failed()
        self.assertTrue(failed["exception"].startswith("expired:"), failed["exception"])
        code, out, err = run_main(["retry", str(failed["id"])], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertRegex(out, r"^retried failed job \d+ as job \d+ \(its deadline removed\)\n$")
        proc = self.start_worker("--queue", "emails", "--stop-when-empty", **self.env(sink.port))
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertEqual([tos for (_, tos), _, _ in sink.messages],
                         [["kept@example.com"], ["retried@example.com"]])
        self.assertEqual(q.failed(), [])
        # A bad value: one line naming the variable, exit 2.
        code, _, err = run_main(["stats"], self.db.env(MAIL_TEMPLATE_VALIDITY="password-reset=soon"))
        self.assertEqual(code, 2)
        self.assertIn("MAIL_TEMPLATE_VALIDITY=password-reset=soon", one_line(self, err))
        # push --expires-in stores retryUntil, and its own 0 wins over a template's.
        code, out, err = run_main(["push", "p_append", "--data", '{"n": 1}', "--expires-in", "90"],
                                  self.db.env())
        self.assertEqual(code, 0, err)
        payload, expires_at = self.db.raw("SELECT payload, expires_at FROM {jobs}")[0]
        self.assertEqual(json.loads(payload)["retryUntil"], expires_at)
        self.assertTrue(0 < expires_at - time.time() <= 90)
        self.assertIsNone(json.loads(q.payload("send_template_email", {"template": "invitation"},
                                               expires_in=0))["retryUntil"])


on_backends(DeadlineTests, SQLITE_PG_MARIADB)


class MailOutageRightsTests(unittest.TestCase):
    """A PostgreSQL role granted the queue tables only, not dbqueue_state."""

    def setUp(self):
        self.db = PsycopgBackend(self)
        q = self.db.queue()
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        self.role, url = limited_role(self, self.db)
        self.env = self.db.env(QUEUE_DATABASE_URL=url)

    def test_mail_still_pauses_and_the_worker_says_what_to_grant(self):
        env = dict(self.env, MAIL_HOST="127.0.0.1", MAIL_PORT=str(free_port()))
        code, _, err = run_main(["work", "--queue", "emails", "--once"], env)
        self.assertEqual(code, 1, err)
        self.assertEqual(err.count("on dbqueue_state"), 1, err)
        self.assertIn("given back unspent", err)
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)])
        code, out, err = run_main(["stats", "--json"], self.env)
        self.assertEqual(code, 0, err)
        self.assertNotIn("mail_outage", out)


class PauseTests(_WorkerProcesses):
    """`pause` and `resume`: no worker starts a paused queue's jobs, whatever it holds."""

    def setUp(self):
        self.process_setup()
        self.env = self.db.env()
        del RECORD[:]

    def stats(self):
        code, out, err = run_main(["stats", "--json"], self.env)
        self.assertEqual(code, 0, err)
        return {s["queue"]: s for s in json.loads(out)}

    def done(self, prefix):
        return [line for line in self.lines() if line.startswith("done " + prefix)]

    def test_a_busy_worker_stops_starting_a_paused_queue_and_resume_starts_it_again(self):
        self.pause_a_busy_worker()

    def test_the_threads_of_a_concurrent_worker_stop_starting_it_too(self):
        self.pause_a_busy_worker("--concurrency", "3")

    def pause_a_busy_worker(self, *args):
        q = self.db.queue()
        for n in range(400):
            q.push("p_append", {"n": "e%d" % n, "sleep": 0.01}, queue="emails")
        proc = self.start_worker("--queue", "emails,default", *args)
        wait_for(lambda: len(self.done("e")) >= 5, 30, message="the worker to be busy")
        code, out, err = run_main(["pause", "emails"], self.env)
        paused = time.monotonic()
        self.assertEqual((code, err), (0, ""))
        self.assertIn("paused: emails (until resumed)", out)
        # Once the worker says it has seen the pause (and, with threads that
        # may have read it a moment before, once the promised second is
        # over), it starts no job of the queue: held ones go back unstarted.
        wait_for(lambda: "queue paused" in self.stderr(proc), 10, message="the pause to be seen")
        if args:
            time.sleep(max(0.0, paused + 1.0 - time.monotonic()))
        started = len(self.done("e"))
        self.assertLess(started, 400)
        for n in range(3):
            q.push("p_append", {"n": "d%d" % n}, queue="default")
        wait_for(lambda: len(self.done("d")) == 3, 30, message="the other queue's jobs")
        left = 400 - started
        wait_for(lambda: (self.stats()["emails"]["ready"], self.stats()["emails"]["reserved"])
                 == (left, 0), 10, message="the held jobs to be given back")
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs} WHERE queue = 'emails'"
                                     " AND (attempts <> 0 OR reserved_at IS NOT NULL)"),
                         [(0,)])
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            self.assertEqual(self.stats()["emails"]["ready"], left)
        self.assertEqual(len(self.done("e")), started)
        code, out, err = run_main(["resume", "emails"], self.env)
        self.assertEqual((code, out, err), (0, "resumed: emails\n", ""))
        wait_for(lambda: len(self.done("e")) == 400, 60, message="the queue to run again")
        self.assertEqual(len(set(self.done("e"))), 400)
        self.assertIn("queue resumed", self.stderr(proc))
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0)

    def test_an_idle_worker_sees_resume_long_before_its_sleep_ends(self):
        q = self.db.queue()
        self.assertEqual(run_main(["pause", "emails"], self.env)[0], 0)
        for n in range(2):
            q.push("p_append", {"n": "e%d" % n}, queue="emails")
        proc = self.start_worker("--queue", "emails", "--sleep", "600")
        wait_for(lambda: "queue paused" in self.stderr(proc), 10, message="the pause to be seen")
        self.assertEqual(self.stats()["emails"]["ready"], 2)
        self.assertEqual(self.done("e"), [])
        self.assertEqual(run_main(["resume", "emails"], self.env)[0], 0)
        wait_for(lambda: len(self.done("e")) == 2, 10, message="the jobs after resume")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0)

    def test_a_pause_for_a_time_ends_by_itself(self):
        # The queue's clock stands in for the database's: no waiting.
        clock = Clock()
        q = self.db.queue(clock=clock)
        q.pause(["emails"], seconds=60)
        self.assertEqual(q.paused(), {"emails": {"since": clock.now, "until": clock.now + 60,
                                                 "seconds_left": 60}})
        q.push("t_record", {"n": 1}, queue="emails")
        q.push("t_record", {"n": 2}, queue="default")
        worker = dbqueue.Worker(q, ["emails", "default"], sleep=600, log=quiet_log())
        thread = threading.Thread(target=worker.run)
        thread.start()
        self.addCleanup(thread.join, 30)
        self.addCleanup(worker.stop)
        wait_for(lambda: RECORD == [{"n": 2}], 10, message="the other queue's job")
        clock.advance(59)
        self.assertEqual(q.paused()["emails"]["seconds_left"], 1)
        self.assertEqual(RECORD, [{"n": 2}])
        clock.advance(1)
        self.assertEqual(q.paused(), {})
        wait_for(lambda: len(RECORD) == 2, 10, message="the job once the pause has ended")

    def test_stats_health_and_prometheus_name_paused_queues(self):
        q = self.db.queue()
        for n in range(2):
            q.push("t_record", {}, queue="emails")
        q.push("t_record", {}, queue="default")
        self.db.raw("UPDATE {jobs} SET available_at = available_at - 100 WHERE queue = 'emails'")
        code, out, err = run_main(["pause", "emails", "--for", "30m"], self.env)
        self.assertEqual((code, err), (0, ""))
        self.assertRegex(out, r"^paused: emails \(resumes in (30m00s|29m5\ds)\);")
        self.assertEqual(run_main(["pause", "idle"], self.env)[0], 0)   # no jobs: fine
        stats = self.stats()
        emails = stats["emails"]["paused"]
        self.assertEqual(emails["until"] - emails["since"], 1800)
        self.assertGreater(emails["seconds_left"], 1700)
        self.assertEqual((stats["idle"]["ready"], stats["idle"]["paused"]["until"]), (0, None))
        self.assertNotIn("paused", stats["default"])
        out = run_main(["stats"], self.env)[1]
        self.assertRegex(out, r"\npaused: emails \(resumes in [0-9]+m[0-9]+s\), idle \(until"
                              r" resumed\)\n")
        out = run_main(["stats", "--format", "prometheus"], self.env)[1]
        for name, value in (("emails", 1), ("idle", 1), ("default", 0)):
            self.assertIn('dbqueue_queue_paused{queue="%s"} %d\n' % (name, value), out)
        # The backlog a pause builds is no failure; the pause is named.
        code, out, _ = run_main(["health", "--max-ready", "1", "--max-age", "60"], self.env)
        self.assertEqual(code, 0, out)
        self.assertTrue(out.startswith("ok: "), out)
        self.assertIn("\npaused: emails (resumes in ", out)
        code, out, _ = run_main(["health", "--max-ready", "0"], self.env)
        self.assertEqual(code, 1, out)
        self.assertIn("queue default has 1 ready jobs", out)
        self.assertNotIn("queue emails", out)
        code, out, _ = run_main(["resume", "emails", "idle", "sms"], self.env)
        self.assertEqual((code, out), (0, "resumed: emails, idle\nnot paused: sms\n"))
        self.assertNotIn("paused", self.stats()["emails"])
        self.assertNotIn("idle", self.stats())
        self.assertIn('dbqueue_queue_paused{queue="emails"} 0',
                      run_main(["stats", "--format", "prometheus"], self.env)[1])
        self.assertEqual(run_main(["health", "--max-ready", "1", "--max-age", "60"],
                                  self.env)[0], 1)
        for argv in (["pause"], ["pause", "bad name"], ["pause", "emails", "--for", "0"],
                     ["pause", "emails", "--for", "2x"], ["resume"]):
            code, _, err = run_main(argv, self.env)
            self.assertEqual(code, 2, argv)
            self.assertEqual(len(err.splitlines()), 1, err)
        self.assertEqual(run_main(["pause", "emails", "--for", "90s"], self.env)[0], 0)
        self.assertLessEqual(self.stats()["emails"]["paused"]["seconds_left"], 90)
        with self.assertRaises(ValueError):
            q.pause("emails", seconds=0)


on_backends(PauseTests, SQLITE_PG_MARIADB)


# ---- Unique jobs, rate limits (MAIL_RATE_LIMIT) and throttling, SQLite producer latency ----

def _key_text(value):
    """jobs.unique_key as read back (bytes on MySQL, where the column is VARBINARY)."""
    return value.decode() if isinstance(value, (bytes, bytearray)) else value


@on_backends
class UniqueTests:

    def setUp(self):
        del RECORD[:]

    def work(self, q, queues=("default",)):
        dbqueue.Worker(q, list(queues), log=quiet_log(), backoff="0").run(stop_when_empty=True)

    def rows(self):
        return [(i, queue, _key_text(key)) for i, queue, key
                in self.db.raw("SELECT id, queue, unique_key FROM {jobs} ORDER BY id")]

    def test_a_second_push_with_the_key_inserts_nothing_and_returns_the_first_id(self):
        q = self.db.queue()
        first = q.push("t_record", {"n": 1}, unique_key="verify:ann@example.com")
        again = q.push("t_record", {"n": 2}, unique_key="verify:ann@example.com")
        self.assertEqual(again, first)
        other_queue = q.push("t_record", {"n": 3}, queue="other", unique_key="verify:ann@example.com")
        other_key = q.push("t_record", {"n": 4}, unique_key="verify:bob@example.com")
        plain = [q.push("t_record", {"n": 5}), q.push("t_record", {"n": 6})]
        self.assertEqual(len({first, other_queue, other_key} | set(plain)), 5)
        self.assertEqual(self.rows(), [(first, "default", "verify:ann@example.com"),
                                       (other_queue, "other", "verify:ann@example.com"),
                                       (other_key, "default", "verify:bob@example.com"),
                                       (plain[0], "default", None), (plain[1], "default", None)])
        payload = json.loads(self.db.raw("SELECT payload FROM {jobs} WHERE id = %d" % first)[0][0])
        self.assertEqual(payload["uniqueKey"], "verify:ann@example.com")
        self.assertEqual(payload["data"], {"n": 1})    # the first push's data is the one kept
        self.work(q)
        self.assertEqual(sorted(d["n"] for d in RECORD), [1, 4, 5, 6])

    def test_the_key_is_held_while_delayed_or_running_and_free_once_done(self):
        clock = Clock()
        q = self.db.queue(clock=clock)
        first = q.push("t_record", {"n": 1}, delay=60, unique_key="k")
        self.assertEqual(q.push("t_record", {"n": 2}, unique_key="k"), first)    # delayed
        clock.advance(60)
        conn = q.connect()
        jobs, _ = q.reserve(conn, ["default"])
        self.assertEqual([j.id for j in jobs], [first])
        self.assertEqual(q.push("t_record", {"n": 3}, unique_key="k"), first)    # running
        q.release(conn, jobs[0].token, delay=30)
        self.assertEqual(q.push("t_record", {"n": 4}, unique_key="k"), first)    # backing off
        clock.advance(30)
        jobs, _ = q.reserve(conn, ["default"])
        q.ack(conn, [jobs[0].token])
        second = q.push("t_record", {"n": 5}, unique_key="k")                    # done: free
        self.assertGreater(second, first)
        self.assertEqual(self.rows(), [(second, "default", "k")])
        q.clear("default")
        self.assertNotIn(q.push("t_record", {"n": 6}, unique_key="k"), (first, second))

    def test_a_failed_job_frees_its_key_and_retry_gives_it_back(self):
        q = self.db.queue()
        failed_job = q.push("t_permanent", {}, unique_key="report:7")
        self.work(q)
        self.assertEqual(self.rows(), [])
        [failed] = q.failed()
        self.assertEqual(json.loads(failed["payload"])["uniqueKey"], "report:7")
        [retried] = q.retry([failed["id"]])
        self.assertNotEqual(retried, failed_job)
        self.assertEqual(self.rows(), [(retried, "default", "report:7")])
        self.assertEqual(q.push("t_permanent", {}, unique_key="report:7"), retried)

    def test_retry_while_a_live_job_holds_the_key_is_that_push_again(self):
        q = self.db.queue()
        q.push("t_permanent", {}, unique_key="report:7")
        self.work(q)
        live = q.push("t_record", {"n": 1}, unique_key="report:7")
        plain = q.push("t_permanent", {})
        self.work(q)   # fails `plain`; the live one with the key is done, so push it again
        live = q.push("t_record", {"n": 2}, unique_key="report:7")
        ids = q.retry()
        self.assertEqual(len(ids), 2)
        self.assertIn(live, ids)              # the failed unique job: answered by the live one
        self.assertEqual(q.failed(), [])      # and no longer failed
        self.assertEqual([(r[1], r[2]) for r in self.rows()],
                         [("default", "report:7"), ("default", None)])

    def test_bad_keys_are_refused_before_anything_is_stored(self):
        q = self.db.queue()
        for bad in ("", "a\nb", "tab\there", "nul\x00", "\x7f", "\x85", "x" * 256, 7, b"k",
                    "\ud800"):
            with self.assertRaises(ValueError, msg=repr(bad)) as caught:
                q.push("t_record", {}, unique_key=bad)
            self.assertNotIn("\n", str(caught.exception))
            self.assertLess(len(str(caught.exception)), 200)
        q.push("t_record", {}, unique_key="ü" * 255)     # 255 characters, not bytes
        q.push("t_record", {}, unique_key=" spaced key ")
        self.assertEqual(len(self.rows()), 2)
        with self.assertRaises(TypeError) as caught:
            q.push_many("t_record", [{}, {}], unique_key="k")
        self.assertIn("push()", str(caught.exception))
        self.assertEqual(len(self.rows()), 2)

    def test_inside_the_callers_transaction(self):
        q = self.db.queue()
        app = self.db.connect()
        self.addCleanup(app.close)
        cur = app.cursor()
        if self.db.name == "sqlite":
            cur.execute("BEGIN IMMEDIATE")     # the app holds the write lock
        elif self.db.name == "mysql":
            app.autocommit(False)              # a method on PyMySQL and MySQLdb
        else:
            app.autocommit = False
        cur.execute("SELECT 1")
        first = q.push("t_record", {"n": 1}, connection=app, unique_key="k")
        self.assertEqual(q.push("t_record", {"n": 2}, connection=app, unique_key="k"), first)
        # On PostgreSQL a caught unique violation would have aborted the
        # transaction: the app's next statement and its commit still work.
        cur.execute("SELECT 2")
        self.assertEqual(cur.fetchone()[0], 2)
        app.rollback()
        self.assertEqual(self.rows(), [])      # nothing outside the app's transaction
        if self.db.name == "sqlite":
            cur.execute("BEGIN IMMEDIATE")
        kept = q.push("t_record", {"n": 3}, connection=app, unique_key="k")
        app.commit()
        self.assertEqual(self.rows(), [(kept, "default", "k")])
        self.assertEqual(q.push("t_record", {"n": 4}, unique_key="k"), kept)

    def test_queue_email_and_queue_template_email_take_a_key(self):
        q = self.db.queue()
        a = dbqueue.queue_email("ann@example.com", "Hi", text="x", using=q, unique_key="hi:ann")
        self.assertEqual(dbqueue.queue_email("ann@example.com", "Hi", text="y", using=q,
                                             unique_key="hi:ann"), a)
        vars_ = {"name": "Ann", "url": "https://example.com/v/1"}
        b = dbqueue.queue_template_email("ann@example.com", "verify_email", vars_, using=q,
                                         unique_key="verify:ann")
        self.assertEqual(dbqueue.queue_template_email("ann@example.com", "verify_email", vars_,
                                                      using=q, unique_key="verify:ann"), b)
        with self.assertRaises(ValueError):
            dbqueue.queue_email("ann@example.com", "Hi", text="x", using=q, unique_key="")
        self.assertEqual(self.rows(), [(a, "emails", "hi:ann"), (b, "emails", "verify:ann")])

    def test_push_command_takes_unique_key(self):
        self.db.queue()
        env = self.db.env()
        code, out, err = run_main(["push", "t_record", "--unique-key", "nightly:2026-12-01"], env)
        self.assertEqual((code, err), (0, ""))
        code, again, err = run_main(["push", "t_record", "--data", '{"n": 2}', "--unique-key",
                                     "nightly:2026-12-01"], env)
        self.assertEqual((code, again, err), (0, out, ""))
        for bad in ("", "x" * 300, "two\nlines"):
            code, out, err = run_main(["push", "t_record", "--unique-key", bad], env)
            self.assertEqual(code, 2)
            one_line(self, err)
            self.assertIn("--unique-key", err)
        self.assertEqual(len(self.rows()), 1)


on_backends(UniqueTests, PGBOUNCER)


_UNIQUE_PRODUCER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import dbqueue
q = dbqueue.Queue.from_env()
out = []
for i in range(int(sys.argv[2])):
    key = "k%d" % (i % int(sys.argv[3]))
    out.append("%s %d" % (key, q.push("u_record", {"key": key}, unique_key=key)))
with open(sys.argv[4], "w") as fh:
    fh.write("\n".join(out) + "\n")
"""

_UNIQUE_HANDLERS = r"""
import os, dbqueue

@dbqueue.job("u_record")
def u_record(data):
    fd = os.open(os.environ["T_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, ("%s %d\n" % (data["key"], dbqueue.current_job().id)).encode())
    os.close(fd)
"""


class UniqueProcessTests(_WorkerProcesses):

    def setUp(self):
        self.process_setup()
        with open(os.path.join(self.ptmp, "dbq_unique_handlers.py"), "w") as fh:
            fh.write(_UNIQUE_HANDLERS)

    def test_concurrent_pushers_in_processes_while_workers_drain(self):
        # 4 producer processes push 10 keys over and over while two workers
        # finish and free them: the holder often finishes between a producer's
        # insert that met its key and the read of its id. Every id a push
        # returns must be a job that existed with that key, and each existing
        # job runs once.
        q = self.db.queue()
        workers = [self.start_worker("--import", "dbq_unique_handlers", "-q") for _ in range(2)]
        env = clean_env()
        env.update(self.db.env())
        producers = []
        for n in range(4):
            path = os.path.join(self.ptmp, "pushed%d.txt" % n)
            producers.append((path, subprocess.Popen(
                [sys.executable, "-c", _UNIQUE_PRODUCER, HERE, "300", "10", path],
                env=env, cwd=self.ptmp, stderr=subprocess.PIPE)))
        pushed = []
        for path, proc in producers:
            _, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, err.decode()[-2000:])
            with open(path) as fh:
                pushed += [tuple(line.split()) for line in fh.read().splitlines()]
        self.assertEqual(len(pushed), 1200)
        wait_for(lambda: self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0] == 0, 60,
                 message="the drain")
        for proc in workers:
            proc.terminate()
            self.assertEqual(self.finish(proc), 0, self.stderr(proc)[-2000:])
        ran = [tuple(line.split()) for line in self.lines()]
        self.assertEqual(len(ran), len(set(ran)), "a job ran twice")
        self.assertEqual(set(pushed), set(ran), "an id a push returned is not a job of that key")
        self.assertLess(len(ran), 1200)        # pushes did meet live keys
        self.assertEqual(q.failed(), [])

    def test_concurrent_pushers_without_a_worker_make_one_job_per_key(self):
        self.db.queue()
        env = clean_env()
        env.update(self.db.env())
        procs = []
        for n in range(4):
            path = os.path.join(self.ptmp, "pushed%d.txt" % n)
            procs.append((path, subprocess.Popen(
                [sys.executable, "-c", _UNIQUE_PRODUCER, HERE, "200", "20", path],
                env=env, cwd=self.ptmp, stderr=subprocess.PIPE)))
        pushed = set()
        for path, proc in procs:
            _, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, err.decode()[-2000:])
            with open(path) as fh:
                pushed |= {tuple(line.split()) for line in fh.read().splitlines()}
        rows = self.db.raw("SELECT unique_key, id FROM {jobs}")
        self.assertEqual(len(rows), 20)
        self.assertEqual(pushed, {(_key_text(k), str(i)) for k, i in rows})

    def test_eight_producers_on_one_key_while_a_worker_finishes_its_holders(self):
        # Each holder's key is freed over and over while 8 producers, each
        # with its own connection, push that key: on InnoDB their INSERT
        # IGNOREs meet on the freed key and deadlock (1213), which dbqueue
        # must run again itself, never raise.
        q = self.db.queue()
        worker = self.start_worker("--import", "dbq_unique_handlers", "-q", "--concurrency", "4")
        end = time.monotonic() + 10
        pushed, most = [], [0]

        def produce():
            mine = self.db.queue(migrate=False)
            while time.monotonic() < end:
                pushed.append(mine.push("u_record", {"key": "hot"}, unique_key="hot"))

        def watch():   # never two waiting or running rows with the key
            conn = self.db.connect()
            try:
                while time.monotonic() < end:
                    cur = conn.cursor()
                    cur.execute("SELECT COUNT(*) FROM %s WHERE unique_key = 'hot'" % self.db.table)
                    most[0] = max(most[0], cur.fetchone()[0])
                    cur.close()
                    if self.db.name == "sqlite":
                        conn.rollback()
                    time.sleep(0.005)
            finally:
                conn.close()

        watcher = threading.Thread(target=watch)
        watcher.start()
        errors = in_threads(produce, 8)
        watcher.join(30)
        self.assertEqual([dbqueue._first_line(e) for e in errors][:5], [])
        self.assertEqual(most[0], 1)
        wait_for(lambda: self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0] == 0, 60,
                 message="the drain")
        worker.terminate()
        self.assertEqual(self.finish(worker), 0, self.stderr(worker)[-2000:])
        ran = [int(line.split()[1]) for line in self.lines()]
        self.assertEqual(len(ran), len(set(ran)), "a job ran twice")
        self.assertEqual(set(pushed) - set(ran), set(), "an id a push returned never ran")
        self.assertGreater(len(pushed), len(ran))     # pushes did meet a live holder
        self.assertEqual(q.failed(), [])


# Concurrent unique pushes meet InnoDB's own locking on MariaDB: run there too.
on_backends(UniqueProcessTests, SQLITE_PG_MARIADB)


class UniqueKeyExactTests:
    """Keys compare exactly, byte for byte, on every database."""

    def test_keys_that_differ_by_trailing_spaces_or_case_are_two_jobs(self):
        q = self.db.queue()
        keys = ["invite:ann", "invite:ann ", "invite:ann  ", "Invite:ann", "invite:änn",
                "invite:a\u0308nn"]
        ids = [q.push("t_record", {}, unique_key=key) for key in keys]
        self.assertEqual(len(set(ids)), len(keys))
        self.assertEqual([q.push("t_record", {}, unique_key=key) for key in keys], ids)
        rows = self.db.raw("SELECT id, unique_key FROM {jobs} ORDER BY id")
        self.assertEqual([(i, _key_text(k)) for i, k in rows], list(zip(ids, keys)))


on_backends(UniqueKeyExactTests)


class UniqueKeyColumnUpgradeTests(unittest.TestCase):
    """MySQL: migrate turns an earlier migrate's VARCHAR key column into VARBINARY."""

    def setUp(self):
        self.db = MariaDBBackend(self)

    def test_migrate_upgrades_the_key_column_once(self):
        # jobs as an earlier dbqueue's migrate made it: a utf8mb4_bin VARCHAR
        # key (PAD SPACE: "k" and "k " were one key).
        self.db.raw('CREATE TABLE "%s" (id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,'
                    " queue VARCHAR(255) NOT NULL, payload LONGTEXT NOT NULL,"
                    " attempts INTEGER NOT NULL DEFAULT 0, reserved_at BIGINT,"
                    " available_at BIGINT NOT NULL, created_at BIGINT NOT NULL,"
                    " reserved_until BIGINT, unique_key VARCHAR(255),"
                    ' UNIQUE KEY "%s_unique" (queue, unique_key))'
                    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
                    % (self.db.table, self.db.table))
        self.db.raw("INSERT INTO {jobs} (queue, payload, available_at, created_at, unique_key)"
                    " VALUES ('default', 'x', 0, 0, 'k é')")
        column = ("SELECT data_type, character_maximum_length FROM information_schema.columns"
                  " WHERE table_schema = DATABASE() AND table_name = '%s'"
                  " AND column_name = 'unique_key'" % self.db.table)
        q = self.db.queue(migrate=False)
        for _ in range(2):
            q.migrate()
            self.assertEqual([tuple(r) for r in self.db.raw(column)], [("varbinary", 1020)])
        held = self.db.raw("SELECT id FROM {jobs}")[0][0]
        self.assertEqual(q.push("t_record", {}, unique_key="k é"), held)
        self.assertNotEqual(q.push("t_record", {}, unique_key="k é "), held)
        self.assertEqual(len(self.db.raw("SELECT id FROM {jobs}")), 2)


class _AppSnapshot:
    """push(connection=app, unique_key=...) inside an app transaction that is
    not at READ COMMITTED, while another producer takes the key."""

    def app(self, level):
        if self.db.name == "mysql":
            app = self.db.app_connect()
            cur = app.cursor()
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL " + level)
            app.commit()
        else:
            app = self.db.connect()
            cur = app.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL " + level)
            app.autocommit = False
        self.addCleanup(app.close)
        cur.execute("SELECT COUNT(*) FROM %s" % self.db.table)    # the snapshot is taken
        cur.fetchall()
        return app

    def finish_and_take_again(self, q, key):
        """The holder finishes and another producer pushes the key: the new holder's id."""
        conn = q.connect()
        jobs, _ = q.reserve(conn, ["default"])
        q.ack(conn, [jobs[0].token])
        return q.push("t_record", {"n": 2}, unique_key=key)


class UniqueRepeatableReadTests(_AppSnapshot):

    def test_mysql_reads_the_latest_holder_at_repeatable_read(self):
        q = self.db.queue()
        first = q.push("t_record", {"n": 1}, unique_key="k")
        app = self.app("REPEATABLE READ")    # MySQL's and MariaDB's default
        second = self.finish_and_take_again(q, "k")
        # The app's snapshot still shows the finished `first`: the answer is the live one.
        self.assertEqual(q.push("t_record", {"n": 3}, connection=app, unique_key="k"), second)
        app.commit()
        # A key first taken after the snapshot: no "holder kept finishing".
        app2 = self.app("REPEATABLE READ")
        other = q.push("t_record", {"n": 4}, unique_key="other")
        self.assertEqual(q.push("t_record", {"n": 5}, connection=app2, unique_key="other"), other)
        app2.commit()
        self.assertEqual(sorted(self.db.raw("SELECT id FROM {jobs}")), [(second,), (other,)])


on_backends(UniqueRepeatableReadTests, MARIADB)


class UniqueSerializationTests(_AppSnapshot):

    def test_postgres_says_to_run_the_transaction_again(self):
        q = self.db.queue()
        for level in ("REPEATABLE READ", "SERIALIZABLE"):
            key = "k:" + level
            q.push("t_record", {"n": 1}, unique_key=key)
            app = self.app(level)
            second = self.finish_and_take_again(q, key)
            with self.assertRaises(dbqueue.DatabaseError, msg=level) as caught:
                q.push("t_record", {"n": 3}, connection=app, unique_key=key)
            error = caught.exception
            self.assertTrue(error.conflict, level)
            self.assertIn("run it again", one_line(self, str(error)))
            app.rollback()
            self.assertEqual(q.push("t_record", {"n": 4}, connection=app, unique_key=key), second)
            app.commit()
            q.clear("default")


on_backends(UniqueSerializationTests, PG)


class UniqueSerializationOtherDriverTests(UniqueSerializationTests):
    """The same, with the app on the other PostgreSQL driver than dbqueue's
    (psycopg2 while the queue uses psycopg 3, and the reverse)."""

    def app(self, level):
        other = {"psycopg": "psycopg2", "psycopg2": "psycopg"}[self.db.driver]
        need(pg_available(other) is None, pg_available(other) or "")
        app = __import__(other).connect(PG_URL)
        self.addCleanup(app.close)
        cur = app.cursor()
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL " + level)
        app.commit()
        cur.execute("SELECT COUNT(*) FROM %s" % self.db.table)    # the snapshot is taken
        cur.fetchall()
        return app


on_backends(UniqueSerializationOtherDriverTests, PG)


class UniqueDeadlockTests:
    """MySQL: pushes of a key whose holder is being deleted can deadlock (1213)."""

    def race(self, push, rounds=10, pushers=4, enough=None):
        """Each round: hold the delete of the key's holder, let `pushers`
        pushes wait on it, then commit the delete. Returns the rounds'
        (ids, errors, ids of the jobs left), stopping early once enough(them)."""
        q = self.db.queue()
        deleter = self.db.connect()
        self.addCleanup(deleter.close)
        cur = deleter.cursor()
        waiting = ("SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE %s",
                   ("INSERT IGNORE INTO `%s`%%" % self.db.table,))
        out = []
        for n in range(rounds):
            key = "k%d" % n
            holder = q.push("t_record", {}, unique_key=key)
            cur.execute("START TRANSACTION")
            cur.execute('DELETE FROM "%s" WHERE id = %%s' % self.db.table, (holder,))
            results, errors = [], []

            def run():
                try:
                    results.append(push(q, key))
                except Exception as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run) for _ in range(pushers)]
            for t in threads:
                t.start()
            wait_for(lambda: self.db.raw(*waiting)[0][0] == pushers, 20,
                     message="the waiting pushes")
            cur.execute("COMMIT")
            for t in threads:
                t.join(60)
            left = self.db.raw('SELECT id FROM {jobs} WHERE unique_key = %s', (key,))
            out.append((results, errors, [r[0] for r in left]))
            if enough and enough(out):
                break
        return out

    def test_dbqueue_runs_its_own_push_again(self):
        def push(q, key):
            mine = self.db.queue(migrate=False)     # a connection of its own
            try:
                return mine.push("t_record", {}, unique_key=key)
            finally:
                mine.close()
        for results, errors, left in self.race(push):
            self.assertEqual([dbqueue._first_line(e) for e in errors], [])
            self.assertEqual(len(left), 1)
            self.assertEqual(set(results), set(left))

    def test_inside_the_apps_transaction_it_says_to_run_that_again(self):
        def push(q, key):
            app = self.db.app_connect()
            try:
                job = q.push("t_record", {}, connection=app, unique_key=key)
                app.commit()
                return job
            except BaseException:
                app.rollback()
                raise
            finally:
                app.close()
        # Whether a round deadlocks is a race of its own (1 round in 3 here).
        rounds = self.race(push, rounds=100,
                           enough=lambda out: sum(len(r[1]) for r in out) >= 3)
        deadlocks = 0
        for results, errors, left in rounds:
            self.assertEqual(len(left), 1)
            self.assertEqual(set(results), set(left))
            for error in errors:
                self.assertIsInstance(error, dbqueue.DatabaseError)
                self.assertTrue(error.conflict)
                self.assertIn("run it again", one_line(self, str(error)))
                deadlocks += 1
        self.assertGreater(deadlocks, 0, "no deadlock in 100 rounds")


on_backends(UniqueDeadlockTests, MARIADB)


class TimedSink(SMTPSink):
    """An SMTPSink that also notes when (time.time()) each message arrived."""

    def __init__(self, testcase, **kw):
        self.times = []
        super().__init__(testcase, **kw)

    async def handle_DATA(self, server, session, envelope):
        self.times.append(time.time())
        return await super().handle_DATA(server, session, envelope)


def busiest_window(times, seconds):
    """The most messages that arrived within any `seconds`-long window."""
    times = sorted(times)
    most, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


@on_backends
class RateLimitTests(EmailTestMixin):

    def test_waiting_in_the_handler_keeps_every_window_within_the_limit(self):
        sink = TimedSink(self)
        q = self.mail_queue(sink, mail_rate_limit="3/s")
        for n in range(9):
            dbqueue.queue_email("ann@example.com", "n%d" % n, text="x", using=q)
        started = time.monotonic()
        _, log = self.work(q)
        self.assertEqual(len(sink.times), 9)
        # Never more than 3 in a second (a slot is stamped when its send ended, so
        # arrivals cannot bunch); fewer when a loaded machine sends slower.
        self.assertLessEqual(busiest_window(sink.times, 1.0), 3)
        self.assertGreaterEqual(time.monotonic() - started, 2.0)
        # Each waited for its slot inside its first attempt: none given back, none retried.
        self.assertEqual(log.count("attempt=1/3 outcome=done"), 9, log)
        self.assertNotIn("released", log)
        self.assertEqual(q.rate_use()["used"], 3)
        self.assertEqual(self.slots(), 3)

    def test_a_long_wait_gives_the_job_back_with_its_attempt_unspent(self):
        sink = SMTPSink(self)
        clock = Clock()
        q = self.mail_queue(sink, clock=clock, mail_rate_limit="1/h")
        for n in range(3):
            dbqueue.queue_email("ann@example.com", "n%d" % n, text="x", using=q)
        _, log = self.work(q)
        self.assertEqual(len(sink.messages), 1)
        # An hour is counted in 2-minute slices (the clock stands at the start
        # of one): the message's slice leaves the window 31 slices on.
        self.assertIn("MAIL_RATE_LIMIT 1/h: the next message may leave in 3720.0s", log)
        self.assertEqual(log.count("outcome=released"), 2, log)
        rows = self.db.raw("SELECT attempts, available_at FROM {jobs} ORDER BY id")
        # With no attempt spent, and back in whole seconds no later than the
        # window has room again.
        self.assertEqual(rows, [(0, clock.now + 3720), (0, clock.now + 3720)])
        window = {"limit": "1/h", "messages": 1, "window_seconds": 3600, "used": 1}
        self.assertEqual(q.rate_use(), dict(window, windows=[window]))
        clock.advance(3721)
        self.assertEqual(q.rate_use()["used"], 0)
        self.work(q)
        self.assertEqual(len(sink.messages), 2)
        self.assertEqual(self.db.raw("SELECT attempts FROM {jobs}"), [(0,)])
        self.assertEqual(q.failed(), [])

    def setUp(self):
        self.addCleanup(self.forget_slots)

    def slots(self, verb="SELECT COUNT(*) FROM"):
        # One ring per jobs table: the tests' tables are their own. Send
        # slots only: MySQL's lock row is slot -1.
        rows = self.db.raw("%s dbqueue_rate WHERE name LIKE %s AND slot >= 0"
                           % (verb, self.db.param), (self.db.table + " %",))
        return rows[0][0] if rows else None

    def forget_slots(self):
        try:
            self.slots("DELETE FROM")
        except Exception:
            pass    # skipped before the tables were made

    def test_no_limit_takes_no_slots(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        dbqueue.queue_email("ann@example.com", "n", text="x", using=q)
        self.work(q)
        self.assertEqual(len(sink.messages), 1)
        self.assertEqual(self.slots(), 0)
        self.assertIsNone(q.rate_use())

    def test_stats_shows_the_current_use(self):
        sink = SMTPSink(self)
        clock = Clock()
        q = self.mail_queue(sink, clock=clock, mail_rate_limit="2/d")
        dbqueue.queue_email("ann@example.com", "n", text="x", using=q)
        self.work(q)
        q.push("t_record", {})
        env = self.db.env(MAIL_RATE_LIMIT="2/d")
        code, out, err = run_main(["stats"], env)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("MAIL_RATE_LIMIT 2/d: 1 of 2 messages used in the last day", out)
        stats = json.loads(run_main(["stats", "--json"], env)[1])
        # emails has no job left; the sent log lists it for its mail.
        self.assertEqual([s["queue"] for s in stats], ["default", "emails"])
        window = {"limit": "2/d", "messages": 2, "window_seconds": 86400, "used": 1}
        self.assertEqual(stats[0]["mail_rate"], dict(window, windows=[window]))
        prom = run_main(["stats", "--format", "prometheus"], env)[1]
        self.assertIn('dbqueue_mail_rate_used{limit="2/d"} 1\n', prom)
        self.assertIn('dbqueue_mail_rate_limit{limit="2/d"} 2\n', prom)
        code, out, _ = run_main(["stats"], self.db.env())     # no limit: no line
        self.assertNotIn("MAIL_RATE_LIMIT", out)


on_backends(RateLimitTests, PGBOUNCER)


class RateLimitWindowsTests(EmailTestMixin):
    """MAIL_RATE_LIMIT with several windows: a message leaves only when every
    one has room; a window of a minute or more is a few counters."""

    def setUp(self):
        self.addCleanup(RateLimitTests.forget_slots, self)

    def rows(self, window):
        return self.db.raw("SELECT slot, sent_at FROM dbqueue_rate WHERE name = %s AND slot >= 0"
                           " ORDER BY slot" % self.db.param, (self.db.table + " mail " + window,))

    def windows(self, q):
        return [(dbqueue._rate_name(q.config, "%d/%s" % (count, dbqueue._RATE_UNITS[seconds])),
                 count, seconds * 1000) for count, seconds in
                dbqueue._rate_limit(q.config.mail_rate_limit)]

    def used(self, q):
        return {w["limit"]: w["used"] for w in q.rate_use()["windows"]}

    def test_a_message_leaves_only_when_every_window_has_room(self):
        sink = SMTPSink(self)
        clock = Clock()          # at the start of a 2-second slice of the minute
        q = self.mail_queue(sink, clock=clock, mail_rate_limit="100/s,3/m")
        for n in range(5):
            dbqueue.queue_email("ann@example.com", "n%d" % n, text="x", using=q)
        _, log = self.work(q)
        self.assertEqual(sink.subjects(), ["n0", "n1", "n2"])
        self.assertIn("MAIL_RATE_LIMIT 100/s,3/m: the next message may leave in 62.0s", log)
        self.assertEqual(self.db.raw("SELECT attempts, available_at FROM {jobs} ORDER BY id"),
                         [(0, clock.now + 62)] * 2)
        use = q.rate_use()
        self.assertEqual(self.used(q), {"100/s": 3, "3/m": 3})
        self.assertEqual((use["limit"], use["messages"], use["window_seconds"], use["used"]),
                         ("100/s,3/m", 3, 60, 3))         # the window nearest to full
        clock.advance(61)
        self.assertEqual(self.used(q), {"100/s": 0, "3/m": 3})
        clock.advance(1)
        _, log = self.work(q)
        self.assertEqual(len(sink.messages), 5, log)
        self.assertEqual(self.used(q), {"100/s": 2, "3/m": 2})
        self.assertEqual(q.failed(), [])

    def test_windows_are_taken_together_or_not_at_all(self):
        clock = Clock()
        q = self.db.queue(clock=clock, mail_rate_limit="1/s,2/m")
        windows = self.windows(q)
        q.rate_sent(q.rate_take(windows, 60000)[0], windows)
        taken, wait_ms = q.rate_take(windows, 60000)          # the second is full
        self.assertIsNone(taken)
        self.assertEqual(wait_ms, 1001)
        self.assertEqual(self.used(q), {"1/s": 1, "2/m": 1})  # the minute was not counted
        clock.advance(2)
        q.rate_sent(q.rate_take(windows, 60000)[0], windows)
        clock.advance(2)
        taken, wait_ms = q.rate_take(windows, 60000)          # the minute is full
        self.assertIsNone(taken)
        self.assertEqual(wait_ms, 58000)
        self.assertEqual(len(self.rows("1/s")), 1)             # no second slot of the ring
        self.assertEqual(self.used(q), {"1/s": 0, "2/m": 2})

    def test_a_day_is_thirty_counters_not_a_row_per_message(self):
        clock = Clock()
        q = self.db.queue(clock=clock, mail_rate_limit="50000/d")
        windows = self.windows(q)
        for n in range(200):
            q.rate_sent(q.rate_take(windows, 60000)[0], windows)
            clock.advance(600)        # 200 messages over 33 hours: 10 minutes apart
        rows = self.rows("50000/d")
        self.assertLessEqual(len(rows), 31)
        # The last day's 143, and those of the 48-minute slice it began in.
        self.assertGreaterEqual(self.used(q)["50000/d"], 143)
        self.assertLessEqual(self.used(q)["50000/d"], 148)
        clock.advance(86400 + 2880)
        self.assertEqual(self.used(q)["50000/d"], 0)
        q.rate_sent(q.rate_take(windows, 60000)[0], windows)
        self.assertEqual(len(self.rows("50000/d")), 1)         # the old slices dropped

    def test_a_send_counts_in_the_slice_where_it_ended(self):
        clock = Clock()
        q = self.db.queue(clock=clock, mail_rate_limit="10/m")
        windows = self.windows(q)
        taken, _ = q.rate_take(windows, 60000)
        slice_ = clock.now * 1000 // 2000
        self.assertEqual(self.rows("10/m"), [(slice_, 1)])
        clock.advance(3)          # the send ended two slices later
        q.rate_sent(taken, windows)
        self.assertEqual(self.rows("10/m"), [(slice_, 0), (slice_ + 1, 1)])
        clock.advance(59)         # 62 s after it began, 59 s after it ended: still counted
        self.assertEqual(self.used(q), {"10/m": 1})


on_backends(RateLimitWindowsTests)
on_backends(RateLimitWindowsTests, PGBOUNCER)


class RateLimitSendmailTests(EmailTestMixin, unittest.TestCase):

    def setUp(self):
        self.db = Backend(self)

    def test_sendmail_is_limited_too(self):
        stamps = os.path.join(self.db.tmp, "stamps")
        script = os.path.join(self.db.tmp, "fake-sendmail")
        with open(script, "w") as fh:
            fh.write("#!%s\nimport sys, time\nsys.stdin.read()\n"
                     "open(%r, 'a').write('%%f\\n' %% time.time())\n" % (sys.executable, stamps))
        os.chmod(script, 0o700)
        q = self.db.queue(mail_mailer="sendmail", mail_sendmail_path=script,
                          mail_rate_limit="2/s", mail_from_address="app@example.com")
        for n in range(5):
            dbqueue.queue_email("ann@example.com", "n%d" % n, text="x", using=q)
        _, log = self.work(q)
        with open(stamps) as fh:
            times = [float(line) for line in fh.read().split()]
        self.assertEqual(len(times), 5, log)
        self.assertLessEqual(busiest_window(times, 1.0), 2)
        self.assertGreaterEqual(max(times) - min(times), 2.0)     # the 5th waited for the 3rd


class RateLimitSchemaTests(unittest.TestCase):

    def test_a_version_2_sqlite_database_without_the_slots_table_gets_it(self):
        db = Backend(self)
        db.queue().close()
        db.raw("DROP TABLE dbqueue_rate")       # as made before MAIL_RATE_LIMIT existed
        db.queue(migrate=False).push("t_record", {})
        self.assertEqual(db.raw("SELECT COUNT(*) FROM dbqueue_rate"), [(0,)])

    def test_a_worker_with_a_limit_names_migrate_when_the_table_is_missing(self):
        db = Backend(self)
        db.queue().close()
        db.raw("DROP TABLE dbqueue_rate")
        q = dbqueue.Queue(config=db.config(mail_rate_limit="14/s"))
        self.addCleanup(q.close)
        conn = q.dialect.connect(q._target)     # a connection that does not migrate
        self.addCleanup(conn.close)
        with self.assertRaises(dbqueue.MissingTableError) as caught:
            q.check(conn)
        self.assertIn("migrate", str(caught.exception))
        q.config.mail_rate_limit = ""
        self.assertTrue(q.check(conn))


class RateLimitSettingTests(unittest.TestCase):

    def test_values(self):
        for value, expected in (("14/s", [(14, 1)]), ("600/m", [(600, 60)]),
                                (" 10000 / h ", [(10000, 3600)]), ("50000/d", [(50000, 86400)]),
                                ("", None)):
            config = dbqueue.Config.from_env({"MAIL_RATE_LIMIT": value}, os.devnull)
            self.assertEqual(dbqueue._rate_limit(config.mail_rate_limit), expected, value)

    def test_a_bad_value_is_one_line_naming_the_variable_and_exit_2(self):
        tmp = tempfile.mkdtemp(prefix="dbqueue-rate-")
        self.addCleanup(shutil.rmtree, tmp, True)
        db = os.path.join(tmp, "q.db")
        for bad in ("14", "14/x", "0/s", "-1/s", "abc", "14/s/2", "1.5/s", "14/S", "14/sec",
                    "14\n/s"):
            for argv in (["work", "--once"], ["stats"], ["push", "t_record"]):
                line = assert_refused(self, run_main(argv, {"QUEUE_DATABASE_URL": "sqlite:///" + db,
                                                            "MAIL_RATE_LIMIT": bad}),
                                      db, context=(bad, argv))
                self.assertIn("MAIL_RATE_LIMIT", line)


class RateLimitWindowsSettingTests(unittest.TestCase):

    def test_several_windows_at_once(self):
        for value, normal, expected in (
                ("14/s,50000/d", "14/s,50000/d", [(14, 1), (50000, 86400)]),
                (" 50000/d , 14 / s ", "50000/d,14/s", [(14, 1), (50000, 86400)]),
                ("10000/h,600/m,50000/d,14/s", "10000/h,600/m,50000/d,14/s",
                 [(14, 1), (600, 60), (10000, 3600), (50000, 86400)])):
            config = dbqueue.Config.from_env({"MAIL_RATE_LIMIT": value}, os.devnull)
            self.assertEqual(config.mail_rate_limit, normal)
            self.assertEqual(dbqueue._rate_limit(config.mail_rate_limit), expected, value)

    def test_a_bad_list_is_one_line_naming_the_variable_and_exit_2(self):
        tmp = tempfile.mkdtemp(prefix="dbqueue-rate-")
        self.addCleanup(shutil.rmtree, tmp, True)
        db = os.path.join(tmp, "q.db")
        for bad, says in (("14/s,20/s", "twice"), ("14/s, 1/m ,2/m", "twice"),
                          ("14/s,0/m", "such as"), ("14/s,", "such as"), ("14/s,,1/m", "such as"),
                          ("14/s;600/m", "such as"), ("14/s,abc", "such as")):
            for argv in (["work", "--once"], ["stats"]):
                code, out, err = run_main(argv, {"QUEUE_DATABASE_URL": "sqlite:///" + db,
                                                 "MAIL_RATE_LIMIT": bad})
                self.assertEqual(code, 2, (bad, argv, err))
                one_line(self, err)
                self.assertIn("MAIL_RATE_LIMIT=%s" % bad, err)
                self.assertIn(says, err)
        self.assertFalse(os.path.exists(db))


@on_backends(SQLITE_PG)
class RateLimitProcessTests(_WorkerProcesses):

    def setUp(self):
        self.process_setup()
        self.addCleanup(RateLimitTests.forget_slots, self)

    def test_the_limit_holds_across_two_worker_processes(self):
        sink = TimedSink(self)
        q = self.db.queue()
        for n in range(16):
            dbqueue.queue_email("ann@example.com", "n%d" % n, text="x", using=q)
        mail = dict(MAIL_HOST="127.0.0.1", MAIL_PORT=sink.port, MAIL_RATE_LIMIT="4/s",
                    MAIL_FROM_ADDRESS="app@example.com")
        workers = [self.start_worker("--queue", "emails", "--stop-when-empty", **mail)
                   for _ in range(2)]
        for proc in workers:
            self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc)[-2000:])
        self.assertEqual(len(sink.times), 16)
        self.assertLessEqual(busiest_window(sink.times, 1.0), 4)
        self.assertGreaterEqual(max(sink.times) - min(sink.times), 3.0)
        logs = [self.stderr(proc) for proc in workers]
        for log in logs:
            self.assertGreater(log.count("outcome=done"), 0, "one worker sent nothing")
            self.assertNotIn("released", log)
        self.assertEqual(sum(log.count("attempt=1/3 outcome=done") for log in logs), 16)


class RateLimitWindowsProcessTests(_WorkerProcesses):

    def setUp(self):
        self.process_setup()
        self.addCleanup(RateLimitTests.forget_slots, self)

    def test_every_window_holds_across_two_worker_processes(self):
        sink = TimedSink(self)
        q = self.db.queue()
        subjects = ["n%02d" % n for n in range(15)]
        for subject in subjects:
            dbqueue.queue_email("ann@example.com", subject, text="x", using=q)
        mail = dict(MAIL_HOST="127.0.0.1", MAIL_PORT=sink.port, MAIL_RATE_LIMIT="5/s,12/m",
                    MAIL_FROM_ADDRESS="app@example.com")
        workers = [self.start_worker("--queue", "emails", **mail) for _ in range(2)]
        # Twelve leave at once (five a second), the rest a minute after the first.
        wait_for(lambda: len(sink.messages) == 15, 180, message="every mail")
        wait_for(lambda: self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0] == 0, 30,
                 message="the jobs to be deleted")
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(self.finish(proc), 0, self.stderr(proc)[-2000:])
        self.assertEqual(sink.subjects(), subjects)
        self.assertLessEqual(busiest_window(sink.times, 1.0), 5)
        self.assertEqual(busiest_window(sink.times, 60.0), 12)
        self.assertGreaterEqual(max(sink.times) - min(sink.times), 60.0)
        logs = [self.stderr(proc) for proc in workers]
        self.assertEqual(sum(log.count("attempt=1/3 outcome=done") for log in logs), 15, logs)
        self.assertIn("MAIL_RATE_LIMIT 5/s,12/m: the next message may leave in", "".join(logs))


on_backends(RateLimitWindowsProcessTests, SQLITE_PG_MARIADB)


class ThrottleSink(PostfixSink):
    """A PostfixSink that notes (time.time(), reply) of every DATA; a
    provider's throttling replies go in `data_replies` or `rcpt_script`."""

    SES = "454 4.7.0 Throttling failure: Maximum sending rate exceeded."
    POSTFIX = "421 4.7.0 Too many messages"

    def __init__(self, testcase, **kw):
        self.answers = []
        super().__init__(testcase, **kw)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        self.answers.append((time.time(), reply))
        return reply


class MailThrottleTests(EmailTestMixin):
    """A reply that says we send too fast: the job goes back unspent, and the
    queue's sends are spaced by a wait that doubles until one is accepted."""

    def setUp(self):
        self.addCleanup(self.forget_throttle)

    def forget_throttle(self):
        try:
            self.db.raw("DELETE FROM dbqueue_state WHERE name = %s" % self.db.param,
                        ("mail_throttle:" + self.db.table,))
        except Exception:
            pass    # skipped before the tables were made

    def jobs(self):
        return self.db.raw("SELECT id, attempts, available_at, reserved_at FROM {jobs} ORDER BY id")

    def test_ses_throttling_spends_nothing_and_the_wait_doubles_until_one_is_accepted(self):
        sink = ThrottleSink(self)
        sink.data_replies = [sink.SES, sink.SES]
        q = self.mail_queue(sink)
        for n in range(3):
            dbqueue.queue_email("ann@example.com", "n%d" % n, text="x", using=q)
        before = self.jobs()
        worker, log = self.work(q)      # --stop-when-empty: a throttling ends the run, exit 1
        self.assertEqual(worker.exit_code, 1)
        self.assertEqual(log.count("mail server throttling: the job was given back unspent;"
                                   " stopping"), 1, log)
        self.assertEqual(self.jobs(), before)     # no attempt spent; order and age kept
        self.assertEqual(q.failed(), [])
        throttle = q.mail_throttle()
        self.assertEqual(list(throttle), ["emails"])
        self.assertEqual(throttle["emails"]["wait"], 1)
        self.assertIn("454 4.7.0 Throttling failure: Maximum sending rate exceeded. (throttled)",
                      throttle["emails"]["error"])
        env = self.db.env()
        out = run_main(["stats"], env)[1]
        self.assertIn("queue emails is throttled by the mail server: next send in", out)
        self.assertIn("1s between sends", out)
        stats = {s["queue"]: s for s in json.loads(run_main(["stats", "--json"], env)[1])}
        self.assertEqual(stats["emails"]["mail_throttle"]["wait"], 1)
        self.assertIn('dbqueue_mail_throttle_wait_seconds{queue="emails"} 1\n',
                      run_main(["stats", "--format", "prometheus"], env)[1])
        page = DashboardClient(start_dashboard(self, q)).get("/").text
        self.assertIn('<p class="note warn">Queue emails is throttled by the mail server: next'
                      ' send in', page)
        # The next run waits for the queue's turn, a second on, and is throttled again.
        worker, log = self.work(q)
        self.assertEqual(worker.exit_code, 1, log)
        self.assertEqual(q.mail_throttle()["emails"]["wait"], 2)
        self.assertGreaterEqual(sink.answers[1][0] - sink.answers[0][0], 1.0)
        self.assertEqual(self.jobs(), before)
        # Then two seconds; that one is accepted, and the rest go at full speed.
        worker, log = self.work(q)
        self.assertEqual(worker.exit_code, 0, log)
        self.assertGreaterEqual(sink.answers[2][0] - sink.answers[1][0], 2.0)
        self.assertEqual(sink.subjects(), ["n0", "n1", "n2"])
        self.assertEqual(log.count("attempt=1/3 outcome=done"), 3, log)
        self.assertEqual(log.count("the mail server accepts mail again"), 1, log)
        self.assertEqual(q.mail_throttle(), {})
        self.assertNotIn("throttled", run_main(["stats"], env)[1])

    def run_worker(self, q, jobs):
        """A worker that keeps going (no --stop-when-empty) until `jobs` are done."""
        log = quiet_log()
        worker = dbqueue.Worker(q, ["emails"], log=log, backoff="0")
        worker.run(max_jobs=jobs, max_time=60)
        return worker, log.stream.getvalue()

    def test_a_421_throttle_closes_the_session_and_a_454_keeps_it(self):
        for reply, sessions in ((ThrottleSink.POSTFIX, 2), (ThrottleSink.SES, 1)):
            with self.subTest(reply=reply):
                sink = ThrottleSink(self)
                sink.data_replies = [reply]
                q = self.mail_queue(sink)
                for n in range(2):
                    dbqueue.queue_email("ann@example.com", "n%d" % n, text="x", using=q)
                worker, log = self.run_worker(q, 2)
                self.assertEqual(sink.subjects(), ["n0", "n1"], log)
                self.assertEqual([r[:3] for _, r in sink.answers], [reply[:3], "250", "250"])
                self.assertEqual(sink.connections, sessions)
                self.assertEqual(log.count("mail server throttling: sending on this queue slows"
                                           " down for every worker"), 1, log)
                self.assertEqual(log.count("attempt=1/3 outcome=done"), 2, log)
                self.assertEqual(log.count("the mail server accepts mail again"), 1, log)
                self.assertEqual(q.mail_throttle(), {})

    def test_a_throttling_reply_to_rcpt_sends_the_message_to_nobody_yet(self):
        sink = ThrottleSink(self)
        sink.rcpt_script = {"bob@example.com": ["450 4.7.1 Error: too many recipients from"
                                                " 127.0.0.1"]}
        q = self.mail_queue(sink)
        dbqueue.queue_email(["ann@example.com", "bob@example.com"], "n0", text="x", using=q)
        worker, log = self.run_worker(q, 1)
        self.assertEqual(len(sink.messages), 1, log)          # once, to both, after the wait
        self.assertEqual(sink.messages[0][0][1], ["ann@example.com", "bob@example.com"])
        self.assertEqual(log.count("attempt=1/3 outcome=done"), 1, log)

    @sqlite_only
    def test_which_replies_are_throttling(self):
        import smtplib
        config = dbqueue.Config(mail_host="mx", mail_port=25)
        for exc, kind in (
                (smtplib.SMTPDataError(454, b"4.7.0 Throttling failure: Maximum sending rate"
                                            b" exceeded."), "_MailThrottle"),
                (smtplib.SMTPSenderRefused(421, b"4.7.0 Too many messages", "a@x"),
                 "_MailThrottle"),
                (smtplib.SMTPSenderRefused(450, b"4.7.1 Error: too much mail from 10.0.0.1",
                                           "a@x"), "_MailThrottle"),
                (smtplib.SMTPDataError(421, b"4.7.28 Our system has detected an unusual rate of"
                                            b" unsolicited mail"), "_MailThrottle"),
                (smtplib.SMTPDataError(451, b"4.7.1 Daily sending QUOTA reached"),
                 "_MailThrottle"),
                (smtplib.SMTPDataError(450, b"Requested action aborted: limit exceeded"),
                 "_MailThrottle"),
                (smtplib.SMTPConnectError(421, b"4.7.0 mx Error: too many connections from"
                                               b" 10.0.0.1"), "_MailThrottle"),
                # Not ours: a mailbox's, this message's, or no word of rates.
                (smtplib.SMTPDataError(452, b"4.2.2 The email account is over quota"),
                 "QueueError"),
                (smtplib.SMTPDataError(450, b"4.2.1 The user is receiving mail at a rate that"
                                            b" prevents additional messages"), "QueueError"),
                (smtplib.SMTPDataError(452, b"4.5.3 Too many recipients"), "QueueError"),
                (smtplib.SMTPDataError(451, b"4.3.0 Could not generate a queue file"),
                 "QueueError"),
                (smtplib.SMTPDataError(421, b"4.3.2 Service not available"), "_MailOutage"),
                (smtplib.SMTPDataError(554, b"5.7.1 Sending rate exceeded"), "PermanentError")):
            with self.subTest(reply=exc.smtp_error):
                stage = "session" if isinstance(exc, smtplib.SMTPConnectError) else "transaction"
                self.assertEqual(type(dbqueue._smtp_error(exc, config, stage)).__name__, kind)


on_backends(MailThrottleTests)
on_backends(MailThrottleTests, PGBOUNCER)


class MailThrottleProcessTests(_WorkerProcesses, EmailTestMixin):

    def setUp(self):
        self.process_setup()
        self.addCleanup(MailThrottleTests.forget_throttle, self)

    def test_every_worker_waits_the_doubling_wait_and_every_mail_goes_once(self):
        sink = ThrottleSink(self)
        sink.data_replies = [sink.SES, sink.POSTFIX, sink.SES]
        q = self.mail_queue(sink)
        mail = dict(MAIL_HOST="127.0.0.1", MAIL_PORT=sink.port,
                    MAIL_FROM_ADDRESS="app@example.com")
        workers = [self.start_worker("--queue", "emails", "--concurrency", "2", **mail)
                   for _ in range(2)]
        subjects = ["m%d" % n for n in range(8)]
        dbqueue.queue_email("ann@example.com", subjects[0], text="x", using=q)
        wait_for(lambda: q.mail_throttle().get("emails"), 30, message="the throttling")
        # Both workers' slots now take these, and wait for the queue's turns.
        for subject in subjects[1:]:
            dbqueue.queue_email("ann@example.com", subject, text="x", using=q)
        self.assertIn("queue emails is throttled by the mail server",
                      run_main(["stats"], self.db.env())[1])
        wait_for(lambda: len(sink.messages) == 8, 90, message="every mail")
        wait_for(lambda: self.jobs_left() == 0, 30, message="the jobs to be deleted")
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(self.finish(proc), 0, self.stderr(proc)[-2000:])
        self.assertEqual(sink.subjects(), subjects)
        self.assertEqual([r[:3] for _, r in sink.answers], ["454", "421", "454"] + ["250"] * 8)
        # Nothing was offered between the turns: 1, 2, then 4 seconds apart.
        times = [t for t, _ in sink.answers]
        for n, wait in enumerate((1.0, 2.0, 4.0)):
            self.assertGreaterEqual(times[n + 1] - times[n], wait)
        logs = "".join(self.stderr(proc) for proc in workers)
        self.assertEqual(logs.count("attempt=1/3 outcome=done"), 8, logs)
        self.assertNotIn("outcome=failed", logs)
        self.assertEqual(logs.count("mail server throttling: sending on this queue slows down"), 1,
                         logs)
        self.assertEqual(logs.count("the mail server accepts mail again"), 1, logs)
        self.assertEqual(q.mail_throttle(), {})
        self.assertEqual(q.failed(), [])


on_backends(MailThrottleProcessTests, SQLITE_PG_MARIADB)


_LOCK_HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
sys.stdout.write("held\n")
sys.stdout.flush()
sys.stdin.readline()          # hold it until the test says
"""

_PLAIN_PRODUCER = r"""
import sys
sys.path.insert(0, sys.argv[1])
import dbqueue
q = dbqueue.Queue.from_env()
ids = [q.push("t_record", {"p": sys.argv[3], "n": n}) for n in range(int(sys.argv[2]))]
print(" ".join(map(str, ids)))
"""


class SQLitePushLockTests(unittest.TestCase):
    """push() on SQLite queues behind other producers on a file lock (see _SQLite.push_lock)."""

    def setUp(self):
        self.db = Backend(self)
        self.path = self.db.url[len("sqlite:///"):]

    def test_the_lock_file_sits_beside_the_database_with_its_mode(self):
        q = self.db.queue()
        lock = self.path + "-dbqueue.lock"
        q.stats()
        self.assertFalse(os.path.exists(lock))     # made by the first push, not by reading
        q.push("t_record", {})
        self.assertEqual(os.stat(lock).st_mode & 0o777, 0o600)    # as dbqueue made the database
        q.close()
        os.rmdir(lock)
        os.chmod(self.path, 0o640)                                 # as the app's deploy set it
        q.push("t_record", {})
        self.assertTrue(os.path.isdir(lock))
        self.assertEqual(os.stat(lock).st_mode & 0o777, 0o640)
        q.close()                      # closes the lock's file too
        self.assertEqual([f for f in os.listdir("/proc/self/fd")
                          if os.path.realpath("/proc/self/fd/" + f) == os.path.realpath(lock)], [])

    def test_the_lock_does_not_show_in_git_status_of_the_project(self):
        need(shutil.which("git") is not None, "git is not installed")
        git = ["git", "-C", self.db.tmp]
        subprocess.run(git + ["init", "-q"], check=True)
        with open(os.path.join(self.db.tmp, ".gitignore"), "w") as fh:
            fh.write("queue.db\nqueue.db-wal\nqueue.db-shm\n.gitignore\n")
        q = self.db.queue()
        q.push("t_record", {})
        status = subprocess.run(git + ["status", "--porcelain", "--untracked-files=all"],
                                capture_output=True, text=True, check=True)
        self.assertEqual(status.stdout, "")
        # A lock file that dbqueue 1.1 made is still the lock (old and new processes agree).
        q.close()
        os.rmdir(self.path + "-dbqueue.lock")
        open(self.path + "-dbqueue.lock", "w").close()
        q.push("t_record", {})
        self.assertIsNotNone(q._push_lock())

    def test_a_push_waits_while_another_process_holds_the_lock(self):
        q = self.db.queue()
        q.push("t_record", {"n": 0})       # makes the lock file
        holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, self.path + "-dbqueue.lock"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.stdout.close)     # no ResourceWarning for its pipes
        self.addCleanup(holder.stdin.close)
        self.addCleanup(lambda: holder.poll() is None and holder.kill())
        self.assertEqual(holder.stdout.readline(), "held\n")
        pushed = []
        thread = threading.Thread(target=lambda: pushed.append(q.push("t_record", {"n": 1})))
        thread.start()
        thread.join(0.5)
        self.assertTrue(thread.is_alive(), "push did not wait for the lock")
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 1)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        thread.join(10)
        self.assertEqual(len(pushed), 1)
        self.assertEqual(holder.wait(10), 0)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 2)

    def test_without_a_lock_file_pushes_still_work(self):
        os.symlink(os.path.join(self.db.tmp, "no", "such", "dir"), self.path + "-dbqueue.lock")
        q = self.db.queue()
        ids = [q.push("t_record", {"n": n}) for n in range(3)]
        q.push("t_record", {}, unique_key="k")
        self.assertIsNone(q._push_lock())
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 4)

    def test_eight_producer_processes_push_every_job_once(self):
        self.db.queue()
        env = clean_env()
        env.update(self.db.env())
        procs = [subprocess.Popen([sys.executable, "-c", _PLAIN_PRODUCER, HERE, "250", str(p)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for p in range(8)]
        ids = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, err[-2000:])
            ids += [int(i) for i in out.split()]
        rows = self.db.raw("SELECT id FROM {jobs}")
        self.assertEqual(len(ids), 2000)
        self.assertEqual(sorted(ids), sorted(r[0] for r in rows))


# Handlers that push from inside a worker, for SQLitePushInterruptTests: one
# Queue per process, as an app has, so its slots share one push lock.
_PUSHING_HANDLERS = """
import os, time
import dbqueue

_queue = []


def mark(*parts):
    fd = os.open(os.environ["T_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (" ".join(str(p) for p in parts) + "\\n").encode())
    finally:
        os.close(fd)


def push():
    if not _queue:
        _queue.append(dbqueue.Queue.from_env())
    _queue[0].push("i_noop", {}, queue="sink")


@dbqueue.job("i_push_loop")
def push_loop(data):
    while True:         # until its timeout interrupts it, at any bytecode of push()
        push()


@dbqueue.job("i_push_once")
def push_once(data):
    started = time.monotonic()
    try:
        push()
    except Exception as exc:
        mark("failed", data["n"], "%.1fs" % (time.monotonic() - started), exc)
    else:
        mark("pushed", data["n"])
"""


class SQLitePushInterruptTests(_WorkerProcesses, unittest.TestCase):
    """A handler's timeout lands anywhere inside push(): no lock stays held.

    Each round: every slot of a `work --concurrency N` process runs a handler
    that pushes in a loop until its timeout (1 s) interrupts it; then each
    slot runs a job that pushes once, and this process pushes too while the
    worker still runs (a file lock left held would block it).
    """

    def setUp(self):
        self.db = Backend(self)
        self.process_setup()
        with open(os.path.join(self.ptmp, "dbq_pushing_handlers.py"), "w") as fh:
            fh.write(_PUSHING_HANDLERS)

    def rounds(self, count, slots):
        q = self.db.queue()
        for n in range(count):
            q.push_many("i_push_loop", [{}] * slots)
            q.push_many("i_push_once", [{"n": "%d.%d" % (n, i)} for i in range(slots)],
                        queue="after", timeout=60)      # time to say how a push failed
            proc = self.start_worker("--import", "dbq_pushing_handlers", "--queue", "default,after",
                                     "--concurrency", str(slots), QUEUE_TIMEOUT=1,
                                     QUEUE_MAX_ATTEMPTS=1)
            wait_for(lambda: len(self.lines()) == slots * (n + 1), 60,
                     message="round %d's single pushes" % n)
            q.push("i_noop", {}, queue="sink")    # another process: no flock() left held
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(self.finish(proc), 0, self.stderr(proc))
            self.assertEqual([line for line in self.lines() if not line.startswith("pushed")], [],
                             "round %d" % n)
        # The looping handlers all ended by their timeout, none by a lock left held.
        failed = q.failed()
        self.assertEqual(len(failed), count * slots)
        for row in failed:
            self.assertIn("JobTimeout", row["exception"].splitlines()[-1])

    def test_pushes_work_after_timeouts_interrupt_pushing_handlers(self):
        self.rounds(2, 8)

    @heavy
    def test_twenty_rounds_of_timeouts_leave_no_push_lock_held(self):
        self.rounds(20, 8)


# ---- Dashboard: the web page ----

class _PageParser:
    """What a test reads off a dashboard page: table rows (data-label -> text),
    forms (action -> hidden fields), tiles (data-total -> number) and links."""

    def __init__(self, text):
        from html.parser import HTMLParser
        self.rows, self.forms, self.tiles, self.links, self.buttons = [], {}, {}, [], []
        page = self
        state = {"row": None, "cell": None, "form": None, "tile": None, "button": None}

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                a = dict(attrs)
                if tag == "tr" and state["row"] is None:
                    state["row"] = {"_attrs": a}
                elif tag == "td" and state["row"] is not None:
                    state["cell"] = a.get("data-label", "")
                    state["row"][state["cell"]] = ""
                elif tag == "form":
                    state["form"] = {"_method": a.get("method", "get")}
                    page.forms.setdefault(a.get("action"), []).append(state["form"])
                elif tag == "input" and state["form"] is not None and a.get("type") == "hidden":
                    state["form"][a["name"]] = a.get("value", "")
                elif tag == "div" and "data-total" in a:
                    state["tile"] = a["data-total"]
                elif tag == "a":
                    page.links.append(a.get("href"))
                elif tag == "button":
                    state["button"] = ""

            def handle_endtag(self, tag):
                if tag == "tr" and state["row"] is not None:
                    if len(state["row"]) > 1:
                        page.rows.append(state["row"])
                    state["row"] = None
                elif tag == "td":
                    state["cell"] = None
                elif tag == "form":
                    state["form"] = None
                elif tag == "div":
                    state["tile"] = None
                elif tag == "button" and state["button"] is not None:
                    page.buttons.append(state["button"].strip())
                    state["button"] = None

            def handle_data(self, data):
                if state["cell"] is not None:
                    state["row"][state["cell"]] += data
                if state["tile"] is not None and data.strip():
                    page.tiles.setdefault(state["tile"], data.strip())
                if state["button"] is not None:
                    state["button"] += data

        Parser().feed(text)

    def row(self, **match):
        found = [r for r in self.rows if all(r.get(k, "").strip() == v for k, v in match.items())]
        assert len(found) == 1, (match, self.rows)
        return found[0]


class _Response:
    def __init__(self, status, headers, text, set_cookies=()):
        self.status, self.headers, self.text = status, headers, text
        self.set_cookies = list(set_cookies)

    def header(self, name):
        return self.headers.get(name.lower())

    @property
    def page(self):
        return _PageParser(self.text)


class DashboardClient:
    """HTTP to a dashboard on a loopback port, keeping its cookies as a browser would."""

    def __init__(self, port, host="127.0.0.1"):
        self.port, self.host = port, host
        self.cookies = {}

    def request(self, method, path, form=None, headers=None, cookies=True):
        import http.client
        from urllib.parse import urlencode
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            sent = {"Host": "%s:%d" % (self.host, self.port)}
            if cookies and self.cookies:
                sent["Cookie"] = "; ".join("%s=%s" % kv for kv in self.cookies.items())
            body = None
            if form is not None:
                body = urlencode(form)
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            sent.update(headers or {})
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8")
            found, set_cookies = {}, []
            for name, value in resp.getheaders():
                if name.lower() == "set-cookie":
                    set_cookies.append(value)
                    if cookies:
                        key, _, rest = value.partition("=")
                        self.cookies[key] = rest.partition(";")[0]
                else:
                    found.setdefault(name.lower(), value)
            return _Response(resp.status, found, text, set_cookies)
        finally:
            conn.close()

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, form, **kwargs):
        return self.request("POST", path, form=form, **kwargs)


def start_dashboard(testcase, queue, **options):
    """A real dashboard server on a free loopback port, in a thread; returns its port."""
    options.setdefault("log", quiet_log())
    dashboard = dbqueue._Dashboard(queue, **options)
    server = dbqueue._dashboard_server(dashboard, "127.0.0.1", 0)
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, per test.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(10)
    testcase.addCleanup(stop)
    return server.server_address[1]


HOSTILE = "<script>alert(1)</script>"


def _minutes_seconds(text):
    """Seconds in a duration the pages show as "2m05s"."""
    minutes, seconds = text.rstrip("s").split("m")
    return int(minutes) * 60 + int(seconds)


@on_backends
class DashboardTests:

    def add_failed(self, queue="emails", to="ann@example.com", exception="RuntimeError: x",
                   data=None, job="send_email"):
        p = self.db.param
        payload = json.dumps({"uuid": dbqueue._uuid4(), "job": job,
                              "data": data if data is not None else {"to": to, "subject": "Hi"}})
        self.db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception)"
                    " VALUES (%s, 'database', %s, %s, %s)" % (p, p, p, p),
                    (dbqueue._uuid4(), queue, payload, exception))
        return self.db.raw("SELECT MAX(id) FROM {failed}")[0][0]

    def serve(self, **options):
        self.q = self.db.queue()
        port = start_dashboard(self, self.db.queue(), **options)
        return DashboardClient(port)

    def count(self, table="{jobs}"):
        return self.db.raw("SELECT COUNT(*) FROM %s" % table)[0][0]

    def test_overview_shows_each_queues_counts(self):
        client = self.serve()
        q = self.q
        for i in range(3):
            q.push("t_record", {"i": i}, queue="emails")
        q.push("t_record", {}, queue="emails", delay=3600)
        self.db.raw("UPDATE {jobs} SET available_at = available_at - 125 WHERE queue = %s"
                    " AND available_at = created_at" % self.db.param, ("emails",))
        q.push("t_record", {}, queue="default")
        self.assertEqual(len(q.reserve(q.connect(), ["default"])[0]), 1)
        self.add_failed("emails")
        self.add_failed("reports")
        self.assertNotIn("stopped renewing", client.get("/").text)
        # The worker holding the "default" job has stopped renewing its reservation.
        self.db.raw("UPDATE {jobs} SET reserved_at = reserved_at - 1000,"
                    " reserved_until = reserved_until - 1000 WHERE queue = 'default'")
        resp = client.get("/")
        self.assertEqual(resp.status, 200, resp.text)
        page = resp.page
        emails = page.row(Queue="emails")
        self.assertEqual([emails[k].strip() for k in ("Ready", "Delayed", "Running", "Failed")],
                         ["3", "1", "0", "1"])
        # 125 s when the page was drawn, plus however long the test took to get there.
        age = emails["Oldest ready"].strip()
        self.assertRegex(age, r"^\d+m\d\ds\Z")
        self.assertGreaterEqual(_minutes_seconds(age), 125)
        default = page.row(Queue="default")
        self.assertEqual([default[k].strip() for k in ("Ready", "Running", "Failed")],
                         ["0", "1 (1 expired)", "0"])
        self.assertIn("Queue default: 1 job held by a worker that stopped renewing its",
                      resp.text)
        self.assertEqual(page.row(Queue="reports")["Failed"].strip(), "1")
        self.assertEqual(page.tiles, {"ready": "3", "delayed": "1", "reserved": "1", "failed": "2"})
        # It reloads by itself, and the database is named (masked) on the page.
        self.assertIn('<meta http-equiv="refresh" content="5">', resp.text)
        self.assertIn(self.db.table, resp.text)
        self.assertIn("/retry-all?queue=emails", page.links)

    def test_hostile_queue_names_and_texts_are_escaped_on_every_page(self):
        client = self.serve()
        p = self.db.param
        self.db.raw("INSERT INTO {jobs} (queue, payload, attempts, reserved_at, available_at,"
                    " created_at) VALUES (%s, %s, 0, NULL, 0, 0)" % (p, p), (HOSTILE, "{}"))
        failed_id = self.add_failed(queue=HOSTILE, to='"><img src=x onerror=alert(2)>',
                                    exception="RuntimeError: %s & <b>bold</b>" % HOSTILE,
                                    data={"to": "x@example.com", "subject": HOSTILE,
                                          "template": "</pre><script>alert(3)</script>"})
        pages = ["/", "/failed", "/failed/%d" % failed_id,
                 "/failed?" + "queue=%3Cscript%3Ealert(1)%3C%2Fscript%3E&q=%3Cscript%3E",
                 "/retry-all?queue=%3Cscript%3Ealert(1)%3C%2Fscript%3E"]
        for path in pages:
            resp = client.get(path)
            self.assertEqual(resp.status, 200, (path, resp.text))
            self.assertNotIn("<script>alert", resp.text, path)
            self.assertNotIn("<img", resp.text, path)
            self.assertNotIn("<b>bold", resp.text, path)
            self.assertIn("&lt;script&gt;alert(", resp.text, path)
        self.add_failed(to="x", data={"to": "x"})
        resp = client.get("/failed/%d" % failed_id)
        self.assertIn("RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;",
                      resp.text)
        # The queue filter works with that name too.
        resp = client.get("/failed?queue=%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        self.assertEqual([r["ID"].strip() for r in resp.page.rows], [str(failed_id)])

    def test_failed_list_is_newest_first_paged_filtered_and_searched(self):
        client = self.serve(page_size=3)
        ids = [self.add_failed("emails", to="user%d@example.com" % i,
                               exception="Traceback (most recent call last):\n  ...\n"
                                         "RuntimeError: error %d" % i) for i in range(7)]
        other = self.add_failed("reports", to="", data={"month": "2026-11"},
                                exception="ValueError: 50% of a_report")
        first = client.get("/failed").page
        self.assertEqual([r["ID"].strip() for r in first.rows], [str(other), str(ids[6]),
                                                                 str(ids[5])])
        self.assertEqual(first.row(ID=str(ids[6]))["Recipient"], "user6@example.com")
        self.assertEqual(first.row(ID=str(ids[6]))["Error"], "RuntimeError: error 6")
        self.assertIn("/failed?page=2&before=%d" % ids[5], first.links)
        last = client.get("/failed?page=3").page
        self.assertEqual([r["ID"].strip() for r in last.rows], [str(ids[1]), str(ids[0])])
        self.assertFalse([link for link in last.links if "page=4" in link])
        only = client.get("/failed?queue=emails&page=3").page
        self.assertEqual([r["ID"].strip() for r in only.rows], [str(ids[0])])
        found = client.get("/failed?q=USER3%40example").page
        self.assertEqual([r["ID"].strip() for r in found.rows], [str(ids[3])])
        found = client.get("/failed?q=error+5").page
        self.assertEqual([r["ID"].strip() for r in found.rows], [str(ids[5])])
        # % and _ in a search are letters, not wildcards.
        found = client.get("/failed?q=50%25+of+a_r").page
        self.assertEqual([r["ID"].strip() for r in found.rows], [str(other)])
        self.assertEqual(client.get("/failed?q=50%25+of+abr").page.rows, [])
        self.assertIn("No failed jobs match “nothing-like-it”.",
                      client.get("/failed?q=nothing-like-it").text)

    def test_retry_and_forget_change_the_tables(self):
        client = self.serve()
        keep = self.add_failed(to="keep@example.com")
        retry = self.add_failed(to="retry@example.com")
        forget = self.add_failed(to="forget@example.com")
        page = client.get("/failed").page
        form = page.forms["/failed/%d/retry" % retry][0]
        self.assertEqual(form["_method"], "post")
        resp = client.post("/failed/%d/retry" % retry, form)
        self.assertEqual(resp.status, 303, resp.text)
        self.assertEqual(resp.header("Location"), "/failed")
        self.assertEqual(self.db.raw("SELECT id FROM {failed} ORDER BY id"), [(keep,), (forget,)])
        (payload, attempts, reserved), = self.db.raw(
            "SELECT payload, attempts, reserved_at FROM {jobs}")
        self.assertEqual((json.loads(payload)["data"]["to"], attempts, reserved),
                         ("retry@example.com", 0, None))
        after = client.get("/failed")
        self.assertIn("Failed job %d is back in its queue as job " % retry, after.text)
        self.assertNotIn("retry@example.com", after.text)
        resp = client.post("/failed/%d/forget" % forget,
                           after.page.forms["/failed/%d/forget" % forget][0])
        self.assertEqual(resp.status, 303)
        self.assertEqual(self.db.raw("SELECT id FROM {failed}"), [(keep,)])
        self.assertEqual(self.count(), 1)
        self.assertIn("Failed job %d has been deleted." % forget, client.get("/").text)
        # Again: nothing left to do, and it says so.
        client.post("/failed/%d/forget" % forget, form)
        self.assertIn("There is no failed job %d" % forget, client.get("/failed").text)
        self.assertEqual(self.db.raw("SELECT id FROM {failed}"), [(keep,)])
        # A form can only send the browser back to the dashboard's own lists.
        for target in ("https://evil.example/", "//evil.example/failed", "/failed\r\nX-Evil: 1",
                       "/nowhere"):
            again = self.add_failed()
            fields = dict(client.get("/failed").page.forms["/failed/%d/forget" % again][0],
                          next=target)
            resp = client.post("/failed/%d/forget" % again, fields)
            self.assertEqual((resp.status, resp.header("Location")), (303, "/failed"), target)
            self.assertIsNone(resp.header("X-Evil"))
        # From a job's own page, back to the list.
        job_page = client.get("/failed/%d" % keep).page
        resp = client.post("/failed/%d/retry" % keep, job_page.forms["/failed/%d/retry" % keep][0])
        self.assertEqual((resp.status, resp.header("Location")), (303, "/failed"))
        self.assertEqual(self.count("{failed}"), 0)
        self.assertEqual(self.count(), 2)
        self.assertEqual(client.get("/failed/%d" % keep).status, 404)

    def test_retry_all_asks_first_then_retries_that_queue_only(self):
        client = self.serve()
        for i in range(3):
            self.add_failed("emails", to="u%d@example.com" % i)
        other = self.add_failed("reports")
        confirm = client.get("/retry-all?queue=emails")
        self.assertEqual(confirm.status, 200)
        self.assertIn("Retry 3 jobs", confirm.page.buttons)
        self.assertEqual(self.count(), 0)       # asking changes nothing
        form = confirm.page.forms["/retry-all"][0]
        self.assertEqual(form["queue"], "emails")
        resp = client.post("/retry-all", form)
        self.assertEqual((resp.status, resp.header("Location")), (303, "/failed?queue=emails"))
        self.assertEqual(self.db.raw("SELECT id FROM {failed}"), [(other,)])
        self.assertEqual(self.db.raw("SELECT queue, COUNT(*) FROM {jobs} GROUP BY queue"),
                         [("emails", 3)])
        self.assertIn("3 failed jobs of queue emails are back in the queue.",
                      client.get("/failed?queue=emails").text)
        self.assertEqual(client.get("/retry-all?queue=emails").status, 404)
        form = client.get("/retry-all?queue=reports").page.forms["/retry-all"][0]
        self.assertEqual(client.post("/retry-all", dict(form, queue="reports\nx=1")).status, 400)
        self.assertEqual(self.db.raw("SELECT id FROM {failed}"), [(other,)])

    def test_a_post_without_the_right_csrf_token_is_refused(self):
        client = self.serve()
        failed_id = self.add_failed()
        form = client.get("/failed").page.forms["/failed/%d/forget" % failed_id][0]
        attempts = [
            ({}, True),                                        # no token
            (dict(form, csrf="0" * 64), True),                 # a made-up one
            (dict(form, csrf=form["csrf"][:-1]), True),        # nearly right
            (form, False),                                     # right token, no session cookie
        ]
        for fields, with_cookies in attempts:
            resp = client.post("/failed/%d/forget" % failed_id, fields, cookies=with_cookies)
            self.assertEqual(resp.status, 403, fields)
            self.assertIn("Reload the page and try again", resp.text)
        # Another browser's session has another token.
        stranger = DashboardClient(client.port)
        stranger.get("/failed")
        self.assertEqual(stranger.post("/failed/%d/forget" % failed_id, form).status, 403)
        self.assertEqual(stranger.post("/retry-all", {"queue": "emails",
                                                       "csrf": form["csrf"]}).status, 403)
        self.assertEqual(self.count("{failed}"), 1)
        self.assertEqual(client.post("/failed/%d/forget" % failed_id, form).status, 303)
        self.assertEqual(self.count("{failed}"), 0)

    def test_read_only_shows_no_buttons_and_refuses_every_post(self):
        writable = DashboardClient(start_dashboard(self, self.db.queue()))
        client = self.serve(read_only=True)
        failed_id = self.add_failed()
        form = writable.get("/failed").page.forms["/failed/%d/retry" % failed_id][0]
        for path in ("/", "/failed", "/failed/%d" % failed_id):
            resp = client.get(path)
            self.assertEqual(resp.status, 200)
            self.assertNotIn('method="post"', resp.text, path)
            self.assertEqual([b for b in resp.page.buttons if b != "Filter"], [], path)
            self.assertNotIn("/retry-all", resp.text, path)
            self.assertIn("read-only", resp.text)
        client.get("/")
        for path in ("/failed/%d/retry" % failed_id, "/failed/%d/forget" % failed_id,
                     "/retry-all"):
            resp = client.post(path, dict(form, queue="emails"))
            self.assertEqual(resp.status, 405, path)
            self.assertEqual(resp.header("Allow"), "GET, HEAD")
        self.assertEqual(client.get("/retry-all?queue=emails").status, 404)
        self.assertEqual((self.count("{failed}"), self.count()), (1, 0))

    def test_the_job_page_masks_secrets_and_shows_the_whole_exception(self):
        client = self.serve()
        trace = ("Traceback (most recent call last):\n  File \"app.py\", line 3, in send\n"
                 "    smtp.login(user, password)\nRuntimeError: login to"
                 " smtp://mailer:Sm7p-pa55@mail.example.com failed (api_key=AK-123-secret)")
        failed_id = self.add_failed(exception=trace, job="send_template_email", data={
            "to": "ann@example.com", "template": "password_reset",
            "vars": {"name": "Ann", "url": "https://app.example.com/reset/Rst-8f3k2",
                     "password": "Hunter2-pw", "apiToken": "tok-5566"},
            "text": "Reset it at https://app.example.com/reset?token=Tk-998877 today"})
        resp = client.get("/failed/%d" % failed_id)
        self.assertEqual(resp.status, 200)
        for secret in ("Sm7p-pa55", "AK-123-secret", "Rst-8f3k2", "Hunter2-pw", "tok-5566",
                       "Tk-998877"):
            self.assertNotIn(secret, resp.text)
        self.assertIn("  File &quot;app.py&quot;, line 3, in send\n    smtp.login(user,"
                      " password)\nRuntimeError: login to smtp://mailer:***@mail.example.com failed"
                      " (api_key=***)", resp.text)
        self.assertIn("https://app.example.com/***", resp.text)
        self.assertIn("ann@example.com", resp.text)
        self.assertIn("password_reset", resp.text)
        self.assertIn("&quot;password&quot;: &quot;***&quot;", resp.text)
        self.assertEqual(client.get("/failed/%d" % (failed_id + 1000)).status, 404)

    def test_the_database_url_is_shown_without_its_password(self):
        secret = "Pg-Secret-42"
        if self.db.name == "sqlite":
            url = self.db.url     # SQLite has no password: the page names the file
        elif self.db.name == "mysql" or getattr(self.db, "pooled", False):
            # The account's real password, in the URL's user part.
            import urllib.parse
            url = self.db.url
            secret = ":%s@" % urllib.parse.unquote(urllib.parse.urlsplit(url).password)
        else:
            # The socket connection is trusted (peer): the password is sent and unused.
            url = self.db.url + "&password=Pg-Secret-42"
        queue = dbqueue.Queue(config=self.db.config(database_url=url))
        self.addCleanup(queue.close)
        queue.migrate()
        client = DashboardClient(start_dashboard(self, queue))
        self.add_failed()
        for path in ("/", "/failed", "/failed/1", "/nowhere"):
            text = client.get(path).text
            self.assertNotIn(secret, text)
            self.assertIn(dbqueue._mask_url(url), text.replace("&amp;", "&"))

    @sqlite_only
    def test_a_token_is_needed_as_bearer_or_cookie(self):
        token = "Dash-Token-0123456789abcdef"
        client = self.serve(token=token)
        self.add_failed()
        resp = client.get("/")
        self.assertEqual(resp.status, 401)
        self.assertIn("Bearer", resp.header("WWW-Authenticate"))
        self.assertNotIn(token, resp.text)
        for header in ("Bearer wrong-token-0123456789", "Bearer " + token[:-1], "Basic " + token,
                       token):
            self.assertEqual(client.get("/", headers={"Authorization": header}).status, 401,
                             header)
        ok = client.get("/failed", headers={"Authorization": "Bearer " + token})
        self.assertEqual(ok.status, 200)
        self.assertEqual(client.get("/?token=nope").status, 401)
        self.assertEqual(client.get("/failed?token=" + token[:-1]).status, 401)
        self.assertNotIn("dbqueue_auth", client.cookies)
        client.cookies["dbqueue_auth"] = "f" * 64
        self.assertEqual(client.get("/").status, 401)
        # ?token= once: a cookie (not the token itself), then the address without it.
        resp = client.get("/failed?queue=emails&token=" + token)
        self.assertEqual(resp.status, 303)
        self.assertEqual(resp.header("Location"), "/failed?queue=emails")
        cookie = [c for c in resp.set_cookies if c.startswith("dbqueue_auth=")]
        self.assertEqual(len(cookie), 1, resp.set_cookies)
        self.assertIn("HttpOnly", cookie[0])
        self.assertIn("SameSite=Strict", cookie[0])
        self.assertNotIn(token, cookie[0])
        page = client.get("/failed?queue=emails")
        self.assertEqual(page.status, 200)
        form = page.page.forms["/failed/1/forget"][0]
        self.assertEqual(client.post("/failed/1/forget", form).status, 303)
        self.assertEqual(self.count("{failed}"), 0)
        # A POST with the bearer token still needs the form's CSRF token.
        self.add_failed()
        self.assertEqual(client.post("/failed/2/forget", {}, cookies=False,
                                     headers={"Authorization": "Bearer " + token}).status, 403)
        self.assertEqual(self.count("{failed}"), 1)

    @sqlite_only
    def test_without_a_token_only_loopback_host_names_are_answered(self):
        client = self.serve()
        for host in ("127.0.0.1", "localhost", "[::1]", "127.0.0.2"):
            self.assertEqual(DashboardClient(client.port, host).get("/").status, 200, host)
        # DNS rebinding: a web page's own name pointing at 127.0.0.1.
        for host in ("evil.example", "10.0.0.1", "localhost.evil.example"):
            resp = DashboardClient(client.port, host).get("/")
            self.assertEqual(resp.status, 403, host)
            self.assertNotIn(self.db.table, resp.text)

    @sqlite_only
    def test_every_response_carries_the_security_headers(self):
        client = self.serve()
        failed_id = self.add_failed()
        responses = [client.get("/"), client.get("/failed"), client.get("/failed/%d" % failed_id),
                     client.get("/nowhere"), client.post("/failed/1/retry", {}),
                     client.request("PUT", "/"), client.request("HEAD", "/")]
        for resp in responses:
            csp = resp.header("Content-Security-Policy")
            self.assertIsNotNone(csp, resp.status)
            for rule in ("default-src 'none'", "form-action 'self'", "frame-ancestors 'none'",
                         "img-src 'self' data:"):
                self.assertIn(rule, csp)
            self.assertRegex(csp, r"script-src 'sha256-[A-Za-z0-9+/=]+'")
            self.assertNotIn("unsafe", csp.replace("style-src 'unsafe-inline'", ""))
            self.assertEqual(resp.header("X-Content-Type-Options"), "nosniff")
            self.assertEqual(resp.header("Referrer-Policy"), "no-referrer")
            self.assertEqual(resp.header("Server"), "dbqueue")
        self.assertEqual([r.status for r in responses], [200, 200, 200, 404, 403, 501, 200])
        self.assertEqual(responses[-1].text, "")
        # The page's one script and stylesheet are the ones the policy allows.
        import base64
        import hashlib
        import re
        html_text = responses[0].text
        for tag, rule in (("script", "script-src"), ("style", "style-src")):
            body = re.search(r"<%s>(.*?)</%s>" % (tag, tag), html_text, re.S).group(1)
            digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
            self.assertIn("%s 'sha256-%s'" % (rule, digest), responses[0].header(
                "Content-Security-Policy"))
        self.assertNotIn(" style=", html_text)
        self.assertNotIn(" onclick=", html_text)
        self.assertNotIn("http://", html_text.replace("http-equiv", ""))
        self.assertNotIn("https://", html_text)

    def test_a_mail_outage_a_worker_recorded_is_a_banner_until_it_ends(self):
        client = self.serve()
        q = self.q
        self.assertNotIn('class="note warn', client.get("/").text)
        since = int(time.time()) - 725
        # The row a worker writes when the mail server stops answering (issue 10).
        q.set_state(q.connect(), q._mail_outage_key(), {
            "since": since, "queues": ["emails"],
            "error": "SMTP smtp.example.net:587 %s unreachable" % HOSTILE})
        for path in ("/", "/failed"):
            text = client.get(path).text
            self.assertRegex(text, r"The mail server has been unreachable for \d+m\d\ds \(since"
                             r" %s UTC\): SMTP smtp.example.net:587 &lt;script&gt;"
                             % time.strftime("%H:%M", time.gmtime(since)))
            shown = text.split("unreachable for ", 1)[1].split(" ", 1)[0]
            self.assertGreaterEqual(_minutes_seconds(shown), 725)    # and the test's own time
            self.assertIn("Sending is paused on emails and no email fails because of it", text)
            self.assertNotIn("<script>alert", text)
        q.clear_state(q.connect(), q._mail_outage_key())
        self.assertNotIn("unreachable", client.get("/").text)

    @sqlite_only
    def test_the_rate_limit_in_use_is_a_banner(self):
        queue = self.db.queue(mail_rate_limit="2/m")
        client = DashboardClient(start_dashboard(self, queue))
        windows = [(dbqueue._rate_name(queue.config, "2/m"), 2, 60000)]
        queue.rate_sent(queue.rate_take(windows, 60000)[0], windows)
        self.assertIn('<p class="note info">MAIL_RATE_LIMIT=2/m: 1 of 2 sent in the last'
                      ' minute.</p>', client.get("/").text)
        queue.rate_sent(queue.rate_take(windows, 60000)[0], windows)
        self.assertIn('<p class="note warn">MAIL_RATE_LIMIT=2/m: 2 of 2 sent in the last'
                      ' minute; the next emails wait their turn.</p>', client.get("/failed").text)

    @sqlite_only
    def test_a_database_that_stops_answering_is_an_error_page_then_recovers(self):
        client = self.serve()
        self.add_failed()
        path = self.db.url[len("sqlite:///"):]
        os.rename(path, path + ".away")
        resp = client.get("/")
        self.assertEqual(resp.status, 503)
        self.assertIn("does not exist", resp.text)
        self.assertIn('http-equiv="refresh"', resp.text)
        self.assertFalse(os.path.exists(path))     # never created by the dashboard
        os.rename(path + ".away", path)
        self.assertEqual(client.get("/").status, 200)


on_backends(DashboardTests, PGBOUNCER)


class DashboardFailedActionsTests:
    """Forget asks first, each Retry and Forget is one line in the dashboard's
    log (never its token), and the failed list shows 50 jobs a page."""

    TOKEN = "Dash-Token-0123456789abcdef"

    def setUp(self):
        self.db.queue()       # the tables

    def add_failed(self, n=1):
        _fill_failed(self.db, n)
        return [i for i, in self.db.raw("SELECT id FROM {failed} ORDER BY id")][-n:]

    def test_forget_asks_first_and_each_action_is_logged_without_the_token(self):
        retry, forget = self.add_failed(2)
        log = quiet_log()
        client = DashboardClient(start_dashboard(self, self.db.queue(), token=self.TOKEN,
                                                 log=log))
        self.assertEqual(client.get("/failed?token=" + self.TOKEN).status, 303)
        resp = client.get("/failed")
        self.assertEqual(resp.status, 200, resp.text)
        self.assertIn('action="/failed/%d/forget" data-confirm="Delete failed job %d for good?"'
                      % (forget, forget), resp.text)
        self.assertIn('action="/failed/%d/retry">' % retry, resp.text)    # Retry asks nothing
        self.assertIn("window.confirm", resp.text)
        forms = resp.page.forms
        self.assertEqual(client.post("/failed/%d/retry" % retry,
                                     forms["/failed/%d/retry" % retry][0]).status, 303)
        self.assertEqual(client.post("/failed/%d/forget" % forget,
                                     forms["/failed/%d/forget" % forget][0]).status, 303)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {failed}"), [(0,)])
        new_id, = [i for i, in self.db.raw("SELECT id FROM {jobs}")]
        text = log.stream.getvalue()
        lines = [line for line in text.splitlines() if "dashboard" in line]
        self.assertEqual(len(lines), 2, text)
        self.assertIn("action=retry failed_id=%d job=%d" % (retry, new_id), lines[0])
        self.assertIn("action=forget failed_id=%d" % forget, lines[1])
        self.assertNotIn(self.TOKEN, text)
        self.assertNotIn(client.cookies["dbqueue_auth"], text)

    def test_the_failed_list_pages_by_fifty(self):
        ids = self.add_failed(51)
        client = DashboardClient(start_dashboard(self, self.db.queue()))
        first = client.get("/failed").page
        self.assertEqual([int(r["ID"]) for r in first.rows], ids[:0:-1])     # newest first
        self.assertIn("/failed?page=2&before=%d" % ids[1], first.links)
        second = client.get("/failed?page=2&before=%d" % ids[1]).page
        self.assertEqual([int(r["ID"]) for r in second.rows], ids[:1])


on_backends(DashboardFailedActionsTests, SQLITE_PG_MARIADB)

class DashboardLongJobNameTests(unittest.TestCase):
    """A PHP class name wraps at its backslashes in the failed list; Retry all shows
    the failed-count pill as the other pages do."""

    def test_retry_all_has_the_pill_and_a_php_class_name_can_wrap(self):
        db = Backend(self)
        q = db.queue()
        php_push(db, {"job": "App\\Libraries\\Queue\\Jobs\\SendSmsJob", "data": {}}, queue="sms")
        dbqueue.Worker(q, ["sms"], log=quiet_log()).run(stop_when_empty=True)
        client = DashboardClient(start_dashboard(self, q))
        listed = client.get("/failed")
        self.assertIn("<span>App\\<wbr>Libraries\\<wbr>Queue\\<wbr>Jobs\\<wbr>SendSmsJob</span>",
                      listed.text)
        self.assertIn('<span class="pill bad">1</span>', listed.text)
        page = client.get("/retry-all?queue=sms")
        self.assertEqual(page.status, 200)
        self.assertIn('<span class="pill bad">1</span>', page.text)

class DashboardPauseTests:
    """Pause and Resume buttons on the overview: POST with the CSRF token."""

    serve = DashboardTests.serve

    def pause_form(self, client, action, queue):
        forms = [f for f in client.get("/").page.forms.get(action, []) if f["queue"] == queue]
        self.assertEqual(len(forms), 1, forms)
        return forms[0]

    def test_pause_and_resume_buttons(self):
        client = self.serve()
        self.q.push("t_record", {}, queue="emails")
        form = self.pause_form(client, "/pause", "emails")
        stranger = DashboardClient(client.port)
        stranger.get("/")
        for fields, who, with_cookies in (({"queue": "emails"}, client, True),
                                          (dict(form, csrf="0" * 64), client, True),
                                          (form, client, False), (form, stranger, True)):
            resp = who.post("/pause", fields, cookies=with_cookies)
            self.assertEqual(resp.status, 403, fields)
        self.assertEqual(self.q.paused(), {})
        resp = client.post("/pause", form)
        self.assertEqual((resp.status, resp.header("Location")), (303, "/"))
        self.assertEqual(list(self.q.paused()), ["emails"])
        resp = client.get("/")
        self.assertIn("Queue emails is paused: workers start none of its jobs", resp.text)
        self.assertIn("Queue emails is paused until it is resumed", resp.text)
        self.assertEqual(resp.page.row(Queue="emails paused")["Ready"].strip(), "1")
        self.assertNotIn("/pause", resp.page.forms)
        self.assertEqual(client.post("/pause", dict(form, queue="bad name")).status, 400)
        resp = client.post("/resume", self.pause_form(client, "/resume", "emails"))
        self.assertEqual(resp.status, 303)
        self.assertEqual(self.q.paused(), {})
        self.assertIn("Queue emails is resumed", client.get("/").text)
        self.assertEqual(client.get("/").page.row(Queue="emails")["Ready"].strip(), "1")

    def test_read_only_shows_paused_queues_without_buttons_and_refuses_the_post(self):
        writable = DashboardClient(start_dashboard(self, self.db.queue()))
        client = self.serve(read_only=True)
        self.q.push("t_record", {}, queue="emails")
        self.q.pause("sms")
        form = self.pause_form(writable, "/pause", "emails")
        page = client.get("/").page
        self.assertEqual(page.forms, {})
        self.assertEqual(page.row(Queue="sms paused")["Ready"].strip(), "0")
        for path, queue in (("/pause", "emails"), ("/resume", "sms")):
            self.assertEqual(client.post(path, dict(form, queue=queue)).status, 405)
        self.assertEqual(list(self.q.paused()), ["sms"])


on_backends(DashboardPauseTests, SQLITE_PG_MARIADB)


class DashboardCommandTests(unittest.TestCase):
    """`python dbqueue.py dashboard`: flags, exit codes, and a real server process."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-dash-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "app.db")
        self.env = {"QUEUE_DATABASE_URL": "sqlite:///" + self.path}

    def test_bad_flags_and_unsafe_binds_exit_2_without_touching_the_database(self):
        cases = [
            (["--port", "70000"], {}), (["--port", "x"], {}), (["--port", "-1"], {}),
            (["--host", "a b"], {}), (["--host", ""], {}), (["--bogus"], {}),
            (["--host", "0.0.0.0"], {}), (["--host", "192.0.2.10"], {}),
            (["--host", "::"], {}), (["--host", "example.com"], {}),
            (["--host", "0.0.0.0"], {"DBQUEUE_DASHBOARD_TOKEN": "short"}),
            (["--host", "0.0.0.0"], {"DBQUEUE_DASHBOARD_TOKEN": "has a space in it, 16+"}),
        ]
        for argv, extra in cases:
            # run_main leaves out any DBQUEUE_DASHBOARD_TOKEN of the shell: only `extra`'s counts.
            line = assert_refused(self, run_main(["dashboard"] + argv, dict(self.env, **extra)),
                                  self.path, context=argv)
            for secret in extra.values():
                self.assertNotIn(secret, line)
        self.assertIn("DBQUEUE_DASHBOARD_TOKEN", run_main(["dashboard", "--host", "0.0.0.0"],
                                                          self.env)[2])

    def test_a_missing_database_is_one_line_and_exit_1(self):
        code, out, err = run_main(["dashboard", "--port", "0"], self.env)
        self.assertEqual(code, 1, err)
        self.assertIn("does not exist", one_line(self, err))
        self.assertFalse(os.path.exists(self.path))

    def test_the_command_serves_until_sigterm_and_refuses_an_unsafe_bind(self):
        q = dbqueue.Queue("sqlite:///" + self.path)
        self.addCleanup(q.close)
        q.push("t_record", {}, queue="emails")
        env = clean_env(**self.env)
        script = os.path.join(HERE, "dbqueue.py")
        unsafe = subprocess.run([sys.executable, script, "dashboard", "--host", "0.0.0.0"],
                                env=env, cwd=self.tmp, capture_output=True, text=True, timeout=60)
        self.assertEqual(unsafe.returncode, 2)
        self.assertIn("needs DBQUEUE_DASHBOARD_TOKEN", one_line(self, unsafe.stderr))
        proc = subprocess.Popen([sys.executable, script, "dashboard", "--port", "0",
                                 "--read-only"], env=env, cwd=self.tmp, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        line = proc.stdout.readline()
        import re
        match = re.search(r"http://127\.0\.0\.1:(\d+)/ .*\(read-only\)", line)
        self.assertTrue(match, line)
        client = DashboardClient(int(match.group(1)))
        resp = client.get("/")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.page.row(Queue="emails")["Ready"].strip(), "1")
        self.assertEqual(client.post("/retry-all", {"queue": "emails"}).status, 405)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("dashboard stopped", out)
        self.assertEqual(err, "")


def _browser():
    """(playwright's sync_playwright, chromium path), or skip/fail with the reason."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    need(sync_playwright is not None, "the browser driver is not installed (pip install playwright)")
    path = shutil.which("chromium") or "/usr/bin/chromium"
    need(os.path.exists(path), "the browser is not installed (apt-get install chromium)")
    return sync_playwright, path


@dbqueue.job("t_monthly_report")
def _t_monthly_report(data):
    raise ValueError("no sales figures for %s yet: the import has not run" % data["month"])


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


class DashboardBrowserTests(unittest.TestCase):
    """A real Chromium: sees a failed job, clicks Retry, sees it back in the counts.

    Screenshots go to a temporary folder, or to DBQUEUE_SCREENSHOT_DIR when set
    (that is how the README's picture is made)."""

    def setUp(self):
        self.sync_playwright, self.chromium = _browser()
        self.db = Backend(self)
        # The file is this test's own: the tables can have their usual names.
        self.db.table, self.db.failed_table = "jobs", "failed_jobs"
        self.shots = os.environ.get("DBQUEUE_SCREENSHOT_DIR") or self.db.tmp

    def scene(self, q):
        """A queue as an operator finds it: mail waiting, one job that failed for real."""
        for i in range(12):
            q.push("send_email", {"to": "user%d@example.com" % i, "subject": "Welcome"},
                   queue="emails")
        q.push("send_email", {"to": "later@example.com"}, queue="emails", delay=600)
        for i in range(3):
            q.push("t_record", {"n": i}, queue="default")
        q.push("t_record", {}, queue="reports", delay=3600)
        self.db.raw("UPDATE {jobs} SET available_at = available_at - 190 WHERE queue = 'emails'")
        trace = ("Traceback (most recent call last):\n  File \"dbqueue.py\", line 1890, in _run\n"
                 "    handler(job.data)\n"
                 "dbqueue.PermanentError: SMTP smtp.example.net:587 refused RCPT TO <%s>:"
                 " 550 5.1.1 User unknown (permanent)")
        for to in ("ann@example.org", "carla@example.es"):
            self.db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception)"
                        " VALUES (?, 'database', 'emails', ?, ?)",
                        (dbqueue._uuid4(), json.dumps({
                            "uuid": dbqueue._uuid4(), "job": "send_template_email",
                            "data": {"to": to, "template": "verify_email",
                                     "vars": {"name": "Ann", "url": "https://example.com/v/1"}}}),
                         trace % to))
        # This one failed in a real worker.
        q.push("t_monthly_report", {"month": "2026-11", "to": "bob@example.com"}, queue="reports")
        dbqueue.Worker(q, ["reports"], tries=1, log=quiet_log()).run(stop_when_empty=True)
        # And this one went out, through a real SMTP server: it is in the sent log.
        sink = QueuedAsSink(self)
        mail = dbqueue.Queue(config=self.db.config(mail_host="127.0.0.1", mail_port=sink.port,
                                                    mail_from_address="app@example.com"))
        self.addCleanup(mail.close)
        dbqueue.queue_email("dora@example.com", "Your invoice for November", text="t",
                            using=mail, queue="receipts")
        dbqueue.Worker(mail, ["receipts"], log=quiet_log()).run(stop_when_empty=True)

    def test_a_browser_retries_a_failed_job(self):
        q = self.db.queue()
        self.scene(q)
        port = start_dashboard(self, self.db.queue())
        base = "http://127.0.0.1:%d" % port
        with self.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=self.chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 640})
                errors = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(base + "/")
                self.assertEqual(page.inner_text('[data-queue="reports"] [data-label="Failed"]'),
                                 "1")
                page.screenshot(path=os.path.join(self.shots, "dashboard.png"))
                page.click('a[href="/failed"]')
                row = page.locator("tr", has_text="no sales figures for 2026-11")
                self.assertEqual(row.count(), 1)
                self.assertIn("bob@example.com", row.inner_text())
                page.screenshot(path=os.path.join(self.shots, "dashboard-failed.png"))
                row.locator("button", has_text="Retry").click()
                page.wait_for_selector("text=is back in its queue as job")
                self.assertEqual(page.locator("tr", has_text="2026-11").count(), 0)
                self.assertEqual(page.locator("tbody tr").count(), 2)
                page.click('a[href="/"]')
                self.assertEqual(page.inner_text('[data-queue="reports"] [data-label="Ready"]'),
                                 "1")
                self.assertEqual(page.inner_text('[data-queue="reports"] [data-label="Failed"]'),
                                 "0")
                page.click('a[href="/sent"]')
                row = page.locator("tr", has_text="Your invoice for November")
                self.assertEqual(row.count(), 1)
                self.assertIn("dora@example.com", row.inner_text())
                self.assertIn("250 2.0.0 Ok: queued as 4QwXk1", row.inner_text())
                page.fill('input[name="q"]', "nobody@example.com")
                page.click('button[type="submit"]')
                page.wait_for_selector("text=No sent mail matches")
                self.assertEqual(errors, [])    # nothing refused by the CSP, no script error
                # A phone: the tables become cards, nothing wider than the screen.
                phone = browser.new_page(viewport={"width": 390, "height": 844},
                                         device_scale_factor=2, is_mobile=True, has_touch=True)
                phone.goto(base + "/failed")
                width = phone.evaluate("document.documentElement.scrollWidth")
                self.assertLessEqual(width, 390)
                self.assertEqual(phone.locator("thead").first.is_visible(), False)
                phone.screenshot(path=os.path.join(self.shots, "dashboard-phone.png"))
            finally:
                browser.close()
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {failed}")[0][0], 2)
        for name in ("dashboard.png", "dashboard-failed.png", "dashboard-phone.png"):
            with open(os.path.join(self.shots, name), "rb") as fh:
                self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")

    def test_a_browser_pauses_and_resumes_a_queue(self):
        q = self.db.queue()
        self.scene(q)
        port = start_dashboard(self, self.db.queue())
        with self.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=self.chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 640})
                errors = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto("http://127.0.0.1:%d/" % port)
                emails = '[data-queue="emails"]'
                self.assertEqual(page.inner_text(emails + ' [data-label="Queue"]'), "emails")
                page.click(emails + ' button:has-text("Pause")')
                page.wait_for_selector("text=Queue emails is paused: workers start none")
                self.assertEqual(page.inner_text(emails + ' [data-label="Queue"]'),
                                 "emails paused")
                self.assertEqual(list(q.paused()), ["emails"])
                page.screenshot(path=os.path.join(self.shots, "dashboard-paused.png"))
                page.click(emails + ' button:has-text("Resume")')
                page.wait_for_selector("text=Queue emails is resumed")
                self.assertEqual(page.inner_text(emails + ' [data-label="Queue"]'), "emails")
                self.assertEqual(page.locator(emails + ' button:has-text("Pause")').count(), 1)
                self.assertEqual(errors, [])
            finally:
                browser.close()
        self.assertEqual(q.paused(), {})


# ---- Retry races, deep payloads, settings checked at start, the SQLite push lock, the dashboard token ----


class RetryRaceTests:
    """Two retries of one failed job at once (a double click on Retry) make one job."""

    def _failed_row(self, q, payload='{"job": "x", "data": {}}'):
        p = self.db.param
        self.db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception, failed_at)"
                    " VALUES (%s, 'database', 'default', %s, 'boom', CURRENT_TIMESTAMP)" % (p, p),
                    ("retry-race-%d" % time.monotonic_ns(), payload))
        return self.db.raw("SELECT MAX(id) FROM {failed}")[0][0]

    def test_concurrent_retries_of_one_failed_job_make_one_job(self):
        queues = [self.db.queue(), self.db.queue()]
        payloads = ['{"job": "x", "data": {}}', '{"job": "x", "data": {}, "uniqueKey": "k"}']
        for round_ in range(40):
            failed_id = self._failed_row(queues[0], payloads[round_ % 2])
            barrier = threading.Barrier(2)
            results = []

            def retry(q):
                barrier.wait()
                results.append(q.retry([failed_id]))

            threads = [threading.Thread(target=retry, args=(q,)) for q in queues]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            self.assertEqual(len(results), 2)
            jobs = self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0]
            self.assertEqual(jobs, 1, "round %d: %r" % (round_, results))
            self.assertEqual(sorted(len(r) for r in results), [0, 1])
            self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {failed}")[0][0], 0)
            self.db.raw("DELETE FROM {jobs}")


on_backends(RetryRaceTests)



class DeepPayloadTests(unittest.TestCase):
    """A failed job whose payload is JSON nested too deeply to read breaks no listing."""

    DEEP = "[" * 100000 + "]" * 100000

    def setUp(self):
        self.db = Backend(self)
        self.q = self.db.queue()
        self.ids = []
        for payload in (self.DEEP, '{"job": "fine", "data": {}}'):
            self.db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception,"
                        " failed_at) VALUES (?, 'database', 'default', ?, 'boom',"
                        " CURRENT_TIMESTAMP)", (dbqueue._uuid4(), payload))
            self.ids.append(self.db.raw("SELECT MAX(id) FROM {failed}")[0][0])

    def test_failed_lists_it_as_unreadable_and_it_can_be_retried_and_forgotten(self):
        code, out, err = run_main(["failed"], self.db.env())
        self.assertEqual((code, err), (0, ""))
        self.assertIn("fine", out)
        self.assertRegex(out, r"(?m)^ *%d .* \(unreadable\) " % self.ids[0])
        code, out, err = run_main(["failed", "--json"], self.db.env())
        self.assertEqual((code, err), (0, ""))
        self.assertEqual([f["job"] for f in json.loads(out)], ["(unreadable)", "fine"])
        code, out, err = run_main(["retry", str(self.ids[0])], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(self.db.raw("SELECT payload FROM {jobs}")[0][0], self.DEEP)
        self.db.raw("INSERT INTO {failed} (uuid, connection, queue, payload, exception, failed_at)"
                    " VALUES ('again', 'database', 'default', ?, 'boom', CURRENT_TIMESTAMP)",
                    (self.DEEP,))
        again = self.db.raw("SELECT MAX(id) FROM {failed}")[0][0]
        code, out, err = run_main(["forget", str(again)], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {failed} WHERE id = ?", (again,))[0][0],
                         0)

    def test_the_dashboards_failed_pages_show_it(self):
        client = DashboardClient(start_dashboard(self, self.db.queue()))
        resp = client.get("/failed")
        self.assertEqual(resp.status, 200, resp.text[:300])
        self.assertIn("fine", resp.text)
        self.assertIn('/failed/%d"' % self.ids[0], resp.text)
        self.assertIn("(unreadable)", resp.text)
        resp = client.get("/failed/%d" % self.ids[0])
        self.assertEqual(resp.status, 200, resp.text[:300])
        self.assertIn("[[[[", resp.text)
        self.assertEqual(client.get("/").status, 200)



class ConfigCheckedEarlyTests(unittest.TestCase):
    """Settings that could only fail later (every email, every table) fail at config time."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-config-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "q.db")
        self.env = {"QUEUE_DATABASE_URL": "sqlite:///" + self.path}

    def refused(self, extra, argv=("work", "--once")):
        code, out, err = run_main(list(argv), dict(self.env, **extra))
        self.assertEqual((code, out), (2, ""), err)
        self.assertFalse(os.path.exists(self.path))
        return one_line(self, err)

    def test_a_from_address_that_is_no_address_exits_2_naming_the_variable(self):
        line = self.refused({"MAIL_FROM_ADDRESS": "not-an-address"})
        self.assertIn("MAIL_FROM_ADDRESS", line)
        self.assertIn("not-an-address", line)
        # The CodeIgniter app's name, when that is the one set.
        line = self.refused({"EMAIL_FROM_ADDRESS": "two@example.com, three@example.com"})
        self.assertIn("EMAIL_FROM_ADDRESS", line)
        self.assertNotIn("MAIL_FROM_ADDRESS", line.replace("EMAIL_FROM_ADDRESS", ""))
        line = self.refused({"MAIL_FROM_ADDRESS": "app@example.com\nBcc: x@evil.example"})
        self.assertIn("MAIL_FROM_ADDRESS", line)
        for good in ("app@example.com", "Billing <billing@example.com>", "a@b\u00fccher.example"):
            config = dbqueue.Config.from_env({"MAIL_FROM_ADDRESS": good}, env_file=os.devnull)
            self.assertEqual(config.mail_from_address, good)

    def test_non_ascii_smtp_credentials_exit_2_and_never_show_the_password(self):
        line = self.refused({"MAIL_USERNAME": "j\u00fcrgen", "MAIL_PASSWORD": "ascii-only"})
        self.assertIn("MAIL_USERNAME", line)
        line = self.refused({"MAIL_USERNAME": "jurgen", "MAIL_PASSWORD": "s3cr\u00e9t-pass"})
        self.assertIn("MAIL_PASSWORD", line)
        self.assertNotIn("s3cr", line)
        line = self.refused({"EMAIL_SMTP_PASS": "s3cr\u00e9t-pass"})
        self.assertIn("EMAIL_SMTP_PASS", line)
        self.assertNotIn("s3cr", line)
        # The log mailer sends no AUTH: nothing to refuse.
        config = dbqueue.Config.from_env({"MAIL_MAILER": "log", "MAIL_PASSWORD": "s3cr\u00e9t"},
                                         env_file=os.devnull)
        self.assertEqual(config.mail_password, "s3cr\u00e9t")


    def test_a_bad_dbprefix_is_named_as_written(self):
        for prefix in ("a-b", "1_", "app prefix"):
            path = env_file(self, "database.default.DBDriver = SQLite3\n"
                                  "database.default.database = %s\n"
                                  "database.default.DBPrefix = %s\n" % (self.path, prefix))
            with self.assertRaises(dbqueue.ConfigError) as caught:
                dbqueue.Config.from_env({}, env_file=path)
            line = str(caught.exception)
            self.assertIn("database.default.DBPrefix=%s " % prefix, line)
            self.assertNotIn("jobs", line)
            self.assertIn("%s:3" % path, line)
        path = env_file(self, "database.default.DBDriver = SQLite3\n"
                              "database.default.database = %s\n"
                              "database.default.DBPrefix = %s\n" % (self.path, "p" * 60))
        with self.assertRaises(dbqueue.ConfigError) as caught:
            dbqueue.Config.from_env({}, env_file=path)
        self.assertIn("longer than 63", str(caught.exception))
        config = dbqueue.Config.from_env({"QUEUE_TABLE": "j", "QUEUE_FAILED_TABLE": "f"},
                                         env_file=path)
        self.assertEqual((config.table, config.failed_table), ("j", "f"))



class SQLitePushLockDescriptorTests(unittest.TestCase):
    """The SQLite push lock: one busy timeout in all, one descriptor, its own after a fork."""

    def setUp(self):
        self.db = Backend(self)
        self.path = self.db.url[len("sqlite:///"):]
        self.lock_file = os.path.realpath(self.path + "-dbqueue.lock")

    def short_busy_timeout(self, seconds):
        saved = dbqueue._SQLite.busy_timeout
        dbqueue._SQLite.busy_timeout = seconds
        self.addCleanup(setattr, dbqueue._SQLite, "busy_timeout", saved)

    def lock_fds(self):
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.path.realpath("/proc/self/fd/" + name) == self.lock_file:
                    found.append(name)
            except OSError:
                pass
        return found

    def test_producers_behind_a_long_write_all_fail_at_the_busy_timeout(self):
        self.short_busy_timeout(2.0)
        q = self.db.queue()
        q.push("t_record", {})           # the schema and the lock file exist
        import sqlite3
        writer = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")   # a long write by another connection
        self.addCleanup(lambda: writer.in_transaction and writer.execute("ROLLBACK"))
        started = time.monotonic()
        failed = []
        barrier = threading.Barrier(4)

        def produce():
            barrier.wait()
            try:
                q.push("t_record", {})
            except dbqueue.DatabaseError as exc:
                failed.append((time.monotonic() - started, str(exc)))

        threads = [threading.Thread(target=produce) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        writer.execute("ROLLBACK")
        self.assertEqual(len(failed), 4, failed)
        for seconds, message in failed:
            self.assertIn("locked", message)
            self.assertNotIn("\n", message)
        # Each waited out the busy timeout (load only makes that longer) ...
        self.assertGreaterEqual(min(s for s, _ in failed), 2.0, failed)
        # ... side by side: one after another they would fail 2 s apart, 6 s first to last.
        seconds = sorted(s for s, _ in failed)
        self.assertLess(seconds[-1] - seconds[0], 4.0, failed)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 1)
        q.push("t_record", {})            # and the next push, the write done, goes through

    def test_many_producer_threads_share_one_lock_descriptor(self):
        q = self.db.queue()
        for _ in range(6):
            in_threads(lambda: q.push("t_record", {}), 50)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 300)
        self.assertEqual(len(self.lock_fds()), 1)
        q.close()
        self.assertEqual(self.lock_fds(), [])

    def test_a_forked_child_takes_a_lock_of_its_own(self):
        need(hasattr(os, "fork"), "no fork() here")
        self.short_busy_timeout(0.5)
        q = self.db.queue()
        q.push("t_record", {})
        lock = q._push_lock()
        cur = q._conn().cursor()

        def child(pushing_thread):
            pid = os.fork()
            if pid == 0:            # the child: report by exit status only
                code = 3
                try:
                    result = []

                    def push():
                        try:
                            q.push("t_record", {"child": True})
                            result.append("pushed")
                        except dbqueue.DatabaseError as exc:
                            result.append("locked" if "locked" in str(exc) else str(exc))
                    if pushing_thread:
                        t = threading.Thread(target=push)
                        t.start()
                        t.join(20)
                    else:
                        push()
                    code = {"pushed": 0, "locked": 1}.get(result and result[0], 2)
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") \
                else status >> 8

        lock.acquire(cur)            # the parent holds it, as a push in progress does
        try:
            # The thread that forked, the one whose mutex and file it inherited.
            self.assertEqual(child(pushing_thread=False), 1, "the child's push was not excluded")
        finally:
            lock.release(cur)
        self.assertEqual(child(pushing_thread=True), 0)
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 2)
        q.push("t_record", {})



class DashboardTokenSettingTests(unittest.TestCase):
    """DBQUEUE_DASHBOARD_TOKEN is a Config setting: `config` lists it masked, the dashboard uses it."""

    TOKEN = "Dash-Token-Setting-0123456789abcdef"

    def test_config_lists_the_token_masked_with_its_source(self):
        path = env_file(self, "QUEUE_TIMEOUT=30\nDBQUEUE_DASHBOARD_TOKEN=%s\n" % self.TOKEN)
        code, out, err = run_main(["config", "--json", "--env-file", path], {})
        self.assertEqual(code, 0, err)
        self.assertNotIn(self.TOKEN, out)
        found = {s["name"]: s for s in json.loads(out)["settings"]}
        self.assertEqual(found["DBQUEUE_DASHBOARD_TOKEN"]["value"], "***")
        self.assertEqual(found["DBQUEUE_DASHBOARD_TOKEN"]["source"], "%s:2" % path)
        code, out, err = run_main(["config"], {"DBQUEUE_DASHBOARD_TOKEN": self.TOKEN})
        self.assertEqual(code, 0, err)
        self.assertNotIn(self.TOKEN, out)
        self.assertRegex(out, r"(?m)^DBQUEUE_DASHBOARD_TOKEN +\*\*\* +environment *$")
        code, out, err = run_main(["config"], {})
        self.assertRegex(out, r'(?m)^DBQUEUE_DASHBOARD_TOKEN +"" +default *$')
        config = dbqueue.Config.from_env({"DBQUEUE_DASHBOARD_TOKEN": self.TOKEN},
                                         env_file=os.devnull)
        self.assertEqual(config.dashboard_token, self.TOKEN)
        self.assertNotIn(self.TOKEN, repr(config))

    def test_the_dashboard_asks_for_the_configured_token(self):
        db = Backend(self)
        config = db.config(dashboard_token=self.TOKEN)
        q = dbqueue.Queue(config=config)
        self.addCleanup(q.close)
        q.migrate()
        client = DashboardClient(start_dashboard(self, q))
        self.assertEqual(client.get("/").status, 401)
        self.assertEqual(client.get("/", headers={"Authorization": "Bearer " + self.TOKEN}).status,
                         200)


# ---- Email sessions (sendmail exit statuses, stalled servers), dashboard masking and search, templates ----

# A stand-in sendmail that does what mode.txt says: an exit code, "kill"
# (dies by SIGKILL) or "hang" (never finishes); it counts its calls.
SYSEXITS_SENDMAIL = r"""
import os, signal, sys, time
here = os.path.dirname(os.path.abspath(__file__))
sys.stdin.buffer.read()
with open(os.path.join(here, "calls.txt"), "a") as fh:
    fh.write("x")
with open(os.path.join(here, "mode.txt")) as fh:
    mode = fh.read().strip()
sys.stderr.write("sendmail: mode %s\n" % mode)
sys.stderr.flush()
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "hang":
    time.sleep(60)
sys.exit(int(mode))
"""


class SendmailExitStatusTests(EmailTestMixin, unittest.TestCase):
    """sendmail's exit status read as sysexits.h means it: the relay being
    down is an outage (no attempt spent), a bad message fails at once."""

    def setUp(self):
        self.db = Backend(self)
        self.bin = os.path.join(self.db.tmp, "bin")
        os.mkdir(self.bin)
        self.script = os.path.join(self.bin, "sendmail.py")
        with open(self.script, "w") as fh:
            fh.write(SYSEXITS_SENDMAIL)

    def run_mode(self, mode, tries=2):
        with open(os.path.join(self.bin, "mode.txt"), "w") as fh:
            fh.write(mode)
        try:
            os.remove(os.path.join(self.bin, "calls.txt"))
        except FileNotFoundError:
            pass
        q = self.mail_queue(None, mail_mailer="sendmail", mail_timeout=1,
                            mail_sendmail_path="%s %s -t -i" % (sys.executable, self.script))
        self.db.raw("DELETE FROM {jobs}")
        self.db.raw("DELETE FROM {failed}")
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=tries)
        with open(os.path.join(self.bin, "calls.txt")) as fh:
            calls = len(fh.read())
        return q, worker, log, calls

    def test_an_unavailable_relay_is_an_outage_that_spends_no_attempt(self):
        for mode in ("69", "71", "74", "75", "kill", "hang"):
            with self.subTest(mode=mode):
                q, worker, log, calls = self.run_mode(mode)
                self.assertEqual(worker.exit_code, 1, log)
                self.assertIn("(outage)", log)
                self.assertIn("mail server unavailable", log)
                self.assertEqual(q.failed(), [])
                self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"),
                                 [(0, None)])
                self.assertEqual(calls, 1)

    def test_a_bad_message_fails_at_once_and_other_codes_are_retried(self):
        for mode in ("64", "65", "67", "68"):
            with self.subTest(mode=mode):
                q, worker, log, calls = self.run_mode(mode, tries=3)
                (row,) = q.failed()
                self.assertIn("exited %s (EX_" % mode, row["exception"])
                self.assertIn("(permanent)", row["exception"])
                self.assertEqual(calls, 1)
        for mode in ("1", "2", "70", "78"):
            with self.subTest(mode=mode):
                q, worker, log, calls = self.run_mode(mode, tries=2)
                self.assertEqual(calls, 2)       # each attempt spent, then failed_jobs
                (row,) = q.failed()
                self.assertIn("exited %s: sendmail: mode %s" % (mode, mode), row["exception"])
                self.assertNotIn("temporary", row["exception"])
                self.assertNotIn("outage", row["exception"])


class MailSessionOutageTests(EmailTestMixin, unittest.TestCase):
    """Whatever stops the session (STARTTLS or AUTH not offered, a stalled
    server) is an outage: no attempt spent, nothing in failed_jobs."""

    def setUp(self):
        self.db = Backend(self)

    def assert_outage(self, q, worker, log, *words):
        self.assertEqual(worker.exit_code, 1, log)
        self.assertIn("mail server unavailable", log)
        self.assertIn("(outage)", log)
        for word in words:
            self.assertIn(word, log)
        self.assertEqual(q.failed(), [])
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)])

    def test_no_starttls_offered_is_an_outage_naming_mail_encryption(self):
        sink = PostfixSink(self)            # no certificate: STARTTLS is not offered
        q = self.mail_queue(sink, mail_encryption="starttls")
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=3)
        self.assert_outage(q, worker, log, "STARTTLS", "MAIL_ENCRYPTION=starttls")
        self.assertEqual(sink.messages, [])

    def test_no_auth_offered_is_an_outage_naming_mail_username(self):
        sink = PostfixSink(self)            # AUTH is not offered
        q = self.mail_queue(sink, mail_username="mailer", mail_password="S3cret-pw-here")
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=3)
        self.assert_outage(q, worker, log, "AUTH", "MAIL_USERNAME")
        self.assertNotIn("S3cret-pw-here", log)
        self.assertEqual(sink.messages, [])


class Tarpit:
    """A real SMTP server on 127.0.0.1 that answers every line (the greeting
    too) only after `delay` seconds, as a tarpitting or overloaded server does."""

    def __init__(self, testcase, delay):
        import socket
        self.delay = delay
        self.done = threading.Event()
        self.lines = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(5)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()
        testcase.addCleanup(self.stop)

    def serve(self):
        import socket
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self.session, args=(conn,), daemon=True).start()

    def session(self, conn):
        with conn:
            try:
                conn.settimeout(30)
                if self.done.wait(self.delay):
                    return
                conn.sendall(b"220 tarpit.test ESMTP\r\n")
                stream = conn.makefile("rb")
                for line in stream:
                    self.lines.append(line.strip())
                    if self.done.wait(self.delay):
                        return
                    word = line.split(b" ")[0].upper().strip()
                    if word == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        return
                    conn.sendall(b"250-tarpit.test\r\n250 8BITMIME\r\n" if word == b"EHLO"
                                 else b"250 ok\r\n")
            except OSError:
                return

    def stop(self):
        self.done.set()
        self.server.close()
        self.thread.join(5)


class MailSessionDeadlineTests(EmailTestMixin, unittest.TestCase):
    """A server too slow to open a session within the job's time is an outage."""

    def setUp(self):
        self.db = Backend(self)

    def test_a_tarpit_is_an_outage_before_the_job_times_out(self):
        server = Tarpit(self, 2.5)
        q = self.mail_queue(None, mail_port=server.port, mail_timeout=3)
        dbqueue.queue_email("a@example.com", "s", text="t", using=q)
        worker, log = self.work(q, tries=3, timeout=4)
        self.assertEqual(worker.exit_code, 1, log)
        self.assertIn("mail server unavailable", log)
        self.assertIn("the session did not open", log)
        self.assertIn("(outage)", log)
        self.assertNotIn("JobTimeout", log)
        self.assertEqual(q.failed(), [])
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"), [(0, None)])


class DashboardMaskTests:
    """The job page hides bearer and basic credentials, not the word before them."""

    add_failed, serve = DashboardTests.add_failed, DashboardTests.serve

    def test_authorization_header_values_are_masked_on_the_job_page(self):
        client = self.serve()
        failed_id = self.add_failed(
            exception="HTTPError: 401 for request with Authorization: Bearer eyJhbGc.SeCrEt-tOk3n"
                      "\nretry with authorization: basic dXNlcjpzM2NyZXQ=",
            data={"to": "ann@example.com", "note": "sent Authorization: Bearer N0te-T0ken-xyz"})
        resp = client.get("/failed/%d" % failed_id)
        self.assertEqual(resp.status, 200, resp.text)
        for secret in ("eyJhbGc", "SeCrEt-tOk3n", "dXNlcjpzM2NyZXQ", "N0te-T0ken-xyz"):
            self.assertNotIn(secret, resp.text)
        self.assertIn("Authorization: Bearer ***", resp.text)
        self.assertIn("authorization: basic ***", resp.text)
        listing = client.get("/failed").text
        self.assertNotIn("SeCrEt-tOk3n", listing)


on_backends(DashboardMaskTests, SQLITE)


class DashboardSearchTests:
    """?q= finds recipients and error texts, never what the pages mask."""

    add_failed, serve = DashboardTests.add_failed, DashboardTests.serve

    def test_search_finds_recipients_and_errors_but_not_link_tokens(self):
        client = self.serve()
        token = "Zq7tokenXyz"
        reset = self.add_failed(
            to="Ann <ann@example.com>", exception="RuntimeError: SMTP said 550 mailbox full",
            data={"to": "Ann <ann@example.com>", "template": "password-reset",
                  "vars": {"reset_link": "https://app.test/reset/%s" % token,
                           "display_name": "Ann"}})
        listed = self.add_failed(data={"to": ["bob@example.com", "Cy <cy@example.com>"],
                                       "subject": "Hi"})
        self.add_failed(data={"to": "dee@example.com"}, exception="ValueError: unrelated")
        p = self.db.param
        broken = self.db.raw("SELECT MAX(id) FROM {failed}")[0][0]
        self.db.raw("UPDATE {failed} SET payload = %s WHERE id = %s" % (p, p),
                    ("not json {eve@example.com", broken))

        def found(query):
            from urllib.parse import quote
            resp = client.get("/failed?q=" + quote(query))
            self.assertEqual(resp.status, 200, resp.text)
            return [int(r["ID"].strip()) for r in resp.page.rows]

        self.assertEqual(found("ANN@example"), [reset])
        self.assertEqual(found("cy@example.com"), [listed])
        self.assertEqual(found("mailbox full"), [reset])
        # The link's path is masked on every page; a search cannot reveal it
        # either, whole or one prefix at a time.
        for guess in (token, token[:3], "reset/zq", "app.test/reset", "password-reset"):
            self.assertEqual(found(guess), [], guess)
        # A payload that is not JSON is searched by its exception only, and
        # does not break the page.
        self.assertEqual(found("unrelated"), [broken])
        self.assertEqual(found("example.com"), [listed, reset])


on_backends(DashboardSearchTests)


@dbqueue.job("t_reset_expired")
def _t_reset_expired(data):
    raise ValueError("reset link https://app.example.com/reset/SECRETRESETTOKEN123 has expired")


class DashboardExceptionLinkTests:
    """A link's path in an exception is masked on every page and in `failed`,
    as in payloads: the host stays, the token goes."""

    TOKEN = "SECRETRESETTOKEN123"

    def test_a_link_in_an_exception_shows_its_host_only(self):
        q = self.db.queue()
        q.push("t_reset_expired", {"to": "ann@example.com"}, queue="emails")
        dbqueue.Worker(q, ["emails"], tries=1, log=quiet_log()).run(stop_when_empty=True)
        failed = q.failed()
        self.assertEqual(len(failed), 1)
        self.assertIn(self.TOKEN, failed[0]["exception"])    # stored whole; shown masked
        client = DashboardClient(start_dashboard(self, self.db.queue()))
        from urllib.parse import quote
        for path in ("/failed", "/failed/%d" % failed[0]["id"], "/failed?q=expired",
                     "/failed?q=" + quote("app.example.com"), "/failed?queue=emails"):
            resp = client.get(path)
            self.assertEqual(resp.status, 200, resp.text)
            self.assertNotIn(self.TOKEN, resp.text, path)
            self.assertIn("https://app.example.com/***", resp.text, path)
        for argv in (["failed"], ["failed", "--json"]):
            code, out, err = run_main(argv, self.db.env())
            self.assertEqual(code, 0, err)
            self.assertNotIn(self.TOKEN, out + err, argv)
            self.assertIn("https://app.example.com/***", out, argv)


on_backends(DashboardExceptionLinkTests, SQLITE_PG_MARIADB)


class TemplateWordingTests(EmailTestMixin, unittest.TestCase):
    """With no app name known anywhere, every built-in sentence reads naturally."""

    CASES = [("verification", {"verification_link": "/v"}),
             ("password-reset", {"reset_link": "/r"}),
             ("invitation", {"reset_link": "/r"}),
             ("account-approved", {"login_link": "/l"}),
             ("pending-approval-google", {}),
             ("verify_email", {"name": "", "url": "/v"}),
             ("password_reset", {"name": "", "url": "/r"}),
             ("invitation", {"name": "", "url": "/i", "inviter": "Bo"})]

    def setUp(self):
        self.db = Backend(self)

    def test_no_our_site_and_no_default_name_in_any_sentence(self):
        sink = SMTPSink(self)
        # No APP_NAME, no MAIL_FROM_NAME, and links without a host.
        q = self.mail_queue(sink, app_name="", mail_from_name="")
        for name, variables in self.CASES:
            for locale in ("en", "es"):
                dbqueue.queue_template_email("a@example.com", name,
                                             dict(variables, locale=locale), using=q)
        _, log = self.work(q, tries=1)
        self.assertEqual(len(sink.messages), 2 * len(self.CASES), log)
        import html as html_module
        import re
        subjects = []
        for _, msg, _ in sink.messages:
            text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
            shown = html_module.unescape(re.sub(r"<[^>]+>", " ", msg.get_body(("html",))
                                                .get_content()))
            subjects.append(msg["Subject"])
            for part in (msg["Subject"], text, shown):
                for bad in ("our site", "nuestro sitio", "User", "usuario", "$app_name",
                            "Hi ,", " .", " ,"):
                    self.assertNotIn(bad, part, (msg["Subject"], part))
            self.assertRegex(text, r"\A(Hello,|Hola:)\n")
            self.assertFalse(text.rstrip("\n").endswith("--"), text)
            self.assertNotIn("\n-- ", text)
        for expected in ("Reset your password", "Restablece tu contraseña",
                         "Your account has been approved", "Hemos aprobado tu cuenta",
                         "Confirm your email address", "Confirma tu correo electrónico",
                         "Your account is awaiting approval",
                         "Tu cuenta está pendiente de aprobación"):
            self.assertIn(expected, subjects)
        # A name given still greets by name and signs with the app's name.
        q = self.mail_queue(sink, app_name="Acme")
        dbqueue.queue_template_email("a@example.com", "password-reset",
                                     {"reset_link": "/r", "display_name": "Ann",
                                      "locale": "es"}, using=q)
        self.work(q, tries=1)
        msg = sink.messages[-1][1]
        self.assertEqual(msg["Subject"], "Restablece tu contraseña de Acme")
        text = msg.get_body(("plain",)).get_content()
        self.assertTrue(text.startswith("Hola, Ann:"), text)
        self.assertIn("-- \nAcme", text.replace("\r\n", "\n"))


class MailSevenBitCopyTests(EmailTestMixin, unittest.TestCase):
    """The 7-bit copy of a non-ASCII message is built only for a server
    without 8BITMIME."""

    def setUp(self):
        self.db = Backend(self)
        self.builds = []
        real = dbqueue._build_message

        def counting(fields, seven_bit=False):
            self.builds.append(seven_bit)
            return real(fields, seven_bit)
        dbqueue._build_message = counting
        self.addCleanup(setattr, dbqueue, "_build_message", real)

    def send(self, q):
        dbqueue.queue_email("a@example.com", "Grüße", text="Schöne Grüße, Zoë", using=q)
        self.builds.clear()
        worker, log = self.work(q, tries=1)
        self.assertIn("outcome=done", log)
        return self.builds

    def test_only_a_server_without_8bitmime_gets_a_7bit_copy_built(self):
        sink = PostfixSink(self)
        self.assertEqual(self.send(self.mail_queue(sink)), [False])
        self.assertEqual(sink.mail_options[-1], ["BODY=8BITMIME", sink.mail_options[-1][1]])
        script = os.path.join(self.db.tmp, "sendmail.py")
        with open(script, "w") as fh:
            fh.write("import sys\nsys.stdin.buffer.read()\n")
        q = self.mail_queue(None, mail_mailer="sendmail",
                            mail_sendmail_path="%s %s" % (sys.executable, script))
        self.assertEqual(self.send(q), [False])
        old = PostfixSink(self, eight_bit=False)
        self.assertEqual(self.send(self.mail_queue(old)), [False, True])
        self.assertTrue(old.raw[-1].isascii())
        self.assertIn("Schöne Grüße, Zoë", old.messages[-1][1].get_body(("plain",)).get_content())


class TemplateLayoutTests(EmailTestMixin, unittest.TestCase):
    """The three original templates are sent in the seed templates' layout."""

    def setUp(self):
        self.db = Backend(self)

    def test_original_templates_have_the_outlook_layout_and_their_sentences(self):
        sink = SMTPSink(self)
        q = self.mail_queue(sink)
        for template, variables in (("verify_email", {"expires": "24 hours"}),
                                    ("password_reset", {}),
                                    ("invitation", {"inviter": "Bo <b>"})):
            dbqueue.queue_template_email("a@example.com", template,
                                         dict(variables, name="Ann", url="https://x.test/a?b&c"),
                                         using=q)
        self.work(q, tries=1)
        texts = []
        for _, msg, _ in sink.messages:
            html = msg.get_body(("html",)).get_content()
            text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
            texts.append(text)
            self.assertIn('<td bgcolor="#2563eb"', html)       # the button is a table cell
            self.assertIn('bgcolor="#ffffff"', html)
            self.assertIn('href="https://x.test/a?b&amp;c"', html)
            self.assertIn("<title>%s</title>" % msg["Subject"], html)
            self.assertTrue(text.startswith("Hi Ann,\n\n"), text)
            self.assertTrue(text.endswith("\n\n-- \nAcme\n"), text)
            self.assertNotIn("\n\n\n", text)
        self.assertIn("This link expires in 24 hours.", texts[0])
        self.assertNotIn("expires", texts[1])
        self.assertIn("Bo <b> has invited you to join Acme.", texts[2])
        self.assertIn("Bo &lt;b&gt; has invited you", sink.messages[2][1].get_body(("html",))
                      .get_content())


# ---- MySQL and MariaDB ----------------------------------------------------
#
# The shared suite runs on MariaDB through BACKENDS (MariaDBBackend,
# MariaDBMySQLdbBackend, above), the worker-process and fault suites through
# SQLITE_PG_MARIADB. Here, what only MySQL has: URLs, drivers, the server version,
# session settings, lock conflicts, killed connections, a server restart.


class MySQLConfigTests(unittest.TestCase):
    """MySQL URLs, drivers and versions: no server needed."""

    def test_urls_name_the_dialect_the_driver_and_the_connect_arguments(self):
        cases = {
            "mysql://app:p%40ss@db.example:3307/shop": None,
            "mariadb://app:p%40ss@db.example:3307/shop": None,
            "mysql+pymysql://app:p%40ss@db.example:3307/shop": "pymysql",
            "MySQL+MySQLdb://app:p%40ss@db.example:3307/shop": "MySQLdb",
        }
        for url, driver in cases.items():
            dialect, target, name = dbqueue._parse_url(url)
            self.assertIs(dialect, dbqueue._MySQL)
            self.assertEqual(name, driver, url)
            self.assertEqual((target["host"], target["port"], target["user"], target["password"],
                              target["database"], target["charset"]),
                             ("db.example", 3307, "app", "p@ss", "shop", "utf8mb4"))
            self.assertNotIn("p%40ss", target["url"])
        _, target, _ = dbqueue._parse_url(
            "mysql://app@localhost/shop?unix_socket=/run/mysqld/mysqld.sock&connect_timeout=5"
            "&charset=utf8mb3")
        self.assertEqual((target["port"], target["unix_socket"], target["connect_timeout"],
                          target["charset"]), (3306, "/run/mysqld/mysqld.sock", 5, "utf8mb3"))

    def test_bad_mysql_urls_are_one_line_exit_2_without_the_password(self):
        for url, words in (("mysql://app:s3cret@host/db?sslmode=require", "sslmode"),
                           ("mysql://app:s3cret@host/", "names no database"),
                           ("mysql://app:s3cret@host:99999/db", "port"),
                           ("mysql://app:s3cret@host/db?connect_timeout=soon", "connect_timeout"),
                           ("mysql+nosuchdriver://app:s3cret@host/db", "nosuchdriver")):
            code, out, err = run_main(["stats"], {"QUEUE_DATABASE_URL": url})
            self.assertEqual(code, 2, (url, err))
            self.assertIn(words.lower(), one_line(self, err).lower(), url)
            self.assertNotIn("s3cret", err)

    def test_a_missing_driver_is_one_line_naming_pip_install_pymysql(self):
        # Neither driver importable (as in a bare venv), in a process of its own.
        script = textwrap.dedent("""
            import sys
            sys.modules["pymysql"] = sys.modules["MySQLdb"] = None
            import dbqueue
            sys.exit(dbqueue.main(["stats", "--database-url", "mysql://app@127.0.0.1:1/db"]))
            """)
        result = subprocess.run([sys.executable, "-c", script], cwd=HERE, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                                env=_fault_env({"PYTHONDONTWRITEBYTECODE": "1"}))
        self.assertEqual(result.returncode, 2, result.stderr)
        err = result.stderr.decode()
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("pip install PyMySQL", err)
        with self.assertRaises(dbqueue.ConfigError) as caught:
            dbqueue._MySQL.driver("nonexistent_mod")
        self.assertIn("pip install PyMySQL", str(caught.exception))

    def test_sqlite_and_postgres_never_import_a_mysql_driver(self):
        script = ("import sys, dbqueue; q = dbqueue.Queue(sys.argv[1]); q.push('x'); q.close();"
                  " print(sorted(m for m in ('pymysql', 'MySQLdb') if m in sys.modules))")
        with tempfile.TemporaryDirectory(prefix="dbqueue-test-") as tmp:
            out = subprocess.run([sys.executable, "-c", script, os.path.join(tmp, "q.db")],
                                 cwd=HERE, stdout=subprocess.PIPE, timeout=60, check=True).stdout
        self.assertEqual(out.decode().strip(), "[]")

    def test_servers_without_skip_locked_are_refused_with_the_version_needed(self):
        problem = dbqueue._MySQL.version_problem
        for version in ("8.0.1", "8.0.36", "8.4.0", "9.1.0", "5.5.5-10.6.0-MariaDB",
                        "5.5.5-10.11.6-MariaDB-0+deb12u1", "11.4.2-MariaDB"):
            self.assertIsNone(problem(version), version)
        for version, words in (("8.0.0", "MySQL 8.0.1 or later"),
                               ("5.7.44-log", "MySQL 8.0.1 or later"),
                               ("5.5.5-10.5.22-MariaDB-1:10.5.22", "MariaDB 10.6 or later"),
                               ("10.3.39-MariaDB", "MariaDB 10.6 or later")):
            text = problem(version)
            self.assertIn(words, text)
            self.assertIn("SKIP LOCKED", text)
            self.assertNotIn("\n", text)

    def test_schema_sql_holds_the_mysql_script(self):
        with open(os.path.join(HERE, "schema.sql"), encoding="utf-8") as fh:
            text = fh.read()
        self.assertIn("-- mysql (schema version", text)
        self.assertIn("ENGINE=InnoDB DEFAULT CHARSET=utf8mb4", text)
        self.assertNotIn("ON CONFLICT", "".join(dbqueue._MySQL.fail + dbqueue._MySQL.set_version))


class MySQLServerTests:
    """What only MySQL/MariaDB has, on the DBQUEUE_TEST_MYSQL server."""

    def setUp(self):
        del RECORD[:]

    def test_sessions_tables_and_the_claims_index(self):
        q = self.db.queue()
        conn = q.connect()
        cur = conn.cursor()
        cur.execute("SELECT @@session.autocommit, @@session.time_zone")
        self.assertEqual(tuple(cur.fetchone()), (1, "+00:00"))
        cur.execute(_ISOLATION_VARIABLES)
        self.assertEqual({value for _, value in cur.fetchall()}, {"READ-COMMITTED"})
        cur.execute("SELECT engine, table_collation FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name IN (%s, %s)",
                    (self.db.table, self.db.failed_table))
        self.assertEqual({tuple(r) for r in cur.fetchall()}, {("InnoDB", "utf8mb4_bin")})
        q.push_many("t_record", [{"i": i} for i in range(200)])
        q.push_many("t_record", [{"i": i} for i in range(50)], delay=3600)
        cur.execute("ANALYZE TABLE %s" % q.dialect.ident(self.db.table))
        cur.fetchall()
        text, names = q.sql("claim_select")
        cur.execute("EXPLAIN " + text, [{"queue": "default", "limit": 10}.get(n) for n in names])
        columns = [d[0].lower() for d in cur.description]
        plan = dict(zip(columns, cur.fetchone()))
        # The ready rows, in claim order, straight from the index: no sort.
        self.assertEqual(plan["key"], self.db.table + "_ready", plan)
        self.assertNotIn("filesort", plan["extra"] or "", plan)
        conn.close()

    def test_four_byte_utf8_payloads_round_trip(self):
        q = self.db.queue()
        q.push("t_record", {"text": "emoji \U0001F600 and \u00e9"})
        dbqueue.Worker(q, ["default"], log=quiet_log()).run(stop_when_empty=True)
        self.assertEqual(RECORD, [{"text": "emoji \U0001F600 and \u00e9"}])

    def test_push_many_over_several_statements_returns_the_right_ids(self):
        # 3 MB of payloads: more than one multi-row INSERT, ids still in order.
        q = self.db.queue()
        cur = q._conn().cursor()          # the session push_many runs in, this thread's

        def inserts():
            cur.execute("SHOW SESSION STATUS LIKE 'Com_insert'")
            return int(cur.fetchone()[1])
        before = inserts()
        ids = q.push_many("t_record", [{"i": i, "pad": "x" * 30000} for i in range(100)])
        statements = inserts() - before
        self.assertGreater(statements, 1)             # split under the 1 MB cap ...
        self.assertLess(statements, 10)               # ... each INSERT many rows
        rows = dict(self.db.raw("SELECT id, payload FROM {jobs}"))
        self.assertEqual([json.loads(rows[i])["data"]["i"] for i in ids], list(range(100)))

    def test_printed_schema_runs_twice_on_the_server(self):
        # `migrate --print` is what a DBA pastes: it must run as it is, and again.
        code, out, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        script = "".join(line for line in out.splitlines(True) if not line.startswith("--"))
        statements = [s for s in script.split(";\n") if s.strip()]
        conn = _mysql_connect(self.db.driver)
        self.addCleanup(conn.close)
        cur = conn.cursor()
        for _ in range(2):
            for statement in statements:
                cur.execute(statement)
        cur.execute("SELECT index_name, non_unique FROM information_schema.statistics WHERE"
                    " table_schema = DATABASE() AND table_name = %s AND seq_in_index = 1",
                    (self.db.table,))
        self.assertEqual({tuple(r) for r in cur.fetchall()},
                         {("PRIMARY", 0), (self.db.table + "_ready", 1),
                          (self.db.table + "_reserved", 1), (self.db.table + "_unique", 0),
                          (self.db.table + "_expires", 1)})

    def test_a_lock_wait_timeout_is_retried_not_reported(self):
        # Another session holds the row lock of a job the worker acknowledges
        # for longer than innodb_lock_wait_timeout: error 1205, which the
        # worker runs again until it goes through; no warning, no failed job.
        self.addCleanup(setattr, dbqueue._MySQL, "lock_wait_timeout",
                        dbqueue._MySQL.lock_wait_timeout)
        dbqueue._MySQL.lock_wait_timeout = 1
        q = self.db.queue()
        q.push_many("t_record", [{"i": 1}, {"i": 2}])
        stream = io.StringIO()
        w = dbqueue.Worker(q, ["default"], log=dbqueue._Log(stream=stream, level="debug"))
        w._conn = q.connect()
        jobs, _ = q.reserve(w._conn, ["default"], limit=2)
        holder = self.db.connect()
        self.addCleanup(holder.close)
        hcur = holder.cursor()
        hcur.execute("START TRANSACTION")
        hcur.execute('SELECT id FROM "%s" WHERE id = %s FOR UPDATE' % (self.db.table, "%s"),
                     (jobs[1].id,))
        result = []
        t = threading.Thread(target=lambda: result.append(
            w._db(lambda c: q.ack(c, [j.token for j in jobs]))))
        t.start()
        wait_for(lambda: "lock conflict" in stream.getvalue(), 20, 0.05, "a lock-wait timeout")
        hcur.execute("COMMIT")
        t.join(30)
        self.assertEqual(result, [[]])                 # both acknowledged, none lost
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}"), [(0,)])
        self.assertIn("MySQL error 1205", stream.getvalue())
        self.assertNotIn("WARNING", stream.getvalue())
        q.discard(w._conn)

    def test_driver_errors_are_classified(self):
        q = self.db.queue()
        module = __import__(self.db.driver)
        for code, conflict in ((1213, True), (1205, True), (2006, False), (2013, False)):
            error = q.translate(module.OperationalError(code, "message %d" % code))
            self.assertEqual((error.transient, error.conflict), (True, conflict), code)
            self.assertIn("(MySQL error %d)" % code, str(error))
        missing = q.translate(module.ProgrammingError(1146, "Table 'x.y' doesn't exist"))
        self.assertIsInstance(missing, dbqueue.MissingTableError)

    def test_a_killed_connection_is_replaced_at_the_next_push(self):
        q = self.db.queue()
        first = q.push("t_record", {"i": 1})
        cur = q._conn().cursor()
        cur.execute("SELECT CONNECTION_ID()")
        self.db.raw("KILL CONNECTION %d" % cur.fetchone()[0])
        with self.assertRaises(dbqueue.DatabaseError) as caught:
            q.push("t_record", {"i": 2})
        self.assertTrue(caught.exception.transient)
        self.assertGreater(q.push("t_record", {"i": 3}), first)   # a new connection
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}"), [(2,)])


on_backends(MySQLServerTests, MARIADB)


def _tcp_ports(pid):
    """The local TCP ports of process `pid`'s sockets (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, table)) as fh:
                for line in fh.readlines()[1:]:
                    fields = line.split()
                    if fields[9] in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


class MySQLLostConnectionTests(_WorkerProcesses, unittest.TestCase):
    """The server kills a worker's connections mid-run: it reconnects and carries on."""

    backend = MariaDBBackend

    def setUp(self):
        self.db = self.backend(self)
        need(sys.platform.startswith("linux"), "finding a worker's connections needs Linux /proc")
        need("unix_socket" not in MYSQL_URL, "the killed-connection test needs DBQUEUE_TEST_MYSQL"
             " over TCP (it finds a worker's connections by their ports)")
        self.process_setup()

    def threads_of(self, proc):
        ports = [str(port) for port in _tcp_ports(proc.pid)]
        if not ports:
            return set()
        # host is "127.0.0.1:port", or "localhost:port" where the name resolves.
        rows = self.db.raw("SELECT id FROM information_schema.processlist"
                           " WHERE SUBSTRING_INDEX(host, ':', -1) IN (%s)"
                           % ", ".join(["%s"] * len(ports)), ports)
        return {row[0] for row in rows}

    def test_killed_connections_are_retried(self):
        q = self.db.queue()
        flag = os.path.join(self.ptmp, "flag")
        q.push("p_until", {"flag": flag})
        total = 30
        q.push_many("p_append", [{"n": i} for i in range(total)])
        # retry_after=2: the heartbeat opens its own connection within a second.
        proc = self.start_worker("--stop-when-empty", QUEUE_RETRY_AFTER=2)
        wait_for(lambda: self.lines() == ["start"] and len(self.threads_of(proc)) >= 2, 30,
                 message="the job to start and the heartbeat to connect")
        old = self.threads_of(proc)
        for thread in old:
            self.db.raw("KILL CONNECTION %d" % thread)
        # The main thread is still in the handler: a new connection is the heartbeat's.
        wait_for(lambda: self.threads_of(proc) - old, 30, message="the heartbeat to reconnect")
        open(flag, "w").close()
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        err = self.stderr(proc)
        warnings = [line for line in err.splitlines() if " WARNING " in line or " ERROR " in line]
        self.assertEqual(len(warnings), 1, err)
        self.assertIn("database unavailable; retrying with backoff", warnings[0])
        self.assertIn("database available again", err)
        self.assertNotIn("Traceback", err)
        lines = self.lines()
        self.assertEqual(lines[:2], ["start", "end"])
        self.assertEqual(sorted(lines[2:]), sorted("done %d" % i for i in range(total)))
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)


class MySQLLostConnectionMySQLdbTests(MySQLLostConnectionTests):
    backend = MariaDBMySQLdbBackend


class MySQLReadmeTests(unittest.TestCase):
    """The README's `# needs MySQL` commands work on the DBQUEUE_TEST_MYSQL server."""

    setUp = ConfigReadmeTests.setUp
    run_block = ConfigReadmeTests.run_block
    commands = ConfigReadmeTests.commands

    def test_the_mysql_commands_work_on_the_test_server(self):
        import re
        import shlex
        db = MariaDBBackend(self)
        env = dict(self.env, QUEUE_TABLE=db.table, QUEUE_FAILED_TABLE=db.failed_table)
        ran = 0
        for block in readme_blocks("sh"):
            lines = self.commands(block, lambda needs: needs is not None
                                  and needs.group(1).strip().startswith("MySQL"))
            lines = [re.sub(r"'?mysql://[^\s']+'?", shlex.quote(MYSQL_URL), l) for l in lines]
            if lines:
                self.run_block(lines, env)
                ran += len(lines)
        self.assertGreaterEqual(ran, 4)
        self.assertEqual(db.raw("SELECT COUNT(*) FROM {jobs}"), [(0,)])


MARIADB_PASSWORD = "Mq4-s3cr3t-v8Tz"


# The watchdog's way to stop mariadbd, as a crash would: SIGKILL the pid in its pid file.
_KILL_PID_IN_FILE = "import os, sys; os.kill(int(open(sys.argv[1]).read()), 9)"


class PrivateMariaDB(_PrivateServer):
    """A mariadbd of the fault tests' own: a data directory in a temp dir, its
    own port and socket, run as the mysql user. It can be killed and started
    again without touching the server DBQUEUE_TEST_MYSQL names.

    Started once per test run when first needed and stopped at the end.
    """

    what, user = "a private MariaDB server", "mysql"

    @classmethod
    def check(cls):
        need(shutil.which("mariadbd", path=os.environ.get("PATH", "") + ":/usr/sbin")
             and shutil.which("mariadb-install-db"),
             "MariaDB is not installed (mariadbd, mariadb-install-db: apt-get install mariadb-server)")
        need(mysql_available("pymysql") is None, mysql_available("pymysql") or "")

    def __init__(self):
        self.make_dir("dbqueue-mariadb-")
        self.socket = os.path.join(self.dir, "mysqld.sock")
        self.proc = None
        try:
            result = subprocess.run(
                ["runuser", "-u", "mysql", "--", "mariadb-install-db", "--no-defaults",
                 "--datadir=" + self.data, "--auth-root-authentication-method=socket",
                 "--skip-test-db"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=120)
            if result.returncode != 0:
                raise RuntimeError("mariadb-install-db failed: %s" % result.stdout.decode()[-1000:])
            self.start()
            conn = __import__("pymysql").connect(unix_socket=self.socket, user="root")
            try:
                cur = conn.cursor()
                cur.execute("CREATE DATABASE dbq")
                cur.execute("CREATE USER 'dbq'@'127.0.0.1' IDENTIFIED BY '%s'" % MARIADB_PASSWORD)
                cur.execute("GRANT ALL ON dbq.* TO 'dbq'@'127.0.0.1'")
            finally:
                conn.close()
            self._watch(sys.executable, "-c", _KILL_PID_IN_FILE, os.path.join(self.dir, "mysqld.pid"))
        except BaseException:
            self.stop()
            raise

    def start(self):
        log_path = os.path.join(self.dir, "server.log")
        seen = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["runuser", "-u", "mysql", "--", "mariadbd", "--no-defaults",
                 "--datadir=" + self.data, "--socket=" + self.socket, "--port=%d" % self.port,
                 "--bind-address=127.0.0.1", "--pid-file=" + os.path.join(self.dir, "mysqld.pid"),
                 "--innodb-buffer-pool-size=64M", "--max-connections=60"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        def ready():
            # Its log, not a connection: a client turned away while the server
            # starts leaves PyMySQL's socket open (a ResourceWarning later).
            if self.proc.poll() is not None:
                raise RuntimeError("mariadbd exited: %s" % self.log_tail())
            with open(log_path, "rb") as fh:
                fh.seek(seen)
                return b"ready for connections" in fh.read()
        wait_for(ready, 60, 0.05, "the private mariadbd to answer")

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as fh:
                return fh.read()[-1500:]
        except OSError:
            return ""

    def url(self, driver="pymysql"):
        return "mysql+%s://dbq:%s@127.0.0.1:%d/dbq" % (driver, MARIADB_PASSWORD, self.port)

    def kill(self):
        """SIGKILL the server, as a crash or an OOM kill would; start() brings it back."""
        with open(os.path.join(self.dir, "mysqld.pid")) as fh:
            pid = int(fh.read())
        os.kill(pid, signal.SIGKILL)
        self.proc.wait(30)
        wait_for(lambda: not os.path.exists("/proc/%d" % pid), 30, 0.05, "mariadbd to die")

    def halt(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.kill()
            except Exception:
                self.proc.kill()


class PrivateMariaDBTests(unittest.TestCase):
    """mariadbd killed under running workers, and its password in errors."""

    def setUp(self):
        self.server = PrivateMariaDB.get()
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.table = unique_table()

    def config(self, url):
        return dbqueue.Config(database_url=url, table=self.table, failed_table=self.table + "_f",
                              retry_after=5, backoff=[0])

    @heavy
    def test_killed_and_restarted_mid_drain_workers_reconnect_and_finish(self):
        total = 3000
        q = dbqueue.Queue(config=self.config(self.server.url()))
        self.addCleanup(q.close)
        q.migrate()
        for start in range(0, total, 1000):
            q.push_many("fault_sleep", [{"n": n, "ms": 4} for n in range(start, start + 1000)])
        log = os.path.join(self.tmp, "runs.log")
        env = _fault_env({"QUEUE_TABLE": self.table, "QUEUE_FAILED_TABLE": self.table + "_f",
                          "QUEUE_RETRY_AFTER": "5", "QUEUE_BACKOFF": "0", "FAULT_LOG": log})
        procs = _Procs(self, self.tmp, env)
        drivers = ["pymysql", "pymysql"]
        if mysql_available("MySQLdb") is None:
            drivers.insert(1, "mysqldb")      # each driver notices a dead server its own way
        workers = [procs.start("--sleep", "0.5", QUEUE_DATABASE_URL=self.server.url(driver))
                   for driver in drivers]

        def done():
            return len([f for f in _records(log) if f[0] == "end"])
        wait_for(lambda: done() >= total // 5, 60, 0.05, "a fifth of the jobs")
        before = done()
        killed = time.monotonic()
        self.server.kill()
        time.sleep(1.0)          # down for a moment: the workers see refused connections
        self.server.start()
        restart_seconds = time.monotonic() - killed
        q.close()

        def left():
            try:
                return q.stats()
            except dbqueue.DatabaseError:
                q.close()
                return None
        wait_for(lambda: left() == [], 120, 0.2, "the drain after the restart")
        after = time.monotonic() - killed
        for proc in workers:
            self.assertIsNone(proc.poll(), "a worker died: " + procs.stderr(proc)[-2000:])
            proc.terminate()
        for proc in workers:
            self.assertEqual(proc.wait(30), 0)
            text = procs.stderr(proc)
            self.assertIn("database unavailable; retrying with backoff", text)
            self.assertIn("database available again", text)
            self.assertNotIn("Traceback", text)
            self.assertNotIn(MARIADB_PASSWORD, text)
        ends = {}
        for fields in _records(log):
            if fields[0] == "end":
                ends[int(fields[1])] = ends.get(int(fields[1]), 0) + 1
        self.assertEqual(set(ends), set(range(total)), "lost jobs")
        self.assertEqual(q.failed(), [])
        print("\n[mariadb restart] mariadbd SIGKILLed after %d of %d jobs, started again %.1fs"
              " later; %d workers (%s) reconnected by themselves and drained the rest %.1fs"
              " after the kill; %d jobs ran twice, none lost"
              % (before, total, restart_seconds, len(workers), ", ".join(drivers), after,
                 sum(1 for c in ends.values() if c > 1)), file=sys.stderr)

    def test_an_account_that_may_not_write_is_one_line_exit_1(self):
        # A role without rights is not an outage to wait out (SPEC): one line
        # naming the fix, exit 1, from work and health alike.
        root = __import__("pymysql").connect(unix_socket=self.server.socket, user="root")
        self.addCleanup(root.close)
        cur = root.cursor()
        cur.execute("CREATE USER IF NOT EXISTS 'dbq_ro'@'127.0.0.1' IDENTIFIED BY 'r3ad-0nly'")
        cur.execute("GRANT SELECT ON dbq.* TO 'dbq_ro'@'127.0.0.1'")
        q = dbqueue.Queue(config=self.config(self.server.url()))
        self.addCleanup(q.close)
        q.migrate()
        q.push("t_record", {"i": 1})
        env = {"QUEUE_DATABASE_URL": "mysql://dbq_ro:r3ad-0nly@127.0.0.1:%d/dbq" % self.server.port,
               "QUEUE_TABLE": self.table, "QUEUE_FAILED_TABLE": self.table + "_f"}
        for argv in (["work", "--stop-when-empty"], ["health"]):
            code, out, err = run_main(argv, env)
            self.assertEqual(code, 1, (argv, out, err))
            line = [l for l in (out + err).splitlines() if "cannot write" in l]
            self.assertEqual(len(line), 1, (argv, out, err))
            self.assertIn("grant the account", line[0])
            self.assertNotIn("r3ad-0nly", out + err)
            self.assertNotIn("Traceback", out + err)
        self.assertEqual(q.stats()[0]["ready"], 1)         # nothing lost, nothing moved

    def test_password_never_shown_when_authentication_fails(self):
        for driver in ("pymysql", "mysqldb"):
            if driver == "mysqldb":
                need(mysql_available("MySQLdb") is None, mysql_available("MySQLdb") or "")
            wrong = "wr0ng-" + MARIADB_PASSWORD
            url = "mysql+%s://dbq:%s@127.0.0.1:%d/dbq" % (driver, wrong, self.server.port)
            env = {"QUEUE_DATABASE_URL": url, "QUEUE_TABLE": self.table}
            for argv in (["migrate"], ["work", "--once"], ["stats"], ["health"]):
                code, out, err = run_main(argv, env)
                self.assertEqual(code, 1, (argv, out, err))
                self.assertIn("Access denied", out + err)
                self.assertNotIn("wr0ng", out + err)


# ---- Concurrency: work --concurrency N ----

_CONCURRENCY_HANDLERS = """
import os, time
import dbqueue

OUT = os.environ["T_OUT"]


def mark(*parts):
    line = " ".join(str(p) for p in parts) + "\\n"
    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def nap(seconds):
    # Sleeps in Python, a hundredth at a time: a slot's JobTimeout can land.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


@dbqueue.job("c_nap")
def c_nap(data):
    mark("start", data["n"], time.time())
    nap(data.get("s", 0.1))
    mark("end", data["n"], time.time())


@dbqueue.job("c_hang_once")
def c_hang_once(data):
    job = dbqueue.current_job()
    mark("hang", job.attempts, time.time())
    if job.attempts == 1:
        nap(3600)
    mark("hang-done", job.attempts, time.time())


@dbqueue.job("c_stubborn")
def c_stubborn(data):
    mark("stubborn", time.time())
    while True:
        try:
            nap(3600)
        except dbqueue.JobTimeout:
            mark("ignored")
"""


class _SlowSink(SMTPSink):
    """The SMTP test server, taking `delay` seconds per message."""

    delay = 0.02

    async def handle_DATA(self, server, session, envelope):
        import asyncio
        await asyncio.sleep(self.delay)
        return await SMTPSink.handle_DATA(self, server, session, envelope)

    def message_ids(self):
        return [m["Message-ID"] for _, m, _ in self.messages]


def _max_overlap(spans):
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@on_backends(SQLITE_PG_MARIADB)
class ConcurrencyTests(_WorkerProcesses, EmailTestMixin):
    """work --concurrency N: real worker processes, threads inside, a real SMTP server."""

    def setUp(self):
        self.process_setup()
        with open(os.path.join(self.ptmp, "dbq_conc_handlers.py"), "w") as fh:
            fh.write(_CONCURRENCY_HANDLERS)

    def start_conc(self, *args, **env):
        return self.start_worker("--import", "dbq_conc_handlers", *args, **env)

    def spans(self):
        starts, ends = {}, {}
        for line in self.lines():
            word, rest = line.split(" ", 1)
            if word in ("start", "end"):
                n, stamp = rest.split()
                (starts if word == "start" else ends)[n] = float(stamp)
        return starts, ends

    def reserved(self):
        return self.db.raw("SELECT COUNT(*) FROM {jobs} WHERE reserved_at IS NOT NULL")[0][0]

    def test_each_mail_once_and_sigterm_drains_the_jobs_in_hand(self):
        sink = _SlowSink(self)
        q = self.mail_queue(sink)
        count = 200
        for i in range(count):
            dbqueue.queue_email("r%d@example.com" % i, "m%d" % i, text="t", using=q)
        env = dict(MAIL_HOST="127.0.0.1", MAIL_PORT=sink.port, MAIL_FROM_ADDRESS="a@example.com")
        proc = self.start_conc("--queue", "emails", "--concurrency", "8", **env)
        wait_for(lambda: len(sink.messages) >= 30, 60, message="30 mails")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0, self.stderr(proc))
        self.assertEqual(self.reserved(), 0)          # every job in hand finished or went back
        sent = len(sink.messages)
        self.assertLess(sent, count)                  # stopped in the middle
        self.assertEqual(self.jobs_left(), count - sent)
        self.assertIn("stopping after the jobs in hand", self.stderr(proc))
        proc = self.start_conc("--queue", "emails", "--concurrency", "8", "--stop-when-empty",
                               **env)
        self.assertEqual(self.finish(proc, 120), 0, self.stderr(proc))
        ids = sink.message_ids()
        self.assertEqual(len(ids), count)
        self.assertEqual(len(set(ids)), count)        # each message exactly once
        self.assertEqual(sink.subjects(), sorted("m%d" % i for i in range(count)))
        self.assertEqual(self.jobs_left(), 0)
        self.assertEqual(q.failed(), [])
        # Sessions are per slot and reused: far fewer than one per message.
        self.assertLessEqual(sink.connections, 2 * 8 + 4)

    def test_max_jobs_counts_across_slots_and_jobs_overlap(self):
        q = self.db.queue()
        q.push_many("c_nap", [{"n": n, "s": 0.3} for n in range(20)])
        proc = self.start_conc("--concurrency", "4", "--max-jobs", "10")
        self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc))
        starts, ends = self.spans()
        self.assertEqual(len(ends), 10, self.lines())
        self.assertEqual(sorted(starts), sorted(ends))
        self.assertEqual(self.jobs_left(), 10)
        self.assertEqual(self.reserved(), 0)
        most = _max_overlap([(starts[n], ends[n]) for n in ends])
        self.assertGreaterEqual(most, 2)              # really at once
        self.assertLessEqual(most, 4)                 # never more than N

    def test_once_still_means_one_job(self):
        q = self.db.queue()
        q.push_many("c_nap", [{"n": n, "s": 0.05} for n in range(5)])
        proc = self.start_conc("--concurrency", "4", "--once")
        self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc))
        self.assertEqual(len(self.spans()[1]), 1)
        self.assertEqual(self.jobs_left(), 4)

    def test_timeout_in_a_slot_is_a_retried_attempt_while_other_slots_run(self):
        q = self.db.queue()
        hang = q.push("c_hang_once", {}, timeout=1)
        q.push_many("c_nap", [{"n": n, "s": 0.2} for n in range(6)])
        proc = self.start_conc("--concurrency", "3", "--stop-when-empty", QUEUE_BACKOFF=0)
        self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc))
        lines = self.lines()
        hangs = [line.split() for line in lines if line.startswith("hang")]
        self.assertEqual([h[:2] for h in hangs], [["hang", "1"], ["hang", "2"],
                                                  ["hang-done", "2"]], lines)
        first = float(hangs[0][2])
        starts, ends = self.spans()
        self.assertEqual(len(ends), 6)
        # The other slots ran jobs while the first attempt hung (all six only if
        # the machine keeps up: an order, not a race against the 1 s timeout).
        self.assertLess(min(ends.values()), float(hangs[1][2]))
        self.assertGreaterEqual(float(hangs[1][2]) - first, 0.9)    # its timeout, not sooner
        err = self.stderr(proc)
        self.assertRegex(err, r"id=%d .*outcome=released .*timeout" % hang)
        self.assertEqual(self.jobs_left(), 0)
        self.assertEqual(q.failed(), [])

    def test_a_handler_that_ignores_its_timeout_ends_the_process_with_1(self):
        q = self.db.queue()
        stuck = q.push("c_stubborn", {}, timeout=1)
        others = q.push_many("c_nap", [{"n": n, "s": 3600} for n in range(2)], timeout=0)
        started = time.monotonic()
        proc = self.start_conc("--concurrency", "3", T_GRACE=1, QUEUE_BACKOFF=30)
        self.assertEqual(self.finish(proc, 60), 1, self.stderr(proc))
        self.assertLess(time.monotonic() - started, 30)
        err = self.stderr(proc)
        self.assertIn("did not stop after its timeout", err)
        self.assertIn("ignored", self.lines())
        # Its attempt is recorded (released with backoff, counted) ...
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs} WHERE id = %d"
                                     % stuck), [(1, None)])
        # ... and the jobs still running in the other slots went back unspent, ready now.
        rows = self.db.raw("SELECT attempts, reserved_at FROM {jobs} WHERE id IN (%d, %d)"
                           % tuple(others))
        self.assertEqual(rows, [(0, None), (0, None)])
        self.assertEqual(err.count("given back unspent"), 2, err)

    def test_a_second_sigint_gives_every_job_in_hand_back_and_exits_130(self):
        q = self.db.queue()
        q.push_many("c_nap", [{"n": n, "s": 3600} for n in range(3)])
        proc = self.start_conc("--concurrency", "3")
        wait_for(lambda: len(self.spans()[0]) == 3, 30, message="three jobs running")
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "stopping after the jobs in hand" in self.stderr(proc), 10,
                 message="the first interrupt")
        proc.send_signal(signal.SIGINT)
        self.assertEqual(self.finish(proc), 130, self.stderr(proc))
        self.assertEqual(self.db.raw("SELECT attempts, reserved_at FROM {jobs}"),
                         [(0, None)] * 3)

    def test_a_mail_outage_pauses_every_slot_once_and_nothing_is_spent(self):
        need(_aiosmtpd() is not None, "aiosmtpd is not installed (pip install aiosmtpd)")
        port = free_port()
        q = self.mail_queue(None, mail_port=port)
        for i in range(12):
            dbqueue.queue_email("r%d@example.com" % i, "m%d" % i, text="t", using=q)
        proc = self.start_conc("--queue", "emails", "--concurrency", "4", "-v",
                               MAIL_HOST="127.0.0.1", MAIL_PORT=port, QUEUE_MAX_ATTEMPTS=1,
                               MAIL_FROM_ADDRESS="a@example.com")
        wait_for(lambda: "mail server still unavailable" in self.stderr(proc), 30,
                 message="a failed probe")
        sink = _SlowSink(self, port=port)
        wait_for(lambda: len(sink.messages) == 12, 60, message="every mail")
        wait_for(lambda: self.jobs_left() == 0, 30, message="the jobs to be deleted")
        self.assertEqual(sorted(set(sink.message_ids())), sorted(sink.message_ids()))
        self.assertEqual(q.failed(), [])             # one attempt allowed, none spent
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.finish(proc), 0)
        err = self.stderr(proc)
        self.assertEqual(err.count("pausing mail"), 1, err)
        self.assertEqual(err.count("mail server available again"), 1, err)

    def test_the_heartbeat_keeps_every_slot_s_job_while_another_worker_claims(self):
        # Leases of 1 s, jobs of 3 s: without the heartbeat renewing each
        # slot's job, the second worker would take them over and run them twice.
        q = self.db.queue()
        q.push_many("c_nap", [{"n": n, "s": 3} for n in range(6)])
        procs = [self.start_conc("--concurrency", "3", "--stop-when-empty", QUEUE_RETRY_AFTER=1)
                 for _ in range(2)]
        for proc in procs:
            self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc))
        starts = [line.split()[1] for line in self.lines() if line.startswith("start")]
        self.assertEqual(sorted(starts), [str(n) for n in range(6)])    # each once
        self.assertEqual(self.jobs_left(), 0)
        for proc in procs:
            self.assertNotIn("lost", self.stderr(proc))

    def test_memory_and_max_time_stop_claiming_and_finish_the_jobs_in_hand(self):
        q = self.db.queue()
        q.push_many("c_nap", [{"n": n, "s": 0.3} for n in range(40)])
        proc = self.start_conc("--concurrency", "4", "--memory", "1")    # over it at once
        self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc))
        starts, ends = self.spans()
        self.assertEqual(sorted(starts), sorted(ends))    # each job started also finished
        self.assertLessEqual(len(ends), 8)
        self.assertEqual(self.stderr(proc).count("memory limit reached"), 1)
        left = self.jobs_left()
        self.assertEqual(left, 40 - len(ends))
        started = time.monotonic()
        proc = self.start_conc("--concurrency", "4", "--max-time", "1")
        self.assertEqual(self.finish(proc, 60), 0, self.stderr(proc))
        self.assertLess(time.monotonic() - started, 20)
        starts, ends = self.spans()
        self.assertEqual(sorted(starts), sorted(ends))
        self.assertEqual(self.reserved(), 0)
        self.assertEqual(self.jobs_left(), 40 - len(ends))
        self.assertGreater(self.jobs_left(), 0)           # stopped before the queue ran dry

    def test_bad_concurrency_exits_2(self):
        for value in ("0", "x", "100000"):
            code, _, err = run_main(["work", "--concurrency", value], self.db.env())
            self.assertEqual(code, 2, err)
            self.assertIn("--concurrency", err)



class ConcDriverTests(_WorkerProcesses):
    """work --concurrency 4 through the other drivers, psycopg2 and mysqlclient:
    a drain of 50 jobs runs each job once."""

    def setUp(self):
        self.process_setup()
        with open(os.path.join(self.ptmp, "dbq_conc_handlers.py"), "w") as fh:
            fh.write(_CONCURRENCY_HANDLERS)

    def test_a_drain_with_four_slots_runs_each_job_once(self):
        q = self.db.queue()
        q.push_many("c_nap", [{"n": n, "s": 0.05} for n in range(50)])
        proc = self.start_worker("--import", "dbq_conc_handlers", "--concurrency", "4",
                                 "--stop-when-empty")
        self.assertEqual(self.finish(proc, 120), 0, self.stderr(proc))
        starts = sorted(int(line.split()[1]) for line in self.lines()
                        if line.startswith("start "))
        ends = sorted(int(line.split()[1]) for line in self.lines() if line.startswith("end "))
        self.assertEqual(starts, list(range(50)))
        self.assertEqual(ends, list(range(50)))
        stamps = {}
        for line in self.lines():
            word, n, stamp = line.split()
            stamps.setdefault(n, []).append(float(stamp))
        self.assertGreaterEqual(_max_overlap(stamps.values()), 2)     # slots ran side by side
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)
        self.assertEqual(q.failed(), [])
        self.assertNotIn("Traceback", self.stderr(proc))


on_backends(ConcDriverTests, [Psycopg2Backend, MariaDBMySQLdbBackend])

if __name__ == "__main__":
    unittest.main()
