"""Extended query protocol through pgcloak: an error inside a
Parse/Bind/Execute batch skips to Sync, pipelining, text and binary
parameters and results."""

import datetime
import decimal
import struct

import psycopg
import pytest

import pgwire
from clients import connect

P = pgwire


def _types(msgs):
    return [m.type for m in msgs]


def _pbe(sql):
    return P.parse(sql) + P.bind() + P.execute()


# Fails in Execute, not at plan time in Bind (the planner folds a literal 1/0).
RUNTIME_ERROR = "SELECT 1 / (g - 1) FROM generate_series(1, 1) g"


@pytest.fixture
def wire(pgcloak):
    proxy = pgcloak()
    w = P.PgWire(proxy.host, proxy.port, timeout=20)
    w.start_tls()
    w.startup("trust_user", "app")
    w.simple_query("CREATE TEMP TABLE ext_t (id integer)")
    yield w
    w.close()


def test_error_mid_batch_skips_until_sync(wire):
    w = wire
    w.send(_pbe("INSERT INTO ext_t VALUES (1)") + _pbe(RUNTIME_ERROR) + _pbe("INSERT INTO ext_t VALUES (3)")
           + P.sync())
    msgs = w.read_until_ready()
    # ParseComplete, BindComplete, CommandComplete; ParseComplete, BindComplete,
    # ErrorResponse; the third statement is skipped; ReadyForQuery.
    assert _types(msgs) == [b"1", b"2", b"C", b"1", b"2", b"E", b"Z"], msgs
    assert P.errors(msgs)[0]["C"] == "22012"
    assert msgs[-1].body in (b"I", b"E")
    # Messages before Sync form one implicit transaction: the first INSERT is gone.
    assert P.rows(w.simple_query("SELECT count(*) FROM ext_t")) == [[b"0"]]
    # The connection stays usable for more extended-protocol work.
    w.send(P.parse("SELECT $1::int * 2", param_types=[23]) + P.bind([b"21"]) + P.execute() + P.sync())
    msgs = w.read_until_ready()
    assert _types(msgs) == [b"1", b"2", b"D", b"C", b"Z"]
    assert P.rows(msgs) == [[b"42"]]
    assert msgs[-1].body == b"I"


def test_error_in_explicit_transaction_gives_E_status(wire):
    w = wire
    assert w.simple_query("BEGIN")[-1].body == b"T"
    w.send(_pbe("INSERT INTO ext_t VALUES (1)") + _pbe(RUNTIME_ERROR) + _pbe("SELECT 3") + P.sync())
    msgs = w.read_until_ready()
    assert _types(msgs) == [b"1", b"2", b"C", b"1", b"2", b"E", b"Z"]
    assert msgs[-1].body == b"E"
    # In a failed transaction everything errors until ROLLBACK.
    msgs = w.simple_query("SELECT 1")
    assert P.errors(msgs)[0]["C"] == "25P02"
    assert w.simple_query("ROLLBACK")[-1].body == b"I"
    assert P.rows(w.simple_query("SELECT count(*) FROM ext_t")) == [[b"0"]]


def test_parse_error_skips_bind_and_execute(wire):
    w = wire
    w.send(P.parse("SELEC nonsense") + P.bind() + P.execute() + _pbe("SELECT 2") + P.sync())
    msgs = w.read_until_ready()
    assert _types(msgs) == [b"E", b"Z"]
    assert P.errors(msgs)[0]["C"] == "42601"
    assert P.rows(w.simple_query("SELECT 'ok'")) == [[b"ok"]]


def test_several_syncs_pipelined(wire):
    """Three Sync-terminated batches sent at once, the middle one failing:
    only the middle batch is lost."""
    w = wire
    w.send(_pbe("SELECT 'a'") + P.sync() + _pbe(RUNTIME_ERROR) + _pbe("SELECT 'skipped'") + P.sync()
           + _pbe("SELECT 'c'") + P.sync())
    a, b, c = w.read_until_ready(), w.read_until_ready(), w.read_until_ready()
    assert P.rows(a) == [[b"a"]] and a[-1].body == b"I"
    assert _types(b) == [b"1", b"2", b"E", b"Z"]
    assert P.rows(c) == [[b"c"]] and c[-1].body == b"I"


