"""TLS 1.3 end to end: a supervisor with a certificate from a private CA; a client trusting that
CA carries data byte for byte; one without it, one facing a certificate for another name, and a
clear-text client are all refused with a clear message; --insecure works but warns. Data
connections cannot be joined without the tunnel's key, and a clear-text DATA_INIT is refused."""

import os
import socket
import ssl
import struct

from harness import (route_tag, BIN, PROTOCOL_VERSION, Environment, assert_echoed, connect, echo_handler,
                     make_certificates, recv_all, require, run_test, wait_until)


def saved_tunnel(env):
    """The client's tunnel id and DATA_ROUTE tag (from the secret), read from its state file."""
    saved = env.saved_tunnel()
    return saved["tunnel_id"], route_tag(bytes.fromhex(saved["secret"]))


def refused(env, sup, *args, name):
    p = env.client(sup, "tcp", "127.0.0.1:9", *args, "--no-state", name=name, expect_url=False)
    code = p.popen.wait(30)
    return code, p.stderr()


def main():
    require("openssl")
    with Environment() as env:
        files = make_certificates(env.workdir)
        echo = env.service(echo_handler)
        sup = env.supervisor("--tls-cert", files["server"] + ".pem",
                             "--tls-key", files["server"] + ".key")
        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--ca", files["ca"] + ".pem")

        assert_echoed(client.port, 8 << 20)
        print("8 MiB echoed through a TLS tunnel, SHA-256 identical")
        worker = os.path.basename(os.readlink(f"/proc/{sup.tunnel(client)['worker_pid']}/exe"))
        assert worker == "culvert-worker", worker

        code, err = refused(env, sup, "--tls", name="untrusting")
        assert code == 2 and "certificate does not check out" in err, (code, err)
        print("without the CA:", err.strip().splitlines()[-1])

        code, err = refused(env, sup, "--no-tls", name="clear-text")
        assert code == 2 and "requires TLS" in err, (code, err)
        print("clear text:", err.strip().splitlines()[-1])

        insecure = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--insecure", "--no-state",
                              name="insecure")
        assert "WARNING: --insecure" in insecure.process.stderr()
        s = connect(insecure.port)
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"hello"

        # A supervisor whose certificate names someone else: the client must refuse it.
        other = env.supervisor("--tls-cert", files["other"] + ".pem",
                               "--tls-key", files["other"] + ".key", name="other-supervisor")
        code, err = refused(env, other, "--ca", files["ca"] + ".pem", name="mismatch")
        assert code == 2 and "certificate does not check out" in err and "mismatch" in err, err
        print("wrong name:", err.strip().splitlines()[-1])

        # Joining the tunnel's data connections without its key: route in clear with the right
        # tag (as anyone watching the network sees it), then a TLS handshake that cannot offer
        # the key. The worker drops it; the tunnel carries on.
        tunnel_id, tag = saved_tunnel(env)
        raw = connect(sup.control_port)
        raw.sendall(struct.pack(">IBBI", 34, 9, 0, 0) + struct.pack(">H", PROTOCOL_VERSION) + tag)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with context.wrap_socket(raw) as intruder:
                intruder.recv(1)
            raise AssertionError("a TLS handshake without the tunnel key succeeded")
        except (ssl.SSLError, ConnectionError, OSError) as e:
            print("intruder on the data path:", type(e).__name__, e)
        # A clear-text DATA_INIT (with any secret) is refused on a TLS server.
        s = connect(sup.control_port)
        s.sendall(struct.pack(">IBBI", 42, 6, 0, 0)
                  + struct.pack(">HQ", PROTOCOL_VERSION, tunnel_id) + bytes(32))
        reply = recv_all(s)
        assert reply[4] == 4 and b"requires TLS" in reply, reply
        s = connect(client.port)
        s.sendall(b"still here")
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"still here"
        assert sup.tunnel(client)["data_connections"] >= 1

        # The worker built without TLS, named for a supervisor with a certificate: it says why
        # it cannot serve and exits 78, and the supervisor does not respawn it.
        wrong = env.supervisor("--tls-cert", files["server"] + ".pem",
                               "--tls-key", files["server"] + ".key",
                               "--worker", os.path.join(BIN, "culvert-worker-clear"),
                               name="clear-worker-supervisor")
        env.client(wrong, "tcp", f"127.0.0.1:{echo.port}", "--ca", files["ca"] + ".pem",
                   "--no-state", name="clear-worker-client", expect_url=False)
        line = wrong.process.wait_for_output(r".*built without TLS.*", stream="stderr")
        print("clear worker under TLS:", line.group(0).strip())


run_test(main)
