"""Text from the network never reaches the developer's terminal raw: a visitor's request target
holding an OSC title sequence, a clear-screen sequence and a bare LF followed by a forged log
line; a server's ERROR text and the public URL in its DOMAIN answer holding the same. The
client's stdout and stderr show each escaped (\\x1b, \\x0a) on one line, with no ESC, BEL or
forged line, and the tunnel keeps serving."""

import socket
import struct
import threading

from harness import Environment, connect, recv_all, run_test

ERROR, DOMAIN = 4, 2
BAD_TOKEN = 2
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\nFORGED 12:00:00.000 GET /forged 200 1 B 0.01 ms"


def http_ok(conn):
    """Answers one request (whatever its target) with a 2-byte body and closes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    conn.shutdown(socket.SHUT_WR)


PROBLEMS = []


def check(condition, message):
    """Records a failed check and carries on, so one run shows every place that leaks."""
    if not condition:
        PROBLEMS.append(message)
        print("PROBLEM:", message)


def check_clean(text, what):
    for bad in ("\x1b", "\x07"):
        check(bad not in text, f"{what} holds {bad!r}: {text!r}")
    check(not any(line.startswith("FORGED") for line in text.splitlines()),
          f"{what} holds a forged line: {text!r}")


def fake_server(answer):
    """A control port that reads the client's first frame and answers with `answer`, then keeps
    the connection open until the client leaves. Returns the listening port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head = conn.recv(10)
                if len(head) == 10:
                    length = struct.unpack(">I", head[:4])[0]
                    while length > 0:
                        got = conn.recv(length)
                        if not got:
                            break
                        length -= len(got)
                    conn.sendall(answer)
                    try:
                        recv_all(conn)
                    except OSError:
                        pass
    threading.Thread(target=serve, daemon=True).start()
    return listener


def frame(kind, payload):
    return struct.pack(">IBBI", len(payload), kind, 0, 0) + payload


def main():
    with Environment() as env:
        service = env.service(lambda conn: http_ok(conn))
        sup = env.supervisor()
        client = env.client(sup, "http", service.port)

        # The visitor's request target, through a real tunnel.
        s = connect(client.port)
        s.sendall(f"GET /{HOSTILE} HTTP/1.1\r\nHost: {client.domain}\r\n\r\n".encode())
        assert recv_all(s).endswith(b"\r\n\r\nok")
        s.close()
        log = client.process.wait_for_output(r" 200 2 B [\d.]+ ms").string
        check("GET /\\x1b]0;pwned\\x07\\x1b[2J\\x0aFORGED 12:00:00.000 GET /forged" in log,
              f"request target not escaped: {log!r}")
        check_clean(log, "client stdout")
        check_clean(client.process.stderr(), "client stderr")
        print("request target shown escaped:", log.strip().splitlines()[-1])

        # A server's ERROR text.
        error = frame(ERROR, struct.pack(">HH", BAD_TOKEN, len(HOSTILE)) + HOSTILE.encode())
        listener = fake_server(error)
        p = env.client(sup, "tcp", "127.0.0.1:1", "--no-state", "--no-tls",
                       server=f"127.0.0.1:{listener.getsockname()[1]}", name="refused",
                       expect_url=False)
        assert p.popen.wait(30) == 2, p.stderr()
        listener.close()
        check("the server refused the tunnel: \\x1b]0;pwned" in p.stderr(),
              f"ERROR text not escaped: {p.stderr()!r}")
        check_clean(p.stderr(), "refused client stderr")
        print("ERROR text shown escaped:", p.stderr().strip().splitlines()[-1])

        # The domain and public URL a server offers.
        url = f"http://evil{HOSTILE}:80".encode()
        domain = b"evil\x1b[2J.localhost"
        offer = (struct.pack(">Q", 7) + bytes(32) + struct.pack(">HHB", 80, 5, 1)
                 + bytes([len(domain)]) + domain + bytes([len(url)]) + url)
        listener = fake_server(frame(DOMAIN, offer))
        p = env.client(sup, "tcp", "127.0.0.1:1", "--no-state", "--no-tls",
                       server=f"127.0.0.1:{listener.getsockname()[1]}", name="offered",
                       expect_url=False)
        p.wait_for_output(r"(?s)Forwarding .* -> ")  # (?s): a raw LF must not hide it
        shown = p.stdout()
        p.stop()
        listener.close()
        check("Forwarding http://evil\\x1b]0;pwned" in shown, f"public URL not escaped: {shown!r}")
        check_clean(shown, "offered client stdout")
        check_clean(p.stderr(), "offered client stderr")
        print("public URL shown escaped:", shown.strip().splitlines()[-1])

        # The tunnel still serves.
        s = connect(client.port)
        s.sendall(f"GET /after HTTP/1.1\r\nHost: {client.domain}\r\n\r\n".encode())
        assert recv_all(s).endswith(b"ok")
        client.process.wait_for_output(r"GET /after 200 2 B")
        assert not PROBLEMS, f"{len(PROBLEMS)} leaks into the terminal:\n" + "\n".join(PROBLEMS)


run_test(main)
