#!/usr/bin/env python3
"""otel_check.py — W3C trace context end to end and the OTLP/HTTP export,
against the real services, broker and database (issue #16, items 1 and 2).

A receiver started here (tests/otlp_receiver.py: Python's http.server on
127.0.0.1) decodes every export. The four services run in the tests'
environment, each with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it.

  1. one order placed with a traceparent and a tracestate is ONE trace
     across order-api, inventory, billing and email: the HTTP server span
     is the child of the caller's span; each publish span the child of (and
     linked to) the span that wrote its outbox row; each process span the
     child of the publish span of its message, with the messaging
     attributes; each has a "db transaction" child. The services run with a
     schedule delay of 10 minutes, so the spans arrive only with the flush
     at shutdown (SIGTERM), which is what this checks too;
  2. the order keeps its context (orders.traceparent) and every log line of
     its handling names the trace; an invalid traceparent or an oversized
     tracestate (one value over 256 bytes, or all over 512) is ignored
     (201, a new trace or no tracestate), never an error; tracestate
     fields sent twice are joined into one list; the status
     stream's server span is GET /orders/{id}/events;
     an order whose traceparent says not sampled (-00) keeps -00 and
     every hop logs its trace, yet no span of it is exported;
  2b. the batch path (inventory stopped while 20 orders and a malformed
     order.placed queue up): each db transaction starts and ends inside its
     process span, and the malformed message, dead-lettered, has a failed
     process span in the trace its traceparent names;
  3. with the receiver down, orders still complete and the spans are
     counted in ordersuite_otel_spans_dropped_total on /metrics, none
     exported.

Prints one line per check and a Check-style summary line. Over 600 lines:
the checks share one run of the services (and its flush at shutdown).
"""
import json
import os
import base64
import secrets
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from http.client import HTTPConnection

import checklib
from checklib import check
from otlp_receiver import Receiver

API_PORT, OPS_PORT = 28080, 29100
NAMES = ("inventory", "billing", "email", "order-api")
ROLE = {"inventory": "INVENTORY", "billing": "BILLING", "email": "EMAIL", "order-api": "ORDERS"}
AMQP = {"inventory": "INVENTORY", "billing": "BILLING", "email": "EMAIL", "order-api": "ORDER_API"}
METRICS = {"inventory": 29101, "billing": 29102, "email": 29103}
ORDER = json.dumps({"customer_id": "otel", "customer_email": "otel@example.com", "currency": "EUR",
                    "items": [{"sku": "MUG-WHITE", "quantity": 1}]})


