"""Runs bench/helpers/probe.py (the visitor-side measurement) and returns its JSON result."""

import json
import os
import subprocess
import sys

from lib import HELPERS


def probe(mode, host, port, n, *extra, netns=None, timeout=300):
    args = [sys.executable, os.path.join(HELPERS, "probe.py"), mode, host, str(port), str(n),
            *map(str, extra)]
    if netns:
        args = ["ip", "netns", "exec", netns] + args
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"probe {mode} failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
