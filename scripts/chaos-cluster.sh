# scripts/chaos-cluster.sh — make chaos's cluster scenarios (sourced by
# scripts/chaos.sh, whose helpers they use). Each needs a RabbitMQ cluster
# of three (make up NODES=3); plain `make chaos` runs them on an instance of
# their own (tests/cluster-instance.sh), and tests/cluster_check.sh runs
# `cluster` in make test.
#
#   cluster       kill -9 the node that leads the most of the busiest work
#                 queues (inventory, billing, email) under load:
#                 the pause until orders placed after it complete
#   cluster2down  two of the three nodes stopped under load: node 1 alone
#                 pauses (pause_minority), nothing is confirmed, order-api
#                 keeps answering 201 (the orders wait in its outbox), the
#                 till keeps selling into its spool; one node back: the
#                 time until every order placed before it is final
#   partition     node 3's Erlang distribution cut off (iptables, in this
#                 network namespace) under load: it pauses (pause_minority),
#                 its clients move to the two others; healed: it rejoins.
#                 The time until orders placed after the cut complete

# The node (1..NODES) that leads the most of the busiest work queues now:
# inventory's, billing's and email's, which every order and every sale go
# through (order-api's sees only the orders' outcomes). A sale is published
# to all three, so a till on another node publishes to a lost leader.
BUSY_QUEUES="inventory billing email"
busiest_node() {
    mgmt_curl -fsS -m 10 "http://127.0.0.1:$MGMT_PORT/api/queues/$(vhost_api)?columns=name,leader" |
        python3 -c '
import collections, json, sys
names, nodes = sys.argv[1].split(), sys.argv[2].split()
c = collections.Counter(q.get("leader") for q in json.load(sys.stdin) if q["name"] in names)
lead = c.most_common(1)[0][0] if c else None
print(nodes.index(lead) + 1 if lead in nodes else "")
' "$BUSY_QUEUES" "$(for k in $(seq 1 "$(rmq_nodes)"); do rmq_node_name "$k"; done | tr '\n' ' ')"
}

# running_nodes_are N: the cluster reports N running nodes (asked of node 1).
running_nodes_are() {
    [ "$(RMQCTL_TIMEOUT_S=30 rmqctl -q cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json, sys; print(len(json.load(sys.stdin)["running_nodes"]))')" = "$1" ]
}

# need_cluster NAME: true with a cluster of three; else a failed row.
need_cluster() {
    [ "$(rmq_nodes)" -ge 3 ] && return 0
    echo "    FAIL: needs a cluster of three (make up NODES=3, or plain make chaos)"
    ROWS+=("$(printf '%-34s %s' "$1" "FAIL (no cluster)")")
    failed=$((failed + 1))
    return 1
}

# all_nodes_up: every node running (make up starts what is not); make up
# only when one is down: with every node running it applies the broker's
# users and permissions again, minutes of rabbitmqctl on this machine.
all_nodes_up() {
    running_nodes_are "$(rmq_nodes)" || "$ROOT/scripts/up.sh" >>"$WORK/up.log" 2>&1 || { tail -5 "$WORK/up.log"; return 1; }
    wait_for 60 "$(rmq_nodes) running nodes" running_nodes_are "$(rmq_nodes)" ||
        { echo "    FAIL: not all $(rmq_nodes) nodes running"; return 1; }
}

# till_start URL SALES RATE [FLUSH_S]: a till (pos, with a spool of its own)
# selling in the background; TILL_PID. It keeps trying for FLUSH_S (90) s
# after its last sale.
till_start() {
    mkdir -p "$WORK/$TAG.spool"
    AMQP_URL=$1 CATALOG_URL="$API/products" POS_SPOOL_DIR="$WORK/$TAG.spool" POS_FLUSH_TIMEOUT_S=${4:-90} \
        "$BIN/pos" --count "$2" --rate "$3" --store "$TAG" >"$WORK/$TAG.pos" 2>&1 &
    TILL_PID=$!
}
# till_wait: every sale confirmed and the spool empty (pos exits 0); with
# sales left in the spool pos exits 2.
till_wait() {
    if wait "$TILL_PID"; then
        echo "    till: $(tail -1 "$WORK/$TAG.pos")"
    else
        echo "    FAIL: the till's sales were not all confirmed: $(tail -1 "$WORK/$TAG.pos")"
        return 1
    fi
}
till_spooled() { # bytes in the till's spool file now
    stat -c %s "$WORK/$TAG.spool/pos-$TAG.spool" 2>/dev/null || echo 0
}

