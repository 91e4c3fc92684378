#!/bin/bash
# The README's main job (tools/demo.sh) must run and end accelerated.
set -euo pipefail
export DOORWAY_DEMO_PRELOAD="$(realpath "$1")"
rc=0
out="$(bash "$2" 2>&1)" || rc=$?
[ "$rc" = 0 ] || { echo "$out"; echo "FAIL: demo exited $rc"; exit 1; }
echo "$out" | tail -3
echo "$out" | grep -q "sha256 .* matches" || { echo "FAIL: bytes"; exit 1; }
echo "$out" | grep -q "transport: doorway shared memory" || { echo "FAIL: not accelerated"; exit 1; }
# curl's --stats summary: one accelerated connection that received the file.
echo "$out" | grep -qE "stats: 1 accelerated connection\(s\) \(0 still open at exit; 1 connect\(s\) and 0 accept\(s\) accelerated\), sent [0-9]+ bytes in [0-9]+ writes, received 167[0-9]{5} bytes" ||
  { echo "FAIL: no --stats summary from curl"; exit 1; }
# stat's process table lists the server with what it sent.
echo "$out" | grep -qE "^ +PID +COMMAND +ACCEL" || { echo "FAIL: no stat table"; exit 1; }
echo "PASS: demo"
