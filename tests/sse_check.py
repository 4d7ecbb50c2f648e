#!/usr/bin/env python3
"""sse_check.py — GET /orders/{id}/events, order-api's live order status
(Server-Sent Events), against the real order-api, inventory, billing,
PostgreSQL and RabbitMQ.

Three order-api instances on their own ports share the database:
  A  consumes the order-api queue (the real broker);
  B  has a broker URL that reaches nothing, so it never consumes anything:
     what its streams show was consumed by A and came through PostgreSQL's
     LISTEN/NOTIFY. HTTP_THREADS=2, SSE_CLIENT_MAX_STREAMS=10,
     SSE_MAX_STREAMS=11, SSE_KEEPALIVE_MS=500;
  C  like B, with SSE_IDLE_TIMEOUT_MS=1500 and SSE_KEEPALIVE_MS=300;
  D  like B, HTTP_THREADS=2 and SSE_KEEPALIVE_MS=60000: nothing wakes its
     streams while the checks run, so a stream that held a thread would
     hold it for the whole check.
inventory and billing start late, so the order stays PENDING, then RESERVED,
for as long as the checks need. Checks:
  - the errors: 404 problem+json (unknown order, not an id, another
    client's order), 401 without a token, 400 for a malformed Last-Event-ID
    and for one past the order's last entry (another order's id);
  - a stream starts with the order's current state (its timeline entries,
    the ids being their seq), after a `retry: 3000` field;
  - an idle stream gets keep-alive comments and is ended after the timeout;
  - the limits: the client's 11th stream is 429, the server's 12th 503
    (problem+json, Retry-After); closed streams free their places;
  - 10 streams on D, which has 2 HTTP threads: a POST and a GET still answer;
  - a change consumed by A reaches a stream held by B;
  - Last-Event-ID resumes without repeats, on a PENDING order (its next
    entry, then the rest to the final one) and on a CONFIRMED one, and
    after the final entry is 204;
  - a stream shows an order move to CONFIRMED and then ends;
  - every instance stops cleanly (exit 0) with streams open.
Run by scripts/run-tests.sh (which exports the URLs); prints a Check-style line.
"""
import json
import os
import time
import urllib.parse
import uuid
from http.client import HTTPConnection

import checklib
from checklib import check

PORT_A, OPS_A, PORT_B, PORT_C, PORT_D = 18390, 18391, 18392, 18394, 18397
INV_METRICS, BILL_METRICS = 18395, 18396
SKU = "FLT-PAPER"


class Stream:
    """One GET /orders/{id}/events, read as it comes."""

    def __init__(self, port, order_id, token, last_id=None, timeout=15):
        # timeout bounds each read and the whole stream: keep-alive comments
        # alone must not keep a reader waiting for ever.
        self.deadline = time.monotonic() + timeout
        self.c = HTTPConnection("127.0.0.1", port, timeout=timeout)
        h = {"Accept": "text/event-stream"}
        if token:
            h["Authorization"] = f"Bearer {token}"
        if last_id is not None:
            h["Last-Event-ID"] = str(last_id)
        self.comments = []
        self.retry = None  # the stream's retry field, as sent
        self.ended = False
        self.timed_out = False
        try:
            self.c.request("GET", f"/orders/{order_id}/events", headers=h)
            self.r = self.c.getresponse()
            self.status = self.r.status
            self.headers = {k.lower(): v for k, v in self.r.getheaders()}
            self.body = b"" if self.status == 200 else self.r.read()
        except OSError as e:  # no answer: status 0
            self.status, self.headers, self.body = 0, {}, str(e).encode()

    def next_event(self):
        """The next event (a dict: id, data decoded), or None at the end of
        the body or past the stream's timeout (timed_out is then set)."""
        ev = {}
        while True:
            if time.monotonic() > self.deadline:
                self.timed_out = True
                return None
            try:
                line = self.r.readline()
            except OSError:
                self.timed_out = True
                return None
            if not line:
                self.ended = True
                return None
            line = line.decode().rstrip("\n")
            if line == "":
                if "data" in ev:
                    ev["data"] = json.loads(ev["data"])
                    ev["id"] = int(ev["id"])
                    return ev
                ev = {}
            elif line.startswith(":"):
                self.comments.append(line)
            else:
                k, _, v = line.partition(":")
                ev[k] = v[1:] if v.startswith(" ") else v
                if k == "retry":
                    self.retry = ev[k]

    def events_to_end(self):
        out = []
        while True:
            ev = self.next_event()
            if ev is None:
                return out
            out.append(ev)

    def close(self):
        self.c.close()


