#!/bin/bash
# An idle event loop holding many accelerated connections uses no CPU
# (issue 5): an asyncio server and a selectors (epoll) client, both under
# doorway, hold N accelerated connections; after one echo on each, neither
# process may use more than LIMIT_MS of CPU time (user + system, from
# /proc/PID/stat) in WINDOW_S seconds. This bounds CPU time, not wall time:
# a loop that spins or polls would burn most of the window, and load from
# other processes does not add to it.
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
N=200
WINDOW_S=3
LIMIT_MS=100
port="$(free_port)"
spawn server "$WORK/server.out" python3 "$script" server "$port"
wait_port "$port"
spawn client "$WORK/client.out" python3 "$script" client "$port" "$N"
server_pid="${PIDS[0]}"
client_pid="${PIDS[1]}"
for _ in $(seq 1 600); do
  grep -q "^idle" "$WORK/client.out" 2>/dev/null && break
  kill -0 "$client_pid" 2>/dev/null || fail "client exited: $(cat "$WORK/client.out")"
  sleep 0.05
done
grep -q "^idle $N" "$WORK/client.out" || fail "client not idle: $(cat "$WORK/client.out")"
accepted="$(grep -c 'accelerated connection accepted' "$WORK/server.log" || true)"
[ "$accepted" -ge "$N" ] || fail "only $accepted accelerated connections accepted (want $N)"
cpu_ms() {  # utime + stime of $1, in ms
  awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"
}
sleep 0.5  # let the last spin windows end
s0="$(cpu_ms "$server_pid")"
c0="$(cpu_ms "$client_pid")"
sleep "$WINDOW_S"
s1="$(cpu_ms "$server_pid")"
c1="$(cpu_ms "$client_pid")"
echo "idle ${WINDOW_S}s with $N accelerated connections: server $((s1 - s0)) ms CPU," \
  "client $((c1 - c0)) ms CPU (limit $LIMIT_MS ms each)"
[ $((s1 - s0)) -le "$LIMIT_MS" ] || fail "idle server used $((s1 - s0)) ms of CPU"
[ $((c1 - c0)) -le "$LIMIT_MS" ] || fail "idle client used $((c1 - c0)) ms of CPU"
echo "PASS: idle event loops with $N accelerated connections use no CPU"
