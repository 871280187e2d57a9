"""auth.mode scram: pgcloak terminates SCRAM-SHA-256 itself, with verifiers
fetched by auth_query (pgcloak.get_auth from the shop fixture) over its
catalog login, and authenticates to PostgreSQL from the ClientKey the client
proved. The upstream leg is TLS here, which is where passthrough mode cannot
do libpq's default channel_binding=prefer."""

import os
import re
import subprocess
import sys
import threading

import psycopg
import pytest

import pgwire
from clients import connect, psql
from pgcluster import PASSWORDS
from proxy import pgcloak_bin
from shop import SHOP_PASSWORDS
from util import wait_for

UPSTREAM_SSL = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def scram_config(**over) -> dict:
    cfg = {
        "upstream": {"sslmode": "require"},
        "auth": {"mode": "scram", "auth_dbname": "shop", "verifier_cache_ttl": "60s"},
        "catalog": {"user": "pgcloak", "password": SHOP_PASSWORDS["pgcloak"]},
        "log": {"level": "debug"},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


@pytest.fixture
def scram_proxy(shop, pgcloak):
    """Factory: a pgcloak in scram mode (shop fixture loaded for get_auth)."""
    def start(**over):
        return pgcloak(**scram_config(**over))
    return start


def _tls_wire(host, port, certs):
    w = pgwire.PgWire(host, port)
    w.start_tls(cafile=certs.ca_crt)
    return w


def _raw_failure(host, port, certs, user, password, database="app", tls=True):
    w = _tls_wire(host, port, certs) if tls else pgwire.PgWire(host, port)
    with w:
        with pytest.raises(pgwire.PgError) as ei:
            w.startup(user, database, password)
        assert w.read_until_eof(timeout=10) == b""
        return ei.value.fields


def _libpq_failure(dsn):
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(dsn)
    return re.sub(r'^connection to server at "[^"]*" \([^)]*\), port \d+ failed: |'
                  r'^connection to server at "[^"]*", port \d+ failed: ', "", str(ei.value))


def _log_has(proxy, needle, timeout=5.0) -> bool:
    try:
        wait_for(lambda: needle in proxy.log(), timeout, what=needle)
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("channel_binding", ["prefer", "require", "disable"])
def test_libpq_channel_binding_over_tls(scram_proxy, channel_binding):
    proxy = scram_proxy()
    with connect(proxy.dsn(sslmode="require", channel_binding=channel_binding)) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("SELECT current_user, current_database()").fetchone() == ("scram_user", "app")
        assert c.execute(UPSTREAM_SSL).fetchone() == (True,)
    client_mech = "SCRAM-SHA-256" if channel_binding == "disable" else "SCRAM-SHA-256-PLUS"
    assert _log_has(proxy, f"client proved user \"scram_user\"'s SCRAM secret ({client_mech}")
    # Towards PostgreSQL pgcloak binds to PostgreSQL's own certificate.
    assert _log_has(proxy, "PostgreSQL accepted user \"scram_user\" (SCRAM-SHA-256-PLUS)")


def test_psql_channel_binding_require(scram_proxy, client_env):
    proxy = scram_proxy()
    p = psql(proxy.dsn(sslmode="require", channel_binding="require"), "-Atc", "SELECT current_user", env=client_env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "scram_user"


def test_mechanisms_offered(scram_proxy, certs):
    proxy = scram_proxy()
    with _tls_wire(proxy.host, proxy.port, certs) as w:
        res = w.startup("scram_user", "app", PASSWORDS["scram_user"])
    assert res.sasl_mechanisms == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
    assert res.auth_methods == [pgwire.AUTH_SASL, pgwire.AUTH_SASL_CONTINUE, pgwire.AUTH_SASL_FINAL, pgwire.AUTH_OK]
    assert res.backend_pid is not None and res.transaction_status == b"I"
    with pgwire.PgWire(proxy.host, proxy.port) as w:  # no TLS: nothing to bind to
        res = w.startup("scram_user", "app", PASSWORDS["scram_user"])
    assert res.sasl_mechanisms == ["SCRAM-SHA-256"]


def test_downgrade_flag_refused_like_postgres(scram_proxy, pg, certs):
    """gs2 flag 'y' on TLS while PLUS was offered: a downgrade, refused with
    PostgreSQL's own error."""
    proxy = scram_proxy()
    errs = []
    for host, port in ((proxy.host, proxy.port), (pg.host, pg.port)):
        with _tls_wire(host, port, certs) as w:
            with pytest.raises(pgwire.PgError) as ei:
                w.startup("scram_user", "app", PASSWORDS["scram_user"], gs2_flag="y")
            errs.append({k: ei.value.fields.get(k) for k in "SCM"})
    assert errs[0] == errs[1]
    assert errs[0]["C"] == "28000"


def test_plaintext_client(scram_proxy):
    proxy = scram_proxy()
    with connect(proxy.dsn(sslmode="disable")) as c:
        assert not c.pgconn.ssl_in_use
        assert c.execute("SELECT current_user").fetchone() == ("scram_user",)
    assert _log_has(proxy, "client proved user \"scram_user\"'s SCRAM secret (SCRAM-SHA-256")


def test_lookup_in_the_clients_database(shop, pgcloak):
    """auth_dbname empty: the lookup runs in the client's own database."""
    proxy = pgcloak(**scram_config(auth={"auth_dbname": ""}))
    dsn = proxy.dsn(user="support", dbname="shop", password=SHOP_PASSWORDS["support"], channel_binding="require")
    with connect(dsn) as c:
        assert c.execute("SELECT current_user, current_database()").fetchone() == ("support", "shop")
        assert c.execute("SELECT count(*) > 0 FROM customers").fetchone() == (True,)


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "no_such_user", "postgres"])
@pytest.mark.parametrize("tls", [True, False])
def test_wrong_password_same_as_direct(scram_proxy, pg, certs, user, tls):
    """Every failure reads like PostgreSQL's wrong password: roles that do not
    exist, have an MD5 verifier or are superusers (get_auth hides them) go
    through a full SCRAM exchange against a mock verifier first."""
    proxy = scram_proxy()
    via = _raw_failure(proxy.host, proxy.port, certs, user, "wrong-password", tls=tls)
    direct = _raw_failure(pg.host, pg.port, certs, user, "wrong-password", tls=tls)
    assert via["C"] == "28P01", via
    assert {k: via.get(k) for k in "SCM"} == {k: direct.get(k) for k in "SCM"}
    sslmode = "require" if tls else "disable"
    assert _libpq_failure(proxy.dsn(user=user, password="wrong-password", sslmode=sslmode)) == \
        _libpq_failure(pg.dsn(user=user, password="wrong-password", sslmode=sslmode))


