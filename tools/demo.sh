#!/bin/bash
# The main job: a real program pair under doorway. python3's http.server
# serves a file and curl fetches it, both through //tools:preload; then the
# demo prints what doorway saw in each process and checks the bytes.
set -euo pipefail

here="${RUNFILES_DIR:-$0.runfiles}/doorway"
[ -x "$here/tools/preload" ] || here="$(cd "$(dirname "$0")/.." && pwd)"
PRELOAD="${DOORWAY_DEMO_PRELOAD:-$here/tools/preload}"
[ -x "$PRELOAD" ] || { echo "demo: cannot find tools/preload" >&2; exit 1; }

work="$(mktemp -d /tmp/doorway-demo.XXXXXX)"
# The demo's own door directory, so that it does not depend on /tmp/doorway-$UID.
export DOORWAY_DIR="$work/doors"
mkdir -m 700 "$DOORWAY_DIR"
server=""
cleanup() {
  if [ -n "$server" ]; then
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/www"
size=$((16 * 1024 * 1024))
head -c "$size" /dev/urandom >"$work/www/payload.bin"
echo "== doorway demo: python3 -m http.server and curl, both under doorway"
# The server binds port 0 and the demo reads the port it got from its banner
# (-u: unbuffered, or the banner would wait in stdio's buffer until exit). A
# port picked beforehand and then bound by the server can be taken meanwhile
# by any connect's ephemeral port on a busy machine.
DOORWAY_LOG=debug DOORWAY_LOG_FILE="$work/server.log" \
  "$PRELOAD" -- python3 -u -m http.server 0 --bind 127.0.0.1 --directory "$work/www" \
  >"$work/server.out" 2>&1 &
server=$!
port=""
for _ in $(seq 1 400); do
  port="$(sed -n 's/^Serving HTTP on [^ ]* port \([0-9]*\) .*/\1/p' "$work/server.out" 2>/dev/null)"
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.05
done
if [ -z "$port" ]; then
  echo "demo: the server did not start; its output:" >&2
  cat "$work/server.out" >&2
  exit 1
fi
echo "server: pid $server, http://127.0.0.1:$port/"

start=$(date +%s.%N)
DOORWAY_LOG=debug DOORWAY_LOG_FILE="$work/client.log" \
  "$PRELOAD" --stats -- curl -sS --max-time 60 -o "$work/got.bin" "http://127.0.0.1:$port/payload.bin" || {
  rc=$?
  echo "demo: curl failed ($rc); the server's output, then both doorway logs:" >&2
  tail -20 "$work/server.out" "$work/server.log" "$work/client.log" >&2 || true
  exit "$rc"
}
end=$(date +%s.%N)

want="$(sha256sum "$work/www/payload.bin" | cut -d' ' -f1)"
got="$(sha256sum "$work/got.bin" | cut -d' ' -f1)"
secs="$(python3 -c "print(f'{$end - $start:.3f}')")"
echo "client: curl fetched $(stat -c %s "$work/got.bin") bytes in ${secs} s"
echo
show() {
  local loads
  loads="$(grep -c "loaded into" "$1" || true)"
  echo "   runtime loaded into $loads program(s) (pyenv shims count too): $(grep -o 'loaded into [^ ;]*' "$1" |
    cut -d' ' -f3 | sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}')"
  grep -v "loaded into" "$1" | sed 's/^/   /' || true
}
echo "-- what doorway saw in the server (DOORWAY_LOG=debug):"
show "$work/server.log"
echo "-- what doorway saw in curl (its last line is --stats' summary at exit):"
show "$work/client.log"
STAT="$(dirname "$PRELOAD")/stat"
if [ -x "$STAT" ]; then
  echo "-- bazel run //tools:stat, with the server still running (curl's connection is closed):"
  "$STAT" --dir="$DOORWAY_DIR" | sed 's/^./   &/'
fi
echo
if [ "$want" = "$got" ]; then
  echo "bytes: sha256 $got matches"
else
  echo "bytes: MISMATCH (want $want, got $got)"
  exit 1
fi
if grep -q "accelerated connection accepted" "$work/server.log" &&
  grep -q "accelerated connection to port $port" "$work/client.log"; then
  echo "transport: doorway shared memory (the connection never touched the loopback TCP stack)"
else
  echo "transport: kernel TCP (the connection was not accelerated)"
fi
