"""The local service is not listening: each visitor is reset at once (not left hanging), the
client says why, and the tunnel carries on; once the service is up, visitors reach it."""

import socket
import time

from harness import Environment, connect, echo_handler, recv_all, run_test


def main():
    with Environment() as env:
        # A port with nothing behind it: bind one, note it, close it.
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()

        sup = env.supervisor()
        client = env.client(sup, "tcp", f"127.0.0.1:{port}")
        for attempt in range(3):
            started = time.monotonic()
            try:
                # The reset can come before connect() has looked at the socket's status: on
                # loopback the worker opens the stream and the client is refused in microseconds.
                s = connect(client.port)
                s.sendall(b"anyone there?")
                got = recv_all(s)
                outcome = f"closed after {len(got)} bytes"
                assert got == b"", got
            except (ConnectionResetError, BrokenPipeError):
                outcome = "reset"
            took = time.monotonic() - started
            assert took < 2, f"visitor {attempt} waited {took:.1f} s for the refusal"
            print(f"visitor {attempt}: {outcome} after {took * 1000:.1f} ms")
        client.process.wait_for_output(
            rf"cannot reach the local service at 127\.0\.0\.1:{port}; visitor reset",
            stream="stderr")

        # The service comes up on that port: the same tunnel now reaches it.
        env.service(echo_handler, port)
        s = connect(client.port)
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"hello"
        assert client.process.alive()
        print("service up: the same tunnel carries bytes")


run_test(main)
