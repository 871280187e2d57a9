"""upstream.pool: with auth.mode scram pgcloak keeps a PostgreSQL connection
whose client left cleanly, resets it with DISCARD ALL and hands it to the
next client of the same role, database and startup parameters (README,
"upstream.pool"). What must hold: nothing of one session survives into the
next, a connection that is not clean is never reused, cancel keys never
reach across sessions, dead or expired connections are dropped."""

import re
import subprocess
import urllib.request
import uuid

import psycopg
import pytest

import pgwire
from clients import connect
from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides, wait_for_masking
from masking_fixture import connect as masked_connect
from pgcluster import PASSWORDS
from proxy import pgcloak_bin
from shop import SHOP_PASSWORDS
from util import pg_tool, wait_for

PID = "SELECT pg_backend_pid()"


def pool_config(**pool) -> dict:
    return {
        "upstream": {"sslmode": "require", "pool": {"enabled": True, **pool}},
        "auth": {"mode": "scram", "auth_dbname": "shop"},
        "catalog": {"user": "pgcloak", "password": SHOP_PASSWORDS["pgcloak"]},
        "log": {"level": "debug"},
    }


@pytest.fixture
def pooled(shop, pgcloak):
    """Factory: a pgcloak in scram mode with upstream.pool on."""
    def start(**pool):
        return pgcloak(**pool_config(**pool))
    return start


def metric(proxy, name: str, **labels) -> float:
    body = urllib.request.urlopen(proxy.metrics_url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in body.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def backend_pid(proxy, **kw) -> int:
    with connect(proxy.dsn(**kw)) as c:
        return c.execute(PID).fetchone()[0]


def backend_alive(admin, pid: int) -> bool:
    return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()[0] == 1


def test_backend_is_reused_with_its_state_reset(pooled, admin):
    proxy = pooled()
    with connect(proxy.dsn(application_name="pool-state")) as c:
        first = c.execute(PID).fetchone()[0]
        c.execute("SET work_mem = '77MB'")
        c.execute("SET TimeZone = 'Asia/Tokyo'")
        c.execute("SELECT set_config('pgcloak_test.marker', 'left-behind', false)")
        c.execute("CREATE TEMP TABLE left_behind (secret text)")
        c.execute("INSERT INTO left_behind VALUES ('from the first client')")
        c.execute("PREPARE left_plan AS SELECT 1")
        c.execute("SELECT pg_advisory_lock(4242)")
        c.execute("LISTEN pool_channel")
        c.execute("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
        assert c.execute("SHOW TimeZone").fetchone()[0] == "Asia/Tokyo"
    # The backend is parked after DISCARD ALL; its advisory lock is gone at
    # once, not when the next client comes.
    wait_for(lambda: admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0,
             10, what="the advisory lock released by the reset")
    assert backend_alive(admin, first)

    with connect(proxy.dsn(application_name="pool-state")) as c:
        assert c.execute(PID).fetchone()[0] == first, "the parked backend was not reused"
        # What the client was told at start-up is the reset state, not the
        # previous client's.
        assert c.info.parameter_status("TimeZone") != "Asia/Tokyo"
        assert c.execute("SHOW TimeZone").fetchone()[0] != "Asia/Tokyo"
        assert c.execute("SHOW work_mem").fetchone()[0] != "77MB"
        assert c.execute("SELECT current_setting('pgcloak_test.marker', true)").fetchone()[0] in (None, "")
        assert c.execute("SELECT count(*) FROM pg_class WHERE relname = 'left_behind'").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_cursors").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM pg_listening_channels()").fetchone()[0] == 0
        assert c.execute("SELECT current_user, session_user").fetchone() == ("scram_user", "scram_user")
    assert metric(proxy, "pgcloak_upstream_connections_total", source="pool") >= 1
    assert metric(proxy, "pgcloak_upstream_connections_total", source="new") >= 1
    assert "upstream=pooled" in proxy.log()


def test_sessions_that_did_not_end_cleanly_are_not_reused(pooled, admin):
    proxy = pooled()
    # Inside a transaction block.
    with connect(proxy.dsn(application_name="pool-dirty")) as c:
        c.autocommit = False
        dirty = c.execute(PID).fetchone()[0]
        c.execute("CREATE TEMP TABLE mid_transaction (a int)")
        c.close()  # psycopg sends Terminate without ending the transaction
    wait_for(lambda: not backend_alive(admin, dirty), 10, what="the backend of a session left in a transaction to exit")
    assert backend_pid(proxy, application_name="pool-dirty") != dirty

    # An extended-protocol batch without its Sync: PostgreSQL may be skipping
    # messages until that Sync, so the connection cannot be reset.
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup("scram_user", "app", PASSWORDS["scram_user"], params={"application_name": "pool-dirty"})
        rows = pgwire.rows(w.simple_query(PID))
        unsynced = int(rows[0][0])
        w.send(pgwire.parse("SELECT 1/0") + pgwire.bind() + pgwire.execute() + pgwire.flush())
        assert w.read_message(timeout=10).type == b"1"  # ParseComplete
        w.send(pgwire.terminate())
        w.read_until_eof(timeout=10)  # BindComplete and the division error may still come
    wait_for(lambda: not backend_alive(admin, unsynced), 10, what="the backend with an unsynced batch to exit")

    # A client that vanishes mid-statement.
    app = f"pool-vanish-{uuid.uuid4().hex[:6]}"
    w = pgwire.PgWire(proxy.host, proxy.port)
    w.startup("scram_user", "app", PASSWORDS["scram_user"], params={"application_name": app})
    w.send(pgwire.query("SELECT pg_sleep(0.5)"))
    vanished = wait_for(lambda: admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                              [app]).fetchone(), 10, what="the sleeping backend")[0]
    w.close()
    wait_for(lambda: not backend_alive(admin, vanished), 15, what="the backend of a vanished client to exit")


