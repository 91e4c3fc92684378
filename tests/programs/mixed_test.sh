#!/bin/bash
# Connections doorway must leave to the kernel: one side without doorway,
# DOORWAY_DISABLE=1, a server of another uid. Each must still work, byte for
# byte, over plain TCP.
source "$(dirname "$0")/lib.sh" "$1"

mkdir -p "$WORK/www"
head -c $((2 * 1024 * 1024 + 99)) /dev/urandom >"$WORK/www/blob.bin"
want="$(sha "$WORK/www/blob.bin")"

start_server() {  # name port doorway|plain
  local name="$1" port="$2"
  if [ "$3" = doorway ]; then
    spawn "$name" "$WORK/$name.out" python3 -m http.server "$port" --bind 127.0.0.1 \
      --directory "$WORK/www"
  else
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$WORK/www" \
      >"$WORK/$name.out" 2>&1 &
    PIDS+=($!)
  fi
  wait_port "$port"
}

fetch() {  # port out [prefix...]
  local port="$1" out="$2"
  shift 2
  "$@" curl -sS --max-time 30 -o "$out" "http://127.0.0.1:$port/blob.bin" || fail "curl exited $?"
  [ "$(sha "$out")" = "$want" ] || fail "bytes differ ($out)"
}

# 1. doorway server, plain client.
p1="$(free_port)"
start_server s1 "$p1" doorway
fetch "$p1" "$WORK/got1"
expect_log s1 "accelerated listener"
expect_no_log s1 "accelerated connection accepted"
echo "ok: doorway server + plain curl over TCP"

# 2. plain server, doorway client.
p2="$(free_port)"
start_server s2 "$p2" plain
fetch "$p2" "$WORK/got2" under_doorway c2
expect_log c2 "new socket"
expect_no_log c2 "accelerated connection"
echo "ok: plain server + doorway curl over TCP"

# 3. both under doorway, but the client has DOORWAY_DISABLE=1.
fetch "$p1" "$WORK/got3" env DOORWAY_DISABLE=1 LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug \
  DOORWAY_LOG_FILE="$WORK/c3.log"
expect_log c3 "disabled"
expect_no_log s1 "accelerated connection accepted"
echo "ok: DOORWAY_DISABLE=1 client over TCP"

# 3b. both under doorway, the client has DOORWAY_ACCELERATE=0 (tracked, not accelerated).
fetch "$p1" "$WORK/got3b" env DOORWAY_ACCELERATE=0 LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug \
  DOORWAY_LOG_FILE="$WORK/c3b.log"
expect_log c3b "new socket"
expect_no_log c3b "accelerated connection"
expect_no_log s1 "accelerated connection accepted"
echo "ok: DOORWAY_ACCELERATE=0 client over TCP"

# 4. both under doorway, the client accelerated (control for 5).
fetch "$p1" "$WORK/got4" under_doorway c4
expect_log c4 "accelerated connection to port $p1"
echo "ok: doorway on both sides accelerated"

# 5. a doorway server of another uid: the client (root) must not trust its
# door and connects over TCP; the server's door directory is its own.
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && command -v setpriv >/dev/null; then
  shared="$(mktemp -d /tmp/doorway-uid.XXXXXX)"
  chmod 755 "$shared"
  cp "$DOORWAY_SO" "$shared/libdoorway.so"
  cp -r "$WORK/www" "$shared/www"
  chmod -R a+rX "$shared"
  other_doors="$shared/doors"
  mkdir "$other_doors"
  chown nobody "$other_doors"
  chmod 700 "$other_doors"
  p5="$(free_port)"
  (cd "$shared" && exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
    env LD_PRELOAD="$shared/libdoorway.so" DOORWAY_DIR="$other_doors" \
    python3 -m http.server "$p5" --bind 127.0.0.1 --directory "$shared/www" \
    >"$WORK/s5.out" 2>&1) &
  PIDS+=($!)
  wait_port "$p5"
  [ -n "$(ls -A "$other_doors")" ] || fail "the other uid's server opened no door"
  DOORWAY_DIR="$other_doors" fetch "$p5" "$WORK/got5" under_doorway c5
  expect_no_log c5 "accelerated connection"
  rm -rf "$shared"
  echo "ok: server of another uid over TCP"
else
  echo "skip: server of another uid (needs root, user nobody and setpriv)"
fi
echo "PASS: mixed pairs"
