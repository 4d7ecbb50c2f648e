#!/usr/bin/env python3
"""board_check.py — order-api's live order board (GET /) in a real browser:
Debian's chromium, headless, driven by playwright-core (tests/browser,
installed by make deps) against the real order-api, inventory, billing,
PostgreSQL and RabbitMQ.

Checks, at a desktop size and at 390x844 (tests/browser/board.mjs does the
browser part): the catalog fills the form; the token pasted into the page
is kept in sessionStorage and not shown; the form places an order (by a
click at the desktop size, by Enter in a field at the phone size); the
order reaches CONFIRMED on the page without a reload (only the event
stream can change it); Enter on its timeline's summary opens the
<details> (its `open` asked, not its text, which a closed one holds too)
and the visible entries are PENDING, RESERVED, CONFIRMED; the
queue table has a row for every service, with numbers for the running ones;
an order placed with plain HTTP while the page is open appears on it and
reaches CONFIRMED without a reload; an order the page first shows PENDING
(board.mjs inserts it, then moves it to CONFIRMED in the database, as a
consumer would) reaches CONFIRMED live while 4 orders that never move are
on the page (it used to wait for their stream slots); no script or console error and no
Content-Security-Policy violation (the page is CSP-clean); the phone-sized
page does not scroll sideways. Plus here: GET / needs no token; GET
/board/queues is 401 without one; the page and its assets carry the
security headers (CSP, nosniff, Referrer-Policy), the API's JSON nosniff.
Screenshots: var/log/tests/board-desktop.png, board-phone.png (an earlier
run's are removed first, so only this run's can pass).
Run by scripts/run-tests.sh (which exports the URLs); prints a Check-style line.
"""
import json
import os
import socket
import subprocess
import threading

import checklib
from checklib import check

PORT, OPS, INV_METRICS, BILL_METRICS = 18420, 18421, 18422, 18423
SKU = "FLT-PAPER"
SERVICES = "order-api pos billing inventory email"
RUNNING = "order-api billing inventory"
BROWSER_DIR = os.path.join(checklib.ROOT, "tests", "browser")
STARVE_PORT, STARVE_OPS, THREADS = 18424, 18425, 4


