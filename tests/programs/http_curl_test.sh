#!/bin/bash
# curl fetches a file from python3 -m http.server, both under doorway.
source "$(dirname "$0")/lib.sh" "$1"
command -v curl >/dev/null || fail "curl not installed (tools/setup.sh installs it)"

mkdir -p "$WORK/www"
head -c $((8 * 1024 * 1024 + 12345)) /dev/urandom >"$WORK/www/blob.bin"
port="$(free_port)"
spawn server "$WORK/server.out" python3 -m http.server "$port" --bind 127.0.0.1 \
  --directory "$WORK/www"
wait_port "$port"

under_doorway client curl -sS --max-time 60 -o "$WORK/got.bin" "http://127.0.0.1:$port/blob.bin" ||
  fail "curl exited with $?"
[ "$(sha "$WORK/got.bin")" = "$(sha "$WORK/www/blob.bin")" ] || fail "bytes differ"
# A 404 comes back as curl's exit code 22 with --fail, through doorway too.
set +e
under_doorway client404 curl -sS --fail --max-time 10 -o /dev/null "http://127.0.0.1:$port/missing"
rc=$?
set -e
[ "$rc" = 22 ] || fail "curl --fail on a 404 exited $rc, expected 22"

expect_log client "accelerated connection to port $port"
expect_log server "accelerated connection accepted"
echo "PASS: curl <- http.server over doorway shared memory, $(stat -c %s "$WORK/got.bin") bytes, sha256 match"
