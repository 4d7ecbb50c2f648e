#!/usr/bin/env python3
"""board_check.py — order-api's live order board (GET /) in a real browser:
Debian's chromium, headless, driven by playwright-core (tests/browser,
installed by make deps) against the real order-api, inventory, billing,
PostgreSQL and RabbitMQ.

Checks, at a desktop size and at 390x844 (tests/browser/board.mjs does the
browser part): the catalog fills the form; the token pasted into the page
is kept in sessionStorage and not shown; the form places an order; the
order reaches CONFIRMED on the page without a reload (only the event
stream can change it); its timeline lists PENDING, RESERVED, CONFIRMED; the
queue table has a row for every service, with numbers for the running ones;
no script error; the phone-sized page does not scroll sideways. Plus here:
GET / needs no token and holds none; GET /board/queues is 401 without one.
Screenshots: var/log/tests/board-desktop.png, board-phone.png.
Run by scripts/run-tests.sh (which exports the URLs); prints a Check-style line.
"""
import json
import os
import subprocess

import checklib
from checklib import check

PORT, OPS, INV_METRICS, BILL_METRICS = 18420, 18421, 18422, 18423
SKU = "FLT-PAPER"
SERVICES = "order-api pos billing inventory email"
RUNNING = "order-api billing inventory"
BROWSER_DIR = os.path.join(checklib.ROOT, "tests", "browser")


def main():
    tokens = os.path.join(checklib.LOG_DIR, "board.api-tokens")
    os.makedirs(checklib.LOG_DIR, exist_ok=True)
    if os.path.exists(tokens):
        os.unlink(tokens)
    token = checklib.api_token("board", tokens)
    if not token:
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
            AMQP_URL=os.environ["ORDER_API_AMQP_URL"], HTTP_PORT=str(PORT), OPS_PORT=str(OPS)),
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

        s, h, b = checklib.http("GET", PORT, "/")
        check("the_page_is_served_without_a_token",
              s == 200 and h.get("content-type", "").startswith("text/html")
              and b"live order board" in b, f"{s} {h}")
        check("the_page_holds_no_token", token.encode() not in b and b"Bearer ey" not in b)
        s, h, _ = checklib.http("GET", PORT, "/board/queues")
        check("board_queues_without_a_token_is_401",
              s == 401 and h.get("www-authenticate", "").startswith("Bearer"), f"{s} {h}")
        s, _, b = checklib.http("GET", PORT, "/board/queues",
                                headers={"Authorization": f"Bearer {token}"})
        doc = json.loads(b) if s == 200 else {}
        got = {q["service"]: q for q in doc.get("queues", [])}
        check("board_queues_lists_every_service",
              s == 200 and sorted(got) == sorted(SERVICES.split()), f"{s} {b[:300]!r}")

        env = dict(os.environ, BOARD_URL=f"http://127.0.0.1:{PORT}/", BOARD_TOKEN=token,
                   BOARD_OUT=checklib.LOG_DIR, BOARD_SERVICES=SERVICES, BOARD_LIVE=RUNNING)
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
        check("the_browser_run_ends_cleanly", p.returncode == 0 and len(results) >= 19,
              f"node exit {p.returncode}, {len(results)} results (board.browser.log)")
        for name in ("board-desktop.png", "board-phone.png"):
            path = os.path.join(checklib.LOG_DIR, name)
            check(f"screenshot_{name}_saved", os.path.exists(path) and os.path.getsize(path) > 1000)
    finally:
        for p in procs:
            checklib.stop(p)


if __name__ == "__main__":
    checklib.run(main)
