"""Helpers for the door-squatting test.

  squat.py door PATH SECONDS   a squatter: listens on a SOCK_SEQPACKET socket
                               at PATH; reports "SQUAT-ACCEPTED" for every
                               connection and "SQUAT-GOT n fds" if anything
                               (a Hello, a memfd) arrives; prints "ready"
  squat.py echo PORT           a plain TCP echo server (never under doorway)
  squat.py client PORT         connect, exchange 100 kB, print "ok"
  squat.py hold PORT           connect and keep the connection open; prints
                               "held"
  squat.py probe PID DOOR      what another uid can reach of PID's
                               accelerated connections: its memfds through
                               /proc/PID/fd and map_files, and the door
"""
import array
import os
import select
import socket
import sys
import threading
import time


def say(*a):
    print(*a, flush=True)


def door(path, seconds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.bind(path)
    s.listen(8)
    say("ready")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([s], [], [], 0.2)
        if not r:
            continue
        c, _ = s.accept()
        say("SQUAT-ACCEPTED")
        fds = array.array("i")
        c.settimeout(1.0)
        try:
            msg, anc, _, _ = c.recvmsg(4096, socket.CMSG_SPACE(16 * fds.itemsize))
            n = 0
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    n += len(data) // fds.itemsize
            if msg or n:
                say("SQUAT-GOT", len(msg), n)
        except OSError:
            pass
        c.close()


def echo(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    say("listening")

    def serve(c):
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.close()

    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def client(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = os.urandom(100000)
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        d = s.recv(65536)
        if not d:
            break
        got += d
    s.close()
    say("ok" if got == data else "MISMATCH")
    return 0 if got == data else 1


def hold(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"x")
    s.recv(1)
    say("held")
    time.sleep(60)


def probe(pid, door_path):
    reached = []
    fd_dir = "/proc/%s/fd" % pid
    try:
        names = os.listdir(fd_dir)
    except OSError as e:
        say("fd dir:", e.strerror)
        names = []
    for n in names:
        try:
            f = os.open(os.path.join(fd_dir, n), os.O_RDWR)
            reached.append("fd " + n)
            os.close(f)
        except OSError:
            pass
    mf = "/proc/%s/map_files" % pid
    try:
        for n in os.listdir(mf):
            try:
                f = os.open(os.path.join(mf, n), os.O_RDWR)
                reached.append("map " + n)
                os.close(f)
            except OSError:
                pass
    except OSError as e:
        say("map_files:", e.strerror)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(door_path)
        reached.append("door")
    except OSError as e:
        say("door:", e.strerror)
    say("REACHED", " ".join(reached) if reached else "nothing")
    return 0


def main():
    m = sys.argv[1]
    if m == "door":
        return door(sys.argv[2], float(sys.argv[3]))
    if m == "echo":
        return echo(int(sys.argv[2]))
    if m == "client":
        return client(int(sys.argv[2]))
    if m == "hold":
        return hold(int(sys.argv[2]))
    if m == "probe":
        return probe(sys.argv[2], sys.argv[3])
    return 2


if __name__ == "__main__":
    sys.exit(main())
