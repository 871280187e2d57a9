"""TLS on the pgcloak -> PostgreSQL leg: sslmode require and verify-full,
a wrong CA, and the documented SCRAM channel-binding limitation."""

import psycopg
import pytest

import pgwire
from clients import connect
from pgcluster import PASSWORDS

UPSTREAM_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _upstream_ssl(proxy) -> bool:
    # channel_binding=disable: see test_channel_binding_prefer_with_tls_upstream.
    with connect(proxy.dsn(sslmode="require", channel_binding="disable")) as c:
        assert c.pgconn.ssl_in_use
        return c.execute(UPSTREAM_SSL).fetchone()[0]


def test_upstream_disable_is_plain(pgcloak):
    # Control for the tests below: the query really tells the two apart.
    assert _upstream_ssl(pgcloak(upstream={"sslmode": "disable"})) is False


def test_upstream_require(pgcloak):
    assert _upstream_ssl(pgcloak(upstream={"sslmode": "require"})) is True


def test_upstream_prefer(pgcloak):
    assert _upstream_ssl(pgcloak(upstream={"sslmode": "prefer"})) is True


def test_upstream_verify_full(pgcloak, certs):
    proxy = pgcloak(upstream={"sslmode": "verify-full", "sslrootcert": certs.ca_crt, "host": "127.0.0.1"})
    assert _upstream_ssl(proxy) is True
    # Every password method still works over the TLS upstream.
    for user in ("md5_user", "clear_user"):
        with connect(proxy.dsn(user=user, sslmode="require", channel_binding="disable")) as c:
            assert c.execute("SELECT current_user").fetchone() == (user,)


def test_upstream_verify_full_localhost(pgcloak, certs):
    proxy = pgcloak(upstream={"sslmode": "verify-full", "sslrootcert": certs.ca_crt, "host": "localhost"})
    assert _upstream_ssl(proxy) is True


def test_upstream_verify_full_wrong_ca(pgcloak, certs):
    proxy = pgcloak(upstream={"sslmode": "verify-full", "sslrootcert": certs.other_ca_crt,
                              "host": "127.0.0.1"})
    with pgwire.PgWire(proxy.host, proxy.port, timeout=20) as w:
        w.start_tls(cafile=certs.ca_crt)
        with pytest.raises(pgwire.PgError) as ei:
            w.startup("scram_user", "app", PASSWORDS["scram_user"])
    assert ei.value.sqlstate[:2] in ("08", "28"), ei.value.fields
    assert ei.value.message
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(sslmode="require", channel_binding="disable"))
    assert proxy.alive()


@pytest.mark.known_limitation
def test_channel_binding_prefer_with_tls_upstream(pgcloak, certs):
    """Known limitation, asserted so a change is noticed.

    A TLS client with libpq's default channel_binding=prefer sees no
    SCRAM-SHA-256-PLUS (pgcloak removes it), so it sends gs2 flag 'y'
    ("I support binding, I think you don't"). PostgreSQL, whose own
    connection from pgcloak is TLS and did offer PLUS, treats that as a
    downgrade attack and refuses. The client must get a clean ErrorResponse
    with a SQLSTATE, not a hang or a bare disconnect."""
    proxy = pgcloak(upstream={"sslmode": "require"})
    with pgwire.PgWire(proxy.host, proxy.port, timeout=20) as w:
        w.start_tls(cafile=certs.ca_crt)
        with pytest.raises(pgwire.PgError) as ei:
            w.startup("scram_user", "app", PASSWORDS["scram_user"], gs2_flag="y")
    assert ei.value.sqlstate and len(ei.value.sqlstate) == 5, ei.value.fields
    assert ei.value.message
    # libpq, as users will meet it:
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(sslmode="require", channel_binding="prefer"))
    # With a plain upstream the same client works (the default test setup).
    plain = pgcloak(upstream={"sslmode": "disable"})
    with connect(plain.dsn(sslmode="require", channel_binding="prefer")) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert proxy.alive()
