"""50 clients at once, each with its own domain and port, all carrying data; the 51st over a
limit of 50 tunnels gets the ERROR (printed, non-zero exit) and the others carry on."""

import socket

from harness import Environment, connect, echo_handler, recv_all, run_test

LIMIT = 50


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor("--max-tunnels", str(LIMIT))
        processes = [env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name=f"c{i}",
                                expect_url=False) for i in range(LIMIT)]
        clients = [env.await_forwarding(p) for p in processes]
        assert len({c.port for c in clients}) == LIMIT, "ports are not distinct"
        domains = {t["domain"] for t in sup.status()["tunnels"]}
        assert len(domains) == LIMIT, f"domains are not distinct: {sorted(domains)}"

        extra = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="c-over", expect_url=False)
        code = extra.popen.wait(20)
        assert code == 2, f"51st client exit code {code}"
        assert "limit of 50 tunnels" in extra.stderr(), extra.stderr()

        for i, c in enumerate(clients):
            s = connect(c.port)
            message = f"tunnel {i}".encode()
            s.sendall(message)
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == message, f"tunnel {i} did not echo"
            s.close()
        status = sup.status()
        assert len(status["tunnels"]) == LIMIT, len(status["tunnels"])
        assert all(t["state"] == "active" for t in status["tunnels"]), status


run_test(main)
