"""Mask expressions (rules/mask_sql.cc) run in a real PostgreSQL 15.

For every mask and every supported column type, the SQL that pgcloak puts in
place of a protected column is run over a corpus of values (NULLs, empty
strings, Unicode, very long values, odd emails, card and phone numbers...),
and the test checks that:
  - the expression keeps the column's type OID and typmod (RowDescription,
    and format_type() of a CREATE TEMP TABLE AS copy);
  - a NULL stays NULL under every mask, and becomes the mask's constant
    only with mask_nulls: true (issue 17);
  - no value makes it raise an error;
  - PostgreSQL's output equals the C++ implementation (mask_text_value), the
    result-row backstop, value for value;
  - masks that make no sense for a type are refused when the SQL is built.

SQL text comes from tests/tools/mask_sql_tool (built with the unit tests):
$MASK_SQL_TOOL, else the one in $PGCLOAK_BIN's build tree, else the newer of
build/ and build-masks/.
"""

from __future__ import annotations

import random
import subprocess
import uuid as uuid_mod

import psycopg
import pytest

from util import find_tool

KEY = "k" * 16 + "0123456789abcdef0123456789abcdef"  # 48 bytes


def tool_path() -> str:
    try:
        return find_tool("mask_sql_tool", "MASK_SQL_TOOL", ("build", "build-masks"))
    except FileNotFoundError as e:
        pytest.fail(str(e))


# --- the corpus -------------------------------------------------------------------


def string_corpus() -> list[str | None]:
    fixed = [
        None, "", " ", "a", "ab", "abc", "é", "日本語のテキスト", "emoji 😀 here", "Ünïcödé@exämple.org",
        "jane.doe@example.com", "j@x.io", "no-at-sign", "a@b@c.example.org", "@", "@@", "x@", "@domain.com",
        "first.last+tag@sub.domain.co.uk", "UPPER@EXAMPLE.COM", "bad@domain", "two emails: a@b.com, c@d.org",
        "4242-4242-4242-4242", "4242 4242 4242 4242", "4242424242424242", "378282246310005",
        "1234-5678-9012-3456-789", "12345678901234567890", "card 4000 0000 0000 0002 exp 12/30",
        "+1 (555) 123-4567", "555-123-4567", "06 12 34 56 78", "+44 20 7946 0958", "(555)1234567",
        "call 555.123.4567 now", "123-45-6789", "ssn 123-45-6789 and 987-65-4321", "1234-56-7890",
        "0123456", "123456", "12-34", "2024-01-15", "mixed 123-45-6789 +1 555 123 4567 a@b.co 4111111111111111",
        "quote ' and \" and \\ backslash", "new\nline", "tab\tchar", "percent % under_score",
        "1", "12", "123", "1234", "12345", "a1b2c3d4e5", "----", "x" * 5000, "7" * 3000,
        ("lorem ipsum jane@example.com 555-123-4567 " * 200), "é" * 1000 + "@" + "ü" * 10,
        "trailing spaces   ", "   leading", "O'Brien", "$$dollar$$", "{value}",
    ]
    rng = random.Random(20240611)
    alphabet = list("0123456789" * 4) + list(" -.()+@_%") * 2 + list("abcXYZ") + ["é", "日", ".com", "\n"]
    generated = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 45))) for _ in range(130)]
    return fixed + generated


def int_corpus(lo: int, hi: int) -> list[int | None]:
    rng = random.Random(7)
    return [None, 0, 1, -1, lo, hi, 42, -42, 999, 1000, -1000] + [rng.randint(lo, hi) for _ in range(40)]


NUMERIC_10_2 = [None, "0", "-0.01", "0.01", "99999999.99", "-99999999.99", "12345.67", "0.5", "-15.5", "1000",
                "999.99", "-1000.00"] + [f"{random.Random(i).randint(-10**9, 10**9) / 100:.2f}" for i in range(30)]
NUMERIC_PLAIN = [None, "0", "NaN", "Infinity", "-Infinity", "123.456789", "-0.000001",
                 "123456789012345678901234567890.5", "-987654321098765432109876543210"] + [
    str(random.Random(i).randint(-10**12, 10**12)) for i in range(20)]
DATES = [None, "2024-03-15", "2000-02-29", "1999-12-31", "1970-01-01", "infinity", "-infinity", "0044-03-15 BC",
         "5874897-12-31", "4713-01-01 BC", "2024-12-31", "1900-01-01"]