def test_unknown_user_looks_like_wrong_password(scram_proxy, certs):
    proxy = scram_proxy()
    with _tls_wire(proxy.host, proxy.port, certs) as w:
        with pytest.raises(pgwire.PgError) as unknown:
            w.startup("no_such_user", "app", "whatever")
    with _tls_wire(proxy.host, proxy.port, certs) as w:
        with pytest.raises(pgwire.PgError) as wrong:
            w.startup("scram_user", "app", "whatever")
    strip = lambda f: {k: v.replace("no_such_user", "U").replace("scram_user", "U")  # noqa: E731
                       for k, v in f.items()}
    assert strip(unknown.value.fields) == strip(wrong.value.fields)
    # The real reason is in pgcloak's log only.
    assert _log_has(proxy, 'authentication failed for user "no_such_user"')
    assert _log_has(proxy, "auth.auth_query returned no row")
    # An MD5 verifier is named as the reason, never quoted.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(proxy.dsn(user="md5_user"))
    assert _log_has(proxy, 'authentication failed for user "md5_user"')
    assert _log_has(proxy, "the role has no usable SCRAM secret")


def test_mock_exchange_uses_a_stable_salt(scram_proxy, certs):
    """Repeated attempts for an unknown role see the same salt and iteration
    count, as for a real role, so the salt does not give it away."""
    proxy = scram_proxy()
    seen = []
    for user in ("no_such_user", "no_such_user", "scram_user", "scram_user"):
        with _tls_wire(proxy.host, proxy.port, certs) as w:
            w.send(pgwire.startup_packet({"user": user, "database": "app"}))
            m = w.read_message()
            code, _ = pgwire.parse_auth(m.body)
            assert code == pgwire.AUTH_SASL
            scram = pgwire.ScramClient("whatever")
            first = scram.client_first()
            w.send(pgwire.msg(b"p", b"SCRAM-SHA-256\x00" + len(first).to_bytes(4, "big") + first))
            m = w.read_message()
            code, data = pgwire.parse_auth(m.body)
            assert code == pgwire.AUTH_SASL_CONTINUE
            attrs = dict(a.split("=", 1) for a in data.decode().split(","))
            seen.append((attrs["s"], attrs["i"]))
    assert seen[0] == seen[1] and seen[2] == seen[3]
    assert seen[0][1] == seen[2][1] == "4096"
    assert len(seen[0][0]) == len(seen[2][0])


