#!/bin/bash
# kill -9 at random points of a transfer and of the handshake, on either
# side, against a pre-forking echo server (crash_peer.py) under doorway:
#   A. python clients killed after a random delay (startup, connect,
#      handshake or transfer);
#   B. a raw client killed at each step of the handshake (hostile_peer
#      die-client);
#   C. the worker serving a transfer killed (the master forks a new one);
#   D. a raw server killed at each step of its side of the handshake, with a
#      python client as the survivor (hostile_peer die-server);
#   E. the worker of a client that never waits in the kernel (non-blocking
#      recv and poll(0) only) killed.
# The survivors must see EOF, ECONNRESET or EPIPE within BOUND seconds of the
# kill (the runtime notices a dead peer within its 100 ms liveness interval
# while blocked); workers' fd counts before each accept and a survivor
# client's fds after its close grow at most by the segment reuse pools and arenas; no doorway
# file appears in /dev/shm; the listener keeps accepting (accelerated).
source "$(dirname "$0")/../programs/lib.sh" "$1"
peer="$(realpath "$2")"
prog="$(realpath "$3")"
BOUND=5
seed="${CRASH_SEED:-$RANDOM}"
RANDOM="$seed"
echo "seed $seed (CRASH_SEED=$seed repeats the delays)"
shm_before="$(ls /dev/shm | grep -ci doorway || true)"

wait_for() {  # file pattern seconds
  for _ in $(seq 1 $(($3 * 20))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 within $3 s"
}
count() { grep -c "$2" "$1" || true; }
now() { date +%s.%N; }
MAXLAT=0
note_latency() {  # t_kill t_seen what
  local lat
  lat="$(echo "$2 - $1" | bc)"
  (($(echo "$lat > $BOUND" | bc))) && fail "$3: survivor took $lat s (bound $BOUND s)"
  (($(echo "$lat > $MAXLAT" | bc))) && MAXLAT="$lat"
  return 0
}
S="$WORK/server.out"
# Every accepted connection closed, within BOUND s; the newest CLOSED line's
# time is returned in CLOSED_AT.
wait_closed() {  # what
  local a c
  for _ in $(seq 1 $((BOUND * 20 + 20))); do
    a="$(count "$S" '^ACCEPTED')"
    c="$(count "$S" '^CLOSED')"
    if [ "$a" = "$c" ]; then
      CLOSED_AT="$(grep '^CLOSED' "$S" | tail -1 | awk '{print $5}')"
      return 0
    fi
    sleep 0.05
  done
  fail "$1: $a accepted, $c closed"
}

port="$(free_port)"
spawn server "$S" python3 "$prog" prefork "$port" 3
wait_for "$S" listening 10
under_doorway warm python3 "$prog" once "$port" >/dev/null || fail "warm-up failed"
expect_log warm "accelerated connection"
kills=0

# A. clients killed at random points: half of them once connected (the
# transfer), half after a random delay from their start (startup, connect,
# handshake or transfer).
for i in $(seq 1 12); do
  closed="$(count "$S" '^CLOSED')"
  spawn "a$i" "$WORK/a$i.out" python3 "$prog" echo "$port" 30
  if ((i % 2)); then
    wait_for "$WORK/a$i.out" CONNECTED 10
    sleep "$(printf '0.%03d' $((RANDOM % 200)))"
  else
    sleep "$(printf '0.%03d' $((RANDOM % 400)))"
  fi
  t="$(now)"
  kill -9 "${PIDS[-1]}"
  wait "${PIDS[-1]}" 2>/dev/null || true
  kills=$((kills + 1))
  wait_closed "client kill $i"
  [ "$(count "$S" '^CLOSED')" != "$closed" ] && note_latency "$t" "$CLOSED_AT" "client kill $i"
done
echo "ok: A: 12 clients killed at random points, $(count "$S" '^ACCEPTED') connections accepted in all"

# B. raw clients killed at each handshake step.
for step in 0 1 2 3 4; do
  for rep in 1 2; do
    t="$(now)"
    # (a subshell, so that bash's "Killed" report goes to /dev/null)
    ("$peer" die-client "$DOORS" "$port" 0 "$step" >/dev/null 2>&1; exit $?) 2>/dev/null &&
      fail "die-client $step survived"
    kills=$((kills + 1))
    sleep 0.3  # time for the worker to accept (or drop) the connection
    wait_closed "handshake step $step"
    # A kill before the Hello never reaches the program (the door drops it).
    [ "$step" -ge 1 ] && note_latency "$t" "$CLOSED_AT" "handshake step $step"
  done
done
echo "ok: B: raw clients killed at 5 handshake steps, twice each"

# C. the worker serving a transfer killed.
for i in 1 2 3 4; do
  spawn "c$i" "$WORK/c$i.out" python3 "$prog" echo "$port" 30
  cpid=$!
  wait_for "$WORK/c$i.out" CONNECTED 10
  for _ in $(seq 1 100); do  # the worker that accepted it
    w="$(grep '^ACCEPTED' "$S" | tail -1 | awk '{print $2}')"
    [ "$(count "$S" '^ACCEPTED')" -gt "$(count "$S" '^CLOSED')" ] && break
    sleep 0.05
  done
  sleep "$(printf '0.%03d' $((RANDOM % 200 + 10)))"
  t="$(now)"
  kill -9 "$w"
  kills=$((kills + 1))
  wait_for "$WORK/c$i.out" RESULT $BOUND
  read -r _ why at after < <(grep RESULT "$WORK/c$i.out")
  case "$why" in EOF | ECONNRESET | EPIPE) ;; *) fail "worker kill $i: client saw $why" ;; esac
  note_latency "$t" "$at" "worker kill $i"
  before="$(awk '/CONNECTED/{print $2}' "$WORK/c$i.out")"
  # What the client keeps for its next connections: the segment arena's
  # memfd (transport/segment.h "Arenas"), a spare TCP socket
  # (runtime/spare.h) and the listener's wake FIFO (runtime/reuse.h), one
  # fd each; not the door socket of a connection whose server died.
  [ "$after" -le $((before + 3)) ] || fail "worker kill $i: client fds $before -> $after"
  wait "$cpid" || fail "client $i exited $?"
  # The master replaces the worker; the dead one's connection counts as closed.
  wait_for "$S" "DIED $w" 5
  echo "CLOSED $w killed KILLED $t" >>"$S"
  echo "  worker kill $i: client saw $why"
