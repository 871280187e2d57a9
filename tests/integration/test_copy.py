"""COPY FROM STDIN and COPY TO STDOUT of more than 100 MB through pgcloak
(TLS), checked by row count and MD5 against a direct connection."""

import hashlib

import psycopg
import pytest

from clients import connect

ROW_PAYLOAD = 1000
ROWS = 105_000  # ~105 MB of COPY text
CHUNK_ROWS = 1000
BASE = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_" * 20)[:ROW_PAYLOAD + 97]


def _rows(start: int, n: int) -> bytes:
    # COPY text format exactly as PostgreSQL prints it back: "id\tpayload\n".
    return "".join(f"{i}\t{BASE[i % 97:i % 97 + ROW_PAYLOAD]}\n" for i in range(start, start + n)).encode()


def _copy_out_md5(conn, sql):
    h, nbytes, nlines = hashlib.md5(), 0, 0
    with conn.cursor().copy(sql) as copy:
        for chunk in copy:
            h.update(chunk)
            nbytes += len(chunk)
            nlines += bytes(chunk).count(b"\n")
    return h.hexdigest(), nbytes, nlines


@pytest.mark.slow
def test_copy_100mb_in_and_out(pg, pgcloak):
    proxy = pgcloak()
    with connect(pg.dsn()) as direct:
        direct.execute("DROP TABLE IF EXISTS copy_big")
        direct.execute("CREATE TABLE copy_big (id integer NOT NULL, payload text NOT NULL)")
    try:
        sent = hashlib.md5()
        sent_bytes = 0
        with connect(proxy.dsn(sslmode="require")) as c:
            with c.cursor().copy("COPY copy_big (id, payload) FROM STDIN") as copy:
                for start in range(1, ROWS + 1, CHUNK_ROWS):
                    data = _rows(start, min(CHUNK_ROWS, ROWS + 1 - start))
                    sent.update(data)
                    sent_bytes += len(data)
                    copy.write(data)
            assert c.execute("SELECT count(*) FROM copy_big").fetchone() == (ROWS,)
        assert sent_bytes >= 100 * 1024 * 1024

        query = "COPY (SELECT id, payload FROM copy_big ORDER BY id) TO STDOUT"
        with connect(pg.dsn()) as direct:
            d_md5, d_bytes, d_lines = _copy_out_md5(direct, query)
        # What PostgreSQL stored is exactly what went in through pgcloak.
        assert (d_md5, d_bytes, d_lines) == (sent.hexdigest(), sent_bytes, ROWS)

        with connect(proxy.dsn(sslmode="require")) as c:
            p_md5, p_bytes, p_lines = _copy_out_md5(c, query)
            # The session is still in sync after a 100 MB CopyData stream.
            assert c.execute("SELECT 'after copy'").fetchone() == ("after copy",)
        assert (p_md5, p_bytes, p_lines) == (d_md5, d_bytes, d_lines)
    finally:
        with connect(pg.dsn()) as direct:
            direct.execute("DROP TABLE IF EXISTS copy_big")


def test_copy_from_bad_row_keeps_session_usable(pgcloak):
    proxy = pgcloak()
    with connect(proxy.dsn()) as c:
        c.execute("CREATE TEMP TABLE t (id integer, v text)")
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with c.cursor().copy("COPY t FROM STDIN") as copy:
                copy.write(_rows(1, 500))
                copy.write(b"not-a-number\tboom\n")
                copy.write(_rows(501, 500))
        assert c.execute("SELECT count(*) FROM t").fetchone() == (0,)
        with c.cursor().copy("COPY t FROM STDIN") as copy:
            copy.write(_rows(1, 10))
        assert c.execute("SELECT count(*), min(id), max(id) FROM t").fetchone() == (10, 1, 10)


def test_copy_binary_roundtrip(pg, pgcloak):
    proxy = pgcloak()
    query = "COPY (SELECT id, name, balance, created_at FROM customers ORDER BY id) TO STDOUT (FORMAT binary)"
    with connect(pg.dsn()) as d:
        direct = _copy_out_md5(d, query)
    with connect(proxy.dsn()) as c:
        via = _copy_out_md5(c, query)
    assert direct[1] > 100_000
    assert via == direct
