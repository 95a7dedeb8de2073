"""On a TLS server, DATA_ROUTE names the tunnel by a route tag, HMAC-SHA256(secret, "culvert data
route tag v1"), not by its id (which culvert-status showed anyone on the host). A DATA_ROUTE in
the old form (the tunnel id) or with a wrong tag gets ERROR from the supervisor at once, so none
reaches the worker or takes one of its 32 TLS handshake slots; the right tag reaches the worker,
and the client, which routes by the tag, carries bytes throughout."""

import os
import struct

from harness import (route_tag, PROTOCOL_VERSION, Environment, assert_echoed, connect, echo_handler,
                     make_certificates, require, run_test, wait_until)

ATTEMPTS = 40  # more than the worker's 32 TLS handshake slots


def saved_tunnel(env):
    """The client's tunnel id and secret, from its state file."""
    saved = env.saved_tunnel()
    return saved["tunnel_id"], bytes.fromhex(saved["secret"])


def data_route(payload):
    return struct.pack(">IBBI", len(payload), 9, 0, 0) + payload


def read_reply(s, timeout=5):
    """The first frame the supervisor answers with: (type, payload)."""
    s.settimeout(timeout)
    data = b""
    while len(data) < 10 or len(data) < 10 + struct.unpack(">I", data[:4])[0]:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert len(data) >= 10, f"no frame in reply: {data!r}"
    return data[4], data[10:]


def main():
    require("openssl")
    with Environment() as env:
        files = make_certificates(env.workdir)
        echo = env.service(echo_handler)
        sup = env.supervisor("--tls-cert", files["server"] + ".pem",
                             "--tls-key", files["server"] + ".key")
        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--ca", files["ca"] + ".pem")
        assert_echoed(client.port, 1 << 20)
        tunnel_id, secret = saved_tunnel(env)
        tag = route_tag(secret)

        # The old form (version and tunnel id) and wrong tags: each refused by the supervisor at
        # once with ERROR, so none is handed to the worker (where it would wait in a TLS
        # handshake slot for up to 5 s).
        wrong = bytearray(tag)
        wrong[-1] ^= 1
        protocol_error, unknown_tunnel = 1, 11
        attempts = {
            "old form with the tunnel id": (
                data_route(struct.pack(">HQ", PROTOCOL_VERSION, tunnel_id)), protocol_error),
            "tunnel id padded to a tag's size": (
                data_route(struct.pack(">HQ", PROTOCOL_VERSION, tunnel_id) + bytes(24)),
                unknown_tunnel),
            "tag off by one bit": (
                data_route(struct.pack(">H", PROTOCOL_VERSION) + bytes(wrong)), unknown_tunnel),
        }
        for what, (frame, expected) in attempts.items():
            for _ in range(ATTEMPTS):
                with connect(sup.control_port) as s:
                    s.sendall(frame)
                    kind, payload = read_reply(s)
                code, = struct.unpack(">H", payload[:2])
                assert kind == 4 and code == expected, f"{what}: got frame {kind} {payload!r}"
            print(f"{what}: ERROR {code} {payload[4:].decode(errors='replace')!r}, "
                  f"{ATTEMPTS} times")
        log = sup.process.stderr()
        assert "TLS handshake failed" not in log and "too many TLS handshakes" not in log, log

        # The right tag reaches the worker: it starts the TLS handshake, which bytes that are
        # not TLS end (and the worker logs it, naming our address).
        s = connect(sup.control_port)
        s.sendall(data_route(struct.pack(">H", PROTOCOL_VERSION) + tag))
        s.sendall(b"\x16\x03\x01\x00\x05hello")
        port = s.getsockname()[1]
        sup.process.wait_for_output(rf"data connection from 127\.0\.0\.1:{port}: TLS handshake "
                                    "failed", stream="stderr")
        print("the right tag reached the worker's TLS handshake")
        s.close()

        # The client routes by the tag: a new data connection (after its worker restarts) works.
        pid = sup.tunnel(client)["worker_pid"]
        os.kill(pid, 9)
        wait_until(lambda: (sup.tunnel(client) or {}).get("worker_pid") not in (0, pid)
                   and sup.tunnel(client)["data_connections"] >= 1, 15,
                   "a new worker with the client's data connections")
        assert_echoed(client.port, 1 << 20)
        print("the client's data connections route by tag: 1 MiB echoed after a worker restart")


run_test(main)
