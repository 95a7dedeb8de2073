"""Writes the results: bench/results/latest.json (everything, including every run) and
bench/results/latest.md (one table per figure, median (min-max), then the targets)."""

import json
import os


def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def cell(s):
    if s is None or s["median"] is None:
        return "failed" if s else ""
    if len([r for r in s["runs"] if r is not None]) <= 1:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def markdown(results):
    m = results["meta"]
    out = ["# culvert benchmark results", "",
           f"{m['date']} · {m['mode']} run · {m['nproc']} CPUs ({m['cpu']}) · kernel "
           f"{m['kernel']} · culvert {m['git']} · took {m['duration_s']:.0f} s · load average "
           f"{' '.join(m['loadavg_at_start'])} at start, {' '.join(m['loadavg_at_end'])} at end",
           "",
           "Each cell: median (min-max) over the runs. Loopback on one machine: the tunnel, the "
           "load generator and the origin share the same CPUs.", ""]
    all_targets = []
    for fig in results["figures"]:
        out += [f"## {fig['title']}", ""]
        names = []
        for r in fig["rows"]:
            for n in r["values"]:
                if n not in names:
                    names.append(n)
        if fig["rows"]:
            out.append("| metric | unit | " + " | ".join(names) + " |")
            out.append("|---|---|" + "---|" * len(names))
            for r in fig["rows"]:
                out.append(f"| {r['metric']} | {r['unit']} | " +
                           " | ".join(cell(r["values"].get(n)) for n in names) + " |")
            out.append("")
        for note in fig.get("notes", []):
            out.append(f"- {note}")
        out.append("")
        all_targets += fig.get("targets", [])
    out += ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for t in all_targets:
        res = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        out.append(f"| {t['target']} | {t['shown']} | {res} |")
    passed = sum(1 for t in all_targets if t["pass"] is True)
    missed = sum(1 for t in all_targets if t["pass"] is False)
    out += ["", f"{passed} PASS, {missed} MISS, {len(all_targets) - passed - missed} n/a", ""]
    return "\n".join(out)


def write(results, directory):
    """latest.{json,md}; a run in which every figure failed (e.g. a broken build) goes to
    failed.{json,md} instead, so that it does not replace the last real results."""
    os.makedirs(directory, exist_ok=True)
    figs = results["figures"]
    all_failed = figs and all(not f["rows"] and any(n.startswith("FAILED") for n in f["notes"])
                              for f in figs)
    name = "failed" if all_failed else "latest"
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = markdown(results)
    with open(os.path.join(directory, f"{name}.md"), "w") as f:
        f.write(md)
    return md, name
