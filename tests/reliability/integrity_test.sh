#!/bin/bash
# One large accelerated transfer (integrity.cc): random chunk sizes and call
# kinds, random MSG_PEEKs, an interval-timer signal every ~100 µs on both
# sides (EINTR on the receiver, SA_RESTART on the sender). The receiver
# checks every byte against the generator; the SHA-256 of what was sent and
# of what was received (sha256sum over each side's copy) must be equal.
# INTEGRITY_BYTES sets the size: 1 GiB in CI (sha256sum hashes ~200 MB/s per
# core here, so 10 GiB would cost ~100 s of CPU in hashing alone);
# docs/reliability.md records a 10 GiB run.
source "$(dirname "$0")/../programs/lib.sh" "$1"
prog="$(realpath "$2")"
BYTES="${INTEGRITY_BYTES:-1073741824}"
seed="${INTEGRITY_SEED:-$RANDOM}"
echo "seed $seed, $BYTES bytes"
port="$(free_port)"
export DOORWAY_LOG=debug
(LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/recv.log" "$prog" recv "$port" "$BYTES" "$seed" tee \
  2>"$WORK/recv.err" | sha256sum >"$WORK/recv.sha") &
rpid=$!
for _ in $(seq 1 200); do
  grep -q listening "$WORK/recv.err" 2>/dev/null && break
  sleep 0.05
done
grep -q listening "$WORK/recv.err" || fail "receiver not listening: $(cat "$WORK/recv.err")"
start="$(date +%s.%N)"
LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE="$WORK/send.log" "$prog" send "$port" "$BYTES" "$seed" tee \
  2>"$WORK/send.err" | sha256sum >"$WORK/send.sha"
[ "${PIPESTATUS[0]}" = 0 ] || fail "sender: $(cat "$WORK/send.err")"
wait "$rpid" || fail "receiver: $(cat "$WORK/recv.err")"
secs="$(echo "$(date +%s.%N) - $start" | bc)"
grep -q "received $BYTES bytes" "$WORK/recv.err" || fail "receiver: $(cat "$WORK/recv.err")"
cat "$WORK/send.err" "$WORK/recv.err"
grep -q "accelerated connection" "$WORK/send.log" || fail "the transfer was not accelerated"
s="$(cut -d' ' -f1 "$WORK/send.sha")"
r="$(cut -d' ' -f1 "$WORK/recv.sha")"
echo "sha256 sent     $s"
echo "sha256 received $r"
[ "$s" = "$r" ] || fail "sha256 differs"
echo "PASS: $BYTES bytes in $secs s (hashing included), sha256 equal"
