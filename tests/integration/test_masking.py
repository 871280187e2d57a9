"""Masking end to end: the shop fixture behind pgcloak with the demo policies,
as analyst and support (masked) and admin (unmasked), through psycopg in the
simple and extended protocol, text and binary, cursors and COPY.

The core property: no raw value of a protected column ever reaches a masked
client, in rows, errors or notices; unmasked roles see exactly what
PostgreSQL returns directly."""
from __future__ import annotations

import re

import psycopg
import pytest

from masking_fixture import MASK_KEY, MASK_KEY_ENV, PROTECTED, assert_no_leak, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect


@pytest.fixture(scope="module")
def raw_values(shop):
    """Every protected value in the fixture, for leak checks."""
    with shop.admin() as c:
        rows = c.execute(f"SELECT {', '.join(PROTECTED)} FROM customers").fetchall()
    values = set()
    for row in rows:
        for v in row:
            if v is not None and len(v) >= 6:
                values.add(v)
    return values


@pytest.fixture
def masked_proxy(pgcloak, shop, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    return pgcloak(**masking_overrides(shop.dbname))


def connect(proxy, user, **kw):
    return _connect(proxy, user, dbname="shop", **kw)


def test_support_sees_partial_masks(masked_proxy, shop, raw_values):
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        rows = c.execute("SELECT id, email, phone, card_number, ssn, birth_date FROM customers "
                         "WHERE phone IS NOT NULL ORDER BY id LIMIT 50").fetchall()
    assert len(rows) == 50
    for _, email, phone, card, ssn, birth in rows:
        assert email is None or re.fullmatch(r".\*\*\*@[a-z.]+", email), email
        assert re.fullmatch(r"\*+\d\d", phone), phone
        assert card is None or re.fullmatch(r"\*{4}-\*{4}-\*{4}-\d{4}", card), card
        assert ssn is None or ssn == "***"
        assert birth is None or (birth.month == 1 and birth.day == 1)
    assert_no_leak(rows, raw_values)


def test_analyst_hash_is_deterministic_and_joins(masked_proxy, raw_values):
    with connect(masked_proxy, "analyst") as c:
        wait_for_masking(c)
        a = c.execute("SELECT id, email FROM customers ORDER BY id LIMIT 20").fetchall()
        b = c.execute("SELECT c1.id, c2.email FROM customers c1 JOIN customers c2 ON c1.email = c2.email "
                      "ORDER BY c1.id LIMIT 20").fetchall()
    assert a == b
    assert all(e is None or re.fullmatch(r"[0-9a-f]{16}", e) for _, e in a)
    assert_no_leak(a, raw_values)


def test_predicates_see_only_masked_values(masked_proxy, shop):
    with shop.admin() as adm:
        email = adm.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0]
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        # Comparing with the real value finds nothing: WHERE sees the mask.
        assert c.execute("SELECT count(*) FROM customers WHERE email = %s", (email,)).fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM customers WHERE email LIKE %s", (email[:3] + "%",)).fetchone()[0] in (0, )
        # Extended protocol, binary results.
        cur = c.cursor(binary=True)
        cur.execute("SELECT email FROM customers WHERE id = %s", (1,))
        assert cur.fetchone()[0] != email


def test_refusal_is_42501_and_session_continues(masked_proxy):
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("SET ROLE data_admins")
        assert "rule deny:set-role" in str(e.value)
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_refusal_inside_transaction_aborts_it_like_postgres(masked_proxy):
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        c.execute("BEGIN")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT query_to_xml('select 1', true, true, '')")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("SELECT 1")
        c.execute("ROLLBACK")
        assert c.execute("SELECT 1").fetchone()[0] == 1


def test_key_detail_is_scrubbed(masked_proxy):
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        c.execute("CREATE TEMP TABLE seen (e text PRIMARY KEY)")
        c.execute("INSERT INTO seen SELECT email FROM customers WHERE id = 1")
        with pytest.raises(psycopg.errors.UniqueViolation) as e:
            c.execute("INSERT INTO seen SELECT email FROM customers WHERE id = 1")
        assert "pgcloak removed" in e.value.diag.message_detail


def test_admin_results_identical_to_direct(masked_proxy, shop):
    q = "SELECT * FROM customers ORDER BY id LIMIT 200"
    with shop.connect("admin") as d, connect(masked_proxy, "admin") as p:
        wait_for_masking(p)  # until the catalog loads, every session is refused (57P03)
        assert d.execute(q).fetchall() == p.execute(q).fetchall()


def test_copy_and_cursor_are_masked(masked_proxy, raw_values):
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        with c.cursor() as cur:
            with cur.copy("COPY customers (id, email, ssn) TO STDOUT") as cp:
                rows = [r for r in cp.rows()]
        assert len(rows) == 10000
        assert_no_leak(rows, raw_values)
        c.execute("BEGIN")
        c.execute("DECLARE k CURSOR FOR SELECT notes FROM customers")
        fetched = c.execute("FETCH 500 FROM k").fetchall()
        c.execute("COMMIT")
        assert_no_leak(fetched, raw_values)


def test_new_view_through_pgcloak_is_never_read_raw(masked_proxy, shop, raw_values):
    """DDL passing through pgcloak (here by an unmasked admin) marks the
    catalog stale: until the refresh that sees the new view has finished,
    masked sessions are analysed strictly and unknown relations refused
    (55000); afterwards the view is protected. It is never read raw."""
    import time
    with connect(masked_proxy, "admin") as adm, connect(masked_proxy, "analyst") as c:
        wait_for_masking(c)
        adm.execute("DROP VIEW IF EXISTS fresh_contacts")
        adm.execute("CREATE VIEW fresh_contacts AS SELECT id, email FROM customers")
        adm.execute("GRANT SELECT ON fresh_contacts TO analytics_team")
        seen_masked = False
        for _ in range(100):
            try:
                rows = c.execute("SELECT id, email FROM fresh_contacts ORDER BY id LIMIT 20").fetchall()
            except psycopg.errors.ObjectNotInPrerequisiteState:
                time.sleep(0.1)
                continue
            assert_no_leak(rows, raw_values)
            assert all(e is None or re.fullmatch(r"[0-9a-f]{16}", e) for _, e in rows)
            seen_masked = True
            break
        assert seen_masked, "the new view never became readable (masked) within 10 s"
        adm.execute("DROP VIEW fresh_contacts")


def test_startup_settings_cannot_switch_identity_or_print_plans(masked_proxy):
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)  # until the catalog loads every login counts as masked (fail closed)
    for options in ("-c role=data_admins", "-c debug_print_plan=on -c client_min_messages=log"):
        # A FATAL during connection start surfaces as OperationalError.
        with pytest.raises(psycopg.OperationalError) as e:
            _connect(masked_proxy, "support", options=options)
        assert "startup setting" in str(e.value) and "not allowed" in str(e.value)
    # Unmasked logins keep every option.
    with _connect(masked_proxy, "admin", options="-c debug_print_plan=off") as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
