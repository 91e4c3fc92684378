#!/bin/bash
# Churn and load under doorway (churn.cc, an epoll echo server and clients):
#   1. CYCLES (default 100 000) connect/write/read-back/close cycles from 4
#      client threads in 2 processes: every cycle accelerated and correct;
#      the server's fds and RssAnon the same (within the segment reuse
#      pools) after the run as after a warm-up; no stale door.
#   2. HOLD (default 10 000) concurrent accelerated connections, each
#      working while all are open; memory per connection measured. Past
#      (hard RLIMIT_NOFILE - 200) / 2 or 5 000 connections, over several
#      client processes and server workers (see below).
#   3. fd exhaustion while connecting (client) and accepting (server): the
#      kernel's EMFILE or a working connection, never a crash.
# Every figure is printed (docs/reliability.md records them).
source "$(dirname "$0")/../programs/lib.sh" "$1"
churn="$(realpath "$2")"
CYCLES="${CHURN_CYCLES:-100000}"
HOLD="${CHURN_HOLD:-10000}"

wait_for() {  # file pattern seconds
  for _ in $(seq 1 $(($3 * 20))); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 within $3 s"
}
fds() { ls "/proc/$1/fd" | wc -l; }
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# Quieter logs: 100 k connections at debug level would write ~20 MB.
export DOORWAY_LOG=info
port="$(free_port)"
env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/server.log" "$churn" server "$port" \
  >"$WORK/server.out" 2>&1 &
spid=$!
PIDS+=("$spid")
wait_for "$WORK/server.out" listening 10
[ -S "$DOORS/tcp4-127.0.0.1-$port" ] || fail "the server opened no door"

# 1. churn
client() {  # name cycles
  LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/$1.log" "$churn" cycles "$port" 2 "$2" 4096 \
    >"$WORK/$1.out" 2>&1
}
client warm 2000 || fail "warm-up: $(cat "$WORK/warm.out")"
sleep 0.5
f0="$(fds "$spid")"
r0="$(kb "$spid" RssAnon)"
s0="$(kb "$spid" RssShmem)"
start="$(date +%s.%N)"
client c1 $((CYCLES / 2)) &
c1=$!
client c2 $((CYCLES - CYCLES / 2)) &
c2=$!
wait "$c1" || fail "client 1: $(cat "$WORK/c1.out")"
wait "$c2" || fail "client 2: $(cat "$WORK/c2.out")"
secs="$(echo "$(date +%s.%N) - $start" | bc)"
sleep 0.5
f1="$(fds "$spid")"
r1="$(kb "$spid" RssAnon)"
s1="$(kb "$spid" RssShmem)"
cat "$WORK/c1.out" "$WORK/c2.out"
done_cycles=$(($(awk '/^cycles/{s += $2} END {print s}' "$WORK/c1.out" "$WORK/c2.out")))
accel=$(($(awk '/^cycles/{s += $4} END {print s}' "$WORK/c1.out" "$WORK/c2.out")))
[ "$done_cycles" = "$CYCLES" ] || fail "$done_cycles of $CYCLES cycles"
[ "$accel" = "$CYCLES" ] || fail "only $accel of $CYCLES cycles accelerated"
echo "server: fds $f0 -> $f1, RssAnon $r0 -> $r1 kB, RssShmem $s0 -> $s1 kB"
# Stable: at most the reuse pools' segments (8 per pool, transport/segment.h)
# and 2 MiB of heap noise.
[ "$f1" -le $((f0 + 16)) ] || fail "server fds grew: $f0 -> $f1"
[ "$r1" -le $((r0 + 2048)) ] || fail "server RssAnon grew: $r0 -> $r1 kB"
echo "ok: $CYCLES cycles in $secs s, all accelerated"

# 3. (before the big hold, with a fresh server) fd exhaustion.
"$churn" lowfd "$port" >"$WORK/lowfd-plain.out" 2>&1 || true  # reference without doorway
LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/lowfd.log" "$churn" lowfd "$port" \
  >"$WORK/lowfd.out" 2>&1 || fail "client with few fds: $(cat "$WORK/lowfd.out")"
echo "client with 0..7 spare fds:"
sed 's/^/  /' "$WORK/lowfd.out"
grep -q "accelerated" "$WORK/lowfd.out" || fail "no connection accelerated even with 7 spare fds"
lport="$(free_port)"
env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/lserver.log" "$churn" server "$lport" 32 \
  >"$WORK/lserver.out" 2>&1 &
lpid=$!
PIDS+=("$lpid")
wait_for "$WORK/lserver.out" listening 10
# More connections than the server has fds: its accept says EMFILE (the
# connections wait, as in a TCP backlog); it survives and serves again once
# they are gone.
LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/burst.log" "$churn" burst "$lport" 40 \
  >"$WORK/burst.out" 2>&1 || fail "burst: $(cat "$WORK/burst.out")"
kill -0 "$lpid" || fail "the server with 32 fds died: $(cat "$WORK/lserver.out")"
LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/lafter.log" "$churn" cycles "$lport" 1 50 100 \
  >"$WORK/lafter.out" 2>&1 || fail "the server with 32 fds stopped serving: $(cat "$WORK/lafter.out")"
