"""dbqueue on PostgreSQL (psycopg 3), at its defaults.

Producer: Queue(url).push() (one autocommit INSERT ... pg_notify = one
          transaction) for W1, Queue.push_many() for W2.
Worker:   dbqueue.Worker(q) at its defaults (queue "default", adaptive
          batches, LISTEN/NOTIFY when idle, INFO log line per job), a no-op handler.
"""
import os
import signal
import sys
from urllib.parse import urlencode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

sys.path.insert(0, os.environ.get("DBQUEUE_PATH", os.getcwd()))
import dbqueue  # noqa: E402

DB = "bench_dbqueue"
JOB = "bench_noop"


def _url(dbname):
    # BENCH_PG_DSN is a libpq key=value string; a libpq URI carries the same keys.
    base = os.environ.get("BENCH_PG_DSN", "host=/var/run/postgresql user=root")
    pairs = [tuple(kv.split("=", 1)) for kv in base.split() if "=" in kv]
    return "postgresql:///%s?%s" % (dbname, urlencode(pairs))


class DbQueuePg(H.Adapter):
    peer = "dbqueue-pg"
    backend = "postgresql"
    pg_db = DB
    bulk_supported = True
    stop_signal = signal.SIGTERM

    def __init__(self, workdir):
        super().__init__(workdir)
        self.url = _url(DB)
        self.q = None

    def version(self):
        return dbqueue.__version__

    def setup(self):
        H.pg_recreate_db(DB)
        q = dbqueue.Queue(self.url)
        q.migrate()
        q.close()

    def producer_open(self):
        self.q = dbqueue.Queue(self.url)

    def producer_close(self):
        self.q.close()
        self.q = None

    def enqueue_one(self, p):
        self.q.push(JOB, p)

    def enqueue_bulk(self, ps):
        self.q.push_many(JOB, ps)

    def pending(self):
        import psycopg
        with psycopg.connect(H.pg_dsn(DB)) as c:
            return c.execute('SELECT COUNT(*) FROM "jobs"').fetchone()[0]

    def notes(self):
        return (H.pg_settings_note() + "; worker defaults: 1 process, batch_seconds=%s"
                " batch_max=%s, LISTEN/NOTIFY, INFO log line per job; psycopg %s"
                % (dbqueue.Worker.batch_seconds, dbqueue.Worker.batch_max,
                   __import__("psycopg").__version__))

    def worker_run(self, handle):
        @dbqueue.job(JOB)
        def _noop(data):
            handle(data["jid"])

        q = dbqueue.Queue(self.url)
        dbqueue.Worker(q).run()


if __name__ == "__main__":
    H.main(DbQueuePg)
