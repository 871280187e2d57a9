"""psql through pgcloak (TLS, SCRAM) prints exactly what it prints when
connected to PostgreSQL directly."""

import pytest

from clients import psql

CASES = {
    "select": ["-c", "SELECT id, name, email, balance, created_at FROM customers ORDER BY id LIMIT 25"],
    "describe_tables": ["-c", r"\d"],
    "describe_customers": ["-c", r"\d customers"],
    # Several statements in one simple-protocol Query message.
    "multi_statement": ["-c", "SELECT 1; SELECT 2;"],
    "multi_statement_with_error": ["-c", "SELECT 1 AS a; SELECT 1/0; SELECT 3 AS c;"],
    "unaligned_full_table": ["-A", "-F", ",", "-c", "SELECT * FROM customers ORDER BY id"],
    "script": ["-f", "-"],
}

SCRIPT = r"""
\set ON_ERROR_STOP 0
BEGIN;
CREATE TEMP TABLE t (a int, b text);
INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 100) i;
SELECT count(*), sum(a), max(b) FROM t;
SAVEPOINT s1;
SELECT no_such_column FROM t;
ROLLBACK TO SAVEPOINT s1;
SELECT a, b FROM t WHERE a % 25 = 0 ORDER BY a;
COMMIT;
\echo done
"""

# What each case must contain, so that two identical empty outputs can't pass.
EXPECT = {
    "select": "Customer 25",
    "describe_tables": "customers",
    "describe_customers": "created_at",
    "multi_statement": "?column?",
    "multi_statement_with_error": "division by zero",
    "unaligned_full_table": "5000,Customer 5000,customer5000@example.com",
    "script": "done",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_psql_output_matches_direct(case, pg, pgcloak, client_env):
    proxy = pgcloak()
    args = CASES[case]
    inp = SCRIPT if case == "script" else None
    direct = psql(pg.dsn(sslmode="require"), *args, env=client_env, input=inp)
    via = psql(proxy.dsn(sslmode="require"), *args, env=client_env, input=inp)
    assert EXPECT[case] in direct.stdout + direct.stderr, (direct.stdout, direct.stderr)
    assert via.returncode == direct.returncode, via.stderr
    assert via.stdout == direct.stdout
    assert via.stderr == direct.stderr


def test_psql_multi_statement_prints_every_result(pgcloak, client_env):
    proxy = pgcloak()
    out = psql(proxy.dsn(), "-A", "-t", "-c", "SELECT 1; SELECT 2; SELECT 'three';", env=client_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "2", "three"]


def test_psql_session_is_tls(pgcloak, client_env):
    proxy = pgcloak()
    out = psql(proxy.dsn(sslmode="require"), "-c", r"\conninfo", env=client_env)
    assert out.returncode == 0, out.stderr
    assert "SSL connection" in out.stdout
