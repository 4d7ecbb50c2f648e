#!/usr/bin/python3
"""mailcatcher — a small SMTP server that keeps every mail it accepts, for the
demo and the tests (Debian's python3-aiosmtpd; Debian's own python3, hence
the shebang).

  SMTP  on 127.0.0.1:--smtp-port (1025): accepts any sender and recipient,
        except that a recipient given with --refuse (or POST /api/refuse) is
        refused permanently (550 5.1.1) and, while tempfail is on (--tempfail
        or POST /api/tempfail), every recipient is refused for now (451 4.3.0);
        while refuse-sender is on (--refuse-sender or POST /api/refuse-sender),
        MAIL FROM is refused (550 5.7.1: a refusal of the session, not of a
        recipient); a mail to a recipient given with --refuse-data (or POST
        /api/refuse-data) is refused after its data (554 5.6.0); and DATA
        answers only after --data-delay seconds (or POST /api/delay), a slow
        server (other sessions go on meanwhile); POST /api/reply-delay keeps
        the next mails first and answers their DATA late: a server that has
        the data when a client that gave up waiting leaves.
  HTTP  on 127.0.0.1:--http-port (1080):
        GET    /               the mails, newest first (a page for a browser)
        GET    /api/messages   the mails as JSON: [{id, received_at, mail_from,
                               rcpt_tos, subject, message_id, body}], oldest first
        DELETE /api/messages   forgets every mail
        POST   /api/refuse     body {"address": "a@b"}: refuse that recipient
        POST   /api/accept     body {"address": "a@b"}: accept it again
        POST   /api/tempfail   body {"on": true|false}
        POST   /api/refuse-sender  body {"on": true|false}
        POST   /api/refuse-data    body {"address": "a@b"}
        POST   /api/delay      body {"seconds": 0..60}: DATA's delay
        POST   /api/reply-delay  body {"seconds": 0..60, "count": N}: the
                               next N mails are kept, then answered after
                               that many seconds (0 seconds: off)

--store FILE keeps the mails in FILE (one JSON object a line) across
restarts; --ready-file FILE writes {"smtp": port, "http": port} there once
both servers listen (ports 0 = chosen by the system, for tests).
Nothing here is meant to face a network: both servers bind 127.0.0.1 unless
--bind says otherwise (docker compose: 0.0.0.0 inside the container, whose
port is published on 127.0.0.1 only).
"""

import argparse
import asyncio
import email
import email.policy
import html
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

MAX_BODY = 64 * 1024  # the HTTP API's request bodies are tiny


