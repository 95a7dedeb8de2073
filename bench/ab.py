"""A/B of two culvert builds on bulk throughput, interleaved round by round so the machine's drift
hits both alike (a full tools/bench run compares contenders, not builds):
    python3 bench/ab.py BIN_A BIN_B [--rounds 2] [--seconds 4] [--streams 1]
BIN_A and BIN_B are build/bin directories (e.g. a copy of build/bin taken before a change). Each
round starts a fresh tunnel from each build and runs iperf3 through it: two uploads and a
download. Per run it prints Gbit/s, CPU-s/GiB of supervisor+worker+client and the TCP segments
resent per GiB (Tcp RetransSegs, as in figure 1)."""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import contenders  # noqa: E402
from figures.bulk import iperf  # noqa: E402
from lib import (Proc, cpu_seconds, free_port, tcp_retransmitted_segments, wait_port,  # noqa: E402
                 wait_until)
from origins import ORIGIN_PORTS  # noqa: E402


class Origin:
    """iperf3 -s serves one test at a time and listens again after each, also after a port probe
    (start_iperf3's, and the one a tunnel's start makes through it): count the connections it
    was given, and before a test wait until it listens for the next one."""

    def __init__(self):
        self.port = free_port(*ORIGIN_PORTS)
        # Line-buffered, so each "Server listening" is in its log when printed.
        self.server = Proc("iperf3-server", ["stdbuf", "-oL", "iperf3", "-s", "-p", str(self.port),
                                             "-B", "127.0.0.1"])
        wait_port(self.port)
        self.connections = 1  # wait_port's probe

    def wait_listening(self):
        def listening():
            return self.server.read("stdout").count("Server listening")
        wait_until(lambda: listening() > self.connections, 10, "iperf3 to listen again")


def measure(bin_dir, origin, seconds, streams):
    contenders.BIN = bin_dir  # read when the supervisor and client are started
    contenders._plain_flag = None  # the other build may differ in its flags
    tunnel = contenders.Culvert()
    port = tunnel.start(origin.port)
    origin.connections += 1  # the tunnel's port probe reached iperf3 too
    try:
        for reverse in (False, False, True):
            origin.wait_listening()
            cpu, resent = cpu_seconds(tunnel.pids()), tcp_retransmitted_segments()
            gbps, nbytes = iperf(port, seconds, streams, reverse)
            origin.connections += 1
            gib = nbytes / 2**30
            cpu_per_gib = (cpu_seconds(tunnel.pids()) - cpu) / gib
            resent_per_gib = (tcp_retransmitted_segments() - resent) / gib
            yield "download" if reverse else "upload", gbps, cpu_per_gib, resent_per_gib
    finally:
        tunnel.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bin_a")
    parser.add_argument("bin_b")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--streams", type=int, default=1)
    args = parser.parse_args()
    origin = Origin()
    try:
        for r in range(args.rounds):
            for name, bin_dir in (("A", args.bin_a), ("B", args.bin_b)):
                runs = measure(os.path.abspath(bin_dir), origin, args.seconds, args.streams)
                for way, gbps, cpu, resent in runs:
                    print(f"round {r + 1} {name} {way:8} {gbps:6.2f} Gbit/s  {cpu:.3f} CPU-s/GiB  "
                          f"{resent:7.1f} resent/GiB", flush=True)
    finally:
        origin.server.stop()


if __name__ == "__main__":
    main()
