#!/usr/bin/env python3
"""api_auth_check.py — order-api's bearer tokens and per-client scoping.

Makes a tokens file with scripts/api-token.sh (two clients, alice and bob),
starts build/bin/order-api on its own port with API_TOKENS_FILE pointing at
it, and checks against the real database:
  - the file holds SHA-256 hashes, never the tokens; without it, or with a
    malformed one, order-api does not start;
  - no token, an unknown token, another scheme: 401 problem+json with
    WWW-Authenticate: Bearer, on every /orders route, and no order is written;
  - /healthz, /readyz and the catalog (GET /products) stay open on the API
    port, which has no /metrics (404, with a token too);
  - the operations listener (OPS_PORT, on OPS_BIND, default 127.0.0.1)
    answers /healthz, /readyz and /metrics without a token and serves
    neither /orders nor /products (404);
  - alice and bob using one Idempotency-Key get two different orders, and
    alice's retry replays hers;
  - bob cannot read alice's order (404) nor see it in his list.
Run by scripts/run-tests.sh (which exports the URLs); prints a Check-style line.
"""
import hashlib
import json
import os
import subprocess
import tempfile
import urllib.parse
import uuid

import yaml

import checklib
from checklib import BIN, check
PORT = 18380
OPS_PORT = 18381


def call(method, path, token=None, body=None, headers=None, port=PORT):
    """checklib.http with a bearer token (or a whole Authorization value) and
    a JSON body."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = token if " " in token else f"Bearer {token}"
    if body is not None:
        h["Content-Type"] = "application/json"
    return checklib.http(method, port, path, body=body, headers=h)


def listen_addrs(port):
    """The addresses a TCP socket listens on at port (/proc/net/tcp, IPv4)."""
    out = set()
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            if int(port_hex, 16) == port:
                out.add(".".join(str(b) for b in bytes.fromhex(addr_hex)[::-1]))
    return out


def order(customer):
    return json.dumps({"customer_id": customer, "customer_email": f"{customer}@example.com",
                       "currency": "EUR", "items": [{"sku": "FLT-PAPER", "quantity": 1}]})


def count_orders(customer):
    rc, out = checklib.psql("SELECT count(*) FROM orders.orders WHERE customer_id = :'c'",
                            c=customer)
    return int(out.strip()) if rc == 0 else -1


def owner_sql(sql):
    rc, out = checklib.psql(sql)
    if rc != 0:
        raise RuntimeError(f"{sql}: {out}")


def unauthorized(name, status, hdrs, body):
    ok = (status == 401 and hdrs.get("www-authenticate", "").startswith("Bearer")
          and hdrs.get("content-type", "").startswith("application/problem+json"))
    check(name, ok, f"got {status} {hdrs.get('www-authenticate')!r} {body[:120]!r}")


def main():
    tag = f"auth-{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="ordersuite-auth-")
    tokens = os.path.join(tmp, "api-tokens")
    alice, bob = checklib.api_token("alice", tokens), checklib.api_token("bob", tokens)
    check("tokens_made", alice and bob and alice != bob, "scripts/api-token.sh gave no token")
    stored = open(tokens).read() if os.path.exists(tokens) else ""
    check("tokens_stored_hashed",
          alice and bob and alice not in stored and bob not in stored
          and hashlib.sha256(alice.encode()).hexdigest() in stored
          and hashlib.sha256(bob.encode()).hexdigest() in stored, stored)

    env = dict(os.environ)
    env.update({
        "DATABASE_URL": os.environ["ORDERS_DATABASE_URL"],
        "AMQP_URL": os.environ["ORDER_API_AMQP_URL"],
        "HTTP_PORT": str(PORT), "API_TOKENS_FILE": tokens, "OPS_PORT": str(OPS_PORT),
    })
    env.pop("OPS_BIND", None)  # the default, loopback

    # Fail closed: no tokens file, or a malformed one, and order-api does not start.
    bad = os.path.join(tmp, "bad-tokens")
    for name, content in (("missing", None), ("empty", "# nothing\n"),
                          ("token_not_hash", "alice " + alice + "\n"),
                          ("short_hash", "alice " + "ab" * 31 + "\n"),
                          ("bad_client", "al ice " + "ab" * 32 + "\n")):
        if content is not None:
            with open(bad, "w") as f:
                f.write(content)
        benv = dict(env, API_TOKENS_FILE=bad if content is not None else os.path.join(tmp, "none"))
        try:
            r = subprocess.run([os.path.join(BIN, "order-api")], env=benv, capture_output=True,
                               timeout=20)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = "still running"
        check(f"refuses_to_start_tokens_{name}", rc == 1, f"exit {rc}")
    benv = {k: v for k, v in env.items() if k != "API_TOKENS_FILE"}
    r = subprocess.run([os.path.join(BIN, "order-api")], env=benv, capture_output=True, timeout=20)
    check("refuses_to_start_without_API_TOKENS_FILE", r.returncode == 1, f"exit {r.returncode}")
    proc = checklib.start("order-api", env, "api_auth.order-api.log")
    try:
        checklib.wait_until(lambda: checklib.ready(PORT), 30)
        for path in ("/healthz", "/readyz"):
            check(f"open_{path[1:]}", call("GET", path)[0] == 200, f"{path} needs no token")
        # The business's counts are not the API clients': /metrics is on the
        # operations listener only, with a token or without.
        for tok in (None, alice):
            s, _, b = call("GET", "/metrics", token=tok)
            check(f"api_port_has_no_metrics{'_with_a_token' if tok else ''}", s == 404,
                  f"/metrics on the API port: {s} {b[:120]!r}")

        # The operations listener: its own port, loopback by default, the
        # probes and metrics without a token, and nothing of the API.
        for path in ("/healthz", "/readyz", "/metrics"):
            s, _, b = call("GET", path, port=OPS_PORT)
            check(f"ops_port_{path[1:]}_open", s == 200, f"{path} on OPS_PORT: {s} {b[:120]!r}")
        for method, path in (("GET", "/orders"), ("POST", "/orders"), ("GET", "/products")):
            s, _, b = call(method, path, token=alice, body=order(tag) if method == "POST" else None,
                           port=OPS_PORT)
            check(f"ops_port_no_{method.lower()}_{path[1:]}_404", s == 404,
                  f"{method} {path} on OPS_PORT: {s} {b[:120]!r}")
        addrs = listen_addrs(OPS_PORT)
        check("ops_port_binds_OPS_BIND_loopback", addrs == {"127.0.0.1"},
              f"OPS_PORT {OPS_PORT} listens on {sorted(addrs) or 'nothing'}")

        # docs/openapi.yaml says which listener serves each path (its
        # `servers`, else the top-level ones) and which need a token: every
        # operation, without a token, on both listeners, is served where it
        # is listed (401 if it needs a token, not 401 if `security: []`)
        # and 404 on the other.
        spec = yaml.safe_load(open(os.path.join(checklib.ROOT, "docs", "openapi.yaml")))
        ports = {urllib.parse.urlsplit(sv["url"]).port: p
                 for sv, p in zip(spec["servers"], (PORT, OPS_PORT))}
        documented = set()
        for path, item in spec["paths"].items():
            served = {ports[urllib.parse.urlsplit(sv["url"]).port]
                      for sv in item.get("servers", spec["servers"])}
            for method in ("get", "post"):
                if method not in item:
                    continue
                open_ = item[method].get("security", spec.get("security")) == []
                url = path.replace("{id}", str(uuid.uuid4()))
                body = order(tag) if method == "post" else None
                for port in (PORT, OPS_PORT):
                    s, _, b = call(method.upper(), url, body=body, port=port)
                    want = ("not 401/404" if open_ else "401") if port in served else "404"
                    ok = (s not in (401, 404) if open_ else s == 401) if port in served else s == 404
                    check(f"openapi_{method}_{path.strip('/').replace('/', '_').strip('{}')}"
                          f"_{'api' if port == PORT else 'ops'}_port", ok,
                          f"{method.upper()} {path} on {port}: {s} (docs/openapi.yaml: {want}) {b[:120]!r}")
                    if port in served:
                        documented.add((method, path, port))
        check("openapi_documents_metrics_on_the_ops_port_only",
              {d for d in documented if d[1] == "/metrics"} == {("get", "/metrics", OPS_PORT)},
              sorted(documented))

        # No, unknown or malformed credentials: 401 everywhere, nothing written.
        unauthorized("post_without_token_401", *call("POST", "/orders", body=order(tag)))
        unauthorized("post_unknown_token_401",
                     *call("POST", "/orders", token="x" * 43, body=order(tag)))
        unauthorized("post_basic_scheme_401",
                     *call("POST", "/orders", token="Basic YWxpY2U6eA==", body=order(tag)))
        unauthorized("post_hash_as_token_401",
                     *call("POST", "/orders", token=hashlib.sha256(alice.encode()).hexdigest(),
                           body=order(tag)))
        unauthorized("list_without_token_401", *call("GET", "/orders"))
        unauthorized("get_without_token_401",
                     *call("GET", "/orders/00000000-0000-4000-8000-000000000000"))
        check("refused_requests_wrote_nothing", count_orders(tag) == 0,
              f"{count_orders(tag)} orders for {tag}")

        # One Idempotency-Key, two clients: two orders.
        key = {"Idempotency-Key": f"{tag}-k1"}
        sa, _, ba = call("POST", "/orders", token=alice, body=order(tag), headers=key)
        sb, _, bb = call("POST", "/orders", token=bob, body=order(tag), headers=key)
        check("alice_posts_201", sa == 201, f"{sa} {ba[:200]!r}")
        check("bob_posts_201", sb == 201, f"{sb} {bb[:200]!r}")
        ida = json.loads(ba).get("id") if sa in (200, 201) else None
        idb = json.loads(bb).get("id") if sb in (200, 201) else None
        check("same_key_two_clients_two_orders", ida and idb and ida != idb, f"{ida} {idb}")
        sr, hr, br = call("POST", "/orders", token=alice, body=order(tag), headers=key)
        check("alice_retry_replays_hers",
              sr == 200 and hr.get("idempotent-replayed") == "true" and json.loads(br).get("id") == ida,
              f"{sr} {br[:200]!r}")
        check("two_orders_stored", count_orders(tag) == 2, f"{count_orders(tag)} orders for {tag}")

        # Each sees only its own.
        s, _, b = call("GET", f"/orders/{ida}", token=alice)
        check("alice_reads_hers", s == 200 and json.loads(b).get("id") == ida, f"{s} {b[:200]!r}")
        # One builder of the order document (services/order-api/store.c): the
        # 201 and the replay show what GET shows (no worker moves it here).
        check("the_201_and_the_replay_are_the_get_document",
              s == 200 and sa == 201 and sr == 200 and json.loads(b) == json.loads(ba) == json.loads(br),
              f"GET {b[:300]!r} 201 {ba[:300]!r}")
        s, _, b = call("GET", f"/orders/{ida}", token=bob)
        check("bob_cannot_read_alices_404", s == 404, f"{s} {b[:200]!r}")
        s, _, b = call("GET", "/orders?limit=100", token=bob)
        ids = [o["id"] for o in json.loads(b)["orders"]] if s == 200 else []
        check("bob_lists_only_his", s == 200 and idb in ids and ida not in ids, f"{s} {ids}")
        # Another client's order id as the cursor finds nothing, as an
        # unknown id does: not alice's later orders (the cursor's row is
        # looked up among hers only), not bob's, and no hint that it exists.
        late = uuid.uuid4().hex
        s, _, b = call("POST", "/orders", token=alice, body=order(tag + "-late"),
                       headers={"Idempotency-Key": f"late-{late}"})
        idl = json.loads(b).get("id") if s == 201 else None
        check("alice_posts_after_bob_201", idl is not None, f"{s} {b[:200]!r}")
        s, _, b = call("GET", f"/orders?limit=100&after={idb}", token=alice)
        page = json.loads(b) if s == 200 else {}
        s2, _, b2 = call("GET", f"/orders?limit=100&after={uuid.uuid4()}", token=alice)
        check("list_after_other_clients_order_empty",
              s == 200 and page.get("orders") == [] and page.get("next") is None and s2 == 200 and b == b2,
              f"{s} {b[:300]!r} (unknown id: {s2} {b2[:100]!r})")
        check("products_open", call("GET", "/products")[0] == 200, "the catalog needs no token")

        # Money at the contract's maxima (EV_PRICE_MAX 10^9 per unit,
        # EV_QTY_MAX 10^4 units, EV_LINES_MAX 100 lines: 10^15 in all) is
        # priced exactly; a catalog price beyond the contract is the server's
        # fault (500), never multiplied (10^18 * 10^4 does not fit in 64 bits).
        try:
            owner_sql("INSERT INTO orders.products (sku, name, price_minor, currency)"
                      " SELECT 'MAXTEST-' || lpad(i::text, 3, '0'), 'max', 1000000000, 'EUR'"
                      " FROM generate_series(0, 99) i UNION ALL"
                      " SELECT 'MAXTEST-BEYOND', 'beyond', 1000000000000000000, 'EUR'"
                      " ON CONFLICT (sku) DO NOTHING")
            big = json.dumps({"customer_id": tag, "customer_email": "max@example.com", "currency": "EUR",
                              "items": [{"sku": f"MAXTEST-{i:03d}", "quantity": 10000} for i in range(100)]})
            s, _, b = call("POST", "/orders", token=alice, body=big)
            check("order_at_contract_maxima_201", s == 201 and json.loads(b).get("total_minor") == 10 ** 15,
                  f"{s} {b[:200]!r}")
            beyond = json.dumps({"customer_id": tag, "customer_email": "max@example.com", "currency": "EUR",
                                 "items": [{"sku": "MAXTEST-BEYOND", "quantity": 10000}]})
            s, _, b = call("POST", "/orders", token=alice, body=beyond)
            check("catalog_price_beyond_contract_500", s == 500, f"{s} {b[:200]!r}")
        finally:
            owner_sql("DELETE FROM orders.products WHERE sku LIKE 'MAXTEST-%'")
    finally:
        checklib.stop(proc)


if __name__ == "__main__":
    checklib.run(main)
