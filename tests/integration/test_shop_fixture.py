"""The shared shop fixture (deploy/fixture/shop.sql, loaded by
deploy/fixture/load.sh): row counts, the view and the partitions, the demo
logins and their group graph, pgcloak.get_auth, and deterministic data.
Everything here talks to PostgreSQL directly; no pgcloak process."""

import psycopg
import pytest

from pgwire import AUTH_OK, AUTH_SASL, AUTH_SASL_FINAL, PgError, PgWire
from shop import SHOP_GROUPS, SHOP_MEMBERSHIPS, SHOP_PASSWORDS, SHOP_SQL, drop_database, load_shop
from util import run

LOGINS = sorted(SHOP_PASSWORDS)

EMAIL_RE = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def test_row_counts_at_scale_1(shop):
    with shop.admin() as c:
        assert one(c, "SELECT count(*) FROM customers") == 10_000
        assert one(c, "SELECT count(*) FROM orders") >= 50_000
        assert one(c, "SELECT count(*) FROM payments") >= 20_000
        # Every order and payment belongs to an existing customer.
        assert one(c, "SELECT count(*) FROM orders o LEFT JOIN customers c ON c.id = o.customer_id "
                      "WHERE c.id IS NULL") == 0
        assert one(c, "SELECT count(*) FROM payments p LEFT JOIN customers c ON c.id = p.customer_id "
                      "WHERE c.id IS NULL") == 0


def test_payments_is_partitioned_by_month(shop):
    with shop.admin() as c:
        assert one(c, "SELECT relkind FROM pg_class WHERE oid = 'public.payments'::regclass") == "p"
        parts = dict(c.execute("""
            SELECT p.relname, pg_get_expr(p.relpartbound, p.oid)
            FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhrelid
            WHERE i.inhparent = 'public.payments'::regclass""").fetchall())
        assert parts.pop("payments_default") == "DEFAULT"
        assert len(parts) == 24 and "payments_2025_01" in parts and "payments_2026_12" in parts
        used = c.execute("SELECT tableoid::regclass::text, count(*) FROM payments GROUP BY 1").fetchall()
        assert len(used) >= 12, used
        # The monthly partitions cover every generated row.
        assert "payments_default" not in dict(used)
        pk = one(c, "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'public.payments'::regclass AND contype = 'p'")
        assert pk == "PRIMARY KEY (id, paid_at)"


def test_customer_contacts_view(shop):
    with shop.connect("support") as c:
        cur = c.execute("SELECT * FROM customer_contacts ORDER BY id LIMIT 3")
        assert [d.name for d in cur.description] == ["id", "full_name", "email", "phone"]
        assert len(cur.fetchall()) == 3
    with shop.admin() as c:
        assert one(c, "SELECT relkind FROM pg_class WHERE oid = 'public.customer_contacts'::regclass") == "v"


@pytest.mark.parametrize("user", LOGINS)
def test_login_with_scram(shop, user):
    # libpq (psycopg), over TLS as clients normally connect.
    with shop.connect(user) as c:
        assert one(c, "SELECT current_user") == user
    # The raw client proves the method: the server asked for SASL and its
    # final message carried a valid server signature for this password.
    with PgWire(shop.cluster.host, shop.cluster.port) as w:
        res = w.startup(user, shop.dbname, password=SHOP_PASSWORDS[user])
        assert res.auth_methods[0] == AUTH_SASL and res.auth_methods[-1] == AUTH_OK
        assert AUTH_SASL_FINAL in res.auth_methods
        assert "SCRAM-SHA-256" in res.sasl_mechanisms
    with shop.admin() as c:
        assert one(c, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)).startswith(
            "SCRAM-SHA-256$4096:")


def test_wrong_password_is_refused(shop):
    with PgWire(shop.cluster.host, shop.cluster.port) as w:
        with pytest.raises(PgError) as e:
            w.startup("analyst", shop.dbname, password="analyst-demo-pw")
        assert e.value.sqlstate == "28P01"


def test_no_fixture_role_is_privileged(shop):
    with shop.admin() as c:
        rows = c.execute("""
            SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin
            FROM pg_roles WHERE rolname = ANY(%s)""", (LOGINS + list(SHOP_GROUPS),)).fetchall()
    assert len(rows) == len(LOGINS) + len(SHOP_GROUPS)
    for name, sup, createrole, createdb, repl, bypass, canlogin in rows:
        assert not (sup or createrole or createdb or repl or bypass), name
        assert canlogin == (name in SHOP_PASSWORDS), name


def test_group_graph(shop):
    with shop.admin() as c:
        direct = set(c.execute("""
            SELECT m.rolname, g.rolname FROM pg_auth_members am
            JOIN pg_roles m ON m.oid = am.member JOIN pg_roles g ON g.oid = am.roleid
            WHERE m.rolname = ANY(%s)""", (LOGINS + list(SHOP_GROUPS),)).fetchall())
        assert direct == SHOP_MEMBERSHIPS
        # analyst is in analytics_team only through bi_readers.
        assert one(c, "SELECT pg_has_role('analyst', 'analytics_team', 'MEMBER')") is True
        assert ("analyst", "analytics_team") not in direct
        assert one(c, "SELECT pg_has_role('analyst', 'support_team', 'MEMBER')") is False
        # pgcloak belongs to no group.
        assert not [m for m in direct if m[0] == "pgcloak"]


