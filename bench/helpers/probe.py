"""Visitor-side measurements, run as a separate process (so the same code measures every contender,
also inside a network namespace). Prints one JSON object on stdout.
  pingpong HOST PORT N RATE   1-byte request/response on one connection at RATE per second
  ttfb HOST PORT N            N fresh connections: connect, send 1 byte, receive 1 byte, close
  hold HOST PORT N            open N idle connections, print 'held N', keep them until stdin closes"""

import json
import resource
import socket
import sys
import time

mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
now = time.perf_counter_ns


def pct(vals, p):
    vals = sorted(vals)
    k = (len(vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def report(us, extra=None):
    out = {"n": len(us), "p50_us": pct(us, 50), "p99_us": pct(us, 99), "min_us": min(us),
           "max_us": max(us), "mean_us": sum(us) / len(us)}
    out.update(extra or {})
    print(json.dumps(out), flush=True)


def connect():
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv1(s):
    b = s.recv(1)
    if not b:
        raise ConnectionError("closed before the reply")


if mode == "pingpong":
    rate = float(sys.argv[5])
    s = connect()
    for _ in range(50):                 # warm-up, not recorded
        s.sendall(b"w")
        recv1(s)
    us, start = [], time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while True:
            left = due - time.perf_counter()
            if left <= 0:
                break
            time.sleep(left if left > 0.0005 else 0)
        t0 = now()
        s.sendall(b"x")
        recv1(s)
        us.append((now() - t0) / 1000)
    s.close()
    report(us)
elif mode == "ttfb":
    us, failures = [], 0
    for _ in range(n):
        t0 = now()
        try:
            s = socket.socket()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.settimeout(10)
            s.connect((host, port))
            s.sendall(b"x")
            recv1(s)
            us.append((now() - t0) / 1000)
        except OSError:
            failures += 1
        finally:
            s.close()
    report(us or [0], {"failures": failures})
elif mode == "hold":
    socks, t0 = [], time.monotonic()
    for i in range(n):
        socks.append(socket.create_connection((host, port), timeout=30))
    print(json.dumps({"held": len(socks), "open_s": time.monotonic() - t0}), flush=True)
    sys.stdin.read()
    for s in socks:
        s.close()
else:
    sys.exit(f"unknown mode {mode}")
