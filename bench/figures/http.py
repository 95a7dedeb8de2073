"""Figure 2, HTTP: wrk with 64 keep-alive connections fetching a 100-byte file from nginx."""

import re
import subprocess

from figures.common import ratio_target, row, start_contenders, stop_contenders
from lib import log
from origins import start_nginx

NAMES = ["direct", "socat x2", "min relay x2", "culvert", "culvert http", "culvert tls"]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(port, seconds):
    out = subprocess.run(["wrk", "-c", "64", "-t", "2", "-d", f"{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/small"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for p in ("50", "99"):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        lat[p] = float(m.group(1)) * UNITS[m.group(2)]
    # Error answers would be counted as requests served: the run does not count.
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if failed:
        raise RuntimeError(f"wrk got {failed.group(1)} error answers")
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        log(f"wrk reported: {errors.group(0)}")
    return rps, lat["50"], lat["99"]


def run(cfg):
    server, port = start_nginx()
    contenders = start_contenders(NAMES, port)
    rps = {c.name: [] for c in contenders}
    p50 = {c.name: [] for c in contenders}
    p99 = {c.name: [] for c in contenders}
    try:
        for r in range(cfg.runs):
            for c in contenders:
                try:
                    a, b, d = wrk(c.public_port, cfg.http_seconds)
                except Exception as e:  # noqa: BLE001
                    log(f"http {c.name}: {e}")
                    a = b = d = None
                rps[c.name].append(a)
                p50[c.name].append(b)
                p99[c.name].append(d)
                log(f"http run {r + 1} {c.name}: {a} req/s")
    finally:
        stop_contenders(contenders)
        server.stop()
    rows = [row("requests/s", "req/s", rps), row("latency p50", "ms", p50, "lower"),
            row("latency p99", "ms", p99, "lower")]
    targets = [ratio_target("HTTP req/s: culvert (tcp tunnel) >= 0.4x direct",
                            rows[0]["values"]["culvert"]["median"],
                            rows[0]["values"]["direct"]["median"], 0.4),
               ratio_target("HTTP req/s: culvert http tunnel >= 0.4x direct",
                            rows[0]["values"]["culvert http"]["median"],
                            rows[0]["values"]["direct"]["median"], 0.4)]
    return {"title": "2. HTTP (wrk -c 64 -t 2, 100-byte file from nginx)", "rows": rows,
            "targets": targets,
            "notes": [f"wrk -d {cfg.http_seconds}s, keep-alive; 'culvert' is a tcp tunnel, "
                      "'culvert http' an http tunnel (its client prints one line per request)."]}
