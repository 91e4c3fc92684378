#!/bin/bash
# CPython's own socket test suite, natively and under doorway (issue 4):
#
#   python3 -m test test_socket -i '*VSOCK*'
#
# Both runs use the same python: Debian's /usr/bin/python3 (its test package
# comes from libpython3.11-testsuite, which tools/setup.sh installs), else
# python3 from PATH if that one ships its test package. The test fails
# if the preloaded run has any failing or erroring test that the native run
# does not have, if either run did not finish, or if the preloaded run shows
# no accelerated connections in its doorway log.
#
# Exclusions: only the VSOCK tests (-i '*VSOCK*'; they hang on VMs without a
# vsock transport). The whole rest of the suite runs, one process per run,
# sequentially: ~30 s natively and ~45 s under doorway on 2 cores, well
# inside the ~6 minute budget, so neither -j nor further exclusions are
# needed. Bounds: regrtest's --timeout (per test: a hung test dumps its
# traceback and ends the run) and `timeout` around each run.
#
# Usage: cpython_socket_test.sh <libdoorway.so> [MODULE MIN_ACCELERATED]
# MODULE defaults to test_socket. Any other module runs through
# tcp_socketpair_run.py (socket.socketpair() gives TCP pairs, so that its
# tests' connections can be accelerated), natively and under doorway alike.
# CPY_PYTHON (e.g. --test_env=CPY_PYTHON=/path/python3) picks another python.
source "$(dirname "$0")/lib.sh" "$1"
MODULE="${2:-test_socket}"

PY="${CPY_PYTHON:-}"
if [ -z "$PY" ]; then
  PY=python3
  /usr/bin/python3 -c 'import test.test_socket' 2>/dev/null && PY=/usr/bin/python3
fi
PER_TEST_TIMEOUT=120  # seconds, regrtest --timeout
RUN_TIMEOUT=400       # seconds per whole run (two runs < the 900 s of size "large")
MIN_ACCELERATED="${3:-50}"  # "accelerated connection" log lines the preloaded run must show

command -v "$PY" >/dev/null || fail "$PY not found"
"$PY" -c "import test.$MODULE" 2>/dev/null ||
  fail "$("$PY" -c 'import sys; print(sys.executable)') has no test.$MODULE" \
    "(Debian: apt-get install libpython3.11-testsuite; tools/setup.sh installs it)"

# A short temporary directory: some tests bind AF_UNIX sockets under $TMPDIR,
# and a Unix socket path holds only 108 bytes (Bazel's TEST_TMPDIR is long).
SCRATCH="$(mktemp -d /tmp/doorway-cpy.XXXXXX)"
trap 'cleanup; rm -rf "$SCRATCH"' EXIT

if [ "$MODULE" = test_socket ]; then
  RUNNER=("$PY" -m test)
  EXCLUDE=(-i '*VSOCK*')
else
  RUNNER=("$PY" "$(dirname "$(realpath "$0")")/tcp_socketpair_run.py")
  EXCLUDE=()
fi

# run_suite NAME [env assignments...]: runs the suite with the given extra
# environment; output in $WORK/NAME.out, results in $WORK/NAME.xml (JUnit,
# written only when the run completes). Returns regrtest's exit status.
run_suite() {
  local name="$1"
  shift
  mkdir -p "$SCRATCH/$name"
  (
    cd "$SCRATCH/$name"
    timeout -k 10 "$RUN_TIMEOUT" env TMPDIR="$SCRATCH/$name" "$@" \
      "${RUNNER[@]}" "$MODULE" "${EXCLUDE[@]}" -v --timeout "$PER_TEST_TIMEOUT" \
      --junit-xml "$WORK/$name.xml"
  ) >"$WORK/$name.out" 2>&1
}

# Reads $WORK/NAME.xml: prints "run failed skipped" on the first line, then
# the ids of the failing and erroring tests.
RESULTS_PY='
import sys
import xml.etree.ElementTree as ET
cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
bad = sorted({c.get("name") for c in cases
              if c.find("error") is not None or c.find("failure") is not None})
skipped = sum(1 for c in cases if c.find("skipped") is not None)
print(len(cases), len(bad), skipped)
print("\n".join(bad))
'

# summarize NAME: checks that the run completed, writes its failing tests to
# $WORK/NAME.failed, sets RAN and prints the counts.
summarize() {
  local name="$1" failed skipped
  if [ ! -s "$WORK/$name.xml" ]; then
    tail -40 "$WORK/$name.out" >&2
    fail "$name run did not finish (no $name.xml: hung, timed out or crashed?)"
  fi
  "$PY" -c "$RESULTS_PY" "$WORK/$name.xml" >"$WORK/$name.results" ||
    fail "cannot read $WORK/$name.xml"
  read -r RAN failed skipped <"$WORK/$name.results"
  tail -n +2 "$WORK/$name.results" | sed "/^$/d" | LC_ALL=C sort >"$WORK/$name.failed"
  echo "$name: $RAN run, $failed failed or errored, $skipped skipped"
}

echo "native run ($("$PY" --version 2>&1))..."
native_rc=0
run_suite native || native_rc=$?
summarize native
native_ran="$RAN"

echo "doorway run..."
doorway_rc=0
run_suite doorway LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug \
  DOORWAY_LOG_FILE="$WORK/doorway.log" || doorway_rc=$?
summarize doorway
doorway_ran="$RAN"

echo "native exit $native_rc, doorway exit $doorway_rc"
[ "$native_ran" = "$doorway_ran" ] ||
  fail "the runs ran different numbers of tests: native $native_ran, doorway $doorway_ran"

if [ -s "$WORK/native.failed" ]; then
  echo "failing natively too (not held against doorway):"
  sed 's/^/  /' "$WORK/native.failed"
fi
new="$(LC_ALL=C comm -13 "$WORK/native.failed" "$WORK/doorway.failed")"
if [ -n "$new" ]; then
  echo "failing only under doorway:" >&2
  echo "$new" | sed 's/^/  /' >&2
  # The tracebacks of those tests, from the doorway run's summary.
  awk '/^=+$/ { show = 1 } show' "$WORK/doorway.out" | head -300 >&2 || true
  fail "$(echo "$new" | wc -l) test(s) fail only under doorway"
fi

# The preloaded run must really have gone through shared memory.
accelerated="$(grep -c 'accelerated connection' "$WORK/doorway.log" || true)"
grep -q 'accelerated connection to port' "$WORK/doorway.log" ||
  fail "no accelerated connect in the doorway log"
grep -q 'accelerated connection accepted' "$WORK/doorway.log" ||
  fail "no accelerated accept in the doorway log"
[ "$accelerated" -ge "$MIN_ACCELERATED" ] ||
  fail "only $accelerated 'accelerated connection' log lines (want >= $MIN_ACCELERATED)"

echo "PASS: $MODULE: $doorway_ran tests, no failure added by doorway;" \
  "$accelerated accelerated connection ends logged"