def test_privileges_come_from_groups(shop):
    with shop.connect("analyst") as c:  # through bi_readers -> analytics_team
        assert one(c, "SELECT count(*) FROM customers") == 10_000
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM orders WHERE id = -1")
    with shop.connect("app") as c:
        with c.transaction(force_rollback=True):
            c.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
    with shop.connect("pgcloak") as c:
        assert one(c, "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'customers'") >= 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT 1 FROM customers LIMIT 1")


def test_get_auth(shop):
    with shop.connect("pgcloak") as c:
        rows = c.execute("SELECT usename, passwd FROM pgcloak.get_auth('support')").fetchall()
        assert len(rows) == 1 and rows[0][0] == "support"
        assert rows[0][1].startswith("SCRAM-SHA-256$"), rows
        # Never a superuser's secret, nor a group's.
        assert c.execute("SELECT * FROM pgcloak.get_auth('postgres')").fetchall() == []
        assert c.execute("SELECT * FROM pgcloak.get_auth('analytics_team')").fetchall() == []
        # And pgcloak cannot read pg_authid itself.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT rolpassword FROM pg_authid")
    with shop.connect("analyst") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM pgcloak.get_auth('support')")
    with shop.admin() as c:
        owner, secdef, config, acl = c.execute("""
            SELECT proowner, prosecdef, proconfig, proacl::text[] FROM pg_proc
            WHERE oid = 'pgcloak.get_auth(text)'::regprocedure""").fetchone()
        assert owner == 10 and secdef is True
        assert config == ["search_path=pg_catalog, pg_temp"]
        assert not [a for a in acl if a.startswith("=")], acl  # nothing for PUBLIC
        for role in ("support", "analyst", "admin", "app"):
            assert one(c, "SELECT has_function_privilege(%s, 'pgcloak.get_auth(text)', 'EXECUTE')",
                       (role,)) is False, role


def test_notes_sometimes_contain_contact_details(shop):
    with shop.admin() as c:
        total, email, phone, card, null = c.execute(f"""
            SELECT count(*),
                   count(*) FILTER (WHERE notes ~ '{EMAIL_RE}'),
                   count(*) FILTER (WHERE notes ~ '\\+1-555-0[0-9]{{2}}-[0-9]{{4}}'),
                   count(*) FILTER (WHERE notes ~ '[0-9]{{4}}[- ][0-9]{{4}}[- ][0-9]{{4}}[- ][0-9]{{4}}'),
                   count(*) FILTER (WHERE notes IS NULL)
            FROM customers""").fetchone()
    assert 0.17 <= email / total <= 0.23, email
    assert phone > 0.05 * total and card > 0.02 * total and null > 0.05 * total
    with shop.admin() as c:
        assert one(c, "SELECT count(*) FROM customers WHERE phone IS NULL") == 10_000 // 37


def test_values_look_realistic(shop):
    with shop.admin() as c:
        bad = c.execute(r"""
            SELECT id FROM customers WHERE
                 email !~ '^[a-z]+\.[a-z]+[0-9]+@[a-z.]+$'
              OR phone !~ '^\+1-555-0[0-9]{2}-[0-9]{4}$'
              OR ssn !~ '^[0-9]{3}-[0-9]{2}-[0-9]{4}$'
              OR card_number !~ '^[0-9]{4}-[0-9]{4}-[0-9]{4}-[0-9]{4}$'
              OR birth_date NOT BETWEEN '1940-01-01' AND '2005-12-31'
            LIMIT 5""").fetchall()
        assert bad == []
        assert one(c, "SELECT count(*) FROM customers WHERE card_number LIKE '4242%'") > 1000
        cards = [r[0] for r in c.execute("SELECT card_number FROM customers WHERE card_number IS NOT NULL "
                                         "ORDER BY id LIMIT 500")]
    assert all(luhn_ok(x) for x in cards)


def luhn_ok(card: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed([d for d in card if d.isdigit()])):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


TABLE_DIGESTS = {
    "customers": "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM customers t",
    "orders": "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM orders t",
    "payments": "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM payments t",
}


def digests(conn) -> dict:
    return {k: one(conn, q) for k, q in TABLE_DIGESTS.items()}


def test_data_is_deterministic(shop):
    copy = load_shop(shop.cluster, "shop_copy", scale=1, recreate=True)
    try:
        with shop.admin() as a, copy.admin() as b:
            first, second = digests(a), digests(b)
    finally:
        drop_database(shop.cluster, "shop_copy")
    assert first == second
    # Guard against two identical empty aggregates.
    assert all(v and len(v) == 32 for v in first.values())


def test_scale_must_be_a_number(shop):
    with open(SHOP_SQL, "rb") as f:
        script = f.read()
    p = run(["psql", "-X", "-q", "-h", shop.cluster.sockdir, "-p", str(shop.cluster.port), "-U", "postgres",
             "-d", shop.dbname, "-v", "scale=1; DROP TABLE customers", "-f", "-"], input=script, text=False)
    assert p.returncode != 0
    assert b"scale must be an integer" in p.stderr
    with shop.admin() as c:
        assert one(c, "SELECT count(*) FROM customers") == 10_000