def test_a_client_that_disconnects_while_idle_leaves_a_reusable_backend(pooled):
    proxy = pooled()
    w = pgwire.PgWire(proxy.host, proxy.port)
    w.startup("scram_user", "app", PASSWORDS["scram_user"], params={"application_name": "pool-eof"})
    first = int(pgwire.rows(w.simple_query(PID))[0][0])
    w.close()  # EOF without Terminate
    wait_for(lambda: metric(proxy, "pgcloak_upstream_pool_idle") >= 1, 10, what="the backend parked")
    assert backend_pid(proxy, application_name="pool-eof") == first


def test_pool_key_is_role_database_and_every_startup_parameter(pooled, admin):
    proxy = pooled()
    a = backend_pid(proxy, application_name="pool-key-a")
    wait_for(lambda: metric(proxy, "pgcloak_upstream_pool_idle") >= 1, 10, what="the backend parked")
    # Another application_name, another set of options, another database:
    # never the parked backend.
    assert backend_pid(proxy, application_name="pool-key-b") != a
    assert backend_pid(proxy, application_name="pool-key-a", options="-c work_mem=5MB") != a
    with connect(proxy.dsn(application_name="pool-key-a", options="-c work_mem=5MB")) as c:
        assert c.execute("SHOW work_mem").fetchone()[0] == "5MB"
    # Another role, another database: never the parked backend either.
    shop_admin = dict(user="admin", dbname="shop", password=SHOP_PASSWORDS["admin"], application_name="pool-key-a")
    b = backend_pid(proxy, **shop_admin)
    assert b != a
    with connect(proxy.dsn(**shop_admin)) as c:
        assert c.execute("SELECT current_user, current_database()").fetchone() == ("admin", "shop")
        assert c.execute(PID).fetchone()[0] == b
    assert backend_pid(proxy, application_name="pool-key-a") == a


def test_cancel_keys_do_not_reach_across_pooled_sessions(pooled, admin):
    proxy = pooled()
    w1 = pgwire.PgWire(proxy.host, proxy.port)
    s1 = w1.startup("scram_user", "app", PASSWORDS["scram_user"], params={"application_name": "pool-cancel"})
    w1.send(pgwire.terminate())
    w1.read_until_eof(timeout=10)
    w1.close()
    wait_for(lambda: metric(proxy, "pgcloak_upstream_pool_idle") >= 1, 10, what="the backend parked")

    with pgwire.PgWire(proxy.host, proxy.port) as w2:
        s2 = w2.startup("scram_user", "app", PASSWORDS["scram_user"], params={"application_name": "pool-cancel"})
        assert (s2.backend_pid, s2.backend_key) != (s1.backend_pid, s1.backend_key)
        def sleep_then_cancel(seconds, key) -> list[dict]:
            w2.send(pgwire.query(f"SELECT pg_sleep({seconds})"))
            wait_for(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                           "'pool-cancel' AND query = %s AND state = 'active'",
                                           [f"SELECT pg_sleep({seconds})"]).fetchone()[0] == 1,
                     10, what=f"pg_sleep({seconds}) running")
            with pgwire.PgWire(proxy.host, proxy.port) as c:
                c.send(pgwire.cancel_request(*key))
                assert c.read_until_eof(timeout=10) == b""
            return [pgwire.parse_error_fields(m.body) for m in w2.read_until_ready(timeout=40) if m.type == b"E"]

        # The first session's key must not cancel the second session's
        # statement on the same backend; its own key does.
        assert sleep_then_cancel(1.5, (s1.backend_pid, s1.backend_key)) == [], \
            "the old session's cancel key cancelled the new session"
        errors = sleep_then_cancel(30, (s2.backend_pid, s2.backend_key))
        assert errors and errors[0]["C"] == "57014", errors


