"""Losing PostgreSQL: a terminated backend, and an upstream that is not
there at all. Clients get an ErrorResponse; pgcloak keeps serving."""

import socket
import threading
import uuid

import psycopg
import pytest

import pgwire
from clients import connect
from pgcluster import PASSWORDS
from util import closed_port, wait_for

LOST = ("57P01", "08006")


def _wait_backend(admin, app):
    return wait_for(lambda: admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'", [app]).fetchone(),
        20, what=f"backend for {app}")[0]


def test_terminated_backend_raw(pgcloak, admin):
    proxy = pgcloak()
    app = f"lost-{uuid.uuid4().hex[:8]}"
    with pgwire.PgWire(proxy.host, proxy.port, timeout=20) as w:
        w.startup("trust_user", "app", params={"application_name": app})
        w.send(pgwire.query("SELECT pg_sleep(60)"))
        pid = _wait_backend(admin, app)
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        data = w.read_until_eof(timeout=20)
    err = pgwire.first_error(data)
    assert err is not None, f"no ErrorResponse before close: {data[:200]!r}"
    assert err["C"] in LOST, err
    # A new session through the same pgcloak works.
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        assert pgwire.rows(w.simple_query("SELECT 'alive'")) == [[b"alive"]]


def test_terminated_backend_psycopg(pgcloak, admin):
    proxy = pgcloak()
    app = f"lostpg-{uuid.uuid4().hex[:8]}"
    conn = connect(proxy.dsn(sslmode="require", application_name=app))
    result = {}

    def run():
        try:
            conn.execute("SELECT pg_sleep(60)")
        except psycopg.Error as e:
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        pid = _wait_backend(admin, app)
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        t.join(20)
        assert not t.is_alive(), "client still waiting 20 s after its backend was terminated"
        err = result.get("error")
        assert isinstance(err, psycopg.OperationalError), result
        # psycopg has no SQLSTATE for errors met while consuming input; the
        # relayed FATAL's text (or pgcloak's 08006) must be in the message.
        assert err.sqlstate in LOST or "terminating connection due to administrator command" in str(err), \
            repr(err)
        assert conn.closed or conn.broken
    finally:
        conn.close()
    with connect(proxy.dsn(sslmode="require")) as c:
        assert c.execute("SELECT current_user").fetchone() == ("scram_user",)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_upstream_down_gives_08006(pgcloak, tls):
    port = closed_port()
    proxy = pgcloak(upstream={"port": port, "connect_timeout": "3s"})
    for _ in range(2):
        with pgwire.PgWire(proxy.host, proxy.port, timeout=20) as w:
            if tls:
                w.start_tls()
            with pytest.raises(pgwire.PgError) as ei:
                w.startup("scram_user", "app", PASSWORDS["scram_user"])
            assert w.read_until_eof(timeout=10) == b""
        e = ei.value
        assert e.sqlstate == "08006", e.fields
        assert e.fields.get("S") == "FATAL"
        msg = (e.message or "").lower()
        assert any(word in msg for word in ("upstream", "connect", "refused", "unavailable", str(port))), msg
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(sslmode="require"))
    assert proxy.alive()


class _SlammingUpstream:
    """A fake upstream that accepts connections and closes them at once."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            c.close()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_upstream_closes_during_startup(pgcloak):
    fake = _SlammingUpstream()
    try:
        proxy = pgcloak(upstream={"port": fake.port})
        with pgwire.PgWire(proxy.host, proxy.port, timeout=20) as w:
            w.start_tls()
            with pytest.raises(pgwire.PgError) as ei:
                w.startup("scram_user", "app", PASSWORDS["scram_user"])
        assert ei.value.sqlstate == "08006", ei.value.fields
        assert fake.accepted >= 1
        assert proxy.alive()
    finally:
        fake.close()
