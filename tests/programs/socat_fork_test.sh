#!/bin/bash
# socat TCP-LISTEN:port,fork,reuseaddr EXEC:cat under doorway: several
# concurrent socat clients, each gets its own bytes back. Then the same with
# EXEC:cat,nofork: socat's fork child execs cat on the accepted socket
# itself (stdin and stdout), so the connection crosses fork and exec.
source "$(dirname "$0")/lib.sh" "$1"
command -v socat >/dev/null || fail "socat not installed (tools/setup.sh installs it)"
clients=6
for variant in "EXEC:cat" "EXEC:cat,nofork"; do
  tag="${variant//[:,]/-}"
  port="$(free_port)"
  spawn "server-$tag" "$WORK/server-$tag.out" \
    socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" "$variant"
  wait_port "$port"
  pids=()
  for i in $(seq 1 "$clients"); do
    head -c $((256 * 1024 + i * 4099)) /dev/urandom >"$WORK/in-$tag-$i.bin"
    timeout 60 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug \
      DOORWAY_LOG_FILE="$WORK/client-$tag-$i.log" \
      socat -t 30 - "TCP:127.0.0.1:$port" <"$WORK/in-$tag-$i.bin" >"$WORK/out-$tag-$i.bin" &
    pids+=($!)
  done
  for i in $(seq 1 "$clients"); do
    wait "${pids[$((i - 1))]}" || fail "$variant: client $i exited $?"
  done
  for i in $(seq 1 "$clients"); do
    [ "$(sha "$WORK/out-$tag-$i.bin")" = "$(sha "$WORK/in-$tag-$i.bin")" ] ||
      fail "$variant: client $i got $(stat -c %s "$WORK/out-$tag-$i.bin") bytes, not its own echo"
    expect_log "client-$tag-$i" "accelerated connection to port $port"
  done
  n="$(grep -c "accelerated connection accepted" "$WORK/server-$tag.log" || true)"
  [ "$n" -eq "$clients" ] || fail "$variant: server accepted $n accelerated connections, want $clients"
done
expect_log "server-EXEC-cat-nofork" "accelerated connection inherited across exec"
echo "PASS: socat fork EXEC:cat and EXEC:cat,nofork, $clients concurrent clients each, accelerated"
