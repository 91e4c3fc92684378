"""asyncio (epoll) echo server and client exchanging random data.

  asyncio_echo.py server PORT        serve until the client says "bye"
  asyncio_echo.py client PORT BYTES  send BYTES in random chunks, read the
                                     echo concurrently, compare digests
"""
import asyncio
import hashlib
import random
import sys


async def serve(port):
    done = asyncio.Event()

    async def handle(reader, writer):
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("listening", flush=True)
    async with server:
        await done.wait()


async def client(port, total):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = random.Random(5)
    sent = hashlib.sha256()

    async def send():
        left = total
        while left:
            n = min(left, rng.randint(1, 200 * 1024))
            block = rng.randbytes(n)
            sent.update(block)
            writer.write(block)
            await writer.drain()
            left -= n
        writer.write_eof()

    got = hashlib.sha256()
    count = 0
    sender = asyncio.create_task(send())
    while True:
        data = await reader.read(300 * 1024)
        if not data:
            break
        got.update(data)
        count += len(data)
    await sender
    writer.close()
    if count != total or got.digest() != sent.digest():
        print(f"MISMATCH sent {total} got {count}", file=sys.stderr)
        return 1
    print(f"ok {count} bytes")
    return 0


def main():
    if sys.argv[1] == "server":
        asyncio.run(serve(int(sys.argv[2])))
        return 0
    return asyncio.run(client(int(sys.argv[2]), int(sys.argv[3])))


if __name__ == "__main__":
    sys.exit(main())
