#!/usr/bin/env python3
"""compose_check.py — what the real compose run cannot see.

tests/compose_test.sh (make compose-test) builds and runs docker-compose.yml
for real: images, health checks, orders, scaling, restarts. This keeps only
the properties a passing run would not notice: every service of
scripts/suite.sh is in the compose file with its port, and one the run does
not start (made by make new-service) also with its role, broker user and
passwords (a service missing from compose would just not run); every
environment variable compose sets is one the code reads (a misspelt optional
setting is silently ignored); workers other than billing can scale (the run
scales only billing); ports are published on 127.0.0.1 only; the suite's image
runs as a non-root user; start order uses depends_on conditions (the run may
win a race without them); no password has a default, none is in
.env.example, and every ${VAR} is documented there.

Prints one line per check and a Check-style summary line.
"""
import os
import re

import yaml

import checklib
from checklib import ROOT, check


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def sources_of(service):
    """The C text a service's executable is built from."""
    text = []
    for d in ("common", "contracts", os.path.join("services", service)):
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith(".c"):
                text.append(read(os.path.join(d, f)))
    return "\n".join(text)


compose = yaml.safe_load(read("docker-compose.yml"))
svcs = compose["services"]
executables = sorted(
    d for d in os.listdir(os.path.join(ROOT, "services"))
    if os.path.exists(os.path.join(ROOT, "services", d, "main.c")))

# The services tests/compose_test.sh starts and drives: a missing URL, a wrong
# role or broker user, or a password the jobs do not get fails that run, so
# those checks below are for the others only (a service from make new-service).
RUN_BY_TEST = {"order-api", "inventory", "billing", "email", "pos"}

# 1. every executable has a service running it
for exe in executables:
    check(f"service_for_{exe}", exe in svcs, f"no compose service for services/{exe}")

# 2. environment names are read by the code; required ones are set
required = {"AMQP_URL"}
for exe in executables:
    if exe not in svcs:
        continue
    env = svcs[exe].get("environment", {}) or {}
    code = sources_of(exe)
    for var in env:
        check(f"{exe}_reads_{var}", f'"{var}"' in code,
              f"{exe} sets {var} in compose but its code never reads it")
    if exe in RUN_BY_TEST:
        continue
    for var in required | ({"DATABASE_URL"} if exe != "pos" else set()):
        check(f"{exe}_has_{var}", var in env, f"{exe} needs {var}")

# 3. ports: published on 127.0.0.1 only (the run reaches them there either way);
# workers publish none, so they can scale
for name, s in sorted(svcs.items()):
    for p in s.get("ports", []) or []:
        check(f"{name}_publishes_on_loopback", str(p).startswith("127.0.0.1:"),
              f"{name} publishes {p} beyond 127.0.0.1")
for w in ("inventory", "billing", "email"):
    s = svcs.get(w, {})
    check(f"{w}_scalable", "ports" not in s and "container_name" not in s,
          f"{w} has fixed ports or a container name, so it cannot --scale")

# 3b. the till's spool outlives its container: `run --rm pos` removes the
# container, so a sale spooled while the broker is away must sit on a named
# volume, not in the container's /tmp (issue #11 item 7)
pos = svcs.get("pos", {})
spool = str((pos.get("environment", {}) or {}).get("POS_SPOOL_DIR", ""))
named = {str(v).split(":")[0]: str(v).split(":")[1] for v in pos.get("volumes", []) or []
         if ":" in str(v) and not str(v).startswith((".", "/"))}
check("pos_spool_on_named_volume",
      spool != "" and spool in named.values() and all(n in (compose.get("volumes") or {}) for n in named),
      f"pos spools to {spool or '(unset)'}, which is not a named volume of the compose file ({named})")

# 4. the suite's image runs as a non-root user
dockerfile = read("Dockerfile")
check("dockerfile_non_root", re.search(r"^USER (?!root)\S+", dockerfile, re.M) is not None,
      "the runtime stage must not run as root")

# 5. start order (compose-test waits for every health check itself)
check("email_waits_for_healthy_mailcatcher",
      svcs.get("email", {}).get("depends_on", {}).get("mailcatcher", {}).get("condition") == "service_healthy",
      "email must wait for a healthy mailcatcher (its first mails would meet a closed SMTP port)")
