"""The PromQL of deploy/grafana/pgcloak-security.json, ready for Prometheus.

Every panel target's `expr` and every templating query, with Grafana's
variables filled in the way Grafana would before the query reaches
Prometheus. Used by tests/promtool.sh (which checks that each expression
parses, as recording rules) and by tests/integration/test_prometheus_e2e.py
(which evaluates them against a real Prometheus).

    python3 tests/integration/dashboard_exprs.py DASHBOARD.json RULES_OUT.yml

writes the expressions as a recording-rule group for `promtool check rules`.
"""
from __future__ import annotations

import json
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "pgcloak-security.json")

# Grafana fills these in before the query reaches Prometheus.
FILL = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$instance": ".*", "$user": ".*"}


def raw_exprs(node, out: list[tuple[str, str]] | None = None, where: str = "") -> list[tuple[str, str]]:
    """(where, expression) of every query in the dashboard, unfilled: panel
    targets' `expr` (where = the panel's title) and templating variables'
    `query.query` (where = "variable $name"). The `datasource` variable is
    not a query."""
    if out is None:
        out = []
    if isinstance(node, dict):
        if node.get("type") == "datasource":
            return out
        if isinstance(node.get("title"), str) and "type" in node:
            where = node["title"]
        elif isinstance(node.get("name"), str) and "query" in node:
            where = "variable $" + node["name"]
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                out.append((where, value))
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                out.append((where, value["query"]))
            else:
                raw_exprs(value, out, where)
    elif isinstance(node, list):
        for value in node:
            raw_exprs(value, out, where)
    return out


def fill(expr: str) -> str:
    """One dashboard query as PromQL: Grafana's variables substituted, and
    label_values(selector, label) reduced to its series selector (a Grafana
    function, not PromQL). ValueError if a variable is left over."""
    e = expr
    if e.startswith("label_values("):
        e = e[len("label_values("):].rsplit(",", 1)[0]
    for k, v in sorted(FILL.items(), key=lambda kv: -len(kv[0])):
        e = e.replace(k, v)
    if "$" in e:
        raise ValueError("unfilled Grafana variable in: " + e)
    return e


def dashboard_exprs(path: str = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title or "variable $name", PromQL) of every dashboard query,
    in the order of the JSON. ValueError if there are none."""
    with open(path) as f:
        found = raw_exprs(json.load(f))
    if not found:
        raise ValueError("no expressions found in " + path)
    return [(where, fill(e)) for where, e in found]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        exprs = dashboard_exprs(argv[1])
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    rules = [{"record": "pgcloak_dashboard:expr_%d" % i, "expr": e} for i, (_, e) in enumerate(exprs)]
    with open(argv[2], "w") as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
    print("%d expressions" % len(rules))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
