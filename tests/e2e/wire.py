"""culvert frames by hand, for tests that play a client the real one never would: raw INIT, ACK
and ERROR frames, connections from chosen loopback addresses (127.0.0.x), and reading one whole
frame back (docs/protocol.md, sections 2-3)."""

import socket
import struct

from harness import PROTOCOL_VERSION

INIT, DOMAIN, ACK, ERROR, DATA = 0x01, 0x02, 0x03, 0x04, 0x11
TCP = 2


def header(length, kind, flags=0, stream=0):
    return struct.pack(">IBBI", length, kind, flags, stream)


def frame(kind, payload=b""):
    return header(len(payload), kind) + payload


def init(token=b"", reclaim=None):
    """An INIT frame for a tcp tunnel; reclaim is (tunnel_id, secret) or None."""
    payload = struct.pack(">HB", PROTOCOL_VERSION, TCP) + bytes([len(token)]) + token + b"\0"
    if reclaim:
        payload += b"\1" + struct.pack(">Q", reclaim[0]) + reclaim[1]
    else:
        payload += b"\0"
    return frame(INIT, payload)


def error(code, message):
    return frame(ERROR, struct.pack(">HH", code, len(message)) + message)


def connect_from(source, port, timeout=10):
    """A connection to 127.0.0.1:port from the loopback address `source` (any 127.x.y.z)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_frame(s):
    """(type, payload) of the next frame."""
    length, kind, _, _ = struct.unpack(">IBBI", recv_exactly(s, 10))
    return kind, recv_exactly(s, length)


def error_of(payload):
    """(code, message) of an ERROR frame's payload."""
    code, length = struct.unpack(">HH", payload[:4])
    return code, payload[4:4 + length].decode(errors="replace")


def domain_of(payload):
    """(tunnel_id, secret) of a DOMAIN frame's payload."""
    return struct.unpack(">Q", payload[:8])[0], payload[8:40]
