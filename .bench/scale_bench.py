#!/usr/bin/env python3
"""Cost as the work grows: claims and the operator's views with a big backlog.

    /path/to/python .bench/scale_bench.py [--database sqlite,postgresql,mysql]
        [--ready 1000000] [--failed 100000] [--drain 20000] [--repeat 3]
    /path/to/python .bench/scale_bench.py --churn 200000 --database postgresql
        [--storage autovacuum_vacuum_cost_delay=0,autovacuum_vacuum_scale_factor=0.01]

Views: fills a fresh jobs table with N ready jobs (one INSERT ... SELECT made
by the database itself, in the Laravel column layout, ~330-byte payloads
like a verification email's) and a failed table with M failed jobs (~1.6 kB
tracebacks), then times `stats` (Queue.stats and the CLI, connection
included), `health --max-ready`, the dashboard's overview, failed list (page
1, a deep page, a search) and a failed job's page, each through
_Dashboard.handle (what the HTTP server calls, a fresh connection each). The
best of --repeat runs is printed.

Drain: jobs per second of one in-process Worker (no-op handler) over
--drain jobs, taken in runs of 1,000 (run(max_jobs=1000)), with 1,000 ready
(refilled before each run) and with N ready (filled once).

Churn (PostgreSQL): pushes and acknowledges --churn jobs while 2 worker
processes drain them, then prints the table's and its indexes' size
(pg_total_relation_size) and how often autovacuum ran on it.

Tables are scale_jobs_<pid> (and _failed), dropped at the end. PostgreSQL:
DBQUEUE_BENCH_PG (default the test database over its socket); MariaDB:
DBQUEUE_BENCH_MYSQL (default the test server's dbqueue account).
"""

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# DBQUEUE_PATH: measure another checkout's dbqueue.py (before and after a change).
HERE = os.environ.get("DBQUEUE_PATH", HERE)
sys.path.insert(0, HERE)
import dbqueue  # noqa: E402

URLS = {"postgresql": os.environ.get("DBQUEUE_BENCH_PG",
                                     "postgresql:///dbqueue_test?host=/var/run/postgresql"),
        "mysql": os.environ.get("DBQUEUE_BENCH_MYSQL",
                                "mysql://dbqueue:dbqueue@127.0.0.1:3306/dbqueue_test")}
EXCEPTION = ("Traceback (most recent call last):\n"
             + "".join('  File "/srv/app/dbqueue.py", line %d, in _process\n'
                       "    result = handler(job.data)\n" % (3000 + i) for i in range(20))
             + "smtplib.SMTPRecipientsRefused: {'user@example.com': (550, b'5.1.1 unknown')}\n")


@dbqueue.job("scale_noop")
def _noop(data):
    pass


# Row generators, made by the database: n rows numbered i = 1..n.
SERIES = {
    "sqlite": "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})"
              " SELECT {cols} FROM s",
    "postgresql": "SELECT {cols} FROM generate_series(1, {n}) AS s(i)",
    "mysql": "SELECT {cols} FROM (SELECT seq AS i FROM seq_1_to_{n}) AS s",
}


