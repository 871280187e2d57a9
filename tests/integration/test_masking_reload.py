"""SIGHUP reloads the masking rules: live sessions follow at their next
statement; an invalid file keeps the running policy and says why. A
statement prepared while a column was allowed, executed after it became
masked, is caught by the result-row backstop."""
from __future__ import annotations

import copy
import re

from masking_fixture import connect, masking_overrides, wait_for_masking
from util import reload_config as reload
from util import write_config


def support_email_rule(config, rule):
    cfg = copy.deepcopy(config)
    for p in cfg["masking"]["policies"]:
        if p["name"] == "support":
            p["rules"]["email"] = rule
    return cfg


def test_sighup_applies_new_policy_to_live_sessions(pgcloak, shop, monkeypatch):
    monkeypatch.setenv("PGCLOAK_MASK_KEY", "integration-test-mask-key-0123456789abcdef")
    proxy = pgcloak(**masking_overrides(shop.dbname))
    with shop.admin() as adm:
        raw = adm.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0]
    with connect(proxy, "support") as c:
        wait_for_masking(c)
        q = "SELECT email FROM customers WHERE id = 1"
        assert re.fullmatch(r".\*\*\*@.+", c.execute(q).fetchone()[0])

        write_config(proxy, support_email_rule(proxy.config, "allow"))
        reload(proxy, "SIGHUP: reloaded")
        assert c.execute(q).fetchone()[0] == raw  # same session, next statement

        # Prepared while allowed (so not rewritten), executed once masked
        # again: PostgreSQL reports customers.email as the column's origin
        # and the backstop masks it.
        c.execute("PREPARE early AS SELECT email FROM customers WHERE id = 1")
        write_config(proxy, proxy.config)
        reload(proxy, "SIGHUP: reloaded")
        got = c.execute("EXECUTE early").fetchone()[0]
        assert got != raw and re.fullmatch(r".\*\*\*@.+", got), got
        assert "backstop: column public.customers.email" in proxy.log()

        # An invalid file changes nothing.
        with open(proxy.config_path, "w") as f:
            f.write("masking:\n  policies: [oops\n")
        reload(proxy, "keeping the running configuration")
        assert re.fullmatch(r".\*\*\*@.+", c.execute(q).fetchone()[0])
