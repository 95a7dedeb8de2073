"""Bad input on the control port: garbage, an oversized length, an unknown frame type, a
handshake that stalls (before and inside a frame), a DATA_INIT with a wrong secret, a frame
other than INIT first. Each gets an ERROR frame and a closed connection within a bounded time,
while the supervisor and an existing tunnel carry on (checked byte for byte)."""

import os
import resource
import socket
import struct
import time

from harness import (PROTOCOL_VERSION, Environment, connect, echo_handler, recv_all, run_test,
                     wait_until)

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

        protocol_error, version_mismatch, handshake_timeout, unknown_tunnel = 1, 6, 7, 11
        # (0x16 would start a TLS record, which a clear-text server closes without a word.)
        garbage = os.urandom(4096)
        if garbage[0] == 0x16:
            garbage = b"\x17" + garbage[1:]
        expect_error(port, garbage, protocol_error, what="random bytes")
        expect_error(port, header(0xFFFFFFF0, 1), protocol_error, what="oversized length")
        expect_error(port, header(4, 0x7E) + b"abcd", protocol_error, what="unknown type")
        expect_error(port, header(8, 5) + b"12345678", protocol_error, what="PING before INIT")
        expect_error(port, header(3, 1) + struct.pack(">HB", PROTOCOL_VERSION, 2), protocol_error,
                     what="truncated INIT")
        old_init = struct.pack(">HBBB", 1, 2, 0, 0) + b"\0"  # version 1, tcp, no token/name/reclaim
        expect_error(port, header(len(old_init), 1) + old_init, version_mismatch,
                     what="INIT of protocol version 1")
        v2_init = struct.pack(">HBBB", 2, 2, 0, 0) + b"\0"  # version 2 routed TLS data by tunnel id
        expect_error(port, header(len(v2_init), 1) + v2_init, version_mismatch,
                     what="INIT of protocol version 2")
        expect_error(port, b"", handshake_timeout, within=HANDSHAKE_TIMEOUT + 3, what="silence")
        expect_error(port, header(40, 1)[:6], handshake_timeout, within=HANDSHAKE_TIMEOUT + 3,
                     what="stalled header")
        expect_error(port, header(40, 1) + b"\0\1", handshake_timeout,
                     within=HANDSHAKE_TIMEOUT + 3, what="stalled payload")
        wrong = header(42, 6) + struct.pack(">HQ", PROTOCOL_VERSION, 12345) + bytes(32)
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

        # A flood of 1,000 connections that never finish a handshake, all from one address:
        # beyond the per-address limit they are refused at once; the rest time out (or make way
        # for newer ones). Tunnels keep carrying data meanwhile.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
        flood = []
        for _ in range(1000):
            try:
                flood.append(connect(port, timeout=5))
            except OSError:
                break  # the listen backlog is full: that, too, is the flood being held off
        echo_check(client.port)
        overloaded = 0
        for s in flood[-100:]:  # the latest arrivals were over the per-address limit
            s.settimeout(HANDSHAKE_TIMEOUT + 3)
            try:
                reply = recv_all(s)
            except OSError:
                reply = b""
            if len(reply) >= 12 and reply[4] == ERROR and struct.unpack(">H", reply[10:12])[0] == 12:
                overloaded += 1
        for s in flood:
            s.close()
        print(f"flood: {len(flood)} connections, {overloaded} of the last 100 refused as overloaded")
        assert overloaded > 0, "no connection was refused as overloaded"
        assert sup.process.alive(), "supervisor died under the flood"
        echo_check(client.port)
        echo_check(other.port)

        # Another client tries to take over a live tunnel by its id with a wrong secret: it gets
        # a tunnel of its own, the victim keeps its domain, port and traffic.
        victim = sup.tunnel(client)
        thief = socket.create_connection(("127.0.0.1", port), timeout=5)
        token, subdomain = b"", b""
        init = (struct.pack(">HB", PROTOCOL_VERSION, 2) + bytes([len(token)]) + token
                + bytes([len(subdomain)]) + subdomain + b"\x01"
                + struct.pack(">Q", env.saved_tunnel(victim["domain"])["tunnel_id"]) + os.urandom(32))
        thief.sendall(header(len(init), 1) + init)
        reply = thief.recv(4096)
        length, kind = struct.unpack(">IB", reply[:5])
        assert kind == 2, f"expected DOMAIN, got type {kind}"
        offered_port = struct.unpack(">H", reply[10 + 8 + 32:10 + 8 + 32 + 2])[0]
        assert offered_port != client.port, "the thief got the victim's port"
        thief.close()
        after = sup.tunnel(client)
        assert after["domain"] == victim["domain"] and after["state"] == "active", after
        echo_check(client.port)
        print("reclaim with a wrong secret: served as a new tunnel; the victim is untouched")

        # A tunnel at its visitor limit resets the newcomer and keeps serving the others.
        small = env.supervisor("--max-visitors", "3", name="small-supervisor")
        limited = env.client(small, "tcp", f"127.0.0.1:{echo.port}", "--no-state")
        held = [connect(limited.port) for _ in range(3)]
        for s in held:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        try:  # on loopback the reset can even beat connect() back
            extra = connect(limited.port)
            extra.sendall(b"y")
            got = extra.recv(1)
            extra.close()
        except ConnectionResetError:
            got = None
        assert not got, f"a 4th visitor over --max-visitors 3 was served: {got!r}"
        for s in held:
            s.sendall(b"z")
            assert s.recv(1) == b"z"
            s.close()
        wait_until(lambda: small.tunnel(limited)["open_connections"] == 0, 10, "visitors closed")
        echo_check(limited.port)
        print("visitor limit: the 4th visitor was reset; the 3 others and later ones are served")


run_test(main)