def queues_never_starve_orders(base, tokens, token):
    """A broker that accepts TCP and never answers (a listener that never
    accepts: the kernel completes the handshake, AMQP never starts) must not
    let GET /board/queues hold every HTTP job thread: HTTP_THREADS of them
    at once, then POST /orders must still get its 201 within the client's
    10 s timeout (on the old code every thread waited for the broker)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    url = f"amqp://ordersuite:x@127.0.0.1:{silent.getsockname()[1]}/"
    proc = checklib.start("order-api", dict(
        base, DATABASE_URL=os.environ["ORDERS_DATABASE_URL"], API_TOKENS_FILE=tokens,
        AMQP_URL=url, HTTP_PORT=str(STARVE_PORT), OPS_PORT=str(STARVE_OPS),
        HTTP_THREADS=str(THREADS), BOARD_CLIENTS="board"), "board.starve.order-api.log")
    try:
        # /healthz, not /readyz: ready needs the broker, which never answers.
        if not check("starve_order_api_starts", checklib.wait_until(
                lambda: checklib.http("GET", STARVE_PORT, "/healthz", timeout=2)[0] == 200, 30)):
            return
        auth = {"Authorization": f"Bearer {token}"}
        got = []

        def poll():
            try:
                got.append(checklib.http("GET", STARVE_PORT, "/board/queues", headers=auth,
                                         timeout=60)[0])
            except OSError as e:
                got.append(str(e))
        ts = [threading.Thread(target=poll) for _ in range(THREADS * 2)]
        for t in ts:
            t.start()
        body = json.dumps({"customer_id": "board-starve", "customer_email": "s@example.com",
                           "currency": "EUR", "items": [{"sku": SKU, "quantity": 1}]})
        try:
            s, _, b = checklib.http("POST", STARVE_PORT, "/orders", body=body,
                                    headers=dict(auth, **{"Content-Type": "application/json"}))
        except OSError as e:
            s, b = None, str(e)
        check("board_queues_with_a_silent_broker_leave_threads_for_orders", s == 201,
              f"{s} {b!r:.200}")
        for t in ts:
            t.join(90)
        check("board_queues_with_a_silent_broker_still_answers",
              got and all(g == 200 for g in got), repr(got))
    finally:
        checklib.stop(proc)
        silent.close()


CSP_WANT = ("default-src 'self'", "frame-ancestors 'none'", "base-uri 'none'")


def security_headers(token):
    """The board's page and assets carry a Content-Security-Policy that
    allows nothing inline (no 'unsafe-inline', no 'unsafe-eval'),
    X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer; the
    API's JSON carries nosniff."""
    for path, ctype in (("/", "text/html"), ("/board.css", "text/css"),
                        ("/board.js", "text/javascript")):
        s, h, _ = checklib.http("GET", PORT, path)
        csp = h.get("content-security-policy", "")
        directives = [d.strip() for d in csp.split(";")]
        check(f"security_headers_on_{path}",
              s == 200 and h.get("content-type", "").startswith(ctype)
              and all(w in directives for w in CSP_WANT)
              and "unsafe-inline" not in csp and "unsafe-eval" not in csp
              and h.get("x-content-type-options") == "nosniff"
              and h.get("referrer-policy") == "no-referrer", f"{s} {h}")
    for path, auth in (("/products", {}), ("/orders", {"Authorization": f"Bearer {token}"}),
                       ("/board/queues", {"Authorization": f"Bearer {token}"})):
        s, h, _ = checklib.http("GET", PORT, path, headers=auth)
        check(f"nosniff_on_json_{path}", s == 200 and h.get("x-content-type-options") == "nosniff",
              f"{s} {h}")


