"""Bad input on the control port: garbage, an oversized length, an unknown frame type, a
handshake that stalls (before and inside a frame), a DATA_INIT with a wrong secret, a frame
other than INIT first. Each gets an ERROR frame and a closed connection within a bounded time,
while the supervisor and an existing tunnel carry on (checked byte for byte)."""

import os
import socket
import struct
import time

from harness import Environment, connect, echo_handler, recv_all, run_test

HANDSHAKE_TIMEOUT = 1
ERROR = 4


def header(length, kind, flags=0, stream=0):
    return struct.pack(">IBBI", length, kind, flags, stream)


def expect_error(port, send, expected_code, within=5.0, what=""):
    """Sends bytes, then expects an ERROR frame with the code, then the connection's end."""
    s = connect(port, timeout=within)
    started = time.monotonic()
    if send:
        s.sendall(send)
    reply = b""
    try:
        reply = recv_all(s)
    except ConnectionResetError:
        pass
    elapsed = time.monotonic() - started
    s.close()
    assert len(reply) >= 12, f"{what}: no ERROR frame (got {reply!r})"
    length, kind, flags, stream = struct.unpack(">IBBI", reply[:10])
    code = struct.unpack(">H", reply[10:12])[0]
    assert kind == ERROR and code == expected_code, f"{what}: got type {kind} code {code}"
    message = reply[14:10 + length].decode()
    assert elapsed < within, f"{what}: took {elapsed:.1f} s"
    print(f"{what}: ERROR {code} '{message}' after {elapsed * 1000:.0f} ms")


def echo_check(port):
    payload = os.urandom(256 * 1024)
    s = connect(port)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == payload, "existing tunnel corrupted"
    s.close()


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor("--handshake-timeout", str(HANDSHAKE_TIMEOUT))
        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")
        port = sup.control_port
        echo_check(client.port)

        protocol_error, handshake_timeout, unknown_tunnel = 1, 7, 11
        expect_error(port, os.urandom(4096), protocol_error, what="random bytes")
        expect_error(port, header(0xFFFFFFF0, 1), protocol_error, what="oversized length")
        expect_error(port, header(4, 0x7E) + b"abcd", protocol_error, what="unknown type")
        expect_error(port, header(8, 5) + b"12345678", protocol_error, what="PING before INIT")
        expect_error(port, header(3, 1) + b"\0\1\1", protocol_error, what="truncated INIT")
        expect_error(port, b"", handshake_timeout, within=HANDSHAKE_TIMEOUT + 3, what="silence")
        expect_error(port, header(40, 1)[:6], handshake_timeout, within=HANDSHAKE_TIMEOUT + 3,
                     what="stalled header")
        expect_error(port, header(40, 1) + b"\0\1", handshake_timeout,
                     within=HANDSHAKE_TIMEOUT + 3, what="stalled payload")
        wrong = header(42, 6) + struct.pack(">HQ", 1, 12345) + bytes(32)
        expect_error(port, wrong, unknown_tunnel, what="DATA_INIT with a wrong secret")

        # Many at once, some never finishing: the supervisor still serves everyone.
        stalled = [connect(port) for _ in range(100)]
        for s in stalled[:50]:
            s.sendall(os.urandom(64))
        echo_check(client.port)
        for s in stalled:
            s.close()
        assert sup.process.alive(), "supervisor died"
        other = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")
        echo_check(other.port)
        echo_check(client.port)


run_test(main)
