"""The client stops cleanly: SIGTERM in the middle of a large download (tcp tunnel, clear text
and TLS) or a large upload (http tunnel) ends it with exit code 0 at once, through its polite
stage (no "still running" warning: the forced stage did not have to stop its event loop), with
every destructor run and no sanitizer report; the visitor sees its stream reset or complete,
never a clean end before the last byte. SIGINT while idle, while the handshake waits for a
silent server and while reconnecting to a stopped one also ends it with 0 at once; a refusal (2)
and an unreachable server (3) keep their exit codes."""

import hashlib
import re
import signal
import socket
import time

from harness import (CRASH, SANITIZED, Environment, connect, echo_once, echo_handler,
                     make_certificates, recv_all, run_test, signal_and_wait, wait_exit,
                     wait_until)

# From the signal to the exit. The client's own deadline (forced stage) is 2 s; the polite stage
# takes milliseconds, plus the sanitizers' leak check at exit.
PROMPT = 8 if SANITIZED else 4
BLOCK = 1 << 20
DOWNLOAD_BLOCKS = 1024  # 1 GiB: far more than can arrive between the signal and the exit
UPLOAD = 256 << 20
BEFORE_STOP = 8 << 20  # bytes moved before the signal: every buffer on the way is in use


def fast_source(conn):
    block = b"d" * BLOCK
    for _ in range(DOWNLOAD_BLOCKS):
        conn.sendall(block)
    conn.shutdown(socket.SHUT_WR)


