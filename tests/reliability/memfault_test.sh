#!/bin/bash
# Memory exhaustion while connections are set up (issue 10,
# docs/reliability.md). Every allocation doorway makes at connect and accept
# time is made to fail, one at a time, on each side:
#   1. client: a fault injector (memfault.cc, preloaded after doorway) fails
#      the Nth mmap / memfd_create / ftruncate / fallocate / socket /
#      accept4 call of libdoorway.so with ENOMEM, for N = 1, 2, ... until
#      the Nth call never comes (the
#      sweep covers start-up, and the segment of each of three
#      connections). Each connection must work (accelerated or over TCP,
#      every byte checked), the ones after the failed call must be
#      accelerated again, and the server must see nothing wrong.
#   2. server: the same sweep in the server (mmap: the segment's mapping and
#      the fd table page of an accepted fd in a new page; accept4: the
#      door's and the kernel listener's accept); the client's
#      connections must all work: accept says ENOMEM and the connection
#      waits, as in a TCP backlog, and a later accept completes it.
#   3. RLIMIT_AS just above what the client uses: the segment cannot be
#      mapped, the connection goes over TCP; with the limit back, the next
#      one is accelerated.
#   4. (root, when /proc/sys/vm/nr_hugepages is writable) a huge-page pool
#      too small for the segments held at once, and one too small for any:
#      segments take huge pages while the pool lasts, then small pages. The
#      pool is restored on exit, whatever happens.
# Runs a few dozen short programs: ~10-20 s.
source "$(dirname "$0")/../programs/lib.sh" "$1"
inject="$(realpath "$2")"
peer="$(realpath "$3")"
export DOORWAY_LOG=info

