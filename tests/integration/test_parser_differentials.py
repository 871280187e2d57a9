"""Parser differentials (docs/masking.md): places where pgcloak could read a
statement or a startup packet differently from PostgreSQL, tried end to end
as the masked logins `support` and `analyst` with psql, psycopg and the raw
protocol client, against PostgreSQL 15 holding the shop fixture.

Each test reproduces an attack that read raw values before the fix, with its
variants, and checks every byte pgcloak sent back: no raw protected value,
and no run of 128 hex digits (the HMAC pads of the hash mask, which the
rewritten statement carries and from which the key follows)."""
from __future__ import annotations

import re
import struct
import subprocess

import pytest

import pgwire
from masking_fixture import MASK_KEY, MASK_KEY_ENV, PROTECTED, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect
from shop import SHOP_PASSWORDS
from util import pg_tool

ROLES = ("support", "analyst")
PAD_RUN = re.compile(rb"[0-9a-fA-F]{128}")

# PostgreSQL's names and aliases of the client-only encodings.
CLIENT_ONLY = ("SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "Shift_JIS", "win932",
               "windows950", "win936", "mskanji", "win949")


@pytest.fixture(scope="module")
def raw_values(shop):
    """Every protected value of the fixture, as bytes, for leak checks."""
    with shop.admin() as c:
        rows = c.execute(f"SELECT {', '.join(PROTECTED)} FROM customers").fetchall()
        rows += c.execute("SELECT card_number, card_number FROM payments").fetchall()
    return {v.encode() for row in rows for v in row if v is not None and len(v) >= 6}


