"""The two worker programs: a supervisor without a certificate runs culvert-worker-clear, which
maps no OpenSSL and carries a tunnel byte for byte; the worker refuses bad arguments (unknown,
non-numeric, missing) with exit code 78 and a message, so the supervisor does not respawn it.
(test_tls.py checks that a supervisor with a certificate runs culvert-worker, and that a clear
worker named for it exits with the reason.)"""

import os
import subprocess

from harness import BIN, Environment, assert_echoed, echo_handler, run_test

EXIT_FATAL = 78


def worker_refuses(args, expected):
    run = subprocess.run([os.path.join(BIN, "culvert-worker-clear"), *args], capture_output=True,
                         text=True, timeout=10)
    assert run.returncode == EXIT_FATAL and expected in run.stderr, (args, run.returncode,
                                                                    run.stderr)
    print(f"worker {' '.join(args) or '(no arguments)'}: {run.stderr.strip()}")


def main():
    worker_refuses(["--segment", "/culvert-x", "--slot", "0", "--domain", "a.localhost",
                    "--bogus", "1"], "unknown option --bogus")
    worker_refuses(["--segment", "/culvert-x", "--slot", "zero", "--domain", "a.localhost"],
                   "--slot: not a number: zero")
    worker_refuses(["--segment", "/culvert-x", "--slot", "0", "--domain", "a.localhost",
                    "--max-visitors", "-5"], "--max-visitors: not a number: -5")
    worker_refuses(["--segment", "/culvert-x", "--slot"], "--slot needs a value")
    worker_refuses([], "--segment, --slot and --domain are required")

    with Environment() as env:
        echo = env.service(echo_handler)
        sup = env.supervisor()
        client = env.client(sup, "tcp", f"127.0.0.1:{echo.port}")
        assert_echoed(client.port, 4 << 20)

        pid = sup.tunnel(client)["worker_pid"]
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        assert exe == "culvert-worker-clear", exe
        with open(f"/proc/{pid}/maps") as f:
            mapped = f.read()
        assert "libssl" not in mapped and "libcrypto" not in mapped, "the clear worker maps OpenSSL"
        print(f"worker {pid} is {exe}, maps no OpenSSL, carried 4 MiB byte for byte")


run_test(main)
