#!/bin/bash
# A hostile peer (hostile_peer.cc) against real programs under doorway: it
# completes the door handshake, proves the victim took the segment, then
# scribbles on the header, indices, states, futex words and end locks,
# attacks the memfd and floods the door socket. Meanwhile good clients keep
# exchanging data with the same victim. The victim must never crash or stall
# (good clients time out after 10 s without an echo), must close every
# hostile connection within 15 s after the peer is gone, and must end with
# the fds and segment mappings it had before the attack, plus at most what
# the segment reuse pools keep (8 fds; 8 + 32 mappings).
source "$(dirname "$0")/../programs/lib.sh" "$1"
peer="$(realpath "$2")"
victim="$(realpath "$3")"
seed="${HOSTILE_SEED:-$RANDOM}"
echo "seed $seed (HOSTILE_SEED=$seed reproduces the attacks)"

wait_for() {  # file pattern seconds
  for _ in $(seq 1 $(($3 * 20))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 within $3 s"
}
fds() { ls "/proc/$1/fd" | wc -l; }
segments() { grep -c 'memfd:doorway' "/proc/$1/maps" || true; }
alive() { kill -0 "$1" 2>/dev/null || fail "$2 died: $(tail -5 "$WORK/$2.out")"; }

# Waits until every connection the server accepted is closed (at most 15 s).
wait_all_closed() {  # out
  local a c
  for _ in $(seq 1 300); do
    a="$(grep -c '^ACCEPTED' "$1" || true)"
    c="$(grep -c '^CLOSED' "$1" || true)"
    [ "$a" = "$c" ] && return 0
    sleep 0.05
  done
  fail "$1: $a connections accepted, only $c closed 15 s after the peer left"
}

server_case() {  # select|threads
  local mode="$1" name="victim-$1" port vpid base_fds base_segs
  port="$(free_port)"
  spawn "$name" "$WORK/$name.out" python3 "$victim" "$mode" "$port"
  vpid=$!
  wait_for "$WORK/$name.out" listening 10
  # One exchange first, so that everything the runtime opens lazily is open.
  touch "$WORK/stop-warm"
  under_doorway "$name-warm" python3 "$victim" good "$port" "$WORK/stop-none" 0.2 >/dev/null ||
    fail "warm-up client failed"
  expect_log "$name-warm" "accelerated connection"
  wait_all_closed "$WORK/$name.out"
  base_fds="$(fds "$vpid")"
  base_segs="$(segments "$vpid")"
  rm -f "$WORK/stop"
  local goods=()
  for g in 1 2; do
    spawn "$name-good$g" "$WORK/$name-good$g.out" python3 "$victim" good "$port" "$WORK/stop" 50
    goods+=($!)
  done
  "$peer" client "$DOORS" "$port" "$seed" 24 >"$WORK/$name-peer.out" 2>"$WORK/$name-peer.log" ||
    fail "$mode: hostile peer exited $?: $(tail -3 "$WORK/$name-peer.log")"
  touch "$WORK/stop"
  for g in "${goods[@]}"; do wait "$g" || fail "$mode: a good client failed"; done
  alive "$vpid" "$name"
  wait_all_closed "$WORK/$name.out"
  alive "$vpid" "$name"
  local bad
  bad="$(grep '^CLOSED' "$WORK/$name.out" | grep -vE ' (EOF|ECONNRESET|EIO|EPIPE|BACKLOG)$' || true)"
  [ -z "$bad" ] || fail "$mode: unexpected outcomes: $bad"
  # Closed connections' segments may stay cached for reuse
  # (transport/segment.h): the creator's pool holds at most kCreatorPoolSize
  # (8) fds and mappings, the receiver's cache kReceiverPoolSize (32)
  # mappings and no fds. The server also parks its ends of door sockets the
  # good clients kept (runtime/reuse.h), one per pair in circulation: a
  # client running ahead of the server has a few (8 each allowed here, for
  # 50 connections each); they go at the listener's next accept after the
  # clients exit.
  [ "$(fds "$vpid")" -le $((base_fds + 8 + 16)) ] ||
    fail "$mode: victim fds $base_fds -> $(fds "$vpid")"
  [ "$(segments "$vpid")" -le $((base_segs + 40)) ] ||
    fail "$mode: victim segment mappings $base_segs -> $(segments "$vpid")"
  echo "ok: $mode server: $(grep ATTACKED "$WORK/$name-peer.out"), good clients:" \
    "$(cat "$WORK/$name-good1.out" "$WORK/$name-good2.out" | tr '\n' ' ')," \
    "outcomes: $(grep '^CLOSED' "$WORK/$name.out" | awk '{print $3}' | sort | uniq -c | tr -s ' \n' ' ')," \
    "fds $base_fds -> $(fds "$vpid"), segments $base_segs -> $(segments "$vpid")"
  kill "$vpid"
}

server_case select
server_case threads

# The victim is a client: the hostile peer owns the door.
port="$(free_port)"
"$peer" server "$DOORS" "$port" "$seed" 16 >"$WORK/peer-server.out" 2>"$WORK/peer-server.log" &
ppid=$!
PIDS+=("$ppid")
wait_for "$WORK/peer-server.out" listening 10
spawn victim-client "$WORK/victim-client.out" python3 "$victim" lines "$port" 16
cpid=$!
wait "$ppid" || fail "hostile server exited $?: $(tail -3 "$WORK/peer-server.log")"
# The peer is gone: the victim's last connections must end promptly.
wait_for "$WORK/victim-client.out" DONE 15
wait "$cpid" || fail "victim client exited $?"
expect_log victim-client "accelerated connection"
bad="$(grep '^CLOSED' "$WORK/victim-client.out" | grep -vE ' (EOF|ECONNRESET|EIO|EPIPE) ' || true)"
[ -z "$bad" ] || fail "victim client: unexpected outcomes: $bad"
echo "ok: victim client: $(grep ATTACKED "$WORK/peer-server.out"), outcomes:" \
  "$(grep '^CLOSED' "$WORK/victim-client.out" | awk '{print $3}' | sort | uniq -c | tr -s ' \n' ' ')"
echo "PASS: hostile peer"
