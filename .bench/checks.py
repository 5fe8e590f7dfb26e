"""dbqueue's own checks beyond W1..W4 (run by .bench/run.sh; stdlib + psycopg).

    DBQUEUE_PATH=<checkout> python .bench/checks.py [sqlite] [postgresql] [mysql]

(mysql: on the server BENCH_MYSQL_URL names, in a database of its own, made
fresh for each part: mysql://user:password@127.0.0.1:3306/)

1. `python dbqueue.py bench` on each database: the bare INSERT+COMMIT floor
   next to W1, W1..W4, push -> handler start latency, idle CPU (3 s).
2. Flat with size: one worker drains 5 000 and then 50 000 waiting jobs
   (fresh tables; on PostgreSQL never analysed), and the plans of the claim,
   ack and heartbeat statements with 50 000 jobs waiting (no sort, no scan).
3. Idle worker CPU over 10 s (from /proc).
4. Worker RSS across 100 000 jobs against its value after the first 1 000.
5. What `import dbqueue` adds to interpreter start-up.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode

REPO = os.environ.get("DBQUEUE_PATH") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import dbqueue  # noqa: E402

PG_DB = "bench_dbqueue_checks"
MYSQL_DB = "bench_dbqueue_checks"


def mysql_url(dbname):
    scheme, _, rest = os.environ["BENCH_MYSQL_URL"].partition("://")
    where, _, query = rest.partition("?")
    return "%s://%s/%s%s" % (scheme, where.split("/")[0], dbname, "?" + query if query else "")


def mysql_recreate(dbname, drop_only=False):
    q = dbqueue.Queue(mysql_url("mysql"))
    try:
        cur = q._conn().cursor()
        cur.execute("DROP DATABASE IF EXISTS `%s`" % dbname)
        if not drop_only:
            cur.execute("CREATE DATABASE `%s` CHARACTER SET utf8mb4" % dbname)
    finally:
        q.close()


def pg_url(dbname):
    base = os.environ.get("BENCH_PG_DSN", "host=/var/run/postgresql user=root")
    pairs = [tuple(kv.split("=", 1)) for kv in base.split() if "=" in kv]
    return "postgresql:///%s?%s" % (dbname, urlencode(pairs))


def pg_recreate(dbname):
    import psycopg
    with psycopg.connect(pg_url("postgres"), autocommit=True) as c:
        c.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % dbname)
        c.execute('CREATE DATABASE "%s"' % dbname)


def say(text=""):
    print(text, flush=True)


class Bench:
    """Fresh bench tables on one database, and workers on them."""

    def __init__(self, url, tmp, name):
        self.url, self.tmp = url, tmp
        self.config = dbqueue.Config(database_url=url, table=name, failed_table=name + "_failed")
        self.q = dbqueue.Queue(config=self.config)
        self.q.migrate()
        self.env = dict(os.environ, QUEUE_DATABASE_URL=url, QUEUE_TABLE=name,
                        QUEUE_FAILED_TABLE=name + "_failed")
        self.logdir = tempfile.mkdtemp(dir=tmp)

    def fill(self, n):
        for start in range(0, n, 1000):
            self.q.push_many(dbqueue._BENCH_JOB,
                             [dbqueue._bench_data(i) for i in range(start, min(n, start + 1000))],
                             queue="bench")

    def count(self):
        cur = self.q._conn().cursor()
        cur.execute("SELECT COUNT(*) FROM %s" % self.q.dialect.ident(self.config.table))
        value = cur.fetchone()[0]
        cur.close()
        return value

    def any_left(self):
        # one index probe from the top, where a drain finishes last
        cur = self.q._conn().cursor()
        cur.execute("SELECT id FROM %s ORDER BY id DESC LIMIT 1"
                    % self.q.dialect.ident(self.config.table))
        value = cur.fetchone() is not None
        cur.close()
        return value

    def workers(self, k=1):
        return dbqueue._BenchWorkers(self.env, k, self.logdir)

    def drain(self, n, k=1, on_poll=None):
        self.fill(n)
        procs = self.workers(k)
        try:
            procs.go()
            t0 = time.perf_counter()
            polls = 0
            while self.any_left():
                time.sleep(0.005)
                polls += 1
                if on_poll and polls % 20 == 0:
                    on_poll(procs, self.count())
                if not procs.alive():
                    raise RuntimeError("worker died: " + procs.log_tail())
            return time.perf_counter() - t0
        finally:
            procs.stop()

    def explain_mysql(self):
        # EXPLAIN rows: id, select_type, table, type, possible_keys, key, ..., rows, Extra.
        q = self.q
        keys = [("claim_select", dict(queue="bench", limit=100)), ("ack", dict(id=1, attempts=1)),
                ("touch", dict(id=1, attempts=1)), (("tokens_lock", 3), None),
                ("rescue", dict(retry_after=90)), ("next_due", dict(queue="bench")),
                ("ready", dict(queue="bench"))]
        cur = q._conn().cursor()
        out, bad = [], []
        for key, params in keys:
            if params is None:
                text, _ = q._many_sql(*key)
                args = [1, 2, 3] + [1, 1, 2, 1, 3, 1]
                key = "%s_many" % key[0]
            else:
                text, names = q.sql(key)
                params.setdefault("now", q.now())
                args = [params[n] for n in names]
            cur.execute("EXPLAIN " + text, args)
            columns = [d[0].lower() for d in cur.description]
            plan = [dict(zip(columns, row)) for row in cur.fetchall()]
            lines = ["type=%s key=%s rows=%s %s" % (r["type"], r["key"], r["rows"], r["extra"] or "")
                     for r in plan]
            flags = [f for r in plan for f in (("filesort",) if "filesort" in (r["extra"] or "")
                                                 else ()) + (("full scan",) if r["type"] == "ALL"
                                                             else ())]
            if flags:
                bad.append("%s: %s" % (key, ", ".join(flags)))
            out.append("  %s:\n    %s" % (key, "\n    ".join(lines)))
        cur.close()
        return "\n".join(out), bad

    def explain(self):
        q = self.q
        if q.dialect is dbqueue._MySQL:
            return self.explain_mysql()
        pg = q.dialect is dbqueue._Postgres
        prefix = "EXPLAIN " if pg else "EXPLAIN QUERY PLAN "
        keys = [("claim", dict(queue="bench", limit=100))]
        if pg:
            keys += [("ack_many", dict(ids=[1, 2, 3], attempts=[1, 1, 1])),
                     ("touch_many", dict(ids=[1, 2, 3], attempts=[1, 1, 1]))]
        else:
            keys += [("ack", dict(id=1, attempts=1)), ("touch", dict(id=1, attempts=1)),
                     (("ack", 3), None), (("touch", 3), None)]
        keys += [("rescue", dict(retry_after=90)), ("next_due", dict(queue="bench"))]
        cur = q._conn().cursor()
        out = []
        bad = []
        for key, params in keys:
            if params is None:      # SQLite's batched ack/touch for 3 tokens
                text, names = q._many_sql(*key)
                args = [q.now()] * len(names) + [1, 2, 3] + [1, 1, 2, 1, 3, 1]
                key = "%s_many" % key[0]
            else:
                text, names = q.sql(key)
                params.setdefault("now", q.now())
                args = [params[n] for n in names]
            cur.execute("BEGIN")
            cur.execute(prefix + text, args)
            plan = [" ".join(str(c) for c in row) if not pg else row[0] for row in cur.fetchall()]
            cur.execute("ROLLBACK")
            text = "\n".join(plan)
            flags = [w for w in ("Sort", "Seq Scan", "TEMP B-TREE", "SCAN " + self.config.table)
                     if w in text]
            if flags:
                bad.append("%s: %s" % (key, ", ".join(flags)))
            out.append("  %s:\n    %s" % (key, "\n    ".join(plan)))
        cur.close()
        return "\n".join(out), bad

    def close(self):
        cur = self.q._conn().cursor()
        for t in (self.config.table, self.config.failed_table):
            cur.execute("DROP TABLE IF EXISTS %s" % self.q.dialect.ident(t))
        cur.close()
        self.q.close()


def proc_rss_kb(pid):
    with open("/proc/%d/status" % pid) as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def run_bench_command(url, label):
    say("== `python dbqueue.py bench --jobs 5000 --workers 2` on %s" % label)
    out = subprocess.run([sys.executable, os.path.join(REPO, "dbqueue.py"), "bench",
                          "--database-url", url, "--jobs", "5000", "--workers", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         cwd=tempfile.gettempdir() if label == "sqlite" else None)
    say(out.stdout.rstrip())
    say()


def checks(backend, tmp):
    if backend == "sqlite":
        def make(name):
            return Bench("sqlite:///" + os.path.join(tmp, name + ".db"), tmp, name)
        run_bench_command("sqlite:///" + os.path.join(tmp, "bench-cmd.db"), "sqlite")
    elif backend == "mysql":
        def make(name):
            mysql_recreate(MYSQL_DB)
            return Bench(mysql_url(MYSQL_DB), tmp, name)
        mysql_recreate(MYSQL_DB)
        run_bench_command(mysql_url(MYSQL_DB), "mysql")
    else:
        def make(name):
            pg_recreate(PG_DB)   # a fresh database: the tables have never been analysed
            return Bench(pg_url(PG_DB), tmp, name)
        pg_recreate(PG_DB)
        run_bench_command(pg_url(PG_DB), "postgresql")

    say("== %s: flat with size (W3: one worker drains N waiting jobs; 3 rounds, interleaved)"
        % backend)
    # One drain of 5 000 jobs takes a fifth of a second, so one slow fsync
    # moves it by 10%: the sizes alternate and each reports its median.
    rates = {5000: [], 50000: []}
    for rnd in range(3):
        for n in (5000, 50000):
            b = make("flat%d_%d" % (n, rnd))
            try:
                rates[n].append(n / b.drain(n))
            finally:
                b.close()
    for n, values in rates.items():
        rate = statistics.median(values)
        say("  N=%6d  median %8.0f jobs/s  %.1f us/job  (rounds: %s)"
            % (n, rate, 1e6 / rate, ", ".join("%.0f" % v for v in values)))
    say("  per-job rate at 50 000 / at 5 000: %.2f (>= 1.0 means no slower per job)"
        % (statistics.median(rates[50000]) / statistics.median(rates[5000])))
    b = make("plan")
    try:
        b.fill(50000)
        plans, bad = b.explain()
        say("  plans with 50 000 jobs waiting%s:" % (" (fresh table, never analysed)"
                                                     if backend != "sqlite" else ""))
        say(plans)
        say("  sorts or scans of the backlog: %s" % ("; ".join(bad) if bad else "none"))
        if backend != "sqlite":
            cur = b.q._conn().cursor()
            cur.execute("ANALYZE %s %s" % ("TABLE" if backend == "mysql" else "",
                                           b.q.dialect.ident(b.config.table)))
            if cur.description:
                cur.fetchall()
            cur.close()
            plans, bad = b.explain()
            say("  the same after ANALYZE: sorts or scans of the backlog: %s"
                % ("; ".join(bad) if bad else "none"))
            say("\n".join(line for line in plans.splitlines() if "Scan" in line or ":" in line[:14]))
    finally:
        b.close()
    say()

    say("== %s: idle worker CPU over 10 s" % backend)
    b = make("idle")
    try:
        procs = b.workers(1)
        try:
            procs.go()
            time.sleep(1.0)
            pid = procs.procs[0].pid
            c0, t0 = dbqueue._cpu_seconds(pid), time.monotonic()
            time.sleep(10.0)
            c1, t1 = dbqueue._cpu_seconds(pid), time.monotonic()
            say("  %.2f%% of one core (%.3f s CPU in %.1f s)"
                % (100 * (c1 - c0) / (t1 - t0), c1 - c0, t1 - t0))
        finally:
            procs.stop()
    finally:
        b.close()
    say()

    say("== %s: worker RSS across 100 000 jobs" % backend)
    b = make("rss")
    try:
        seen = {}

        def poll(procs, left):
            rss = proc_rss_kb(procs.procs[0].pid)
            if left <= 99000 and "first" not in seen:
                seen["first"] = rss
            if "first" in seen:
                seen["max"] = max(seen.get("max", 0), rss)
            seen["last"] = rss
        secs = b.drain(100000, on_poll=poll)
        say("  RSS after the first 1 000 jobs %.1f MB, highest after that %.1f MB, at the end %.1f MB:"
            " growth %.2f MB (drained in %.1f s)" % (seen["first"] / 1024, seen["max"] / 1024,
                                                     seen["last"] / 1024,
                                                     (seen["max"] - seen["first"]) / 1024, secs))
    finally:
        b.close()
    say()


def import_time(tmp):
    say("== import time (%s)" % sys.version.split()[0])
    setup = "import sys; sys.path.insert(0, %r)" % REPO
    # As installed code runs: with its bytecode cached (here in a private
    # pycache, so nothing is written into the checkout), which
    # PYTHONDONTWRITEBYTECODE would otherwise turn into a compile per start.
    env = dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(tmp, "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", setup + "; import dbqueue"], env=env, check=True)
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", setup + "; import dbqueue"],
                         stderr=subprocess.PIPE, text=True, env=env).stderr
    for line in out.splitlines():
        if line.rstrip().endswith("| dbqueue"):
            cumulative = int(line.split("|")[1])
            say("  -X importtime: import dbqueue %.1f ms cumulative (with what it imports that"
                " start-up had not)" % (cumulative / 1000.0))
    runs = {"bare": [], "import": []}
    for _ in range(30):
        for key, code in (("bare", setup), ("import", setup + "; import dbqueue")):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            runs[key].append(time.perf_counter() - t0)
    bare, imp = statistics.median(runs["bare"]), statistics.median(runs["import"])
    say("  interpreter start-up, median of 30: %.1f ms bare, %.1f ms with import dbqueue:"
        " +%.1f ms" % (bare * 1000, imp * 1000, (imp - bare) * 1000))


def main():
    wanted = sys.argv[1:] or ["sqlite", "postgresql"]
    tmp = tempfile.mkdtemp(prefix="dbqueue-checks-")
    try:
        for backend in wanted:
            checks(backend, tmp)
        import_time(tmp)
    finally:
        import shutil
        shutil.rmtree(tmp, True)
        if "mysql" in wanted:
            try:
                mysql_recreate(MYSQL_DB, drop_only=True)
            except Exception:
                pass
        if "postgresql" in wanted:
            try:
                import psycopg
                with psycopg.connect(pg_url("postgres"), autocommit=True) as c:
                    c.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % PG_DB)
            except Exception:
                pass


if __name__ == "__main__":
    main()
