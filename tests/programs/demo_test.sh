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
echo "PASS: demo"
