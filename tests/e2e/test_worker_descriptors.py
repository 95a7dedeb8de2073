"""A worker holds only its own descriptors (issue #16, item 0). With three tunnels open, each
worker's sockets are checked through /proc: its one listening socket is its own public port, it
holds nothing on the control port but its own client's data connections (not the listener, not
another client's connection), and it shares no socket with another worker. Then a released port
stops listening at once: once a killed
client's grace period ends, a visitor to its old port is refused, not accepted and left hanging
by a later worker that inherited the listener."""

import errno
import os
import signal
import socket

from harness import Environment, echo_handler, echo_once, run_test, wait_until

GRACE = 1


def tcp_sockets():
    """inode -> (local port, remote port, state) for every TCP socket on the machine (state 0A
    is LISTEN)."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            next(f)
            for line in f:
                fields = line.split()
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                table[int(fields[9])] = (local, remote, fields[3])
    return table


def descriptors(pid):
    """fd number -> what it points at (e.g. 'socket:[123]', '/dev/null')."""
    out = {}
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            out[int(fd)] = os.readlink(f"{base}/{fd}")
        except OSError:
            pass  # closed meanwhile
    return out


def socket_inodes(links):
    return {int(target[8:-1]) for target in links.values() if target.startswith("socket:[")}


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor("--grace-period", str(GRACE))
        clients = [env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name=f"client-{i}")
                   for i in range(3)]
        for c in clients:
            assert echo_once(c.port, b"hello") == b"hello"
        # Every worker is running and has its data connection (the tunnel just carried bytes).
        rows = {c.port: sup.tunnel(c) for c in clients}
        tcp = tcp_sockets()
        held = {}
        for c in clients:
            port, pid = c.port, rows[c.port]["worker_pid"]
            links = descriptors(pid)
            inodes = socket_inodes(links)
            held[pid] = inodes
            own_client_ports = {tcp[i][0] for i in socket_inodes(descriptors(c.process.popen.pid))
                                if i in tcp}
            listening = sorted(tcp[i][0] for i in inodes if i in tcp and tcp[i][2] == "0A")
            on_control = [tcp[i] for i in inodes if i in tcp and tcp[i][0] == sup.control_port
                          and tcp[i][1] not in own_client_ports]
            print(f"worker {pid} (port {port}): {len(links)} descriptors, listening on "
                  f"{listening}: {sorted(links.items())}")
            assert listening == [port], f"worker {pid} listens on {listening}, not only {port}"
            assert not on_control, f"worker {pid} holds control-port sockets {on_control}"
            # stdin/stdout/stderr, channel (3), listener (4), and its own event loop, signal pipe,
            # data connection and splice pipes: far fewer than a stray set of inherited sockets.
            assert len(links) <= 16, f"worker {pid} holds {len(links)} descriptors"
        pids = list(held)
        for i, a in enumerate(pids):
            for b in pids[i + 1:]:
                shared = held[a] & held[b]
                assert not shared, f"workers {a} and {b} share sockets {shared}"

        # The first tunnel's client dies; its port must close when the grace period ends, even
        # though two workers started after it still run.
        first = clients[0]
        first.process.signal(signal.SIGKILL)
        first.process.popen.wait()
        wait_until(lambda: sup.tunnel(first) is None, GRACE + 15, "first tunnel released")
        for pid in pids[1:]:
            assert os.path.exists(f"/proc/{pid}"), f"worker {pid} should still run"

        def refused():
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", first.port))
            except ConnectionRefusedError:
                return True
            except OSError as e:
                return e.errno == errno.ECONNREFUSED
            finally:
                s.close()
            return False

        def listeners(pids):
            """The listening sockets on the first tunnel's port that `pids` hold."""
            tcp = tcp_sockets()
            return [(pid, i) for pid in pids for i in socket_inodes(descriptors(pid))
                    if i in tcp and tcp[i][0] == first.port and tcp[i][2] == "0A"]

        def released():
            if listeners([sup.process.pid, *pids[1:]]):
                return False
            # Tests running beside this one share the port range: another supervisor's new
            # tunnel may take the freed port at once. Only while nobody listens on it must a
            # visitor be refused.
            return refused() or any(local == first.port and state == "0A"
                                    for local, _, state in tcp_sockets().values())

        # The supervisor closes its copy just after the slot is freed: allow it a moment, then
        # the port must refuse (before the fix it accepted forever, held by the later workers).
        wait_until(released, 5, f"port {first.port} released by the supervisor and its workers")
        for c in clients[1:]:
            assert echo_once(c.port, b"still here") == b"still here"


run_test(main)
