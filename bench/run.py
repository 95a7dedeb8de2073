"""culvert's benchmark driver (run through tools/bench): runs every figure for every contender
in one go and writes bench/results/latest.{md,json}. --quick for a short smoke run,
--only FIGURE[,FIGURE] for some figures, --heavy to add the 1,000-tunnel test."""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402
from lib import ROOT, WORKDIR, log, raise_nofile  # noqa: E402
from figures import bulk, http, latency, memory, scale, slowlink, ttfb  # noqa: E402

FIGURES = {"bulk": bulk, "http": http, "latency": latency, "ttfb": ttfb, "slowlink": slowlink,
           "memory": memory, "scale": scale}


class Config:
    """Repetitions and sizes; --quick shrinks them to a ~2-minute smoke run."""

    def __init__(self, quick, heavy):
        self.quick, self.heavy = quick, heavy
        self.runs = 1 if quick else 3
        # Latency rounds are short and the share moves run to run: take more of them.
        self.latency_runs = 2 if quick else 7
        self.bulk_seconds = 2 if quick else 5
        self.http_seconds = 3 if quick else 6
        self.ping_n = 1000 if quick else 5000
        self.ping_rate = 2000.0
        self.ttfb_n = 100 if quick else 500
        self.slow_n = 5 if quick else 20
        self.visitor_counts = [1000, 10000]
        self.tunnels = 20 if quick else 100
        self.start_n = 3 if quick else 10
        self.burst = 50 if quick else 200


def meta(args, started):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full", "nproc": os.cpu_count(), "cpu": cpu,
            "kernel": platform.release(), "git": git or "unknown",
            "duration_s": time.monotonic() - started,
            "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
            "nofile": raise_nofile(), "workdir": WORKDIR, "python": platform.python_version()}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, shorter runs")
    ap.add_argument("--only", help="comma-separated figures: " + ",".join(FIGURES))
    ap.add_argument("--heavy", action="store_true", help="also start 1,000 tunnels")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    ap.add_argument("--merge", action="store_true",
                    help="with --only: replace just these figures in the existing latest.json")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(FIGURES)
    for n in names:
        if n not in FIGURES:
            ap.error(f"unknown figure {n}; choose from {', '.join(FIGURES)}")
    started = time.monotonic()
    loadavg_start = open("/proc/loadavg").read().split()[:3]
    nofile = raise_nofile()
    log(f"work directory {WORKDIR} (process logs); open-file limit {nofile}")
    cfg = Config(args.quick, args.heavy)
    if nofile < 10000 + 100:
        cfg.visitor_counts = [c for c in cfg.visitor_counts if c + 100 <= nofile]
        log(f"open-file limit {nofile}: visitor counts cut to {cfg.visitor_counts}")
    results = {"meta": {}, "figures": []}
    failed = False
    for n in names:
        log(f"=== figure {n}")
        t0 = time.monotonic()
        try:
            fig = FIGURES[n].run(cfg)
        except Exception as e:  # noqa: BLE001 - report the failure, run the other figures
            traceback.print_exc()
            failed = True
            fig = {"title": n, "rows": [], "targets": [], "notes": [f"FAILED: {e}"]}
        fig["key"] = n
        fig["seconds"] = time.monotonic() - t0
        results["figures"].append(fig)
        log(f"=== figure {n} done in {fig['seconds']:.0f} s")
    results["meta"] = meta(args, started)
    if args.merge:
        import json
        with open(os.path.join(args.out, "latest.json")) as f:
            old = json.load(f)
        fresh = {f["key"]: f for f in results["figures"]}
        merged = [fresh.pop(f.get("key"), f) for f in old["figures"]] + list(fresh.values())
        for f in merged:
            if f.get("key") in [x["key"] for x in results["figures"]]:
                f["notes"] = f["notes"] + [f"(re-run {results['meta']['date']}, merged with --merge)"]
        results = {"meta": old["meta"], "figures": merged}
        results["meta"]["merged"] = results["meta"].get("merged", []) + names
    results["meta"]["loadavg_at_start"] = loadavg_start
    md, name = report.write(results, args.out)
    print(md)
    log(f"wrote {args.out}/{name}.md and {name}.json in {results['meta']['duration_s']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
