#!/bin/bash
# Python asyncio (an epoll event loop) on both sides, accelerated: echo of
# random data in random chunk sizes, with back-pressure (drain) both ways.
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
port="$(free_port)"
spawn server "$WORK/server.out" python3 "$script" server "$port"
for _ in $(seq 1 200); do
  grep -q listening "$WORK/server.out" 2>/dev/null && break
  sleep 0.05
done
timeout 120 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/client.log" \
  python3 "$script" client "$port" $((64 * 1024 * 1024 + 17)) || fail "asyncio client exited $?"
expect_log client "accelerated connection to port $port"
expect_log server "accelerated connection accepted"
echo "PASS: asyncio echo over doorway shared memory"
