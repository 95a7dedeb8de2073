"""Figure 5, memory: PSS and RSS (smaps_rollup) of culvert's supervisor, worker and client at idle,
the increase per idle visitor connection with 1,000 and 10,000 open on one tunnel, and the
increase per tunnel with 100 tunnels (100 clients) on one supervisor."""

import os
import subprocess
import sys
import time

from contenders import FORWARDING, Culvert, Supervisor, start_client
from figures.common import row, target
from lib import (HELPERS, PSS_ORIGINS, Proc, log, memory_kib, memory_sum, pss_by_origin, stop_all,
                 wait_memory_stable, wait_until)
from origins import start_echo


def idle_and_connections(cfg, origin_port):
    rows, targets, notes = [], [], []
    idle = {"supervisor": {"rss": [], "pss": []}, "worker": {"rss": [], "pss": []},
            "client": {"rss": [], "pss": []}}
    per_conn = {}
    worker_split = {origin: [] for origin in PSS_ORIGINS}  # what an idle worker's PSS is made of
    for n in cfg.visitor_counts:
        c = Culvert()
        holder = None
        try:
            c.start(origin_port)
            wpid = wait_until(c.worker_pid, 10, "the worker's pid")
            wait_until(lambda: (c.sup.tunnel(c.public_port) or {}).get("data_connections", 0) >= 1,
                       20, "data connections")
            roles = {"supervisor": c.sup.proc.pid, "worker": wpid, "client": c.client.pid}
            wait_memory_stable(list(roles.values()), timeout=3, interval=0.2)
            base = {k: memory_kib(p) for k, p in roles.items()}
            for k, m in base.items():
                idle[k]["rss"].append(m["rss"])
                idle[k]["pss"].append(m["pss"])
            for origin, kib in pss_by_origin(wpid).items():
                worker_split[origin].append(kib)
            holder = Proc(f"hold-{n}", [sys.executable, os.path.join(HELPERS, "probe.py"), "hold",
                                        "127.0.0.1", str(c.public_port), str(n)],
                          stdin=subprocess.PIPE)
            t0 = time.monotonic()
            holder.wait_for(r'"held"', timeout=120)
            wait_until(lambda: (c.sup.tunnel(c.public_port) or {}).get("open_connections", 0) >= n,
                       120, f"{n} open connections in culvert-status")
            opened = time.monotonic() - t0
            wait_memory_stable([wpid, c.client.pid], timeout=10)
            after = {k: memory_kib(p) for k, p in roles.items()}
            open_now = c.sup.tunnel(c.public_port)["open_connections"]
            per = {}
            for k in ("worker", "client"):
                per[k] = {m: (after[k][m] - base[k][m]) * 1024 / n for m in ("rss", "pss")}
            per["worker+client"] = {m: per["worker"][m] + per["client"][m] for m in ("rss", "pss")}
            per_conn[n] = per
            log(f"memory {n} visitors: open {open_now} after {opened:.1f} s; per connection "
                f"worker {per['worker']['pss']:.0f} B, client {per['client']['pss']:.0f} B PSS")
            notes.append(f"{n} idle visitor connections: all {open_now} open in culvert-status "
                         f"{opened:.1f} s after the first connect; worker+client alive.")
        except Exception as e:  # noqa: BLE001
            log(f"memory with {n} visitors failed: {e}")
            notes.append(f"{n} idle visitor connections FAILED: {e}")
            per_conn[n] = None
        finally:
            if holder:
                try:
                    holder.popen.stdin.close()
                except OSError:
                    pass
                holder.stop()
            c.stop()
    for k in ("supervisor", "worker", "client"):
        rows.append(row(f"idle {k} RSS", "KiB", {"culvert": idle[k]["rss"]}, "lower"))
        rows.append(row(f"idle {k} PSS", "KiB", {"culvert": idle[k]["pss"]}, "lower"))
    total_rss = [a + b + d for a, b, d in zip(idle["supervisor"]["rss"], idle["worker"]["rss"],
                                              idle["client"]["rss"])]
    rows.append(row("idle supervisor+worker+client RSS", "KiB", {"culvert": total_rss}, "lower"))
    for n, per in per_conn.items():
        for k in ("worker", "client", "worker+client"):
            rows.append(row(f"per idle visitor connection ({n:,} open), {k} PSS", "bytes",
                            {"culvert": [per and per[k]["pss"]]}, "lower"))
        rows.append(row(f"per idle visitor connection ({n:,} open), worker+client RSS", "bytes",
                        {"culvert": [per and per["worker+client"]["rss"]]}, "lower"))
    t = rows[6]["values"]["culvert"]["median"]
    targets.append(target("idle supervisor+worker+client <= 16 MiB RSS", t,
                          None if t is None else t <= 16 * 1024,
                          "n/a" if t is None else f"{t / 1024:.1f} MiB"))
    w = rows[3]["values"]["culvert"]["median"]
    targets.append(target("idle worker <= 1 MiB PSS", w, None if w is None else w <= 1024,
                          "n/a" if w is None else f"{w / 1024:.2f} MiB"))
    for n, per in per_conn.items():
        for k in ("worker", "worker+client"):
            v = per and per[k]["pss"]
            targets.append(target(f"<= 8 KiB per idle visitor connection ({n:,} open, {k} PSS)",
                                  v, None if v is None else v <= 8192,
                                  "FAILED" if v is None else f"{v / 1024:.2f} KiB"))
    for origin, kib in worker_split.items():
        rows.append(row(f"idle worker PSS: {origin}", "KiB", {"culvert": kib}, "lower"))
    big = max(cfg.visitor_counts)
    targets.append(target(f"{big:,} visitor connections on one tunnel work", None,
                          per_conn.get(big) is not None, "ok" if per_conn.get(big) else "failed"))
    return rows, targets, notes