class Store:
    """The mails, in memory and (with a path) appended to a file."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.mails = []
        self.path = path
        self.refused = set()
        self.tempfail = False
        self.refuse_sender = False
        self.refused_data = set()
        self.data_delay = 0.0
        self.reply_delay = 0.0
        self.reply_delay_left = 0
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if line:
                        self.mails.append(json.loads(line))

    def add(self, mail):
        with self.lock:
            mail["id"] = len(self.mails) + 1
            self.mails.append(mail)
            if self.path:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(mail) + "\n")
                    f.flush()
                    os.fsync(f.fileno())

    def clear(self):
        with self.lock:
            self.mails = []
            if self.path:
                open(self.path, "w", encoding="utf-8").close()

    def snapshot(self):
        with self.lock:
            return list(self.mails)


class Handler:
    """aiosmtpd's hooks: RCPT decides refusals, DATA keeps the mail."""

    def __init__(self, store):
        self.store = store

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.store.refuse_sender:
            return "550 5.7.1 mailcatcher: sender refused (refuse-sender is on)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.store.tempfail:
            return "451 4.3.0 mailcatcher: try again later (tempfail is on)"
        if address.lower() in self.store.refused:
            return "550 5.1.1 <%s>: mailbox unavailable (refused by mailcatcher)" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.store.data_delay > 0:
            await asyncio.sleep(self.store.data_delay)
        if any(r.lower() in self.store.refused_data for r in envelope.rcpt_tos):
            return "554 5.6.0 mailcatcher: message refused (refuse-data)"
        raw = envelope.content
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", errors="replace")
        msg = email.message_from_string(raw, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        self.store.add(
            {
                "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "subject": str(msg.get("Subject", "")),
                "message_id": str(msg.get("Message-ID", "")),
                "body": body.get_content() if body is not None else raw,
            }
        )
        if self.store.reply_delay > 0 and self.store.reply_delay_left > 0:
            # Kept already: a client that leaves meanwhile cannot know.
            self.store.reply_delay_left -= 1
            await asyncio.sleep(self.store.reply_delay)
        return "250 Message accepted for delivery"


def page(mails):
    rows = []
    for m in reversed(mails):
        rows.append(
            "<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td><pre>%s</pre></td></tr>"
            % (
                m["id"],
                html.escape(m["received_at"]),
                html.escape(", ".join(m["rcpt_tos"])),
                html.escape(m["subject"]),
                html.escape(m["body"]),
            )
        )
    return (
        "<!doctype html><meta charset=utf-8><title>mailcatcher</title>"
        "<style>body{font-family:sans-serif}td{vertical-align:top;border-top:1px solid #ccc;"
        "padding:4px}pre{margin:0}</style>"
        "<h1>mailcatcher: %d mail(s)</h1><p>JSON: <a href=/api/messages>/api/messages</a></p>"
        "<table><tr><th>#<th>received<th>to<th>subject<th>body</tr>%s</table>"
        % (len(mails), "".join(rows))
    )


def make_http_handler(store):
    class Http(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: the tests poll
            pass

        def reply(self, code, ctype, text):
            data = text.encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def json_body(self):
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                return None
            if n < 0 or n > MAX_BODY:
                return None
            try:
                v = json.loads(self.rfile.read(n) or b"null")
            except ValueError:
                return None
            return v if isinstance(v, dict) else None

        def do_GET(self):
            if self.path == "/api/messages":
                self.reply(200, "application/json", json.dumps(store.snapshot()))
            elif self.path == "/":
                self.reply(200, "text/html; charset=utf-8", page(store.snapshot()))
            else:
                self.reply(404, "text/plain", "not found\n")

        def do_DELETE(self):
            if self.path != "/api/messages":
                self.reply(404, "text/plain", "not found\n")
                return
            store.clear()
            self.reply(204, "text/plain", "")

        def do_POST(self):
            v = self.json_body()
            if self.path == "/api/refuse" and v and isinstance(v.get("address"), str):
                store.refused.add(v["address"].lower())
                self.reply(200, "application/json", json.dumps(sorted(store.refused)))
            elif self.path == "/api/accept" and v and isinstance(v.get("address"), str):
                store.refused.discard(v["address"].lower())
                self.reply(200, "application/json", json.dumps(sorted(store.refused)))
            elif self.path == "/api/tempfail" and v and isinstance(v.get("on"), bool):
                store.tempfail = v["on"]
                self.reply(200, "application/json", json.dumps({"tempfail": store.tempfail}))
            elif self.path == "/api/refuse-sender" and v and isinstance(v.get("on"), bool):
                store.refuse_sender = v["on"]
                self.reply(200, "application/json", json.dumps({"refuse_sender": store.refuse_sender}))
            elif self.path == "/api/refuse-data" and v and isinstance(v.get("address"), str):
                store.refused_data.add(v["address"].lower())
                self.reply(200, "application/json", json.dumps(sorted(store.refused_data)))
            elif (self.path == "/api/delay" and v and isinstance(v.get("seconds"), (int, float))
                  and not isinstance(v.get("seconds"), bool) and 0 <= v["seconds"] <= 60):
                store.data_delay = float(v["seconds"])
                self.reply(200, "application/json", json.dumps({"seconds": store.data_delay}))
            elif (self.path == "/api/reply-delay" and v
                  and isinstance(v.get("seconds"), (int, float)) and not isinstance(v.get("seconds"), bool)
                  and 0 <= v["seconds"] <= 60 and isinstance(v.get("count"), int)
                  and not isinstance(v.get("count"), bool) and 0 <= v["count"] <= 1000):
                store.reply_delay = float(v["seconds"])
                store.reply_delay_left = v["count"]
                self.reply(200, "application/json",
                           json.dumps({"seconds": store.reply_delay, "count": store.reply_delay_left}))
            elif self.path in ("/api/refuse", "/api/accept", "/api/tempfail", "/api/refuse-sender",
                               "/api/refuse-data", "/api/delay", "/api/reply-delay"):
                self.reply(400, "text/plain", "bad body\n")
            else:
                self.reply(404, "text/plain", "not found\n")

    return Http


class Catcher(Controller):
    """A controller whose SMTP server can be bound to port 0."""

    def _create_server(self):
        return self.loop.create_server(
            self._factory_invoker, host=self.hostname, port=self.port, reuse_address=True
        )

    def _trigger_server(self):
        # The stock controller connects to (hostname, port) to check that the
        # server answers; with port 0 ask the socket which port it got first.
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                    help="the address both servers listen on (0.0.0.0 in a container)")
    ap.add_argument("--smtp-port", type=int, default=1025)
    ap.add_argument("--http-port", type=int, default=1080)
    ap.add_argument("--refuse", action="append", default=[], metavar="ADDRESS")
    ap.add_argument("--tempfail", action="store_true")
    ap.add_argument("--refuse-sender", action="store_true")
    ap.add_argument("--refuse-data", action="append", default=[], metavar="ADDRESS")
    ap.add_argument("--data-delay", type=float, default=0.0, metavar="SECONDS")
    ap.add_argument("--store", metavar="FILE")
    ap.add_argument("--ready-file", metavar="FILE")
    a = ap.parse_args()
    for p in (a.smtp_port, a.http_port):
        if not 0 <= p <= 65535:
            ap.error("a port is 0..65535")
    if not 0 <= a.data_delay <= 60:
        ap.error("--data-delay is 0..60 seconds")

    store = Store(a.store)
    store.refused.update(x.lower() for x in a.refuse)
    store.tempfail = a.tempfail
    store.refuse_sender = a.refuse_sender
    store.refused_data.update(x.lower() for x in a.refuse_data)
    store.data_delay = a.data_delay
    smtp = Catcher(Handler(store), hostname=a.bind, port=a.smtp_port)
    smtp.start()
    web = ThreadingHTTPServer((a.bind, a.http_port), make_http_handler(store))
    ports = {"smtp": smtp.port, "http": web.server_address[1]}
    if a.ready_file:
        tmp = a.ready_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(ports, f)
        os.rename(tmp, a.ready_file)
    print("mailcatcher: smtp %s:%d, web http://%s:%d/" % (a.bind, ports["smtp"], a.bind, ports["http"]),
          file=sys.stderr, flush=True)
    try:
        web.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        smtp.stop()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
