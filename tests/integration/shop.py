"""The shared `shop` fixture (deploy/fixture/shop.sql) in the test cluster.

It is loaded with deploy/fixture/load.sh, the same loader deploy/demo.sh
uses, so the tests exercise exactly what the demo and the benchmarks get.
Roles are cluster-wide: loading creates (or resets) the fixture's logins and
group roles in the session cluster, next to pgcluster.py's roles."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgcluster import Cluster
from util import run

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHOP_SQL = os.path.join(REPO, "deploy", "fixture", "shop.sql")
LOAD_SH = os.path.join(REPO, "deploy", "fixture", "load.sh")

# Demo-only passwords, documented in deploy/fixture/README.md.
SHOP_PASSWORDS = {
    "admin": "admin-demo",
    "app": "app-demo",
    "support": "support-demo",
    "analyst": "analyst-demo",
    "pgcloak": "pgcloak-demo",
}

# Direct memberships (member -> group); analyst reaches analytics_team only
# through bi_readers.
SHOP_MEMBERSHIPS = {
    ("admin", "data_admins"),
    ("app", "app_services"),
    ("support", "support_team"),
    ("analyst", "bi_readers"),
    ("bi_readers", "analytics_team"),
}
SHOP_GROUPS = ("data_admins", "app_services", "support_team", "analytics_team", "bi_readers")

CUSTOMERS_PER_SCALE = 10_000


@dataclass
class Shop:
    cluster: Cluster
    dbname: str
    scale: int

    @property
    def customers(self) -> int:
        return CUSTOMERS_PER_SCALE * self.scale

    def dsn(self, user: str, sslmode: str = "require", **kw) -> str:
        """Direct TCP connection string to PostgreSQL (SCRAM via pg_hba)."""
        params = dict(host=self.cluster.host, port=self.cluster.port, user=user, dbname=self.dbname,
                      sslmode=sslmode, connect_timeout=10)
        if user in SHOP_PASSWORDS:
            params["password"] = SHOP_PASSWORDS[user]
        params.update(kw)
        return make_conninfo(**params)

    def connect(self, user: str, **kw) -> psycopg.Connection:
        return psycopg.connect(self.dsn(user, **kw), autocommit=True)

    def admin(self) -> psycopg.Connection:
        """Superuser over the Unix socket, autocommit."""
        return self.cluster.admin(self.dbname)


def load_shop(cluster: Cluster, dbname: str = "shop", scale: int = 1, recreate: bool = False,
              timeout: float = 900) -> Shop:
    """Creates `dbname` (unless it exists) and loads the fixture into it."""
    cmd = [LOAD_SH, "--host", cluster.sockdir, "--port", str(cluster.port),
           "--dbname", dbname, "--scale", str(scale)]
    if recreate:
        cmd.append("--recreate")
    run(cmd, timeout=timeout, check=True)
    return Shop(cluster, dbname, scale)


def drop_database(cluster: Cluster, dbname: str) -> None:
    with cluster.admin() as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
