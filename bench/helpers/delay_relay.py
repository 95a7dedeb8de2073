"""User-space stand-in for netem where the kernel has no sch_netem: a TCP relay that holds every
chunk for DELAY ms in each direction (order kept), so the relayed link has a round trip of
2*DELAY for data on established connections. (It accepts at once, so a TCP handshake across it
costs no delay; culvert's data connections are set up before any measurement.)
Usage: delay_relay.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY_MS"""

import asyncio
import socket
import sys

lhost, lport, thost, tport, delay = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                     int(sys.argv[4]), float(sys.argv[5]) / 1000)


async def pump(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            await writer.drain()
    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await task
    except (OSError, asyncio.CancelledError):
        task.cancel()


async def handle(r1, w1):
    try:
        r2, w2 = await asyncio.open_connection(thost, tport)
    except OSError:
        w1.close()
        return
    for w in (w1, w2):
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.gather(pump(r1, w2), pump(r2, w1), return_exceptions=True)
    w1.close()
    w2.close()


async def main():
    server = await asyncio.start_server(handle, lhost, lport, backlog=1024)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()

asyncio.run(main())