@pytest.fixture
def masked_proxy(pgcloak, shop, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    proxy = pgcloak(**masking_overrides(shop.dbname))
    with _connect(proxy, "support") as c:
        wait_for_masking(c)
    return proxy


def find_values(data: bytes, raw_values: set[bytes]) -> list[bytes]:
    """The raw values that occur in data, in one pass over data: values are
    indexed by their first six bytes (all are at least that long)."""
    index: dict[bytes, list[bytes]] = {}
    for v in raw_values:
        index.setdefault(v[:6], []).append(v)
    found = set()
    for i in range(len(data) - 5):
        for v in index.get(data[i:i + 6], ()):
            if data.startswith(v, i):
                found.add(v)
    return sorted(found)


def assert_clean(data: bytes, raw_values: set[bytes], what: str = "") -> None:
    leaked = find_values(data, raw_values)
    assert not leaked, f"{what}: raw values reached the client: {leaked[:5]}"
    assert not PAD_RUN.search(data), f"{what}: a 128-hex-digit run (HMAC pads) reached the client"


def wire(proxy, role: str, params: dict[str, str] | None = None) -> pgwire.PgWire:
    w = pgwire.PgWire(proxy.host, proxy.port)
    w.startup(role, "shop", password=SHOP_PASSWORDS[role], params=params)
    return w


def raw_query(sql: bytes) -> bytes:
    return pgwire.msg(b"Q", sql + b"\x00")


def read_all(w: pgwire.PgWire, readies: int) -> tuple[bytes, list[pgwire.Message]]:
    """Reads until `readies` ReadyForQuery (or the connection ends); returns
    every byte of every message and the messages."""
    messages: list[pgwire.Message] = []
    try:
        while readies > 0:
            m = w.read_message()
            messages.append(m)
            if m.type == b"Z":
                readies -= 1
    except pgwire.ConnectionClosed:
        pass
    return b"".join(m.type + m.body for m in messages), messages


def refused_startup(proxy, role: str, params: dict[str, str]) -> dict[str, str]:
    """A startup that pgcloak must refuse: returns the error's fields."""
    with pytest.raises(pgwire.PgError) as e:
        with wire(proxy, role, params):
            pass
    return e.value.fields


# --- 1. client encodings ---------------------------------------------------------------

# The original attack: in SJIS, 0x83 0x5C is one character, so PostgreSQL
# sees no backslash and the string ends at the quote after it; pgcloak read
# the raw bytes, where \' is an escaped quote, and saw one harmless literal.
SJIS_TRICK = (b"SELECT E'\x83\\' , (SELECT concat_ws(' ', ssn, email, card_number) FROM customers "
              b"WHERE id=1) AS x --' , 1")


def test_sjis_trick_through_stock_psql(masked_proxy, raw_values, client_env):
    for role in ROLES:
        env = dict(client_env, PGCLIENTENCODING="SJIS", PGPASSWORD=SHOP_PASSWORDS[role])
        out = subprocess.run([pg_tool("psql"), "-X", "-At", "-d", masked_proxy.dsn(user=role, dbname="shop")],
                             input=SJIS_TRICK + b";\n", env=env, capture_output=True, timeout=60)
        assert_clean(out.stdout + out.stderr, raw_values, f"psql {role}")
        assert out.returncode != 0
        assert b"client_encoding" in out.stderr, out.stderr


@pytest.mark.parametrize("encoding", CLIENT_ONLY)
def test_client_only_encodings_refused_at_startup(masked_proxy, encoding):
    for params in ({"client_encoding": encoding}, {"CLIENT_ENCODING": encoding},
                   {"options": f"-c client_encoding={encoding}"}, {"options": f"--client-encoding={encoding}"},
                   {"options": f"-c client\\_encoding={encoding}"}, {"options": f"-cclient_encoding={encoding}"},
                   {"options": f"-c CLIENT-ENCODING={encoding}"}):
        fields = refused_startup(masked_proxy, "support", params)
        assert fields.get("C") == "42501", (params, fields)
        assert "startup setting" in fields.get("M", ""), fields
    # Unmasked logins are not concerned.
    with wire(masked_proxy, "admin", {"client_encoding": encoding}) as w:
        assert pgwire.rows(w.simple_query("SELECT 1")) == [[b"1"]]


def test_client_only_encodings_refused_by_set(masked_proxy, raw_values):
    for role in ROLES:
        with wire(masked_proxy, role) as w:
            for enc in CLIENT_ONLY:
                for sql in (f"SET client_encoding = '{enc}'", f"SET NAMES '{enc}'",
                            f"SET LOCAL client_encoding TO '{enc}'",
                            f"SELECT set_config('client_encoding', '{enc}', false)",
                            f"UPDATE pg_settings SET setting = '{enc}' WHERE name = 'client_encoding'"):
                    # Pipelined: the trick goes in the same write, behind
                    # the change.
                    w.send(raw_query(sql.encode()) + raw_query(SJIS_TRICK))
                    data, msgs = read_all(w, 2)
                    assert_clean(data, raw_values, f"{role}: {sql}")
                    errs = pgwire.errors(msgs)
                    assert errs and errs[0].get("C") == "42501", (sql, errs)
            assert pgwire.rows(w.simple_query("SHOW client_encoding")) == [[b"UTF8"]]


def test_client_only_role_default_refuses_every_statement(masked_proxy, shop, raw_values):
    """An administrator's default makes the session start in SJIS: pgcloak
    refuses its statements, even after it switches to UTF8 (RESET, RESET ALL
    and DISCARD ALL would return to SJIS)."""
    with shop.admin() as adm:
        adm.execute("ALTER ROLE support SET client_encoding = 'SJIS'")
    try:
        with wire(masked_proxy, "support") as w:
            w.send(raw_query(SJIS_TRICK) + raw_query(b"SELECT id FROM customers LIMIT 1")
                   + raw_query(b"SET client_encoding = 'UTF8'") + raw_query(b"SELECT id FROM customers LIMIT 1"))
            data, msgs = read_all(w, 4)
            assert_clean(data, raw_values, "role default SJIS")
            codes = [e.get("C") for e in pgwire.errors(msgs)]
            assert codes == ["0A000", "0A000", "0A000", "0A000"], codes
            assert b"ASCII-safe" in data
        with wire(masked_proxy, "admin") as w:  # unmasked: not concerned
            assert pgwire.rows(w.simple_query("SELECT 1")) == [[b"1"]]
    finally:
        with shop.admin() as adm:
            adm.execute("ALTER ROLE support RESET client_encoding")


def test_ascii_safe_encodings_still_work(masked_proxy, raw_values):
    with wire(masked_proxy, "support", {"client_encoding": "LATIN1"}) as w:
        msgs = w.simple_query("SELECT email FROM customers ORDER BY id LIMIT 3")
        assert len(pgwire.rows(msgs)) == 3
        msgs = w.simple_query("SET client_encoding = 'UTF8'")
        assert not pgwire.errors(msgs)
        msgs = w.simple_query("RESET client_encoding")
        assert not pgwire.errors(msgs)
        assert pgwire.rows(w.simple_query("SHOW client_encoding")) == [[b"LATIN1"]]


def test_pipelined_encoding_change_stops_output_masking(masked_proxy, raw_values):
    """A client_encoding change in the pipe ahead of an output-masked
    statement takes effect after pgcloak decided it: no row is sent rather
    than rows masked for the wrong encoding."""
    with wire(masked_proxy, "support") as w:
        w.send(raw_query(b"SET client_encoding = 'LATIN1'") + raw_query(b"SELECT email FROM customers LIMIT 3"))
        data, msgs = read_all(w, 2)
        assert_clean(data, raw_values, "pipelined LATIN1")
        assert not pgwire.rows(msgs)
        assert [e.get("C") for e in pgwire.errors(msgs)] == ["55000"]
        # Once confirmed, the statement runs (SQL masks).
        assert len(pgwire.rows(w.simple_query("SELECT email FROM customers LIMIT 3"))) == 3


# --- 2. settings changed inside a pipeline ---------------------------------------------

LEXING_TRICK = (rb"SELECT '\' ,' , (SELECT ssn || email || card_number FROM customers ORDER BY id LIMIT 1) AS leak, "
                rb"' AS z --'")


def test_pipelined_standard_strings_changes(masked_proxy, raw_values):
    for role in ROLES:
        with wire(masked_proxy, role) as w:
            for off in (b"0", b"off", b"'off'", b"false", b"DEFAULT"):
                w.send(raw_query(b"SET standard_conforming_strings TO 1") * 2
                       + raw_query(b"SET standard_conforming_strings TO " + off) + raw_query(LEXING_TRICK))
                data, msgs = read_all(w, 4)
                assert_clean(data, raw_values, f"{role} TO {off!r}")
                assert [e.get("C") for e in pgwire.errors(msgs)] == ["42501"], pgwire.errors(msgs)
            # The same through the extended protocol, unsynced in between.
            w.send(pgwire.parse("SET standard_conforming_strings TO 1") + pgwire.bind() + pgwire.execute()
                   + pgwire.parse("SET standard_conforming_strings TO 0") + pgwire.bind() + pgwire.execute()
                   + pgwire.parse(LEXING_TRICK.decode()) + pgwire.bind() + pgwire.execute() + pgwire.sync())
            data, msgs = read_all(w, 1)
            assert_clean(data, raw_values, f"{role} extended")
            assert pgwire.rows(w.simple_query("SHOW standard_conforming_strings")) == [[b"on"]]


# --- 3. whole-row references under output masking -------------------------------------

WHOLE_ROW = (
    "SELECT email, c.to_jsonb FROM customers c",
    "SELECT email, c.row_to_json FROM customers c",
    "SELECT email, c.to_json FROM customers c",
    "SELECT email, c.concat FROM customers c",
    "SELECT email, customers.to_jsonb FROM customers",
    "SELECT email, c FROM customers c",
    "SELECT email FROM customers c WHERE c.to_jsonb->>'email' LIKE '%@%' LIMIT 5",
    "SELECT email, c.to_jsonb->>'email' FROM customers c ORDER BY c.to_jsonb->>'email' LIMIT 5",
    "SELECT email FROM customers c WHERE (c.to_jsonb->>'email')::int = 1",
    "SELECT email FROM customers c WHERE (c.to_jsonb->>'ssn')::int = 1",
    "SELECT email FROM customers c WHERE (c.row_to_json->>'card_number')::int = 1",
    "SELECT email FROM customers c WHERE c::text::int = 1",
    "SELECT email FROM customers c WHERE (c).email::int = 1",
    "SELECT email, (c).* FROM customers c LIMIT 5",
    "SELECT email, ROW(c.*)::text FROM customers c LIMIT 5",
    "SELECT email, to_jsonb(c) FROM customers c LIMIT 5",
    "SELECT card_number, p.to_jsonb FROM payments p LIMIT 5",
    "SELECT card_number FROM payments p WHERE (p.to_jsonb->>'card_number')::int = 1",
    "SELECT email, cc.to_jsonb FROM customer_contacts cc LIMIT 5",
    "SELECT email FROM customer_contacts cc WHERE (cc.to_jsonb->>'email')::int = 1",
)


def test_whole_row_forms_read_only_masked_values(masked_proxy, raw_values):
    for role in ROLES:
        with wire(masked_proxy, role) as w:
            for sql in WHOLE_ROW:
                data, _ = read_all_after(w, sql)
                assert_clean(data, raw_values, f"{role}: {sql}")


def read_all_after(w: pgwire.PgWire, sql: str) -> tuple[bytes, list[pgwire.Message]]:
    w.send(pgwire.query(sql))
    return read_all(w, 1)


def test_whole_row_oracle_sees_masked_values(masked_proxy, shop):
    """The predicate oracle: a pattern on the real email through the whole
    row matches what the mask shows, not the hidden value."""
    with shop.admin() as adm:
        real = adm.execute("SELECT count(*) FROM customers WHERE email LIKE 'a%@%'").fetchone()[0]
        assert real > 0
    with _connect(masked_proxy, "support") as c:
        masked = c.execute("SELECT count(*) FROM customers c WHERE c.to_jsonb->>'email' LIKE '_***@%'").fetchone()[0]
        total = c.execute("SELECT count(email) FROM customers").fetchone()[0]
        assert masked == total  # every email the row shows is masked
        rows = c.execute("SELECT email, c.to_jsonb->>'email' FROM customers c ORDER BY id LIMIT 50").fetchall()
        assert all(a == b for a, b in rows)


# --- 4. echoes of the rewritten statement ------------------------------------------------

def test_explain_in_any_nesting_refused(masked_proxy, raw_values):
    for role in ROLES:
        with wire(masked_proxy, role) as w:
            w.simple_query("PREPARE p AS SELECT id, email FROM customers WHERE id < 3")
            for sql in ("EXPLAIN (VERBOSE) EXECUTE p",
                        "EXPLAIN (VERBOSE) CREATE TEMP TABLE x AS EXECUTE p",
                        "EXPLAIN (ANALYZE, VERBOSE) CREATE TEMP TABLE x AS EXECUTE p",
                        "EXPLAIN (VERBOSE, FORMAT JSON) CREATE TEMP TABLE x AS EXECUTE p"):
                data, msgs = read_all_after(w, sql)
                assert_clean(data, raw_values, f"{role}: {sql}")
                assert [e.get("C") for e in pgwire.errors(msgs)] == ["42501"], (sql, pgwire.errors(msgs))


def test_debug_and_log_notices_never_reach_masked_clients(masked_proxy, shop, raw_values):
    for role in ROLES:
        with wire(masked_proxy, role) as w:
            for sql in ("SET client_min_messages = debug2", "SET client_min_messages TO 'log'",
                        "SET trace_sort = on", "SET debug_print_rewritten = on"):
                data, msgs = read_all_after(w, sql)
                assert [e.get("C") for e in pgwire.errors(msgs)] == ["42501"], (sql, pgwire.errors(msgs))
    # A default set by an administrator reaches the session anyway: the
    # server's DEBUG and LOG notices are dropped by the relay.
    with shop.admin() as adm:
        adm.execute("ALTER ROLE analyst SET client_min_messages = debug5")
        adm.execute("ALTER ROLE analyst SET trace_sort = on")
    try:
        with wire(masked_proxy, "analyst") as w:
            w.send(pgwire.parse("SELECT id, email FROM customers ORDER BY email LIMIT 20") + pgwire.bind()
                   + pgwire.execute() + pgwire.sync() + pgwire.query("SELECT email FROM customers ORDER BY 1"))
            data, msgs = read_all(w, 2)
            assert_clean(data, raw_values, "analyst with debug5 default")
            severities = [pgwire.parse_error_fields(m.body).get("V") for m in msgs if m.type == b"N"]
            assert all(s in ("NOTICE", "WARNING", "INFO") for s in severities), severities
    finally:
        with shop.admin() as adm:
            adm.execute("ALTER ROLE analyst RESET client_min_messages")
            adm.execute("ALTER ROLE analyst RESET trace_sort")


# --- 6. startup options read as PostgreSQL reads them ------------------------------------

STARTUP_ATTACKS = (
    {"options": "-c debug_print_rewritten=on -c client_min_messages=log"},
    {"options": r"-c debug\_print\_rewritten=on -c client_min_messages=log"},
    {"options": "--debug-print-rewritten=on --client-min-messages=log"},
    {"options": "-cdebug_print_parse=on"},
    {"options": "-c DEBUG_PRINT_PLAN=on"},
    {"options": "-Ec debug_print_plan=on"},
    {"options": "-d 5"},
    {"options": "-d5"},
    {"options": r"-c r\ole=bi_readers"},
    {"options": "-c role=bi_readers"},
    {"options": "--role=bi_readers"},
    {"options": "-c session-authorization=admin"},
    {"options": "-c trace_sort=on"},
    {"options": "-c standard_conforming_strings=off"},
    {"options": "-c backslash_quote=on"},
    {"options": "-c client_min_messages=debug2"},
    {"options": "-c application_name=x -c role=bi_readers"},
    {"options": "-c application_name=x\\ -c\\ role=bi_readers extra"},
    {"ROLE": "bi_readers"},
    {"Role": "bi_readers"},
    {"debug_print_rewritten": "on"},
    {"client_min_messages": "log"},
    {"trace_sort": "on"},
    {"standard_conforming_strings": "off"},
)


@pytest.mark.parametrize("params", STARTUP_ATTACKS, ids=lambda p: repr(p))
def test_startup_attacks_refused(masked_proxy, params):
    for role in ROLES:
        fields = refused_startup(masked_proxy, role, params)
        assert fields.get("C") == "42501", fields
        assert "not allowed" in fields.get("M", ""), fields


def test_startup_settings_clients_use_are_accepted(masked_proxy):
    """What libpq, pgjdbc, psycopg, asyncpg and node-postgres send."""
    params = {"client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC", "extra_float_digits": "3",
              "application_name": "app", "search_path": "public", "statement_timeout": "10000",
              "options": "-c lock_timeout=5000 --idle-in-transaction-session-timeout=60000"}
    with wire(masked_proxy, "support", params) as w:
        assert pgwire.rows(w.simple_query("SHOW lock_timeout")) == [[b"5s"]]
        assert pgwire.rows(w.simple_query("SELECT current_user")) == [[b"support"]]
    with wire(masked_proxy, "analyst", {"client_encoding": "utf-8"}) as w:
        assert pgwire.rows(w.simple_query("SELECT current_user")) == [[b"analyst"]]


# --- names outside ASCII in another client encoding -------------------------------------

@pytest.fixture
def accented_proxy(pgcloak, shop, monkeypatch):
    """A protected table whose name has a non-ASCII letter (kundén)."""
    with shop.admin() as adm:
        adm.execute('CREATE TABLE public."kundén" (id int, adresse text)')
        adm.execute("""INSERT INTO public."kundén" VALUES (1, 'Rue Secrète 12345')""")
        adm.execute('GRANT SELECT ON public."kundén" TO support_team, analytics_team')
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    overrides = masking_overrides(shop.dbname)
    overrides["masking"] = dict(overrides["masking"])
    overrides["masking"]["protected_columns"] = overrides["masking"]["protected_columns"] + [
        {"column": "public.kundén.adresse", "category": "address"}]
    try:
        proxy = pgcloak(**overrides)
        with _connect(proxy, "support") as c:
            wait_for_masking(c)
        yield proxy
    finally:
        with shop.admin() as adm:
            adm.execute('DROP TABLE public."kundén"')


def test_non_ascii_protected_names_need_utf8(accented_proxy):
    secret = "Rue Secrète 12345".encode("latin-1")
    for role in ROLES:
        # In LATIN1 the name is spelled kund\xe9n; PostgreSQL converts it to
        # the catalog's UTF-8 name, pgcloak would not have recognised it.
        with wire(accented_proxy, role, {"client_encoding": "LATIN1"}) as w:
            for sql in (b"SELECT adresse || '' FROM kund\xe9n", b'SELECT upper(adresse) FROM "kund\xe9n"',
                        b"SELECT adresse FROM kund\xe9n", b"SELECT * FROM public.kund\xe9n",
                        b"SELECT count(*) FROM kund\xe9n WHERE adresse LIKE 'Rue Secr%'"):
                w.send(raw_query(sql))
                data, msgs = read_all(w, 1)
                assert secret.upper() not in data.upper(), (role, sql)
                assert [e.get("C") for e in pgwire.errors(msgs)] == ["0A000"], (sql, pgwire.errors(msgs))
            # ASCII-only statements are not affected.
            assert pgwire.rows(w.simple_query("SELECT 1")) == [[b"1"]]
        # In UTF8 the name matches and the column is masked.
        with wire(accented_proxy, role) as w:
            msgs = w.simple_query('SELECT adresse FROM "kundén"')
            assert not pgwire.errors(msgs)
            assert b"Rue Secr" not in b"".join(m.body for m in msgs)


# --- a startup parameter given twice -----------------------------------------------------

@pytest.mark.parametrize("first", ["admin", "app"])
@pytest.mark.parametrize("role", ROLES)
def test_duplicate_user_parameter_refused(masked_proxy, first, role):
    """PostgreSQL keeps the last `user`: pgcloak took the first, picked the
    unmasked policy of `admin`, while PostgreSQL ran the masked login."""
    body = struct.pack("!i", 3 << 16) + b"user\0" + first.encode() + b"\0database\0shop\0user\0" + role.encode() + b"\0\0"
    with pgwire.PgWire(masked_proxy.host, masked_proxy.port) as w:
        w.send(struct.pack("!i", len(body) + 4) + body)
        m = w.read_message()
        assert m.type == b"E", m
        fields = pgwire.parse_error_fields(m.body)
        assert fields.get("C") == "08P01", fields
        assert "appears more than once" in fields.get("M", ""), fields
