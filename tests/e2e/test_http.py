"""HTTP through a live tunnel with curl: a GET, a POST with a 10 MiB body (checked by SHA-256
on both ends), and the client's per-request log lines."""

import hashlib
import http.server
import os
import subprocess
import threading

from harness import Environment, require, run_test


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = f"hello from {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        digest = hashlib.sha256()
        remaining = length
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            digest.update(chunk)
            remaining -= len(chunk)
        body = f"{length} {digest.hexdigest()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def curl(*args):
    out = subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True,
                         timeout=90)
    assert out.returncode == 0, f"curl {args} failed: {out.stderr.decode()}"
    return out.stdout


def main():
    require("curl")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with Environment() as env:
        sup = env.supervisor()
        client = env.client(sup, "http", server.server_address[1])
        assert client.url.startswith("http://") and client.domain.endswith(".localhost"), client.url

        # curl resolves *.localhost to loopback itself, as browsers do.
        body = curl(f"{client.url}/hello?x=1")
        assert body == b"hello from /hello?x=1\n", body

        payload = os.urandom(10 * 1024 * 1024)
        path = os.path.join(env.workdir, "payload.bin")
        with open(path, "wb") as f:
            f.write(payload)
        reply = curl("--data-binary", f"@{path}", "-H", "Content-Type: application/octet-stream",
                     f"{client.url}/upload")
        assert reply.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}", reply

        # Several requests on one keep-alive connection, each logged on its own line.
        curl(f"{client.url}/a", f"{client.url}/b", f"{client.url}/c")

        log = client.process.wait_for_output(r"GET /c 200 \d+ B [\d.]+ ms").string
        assert "GET /hello?x=1 200 22 B" in log, log
        assert f"POST /upload 200" in log, log
        for line in ("GET /a 200", "GET /b 200"):
            assert line in log, log
        server.shutdown()


run_test(main)
