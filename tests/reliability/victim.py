"""Echo servers and clients for the reliability tests (run under doorway).

  victim.py select PORT      single-threaded epoll (selectors) echo server,
                             non-blocking sockets: one stuck call stalls all
  victim.py threads PORT     one blocking thread per connection
  victim.py good PORT STOPFILE SECONDS
                             echo client: connect, exchange random blocks,
                             compare, close; again until STOPFILE exists
                             (at most SECONDS); prints "GOOD n" or "BAD ..."
  victim.py lines PORT CONNS CONNS concurrent connections: send a line, read
                             whatever comes back until EOF or error (a victim
                             client for a hostile server); prints the outcome
                             of each

Servers print "ACCEPTED id" and "CLOSED id OUTCOME" for every connection,
OUTCOME being EOF or the errno name that ended it.
"""
import errno
import os
import random
import selectors
import socket
import sys
import threading
import time


def say(*a):
    print(*a, flush=True)


def outcome(e):
    return errno.errorcode.get(getattr(e, "errno", None) or 0, repr(e))


def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    return s


def serve_select(port):
    lsock = listener(port)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    pending = {}  # conn -> (id, bytes to send)
    next_id = 0
    say("listening")

    def finish(conn, why):
        cid, _ = pending.pop(conn)
        sel.unregister(conn)
        conn.close()
        say("CLOSED", cid, why)

    while True:
        for key, ev in sel.select(timeout=1.0):
            if key.data is None:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                pending[conn] = (next_id, b"")
                say("ACCEPTED", next_id)
                next_id += 1
                sel.register(conn, selectors.EVENT_READ, "c")
                continue
            conn = key.fileobj
            cid, out = pending[conn]
            try:
                if ev & selectors.EVENT_READ:
                    data = conn.recv(65536)
                    if not data:
                        finish(conn, "EOF")
                        continue
                    out += data
                if out:
                    n = conn.send(out)
                    out = out[n:]
            except BlockingIOError:
                pass
            except OSError as e:
                finish(conn, outcome(e))
                continue
            pending[conn] = (cid, out)
            # Bound the echo backlog of a peer that never reads.
            if len(out) > (4 << 20):
                finish(conn, "BACKLOG")
                continue
            sel.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0), "c")


def serve_threads(port):
    lsock = listener(port)
    say("listening")
    lock = threading.Lock()

    def handle(conn, cid):
        why = "EOF"
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError as e:
            why = outcome(e)
        conn.close()
        with lock:
            say("CLOSED", cid, why)

    cid = 0
    while True:
        conn, _ = lsock.accept()
        with lock:
            say("ACCEPTED", cid)
        threading.Thread(target=handle, args=(conn, cid), daemon=True).start()
        cid += 1


def good(port, stopfile, seconds):
    rng = random.Random(os.getpid())
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and not os.path.exists(stopfile):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            for _ in range(rng.randint(1, 5)):
                block = rng.randbytes(rng.randint(1, 64 * 1024))
                s.sendall(block)
                got = b""
                while len(got) < len(block):
                    d = s.recv(len(block) - len(got))
                    if not d:
                        say("BAD early EOF after %d exchanges" % n)
                        return 1
                    got += d
                if got != block:
                    say("BAD bytes differ after %d exchanges" % n)
                    return 1
                n += 1
        except socket.timeout:
            say("BAD server stalled (10 s without an echo) after %d exchanges" % n)
            return 1
        finally:
            s.close()
    say("GOOD", n)
    return 0 if n > 0 else 1


def lines(port, conns):
    # One thread per connection, all at once: a connection that the peer
    # keeps open (legitimately blocking its reader) must not hold up others.
    lock = threading.Lock()

    def one(i):
        why = "EOF"
        total = 0
        try:
            s = socket.create_connection(("127.0.0.1", port))
        except OSError as e:
            with lock:
                say("CLOSED", i, "connect:" + outcome(e), 0)
            return
        try:
            s.sendall(b"victim line %d\n" % i)
            while True:
                d = s.recv(65536)
                if not d:
                    break
                total += len(d)
                # Keep the peer's rings busy in both directions.
                s.setblocking(False)
                try:
                    s.send(d[:64])
                except BlockingIOError:
                    pass
                s.setblocking(True)
        except OSError as e:
            why = outcome(e)
        s.close()
        with lock:
            say("CLOSED", i, why, total)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    say("DONE")
    return 0


def main():
    mode = sys.argv[1]
    if mode == "select":
        return serve_select(int(sys.argv[2]))
    if mode == "threads":
        return serve_threads(int(sys.argv[2]))
    if mode == "good":
        return good(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    if mode == "lines":
        return lines(int(sys.argv[2]), int(sys.argv[3]))
    return 2


if __name__ == "__main__":
    sys.exit(main())
