"""Accepted connections handed to pre-forked workers with SCM_RIGHTS.

server PORTFILE N: forks two workers, then listens; accepts N connections
and hands each to a worker in turn, worker 0 with socket.send_fds over a
socketpair, worker 1 with multiprocessing.reduction.send_handle over a
multiprocessing Pipe (the two ways Python programs pass sockets), then
closes its own copy. Each worker serves its connections one after the
other: ROUNDS request/replies (the reply is the request upper-cased), then
closes. Exits 0 when the workers served every connection.

clients PORT N: N concurrent clients, each ROUNDS requests of growing size
(up to 256 KiB), every reply checked, then EOF expected (the worker's close).
"""
import multiprocessing
import multiprocessing.reduction as reduction
import os
import socket
import sys
import threading

ROUNDS = 4


def serve(c):
    c.settimeout(30)
    for r in range(ROUNDS):
        n = int.from_bytes(recv_exact(c, 4), "big")
        c.sendall(recv_exact(c, n).upper())
    c.close()


def recv_exact(c, n):
    data = b""
    while len(data) < n:
        d = c.recv(min(65536, n - len(data)))
        if not d:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += d
    return data


def worker_fds(sock, count):
    for _ in range(count):
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        serve(socket.socket(fileno=fds[0]))


def worker_reduction(conn, count):
    for _ in range(count):
        serve(socket.socket(fileno=reduction.recv_handle(conn)))


def server(portfile, n):
    mine = [(n + 1) // 2, n // 2]
    a, b = socket.socketpair()
    p0 = os.fork()
    if p0 == 0:
        a.close()
        worker_fds(b, mine[0])
        os._exit(0)
    b.close()
    parent_end, child_end = multiprocessing.Pipe()
    p1 = os.fork()
    if p1 == 0:
        parent_end.close()
        worker_reduction(child_end, mine[1])
        os._exit(0)
    child_end.close()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    with open(portfile + ".tmp", "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(portfile + ".tmp", portfile)
    for i in range(n):
        c, _ = srv.accept()
        if i % 2 == 0:
            socket.send_fds(a, [b"c"], [c.fileno()])
        else:
            reduction.send_handle(parent_end, c.fileno(), p1)
        c.close()
    ok = True
    for p in (p0, p1):
        _, st = os.waitpid(p, 0)
        ok = ok and st == 0
    print("server: workers", "ok" if ok else "failed")
    sys.exit(0 if ok else 1)


def clients(port, n):
    errors = []

    def one(k):
        try:
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            for r in range(ROUNDS):
                size = min(7 * 64**r, 256 * 1024)  # 7 B, 448 B, 28 KiB, 256 KiB
                msg = bytes((97 + (k + i) % 26) for i in range(size))
                c.sendall(len(msg).to_bytes(4, "big") + msg)
                if recv_exact(c, size) != msg.upper():
                    raise ValueError(f"client {k} round {r}: wrong reply")
            if c.recv(1) != b"":
                raise ValueError(f"client {k}: no EOF after the worker's close")
            c.close()
        except Exception as e:  # reported below
            errors.append(f"client {k}: {e!r}")

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in errors:
        print(e)
    print(f"clients: {n - len(errors)} of {n} ok")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    else:
        clients(int(sys.argv[2]), int(sys.argv[3]))