wait_for() {  # file pattern
  for _ in $(seq 1 200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "no '$2' in $1 within 10 s"
}

# Every "conn" line of $1 says ok; the connections after the one the fault
# hit ("memfault: failing" comes just before it) say accelerated.
check_client_out() {  # file what
  local f="$1" what="$2"
  grep -q '^conn' "$f" || fail "$what: no connection made: $(cat "$f")"
  # The program's own socket() reaches the kernel through doorway's table:
  # failing it gives the program the kernel's ENOMEM, nothing else.
  if grep '^conn' "$f" | grep -v ' ok$' | grep -v ' socket error ENOMEM$' >/dev/null; then
    fail "$what: $(grep '^conn' "$f" | grep -v ' ok$' | head -1)"
  fi
  awk -v what="$what" '
    /^memfault: failing/ {hit = 1; next}
    /^conn/ {if (after && $3 != "accelerated") {print what ": " $0 " after the fault"; bad = 1}
             if (hit) {after = 1; hit = 0}}
    END {exit bad}' "$f" || fail "$what: not accelerated again: $(cat "$f")"
}

# 1. client side.
port="$(free_port)"
spawn server "$WORK/server.out" "$peer" server "$port"
spid="${PIDS[-1]}"
wait_for "$WORK/server.out" listening
for fn in memfd_create ftruncate fallocate mmap socket; do
  n=1
  while :; do
    out="$WORK/client-$fn-$n.out"
    rep="$WORK/client-$fn-$n.rep"
    LD_PRELOAD="$DOORWAY_SO:$inject" DOORWAY_LOG_FILE="$WORK/client.log" MEMFAULT="$fn:$n" \
      MEMFAULT_REPORT="$rep" timeout 60 "$peer" client "$port" 3 3000000 >"$out" 2>&1 ||
      fail "client, $fn call $n failing: exit $?: $(cat "$out")"
    check_client_out "$out" "client, $fn call $n failing"
    read -r _ calls _ fired <"$rep"
    [ "$fired" = 0 ] && break
    echo "client, $fn call $n of $calls failing: $(grep '^conn' "$out" | cut -d' ' -f3 | tr '\n' ' ')"
    n=$((n + 1))
    [ "$n" -le 40 ] || fail "client: more than 40 $fn calls for 3 connections"
  done
  echo "client: $fn: $((n - 1)) calls swept"
done
kill -0 "$spid" || fail "the server died"
grep -q 'accept error' "$WORK/server.out" && fail "server: $(grep 'accept error' "$WORK/server.out")"
echo "server unaffected: $(grep -c 'accepted accelerated' "$WORK/server.out") accelerated," \
  "$(grep -c 'accepted tcp' "$WORK/server.out") TCP connections, no accept error"

# One server-side sweep: the server's Nth call of fn (N = 1, 2, ... until
# the Nth call never comes) fails with err (MEMFAULT's third field); a
# client's 3 connections must all be accelerated and correct, the server
# must accept all 3 (accept says at most ENOMEM meanwhile). Sets $swept.
server_sweep() {  # label high fn err bytes
  local label="$1" high="$2" fn="$3" err="$4" bytes="$5" n=1
  local sport sout rep fpid out calls fired
  while :; do
    sport="$(free_port)"
    sout="$WORK/server-$label-$n.out"
    rep="$WORK/server-$label-$n.rep"
    env LD_PRELOAD="$DOORWAY_SO:$inject" DOORWAY_LOG_FILE="$WORK/fserver.log" \
      MEMFAULT="$fn:$n$err" MEMFAULT_REPORT="$rep" "$peer" server "$sport" "$high" >"$sout" 2>&1 &
    fpid=$!
    PIDS+=("$fpid")
    wait_for "$sout" listening
    out="$WORK/sclient-$label-$n.out"
    LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/sclient.log" timeout 60 \
      "$peer" client "$sport" 3 "$bytes" >"$out" 2>&1 ||
      fail "server ($label), call $n failing: client exit $?: $(cat "$out" "$sout")"
    if grep '^conn' "$out" | grep -v ' accelerated ok$' >/dev/null; then
      fail "server ($label), call $n failing: $(cat "$out" "$sout")"
    fi
    kill "$fpid"
    wait "$fpid" 2>/dev/null || true
    if grep 'accept error' "$sout" | grep -v 'ENOMEM$' >/dev/null; then
      fail "server ($label), call $n failing: $(grep 'accept error' "$sout")"
    fi
    [ "$(grep -c 'accepted accelerated' "$sout")" = 3 ] ||
      fail "server ($label), call $n failing: $(cat "$sout")"
    read -r _ calls _ fired <"$rep"
    [ "$fired" = 0 ] && break
    echo "server ($label), call $n of $calls failing: $(grep -c 'accept error' "$sout") accept ENOMEM, 3 accelerated"
    n=$((n + 1))
    [ "$n" -le 40 ] || fail "server ($label): more than 40 $fn calls for 3 connections"
  done
  swept=$((n - 1))
}

# 2. server side; also with accepted fds in a new page of the fd table.
for high in 0 600; do
  for fn in memfd_create ftruncate fallocate mmap accept4; do
    server_sweep "$high-$fn" "$high" "$fn" "" 3000000
    echo "server ($high): $fn: $swept calls swept"
  done
done

# 2b. The kernel race behind ReceiveHello's retry: the server's Nth recvmsg
# (its Hello reads, after a few at start-up) says end of file without
# reading, as Linux's non-blocking SEQPACKET recvmsg does when the client
# queues its Hello and closes between the call's two looks. Every
# connection must still be accepted, accelerated, every byte there (the
# connection used to be dropped: the client was reset).
server_sweep eof 0 recvmsg :EOF 300000
echo "server: a spurious EOF on each of its $swept recvmsg calls in turn: 3 accelerated connections each"

# 3. RLIMIT_AS.
out="$WORK/as.out"
LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/as.log" MEMFAULT_PEER_AS=1 \
  timeout 60 "$peer" client "$port" 2 60000 >"$out" 2>&1 || fail "RLIMIT_AS: $(cat "$out")"
grep -q '^conn 1 tcp ok$' "$out" || fail "RLIMIT_AS: $(cat "$out")"
grep -q '^conn 2 accelerated ok$' "$out" || fail "RLIMIT_AS: $(cat "$out")"
echo "RLIMIT_AS 1 MiB above use: $(tr '\n' ' ' <"$out")"

# 4. huge pages.
pool=/proc/sys/vm/nr_hugepages
hp() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
if [ "$(id -u)" != 0 ] || ! [ -w "$pool" ] || [ "$(hp Hugepagesize)" != 2048 ]; then
  echo "SKIP huge pages: needs root, a writable $pool and 2 MiB huge pages"
else
  saved="$(cat "$pool")"
  restore() { echo "$saved" >"$pool" || true; }
  trap 'restore; cleanup' EXIT
  # A segment of two 1 MiB rings takes 4 MiB: two huge pages.
  for pages in 3 1; do
    echo "$pages" >"$pool" 2>/dev/null || true
    free="$(hp HugePages_Free)"
    if [ "$free" -lt 1 ]; then
      echo "SKIP huge pages ($pages): the kernel gave none"
      continue
    fi
    hport="$(free_port)"
    spawn hserver "$WORK/hserver-$pages.out" "$peer" server "$hport"
    hpid="${PIDS[-1]}"
    wait_for "$WORK/hserver-$pages.out" listening
    out="$WORK/hold-$pages.out"
    flag="$WORK/holding-$pages"
    # The injector only counts here (a call that never comes fails):
    # memfd_create calls = segments tried.
    LD_PRELOAD="$DOORWAY_SO:$inject" DOORWAY_LOG_FILE="$WORK/hold.log" \
      MEMFAULT=memfd_create:1000000 MEMFAULT_REPORT="$WORK/hold-$pages.rep" \
      MEMFAULT_PEER_HOLD_FILE="$flag" timeout 60 "$peer" hold "$hport" 3 3000000 >"$out" 2>&1 &
    cpid=$!
    for _ in $(seq 1 600); do
      [ -e "$flag" ] && break
      kill -0 "$cpid" 2>/dev/null || break
      sleep 0.05
    done
    # Free counts reserved pages too: in use = total - free + reserved.
    used=$(($(hp HugePages_Total) - $(hp HugePages_Free) + $(hp HugePages_Rsvd)))
    pool_now="total $(hp HugePages_Total) free $(hp HugePages_Free) rsvd $(hp HugePages_Rsvd) surplus $(hp HugePages_Surp)"
    rm -f "$flag"
    wait "$cpid" || fail "huge pages ($pages): $(cat "$out")"
    [ "$(grep -c '^conn [0-9]* accelerated ok$' "$out")" = 3 ] ||
      fail "huge pages ($pages): $(cat "$out")"
    read -r _ tried _ _ <"$WORK/hold-$pages.rep"
    echo "huge-page pool of $pages ($free free before): 3 connections held at once," \
      "all accelerated and correct; huge pages in use meanwhile: $used ($pool_now, machine-wide);" \
      "segments tried: $tried"
    # A pool smaller than a segment (2 pages) is not even tried: one
    # memfd per connection (transport/segment.cc Create).
    [ "$pages" != 1 ] || [ "$tried" = 3 ] || fail "pool of 1 page: $tried segments tried for 3"

    kill "$hpid"
    wait "$hpid" 2>/dev/null || true
  done
  restore
  [ "$(cat "$pool")" = "$saved" ] || fail "could not restore $pool to $saved"
fi
echo "PASS: memfault"
