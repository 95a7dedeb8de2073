"""Helpers the figures share: starting a set of contenders against one origin, running rounds
(every contender once per round, so slow drift hits all alike), and building result rows."""

from contenders import CONTENDERS
from lib import log, summary


def start_contenders(names, origin_port):
    started = []
    try:
        for n in names:
            c = CONTENDERS[n]()
            c.public_port = c.start(origin_port)
            started.append(c)
    except Exception:
        stop_contenders(started)
        raise
    return started


def stop_contenders(contenders):
    for c in reversed(contenders):
        try:
            c.stop()
        except Exception as e:  # noqa: BLE001
            log(f"stopping {c.name}: {e}")


def row(metric, unit, per_contender_values, better="higher"):
    """per_contender_values: {name: [run values]} -> a table row with median/min/max each."""
    return {"metric": metric, "unit": unit, "better": better,
            "values": {n: summary(v) for n, v in per_contender_values.items()}}


def med(row_, name):
    v = row_["values"].get(name)
    return v and v["median"]


def target(text, value, ok, shown):
    """A target line: the figure it is judged on (shown as text) and PASS/MISS (None: n/a)."""
    return {"target": text, "value": value, "shown": shown, "pass": ok}


def ratio_target(text, num, den, minimum):
    if num is None or not den:
        return target(text, None, None, "n/a")
    r = num / den
    return target(text, r, r >= minimum, f"{r:.2f}x (need >= {minimum}x)")
