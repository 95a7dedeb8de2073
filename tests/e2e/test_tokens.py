"""Tokens from a tokens file: a missing and a wrong token get the same refusal after the same
(growing) delay, also one longer than the client's connect timeout; each token keeps to its own
tunnel limit, subdomain patterns and reserved names; a tokens file others may read is refused at
start; good tunnels carry data throughout. The client takes its token from --token-file (mode 600),
$CULVERT_TOKEN or, with a warning that every account can read it, --token; a token shorter than 16
bytes or a token file others may read is refused before the server is contacted."""

import hashlib
import os
import socket
import time

from harness import Environment, connect, echo_handler, recv_all, run_test

# The first bad token's wait, doubled per failure: 4 refusals wait 0.1 + 0.2 + 0.4 + 0.8 s. Small,
# yet the 4th (0.8 s) is far above what a constant delay plus a client's start-up would take.
DELAY_MS = 100
# Past the client's connect timeout (10 s, not configurable): the one wait that must stay long.
SLOW_DELAY_MS = 10500
ALICE = "alice-secret-0123456789"
BOB = "bob-secret-abcdefghijklm"


def echo(port, message=b"ping"):
    s = connect(port)
    s.sendall(message)
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == message
    s.close()


def main():
    with Environment() as env:
        path = os.path.join(env.workdir, "tokens.toml")
        with open(path, "w") as f:
            f.write(f"""
[[token]]
name = "alice"
token = "{ALICE}"
max_tunnels = 2
subdomains = ["alice-*"]
reserved = ["alice"]

[[token]]
name = "bob"
sha256 = "{hashlib.sha256(BOB.encode()).hexdigest()}"
""")
        os.chmod(path, 0o644)
        loose = env.start("loose-supervisor", [os.path.join(os.environ["CULVERT_BIN"],
                                                            "culvert-supervisor"),
                                               "--control", "127.0.0.1:0", "--instance",
                                               f"e2e-loose-{os.getpid()}", "--tokens-file", path])
        assert loose.popen.wait(10) != 0 and "tokens.toml" in loose.stderr(), loose.stderr()
        print("world-readable tokens file refused:", loose.stderr().strip().splitlines()[-1])
        os.chmod(path, 0o600)

        service = env.service(echo_handler)
        local = f"127.0.0.1:{service.port}"

        # A refusal delayed past the client's 10 s connect timeout (as the 5th bad token in a
        # row is, by default) still reaches the user as the reason, not as a timeout and retry.
        # Its own supervisor (its own failure count); it waits while the checks below run.
        slow = env.supervisor("--tokens-file", path, "--auth-failure-delay-ms",
                              str(SLOW_DELAY_MS), name="slow-supervisor")
        slow_started = time.monotonic()
        slow_client = env.client(slow, "tcp", local, "--no-state", name="bad-slow",
                                 expect_url=False, env={"CULVERT_TOKEN": "wrong-token-yyyyyyyy"})

        sup = env.supervisor("--tokens-file", path, "--auth-failure-delay-ms", str(DELAY_MS))

        def token_file(name, token, mode=0o600):
            path = os.path.join(env.workdir, name)
            with open(path, "w") as f:
                f.write(token + "\n")
            os.chmod(path, mode)
            return path

        alice_file = token_file("alice.token", ALICE)

        def refused(*args, name, env_vars=None):
            started = time.monotonic()
            p = env.client(sup, "tcp", local, "--no-state", *args, name=name, expect_url=False,
                           env=env_vars)
            code = p.popen.wait(60)
            return code, p.stderr(), time.monotonic() - started

        # Refused by the client itself, at once: no server delay is earned.
        for i, (args, why) in enumerate([
                (("--token", "short-token"), "the token from --token must be 16-255 bytes, got 11"),
                (("--token-file", token_file("loose.token", ALICE, 0o640)),
                 "is readable by group or others (mode 0640)"),
                (("--token-file", token_file("short.token", "abc")),
                 "the token from the token file must be 16-255 bytes, got 3")]):
            code, err, _ = refused(*args, name=f"usage-{i}")
            assert code == 1 and why in err, (code, err)
        print("short tokens and a loose token file refused by the client")

        waits = []
        for i, (args, env_vars) in enumerate([
                ((), None), (("--token", "wrong-token-xxxxxxxx"), None),
                (("--token-file", token_file("almost.token", ALICE[:-1])), None),
                ((), {"CULVERT_TOKEN": "wrong-env-token-xxxxxxxx"})]):
            code, err, took = refused(*args, name=f"bad-{i}", env_vars=env_vars)
            assert code == 2 and "the token is missing or not valid" in err, (code, err)
            assert ("every account" in err) == ("--token" in args), err
            waits.append(took)
        print("bad-token refusals after", ", ".join(f"{w:.2f} s" for w in waits))
        # Each refusal waits at least the server's delay, which doubles per failure (process
        # start-up adds a varying amount on top, so only the lower bounds are exact).
        expected = [DELAY_MS / 1000 * 2 ** i for i in range(len(waits))]
        assert all(w >= e for w, e in zip(waits, expected)), (waits, expected)

        bob_env = {"CULVERT_TOKEN": BOB}
        a1 = env.client(sup, "tcp", local, "--token-file", alice_file, "--subdomain", "alice-one",
                        "--no-state")
        code, err, _ = refused("--token-file", alice_file, "--subdomain", "web",
                               name="alice-pattern")
        assert code == 2 and "alice-*" in err, err
        a2 = env.client(sup, "tcp", local, "--token", ALICE, "--subdomain", "alice", "--no-state")
        assert "every account on this machine can read it" in a2.process.stderr()
        code, err, _ = refused("--token-file", alice_file, "--subdomain", "alice-three",
                               name="alice-3")
        assert code == 2 and "limit of 2 tunnels" in err, err
        code, err, _ = refused("--subdomain", "alice", name="bob-reserved", env_vars=bob_env)
        assert code == 2 and "reserved" in err, err
        b1 = env.client(sup, "tcp", local, "--no-state", env=bob_env)
        assert "WARNING" not in b1.process.stderr() + a1.process.stderr()
        for c in (a1, a2, b1):
            echo(c.port, os.urandom(100000))
        assert {sup.tunnel(c)["domain"].split(".")[0] for c in (a2,)} == {"alice"}
        print("per-token limits, patterns and reserved names hold; tunnels carry data")

        code = slow_client.popen.wait(60)
        took = time.monotonic() - slow_started
        err = slow_client.stderr()
        assert code == 2 and "the token is missing or not valid" in err, (code, err)
        assert "has not answered yet" in err and took >= SLOW_DELAY_MS / 1000, (took, err)
        print(f"a refusal after {took:.1f} s (past the connect timeout) still reaches the user")


run_test(main)
