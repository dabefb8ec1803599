#!/usr/bin/env python3
"""Checks a SASL login to the secured local Kafka (infra/secure.sh) with the standard library
only: TLS to the proxy, ApiVersions, SaslHandshake v1 + SaslAuthenticate v1 (SCRAM-SHA-512 or
-256, verifying the server's signature), then Metadata v1 listing the advertised brokers.

  python3 infra/kafka-check.py --bootstrap 127.0.0.1:19094 --ca .stack/secure/ca.pem \
      --username tributary --password-file .stack/secure/kafka-password [--cert C --key K]

Prints one line and exits 0 when the login works, 1 (with the reason) when it does not.
--reauth also authenticates a second time on the same connection (KIP-368 re-authentication).
"""
import argparse
import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import sys

API_VERSIONS, METADATA, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 3, 17, 36


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.correlation = 0

    def request(self, api_key, version, body):
        self.correlation += 1
        client_id = b"tributary-stack-check"
        header = struct.pack(">hhih", api_key, version, self.correlation, len(client_id)) + client_id
        msg = header + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        size = struct.unpack(">i", self.read(4))[0]
        resp = Reader(self.read(size))
        if resp.i32() != self.correlation:
            raise RuntimeError("correlation id mismatch")
        return resp

    def read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("the broker closed the connection")
            buf += chunk
        return buf


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def i16(self):
        return self.take(">h")

    def i32(self):
        return self.take(">i")

    def i64(self):
        return self.take(">q")

    def string(self):
        n = self.i16()
        if n < 0:
            return None
        s = self.data[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def bytes(self):
        n = self.i32()
        if n < 0:
            return None
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


def kstring(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def kbytes(b):
    return struct.pack(">i", len(b)) + b


def authenticate(conn, mechanism, username, password):
    r = conn.request(SASL_HANDSHAKE, 1, kstring(mechanism))
    err = r.i16()
    if err != 0:
        offered = [r.string() for _ in range(r.i32())]
        raise RuntimeError(f"SaslHandshake {mechanism}: error {err} (broker offers {offered})")
    digest = {"SCRAM-SHA-512": hashlib.sha512, "SCRAM-SHA-256": hashlib.sha256}[mechanism]
    name = digest().name
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={username.replace('=', '=3D').replace(',', '=2C')},r={nonce}"

    def step(payload):
        r = conn.request(SASL_AUTHENTICATE, 1, kbytes(payload))
        err, msg, data, lifetime = r.i16(), r.string(), r.bytes(), r.i64()
        if err != 0:
            raise RuntimeError(f"SaslAuthenticate: error {err} ({msg})")
        return data.decode(), lifetime

    server_first, _ = step(("n,," + first_bare).encode())
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    if not attrs["r"].startswith(nonce):
        raise RuntimeError("SCRAM: the server nonce does not extend ours")
    salted = hashlib.pbkdf2_hmac(name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    stored_key = digest(client_key).digest()
    final_bare = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(stored_key, auth_message, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_final, lifetime = step(f"{final_bare},p={base64.b64encode(proof).decode()}".encode())
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, digest).digest()).decode()
    if server_final != f"v={expected}":
        raise RuntimeError(f"SCRAM: bad server signature ({server_final!r})")
    return lifetime


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--plaintext", action="store_true", help="no TLS (the broker's internal port)")
    p.add_argument("--mechanism", default="SCRAM-SHA-512")
    p.add_argument("--username", required=True)
    p.add_argument("--password-file")
    p.add_argument("--password")
    p.add_argument("--reauth", action="store_true")
    p.add_argument("--timeout", type=float, default=5)
    a = p.parse_args()
    password = a.password if a.password is not None else open(a.password_file).read().strip()
    host, port = a.bootstrap.rsplit(":", 1)
    try:
        sock = socket.create_connection((host, int(port)), timeout=a.timeout)
        if not a.plaintext:
            ctx = ssl.create_default_context(cafile=a.ca)
            if a.cert:
                ctx.load_cert_chain(a.cert, a.key)
            sock = ctx.wrap_socket(sock, server_hostname=host)
        conn = Conn(sock)
        r = conn.request(API_VERSIONS, 0, b"")
        if r.i16() != 0:
            raise RuntimeError("ApiVersions failed")
        lifetime = authenticate(conn, a.mechanism, a.username, password)
        if a.reauth:
            lifetime = authenticate(conn, a.mechanism, a.username, password)
        r = conn.request(METADATA, 1, struct.pack(">i", 0))
        brokers = []
        for _ in range(r.i32()):
            _node, bhost, bport, _rack = r.i32(), r.string(), r.i32(), r.string()
            brokers.append(f"{bhost}:{bport}")
        print(f"ok: {a.mechanism} login as {a.username} at {a.bootstrap}"
              f"{' (re-authenticated)' if a.reauth else ''}; session_lifetime_ms={lifetime};"
              f" advertised brokers: {','.join(brokers)}")
    except Exception as e:  # noqa: BLE001 - one line for the caller's log
        print(f"failed: {a.mechanism} login as {a.username} at {a.bootstrap}: {type(e).__name__}: {e}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
