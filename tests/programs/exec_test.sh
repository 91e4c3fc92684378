#!/bin/bash
# An accelerated connection survives exec: python accepts it and runs `cat`
# (fork + exec) with the connection as stdin and stdout; the client's bytes
# come back through cat. (The client sends everything before reading: less
# than one ring each way.)
#   exec_test.sh SO SCRIPT          cat loads doorway again (LD_PRELOAD): the
#                                   connection is inherited, still accelerated
#   exec_test.sh SO SCRIPT plain    cat runs without LD_PRELOAD: doorway hands
#                                   the connection to a relay and cat gets a
#                                   kernel TCP socket; the relay exits at the end
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
mode="${3:-doorway}"
port="$(free_port)"
spawn server "$WORK/server.out" python3 "$script" server "$port" ${3:+"$3"}
for _ in $(seq 1 200); do
  grep -q listening "$WORK/server.out" 2>/dev/null && break
  sleep 0.05
done
timeout 60 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/client.log" \
  python3 "$script" client "$port" $((512 * 1024 + 5)) || fail "client exited $?"
expect_log client "accelerated connection to port $port"
expect_log server "accelerated connection accepted"
for _ in $(seq 1 100); do
  grep -q "cat exited" "$WORK/server.out" && break
  sleep 0.05
done
grep -q "cat exited 0" "$WORK/server.out" || fail "server: $(cat "$WORK/server.out")"
if [ "$mode" = plain ]; then
  expect_log server "handed to a relay for exec"
  # The relay (doorway-relay, with the connection inherited) has exited.
  for _ in $(seq 1 100); do
    relays="$(grep -l "DOORWAY_DIR=$DOORS" /proc/[0-9]*/environ 2>/dev/null |
      sed 's|/proc/\([0-9]*\)/environ|\1|' | xargs -r -n1 sh -c 'cat /proc/$0/comm 2>/dev/null' |
      grep -c doorway-relay || true)"
    [ "$relays" = 0 ] && break
    sleep 0.05
  done
  [ "$relays" = 0 ] || fail "a relay is still running"
  expect_log server "inherited across exec"  # by doorway-relay
  echo "PASS: accelerated connection relayed across exec into a program without doorway"
else
  expect_log server "inherited across exec"
  echo "PASS: accelerated connection across exec"
fi
