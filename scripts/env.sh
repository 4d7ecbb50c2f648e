#!/usr/bin/env bash
# scripts/env.sh — prints the suite's URLs as export lines, for a shell:
#   eval "$(bash scripts/env.sh)"
# OWNER_DATABASE_URL, <ROLE>_DATABASE_URL and <ROLE>_OWNER_DATABASE_URL (on the
# cluster of ROLE's schema: make up PG2=...), <NAME>_AMQP_URL, TEST_AMQP_URL (the
# broker administrator), from var/ordersuite.env (written by make up).
source "$(dirname "$0")/lib.sh"
[ -f "$ENV_FILE" ] || die "no $ENV_FILE: run 'make up' first"
load_env
export_suite_urls
for v in $(compgen -e | grep -E '_(DATABASE|AMQP)_URL$'); do
    printf 'export %s=%q\n' "$v" "${!v}"
done
