#!/usr/bin/env python3
"""A foreign peer of `bus`, in plain Python 3 with only the standard library.

It joins a `bus` deployment using nothing but docs/wire-format.md: the NATS text protocol over
a TCP socket and a small MessagePack codec. With the usual packages it is shorter
(`pip install nats-py msgpack`: `msgpack.packb(body)`, `await nc.publish(subject, payload,
headers=...)`); this file needs neither, so CI runs it as it is
(`tests/tests/python_peer.rs`, started by `tests/run.sh`).

What it does, against a Rust service that echoes `plugin.outbound.python.*` to
`plugin.outbound.slack.*` and serves `Delegate` on `agent.route.<agent>`:

1. subscribes to `plugin.outbound.slack.*`;
2. publishes an `Outbound` as a MessagePack map, with a `Nats-Msg-Id` header;
3. receives the Rust service's echo and decodes it;
4. sends a `Delegate` request, decodes the `RouteReply`;
5. sends a request the Rust handler fails: an empty reply with a `Bus-Error` header;
6. sends a request nobody serves: the server's `503` status (no responders).

Usage: python3 examples/python/bus_peer.py [nats://127.0.0.1:4222]
Exit status 0 when every step gave what the wire format says.
"""

import json
import os
import socket
import struct
import sys
from urllib.parse import urlparse

# --- MessagePack: the subset `bus` payloads use ---------------------------------------------


def pack(value):
    """MessagePack of a value: maps keyed by field name, smallest int types, str for text."""
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 0x80:
            return struct.pack("B", value)
        if -32 <= value < 0:
            return struct.pack("b", value)
        for fmt_u, tag_u, fmt_i, tag_i, bits in (
            (">B", 0xCC, ">b", 0xD0, 8),
            (">H", 0xCD, ">h", 0xD1, 16),
            (">I", 0xCE, ">i", 0xD2, 32),
            (">Q", 0xCF, ">q", 0xD3, 64),
        ):
            if 0 <= value < (1 << bits):
                return bytes([tag_u]) + struct.pack(fmt_u, value)
            if -(1 << (bits - 1)) <= value < 0:
                return bytes([tag_i]) + struct.pack(fmt_i, value)
        raise ValueError("integer out of range")
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        n = len(data)
        if n < 32:
            return bytes([0xA0 | n]) + data
        if n < 0x100:
            return b"\xd9" + struct.pack(">B", n) + data
        if n < 0x10000:
            return b"\xda" + struct.pack(">H", n) + data
        return b"\xdb" + struct.pack(">I", n) + data
    if isinstance(value, (bytes, bytearray)):
        n = len(value)
        head = b"\xc4" + struct.pack(">B", n) if n < 0x100 else (
            b"\xc5" + struct.pack(">H", n) if n < 0x10000 else b"\xc6" + struct.pack(">I", n))
        return head + bytes(value)
    if isinstance(value, (list, tuple)):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else (
            b"\xdc" + struct.pack(">H", n) if n < 0x10000 else b"\xdd" + struct.pack(">I", n))
        return head + b"".join(pack(v) for v in value)
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else (
            b"\xde" + struct.pack(">H", n) if n < 0x10000 else b"\xdf" + struct.pack(">I", n))
        return head + b"".join(pack(k) + pack(v) for k, v in value.items())
    raise TypeError(f"cannot pack {type(value).__name__}")


def unpack(data):
    """The one MessagePack value in `data` (trailing bytes are an error, as for `bus`)."""
    value, end = _unpack(data, 0)
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes left after the first value")
    return value


def _unpack(b, i):
    t = b[i]
    i += 1
    if t < 0x80:
        return t, i
    if t >= 0xE0:
        return t - 0x100, i
    if 0x80 <= t <= 0x8F:
        return _map(b, i, t & 0x0F)
    if 0x90 <= t <= 0x9F:
        return _array(b, i, t & 0x0F)
    if 0xA0 <= t <= 0xBF:
        n = t & 0x1F
        return b[i:i + n].decode("utf-8"), i + n
    fixed = {0xC0: None, 0xC2: False, 0xC3: True}
    if t in fixed:
        return fixed[t], i
    sized = {  # tag: (struct format of the length or value, kind)
        0xC4: (">B", "bin"), 0xC5: (">H", "bin"), 0xC6: (">I", "bin"),
        0xCA: (">f", "num"), 0xCB: (">d", "num"),
        0xCC: (">B", "num"), 0xCD: (">H", "num"), 0xCE: (">I", "num"), 0xCF: (">Q", "num"),
        0xD0: (">b", "num"), 0xD1: (">h", "num"), 0xD2: (">i", "num"), 0xD3: (">q", "num"),
        0xD9: (">B", "str"), 0xDA: (">H", "str"), 0xDB: (">I", "str"),
        0xDC: (">H", "array"), 0xDD: (">I", "array"), 0xDE: (">H", "map"), 0xDF: (">I", "map"),
    }
    if t not in sized:
        raise ValueError(f"unsupported MessagePack tag 0x{t:02x}")
    fmt, kind = sized[t]
    (n,) = struct.unpack_from(fmt, b, i)
    i += struct.calcsize(fmt)
    if kind == "num":
        return n, i
    if kind == "bin":
        return bytes(b[i:i + n]), i + n
    if kind == "str":
        return b[i:i + n].decode("utf-8"), i + n
    if kind == "array":
        return _array(b, i, n)
    return _map(b, i, n)


def _array(b, i, n):
    out = []
    for _ in range(n):
        v, i = _unpack(b, i)
        out.append(v)
    return out, i


