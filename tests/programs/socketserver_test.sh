#!/bin/bash
# python socketserver.ForkingTCPServer and ThreadingTCPServer under doorway,
# 16 concurrent clients x 6 request/replies each (7 B to 300 KB), every
# reply checked. Each handler reports whether its socket is accelerated
# (doorway_fd_info), so a forked child's view after fork is checked too.
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
clients=16
rounds=6
for kind in forking threading; do
  spawn "server-$kind" "$WORK/server-$kind.out" python3 "$script" server "$kind" "$WORK/port-$kind"
  for _ in $(seq 1 200); do
    [ -s "$WORK/port-$kind" ] && break
    sleep 0.05
  done
  [ -s "$WORK/port-$kind" ] || fail "$kind server did not start: $(cat "$WORK/server-$kind.out")"
  port="$(cat "$WORK/port-$kind")"
  timeout 120 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug \
    DOORWAY_LOG_FILE="$WORK/clients-$kind.log" \
    python3 "$script" clients "$port" "$clients" "$rounds" "$kind" >"$WORK/clients-$kind.out" 2>&1 ||
    fail "$kind clients: $(cat "$WORK/clients-$kind.out")"
  n="$(grep -c "accelerated connection to port $port" "$WORK/clients-$kind.log" || true)"
  [ "$n" -eq "$clients" ] || fail "$kind: $n of $clients client connections accelerated"
  n="$(grep -c "accelerated connection accepted" "$WORK/server-$kind.log" || true)"
  [ "$n" -eq "$clients" ] || fail "$kind: server accepted $n accelerated connections, want $clients"
  cat "$WORK/clients-$kind.out"
done
echo "PASS: ForkingTCPServer and ThreadingTCPServer, $clients clients x $rounds rounds each, accelerated"
