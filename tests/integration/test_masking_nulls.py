"""NULL stays NULL (issue 17): masked roles get the true answers to every
question about NULL-ness, whatever the mask.

A mask hides a value, not whether there is one. With a constant mask that
turned NULL into `***`, the analyst's `count(phone)` said 10,000 where
PostgreSQL says 9,730, and `birth_date IS NULL` matched nothing. Here every
masked column of customers and payments, for analyst and support, is asked
`count(col)`, `col IS NULL`, `count(*) FILTER (WHERE col IS NULL)` and
`coalesce(col, ...)` through pgcloak, and the answers are compared with the
same statements run directly on PostgreSQL as a superuser. Plain reads are
checked byte for byte on the wire: a NULL cell is a DataRow field of length
-1, both where pgcloak masks the result rows itself (output masking) and
where PostgreSQL computes the mask (SQL masking), and in the extended
protocol and COPY.

`mask_nulls: true` (a per-rule option) is the exception for columns whose
NULL-ness is itself sensitive: there NULL reads as the mask's constant.
"""
from __future__ import annotations

import copy
import struct

import psycopg
import pytest

import pgwire
from masking_fixture import MASK_KEY, MASK_KEY_ENV, MASKING, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect
from shop import SHOP_PASSWORDS

# Every protected column of the fixture (masking_fixture.MASKING), with a
# literal of its type that no masked or stored value equals, for coalesce().
COLUMNS = [
    ("customers", "full_name", "'~none~'"),
    ("customers", "email", "'~none~'"),
    ("customers", "phone", "'~none~'"),
    ("customers", "ssn", "'~none~'"),
    ("customers", "card_number", "'~none~'"),
    ("customers", "birth_date", "DATE '0001-01-01'"),
    ("customers", "address", "'~none~'"),
    ("customers", "notes", "'~none~'"),
    ("payments", "card_number", "'~none~'"),
]
ROLES = ["analyst", "support"]

# For each role, the columns pgcloak masks in the result rows of a plain
# SELECT (output masking: hash, partial, email, last4, redact_patterns on
# text columns); the rest are masked in SQL (redact, generalize) or allowed.
OUTPUT_MASKED = {
    "analyst": {("customers", "email")},
    "support": {("customers", "email"), ("customers", "phone"), ("customers", "card_number"),
                ("customers", "notes"), ("payments", "card_number")},
}


def null_questions(table: str, col: str, sentinel: str) -> list[str]:
    """Statements whose answers depend only on which values are NULL."""
    return [
        f"SELECT count({col}) FROM {table}",
        f"SELECT count(*) FROM {table} WHERE {col} IS NULL",
        f"SELECT count(*) FROM {table} WHERE {col} IS NOT NULL",
        f"SELECT count(*) FILTER (WHERE {col} IS NULL), count(*) FILTER (WHERE {col} IS NOT NULL) FROM {table}",
        f"SELECT count(*) FROM {table} WHERE coalesce({col}, {sentinel}) = {sentinel}",
        f"SELECT count(*) FROM {table} WHERE coalesce({col}, {sentinel}) IS DISTINCT FROM {sentinel}",
        f"SELECT {col} IS NULL AS missing, count(*) FROM {table} GROUP BY 1 ORDER BY 1",
        f"SELECT array_agg(id ORDER BY id) FILTER (WHERE {col} IS NULL) FROM "
        f"(SELECT id, {col} FROM {table} ORDER BY id LIMIT 2000) AS s",
    ]


def direct_answers(shop, statements: list[str]) -> dict[str, list[tuple]]:
    with shop.admin() as adm:
        return {q: adm.execute(q).fetchall() for q in statements}


