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
# The extraction and Grafana's variables: tests/integration/dashboard_exprs.py
# (shared with the end-to-end test against a real Prometheus).
python3 tests/integration/dashboard_exprs.py deploy/grafana/pgcloak-security.json "$work/dashboard-rules.yml"
promtool check rules "$work/dashboard-rules.yml"
echo "promtool: all checks passed"
