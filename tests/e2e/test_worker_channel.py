"""Bad messages on a worker's channel to the supervisor (as a compromised worker could send):
oversized, a report that is not a number, an unknown kind. The supervisor logs and skips each
one, keeps reading that worker's later reports (culvert-status follows its data connection
count), and every tunnel carries on byte for byte."""

import ctypes
import os
import signal
import socket

from harness import Environment, assert_echoed, echo_handler, run_test, wait_until

SYS_PIDFD_OPEN = 434
SYS_PIDFD_GETFD = 438

libc = ctypes.CDLL(None, use_errno=True)


def syscall(number, *args):
    result = libc.syscall(number, *args)
    if result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result


def worker_channel(pid):
    """A duplicate of the worker's end of its channel (--channel-fd, 3 unless the supervisor
    says otherwise), taken with pidfd_getfd(2): what the worker itself could write to."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = f.read().decode().split("\0")
    target = int(args[args.index("--channel-fd") + 1]) if "--channel-fd" in args else 3
    pidfd = syscall(SYS_PIDFD_OPEN, pid, 0)
    try:
        fd = syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
    finally:
        os.close(pidfd)
    return socket.socket(fileno=fd)


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor()
        victim = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="victim")
        bystander = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="bystander")
        wait_until(lambda: (sup.tunnel(victim) or {}).get("data_connections", 0) >= 1, 10,
                   "the victim's data connections in culvert-status")
        pid = sup.tunnel(victim)["worker_pid"]

        channel = worker_channel(pid)
        channel.send(b"C" * 300)        # longer than a channel message may be
        channel.send(b"C12x")           # a data connection report that is not a number
        channel.send(b"C99999999")      # one that does not fit
        channel.send(b"Z")              # an unknown kind
        channel.close()
        print(f"sent 4 bad messages on worker {pid}'s channel")

        # The worker's next report must still be read: its client leaves, the count drops to 0.
        victim.process.signal(signal.SIGKILL)
        wait_until(lambda: (sup.tunnel(victim) or {}).get("data_connections") == 0, 10,
                   "culvert-status to show the worker's report of 0 data connections")
        print("the supervisor read the worker's report after the bad messages")

        log = sup.process.stderr()
        for what in ("malformed message", "malformed report", "unknown message"):
            assert f"{what} from worker {pid} ignored" in log, f"no '{what}' warning:\n{log}"
        assert sup.process.alive(), "the supervisor died"
        assert_echoed(bystander.port, 1 << 20)
        print("the other tunnel carries 1 MiB byte for byte")


run_test(main)
