"""A tiny PostgreSQL v3 wire-protocol client for tests that need raw bytes.

It builds and parses messages by hand so tests can see exactly what pgcloak
sends (SQLSTATEs of connection-phase errors, BackendKeyData, a single 'N'
byte, an EOF), misbehave on purpose (bytes pipelined after an SSLRequest, an
unknown CancelRequest key) and read slowly. Every read has a deadline.

Authentication: trust, cleartext, MD5 and SCRAM-SHA-256 (with the gs2
channel-binding flag selectable, 'n' or 'y'; SCRAM-SHA-256-PLUS is never
chosen).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

PROTOCOL_V3 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


class WireTimeout(Exception):
    """The peer sent nothing within the deadline."""


class ConnectionClosed(Exception):
    """The peer closed the connection before a complete message arrived."""


class PgError(Exception):
    """An ErrorResponse; fields maps the one-letter field codes to strings."""

    def __init__(self, fields: dict[str, str]):
        self.fields = fields
        super().__init__(f"{fields.get('S', '?')} {fields.get('C', '?')}: {fields.get('M', '')}")

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")


# --------------------------------------------------------------------------
# Message builders (frontend)

def _cstr(s: str | bytes) -> bytes:
    if isinstance(s, str):
        s = s.encode()
    return s + b"\x00"


def msg(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + struct.pack("!i", len(body) + 4) + body


def startup_packet(params: dict[str, str], protocol: int = PROTOCOL_V3) -> bytes:
    body = struct.pack("!i", protocol)
    for k, v in params.items():
        body += _cstr(k) + _cstr(v)
    body += b"\x00"
    return struct.pack("!i", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!iiII", 16, CANCEL_REQUEST_CODE, pid & 0xFFFFFFFF, key & 0xFFFFFFFF)


def query(sql: str) -> bytes:
    return msg(b"Q", _cstr(sql))


def parse(sql: str, name: str = "", param_types: list[int] | None = None) -> bytes:
    param_types = param_types or []
    body = _cstr(name) + _cstr(sql) + struct.pack("!h", len(param_types))
    body += b"".join(struct.pack("!I", t) for t in param_types)
    return msg(b"P", body)


def bind(params: list[bytes | None] | None = None, portal: str = "", stmt: str = "",
         param_formats: list[int] | None = None, result_formats: list[int] | None = None) -> bytes:
    params = params or []
    param_formats = param_formats or []
    result_formats = result_formats or []
    body = _cstr(portal) + _cstr(stmt)
    body += struct.pack("!h", len(param_formats)) + b"".join(struct.pack("!h", f) for f in param_formats)
    body += struct.pack("!h", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            body += struct.pack("!i", len(p)) + p
    body += struct.pack("!h", len(result_formats)) + b"".join(struct.pack("!h", f) for f in result_formats)
    return msg(b"B", body)


def describe_portal(portal: str = "") -> bytes:
    return msg(b"D", b"P" + _cstr(portal))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", _cstr(portal) + struct.pack("!i", max_rows))


def close(kind: bytes, name: str = "") -> bytes:
    """Close of a prepared statement (kind b"S") or portal (b"P")."""
    return msg(b"C", kind + _cstr(name))


def sync() -> bytes:
    return msg(b"S")


def flush() -> bytes:
    return msg(b"H")


def terminate() -> bytes:
    return msg(b"X")


# --------------------------------------------------------------------------
# Message parsing (backend)

@dataclass
class Message:
    type: bytes
    body: bytes

    def __repr__(self) -> str:
        return f"Message({self.type!r}, {len(self.body)} bytes)"


def parse_error_fields(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    i = 0
    while i < len(body) and body[i] != 0:
        code = chr(body[i])
        end = body.index(b"\x00", i + 1)
        fields[code] = body[i + 1:end].decode("utf-8", "replace")
        i = end + 1
    return fields


def parse_data_row(body: bytes) -> list[bytes | None]:
    (n,) = struct.unpack_from("!h", body, 0)
    off = 2
    cols: list[bytes | None] = []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, off)
        off += 4
        if ln < 0:
            cols.append(None)
        else:
            cols.append(body[off:off + ln])
            off += ln
    return cols


def parse_auth(body: bytes) -> tuple[int, bytes]:
    (code,) = struct.unpack_from("!i", body, 0)
    return code, body[4:]


# --------------------------------------------------------------------------
# SCRAM-SHA-256 (RFC 5802 / 7677), client side

def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class ScramClient:
    def __init__(self, password: str, gs2_flag: str = "n"):
        assert gs2_flag in ("n", "y")
        self.password = password.encode()
        self.gs2_header = f"{gs2_flag},,".encode()
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.client_first_bare = f"n=,r={self.nonce}".encode()
        self.server_signature = b""

    def client_first(self) -> bytes:
        return self.gs2_header + self.client_first_bare

    def client_final(self, server_first: bytes) -> bytes:
        attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
        rnonce, salt, iters = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not rnonce.startswith(self.nonce):
            raise ValueError("SCRAM: server nonce does not extend client nonce")
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iters)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = b"c=" + base64.b64encode(self.gs2_header) + b",r=" + rnonce.encode()
        auth_message = self.client_first_bare + b"," + server_first + b"," + without_proof
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = _hmac(salted, b"Server Key")
        self.server_signature = _hmac(server_key, auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify_final(self, server_final: bytes) -> None:
        attrs = dict(item.split("=", 1) for item in server_final.decode().split(","))
        if base64.b64decode(attrs.get("v", "")) != self.server_signature:
            raise ValueError("SCRAM: bad server signature")


# --------------------------------------------------------------------------
# The connection

@dataclass
class StartupResult:
    parameters: dict[str, str] = field(default_factory=dict)
    backend_pid: int | None = None
    backend_key: int | None = None
    auth_methods: list[int] = field(default_factory=list)
    sasl_mechanisms: list[str] = field(default_factory=list)
    transaction_status: bytes | None = None


class PgWire:
    """One raw connection. All reads have deadlines (default_timeout)."""

    def __init__(self, host: str, port: int | None = None, timeout: float = 15.0,
                 unix_path: str | None = None, rcvbuf: int | None = None):
        self.default_timeout = timeout
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(unix_path)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if rcvbuf:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        self.buf = bytearray()
        self.tls = False

    # -- low level --------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_some(self, n: int = 65536, timeout: float | None = None) -> bytes:
        """One recv(); b'' on EOF; WireTimeout if nothing arrives in time."""
        self.sock.settimeout(self.default_timeout if timeout is None else timeout)
        try:
            return self.sock.recv(n)
        except (socket.timeout, TimeoutError) as e:
            raise WireTimeout(str(e)) from None
        except ssl.SSLError as e:
            if "timed out" in str(e):
                raise WireTimeout(str(e)) from None
            raise

    def read_until_eof(self, timeout: float = 15.0) -> bytes:
        """Everything until the peer closes; WireTimeout if it stays open."""
        deadline = time.monotonic() + timeout
        out = bytearray(self.buf)
        self.buf.clear()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireTimeout(f"connection still open after {timeout}s; got {bytes(out[:200])!r}")
            try:
                chunk = self.recv_some(65536, timeout=left)
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk

    def _fill(self, need: int, deadline: float) -> None:
        while len(self.buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WireTimeout(f"waited for {need} bytes, have {len(self.buf)}")
            try:
                chunk = self.recv_some(max(65536, need - len(self.buf)), timeout=left)
            except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
                raise ConnectionClosed(str(e)) from None
            if not chunk:
                raise ConnectionClosed(f"EOF with {len(self.buf)} bytes buffered: {bytes(self.buf[:100])!r}")
            self.buf += chunk

    def read_byte(self, timeout: float | None = None) -> bytes:
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        self._fill(1, deadline)
        b = bytes(self.buf[:1])
        del self.buf[:1]
        return b

    def read_message(self, timeout: float | None = None) -> Message:
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        self._fill(5, deadline)
        t = bytes(self.buf[:1])
        (ln,) = struct.unpack_from("!i", self.buf, 1)
        if ln < 4:
            raise ValueError(f"bad message length {ln} for type {t!r}")
        self._fill(1 + ln, deadline)
        body = bytes(self.buf[5:1 + ln])
        del self.buf[:1 + ln]
        return Message(t, body)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- TLS ----------------------------------------------------------------
    def start_tls(self, cafile: str | None = None, server_hostname: str = "localhost",
                  certfile: str | None = None, keyfile: str | None = None,
                  context: ssl.SSLContext | None = None, suppress_ragged_eofs: bool = True) -> None:
        self.send(ssl_request())
        answer = self.read_byte()
        if answer != b"S":
            raise ValueError(f"SSLRequest answered {answer!r}")
        if context is None:
            context = ssl.create_default_context(cafile=cafile) if cafile else ssl._create_unverified_context()
            if certfile:
                context.load_cert_chain(certfile, keyfile)
        if not suppress_ragged_eofs:
            # Report a TCP EOF without TLS close_notify as an error.
            context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname,
                                        suppress_ragged_eofs=suppress_ragged_eofs)
        self.tls = True

    # -- startup and authentication ----------------------------------------
    def startup(self, user: str, database: str, password: str | None = None,
                params: dict[str, str] | None = None, gs2_flag: str = "n",
                timeout: float | None = None) -> StartupResult:
        """StartupMessage + authentication until ReadyForQuery.

        Raises PgError on an ErrorResponse (e.g. 28P01)."""
        p = {"user": user, "database": database}
        p.update(params or {})
        self.send(startup_packet(p))
        res = StartupResult()
        scram: ScramClient | None = None
        while True:
            m = self.read_message(timeout)
            if m.type == b"E":
                raise PgError(parse_error_fields(m.body))
            if m.type == b"R":
                code, data = parse_auth(m.body)
                res.auth_methods.append(code)
                if code == AUTH_OK:
                    continue
                if password is None:
                    raise ValueError(f"server asked for auth method {code}, no password given")
                if code == AUTH_CLEARTEXT:
                    self.send(msg(b"p", _cstr(password)))
                elif code == AUTH_MD5:
                    inner = hashlib.md5((password + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + data[:4]).hexdigest()
                    self.send(msg(b"p", _cstr("md5" + outer)))
                elif code == AUTH_SASL:
                    mechs = [x.decode() for x in data.split(b"\x00") if x]
                    res.sasl_mechanisms = mechs
                    if "SCRAM-SHA-256" not in mechs:
                        raise ValueError(f"no SCRAM-SHA-256 in {mechs}")
                    scram = ScramClient(password, gs2_flag)
                    first = scram.client_first()
                    self.send(msg(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
                elif code == AUTH_SASL_CONTINUE:
                    assert scram is not None
                    self.send(msg(b"p", scram.client_final(data)))
                elif code == AUTH_SASL_FINAL:
                    assert scram is not None
                    scram.verify_final(data)
                else:
                    raise ValueError(f"unsupported auth method {code}")
            elif m.type == b"S":
                k, v, _ = m.body.split(b"\x00", 2)
                res.parameters[k.decode()] = v.decode()
            elif m.type == b"K":
                res.backend_pid, res.backend_key = struct.unpack("!II", m.body[:8])
            elif m.type == b"Z":
                res.transaction_status = m.body[:1]
                return res
            elif m.type == b"N":
                continue
            else:
                raise ValueError(f"unexpected message during startup: {m!r}")

    # -- queries ------------------------------------------------------------
    def read_until_ready(self, timeout: float | None = None) -> list[Message]:
        out: list[Message] = []
        while True:
            m = self.read_message(timeout)
            out.append(m)
            if m.type == b"Z":
                return out

    def simple_query(self, sql: str, timeout: float | None = None) -> list[Message]:
        self.send(query(sql))
        return self.read_until_ready(timeout)


def rows(messages: list[Message]) -> list[list[bytes | None]]:
    return [parse_data_row(m.body) for m in messages if m.type == b"D"]


def errors(messages: list[Message]) -> list[dict[str, str]]:
    return [parse_error_fields(m.body) for m in messages if m.type == b"E"]


def first_error(data: bytes) -> dict[str, str] | None:
    """The fields of the first ErrorResponse in a raw byte string, if any."""
    i = 0
    while i + 5 <= len(data):
        t = data[i:i + 1]
        (ln,) = struct.unpack_from("!i", data, i + 1)
        if ln < 4:
            return None
        if t == b"E":
            return parse_error_fields(data[i + 5:i + 1 + ln])
        i += 1 + ln
    return None
