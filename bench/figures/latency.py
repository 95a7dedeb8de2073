"""Figure 3, added latency: 1-byte ping-pong over one connection at a fixed rate to an echo
origin; p50/p99 of each contender minus direct's, paired run by run. The target is culvert's own
share: its added p50/p99 minus min relay x2's in the same round, since two relay processes cost
100+ us on their own here (the floor of any two-process design, not culvert's doing)."""

from figures.common import med, row, start_contenders, stop_contenders, target
from figures.probe_run import probe
from lib import log
from origins import start_echo

NAMES = ["direct", "socat x2", "min relay x2", "culvert", "culvert tls"]
SHARE_P50_US = 15  # culvert's share: added latency beyond min relay x2's, same round
SHARE_P99_US = 40


def run(cfg):
    echo, port = start_echo()
    contenders = start_contenders(NAMES, port)
    raw = {c.name: {"p50": [], "p99": []} for c in contenders}
    try:
        for r in range(cfg.latency_runs):
            for c in contenders:
                try:
                    res = probe("pingpong", "127.0.0.1", c.public_port, cfg.ping_n, cfg.ping_rate)
                    raw[c.name]["p50"].append(res["p50_us"])
                    raw[c.name]["p99"].append(res["p99_us"])
                except Exception as e:  # noqa: BLE001
                    log(f"latency {c.name}: {e}")
                    raw[c.name]["p50"].append(None)
                    raw[c.name]["p99"].append(None)
            log(f"latency run {r + 1}: " + ", ".join(
                f"{n} p50 {v['p50'][-1]} us" for n, v in raw.items()))
    finally:
        stop_contenders(contenders)
        echo.stop()

    def added(name, p):
        return [None if a is None or d is None else a - d
                for a, d in zip(raw[name][p], raw["direct"][p])]

    def share(p):  # culvert's own part: what it adds beyond the two-process floor
        return [None if a is None or f is None else a - f
                for a, f in zip(added("culvert", p), added("min relay x2", p))]
    rows = [row("round trip p50", "us", {n: v["p50"] for n, v in raw.items()}, "lower"),
            row("round trip p99", "us", {n: v["p99"] for n, v in raw.items()}, "lower"),
            row("added p50 (minus direct)", "us",
                {n: added(n, "p50") for n in raw if n != "direct"}, "lower"),
            row("added p99 (minus direct)", "us",
                {n: added(n, "p99") for n in raw if n != "direct"}, "lower"),
            row("culvert's share p50 (added minus min relay x2's)", "us",
                {"culvert": share("p50")}, "lower"),
            row("culvert's share p99 (added minus min relay x2's)", "us",
                {"culvert": share("p99")}, "lower")]
    s50 = med(rows[4], "culvert")
    s99 = med(rows[5], "culvert")
    targets = [target(f"culvert's share of added latency p50 <= {SHARE_P50_US} us", s50,
                      None if s50 is None else s50 <= SHARE_P50_US,
                      "n/a" if s50 is None else f"{s50:.1f} us"),
               target(f"culvert's share of added latency p99 <= {SHARE_P99_US} us", s99,
                      None if s99 is None else s99 <= SHARE_P99_US,
                      "n/a" if s99 is None else f"{s99:.1f} us")]
    notes = [f"{cfg.ping_n} round trips at {cfg.ping_rate:g}/s per run (after 50 unrecorded), "
             "Python client and Python echo origin for every contender; added = contender minus "
             "direct in the same round; culvert's share = culvert's added minus min relay x2's "
             "in the same round. Every round's share (p50/p99, us): " + ", ".join(
                 "n/a" if a is None or b is None else f"{a:.0f}/{b:.0f}"
                 for a, b in zip(share("p50"), share("p99"))) + "."]
    notes += hand_off_note(med(rows[0], "direct"), med(rows[2], "min relay x2"),
                           med(rows[2], "culvert"))
    return {"title": "3. Added latency (1-byte ping-pong, one connection)", "rows": rows,
            "targets": targets, "notes": notes}


def hand_off_note(direct_p50, floor_p50, culvert_p50):
    """What the added latency is made of: a relay chain of two processes (culvert's worker and
    client, or min relay x2) adds four hand-offs from one process to the next per round trip
    (direct has two: client to origin and back). min relay x2 does nothing else, so it is the
    floor for any design with two relay processes."""
    if None in (direct_p50, floor_p50, culvert_p50):
        return []
    return [f"What the added p50 is made of: a round trip through two relay processes adds four "
            f"process hand-offs, a wake-up and a socket each way through each relay (direct's "
            f"round trip, with two, takes {direct_p50:.0f} us). min relay x2, four hand-offs and "
            f"nothing else, adds {floor_p50:.0f} us: the floor for two relay processes on this "
            f"machine. culvert adds {culvert_p50:.0f} us, {culvert_p50 - floor_p50:+.0f} us "
            f"beyond that floor (framing, the event loop)."]
