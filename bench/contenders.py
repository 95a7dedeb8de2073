"""Contenders: what sits between a visitor and the origin. Each is a small adapter with
start(origin_port) -> public_port, pids() (roots whose process trees are charged for CPU and
memory) and stop(). Adding a tool (or culvert over TLS) is one more class in CONTENDERS."""

import json
import os
import subprocess
import tempfile

from lib import BIN, WORKDIR, Proc, free_port, log, stop_all, wait_port

SOCAT_PORTS = (44000, 44499)
MIN_RELAY_PORTS = (45000, 45499)
CULVERT_PORTS = (40000, 43999)


class Direct:
    name = "direct"

    def start(self, origin_port):
        return origin_port

    def pids(self):
        return []

    def stop(self):
        pass


class SocatX2:
    """Two chained socat relays: the user-space reference for a tunnel's three TCP legs."""
    name = "socat x2"

    def __init__(self):
        self.procs = []

    def start(self, origin_port):
        mid = free_port(*SOCAT_PORTS)
        pub = free_port(*SOCAT_PORTS)
        for listen, target in ((mid, origin_port), (pub, mid)):
            self.procs.append(Proc(f"socat-{listen}", [
                "socat", f"TCP-LISTEN:{listen},bind=127.0.0.1,fork,reuseaddr,nodelay,backlog=4096",
                f"TCP:127.0.0.1:{target},nodelay"]))
            wait_port(listen)
        return pub

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        stop_all(self.procs)
        self.procs = []


def min_relay_binary():
    """bench/helpers/min_relay.c, compiled once per change into the temp directory."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "min_relay.c")
    out = os.path.join(tempfile.gettempdir(), f"culvert-bench-min_relay-{os.getuid()}")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        subprocess.run(["cc", "-O2", "-Wall", "-pthread", "-o", out + ".new", src], check=True)
        os.replace(out + ".new", out)
    return out


class MinRelayX2(SocatX2):
    """Two chained minimal relays (splice, a thread per direction, no framing): the cheapest a
    tunnel's three TCP legs can be on this machine, so what is left over direct is the legs'."""
    name = "min relay x2"

    def start(self, origin_port):
        binary = min_relay_binary()
        mid = free_port(*MIN_RELAY_PORTS)
        pub = free_port(*MIN_RELAY_PORTS)
        for listen, target in ((mid, origin_port), (pub, mid)):
            self.procs.append(Proc(f"min-relay-{listen}", [binary, str(listen), str(target)]))
            wait_port(listen)
        return pub


def per_source_limit(bin_dir, known={}):
    """--max-visitors-per-source lifted, where the build has it (bench/ab.py also runs builds
    from before it)."""
    if bin_dir not in known:
        usage = subprocess.run([os.path.join(bin_dir, "culvert-supervisor"), "--help"],
                               capture_output=True, text=True, timeout=10).stdout
        known[bin_dir] = "--max-visitors-per-source" in usage
    return ["--max-visitors-per-source", "1000000"] if known[bin_dir] else []


class Supervisor:
    """A culvert-supervisor on 127.0.0.1:0 with its own instance name and public port range."""
    count = 0

    def __init__(self, ports=CULVERT_PORTS, extra=(), netns=None, control_host="127.0.0.1",
                 public_bind="127.0.0.1", env=None):
        Supervisor.count += 1
        self.instance = f"bench-{os.getpid()}-{Supervisor.count}"
        self.netns = netns
        self.proc = Proc("supervisor", [
            os.path.join(BIN, "culvert-supervisor"), "--control", f"{control_host}:0",
            "--public-bind", public_bind, "--instance", self.instance,
            "--ports", f"{ports[0]}-{ports[1]}",
            # Every bench client comes from one loopback address: lift the per-address limits
            # meant for the internet, so figures 5 and 6 measure culvert, not its DoS guards.
            "--max-tunnels-per-address", "65536", "--max-handshakes-per-address", "65536",
            *per_source_limit(BIN),
            *extra], netns=netns, env=env)
        # --log-level warn hides the 'control listening' line; read the address from ss instead
        self.port = self._control_port(control_host)
        self.server = f"{control_host}:{self.port}"

    def _control_port(self, host):
        from lib import wait_until

        def find():
            if not self.proc.alive():
                raise RuntimeError(f"supervisor exited with status {self.proc.popen.returncode} "
                                   f"before listening: {self.proc.read('stderr')[-2000:]}")
            m = self.proc.search(r"control listening on [\d.]+:(\d+)", "stderr")
            if m:
                return int(m.group(1))
            cmd = ["ss", "-Htlnp"]
            if self.netns:
                cmd = ["ip", "netns", "exec", self.netns] + cmd
            out = subprocess.run(cmd, capture_output=True, text=True).stdout
            for line in out.splitlines():
                if f"pid={self.proc.pid}," in line and f"{host}:" in line:
                    return int(line.split()[3].rsplit(":", 1)[1])
            return None
        return wait_until(find, 20, "the supervisor's control port")

    def status(self):
        cmd = [os.path.join(BIN, "culvert-status"), "--instance", self.instance, "--json"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def tunnel(self, public_port):
        st = self.status() or {}
        for t in st.get("tunnels", []):
            if t["public_port"] == public_port:
                return t
        return None

    def crashed(self):
        """A description of how the supervisor died, or None while it runs or if it exited 0."""
        rc = self.proc.popen.poll()
        if rc is None or rc == 0:
            return None
        lines = self.proc.read("stderr").splitlines()
        # glibc/abort messages carry no timestamp; the supervisor's own last lines say what it did
        raw = [l for l in lines if l and not l[:1].isdigit()][-2:]
        own = [l[24:] for l in lines if "supervisor[" in l][-2:]
        return f"supervisor exited with status {rc}: " + " | ".join(own + raw)

    def stop(self):
        crash = self.crashed()
        rc = self.proc.stop()
        if crash or (rc not in (0, None) and rc != -15):
            log(f"culvert-supervisor {self.instance} ended uncleanly: "
                f"{crash or f'status {rc}'} (log: {self.proc.err_path})")
        shm = f"/dev/shm/culvert-{self.instance}"
        if os.path.exists(shm):          # left behind by a supervisor that crashed
            os.unlink(shm)


_plain_flag = None


def plain_flag():
    """['--no-tls'] if this culvert client has TLS (then on by default off loopback), else []."""
    global _plain_flag
    if _plain_flag is None:
        out = subprocess.run([os.path.join(BIN, "culvert"), "tcp", "--help"], capture_output=True,
                             text=True).stdout
        _plain_flag = ["--no-tls"] if "--no-tls" in out else []
    return _plain_flag


def start_client(server, local, kind="tcp", netns=None, name="client", register=True, env=None,
                 link=None):
    """link: the client's transport flags (default: clear text, as every figure but TLS uses)."""
    args = [os.path.join(BIN, "culvert"), kind, local, "--server", server, "--no-state",
            "--log-level", "warn", *(plain_flag() if link is None else link)]
    return Proc(name, args, netns=netns, register=register, env=env)