# node_pid K: the pid of node K's VM, from the pid file the node writes at
# its start (RABBITMQ_PID_FILE, lib.sh rmq_env), if that process still runs
# and is that node's VM (a beam.smp with its home): not a pattern over every
# command line, which also matches the rabbitmqctl VMs that speak to it.
node_pid() {
    local pid
    pid=$(cat "$(rmq_node_dir "$1")/rabbitmq.pid" 2>/dev/null) && [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */beam.smp ]] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-home $(rmq_node_dir "$1")/home " &&
        echo "$pid"
}
# node_kill K: kill -9 node K's VM, by its pid.
node_kill() {
    local pid
    pid=$(node_pid "$1") || { echo "    FAIL: no running VM of node $1 (its pid file)"; return 1; }
    kill -KILL "$pid"
}

# The load's orders in some statuses, optionally placed before / after a time (ms).
orders_of() { # STATUS-LIST(SQL) [CREATED-CONDITION]
    psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "SELECT count(*) FROM orders.orders
        WHERE customer_id = '$TAG' AND status IN ($1) ${2:+AND $2}"
}
confirmed_after() { # T_MS N: N orders placed after T_MS are CONFIRMED
    [ "$(orders_of "'CONFIRMED'" "created_at >= to_timestamp($1 / 1000.0)")" -ge "$2" ]
}
open_before() { # T_MS: orders placed before T_MS that are not final yet
    orders_of "'PENDING','RESERVED'" "created_at < to_timestamp($1 / 1000.0)"
}
none_open_before() { [ "$(open_before "$1")" = 0 ]; }
outbox_rows() { psql -qAt "$ORDERS_OWNER_DATABASE_URL" -c "SELECT count(*) FROM orders.outbox"; }
outbox_ge() { [ "$(outbox_rows)" -ge "$1" ]; }
# loadgen's count of 5xx answers, from its summary line.
load_5xx() { sed -nE 's/^orders: .* ([0-9]+) 5xx.*/\1/p' "$WORK/$TAG.load"; }

scenario_cluster() {
    local ok=1 t0 r secs=40 k
    [ $SHORT = 1 ] && secs=25
    TAG=ccl-$RUNID
    say "cluster: kill -9 the RabbitMQ node that leads the most work queues, under load"
    need_cluster "cluster kill -9 a leading node" || return
    all_nodes_up || ok=0
    # The node to kill, chosen before the load (leaders move only after a
    # fault): the sales publishers (loadgen's and a till's) connect to
    # another, so their channels see the leader change as publishes the
    # broker nacks rather than as a lost connection (RabbitMQ 3.10 went on
    # nacking such a channel for minutes: they must open a new one).
    k=$(busiest_node)
    [ -n "$k" ] || { echo "    FAIL: no queue leader found"; k=1; ok=0; }
    local pos_url
    pos_url=$(AMQP_FIRST_NODE=$((k % $(rmq_nodes) + 1)) amqp_url pos)
    POS_AMQP_URL=$pos_url load_start "$TAG" 40 "$secs" --sales 100
    load_flowing || ok=0
    # The till sells for 10 s from the kill and must have every sale
    # confirmed 10 s after its last: a channel the broker went on nacking
    # (the helper not opening a new one after a nack) was nacked for 27 s
    # and for more than 85 s in two runs, and left its sales spooled.
    till_start "$pos_url" 200 20 10
    node_kill "$k" || ok=0
    t0=$(now_ms)
    echo "    killed node $k ($(rmq_node_name "$k")), which led the most work queues"
    # The pause: until orders placed after the kill complete (the clients on
    # that node move to the others, its queues elect leaders there).
    if wait_for 60 "orders completing again" confirmed_after "$t0" 10; then
        r="$(elapsed_s "$t0")s"
    else
        r=">60s"
        ok=0
    fi
    echo "    10 orders placed after the kill confirmed ${r} after it, with node $k down"
    load_wait || ok=0
    till_wait || ok=0
    # Bring the node back (make up starts what is not running) for the next run.
    "$ROOT/scripts/up.sh" >>"$WORK/up.log" 2>&1 || { ok=0; tail -5 "$WORK/up.log"; }
    check "$TAG" "cluster kill -9 a leading node" "$r" "$ok"
}

