"""Privilege separation, checked from outside through /proc: started as root, the supervisor drops
to `nobody` once bound, keeps no capability (or only CAP_NET_BIND_SERVICE when its public ports
reach below 1024), and every worker runs as a uid and gid of its own (--worker-uid-base + slot)
with no_new_privs and no capability, also after a restart. The tunnel still carries bytes, and the dropped supervisor still removes its
shared-memory segment at exit. Skipped unless run as root."""

import hashlib
import os
import pwd
import signal
import socket
import subprocess
import sys

from harness import (BIN, Environment, Supervisor, connect, echo_handler, pattern_bytes, recv_all,
                     run_test, skip, wait_until)

NET_BIND_SERVICE = 1 << 10
WORKER_UID_BASE = 1900000000  # --worker-uid-base's default: a worker runs as base + its slot


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def check_process(what, pid, account, cap_eff, own_uid=None):
    """`account`'s ids, or with `own_uid` a uid and gid of its own (a worker's)."""
    uid, gid = (own_uid, own_uid) if own_uid is not None else (account.pw_uid, account.pw_gid)
    status = proc_status(pid)
    uids = [int(x) for x in status["Uid"].split()]  # real, effective, saved, filesystem
    gids = [int(x) for x in status["Gid"].split()]
    assert uids == [uid] * 4, f"{what} {pid}: uids {uids}, expected {uid}"
    assert gids == [gid] * 4, f"{what} {pid}: gids {gids}, expected {gid}"
    groups = [int(x) for x in status["Groups"].split()]
    assert groups in ([], [gid]), f"{what} {pid}: supplementary groups {groups}"
    assert status["NoNewPrivs"] == "1", f"{what} {pid}: NoNewPrivs {status['NoNewPrivs']}"
    for caps in ("CapEff", "CapPrm"):
        assert int(status[caps], 16) == cap_eff, \
            f"{what} {pid}: {caps} {status[caps]}, expected {cap_eff:#x}"
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0, \
        f"{what} {pid}: inheritable or ambient capabilities: {status['CapInh']} {status['CapAmb']}"
    print(f"{what} {pid}: uid {uids} gid {gids} NoNewPrivs 1 CapEff {status['CapEff']}")


def require_worker_executable_by(account):
    """The supervisor refuses to start when the account cannot run the worker; say why here."""
    worker = os.path.realpath(os.path.join(BIN, "culvert-worker"))
    probe = subprocess.run(["test", "-x", worker], user=account.pw_uid, group=account.pw_gid,
                           extra_groups=[])
    if probe.returncode != 0:
        path, closed = "/", []
        for part in worker.strip("/").split("/"):
            path = os.path.join(path, part)
            if not os.stat(path).st_mode & 0o001:
                closed.append(path)
        raise AssertionError(
            f"user {account.pw_name} cannot execute {worker}, so a root supervisor cannot start "
            f"workers; without o+x: {', '.join(closed) or '(none: check ACLs and mounts)'}. "
            f"Build outside a private directory, or chmod o+x those.")


def echo_hash(port, payload):
    s = connect(port, timeout=20)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s)
    s.close()
    return hashlib.sha256(got).hexdigest()


def check_tunnel(env, sup, account, cap_eff, echo):
    client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")
    payload = pattern_bytes(f"privileges-{client.port}", 1 << 20)
    assert echo_hash(client.port, payload) == hashlib.sha256(payload).hexdigest(), \
        "the tunnel did not echo 1 MiB intact"
    check_process("supervisor", sup.process.pid, account, cap_eff)
    first = sup.tunnel(client)["worker_pid"]
    own_uid = int(proc_status(first)["Uid"].split()[0])
    assert WORKER_UID_BASE <= own_uid < WORKER_UID_BASE + 1000, f"worker uid {own_uid}"
    check_process("worker", first, account, 0, own_uid)

    # The dropped supervisor must still be able to kill, reap and restart its worker.
    os.kill(first, signal.SIGKILL)

    def restarted():
        t = sup.tunnel(client)
        return t and t["worker_pid"] not in (0, first) and t["worker_pid"]

    second = wait_until(restarted, 10, "a restarted worker")
    wait_until(lambda: echo_hash(client.port, b"again") == hashlib.sha256(b"again").hexdigest(),
               10, "the tunnel working after the restart")
    check_process("restarted worker", second, account, 0, own_uid)  # same slot, same uid
    return client


def check_segment_removed_at_exit(sup, account):
    segment = f"/dev/shm/culvert-{sup.instance}"
    info = os.stat(segment)
    assert (info.st_uid, info.st_gid) == (account.pw_uid, account.pw_gid), \
        f"{segment} owned by {info.st_uid}:{info.st_gid}"
    assert info.st_mode & 0o777 == 0o644, f"{segment} mode {oct(info.st_mode & 0o777)}"
    assert sup.process.stop() == 0, "the supervisor did not exit cleanly"
    assert not os.path.exists(segment), f"{segment} left behind by the dropped supervisor"
    assert "shm_unlink" not in sup.process.stderr(), sup.process.stderr()


def supervisor_on_ports(env, ports, name):
    """env.supervisor() with another public port range (it passes --ports itself)."""
    instance = f"e2e-{os.getpid()}-{name}"
    p = env.start(name, [os.path.join(BIN, "culvert-supervisor"), "--control", "127.0.0.1:0",
                         "--instance", instance, "--ports", ports])
    match = p.wait_for_output(r"control listening on 127\.0\.0\.1:(\d+)", stream="stderr")
    return Supervisor(p, int(match.group(1)), instance)


def main():
    if os.geteuid() != 0:
        skip("not root")
    try:
        account = pwd.getpwnam("nobody")
    except KeyError:
        raise AssertionError("no user 'nobody' on this system: the default --user is missing")
    require_worker_executable_by(account)

    with Environment() as env:
        echo = env.service(echo_handler)

        # Public ports >= 1024: nothing privileged is left.
        sup = env.supervisor()
        sup.process.wait_for_output(r"dropped root: now user nobody", stream="stderr")
        check_tunnel(env, sup, account, 0, echo)
        check_segment_removed_at_exit(sup, account)

        # Public ports below 1024: CAP_NET_BIND_SERVICE alone stays, and is used.
        low = supervisor_on_ports(env, "900-999", "supervisor-low-ports")
        low.process.wait_for_output(r"keeping only CAP_NET_BIND_SERVICE", stream="stderr")
        client = check_tunnel(env, low, account, NET_BIND_SERVICE, echo)
        assert client.port < 1024, client.url
        check_segment_removed_at_exit(low, account)

        # A missing account stops a root supervisor at start, with the reason.
        missing = env.start("supervisor-no-user", [
            os.path.join(BIN, "culvert-supervisor"), "--control", "127.0.0.1:0",
            "--instance", f"e2e-{os.getpid()}-nouser", "--user", "culvert-no-such-user"])
        wait_until(lambda: not missing.alive(), 10, "the supervisor to refuse a missing user")
        assert missing.popen.returncode != 0
        assert "user 'culvert-no-such-user'" in missing.stderr() and \
            "does not exist" in missing.stderr(), missing.stderr()


run_test(main)
