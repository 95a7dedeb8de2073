"""A client's ERROR text in the supervisor's log: escape sequences, CR and LF arrive escaped on
one line, the supervisor closes the control connection after the ERROR (the tunnel is held, and
reclaimed again), and a client repeating it cannot flood the log (at most 10 lines per 10 s)."""

import re
import socket
import time

from harness import Environment, run_test, wait_until
import wire

HOSTILE = b"\x1b[2J\x1b[31mred\r\nFAKE: tunnel opened by admin\x07"
ROUNDS = 25
LINES_PER_WINDOW, WINDOW_S = 10, 10


def closed_by_peer(s, timeout=5.0):
    """True once the peer closes (EOF or reset) within timeout; anything it sends is dropped."""
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def main():
    with Environment() as env:
        sup = env.supervisor("--grace-period", "60")
        reclaim = None
        started = time.monotonic()
        for round_ in range(ROUNDS):
            s = wire.connect_from("127.0.0.1", sup.control_port)
            s.sendall(wire.init(reclaim=reclaim))
            kind, payload = wire.read_frame(s)
            assert kind == wire.DOMAIN, f"round {round_}: expected DOMAIN, got {kind}"
            tunnel = wire.domain_of(payload)
            assert reclaim is None or tunnel == reclaim, "the held tunnel was not reclaimed"
            reclaim = tunnel
            s.sendall(wire.frame(wire.ACK) + wire.error(1, HOSTILE))
            assert closed_by_peer(s), f"round {round_}: connection still open after our ERROR"
            s.close()
        elapsed = time.monotonic() - started

        log = sup.process.stderr()
        escaped = r"\x1b[2J\x1b[31mred\x0d\x0aFAKE: tunnel opened by admin\x07"
        lines = [line for line in log.splitlines() if "client reported an error: " in line]
        assert lines, "the client's ERROR was not logged at all"
        for line in lines:
            assert line.endswith(escaped) or escaped + " (" in line, f"not escaped: {line!r}"
        assert "\x1b" not in log, "a raw escape byte reached the log"
        assert not re.search(r"^FAKE", log, re.M), "the client's text started a log line"
        allowed = LINES_PER_WINDOW * (int(elapsed // WINDOW_S) + 2)
        assert len(lines) <= allowed, f"{len(lines)} lines for {ROUNDS} ERRORs in {elapsed:.1f} s"
        assert len(lines) < ROUNDS, f"every one of {ROUNDS} ERRORs was logged"
        wait_until(lambda: sup.status()["tunnels"][0]["state"] == "held", 10, "tunnel held")
        print(f"{ROUNDS} ERRORs in {elapsed:.1f} s: {len(lines)} log lines, all escaped")


run_test(main)
