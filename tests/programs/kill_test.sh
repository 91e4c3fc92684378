#!/bin/bash
# kill -9 of either side of an accelerated connection mid-transfer: the
# survivor must see EOF or ECONNRESET within a bounded time (10 s here; the
# runtime notices a dead peer within its liveness interval, 100 ms, while
# blocked), and the next listener on the port must replace the stale door.
source "$(dirname "$0")/lib.sh" "$1"
script="$2"

wait_for() {  # file pattern seconds
  for _ in $(seq 1 $(($3 * 20))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 within $3 s: $(cat "$1" 2>/dev/null)"
}

run_case() {  # name survivor_mode victim_mode victim_is_server
  local name="$1" survivor="$2" victim="$3" victim_is_server="$4" port spid vpid
  port="$(free_port)"
  if [ "$victim_is_server" = 1 ]; then
    spawn "$name-victim" "$WORK/$name-victim.out" python3 "$script" "$victim" "$port"
    vpid=$!
    wait_for "$WORK/$name-victim.out" listening 10
    spawn "$name-survivor" "$WORK/$name-survivor.out" python3 "$script" "$survivor" 127.0.0.1 "$port"
    spid=$!
  else
    spawn "$name-survivor" "$WORK/$name-survivor.out" python3 "$script" "$survivor" "$port"
    spid=$!
    wait_for "$WORK/$name-survivor.out" listening 10
    spawn "$name-victim" "$WORK/$name-victim.out" python3 "$script" "$victim" 127.0.0.1 "$port"
    vpid=$!
  fi
  PIDS+=("$spid" "$vpid")
  wait_for "$WORK/$name-survivor.out" streaming 10
  sleep 0.3
  kill -9 "$vpid"
  wait_for "$WORK/$name-survivor.out" RESULT 10
  grep -qE "RESULT (EOF|ECONNRESET)" "$WORK/$name-survivor.out" ||
    fail "$name: survivor saw $(grep RESULT "$WORK/$name-survivor.out")"
  wait "$spid" || fail "$name: survivor exited $?"
  expect_log "$name-survivor" "accelerated connection"
  echo "ok: $name: $(grep RESULT "$WORK/$name-survivor.out")"
  LAST_PORT="$port"
}

run_case client-killed reader writer 0
run_case server-killed drainer sender 1
# The killed server left its door behind; a new listener on the same port
# must remove it and accelerate again.
[ -n "$(ls -A "$DOORS")" ] || fail "expected the killed server's stale door"
port="$LAST_PORT"
spawn again "$WORK/again.out" python3 "$script" reader "$port"
PIDS+=($!)
wait_for "$WORK/again.out" listening 10
printf 'x%.0s' $(seq 1 1000) | under_doorway again-client python3 -c "
import socket, sys
s = socket.create_connection(('127.0.0.1', $port))
s.sendall(sys.stdin.buffer.read()); s.close()"
wait_for "$WORK/again.out" RESULT 10
grep -q "RESULT EOF 1000" "$WORK/again.out" || fail "after a stale door: $(cat "$WORK/again.out")"
expect_log again-client "accelerated connection"
echo "PASS: kill -9 of either side"
