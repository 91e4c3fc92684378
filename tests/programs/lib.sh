# Helpers for tests that run real programs under the preload.
# Usage: source lib.sh "$(rootpath //abi:libdoorway.so)"
set -euo pipefail

DOORWAY_SO="$(realpath "$1")"
WORK="${TEST_TMPDIR:-$(mktemp -d)}"
PIDS=()
# A door directory of this test's own (short: a Unix socket path holds only
# 108 bytes), so that tests running in parallel never see each other's doors.
DOORS="$(mktemp -d /tmp/doorway-test.XXXXXX)"
chmod 700 "$DOORS"
export DOORWAY_DIR="$DOORS"

cleanup() {
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null || true
  done
  rm -rf "$DOORS"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/*.log "$WORK"/*.out "$WORK"/logs/*.log; do
    [ -f "$f" ] && { echo "--- $f" >&2; grep -v "loaded into" "$f" | tail -20 >&2; }
  done
  exit 1
}

# Runs "$@" with doorway preloaded and debug logging into $WORK/<name>.log.
under_doorway() {
  local name="$1"
  shift
  LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/$name.log" "$@"
}

# Starts "$@" in the background under doorway, output to $out, and adds it
# to PIDS. $! is the program itself (env execs it), not a subshell, so that
# kill reaches the program.
spawn() {  # name out cmd...
  local name="$1" out="$2"
  shift 2
  env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/$name.log" "$@" \
    >"$out" 2>&1 &
  PIDS+=($!)
}

# A port below the ephemeral range: a port the kernel picked for bind(0) is
# free now but may be handed to any test's connecting socket (accelerated
# clients bind one too) before this test binds it (EADDRINUSE seen with
# tests making thousands of connections beside it).
free_port() {
  python3 -c '
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(200):
    p = random.randint(max(1024, low - 12000), low - 1)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
'
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

# Asserts that the door directory is empty (every listener removed its door).
expect_no_doors() {
  local left
  left="$(ls -A "$DOORS")"
  [ -z "$left" ] || fail "doors left behind: $left"
}

# Asserts that log $1 has no line matching $2.
expect_no_log() {
  local log="$WORK/$1.log"
  if [ -f "$log" ] && grep -qE "$2" "$log"; then
    fail "$log: unexpected line matching '$2'"
  fi
}

# Asserts that the doorway log $1 exists, shows the runtime loaded, and
# contains the pattern $2.
expect_log() {
  local log="$WORK/$1.log"
  [ -s "$log" ] || fail "no doorway log $log: was the runtime loaded?"
  grep -q "loaded" "$log" || fail "$log: runtime never initialised"
  grep -qE "$2" "$log" || fail "$log: no line matching '$2'"
}
