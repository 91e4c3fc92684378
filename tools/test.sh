#!/bin/bash
# The whole test suite, from a fresh Debian 12 machine: installs what is
# missing, then runs every Bazel test. This is the README's test command and
# what CI (.ci/run) runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# A disk cache outside the clone: CI clones into a new folder every time.
cache="${DOORWAY_DISK_CACHE:-$HOME/.cache/doorway/bazel-disk}"
mkdir -p "$cache"
status=0
bazel test --disk_cache="$cache" //... || status=$?
# Sanitizers (issue 10, docs/reliability.md): the transport and fdtable
# tests, the runtime's unit tests, the multi-process stress test and the
# conformance suites with the runtime linked in (the process suite: its
# thread and signal-handler cases), under ASAN+UBSAN (one build)
# and TSAN. Debug builds in their own output directory, in the same disk
# cache (a few minutes each from cold on 2 cores, seconds when cached).
# SKIP_SANITIZERS=1 skips them for a quick local run.
sanitized=(
  //transport:ring_test //transport:segment_test //transport:wait_test
  //transport:shm_mutex_test //transport:lock_bias_test //transport:stress_test //transport:fence_test
  //fdtable:all //runtime:all
  //tests/linked:all //tests/conformance:socket_conformance_linked_test
  //tests/conformance:process_threads_linked_test
)
if [ "${SKIP_SANITIZERS:-0}" != 1 ]; then
  bazel test --disk_cache="$cache" --config=asan --config=ubsan "${sanitized[@]}" || status=$?
  bazel test --disk_cache="$cache" --config=tsan "${sanitized[@]}" || status=$?
fi
bazel shutdown >/dev/null 2>&1 || true
exit "$status"
