#!/bin/bash
# Runs exec_family natively and under the preload; the output must be the
# expected three lines both times.
set -euo pipefail
so="$(realpath "$1")"
bin="$2"
want=$'execl ok\nexeclp ok\nDOORWAY_EXECLE=ok'
native="$("$bin")"
preloaded="$(LD_PRELOAD="$so" DOORWAY_LOG=info DOORWAY_LOG_FILE="$TEST_TMPDIR/log" "$bin")"
[ "$native" = "$want" ] || { echo "FAIL native: $native"; exit 1; }
[ "$preloaded" = "$want" ] || { echo "FAIL preloaded: $preloaded"; exit 1; }
grep -q "loaded into exec_family" "$TEST_TMPDIR/log" || { echo "FAIL: doorway not loaded"; exit 1; }
echo "PASS: execl family"
