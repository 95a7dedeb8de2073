"""Figure 4a, new-connection time to first byte on loopback: connect + send 1 byte + receive the
echoed byte on a fresh connection, median over many connections."""

from figures.common import row, start_contenders, stop_contenders, target
from figures.probe_run import probe
from lib import log
from origins import start_echo

NAMES = ["direct", "socat x2", "min relay x2", "culvert", "culvert tls"]


def run(cfg):
    echo, port = start_echo()
    contenders = start_contenders(NAMES, port)
    p50 = {c.name: [] for c in contenders}
    p99 = {c.name: [] for c in contenders}
    try:
        for c in contenders:                     # warm-up (culvert's data connections, caches)
            probe("ttfb", "127.0.0.1", c.public_port, 20)
        for r in range(cfg.runs):
            for c in contenders:
                try:
                    res = probe("ttfb", "127.0.0.1", c.public_port, cfg.ttfb_n)
                    if res["failures"]:
                        log(f"ttfb {c.name}: {res['failures']} of {cfg.ttfb_n} connections failed")
                    p50[c.name].append(res["p50_us"] / 1000)
                    p99[c.name].append(res["p99_us"] / 1000)
                except Exception as e:  # noqa: BLE001
                    log(f"ttfb {c.name}: {e}")
                    p50[c.name].append(None)
                    p99[c.name].append(None)
            log(f"ttfb run {r + 1}: " + ", ".join(f"{n} {v[-1]} ms" for n, v in p50.items()))
    finally:
        stop_contenders(contenders)
        echo.stop()
    rows = [row("fresh connection first byte, median", "ms", p50, "lower"),
            row("fresh connection first byte, p99", "ms", p99, "lower")]
    cu, di = rows[0]["values"]["culvert"]["median"], rows[0]["values"]["direct"]["median"]
    ok = None if cu is None or di is None else cu <= di + 0.3
    targets = [target("fresh connection TTFB median <= direct + 0.3 ms", cu, ok,
                      "n/a" if ok is None else f"+{cu - di:.3f} ms")]
    return {"title": "4a. New connection, time to first byte (loopback)", "rows": rows,
            "targets": targets,
            "notes": [f"{cfg.ttfb_n} fresh connections per run, one after another."]}
