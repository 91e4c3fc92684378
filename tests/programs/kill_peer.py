"""Peers for the kill -9 test.

  kill_peer.py reader PORT   accept one connection, read until EOF/error
  kill_peer.py writer HOST PORT   connect and write until killed or error
  kill_peer.py sender PORT   accept one connection, send 1 MiB, then sleep
  kill_peer.py drainer HOST PORT  connect, read until EOF/error

The surviving side prints "RESULT <EOF|ECONNRESET|EPIPE|...> <bytes>" and
exits 0.
"""
import socket
import sys
import time


def outcome(e):
    return {104: "ECONNRESET", 32: "EPIPE"}.get(getattr(e, "errno", None), repr(e))


def read_all(conn):
    total = 0
    try:
        while True:
            d = conn.recv(65536)
            if not d:
                return "EOF", total
            if total == 0:
                print("streaming", flush=True)
            total += len(d)
    except OSError as e:
        return outcome(e), total


def main():
    mode = sys.argv[1]
    if mode in ("reader", "sender"):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(sys.argv[2])))
        listener.listen(1)
        print("listening", flush=True)
        conn, _ = listener.accept()
        if mode == "reader":
            print("RESULT %s %d" % read_all(conn), flush=True)
            return 0
        conn.sendall(b"s" * (1 << 20))
        print("streaming", flush=True)
        time.sleep(600)
        return 0
    sock = socket.create_connection((sys.argv[2], int(sys.argv[3])))
    if mode == "writer":
        block = b"w" * 65536
        print("streaming", flush=True)
        try:
            while True:
                sock.sendall(block)
        except OSError as e:
            print("RESULT %s" % outcome(e), flush=True)
        return 0
    print("RESULT %s %d" % read_all(sock), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
