"""Limits and malformed input: max_connections, max_message_size, bad
lengths and message types. pgcloak fails closed with an ErrorResponse and
keeps serving everybody else."""

import socket
import struct

import pytest

import pgwire
from util import wait_for


def _expect_fatal(w, codes, timeout=10):
    """The connection ends with one ErrorResponse carrying one of codes (or,
    for codes containing None, with a bare close)."""
    data = w.read_until_eof(timeout=timeout)
    err = pgwire.first_error(data)
    if err is None:
        assert None in codes, f"no ErrorResponse before close: {data[:200]!r}"
        return None
    assert err["C"] in codes, err
    return err


def _healthy(proxy):
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        return pgwire.rows(w.simple_query("SELECT 'healthy'")) == [[b"healthy"]]


def test_max_connections(pgcloak):
    proxy = pgcloak(max_connections=2)
    a = pgwire.PgWire(proxy.host, proxy.port)
    b = pgwire.PgWire(proxy.host, proxy.port)
    try:
        a.startup("trust_user", "app")
        b.startup("trust_user", "app")
        with pgwire.PgWire(proxy.host, proxy.port) as c:
            with pytest.raises(pgwire.PgError) as ei:
                c.startup("trust_user", "app")
            assert ei.value.sqlstate == "53300", ei.value.fields
        # The two admitted sessions are unaffected.
        assert pgwire.rows(a.simple_query("SELECT 1")) == [[b"1"]]
    finally:
        a.close()
    # A freed slot is reusable (bounded wait for pgcloak to notice the close).
    wait_for(lambda: _try_startup(proxy), 10, interval=0.2, what="a freed connection slot")
    b.close()


def _try_startup(proxy):
    try:
        with pgwire.PgWire(proxy.host, proxy.port) as w:
            w.startup("trust_user", "app")
            return True
    except pgwire.PgError:
        return False


def test_max_message_size(pgcloak):
    proxy = pgcloak(limits={"max_message_size": "1MiB"})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        ok = "SELECT length('" + "x" * (512 * 1024) + "')"
        assert pgwire.rows(w.simple_query(ok)) == [[str(512 * 1024).encode()]]
        too_big = "SELECT length('" + "x" * (2 * 1024 * 1024) + "')"
        try:
            w.send(pgwire.query(too_big))
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while we were still sending: also fail-closed
        else:
            _expect_fatal(w, ("54000", "08P01", None))
    assert _healthy(proxy)


def test_declared_length_over_limit_rejected_early(pgcloak):
    """A header announcing 1 GiB must be refused from the header alone."""
    proxy = pgcloak(limits={"max_message_size": "1MiB"})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        w.send(b"Q" + struct.pack("!i", 1 << 30) + b"SELECT 1")
        _expect_fatal(w, ("54000", "08P01"))
    assert _healthy(proxy)


@pytest.mark.parametrize("length", [-1, 0, 3])
def test_message_length_below_4_is_protocol_violation(pgcloak, length):
    proxy = pgcloak()
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        w.send(b"Q" + struct.pack("!i", length) + b"SELECT 1\x00")
        _expect_fatal(w, ("08P01",))
    assert _healthy(proxy)


def test_unknown_frontend_message_type(pgcloak):
    proxy = pgcloak()
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        w.send(pgwire.msg(b"\x01", b"junk"))
        _expect_fatal(w, ("08P01",))
    assert _healthy(proxy)


@pytest.mark.parametrize("length", [0, 7, 100_000, -8])
def test_bad_startup_packet_length(pgcloak, length):
    proxy = pgcloak()
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.send(struct.pack("!ii", length, pgwire.PROTOCOL_V3) + b"user\x00trust_user\x00\x00")
        _expect_fatal(w, ("08P01", None))
    assert _healthy(proxy)


def test_unsupported_protocol_version(pgcloak):
    proxy = pgcloak()
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.send(pgwire.startup_packet({"user": "trust_user", "database": "app"}, protocol=2 << 16))
        _expect_fatal(w, ("0A000", "08P01"))
    assert _healthy(proxy)


def test_client_vanishing_mid_message(pgcloak):
    """Half a message, then a reset: nothing leaks, pgcloak keeps serving."""
    proxy = pgcloak()
    for _ in range(20):
        w = pgwire.PgWire(proxy.host, proxy.port)
        w.startup("trust_user", "app")
        w.send(b"Q" + struct.pack("!i", 1000) + b"SELECT")
        w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()
    assert _healthy(proxy)
    assert proxy.alive()
