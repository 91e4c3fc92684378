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
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

echo "== doorway demo: python3 -m http.server and curl, both under doorway"
DOORWAY_LOG=debug DOORWAY_LOG_FILE="$work/server.log" \
  "$PRELOAD" -- python3 -m http.server "$port" --bind 127.0.0.1 --directory "$work/www" \
  >"$work/server.out" 2>&1 &
server=$!
for _ in $(seq 1 200); do
  grep -q "Serving HTTP" "$work/server.out" 2>/dev/null && break
  sleep 0.05
done
echo "server: pid $server, http://127.0.0.1:$port/"

start=$(date +%s.%N)
DOORWAY_LOG=debug DOORWAY_LOG_FILE="$work/client.log" \
  "$PRELOAD" --stats -- curl -sS --max-time 60 -o "$work/got.bin" "http://127.0.0.1:$port/payload.bin"
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