scenario_cluster2down() {
    local ok=1 t0 td r secs=60 n
    [ $SHORT = 1 ] && secs=40
    TAG=c2d-$RUNID
    say "cluster2down: two of three RabbitMQ nodes stopped under load, then one back"
    need_cluster "cluster two of three nodes down" || return
    all_nodes_up || ok=0
    load_start "$TAG" 20 "$secs" --sales 100
    load_flowing || ok=0
    till_start "$(amqp_url pos)" $((secs * 4)) 4
    # Stopped as an operator stops a node (rabbitmqctl shutdown): node 3,
    # then node 2. Node 1, alone, sees no majority and pauses
    # (pause_minority): it closes its clients' connections and takes none.
    RMQ_NODE=3 RMQCTL_TIMEOUT_S=120 rmqctl -q shutdown >/dev/null 2>&1 || { echo "    FAIL: node 3 did not stop"; ok=0; }
    RMQ_NODE=2 RMQCTL_TIMEOUT_S=120 rmqctl -q shutdown >/dev/null 2>&1 || { echo "    FAIL: node 2 did not stop"; ok=0; }
    td=$(now_ms)
    echo "    nodes 3 and 2 stopped: node 1 alone, paused"
    # The outage: nothing is confirmed. order-api goes on accepting (the
    # order and its event in one transaction; the event waits in the
    # outbox), the till goes on selling into its spool.
    accepted_since() { [ "$(orders_of "'PENDING','RESERVED','CONFIRMED'" "created_at >= to_timestamp($td / 1000.0)")" -ge "$1" ]; }
    wait_for 60 "100 orders accepted with two nodes down" accepted_since 100 ||
        { echo "    FAIL: not 100 orders accepted within 60 s of the stop"; ok=0; }
    outbox_ge 100 || { echo "    FAIL: fewer than 100 events wait in order-api's outbox"; ok=0; }
    n=$(orders_of "'CONFIRMED'" "created_at >= to_timestamp($td / 1000.0)")
    echo "    $(elapsed_s "$td")s down: $(orders_of "'PENDING','RESERVED','CONFIRMED'" "created_at >= to_timestamp($td / 1000.0)") orders accepted since ($n confirmed), $(outbox_rows) event(s) in order-api's outbox, $(till_spooled) bytes in the till's spool"
    [ "$n" = 0 ] || { echo "    FAIL: orders placed with two of three nodes down were confirmed"; ok=0; }
    [ "$(till_spooled)" -gt 0 ] || { echo "    FAIL: the till's spool is empty"; ok=0; }
    # One node back: a majority again; node 1 resumes by itself.
    t0=$(now_ms)
    UP_NODES=2 "$ROOT/scripts/up.sh" >>"$WORK/up.log" 2>&1 || { ok=0; tail -5 "$WORK/up.log"; }
    echo "    node 2 started again in $(elapsed_s "$t0")s"
    if wait_for 180 "every order placed before the node came back final" none_open_before "$t0"; then
        r="$(elapsed_s "$t0")s"
    else
        r=">180s"
        echo "    FAIL: $(open_before "$t0") order(s) still open 180 s after node 2 was started"
        ok=0
    fi
    echo "    every order placed before node 2 came back is final ${r} after its start"
    load_wait || ok=0
    [ "$(load_5xx)" = 0 ] || { echo "    FAIL: order-api answered 5xx during the outage"; ok=0; }
    till_wait || ok=0
    all_nodes_up || ok=0
    check "$TAG" "cluster two of three nodes down" "$r" "$ok"
}

