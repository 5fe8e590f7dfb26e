"""dbqueue on MySQL/MariaDB (PyMySQL), at its defaults.

Producer: Queue(url).push() (one autocommit INSERT = one transaction) for W1,
          Queue.push_many() (multi-row INSERTs in one transaction) for W2.
Worker:   dbqueue.Worker(q) at its defaults (queue "default", adaptive
          batches claimed with SELECT ... FOR UPDATE SKIP LOCKED + one UPDATE,
          acks riding on the next claim's commit, polling when idle, INFO log
          line per job), a no-op handler.
Server:   BENCH_MYSQL_URL (see _mysql.py); database bench_dbqueue, made fresh per run.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402
import _mysql as M  # noqa: E402

sys.path.insert(0, os.environ.get("DBQUEUE_PATH", os.getcwd()))
import dbqueue  # noqa: E402

DB = "bench_dbqueue"
JOB = "bench_noop"


class DbQueueMySQL(H.Adapter):
    peer = "dbqueue-mysql"
    backend = "mysql"
    bulk_supported = True
    stop_signal = signal.SIGTERM

    def __init__(self, workdir):
        super().__init__(workdir)
        self.url = M.url(DB).replace("mysql://", "mysql+pymysql://", 1)
        self.q = None

    def version(self):
        return dbqueue.__version__

    def setup(self):
        M.recreate(DB)
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
        conn = M.connect(DB)
        try:
            cur = conn.cursor()
            cur.execute("SELECT COUNT(*) FROM `jobs`")
            return cur.fetchone()[0]
        finally:
            conn.close()

    def notes(self):
        return (M.settings_note() + "; dbqueue sessions at READ COMMITTED; worker defaults:"
                " 1 process, batch_seconds=%s batch_max=%s, polling when idle, INFO log line"
                " per job; PyMySQL %s" % (dbqueue.Worker.batch_seconds, dbqueue.Worker.batch_max,
                                          __import__("pymysql").__version__))

    def worker_run(self, handle):
        @dbqueue.job(JOB)
        def _noop(data):
            handle(data["jid"])

        q = dbqueue.Queue(self.url)
        dbqueue.Worker(q).run()


if __name__ == "__main__":
    H.main(DbQueueMySQL)
