"""dbqueue on SQLite, at its defaults (see WORKLOAD.md "Plugging in a new queue").

Producer: Queue(url).push() (one autocommit INSERT = one transaction) for W1,
          Queue.push_many() (one transaction per 1 000 jobs) for W2.
Worker:   dbqueue.Worker(q) at its defaults (queue "default", adaptive
          batches, INFO log line per job to stderr), a no-op handler.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

sys.path.insert(0, os.environ.get("DBQUEUE_PATH", os.getcwd()))
import dbqueue  # noqa: E402

JOB = "bench_noop"

if H.SQLITE_SYNC_OVERRIDE:
    # Supplementary runs only: every connection dbqueue opens gets the pragma.
    _connect = dbqueue._SQLite.connect

    def _overridden(*args, **kwargs):
        return H.sqlite_override(_connect(*args, **kwargs))

    dbqueue._SQLite.connect = staticmethod(_overridden)


class DbQueueSQLite(H.Adapter):
    peer = "dbqueue-sqlite"
    backend = "sqlite"
    bulk_supported = True
    stop_signal = signal.SIGTERM   # dbqueue: finish the current job, then exit

    def __init__(self, workdir):
        super().__init__(workdir)
        self.url = "sqlite:///" + os.path.join(os.path.abspath(workdir), "dbqueue.db")
        self.q = None

    def version(self):
        return dbqueue.__version__

    def setup(self):
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
        q = dbqueue.Queue(self.url)
        try:
            cur = q.connect().cursor()
            return cur.execute('SELECT COUNT(*) FROM "jobs"').fetchone()[0]
        finally:
            q.close()

    def notes(self):
        q = dbqueue.Queue(self.url)
        try:
            note = H.sqlite_pragmas(q.connect())
        finally:
            q.close()
        return (note + "; worker defaults: 1 process, batch_seconds=%s batch_max=%s, INFO log"
                " line per job" % (dbqueue.Worker.batch_seconds, dbqueue.Worker.batch_max))

    def worker_run(self, handle):
        @dbqueue.job(JOB)
        def _noop(data):
            handle(data["jid"])

        q = dbqueue.Queue(self.url)
        dbqueue.Worker(q).run()


if __name__ == "__main__":
    H.main(DbQueueSQLite)