def main():
    tokens = os.path.join(checklib.LOG_DIR, "board.api-tokens")
    os.makedirs(checklib.LOG_DIR, exist_ok=True)
    if os.path.exists(tokens):
        os.unlink(tokens)
    token = checklib.api_token("board", tokens)
    other = checklib.api_token("board-other", tokens)
    if not token or not other:
        raise RuntimeError("scripts/api-token.sh made no token")
    if not check("playwright_core_is_installed",
                 os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core"))
                 and os.access("/usr/bin/chromium", os.X_OK),
                 "run make deps (chromium from apt, playwright-core from npm)"):
        return
    rc, out = checklib.psql("SELECT inventory.adjust_stock(sku, 100000 - on_hand, 'board_check')"
                            " FROM inventory.stock WHERE sku = :'sku'", sku=SKU)
    if rc != 0:
        raise RuntimeError(out)

    base = dict(os.environ)
    base.pop("OPS_BIND", None)
    procs = []
    try:
        procs.append(checklib.start("order-api", dict(
            base, DATABASE_URL=os.environ["ORDERS_DATABASE_URL"], API_TOKENS_FILE=tokens,
            AMQP_URL=os.environ["ORDER_API_AMQP_URL"], HTTP_PORT=str(PORT), OPS_PORT=str(OPS),
            BOARD_CLIENTS="ops,board"),
            "board.order-api.log"))
        procs.append(checklib.start("inventory", dict(
            base, DATABASE_URL=os.environ["INVENTORY_DATABASE_URL"],
            AMQP_URL=os.environ["INVENTORY_AMQP_URL"], METRICS_PORT=str(INV_METRICS)),
            "board.inventory.log"))
        procs.append(checklib.start("billing", dict(
            base, DATABASE_URL=os.environ["BILLING_DATABASE_URL"],
            AMQP_URL=os.environ["BILLING_AMQP_URL"], METRICS_PORT=str(BILL_METRICS)),
            "board.billing.log"))
        if not check("order_api_starts", checklib.wait_until(lambda: checklib.ready(PORT), 30)):
            return

        queues_never_starve_orders(base, tokens, token)

        s, h, b = checklib.http("GET", PORT, "/")
        check("the_page_is_served_without_a_token",
              s == 200 and h.get("content-type", "").startswith("text/html")
              and b"live order board" in b, f"{s} {h}")
        security_headers(token)
        s, h, _ = checklib.http("GET", PORT, "/board/queues")
        check("board_queues_without_a_token_is_401",
              s == 401 and h.get("www-authenticate", "").startswith("Bearer"), f"{s} {h}")
        s, h, b = checklib.http("GET", PORT, "/board/queues",
                                headers={"Authorization": f"Bearer {other}"})
        check("board_queues_for_a_client_not_in_board_clients_is_403",
              s == 403 and h.get("content-type") == "application/problem+json"
              and b"BOARD_CLIENTS" in b, f"{s} {b[:200]!r}")
        s, _, b = checklib.http("GET", PORT, "/board/queues",
                                headers={"Authorization": f"Bearer {token}"})
        doc = json.loads(b) if s == 200 else {}
        got = {q["service"]: q for q in doc.get("queues", [])}
        check("board_queues_lists_every_service",
              s == 200 and sorted(got) == sorted(SERVICES.split()), f"{s} {b[:300]!r}")

        # Four orders of the board's client that never move (PENDING, no
        # outbox row): their streams stay open. The order placed through the
        # form must still reach CONFIRMED on the page (board.mjs) — it used
        # to wait for a stream slot those four never gave back (now it evicts one).
        rc, out = checklib.psql(
            "INSERT INTO orders.orders (id, client_id, customer_id, customer_email, currency,"
            " total_minor, status) SELECT gen_random_uuid(), 'board', 'board-stuck',"
            " 'stuck@example.com', 'EUR', 100, 'PENDING' FROM generate_series(1, 4)")
        if rc != 0:
            raise RuntimeError(out)
        # An earlier run's screenshots must not pass for this run's.
        for name in ("board-desktop.png", "board-phone.png"):
            path = os.path.join(checklib.LOG_DIR, name)
            if os.path.exists(path):
                os.unlink(path)
        env = dict(os.environ, BOARD_URL=f"http://127.0.0.1:{PORT}/", BOARD_TOKEN=token,
                   BOARD_OUT=checklib.LOG_DIR, BOARD_SERVICES=SERVICES, BOARD_LIVE=RUNNING,
                   BOARD_SKU=SKU)
        with open(os.path.join(checklib.LOG_DIR, "board.browser.log"), "w") as log:
            p = subprocess.run(["node", os.path.join(BROWSER_DIR, "board.mjs")], env=env,
                               cwd=BROWSER_DIR, stdout=subprocess.PIPE, stderr=log, text=True,
                               timeout=240)
        results = []
        for line in p.stdout.splitlines():
            try:
                results.append(json.loads(line))
            except ValueError:
                print(f"# {line}")
        for r in results:
            check(r["name"], r["ok"], r["detail"])
        check("the_browser_run_ends_cleanly", p.returncode == 0 and len(results) >= 25,
              f"node exit {p.returncode}, {len(results)} results (board.browser.log)")
        for name in ("board-desktop.png", "board-phone.png"):
            path = os.path.join(checklib.LOG_DIR, name)
            check(f"screenshot_{name}_saved", os.path.exists(path) and os.path.getsize(path) > 1000)
    finally:
        for p in procs:
            checklib.stop(p)
        # board.mjs's orders moved by hand ('board-moved') have timeline entries.
        checklib.psql("DELETE FROM orders.order_timeline WHERE order_id IN (SELECT id FROM"
                      " orders.orders WHERE customer_id IN ('board-stuck', 'board-moved'));"
                      " DELETE FROM orders.orders WHERE customer_id IN ('board-stuck', 'board-moved')")


if __name__ == "__main__":
    checklib.run(main)
