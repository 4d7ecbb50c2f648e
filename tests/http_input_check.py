#!/usr/bin/env python3
"""Bad input, slow clients and secrets, against a real order-api.

Starts build/bin/order-api on its own port (beside any demo) with a short
connection timeout and a per-address cap, then:
  - sends malformed, truncated, nested, duplicate-key, huge, negative, unknown,
    injected, invalid-UTF-8, oversized, chunked, wrong-method, wrong-type,
    long-URL and long-header requests: each gets a 4xx (never a 5xx), the
    server keeps serving, its memory stays bounded;
  - opens hundreds of trickling connections from 127.0.0.1: they are capped
    and timed out while a client from 127.0.0.2 still gets answers;
  - checks that no password is in the process's command line or its log.
Run by scripts/run-tests.sh (which exports the URLs); prints a Check-style line.
"""
import json
import os
import socket
import time
import urllib.parse

import checklib
from checklib import LOG_DIR, check

PORT = 18280
TIMEOUT_S = 2
PER_IP = 50
TOKEN = b""  # the API client's bearer token (scripts/api-token.sh, in main)

def request(raw, src="127.0.0.1", timeout=10):
    """Sends raw bytes (with the client's token after the Host line), returns
    (status, body) of the answer; (0, why) on no answer."""
    raw = raw.replace(b"\r\nHost: x\r\n", b"\r\nHost: x\r\nAuthorization: Bearer " + TOKEN + b"\r\n", 1)
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", PORT))
        try:
            s.sendall(raw)
        except OSError:
            pass  # the server may answer (413) and close before reading it all
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.") else 0
        return status, body
    except (OSError, ValueError, IndexError) as e:
        return 0, str(e).encode()
    finally:
        s.close()


def post(body, ctype="application/json", extra=b""):
    if isinstance(body, str):
        body = body.encode()
    return request(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype.encode() +
                   b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra +
                   b"Connection: close\r\n\r\n" + body)


