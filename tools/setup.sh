#!/bin/bash
# Installs every Debian 12 package that doorway's build, tests and benchmarks
# need. Idempotent: installs only what is missing; safe to run again.
set -euo pipefail

PACKAGES=(
  # build
  bazel-bootstrap g++ clang libclang-rt-14-dev
  liburing-dev libnuma-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  # tests and the demo: real programs run under doorway
  curl socat python3 libpython3.11-testsuite procps iproute2 util-linux coreutils
  nodejs postgresql
  # benchmarks
  numactl sockperf redis-server redis-tools nginx-light
  iperf3 wrk python3-matplotlib
  # code hygiene
  clang-format clang-tidy
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: all ${#PACKAGES[@]} packages present"
