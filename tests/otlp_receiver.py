"""otlp_receiver.py — a small OTLP/HTTP JSON receiver for the tests.

Receiver(port) listens on 127.0.0.1:port (0: any free port, see .port) in a
thread of the test's process and keeps every span of every POST to
/v1/traces, decoded: a dict with the service (the resource's service.name),
traceId, spanId, parentSpanId ("" for a root), name, kind, start/end in
nanoseconds, attributes as a plain dict, links and status. A body that is
not OTLP JSON (or not strictly valid UTF-8) is answered 400 and counted in
.bad, so the exporter's
encoding is checked by every export.

    r = Receiver(0); r.start(); ... r.spans(); r.stop()
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _value(v):
    for k in ("stringValue", "intValue", "boolValue", "doubleValue"):
        if k in v:
            return int(v[k]) if k == "intValue" else v[k]
    raise ValueError(f"attribute value of an unknown kind: {v}")


def decode(payload):
    """The spans of one ExportTraceServiceRequest (JSON text or dict)."""
    if isinstance(payload, bytes):
        # Strict UTF-8 (RFC 8259 8.1: JSON text is UTF-8), as a conforming
        # receiver decodes: one bad byte makes the whole batch refused.
        # json.loads(bytes) alone would let encoded surrogates through.
        payload = payload.decode("utf-8", errors="strict")
    doc = json.loads(payload) if isinstance(payload, str) else payload
    out = []
    for rs in doc["resourceSpans"]:
        res = {a["key"]: _value(a["value"]) for a in rs["resource"]["attributes"]}
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for f in ("traceId", "spanId"):
                    int(s[f], 16)  # hex, as OTLP/JSON wants (not base64)
                if len(s["traceId"]) != 32 or len(s["spanId"]) != 16:
                    raise ValueError(f"id lengths: {s['traceId']} {s['spanId']}")
                out.append({
                    "service": res["service.name"],
                    "traceId": s["traceId"],
                    "spanId": s["spanId"],
                    "parentSpanId": s.get("parentSpanId", ""),
                    "name": s["name"],
                    "kind": s["kind"],
                    "start": int(s["startTimeUnixNano"]),
                    "end": int(s["endTimeUnixNano"]),
                    "attributes": {a["key"]: _value(a["value"]) for a in s.get("attributes", [])},
                    "links": s.get("links", []),
                    "status": s.get("status", {}),
                })
    return out


class Receiver:
    def __init__(self, port=0):
        self._lock = threading.Lock()
        self._spans = []
        self.bad = 0
        self.posts = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.path == "/v1/traces" and \
                    self.headers.get("Content-Type", "").startswith("application/json")
                try:
                    spans = decode(body) if ok else []
                except (ValueError, KeyError, TypeError):
                    ok = False
                with receiver._lock:
                    receiver.posts += 1
                    if ok:
                        receiver._spans.extend(spans)
                    else:
                        receiver.bad += 1
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._srv.server_address[1]
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._srv.shutdown()
        self._srv.server_close()

    def spans(self, trace_id=None):
        with self._lock:
            return [s for s in self._spans if trace_id is None or s["traceId"] == trace_id]