def next_status(s):
    """The status of s's next event (None: no event)."""
    ev = s.next_event() if s.status == 200 else None
    return ev["data"]["status"] if ev else None


def call(method, port, path, token=None, body=None):
    h = {}
    if token:
        h["Authorization"] = f"Bearer {token}"
    if body is not None:
        h["Content-Type"] = "application/json"
    return checklib.http(method, port, path, body=body, headers=h)


def place(port, token, customer):
    body = json.dumps({"customer_id": customer, "customer_email": f"{customer}@example.com",
                       "currency": "EUR", "items": [{"sku": SKU, "quantity": 1}]})
    s, _, b = call("POST", port, "/orders", token, body)
    if s != 201:
        raise RuntimeError(f"POST /orders on {port}: {s} {b[:200]!r}")
    return json.loads(b)["id"]


def sql1(sql, **params):
    rc, out = checklib.psql(sql, **params)
    if rc != 0:
        raise RuntimeError(f"{sql}: {out}")
    return out.strip()


def status_of(order_id):
    return sql1("SELECT status FROM orders.orders WHERE id = :'id'", id=order_id)


def seqs(order_id):
    """{status: seq} of the order's timeline."""
    out = sql1("SELECT string_agg(status || '=' || seq, ',') FROM orders.order_timeline"
               " WHERE order_id = :'id'", id=order_id)
    return {k: int(v) for k, v in (x.split("=") for x in out.split(",") if x)}


def problem(name, got, status, retry_after=False):
    s, h, b = got
    ok = (s == status and h.get("content-type", "").startswith("application/problem+json")
          and (not retry_after or h.get("retry-after", "").isdigit()))
    return check(name, ok, f"got {s} {h} {b[:160]!r}")


def dead_broker(url):
    """The URL with a port where nothing listens: that instance never consumes."""
    u = urllib.parse.urlsplit(url)
    auth = u.netloc.rpartition("@")[0]
    return u._replace(netloc=f"{auth}@127.0.0.1:1").geturl()