@pytest.fixture
def masked_proxy(pgcloak, shop, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    return pgcloak(**masking_overrides(shop.dbname))


@pytest.fixture(scope="module")
def truth(shop):
    """The NULL counts the fixture promises (deploy/fixture/shop.sql), so the
    comparisons below are not vacuous."""
    with shop.admin() as adm:
        counts = {(t, c): adm.execute(f"SELECT count(*) FILTER (WHERE {c} IS NULL), count(*) FROM {t}").fetchone()
                  for t, c, _ in COLUMNS}
    for (t, c), (nulls, total) in counts.items():
        if (t, c) not in (("customers", "full_name"), ("customers", "email")):
            assert 0 < nulls < total, (t, c, nulls, total)
    return counts


# --- SQL masking: predicates and aggregates see NULL as NULL -----------------------------


@pytest.mark.parametrize("role", ROLES)
def test_null_questions_get_the_true_answers(masked_proxy, shop, truth, role):
    statements = [q for t, c, s in COLUMNS for q in null_questions(t, c, s)]
    want = direct_answers(shop, statements)
    wrong = []
    with _connect(masked_proxy, role) as conn:
        wait_for_masking(conn)
        for q in statements:
            got = conn.execute(q).fetchall()  # simple protocol
            if got != want[q]:
                wrong.append((q, got, want[q]))
            got = conn.execute(q + " LIMIT %s", (1000,)).fetchall()  # extended protocol
            if got != want[q][:1000]:
                wrong.append((q + " [extended]", got, want[q]))
    assert not wrong, f"{len(wrong)} wrong answers for {role}, e.g. " + "; ".join(
        f"{q!r}: got {str(g)[:80]}, PostgreSQL says {str(w)[:80]}" for q, g, w in wrong[:4])
    # The reported case of issue 17, spelled out.
    nulls, total = truth[("customers", "phone")]
    with _connect(masked_proxy, role) as conn:
        assert conn.execute("SELECT count(phone) FROM customers").fetchone()[0] == total - nulls


@pytest.mark.parametrize("role", ROLES)
def test_joins_and_subqueries_see_nulls_as_postgres_does(masked_proxy, shop, role):
    """NULL-ness also drives outer joins, NOT IN and scalar subqueries."""
    statements = [
        "SELECT count(*) FROM customers c LEFT JOIN payments p ON p.customer_id = c.id "
        "WHERE p.card_number IS NULL",
        "SELECT count(*) FROM payments p WHERE p.card_number IS NULL AND EXISTS "
        "(SELECT 1 FROM customers c WHERE c.id = p.customer_id AND c.card_number IS NULL)",
        "SELECT count(*) FROM customers WHERE (phone, ssn) IS NULL",
        "SELECT count(*) FROM customers WHERE num_nulls(phone, ssn, card_number, birth_date, address, notes) = 0",
        "SELECT sum(num_nonnulls(full_name, email, phone, ssn, card_number, birth_date, address, notes)) "
        "FROM customers",
        "SELECT count(*) FROM (SELECT card_number FROM customers UNION ALL SELECT card_number FROM payments) u "
        "WHERE card_number IS NULL",
    ]
    want = direct_answers(shop, statements)
    with _connect(masked_proxy, role) as conn:
        wait_for_masking(conn)
        for q in statements:
            assert conn.execute(q).fetchall() == want[q], q


# --- plain reads: NULL cells are NULL on the wire -----------------------------------------


def row_description(body: bytes) -> list[tuple[str, int, int]]:
    """(name, table OID, column number) per field (protocol docs, "Message
    Formats": RowDescription)."""
    (n,) = struct.unpack_from("!h", body, 0)
    off = 2
    out = []
    for _ in range(n):
        end = body.index(b"\x00", off)
        name = body[off:end].decode()
        table_oid, attnum = struct.unpack_from("!Ih", body, end + 1)
        off = end + 1 + 18
        out.append((name, table_oid, attnum))
    return out


def data_row_lengths(body: bytes) -> list[int]:
    """Each field's Int32 length as sent: -1 is NULL."""
    (n,) = struct.unpack_from("!h", body, 0)
    off = 2
    out = []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, off)
        off += 4 + max(ln, 0)
        out.append(ln)
    assert off == len(body)
    return out