# The partition: node 3's Erlang distribution cut off from the others by
# iptables rules in this network namespace (they go with it, and are
# removed at the end). Node K's distribution listens on 127.0.0.1 at
# AMQP_PORT+20000+10(K-1) and connects out from 127.0.0.K
# (inet_dist_connect_options, scripts/up.sh), so its traffic is the packets
# to or from that port, or from or to that address; its AMQP port and
# epmd stay reachable.
# part_cut K: inserts the rules at the top of INPUT (-I: an earlier ACCEPT
# of lo, e.g. a host's firewall, must not make them no-ops) and records each
# one it inserted; part_heal deletes exactly those (also from chaos.sh's
# EXIT trap, when the run dies with the cut in place).
PART_RULES=()
part_cut() { # K
    local port=$((AMQP_PORT + 20000 + $(rmq_node_off "$1"))) r
    for r in "--dport $port" "--sport $port" "-s 127.0.0.$1" "-d 127.0.0.$1"; do
        case "$r" in --*) r="-p tcp $r" ;; esac
        # shellcheck disable=SC2086 # r is several words on purpose
        iptables -w -I INPUT 1 -i lo $r -j DROP -m comment --comment ordersuite-chaos || return 1
        PART_RULES+=("$r")
    done
}
part_heal() {
    local r rc=0
    for r in "${PART_RULES[@]}"; do
        # shellcheck disable=SC2086
        iptables -w -D INPUT -i lo $r -j DROP -m comment --comment ordersuite-chaos || rc=1
    done
    PART_RULES=()
    return $rc
}
# node_paused K: its VM runs, its AMQP listener is closed (paused). Not
# asked with rabbitmqctl: the CLI reaches a node through its distribution
# port, which the partition cuts.
node_paused() {
    node_pid "$1" >/dev/null &&
        ! port_in_use $((AMQP_PORT + $(rmq_node_off "$1")))
}
# The cluster as node 1 sees it: running nodes, and partitions.
cluster_view() {
    RMQCTL_TIMEOUT_S=30 rmqctl -q cluster_status --formatter json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("running %s, partitions %s" % (",".join(n.split("@")[0] for n in s["running_nodes"]),
      s.get("partitions") or "none"))'
}

scenario_partition() {
    local ok=1 t0 r secs=60 k=3
    [ $SHORT = 1 ] && secs=40
    TAG=cpt-$RUNID
    say "partition: node $k's distribution cut off under load (iptables), then healed"
    need_cluster "cluster partition of one node" || return
    command -v iptables >/dev/null || { echo "    FAIL: no iptables"; ok=0; }
    all_nodes_up || ok=0
    # The till on node 3 first: its connection is on the side that pauses.
    load_start "$TAG" 20 "$secs" --sales 100
    load_flowing || ok=0
    till_start "$(AMQP_FIRST_NODE=$k amqp_url pos)" $((secs * 4)) 4
    part_cut "$k" || { echo "    FAIL: iptables refused the rules"; ok=0; }
    t0=$(now_ms)
    echo "    node $k's distribution cut off"
    # pause_minority: node 3 sees 1 of 3 nodes and pauses (its AMQP
    # connections are closed; clients move to nodes 1 and 2); nodes 1 and 2
    # see 2 of 3 and go on. Orders placed after the cut complete.
    if wait_for 90 "orders completing again" confirmed_after "$t0" 10; then
        r="$(elapsed_s "$t0")s"
    else
        r=">90s"
        ok=0
    fi
    echo "    10 orders placed after the cut confirmed ${r} after it"
    if wait_for 90 "node $k paused" node_paused "$k"; then
        echo "    node $k paused itself $(elapsed_s "$t0")s after the cut; node 1 sees: $(cluster_view)"
    else
        echo "    FAIL: node $k did not pause within 90 s"
        ok=0
    fi
    load_wait || ok=0
    part_heal || { echo "    FAIL: removing the partition's rules failed"; ok=0; }
    t0=$(now_ms)
    if wait_for 120 "node $k back in the cluster" running_nodes_are "$(rmq_nodes)"; then
        echo "    healed: node $k running again $(elapsed_s "$t0")s later; node 1 sees: $(cluster_view)"
    else
        echo "    FAIL: node $k not running 120 s after the heal"
        ok=0
    fi
    till_wait || ok=0
    check "$TAG" "cluster partition of one node" "$r" "$ok"
}
