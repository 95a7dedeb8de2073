"""Origin for the latency, first-byte and idle-connection figures: a single-threaded epoll TCP
echo server (TCP_NODELAY, any number of connections). Prints 'listening PORT' when ready."""

import argparse
import resource
import selectors
import socket
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, default=0)
args = ap.parse_args()

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

sel = selectors.EpollSelector()
lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind((args.host, args.port))
lsock.listen(4096)
lsock.setblocking(False)
sel.register(lsock, selectors.EVENT_READ, None)
print(f"listening {lsock.getsockname()[1]}", flush=True)

while True:
    for key, _ in sel.select():
        if key.data is None:
            for _ in range(64):
                try:
                    conn, _ = lsock.accept()
                except (BlockingIOError, OSError):
                    break
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ, True)
            continue
        conn = key.fileobj
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            data = b""
        if not data:
            sel.unregister(conn)
            conn.close()
            continue
        try:
            conn.sendall(data)   # small payloads: fits the send buffer
        except OSError:
            sel.unregister(conn)
            conn.close()
