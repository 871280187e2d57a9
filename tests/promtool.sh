#!/usr/bin/env bash
# Checks deploy/prometheus/ and the dashboard's PromQL with promtool (Debian
# package prometheus, see deploy/install-deps.sh):
#   1. promtool check rules: the alert rules parse and are valid;
#   2. promtool test rules: the rules' unit tests (cases that must fire and
#      cases that must not);
#   3. promtool check config: the example scrape config is valid (with a
#      throwaway token file in place of /etc/prometheus/pgcloak.token);
#   4. every PromQL expression of deploy/grafana/pgcloak-security.json parses,
#      checked as recording rules with Grafana's variables filled in.
# That each metric name exists in pgcloak's metric table is checked by the
# unit test proxy_test_metrics (MetricsDeployTest).
#   usage: tests/promtool.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v promtool >/dev/null || { echo "promtool: not installed (bash deploy/install-deps.sh)"; exit 1; }
prom=deploy/prometheus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "promtool: check rules"
promtool check rules "$prom/pgcloak-alerts.yml"

echo "promtool: test rules"
promtool test rules "$prom/tests/pgcloak-alerts-test.yml"

echo "promtool: check config"
cp "$prom/pgcloak-alerts.yml" "$work/"
echo "0123456789abcdef0123456789abcdef" > "$work/pgcloak.token"
sed "s|/etc/prometheus/pgcloak.token|$work/pgcloak.token|" "$prom/prometheus.yml" > "$work/prometheus.yml"
promtool check config "$work/prometheus.yml"

echo "promtool: dashboard expressions"
python3 - deploy/grafana/pgcloak-security.json "$work/dashboard-rules.yml" <<'PY'
import json, sys

def exprs(node, out):
    if isinstance(node, dict):
        if node.get("type") == "datasource":
            return
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                out.append(value)
            elif key == "query" and isinstance(value, dict) and isinstance(value.get("query"), str):
                out.append(value["query"])
            else:
                exprs(value, out)
    elif isinstance(node, list):
        for value in node:
            exprs(value, out)

found = []
exprs(json.load(open(sys.argv[1])), found)
if not found:
    sys.exit("no expressions found in " + sys.argv[1])
# Grafana fills these in before the query reaches Prometheus.
fill = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$instance": ".*", "$user": ".*"}
rules = []
for i, e in enumerate(found):
    if e.startswith("label_values("):
        # A Grafana function, not PromQL: check its series selector.
        e = e[len("label_values("):].rsplit(",", 1)[0]
    for k, v in sorted(fill.items(), key=lambda kv: -len(kv[0])):
        e = e.replace(k, v)
    if "$" in e:
        sys.exit("unfilled Grafana variable in: " + e)
    rules.append({"record": "pgcloak_dashboard:expr_%d" % i, "expr": e})
with open(sys.argv[2], "w") as f:
    json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, indent=1)
print("%d expressions" % len(rules))
PY
promtool check rules "$work/dashboard-rules.yml"
echo "promtool: all checks passed"
