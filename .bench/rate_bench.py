#!/usr/bin/env python3
"""MAIL_RATE_LIMIT across worker processes: the rate the SMTP server sees.

    /path/to/python .bench/rate_bench.py [--emails 200] [--limit 14/s,200/m] [--workers 3]
                                         [--concurrency 8] [--duration 0]
                                         [--database sqlite|postgresql|both]

Needs aiosmtpd; PostgreSQL through DBQUEUE_BENCH_PG (default the test database,
postgresql:///dbqueue_test?host=/var/run/postgresql). Pushes N send_email jobs,
starts K `python dbqueue.py work` processes with the limit (`--stop-when-empty`,
or with --duration S `--max-time S`: a window of a minute or more gives jobs
back with a delay, which --stop-when-empty would take for the end), and records
when each message reaches a local aiosmtpd sink (which answers at once).
Prints the rate between the first and last arrival, the rate over the steady
part (after the shortest window's first burst), and for each window of the
limit the most messages that arrived within any one such window (sliding, to
the microsecond).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
import dbqueue  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402

PG = os.environ.get("DBQUEUE_BENCH_PG", "postgresql:///dbqueue_test?host=/var/run/postgresql")


class Sink:
    def __init__(self):
        self.times = []

    async def handle_DATA(self, server, session, envelope):
        self.times.append(time.time())
        return "250 OK"


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def busiest(times, seconds):
    most, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= seconds:
            start += 1
        most = max(most, end - start + 1)
    return most


def run(url, table, args, port, sink, tmp):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QUEUE_", "MAIL_", "DATABASE_URL"))}
    env.update(QUEUE_DATABASE_URL=url, QUEUE_TABLE=table, QUEUE_FAILED_TABLE=table + "_failed",
               MAIL_HOST="127.0.0.1", MAIL_PORT=str(port), MAIL_RATE_LIMIT=args.limit,
               MAIL_FROM_ADDRESS="bench@example.com")
    config = dbqueue.Config.from_env(env, os.devnull)
    queue = dbqueue.Queue(config=config)
    queue.migrate()
    queue.push_many("send_email", [{"to": "r%d@example.com" % i, "subject": "Bench %d" % i,
                                    "text": "Hello\n" * 20} for i in range(args.emails)],
                    queue="emails")
    del sink.times[:]
    until = ["--max-time", str(args.duration)] if args.duration else ["--stop-when-empty"]
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "dbqueue.py"), "work", "-q",
                               "--queue", "emails", "--concurrency", str(args.concurrency)]
                              + until, env=env, cwd=tmp)
             for _ in range(args.workers)]
    for proc in procs:
        proc.wait()
    times = sorted(sink.times)
    windows = dbqueue._rate_limit(args.limit)
    spread = times[-1] - times[0]
    steady = [t for t in times if t >= times[0] + windows[0][1]]
    print("%-10s %d workers x %d  %d mails in %.0fs  %s: %.2f mails/s first to last, %.2f/s after"
          " the first %ds; %s"
          % (url.split(":")[0], args.workers, args.concurrency, len(times), spread, args.limit,
             (len(times) - 1) / spread if spread else 0,
             (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0,
             windows[0][1], "; ".join("busiest %ds window: %d (limit %d)"
                                      % (window, busiest(times, window), count)
                                      for count, window in windows)))
    cur = queue._conn().cursor()
    cur.execute('DROP TABLE "%s"' % table)
    cur.execute('DROP TABLE "%s_failed"' % table)
    cur.execute("DELETE FROM dbqueue_rate WHERE name LIKE '%s %%'" % table)
    cur.execute("DELETE FROM dbqueue_state WHERE name = 'mail_throttle:%s'" % table)
    queue.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=200)
    parser.add_argument("--limit", default="14/s,200/m")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="work --concurrency of each")
    parser.add_argument("--duration", type=int, default=0,
                        help="seconds the workers run (work --max-time); 0: until the queue is"
                             " empty")
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="dbqueue-rate-bench-")
    sink, port = Sink(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        table = "rate_bench_%d" % os.getpid()
        if args.database in ("sqlite", "both"):
            run("sqlite:///" + os.path.join(tmp, "q.db"), table, args, port, sink, tmp)
        if args.database in ("postgresql", "both"):
            run(PG, table, args, port, sink, tmp)
    finally:
        controller.stop()
        shutil.rmtree(tmp, True)


if __name__ == "__main__":
    main()
