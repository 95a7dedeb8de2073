"""A worker killed with SIGKILL: the supervisor notices, starts a new one for the domain and
tells the client to re-open its data connections; the tunnel works again within seconds without
touching the client, on the same domain and port."""

import os
import signal

from harness import Environment, echo_handler, echo_once, run_test, wait_until


def echo_or_none(port, message):
    """The echo, or None while the tunnel is not serving."""
    try:
        return echo_once(port, message, timeout=5)
    except OSError:
        return None


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor()
        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")
        assert echo_or_none(client.port, b"one") == b"one"
        before = sup.tunnel(client)
        os.kill(before["worker_pid"], signal.SIGKILL)

        def restarted():
            t = sup.tunnel(client)
            return t and t["worker_pid"] not in (0, before["worker_pid"]) and t

        after = wait_until(restarted, 10, "a new worker")
        assert after["worker_restarts"] == 1 and after["public_port"] == client.port, after
        wait_until(lambda: echo_or_none(client.port, b"two") == b"two", 10, "tunnel working again")
        assert client.process.alive()
        client.process.wait_for_output("re-opening data connections", stream="stderr")


run_test(main)