TIMESTAMPS = [None, "2024-03-15 10:22:33.123456", "2000-02-29 23:59:59", "1970-01-01 00:00:00", "infinity",
              "-infinity", "294276-12-31 23:59:59", "0044-03-15 10:00:00 BC", "2024-12-31 23:59:59.999999"]

# name -> (SQL type, values)
TYPES: dict[str, tuple[str, list]] = {
    "text": ("text", string_corpus()),
    "varchar40": ("varchar(40)", string_corpus()),
    "char12": ("character(12)", string_corpus()),
    "integer": ("integer", int_corpus(-2**31, 2**31 - 1)),
    "bigint": ("bigint", int_corpus(-2**63, 2**63 - 1)),
    "smallint": ("smallint", int_corpus(-2**15, 2**15 - 1)),
    "numeric10_2": ("numeric(10,2)", NUMERIC_10_2),
    "numeric": ("numeric", NUMERIC_PLAIN),
    "date": ("date", DATES),
    "timestamp": ("timestamp", TIMESTAMPS),
    "timestamptz": ("timestamptz", TIMESTAMPS),  # inserted and read with TimeZone = UTC
    "boolean": ("boolean", [None, True, False]),
    "uuid": ("uuid", [None, "00000000-0000-0000-0000-000000000000"] +
             [str(uuid_mod.UUID(int=random.Random(i).getrandbits(128))) for i in range(10)]),
    "bytea": ("bytea", [None, b"", b"\x00\x01", b"secret bytes"]),
    "jsonb": ("jsonb", [None, "{}", '{"a": 1}', '[1, "x@y.com"]', '"str"']),
}
STRING_TYPES = {"text", "varchar40", "char12"}
INTEGER_TYPES = {"integer", "bigint", "smallint"}
NUMERIC_TYPES = INTEGER_TYPES | {"numeric10_2", "numeric"}
DATETIME_TYPES = {"date", "timestamp", "timestamptz"}

# (id, rule as written in the config, category, types it applies to, keeps
# NULL: True = a NULL stays NULL, False = a NULL becomes a value)
ALL = set(TYPES)
MASKS = [
    ("redact", "redact", "free_text", ALL, True),
    ("redact_value", '{mask: redact, value: "[hidden]"}', "free_text", ALL, True),
    ("redact_nulls", "{mask: redact, mask_nulls: true}", "free_text", ALL, False),
    ("redact_value_nulls", '{mask: redact, value: "[hidden]", mask_nulls: true}', "free_text", ALL, False),
    ("null", "null", "free_text", ALL, True),
    ("null_nulls", "{mask: null, mask_nulls: true}", "free_text", ALL, True),
    ("allow", "allow", "free_text", ALL, True),
    ("partial", '{mask: partial, keep_first: 1, keep_last: 2, fill: "*"}', "phone", STRING_TYPES, True),
    ("partial_unicode_fill", '{mask: partial, keep_first: 0, keep_last: 4, fill: "•"}', "phone", STRING_TYPES,
     True),
    ("email", "email", "email", STRING_TYPES, True),
    ("last4", "last4", "card_number", STRING_TYPES, True),
    ("hash", "hash", "national_id", STRING_TYPES | NUMERIC_TYPES, True),
    ("hash8", "{mask: hash, length: 8}", "loyalty_number", STRING_TYPES | NUMERIC_TYPES, True),
    ("pseudonym_name", "pseudonym", "person_name", STRING_TYPES, True),
    ("pseudonym_email", "pseudonym", "email", STRING_TYPES, True),
    ("pseudonym_first", "{mask: pseudonym, kind: first_name}", "person_name", STRING_TYPES, True),
    ("pseudonym_last", "{mask: pseudonym, kind: last_name}", "person_name", STRING_TYPES, True),
    ("redact_patterns", "redact_patterns", "free_text", STRING_TYPES, True),
    ("generalize_year", "{mask: generalize, to: year}", "birth_date", DATETIME_TYPES, True),
    ("generalize_month", "{mask: generalize, to: month}", "birth_date", DATETIME_TYPES, True),
    ("generalize_day", "{mask: generalize, to: day}", "birth_date", DATETIME_TYPES, True),
    ("generalize_bucket", "{mask: generalize, bucket: 1000}", "free_text", NUMERIC_TYPES, True),
    ("generalize_bucket7", "{mask: generalize, bucket: 7}", "free_text", NUMERIC_TYPES, True),
    ("custom", '{mask: custom, expression: "upper({value})"}', "free_text", ALL, True),
    ("custom_coalesce", '{mask: custom, expression: "coalesce({value}, \'none\')"}', "free_text", ALL, True),
    ("custom_coalesce_nulls", '{mask: custom, expression: "coalesce({value}, \'none\')", mask_nulls: true}',
     "free_text", ALL, False),
]
NO_CPP_COPY = {"custom", "custom_coalesce", "custom_coalesce_nulls"}  # mask_text_value gives NULL by design


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db(pg):
    with pg.admin() as c:
        c.execute("DROP DATABASE IF EXISTS masks")
        c.execute("CREATE DATABASE masks")
    conn = psycopg.connect(host=pg.sockdir, port=pg.port, user="postgres", dbname="masks", autocommit=True)
    conn.execute("SET TimeZone = 'UTC'")
    conn.execute("SET DateStyle = 'ISO, MDY'")
    for name, (sqltype, values) in TYPES.items():
        conn.execute(f"CREATE TABLE t_{name} (id integer PRIMARY KEY, v {sqltype})")
        with conn.cursor() as cur:
            for i, v in enumerate(values):
                # Strings longer than varchar(40)/char(12) are cut by an explicit cast.
                cur.execute(f"INSERT INTO t_{name} VALUES (%s, CAST(%s::text AS {sqltype}))"
                            if name in STRING_TYPES or name in DATETIME_TYPES or name.startswith("numeric")
                            else f"INSERT INTO t_{name} VALUES (%s, %s)", (i, v))
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def columns(db):
    """What the rewriter would learn from the catalog for each column."""
    out = {}
    for name in TYPES:
        row = db.execute("""
            SELECT a.atttypid::int, a.atttypmod, format_type(a.atttypid, a.atttypmod), t.typcategory
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = %s::regclass AND a.attname = 'v'""", (f"t_{name}",)).fetchone()
        out[name] = row
    return out


