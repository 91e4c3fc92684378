#!/bin/bash
# redis-server (an epoll event loop) and its clients under doorway, all
# accelerated: a value round-trips byte for byte through redis-cli, and
# redis-benchmark's pipelined clients complete.
source "$(dirname "$0")/lib.sh" "$1"
command -v redis-server >/dev/null || fail "redis-server not installed (tools/setup.sh installs it)"
port="$(free_port)"
spawn server "$WORK/server.out" redis-server --port "$port" --bind 127.0.0.1 --save "" \
  --appendonly no --dir "$WORK"
wait_port "$port"
value="$(head -c 3000 /dev/urandom | base64 -w0)"
under_doorway cli redis-cli -p "$port" SET doorway-key "$value" >/dev/null || fail "SET"
got="$(under_doorway cli2 redis-cli -p "$port" GET doorway-key)" || fail "GET"
[ "$got" = "$value" ] || fail "GET returned other bytes"
under_doorway bench timeout 120 redis-benchmark -p "$port" -n 20000 -c 8 -P 4 -t set,get,lpush,lpop \
  -q >"$WORK/bench.out" 2>&1 || fail "redis-benchmark exited $?: $(tail -3 "$WORK/bench.out")"
grep -q "GET:" "$WORK/bench.out" || fail "redis-benchmark printed no GET result"
expect_log cli "accelerated connection to port $port"
expect_log bench "accelerated connection to port $port"
expect_log server "accelerated connection accepted"
echo "PASS: redis over doorway shared memory ($(grep GET: "$WORK/bench.out" | tr -s ' ' | cut -c1-60))"
