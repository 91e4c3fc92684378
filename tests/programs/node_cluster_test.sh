#!/bin/bash
# Node's cluster module in round-robin mode: the primary accepts each
# connection and hands it to a worker with SCM_RIGHTS. Under doorway every
# connection is accelerated when made and handed to a relay before it is
# sent (runtime/pass.h); each client checks its worker's reply and EOF.
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
n=8
port="$(free_port)"
PORT="$port" CLIENTS="$n" under_doorway node timeout 40 node "$script" >"$WORK/node.out" 2>&1 ||
  fail "node cluster: $(cat "$WORK/node.out")"
grep -q "^$n of $n clients ok" "$WORK/node.out" || fail "node cluster: $(cat "$WORK/node.out")"
a="$(grep -c "accelerated connection to port $port" "$WORK/node.log" || true)"
[ "$a" -eq "$n" ] || fail "$a of $n client connections accelerated"
r="$(grep -c "handed to a relay.* to be passed with SCM_RIGHTS" "$WORK/node.log" || true)"
[ "$r" -eq "$n" ] || fail "$r of $n connections handed to a relay before being passed"
echo "$(grep -c "to the relay server" "$WORK/node.log" || true) of $n through the relay server"
cat "$WORK/node.out"
echo "PASS: node cluster (round-robin), $n accelerated connections passed to workers"
