#!/usr/bin/env bash
# scripts/rmqctl.sh ARGS... — rabbitmqctl against the project's own node
# (used by the tests to stop and start the broker, and handy by hand).
source "$(dirname "$0")/lib.sh"
load_env
rmqctl "$@"
