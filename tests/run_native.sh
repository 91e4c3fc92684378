#!/bin/bash
# Runs a test binary as is (the native half of a native/preloaded pair).
set -euo pipefail
bin="$1"
shift
export DOORWAY_EXPECT_LOADED=0
exec "$bin" "$@"