def tool(mode: str, rule: str, category: str, col, stdin: str | None = None) -> subprocess.CompletedProcess:
    oid, typmod, type_name, typcategory = col
    return subprocess.run(
        [tool_path(), mode, "--rule", rule, "--category", category, "--oid", str(oid), "--typmod", str(typmod),
         "--type-name", type_name, "--typcategory", typcategory, "--key", KEY, "--value-sql", 't."v"'],
        input=stdin, capture_output=True, text=True, timeout=60)


def mask_sql(rule: str, category: str, col) -> str:
    r = tool("sql", rule, category, col)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def run_raw(conn, sql: str):
    """Rows as the wire's text format: (id, bytes-or-None), plus the PGresult."""
    cur = conn.execute(sql)
    res = cur.pgresult
    rows = [(int(res.get_value(i, 0)), res.get_value(i, 1)) for i in range(res.ntuples)]
    return rows, res, cur


def source_values(conn, name: str):
    rows, _, _ = run_raw(conn, f"SELECT id, v FROM t_{name} ORDER BY id")
    return rows


def cpp_values(rule: str, category: str, col, values: list[bytes | None]) -> list[bytes | None]:
    stdin = "".join(("-" if v is None else v.hex()) + "\n" for v in values)
    r = tool("values", rule, category, col, stdin)
    assert r.returncode == 0, r.stderr
    return [None if line == "-" else bytes.fromhex(line) for line in r.stdout.splitlines()]