def start_all(tokens, endpoint, delay_ms, tag):
    procs = {}
    for name in NAMES:
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": os.environ[f"{ROLE[name]}_DATABASE_URL"],
            "AMQP_URL": os.environ[f"{AMQP[name]}_AMQP_URL"],
            "LOG_LEVEL": "info",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms),
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
        })
        for k in ("OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
                  "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "SMTP_URL"):
            env.pop(k, None)
        if name == "order-api":
            env.update({"HTTP_PORT": str(API_PORT), "OPS_PORT": str(OPS_PORT),
                        "API_TOKENS_FILE": tokens, "METRICS_PORT": "0"})
        else:
            env["METRICS_PORT"] = str(METRICS[name])
        procs[name] = checklib.start(name, env, f"otel.{tag}.{name}.log")
    for name in NAMES:
        port = OPS_PORT if name == "order-api" else METRICS[name]
        ok = checklib.wait_until(lambda: checklib.ready(port), 40)
        check(f"{tag}_{name}_ready", ok, f"see {checklib.LOG_DIR}/otel.{tag}.{name}.log")
    return procs


def stop_all(procs, tag):
    for name in reversed(NAMES):
        rc = checklib.stop(procs[name])
        check(f"{tag}_{name}_stops_cleanly", rc == 0, f"exit {rc}")


def place(token, headers=None):
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    h.update(headers or {})
    s, _, b = checklib.http("POST", API_PORT, "/orders", ORDER, h)
    return s, (json.loads(b)["id"] if s == 201 else b)


def status(token, oid):
    s, _, b = checklib.http("GET", API_PORT, f"/orders/{oid}",
                            headers={"Authorization": f"Bearer {token}"})
    return json.loads(b)["status"] if s == 200 else None


def confirmed(token, oid):
    return checklib.wait_until(lambda: status(token, oid) == "CONFIRMED", 30, 0.2)


def stored_context(oid):
    rc, out = checklib.psql("SELECT coalesce(traceparent, '') || ' ' || coalesce(tracestate, '')"
                            " FROM orders.orders WHERE id = :'id'", id=oid)
    return out.strip() if rc == 0 else f"psql: {out}"


def metric(port, name):
    s, _, b = checklib.http("GET", port, "/metrics")
    for line in b.decode(errors="replace").splitlines():
        if line.startswith(name + "{"):
            return int(float(line.split()[-1]))
    return None


def one(spans, service, name):
    got = [s for s in spans if s["service"] == service and s["name"] == name]
    return got[0] if len(got) == 1 else None


def check_trace(spans, trace_id, parent_span, oid):
    by_id = {s["spanId"]: s for s in spans}
    check("one_trace_spans_the_four_services",
          {"order-api", "inventory", "billing", "email"} <= {s["service"] for s in spans},
          sorted({(s["service"], s["name"]) for s in spans}))
    server = one(spans, "order-api", "POST /orders")
    if not check("http_server_span", server is not None, "no POST /orders span"):
        return
    check("server_span_is_the_callers_child", server["parentSpanId"] == parent_span
          and server["kind"] == 2, server)
    check("server_span_attributes", server["attributes"].get("http.request.method") == "POST"
          and server["attributes"].get("http.response.status_code") == 201
          and server["attributes"].get("url.scheme") == "http"
          and server["attributes"].get("url.path") == "/orders", server["attributes"])
    # (publisher, key, the span that wrote the row, the consumers)
    hops = [("order-api", "order.placed", server, ["inventory"]),
            ("inventory", "inventory.reserved", None, ["billing", "order-api"]),
            ("billing", "billing.invoiced", None, ["order-api"]),
            ("order-api", "order.confirmed", None, ["email"])]
    writer = server
    for pub_svc, key, _, consumers in hops:
        pub = one(spans, pub_svc, f"publish {key}")
        if not check(f"publish_span_{key}", pub is not None, f"no publish {key} in {pub_svc}"):
            return
        a = pub["attributes"]
        check(f"publish_{key}_is_the_writers_child_and_linked",
              pub["parentSpanId"] == writer["spanId"] and pub["kind"] == 4
              and [l.get("spanId") for l in pub["links"]] == [writer["spanId"]],
              f"parent {pub['parentSpanId']} links {pub['links']}, writer {writer['spanId']}")
        check(f"publish_{key}_messaging_attributes",
              a.get("messaging.system") == "rabbitmq"
              and a.get("messaging.operation.type") == "send"
              and a.get("messaging.operation.name") == "publish"
              and a.get("messaging.destination.name") == "sales.events"
              and a.get("messaging.rabbitmq.destination.routing_key") == key
              and a.get("messaging.message.conversation_id") == oid
              and len(a.get("messaging.message.id", "")) == 36, a)
        nxt = None
        for c in consumers:
            proc = one(spans, c, f"process {key}")
            if not check(f"process_span_{key}_in_{c}", proc is not None, f"none in {c}"):
                return
            pa = proc["attributes"]
            check(f"process_{key}_in_{c}_is_the_publish_child",
                  proc["parentSpanId"] == pub["spanId"] and proc["kind"] == 5,
                  f"parent {proc['parentSpanId']}, publish {pub['spanId']}")
            check(f"process_{key}_in_{c}_attributes",
                  pa.get("messaging.system") == "rabbitmq"
                  and pa.get("messaging.operation.type") == "process"
                  and pa.get("messaging.operation.name") == "process"
                  and pa.get("messaging.destination.name") == "sales.events"
                  and pa.get("messaging.rabbitmq.destination.routing_key") == key
                  and pa.get("messaging.message.id") == a.get("messaging.message.id")
                  and pa.get("messaging.message.conversation_id") == oid, pa)
            tx = [s for s in spans if s["parentSpanId"] == proc["spanId"]
                  and s["name"] == "db transaction"]
            check(f"process_{key}_in_{c}_has_its_db_transaction",
                  len(tx) == 1 and tx[0]["kind"] == 3
                  and proc["start"] <= tx[0]["start"] <= tx[0]["end"] <= proc["end"], tx)
            if c == consumers[0]:
                nxt = proc
        writer = nxt
    orphans = [s for s in spans if s["parentSpanId"] and s["parentSpanId"] not in by_id
               and s["parentSpanId"] != parent_span]
    check("every_parent_is_in_the_trace", not orphans,
          [(s["service"], s["name"]) for s in orphans])


def log_spans(tag):
    """The span lines of the services' logs of step tag."""
    out = []
    for n in NAMES:
        path = os.path.join(checklib.LOG_DIR, f"otel.{tag}.{n}.log")
        for line in open(path).read().splitlines() if os.path.exists(path) else []:
            if line.startswith("{") and '"span":' in line:
                out.append(json.loads(line))
    return out


def publish_raw(key, body, traceparent):
    """One message published as the broker administrator through the
    management API (what order-api never sends: a body that is not JSON),
    with a W3C traceparent header; True when routed."""
    vhost = os.environ.get("ORDERSUITE_VHOST", "/")
    vhost = "%2F" if vhost == "/" else vhost
    mid = str(uuid.uuid4())
    doc = {"routing_key": key, "payload": body, "payload_encoding": "string",
           "properties": {"message_id": mid, "correlation_id": mid, "delivery_mode": 2,
                          "headers": {"schema_version": 1, "traceparent": traceparent}}}
    port = os.environ.get("MGMT_PORT", "15672")
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/exchanges/{vhost}/sales.events/publish",
        data=json.dumps(doc).encode(), method="POST", headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(
                f"{os.environ['RABBITMQ_ADMIN_USER']}:{os.environ['RABBITMQ_ADMIN_PASSWORD']}"
                .encode()).decode()})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read()).get("routed") is True, mid