def test_named_statement_portal_and_row_limit(wire):
    w = wire
    w.send(P.parse("SELECT g FROM generate_series(1, 5) g", name="s1") + P.sync())
    assert _types(w.read_until_ready()) == [b"1", b"Z"]
    assert w.simple_query("BEGIN")[-1].body == b"T"
    w.send(P.bind(stmt="s1", portal="p1") + P.describe_portal("p1") + P.execute("p1", max_rows=2)
           + P.execute("p1", max_rows=2) + P.execute("p1", max_rows=0) + P.sync())
    msgs = w.read_until_ready()
    # BindComplete, RowDescription, 2 rows + PortalSuspended, 2 rows + PortalSuspended, 1 row + CommandComplete
    assert _types(msgs) == [b"2", b"T", b"D", b"D", b"s", b"D", b"D", b"s", b"D", b"C", b"Z"]
    assert [r[0] for r in P.rows(msgs)] == [b"1", b"2", b"3", b"4", b"5"]
    w.simple_query("COMMIT")


def test_text_and_binary_parameters_raw(wire):
    w = wire
    sql = "SELECT $1::int4 + 1, $2::text || '!', $3::bytea, $4::int8, $5::text"
    params = [struct.pack("!i", 41), "caf\u00e9 \u65e5\u672c".encode(), b"\x00\x01\xfe\xff", None, b"text param"]
    w.send(P.parse(sql, param_types=[23, 25, 17, 20, 25])
           + P.bind(params, param_formats=[1, 0, 1, 1, 0], result_formats=[1, 0, 1, 1, 0])
           + P.execute() + P.sync())
    msgs = w.read_until_ready()
    assert _types(msgs) == [b"1", b"2", b"D", b"C", b"Z"], P.errors(msgs)
    assert P.rows(msgs) == [[struct.pack("!i", 42), "caf\u00e9 \u65e5\u672c!".encode(), b"\x00\x01\xfe\xff",
                             None, b"text param"]]


VALUES = [
    42, -(2 ** 40), "plain", "unicode \u00e9\u00e8 \u4e2d\u6587 \U0001F600", b"\x00\xff binary",
    None, decimal.Decimal("12345.6789"), datetime.datetime(2024, 2, 29, 12, 34, 56, 789000,
                                                           tzinfo=datetime.timezone.utc),
    [1, 2, 3], True, 3.25,
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_parameterised_queries_psycopg(binary, pg, pgcloak):
    proxy = pgcloak()

    def roundtrip(dsn):
        with connect(dsn) as c:
            out = []
            for v in VALUES:
                out.append(c.execute("SELECT %s", [v], binary=binary).fetchone()[0])
            out.append(c.execute("SELECT %s::text[]", [["a", None, "c"]], binary=binary).fetchone()[0])
            out.append(c.execute("SELECT %s::int + %s::int, %s || %s", [1, 2, "x", "y"], binary=binary).fetchone())
            return out

    via = roundtrip(proxy.dsn())
    assert via == roundtrip(pg.dsn())
    assert via[:len(VALUES)] == VALUES
    assert via[-2:] == [["a", None, "c"], (3, "xy")]


def test_psycopg_pipeline_with_error(pg, pgcloak):
    proxy = pgcloak()

    def run(dsn):
        with connect(dsn) as c:
            c.execute("CREATE TEMP TABLE pt (id integer)")
            err = None
            try:
                with c.pipeline():
                    c.execute("INSERT INTO pt VALUES (1)")
                    c.execute("SELECT 1/0")
                    c.execute("INSERT INTO pt VALUES (3)")
            except psycopg.Error as e:
                err = type(e).__name__, e.sqlstate
            count = c.execute("SELECT count(*) FROM pt").fetchone()[0]
            with c.pipeline():
                cur1 = c.execute("SELECT 'p1'")
                cur2 = c.execute("SELECT %s::int * 3", [5])
            return err, count, cur1.fetchone(), cur2.fetchone()

    via = run(proxy.dsn())
    assert via == run(pg.dsn())
    assert via[0] == ("DivisionByZero", "22012")
    assert via[2:] == (("p1",), (15,))
