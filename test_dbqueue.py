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
        else:
            conn = __import__(self.db.driver).connect(PG_URL)
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
        self.assertIn("python dbqueue.py migrate", str(caught.exception))
        code, out, err = run_main(["work", "--once"], self.db.env())
        self.assertEqual(code, 1, err)
        errors = [line for line in err.splitlines() if line.startswith("dbqueue:")]
        self.assertEqual(len(errors), 1, err)
        self.assertIn("python dbqueue.py migrate", errors[0])
        self.assertNotIn("Traceback", err)

    def test_migrate_is_idempotent(self):
        q = self.db.queue()
        q.push("t_record", {"i": 1})
        self.assertEqual(q.migrate(), 1)
        code, out, err = run_main(["migrate"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertEqual(q.schema_version(), 1)
        p = self.db.param
        self.assertEqual(self.db.raw("SELECT version FROM dbqueue_migrations WHERE tbl = %s" % p,
                                     (self.db.table,)), [(1,)])
        self.assertEqual(self.count(), 1)          # the data survived
        code, out, err = run_main(["migrate", "--print"], self.db.env())
        self.assertEqual(code, 0, err)
        self.assertIn('CREATE TABLE IF NOT EXISTS "%s"' % self.db.table, out)
        self.assertIn("-- %s" % self.db.name, out)

    def test_worker_without_returning(self):
        if self.db.name != "sqlite":
            self.skipTest("the fallback exists for SQLite before 3.35 only")
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
                             " `python dbqueue.py migrate --print --all > schema.sql`")


# -- worker subprocesses ------------------------------------------------------

_HANDLERS = '''
import os, sys, time
import dbqueue

dbqueue.Worker.timeout_grace = float(os.environ.get("T_GRACE", "10"))
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
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QUEUE_", "MAIL_", "DATABASE_URL"))}
        env.update(self.db.env())
        env.update({"PYTHONPATH": self.ptmp, "T_OUT": self.out})
        env.update({k: str(v) for k, v in env_extra.items()})
        n = len(getattr(self, "_procs", []))
        err = open(os.path.join(self.ptmp, "stderr%d.txt" % n), "w+")
        self.addCleanup(err.close)
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "dbqueue.py"), "work", "--sleep", "0.2",
             "--import", "dbq_test_handlers"] + list(args),
            cwd=self.ptmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=err)
        proc.errfile = err
        self._procs = getattr(self, "_procs", []) + [proc]

        def stop():
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        self.addCleanup(stop)
        return proc

    def stderr(self, proc):
        proc.errfile.flush()
        with open(proc.errfile.name) as fh:
            return fh.read()

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


def on_sqlite_and_postgres(mixin):
    """Like on_every_backend, for slow subprocess tests: SQLite and psycopg only."""
    global BACKENDS
    saved = BACKENDS
    BACKENDS = [Backend, PsycopgBackend]
    try:
        return on_every_backend(mixin)
    finally:
        BACKENDS = saved


@on_sqlite_and_postgres
class CoreProcessTests(_WorkerProcesses):

    def setUp(self):
        self.process_setup()

    # -- timeouts --------------------------------------------------------------

    def test_timeout_interrupts_sleep_and_socket_read(self):
        # SIGALRM is the worker's, not the database's: one backend is enough
        # (the hard-exit test below covers PostgreSQL's release and fail).
        if self.db.name != "sqlite":
            self.skipTest("runs on SQLite only")
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

    def test_second_sigint_stops_a_handler_that_ignores_it(self):
        if self.db.name != "sqlite":
            self.skipTest("the hard exit is the worker's; the next test covers PostgreSQL")
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
        # Three: the worker's, the heartbeat's, and the one `work` checked the tables on.
        wait_for(lambda: self.lines() == ["start"] and len(self.db.raw(pids, (app_name,))) >= 3,
                 30, message="the job to start and the heartbeat to connect")
        killed = self.db.raw("SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE application_name = %s", (app_name,))
        self.assertEqual([ok for _, ok in killed], [True, True, True])
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
# Faults (issue 6) ############################################################
###############################################################################

# -- fault tests end here --


if __name__ == "__main__":
    unittest.main()
