"""A raw TCP tunnel carrying 100 MiB each way with identical SHA-256 on both ends, and TCP
half-close carried through: the visitor's FIN reaches the local service, whose answer still
flows back afterwards."""

import hashlib
import socket

from harness import Environment, answer_with_sha256, connect, pattern_bytes, recv_all, run_test

SIZE = 100 * 1024 * 1024
DOWNLOAD = pattern_bytes("download", SIZE)


def source(conn):
    conn.sendall(DOWNLOAD)
    conn.shutdown(socket.SHUT_WR)
    recv_all(conn)


def main():
    with Environment() as env:
        down = env.service(source)
        up = env.service(answer_with_sha256)
        sup = env.supervisor()
        down_client = env.client(sup, "tcp", f"127.0.0.1:{down.port}")
        up_client = env.client(sup, "tcp", f"127.0.0.1:{up.port}")
        assert down_client.url.startswith("tcp://"), down_client.url

        s = connect(down_client.port, timeout=60)
        got = recv_all(s)
        s.close()
        assert len(got) == SIZE, f"received {len(got)} of {SIZE} bytes"
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(DOWNLOAD).hexdigest()

        upload = pattern_bytes("upload", SIZE)
        s = connect(up_client.port, timeout=60)
        s.sendall(upload)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s).decode()
        s.close()
        assert answer == f"{SIZE} {hashlib.sha256(upload).hexdigest()}", answer

        tunnel = sup.tunnel(up_client)
        assert tunnel["bytes_in"] >= SIZE and tunnel["total_connections"] == 1, tunnel


run_test(main)
