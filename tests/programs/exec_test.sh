#!/bin/bash
# An accelerated connection survives exec: python accepts it and runs `cat`
# (fork + exec, doorway loaded again through LD_PRELOAD) with the connection
# as stdin and stdout; the client's bytes come back through cat. (The
# client sends everything before reading: less than one ring each way.)
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
port="$(free_port)"
spawn server "$WORK/server.out" python3 "$script" server "$port"
for _ in $(seq 1 200); do
  grep -q listening "$WORK/server.out" 2>/dev/null && break
  sleep 0.05
done
timeout 60 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/client.log" \
  python3 "$script" client "$port" $((512 * 1024 + 5)) || fail "client exited $?"
expect_log client "accelerated connection to port $port"
expect_log server "accelerated connection accepted"
expect_log server "inherited across exec"
for _ in $(seq 1 100); do
  grep -q "cat exited" "$WORK/server.out" && break
  sleep 0.05
done
grep -q "cat exited 0" "$WORK/server.out" || fail "server: $(cat "$WORK/server.out")"
echo "PASS: accelerated connection across exec"
