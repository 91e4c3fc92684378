#!/bin/bash
# socat echo server and socat client, both under doorway.
source "$(dirname "$0")/lib.sh" "$1"
command -v socat >/dev/null || fail "socat not installed (tools/setup.sh installs it)"

head -c $((4 * 1024 * 1024 + 777)) /dev/urandom >"$WORK/in.bin"
port="$(free_port)"
spawn server "$WORK/server.err" socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" PIPE
wait_port "$port"

timeout 60 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/client.log" \
  socat -t 30 - "TCP:127.0.0.1:$port" <"$WORK/in.bin" >"$WORK/out.bin" || fail "socat client exited $?"
[ "$(sha "$WORK/out.bin")" = "$(sha "$WORK/in.bin")" ] ||
  fail "echo differs: sent $(stat -c %s "$WORK/in.bin"), got $(stat -c %s "$WORK/out.bin")"
expect_log client "accelerated connection to port $port"
expect_log server "accelerated connection accepted"
echo "PASS: socat echo over doorway shared memory, $(stat -c %s "$WORK/out.bin") bytes, sha256 match"
