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


# --- output masking (docs/masking.md) ----------------------------------------------


def wire_rows(cur) -> list[tuple]:
    res = cur.pgresult
    return [tuple(res.get_value(r, c) for c in range(res.nfields)) for r in range(res.ntuples)]


@pytest.mark.parametrize("role,columns", [
    ("support", "id, full_name, email, phone, card_number, notes, ssn"),
    ("analyst", "id, email, phone, notes"),
])
def test_output_masking_gives_what_the_sql_masks_give(masked_proxy, raw_values, role, columns):
    """A plain SELECT of masked columns is masked by pgcloak in the result rows
    (hash, email, partial, last4, redact_patterns); a predicate on them makes
    PostgreSQL compute the masks instead. Both must give the same bytes."""
    with connect(masked_proxy, role) as c:
        wait_for_masking(c)
        cur = c.cursor()
        # Simple protocol (no parameters): output masking applies.
        cur.execute(f"SELECT {columns} FROM customers WHERE id <= 300 ORDER BY id")
        in_rows = wire_rows(cur)
        ftables = [cur.pgresult.ftable(i) for i in range(cur.pgresult.nfields)]
        # The same rows with the masks computed in SQL: email is in the
        # predicate, so the statement is not eligible.
        cur.execute(f"SELECT {columns} FROM customers WHERE id <= 300 AND (email IS NULL OR email IS NOT NULL) "
                    "ORDER BY id")
        in_sql = wire_rows(cur)
        sql_ftables = [cur.pgresult.ftable(i) for i in range(cur.pgresult.nfields)]
        # Extended protocol: never output masking.
        cur.execute(f"SELECT {columns} FROM customers WHERE id <= %s ORDER BY id", (300,))
        extended = [tuple(None if v is None else str(v).encode() for v in row) for row in cur.fetchall()]
    assert len(in_rows) == 300
    assert in_rows == in_sql
    assert [r[1:] for r in in_rows] == [r[1:] for r in extended]
    # Output-masked columns keep their origin in RowDescription (PostgreSQL
    # reports it for the raw column); SQL masks are expressions without one.
    masked_here = [i for i, (a, b) in enumerate(zip(ftables, sql_ftables)) if a != b]
    assert [columns.split(", ")[i] for i in masked_here] == \
        [c for c in columns.split(", ") if c in ("email", "phone", "card_number", "notes")][:len(masked_here)]
    assert masked_here
    decoded = [tuple(None if v is None else v.decode() for v in row) for row in in_rows]
    assert_no_leak(decoded, raw_values)
    assert "backstop" not in masked_proxy.log()


def test_output_masking_off_unless_utf8(masked_proxy, raw_values):
    """Rows in another client encoding would hash differently from the SQL
    masks: pgcloak leaves those statements to PostgreSQL."""
    with connect(masked_proxy, "analyst") as c:
        wait_for_masking(c)
        cur = c.cursor()
        cur.execute("SELECT id, email FROM customers WHERE id <= 50 ORDER BY id")
        utf8 = wire_rows(cur)
        cur.execute("SET client_encoding = 'LATIN1'")
        cur.execute("SELECT id, email FROM customers WHERE id <= 50 ORDER BY id")
        latin1 = wire_rows(cur)
        assert cur.pgresult.ftable(1) == 0  # the SQL mask, an expression
        cur.execute("RESET client_encoding")
        cur.execute("SELECT id, email FROM customers WHERE id <= 50 ORDER BY id")
        assert cur.pgresult.ftable(1) != 0  # back to output masking
        assert wire_rows(cur) == utf8
    assert utf8 == latin1
    assert_no_leak([tuple(v.decode() for v in r if v is not None) for r in utf8], raw_values)


def test_output_masking_fails_closed_when_columns_do_not_match(masked_proxy, shop, raw_values):
    """A temporary table shadowing customers makes PostgreSQL read another
    relation than the one pgcloak planned for: the result columns do not
    carry the expected origin, and pgcloak sends no row at all."""
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        c.execute("CREATE TEMP TABLE customers (id bigint, full_name text, email text, phone text, ssn text, "
                  "card_number text, birth_date date, address text, notes text, created_at timestamptz)")
        c.execute("INSERT INTO customers (id, email) VALUES (1, 'temp@example.com')")
        cur = c.cursor()
        with pytest.raises(psycopg.errors.InternalError_) as e:
            cur.execute("SELECT * FROM customers")
            wire_rows(cur)
        assert "could not match the result columns" in str(e.value)
        cur.execute("SELECT 1")  # the session goes on
        assert cur.fetchone() == (1,)
    assert "output masking: PostgreSQL reported 0 of the 4" in masked_proxy.log()


# A statement that means different things with and without standard strings:
# with standard_conforming_strings off, PostgreSQL reads '\' ,' as one
# string and runs the subquery; with it on (libpg_query, and PostgreSQL by
# default) the subquery is inside the second string.
LEXING_TRICK = r"SELECT '\' ,' , (SELECT email FROM customers ORDER BY id LIMIT 1) AS leak, ' AS z --'"


def test_string_syntax_cannot_be_switched_for_masked_roles(masked_proxy, shop, raw_values):
    with connect(masked_proxy, "support") as c:
        wait_for_masking(c)
        row = c.execute(LEXING_TRICK).fetchone()  # standard strings: two constants
        assert len(row) == 2
        assert_no_leak([row], raw_values)
        for sql in ("SET standard_conforming_strings = off", "RESET standard_conforming_strings",
                    "SELECT set_config('standard_conforming_strings', 'off', false)",
                    "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
        assert c.execute("SHOW standard_conforming_strings").fetchone()[0] == "on"
    with pytest.raises(psycopg.OperationalError) as e:
        _connect(masked_proxy, "support", options="-c standard_conforming_strings=off")
    assert "startup setting" in str(e.value)
    # A default an administrator set: the session starts with it off, and
    # pgcloak refuses its statements instead of misreading them.
    with shop.admin() as adm:
        adm.execute("ALTER ROLE support SET standard_conforming_strings = off")
    try:
        with connect(masked_proxy, "support") as c:
            for sql in (LEXING_TRICK, "SELECT id FROM customers LIMIT 1", "SELECT 1"):
                with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
                    c.execute(sql)
                assert "standard_conforming_strings = on" in str(e.value)
        # Unmasked roles are not concerned.
        with shop.admin() as adm:
            adm.execute("ALTER ROLE admin SET standard_conforming_strings = off")
        with connect(masked_proxy, "admin") as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        with shop.admin() as adm:
            adm.execute("ALTER ROLE support RESET standard_conforming_strings")
            adm.execute("ALTER ROLE admin RESET standard_conforming_strings")
