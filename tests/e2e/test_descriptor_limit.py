"""A visitor flood against a worker short of descriptors. The supervisor, started with a soft
descriptor limit of 64 under a hard one of 192, raises the soft limit to 192 (its
/proc/PID/limits; the worker inherits it) and caps max_visitors to what a worker can hold
(192 - 64 = 128), saying so. 150 visitors are then held open on the tunnel (those over 128 are
refused), and data connections are added until the worker has no descriptor left for the next
one: the kernel hands it over truncated (MSG_CTRUNC). The worker logs and skips that message
instead of exiting (same pid), and serves byte for byte once the load has gone."""

import os
import socket
import struct

from harness import (BIN, PROTOCOL_VERSION, Environment, Supervisor, assert_echoed, connect,
                     echo_handler, run_test, skip, wait_until)

SOFT, HARD = 64, 192
CAP = HARD - 64  # shared/util/descriptor_limit.hpp: worker_reserved_descriptors
VISITORS = 150
MAX_DATA_CONNECTIONS = 120  # bounds the loop: the worker runs out long before


def open_files_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def start_supervisor(env):
    """env.supervisor(), started under prlimit with a low descriptor limit."""
    Environment.counter += 1
    instance = f"e2e-{os.getpid()}-{Environment.counter}"
    args = ["prlimit", f"--nofile={SOFT}:{HARD}", "--",
            os.path.join(BIN, "culvert-supervisor"), "--control", "127.0.0.1:0",
            "--instance", instance, "--ports", "30000-39999"]
    p = env.start("supervisor", args)
    match = p.wait_for_output(r"control listening on 127\.0\.0\.1:(\d+)", stream="stderr")
    return Supervisor(p, int(match.group(1)), instance)


def saved_tunnel(env):
    """The tunnel id and secret the client wrote to its state file."""
    saved = env.saved_tunnel()
    return saved["tunnel_id"], bytes.fromhex(saved["secret"])


def open_data_connection(port, tunnel_id, secret):
    """A DATA_INIT as the client sends it; the socket if DATA_READY came back, else None."""
    s = connect(port)
    s.sendall(struct.pack(">IBBI", 42, 6, 0, 0) + struct.pack(">HQ", PROTOCOL_VERSION, tunnel_id)
              + secret)
    reply = b""
    try:
        while len(reply) < 10:
            data = s.recv(10 - len(reply))
            if not data:
                break
            reply += data
    except OSError:
        pass
    if len(reply) == 10 and reply[4] == 7:  # DATA_READY
        return s
    s.close()
    return None


def main():
    if os.environ.get("CULVERT_SANITIZED") == "1":
        # The sanitizer runtimes need descriptors of their own: with none left, UBSan's vptr
        # check cannot open the pipe it probes memory through and reports a false "invalid vptr"
        # (seen in the worker). The plain build runs this test.
        skip("descriptor exhaustion cannot run under the sanitizers")
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = start_supervisor(env)
        assert open_files_limit(sup.process.pid) == (HARD, HARD), open_files_limit(sup.process.pid)
        sup.process.wait_for_output(rf"descriptor limit raised from {SOFT} to {HARD}",
                                    stream="stderr")
        sup.process.wait_for_output(rf"max_visitors 16384 capped to {CAP}", stream="stderr")
        print(f"supervisor: soft limit {SOFT} raised to {HARD}, max_visitors capped to {CAP}")

        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")
        wait_until(lambda: (sup.tunnel(client) or {}).get("data_connections", 0) >= 2, 10,
                   "the client's data connections")
        own = sup.tunnel(client)["data_connections"]
        pid = sup.tunnel(client)["worker_pid"]
        assert open_files_limit(pid) == (HARD, HARD), open_files_limit(pid)

        def worker_log():  # workers log to the supervisor's stderr
            return sup.process.stderr()

        visitors = []
        extra = []
        try:
            refused = 0
            for _ in range(VISITORS):
                try:
                    visitors.append(connect(client.port))
                except OSError:  # a refusal's reset can beat the connect to its result
                    refused += 1
            assert refused <= VISITORS - CAP, f"{refused} of {VISITORS} visitors refused"
            wait_until(lambda: "connections open (the maximum)" in worker_log(), 20,
                       "the worker to refuse visitors over the cap")
            print(f"{VISITORS} visitors held open; those over {CAP} refused")

            tunnel_id, secret = saved_tunnel(env)
            skipped = "malformed message on the supervisor channel skipped"
            for _ in range(MAX_DATA_CONNECTIONS):
                s = open_data_connection(sup.control_port, tunnel_id, secret)
                if s is None:
                    break
                extra.append(s)
            else:
                raise AssertionError(f"the worker took {MAX_DATA_CONNECTIONS} more data "
                                     "connections without running out of descriptors")
            print(f"the worker ran out of descriptors after {len(extra)} more data connections")
            wait_until(lambda: skipped in worker_log(), 10,
                       "the worker to log the skipped message")
            assert sup.tunnel(client)["worker_pid"] == pid, "the worker was replaced"
            assert os.path.exists(f"/proc/{pid}"), "the worker exited"
        finally:
            for s in visitors + extra:
                s.close()

        wait_until(lambda: (sup.tunnel(client) or {}).get("data_connections") == own, 20,
                   "the flood's data connections to close")
        assert_echoed(client.port, 1 << 20)
        assert sup.tunnel(client)["worker_pid"] == pid and sup.tunnel(client)["worker_restarts"] == 0
        print(f"worker {pid} survived and carries 1 MiB byte for byte")


run_test(main)
