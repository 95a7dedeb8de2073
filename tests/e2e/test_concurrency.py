"""Many streams on one tunnel: 200 concurrent visitors each get their own bytes echoed back,
and a visitor that stops reading stalls only its own stream while another stream keeps moving
at speed."""

import hashlib
import os
import socket
import threading
import time

from harness import Environment, connect, echo_handler, recv_all, run_test

VISITORS = 200
FAST_SIZE = 64 * 1024 * 1024


def endless(conn):
    # Writes until the visitor goes away: the stalled visitor never reads any of it.
    block = b"s" * 65536
    try:
        while True:
            conn.sendall(block)
    except OSError:
        pass


def fast_source(conn):
    conn.recv(1)
    block = os.urandom(1 << 20)
    for _ in range(FAST_SIZE >> 20):
        conn.sendall(block)
    conn.shutdown(socket.SHUT_WR)


def timed_download(port):
    s = connect(port, timeout=60)
    started = time.monotonic()
    s.sendall(b"g")
    size = len(recv_all(s))
    s.close()
    assert size == FAST_SIZE, size
    return time.monotonic() - started


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor()
        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")

        # All visitors connect first, then all talk at once.
        sockets = [connect(client.port, timeout=30) for _ in range(VISITORS)]
        failures = []

        def talk(index, s):
            try:
                payload = os.urandom(32 * 1024) + index.to_bytes(4, "big")
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                got = recv_all(s)
                if hashlib.sha256(got).digest() != hashlib.sha256(payload).digest():
                    failures.append(f"visitor {index}: {len(got)} bytes, wrong content")
            except OSError as e:
                failures.append(f"visitor {index}: {e}")
            finally:
                s.close()

        threads = [threading.Thread(target=talk, args=(i, s)) for i, s in enumerate(sockets)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failures, failures[:5]
        tunnel = sup.tunnel(client)
        assert tunnel["total_connections"] >= VISITORS, tunnel

        # Slow reader: one stream's visitor never reads; another stream must not notice.
        stuck_service = env.service(endless)
        fast_service = env.service(fast_source)
        stuck_client = env.client(sup, "tcp", f"127.0.0.1:{stuck_service.port}")
        fast_client = env.client(sup, "tcp", f"127.0.0.1:{fast_service.port}")
        alone = timed_download(fast_client.port)
        stuck = connect(stuck_client.port)  # never read from
        stuck2 = connect(fast_client.port)  # a stalled stream on the SAME tunnel and connection
        stuck2.sendall(b"g")
        time.sleep(0.5)  # let both stalled streams fill their windows
        beside = timed_download(fast_client.port)
        print(f"64 MiB alone {alone:.2f} s, beside stalled streams {beside:.2f} s")
        assert beside < max(4 * alone, 3.0), f"stalled stream slowed another: {alone} -> {beside}"
        stuck.close()
        stuck2.close()


run_test(main)
