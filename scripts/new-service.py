#!/usr/bin/env python3
"""new-service.py NAME KEYS — make a new consuming service from templates/service.

    make new-service NAME=shipping KEYS="billing.invoiced inventory.reserved"

Writes services/NAME/main.c (a handler table on the worker runtime),
migrations/NNNN_NAME.sql (its role, schema, outbox, inbox and table) and
tests/check_NAME.c (starts it, hands it each key, checks each was handled),
and registers it: a line in scripts/suite.sh (start order, role, the prefix
of the events it may publish: NAME.*, port), a
service in docker-compose.yml (and its passwords for the migrate and
broker-init jobs), the passwords (empty) in .env.example. `make up && make migrate && make test` then
builds, starts and tests it with no edits. Refuses names that exist and keys
that are not events.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def die(msg):
    print(f"new-service: {msg}", file=sys.stderr)
    sys.exit(2)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def write(path, text, new=True):
    full = os.path.join(ROOT, path)
    if new and os.path.exists(full):
        die(f"{path} exists already")
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as f:
        f.write(text)


def main():
    if len(sys.argv) < 3:
        die('usage: make new-service NAME=shipping KEYS="billing.invoiced inventory.reserved"')
    name = sys.argv[1]
    keys = [k for k in re.split(r"[\s,]+", " ".join(sys.argv[2:])) if k]
    if not re.fullmatch(r"[a-z][a-z0-9_]{1,30}", name):
        die(f"NAME={name!r}: use 2-31 of a-z 0-9 _ starting with a letter "
            "(it names the queue, the schema and the database role)")
    suite = read("scripts/suite.sh")
    block = suite.split('SUITE_SERVICES="')[1].split('"')[0]
    rows = [l.split() for l in block.splitlines() if l.strip()]
    if name in [r[0] for r in rows] + [r[1] for r in rows] + [r[2] for r in rows] \
            + ["pos", "sale", "sales", "public", "ordersuite_owner"] \
            or os.path.exists(os.path.join(ROOT, "services", name)):
        die(f"a service, role, schema or event prefix called {name} exists already")
    known = dict(re.findall(r'#define (RK_[A-Z_]+)\s+"([a-z_.]+)"', read("contracts/events.h")))
    events = {v: "EV_" + k[3:] for k, v in known.items()}
    if not keys:
        die("KEYS: name at least one routing key")
    for k in keys:
        if k not in events:
            die(f"KEYS: {k} is not an event; known: {' '.join(sorted(events))}")
    if len(set(keys)) != len(keys):
        die("KEYS: a key is listed twice")
    port = max([int(r[4]) for r in rows if r[3] == "METRICS_PORT"] + [9100]) + 1
    up = name.upper()
    numbers = [int(f[:4]) for f in os.listdir(os.path.join(ROOT, "migrations"))
               if re.match(r"\d{4}_.*\.sql$", f)]
    number = f"{max(numbers + [0]) + 1:04d}"
    subst = {
        "@NAME@": name,
        "@UP@": up,
        "@PORT@": str(port),
        "@NUMBER@": number,
        "@KEYS_TEXT@": ", ".join(keys),
        "@ROUTES@": "\n".join(f"        {{{events[k]}, handle, NULL}}," for k in keys),
        "@TYPES@": ", ".join(events[k] for k in keys),
    }

    def render(template):
        text = read(os.path.join("templates", "service", template))
        for a, b in subst.items():
            text = text.replace(a, b)
        return text

    write(f"services/{name}/main.c", render("main.c.in"))
    write(f"migrations/{number}_{name}.sql", render("migration.sql.in"))
    write(f"tests/check_{name}.c", render("check.c.in"))

    # the registry: consumers start before order-api (the last line)
    lines = block.strip("\n").split("\n")
    # it may publish (worker_emit) events named NAME.* on sales.events
    lines.insert(len(lines) - 1, f"{name} {name} {name} METRICS_PORT {port}")
    write("scripts/suite.sh", suite.replace(block, "\n" + "\n".join(lines) + "\n"), new=False)

    # docker compose: the service, its database password for the migrate job
    # and its broker password for broker-init (which makes its broker user);
    # passwords are required (${VAR:?...}) and empty in .env.example.
    compose = read("docker-compose.yml")
    service = f"""  {name}:
    <<: *app
    command: ["{name}"]
    environment:
      AMQP_URL: amqp://{name}:${{RMQ_{up}_PASSWORD}}@rabbitmq:5672
      DATABASE_URL: postgresql://{name}:${{PG_{up}_PASSWORD}}@postgres:5432/ordersuite
      METRICS_PORT: "{port}"
      HTTP_BIND: 0.0.0.0
      LOG_LEVEL: info
    healthcheck:
      test: ["CMD", "curl", "-sf", "http://127.0.0.1:{port}/readyz"]
      interval: 3s
      timeout: 3s
      retries: 40

"""
    for svc in ("pos", "migrate", "broker-init"):
        if f"\n  {svc}:\n" not in compose:
            die(f"docker-compose.yml does not have the {svc} service it expects")
    compose = compose.replace("\n  pos:\n", "\n" + service + "  pos:\n", 1)

    def add_env(text, svc, var):
        head, rest = text.split(f"\n  {svc}:\n", 1)
        at = rest.index("    environment:\n") + len("    environment:\n")
        line = f"      {var}: ${{{var}:?set {var} in .env}}\n"
        return head + f"\n  {svc}:\n" + rest[:at] + line + rest[at:]

    compose = add_env(compose, "migrate", f"PG_{up}_PASSWORD")
    compose = add_env(compose, "broker-init", f"RMQ_{up}_PASSWORD")
    write("docker-compose.yml", compose, new=False)

    env = read(".env.example").rstrip("\n")
    write(".env.example", env + f"\nRMQ_{up}_PASSWORD=\nPG_{up}_PASSWORD=\n", new=False)

    print(f"""new-service: made {name}, consuming {', '.join(keys)}
  services/{name}/main.c          the handlers (edit handle())
  migrations/{number}_{name}.sql  its role, schema, outbox, inbox and table
  tests/check_{name}.c            its test
  scripts/suite.sh, docker-compose.yml, .env.example   registered (metrics on :{port})
next: make up && make migrate && make test   (or make demo to run it with the others)""")


main()
