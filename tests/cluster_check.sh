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
# Bounded: make test runs this without a timeout of its own, and a cluster
# can hang a step (rabbitmqctl against a node that cannot answer). Each
# half gets CLUSTER_CHECK_UP_S / CLUSTER_CHECK_RUN_S seconds (about 4x what
# they take on this loaded 2-core machine), then TERM (chaos.sh prints its
# table and stops what it started), 30 s later KILL; the EXIT trap above
# stops the instance, and run-tests.sh ends what carries its run mark.
up_s=${CLUSTER_CHECK_UP_S:-600} run_s=${CLUSTER_CHECK_RUN_S:-600}
t0=$(date +%s)
rc=0
timeout -k 30 "$up_s" bash "$inst" up >>"$log" 2>&1 || rc=$?
if [ $rc != 0 ]; then
    tail -20 "$log"
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        echo "cluster_check: the cluster instance was not up within $up_s s (CLUSTER_CHECK_UP_S); see $log"
    else
        echo "cluster_check: the cluster instance did not come up; see $log"
    fi
    echo "0%: Checks: 1, Failures: 1, Errors: 0"
    exit 1
fi
echo "cluster_check: three nodes up and migrated in $(($(date +%s) - t0)) s"
rc=0
timeout -k 30 "$run_s" bash "$inst" run bash "$ROOT/scripts/chaos.sh" --short cluster || rc=$?
if [ $rc = 124 ] || [ $rc = 137 ]; then
    echo "cluster_check: the cluster scenario did not end within $run_s s (CLUSTER_CHECK_RUN_S)"
    echo "0%: Checks: 1, Failures: 1, Errors: 0"
fi
exit $rc
