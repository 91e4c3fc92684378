#!/bin/bash
# Bad DOORWAY_* settings: each is reported once on stderr, with the message
# docs/configuration.md documents, for a whole program tree (a child under
# doorway does not repeat it), and the program still runs with the defaults.
# Then the preload launcher's own options (--help, --log, --log-file,
# --disable, --stats, an unknown option).
source "$(dirname "$0")/lib.sh" "$1"
PRELOAD="$(realpath "$2")"
export DOORWAY_PRELOAD_SO="$DOORWAY_SO"

# A program that prints, starts a child (also under doorway: LD_PRELOAD is
# inherited) and uses a socket.
prog='
import socket, subprocess, sys
print("hello", flush=True)
subprocess.run([sys.executable, "-c", "import socket; socket.socket(); print(\"child\")"], check=True)
socket.socket().close()
'

env LD_PRELOAD="$DOORWAY_SO" DOORWAY_DISABLE=maybe DOORWAY_ACCELERATE=2 DOORWAY_LOG=loud \
  DOORWAY_DIR=doors DOORWAY_ALLOW_UIDS=12,x DOORWAY_FALLBACK=epoll DOORWAY_STATS=sometimes \
  DOORWAY_LOGG=debug python3 -c "$prog" >"$WORK/bad.out" 2>"$WORK/bad.err" ||
  fail "the program did not run with bad settings: $(cat "$WORK/bad.err")"
[ "$(cat "$WORK/bad.out")" = "$(printf 'hello\nchild')" ] || fail "program output: $(cat "$WORK/bad.out")"
expected='DOORWAY_DISABLE=maybe is not 1|0|yes|no|true|false; using 0
DOORWAY_ACCELERATE=2 is not 1|0|yes|no|true|false; using 1
DOORWAY_LOG=loud is not off|error|warn|info|debug; using off
DOORWAY_DIR=doors is not an absolute path; using the default
DOORWAY_ALLOW_UIDS=12,x is not a comma-separated list of uids; using none
DOORWAY_FALLBACK=epoll is not passthrough|uring|uring-sqpoll; using passthrough
DOORWAY_STATS=sometimes is not on|off|exit; using on
DOORWAY_LOGG is not a doorway setting (see docs/configuration.md); ignored'
got="$(sed -E 's/^doorway\[[0-9]+\]: //' "$WORK/bad.err")"
[ "$got" = "$expected" ] || fail "stderr with bad settings:
$(cat "$WORK/bad.err")
expected (each once):
$expected"
[ "$(grep -cE '^doorway\[[0-9]+\]: ' "$WORK/bad.err")" = 8 ] || fail "stderr lines: $(cat "$WORK/bad.err")"
echo "ok: bad settings reported once each"

# A log file that cannot be opened: one warning, then stderr.
env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG_FILE=/nonexistent/dir/x.log python3 -c "$prog" \
  >"$WORK/nolog.out" 2>"$WORK/nolog.err" || fail "the program did not run: $(cat "$WORK/nolog.err")"
[ "$(cat "$WORK/nolog.out")" = "$(printf 'hello\nchild')" ] || fail "program output: $(cat "$WORK/nolog.out")"
[ "$(grep -c 'cannot open DOORWAY_LOG_FILE=/nonexistent/dir/x.log (No such file or directory); logging to stderr' "$WORK/nolog.err")" = 1 ] ||
  fail "unopenable log file: $(cat "$WORK/nolog.err")"
[ "$(wc -l <"$WORK/nolog.err")" = 1 ] || fail "unopenable log file: $(cat "$WORK/nolog.err")"
echo "ok: unopenable log file reported once"

# The launcher.
"$PRELOAD" --help >"$WORK/help.out" || fail "preload --help failed"
for opt in --log=LEVEL --log-file=PATH --disable --stats --dir=DIR --help; do
  grep -q -- "$opt" "$WORK/help.out" || fail "preload --help does not mention $opt"
done
if "$PRELOAD" --bogus -- true 2>"$WORK/bogus.err"; then fail "preload accepted --bogus"; fi
grep -q "unknown option --bogus" "$WORK/bogus.err" || fail "preload --bogus: $(cat "$WORK/bogus.err")"

"$PRELOAD" --log=info --log-file="$WORK/launcher.log" -- python3 -c 'print("hi")' >"$WORK/l.out" ||
  fail "preload --log failed"
[ "$(cat "$WORK/l.out")" = hi ] || fail "preload --log: output $(cat "$WORK/l.out")"
grep -qE '^doorway\[[0-9]+\]: loaded into python3; ' "$WORK/launcher.log" ||
  fail "preload --log --log-file: $(cat "$WORK/launcher.log" 2>/dev/null)"

"$PRELOAD" --disable --log=info -- python3 -c 'print("hi")' >"$WORK/d.out" 2>"$WORK/d.err" ||
  fail "preload --disable failed"
grep -qE '^doorway\[[0-9]+\]: loaded into python3 \(disabled\)' "$WORK/d.err" ||
  fail "preload --disable: $(cat "$WORK/d.err")"

# --stats: one line per process that used Internet sockets, at its exit.
"$PRELOAD" --stats python3 -c '
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept()
c.sendall(b"x" * 1000)
got = 0
while got < 1000: got += len(a.recv(4096))
a.sendall(b"y" * 500)
got = 0
while got < 500: got += len(c.recv(4096))
c.close(); a.close()
print("done")' >"$WORK/s.out" 2>"$WORK/s.err" || fail "preload --stats failed: $(cat "$WORK/s.err")"
[ "$(cat "$WORK/s.out")" = done ] || fail "preload --stats: output $(cat "$WORK/s.out")"
grep -qE '^doorway\[[0-9]+\]: stats: 2 accelerated connection\(s\) \(0 still open at exit; 1 connect\(s\) and 1 accept\(s\) accelerated\), sent 1500 bytes in 2 writes, received 1500 bytes in 2 reads$' \
  "$WORK/s.err" || fail "preload --stats: $(cat "$WORK/s.err")"
[ "$(wc -l <"$WORK/s.err")" = 1 ] || fail "preload --stats printed more: $(cat "$WORK/s.err")"
# Every process above exited normally: no stats file is left behind.
left="$(cd "$DOORS" && ls -A | grep stats || true)"
[ -z "$left" ] || fail "stats files left after normal exits: $left"
echo "ok: launcher options"
