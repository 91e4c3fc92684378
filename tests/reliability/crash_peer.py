"""Programs for the crash test (run under doorway).

  crash_peer.py prefork PORT WORKERS
      a pre-forking echo server: the master listens, forks WORKERS workers
      that accept and serve one connection at a time, and replaces a worker
      that dies. Prints "WORKER pid", "DIED pid", and from the workers
      "IDLE pid nfds" (before each accept), "ACCEPTED pid id", "CLOSED pid
      id outcome wallclock".
  crash_peer.py echo PORT SECONDS
      connects, prints "CONNECTED nfds", then sends blocks and reads their echo
      until killed (or SECONDS pass); prints "RESULT outcome wallclock nfds"
      if the connection ends first.
  crash_peer.py nbecho PORT SECONDS
      like echo, but never waits in the kernel afterwards: non-blocking
      recv and poll(0) in a loop until EOF or an error.
  crash_peer.py once PORT
      one short exchange; prints "OK" (the listener still accepts).
"""
import errno
import os
import signal
import socket
import sys
import time


def say(*a):
    print(*a, flush=True)


def outcome(e):
    return errno.errorcode.get(getattr(e, "errno", None) or 0, repr(e))


def nfds():
    return len(os.listdir("/proc/self/fd"))


def worker(lsock):
    me = os.getpid()
    cid = 0
    while True:
        say("IDLE", me, nfds())
        conn, _ = lsock.accept()
        say("ACCEPTED", me, cid)
        why = "EOF"
        try:
            while True:
                d = conn.recv(65536)
                if not d:
                    break
                conn.sendall(d)
        except OSError as e:
            why = outcome(e)
        conn.close()
        say("CLOSED", me, cid, why, "%.3f" % time.time())
        cid += 1


def prefork(port, workers):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(128)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))

    def spawn():
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                worker(lsock)
            finally:
                os._exit(1)
        say("WORKER", pid)

    for _ in range(workers):
        spawn()
    say("listening")
    while True:
        pid, _ = os.wait()
        say("DIED", pid)
        spawn()


def echo(port, seconds):
    before = nfds()
    s = socket.create_connection(("127.0.0.1", port))
    say("CONNECTED", before)
    block = os.urandom(48 * 1024)
    end = time.monotonic() + seconds
    why = "TIMEOUT"
    try:
        while time.monotonic() < end:
            s.sendall(block)
            got = 0
            while got < len(block):
                d = s.recv(len(block) - got)
                if not d:
                    raise EOFError
                got += len(d)
    except EOFError:
        why = "EOF"
    except OSError as e:
        why = outcome(e)
    t = time.time()
    s.close()
    say("RESULT", why, "%.3f" % t, nfds())
    return 0


def nbecho(port, seconds):
    """Never waits in the kernel: non-blocking recv and poll(0) in a loop
    (with short sleeps), as a busy event loop does."""
    import select
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    s.setblocking(False)
    p = select.poll()
    p.register(s, select.POLLIN)
    say("CONNECTED", nfds())
    end = time.monotonic() + seconds
    why = "TIMEOUT"
    while time.monotonic() < end:
        p.poll(0)
        try:
            d = s.recv(65536)
            if not d:
                why = "EOF"
                break
        except BlockingIOError:
            pass
        except OSError as e:
            why = outcome(e)
            break
        time.sleep(0.001)
    t = time.time()
    s.close()
    say("RESULT", why, "%.3f" % t, nfds())
    return 0


def once(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    s.close()
    say("OK")
    return 0


def main():
    mode = sys.argv[1]
    if mode == "prefork":
        return prefork(int(sys.argv[2]), int(sys.argv[3]))
    if mode == "echo":
        return echo(int(sys.argv[2]), float(sys.argv[3]))
    if mode == "once":
        return once(int(sys.argv[2]))
    if mode == "nbecho":
        return nbecho(int(sys.argv[2]), float(sys.argv[3]))
    return 2


if __name__ == "__main__":
    sys.exit(main())