FORWARDING = r"Forwarding (?:tcp|http)://([^:\s]+):(\d+) -> "


class Culvert:
    """culvert-supervisor (+ its worker) and one culvert client, over plain TCP."""
    name = "culvert"
    kind = "tcp"
    env = None  # extra environment for the supervisor (inherited by its worker) and the client

    def __init__(self):
        self.sup = None
        self.client = None

    def link(self):
        """(supervisor flags, client flags) for the tunnel link; None: clear text."""
        return (), None

    def start(self, origin_port):
        sup_flags, client_flags = self.link()
        self.sup = Supervisor(extra=sup_flags, env=self.env)
        self.client = start_client(self.sup.server, f"127.0.0.1:{origin_port}", self.kind,
                                   env=self.env, link=client_flags)
        self.public_port = int(self.client.wait_for(FORWARDING).group(2))
        wait_port(self.public_port)
        return self.public_port

    def pids(self):
        return [self.sup.proc.pid, self.client.pid]

    def worker_pid(self):
        t = self.sup.tunnel(self.public_port)
        return t and t["worker_pid"]

    def stop(self):
        if self.client:
            self.client.stop()
        if self.sup:
            self.sup.stop()
        self.client = self.sup = None


class CulvertHttp(Culvert):
    """The same, with an http tunnel (the client logs one line per request)."""
    name = "culvert http"
    kind = "http"


class CulvertCopy(Culvert):
    """The same build with splice(2) turned off: every stream byte is copied through the worker
    and the client (what a TLS tunnel's relay does, before encryption)."""
    name = "culvert copy"
    env = {"CULVERT_NO_SPLICE": "1"}


class CulvertTls(Culvert):
    """The same over TLS 1.3 (culvert-worker, the OpenSSL build), with a certificate from a
    private CA made for this run; the client verifies it (--ca), as a real deployment would."""
    name = "culvert tls"

    def link(self):
        ca, cert, key = tls_files()
        return ("--tls-cert", cert, "--tls-key", key), ("--ca", ca)


_tls_files = None


def tls_files():
    """A private CA and a certificate for 127.0.0.1 signed by it, made once per run."""
    global _tls_files
    if _tls_files is None:
        directory = os.path.join(WORKDIR, "tls")
        os.makedirs(directory, exist_ok=True)

        def openssl(*args):
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
                "-subj", "/CN=culvert bench CA")
        openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=bench")
        with open(os.path.join(directory, "server.ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
        _tls_files = tuple(os.path.join(directory, n) for n in ("ca.pem", "server.pem", "server.key"))
    return _tls_files


CONTENDERS = {"direct": Direct, "socat x2": SocatX2, "min relay x2": MinRelayX2,
              "culvert": Culvert, "culvert copy": CulvertCopy, "culvert tls": CulvertTls,
              "culvert http": CulvertHttp}
