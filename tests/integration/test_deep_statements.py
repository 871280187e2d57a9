"""One statement must not crash pgcloak (issue: "One statement must not
crash pgcloak"): statements nested deeper than pgcloak's analysis allows
(rules/parse_bounds.h) get an error, and pgcloak, the other sessions on its
relay threads and the audit trail go on. Before the bound, `SELECT` with
5,000 `NOT` killed the process with a stack overflow in the analysis.

Masked (support, analysed by the rewriter and the audit) and unmasked
(admin, analysed by the audit only) logins, in the simple and the extended
protocol."""
from __future__ import annotations

import os
import time

import pytest

import pgwire
from audit_fixture import audit_overrides, statements, write_key
from masking_fixture import MASK_KEY, MASK_KEY_ENV, masking_overrides, wait_for_masking
from masking_fixture import connect as _connect
from proxy import deep_merge
from shop import SHOP_PASSWORDS


def deep_statements() -> dict[str, str]:
    return {
        "not": "SELECT " + "NOT " * 5000 + "true",
        "not-deeper": "SELECT " + "NOT " * 50000 + "true",
        "parentheses": "SELECT " + "(" * 4000 + "1 + 1" + ")" * 4000,
        "operator chain": "SELECT 1" + "+1" * 5000,
        "operator chain 1 MB": "SELECT 1" + "+1" * 500000,
        "cast chain": "SELECT 1" + "::int" * 3000,
        "array": "SELECT " + "ARRAY[" * 3000 + "1" + "]" * 3000,
        "case": "SELECT " + "CASE WHEN true THEN " * 3000 + "1" + " END" * 3000,
        "subqueries": "SELECT " + "(SELECT " * 3000 + "1" + ")" * 3000,
        "union chain": "SELECT 1" + " UNION SELECT 1" * 5000,
        "reads customers": "SELECT email" + " || 'x'" * 5000 + " FROM customers",
        # Chains whose steps hold separators (a red-team pass crashed pgcloak
        # with the first one).
        "case operands": "SELECT 1" + "+CASE WHEN true THEN 1 END" * 30000 + " FROM customers",
        "union with lists": "SELECT 1, 2" + " UNION SELECT 1, 2 WHERE true AND true" * 20000,
    }


@pytest.fixture
def proxy(pgcloak, shop, workroot, monkeypatch):
    monkeypatch.setenv(MASK_KEY_ENV, MASK_KEY)
    audit_dir = os.path.join(workroot, "deep-audit")
    os.makedirs(audit_dir, exist_ok=True)
    write_key(audit_dir)
    p = pgcloak(**deep_merge(masking_overrides(shop.dbname), audit_overrides(audit_dir)))
    p.audit_dir = audit_dir
    with _connect(p, "support") as c:
        wait_for_masking(c)
    return p


@pytest.mark.parametrize("role", ["support", "admin"])
def test_deep_statements_get_an_error_and_pgcloak_goes_on(proxy, role):
    bystander = pgwire.PgWire(proxy.host, proxy.port)
    bystander.startup("analyst", "shop", password=SHOP_PASSWORDS["analyst"])
    with pgwire.PgWire(proxy.host, proxy.port, timeout=120) as w:
        w.startup(role, "shop", password=SHOP_PASSWORDS[role])
        for what, sql in deep_statements().items():
            msgs = w.simple_query(sql, timeout=120)
            errs = pgwire.errors(msgs)
            # A masked session's statement that reads protected data must be
            # analysed, so it gets pgcloak's 54001. The others are
            # PostgreSQL's to answer: its own 54001, bison's "memory
            # exhausted" (42601), or the result where it manages.
            if role == "support" and "customers" in sql:
                assert errs and errs[0].get("C") == "54001", (what, errs)
            # Extended protocol too, with a Sync.
            w.send(pgwire.parse(sql) + pgwire.bind() + pgwire.execute() + pgwire.sync())
            msgs = w.read_until_ready(timeout=120)
            if role == "support" and "customers" in sql:
                assert [e.get("C") for e in pgwire.errors(msgs)] == ["54001"], what
            # The others on the relay threads still get answers.
            assert pgwire.rows(bystander.simple_query("SELECT 1")) == [[b"1"]], what
        assert pgwire.rows(w.simple_query("SELECT 2")) == [[b"2"]]
    bystander.close()
    assert proxy.proc.poll() is None, proxy.log()
    # Every statement is in the trail, refused ones too (records are
    # written in the background: wait for them).
    want = 2 * len(deep_statements()) + 1
    deadline = time.monotonic() + 30
    while len(statements(proxy.audit_dir, user=role)) < want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(statements(proxy.audit_dir, user=role)) >= want
