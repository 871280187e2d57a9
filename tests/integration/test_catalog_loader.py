"""The masking catalog as pgcloak reads it (proxy/catalog_loader.cc,
proxy/policy_store.cc) from a real PostgreSQL 15: the shop fixture plus a few
objects made here for coverage (an inheritance child, views computing from
protected columns, a materialized view, a dropped column, a PL/pgSQL
operator, a SQL cast, citext's C operators).

C++ cannot be called from here, so tests/tools/catalog_dump does the load,
as the unprivileged catalog login `pgcloak`, and prints what it found as
JSON lines: $CATALOG_DUMP, else the one in $PGCLOAK_BIN's build tree, else
the newer of build/ and build-catalog/.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
import yaml

from shop import SHOP_PASSWORDS
from util import find_tool, wait_for

KEY = "catalog-test-key-" + "0123456789abcdef" * 2  # 49 bytes
NEWBIE = "catalog_cov_newbie"
LOGINS = ("admin", "app", "support", "analyst", NEWBIE)

# tests/support/shop_policy.h's masking section, as pgcloak's config file.
MASKING = yaml.safe_load("""
hash_key_env: PGCLOAK_TEST_MASK_KEY
protected_columns:
  - {column: public.customers.full_name, category: person_name}
  - {column: public.customers.email, category: email}
  - {column: public.customers.phone, category: phone}
  - {column: public.customers.ssn, category: national_id}
  - {column: public.customers.card_number, category: card_number}
  - {column: public.customers.birth_date, category: birth_date}
  - {column: public.customers.address, category: address}
  - {column: public.customers.notes, category: free_text}
  - {column: public.payments.card_number, category: card_number}
policies:
  - name: admins
    roles: [data_admins, app_services]
    default: allow
  - name: support
    roles: [support_team]
    default: redact
    rules:
      email: email
      phone: {mask: partial, keep_first: 0, keep_last: 2, fill: "*"}
      card_number: last4
      birth_date: {mask: generalize, to: year}
      national_id: redact
      person_name: allow
      free_text: redact_patterns
  - name: analytics
    roles: [analytics_team]
    default: redact
    rules:
      email: hash
      national_id: deny
default_policy:
  default: redact
""")

COVERAGE_SQL = """
CREATE SCHEMA catalog_cov;
-- Inheritance (not a partition): the child gets the parent's columns first.
CREATE TABLE catalog_cov.vip_customers (tier text) INHERITS (public.customers);
-- A view mixing a computed column with passed-through ones.
CREATE VIEW catalog_cov.contact_labels AS
  SELECT id, full_name || ' <' || email || '>' AS label, phone FROM public.customers;
-- A whole-row reference: a dependency on the relation, not on columns.
CREATE VIEW catalog_cov.customer_rows AS SELECT c::text AS row_text FROM public.customers AS c;
CREATE MATERIALIZED VIEW catalog_cov.contact_emails AS
  SELECT id, email FROM public.customers WITH NO DATA;
-- A dropped column keeps its attnum slot: columns are a (1) and c (3).
CREATE TABLE catalog_cov.dropped_col (a int, b text, c int);
ALTER TABLE catalog_cov.dropped_col DROP COLUMN b;
-- An operator that runs PL/pgSQL.
CREATE FUNCTION catalog_cov.peek_eq(text, text) RETURNS boolean
  LANGUAGE plpgsql AS $$ BEGIN RETURN $1 = $2; END $$;
CREATE OPERATOR catalog_cov.=== (LEFTARG = text, RIGHTARG = text, FUNCTION = catalog_cov.peek_eq);
-- A cast implemented in SQL (no C anywhere).
CREATE TYPE catalog_cov.badge AS (label text);
CREATE FUNCTION catalog_cov.to_badge(text) RETURNS catalog_cov.badge
  LANGUAGE sql IMMUTABLE AS $$ SELECT ROW($1)::catalog_cov.badge $$;
