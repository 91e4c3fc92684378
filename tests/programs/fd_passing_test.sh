#!/bin/bash
# A Python server hands accepted connections to pre-forked workers with
# SCM_RIGHTS (socket.send_fds, multiprocessing.reduction.send_handle), as
# Node's cluster module does in round-robin mode: every connection is
# accelerated when made, is handed to a relay before it is sent
# (runtime/pass.h), and its worker serves it: every reply checked, EOF at
# the worker's close (the server's close of its copy must not end it).
source "$(dirname "$0")/lib.sh" "$1"
script="$2"
n=8
spawn server "$WORK/server.out" python3 "$script" server "$WORK/port" "$n"
server_pid="${PIDS[-1]}"
for _ in $(seq 1 200); do
  [ -s "$WORK/port" ] && break
  sleep 0.05
done
[ -s "$WORK/port" ] || fail "server did not start: $(cat "$WORK/server.out")"
port="$(cat "$WORK/port")"
timeout 120 env LD_PRELOAD="$DOORWAY_SO" DOORWAY_LOG=debug DOORWAY_LOG_FILE="$WORK/clients.log" \
  python3 "$script" clients "$port" "$n" >"$WORK/clients.out" 2>&1 ||
  fail "clients: $(cat "$WORK/clients.out")"
for _ in $(seq 1 600); do
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 0.05
done
wait "$server_pid" || fail "server: $(cat "$WORK/server.out")"
a="$(grep -c "accelerated connection to port $port" "$WORK/clients.log" || true)"
[ "$a" -eq "$n" ] || fail "$a of $n client connections accelerated"
r="$(grep -c "handed to a relay.* to be passed with SCM_RIGHTS" "$WORK/server.log" || true)"
[ "$r" -eq "$n" ] || fail "$r of $n connections handed to a relay before being passed"
echo "$(grep -c "to the relay server" "$WORK/server.log" || true) of $n through the relay server"
cat "$WORK/clients.out" "$WORK/server.out"

# A fork child of a process that passed a connection (and so has a relay
# server) passes one too: it starts a relay server of its own (the
# parent's control socket is not its to use).
under_doorway forkpass timeout 60 python3 - >"$WORK/forkpass.out" 2>&1 <<'PY' ||
import os, socket
def worker(sock):
    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    c = socket.socket(fileno=fds[0])
    c.settimeout(20)
    c.sendall(c.recv(10).upper())
    c.close()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
port = srv.getsockname()[1]
a, b = socket.socketpair()
if os.fork() == 0:
    a.close()
    worker(b)
    os._exit(0)
cli = socket.create_connection(("127.0.0.1", port))
conn, _ = srv.accept()
socket.send_fds(a, [b"x"], [conn.fileno()])
conn.close()
cli.settimeout(20)
cli.sendall(b"one")
assert cli.recv(10) == b"ONE"
pid = os.fork()
if pid == 0:
    a2, b2 = socket.socketpair()
    if os.fork() == 0:
        a2.close()
        worker(b2)
        os._exit(0)
    conn2, _ = srv.accept()
    socket.send_fds(a2, [b"x"], [conn2.fileno()])
    conn2.close()
    os.wait()
    os._exit(0)
cli2 = socket.create_connection(("127.0.0.1", port))
cli2.settimeout(20)
cli2.sendall(b"two")
assert cli2.recv(10) == b"TWO"
_, st = os.waitpid(pid, 0)
assert st == 0, st
PY
  fail "a fork child's pass: $(cat "$WORK/forkpass.out")"
p="$(grep "to the relay server" "$WORK/forkpass.log" | sed 's/\].*//' | sort -u | wc -l)"
[ "$p" -eq 2 ] || fail "want passes through relay servers from 2 processes, got $p"
s="$(grep -c "loaded into doorway-relay" "$WORK/forkpass.log" || true)"
[ "$s" -eq 2 ] || fail "want 2 relay servers (the parent's and the child's), got $s"
echo "ok: a fork child's pass has its own relay server"
echo "PASS: $n accelerated connections passed to workers with SCM_RIGHTS and served there"
