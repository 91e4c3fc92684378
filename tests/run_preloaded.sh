#!/bin/bash
# Runs a test binary with doorway preloaded (the second half of a
# native/preloaded pair). The binary checks DOORWAY_EXPECT_LOADED itself, so
# a run in which the preload silently failed cannot pass.
set -euo pipefail
so="$(realpath "$1")"
bin="$2"
shift 2
export LD_PRELOAD="${so}${LD_PRELOAD:+:$LD_PRELOAD}"
export DOORWAY_EXPECT_LOADED=1
exec "$bin" "$@"
