#!/usr/bin/env bash
# tests/cluster_check.sh — make test's short cluster run: a RabbitMQ cluster
# of three of its own (tests/cluster-instance.sh: make up NODES=3 + make
# migrate under var/cluster-check/, ports 5832, 5872/5882/5892, services
# +23000), the services, a burst of orders and sales (loadgen, and a till
# with its spool), and kill -9 of the node that leads the most work queues
# mid-burst (make chaos's cluster scenario, --short): orders keep
# completing (the pause is printed), the till's spool drains, and the
# ledger finds nothing lost, doubled or stuck. Everything it started (the
# services, the three nodes, PostgreSQL, and epmd when it started it) is
# stopped at the end, also when it fails.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${ORDERSUITE_BIN:-$ROOT/build/bin}
BUILD=${BUILD%/bin}
export BUILD=${BUILD#"$ROOT"/}
inst="$ROOT/tests/cluster-instance.sh"
log="$ROOT/var/log/tests/cluster_check-instance.log"
mkdir -p "$(dirname "$log")"
: >"$log"
trap 'bash "$inst" down >>"$log" 2>&1 || echo "cluster_check: stopping the instance failed; see $log"' EXIT
t0=$(date +%s)
if ! bash "$inst" up >>"$log" 2>&1; then
    tail -20 "$log"
    echo "cluster_check: the cluster instance did not come up; see $log"
    echo "0%: Checks: 1, Failures: 1, Errors: 0"
    exit 1
fi
echo "cluster_check: three nodes up and migrated in $(($(date +%s) - t0)) s"
bash "$inst" run bash "$ROOT/scripts/chaos.sh" --short cluster
