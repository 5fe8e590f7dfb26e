"""Baseline: the claim of Laravel's DatabaseQueue on MySQL, in Python (PyMySQL).

What an app on this stack would otherwise run (Illuminate\\Queue\\DatabaseQueue,
Laravel 11, MySQL 8 / MariaDB 10.6+ where it uses SKIP LOCKED), statement for
statement, with Laravel's own jobs table (its migration: an index on `queue` only):

  push       INSERT INTO jobs (queue, attempts, reserved_at, available_at,
             created_at, payload) VALUES (...)             -- autocommit
  bulk       one multi-row INSERT of the same columns       -- autocommit
  pop        BEGIN; SELECT * FROM jobs WHERE queue = ? AND ((reserved_at IS NULL
             AND available_at <= ?) OR (reserved_at <= ?)) ORDER BY id ASC LIMIT 1
             FOR UPDATE SKIP LOCKED; UPDATE jobs SET reserved_at = ?, attempts =
             attempts + 1 WHERE id = ?; COMMIT             -- one job per transaction
  delete     BEGIN; SELECT * FROM jobs WHERE id = ? FOR UPDATE; DELETE FROM jobs
             WHERE id = ?; COMMIT                          -- after the handler

Sessions at the server's default isolation (Laravel sets none: REPEATABLE READ).
The worker sleeps 3 s when the queue is empty (`queue:work --sleep=3`); a
payload is JSON, as Laravel's. Not Laravel itself: PHP's per-job costs are
left out, so this baseline is, if anything, faster than the real thing.
"""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402
import _mysql as M  # noqa: E402

DB = "bench_laravel"
QUEUE = "default"
RETRY_AFTER = 90

SCHEMA = """CREATE TABLE jobs (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    queue VARCHAR(255) NOT NULL,
    payload LONGTEXT NOT NULL,
    attempts TINYINT UNSIGNED NOT NULL,
    reserved_at INT UNSIGNED NULL,
    available_at INT UNSIGNED NOT NULL,
    created_at INT UNSIGNED NOT NULL,
    INDEX jobs_queue_index (queue)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"""
# Every value a parameter, as Laravel's query builder binds them (and so that
# PyMySQL's executemany sends a bulk as one multi-row INSERT, as Laravel does).
INSERT = ("INSERT INTO jobs (queue, attempts, reserved_at, available_at, created_at, payload)"
          " VALUES (%s, %s, %s, %s, %s, %s)")
NEXT = ("SELECT * FROM jobs WHERE queue = %s AND ((reserved_at IS NULL AND available_at <= %s)"
        " OR (reserved_at <= %s)) ORDER BY id ASC LIMIT 1 FOR UPDATE SKIP LOCKED")


def _payload(p):
    return json.dumps({"uuid": "", "displayName": "bench", "job": "bench", "maxTries": None,
                       "data": p})


class LaravelMySQL(H.Adapter):
    peer = "laravel-style-mysql"
    backend = "mysql"
    bulk_supported = True
    stop_signal = signal.SIGTERM

    def version(self):
        return "11.x-claim"

    def setup(self):
        M.recreate(DB)
        conn = M.connect(DB)
        conn.cursor().execute(SCHEMA)
        conn.close()

    def producer_open(self):
        self.conn = M.connect(DB)

    def producer_close(self):
        self.conn.close()

    def enqueue_one(self, p):
        now = int(time.time())
        self.conn.cursor().execute(INSERT, (QUEUE, 0, None, now, now, _payload(p)))

    def enqueue_bulk(self, ps):
        now = int(time.time())
        self.conn.cursor().executemany(INSERT, [(QUEUE, 0, None, now, now, _payload(p)) for p in ps])

    def pending(self):
        conn = M.connect(DB)
        try:
            cur = conn.cursor()
            cur.execute("SELECT COUNT(*) FROM jobs")
            return cur.fetchone()[0]
        finally:
            conn.close()

    def notes(self):
        return (M.settings_note() + "; Laravel DatabaseQueue's statements, one job per"
                " transaction, index on queue only, server-default isolation; 1 process;"
                " PyMySQL %s" % __import__("pymysql").__version__)

    def worker_run(self, handle):
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        conn = M.connect(DB)
        cur = conn.cursor()
        while not stop:
            now = int(time.time())
            cur.execute("BEGIN")
            cur.execute(NEXT, (QUEUE, now, now - RETRY_AFTER))
            row = cur.fetchone()
            if row is None:
                cur.execute("COMMIT")
                time.sleep(3)
                continue
            cur.execute("UPDATE jobs SET reserved_at = %s, attempts = attempts + 1 WHERE id = %s",
                        (now, row[0]))
            cur.execute("COMMIT")
            handle(json.loads(row[2])["data"]["jid"])
            cur.execute("BEGIN")
            cur.execute("SELECT * FROM jobs WHERE id = %s FOR UPDATE", (row[0],))
            if cur.fetchone() is not None:
                cur.execute("DELETE FROM jobs WHERE id = %s", (row[0],))
            cur.execute("COMMIT")
        conn.close()


if __name__ == "__main__":
    H.main(LaravelMySQL)