def fill(q, cur, table, n, queue="bench", age=86400):
    """n ready jobs, available_at spread over the last `age` seconds, oldest first."""
    now = int(time.time())
    payload = q.payload("scale_noop", dbqueue_bench_data())
    cols = ("'%s', '%s', 0, NULL, %d - FLOOR((%d - s.i) / %d), %d"
            % (queue, payload.replace("'", "''"), now, n, max(1, n // age), now))
    cur.execute("INSERT INTO %s (queue, payload, attempts, reserved_at, available_at, created_at) "
                % q.dialect.ident(table) + SERIES[q.dialect.name].format(n=n, cols=cols))


def fill_failed(q, cur, n):
    payload = q.payload("send_email", {"to": "user@example.com", "subject": "Hi", "text": "x"})
    cat = {"mysql": "CONCAT('f-', s.i)"}.get(q.dialect.name, "'f-' || s.i")
    to = {"mysql": "CONCAT('user', s.i, '@example.com')"}.get(
        q.dialect.name, "'user' || s.i || '@example.com'")
    cols = ("%s, 'database', CASE WHEN s.i %% 10 = 0 THEN 'default' ELSE 'emails' END,"
            " REPLACE('%s', 'user@example.com', %s), '%s', CURRENT_TIMESTAMP"
            % (cat, payload.replace("'", "''"), to, EXCEPTION.replace("'", "''")))
    cur.execute("INSERT INTO %s (uuid, connection, queue, payload, exception, failed_at) "
                % q.dialect.ident(q.config.failed_table)
                + SERIES[q.dialect.name].format(n=n, cols=cols))


def dbqueue_bench_data():
    return {"to": "user@example.com", "template": "verify_email",
            "vars": {"name": "User", "url": "https://example.com/verify?token=%040x" % 7,
                     "locale": "en-US", "expires_h": 24}}


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def quiet(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = dbqueue.main(argv)
    return code, out.getvalue()


def analyze(q, cur):
    # What autovacuum does by itself some seconds after a bulk load; timed
    # here on a known footing rather than left to chance.
    if q.dialect.name == "postgresql":
        cur.execute("VACUUM ANALYZE %s" % q.dialect.ident(q.config.table))
        cur.execute("VACUUM ANALYZE %s" % q.dialect.ident(q.config.failed_table))
    elif q.dialect.name == "mysql":
        for t in (q.config.table, q.config.failed_table):
            cur.execute("ANALYZE TABLE %s" % q.dialect.ident(t))
            cur.fetchall()
    else:
        cur.execute("ANALYZE")


def views(q, conn, ready, failed, repeat):
    cur = conn.cursor()
    t0 = time.perf_counter()
    fill(q, cur, q.config.table, ready)
    fill_failed(q, cur, failed)
    analyze(q, cur)
    print("  filled %d ready, %d failed in %.1f s" % (ready, failed, time.perf_counter() - t0))
    dash = dbqueue._Dashboard(q, log=dbqueue._Log(level="error"))
    host = {"Host": "127.0.0.1"}

    def page(target):
        def get():
            status, _, body = dash.handle("GET", target, host)
            assert status == 200, (target, status, body[:300])
        return get
    mid = failed // 2
    deep = max(1, failed - 1999 * 50 + 1)     # the Older link of page 1999 leads here
    checks = [
        ("Queue.stats()", lambda: q.stats()),
        ("stats (CLI)", lambda: quiet(["stats"])),
        ("health", lambda: quiet(["health"])),
        ("health --max-ready 1000", lambda: quiet(["health", "--max-ready", "1000"])),
        ("health --max-ready %d" % (ready * 2), lambda: quiet(["health", "--max-ready",
                                                               str(ready * 2)])),
        ("dashboard overview /", page("/")),
        ("dashboard /failed", page("/failed")),
        ("dashboard /failed?page=2000", page("/failed?page=2000")),
        ("dashboard its Older link there", page("/failed?page=2000&before=%d" % deep)),
        ("dashboard /failed?q=user%d@" % mid, page("/failed?q=user%d%%40" % mid)),
        ("dashboard /failed/<id>", page("/failed/%d" % mid)),
    ]
    for label, fn in checks:
        print("  %-34s %7.3f s" % (label, best(fn, repeat)))
    code, out = quiet(["health", "--max-ready", str(ready * 2)])
    print("  health says: %s" % out.strip()[:120])


def drain(q, backlog, jobs):
    """Jobs per second of one worker taking `jobs` jobs with `backlog` ready."""
    conn = q._conn()
    cur = conn.cursor()
    worker = dbqueue.Worker(q, ["bench"], log=dbqueue._Log(level="error"))
    elapsed = 0.0
    done = 0
    cur.execute("DELETE FROM %s" % q.dialect.ident(q.config.table))
    while done < jobs:
        if done == 0 or backlog <= 1000:
            cur.execute("DELETE FROM %s" % q.dialect.ident(q.config.table))
            fill(q, cur, q.config.table, backlog)
            analyze(q, cur)
        take = min(1000, jobs - done)
        t0 = time.perf_counter()
        worker.processed = 0
        worker.run(max_jobs=take)
        elapsed += time.perf_counter() - t0
        done += take
    return done / elapsed


def churn(q, conn, total, workers=2):
    """Push and acknowledge `total` jobs with workers running; the table's size after."""
    cur = conn.cursor()
    env = dict(os.environ, QUEUE_DATABASE_URL=q.config.database_url,
               QUEUE_TABLE=q.config.table, QUEUE_FAILED_TABLE=q.config.failed_table)
    code = ("import sys; sys.path.insert(0, %r); sys.path.insert(0, %r);"
            " import dbqueue, scale_bench; dbqueue.Worker(dbqueue.Queue.from_env(), ['bench'],"
            " log=dbqueue._Log(level='error')).run()"
            % (HERE, os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(workers)]
    ident = q.dialect.ident(q.config.table)
    try:
        t0 = time.perf_counter()
        data = [dbqueue_bench_data() for _ in range(500)]
        peak = 0
        for start in range(0, total, 500):
            q.push_many("scale_noop", data, queue="bench")
            if start % 20000 == 0:
                cur.execute("SELECT pg_total_relation_size(%s)", (q.config.table,))
                peak = max(peak, cur.fetchone()[0])
            # Stay a queue, not a bulk load: let the workers keep up.
            while True:
                cur.execute("SELECT COUNT(*) FROM (SELECT 1 FROM %s LIMIT 5001) AS x" % ident)
                if cur.fetchone()[0] <= 5000:
                    break
                time.sleep(0.05)
        while True:
            cur.execute("SELECT COUNT(*) FROM %s" % ident)
            if cur.fetchone()[0] == 0:
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
    cur.execute("SELECT pg_relation_size(%s), pg_indexes_size(%s), pg_total_relation_size(%s),"
                " n_dead_tup, autovacuum_count, vacuum_count FROM pg_stat_user_tables"
                " WHERE relname = %s", (q.config.table,) * 4)
    heap, idx, total_size, dead, autovac, vac = cur.fetchone()
    print("  %d jobs pushed and acknowledged in %.0f s (%.0f/s), %d workers"
          % (total, elapsed, total / elapsed, workers))
    print("  size after: table %.1f MB, indexes %.1f MB, total %.1f MB (peak seen %.1f MB);"
          " dead rows %d; autovacuum ran %d times"
          % (heap / 1e6, idx / 1e6, total_size / 1e6, peak / 1e6, dead, autovac))


def run_one(name, args):
    tmp = tempfile.mkdtemp(prefix="scale-bench-")
    url = URLS.get(name) or "sqlite:///" + os.path.join(tmp, "bench.db")
    table = "scale_jobs_%d" % os.getpid()
    os.environ.update(QUEUE_DATABASE_URL=url, QUEUE_TABLE=table,
                      QUEUE_FAILED_TABLE=table + "_failed")
    q = dbqueue.Queue.from_env()
    q.migrate()
    conn = q.connect()
    print("%s (%s)" % (name, dbqueue._mask_url(url)))
    try:
        if args.churn:
            if args.storage:
                conn.cursor().execute("ALTER TABLE %s SET (%s)"
                                      % (q.dialect.ident(table), args.storage))
                print("  ALTER TABLE ... SET (%s)" % args.storage)
            churn(q, conn, args.churn)
            return
        if args.drain:
            small = drain(q, 1000, args.drain)
            big = drain(q, args.ready, args.drain)
            print("  drain, 1 worker: %.0f jobs/s with 1,000 ready, %.0f jobs/s with %s ready"
                  " (%+.0f%%)" % (small, big, "{:,}".format(args.ready), 100 * (big / small - 1)))
            conn.cursor().execute("DELETE FROM %s" % q.dialect.ident(table))
        views(q, conn, args.ready, args.failed, args.repeat)
    finally:
        cur = conn.cursor()
        for t in (table, table + "_failed"):
            cur.execute("DROP TABLE IF EXISTS %s" % q.dialect.ident(t))
        cur.execute(q.dialect.prepare("DELETE FROM dbqueue_migrations WHERE tbl = :tbl")[0],
                    (table,))
        q.close()
        for f in os.listdir(tmp):
            os.remove(os.path.join(tmp, f))
        os.rmdir(tmp)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="sqlite,postgresql,mysql")
    parser.add_argument("--ready", type=int, default=1000000)
    parser.add_argument("--failed", type=int, default=100000)
    parser.add_argument("--drain", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--churn", type=int, default=0)
    parser.add_argument("--storage", default="", help="with --churn: the jobs table's storage"
                        " parameters, e.g. autovacuum_vacuum_cost_delay=0")
    args = parser.parse_args()
    for name in args.database.split(","):
        run_one(name, args)


if __name__ == "__main__":
    main()
