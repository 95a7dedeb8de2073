"""Figure 6, scale: time from starting a client to the first byte served through its new tunnel;
handshakes per second when many clients start at once; optionally (--heavy) 1,000 tunnels."""

import os
import re
import select
import socket
import subprocess
import time

from contenders import CULVERT_PORTS, FORWARDING, Supervisor, plain_flag, start_client
from figures.common import row, target
from lib import BIN, log, memory_sum, stop_all, wait_until
from origins import start_echo


def first_byte_after_start(sup, origin_port):
    """Client start -> Forwarding line (read from a pipe, no polling) -> 1 byte echoed."""
    t0 = time.perf_counter()
    p = subprocess.Popen([os.path.join(BIN, "culvert"), "tcp", f"127.0.0.1:{origin_port}",
                          "--server", sup.server, "--no-state", "--log-level", "warn", *plain_flag()],
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        buf, deadline = b"", time.monotonic() + 20
        while not re.search(FORWARDING, buf.decode(errors="replace")):
            if time.monotonic() > deadline or p.poll() is not None:
                raise RuntimeError("client did not print Forwarding")
            if select.select([p.stdout], [], [], 1)[0]:
                buf += os.read(p.stdout.fileno(), 4096)
        t_fwd = time.perf_counter()
        port = int(re.search(FORWARDING, buf.decode()).group(2))
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise RuntimeError("no echo")
        t1 = time.perf_counter()
        s.close()
        return (t1 - t0) * 1000, (t_fwd - t0) * 1000
    finally:
        p.terminate()
        p.wait(5)


def burst(sup, origin_port, n):
    """Starts n clients at once; seconds until every one has printed Forwarding."""
    clients = []
    t0 = time.perf_counter()
    try:
        for i in range(n):
            clients.append(start_client(sup.server, f"127.0.0.1:{origin_port}", name=f"burst{i}"))
        spawned = time.perf_counter() - t0
        pending = list(clients)

        def done():
            pending[:] = [c for c in pending if not c.search(FORWARDING)]
            return not pending
        wait_until(done, 120, f"{n} clients to print Forwarding")
        elapsed = time.perf_counter() - t0
        st = sup.status() or {"tunnels": []}
        return elapsed, spawned, len(st["tunnels"]), memory_sum(
            [sup.proc.pid] + [t["worker_pid"] for t in st["tunnels"] if t["worker_pid"]])
    finally:
        stop_all(clients)


def run(cfg):
    echo, port = start_echo()
    rows, targets, notes = [], [], []
    sup = Supervisor(extra=["--grace-period", "1"])
    try:
        fb, fwd = [], []
        first_byte_after_start(sup, port)                       # warm-up (page cache)
        for _ in range(cfg.start_n):
            a, b = first_byte_after_start(sup, port)
            fb.append(a)
            fwd.append(b)
        log(f"scale: client start -> first byte median {sorted(fb)[len(fb) // 2]:.1f} ms")
        rows.append(row("client start -> Forwarding printed", "ms", {"culvert": fwd}, "lower"))
        rows.append(row("client start -> first byte through the new tunnel", "ms",
                        {"culvert": fb}, "lower"))
        rates = []
        for r in range(cfg.runs):
            wait_until(lambda: not (sup.status() or {}).get("tunnels"), 30,
                       "the previous tunnels to be released")
            try:
                elapsed, spawned, count, _ = burst(sup, port, cfg.burst)
            except Exception as e:  # noqa: BLE001 - keep the rows measured so far
                why = sup.crashed() or str(e)[:300]
                log(f"scale: {cfg.burst} clients at once FAILED: {why}")
                notes.append(f"{cfg.burst} clients at once FAILED in round {r + 1}: {why}")
                rates.append(None)
                break
            rates.append(cfg.burst / elapsed)
            log(f"scale: {cfg.burst} clients at once: all forwarding after {elapsed:.2f} s "
                f"(spawning took {spawned:.2f} s), {count} tunnels")
        rows.append(row(f"handshakes/s, {cfg.burst} clients started at once", "1/s",
                        {"culvert": rates}))
        targets.append(target(f"{cfg.burst} clients started at once all get a tunnel", None,
                              None not in rates, "ok" if None not in rates else "failed"))
        notes.append(f"Handshakes/s = {cfg.burst} / (time from the first client's spawn until "
                     "every client printed Forwarding); it includes starting the client "
                     "processes on the same 2 cores.")
    finally:
        sup.stop()
    if cfg.heavy:
        sup = Supervisor(ports=CULVERT_PORTS, extra=["--grace-period", "1"])
        try:
            elapsed, _, count, mem = burst(sup, port, 1000)
            ok = count == 1000
            rows.append(row("1,000 tunnels: time until all forwarding", "s",
                            {"culvert": [elapsed]}, "lower"))
            rows.append(row("1,000 tunnels: supervisor+workers PSS", "KiB",
                            {"culvert": [mem["pss"]]}, "lower"))
            targets.append(target("1,000 tunnels work (--heavy)", count, ok, f"{count} tunnels"))
        except Exception as e:  # noqa: BLE001
            why = sup.crashed() or str(e)[:300]
            log(f"1,000 tunnels failed: {why}")
            targets.append(target("1,000 tunnels work (--heavy)", None, False, f"failed: {why}"))
        finally:
            sup.stop()
    else:
        notes.append("1,000 tunnels: not run (pass --heavy).")
    echo.stop()
    return {"title": "6. Scale", "rows": rows, "targets": targets, "notes": notes}