def main():
    tokens = os.path.join(checklib.LOG_DIR, "sse.api-tokens")
    os.makedirs(checklib.LOG_DIR, exist_ok=True)
    if os.path.exists(tokens):
        os.unlink(tokens)
    alice, bob = checklib.api_token("alice", tokens), checklib.api_token("bob", tokens)
    if not alice or not bob:
        raise RuntimeError("scripts/api-token.sh made no token")
    sql1("SELECT inventory.adjust_stock(sku, 100000 - on_hand, 'sse_check: stock')"
         " FROM inventory.stock WHERE sku = :'sku'", sku=SKU)

    base = dict(os.environ)
    base.pop("OPS_BIND", None)
    api = dict(base, DATABASE_URL=os.environ["ORDERS_DATABASE_URL"], API_TOKENS_FILE=tokens,
               LOG_LEVEL="debug")
    env_a = dict(api, AMQP_URL=os.environ["ORDER_API_AMQP_URL"], HTTP_PORT=str(PORT_A),
                 OPS_PORT=str(OPS_A))
    off = dead_broker(os.environ["ORDER_API_AMQP_URL"])
    env_b = dict(api, AMQP_URL=off, HTTP_PORT=str(PORT_B), OPS_PORT="0", HTTP_THREADS="2",
                 SSE_CLIENT_MAX_STREAMS="10", SSE_MAX_STREAMS="11", SSE_KEEPALIVE_MS="500")
    env_c = dict(api, AMQP_URL=off, HTTP_PORT=str(PORT_C), OPS_PORT="0",
                 SSE_IDLE_TIMEOUT_MS="1500", SSE_KEEPALIVE_MS="300")
    env_d = dict(api, AMQP_URL=off, HTTP_PORT=str(PORT_D), OPS_PORT="0", HTTP_THREADS="2",
                 SSE_KEEPALIVE_MS="60000")
    procs = {}
    held = []
    try:
        procs["A"] = checklib.start("order-api", env_a, "sse.order-api-A.log")
        procs["B"] = checklib.start("order-api", env_b, "sse.order-api-B.log")
        procs["C"] = checklib.start("order-api", env_c, "sse.order-api-C.log")
        procs["D"] = checklib.start("order-api", env_d, "sse.order-api-D.log")
        up = checklib.wait_until(lambda: checklib.ready(PORT_A) and all(
            call("GET", p, "/healthz")[0] == 200 for p in (PORT_B, PORT_C, PORT_D)), 30)
        if not check("four_instances_start", up, "A not ready or B/C/D not answering"):
            return

        # inventory and billing are not running yet: x stays PENDING.
        x = place(PORT_A, alice, "sse-x")
        problem("unknown_order_is_404", call("GET", PORT_B, f"/orders/{uuid.uuid4()}/events",
                                             alice), 404)
        problem("not_an_order_id_is_404", call("GET", PORT_B, "/orders/nope/events", alice), 404)
        problem("another_clients_order_is_404", call("GET", PORT_B, f"/orders/{x}/events", bob),
                404)
        s, h, _ = call("GET", PORT_B, f"/orders/{x}/events")
        check("no_token_is_401", s == 401 and h.get("www-authenticate", "").startswith("Bearer"),
              f"got {s} {h}")
        st = Stream(PORT_B, x, alice, last_id="abc")
        problem("malformed_last_event_id_is_400", (st.status, st.headers, st.body), 400)
        st.close()
        # seq is one counter over all orders: an id past x's last entry (here
        # another order's) is of no event of x's stream. Resuming after it
        # would skip x's next entries, its final one too, and never end.
        other = place(PORT_A, bob, "sse-other")
        st = Stream(PORT_B, x, alice, last_id=seqs(other)["PENDING"])
        problem("a_last_event_id_past_the_orders_last_entry_is_400",
                (st.status, st.headers, st.body), 400)
        st.close()

        sx = Stream(PORT_B, x, alice, timeout=120)
        held.append(sx)
        first = sx.next_event() if sx.status == 200 else None
        want = seqs(x)
        check("a_stream_starts_with_the_current_state",
              sx.status == 200 and sx.headers.get("content-type") == "text/event-stream"
              and first and first["data"]["status"] == "PENDING" and first["id"] == want["PENDING"]
              and first["data"]["order_id"] == x,
              f"{sx.status} {sx.headers} {first} timeline {want}")
        check("a_stream_tells_the_client_to_reconnect_after_3_s", sx.retry == "3000",
              f"retry field {sx.retry!r}")

        # C: no change for 1.5 s ends the stream; comments every 0.3 s till then.
        sc = Stream(PORT_C, x, alice, timeout=10)
        got = sc.events_to_end() if sc.status == 200 else None
        check("an_idle_stream_gets_keepalives_and_is_ended_after_the_timeout",
              got is not None and [e["data"]["status"] for e in got] == ["PENDING"] and sc.ended
              and sum(c == ": keep-alive" for c in sc.comments) >= 2,
              f"{sc.status} events {got} comments {sc.comments}")
        sc.close()

        # B: alice holds sx; 9 more reach her limit of 10.
        more = [Stream(PORT_B, x, alice) for _ in range(9)]
        held.extend(more)
        opened = [next_status(m) == "PENDING" for m in more]
        check("ten_streams_of_one_client_open", all(opened), f"{[m.status for m in more]}")
        over = Stream(PORT_B, x, alice)
        problem("the_clients_stream_past_its_limit_is_429",
                (over.status, over.headers, over.body), 429, retry_after=True)
        over.close()
        y = place(PORT_B, bob, "sse-y")
        if y:
            sy = Stream(PORT_B, y, bob)
            held.append(sy)
            check("another_clients_stream_is_admitted_within_the_total", sy.status == 200,
                  f"{sy.status} {sy.body[:160]!r}")
            full = Stream(PORT_B, y, bob)
            problem("a_stream_past_the_servers_limit_is_503",
                    (full.status, full.headers, full.body), 503, retry_after=True)
            full.close()
            sy.close()
        for m in more:
            m.close()

        # D: ten streams held, two HTTP threads: the API still answers.
        ds = [Stream(PORT_D, x, alice) for _ in range(10)]
        held.extend(ds)
        check("ten_streams_open_on_two_http_threads",
              all(next_status(d) == "PENDING" for d in ds), f"{[d.status for d in ds]}")
        try:
            place(PORT_D, alice, "sse-d")
            check("a_post_answers_while_ten_streams_are_open_on_two_http_threads", True)
        except RuntimeError as e:
            check("a_post_answers_while_ten_streams_are_open_on_two_http_threads", False, str(e))
        s, _, _ = call("GET", PORT_D, f"/orders/{x}", alice)
        check("a_get_answers_while_ten_streams_are_open_on_two_http_threads", s == 200, f"{s}")
        for d in ds:
            d.close()

        def admitted():
            t = Stream(PORT_B, x, alice)
            t.close()
            return t.status == 200
        check("closed_streams_free_their_places", checklib.wait_until(admitted, 15, 0.3),
              "alice's closed streams still count after 15 s")

        # Resuming while the order still moves: after PENDING, the next
        # entry is RESERVED, not PENDING again.
        sp = Stream(PORT_B, x, alice, last_id=seqs(x)["PENDING"], timeout=120)
        held.append(sp)

        # A consumes inventory.reserved; sx, held by B, sees it.
        procs["inventory"] = checklib.start("inventory", dict(
            base, DATABASE_URL=os.environ["INVENTORY_DATABASE_URL"],
            AMQP_URL=os.environ["INVENTORY_AMQP_URL"], METRICS_PORT=str(INV_METRICS)),
            "sse.inventory.log")
        ev = sx.next_event()
        check("a_change_consumed_by_another_instance_reaches_the_stream",
              ev and ev["data"]["status"] == "RESERVED" and ev["id"] == seqs(x).get("RESERVED"),
              f"{ev} timeline {seqs(x)}")
        reserved_id = ev["id"] if ev else 0
        sx.close()
        ev = sp.next_event() if sp.status == 200 else None
        check("last_event_id_resumes_a_pending_order_with_its_next_entry",
              ev and ev["data"]["status"] == "RESERVED" and ev["id"] == reserved_id,
              f"{sp.status} {ev} timeline {seqs(x)}")

        procs["billing"] = checklib.start("billing", dict(
            base, DATABASE_URL=os.environ["BILLING_DATABASE_URL"],
            AMQP_URL=os.environ["BILLING_AMQP_URL"], METRICS_PORT=str(BILL_METRICS)),
            "sse.billing.log")
        confirmed = checklib.wait_until(lambda: status_of(x) == "CONFIRMED", 30)
        check("the_order_is_confirmed", confirmed, f"status {status_of(x)}")
        got = sp.events_to_end() if sp.status == 200 else None
        check("a_resumed_stream_ends_after_the_final_status",
              got is not None and [e["data"]["status"] for e in got] == ["CONFIRMED"]
              and sp.ended, f"{sp.status} {got}")
        sp.close()
        sr = Stream(PORT_B, x, alice, last_id=reserved_id)
        got = sr.events_to_end() if sr.status == 200 else None
        check("last_event_id_resumes_without_repeats",
              got is not None and [(e["id"], e["data"]["status"]) for e in got]
              == [(seqs(x)["CONFIRMED"], "CONFIRMED")] and sr.ended,
              f"{sr.status} after {reserved_id}: {got}")
        sr.close()
        s204 = Stream(PORT_B, x, alice, last_id=seqs(x)["CONFIRMED"])
        check("after_the_final_entry_it_is_204", s204.status == 204, f"{s204.status}")
        s204.close()

        # A whole order, live, on A itself.
        z = place(PORT_A, alice, "sse-z")
        sz = Stream(PORT_A, z, alice, timeout=30)
        got = sz.events_to_end() if sz.status == 200 else None
        ids = [e["id"] for e in got or []]
        check("a_stream_shows_the_order_move_to_its_final_status_and_ends",
              got is not None and [e["data"]["status"] for e in got]
              == ["PENDING", "RESERVED", "CONFIRMED"] and ids == sorted(set(ids)) and sz.ended,
              f"{sz.status} {got}")
        sz.close()

        # Shutdown with a stream open on each instance (w stays PENDING).
        for name in ("billing", "inventory"):
            checklib.stop(procs.pop(name))
        w = place(PORT_A, bob, "sse-w")
        ws = [Stream(p, w, bob, timeout=90) for p in (PORT_A, PORT_B, PORT_C, PORT_D)]
        held.extend(ws)
        # A's relay publishes what B and D placed (they cannot): an instance
        # stopping with outbox rows it cannot send waits for them a while.
        check("the_outbox_is_empty_before_the_stop", checklib.wait_until(
            lambda: sql1("SELECT count(*) FROM orders.outbox") == "0", 30),
            "orders.outbox still has rows after 30 s")
        check("streams_open_before_the_stop", all(
            next_status(s) == "PENDING" for s in ws),
            f"{[s.status for s in ws]}")
        # All at once: B, C and D, which never reach the broker, each give
        # their outbox relay its flush time (10 s) and its backoff first.
        for name in ("A", "B", "C", "D"):
            procs[name].terminate()
        for name, s in zip(("A", "B", "C", "D"), ws):
            rc = checklib.stop(procs.pop(name), timeout_s=45)
            s.events_to_end()
            check(f"instance_{name}_stops_cleanly_with_a_stream_open_and_ends_it",
                  rc == 0 and s.ended, f"exit {rc}, stream ended: {s.ended}")
    finally:
        for s in held:
            s.close()
        for p in procs.values():
            checklib.stop(p)


if __name__ == "__main__":
    checklib.run(main)