def per_tunnel(cfg, origin_port):
    n = cfg.tunnels
    sup = Supervisor(extra=["--grace-period", "1"])
    clients = []
    try:
        def server_pids():
            st = sup.status() or {"tunnels": []}
            return [sup.proc.pid] + [t["worker_pid"] for t in st["tunnels"] if t["worker_pid"]]

        def start(count):
            for _ in range(count):
                clients.append(start_client(sup.server, f"127.0.0.1:{origin_port}",
                                            name=f"client{len(clients)}"))
            wait_until(lambda: all(cl.search(FORWARDING) for cl in clients), 120,
                       f"{len(clients)} clients to print Forwarding")
            wait_until(lambda: len(server_pids()) == len(clients) + 1, 30, "workers")
            time.sleep(0.5)                  # data connections attach
            return (wait_memory_stable(server_pids(), timeout=5),
                    wait_memory_stable([c.pid for c in clients], timeout=5))
        s1, c1 = start(1)
        sN, cN = start(n - 1)
        per = {"server": {m: (sN[m] - s1[m]) / (n - 1) for m in ("rss", "pss")},
               "client": {m: (cN[m] - c1[m]) / (n - 1) for m in ("rss", "pss")}}
        log(f"memory per tunnel ({n}): server side {per['server']['pss']:.0f} KiB PSS, "
            f"client {per['client']['pss']:.0f} KiB PSS")
        rows = [row(f"per tunnel ({n} tunnels), supervisor+worker PSS", "KiB",
                    {"culvert": [per["server"]["pss"]]}, "lower"),
                row(f"per tunnel ({n} tunnels), supervisor+worker RSS", "KiB",
                    {"culvert": [per["server"]["rss"]]}, "lower"),
                row(f"per tunnel ({n} tunnels), client PSS", "KiB",
                    {"culvert": [per["client"]["pss"]]}, "lower"),
                row(f"total server side with {n} tunnels, PSS", "KiB", {"culvert": [sN["pss"]]},
                    "lower")]
        return rows
    finally:
        stop_all(clients)
        sup.stop()


def run(cfg):
    echo, port = start_echo()
    try:
        rows, targets, notes = idle_and_connections(cfg, port)
        try:
            rows += per_tunnel(cfg, port)
        except Exception as e:  # noqa: BLE001
            log(f"memory per tunnel failed: {e}")
            notes.append(f"per-tunnel memory FAILED: {e}")
    finally:
        echo.stop()
    notes.insert(0, "culvert only; PSS/RSS from /proc/PID/smaps_rollup (user-space memory; "
                 "kernel socket buffers are not included). PSS splits shared library pages among every "
                 "process mapping them, so it moves with whatever else runs (e.g. compilers); "
                 "the per-tunnel rows are the better server-side cost. Per-connection figures are "
                 "(after - before) / connections, measured once per count; idle figures are "
                 "the median over the fresh tunnels started for each count.")
    return {"title": "5. Memory", "rows": rows, "targets": targets, "notes": notes}