done
# E. the same for a client that never waits in the kernel (non-blocking recv
# and poll(0) only): it must see the death too (it did not: only waits
# looked at the door socket).
for i in 1 2; do
  spawn "e$i" "$WORK/e$i.out" python3 "$prog" nbecho "$port" 20
  cpid=$!
  wait_for "$WORK/e$i.out" CONNECTED 10
  w="$(grep '^ACCEPTED' "$S" | tail -1 | awk '{print $2}')"
  t="$(now)"
  kill -9 "$w"
  kills=$((kills + 1))
  wait_for "$WORK/e$i.out" RESULT $BOUND
  read -r _ why at after < <(grep RESULT "$WORK/e$i.out")
  case "$why" in EOF | ECONNRESET) ;; *) fail "worker kill $i: non-blocking client saw $why" ;; esac
  note_latency "$t" "$at" "worker kill $i (non-blocking client)"
  wait "$cpid" || fail "client $i exited $?"
  wait_for "$S" "DIED $w" 5
  echo "CLOSED $w killed KILLED $t" >>"$S"
  echo "  worker kill $i: non-blocking client saw $why"
done
under_doorway after-c python3 "$prog" once "$port" >/dev/null || fail "listener stopped accepting"
expect_log after-c "accelerated connection"
echo "ok: C: 4 workers killed mid-transfer, clients saw EOF/ECONNRESET/EPIPE, listener still accepts"

# Workers' fds before each accept: they may grow only by the segments the
# receiver's reuse cache keeps (at most kReusePoolSize = 8).
for w in $(awk '/^WORKER/{print $2}' "$S"); do
  counts="$(awk -v w="$w" '$1 == "IDLE" && $2 == w {print $3}' "$S")"
  [ -z "$counts" ] && continue
  lo="$(echo "$counts" | sort -n | head -1)"
  hi="$(echo "$counts" | sort -n | tail -1)"
  [ "$hi" -le $((lo + 8)) ] || fail "worker $w: fds grew between connections: $(echo $counts)"
done

# D. a server killed at each step of its handshake; the client survives.
for step in 0 1 2 3; do
  p="$(free_port)"
  "$peer" die-server "$DOORS" "$p" 0 "$step" >"$WORK/d$step.out" 2>&1 &
  spid=$!
  wait_for "$WORK/d$step.out" listening 10
  spawn "d$step-client" "$WORK/d$step-client.out" python3 "$(dirname "$prog")/victim.py" lines "$p" 1
  { wait "$spid"; } 2>/dev/null && fail "die-server $step survived"
  t="$(now)"
  kills=$((kills + 1))
  wait_for "$WORK/d$step-client.out" DONE $BOUND
  # At step 0 the server can die before the client's connect returns: the
  # handshake fails, the fallback TCP connect finds the listener gone too,
  # and ECONNREFUSED is what TCP says of a server that died then.
  ok="EOF|ECONNRESET|EPIPE"
  [ "$step" = 0 ] && ok="$ok|connect:ECONNREFUSED"
  grep -qE "^CLOSED 0 ($ok) " "$WORK/d$step-client.out" ||
    fail "server death at step $step: client saw $(cat "$WORK/d$step-client.out")"
  grep -q "connect:" "$WORK/d$step-client.out" || expect_log "d$step-client" "accelerated connection"
  echo "  server killed at handshake step $step: client $(grep CLOSED "$WORK/d$step-client.out")"
done
echo "ok: D: servers killed at 4 handshake steps"

shm_after="$(ls /dev/shm | grep -ci doorway || true)"
[ "$shm_after" = "$shm_before" ] || fail "doorway files in /dev/shm: $shm_before -> $shm_after"
under_doorway final python3 "$prog" once "$port" >/dev/null || fail "listener stopped accepting"
echo "PASS: $kills kills; slowest survivor noticed in $MAXLAT s (bound $BOUND s)"