def _map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = _unpack(b, i)
        v, i = _unpack(b, i)
        out[k] = v
    return out, i


# --- NATS: the text protocol, headers included ----------------------------------------------


class Nats:
    """One NATS connection: CONNECT, SUB, PUB/HPUB, and MSG/HMSG read back."""

    def __init__(self, url):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), 10)
        self.buf = b""
        self.sid = 0
        info = json.loads(self._line().split(" ", 1)[1])
        if not info.get("headers"):
            raise RuntimeError("the server does not support headers (NATS 2.2+ needed)")
        self.max_payload = info["max_payload"]
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True,
                   "protocol": 1, "lang": "python", "version": "0", "name": "bus-peer"}
        self.sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
        self.ping()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed by the server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def _bytes(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed by the server")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def ping(self):
        """A round trip: the server has processed everything sent before it."""
        self.sock.sendall(b"PING\r\n")
        while True:
            line = self._line()
            if line == "PONG":
                return
            if line.startswith("-ERR"):
                raise RuntimeError(line)

    def subscribe(self, subject):
        self.sid += 1
        self.sock.sendall(f"SUB {subject} {self.sid}\r\n".encode())
        return self.sid

    def publish(self, subject, payload, headers=None, reply=None):
        reply = f" {reply}" if reply else ""
        if not headers:
            self.sock.sendall(f"PUB {subject}{reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
            return
        head = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        head = head.encode()
        if len(head) + len(payload) > self.max_payload:
            raise ValueError("payload and headers exceed the server's max_payload")
        total = len(head) + len(payload)
        self.sock.sendall(f"HPUB {subject}{reply} {len(head)} {total}\r\n".encode()
                          + head + payload + b"\r\n")

    def next_msg(self):
        """(subject, headers, status, payload) of the next message; answers PINGs meanwhile."""
        while True:
            line = self._line()
            if line == "PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            if line.startswith("-ERR"):
                raise RuntimeError(line)
            parts = line.split(" ")
            if parts[0] == "MSG":
                return parts[1], {}, None, self._bytes(int(parts[-1]))
            if parts[0] == "HMSG":
                hdr_len, total = int(parts[-2]), int(parts[-1])
                data = self._bytes(total)
                status, headers = parse_headers(data[:hdr_len].decode())
                return parts[1], headers, status, data[hdr_len:]

    def request(self, subject, payload, headers=None):
        inbox = "_INBOX." + os.urandom(8).hex()
        sid = self.subscribe(inbox)
        self.publish(subject, payload, headers, reply=inbox)
        msg = self.next_msg()
        self.sock.sendall(f"UNSUB {sid}\r\n".encode())
        return msg


def parse_headers(block):
    """`NATS/1.0[ status]` then `Name: value` lines: (status or None, {name: value})."""
    lines = block.split("\r\n")
    first = lines[0].split(" ", 2)
    status = first[1] if len(first) > 1 else None
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip()] = value.strip()
    return status, headers


# --- the worked example ---------------------------------------------------------------------


def check(what, ok):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        sys.exit(1)


def main():
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    nc = Nats(url)

    # 1. Subscribe with a NATS wildcard: one token per `*`.
    nc.subscribe("plugin.outbound.slack.*")
    nc.ping()  # the subscription is in place at the server

    # 2. Publish an `Outbound`: the subject from the template, the body a map of every field.
    body = {"channel": "python", "instance": "py1", "text": "hi from python"}
    msg_id = os.urandom(16).hex()  # 32 hex digits, stable across resends of this message
    nc.publish("plugin.outbound.python.py1", pack(body), {"Nats-Msg-Id": msg_id})
    print(f"sent plugin.outbound.python.py1 Nats-Msg-Id={msg_id}")

    # 3. The Rust service echoes it on `plugin.outbound.slack.<instance>`, through its outbox.
    subject, headers, _, payload = nc.next_msg()
    echo = unpack(payload)
    print(f"got  {subject} {headers} {echo}")
    check("echo subject", subject == "plugin.outbound.slack.py1")
    check("echo body is a map of the fields", echo == {"channel": "slack", "instance": "py1",
                                                       "text": "hi from python"})
    check("echo carries a Nats-Msg-Id (it went through the outbox)",
          len(headers.get("Nats-Msg-Id", "")) == 22)  # a NUID

    # 4. A request: the reply is the MessagePack map of the reply type.
    corr = os.urandom(16).hex()
    subject, headers, status, payload = nc.request(
        "agent.route.planner", pack({"agent": "planner", "task": "plan"}),
        {"Bus-Correlation-Id": corr})
    reply = unpack(payload)
    print(f"reply {reply} {headers}")
    check("reply decodes", reply == {"accepted": True})
    check("correlation id copied", headers.get("Bus-Correlation-Id") == corr)

    # 5. A handler that fails: empty payload, the error in `Bus-Error`.
    _, headers, _, payload = nc.request("agent.route.planner",
                                        pack({"agent": "planner", "task": ""}))
    print(f"error {headers.get('Bus-Error')!r}")
    check("Bus-Error with an empty payload", payload == b"" and "Bus-Error" in headers)

    # 6. Nobody serves the subject: the server answers at once with status 503.
    _, _, status, payload = nc.request("plugin.inbound.nobody.ping", pack({"channel": "nobody"}))
    print(f"no responders: status {status}")
    check("no responders is status 503", status == "503" and payload == b"")
    print("peer: done")


if __name__ == "__main__":
    main()
