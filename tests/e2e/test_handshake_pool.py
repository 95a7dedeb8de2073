"""Handshake places under a flood of idle connections. (1) With every place held by connections
from eight loopback addresses that never send a frame, a known tunnel still gets its data
connections back after its worker restarts, and its restarted client reclaims it (same domain and
port, bytes echoed): the oldest idle connection makes way for each newcomer. (2) A bad token
waiting out its delay holds no place: with the per-address limit at 2 and two bad tokens waiting,
a third connection from the same address is served at once, and the two still get their
ERROR bad_token after the delay (they were not shed)."""

import os
import select
import signal
import socket

from harness import Environment, echo_handler, run_test, wait_until, assert_echoed
import wire

POOL = 32
IDLE_SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]
BAD_TOKEN = 2
DELAY_MS = 1500  # the bad tokens' waits (1.5 s, then 3 s): long beside a good token's answer


class IdleFlood:
    """Connections that never send a byte, from IDLE_SOURCES in turn."""

    def __init__(self, port):
        self.port = port
        self.live = []
        self.count = 0

    def unanswered(self):
        """Drops the connections the supervisor answered or closed; returns how many are left."""
        readable, _, _ = select.select(self.live, [], [], 0) if self.live else ([], [], [])
        for s in readable:
            self.live.remove(s)
            s.close()
        return len(self.live)

    def fill(self, extra):
        """Opens `extra` more idle connections, then waits until the supervisor has dealt with
        all of them: exactly POOL left unanswered (the rest refused or shed, by version)."""
        for _ in range(extra):
            source = IDLE_SOURCES[self.count % len(IDLE_SOURCES)]
            self.count += 1
            self.live.append(wire.connect_from(source, self.port))
        wait_until(lambda: self.unanswered() == POOL, 10, f"{POOL} idle connections held")

    def close(self):
        for s in self.live:
            s.close()


def echo_works(port):
    try:
        assert_echoed(port, 64 * 1024)
        return True
    except (OSError, AssertionError):
        return False


def flood_does_not_lock_out_known_tunnels(env):
    echo = env.service(echo_handler)
    sup = env.supervisor("--max-pending-handshakes", str(POOL),
                         "--handshake-timeout", "120", "--grace-period", "60")
    client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="first")
    assert echo_works(client.port)
    flood = IdleFlood(sup.control_port)
    env.services.append(flood)
    flood.fill(POOL * 2)

    # The worker dies: the client is told to re-open its data connections (DATA_INIT).
    worker = sup.tunnel(client)["worker_pid"]
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: sup.tunnel(client)["worker_pid"] not in (0, worker), 10, "new worker")
    wait_until(lambda: echo_works(client.port), 15, "data connections back through the flood")

    # The client restarts: it reclaims its tunnel (INIT with id and secret) through the flood.
    flood.fill(POOL)
    client.process.signal(signal.SIGKILL)
    client.process.popen.wait()
    wait_until(lambda: sup.tunnel(client)["state"] == "held", 10, "tunnel held")
    again = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="restarted")
    assert (again.domain, again.port) == (client.domain, client.port), (again.url, client.url)
    wait_until(lambda: echo_works(again.port), 15, "echo after the reclaim")
    print(f"worker restart and reclaim served with {POOL} idle connections holding every place")


def bad_token_waits_without_a_place(env):
    sup = env.supervisor("--token", "good-token-0123456789", "--max-handshakes-per-address", "2",
                         "--auth-failure-delay-ms", str(DELAY_MS), name="tokens-supervisor")
    source = "127.0.0.20"
    waiting = []
    for i in range(2):
        s = wire.connect_from(source, sup.control_port)
        s.sendall(wire.init(token=b"wrong-token-%d-xxxxxxxx" % i))
        waiting.append(s)
        sup.process.wait_for_output(r"(refused: bad token.*\n.*){%d}" % (i + 1), stream="stderr")
    s = wire.connect_from(source, sup.control_port)
    s.settimeout(DELAY_MS / 1000 / 2)
    s.sendall(wire.init(token=b"good-token-0123456789"))
    kind, payload = wire.read_frame(s)
    assert kind == wire.DOMAIN, f"a good token waited behind bad ones: {wire.error_of(payload)}"
    s.close()
    readable, _, _ = select.select(waiting, [], [], 0)
    assert not readable, "a bad token was answered before its delay"
    for s in waiting:
        s.settimeout(DELAY_MS * 4 / 1000)
        kind, payload = wire.read_frame(s)
        assert kind == wire.ERROR and wire.error_of(payload)[0] == BAD_TOKEN, (kind, payload)
        s.close()
    print("a good token from the same address was served while two bad ones waited")


def main():
    with Environment() as env:
        flood_does_not_lock_out_known_tunnels(env)
        bad_token_waits_without_a_place(env)


run_test(main)
