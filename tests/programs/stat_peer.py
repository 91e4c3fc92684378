"""Both ends of a known transfer for stat_test.sh; each holds its
connection open after the transfer (until killed) so that stat can see it.

  stat_peer.py server PORT C2S S2C         accepts one connection, reads C2S
                                           bytes, answers S2C bytes in one send
  stat_peer.py client PORT C2S S2C CHUNKS PLAIN_PORT FORKED
                                           sends C2S bytes in CHUNKS sends,
                                           reads S2C bytes; also holds a TCP
                                           connection to PLAIN_PORT (a listener
                                           that does not run doorway); then
                                           forks a child that sends FORKED more
                                           bytes on the shared connection
"""
import os
import socket
import sys
import time


def hold():
    print("holding", flush=True)
    deadline = time.monotonic() + 120  # bounded: the test kills us long before
    while time.monotonic() < deadline:
        time.sleep(0.1)


def read_exactly(conn, n):
    got = 0
    while got < n:
        data = conn.recv(min(65536, n - got))
        if not data:
            raise SystemExit(f"EOF after {got} of {n} bytes")
        got += len(data)
    return got


def main():
    mode, port, c2s, s2c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if mode == "server":
        srv = socket.socket()
        srv.bind(("127.0.0.1", port))
        srv.listen()
        print("listening", flush=True)
        conn, _ = srv.accept()
        read_exactly(conn, c2s)
        conn.sendall(b"s" * s2c)
        print("served", flush=True)
        hold()
    else:
        chunks, plain_port, forked = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
        plain = socket.create_connection(("127.0.0.1", plain_port))
        conn = socket.create_connection(("127.0.0.1", port))
        size = c2s // chunks
        for i in range(chunks):
            n = size if i < chunks - 1 else c2s - size * (chunks - 1)
            conn.sendall(b"c" * n)
        read_exactly(conn, s2c)
        pid = os.fork()
        if pid == 0:
            conn.sendall(b"f" * forked)
            print(f"child {os.getpid()}", flush=True)
        hold()


main()
