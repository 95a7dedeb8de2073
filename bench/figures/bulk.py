"""Figure 1, bulk throughput: iperf3 through each contender, 1 and 8 streams, both directions,
plus CPU-seconds per GiB moved, summed over every process of the contender (and its children),
and TCP segments resent per GiB (spurious resends on loopback waste CPU)."""

import json
import subprocess
import time

from figures.common import ratio_target, row, start_contenders, stop_contenders, target, med
from lib import cpu_seconds, descendants, log, tcp_retransmitted_segments, wait_until
from origins import start_iperf3

NAMES = ["direct", "socat x2", "min relay x2", "culvert", "culvert copy", "culvert tls"]


def iperf(port, seconds, streams, reverse):
    args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-P", str(streams),
            "-J", "--connect-timeout", "5000"] + (["-R"] if reverse else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    s = data["end"]["sum_received"]
    return s["bits_per_second"] / 1e9, s["bytes"]


def run(cfg):
    server, port = start_iperf3()
    contenders = start_contenders(NAMES, port)
    rows, targets, floor_notes = [], [], []
    try:
        for streams, reverse in ((1, False), (8, False), (1, True), (8, True)):
            label = f"{streams} stream{'s' if streams > 1 else ''}, {'download (-R)' if reverse else 'upload'}"
            gbps = {c.name: [] for c in contenders}
            cpu = {c.name: [] for c in contenders if c.pids()}
            resent = {c.name: [] for c in contenders}
            for r in range(cfg.runs):
                for c in contenders:
                    before = cpu_seconds(c.pids()) if c.pids() else 0
                    resent_before = tcp_retransmitted_segments()
                    try:
                        g, nbytes = iperf(c.public_port, cfg.bulk_seconds, streams, reverse)
                    except Exception as e:  # noqa: BLE001 - record the failure, go on
                        log(f"bulk {label} {c.name}: {e}")
                        gbps[c.name].append(None)
                        resent[c.name].append(None)
                        if c.pids():
                            cpu[c.name].append(None)
                        continue
                    gbps[c.name].append(g)
                    resent[c.name].append(
                        (tcp_retransmitted_segments() - resent_before) / (nbytes / 2**30))
                    if c.pids():
                        # let socat's per-connection children exit and be reaped (cutime)
                        roots = c.pids()
                        try:
                            wait_until(lambda: len(descendants(roots)) <= len(roots) + 8, 3, "")
                        except TimeoutError:
                            pass
                        time.sleep(0.05)
                        cpu[c.name].append((cpu_seconds(roots) - before) / (nbytes / 2**30))
                    log(f"bulk {label} run {r + 1} {c.name}: {g:.2f} Gbit/s")
            rg = row(f"throughput, {label}", "Gbit/s", gbps)
            rc = row(f"CPU-s per GiB, {label}", "CPU-s/GiB", cpu, better="lower")
            rr = row(f"TCP segments resent per GiB, {label}", "segments/GiB", resent,
                     better="lower")
            rows += [rg, rc, rr]
            targets.append(ratio_target(f"bulk {label}: culvert >= 1.2x socat x2",
                                        med(rg, "culvert"), med(rg, "socat x2"), 1.2))
            targets.append(ratio_target(f"bulk {label}: culvert >= 0.5x direct",
                                        med(rg, "culvert"), med(rg, "direct"), 0.5))
            cm, fm, dm = med(rg, "culvert"), med(rg, "min relay x2"), med(rg, "direct")
            cc, ct = med(rg, "culvert copy"), med(rg, "culvert tls")
            if cm and fm and dm:
                floor_notes.append(f"{label}: culvert {cm / fm:.2f}x min relay x2, which itself "
                                   f"reaches {fm / dm:.2f}x direct"
                                   + (f"; splice gives {cm / cc:.2f}x culvert copy" if cc else "")
                                   + (f"; TLS reaches {ct / cm:.2f}x culvert" if ct else ""))
            cu, so = med(rc, "culvert"), med(rc, "socat x2")
            targets.append(target(f"CPU-s/GiB {label}: culvert < socat x2", cu,
                                  None if cu is None or so is None else cu < so,
                                  "n/a" if cu is None or so is None else f"{cu:.2f} vs {so:.2f}"))
    finally:
        stop_contenders(contenders)
        server.stop()
    return {"title": "1. Bulk throughput (iperf3)", "rows": rows, "targets": targets,
            "notes": [f"iperf3 -t {cfg.bulk_seconds}, median of {cfg.runs} runs (min-max); "
                      "CPU = utime+stime of every contender process and its children "
                      "(culvert: supervisor + worker + client; socat: both relays and their "
                      "per-connection forks). iperf3's own CPU is not counted.",
                      "Segments resent: the growth of Tcp RetransSegs (/proc/net/snmp) during the "
                      "run, over all its TCP connections (iperf3's own and the contender's legs); "
                      "on loopback nothing is lost, so these are spurious resends after reordering.",
                      "min relay x2: two chained splice relays (bench/helpers/min_relay.c), the "
                      "cheapest three TCP legs can be here. " + "; ".join(floor_notes),
                      "culvert copy: the same build with CULVERT_NO_SPLICE=1, so every stream byte "
                      "is copied through the worker and the client (as on a TLS tunnel).",
                      "culvert tls: the tunnel link over TLS 1.3 (a certificate from a private CA "
                      "made for the run, verified by the client); no target applies to it."]}
