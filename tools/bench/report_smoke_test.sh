#!/bin/bash
# Smoke test of the benchmark report (bazel run //tools:bench -- --quick):
# it runs every benchmark with tiny counts and writes the report and the
# plots. It asserts nothing about the numbers (they are meaningless at these
# counts on a loaded machine), only that the run completes, that every
# doorway run was accelerated (the report fails the run otherwise) and that
# the report has its parts.
set -euo pipefail
report="$1"
out="${TEST_TMPDIR:-$(mktemp -d)}/out"
# nginx is in /usr/sbin, outside Bazel's default test PATH.
export PATH="$PATH:/usr/sbin:/sbin"
fail() {
  echo "FAIL: $*" >&2
  exit 1
}
timeout 240 "$report" --quick --out-dir "$out" || fail "report exited $?"
md="$out/benchmarks.md"
for f in "$md" "$out/benchmarks-latency.png" "$out/benchmarks-throughput.png"; do
  [ -s "$f" ] || fail "$f missing or empty"
done
for png in "$out"/*.png; do
  [ "$(head -c 8 "$png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$png is no PNG"
done
grep -q "QUICK MODE" "$md" || fail "quick run not marked as such"
grep -q "^## Targets" "$md" || fail "no targets table"
grep -Eq "Every doorway run was checked \([1-9][0-9]* runs\)" "$md" || fail "no accelerated run checked"
for t in "kernel TCP" "Unix socket" "doorway" "floor"; do
  grep -q "| RTT 64 B p50 (µs) | $t |" "$md" || fail "no 64 B RTT row for $t"
  grep -q "| stream 64 KiB writes (GB/s) | $t |" "$md" || fail "no 64 KiB streaming row for $t"
done
for row in "connect+accept+close" "idle CPU, server" "one core: RTT 64 B p50" "sockperf epoll p50" \
  "iperf3" "redis-benchmark GET" "wrk -> nginx"; do
  grep -q "| $row" "$md" || fail "no '$row' row"
done
echo "PASS: report and plots written ($(wc -l <"$md") lines)"