def batch_burst(token, procs):
    """Item 3 of issue #16 on the batch path: inventory stopped (SIGSTOP)
    while 20 orders and one malformed order.placed (with a traceparent) are
    queued, then continued, so it takes them as one batch. Returns the
    orders' trace ids and the malformed message's, checked after the flush
    by check_batch_spans."""
    inv = procs["inventory"]
    os.kill(inv.pid, signal.SIGSTOP)
    traces, oids = [], []
    try:
        for _ in range(20):
            t = secrets.token_hex(16)
            s, oid = place(token, {"traceparent": f"00-{t}-{secrets.token_hex(8)}-01"})
            if s == 201:
                traces.append(t)
                oids.append(oid)
        bad = secrets.token_hex(16)
        routed, bad_mid = publish_raw("order.placed", "{not json",
                                      f"00-{bad}-{secrets.token_hex(8)}-01")
    finally:
        os.kill(inv.pid, signal.SIGCONT)
    check("batch_burst_queued", len(oids) == 20 and routed, f"{len(oids)} orders, {routed}")
    check("batch_burst_orders_confirmed", all(confirmed(token, o) for o in oids),
          "not all CONFIRMED")
    # The malformed message, dead-lettered, is replayed (dlq replay: through
    # sales.retry) and fails again: its second process span must name the
    # exchange that copy came through.
    def inventory_tries():
        return sum(1 for l in log_spans("up") if l.get("trace_id") == bad
                   and l.get("span") == "process order.placed")
    checklib.wait_until(lambda: inventory_tries() >= 1, 30, 0.2)
    out = {}

    def replay():
        """dlq replay of the message: exit 0 once it is in inventory.dlq."""
        p = subprocess.run([os.path.join(checklib.BIN, "dlq"), "replay", "inventory", "--id",
                            bad_mid], env=dict(os.environ, AMQP_URL=os.environ["TEST_AMQP_URL"]),
                           capture_output=True, text=True, timeout=60)
        out["stderr"] = p.stderr[-300:]
        return p.returncode == 0
    replayed = checklib.wait_until(replay, 30, 0.5)
    check("batch_rejected_message_replayed", replayed and checklib.wait_until(
        lambda: inventory_tries() >= 2, 30, 0.2), f"{inventory_tries()} tries, replay: {out.get('stderr')}")
    return traces, bad