# --- the matrix -------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", list(TYPES))
@pytest.mark.parametrize("mask_id,rule,category,applies,keeps_null", MASKS, ids=[m[0] for m in MASKS])
def test_mask_on_type(db, columns, mask_id, rule, category, applies, keeps_null, type_name):
    col = columns[type_name]
    r = tool("sql", rule, category, col)
    if type_name not in applies or (mask_id.startswith("custom") and type_name not in STRING_TYPES):
        if mask_id.startswith("custom"):
            # upper() of a non-string: the template is valid; PostgreSQL decides.
            pytest.skip("custom template over a non-string column")
        assert r.returncode == 3, f"{mask_id} on {type_name} should be refused: {r.stdout}"
        assert "42501" in r.stderr and mask_id.split("_")[0][:4] in r.stderr, r.stderr
        assert col[2] in r.stderr  # the message names the type
        return
    assert r.returncode == 0, r.stderr
    expr = r.stdout.strip()
    assert expr.startswith("CAST((") and expr.endswith(")")
    assert "\\" not in expr  # means the same under standard_conforming_strings off
    assert KEY not in expr  # the master key never appears in SQL

    source = source_values(db, type_name)
    rows, res, cur = run_raw(db, f"SELECT t.id, {expr} AS m FROM t_{type_name} t ORDER BY t.id")

    # Type-preserving: RowDescription's type OID and typmod.
    assert res.ftype(1) == col[0]
    assert res.fmod(1) == col[1]
    assert cur.description[1].type_code == col[0]
    db.execute("DROP TABLE IF EXISTS pg_temp.copy")
    db.execute(f"CREATE TEMP TABLE copy AS SELECT {expr} AS m FROM t_{type_name} t LIMIT 0")
    fmt = db.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                     "WHERE attrelid = 'pg_temp.copy'::regclass AND attname = 'm'").fetchone()[0]
    assert fmt == col[2]

    assert len(rows) == len(source)
    for (sid, sv), (mid, mv) in zip(source, rows):
        assert sid == mid
        if sv is None and keeps_null:
            assert mv is None, f"NULL became {mv!r}"
        if sv is None and keeps_null is False:
            assert mv is not None, "mask_nulls: true left a NULL apparent"

    if mask_id in NO_CPP_COPY:
        return
    expected = cpp_values(rule, category, col, [v for _, v in source])
    mismatches = [(sv, mv, ev) for (_, sv), (_, mv), ev in zip(source, rows, expected) if mv != ev]
    assert not mismatches, f"{len(mismatches)} SQL/C++ differences, first: " + repr(
        [(s[:80] if s else s, m[:80] if m else m, e[:80] if e else e) for s, m, e in mismatches[:3]])


# --- specific outputs -----------------------------------------------------------------------


def text_col(columns):
    return columns["text"]


def one(db, expr_sql: str, value):
    expr_sql = expr_sql.replace("%", "%%")  # the regexes contain %
    return db.execute(f"SELECT {expr_sql} FROM (SELECT %s::text AS v) AS t", (value,)).fetchone()[0]


@pytest.mark.parametrize("rule,category,value,expected", [
    ("email", "email", "jane.doe@example.com", "j***@example.com"),
    ("email", "email", "no-at-sign", "***"),
    ("email", "email", "a@b@c.example.org", "a***@c.example.org"),
    ("email", "email", "", "***"),
    ("last4", "card_number", "4242-4242-4242-4242", "****-****-****-4242"),
    ("last4", "card_number", "4242 4242 4242 4242", "**** **** **** 4242"),
    ("last4", "card_number", "123", "123"),
    ('{mask: partial, keep_first: 1, keep_last: 2, fill: "*"}', "phone", "abcdefgh", "a*****gh"),
    ('{mask: partial, keep_first: 1, keep_last: 2, fill: "*"}', "phone", "abc", "***"),
    ('{mask: partial, keep_first: 0, keep_last: 2, fill: "#"}', "phone", "日本語テキスト", "#####スト"),
    ("redact_patterns", "free_text",
     "mail jane@example.com, card 4242 4242 4242 4242, ssn 123-45-6789, tel +1 (555) 123-4567.",
     "mail [email], card [card], ssn [national_id], tel [phone]."),
    ("redact_patterns", "free_text", "4111111111111111", "[card]"),
    ("redact_patterns", "free_text", "order 12345 shipped", "order 12345 shipped"),
    ("redact", "free_text", "secret", "***"),
    ('{mask: redact, value: "n/a"}', "free_text", "secret", "n/a"),
])
def test_documented_examples(db, columns, rule, category, value, expected):
    expr = mask_sql(rule, category, text_col(columns))
    assert one(db, expr, value) == expected


def test_generalize_examples(db, columns):
    expr = mask_sql("{mask: generalize, bucket: 1000}", "free_text", columns["numeric10_2"])
    got = db.execute(f"SELECT {expr} FROM (VALUES (12345.67::numeric(10,2)), (-1500.00)) AS t(v)").fetchall()
    assert [str(r[0]) for r in got] == ["12000.00", "-1000.00"]
    expr = mask_sql("{mask: generalize, to: year}", "birth_date", columns["date"])
    assert str(db.execute(f"SELECT {expr} FROM (SELECT date '1987-06-05' AS v) AS t").fetchone()[0]) == "1987-01-01"
    expr = mask_sql("{mask: generalize, to: month}", "birth_date", columns["timestamp"])
    got = db.execute(f"SELECT ({expr})::text FROM (SELECT timestamp '1987-06-05 12:34:56' AS v) AS t").fetchone()
    assert got[0] == "1987-06-01 00:00:00"


