"""psycopg 3 client for test_drivers.py. Connects with TLS (verify-full
against the test CA) and SCRAM, runs parameterised queries and prints one
JSON document. The test runs it against pgcloak and against PostgreSQL
directly and compares the two outputs.

Environment: PGC_HOST PGC_PORT PGC_USER PGC_PASSWORD PGC_DB PGC_CA
"""

import datetime
import decimal
import hashlib
import json
import os
import sys

import psycopg

UNICODE = "h\u00e9llo w\u00f6rld \u65e5\u672c\u8a9e \U0001F418 \u0645\u0631\u062d\u0628\u0627"


def norm(v):
    if isinstance(v, (bytes, memoryview)):
        return {"bytea": bytes(v).hex()}
    if isinstance(v, datetime.datetime):
        return {"timestamp": v.astimezone(datetime.timezone.utc).isoformat()}
    if isinstance(v, decimal.Decimal):
        return {"numeric": str(v)}
    if isinstance(v, (list, tuple)):
        return [norm(x) for x in v]
    return v


def rows(cur):
    names = [d.name for d in cur.description]
    return [{k: norm(v) for k, v in zip(names, r)} for r in cur.fetchall()]


def main():
    e = os.environ
    conn = psycopg.connect(host=e["PGC_HOST"], port=e["PGC_PORT"], user=e["PGC_USER"],
                           password=e["PGC_PASSWORD"], dbname=e["PGC_DB"], sslmode="verify-full",
                           sslrootcert=e["PGC_CA"], connect_timeout=10, application_name="pgcloak-psycopg-test",
                           autocommit=True)
    out = {}
    with conn:
        out["tls"] = conn.pgconn.ssl_in_use
        out["identity"] = rows(conn.execute("SELECT current_user AS u, current_database() AS d"))
        for binary in (False, True):
            cur = conn.cursor(binary=binary)
            cur.execute(
                "SELECT %s::text AS t, %s::int AS i, %s::numeric AS n, %s::timestamptz AS ts, %s::bytea AS b, "
                "%s::text AS nul, %s::int[] AS ints, %s::text[] AS texts, %s::text AS uni, %s::bool AS flag, "
                "%s::float8 AS f",
                ["plain text", -2147483648, decimal.Decimal("12345678901234567890.123456789"),
                 datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc),
                 bytes([0, 1, 2, 254, 255]), None, [1, 2, 3], ["a", None, "\u00f6"], UNICODE, True, 3.25])
            out[f"types_{'binary' if binary else 'text'}"] = rows(cur)
        out["customers"] = rows(conn.execute(
            "SELECT id, name, balance, created_at FROM customers WHERE country = %s AND id <= %s ORDER BY id",
            ["JP", 60]))
        out["prepared"] = [rows(conn.execute("SELECT id, email FROM customers WHERE id = %s", [i], prepare=True))
                           for i in (7, 4242, 7)]
        try:
            conn.execute("SELECT 1 / %s::int AS boom", [0])
            out["error"] = None
        except psycopg.Error as ex:
            out["error"] = {"code": ex.sqlstate, "message": ex.diag.message_primary,
                            "severity": ex.diag.severity}
        out["after_error"] = rows(conn.execute("SELECT %s::int + 1 AS next", [41]))
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE TEMP TABLE t (v text)")
            conn.execute("INSERT INTO t SELECT %s || g FROM generate_series(1, 10) g", ["row-"])
            out["in_tx"] = rows(conn.execute("SELECT count(*)::int AS c FROM t"))
        h = hashlib.md5()
        n = 0
        with conn.transaction(), conn.cursor(name="big") as cur:  # server-side cursor: DECLARE + FETCH
            cur.execute("SELECT g, md5(g::text) AS h FROM generate_series(1, %s::int) g", [20000])
            for g, md5 in cur:
                h.update(f"{g}:{md5}\n".encode())
                n += 1
        out["big"] = {"rows": n, "md5": h.hexdigest()}
    json.dump(out, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
