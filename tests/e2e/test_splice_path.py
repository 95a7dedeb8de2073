"""Which relay path a tunnel takes, seen from outside: during a bulk upload to a local service
that stalls, a clear-text tunnel's worker and client hold splice pipes (the bytes move socket to
pipe to socket in the kernel), while one started with CULVERT_NO_SPLICE=1 and a TLS tunnel hold
none and copy. Every setup delivers the same bytes (SHA-256)."""

import hashlib
import os
import socket
import threading
import time

from harness import (Environment, answer_with_sha256, connect, make_certificates, pattern_bytes,
                     recv_all, run_test)

SIZE = 32 * 1024 * 1024
UPLOAD = pattern_bytes("splice", SIZE)


def stalling_hasher(conn):
    # Stalls first, so the tunnel's windows fill and bytes wait inside it, then hashes it all.
    time.sleep(1.0)
    answer_with_sha256(conn)


def pipes(pid):
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            pass  # closed while we looked
    return count


def upload_watching_pipes(port, pids):
    """Uploads UPLOAD through port, checks the service's answer, and returns the most pipes each
    pid held at once above what it held before."""
    before = {pid: pipes(pid) for pid in pids}
    most = dict(before)
    answer = {}

    def visitor():
        s = connect(port, timeout=60)
        s.sendall(UPLOAD)
        s.shutdown(socket.SHUT_WR)
        answer["text"] = recv_all(s).decode()
        s.close()

    t = threading.Thread(target=visitor)
    t.start()
    while t.is_alive():
        for pid in pids:
            most[pid] = max(most[pid], pipes(pid))
        time.sleep(0.01)
    t.join()
    assert answer.get("text") == f"{SIZE} {hashlib.sha256(UPLOAD).hexdigest()}", answer
    return {pid: most[pid] - before[pid] for pid in pids}


def main():
    with Environment() as env:
        service = env.service(stalling_hasher)
        files = make_certificates(env.workdir)
        setups = {
            "clear": ((), (), None),
            "CULVERT_NO_SPLICE=1": ((), (), {"CULVERT_NO_SPLICE": "1"}),
            "TLS": (("--tls-cert", files["server"] + ".pem", "--tls-key", files["server"] + ".key"),
                    ("--ca", files["ca"] + ".pem"), None),
        }
        for label, (sup_args, client_args, environment) in setups.items():
            sup = env.supervisor(*sup_args, name=f"supervisor-{label[:5]}", env=environment)
            client = env.client(sup, "tcp", f"127.0.0.1:{service.port}", *client_args,
                                name=f"client-{label[:5]}", env=environment)
            worker = sup.tunnel(client)["worker_pid"]
            # Count from a worker that is serving: its start-up opens a pipe of its own (Asio's
            # signal pipe), late under a sanitizer.
            sup.process.wait_for_output(rf"\[{worker}\] info data connection from \S+ attached "
                                        r"\(2 now\)", stream="stderr")
            extra = upload_watching_pipes(client.port, [worker, client.process.pid])
            print(f"{label}: 32 MiB through a stalled service, SHA-256 identical; pipes held at "
                  f"most: worker +{extra[worker]}, client +{extra[client.process.pid]}")
            if label == "clear":
                assert extra[worker] > 0 and extra[client.process.pid] > 0, extra
            else:
                assert extra[worker] == 0 and extra[client.process.pid] == 0, extra


run_test(main)
