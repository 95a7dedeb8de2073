"""SIGTERM ends each program cleanly, whatever it is in the middle of: the supervisor while a bad
token waits out its delay and while a visitor's transfer runs, a worker mid-transfer. Each exits
0 within its bounds with no sanitizer report (the ASan build runs this test too: a destructor
reaching freed memory, or a leak, fails it), and a visitor sees its stream complete or reset,
never a clean end that would pass a truncated transfer off as whole."""

import os
import signal
import socket
import time

import wire
from harness import Environment, connect, pattern_bytes, run_test, wait_until

TOKEN = "good-token-0123456789"
DELAY_MS = 30000  # far beyond how long the shutdown may take
TOTAL = 64 << 20  # a transfer far longer than the test waits


def slow_source(conn):
    """TOTAL bytes in 64 KiB blocks every 5 ms, then a clean close."""
    block = pattern_bytes("shutdown", 65536)
    try:
        for _ in range(TOTAL // len(block)):
            conn.sendall(block)
            time.sleep(0.005)
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def read_to_end(s):
    """'complete' (every byte, then EOF), 'truncated' (EOF early), 'reset' or 'timeout'."""
    received = 0
    try:
        while True:
            data = s.recv(1 << 16)
            if not data:
                return ("complete" if received == TOTAL else "truncated"), received
            received += len(data)
    except ConnectionResetError:
        return "reset", received
    except socket.timeout:
        return "timeout", received


def start_download(env, sup):
    source = env.service(slow_source)
    client = env.client(sup, "tcp", f"127.0.0.1:{source.port}")
    s = connect(client.port, timeout=30)
    got = 0
    while got < 1 << 20:  # the transfer is under way
        got += len(s.recv(1 << 16))
    return client, s


def check_outcome(s, who):
    outcome, received = read_to_end(s)
    print(f"{who}: the visitor got {received} bytes, then: {outcome}")
    assert outcome in ("complete", "reset"), f"{who}: the visitor saw {outcome}"


def stop_within(process, seconds, who):
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    try:
        code = process.popen.wait(seconds)
    except Exception:
        raise AssertionError(f"{who} still running {seconds} s after SIGTERM")
    took = time.monotonic() - started
    print(f"{who}: exited {code} {took:.2f} s after SIGTERM")
    assert code == 0, f"{who} exited {code}"
    return took


def supervisor_during_bad_token_delay(env):
    sup = env.supervisor("--token", TOKEN, "--auth-failure-delay-ms", str(DELAY_MS),
                         name="delay-supervisor")
    s = wire.connect_from("127.0.0.1", sup.control_port)
    s.sendall(wire.init(token=b"not-the-token-0123456789"))
    sup.process.wait_for_output(r"refused: bad token \(after", stream="stderr")
    stop_within(sup.process, 5, "supervisor with a bad token waiting")
    s.settimeout(5)
    try:
        assert s.recv(1) == b"", "the waiting connection got an answer instead of a close"
    except ConnectionResetError:
        pass


def supervisor_during_transfer(env):
    sup = env.supervisor(name="transfer-supervisor")
    _, s = start_download(env, sup)
    # Its worker drains for up to 5 s, then resets what is left; 8 s later it would be killed.
    stop_within(sup.process, 12, "supervisor mid-transfer")
    check_outcome(s, "supervisor stopped")


def worker_during_transfer(env):
    sup = env.supervisor(name="worker-supervisor")
    client, s = start_download(env, sup)
    pid = sup.tunnel(client)["worker_pid"]
    os.kill(pid, signal.SIGTERM)
    check_outcome(s, "worker stopped")
    wait_until(lambda: f"worker {pid} exited with status 0" in sup.process.stderr(), 10,
               f"worker {pid} to exit 0")
    # The supervisor restarts it and the tunnel carries on.
    wait_until(lambda: sup.tunnel(client)["worker_pid"] not in (0, pid), 10, "a new worker")


def main():
    with Environment() as env:
        supervisor_during_bad_token_delay(env)
        supervisor_during_transfer(env)
        worker_during_transfer(env)


run_test(main)