def check_batch_spans(rx, traces, bad):
    """Every process span of the batch has its db transaction inside it (the
    child starts at or after its parent), and the malformed message, dead-
    lettered by the batch path, has its process span, failed, in its trace."""
    late = []
    for t in traces:
        spans = rx.spans(t)
        proc = [s for s in spans if s["service"] == "inventory"
                and s["name"] == "process order.placed"]
        tx = [s for s in spans if proc and s["parentSpanId"] == proc[0]["spanId"]
              and s["name"] == "db transaction"]
        if len(proc) != 1 or len(tx) != 1 or tx[0]["start"] < proc[0]["start"] \
                or tx[0]["end"] > proc[0]["end"]:
            late.append((t, [(s["start"], s["end"]) for s in proc + tx]))
    check("batch_db_transaction_inside_its_process_span", traces and not late,
          f"{len(late)} of {len(traces)}: {late[:2]}")
    got = sorted((s for s in rx.spans(bad) if s["service"] == "inventory"
                  and s["name"] == "process order.placed"), key=lambda s: s["start"])
    check("batch_rejected_message_has_a_failed_process_span",
          len(got) >= 1 and got[0]["status"].get("code") in (2, "STATUS_CODE_ERROR")
          and "undecodable" in got[0]["status"].get("message", ""),
          got)
    check("process_span_names_the_exchange_the_copy_came_through",
          len(got) == 2
          and got[0]["attributes"].get("messaging.destination.name") == "sales.events"
          and got[1]["attributes"].get("messaging.destination.name") == "sales.retry",
          [(s["attributes"].get("messaging.destination.name"), s["start"]) for s in got])


def check_rpc_trace(rx, trace_id, parent_span):
    """GET /products/{sku}/availability asked with a traceparent is one trace
    across order-api and inventory: the HTTP server span (the caller's
    child), the request/reply call's CLIENT span (its child, whose context
    the request carries in its AMQP headers) and inventory's SERVER span
    that answered it (the call's child), each with the messaging
    attributes."""
    spans = rx.spans(trace_id)
    server = one(spans, "order-api", "GET /products/{id}")
    call = one(spans, "order-api", "send inventory.availability")
    answer = one(spans, "inventory", "process inventory.availability")
    if not check("rpc_one_trace_spans_order_api_and_inventory",
                 server and call and answer and server["parentSpanId"] == parent_span,
                 sorted((s["service"], s["name"], s["parentSpanId"]) for s in spans)):
        return
    check("rpc_call_span_is_the_http_spans_client_child",
          call["parentSpanId"] == server["spanId"] and call["kind"] == 3
          and server["start"] <= call["start"] <= call["end"] <= server["end"], call)
    check("rpc_answer_span_is_the_calls_server_child",
          answer["parentSpanId"] == call["spanId"] and answer["kind"] == 2, answer)
    for sp, op, typ in ((call, "send", "send"), (answer, "process", "process")):
        a = sp["attributes"]
        check(f"rpc_{op}_span_messaging_attributes",
              a.get("messaging.system") == "rabbitmq"
              and a.get("messaging.operation.type") == typ
              and a.get("messaging.operation.name") == op
              and a.get("messaging.destination.name") == "sales.rpc"
              and a.get("messaging.rabbitmq.destination.routing_key") == "inventory.availability"
              and len(a.get("messaging.message.conversation_id", "")) == 36
              and a.get("messaging.message.conversation_id")
              == call["attributes"].get("messaging.message.conversation_id"), a)


