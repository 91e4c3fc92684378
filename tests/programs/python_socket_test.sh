#!/bin/bash
# A python client and server exchange random data, both under doorway.
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
port="$(free_port)"
# At least 1 GiB each way, in random chunk sizes (issue 4).
export DATA_BYTES=$((1024 * 1024 * 1024 + 4321))
spawn server "$WORK/server.out" python3 "$script" server "$port"
wait_port_file() {
  for _ in $(seq 1 200); do
    grep -q listening "$WORK/server.out" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "python server did not start"
}
wait_port_file
timeout 120 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/client.log" \
  python3 "$script" client "$port" 7 || fail "python client exited $?"
wait "${PIDS[0]}" || fail "python server exited $?"
PIDS=()
expect_log client "accelerated connection to port $port"
expect_log server "accelerated connection accepted"
echo "PASS: python socket exchange over doorway shared memory"
