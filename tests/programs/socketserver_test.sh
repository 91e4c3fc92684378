#!/bin/bash
# python socketserver.ForkingTCPServer and ThreadingTCPServer under doorway,
# 16 concurrent clients x 6 request/replies each (7 B to 300 KB), every
# reply checked. Each handler reports whether its socket is accelerated
# (doorway_fd_info), so a forked child's view after fork is checked too.
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
clients=16
rounds=6
for kind in forking threading; do
  spawn "server-$kind" "$WORK/server-$kind.out" python3 "$script" server "$kind" "$WORK/port-$kind"
  for _ in $(seq 1 200); do
    [ -s "$WORK/port-$kind" ] && break
    sleep 0.05
  done
  [ -s "$WORK/port-$kind" ] || fail "$kind server did not start: $(cat "$WORK/server-$kind.out")"
  port="$(cat "$WORK/port-$kind")"
  timeout 120 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug \
    DOORWAY_LOG_FILE="$WORK/clients-$kind.log" \
    python3 "$script" clients "$port" "$clients" "$rounds" "$kind" >"$WORK/clients-$kind.out" 2>&1 ||
    fail "$kind clients: $(cat "$WORK/clients-$kind.out")"
  n="$(grep -c "accelerated connection to port $port" "$WORK/clients-$kind.log" || true)"
  [ "$n" -eq "$clients" ] || fail "$kind: $n of $clients client connections accelerated"
  n="$(grep -c "accelerated connection accepted" "$WORK/server-$kind.log" || true)"
  [ "$n" -eq "$clients" ] || fail "$kind: server accepted $n accelerated connections, want $clients"
  cat "$WORK/clients-$kind.out"
done
# A listener shared by fork: its door goes when the last process closes it,
# whichever that is (parent first or child first), and not before.
for order in parent-first child-first; do
  dir="$(mktemp -d /tmp/doorway-test.XXXXXX)"
  chmod 700 "$dir"
  DOORWAY_DIR="$dir" under_doorway "door-$order" python3 - "$order" "$dir" <<'PY' ||
import os, socket, sys
order, d = sys.argv[1], sys.argv[2]
doors = lambda: [f for f in os.listdir(d) if f.startswith("tcp")]
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
assert len(doors()) == 1, doors()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    if order == "parent-first":
        os.read(r, 1)  # the parent closed
    l.close()
    os._exit(0 if (order == "child-first") == (len(doors()) == 1) else 1)
if order == "parent-first":
    l.close()
    assert len(doors()) == 1, "door gone while the child still holds the listener"
    os.write(w, b"x")
    _, st = os.waitpid(pid, 0)
else:
    _, st = os.waitpid(pid, 0)
    l.close()
assert st == 0, f"child status {st}"
assert doors() == [], f"door left after the last close: {doors()}"
PY
    fail "door of a fork-shared listener ($order)"
  rm -rf "$dir"
done


# Stray bytes in a listener's wake FIFO (runtime/reuse.h: one fixed-size
# record per connection on a kept door socket), written by another program
# of the same user, must not leave the listener readable with nothing to
# accept (a blocking accept then spun, and a non-blocking one never
# returned): accept discards them.
under_doorway wake-stray timeout 20 python3 - <<'PY' || fail "a stray wake byte kept the listener readable (or accept spun)"
import os, select, socket, threading, time
d = os.environ["DOORWAY_DIR"]
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen()
port = l.getsockname()[1]
fd = os.open(os.path.join(d, f"wake2.tcp4-127.0.0.1-{port}"), os.O_WRONLY | os.O_NONBLOCK)
os.write(fd, b"xy")
os.close(fd)
def client():
    time.sleep(0.2)
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"hi")
    c.close()
t = threading.Thread(target=client)
t.start()
s, _ = l.accept()
assert s.recv(2) == b"hi"
s.close()
t.join()
l.setblocking(False)
try:
    l.accept()
    raise SystemExit("accept returned a connection nobody made")
except BlockingIOError:
    pass
r, _, _ = select.select([l], [], [], 0.2)
assert r == [], "listener readable with nothing to accept"
PY
expect_log wake-stray "accelerated connection accepted"
echo "ok: a stray wake byte is discarded by accept"

echo "PASS: ForkingTCPServer and ThreadingTCPServer, $clients clients x $rounds rounds each, accelerated"
