# Helpers for tests that run real programs under the preload.
# Usage: source lib.sh "$(rootpath //abi:libdoorway.so)"
set -euo pipefail

DOORWAY_SO="$(realpath "$1")"
WORK="${TEST_TMPDIR:-$(mktemp -d)}"
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log; do
    [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }
  done
  exit 1
}

# Runs "$@" with doorway preloaded and debug logging into $WORK/<name>.log.
under_doorway() {
  local name="$1"
  shift
  LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/$name.log" "$@"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (at most ~10 s) until something listens on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  fail "nothing listening on port $1"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Asserts that the doorway log $1 exists, shows the runtime loaded, and
# contains the pattern $2.
expect_log() {
  local log="$WORK/$1.log"
  [ -s "$log" ] || fail "no doorway log $log: was the runtime loaded?"
  grep -q "loaded" "$log" || fail "$log: runtime never initialised"
  grep -qE "$2" "$log" || fail "$log: no line matching '$2'"
}
