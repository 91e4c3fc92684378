"""An accelerated connection handed to a program started with exec.

  exec_peer.py server PORT [plain]
                             accept one connection and run `cat` with the
                             connection as its stdin and stdout (subprocess:
                             fork + exec), then close it; with `plain`, cat
                             runs without LD_PRELOAD (doorway relays)
  exec_peer.py client PORT BYTES  send BYTES, half-close, read the echo
"""
import hashlib
import os
import socket
import subprocess
import sys


def main():
    port = int(sys.argv[2])
    if sys.argv[1] == "server":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        print("listening", flush=True)
        conn, _ = listener.accept()
        env = dict(os.environ)
        if sys.argv[3:] == ["plain"]:
            env.pop("LD_PRELOAD", None)
        rc = subprocess.run(["cat"], stdin=conn.fileno(), stdout=conn.fileno(),
                            env=env).returncode
        conn.close()
        print(f"cat exited {rc}", flush=True)
        return rc
    total = int(sys.argv[3])
    data = os.urandom(total)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    if bytes(got) != data:
        print(f"MISMATCH: sent {total} got {len(got)}", file=sys.stderr)
        return 1
    print(f"ok {len(got)} bytes echoed by cat, sha256 {hashlib.sha256(got).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
