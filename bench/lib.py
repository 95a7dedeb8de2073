"""Shared plumbing for the benchmark: started processes (all cleaned up at exit), waiting on
conditions instead of sleeping, free ports, per-process CPU and memory from /proc, statistics."""

import atexit
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.environ.get("CULVERT_BIN", os.path.join(ROOT, "build", "bin"))
HELPERS = os.path.join(ROOT, "bench", "helpers")
WORKDIR = tempfile.mkdtemp(prefix="culvert-bench-")
CLK_TCK = os.sysconf("SC_CLK_TCK")

_started = []          # every Proc we started, stopped in reverse order at exit
_cleanups = []         # extra callables (namespaces, temp files), run at exit


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(predicate, timeout, what):
    """Polls predicate until it returns something truthy; raises TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class Proc:
    """A started program; stdout/stderr go to files that wait_for() searches."""
    counter = 0

    def __init__(self, name, args, netns=None, stdin=subprocess.DEVNULL, register=True, env=None):
        Proc.counter += 1
        self.name = name
        self.args = list(args)
        if netns:
            self.args = ["ip", "netns", "exec", netns] + self.args
        base = os.path.join(WORKDIR, f"{Proc.counter:05d}-{name}")
        self.out_path, self.err_path = base + ".out", base + ".err"
        self.popen = subprocess.Popen(self.args, stdout=open(self.out_path, "wb"),
                                      stderr=open(self.err_path, "wb"), stdin=stdin,
                                      start_new_session=True,
                                      env=dict(os.environ, **env) if env else None)
        self.pid = self.popen.pid
        if register:
            _started.append(self)

    def read(self, stream="stdout"):
        with open(self.out_path if stream == "stdout" else self.err_path, "rb") as f:
            return f.read().decode(errors="replace")

    def search(self, pattern, stream="stdout"):
        """The match of pattern in the output so far, or None; raises if the program died."""
        m = re.search(pattern, self.read(stream))
        if m:
            return m
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before printing "
                               f"/{pattern}/:\n{self.read()[-2000:]}\n{self.read('stderr')[-2000:]}")
        return None

    def wait_for(self, pattern, timeout=20, stream="stdout"):
        return wait_until(lambda: self.search(pattern, stream), timeout,
                          f"{self.name} to print /{pattern}/")

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=5):
        """SIGTERM, then SIGKILL after timeout; only this process (by PID)."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        if self in _started:
            _started.remove(self)
        return self.popen.returncode


def stop_all(procs):
    """Stops many processes quickly: SIGTERM to all first, then wait for each."""
    for p in procs:
        if p.popen.poll() is None:
            try:
                p.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)
        if p in _started:
            _started.remove(p)


def on_exit(fn):
    _cleanups.append(fn)


def cleanup():
    stop_all(list(reversed(_started)))
    for fn in reversed(_cleanups):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - cleanup must go on
            log(f"cleanup step failed: {e}")
    _cleanups.clear()


atexit.register(cleanup)
for _sig in (signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda *_: sys.exit(1))


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_next_port = {}


def free_port(lo, hi):
    """A TCP port in [lo, hi] that is free on 127.0.0.1 now (ports are handed out round-robin)."""
    start = _next_port.get(lo, lo)
    n = hi - lo + 1
    for i in range(n):
        port = lo + (start - lo + i) % n
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _next_port[lo] = port + 1 if port < hi else lo
        return port
    raise RuntimeError(f"no free port in {lo}-{hi}")


def port_open(port, host="127.0.0.1"):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_port(port, timeout=10, host="127.0.0.1"):
    wait_until(lambda: port_open(port, host), timeout, f"port {host}:{port} to accept")


# ---- /proc accounting -------------------------------------------------------------------------

def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()   # fields from 3 (state) on


def children_map():
    """ppid -> [pid] for every live process."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(_stat_fields(d)[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


def descendants(roots):
    """roots and all their live descendants."""
    kids = children_map()
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def tcp_retransmitted_segments():
    """Tcp RetransSegs of this network namespace (/proc/net/snmp): every TCP socket's resends."""
    with open("/proc/net/snmp") as f:
        tcp = [line.split() for line in f if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("RetransSegs")])


def cpu_seconds(roots):
    """utime+stime of roots and live descendants, plus cutime+cstime (children already reaped)."""
    total = 0
    for pid in descendants(roots):
        try:
            f = _stat_fields(pid)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def memory_kib(pid):
    """{'rss': KiB, 'pss': KiB} from /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:"):
                out[parts[0][:-1].lower()] = int(parts[1])
    return out


PSS_ORIGINS = ("own code and data", "OpenSSL", "libc and loader", "heap and stacks",
               "shared memory and other")


def pss_by_origin(pid):
    """A process's PSS in KiB, split by where its pages come from (/proc/PID/smaps)."""
    split = dict.fromkeys(PSS_ORIGINS, 0)
    exe = os.path.realpath(f"/proc/{pid}/exe")
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
                name = parts[5] if len(parts) > 5 else ""
            elif parts[0] == "Pss:":
                if name == exe:
                    origin = "own code and data"
                elif "/libcrypto." in name or "/libssl." in name:
                    origin = "OpenSSL"
                elif "/libc." in name or "/ld-linux" in name or "/libm." in name:
                    origin = "libc and loader"
                elif name in ("", "[heap]", "[stack]"):
                    origin = "heap and stacks"
                else:
                    origin = "shared memory and other"
                split[origin] += int(parts[1])
    return split


def memory_sum(pids):
    tot = {"rss": 0, "pss": 0}
    for pid in pids:
        m = memory_kib(pid)
        tot["rss"] += m["rss"]
        tot["pss"] += m["pss"]
    return tot


def wait_memory_stable(pids, timeout=10, interval=0.3):
    """Polls the summed RSS until two readings in a row agree within 1%; returns the last sum."""
    last = [memory_sum(pids)]

    def stable():
        time.sleep(interval)
        now = memory_sum(pids)
        same = abs(now["rss"] - last[0]["rss"]) <= 0.01 * max(1, last[0]["rss"])
        last[0] = now
        return same
    try:
        wait_until(stable, timeout, "memory to settle")
    except TimeoutError:
        log("memory still moving; taking the last reading")
    return last[0]


# ---- statistics -------------------------------------------------------------------------------

def summary(values):
    """{'median', 'min', 'max', 'runs'} of a list of numbers (None entries are failures)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": values}


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = (len(sorted_vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (k - lo)
