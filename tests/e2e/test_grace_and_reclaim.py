"""Losing and regaining a client. (1) Connections cut by the network within the grace period:
the client reconnects by itself and keeps its domain and port. (2) Client restarted with the
same arguments within the grace period: same domain and port (reclaim secret from its state
file). (3) Client killed for good: the domain is held, then back in the pool after the grace
period, as culvert-status --json shows."""

import signal
import socket
import threading

from harness import Environment, connect, echo_handler, echo_once, recv_all, run_test, wait_until

GRACE = 2  # long enough for (1) and (2) to come back: each takes well under 1 s


class CuttableProxy:
    """A TCP relay standing in for the network between client and server; cut() drops every
    connection through it at once."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.live = []
        self.cutting = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.live += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self.pump, args=(x, y), daemon=True).start()

    def pump(self, x, y):
        try:
            while data := x.recv(65536):
                y.sendall(data)
            if not self.cutting:
                y.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self):
        """Resets every connection at once. A socket another thread is blocked reading stays
        open after close() until that read returns (on the next byte, seconds later for an idle
        connection): shutting its reading side first wakes the reader, so close() resets now."""
        with self.lock:
            self.cutting = True
            for s in self.live:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            for s in self.live:
                s.close()
            self.live = []
            self.cutting = False

    def close(self):
        self.listener.close()
        self.cut()


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor("--grace-period", str(GRACE), "--heartbeat-interval", "1",
                             "--heartbeat-timeout", "3")
        proxy = CuttableProxy(sup.control_port)
        env.services.append(proxy)

        # (1) Cut the network under a running client.
        c = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="cut-client",
                       server=f"127.0.0.1:{proxy.port}")
        assert echo_once(c.port, b"before") == b"before"
        proxy.cut()
        c.process.wait_for_output(r"reconnected; \S+ is still ours", stream="stderr", timeout=20)
        wait_until(lambda: echo_once(c.port, b"after") == b"after", 15, "echo after reconnect")
        assert sup.tunnel(c)["public_port"] == c.port
        c.process.stop()

        # (2) Restart the client with the same arguments.
        first = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--subdomain", "keepme",
                           name="restart-1")
        first.process.signal(signal.SIGKILL)
        first.process.popen.wait()
        wait_until(lambda: sup.tunnel(first)["state"] == "held", 10, "tunnel held")
        second = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--subdomain", "keepme",
                            name="restart-2")
        assert (second.domain, second.port) == (first.domain, first.port), (second.url, first.url)
        assert echo_once(second.port, b"again") == b"again"

        # (3) Kill it for good: held, then released after the grace period.
        second.process.signal(signal.SIGKILL)
        second.process.popen.wait()
        wait_until(lambda: sup.tunnel(second)["state"] == "held", 10, "tunnel held")
        wait_until(lambda: sup.tunnel(second) is None, GRACE + 15, "domain released")
        # The name is free again: a new client may take it.
        third = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--subdomain", "keepme",
                           "--no-state", name="newcomer")
        assert third.domain == second.domain


run_test(main)
