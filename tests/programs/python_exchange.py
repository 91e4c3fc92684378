"""A plain Python socket client and server exchanging random data.

The server echoes every byte it receives; the client sends DATA_BYTES in
random-sized chunks from one thread while reading the echo in random-sized
chunks in another, then compares SHA-256 digests. Exits 0 on a match.
"""
import hashlib
import os
import random
import socket
import sys
import threading

DATA_BYTES = int(os.environ.get("DATA_BYTES", str(64 * 1024 * 1024)))


def serve(listener):
    conn, _ = listener.accept()
    with conn:
        while True:
            chunk = conn.recv(random.randint(1, 256 * 1024))
            if not chunk:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(chunk)


def main():
    role = sys.argv[1]
    if role == "server":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(sys.argv[2])))
        listener.listen(4)
        print("listening", flush=True)
        serve(listener)
        return 0
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=60)
    sent_hash = hashlib.sha256()

    def send():
        left = DATA_BYTES
        while left:
            n = min(left, rng.randint(1, 300 * 1024))
            block = rng.randbytes(n)
            sent_hash.update(block)
            sock.sendall(block)
            left -= n
        sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send)
    sender.start()
    got_hash = hashlib.sha256()
    got = 0
    while True:
        chunk = sock.recv(random.randint(1, 200 * 1024))
        if not chunk:
            break
        got_hash.update(chunk)
        got += len(chunk)
    sender.join()
    if got != DATA_BYTES or got_hash.digest() != sent_hash.digest():
        print(f"MISMATCH: sent {DATA_BYTES} got {got}", file=sys.stderr)
        return 1
    print(f"ok {got} bytes sha256 {got_hash.hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