def test_unknown_database(scram_proxy, certs):
    """With auth_dbname set, authentication succeeds and PostgreSQL's own
    3D000 comes through, as directly."""
    proxy = scram_proxy()
    via = _raw_failure(proxy.host, proxy.port, certs, "scram_user", PASSWORDS["scram_user"], "no_such_db")
    assert via["C"] == "3D000", via
    assert via["M"] == 'database "no_such_db" does not exist'


def test_cleartext_pg_hba_gives_a_clear_error(scram_proxy):
    """pg_hba says 'password' for clear_user: pgcloak has no password to give."""
    proxy = scram_proxy()
    with pytest.raises(psycopg.OperationalError) as ei:
        connect(proxy.dsn(user="clear_user"))
    assert "scram-sha-256" in str(ei.value)
    assert _log_has(proxy, "auth.mode scram needs scram-sha-256 in pg_hba.conf")


@pytest.fixture
def temp_role(admin):
    name = "scram_rotating"
    admin.execute(f"DROP ROLE IF EXISTS {name}")
    admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'first-password'")
    yield name
    admin.execute(f"DROP ROLE IF EXISTS {name}")


def test_password_change_with_ttl_zero(scram_proxy, admin, temp_role):
    proxy = scram_proxy(auth={"verifier_cache_ttl": "0s"})
    with connect(proxy.dsn(user=temp_role, password="first-password")) as c:
        assert c.execute("SELECT current_user").fetchone() == (temp_role,)
    admin.execute(f"ALTER ROLE {temp_role} PASSWORD 'second-password'")
    with connect(proxy.dsn(user=temp_role, password="second-password")) as c:
        assert c.execute("SELECT current_user").fetchone() == (temp_role,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(proxy.dsn(user=temp_role, password="first-password"))


def test_password_change_with_cache(scram_proxy, admin, temp_role):
    """A cached verifier that no longer works is dropped after one failure."""
    proxy = scram_proxy(auth={"verifier_cache_ttl": "1h"})
    with connect(proxy.dsn(user=temp_role, password="first-password")) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    admin.execute(f"ALTER ROLE {temp_role} PASSWORD 'second-password'")
    # The old password still matches the cached verifier, but PostgreSQL
    # announces the new salt: refused cleanly, and the entry is dropped.
    with pytest.raises(psycopg.OperationalError, match="verifier changed"):
        connect(proxy.dsn(user=temp_role, password="first-password"))
    with connect(proxy.dsn(user=temp_role, password="second-password")) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_wrong_catalog_password(shop, pgcloak, certs):
    proxy = pgcloak(**scram_config(catalog={"password": "not-the-password"}))
    with _tls_wire(proxy.host, proxy.port, certs) as w:
        with pytest.raises(pgwire.PgError) as ei:
            w.startup("scram_user", "app", PASSWORDS["scram_user"])
    assert ei.value.sqlstate == "08006"
    assert "catalog connection" in ei.value.message
    with pytest.raises(psycopg.OperationalError, match="catalog connection to PostgreSQL failed"):
        connect(proxy.dsn())
    assert _log_has(proxy, 'password authentication failed for user "pgcloak"')
    assert "not-the-password" not in proxy.log()
    assert proxy.alive()


def test_catalog_password_file(shop, pgcloak, workroot):
    path = os.path.join(workroot, "catalog.pass")
    with open(path, "w") as f:
        f.write(SHOP_PASSWORDS["pgcloak"] + "\n")
    cfg = scram_config()
    cfg["catalog"] = {"user": "pgcloak", "password_file": path}
    proxy = pgcloak(**cfg)
    with connect(proxy.dsn(channel_binding="require")) as c:
        assert c.execute("SELECT current_user").fetchone() == ("scram_user",)


def test_upstream_verify_full(scram_proxy, certs):
    proxy = scram_proxy(upstream={"sslmode": "verify-full", "sslrootcert": certs.ca_crt, "host": "127.0.0.1"})
    with connect(proxy.dsn(channel_binding="require")) as c:
        assert c.execute(UPSTREAM_SSL).fetchone() == (True,)


def test_upstream_plain(scram_proxy):
    """Plain upstream: pgcloak uses SCRAM-SHA-256 towards PostgreSQL."""
    proxy = scram_proxy(upstream={"sslmode": "disable"})
    with connect(proxy.dsn(channel_binding="require")) as c:
        assert c.execute(UPSTREAM_SSL).fetchone() == (False,)
    assert _log_has(proxy, "PostgreSQL accepted user \"scram_user\" (SCRAM-SHA-256)")


def test_cancel_works(scram_proxy):
    """Cancel keys are handed out as in passthrough mode."""
    proxy = scram_proxy()
    with connect(proxy.dsn()) as c:
        t = threading.Timer(0.5, c.cancel)
        t.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(10)")
        t.join()
        assert c.execute("SELECT 1").fetchone() == (1,)


# -- real drivers ---------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))


def _driver_env(client_env, host, port, certs):
    env = dict(client_env)
    env.update(PGC_HOST=host, PGC_PORT=str(port), PGC_USER="scram_user", PGC_PASSWORD=PASSWORDS["scram_user"],
               PGC_DB="app", PGC_CA=certs.ca_crt)
    return env


def _run_client(cmd, env, cwd=None):
    import json
    p = subprocess.run(cmd, env=env, cwd=cwd, timeout=120, capture_output=True, text=True)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout}\n{p.stderr}"
    return json.loads(p.stdout)


