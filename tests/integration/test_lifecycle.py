"""The process: CLI (--version, --check-config), handshake and idle
timeouts, graceful shutdown, the Unix-socket listener."""

import os
import re
import shutil
import signal
import socket
import tempfile
import uuid

import pytest
import yaml

import pgwire
from clients import connect, psql
from proxy import default_config, pgcloak_bin
from util import free_port, port_open, run, wait_for


@pytest.fixture
def binary():
    b = pgcloak_bin()
    if not os.access(b, os.X_OK):
        pytest.fail(f"pgcloak binary not found at {b}")
    return b


def test_version(binary):
    p = run([binary, "--version"], timeout=10)
    assert p.returncode == 0, p.stderr
    assert re.match(r"^pgcloak \d+\.\d+\.\d+", p.stdout), p.stdout


def test_check_config_good(binary, pg, certs, tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(yaml.safe_dump(default_config(pg, certs), sort_keys=False))
    p = run([binary, "--check-config", str(path)], timeout=10)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "OK" in p.stdout


# (name, yaml text, line that must be reported)
BAD_CONFIGS = [
    ("unknown_key", """\
listen: ["127.0.0.1:6432"]
upstream:
  host: 127.0.0.1
  port: 5432
  colour: blue
""", 5),
    ("unknown_top_level_key", """\
listen: ["127.0.0.1:6432"]
log:
  level: info
frobnicate: true
""", 4),
    ("bad_type", """\
listen: ["127.0.0.1:6432"]
threads: lots
max_connections: 100
""", 2),
    ("bad_sslmode", """\
listen: ["127.0.0.1:6432"]
upstream:
  host: 127.0.0.1
  sslmode: sometimes
""", 4),
    ("bad_duration", """\
listen: ["127.0.0.1:6432"]
timeouts:
  handshake: 10s
  client_idle: ten minutes
""", 4),
    ("bad_min_version", """\
listen: ["127.0.0.1:6432"]
tls:
  min_version: "1.1"
""", 3),
    ("bad_log_level", """\
listen: ["127.0.0.1:6432"]
log:
  level: chatty
""", 3),
    ("bad_size", """\
listen: ["127.0.0.1:6432"]
limits:
  max_message_size: huge
""", 3),
    ("yaml_syntax", """\
listen: ["127.0.0.1:6432"]
upstream:
  port: 5432: 1
log:
  level: info
""", 3),
]


@pytest.mark.parametrize("name,text,line", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_check_config_bad(binary, tmp_path, name, text, line):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    p = run([binary, "--check-config", str(path)], timeout=10)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert re.search(re.escape(str(path)) + rf":{line}:\d+: \S", out), out
    assert "OK" not in p.stdout


def test_bad_config_refuses_to_start(binary, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_CONFIGS[0][1])
    p = run([binary, "--config", str(path)], timeout=15)
    assert p.returncode != 0


@pytest.mark.parametrize("stage", ["silent", "after_ssl_request", "after_tls"])
def test_handshake_timeout(pgcloak, stage):
    proxy = pgcloak(timeouts={"handshake": "1s"})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        if stage == "after_ssl_request":
            w.send(pgwire.ssl_request())
            assert w.read_byte() == b"S"
        elif stage == "after_tls":
            w.start_tls()
        data = w.read_until_eof(timeout=10)
    if data:
        err = pgwire.first_error(data)
        assert err is not None and err["C"][:2] in ("08", "57"), data[:200]
    assert proxy.alive()


def test_handshake_timeout_during_authentication_is_reported(pgcloak):
    """A client that stops answering mid-authentication gets an ErrorResponse
    that names the limit, not a bare close."""
    proxy = pgcloak(timeouts={"handshake": "1s"})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.send(pgwire.startup_packet({"user": "scram_user", "database": "app"}))
        first = w.read_message(timeout=10)
        assert first.type == b"R", first  # AuthenticationSASL; we never answer
        data = w.read_until_eof(timeout=10)
    err = pgwire.first_error(data)
    assert err is not None, data[:200]
    assert err["C"] == "08006" and "timeouts.handshake" in err.get("H", ""), err
    assert proxy.alive()


def test_handshake_timeout_spares_authenticated_sessions(pgcloak):
    proxy = pgcloak(timeouts={"handshake": "1s"})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        with pytest.raises(pgwire.WireTimeout):
            w.read_message(timeout=2.5)  # nothing arrives: no timeout error, no close
        assert pgwire.rows(w.simple_query("SELECT 'still here'")) == [[b"still here"]]


def test_client_idle_timeout(pgcloak):
    proxy = pgcloak(timeouts={"client_idle": "1s"})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        assert pgwire.rows(w.simple_query("SELECT 1")) == [[b"1"]]
        data = w.read_until_eof(timeout=10)
    if data:
        err = pgwire.first_error(data)
        assert err is not None and err["C"][:2] in ("57", "08"), data[:200]
    assert proxy.alive()


def test_client_idle_zero_means_never(pgcloak):
    proxy = pgcloak(timeouts={"client_idle": "0s"})
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        with pytest.raises(pgwire.WireTimeout):
            w.read_message(timeout=2.5)
        assert pgwire.rows(w.simple_query("SELECT 2")) == [[b"2"]]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_idle_session_exits_0(pgcloak, sig):
    proxy = pgcloak(timeouts={"shutdown_grace": "3s"})
    proxy.expect_exit = True
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("trust_user", "app")
        proxy.proc.send_signal(sig)
        rc = proxy.proc.wait(timeout=3 + 15)
        assert rc == 0, proxy.log()
        w.read_until_eof(timeout=10)  # the idle session is gone too
    assert not port_open(proxy.host, proxy.port)


def test_sigterm_drains_in_flight_query(pgcloak, admin):
    proxy = pgcloak(timeouts={"shutdown_grace": "20s"})
    proxy.expect_exit = True
    app = f"drain-{uuid.uuid4().hex[:8]}"
    with pgwire.PgWire(proxy.host, proxy.port, timeout=20) as w:
        w.startup("trust_user", "app", params={"application_name": app})
        w.send(pgwire.query("SELECT pg_sleep(3), 'drained'"))
        # Only a query PostgreSQL is already running is "in flight".
        wait_for(lambda: admin.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                                       "AND state = 'active'", [app]).fetchone(), 15, what="query running")
        proxy.proc.send_signal(signal.SIGTERM)

        def refused():
            try:
                with pgwire.PgWire(proxy.host, proxy.port, timeout=5) as n:
                    n.startup("trust_user", "app")
                    return False  # a new session was still admitted
            except (OSError, pgwire.PgError, pgwire.ConnectionClosed):
                return True
        wait_for(refused, 10, interval=0.2, what="new connections refused after SIGTERM")
        msgs = w.read_until_ready(timeout=20)
        assert pgwire.errors(msgs) == []
        assert pgwire.rows(msgs) == [[b"", b"drained"]]
    rc = proxy.proc.wait(timeout=30)
    assert rc == 0, proxy.log()


def test_sigterm_grace_expires_with_busy_session(pgcloak):
    proxy = pgcloak(timeouts={"shutdown_grace": "2s"})
    proxy.expect_exit = True
    with pgwire.PgWire(proxy.host, proxy.port, timeout=20) as w:
        w.startup("trust_user", "app")
        w.send(pgwire.query("SELECT pg_sleep(60)"))
        proxy.proc.send_signal(signal.SIGTERM)
        rc = proxy.proc.wait(timeout=2 + 15)
        assert rc == 0, proxy.log()
        w.read_until_eof(timeout=10)


def test_unix_socket_listener(pgcloak, client_env):
    sockdir = tempfile.mkdtemp(prefix="pgc-", dir="/tmp")
    try:
        proxy = pgcloak(unix_socket_dir=sockdir)
        assert os.path.exists(proxy.unix_socket_path)
        dsn = proxy.dsn(host=sockdir, sslmode="disable")
        out = psql(dsn, "-A", "-t", "-c", "SELECT current_user, count(*) FROM customers", env=client_env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "scram_user|5000"
        info = psql(dsn, "-c", r"\conninfo", env=client_env)
        assert f'via socket in "{sockdir}"' in info.stdout
        with pgwire.PgWire(None, unix_path=proxy.unix_socket_path) as w:
            w.startup("trust_user", "app")
            assert pgwire.rows(w.simple_query("SELECT 5")) == [[b"5"]]
        # TCP keeps working next to it.
        with connect(proxy.dsn()) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def _free_port_v6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def test_several_listeners_ipv4_and_ipv6(pgcloak):
    v6 = _free_port_v6()
    if v6 is None:
        pytest.skip("no IPv6 loopback here")
    v4 = free_port()
    proxy = pgcloak(listen=[f"127.0.0.1:{v4}", f"[::1]:{v6}"])
    for host, port in (("127.0.0.1", v4), ("::1", v6)):
        with connect(proxy.dsn(host=host, port=port)) as c:
            assert c.execute("SELECT current_user").fetchone() == ("scram_user",), host
