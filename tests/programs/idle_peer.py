"""Many idle accelerated connections in event loops (issue 5: an idle loop
must not use CPU).

  idle_peer.py server PORT       asyncio echo server (epoll)
  idle_peer.py client PORT N     opens N connections, checks one echo on
                                 each, then waits in selectors (epoll)
                                 without traffic until killed
"""
import asyncio
import selectors
import socket
import sys


async def serve(port):
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def client(port, n):
    sel = selectors.EpollSelector()
    conns = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        msg = b"hello %d" % i
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += s.recv(64)
        assert got == msg, (got, msg)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        conns.append(s)
    print("idle", len(conns), flush=True)
    while True:
        for key, _ in sel.select(timeout=60):
            if not key.fileobj.recv(64):
                return 1


if __name__ == "__main__":
    port = int(sys.argv[2])
    if sys.argv[1] == "server":
        asyncio.run(serve(port))
    else:
        sys.exit(client(port, int(sys.argv[3])))
