"""The origin services the figures measure through each contender: nginx serving a 100-byte file,
an iperf3 server, and the Python echo server. Each start() returns the port it listens on."""

import os
import sys
import urllib.request

from lib import HELPERS, WORKDIR, Proc, free_port, wait_port

ORIGIN_PORTS = (44500, 44999)


def start_echo(netns=None, host="127.0.0.1"):
    p = Proc("echo", [sys.executable, os.path.join(HELPERS, "echo.py"), "--host", host],
             netns=netns)
    port = int(p.wait_for(r"listening (\d+)").group(1))
    return p, port


def start_iperf3():
    port = free_port(*ORIGIN_PORTS)
    p = Proc("iperf3-server", ["iperf3", "-s", "-p", str(port), "-B", "127.0.0.1"])
    wait_port(port)
    return p, port


def start_nginx():
    port = free_port(*ORIGIN_PORTS)
    # Started as root, nginx serves from worker processes running as nobody: they must be able to
    # reach the file through the bench's private (0700) work directory, or every answer is a 403.
    os.chmod(WORKDIR, 0o755)
    prefix = os.path.join(WORKDIR, f"nginx-{port}")
    os.makedirs(os.path.join(prefix, "html"), exist_ok=True)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    with open(os.path.join(prefix, "html", "small"), "wb") as f:
        f.write(b"x" * 99 + b"\n")                    # 100 bytes
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        root {prefix}/html;
    }}
}}
""")
    p = Proc("nginx", ["nginx", "-c", conf, "-p", prefix + "/"])
    wait_port(port)
    # A figure of error pages would be meaningless: check the file is served before measuring.
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/small", timeout=5) as answer:
            body = answer.read()
    except OSError as e:  # urllib's HTTPError (a 403, say) is one
        p.stop()
        raise RuntimeError(f"nginx does not serve the test file: {e}") from e
    if len(body) != 100:
        p.stop()
        raise RuntimeError(f"nginx served {len(body)} bytes instead of the 100-byte file")
    return p, port
