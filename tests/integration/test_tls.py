"""Client-side TLS: sslmodes, require, no-TLS mode, mTLS, GSSENCRequest,
data pipelined after SSLRequest, minimum protocol version."""

import ssl
import subprocess
import uuid

import psycopg
import pytest

import pgwire
from clients import connect, psql
from pgcluster import PASSWORDS
from util import wait_for


def _whoami(dsn: str):
    with connect(dsn) as c:
        user = c.execute("SELECT current_user").fetchone()[0]
        return user, c.pgconn.ssl_in_use


def test_sslmode_require(pgcloak):
    proxy = pgcloak()
    assert _whoami(proxy.dsn(sslmode="require")) == ("scram_user", True)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_sslmode_verify_full(pgcloak, certs, host):
    proxy = pgcloak()
    assert _whoami(proxy.dsn(sslmode="verify-full", sslrootcert=certs.ca_crt, host=host)) == ("scram_user", True)


def test_verify_full_rejects_wrong_ca(pgcloak, certs):
    proxy = pgcloak()
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(proxy.dsn(sslmode="verify-full", sslrootcert=certs.other_ca_crt, host="localhost"))


def test_verify_full_rejects_wrong_host_name(pgcloak, certs):
    proxy = pgcloak()
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(proxy.dsn(sslmode="verify-full", sslrootcert=certs.ca_crt,
                          host="wrong.example", hostaddr="127.0.0.1"))


def test_require_refuses_plaintext_client_with_28000(pgcloak):
    proxy = pgcloak(tls={"require": True})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        with pytest.raises(pgwire.PgError) as ei:
            w.startup("scram_user", "app", PASSWORDS["scram_user"])
        assert ei.value.sqlstate == "28000"
        assert ei.value.fields.get("S") == "FATAL"
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(sslmode="disable"))
    # ...while a TLS client is still served.
    assert _whoami(proxy.dsn(sslmode="require")) == ("scram_user", True)


@pytest.mark.parametrize("tls_off", ["empty_paths", "no_tls_section"])
def test_no_tls_configured(pgcloak, client_env, tls_off):
    proxy = pgcloak(tls={"cert_file": "", "key_file": ""}) if tls_off == "empty_paths" else pgcloak(tls=None)
    out = psql(proxy.dsn(sslmode="require"), "-c", "SELECT 1", env=client_env)
    assert out.returncode != 0
    assert "server does not support SSL" in out.stderr
    assert _whoami(proxy.dsn(sslmode="prefer")) == ("scram_user", False)
    # Raw: SSLRequest is answered 'N' and the same connection carries on in plain.
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.send(pgwire.ssl_request())
        assert w.read_byte() == b"N"
        w.startup("trust_user", "app")
        assert pgwire.rows(w.simple_query("SELECT 42")) == [[b"42"]]


def test_mtls(pgcloak, certs):
    proxy = pgcloak(tls={"client_ca_file": certs.ca_crt})
    # No client certificate: refused (TLS alert or ErrorResponse).
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(sslmode="require"))
    # A certificate from another CA: refused.
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(sslmode="require", sslcert=certs.other_client_crt, sslkey=certs.other_client_key))
    # The CA's client certificate: accepted, then SCRAM as usual.
    assert _whoami(proxy.dsn(sslmode="require", sslcert=certs.client_crt,
                             sslkey=certs.client_key)) == ("scram_user", True)


def test_mtls_plaintext_client_refused(pgcloak, certs):
    proxy = pgcloak(tls={"client_ca_file": certs.ca_crt})
    with pytest.raises(psycopg.OperationalError):
        connect(proxy.dsn(sslmode="disable"))


def test_gssenc_request_answered_n(pgcloak, certs):
    proxy = pgcloak()
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.send(pgwire.gssenc_request())
        assert w.read_byte() == b"N"
        # libpq then falls back to SSLRequest on the same connection.
        w.start_tls(cafile=certs.ca_crt)
        w.startup("scram_user", "app", PASSWORDS["scram_user"])
        assert pgwire.rows(w.simple_query("SELECT current_user")) == [[b"scram_user"]]