kill "$lpid"
wait "$lpid" || fail "the server with 32 fds exited $?"
grep -q "[1-9][0-9]* accept errors" "$WORK/lserver.out" || fail "the server never ran out of fds"
echo "ok: server with RLIMIT_NOFILE 32: $(cat "$WORK/burst.out"); $(tail -1 "$WORK/lserver.out"); still served 50 cycles after"

# 2. many concurrent connections. A process holds at most (hard
# RLIMIT_NOFILE - its own fds) / 2 accelerated connections (two descriptors
# each side: the door socket and the segment's memfd; the hard limit here is
# 20 000 and cannot be raised without CAP_SYS_RESOURCE): the connections are
# spread over clients of at most 5 000 each (fewer under a lower limit) and
# a server with as many pre-forked workers (CHURN_WORKERS). Workers that
# reach their limit say EMFILE and leave the connection to another.
hard="$(ulimit -Hn)"
[ "$hard" = unlimited ] && hard=1048576
cap=$(((hard - 200) / 2))
[ "$cap" -gt 5000 ] && cap=5000
procs=$(((HOLD + cap - 1) / cap))
hsrv="$spid"
if [ "$procs" -gt 1 ]; then
  hport="$(free_port)"
  env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/hserver.log" CHURN_WORKERS="$procs" \
    "$churn" server "$hport" >"$WORK/hserver.out" 2>&1 &
  hsrv=$!
  PIDS+=("$hsrv")
  wait_for "$WORK/hserver.out" listening 10
else
  hport="$port"
fi
server_pids() { echo "$hsrv" $(ps -o pid= --ppid "$hsrv" 2>/dev/null); }
sum() {  # what: fds | RssAnon | RssShmem, over the server's processes
  local t=0 p
  for p in $(server_pids); do
    if [ "$1" = fds ]; then t=$((t + $(fds "$p"))); else t=$((t + $(kb "$p" "$1"))); fi
  done
  echo "$t"
}
f0="$(sum fds)"
r0="$(sum RssAnon)"
s0="$(sum RssShmem)"
per=$(((HOLD + procs - 1) / procs))
hpids=()
for k in $(seq 1 "$procs"); do
  n=$per
  [ "$k" = "$procs" ] && n=$((HOLD - per * (procs - 1)))
  CHURN_HOLD_FILE="$WORK/holding-$k" LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/hold-$k.log" \
    "$churn" hold "$hport" "$n" >"$WORK/hold-$k.out" 2>&1 &
  hpids+=($!)
done
for k in $(seq 1 "$procs"); do
  for _ in $(seq 1 6000); do  # at most 300 s (10 000: ~2 s at load ~5)
    [ -e "$WORK/holding-$k" ] && break
    kill -0 "${hpids[$((k - 1))]}" 2>/dev/null || break
    sleep 0.05
  done
  [ -e "$WORK/holding-$k" ] || fail "hold $k: $(cat "$WORK/hold-$k.out")"
done
f1="$(sum fds)"
r1="$(sum RssAnon)"
s1="$(sum RssShmem)"
pte="$(for p in $(server_pids); do kb "$p" VmPTE; done | awk '{s += $1} END {print s}')"
shmem_sys="$(awk '$1 == "Shmem:" {print $2}' /proc/meminfo)"
rm -f "$WORK"/holding-*
held=0
haccel=0
asked=0
for k in $(seq 1 "$procs"); do
  wait "${hpids[$((k - 1))]}" || fail "hold $k: $(cat "$WORK/hold-$k.out")"
  cat "$WORK/hold-$k.out"
  held=$((held + $(awk '/^held/{print $2}' "$WORK/hold-$k.out")))
  haccel=$((haccel + $(awk '/^held/{print $4}' "$WORK/hold-$k.out" | tr -d '(')))
  asked=$((asked + $(awk '/^held/{print $7}' "$WORK/hold-$k.out")))
done
[ "$held" = "$haccel" ] || fail "only $haccel of $held held connections accelerated"
echo "server ($procs process(es)) while holding $held: fds $f0 -> $f1, RssAnon $r0 -> $r1 kB," \
  "RssShmem $s0 -> $s1 kB, VmPTE $pte kB (per connection: $(((f1 - f0) / held)) fds," \
  "$(((r1 - r0) / held)) kB anon, $(((s1 - s0) / held)) kB shmem mapped); system Shmem $shmem_sys kB"
[ "$held" = "$asked" ] || fail "held only $held of $asked"
[ "$held" = "$HOLD" ] || fail "held $held of $HOLD"
echo "ok: $held concurrent accelerated connections"
if [ "$hsrv" != "$spid" ]; then
  kill -TERM "$hsrv"
  wait "$hsrv" || fail "the $procs-worker server exited $?"
fi

kill -TERM "$spid"
wait "$spid" || fail "server exited $?"
ls "$DOORS" | grep -q '^tcp' && fail "stale doors: $(ls "$DOORS")"
echo "PASS: churn"
