"""Shared helpers for culvert's end-to-end tests: start the real programs on loopback, wait on
conditions (never fixed sleeps), run small local services, and clean up every process started,
also when a test fails. Each test file is one ctest test; CULVERT_BIN points at build/bin."""

import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import traceback

BIN = os.environ.get("CULVERT_BIN", os.path.join(os.path.dirname(__file__), "../../build/bin"))


def reachable_by_nobody(path):
    """Whether the unprivileged account a root supervisor drops to can execute `path`."""
    try:
        return subprocess.run(["test", "-x", path], user=65534, group=65534,
                              extra_groups=[], timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


PROGRAMS = ("culvert-supervisor", "culvert-worker", "culvert-worker-clear", "culvert", "culvert-status")


def _usable_bin(directory):
    """Run as root, the supervisor drops to `nobody`, which must be able to execute the worker.
    A checkout under a private directory (/root, mode 0700) is not: test from a copy of the
    programs in a world-readable place instead, made once per build."""
    worker = os.path.join(directory, "culvert-worker")
    if os.geteuid() != 0 or reachable_by_nobody(worker):
        return directory
    stamp = "-".join(str(int(os.stat(os.path.join(directory, n)).st_mtime)) for n in PROGRAMS)
    copy = os.path.join(tempfile.gettempdir(),
                        f"culvert-e2e-bin-{hashlib.sha256((directory + stamp).encode()).hexdigest()[:16]}")
    if not os.path.exists(os.path.join(copy, "done")):
        staging = tempfile.mkdtemp(prefix="culvert-e2e-bin-")
        for name in PROGRAMS:
            shutil.copy2(os.path.join(directory, name), staging)
        os.chmod(staging, 0o755)
        open(os.path.join(staging, "done"), "w").close()
        try:
            os.rename(staging, copy)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another test made it first
    return copy


BIN = _usable_bin(os.path.abspath(BIN))
HERE = os.path.dirname(os.path.abspath(__file__))
PROTOCOL_VERSION = 3  # the wire protocol these programs speak (docs/protocol.md)
CRASH = re.compile(r"ERROR: (?:Address|Leak|Thread)Sanitizer.*|runtime error: .*|"
                   r"killed by SIG(?:SEGV|ABRT|BUS|FPE|ILL).*")


def wait_until(predicate, timeout, what):
    """Polls predicate until it returns a truthy value; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Process:
    """A started program whose stdout and stderr go to files we can search."""

    def __init__(self, name, args, workdir, env=None):
        self.name = name
        self.args = args
        self.out_path = os.path.join(workdir, f"{name}.out")
        self.err_path = os.path.join(workdir, f"{name}.err")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            args, stdout=open(self.out_path, "wb"), stderr=open(self.err_path, "wb"),
            stdin=subprocess.DEVNULL, env=full_env)
        self.pid = self.popen.pid

    def stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_for_output(self, pattern, timeout=15, stream="stdout"):
        regex = re.compile(pattern)

        def find():
            text = self.stdout() if stream == "stdout" else self.stderr()
            match = regex.search(text)
            if match:
                return match
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before "
                                     f"printing /{pattern}/:\n{self.stdout()}\n{self.stderr()}")
            return None
        return wait_until(find, timeout, f"{self.name} to print /{pattern}/")

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout=10):
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class Supervisor:
    def __init__(self, process, control_port, instance):
        self.process = process
        self.control_port = control_port
        self.instance = instance
        self.server = f"127.0.0.1:{control_port}"

    def status(self):
        out = subprocess.run([os.path.join(BIN, "culvert-status"), "--instance", self.instance,
                              "--json"], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, f"culvert-status failed: {out.stderr}"
        return json.loads(out.stdout)

    def tunnel(self, client):
        """The status row of a client's tunnel (matched by public port, which tcp URLs show)."""
        for t in self.status()["tunnels"]:
            if t["public_port"] == client.port:
                return t
        return None


class Client:
    def __init__(self, process, url, domain, port):
        self.process = process
        self.url = url
        self.domain = domain
        self.port = port


class Environment:
    """Owns every process and service a test starts; tears all of them down on exit."""

    counter = 0

    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix="culvert-e2e-")
        self.processes = []
        self.services = []
        self.state_dir = os.path.join(self.workdir, "state")

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        for s in self.services:
            s.close()
        for p in reversed(self.processes):
            p.stop()
        if kind is None:
            # A crash or a sanitizer report in any program fails the test, even one whose
            # bytes all arrived (a worker dying at shutdown, a leak found at exit).
            for p in self.processes:
                crash = CRASH.search(p.stderr())
                if crash:
                    kind, value = AssertionError, AssertionError(
                        f"{p.name} reported: {crash.group(0)}")
                    print(f"----- {p.name}\n{p.stderr()[-6000:]}", file=sys.stderr)
                    raise value
        if kind is not None:
            for p in self.processes:
                print(f"----- {p.name} {' '.join(p.args)}\n--- stdout:\n{p.stdout()[-4000:]}"
                      f"\n--- stderr:\n{p.stderr()[-6000:]}", file=sys.stderr)
            print(f"logs kept in {self.workdir}", file=sys.stderr)
        elif not os.environ.get("CULVERT_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)  # a passed test leaves nothing in /tmp
        return False

    def start(self, name, args, env=None):
        p = Process(name, args, self.workdir, env)
        self.processes.append(p)
        return p

    def supervisor(self, *extra, name="supervisor", env=None):
        Environment.counter += 1
        instance = f"e2e-{os.getpid()}-{Environment.counter}"
        args = [os.path.join(BIN, "culvert-supervisor"), "--control", "127.0.0.1:0",
                "--instance", instance, "--ports", "30000-39999", *extra]
        p = self.start(name, args, env)
        match = p.wait_for_output(r"control listening on 127\.0\.0\.1:(\d+)", stream="stderr")
        return Supervisor(p, int(match.group(1)), instance)

    def client(self, supervisor, kind, local, *extra, name=None, expect_url=True, server=None,
               env=None):
        name = name or f"client{len(self.processes)}"
        args = [os.path.join(BIN, "culvert"), kind, str(local), "--server",
                server or supervisor.server, "--state-dir", self.state_dir, *extra]
        p = self.start(name, args, env)
        if not expect_url:
            return p
        return self.await_forwarding(p)

    def await_forwarding(self, p, after=0):
        match = p.wait_for_output(r"Forwarding ((?:http|tcp)://([^:\s]+):(\d+)) -> ")
        return Client(p, match.group(1), match.group(2), int(match.group(3)))

    def saved_tunnel(self, domain=None):
        """The state file entry (tunnel_id, secret in hex, domain) a client saved for `domain`, or
        the only one there is: where a test that plays an attacker who knows a tunnel's id or
        secret gets them (the status table shows neither)."""
        paths = sorted(glob.glob(os.path.join(self.state_dir, "**", "tunnel-*.json"),
                                 recursive=True))
        entries = []
        for path in paths:
            with open(path) as f:
                entries.append(json.load(f))
        if domain is None:
            assert len(entries) == 1, paths
            return entries[0]
        for saved in entries:
            if saved.get("domain") == domain:
                return saved
        raise AssertionError(f"no state file in {self.state_dir} for {domain}")

    def service(self, handler_factory, port=0):
        s = TcpService(handler_factory, port)
        self.services.append(s)
        return s


class TcpService:
    """A threaded TCP server on 127.0.0.1; handler(sock) runs per connection."""

    def __init__(self, handler, port=0):
        self.handler = handler
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


def echo_handler(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def make_certificates(directory):
    """A private CA and two server certificates signed by it: one for 127.0.0.1 and localhost,
    one for another name only."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=culvert test CA")
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("other", "DNS:other.example")):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        with open(os.path.join(directory, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {name: os.path.join(directory, name) for name in ("ca", "server", "other")}


def answer_with_sha256(conn):
    """A service handler: reads until the visitor's FIN, then answers "<bytes> <sha256 hex>" and
    closes its side (so it only answers if half-close is carried through)."""
    digest = hashlib.sha256()
    total = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        total += len(data)
        digest.update(data)
    conn.sendall(f"{total} {digest.hexdigest()}".encode())
    conn.shutdown(socket.SHUT_WR)


def echo_once(port, message, timeout=10):
    """Sends `message` through a tunnel to an echo service, half-closes, returns all it got."""
    s = connect(port, timeout=timeout)
    s.sendall(message)
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s)
    s.close()
    return got


def route_tag(secret):
    """DATA_ROUTE's tag for a tunnel's secret (docs/protocol.md, protocol version 3)."""
    return hmac.new(secret, b"culvert data route tag v1", hashlib.sha256).digest()


def pattern_bytes(seed, size):
    """Deterministic pseudo-random bytes (both ends can compute the hash)."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(block + counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:size])


def connect(port, host="127.0.0.1", timeout=10):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def assert_echoed(port, size):
    """Sends `size` random bytes through `port` to an echo service, half-closes, and checks that
    exactly the same bytes come back (compared by SHA-256)."""
    payload = os.urandom(size)
    s = connect(port)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got = recv_all(s)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), len(got)


def recv_all(sock):
    chunks = []
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


SKIP_EXIT = 77  # ctest's SKIP_RETURN_CODE for the e2e tests (tests/CMakeLists.txt)


def skip(reason):
    """Reports the test as skipped (not passed) to ctest, with the reason. Call it before the
    test starts any program."""
    print(f"SKIP: {reason}")
    sys.exit(SKIP_EXIT)


def require(*programs, node_modules=()):
    """Skips the test when a program it drives (or an npm package of tests/e2e) is missing:
    tools/install-deps installs them all, so under tools/test this never skips."""
    missing = [p for p in programs if shutil.which(p) is None]
    missing += [f"npm package {m} (tests/e2e/node_modules)" for m in node_modules
                if not os.path.isdir(os.path.join(HERE, "node_modules", m))]
    if missing:
        skip(f"not installed: {', '.join(missing)}; tools/install-deps installs what is missing")


def run_test(main):
    """Runs main(), prints a clear verdict, exits non-zero on failure."""
    started = time.monotonic()
    try:
        main()
    except Exception:
        traceback.print_exc()
        print(f"FAIL after {time.monotonic() - started:.1f} s")
        sys.exit(1)
    print(f"PASS in {time.monotonic() - started:.1f} s")


SANITIZED = os.environ.get("CULVERT_SANITIZED") == "1"  # an ASan/UBSan build: 2-4x slower


def wait_exit(process, timeout):
    """Waits for a started program to exit and returns its exit code; fails the test if it is
    still running after `timeout` seconds (it is killed then)."""
    try:
        return process.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        process.popen.kill()
        process.popen.wait()
        raise AssertionError(f"{process.name} still running after {timeout} s")


def signal_and_wait(process, sig, timeout):
    """Sends `sig` to a started program and waits for it to exit (wait_exit). Returns (exit code,
    seconds from the signal to the exit)."""
    started = time.monotonic()
    process.signal(sig)
    code = wait_exit(process, timeout)
    return code, time.monotonic() - started
