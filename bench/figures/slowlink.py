"""Figure 4b, first byte over a slow tunnel link: three network namespaces (visitor, server,
client) joined by veth pairs; the server<->client link gets a 50 ms round trip (tc netem 25 ms on
both ends, or a user-space delay relay where the kernel has no netem). A fresh visitor connection
(visitor<->server link not slowed) sends 1 byte; the echoed byte's arrival is expressed in round
trips of the slow link (measured with the same probe against an echo across that link)."""

import os
import subprocess
import sys

from contenders import FORWARDING, Supervisor, start_client
from figures.common import row, target
from figures.probe_run import probe
from lib import HELPERS, Proc, log, on_exit, wait_until
from origins import start_echo

DELAY_MS = 25


def sh(*args, check=True):
    out = subprocess.run(args, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {out.stderr.strip()}")
    return out


def make_namespaces(tag):
    ns = {k: f"cvb-{k}-{tag}" for k in ("vis", "srv", "cli")}
    made = []

    def delete():
        for n in made:
            sh("ip", "netns", "del", n, check=False)
    on_exit(delete)
    for n in ns.values():
        sh("ip", "netns", "add", n)
        made.append(n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    links = [("vis", "10.201.1.1", "srv", "10.201.1.2"), ("srv", "10.201.2.1", "cli", "10.201.2.2")]
    for i, (a, aip, b, bip) in enumerate(links):
        ea, eb = f"cvb{i}a{tag}"[:15], f"cvb{i}b{tag}"[:15]
        sh("ip", "link", "add", ea, "netns", ns[a], "type", "veth", "peer", "name", eb,
           "netns", ns[b])
        for n, dev, ip in ((ns[a], ea, aip), (ns[b], eb, bip)):
            sh("ip", "-n", n, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
    return ns, delete, ("cvb1a" + tag)[:15], ("cvb1b" + tag)[:15]


def run(cfg):
    result = {"title": "4b. First byte over a 50 ms tunnel link (network namespaces)",
              "rows": [], "targets": [], "notes": []}
    tag = str(os.getpid() % 100000)
    try:
        ns, delete, dev_srv, dev_cli = make_namespaces(tag)
    except Exception as e:  # noqa: BLE001
        msg = f"SKIPPED: cannot create network namespaces ({e})"
        log(msg)
        result["notes"].append(msg)
        result["targets"].append(target("first byte after ~1.0 round trips (50 ms link)", None,
                                        None, "skipped"))
        return result
    procs = []
    try:
        netem = True
        for n, dev in ((ns["srv"], dev_srv), (ns["cli"], dev_cli)):
            out = sh("ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", dev, "root", "netem",
                     "delay", f"{DELAY_MS}ms", check=False)
            if out.returncode != 0:
                netem = False
                log(f"tc netem unavailable ({out.stderr.strip()}); using a user-space delay relay")
                break
        if netem:
            sup = Supervisor(control_host="10.201.2.1", public_bind="10.201.1.2", netns=ns["srv"])
            server = sup.server
            # link round trip, measured like the tunnel: echo in srv, pinged from cli
            link_echo, link_port = start_echo(netns=ns["srv"], host="10.201.2.1")
            procs.append(link_echo)
            link_target = ("10.201.2.1", link_port)
            how = f"tc netem delay {DELAY_MS}ms on both ends of the server<->client veth"
        else:
            sup = Supervisor(public_bind="10.201.1.2", netns=ns["srv"])
            relay = Proc("delay-relay", [sys.executable, os.path.join(HELPERS, "delay_relay.py"),
                                         "10.201.2.1", "0", "127.0.0.1", str(sup.port),
                                         str(DELAY_MS)], netns=ns["srv"])
            procs.append(relay)
            relay_port = relay.wait_for(r"listening (\d+)").group(1)
            server = f"10.201.2.1:{relay_port}"
            link_echo, link_port = start_echo(netns=ns["srv"])
            link_relay = Proc("delay-relay-echo", [
                sys.executable, os.path.join(HELPERS, "delay_relay.py"), "10.201.2.1", "0",
                "127.0.0.1", str(link_port), str(DELAY_MS)], netns=ns["srv"])
            procs += [link_echo, link_relay]
            link_target = ("10.201.2.1", int(link_relay.wait_for(r"listening (\d+)").group(1)))
            how = (f"kernel has no sch_netem: a user-space relay in the server namespace delays "
                   f"every chunk {DELAY_MS} ms each way (bench/helpers/delay_relay.py)")
        procs.append(sup)
        origin, origin_port = start_echo(netns=ns["cli"])
        procs.append(origin)
        client = start_client(server, f"127.0.0.1:{origin_port}", netns=ns["cli"])
        procs.append(client)
        public_port = int(client.wait_for(FORWARDING, timeout=30).group(2))
        wait_until(lambda: (sup.tunnel(public_port) or {}).get("data_connections", 0) >= 1, 20,
                   "the client's data connections")
        probe("ttfb", "10.201.1.2", public_port, 2, netns=ns["vis"])      # warm-up
        rtts, ttfbs, in_rtts = [], [], []
        for r in range(cfg.runs):
            link = probe("pingpong", link_target[0], link_target[1], 10, 10, netns=ns["cli"])
            res = probe("ttfb", "10.201.1.2", public_port, cfg.slow_n, netns=ns["vis"])
            rtts.append(link["p50_us"] / 1000)
            ttfbs.append(res["p50_us"] / 1000)
            in_rtts.append(ttfbs[-1] / rtts[-1])
            log(f"slow link run {r + 1}: link RTT {rtts[-1]:.1f} ms, first byte "
                f"{ttfbs[-1]:.1f} ms = {in_rtts[-1]:.2f} RTT")
        result["rows"] = [row("slow link round trip (measured)", "ms", {"culvert": rtts}, "lower"),
                          row("fresh visitor connection first byte, median", "ms",
                              {"culvert": ttfbs}, "lower"),
                          row("first byte in link round trips", "RTT", {"culvert": in_rtts},
                              "lower")]
        v = result["rows"][2]["values"]["culvert"]["median"]
        result["targets"].append(target("first byte after ~1.0 round trips of the 50 ms link",
                                        v, v <= 1.2, f"{v:.2f} RTT (need <= 1.2)"))
        result["notes"].append(f"Delay: {how}. {cfg.slow_n} fresh visitor connections per run.")
    finally:
        for p in reversed(procs):
            p.stop()
        delete()
    return result
