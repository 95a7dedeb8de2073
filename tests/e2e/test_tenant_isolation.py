"""Tenants are isolated from each other (issue #16, item 1). Started as root, each worker runs
under a uid and gid of its own (--worker-uid-base + slot), is non-dumpable and runs under a seccomp
allow-list. Checked from outside with real processes under the other accounts: neither the
supervisor's account nor another tenant's worker uid can read a worker's /proc/PID/environ, trace
it or signal it, and a worker's uid cannot open the shared table for writing; even a process of the worker's own uid cannot
read its memory (non-dumpable). `culvert-worker --check-sandbox` shows the allow-list kills an
exec. Skipped (exit 77) unless run as root."""

import json
import os
import pwd
import signal
import subprocess

from harness import BIN, Environment, echo_handler, require, run_test, skip, wait_until

SANITIZED = os.environ.get("CULVERT_SANITIZED") == "1"

# Run as another account: what may it do to process PID and the table?
PROBE = r"""
import ctypes, json, os, sys
pid, table = int(sys.argv[1]), sys.argv[2]
out = {}
def attempt(name, action):
    try:
        action()
        out[name] = "allowed"
    except OSError as e:
        out[name] = e.strerror
attempt("environ", lambda: open(f"/proc/{pid}/environ", "rb").read())
attempt("mem", lambda: open(f"/proc/{pid}/mem", "rb").close())
attempt("signal", lambda: os.kill(pid, 0))
attempt("table", lambda: open(table, "r+b").close())
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_DETACH = 16, 17
if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
    out["ptrace"] = "allowed"
    libc.ptrace(PTRACE_DETACH, pid, None, None)
else:
    out["ptrace"] = os.strerror(ctypes.get_errno())
print(json.dumps(out))
"""


def probe_as(uid, gid, pid, table):
    # Debian's python3: the test's own interpreter may live where the other accounts cannot go.
    done = subprocess.run(["/usr/bin/python3", "-c", PROBE, str(pid), table], user=uid, group=gid,
                          extra_groups=[], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ids(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return int(fields["Uid"][0]), int(fields["Gid"][0]), fields


def main():
    if os.geteuid() != 0:
        skip("not root: workers cannot get uids of their own")
    require("/usr/bin/python3")  # the probe runs as each worker's uid
    nobody = pwd.getpwnam("nobody")
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor("--worker-uid-base", "1900000000")
        sup.process.wait_for_output(r"workers start as uid and gid 1900000000 \+ slot",
                                    stream="stderr")
        sup.process.wait_for_output(r"--user nobody: the supervisor shares its uid",
                                    stream="stderr")
        a = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="tenant-a")
        b = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="tenant-b")
        workers = [sup.tunnel(c)["worker_pid"] for c in (a, b)]
        table = f"/dev/shm/culvert-{sup.instance}"
        (uid_a, gid_a, status_a), (uid_b, gid_b, _) = ids(workers[0]), ids(workers[1])
        print(f"worker A {workers[0]}: uid {uid_a} gid {gid_a}; worker B {workers[1]}: uid "
              f"{uid_b} gid {gid_b}; supervisor account {nobody.pw_uid}")
        for uid, gid in ((uid_a, gid_a), (uid_b, gid_b)):
            assert 1900000000 <= uid < 1900000000 + 1000 and gid == uid, (uid, gid)
        assert uid_a != uid_b
        assert status_a["Groups"] == [str(gid_a)], status_a["Groups"]
        assert status_a["CapEff"] == ["0000000000000000"] and status_a["NoNewPrivs"] == ["1"]
        if not SANITIZED:
            assert status_a["Seccomp"] == ["2"], f"worker A not under seccomp: {status_a['Seccomp']}"

        # The supervisor's account (nobody, shared with other daemons) and tenant B's worker uid.
        # The table belongs to the supervisor's account, which may write it (hence the warning
        # about nobody); a worker may not.
        for who, uid, gid, table_too in (("nobody", nobody.pw_uid, nobody.pw_gid, False),
                                         ("worker B", uid_b, gid_b, True)):
            seen = probe_as(uid, gid, workers[0], table)
            print(f"{who} against worker A: {seen}")
            for what in ("environ", "mem", "signal", "ptrace") + (("table",) if table_too else ()):
                assert seen[what] != "allowed", f"{who} may {what} worker A: {seen}"
        # Its own uid: non-dumpable keeps even that from its memory and environment.
        own = probe_as(uid_a, gid_a, workers[0], table)
        print(f"worker A's own uid against it: {own}")
        assert own["environ"] != "allowed" and own["mem"] != "allowed", own
        assert own["table"] != "allowed", own

        # Both tunnels still work, and the supervisor still stops a worker it cannot signal itself.
        for c in (a, b):
            assert sup.tunnel(c)["state"] == "active"
        b.process.signal(signal.SIGKILL)
        b.process.popen.wait()

    # The allow-list itself: an exec from inside the sandbox dies with SIGSYS.
    checked = subprocess.run([os.path.join(BIN, "culvert-worker"), "--check-sandbox"],
                             capture_output=True, timeout=20)
    if SANITIZED:
        assert checked.returncode == 77, checked
    else:
        assert checked.returncode == -signal.SIGSYS, \
            f"exec inside the sandbox: exit {checked.returncode}, expected SIGSYS"


run_test(main)