def wire_query(proxy, role: str, sql: str):
    """One simple-protocol Query through pgcloak, without a client library:
    the RowDescription, the DataRows' field lengths and values."""
    with pgwire.PgWire(proxy.host, proxy.port) as w:
        w.startup(role, "shop", password=SHOP_PASSWORDS[role])
        msgs = w.simple_query(sql, timeout=60)
    assert not pgwire.errors(msgs), pgwire.errors(msgs)
    [rd] = [m for m in msgs if m.type == b"T"]
    rows = [m.body for m in msgs if m.type == b"D"]
    return row_description(rd.body), [data_row_lengths(b) for b in rows], [pgwire.parse_data_row(b) for b in rows]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("table", ["customers", "payments"])
def test_plain_select_keeps_null_cells_null_on_the_wire(masked_proxy, shop, truth, role, table):
    cols = [c for t, c, _ in COLUMNS if t == table]
    order = "id"
    with shop.admin() as adm:
        direct = adm.execute(f"SELECT id, {', '.join(cols)} FROM {table} ORDER BY {order}").fetchall()
    with _connect(masked_proxy, role) as conn:
        wait_for_masking(conn)
    # Output masking: a plain single-table SELECT. SQL masking: the same with
    # a predicate on every masked column, which PostgreSQL must evaluate on
    # masked values.
    plain = f"SELECT id, {', '.join(cols)} FROM {table} ORDER BY {order}"
    in_sql = (f"SELECT id, {', '.join(cols)} FROM {table} WHERE "
              + " AND ".join(f"({c} IS NULL OR {c} IS NOT NULL)" for c in cols) + f" ORDER BY {order}")
    for sql, output_masking in ((plain, True), (in_sql, False)):
        fields, lengths, values = wire_query(masked_proxy, role, sql)
        assert len(lengths) == len(direct)
        # Which path masked each column: output-masked columns keep their
        # origin (table OID, column number) in RowDescription, SQL masks are
        # expressions without one.
        for k, c in enumerate(cols, start=1):
            raw_here = output_masking and (table, c) in OUTPUT_MASKED[role]
            allowed = role == "support" and c == "full_name"
            assert (fields[k][1] != 0) == (raw_here or allowed), (sql, c, fields[k])
        mismatches = []
        for drow, lens, vals in zip(direct, lengths, values):
            assert int(vals[0]) == drow[0]
            for k, c in enumerate(cols, start=1):
                if drow[k] is None and lens[k] != -1:
                    mismatches.append((drow[0], c, f"NULL came back as {vals[k]!r}"))
                if drow[k] is not None and lens[k] == -1:
                    mismatches.append((drow[0], c, "a value came back as NULL"))
        assert not mismatches, f"{len(mismatches)} cells ({sql[:40]}...), first: {mismatches[:5]}"
    # The NULLs counted here are the ones PostgreSQL counts.
    for k, c in enumerate(cols, start=1):
        nulls, _ = truth[(table, c)]
        assert sum(1 for lens in lengths if lens[k] == -1) == nulls, c
    assert "backstop" not in masked_proxy.log()


@pytest.mark.parametrize("role", ROLES)
def test_extended_protocol_binary_and_copy_keep_nulls(masked_proxy, shop, role):
    cols = [c for t, c, _ in COLUMNS if t == "customers"]
    q = f"SELECT id, {', '.join(cols)} FROM customers WHERE id <= %s ORDER BY id"

    def nulls(rows) -> dict[int, tuple[bool, ...]]:
        return {int(r[0]): tuple(v is None for v in r[1:]) for r in rows}

    with shop.admin() as adm:
        want = nulls(adm.execute(q, (3000,)).fetchall())
    with _connect(masked_proxy, role) as conn:
        wait_for_masking(conn)
        text = nulls(conn.execute(q, (3000,)).fetchall())
        binary = nulls(conn.cursor(binary=True).execute(q, (3000,)).fetchall())
        with conn.cursor().copy(f"COPY customers ({', '.join(['id'] + cols)}) TO STDOUT") as cp:
            copied = nulls(cp.rows())
    assert len(want) == 3000 and any(any(r) for r in want.values())
    assert text == want
    assert binary == want
    assert {k: v for k, v in copied.items() if k in want} == want


