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
# Faults (issue 6) ############################################################
###############################################################################

# The fault suite shows the guarantees under real failures: real worker
# processes killed with SIGKILL, real lock contention, a real PostgreSQL
# server restarted under running workers, hostile rows written by hand.
# The heavy part (crash loop, contention, restart) runs only with
# DBQUEUE_FAULTS=1; the rest is quick and always runs.

import atexit  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402

FAULTS = os.environ.get("DBQUEUE_FAULTS") == "1"
heavy = unittest.skipUnless(FAULTS, "fault suite: set DBQUEUE_FAULTS=1 to run the crash loop,"
                                    " contention and database restart tests")
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
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QUEUE_", "MAIL_", "DATABASE_URL", "FAULT_"))}
    env.update(extra)
    return env


class _Procs:
    """Worker subprocesses of one test: stdout and stderr in files, killed in cleanup."""

    def __init__(self, testcase, tmp, env):
        self.tmp, self.env, self.procs, self.count = tmp, env, [], 0
        with open(os.path.join(tmp, "fault_jobs.py"), "w") as fh:
            fh.write(FAULT_JOBS)
        testcase.addCleanup(self.kill_all)

    def start(self, *args, **env):
        self.count += 1
        name = os.path.join(self.tmp, "worker%d" % self.count)
        with open(name + ".out", "wb") as out, open(name + ".err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, DBQUEUE_PY, "work", "--import", "fault_jobs"] + list(args),
                cwd=self.tmp, env=dict(self.env, **env), stdout=out, stderr=err,
                stdin=subprocess.DEVNULL)
        proc.log = name + ".err"
        self.procs.append(proc)
        return proc

    @staticmethod
    def stderr(proc):
        with open(proc.log, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _records(path):
    """The lines the fault_jobs handlers wrote, split into fields."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        # The last line may be cut by a SIGKILL mid-write: keep whole lines only.
        return [line.split() for line in fh.read().split("\n")[:-1] if line]


def _on_backends(mixin, backends):
    """Like on_every_backend, for a chosen subset of backends."""
    module = sys.modules[mixin.__module__]
    for backend in backends:
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


def _count_jobs(db):
    return db.raw("SELECT COUNT(*) FROM {jobs}")[0][0]


class CrashTests:
    """Workers killed with SIGKILL at random points lose no job (heavy)."""

    @heavy
    def test_sigkill_at_random_points_loses_nothing(self):
        rounds, tries, jobs = 24, 3, 300
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
            rows = self.db.raw("SELECT id, attempts, reserved_at, available_at, payload FROM {jobs}")
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
        print("[crash %s] %d rounds of SIGKILL in %.1fs: %d jobs, %d completed (%d completed twice:"
              " killed between handler and ack), %d failed (%d by worker deaths), 0 lost"
              % (self.db.name, rounds, elapsed, len(everything), len(set(ends)), twice,
                 len(failed), died), file=sys.stderr)


_on_backends(CrashTests, [Backend, PsycopgBackend])


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
        errors = []

        def produce():
            try:
                for start in range(self.upfront, self.total, 100):
                    q.push_many("fault_count", [{"n": n} for n in range(start, start + 100)])
                    time.sleep(0.002)   # spread the pushes over the drain
            except Exception as exc:   # reported below, in the test's thread
                errors.append(exc)

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
            self.assertNotIn("Traceback", text)
        counts = {}
        for fields in _records(log):
            counts[int(fields[1])] = counts.get(int(fields[1]), 0) + 1
        self.assertEqual(set(counts), set(range(self.total)), "lost jobs")
        self.assertEqual([n for n, c in counts.items() if c != 1], [], "jobs run twice")
        self.assertEqual(q.failed(), [])
        print("\n[contention %s] %d workers, %d jobs (%d up front, the rest pushed during the"
              " drain): %.1fs, %.0f jobs/s, each run exactly once"
              % (self.db.name, self.workers, self.total, self.upfront, elapsed,
                 self.total / elapsed), file=sys.stderr)


_on_backends(ContentionTests, [Backend, PsycopgBackend])


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PG_BIN = "/usr/lib/postgresql/15/bin"
PG_PASSWORD = "Zq7-s3cr3t-w9Xk"      # the password role's password; must never be printed


class PrivateCluster:
    """A PostgreSQL server of the fault tests' own, in a temp dir, on its own
    port and socket dir: it can be restarted without touching the shared one.

    Started once per test run when first needed and stopped at the end.
    Role `dbq_pw` (password PG_PASSWORD) may log in over TCP on 127.0.0.1
    only with scram-sha-256; the socket trusts `postgres`.
    """

    _instance = None
    _failure = None

    @classmethod
    def get(cls):
        need(hasattr(os, "geteuid") and os.geteuid() == 0,
             "a private PostgreSQL cluster needs root (initdb runs as the postgres user)")
        need(os.path.exists(os.path.join(PG_BIN, "initdb")), "PostgreSQL 15 binaries are missing"
             " at %s" % PG_BIN)
        need(pg_available("psycopg") is None, pg_available("psycopg") or "")
        if cls._instance is None and cls._failure is None:
            try:
                cluster = cls()
            except Exception as exc:
                cls._failure = "could not start a private PostgreSQL cluster: %s" % exc
            else:
                cls._instance = cluster
                unittest.addModuleCleanup(cluster.stop)
                atexit.register(cluster.stop)    # also when run outside unittest's runner
        if cls._failure:
            raise AssertionError(cls._failure)
        return cls._instance

    def __init__(self):
        import pwd
        user = pwd.getpwnam("postgres")
        self.dir = tempfile.mkdtemp(prefix="dbqueue-pg-")
        os.chown(self.dir, user.pw_uid, user.pw_gid)
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        try:
            self._pg("initdb", "-D", self.data, "-U", "postgres", "-N",
                     "--auth-local=trust", "--auth-host=scram-sha-256")
            options = ("-c port=%d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s"
                       " -c fsync=off -c max_connections=40" % (self.port, self.dir))
            self._pg("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"),
                     "-o", options, "-w", "-t", "60", "start")
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

    def stop(self):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            try:
                self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            except Exception:
                pass
        shutil.rmtree(self.dir, True)
        if PrivateCluster._instance is self:
            PrivateCluster._instance = None


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
                     ["stats"], ["stats", "--json"], ["health"]):
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
        port = _free_port()   # nothing listens there now
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
                    self.assertIn(code, (1, 2), (argv, out, err))
                    self.assertNotIn(PG_PASSWORD, out + err, (url, argv))
                    self.assertRegex(err.strip().splitlines()[-1], "^dbqueue: ")


class SQLiteLockTests(unittest.TestCase):
    """Another connection holds SQLite's write lock past the busy timeout."""

    def test_worker_waits_out_a_held_write_lock_and_says_so_once(self):
        import sqlite3
        db = Backend(self)
        log = os.path.join(db.tmp, "runs.log")
        busy = 0.5     # the worker's busy timeout, lowered from 5 s to keep the test short
        procs = _Procs(self, db.tmp, _fault_env(db.env(FAULT_LOG=log,
                                                        FAULT_BUSY_TIMEOUT=busy)))
        q = db.queue()
        q.push_many("fault_sleep", [{"n": n, "ms": 60} for n in range(20)])
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


on_every_backend(HostileInputTests)


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


class BadSettingsTests(unittest.TestCase):
    """Bad flags and settings: exit 2 with one line naming the culprit; nothing touched."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="dbqueue-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "q.db")
        self.env = {"QUEUE_DATABASE_URL": "sqlite:///" + self.path}

    def check(self, argv, env, culprit):
        code, out, err = run_main(argv, dict(self.env, **env))
        self.assertEqual(code, 2, (argv, env, out, err))
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn(culprit, err)
        self.assertFalse(os.path.exists(self.path), "the database was touched: %s %s"
                         % (argv, env))

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
            code, _, err = run_main(["push", "t_record"], {"QUEUE_DATABASE_URL": "sqlite:///" + cli})
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
            import hypothesis  # noqa: F401
        except ImportError:
            need(False, "hypothesis is not installed (pip install hypothesis)")

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
        names = st.sampled_from(["t_record", "t_permanent", "t_fail", "os.system",
                                 "builtins.eval", "subprocess.call", "", "nope"]) | st.text(max_size=20)
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


_on_backends(PropertyTests, [Backend, PsycopgBackend])


# -- fault tests end here --


if __name__ == "__main__":
    unittest.main()
