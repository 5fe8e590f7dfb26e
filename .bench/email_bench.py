#!/usr/bin/env python3
"""Emails per second through one dbqueue worker to a local SMTP sink.

    /path/to/python .bench/email_bench.py [--emails 500] [--tls]

Needs aiosmtpd (pip install aiosmtpd); --tls also needs the openssl command.
Pushes N send_email jobs into a temporary SQLite queue, then drains them with
one worker into an aiosmtpd server on 127.0.0.1, once reusing one SMTP session
(the default) and once opening a session per message (worker.reuse_smtp =
False). With --tls the sink requires STARTTLS (a self-signed certificate,
MAIL_VERIFY_PEER=false), where a session costs a TLS handshake.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=500)
    parser.add_argument("--tls", action="store_true", help="STARTTLS to the sink")
    args = parser.parse_args()
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
