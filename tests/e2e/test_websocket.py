"""A WebSocket echo through an http tunnel with a real client and server (npm `ws`): the
upgrade passes, many messages flow both ways over one long-lived stream, and the close
handshake completes."""

import os
import subprocess

from harness import Environment, HERE, require, run_test


def main():
    require("node", node_modules=["ws"])
    with Environment() as env:
        server = env.start("ws-server", ["node", os.path.join(HERE, "ws_echo.js"), "server"])
        port = int(server.wait_for_output(r"PORT (\d+)").group(1))
        sup = env.supervisor()
        client = env.client(sup, "http", port)
        url = client.url.replace("http://", "ws://") + "/echo"
        # Node does not resolve *.localhost: connect to 127.0.0.1 with the tunnel's Host.
        url = url.replace(client.domain, "127.0.0.1")
        out = subprocess.run(["node", os.path.join(HERE, "ws_echo.js"), "client", url, "100"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"ws client failed: {out.stdout} {out.stderr}"
        assert "OK 100 echoes" in out.stdout
        client.process.wait_for_output(r"GET /echo 101 ")


run_test(main)
