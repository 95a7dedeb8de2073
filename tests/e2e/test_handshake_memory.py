"""Memory before authentication: connections whose first header announces a 1 MiB DATA frame
get ERROR protocol_error at once (a handshake accepts only INIT, DATA_INIT and DATA_ROUTE of at
most 2 KiB), and the supervisor's peak RSS (VmHWM) stays within a few MiB, where allocating each
announced payload would take 64 MiB."""

import time

from harness import Environment, run_test
import wire

CONNECTIONS = 64
MIB = 1024 * 1024
PROTOCOL_ERROR = 1


def memory_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def main():
    with Environment() as env:
        sup = env.supervisor("--max-handshakes-per-address", str(CONNECTIONS * 2))
        pid = sup.process.pid
        before = memory_kib(pid, "VmHWM")
        sockets = []
        for _ in range(CONNECTIONS):  # all open at once: nothing is freed between them
            s = wire.connect_from("127.0.0.1", sup.control_port)
            s.sendall(wire.header(MIB, wire.DATA, 0, 1))
            sockets.append(s)
        started = time.monotonic()
        answers = []
        for s in sockets:  # within the 5 s handshake timeout's answer, whatever it is
            s.settimeout(10)
            kind, payload = wire.read_frame(s)
            answers.append((kind,) + (wire.error_of(payload) if kind == wire.ERROR else (0, "")))
        took = time.monotonic() - started
        peak = memory_kib(pid, "VmHWM")
        for s in sockets:
            s.close()
        grew = (peak - before) / 1024
        print(f"{CONNECTIONS} x 1 MiB DATA headers: first answer {answers[0]} after {took:.2f} s; "
              f"supervisor peak RSS {before} -> {peak} KiB (+{grew:.1f} MiB)")
        for i, (kind, code, message) in enumerate(answers):
            assert kind == wire.ERROR and code == PROTOCOL_ERROR and "DATA" in message, \
                f"connection {i}: {kind} {code} {message!r}"
        assert took < 3, f"the ERRORs took {took:.1f} s"
        assert grew < 8, f"peak RSS grew {grew:.1f} MiB for {CONNECTIONS} headers"
        assert sup.process.alive()


run_test(main)
