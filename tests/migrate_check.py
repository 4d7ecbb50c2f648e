#!/usr/bin/env python3
"""migrate_check.py — tools/migrate against the real database.

Applied migrations are applied once: a second run applies nothing. Editing
an applied file makes migrate refuse (forward-only), naming the file. Two
files with one number are refused.

The broker half of `make migrate` (scripts/migrate.sh, run as it is): a
per-service <NAME>_DELIVERY_LIMIT becomes that queue's policy, in force on
the broker's redelivery count, at its stated priority; a binding of a key
the service no longer handles, also one the contract does not know, is
removed. Prints a Check-style summary line.
"""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid

import checklib
from checklib import BIN, ROOT, check


def migrate(folder):
    env = dict(os.environ, MIGRATE_DATABASE_URL=os.environ["OWNER_DATABASE_URL"])
    env.pop("DB_ROLE_PASSWORDS_FILE", None)
    p = subprocess.run([os.path.join(BIN, "migrate"), "--dir", folder],
                       env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def make_migrate(**extra):
    """scripts/migrate.sh as `make migrate` runs it, in the tests'
    environment, with extra variables."""
    env = dict(os.environ, **extra)
    p = subprocess.run(["bash", os.path.join(ROOT, "scripts", "migrate.sh"),
                        os.path.join(BIN, "migrate")],
                       env=env, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


def mgmt(method, path, body=None):
    """The management API as the administrator (from TEST_AMQP_URL), in the
    tests' vhost; returns the decoded JSON answer (None when empty)."""
    u = urllib.parse.urlparse(os.environ["TEST_AMQP_URL"])
    vhost = urllib.parse.quote(os.environ["ORDERSUITE_VHOST"], safe="")
    auth = base64.b64encode(("%s:%s" % (urllib.parse.unquote(u.username),
                                        urllib.parse.unquote(u.password))).encode()).decode()
    req = urllib.request.Request(
        "http://127.0.0.1:%s/api/%s" % (os.environ["MGMT_PORT"], path.replace("{vhost}", vhost)),
        method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Basic " + auth, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        data = r.read()
    return json.loads(data) if data else None


def bound_keys(queue):
    return sorted(b["routing_key"] for b in mgmt("GET", "queues/{vhost}/%s/bindings" % queue)
                  if b["source"] == "sales.events")


def deliveries_until_gone(queue):
    """With no consumer, takes the next message of queue and hands it back
    until it leaves; returns how many times it was delivered."""
    n = 0
    while n < 100:
        got = mgmt("POST", "queues/{vhost}/%s/get" % queue,
                   {"count": 1, "ackmode": "reject_requeue_true", "encoding": "auto"})
        if not got:
            return n
        n += 1
    return n


def broker_half():
    q = "billing"
    # A billing the suite before this one stopped may still be listed: the
    # management API's figures lag a few seconds behind the broker.
    def consumers():
        return mgmt("GET", "queues/{vhost}/%s" % q).get("consumers", 0)
    checklib.wait_until(lambda: consumers() == 0, 20, 0.5)
    n = consumers()
    if not check("no_billing_consumer_during_the_broker_checks", n == 0,
                 "%d consumer(s) after 20 s" % n):
        return
    # A route an older version had, under a key the contract no longer has
    # (and one it has that billing does not handle).
    for key in ("order.cancelled", "order.placed"):
        mgmt("POST", "bindings/{vhost}/e/sales.events/q/%s" % q, {"routing_key": key})
    rc, out = make_migrate(BILLING_DELIVERY_LIMIT="3")
    if not check("make_migrate_with_a_per_service_delivery_limit", rc == 0, out):
        return
    keys = bound_keys(q)
    check("a_route_no_longer_handled_is_unbound_by_make_migrate",
          "order.cancelled" not in keys and "order.placed" not in keys, "billing's keys: %s" % keys)
    pol = mgmt("GET", "policies/{vhost}/ordersuite-%s" % q)
    check("the_delivery_limit_policy_has_its_priority",
          pol["definition"].get("delivery-limit") == 3 and pol["priority"] == 100, str(pol))
    # In force on the broker's count: handed back again and again with no
    # consumer, it leaves for billing.dlq after 3 returns (4 deliveries).
    dlq_before = mgmt("GET", "queues/{vhost}/%s.dlq" % q).get("messages_ready", 0)
    mgmt("POST", "exchanges/{vhost}/sales.retry/publish",
         {"routing_key": q, "payload": "{}", "payload_encoding": "string",
          "properties": {"delivery_mode": 2, "message_id": "migrate-check"}})
    n = deliveries_until_gone(q)
    check("billing_delivery_limit_3_from_make_migrate_is_in_force", 3 <= n <= 4,
          "delivered %d times with BILLING_DELIVERY_LIMIT=3" % n)
    ok = checklib.wait_until(lambda: mgmt("GET", "queues/{vhost}/%s.dlq" % q)
                             .get("messages_ready", 0) > dlq_before, 10)
    check("dead_lettered_after_the_limit", ok, "billing.dlq did not grow")
    mgmt("DELETE", "queues/{vhost}/%s.dlq/contents" % q)
    # Back to the default.
    rc, out = make_migrate()
    pol = mgmt("GET", "policies/{vhost}/ordersuite-%s" % q)
    check("make_migrate_sets_the_default_limit_again",
          rc == 0 and pol["definition"].get("delivery-limit") == 20, out + str(pol))


def one_failure_mail_over_duplicates():
    """The migration that makes one failure mail per order (review of #17,
    item 3) runs on a database that already holds two failure mails of one
    order (which two email processes could record before it): it succeeds,
    both rows are kept, and one of them is under the unique index. Played in
    a transaction that is rolled back: the index dropped, two order_rejected
    rows for one order, the migration's file run as migrate runs it."""
    files = sorted(f for f in os.listdir(os.path.join(ROOT, "migrations"))
                   if f.endswith("_one_failure_mail.sql"))
    path = os.path.join(ROOT, "migrations", files[-1])
    rc, out = checklib.psql(
        "BEGIN;\n"
        "DROP INDEX email.messages_one_failure_per_order;\n"
        "INSERT INTO email.messages (cause_id, kind, correlation_id, recipient, subject, body,"
        " status, created_at) SELECT gen_random_uuid(), 'order_rejected', :'oid', 'dup@example.com',"
        " 'not going ahead', 'body', 'sent', now() - make_interval(secs => n) FROM generate_series(1, 2) n;\n"
        "\\i :path\n"
        "SELECT 'rows=' || count(*) FROM email.messages WHERE correlation_id = :'oid';\n"
        "SELECT 'indexed=' || count(*) FROM email.messages WHERE correlation_id = :'oid'"
        " AND kind IN ('order_rejected', 'payment_failed', 'order_expired');\n"
        "SELECT 'index=' || count(*) FROM pg_indexes WHERE schemaname = 'email'"
        " AND indexname = 'messages_one_failure_per_order';\n"
        "ROLLBACK;\n",
        oid=str(uuid.uuid4()), path=path)
    check("one_failure_mail_migration_over_duplicates",
          rc == 0 and "rows=2" in out and "indexed=1" in out and "index=1" in out,
          "%s: exit %d\n%s" % (files[-1], rc, out))


def main():
    tmp = tempfile.mkdtemp(prefix="ordersuite-migrate-")
    try:
        copy = os.path.join(tmp, "migrations")
        shutil.copytree(os.path.join(ROOT, "migrations"), copy)
        n = len([f for f in os.listdir(copy) if f.endswith(".sql")])

        rc, out = migrate(copy)
        check("applies_nothing_twice", rc == 0 and f"0 applied, {n} already up to date" in out, out)

        with open(os.path.join(copy, "0003_catalog_seed.sql"), "a") as f:
            f.write("\n-- an edit after the fact\n")
        rc, out = migrate(copy)
        check("refuses_an_edited_migration",
              rc != 0 and "0003_catalog_seed.sql was changed after it was applied" in out, out)

        shutil.copy(os.path.join(ROOT, "migrations", "0003_catalog_seed.sql"), copy)
        with open(os.path.join(copy, "0001_another.sql"), "w") as f:
            f.write("SELECT 1;\n")
        rc, out = migrate(copy)
        check("refuses_two_files_with_one_number", rc != 0 and "share a number" in out, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    one_failure_mail_over_duplicates()
    broker_half()


checklib.run(main)