def test_dead_and_idle_connections_are_dropped(pooled, admin):
    proxy = pooled(idle_timeout="2s")
    first = backend_pid(proxy, application_name="pool-dead")
    wait_for(lambda: metric(proxy, "pgcloak_upstream_pool_idle") >= 1, 10, what="the backend parked")
    # PostgreSQL ends the parked backend (a restart, an administrator): the
    # next client gets a working new one, not an error.
    admin.execute("SELECT pg_terminate_backend(%s)", [first])
    wait_for(lambda: not backend_alive(admin, first), 10, what="the terminated backend to exit")
    with connect(proxy.dsn(application_name="pool-dead")) as c:
        second = c.execute(PID).fetchone()[0]
        assert second != first
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert metric(proxy, "pgcloak_upstream_pool_closed_total", reason="broken") >= 1
    # Idle past idle_timeout: closed by the sweeper, so PostgreSQL does not
    # keep backends nobody uses.
    wait_for(lambda: not backend_alive(admin, second), 15, what="the idle backend to be closed")
    assert metric(proxy, "pgcloak_upstream_pool_closed_total", reason="expired") >= 1
    assert metric(proxy, "pgcloak_upstream_pool_idle") == 0


def test_shutdown_closes_parked_connections(pooled, admin):
    proxy = pooled()
    pid = backend_pid(proxy, application_name="pool-shutdown")
    wait_for(lambda: metric(proxy, "pgcloak_upstream_pool_idle") >= 1, 10, what="the backend parked")
    proxy.expect_exit = True
    assert proxy.terminate() == 0
    wait_for(lambda: not backend_alive(admin, pid), 15, what="the parked backend to be closed at shutdown")


def test_pool_under_pgbench_reuses_backends(pooled, client_env, tmp_path):
    proxy = pooled()
    env = dict(client_env, PGPASSWORD=PASSWORDS["scram_user"], PGSSLMODE="require")
    with connect(proxy.dsn()) as c:
        c.execute("DROP TABLE IF EXISTS pool_t")
        c.execute("CREATE TABLE pool_t AS SELECT g AS id FROM generate_series(1, 100) g")
    script = tmp_path / "pool.sql"
    script.write_text("\\set id random(1, 100)\nSELECT id FROM pool_t WHERE id = :id;\n")
    args = [pg_tool("pgbench"), "-n", "-f", str(script), "-c", "4", "-j", "2", "-t", "50", "-C",
            "-h", proxy.host, "-p", str(proxy.port), "-U", "scram_user", "app"]
    # -C: a new connection per transaction, the pool's best case.
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "number of failed transactions: 0" in p.stdout
    reused = metric(proxy, "pgcloak_upstream_connections_total", source="pool")
    new = metric(proxy, "pgcloak_upstream_connections_total", source="new")
    # 200 sessions from 4 clients at a time: most on parked backends.
    assert reused >= 150, (reused, new)
    assert new <= 50, (reused, new)


def test_pool_needs_scram_mode(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstream:\n  host: 127.0.0.1\n  pool:\n    enabled: true\n")
    p = subprocess.run([pgcloak_bin(), "--check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "c.yaml:4:" in p.stderr, p.stderr  # the enabled: line
    assert "upstream.pool.enabled needs auth.mode scram" in p.stderr


def test_masking_holds_on_pooled_backends(shop, pgcloak, monkeypatch):
    """A pooled backend serves only its own role, and each session is masked
    by pgcloak for its login whether its backend is new or reused."""
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    proxy = pgcloak(**{**pool_config(), **masking_overrides(shop.dbname)})
    with shop.admin() as c:
        raw = {r[0] for r in c.execute("SELECT email FROM customers WHERE email IS NOT NULL")}
    query = "SELECT pg_backend_pid(), email FROM customers WHERE email IS NOT NULL ORDER BY id LIMIT 50"

    def read(user):
        with masked_connect(proxy, user) as c:
            wait_for_masking(c)
            rows = c.execute(query).fetchall()
            # What one session leaves behind must not reach the next one.
            c.execute("SET search_path = pg_temp, public")
            c.execute("CREATE TEMP TABLE IF NOT EXISTS left_behind AS SELECT 1 AS x")
        pids = {r[0] for r in rows}
        assert len(pids) == 1
        return pids.pop(), [r[1] for r in rows]

    admin_pid, admin_emails = read("admin")
    assert set(admin_emails) <= raw  # admins: unmasked
    support_pid, support_emails = read("support")
    assert support_pid != admin_pid
    assert not set(support_emails) & raw and all("@" in e and "*" in e for e in support_emails)
    for _ in range(3):
        wait_for(lambda: metric(proxy, "pgcloak_upstream_pool_idle") >= 2, 10, what="both backends parked")
        pid, emails = read("support")
        assert pid == support_pid, "the support backend was not reused"
        assert emails == support_emails, "masking changed on a reused backend"
        pid, emails = read("admin")
        assert pid == admin_pid
        assert emails == admin_emails
    with masked_connect(proxy, "support") as c:
        assert c.execute("SELECT pg_backend_pid()").fetchone()[0] == support_pid
        assert c.execute("SHOW search_path").fetchone()[0] == '"$user", public'

        def temp_tables():
            # Refused (55000) while pgcloak's catalog refreshes after the
            # CREATE TEMP TABLE above: retry.
            try:
                return c.execute("SELECT count(*) FROM pg_class WHERE relname = 'left_behind'").fetchone()
            except psycopg.errors.ObjectNotInPrerequisiteState:
                return None
        assert wait_for(temp_tables, 15, what="the catalog check")[0] == 0
