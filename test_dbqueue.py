"""The dbqueue test suite: `python -m unittest -v test_dbqueue`.

Every queue and worker test runs against a real SQLite file and, when a
server is reachable, a real PostgreSQL through psycopg (3) and psycopg2.
Tests that need PostgreSQL, a driver or aiosmtpd skip with the reason when
they are missing; with DBQUEUE_REQUIRE_ALL=1 (set by .ci/run) those skips
are failures instead.

PostgreSQL: DBQUEUE_TEST_PG names a libpq URL of a database the tests may
create tables in (default: postgresql:///dbqueue_test?host=/var/run/postgresql,
created when missing). Each test uses tables of its own.
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
PG_URL = os.environ.get("DBQUEUE_TEST_PG",
                        "postgresql:///dbqueue_test?host=/var/run/postgresql")


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


_pg_state = {}


def pg_available(driver):
    """None when PostgreSQL through `driver` can be used, else the reason it cannot."""
    key = driver
    if key in _pg_state:
        return _pg_state[key]
    reason = None
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
            rows = cur.fetchall() if cur.description else []
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


BACKENDS = [Backend, PsycopgBackend, Psycopg2Backend]


def on_every_backend(mixin):
    """Make one TestCase per backend from a mixin of tests that use self.db."""
    module = sys.modules[mixin.__module__]
    for backend in BACKENDS:
        suffix = {"sqlite": "SQLite", "psycopg": "Psycopg", "psycopg2": "Psycopg2"}[
            backend.driver or "sqlite"]
        name = mixin.__name__.replace("Tests", "") + suffix + "Tests"

        def setUp(self, _backend=backend, _mixin=mixin):
            self.db = _backend(self)
            if hasattr(_mixin, "setUp"):
                _mixin.setUp(self)

        cls = type(name, (mixin, unittest.TestCase), {"setUp": setUp, "backend": backend})
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


def run_main(argv, env=None):
    """main(argv) in-process with `env` as the environment: (code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    cwd = os.getcwd()
    tmp = tempfile.mkdtemp(prefix="dbqueue-cwd-")
    try:
        os.environ.clear()
        os.environ.update({k: v for k, v in saved.items()
                           if not k.startswith(("QUEUE_", "MAIL_", "DATABASE_URL"))})
        os.environ.update(env or {})
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
# The queue and the worker (issue 2) ##########################################
###############################################################################

@on_every_backend
class CoreTests:

    def setUp(self):
        del RECORD[:]

    def worker(self, q, queues=("default",), **kw):
        return dbqueue.Worker(q, list(queues), log=quiet_log(), **kw)

    def test_push_and_work_in_order(self):
        q = self.db.queue()
        for i in range(5):
            q.push("t_record", {"i": i})
        self.assertEqual(self.worker(q).run(stop_when_empty=True), 5)
        self.assertEqual([d["i"] for d in RECORD], [0, 1, 2, 3, 4])
        self.assertEqual(self.db.raw("SELECT COUNT(*) FROM {jobs}")[0][0], 0)

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


# -- core tests end here --


###############################################################################
# Email (issue 3) #############################################################
###############################################################################

# -- email tests end here --


###############################################################################
# Operating: the command line (issue 4) #######################################
###############################################################################

# -- operations tests end here --


###############################################################################
# Speed (issue 5) #############################################################
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

dbqueue.Worker(dbqueue.Queue.from_env(), ["default"], log=dbqueue._Log(stream=sys.stdout)).run()
"""


@dbqueue.job("t_batch")
def _t_batch_record(data):
    RECORD.append(data)


@on_every_backend
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
        env = dict(os.environ, **self.db.env())
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
            tables = self.db.raw("SELECT tablename FROM pg_tables WHERE tablename LIKE"
                                 " 'dbqueue_bench%%' AND tablename LIKE %s",
                                 ("%%_%d%%" % os.getpid(),))
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
# Faults (issue 6) ############################################################
###############################################################################

# -- fault tests end here --


if __name__ == "__main__":
    unittest.main()