CREATE CAST (text AS catalog_cov.badge) WITH FUNCTION catalog_cov.to_badge(text);
"""


def tool_path() -> str:
    try:
        return find_tool("catalog_dump", "CATALOG_DUMP", ("build", "build-catalog"))
    except FileNotFoundError as e:
        pytest.fail(str(e))


def citext_available() -> bool:
    return os.path.exists("/usr/share/postgresql/15/extension/citext.control")


@pytest.fixture(scope="module")
def coverage(shop):
    """The extra objects, in schema catalog_cov of the shop database, and a
    login with no group yet; all removed afterwards."""
    with shop.admin() as c:
        c.execute("DROP SCHEMA IF EXISTS catalog_cov CASCADE")
        c.execute(f"DROP ROLE IF EXISTS {NEWBIE}")
        c.execute(COVERAGE_SQL)
        if citext_available():
            c.execute("CREATE EXTENSION citext SCHEMA catalog_cov")
        c.execute(f"CREATE ROLE {NEWBIE} LOGIN")
    yield shop
    with shop.admin() as c:
        c.execute("DROP EXTENSION IF EXISTS citext")
        c.execute("DROP SCHEMA IF EXISTS catalog_cov CASCADE")
        c.execute(f"DROP ROLE IF EXISTS {NEWBIE}")


class Dump:
    """One dump: the JSON lines of catalog_dump up to its "end" line."""

    def __init__(self, lines: list[dict]):
        self.lines = lines
        self.end = lines[-1]
        errors = [x for x in lines if x["kind"] == "error"]
        assert not errors, errors
        self.relations = {x["name"]: x for x in lines if x["kind"] == "relation"}
        self.roles = {x["name"]: x for x in lines if x["kind"] == "role"}
        self.protection = {x["relation"]: {c["name"]: c for c in x["columns"]}
                           for x in lines if x["kind"] == "protection"}
        self.policies = {x["login"]: x for x in lines if x["kind"] == "policy"}
        self.warnings = [x["message"] for x in lines if x["kind"] == "warning"]
        (self.user_objects,) = [x for x in lines if x["kind"] == "user_objects"]


class DumpTool:
    """catalog_dump --reload: one dump at start, another per line on stdin."""

    def __init__(self, shop, workdir: str):
        cfg = {"masking": MASKING, "catalog": {"dbname": shop.dbname, "user": "pgcloak"}}
        path = os.path.join(workdir, "catalog.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        env = dict(os.environ, PGCLOAK_TEST_MASK_KEY=KEY, CATALOG_DUMP_PASSWORD=SHOP_PASSWORDS["pgcloak"])
        cmd = [tool_path(), "--config", path, "--host", shop.cluster.host, "--port", str(shop.cluster.port),
               "--user", "pgcloak", "--dbname", shop.dbname, "--sslmode", "disable", "--reload"]
        for login in LOGINS:
            cmd += ["--login", login]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        # A hung load must fail the test, not hang it.
        self.watchdog = threading.Timer(60, self.proc.kill)
        self.watchdog.start()

    def read(self) -> Dump:
        lines = []
        for raw in self.proc.stdout:
            lines.append(json.loads(raw))
            if lines[-1]["kind"] == "end":
                return Dump(lines)
        raise AssertionError(f"catalog_dump ended early ({self.proc.wait()}): {self.proc.stderr.read()}")

    def reload(self) -> Dump:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> str:
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=30)
        self.watchdog.cancel()
        log = self.proc.stderr.read()
        assert rc == 0, log
        return log


@pytest.fixture(scope="module")
def dumps(coverage, tmp_path_factory):
    """The first dump, and a second one after granting NEWBIE a group."""
    tool = DumpTool(coverage, str(tmp_path_factory.mktemp("catalog")))
    first = tool.read()
    with coverage.admin() as c:
        c.execute(f"GRANT support_team TO {NEWBIE}")
        c.execute("CREATE TABLE catalog_cov.late_arrival (email text)")
    second = tool.reload()
    log = tool.close()
    return first, second, log


def test_columns_come_in_attnum_order_with_their_types(dumps):
    d, _, _ = dumps
    customers = d.relations["public.customers"]
    assert customers["relkind"] == "r"
    assert [c["name"] for c in customers["columns"]] == [
        "id", "full_name", "email", "phone", "ssn", "card_number", "birth_date", "address", "notes", "created_at"]
    by_name = {c["name"]: c for c in customers["columns"]}
    assert by_name["id"] == {"name": "id", "attnum": 1, "type": "bigint", "type_oid": 20, "typmod": -1,
                             "typcategory": "N"}
    assert by_name["created_at"]["type"] == "timestamp with time zone"
    assert by_name["created_at"]["typcategory"] == "D"
    amount = {c["name"]: c for c in d.relations["public.orders"]["columns"]}["amount"]
    assert (amount["type"], amount["type_oid"], amount["typmod"]) == ("numeric(10,2)", 1700, (10 << 16 | 2) + 4)
    dropped = d.relations["catalog_cov.dropped_col"]["columns"]
    assert [(c["name"], c["attnum"]) for c in dropped] == [("a", 1), ("c", 3)]


def test_system_schemas_are_left_out(dumps):
    d, _, _ = dumps
    schemas = {name.split(".")[0] for name in d.relations}
    assert not schemas & {"pg_catalog", "information_schema", "pg_toast"}
    assert "public.customer_contacts" in d.relations
    assert d.relations["public.customer_contacts"]["relkind"] == "v"
    assert d.relations["catalog_cov.contact_emails"]["relkind"] == "m"


def test_partitions_have_their_parent_and_its_protection(dumps):
    d, _, _ = dumps
    assert d.relations["public.payments"]["relkind"] == "p"
    partitions = [r for r in d.relations.values() if r["name"].startswith("public.payments_")]
    assert len(partitions) == 25  # 2025-01 .. 2026-12 and the default
    for p in partitions:
        assert p["parents"] == ["public.payments"], p["name"]
        card = d.protection[p["name"]]["card_number"]
        assert (card["category"], card["source"]) == ("card_number", "public.payments.card_number")
        assert d.protection[p["name"]]["amount"]["category"] is None


def test_inheritance_child_inherits_protection(dumps):
    d, _, _ = dumps
    vip = d.relations["catalog_cov.vip_customers"]
    assert vip["parents"] == ["public.customers"]
    prot = d.protection["catalog_cov.vip_customers"]
    assert prot["email"]["category"] == "email"
    assert prot["ssn"]["category"] == "national_id"
    assert prot["tier"]["category"] is None
    assert prot["id"]["category"] is None


def test_view_columns_are_protected_through_the_view(dumps):
    d, _, _ = dumps
    reads = {(r["relation"], r["attnum"], r["column"]) for r in d.relations["public.customer_contacts"]["reads"]}
    # Column references only: PostgreSQL drops the whole-relation dependency
    # when there are column ones.
    assert reads == {("public.customers", n, c) for n, c in ((1, "id"), (2, "full_name"), (3, "email"), (4, "phone"))}
    prot = d.protection["public.customer_contacts"]
    assert (prot["email"]["category"], prot["email"]["source"]) == ("email", "public.customers.email")
    assert prot["phone"]["category"] == "phone"
    assert prot["full_name"]["category"] == "person_name"
    assert prot["id"]["category"] is None
    assert not any(c["derived"] for c in prot.values())
    emails = d.protection["catalog_cov.contact_emails"]
    assert emails["email"]["category"] == "email"


def test_computed_view_column_is_derived(dumps):
    d, _, _ = dumps
    prot = d.protection["catalog_cov.contact_labels"]
    label = prot["label"]
    assert label["derived"] is True
    assert set(label["derived_from"]) >= {"public.customers.full_name:person_name", "public.customers.email:email"}
    assert prot["phone"]["category"] == "phone" and not prot["phone"]["derived"]
    assert prot["id"]["category"] is None and not prot["id"]["derived"]


def test_whole_row_reads_are_attnum_zero_and_derived(dumps):
    d, _, _ = dumps
    reads = d.relations["catalog_cov.customer_rows"]["reads"]
    assert [(r["relation"], r["attnum"]) for r in reads] == [("public.customers", 0)]
    row = d.protection["catalog_cov.customer_rows"]["row_text"]
    assert row["derived"] is True
    assert "public.customers.ssn:national_id" in row["derived_from"]


def test_every_protected_column_was_found(dumps):
    d, _, _ = dumps
    assert d.warnings == []


def test_roles_resolve_through_nested_groups(dumps):
    d, _, _ = dumps
    analyst = d.roles["analyst"]
    assert analyst["member_of"] == ["bi_readers"]
    assert {"bi_readers", "analytics_team"} <= set(analyst["groups"])
    assert d.roles["bi_readers"]["member_of"] == ["analytics_team"]
    assert {login: p["policy"] for login, p in d.policies.items()} == {
        "admin": "admins", "app": "admins", "support": "support", "analyst": "analytics", NEWBIE: "default"}
    assert d.policies["admin"]["masks_anything"] is False
    assert d.policies["analyst"]["masks_anything"] is True


def test_user_functions_operators_and_casts(dumps):
    d, _, _ = dumps
    u = d.user_objects
    assert {"get_auth", "peek_eq", "to_badge"} <= set(u["functions"])
    assert "===" in u["operators"]
    assert "badge" in u["casts"]
    # Built-in operators, and C operators of an extension, run no user code.
    assert "=" not in u["operators"]
    assert "||" not in u["operators"]
    if citext_available():
        assert "citext" in u["functions"]  # its functions are not PostgreSQL's own...
        assert "citext" not in u["casts"]  # ...but its casts and operators are C
        assert not set(u["operators"]) & {"=", "<>", "<", "~~", "~"}


def test_a_reload_sees_new_memberships_and_relations(dumps):
    first, second, log = dumps
    assert second.end["generation"] == first.end["generation"] + 1
    assert first.roles[NEWBIE]["groups"] == []
    assert second.roles[NEWBIE]["member_of"] == ["support_team"]
    assert second.policies[NEWBIE]["policy"] == "support"
    assert "catalog_cov.late_arrival" not in first.relations
    assert "catalog_cov.late_arrival" in second.relations
    # One summary line per load, never the catalog login's password.
    assert log.count("masking catalog generation") == 2, log
    assert SHOP_PASSWORDS["pgcloak"] not in log


# --- pgcloak itself --------------------------------------------------------------


def masked_pgcloak(pgcloak, shop, monkeypatch, password: str):
    monkeypatch.setenv("PGCLOAK_TEST_MASK_KEY", KEY)
    return pgcloak(masking=MASKING, catalog={"dbname": shop.dbname, "user": "pgcloak", "password": password,
                                             "refresh_interval": "1s"})


def test_pgcloak_loads_the_catalog_at_start_and_every_interval(pgcloak, coverage, monkeypatch):
    p = masked_pgcloak(pgcloak, coverage, monkeypatch, SHOP_PASSWORDS["pgcloak"])
    wait_for(lambda: "masking catalog generation 2 loaded" in p.log(), timeout=20, what="two catalog loads")
    log = p.log()
    assert "masking 9 protected columns with 3 policies" in log
    assert "WARN" not in log and "ERROR" not in log, log
    p.expect_exit = True
    assert p.terminate() == 0
    assert SHOP_PASSWORDS["pgcloak"] not in p.log()


def test_pgcloak_keeps_running_while_the_catalog_cannot_load(pgcloak, coverage, monkeypatch):
    p = masked_pgcloak(pgcloak, coverage, monkeypatch, "wrong-password")
    wait_for(lambda: "masking catalog still not loaded" in p.log(), timeout=20, what="a retried catalog load")
    log = p.log()
    assert log.count("ERROR cannot load the masking catalog") == 1, log  # then warnings
    assert "password authentication failed" in log
    assert p.alive()
    p.expect_exit = True
    assert p.terminate() == 0
