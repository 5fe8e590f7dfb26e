#!/usr/bin/env python3
"""Emails per second through one dbqueue worker to a local SMTP sink.

    /path/to/python .bench/email_bench.py [--emails 500] [--tls]

Needs aiosmtpd (pip install aiosmtpd); --tls also needs the openssl command.
Pushes N send_email jobs into a temporary SQLite queue, then drains them with
one worker into an aiosmtpd server on 127.0.0.1, once reusing one SMTP session
(the default) and once opening a session per message (worker.reuse_smtp =
False). With --tls the sink requires STARTTLS (a self-signed certificate,
MAIL_VERIFY_PEER=false), where a session costs a TLS handshake.

    /path/to/python .bench/email_bench.py --concurrency 1,4,16,64 [--delay 0.1]
        [--database sqlite | --database postgresql:///db?host=/var/run/postgresql]

work --concurrency N instead: a sink in its own process that takes --delay
seconds per message (as a real provider does), one worker process with N
slots, mails/s and the worker's CPU seconds (all its threads) per mail.
"""

import argparse
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dbqueue  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402


class Sink:
    def __init__(self):
        self.received = 0

    async def handle_DATA(self, server, session, envelope):
        self.received += 1
        return "250 OK"


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def tls_context(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=localhost"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def run(tmp, port, emails, reuse, tls):
    config = dbqueue.Config(database_url="sqlite:///" + os.path.join(tmp, "q%d.db" % reuse),
                            mail_host="127.0.0.1", mail_port=port, mail_from_address="b@example.com",
                            mail_encryption="starttls" if tls else "none", mail_verify_peer=False)
    queue = dbqueue.Queue(config=config)
    queue.push_many("send_email", [{"to": "r%d@example.com" % i, "subject": "Bench %d" % i,
                                    "text": "Hello\n" * 20, "html": "<p>Hello</p>" * 20}
                                   for i in range(emails)], queue="emails")
    worker = dbqueue.Worker(queue, ["emails"], log=dbqueue._Log(stream=io.StringIO()))
    worker.reuse_smtp = reuse
    started = time.perf_counter()
    done = worker.run(stop_when_empty=True)
    elapsed = time.perf_counter() - started
    queue.close()
    assert done == emails, (done, emails)
    return emails / elapsed


SLOW_SINK = textwrap.dedent("""
    import asyncio, sys, time
    from aiosmtpd.controller import Controller

    class Sink:
        received = 0

        async def handle_DATA(self, server, session, envelope):
            await asyncio.sleep(float(sys.argv[2]))
            Sink.received += 1
            return "250 OK"

    controller = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
    controller.start()
    print("ready", flush=True)
    sys.stdin.read()          # until the benchmark closes our stdin
    controller.stop()
    print(Sink.received, flush=True)
""")


def run_concurrent(tmp, port, emails, concurrency, database):
    """One worker with `concurrency` slots drains `emails` mails: (mails/s, CPU s per mail)."""
    import resource
    table = "bench_conc_%d_%d" % (os.getpid(), concurrency)
    if database == "sqlite":
        url = "sqlite:///" + os.path.join(tmp, "c%d.db" % concurrency)
    else:
        url = database
    config = dbqueue.Config(database_url=url, table=table, failed_table=table + "_failed",
                            mail_host="127.0.0.1", mail_port=port,
                            mail_from_address="b@example.com", mail_encryption="none")
    queue = dbqueue.Queue(config=config)
    try:
        queue.migrate()
        queue.push_many("send_email", [{"to": "r%d@example.com" % i, "subject": "Bench %d" % i,
                                        "text": "Hello\n" * 20, "html": "<p>Hello</p>" * 20}
                                       for i in range(emails)], queue="emails")
        worker = dbqueue.Worker(queue, ["emails"], log=dbqueue._Log(stream=io.StringIO()),
                                concurrency=concurrency)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        done = worker.run(stop_when_empty=True)
        elapsed = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        assert done == emails, (done, emails)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return emails / elapsed, cpu / emails
    finally:
        if database != "sqlite":
            quote = "`%s`" if database.startswith(("mysql", "mariadb")) else '"%s"'
            with queue.transaction() as cur:
                for name in (table, table + "_failed"):
                    cur.execute("DROP TABLE IF EXISTS " + quote % name)
        queue.close()


def concurrency_main(args):
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SLOW_SINK, str(port), str(args.delay)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tmp = tempfile.mkdtemp(prefix="dbqueue-email-bench-")
    total = 0
    try:
        assert sink.stdout.readline().strip() == "ready"
        db = args.database.split(":")[0]
        for n in [int(c) for c in args.concurrency.split(",")]:
            emails = args.emails or max(100, int(n / args.delay * 4))   # about 4 s of sending
            rate, cpu = run_concurrent(tmp, port, emails, n, args.database)
            total += emails
            print("%-10s concurrency %3d  %5d mails  %7.1f mails/s (ideal %6.1f)  %5.2f ms CPU"
                  "/mail" % (db, n, emails, rate, n / args.delay, cpu * 1000), flush=True)
    finally:
        out, _ = sink.communicate("", timeout=30)
        shutil.rmtree(tmp, True)
    assert int(out.split()[-1]) == total, (out, total)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=None)
    parser.add_argument("--tls", action="store_true", help="STARTTLS to the sink")
    parser.add_argument("--concurrency", help="e.g. 1,4,16,64: work --concurrency N instead")
    parser.add_argument("--delay", type=float, default=0.1,
                        help="with --concurrency: the sink's seconds per message (default 0.1)")
    parser.add_argument("--database", default="sqlite",
                        help="with --concurrency: sqlite (a temporary file), or a PostgreSQL or MySQL URL")
    args = parser.parse_args()
    if args.concurrency:
        return concurrency_main(args)
    args.emails = args.emails or 500
    tmp = tempfile.mkdtemp(prefix="dbqueue-email-bench-")
    try:
        kw = {}
        if args.tls:
            kw = {"tls_context": tls_context(tmp), "require_starttls": True}
        sink = Sink()
        port = free_port()
        controller = Controller(sink, hostname="127.0.0.1", port=port, **kw)
        controller.start()
        try:
            for reuse in (True, False):
                rate = run(tmp, port, args.emails, reuse, args.tls)
                print("%-9s %-22s %4d emails  %7.0f emails/s"
                      % ("starttls" if args.tls else "plain",
                         "one reused session" if reuse else "a session per email",
                         args.emails, rate))
        finally:
            controller.stop()
        assert sink.received == 2 * args.emails, sink.received
    finally:
        shutil.rmtree(tmp, True)


if __name__ == "__main__":
    main()
