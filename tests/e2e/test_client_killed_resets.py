"""The client dies (SIGKILL) in the middle of a raw-TCP download that would end by closing the
connection: the visitor must see a reset, never a clean end of stream that would make the
truncated download look complete."""

import signal
import socket
import time

from harness import Environment, connect, run_test


def slow_source(conn):
    # 64 KiB every 10 ms for up to 30 s, then a normal close (FIN).
    block = b"d" * 65536
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conn.sendall(block)
        time.sleep(0.01)
    conn.shutdown(socket.SHUT_WR)


def main():
    with Environment() as env:
        source = env.service(slow_source)
        sup = env.supervisor()
        client = env.client(sup, "tcp", f"127.0.0.1:{source.port}")
        s = connect(client.port, timeout=20)
        received = 0
        while received < 1 << 20:
            received += len(s.recv(65536))
        client.process.signal(signal.SIGKILL)
        outcome = None
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    outcome = "clean EOF"
                    break
                received += len(data)
        except ConnectionResetError:
            outcome = "reset"
        except socket.timeout:
            outcome = "timeout"
        print(f"visitor received {received} bytes, then: {outcome}")
        assert outcome == "reset", f"visitor saw {outcome}, not a reset"


run_test(main)