def test_bytes_after_ssl_request_rejected(pgcloak):
    """Plaintext pipelined behind an SSLRequest may have been injected by a
    man in the middle (CVE-2021-23214): it must never be processed."""
    proxy = pgcloak()
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.send(pgwire.ssl_request() + pgwire.startup_packet({"user": "trust_user", "database": "app"}))
        data = w.read_until_eof(timeout=15)
    if data.startswith(b"S"):
        data = data[1:]
    # Either closed without a handshake, or one ErrorResponse 08P01 and closed.
    if data:
        assert data[:1] == b"E", f"unexpected reply {data[:100]!r}"
        err = pgwire.first_error(data)
        assert err is not None and err.get("C") == "08P01", err
    assert b"R\x00\x00\x00\x08\x00\x00\x00\x00" not in data  # never AuthenticationOk


def _s_client(port: int, *args: str):
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "postgres",
                           *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def test_min_version_1_2_refuses_tls_1_1(pgcloak):
    helptext = subprocess.run(["openssl", "s_client", "-help"], capture_output=True, text=True, timeout=10)
    if "-tls1_1" not in helptext.stdout + helptext.stderr:
        pytest.skip("openssl lacks -tls1_1")
    proxy = pgcloak(tls={"min_version": "1.2"})
    ok = _s_client(proxy.port, "-tls1_2")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "TLSv1.2" in ok.stdout
    old = _s_client(proxy.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    out = old.stdout + old.stderr
    if "no protocols available" in out:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    assert old.returncode != 0, out
    assert "Cipher is (NONE)" in out, out  # no session was established


def _tls_version(proxy, max_version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = max_version
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.start_tls(context=ctx)
        return w.sock.version()


def test_min_version_1_3(pgcloak):
    p12 = pgcloak(tls={"min_version": "1.2"})
    assert _tls_version(p12, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    p13 = pgcloak(tls={"min_version": "1.3"})
    assert _tls_version(p13, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises((ssl.SSLError, ConnectionError, pgwire.ConnectionClosed)):
        _tls_version(p13, ssl.TLSVersion.TLSv1_2)


def _close_kind(host, port, certs, scenario, admin) -> str:
    """How the server ends TLS after a FATAL: 'close_notify' or 'ragged_eof'."""
    with pgwire.PgWire(host, port, timeout=20) as w:
        w.start_tls(cafile=certs.ca_crt, suppress_ragged_eofs=False)
        if scenario == "auth_failure":
            with pytest.raises(pgwire.PgError):
                w.startup("scram_user", "app", "wrong-password")
        else:
            app = f"closekind-{uuid.uuid4().hex[:8]}"
            w.startup("trust_user", "app", params={"application_name": app})
            w.send(pgwire.query("SELECT pg_sleep(60)"))
            wait_for(lambda: admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND state = 'active'", [app]).fetchone(), 20, what="backend")
            types = [w.read_message().type]
            while types[-1] != b"E" and len(types) < 5:  # RowDescription comes first
                types.append(w.read_message().type)
            assert types[-1] == b"E", types
        try:
            for _ in range(100):  # bounded; each recv has its own timeout
                if w.recv_some(65536, timeout=10) == b"":
                    return "close_notify"
            return "still open"
        except ssl.SSLError as e:  # UNEXPECTED_EOF_WHILE_READING
            return "ragged_eof" if "EOF" in str(e).upper() else f"tls error {e}"
        except ConnectionResetError:
            return "reset"


@pytest.mark.parametrize("scenario", ["auth_failure", "backend_terminated"])
def test_tls_close_notify_like_postgres(scenario, pg, pgcloak, certs, admin):
    """PostgreSQL ends TLS with close_notify before closing; libpq then says
    "SSL connection has been closed unexpectedly" rather than "SSL SYSCALL
    error: EOF detected", and a truncation is told apart from a close."""
    proxy = pgcloak()
    assert _close_kind(pg.host, pg.port, certs, scenario, admin) == "close_notify"  # control
    assert _close_kind(proxy.host, proxy.port, certs, scenario, admin) == "close_notify"