# --- mask_nulls: true ------------------------------------------------------------------------


def mask_nulls_masking() -> dict:
    """The fixture's policies, with NULL-ness masked for support's SSNs
    (redact) and notes (a custom expression that gets the NULLs), and the
    same custom expression without mask_nulls for the analyst's notes."""
    m = copy.deepcopy(MASKING)
    for p in m["policies"]:
        if p["name"] == "support":
            p["rules"]["national_id"] = {"mask": "redact", "value": "hidden", "mask_nulls": True}
            p["rules"]["free_text"] = {"mask": "custom", "mask_nulls": True,
                                       "expression": "coalesce(pg_catalog.left({value}, 0), '') || '[note]'"}
        if p["name"] == "analytics":
            p["rules"]["free_text"] = {"mask": "custom",
                                       "expression": "coalesce(pg_catalog.left({value}, 0), '') || '[note]'"}
    return m


def test_mask_nulls_true_hides_which_values_are_null(pgcloak, shop, truth, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    overrides = masking_overrides(shop.dbname)
    overrides["masking"] = mask_nulls_masking()
    proxy = pgcloak(**overrides)
    ssn_nulls, total = truth[("customers", "ssn")]
    notes_nulls, _ = truth[("customers", "notes")]
    address_nulls, _ = truth[("customers", "address")]
    with _connect(proxy, "support") as conn:
        wait_for_masking(conn)
        # Every row has an SSN and a note now, all the same.
        assert conn.execute("SELECT count(ssn), count(*) FILTER (WHERE ssn IS NULL) FROM customers").fetchone() \
            == (total, 0)
        assert conn.execute("SELECT DISTINCT ssn FROM customers").fetchall() == [("hidden",)]
        assert conn.execute("SELECT count(notes), count(DISTINCT notes) FROM customers").fetchone() == (total, 1)
        assert conn.execute("SELECT count(*) FROM customers WHERE coalesce(ssn, 'x') = 'x'").fetchone()[0] == 0
        # Columns without the option keep their NULLs.
        assert conn.execute("SELECT count(address) FROM customers").fetchone()[0] == total - address_nulls
    # On the wire too: no field of length -1 in the masked-NULL columns.
    fields, lengths, values = wire_query(proxy, "support", "SELECT id, ssn, notes, address FROM customers ORDER BY id")
    assert len(lengths) == total
    assert all(lens[1] != -1 and lens[2] != -1 for lens in lengths)
    assert {v[1] for v in values} == {b"hidden"} and {v[2] for v in values} == {b"[note]"}
    assert sum(1 for lens in lengths if lens[3] == -1) == address_nulls
    # The same custom expression without mask_nulls keeps NULL as NULL.
    with _connect(proxy, "analyst") as conn:
        wait_for_masking(conn)
        assert conn.execute("SELECT count(notes), count(*) FILTER (WHERE notes IS NULL) FROM customers").fetchone() \
            == (total - notes_nulls, notes_nulls)
        assert conn.execute("SELECT count(ssn) FROM customers").fetchone()[0] == total - ssn_nulls


def test_mask_nulls_on_a_value_mask_is_a_config_error(pgcloak_bin_path, tmp_path):
    """mask_nulls: true on a mask computed from the value cannot hide a NULL
    (any stand-in would be one recognisable value): --check-config refuses it
    with the reason and the line."""
    cfg = tmp_path / "pgcloak.yaml"
    cfg.write_text("""listen: ["127.0.0.1:6432"]
upstream: {host: 127.0.0.1, port: 5432}
catalog: {dbname: shop}
masking:
  protected_columns:
    - {column: public.customers.phone, category: phone}
  policies:
    - name: support
      roles: [support_team]
      rules:
        phone: {mask: partial, keep_last: 4, mask_nulls: true}
""")
    import subprocess
    r = subprocess.run([pgcloak_bin_path, "--check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    assert ":11:" in out and "mask_nulls: true" in out and "redact, null or custom" in out, out


@pytest.fixture
def pgcloak_bin_path():
    from proxy import pgcloak_bin
    return pgcloak_bin()
