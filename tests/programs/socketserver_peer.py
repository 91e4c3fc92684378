"""python socketserver servers and many concurrent clients, for
socketserver_test.sh.

  socketserver_peer.py server forking|threading PORTFILE
      serve on an ephemeral loopback port (written to PORTFILE) with
      ForkingTCPServer or ThreadingTCPServer until killed
  socketserver_peer.py clients PORT CLIENTS ROUNDS forking|threading
      CLIENTS threads, each with its own connection, make ROUNDS
      request/replies each; every reply is checked

Protocol: a request is a 4-byte big-endian length and that many bytes; the
reply is "<pid> <accelerated>\n" followed by the request's bytes reversed.
The handler asks doorway (doorway_fd_info) whether its own socket is
accelerated, so a forked child reports what it sees after the fork.
"""
import ctypes
import os
import socket
import socketserver
import struct
import sys
import threading


class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int)
                for n in ("domain", "type", "protocol", "origin", "accelerated")]


def accelerated(fd):
    try:
        fn = ctypes.CDLL(None).doorway_fd_info
    except AttributeError:
        return -1  # doorway not loaded
    info = Info()
    if fn(fd, ctypes.byref(info)) != 0:
        return -2  # not tracked
    return info.accelerated


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        acc = accelerated(sock.fileno())
        while True:
            head = sock.recv(4, socket.MSG_WAITALL)
            if len(head) < 4:
                return  # the client is done
            (n,) = struct.unpack(">I", head)
            body = recv_exact(sock, n)
            sock.sendall(f"{os.getpid()} {acc}\n".encode() + body[::-1])


def serve(kind, portfile):
    base = socketserver.ForkingTCPServer if kind == "forking" else socketserver.ThreadingTCPServer
    base.allow_reuse_address = True
    base.request_queue_size = 64
    with base(("127.0.0.1", 0), Handler) as srv:
        tmp = portfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(srv.server_address[1]))
        os.rename(tmp, portfile)
        srv.serve_forever()


def client(port, index, rounds, kind, results):
    try:
        server_pid = None
        pids = set()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            mine = accelerated(sock.fileno())
            if mine != 1:
                raise AssertionError(f"client socket accelerated={mine}")
            for r in range(rounds):
                # Sizes from a few bytes to more than a ring, so that some
                # replies block the writer.
                n = [7, 1000, 65536, 300001][(index + r) % 4] + index
                body = os.urandom(n)
                sock.sendall(struct.pack(">I", n) + body)
                line = bytearray()
                while not line.endswith(b"\n"):
                    c = sock.recv(1)
                    if not c:
                        raise EOFError("EOF before the reply header")
                    line += c
                pid, acc = line.decode().split()
                if acc != "1":
                    raise AssertionError(f"server handler socket accelerated={acc}")
                got = recv_exact(sock, n)
                if got != body[::-1]:
                    raise AssertionError(f"round {r}: reply differs")
                pids.add(int(pid))
                server_pid = int(pid)
        if len(pids) != 1:
            raise AssertionError(f"one connection answered by pids {pids}")
        results[index] = ("ok", server_pid)
    except Exception as e:  # reported by the main thread
        results[index] = ("error", repr(e))


def clients(port, n, rounds, kind):
    results = [None] * n
    threads = [threading.Thread(target=client, args=(port, i, rounds, kind, results))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    bad = [(i, r) for i, r in enumerate(results) if r is None or r[0] != "ok"]
    if bad:
        print(f"FAIL: {len(bad)} clients failed: {bad[:4]}", flush=True)
        return 1
    pids = {r[1] for r in results}
    # A forking server answers each connection from a child of its own; a
    # threading server answers all from one process.
    if kind == "forking" and len(pids) != n:
        print(f"FAIL: {n} connections answered by {len(pids)} processes", flush=True)
        return 1
    if kind == "threading" and len(pids) != 1:
        print(f"FAIL: threading server answered from {len(pids)} processes", flush=True)
        return 1
    print(f"ok: {n} clients x {rounds} rounds, {len(pids)} server processes", flush=True)
    return 0


def main():
    if sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3])
        return 0
    return clients(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])


if __name__ == "__main__":
    sys.exit(main())