def order(**over):
    o = {"customer_id": "bad-input", "customer_email": "bad@example.com", "currency": "EUR",
         "items": [{"sku": "FLT-PAPER", "quantity": 1}]}
    o.update(over)
    return json.dumps(o)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def alive():
    return request(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")[0] == 200


def main():
    global TOKEN
    tokens = os.path.join(LOG_DIR, "http_input.api-tokens")
    if os.path.exists(tokens):
        os.unlink(tokens)
    os.makedirs(os.path.dirname(tokens), exist_ok=True)
    TOKEN = checklib.api_token("input", tokens).encode()
    if not TOKEN:
        raise RuntimeError("scripts/api-token.sh made no token")
    env = dict(os.environ)
    env.update({
        "API_TOKENS_FILE": tokens,
        "DATABASE_URL": os.environ["ORDERS_DATABASE_URL"],
        "AMQP_URL": os.environ["ORDER_API_AMQP_URL"],
        "HTTP_PORT": str(PORT), "HTTP_TIMEOUT_S": str(TIMEOUT_S),
        "HTTP_PER_IP_LIMIT": str(PER_IP), "LOG_LEVEL": "debug", "OPS_PORT": "0",
    })
    log_path = os.path.join(LOG_DIR, "http_input.order-api.log")
    proc = checklib.start("order-api", env, "http_input.order-api.log")
    try:
        checklib.wait_until(alive, 30)
        check("order_api_starts", alive())
        rss0 = rss_kb(proc.pid)

        cases = [
            ("malformed_json", post('{"customer_id": '), {400}),
            ("truncated_json", post(order()[:40]), {400}),
            ("huge_nested_body", post("[" * 100000 + "]" * 100000), {413}),
            ("duplicate_keys", post('{"currency":"EUR","currency":"USD","customer_id":"a",'
                                    '"customer_email":"a@b.c","items":[]}'), {400}),
            ("huge_number", post(order(items=[{"sku": "FLT-PAPER", "quantity": 10 ** 30}])), {422}),
            ("float_quantity", post(order(items=[{"sku": "FLT-PAPER", "quantity": 1.5}])), {422}),
            ("negative_quantity", post(order(items=[{"sku": "FLT-PAPER", "quantity": -1}])), {422}),
            ("zero_quantity", post(order(items=[{"sku": "FLT-PAPER", "quantity": 0}])), {422}),
            ("ten_thousand_items", post(order(items=[{"sku": "FLT-PAPER", "quantity": 1}] * 10000)),
             {413, 422}),
            ("unknown_sku", post(order(items=[{"sku": "NO-SUCH-SKU", "quantity": 1}])), {422}),
            ("sql_in_sku", post(order(items=[{"sku": "X'; DROP TABLE orders.orders;--",
                                              "quantity": 1}])), {422}),
            ("sql_in_email", post(order(customer_email="a'); DROP TABLE orders.orders;--")), {422}),
            ("sql_in_currency", post(order(currency="EU'")), {422}),
            ("invalid_utf8", post(b'{"customer_id":"\xff\xfe","customer_email":"a@b.c",'
                                  b'"currency":"EUR","items":[]}'), {400}),
            ("ten_megabytes", post(b'{"x":"' + b"a" * (10 << 20) + b'"}'), {413}),
            ("wrong_content_type", post(order(), ctype="text/plain"), {415}),
            ("wrong_method", request(b"DELETE /orders HTTP/1.1\r\nHost: x\r\n"
                                     b"Connection: close\r\n\r\n"), {405}),
            ("unknown_path", request(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
             {404}),
            ("long_url", request(b"GET /orders/" + b"a" * 200000 + b" HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n"), {400, 404, 413, 414, 431}),
            ("long_header", request(b"GET /products HTTP/1.1\r\nHost: x\r\nX-Big: " +
                                    b"b" * 200000 + b"\r\nConnection: close\r\n\r\n"),
             {400, 413, 431}),
            ("bad_idempotency_key", post(order(), extra=b"Idempotency-Key: \x01bad\r\n"), {400}),
        ]
        for name, (status, body), want in cases:
            check(name, status in want, f"status {status}, want {sorted(want)}: {body[:200]!r}")

        # Nesting is refused for its depth, not its size: a small order (well
        # under the body limit) whose only fault is a field nested 40 deep is
        # the documented 400 (docs/openapi.yaml), not 413 and not the 422 a
        # parser without the depth check would give for a non-string field.
        deep = order(customer_id=json.loads("[" * 40 + '"a"' + "]" * 40))
        status, body = post(deep)
        check("deeply_nested", status == 400 and b"nested deeper" in body and len(deep) < 1024,
              f"status {status} for {len(deep)} bytes: {body[:200]!r}")

        # A chunked body without a length: past MAX_BODY_BYTES (64 KiB) it is
        # read to its end and answered 413; one that keeps coming (past 4x)
        # is cut off: the connection is closed, nothing waits on it.
        def chunked(kib):
            return (b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                    b"".join(b"400\r\n" + b"c" * 1024 + b"\r\n" for _ in range(kib)) + b"0\r\n\r\n")
        status, _ = request(chunked(128))
        check("chunked_too_big_is_413", status == 413, f"status {status}")
        t0 = time.time()
        status, why = request(chunked(10 * 1024))
        check("chunked_endless_is_cut_off", status == 0 and time.time() - t0 < 5,
              f"status {status} after {time.time() - t0:.1f} s: {why[:100]!r}")
        body = order(customer_id="chunked").encode()
        status, _ = request(b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                            b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
        check("chunked_small_is_read", status == 201, f"status {status}")

        # Every field is validated, so injection never reaches SQL as text it
        # could break out of (and SQL is parameterised anyway).
        status, body = post(order(customer_id="x'); DROP TABLE orders.orders;--"))
        check("sql_in_customer_id", status == 422, f"status {status}: {body[:200]!r}")
        status, _ = request(b"GET /orders?limit=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        check("orders_table_intact", status == 200, f"status {status}")
        status, _ = request(b"GET /orders?status=%27%3B%20DROP HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\n\r\n")
        check("sql_in_query_string", status == 422, f"status {status}")

        for _ in range(3):  # again: the server kept its memory
            post(b'{"x":"' + b"a" * (10 << 20) + b'"}')
        grown = rss_kb(proc.pid) - rss0
        check("memory_bounded", grown < 64 * 1024, f"RSS grew by {grown} kB")
        check("still_serving", alive() and proc.poll() is None)

        # Hundreds of trickling clients from one address.
        trickle = []
        for _ in range(300):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", PORT))
                s.sendall(b"GET /products HTTP/1.1\r\nHo")
                trickle.append(s)
            except OSError:
                s.close()
        t0 = time.time()
        status, _ = request(b"GET /products HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                            src="127.0.0.2", timeout=5)
        check("normal_client_answered_beside_300_trickling", status == 200 and time.time() - t0 < 3,
              f"status {status} after {time.time() - t0:.1f} s")
        # Beyond the per-address cap the server closes at once; the rest time out.
        deadline = time.time() + TIMEOUT_S + 10
        open_left = len(trickle)
        while time.time() < deadline and open_left:
            open_left = 0
            for s in trickle:
                try:
                    s.setblocking(False)
                    if s.recv(1) == b"":
                        continue  # closed by the server
                    open_left += 1
                except BlockingIOError:
                    open_left += 1
                except OSError:
                    continue  # reset by the server
            time.sleep(0.2)
        check("trickling_clients_capped_and_timed_out", open_left == 0,
              f"{open_left} of {len(trickle)} still open {TIMEOUT_S + 10} s later")
        for s in trickle:
            s.close()
        check("still_serving_after_trickle", alive())

        # Secrets: passwords come through the environment, never argv or logs.
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            cmdline = f.read()
        passwords = []
        for var in ("ORDERS_DATABASE_URL", "ORDER_API_AMQP_URL"):
            u = urllib.parse.urlsplit(os.environ[var])
            if u.password:
                passwords.append(urllib.parse.unquote(u.password))
        check("passwords_known", len(passwords) == 2)
        check("no_secret_in_cmdline", not any(p.encode() in cmdline for p in passwords))
    finally:
        checklib.stop(proc)
    with open(log_path, "rb") as f:
        text = f.read()
    check("no_secret_in_log", text and not any(p.encode() in text for p in passwords))
    check("clean_exit", proc.returncode == 0, f"exit {proc.returncode}")


if __name__ == "__main__":
    checklib.run(main)