def test_hash_is_deterministic_across_sessions_and_joins_still_work(pg, db, columns):
    expr = mask_sql("hash", "national_id", text_col(columns))
    first = db.execute(f"SELECT {expr} FROM t_text t ORDER BY id").fetchall()
    with psycopg.connect(host=pg.sockdir, port=pg.port, user="postgres", dbname="masks") as other:
        second = other.execute(f"SELECT {expr} FROM t_text t ORDER BY id").fetchall()
    assert first == second
    # Equal inputs give equal outputs, so GROUP BY and joins on the masked value work.
    n = db.execute(f"""
        SELECT count(*) FROM (SELECT {expr} AS h FROM t_text t) a
        JOIN (SELECT {expr} AS h FROM t_text t) b USING (h)""").fetchone()[0]
    distinct = db.execute("SELECT count(DISTINCT v) FROM t_text").fetchone()[0]
    assert n >= distinct
    assert all(len(r[0]) == 16 and set(r[0]) <= set("0123456789abcdef") for r in first if r[0] is not None)


def test_pseudonyms_look_real_and_are_stable(db, columns):
    expr = mask_sql("pseudonym", "email", text_col(columns))
    a = one(db, expr, "jane.doe@example.com")
    b = one(db, expr, "jane.doe@example.com")
    assert a == b and a.endswith("@example.net") and "." in a.split("@")[0]
    name = one(db, mask_sql("pseudonym", "person_name", text_col(columns)), "Jane Doe")
    assert len(name.split(" ")) == 2 and name != "Jane Doe"


def test_masks_ignore_a_hostile_search_path(db, columns):
    """A masked user who puts their own sha256(), regexp_replace() or || ahead
    of pg_catalog must not receive the value: every name in the generated SQL
    is qualified with pg_catalog."""
    db.execute("DROP SCHEMA IF EXISTS evil CASCADE")
    db.execute("CREATE SCHEMA evil")
    for sig, ret in [("sha256(bytea)", "bytea"), ("regexp_replace(text, text, text, text)", "text"),
                     ("strpos(text, text)", "integer"), ("char_length(text)", "integer"),
                     ("substr(text, integer, integer)", "text"), ("convert_to(text, name)", "bytea"),
                     ("get_byte(bytea, integer)", "integer"), ("encode(bytea, text)", "text")]:
        db.execute(f"CREATE FUNCTION evil.{sig} RETURNS {ret} LANGUAGE plpgsql AS "
                   f"$$BEGIN RAISE EXCEPTION 'leaked %', $1; END$$")
    db.execute("CREATE FUNCTION evil.cat(text, text) RETURNS text LANGUAGE plpgsql AS "
               "$$BEGIN RAISE EXCEPTION 'leaked %', $1; END$$")
    db.execute("CREATE OPERATOR evil.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.cat)")
    try:
        # The trap works: an unqualified call reaches evil's function.
        db.execute("SET search_path = evil, pg_catalog")
        with pytest.raises(psycopg.errors.RaiseException, match="leaked"):
            db.execute("SELECT sha256('x'::bytea)")
        for rule, category in [("hash", "national_id"), ("email", "email"), ("last4", "card_number"),
                               ("redact_patterns", "free_text"), ("pseudonym", "email"),
                               ('{mask: partial, keep_first: 1, keep_last: 1, fill: "*"}', "phone")]:
            expr = mask_sql(rule, category, text_col(columns))
            db.execute("SET search_path = pg_catalog")
            want = db.execute(f"SELECT {expr} FROM public.t_text t ORDER BY id").fetchall()
            db.execute("SET search_path = evil, pg_catalog")
            got = db.execute(f"SELECT {expr} FROM public.t_text t ORDER BY id").fetchall()
            assert got == want, rule
    finally:
        db.execute("RESET search_path")
        db.execute("DROP SCHEMA evil CASCADE")


@pytest.mark.parametrize("rule,category,type_name,needle", [
    ("email", "email", "date", "email"),
    ("last4", "card_number", "integer", "last4"),
    ("hash", "national_id", "date", "redact or null"),
    ("hash", "national_id", "boolean", "redact or null"),
    ("{mask: generalize, to: year}", "birth_date", "text", "generalize"),
    ("{mask: generalize, bucket: 10}", "free_text", "date", "generalize"),
    ("pseudonym", "person_name", "uuid", "pseudonym"),
])
def test_refused_combinations_name_mask_and_type(columns, rule, category, type_name, needle):
    r = tool("sql", rule, category, columns[type_name])
    assert r.returncode == 3
    assert "42501" in r.stderr and needle in r.stderr and columns[type_name][2] in r.stderr
