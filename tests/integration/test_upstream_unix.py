"""Upstream over a Unix socket: upstream.host is a directory, like libpq."""

from clients import connect


def test_upstream_unix_socket(pg, pgcloak):
    proxy = pgcloak(upstream={"host": pg.sockdir, "port": pg.port, "sslmode": "disable"})
    with connect(proxy.dsn(sslmode="require")) as c:
        assert c.pgconn.ssl_in_use
        # inet_server_addr() is NULL only on a Unix-socket backend connection.
        assert c.execute("SELECT inet_server_addr(), current_user, count(*) FROM customers").fetchone() == \
            (None, "scram_user", 5000)
