#!/bin/bash
# Bounded libFuzzer run of //transport:ring_fuzzer, part of `bazel test`.
# A longer run is documented in docs/transport.md.
set -euo pipefail
fuzzer="$1"
runs="${2:-20000}"
corpus="${TEST_TMPDIR:-$(mktemp -d)}/corpus"
mkdir -p "$corpus"
# -max_total_time bounds the wall time even on a loaded machine.
exec "$fuzzer" -runs="$runs" -max_total_time=60 -seed=1 -max_len=2048 \
  -rss_limit_mb=1024 -print_final_stats=1 "$corpus"
