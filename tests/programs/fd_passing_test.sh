#!/bin/bash
# A Python server hands accepted connections to pre-forked workers with
# SCM_RIGHTS (socket.send_fds, multiprocessing.reduction.send_handle), as
# Node's cluster module does in round-robin mode: every connection is
# accelerated when made, is handed to a relay before it is sent
# (runtime/pass.h), and its worker serves it: every reply checked, EOF at
# the worker's close (the server's close of its copy must not end it).
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
n=8
spawn server "$WORK/server.out" python3 "$script" server "$WORK/port" "$n"
server_pid="${PIDS[-1]}"
for _ in $(seq 1 200); do
  [ -s "$WORK/port" ] && break
  sleep 0.05
done
[ -s "$WORK/port" ] || fail "server did not start: $(cat "$WORK/server.out")"
port="$(cat "$WORK/port")"
timeout 120 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/clients.log" \
  python3 "$script" clients "$port" "$n" >"$WORK/clients.out" 2>&1 ||
  fail "clients: $(cat "$WORK/clients.out")"
for _ in $(seq 1 600); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
wait "$server_pid" || fail "server: $(cat "$WORK/server.out")"
a="$(grep -c "accelerated connection to port $port" "$WORK/clients.log" || true)"
[ "$a" -eq "$n" ] || fail "$a of $n client connections accelerated"
r="$(grep -c "handed to a relay.* to be passed with SCM_RIGHTS" "$WORK/server.log" || true)"
[ "$r" -eq "$n" ] || fail "$r of $n connections handed to a relay before being passed"
echo "$(grep -c "to the relay server" "$WORK/server.log" || true) of $n through the relay server"
cat "$WORK/clients.out" "$WORK/server.out"
echo "PASS: $n accelerated connections passed to workers with SCM_RIGHTS and served there"