def check_pos_trace(rx):
    """The till's publish span is the parent of the sale's handling in
    inventory and billing; the trace id is the sale's message id."""
    pub = [s for s in rx.spans() if s["service"] == "pos"]
    if not check("pos_publish_span", len(pub) == 1 and pub[0]["kind"] == 4, pub):
        return
    pub = pub[0]
    mid = pub["attributes"].get("messaging.message.id", "")
    check("pos_trace_id_is_the_sales_message_id", pub["traceId"] == mid.replace("-", ""),
          f"{pub['traceId']} vs {mid}")
    for c in ("inventory", "billing"):
        got = [s for s in rx.spans(pub["traceId"]) if s["service"] == c
               and s["name"] == "process sale.completed"]
        check(f"pos_sale_processed_in_{c}_as_the_publish_child",
              len(got) == 1 and got[0]["parentSpanId"] == pub["spanId"]
              and got[0]["attributes"].get("messaging.message.id") == mid, got)


def check_tool(oid, trace_id, nspans):
    """build/bin/trace prints the order's waterfall from the logs of step 1:
    every span the receiver got, each consumer nested under its publish."""
    logs = [os.path.join(checklib.LOG_DIR, f"otel.up.{n}.log") for n in NAMES]
    p = subprocess.run([os.path.join(checklib.BIN, "trace"), oid] + logs, capture_output=True,
                       text=True, timeout=30)
    out = p.stdout.splitlines()
    check("trace_tool_finds_the_orders_trace",
          p.returncode == 0 and out and out[0].startswith(f"trace {trace_id} of order {oid}: "
                                                          f"{nspans} spans"),
          f"exit {p.returncode}: {p.stdout[:300]!r} {p.stderr[:200]!r}")

    def indent(service, name):
        for line in out[2:]:
            head, _, rest = line.partition(" ms ")
            tail = rest.partition(" ms  ")[2]
            if tail.startswith(service) and tail[10:].strip() == name:
                return len(tail[10:]) - len(tail[10:].lstrip())
        return None
    chain = [("order-api", "POST /orders"), ("order-api", "publish order.placed"),
             ("inventory", "process order.placed"), ("inventory", "publish inventory.reserved"),
             ("billing", "process inventory.reserved"), ("billing", "publish billing.invoiced"),
             ("order-api", "process billing.invoiced"), ("order-api", "publish order.confirmed"),
             ("email", "process order.confirmed")]
    depths = [indent(s, n) for s, n in chain]
    check("trace_tool_nests_each_hop_under_the_one_before",
          None not in depths and all(b == a + 2 for a, b in zip(depths, depths[1:])),
          list(zip(chain, depths)))
    p = subprocess.run([os.path.join(checklib.BIN, "trace"), trace_id] + logs,
                       capture_output=True, text=True, timeout=30)
    check("trace_tool_takes_a_trace_id", p.returncode == 0 and p.stdout == "\n".join(
        [out[0].replace(f" of order {oid}", "")] + out[1:]) + "\n", p.stdout[:300])
    p = subprocess.run([os.path.join(checklib.BIN, "trace"), secrets.token_hex(16)] + logs,
                       capture_output=True, text=True, timeout=30)
    check("trace_tool_says_when_there_is_nothing", p.returncode == 1 and "no spans" in p.stderr,
          f"exit {p.returncode} {p.stderr!r}")