def test_psycopg_driver(scram_proxy, pg, certs, client_env):
    proxy = scram_proxy()
    cmd = [sys.executable, os.path.join(HERE, "clients", "psycopg_client.py")]
    direct = _run_client(cmd, _driver_env(client_env, "localhost", pg.port, certs))
    via = _run_client(cmd, _driver_env(client_env, "localhost", proxy.port, certs))
    assert via["tls"] is True and via["identity"] == [{"u": "scram_user", "d": "app"}]
    assert via == direct


def test_node_postgres_driver(scram_proxy, pg, certs, client_env):
    node_dir = os.path.join(HERE, "node")
    if not os.path.isdir(os.path.join(node_dir, "node_modules", "pg")):
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir, timeout=300,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    proxy = scram_proxy()
    cmd = ["node", os.path.join(node_dir, "pg_client.js")]
    direct = _run_client(cmd, _driver_env(client_env, "127.0.0.1", pg.port, certs), cwd=node_dir)
    via = _run_client(cmd, _driver_env(client_env, "127.0.0.1", proxy.port, certs), cwd=node_dir)
    assert via["tls"] is True and via["identity"] == [{"u": "scram_user", "d": "app"}]
    assert via == direct
    # node-postgres picks SCRAM-SHA-256-PLUS when offered over TLS.
    assert _log_has(proxy, "client proved user \"scram_user\"'s SCRAM secret (SCRAM-SHA-256")


# -- configuration ----------------------------------------------------------------

def test_check_config_reports_lines(workroot):
    path = os.path.join(workroot, "bad-auth.yaml")
    with open(path, "w") as f:
        f.write("auth:\n"
                "  mode: scram\n"
                "  verifier_ttl: 5s\n"
                "catalog:\n"
                "  user: pgcloak\n")
    p = subprocess.run([pgcloak_bin(), "--check-config", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert f'{path}:3:3: unknown key "verifier_ttl" in auth' in p.stderr, p.stderr
    # Points at the catalog section, which lacks the password.
    assert f"{path}:5:3: auth.mode scram needs a password for the catalog login" in p.stderr, p.stderr
    with open(path, "w") as f:
        f.write("auth:\n  mode: kerberos\n")
    p = subprocess.run([pgcloak_bin(), "--check-config", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert f'{path}:2:9: auth.mode must be one of passthrough, scram, not "kerberos"' in p.stderr, p.stderr
    with open(path, "w") as f:
        f.write("auth:\n  mode: scram\ncatalog:\n  password: x\n")
    p = subprocess.run([pgcloak_bin(), "--check-config", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
