"""Authentication relayed through pgcloak: SCRAM, MD5, cleartext and trust
reach PostgreSQL unchanged, failures look exactly like PostgreSQL's own, and
SCRAM-SHA-256-PLUS is never offered (TLS terminates at pgcloak)."""

import re

import psycopg
import pytest

import pgwire
from clients import connect
from pgcluster import PASSWORDS

METHOD = {"scram_user": pgwire.AUTH_SASL, "md5_user": pgwire.AUTH_MD5, "clear_user": pgwire.AUTH_CLEARTEXT}


def _tls_wire(host, port, certs):
    w = pgwire.PgWire(host, port)
    w.start_tls(cafile=certs.ca_crt)
    return w


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "clear_user"])
def test_password_methods_succeed(user, pgcloak, certs):
    proxy = pgcloak()
    with connect(proxy.dsn(user=user, sslmode="require")) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT current_user, count(*) FROM customers").fetchone() == (user, 5000)
    # The method PostgreSQL chose for this user is the one the client sees.
    with _tls_wire(proxy.host, proxy.port, certs) as w:
        res = w.startup(user, "app", PASSWORDS[user])
        assert res.auth_methods == [METHOD[user], *([pgwire.AUTH_SASL_CONTINUE, pgwire.AUTH_SASL_FINAL]
                                                    if user == "scram_user" else []), pgwire.AUTH_OK]
        assert res.backend_pid is not None and res.backend_key is not None
        assert res.transaction_status == b"I"


def test_trust_passthrough(pgcloak, certs):
    proxy = pgcloak()
    with _tls_wire(proxy.host, proxy.port, certs) as w:
        res = w.startup("trust_user", "app")
        assert res.auth_methods == [pgwire.AUTH_OK]


def _raw_failure(host, port, certs, user, password, database="app"):
    with _tls_wire(host, port, certs) as w:
        with pytest.raises(pgwire.PgError) as ei:
            w.startup(user, database, password)
        # After a FATAL the server closes the connection.
        assert w.read_until_eof(timeout=10) == b""
        return ei.value.fields


def _libpq_failure(dsn):
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(dsn)
    msg = str(ei.value)
    # Strip libpq's 'connection to server at "...", port N failed: ' prefix.
    return re.sub(r'^connection to server at "[^"]*" \([^)]*\), port \d+ failed: |'
                  r'^connection to server at "[^"]*", port \d+ failed: ', "", msg)


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "clear_user", "no_such_user"])
def test_wrong_password_same_as_direct(user, pg, pgcloak, certs):
    proxy = pgcloak()
    via = _raw_failure(proxy.host, proxy.port, certs, user, "wrong-password")
    direct = _raw_failure(pg.host, pg.port, certs, user, "wrong-password")
    assert via["C"] == "28P01"
    assert {k: via.get(k) for k in "SCM"} == {k: direct.get(k) for k in "SCM"}
    assert _libpq_failure(proxy.dsn(user=user, password="wrong-password")) == \
        _libpq_failure(pg.dsn(user=user, password="wrong-password"))


def test_unknown_database_same_as_direct(pg, pgcloak, certs):
    proxy = pgcloak()
    via = _raw_failure(proxy.host, proxy.port, certs, "scram_user", PASSWORDS["scram_user"], "no_such_db")
    direct = _raw_failure(pg.host, pg.port, certs, "scram_user", PASSWORDS["scram_user"], "no_such_db")
    assert via["C"] == "3D000"
    assert {k: via.get(k) for k in "SCM"} == {k: direct.get(k) for k in "SCM"}


def test_scram_plus_not_offered(pg, pgcloak, certs):
    """PostgreSQL offers SCRAM-SHA-256-PLUS on a TLS connection; pgcloak must
    not pass that on, since the client's TLS channel ends at pgcloak."""
    with _tls_wire(pg.host, pg.port, certs) as w:
        direct = w.startup("scram_user", "app", PASSWORDS["scram_user"])
    assert "SCRAM-SHA-256-PLUS" in direct.sasl_mechanisms  # control: the upstream offers it
    for sslmode in ("disable", "require"):
        proxy = pgcloak(upstream={"sslmode": sslmode})
        with _tls_wire(proxy.host, proxy.port, certs) as w:
            res = w.startup("scram_user", "app", PASSWORDS["scram_user"])
            assert res.sasl_mechanisms == ["SCRAM-SHA-256"], sslmode


def test_channel_binding_require_fails_cleanly(pg, pgcloak):
    # Control: directly, PostgreSQL offers PLUS and the same client succeeds.
    with connect(pg.dsn(sslmode="require", channel_binding="require")) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    proxy = pgcloak()
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        connect(proxy.dsn(sslmode="require", channel_binding="require"))
    assert proxy.alive()


def test_channel_binding_prefer_works(pgcloak):
    proxy = pgcloak()
    with connect(proxy.dsn(sslmode="require", channel_binding="prefer")) as c:
        assert c.execute("SELECT current_user").fetchone() == ("scram_user",)


def test_session_parameters_reach_server(pgcloak, admin):
    proxy = pgcloak()
    app = "pgcloak-auth-test-1"  # PostgreSQL turns non-ASCII application_name bytes into '?' 
    with connect(proxy.dsn(application_name=app, options="-c statement_timeout=12345 -c search_path=pg_catalog")) as c:
        assert c.execute("SHOW application_name").fetchone() == (app,)
        assert c.execute("SHOW statement_timeout").fetchone() == ("12345ms",)
        assert c.execute("SHOW search_path").fetchone() == ("pg_catalog",)
        assert c.info.parameter_status("application_name") == app
        assert c.info.parameter_status("server_version").startswith("15")
        rows = admin.execute("SELECT usename FROM pg_stat_activity WHERE application_name = %s",
                             [app]).fetchall()
        assert rows == [("scram_user",)]