def shutdown_flush_is_bounded(tokens, token):
    """A receiver that accepts the connection and never answers: with
    spans queued in batches of one, SIGTERM must end order-api within
    OTEL_BSP_EXPORT_TIMEOUT (1 s here) and a few seconds of its own
    shutdown, not the export under way (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s)
    plus 5 s per queued batch as before."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": os.environ["ORDERS_DATABASE_URL"],
        "AMQP_URL": os.environ["ORDER_API_AMQP_URL"], "LOG_LEVEL": "info",
        "HTTP_PORT": str(API_PORT), "OPS_PORT": str(OPS_PORT), "API_TOKENS_FILE": tokens,
        "METRICS_PORT": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "10000", "OTEL_BSP_EXPORT_TIMEOUT": "1000"})
    for k in ("OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        env.pop(k, None)
    proc = checklib.start("order-api", env, "otel.silent.order-api.log")
    try:
        ok = checklib.wait_until(lambda: checklib.ready(OPS_PORT), 40)
        check("silent_receiver_order_api_ready", ok, "see otel.silent.order-api.log")
        for _ in range(10):
            checklib.http("GET", API_PORT, "/products")
        # The first export is under way (and waits for an answer) once its
        # connection is accepted here.
        silent.settimeout(20)
        try:
            conn = silent.accept()[0]
        except OSError:
            conn = None
        check("silent_receiver_an_export_is_under_way", conn is not None, "no connection in 20 s")
        t0 = time.monotonic()
        rc = checklib.stop(proc, timeout_s=60)
        took = time.monotonic() - t0
        check("silent_receiver_sigterm_exits_within_the_flush_bound", rc == 0 and took < 8,
              f"exit {rc} after {took:.1f} s (bound: OTEL_BSP_EXPORT_TIMEOUT 1 s + shutdown)")
        if conn:
            conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        silent.close()


def main():
    tmp = tempfile.mkdtemp(prefix="otel_check.")
    tokens = os.path.join(tmp, "tokens")
    token = checklib.api_token("otel", tokens)
    check("token_made", token, "scripts/api-token.sh gave no token")
    rx = Receiver(0).start()
    trace_id, parent_span = secrets.token_hex(16), secrets.token_hex(8)
    tp = f"00-{trace_id}-{parent_span}-01"

    # 1, 2: export (at shutdown: the delay is 10 minutes) and the context.
    procs = start_all(tokens, f"http://127.0.0.1:{rx.port}", 600000, "up")
    try:
        # A path libmicrohttpd percent-decodes to bytes that are not UTF-8:
        # its span goes in the same batch as the order's (exported at
        # shutdown), which the receiver must still accept.
        bad_path_status, _, _ = checklib.http("GET", API_PORT, "/products/%C3%28",
                                              headers={"Authorization": f"Bearer {token}"})
        s, oid = place(token, {"traceparent": tp, "tracestate": "ordersuite=t1,other=2"})
        check("order_with_traceparent_accepted", s == 201, f"{s} {oid!r}")
        check("order_confirmed", s == 201 and confirmed(token, oid), "not CONFIRMED in 30 s")
        check("order_stores_its_context",
              s == 201 and stored_context(oid).startswith(f"00-{trace_id}-")
              and stored_context(oid).endswith(" ordersuite=t1,other=2")
              and parent_span not in stored_context(oid), stored_context(oid) if s == 201 else "")
        check("nothing_exported_before_the_batch_is_due", not rx.spans(trace_id),
              f"{len(rx.spans(trace_id))} span(s)")
        s2, bad_oid = place(token, {"traceparent": f"00-{'Z' * 32}-{parent_span}-01",
                                    "tracestate": "a=1"})
        ctx = stored_context(bad_oid) if s2 == 201 else ""
        check("invalid_traceparent_starts_a_new_trace",
              s2 == 201 and len(ctx.split()[0]) == 55 and trace_id not in ctx
              and parent_span not in ctx and "a=1" not in ctx, f"{s2} {ctx!r}")
        other = secrets.token_hex(16)
        s3, big_oid = place(token, {"traceparent": f"00-{other}-{parent_span}-01",
                                    "tracestate": "k=" + "v" * 600})
        ctx = stored_context(big_oid) if s3 == 201 else ""
        check("oversized_tracestate_is_dropped_the_parent_kept",
              s3 == 201 and ctx.startswith(f"00-{other}-") and ctx.strip() == ctx.split()[0],
              f"{s3} {ctx!r}")
        # Sampling end to end: a caller's flags -00 (not sampled) are kept
        # with the order and in every message after it, so no service
        # exports a span of that order (checked after the flush, below).
        unsampled = secrets.token_hex(16)
        s5, un_oid = place(token, {"traceparent": f"00-{unsampled}-{parent_span}-00"})
        check("unsampled_order_confirmed", s5 == 201 and confirmed(token, un_oid),
              f"{s5} {un_oid!r}")
        ctx = stored_context(un_oid) if s5 == 201 else ""
        check("unsampled_order_keeps_its_flags",
              ctx.startswith(f"00-{unsampled}-") and ctx.split()[0].endswith("-00"), ctx)
        # The total limit (512 bytes), each member within its own (256).
        s6, tot_oid = place(token, {"traceparent": f"00-{other}-{parent_span}-01",
                                    "tracestate": ",".join(f"{k}=" + "v" * 200 for k in "abc")})
        ctx = stored_context(tot_oid) if s6 == 201 else ""
        check("tracestate_over_512_bytes_is_dropped_the_parent_kept",
              s6 == 201 and ctx.startswith(f"00-{other}-") and ctx.strip() == ctx.split()[0],
              f"{s6} {ctx!r}")
        # A tracestate split over two header fields is one list (W3C).
        c = HTTPConnection("127.0.0.1", API_PORT, timeout=10)
        c.putrequest("POST", "/orders")
        for k, v in (("Content-Type", "application/json"), ("Authorization", f"Bearer {token}"),
                     ("Content-Length", str(len(ORDER))),
                     ("traceparent", f"00-{other}-{parent_span}-01"),
                     ("tracestate", "a=1"), ("tracestate", "b=2")):
            c.putheader(k, v)
        c.endheaders(ORDER.encode())
        r = c.getresponse()
        two = json.loads(r.read())["id"] if r.status == 201 else None
        c.close()
        check("tracestate_fields_are_joined_into_one_list",
              two and stored_context(two) == f"{stored_context(two).split()[0]} a=1,b=2",
              f"{r.status} {stored_context(two) if two else ''!r}")
        # The status stream of the confirmed order (it ends at once): its
        # server span is named for its own route.
        sse_status, _, _ = checklib.http("GET", API_PORT, f"/orders/{oid}/events",
                                         headers={"Authorization": f"Bearer {token}"})
        log = open(os.path.join(checklib.LOG_DIR, "otel.up.inventory.log")).read()
        lines = [json.loads(l) for l in log.splitlines() if l.startswith("{")]
        mine = [l for l in lines if l.get("correlation_id") == oid]
        check("log_lines_of_the_order_name_its_trace",
              mine and all(l.get("trace_id") == trace_id and len(l.get("span_id", "")) == 16
                           for l in mine), mine[:3])
        # A till's sale: its publish span (pos) is the parent of its
        # handling in inventory and billing (checked below, after the flush).
        env = dict(os.environ, AMQP_URL=os.environ["POS_AMQP_URL"], POS_SPOOL_DIR=tmp,
                   CATALOG_URL=f"http://127.0.0.1:{API_PORT}/products",
                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{rx.port}",
                   OTEL_BSP_SCHEDULE_DELAY="600000")
        env.pop("CATALOG_FILE", None)
        p = subprocess.run([os.path.join(checklib.BIN, "pos"), "--store", "OTEL-01", "--count",
                            "1"], env=env, capture_output=True, text=True, timeout=90)
        check("pos_sale_sent", p.returncode == 0, f"exit {p.returncode}: {p.stderr[-300:]}")
        pos_spans = [s for s in rx.spans() if s["service"] == "pos"]
        check("pos_flushes_its_span_at_exit", len(pos_spans) == 1, pos_spans)
        sale_handled = lambda: sum(1 for s in log_spans("up") if s.get("span") ==
                                   "process sale.completed") >= 2
        check("pos_sale_handled", checklib.wait_until(sale_handled, 30, 0.2), "not in 30 s")
        rpc_trace = secrets.token_hex(16)
        s4, _, b4 = checklib.http("GET", API_PORT, "/products/MUG-WHITE/availability",
                                  headers={"Authorization": f"Bearer {token}",
                                           "traceparent": f"00-{rpc_trace}-{parent_span}-01"})
        check("availability_answered", s4 == 200, f"{s4} {b4[:200]!r}")
        burst = batch_burst(token, procs)
    finally:
        stop_all(procs, "up")
    check_pos_trace(rx)
    spans = [s for s in rx.spans(trace_id) if s["traceId"] == trace_id]
    check("spans_flushed_at_shutdown", len(spans) >= 14, f"{len(spans)} span(s)")
    check("receiver_decoded_every_export", rx.bad == 0 and rx.posts > 0,
          f"{rx.bad} bad of {rx.posts}")
    bad_path = [s for s in rx.spans() if s["name"] == "GET /products/{id}"
                and s["attributes"].get("url.path") != "/products/MUG-WHITE/availability"]
    check("invalid_utf8_path_exported_as_valid_utf8",
          bad_path_status != 0 and len(bad_path) == 1
          and bad_path[0]["attributes"].get("url.path") == "/products/\ufffd(",
          f"status {bad_path_status}: {bad_path}")
    check_trace(spans, trace_id, parent_span, oid)
    sse = [x for x in rx.spans() if x["attributes"].get("url.path") == f"/orders/{oid}/events"]
    check("the_event_streams_span_is_named_for_its_route",
          sse_status == 200 and len(sse) == 1 and sse[0]["name"] == "GET /orders/{id}/events"
          and sse[0]["attributes"].get("http.route") == "/orders/{id}/events",
          f"{sse_status} {[(x['name'], x['attributes'].get('http.route')) for x in sse]}")
    # (Its status polls, GETs with no traceparent, are traces of their own.)
    un = [(x["service"], x["name"]) for x in rx.spans() if x["traceId"] == unsampled
          or x["attributes"].get("messaging.message.conversation_id") == un_oid]
    check("unsampled_order_exports_no_span", s5 == 201 and not un, un)
    # Its context still travels (so its flags do): every service's log lines
    # of it name its trace.
    hops = {}
    for name in ("inventory", "billing", "email"):
        text = open(os.path.join(checklib.LOG_DIR, f"otel.up.{name}.log")).read()
        hops[name] = {l.get("trace_id") for l in map(json.loads, (
            x for x in text.splitlines() if x.startswith("{"))) if l.get("correlation_id") == un_oid}
    check("unsampled_orders_messages_carry_its_trace",
          all(h == {unsampled} for h in hops.values()), hops)
    check_batch_spans(rx, *burst)
    check_rpc_trace(rx, rpc_trace, parent_span)
    rx.stop()
    check_tool(oid, trace_id, len(spans))

    shutdown_flush_is_bounded(tokens, token)

    # 3: the receiver down (a port nothing listens on) costs the counter only.
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        dead = sk.getsockname()[1]
    procs = start_all(tokens, f"http://127.0.0.1:{dead}", 100, "down")
    try:
        placed = []
        for _ in range(3):
            s, oid = place(token, {"traceparent": f"00-{secrets.token_hex(16)}-{parent_span}-01"})
            check("receiver_down_order_accepted", s == 201, f"{s} {oid!r}")
            placed.append((s, oid))
        # Each order's own status: one refused earlier is not an order to wait for.
        check("receiver_down_orders_complete",
              all(s == 201 and confirmed(token, o) for s, o in placed), f"{placed}")
        dropped = checklib.wait_until(
            lambda: (metric(OPS_PORT, "ordersuite_otel_spans_dropped_total") or 0) > 0, 20)
        check("receiver_down_spans_counted_dropped", dropped,
              metric(OPS_PORT, "ordersuite_otel_spans_dropped_total"))
        for name, port in METRICS.items():
            checklib.wait_until(
                lambda: (metric(port, "ordersuite_otel_spans_dropped_total") or 0) > 0, 20)
            check(f"receiver_down_{name}_counts_its_drops",
                  (metric(port, "ordersuite_otel_spans_dropped_total") or 0) > 0
                  and metric(port, "ordersuite_otel_spans_exported_total") == 0,
                  metric(port, "ordersuite_otel_spans_dropped_total"))
    finally:
        stop_all(procs, "down")


checklib.run(main)