mig = svcs.get("migrate", {}).get("depends_on", {})
check("migrate_waits_for_healthy_infra",
      mig.get("postgres", {}).get("condition") == "service_healthy"
      and mig.get("rabbitmq", {}).get("condition") == "service_healthy",
      "migrate must wait for healthy postgres and rabbitmq")
for exe in ("order-api", "inventory", "billing", "email"):
    dep = svcs.get(exe, {}).get("depends_on", {})
    check(f"{exe}_after_migrate",
          dep.get("migrate", {}).get("condition") == "service_completed_successfully",
          f"{exe} must start after migrate completed")

# 6. credentials: from .env, never guest, every ${VAR} documented in .env.example
text = read("docker-compose.yml")
check("no_guest", "guest" not in text.lower(), "guest credentials in docker-compose.yml")
example = read(".env.example")
for var in sorted(set(re.findall(r"\$\{([A-Z_]+)(?::?[-?][^}]*)?\}", text))):
    check(f"env_example_has_{var}", re.search(rf"^{var}=", example, re.M) is not None,
          f"{var} is used by docker-compose.yml but not in .env.example")
# No password has a default: a missing one stops compose (${VAR:?...}) where
# it is first set, and .env.example carries none (docker/make-env.sh makes them).
for var in sorted(set(re.findall(r"\$\{([A-Z_]*PASSWORD)\b", text))):
    check(f"{var}_required", re.search(rf"\$\{{{var}:\?", text) is not None,
          f"{var} is never required with ${{{var}:?...}} in docker-compose.yml")
    check(f"{var}_no_default", re.search(rf"\$\{{{var}:?-", text) is None,
          f"{var} has a default in docker-compose.yml")
    check(f"{var}_empty_in_example", re.search(rf"^{var}=\s*$", example, re.M) is not None,
          f"{var} has a value in .env.example; leave it empty")

# 7. the registry scripts/suite.sh: each service is in compose with its port;
# the migrate job and the image use the registry
suite = [l.split() for l in read("scripts/suite.sh").split('SUITE_SERVICES="')[1].split('"')[0]
         .splitlines() if l.strip()]
for name, role, topic, port_var, port, *ops in suite:
    s = svcs.get(name, {})
    env = s.get("environment", {}) or {}
    check(f"suite_{name}_in_compose", name in svcs, f"{name} is in scripts/suite.sh, not in compose")
    check(f"suite_{name}_port", str(env.get(port_var, "")) == port,
          f"{name}: compose sets {port_var}={env.get(port_var)}, scripts/suite.sh says {port}")
    if ops:  # the operations port (var, port), as the registry says
        check(f"suite_{name}_ops_port", len(ops) == 2 and str(env.get(ops[0], "")) == ops[1],
              f"{name}: compose sets {ops[0]}={env.get(ops[0])}, scripts/suite.sh says {ops[1:]}")
    if name in RUN_BY_TEST:
        continue
    check(f"suite_{name}_role", f"postgresql://{role}:" in str(env.get("DATABASE_URL", "")),
          f"{name} must connect as the database role {role}")
    check(f"suite_{name}_broker_user", f"amqp://{name}:" in str(env.get("AMQP_URL", "")),
          f"{name} must connect as its own broker user")
    # migrate sets each role's password; it declares the queues as the administrator.
    var = f"PG_{role.upper()}_PASSWORD"
    check(f"migrate_gets_{var}", var in (svcs.get("migrate", {}).get("environment") or {}),
          f"the migrate job needs {var}")
    var = f"RMQ_{name.upper().replace('-', '_')}_PASSWORD"
    check(f"broker_init_gets_{var}", var in (svcs.get("broker-init", {}).get("environment") or {}),
          f"the broker-init job needs {var}")
# The run sees only the built-in services; these two make a generated one
# (make new-service) get its role and password in compose too.
check("migrate_uses_suite", ". /app/scripts/suite.sh" in read("docker/migrate.sh"),
      "docker/migrate.sh must read scripts/suite.sh")
check("image_has_suite", "COPY scripts/suite.sh" in dockerfile, "the image must contain scripts/suite.sh")

checklib.summary()
