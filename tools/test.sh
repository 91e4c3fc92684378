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
bazel shutdown >/dev/null 2>&1 || true
exit "$status"