def slow_http_sink(conn):
    """Reads one POST at about 30 MB/s (so an upload piles up in the tunnel's buffers), then
    answers "<bytes> <sha256>"."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = conn.recv(65536)
        if not data:
            return
        head += data
    head, body = head.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    digest = hashlib.sha256(body)
    got = len(body)
    while got < length:
        data = conn.recv(65536)
        if not data:
            return
        digest.update(data)
        got += len(data)
        time.sleep(0.002)
    answer = f"{got} {digest.hexdigest()}".encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))


def stopped_cleanly(process, code, took, what, expected=0):
    err = process.stderr()
    assert code == expected, f"{what}: exit code {code}, not {expected}:\n{err[-4000:]}"
    crash = CRASH.search(err)
    assert not crash, f"{what}: {crash.group(0)}"
    assert "still running" not in err, f"{what}: the forced stage had to stop it:\n{err[-4000:]}"
    assert took < PROMPT, f"{what}: took {took:.3f} s to exit"
    print(f"{what}: exit code {code}, {took:.3f} s")


def stop_mid_download(env, sup, what, *extra):
    source = env.service(fast_source)
    client = env.client(sup, "tcp", f"127.0.0.1:{source.port}", *extra, name=what)
    s = connect(client.port, timeout=2 * PROMPT)
    received = 0
    while received < BEFORE_STOP:
        data = s.recv(BLOCK)
        assert data, f"{what}: end of stream after {received} bytes, before the stop"
        received += len(data)
    started = time.monotonic()
    client.process.signal(signal.SIGTERM)
    total = DOWNLOAD_BLOCKS * BLOCK
    try:
        while True:
            data = s.recv(BLOCK)
            if not data:
                outcome = "complete" if received == total else "clean EOF"
                break
            received += len(data)
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    s.close()
    code = wait_exit(client.process, 3 * PROMPT)
    print(f"{what}: the visitor got {received} of {total} bytes, then: {outcome}")
    assert outcome in ("reset", "complete"), f"{what}: the visitor saw {outcome}"
    stopped_cleanly(client.process, code, time.monotonic() - started, what)


def stop_mid_upload(env, sup):
    what = "SIGTERM mid-upload (http)"
    sink = env.service(slow_http_sink)
    client = env.client(sup, "http", sink.port, name="upload")
    s = connect(client.port, timeout=2 * PROMPT)
    s.sendall(f"POST /upload HTTP/1.1\r\nHost: {client.domain}:{client.port}\r\n"
              f"Content-Type: application/octet-stream\r\nContent-Length: {UPLOAD}\r\n\r\n"
              .encode())
    block = memoryview(b"u" * BLOCK)
    sent = 0
    started = None
    try:
        while sent < UPLOAD:
            sent += s.send(block[:min(BLOCK, UPLOAD - sent)])
            if started is None and sent >= BEFORE_STOP:
                started = time.monotonic()
                client.process.signal(signal.SIGTERM)
        answer = recv_all(s)
        expected = f"{UPLOAD} {hashlib.sha256(b'u' * UPLOAD).hexdigest()}".encode()
        outcome = "complete" if answer.endswith(b"\r\n\r\n" + expected) else "clean EOF"
    except ConnectionResetError:
        outcome = "reset"
    except BrokenPipeError:
        outcome = "broken pipe (an end of stream came before the reset)"
    except socket.timeout:
        outcome = "timeout"
    s.close()
    assert started is not None, f"{what}: {outcome} after {sent} bytes, before the stop"
    code = wait_exit(client.process, 3 * PROMPT)
    print(f"{what}: the visitor sent {sent} of {UPLOAD} bytes, then: {outcome}")
    assert outcome in ("reset", "complete"), f"{what}: the visitor saw {outcome}"
    stopped_cleanly(client.process, code, time.monotonic() - started, what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor()

        stop_mid_download(env, sup, "SIGTERM mid-download (tcp)")
        stop_mid_upload(env, sup)

        idle = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="idle")
        assert echo_once(idle.port, b"hello") == b"hello"
        time.sleep(0.3)  # nothing moves: only keepalives and waits on the network
        code, took = signal_and_wait(idle.process, signal.SIGINT, 3 * PROMPT)
        stopped_cleanly(idle.process, code, took, "SIGINT while idle")

        # A server that takes INIT and never answers: the client waits in the handshake.
        silent = env.service(recv_all)
        waiting = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--no-state", name="handshake",
                             server=f"127.0.0.1:{silent.port}", expect_url=False)
        wait_until(lambda: silent.connections >= 1, 10, "the client to connect")
        time.sleep(0.3)
        code, took = signal_and_wait(waiting, signal.SIGINT, 3 * PROMPT)
        stopped_cleanly(waiting, code, took, "SIGINT during the handshake")

        unreachable = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", "--no-state",
                                 name="unreachable", server=f"127.0.0.1:{free_port()}",
                                 expect_url=False)
        started = time.monotonic()
        code = wait_exit(unreachable, 3 * PROMPT)
        stopped_cleanly(unreachable, code, time.monotonic() - started,
                        "unreachable server", expected=3)

        files = make_certificates(env.workdir)
        tls = env.supervisor("--tls-cert", files["server"] + ".pem",
                             "--tls-key", files["server"] + ".key", name="tls-supervisor")
        stop_mid_download(env, tls, "SIGTERM mid-download (tcp, TLS)", "--ca", files["ca"] + ".pem")
        refused = env.client(tls, "tcp", f"127.0.0.1:{echo.port}", "--no-tls", "--no-state",
                             name="refused", expect_url=False)
        started = time.monotonic()
        code = wait_exit(refused, 3 * PROMPT)
        assert "requires TLS" in refused.stderr(), refused.stderr()
        stopped_cleanly(refused, code, time.monotonic() - started, "refused", expected=2)

        # The server goes away: the client backs off and retries until it is stopped.
        again = env.client(sup, "tcp", f"127.0.0.1:{echo.port}", name="reconnecting")
        sup.process.stop()
        again.process.wait_for_output(r"reconnecting to .* in [1-9]\d* ms(?s:.*)reconnecting to",
                                      stream="stderr")
        code, took = signal_and_wait(again.process, signal.SIGTERM, 3 * PROMPT)
        stopped_cleanly(again.process, code, took, "SIGTERM while reconnecting")


run_test(main)
