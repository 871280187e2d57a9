"""A throwaway PostgreSQL 15 cluster for the integration tests.

initdb into a temp directory owned by the postgres OS user (through runuser
when the tests run as root), TLS on with the test CA's certificate, loopback
only, a free port, and roles for every authentication method pgcloak relays.
The packaged 15/main cluster is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess

import psycopg
from psycopg.conninfo import make_conninfo

from certs import Certs
from util import as_postgres, chown_postgres, free_port, pg_tool, run, tail_file

# Every role's password; trust_user authenticates by pg_hba 'trust'.
PASSWORDS = {
    "scram_user": "scram-secret-1",
    "md5_user": "md5-secret-2",
    "clear_user": "clear-secret-3",
    "trust_user": None,
}

PG_HBA = """\
# TYPE  DATABASE  USER        ADDRESS         METHOD
local   all       all                         trust
host    all       trust_user  127.0.0.1/32    trust
host    all       md5_user    127.0.0.1/32    md5
host    all       clear_user  127.0.0.1/32    password
host    all       all         127.0.0.1/32    scram-sha-256
"""

CUSTOMER_ROWS = 5000


class Cluster:
    host = "127.0.0.1"

    def __init__(self, base: str, certs: Certs):
        self.base = base  # owned by postgres when running as root
        self.datadir = os.path.join(base, "data")
        self.sockdir = base
        self.logfile = os.path.join(base, "postgres.log")
        self.port = free_port()
        self.certs = certs
        self.running = False

    # -- lifecycle ------------------------------------------------------------
    def init_and_start(self) -> None:
        run(as_postgres([pg_tool("initdb"), "-D", self.datadir, "-U", "postgres", "-E", "UTF8",
                         "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256"]),
            timeout=180, check=True)
        # The cluster's key must be owned by postgres and not group/world readable.
        crt, key = os.path.join(self.base, "server.crt"), os.path.join(self.base, "server.key")
        shutil.copyfile(self.certs.pg_crt, crt)
        shutil.copyfile(self.certs.pg_key, key)
        os.chmod(crt, 0o644)
        os.chmod(key, 0o600)
        chown_postgres(crt)
        chown_postgres(key)
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            f.write(f"""
# --- pgcloak integration tests ---
port = {self.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{self.sockdir}'
ssl = on
ssl_cert_file = '{crt}'
ssl_key_file = '{key}'
max_connections = 60
fsync = off
synchronous_commit = off
full_page_writes = off
# Autovacuum takes locks at moments no test controls: a VACUUM ANALYZE of a
# freshly loaded table deadlocked a fixture's DDL transaction in CI. The
# fixtures ANALYZE what they load themselves.
autovacuum = off
log_connections = on
log_disconnections = on
log_line_prefix = '%m [%p] %q%u@%d/%a '
""")
        with open(os.path.join(self.datadir, "pg_hba.conf"), "w") as f:
            f.write(PG_HBA)
        run(as_postgres([pg_tool("pg_ctl"), "-D", self.datadir, "-l", self.logfile, "-w", "-t", "60", "start"]),
            timeout=120, check=True)
        self.running = True
        self._create_roles_and_data()

    def stop(self) -> None:
        if not self.running:
            return
        try:
            run(as_postgres([pg_tool("pg_ctl"), "-D", self.datadir, "-m", "fast", "-w", "-t", "30", "stop"]),
                timeout=60)
        except subprocess.TimeoutExpired:
            run(as_postgres([pg_tool("pg_ctl"), "-D", self.datadir, "-m", "immediate", "-w", "-t", "30",
                             "stop"]), timeout=60)
        self.running = False

    def log_tail(self, nbytes: int = 20000) -> str:
        return tail_file(self.logfile, nbytes, "postgres")

    # -- connections ------------------------------------------------------------
    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        """Superuser over the Unix socket (local trust), autocommit."""
        return psycopg.connect(host=self.sockdir, port=self.port, user="postgres", dbname=dbname,
                               autocommit=True, connect_timeout=10)

    def dsn(self, user: str = "scram_user", dbname: str = "app", sslmode: str = "require", **kw) -> str:
        """Direct TCP connection string (the reference pgcloak is compared against)."""
        params = dict(host=self.host, port=self.port, user=user, dbname=dbname, sslmode=sslmode,
                      connect_timeout=10)
        if PASSWORDS.get(user):
            params["password"] = PASSWORDS[user]
        params.update(kw)
        return make_conninfo(**params)

    def _create_roles_and_data(self) -> None:
        with self.admin() as c:
            c.execute(f"CREATE ROLE scram_user LOGIN PASSWORD '{PASSWORDS['scram_user']}'")
            c.execute("SET password_encryption = 'md5'")
            c.execute(f"CREATE ROLE md5_user LOGIN PASSWORD '{PASSWORDS['md5_user']}'")
            c.execute("RESET password_encryption")
            c.execute(f"CREATE ROLE clear_user LOGIN PASSWORD '{PASSWORDS['clear_user']}'")
            c.execute("CREATE ROLE trust_user LOGIN")
            c.execute("CREATE DATABASE app OWNER scram_user")
            stored = dict(c.execute("SELECT rolname, rolpassword FROM pg_authid "
                                    "WHERE rolname IN ('scram_user', 'md5_user')").fetchall())
            # md5 auth only happens when the stored verifier is MD5.
            assert stored["scram_user"].startswith("SCRAM-SHA-256$"), stored
            assert stored["md5_user"].startswith("md5"), stored
        with psycopg.connect(host=self.sockdir, port=self.port, user="scram_user", dbname="app",
                             autocommit=True, connect_timeout=10) as c:
            c.execute("""
                CREATE TABLE customers (
                    id         integer PRIMARY KEY,
                    name       text NOT NULL,
                    email      text NOT NULL,
                    country    text NOT NULL,
                    balance    numeric(12, 2) NOT NULL,
                    created_at timestamptz NOT NULL
                )""")
            c.execute(f"""
                INSERT INTO customers
                SELECT i, 'Customer ' || i, 'customer' || i || '@example.com',
                       (ARRAY['FR','DE','JP','BR','US'])[1 + i % 5],
                       round((i * 37 % 100000) / 100.0, 2),
                       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 hour'
                FROM generate_series(1, {CUSTOMER_ROWS}) AS i""")
            c.execute("CREATE INDEX customers_country ON customers (country)")
            c.execute("GRANT SELECT ON customers TO PUBLIC")
            c.execute("ANALYZE customers")


def make_cluster(root: str, certs: Certs) -> Cluster:
    base = os.path.join(root, "pg")
    os.makedirs(base)
    os.chmod(base, 0o700)
    chown_postgres(base)
    return Cluster(base, certs)
