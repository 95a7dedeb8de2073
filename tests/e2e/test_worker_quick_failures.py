"""The "quick failures" rule closes a tunnel only for a worker that dies before doing any work.
1. A worker killed right after it adopted the client's data connection, 8 times in a row, each
   time within 2 s of its start (as a load that hits every restart would): the tunnel stays
   open on the same port, every restart is immediate, and it carries bytes afterwards.
2. A worker program that exits at once, before any work: after more than 6 quick failures the
   supervisor still closes the tunnel ("worker keeps failing")."""

import os
import shutil
import signal
import tempfile

from harness import Environment, assert_echoed, echo_handler, run_test, wait_until

KILLS = 8  # one more than it takes (more than 6 quick failures) to close the tunnel before
QUICK = 1.8  # seconds; the supervisor's limit is 2 s from the worker's start


def process_age(pid):
    """Seconds since `pid` started (field 22 of /proc/PID/stat, in clock ticks since boot)."""
    with open(f"/proc/{pid}/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - started / os.sysconf("SC_CLK_TCK")


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor()
        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")
        domain = wait_until(lambda: sup.tunnel(client), 10, "the tunnel in culvert-status")["domain"]
        killed = set()
        quick = 0
        while quick < KILLS:
            assert len(killed) < 3 * KILLS, "workers took too long to adopt a data connection"

            def working():
                t = sup.tunnel(client)
                return (t and t["worker_pid"] not in killed | {0}
                        and t["data_connections"] >= 1 and t)
            t = wait_until(working, 15, f"worker {len(killed) + 1} to adopt a data connection")
            age = process_age(t["worker_pid"])
            os.kill(t["worker_pid"], signal.SIGKILL)
            killed.add(t["worker_pid"])
            quick += age < QUICK  # only a kill within 2 s of the start tests the rule
        t = wait_until(lambda: (sup.tunnel(client) or {}).get("worker_restarts") == len(killed)
                       and sup.tunnel(client)["data_connections"] >= 1 and sup.tunnel(client),
                       15, f"restart {len(killed)} with a data connection")
        assert t["public_port"] == client.port and t["domain"] == domain, t
        assert_echoed(client.port, 1 << 20)
        assert client.process.alive(), "the client gave up"
        assert "keeps failing" not in sup.process.stderr()
        print(f"{KILLS} workers killed after adopting a data connection: tunnel kept, "
              "1 MiB echoed byte for byte")

        # A worker that cannot work at all must still get its tunnel closed. The supervisor runs
        # it as `nobody` when started as root: put the program where that account can run it.
        where = tempfile.mkdtemp(prefix="culvert-e2e-broken-worker-")
        try:
            os.chmod(where, 0o755)
            broken = os.path.join(where, "broken-worker")
            with open(broken, "w") as f:
                f.write("#!/bin/sh\nexit 1\n")
            os.chmod(broken, 0o755)
            sup2 = env.supervisor("--worker", broken, name="broken-supervisor")
            env.client(sup2, "tcp", f"127.0.0.1:{echo.port}", "--no-state", name="broken-client")
            sup2.process.wait_for_output(r"worker keeps failing; closing the tunnel", timeout=60,
                                         stream="stderr")
            print("a worker that exits before any work still gets its tunnel closed")
        finally:
            shutil.rmtree(where, ignore_errors=True)


run_test(main)
