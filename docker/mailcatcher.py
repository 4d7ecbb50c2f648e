#!/usr/bin/env python3
"""docker/mailcatcher.py - the demo's mail catcher in docker compose.

SMTP on port 1025 (Debian's python3-aiosmtpd) keeps every mail in memory
(the newest MAILCATCHER_KEEP, 500 by default); a web page on port 8025 lists
them and shows each one; /api/messages gives the same as JSON:
  GET /api/messages          [{"id", "from", "to", "subject", "date", "size"}]
  GET /api/messages/ID       the same fields plus "text" (the plain-text body)
  DELETE /api/messages       forgets every mail
It is a viewer for a demo, not a mail server: it delivers nothing.
"""

import email
import email.policy
import html
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

KEEP = int(os.environ.get("MAILCATCHER_KEEP", "500"))
SMTP_PORT = int(os.environ.get("MAILCATCHER_SMTP_PORT", "1025"))
HTTP_PORT = int(os.environ.get("MAILCATCHER_HTTP_PORT", "8025"))

lock = threading.Lock()
messages = []  # newest last
next_id = 1


def summary(m):
    return {k: m[k] for k in ("id", "from", "to", "subject", "date", "size")}


def body_text(msg):
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        return part.get_content()
    except (LookupError, ValueError):
        return part.get_payload()


class Handler:
    async def handle_DATA(self, server, session, envelope):
        global next_id
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        with lock:
            m = {
                "id": next_id,
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "subject": str(msg.get("Subject", "")),
                "date": str(msg.get("Date", "")),
                "size": len(raw),
                "text": body_text(msg),
            }
            next_id += 1
            messages.append(m)
            del messages[:-KEEP]
        return "250 OK"


class Web(BaseHTTPRequestHandler):
    def send(self, code, body, ctype):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def find(self, ident):
        with lock:
            for m in messages:
                if str(m["id"]) == ident:
                    return dict(m)
        return None

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/messages":
            with lock:
                out = [summary(m) for m in messages]
            return self.send(200, json.dumps(out), "application/json")
        if path.startswith("/api/messages/"):
            m = self.find(path[len("/api/messages/"):])
            if m is None:
                return self.send(404, '{"error": "no such message"}', "application/json")
            return self.send(200, json.dumps(m), "application/json")
        if path.startswith("/m/"):
            m = self.find(path[3:])
            if m is None:
                return self.send(404, "no such message", "text/plain")
            page = "<p><a href='/'>all mails</a></p><h2>%s</h2><p>from %s to %s, %s</p><pre>%s</pre>" % (
                html.escape(m["subject"]), html.escape(m["from"]),
                html.escape(", ".join(m["to"])), html.escape(m["date"]), html.escape(m["text"]))
            return self.send(200, "<!doctype html><title>mail</title>" + page, "text/html; charset=utf-8")
        if path == "/":
            with lock:
                rows = "".join(
                    "<tr><td>%s</td><td>%s</td><td><a href='/m/%d'>%s</a></td><td>%s</td></tr>" % (
                        html.escape(m["date"]), html.escape(", ".join(m["to"])), m["id"],
                        html.escape(m["subject"] or "(no subject)"), html.escape(m["from"]))
                    for m in reversed(messages))
            page = ("<!doctype html><title>ordersuite mail</title><h1>ordersuite mail (%d)</h1>"
                    "<table border=1 cellpadding=4><tr><th>date</th><th>to</th><th>subject</th>"
                    "<th>from</th></tr>%s</table>") % (len(messages), rows)
            return self.send(200, page, "text/html; charset=utf-8")
        return self.send(404, "not found", "text/plain")

    def do_DELETE(self):
        if self.path == "/api/messages":
            with lock:
                messages.clear()
            return self.send(200, "{}", "application/json")
        return self.send(404, "not found", "text/plain")

    def log_message(self, fmt, *args):
        pass


def main():
    smtp = Controller(Handler(), hostname="0.0.0.0", port=SMTP_PORT)
    smtp.start()
    print("mailcatcher: SMTP on :%d, web on :%d" % (SMTP_PORT, HTTP_PORT), flush=True)
    ThreadingHTTPServer(("0.0.0.0", HTTP_PORT), Web).serve_forever()


if __name__ == "__main__":
    main()
