#include "proxy/metrics.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace pgcloak::proxy {
namespace {

using Labels = std::map<std::string, std::string>;
using rules::AuditClass;

// One sample line of the text format: name{a="x",b="y"} value
struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

std::vector<Sample> parse_samples(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t i = line.find_first_of("{ ");
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (line[i] != '}') {
        size_t eq = line.find('=', i);
        std::string key = line.substr(i, eq - i);
        size_t v = eq + 2;  // past ="
        std::string value;
        while (line[v] != '"') {
          if (line[v] == '\\') ++v;
          value += line[v++];
        }
        s.labels[key] = value;
        i = v + 1;
        if (line[i] == ',') ++i;
      }
      ++i;
    }
    s.value = std::stod(line.substr(i + 1));
    out.push_back(std::move(s));
  }
  return out;
}

// The value of the series with exactly these labels; NaN if absent.
double value_of(const std::string& text, const std::string& name, const Labels& labels) {
  for (const auto& s : parse_samples(text)) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  return std::nan("");
}

// The sum over every series of a name whose labels include `match`.
double sum_of(const std::string& text, const std::string& name, const Labels& match = {}) {
  double sum = 0;
  for (const auto& s : parse_samples(text)) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : match) ok = ok && s.labels.count(k) && s.labels.at(k) == v;
    if (ok) sum += s.value;
  }
  return sum;
}

std::set<std::string> label_values(const std::string& text, const std::string& name,
                                   const std::string& label) {
  std::set<std::string> out;
  for (const auto& s : parse_samples(text)) {
    if (s.name == name && s.labels.count(label)) out.insert(s.labels.at(label));
  }
  return out;
}

const MetricSpec& spec(MetricId id) {
  return Metrics::table()[static_cast<size_t>(id)];
}

TEST(MetricsTableTest, FollowsPrometheusNaming) {
  const auto t = Metrics::table();
  ASSERT_EQ(t.size(), metric_family_count);
  std::set<std::string_view> names;
  const std::regex name_re("pgcloak_[a-z][a-z0-9_]*[a-z0-9]");
  const std::regex label_re("[a-z][a-z0-9_]*");
  for (size_t i = 0; i < t.size(); ++i) {
    const MetricSpec& s = t[i];
    SCOPED_TRACE(std::string(s.name));
    EXPECT_EQ(static_cast<size_t>(s.id), i) << "table rows must follow the MetricId order";
    EXPECT_TRUE(names.insert(s.name).second) << "declared twice";
    EXPECT_TRUE(std::regex_match(std::string(s.name), name_re));
    EXPECT_FALSE(s.help.empty());
    const bool total = s.name.ends_with("_total");
    EXPECT_EQ(total, s.type == prometheus::MetricType::Counter)
        << "_total is for counters, and counters only";
    // Base units: anything about time is in seconds, sizes in bytes.
    for (std::string_view bad : {"_ms", "_millis", "_us", "_kb", "_mb", "_minutes"}) {
      EXPECT_EQ(s.name.find(bad), std::string_view::npos);
    }
    std::set<std::string_view> labels;
    for (auto l : s.labels) {
      EXPECT_TRUE(std::regex_match(std::string(l), label_re)) << l;
      EXPECT_TRUE(labels.insert(l).second) << "label " << l << " twice";
      EXPECT_NE(l, "le");  // reserved for histogram buckets
    }
  }
  EXPECT_EQ(spec(MetricId::statement_duration_seconds).type, prometheus::MetricType::Histogram);
  EXPECT_TRUE(spec(MetricId::audit_write_latency_seconds).name.ends_with("_seconds"));
}

TEST(MetricsTest, EveryFamilyInTheTableIsExportedWithHelpAndType) {
  Metrics m({.version = "1.2.3"});
  const std::string text = m.serialize();
  for (const auto& s : Metrics::table()) {
    const std::string name(s.name);
    const std::string type = s.type == prometheus::MetricType::Counter     ? "counter"
                             : s.type == prometheus::MetricType::Gauge     ? "gauge"
                             : s.type == prometheus::MetricType::Histogram ? "histogram"
                                                                           : "?";
    EXPECT_NE(text.find("# HELP " + name + " "), std::string::npos) << name;
    EXPECT_NE(text.find("# TYPE " + name + " " + type + "\n"), std::string::npos) << name;
  }
  EXPECT_EQ(value_of(text, "pgcloak_build_info", {{"version", "1.2.3"}}), 1);
  // Fixed label sets exist from the start, as zeros, so dashboards show 0
  // rather than "no data".
  EXPECT_EQ(value_of(text, "pgcloak_connections_current", {{"tls", "plain"}}), 0);
  EXPECT_EQ(value_of(text, "pgcloak_connections_current", {{"tls", "tls"}}), 0);
  EXPECT_EQ(value_of(text, "pgcloak_config_reloads_total", {{"result", "rejected"}}), 0);
  EXPECT_EQ(value_of(text, "pgcloak_auth_failures_total", {}), 0);
  EXPECT_EQ(value_of(text, "pgcloak_audit_healthy", {}), 1);
}

TEST(MetricsTest, EveryFamilyGetsSamplesFromTheApi) {
  Metrics m({.version = "0.1.0"});
  {
    auto c = m.on_connection_opened();
    c.on_auth(false);
  }
  auto session = m.session("alice", "shop");
  const std::vector<std::string> rels{"public.customers"};
  session.on_statement({.statement_class = AuditClass::read,
                        .decision = StatementVerdict::masked,
                        .duration = std::chrono::milliseconds(3),
                        .rows = 10,
                        .bytes = 400,
                        .protected_relations = rels});
  session.on_statement({.statement_class = AuditClass::function,
                        .decision = StatementVerdict::denied,
                        .rule = "deny:function"});
  m.on_masked_values("email", "support_team", 10);
  m.on_backstop_hit();
  m.on_anomaly("bulk_read", "alice");
  m.on_alert("bulk_read", "alice");
  AuditStats a;
  a.queued = 3;
  a.written = 10;
  a.failures = 1;
  a.last_write_latency = std::chrono::microseconds(1500);
  m.set_audit_stats(a, 100000);
  m.on_upstream_connect_error();
  m.on_config_reload(ReloadResult::applied);
  {
    Metrics capped({.max_users = 1});
    capped.session("a", "db");
    capped.session("b", "db");
    const std::string ct = capped.serialize();
    EXPECT_EQ(value_of(ct, "pgcloak_label_overflow_total", {{"label", "user"}}), 1);
  }
  m.session("x", "db");
  const std::string text = m.serialize();
  std::set<std::string> with_samples;
  for (const auto& s : parse_samples(text)) with_samples.insert(s.name);
  for (const auto& s : Metrics::table()) {
    std::string name(s.name);
    if (s.type == prometheus::MetricType::Histogram) name += "_count";
    EXPECT_TRUE(with_samples.count(name)) << name << " has no samples";
  }
}

TEST(MetricsTest, StatementsCountByDatabaseUserClassAndDecision) {
  Metrics m({});
  auto alice = m.session("alice", "shop");
  const std::vector<std::string> rels{"public.customers", "public.payments"};
  alice.on_statement({.statement_class = AuditClass::read,
                      .decision = StatementVerdict::masked,
                      .duration = std::chrono::microseconds(700),
                      .rows = 25,
                      .bytes = 1000,
                      .protected_relations = rels});
  alice.on_statement({.statement_class = AuditClass::read,
                      .decision = StatementVerdict::allowed,
                      .duration = std::chrono::milliseconds(2),
                      .rows = 1,
                      .bytes = 20});
  alice.on_statement({.statement_class = AuditClass::ddl,
                      .decision = StatementVerdict::denied,
                      .rule = "deny:create-view",
                      .duration = std::chrono::microseconds(50)});
  // The same through the call without a session: the same series.
  m.on_statement("alice", "shop",
                 {.statement_class = AuditClass::read,
                  .decision = StatementVerdict::masked,
                  .rows = 5,
                  .bytes = 100,
                  .protected_relations = rels});
  m.on_denial("deny:startup-setting");

  const std::string t = m.serialize();
  auto stmts = [&](const std::string& cls, const std::string& decision) {
    return value_of(t, "pgcloak_statements_total",
                    {{"database", "shop"}, {"user", "alice"}, {"class", cls}, {"decision", decision}});
  };
  EXPECT_EQ(stmts("READ", "masked"), 2);
  EXPECT_EQ(stmts("READ", "allowed"), 1);
  EXPECT_EQ(stmts("DDL", "denied"), 1);
  // Combinations that never happened do not exist as zero series.
  EXPECT_TRUE(std::isnan(stmts("WRITE", "allowed")));
  EXPECT_EQ(sum_of(t, "pgcloak_statements_total"), 4);

  EXPECT_EQ(value_of(t, "pgcloak_rows_returned_total", {{"user", "alice"}}), 31);
  EXPECT_EQ(value_of(t, "pgcloak_bytes_returned_total", {{"user", "alice"}}), 1120);
  EXPECT_EQ(value_of(t, "pgcloak_protected_rows_returned_total", {{"user", "alice"}}), 30);
  // Each protected relation a statement read gets its rows; the rest is "other".
  EXPECT_EQ(value_of(t, "pgcloak_relation_rows_returned_total", {{"relation", "public.customers"}}), 30);
  EXPECT_EQ(value_of(t, "pgcloak_relation_rows_returned_total", {{"relation", "public.payments"}}), 30);
  EXPECT_EQ(value_of(t, "pgcloak_relation_bytes_returned_total", {{"relation", "public.customers"}}), 1100);
  EXPECT_EQ(value_of(t, "pgcloak_relation_rows_returned_total", {{"relation", "other"}}), 1);
  EXPECT_EQ(value_of(t, "pgcloak_relation_bytes_returned_total", {{"relation", "other"}}), 20);

  EXPECT_EQ(value_of(t, "pgcloak_denials_total", {{"rule", "deny:create-view"}}), 1);
  EXPECT_EQ(value_of(t, "pgcloak_denials_total", {{"rule", "deny:startup-setting"}}), 1);

  EXPECT_EQ(value_of(t, "pgcloak_statement_duration_seconds_count", {{"class", "READ"}}), 3);
  EXPECT_EQ(value_of(t, "pgcloak_statement_duration_seconds_bucket", {{"class", "READ"}, {"le", "0.001"}}),
            2);
  EXPECT_EQ(value_of(t, "pgcloak_statement_duration_seconds_bucket", {{"class", "READ"}, {"le", "0.0025"}}),
            3);
  EXPECT_NEAR(value_of(t, "pgcloak_statement_duration_seconds_sum", {{"class", "READ"}}), 0.0027, 1e-9);
  EXPECT_EQ(value_of(t, "pgcloak_statement_duration_seconds_count", {{"class", "DDL"}}), 1);
}

TEST(MetricsTest, ConnectionsAreCountedOnEveryExitPath) {
  Metrics m({});
  {
    auto ok = m.on_connection_opened();
    ok.set_tls();
    ok.on_auth(true);
    ok.on_auth(false);  // only the first result counts
    auto failed = m.on_connection_opened(true);
    failed.on_auth(false);
    auto dropped = m.on_connection_opened();
    auto moved = std::move(dropped);  // counted once, by the new owner
    const std::string during = m.serialize();
    EXPECT_EQ(value_of(during, "pgcloak_connections_current", {{"tls", "tls"}}), 2);
    EXPECT_EQ(value_of(during, "pgcloak_connections_current", {{"tls", "plain"}}), 1);
    EXPECT_EQ(value_of(during, "pgcloak_connections_total", {{"tls", "tls"}, {"auth", "ok"}}), 1);
    EXPECT_EQ(value_of(during, "pgcloak_connections_total", {{"tls", "tls"}, {"auth", "failed"}}), 1);
    EXPECT_EQ(value_of(during, "pgcloak_connections_total", {{"tls", "plain"}, {"auth", "none"}}), 0);
  }
  const std::string after = m.serialize();
  EXPECT_EQ(sum_of(after, "pgcloak_connections_current"), 0);
  EXPECT_EQ(value_of(after, "pgcloak_connections_total", {{"tls", "plain"}, {"auth", "none"}}), 1);
  EXPECT_EQ(sum_of(after, "pgcloak_connections_total"), 3);
  EXPECT_EQ(value_of(after, "pgcloak_auth_failures_total", {}), 1);
  // Inert handles (metrics off) do nothing and do not crash.
  ConnectionMetrics none;
  none.set_tls();
  none.on_auth(false);
  SessionMetrics no_session;
  EXPECT_FALSE(no_session);
  no_session.on_statement({.rows = 1});
}

TEST(MetricsTest, UsersDatabasesAndRelationsAreCapped) {
  Metrics m({.max_users = 3, .max_databases = 2, .max_relations = 2});
  for (int i = 0; i < 10; ++i) {
    const std::string user = "user" + std::to_string(i);
    const std::vector<std::string> rels{"public.t" + std::to_string(i)};
    m.session(user, "db" + std::to_string(i % 4))
        .on_statement(
            {.statement_class = AuditClass::read, .rows = 1, .bytes = 1, .protected_relations = rels});
  }
  // An admitted user keeps its own label after the cap is reached.
  m.session("user1", "db1").on_statement({.statement_class = AuditClass::write});
  const std::string t = m.serialize();
  EXPECT_EQ(label_values(t, "pgcloak_statements_total", "user"),
            (std::set<std::string>{"user0", "user1", "user2", "other"}));
  EXPECT_EQ(label_values(t, "pgcloak_statements_total", "database"),
            (std::set<std::string>{"db0", "db1", "other"}));
  EXPECT_EQ(label_values(t, "pgcloak_rows_returned_total", "user"),
            (std::set<std::string>{"user0", "user1", "user2", "other"}));
  EXPECT_EQ(label_values(t, "pgcloak_relation_rows_returned_total", "relation"),
            (std::set<std::string>{"public.t0", "public.t1", "other"}));
  // Nothing is lost by capping: the totals still add up.
  EXPECT_EQ(sum_of(t, "pgcloak_statements_total"), 11);
  EXPECT_EQ(value_of(t, "pgcloak_rows_returned_total", {{"user", "other"}}), 7);
  EXPECT_EQ(value_of(t, "pgcloak_relation_rows_returned_total", {{"relation", "other"}}), 8);
  EXPECT_EQ(value_of(t, "pgcloak_statements_total",
                     {{"database", "db1"}, {"user", "user1"}, {"class", "WRITE"}, {"decision", "allowed"}}),
            1);
  EXPECT_GE(value_of(t, "pgcloak_label_overflow_total", {{"label", "user"}}), 7);
  EXPECT_GE(value_of(t, "pgcloak_label_overflow_total", {{"label", "database"}}), 1);
  EXPECT_GE(value_of(t, "pgcloak_label_overflow_total", {{"label", "relation"}}), 8);
  // Detector users share the user cap.
  m.on_alert("bulk_read", "user9");
  EXPECT_EQ(value_of(m.serialize(), "pgcloak_alerts_total", {{"detector", "bulk_read"}, {"user", "other"}}),
            1);
}

// The calls without a session remember each name they resolved, also the
// names past a cap: an overflowing user costs one fold, not one per statement.
TEST(MetricsTest, SessionlessCallsRememberNamesPastTheCap) {
  Metrics m({.max_users = 1});
  m.on_statement("first", "shop", {.rows = 1});
  for (int i = 0; i < 5; ++i) m.on_statement("second", "shop", {.rows = 1});
  for (int i = 0; i < 5; ++i) m.on_alert("bulk_read", "third");
  const std::string t = m.serialize();
  EXPECT_EQ(value_of(t, "pgcloak_rows_returned_total", {{"user", "first"}}), 1);
  EXPECT_EQ(value_of(t, "pgcloak_rows_returned_total", {{"user", "other"}}), 5);
  EXPECT_EQ(value_of(t, "pgcloak_alerts_total", {{"detector", "bulk_read"}, {"user", "other"}}), 5);
  EXPECT_EQ(value_of(t, "pgcloak_label_overflow_total", {{"label", "user"}}), 2);
}

TEST(MetricsTest, FixedCapsForRulesCategoriesRolesAndDetectors) {
  Metrics m({});
  for (int i = 0; i < 100; ++i) {
    m.on_denial("deny:rule" + std::to_string(i));
    m.on_masked_values("cat" + std::to_string(i), "role" + std::to_string(i), 2);
    m.on_anomaly("detector" + std::to_string(i), "alice");
  }
  const std::string t = m.serialize();
  EXPECT_EQ(label_values(t, "pgcloak_denials_total", "rule").size(), 65U);  // 64 + other
  EXPECT_EQ(value_of(t, "pgcloak_denials_total", {{"rule", "other"}}), 36);
  EXPECT_EQ(sum_of(t, "pgcloak_denials_total"), 100);
  EXPECT_EQ(label_values(t, "pgcloak_masked_values_total", "category").size(), 65U);
  EXPECT_EQ(label_values(t, "pgcloak_masked_values_total", "role").size(), 65U);
  EXPECT_EQ(sum_of(t, "pgcloak_masked_values_total"), 200);
  EXPECT_EQ(label_values(t, "pgcloak_anomalies_total", "detector").size(), 33U);
  EXPECT_EQ(sum_of(t, "pgcloak_anomalies_total", {{"user", "alice"}}), 100);
}

TEST(MetricsTest, LabelValuesAreValidUtf8AndBounded) {
  Metrics m({});
  m.session(std::string("caf\xc3\xa9"), std::string("bad\xff\xfe")).on_statement({});
  m.session(std::string(300, 'u'), "").on_statement({});
  m.on_denial("with \"quotes\" and \\ and\nnewline");
  const std::string t = m.serialize();
  const auto users = label_values(t, "pgcloak_statements_total", "user");
  EXPECT_TRUE(users.count("caf\xc3\xa9"));
  EXPECT_TRUE(users.count(std::string(128, 'u')));
  const auto dbs = label_values(t, "pgcloak_statements_total", "database");
  EXPECT_TRUE(dbs.count("bad??"));
  EXPECT_TRUE(dbs.count("unknown"));
  // The serializer escapes what the text format needs escaped.
  EXPECT_NE(t.find(R"(rule="with \"quotes\" and \\ and\nnewline")"), std::string::npos);
}

TEST(MetricsTest, AuditStatsBecomeGaugesAndCounters) {
  Metrics m({});
  int hook_calls = 0;
  AuditStats a;
  m.add_scrape_hook([&] {
    ++hook_calls;
    m.set_audit_stats(a, 5000);
  });
  a.queued = 40;
  a.written = 100;
  a.failures = 2;
  a.healthy = false;
  a.last_write_latency = std::chrono::microseconds(2500);
  std::string t = m.serialize();
  EXPECT_EQ(hook_calls, 1);
  EXPECT_EQ(value_of(t, "pgcloak_audit_queue_depth", {}), 40);
  EXPECT_EQ(value_of(t, "pgcloak_audit_queue_limit", {}), 5000);
  EXPECT_EQ(value_of(t, "pgcloak_audit_records_written_total", {}), 100);
  EXPECT_EQ(value_of(t, "pgcloak_audit_write_failures_total", {}), 2);
  EXPECT_EQ(value_of(t, "pgcloak_audit_healthy", {}), 0);
  EXPECT_DOUBLE_EQ(value_of(t, "pgcloak_audit_write_latency_seconds", {}), 0.0025);
  a.written = 150;
  a.healthy = true;
  t = m.serialize();
  EXPECT_EQ(value_of(t, "pgcloak_audit_records_written_total", {}), 150);
  EXPECT_EQ(value_of(t, "pgcloak_audit_write_failures_total", {}), 2);
  EXPECT_EQ(value_of(t, "pgcloak_audit_healthy", {}), 1);
  // A new audit log counts from zero again: the counter must not go down.
  a.written = 30;
  t = m.serialize();
  EXPECT_EQ(value_of(t, "pgcloak_audit_records_written_total", {}), 180);

  m.on_upstream_connect_error();
  m.on_config_reload(ReloadResult::rejected);
  m.on_config_reload(ReloadResult::applied);
  m.on_config_reload(ReloadResult::applied);
  m.on_backstop_hit(3);
  t = m.serialize();
  EXPECT_EQ(value_of(t, "pgcloak_upstream_connect_errors_total", {}), 1);
  EXPECT_EQ(value_of(t, "pgcloak_config_reloads_total", {{"result", "applied"}}), 2);
  EXPECT_EQ(value_of(t, "pgcloak_config_reloads_total", {{"result", "rejected"}}), 1);
  EXPECT_EQ(value_of(t, "pgcloak_backstop_hits_total", {}), 3);
}

// Several threads hammer the hot path (with their own sessions, shared
// users, and the session-less call) while another scrapes: no count may be
// lost, and (under TSan/ASan builds) no race may show.
TEST(MetricsTest, ConcurrentStatementsAndScrapesLoseNothing) {
  Metrics m({.max_users = 4});
  constexpr int threads = 4;
  constexpr int per_thread = 20000;
  const std::vector<std::string> rels{"public.customers"};
  std::atomic<bool> done{false};
  std::thread scraper([&] {
    while (!done.load()) {
      const std::string t = m.serialize();
      EXPECT_NE(t.find("pgcloak_statements_total"), std::string::npos);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  });
  std::vector<std::thread> workers;
  for (int w = 0; w < threads; ++w) {
    workers.emplace_back([&, w] {
      auto own = m.session("user" + std::to_string(w % 3), "shop");
      for (int i = 0; i < per_thread; ++i) {
        StatementMetrics s{.statement_class = i % 2 == 0 ? AuditClass::read : AuditClass::write,
                           .decision = i % 3 == 0 ? StatementVerdict::masked : StatementVerdict::allowed,
                           .duration = std::chrono::microseconds(100),
                           .rows = 2,
                           .bytes = 10};
        if (i % 5 == 0) s.protected_relations = rels;
        if (i % 4 == 0) {
          m.on_statement("user" + std::to_string((w + i) % 6), "shop", s);
        } else {
          own.on_statement(s);
        }
        if (i % 1000 == 0) m.session("late" + std::to_string(w), "other_db");
      }
    });
  }
  for (auto& t : workers) t.join();
  done = true;
  scraper.join();
  const std::string t = m.serialize();
  const double total = double{threads} * per_thread;
  EXPECT_EQ(sum_of(t, "pgcloak_statements_total"), total);
  EXPECT_EQ(sum_of(t, "pgcloak_rows_returned_total"), 2 * total);
  EXPECT_EQ(sum_of(t, "pgcloak_bytes_returned_total"), 10 * total);
  EXPECT_EQ(sum_of(t, "pgcloak_protected_rows_returned_total"), 2 * total / 5);
  EXPECT_EQ(value_of(t, "pgcloak_relation_rows_returned_total", {{"relation", "public.customers"}}),
            2 * total / 5);
  EXPECT_EQ(sum_of(t, "pgcloak_statement_duration_seconds_count"), total);
  EXPECT_LE(label_values(t, "pgcloak_statements_total", "user").size(), 5U);  // 4 + other
}

// The cost the relay pays per statement. Reported, and bounded loosely so
// that a regression to a lock plus a map lookup per call in prometheus-cpp's
// Family::Add (microseconds under contention) fails.
TEST(MetricsTest, CostPerStatement) {
  Metrics m({});
  auto session = m.session("alice", "shop");
  const std::vector<std::string> rels{"public.customers"};
  const StatementMetrics read{.statement_class = AuditClass::read,
                              .decision = StatementVerdict::masked,
                              .duration = std::chrono::microseconds(250),
                              .rows = 1,
                              .bytes = 120,
                              .protected_relations = rels};
  const StatementMetrics plain{.statement_class = AuditClass::read, .rows = 1, .bytes = 80};
  constexpr int n = 200000;
  auto ns_per_call = [&](auto&& call) {
    for (int i = 0; i < 1000; ++i) call();  // warm up: series resolved, caches hot
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) call();
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() / n;
  };
  const double session_plain = ns_per_call([&] { session.on_statement(plain); });
  const double session_protected = ns_per_call([&] { session.on_statement(read); });
  const double by_name = ns_per_call([&] { m.on_statement("alice", "shop", read); });
  // Two threads on different sessions, as two relay loops would.
  double two_threads = 0;
  {
    auto other = m.session("bob", "shop");
    std::thread t([&] {
      for (int i = 0; i < n; ++i) other.on_statement(read);
    });
    two_threads = ns_per_call([&] { session.on_statement(read); });
    t.join();
  }
  std::printf(
      "on_statement cost: session %.0f ns (no relation), %.0f ns (1 protected relation); "
      "by name %.0f ns; with a second thread %.0f ns\n",
      session_plain, session_protected, by_name, two_threads);
  RecordProperty("session_ns", std::to_string(session_protected));
  EXPECT_LT(session_protected, 2000);
  EXPECT_LT(by_name, 4000);
}

// --- the dashboard and the alert rules may only use metrics from the table -----

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Every PromQL text in a dashboard: panel targets' "expr" and query
// variables' "query" (a datasource variable's "query" is a plugin type).
void collect_exprs(const nlohmann::json& j, std::vector<std::string>& out) {
  if (j.is_object()) {
    if (j.value("type", "") == "datasource" && j.contains("query")) return;
    for (const auto& [k, v] : j.items()) {
      if ((k == "expr" || k == "query") && v.is_string()) out.push_back(v.get<std::string>());
      if (k == "query" && v.is_object() && v.contains("query") && v["query"].is_string()) {
        out.push_back(v["query"].get<std::string>());
      }
      collect_exprs(v, out);
    }
  } else if (j.is_array()) {
    for (const auto& v : j) collect_exprs(v, out);
  }
}

// Checks one PromQL expression: every pgcloak_ name is a family of the table
// (histograms with _bucket, _sum or _count), and every label it groups or
// matches by is one of those families' labels (or one Prometheus adds).
// Returns what is wrong, empty if nothing.
std::string check_expr(const std::string& expr) {
  std::map<std::string, const MetricSpec*> by_name;
  for (const auto& s : Metrics::table()) {
    const std::string n(s.name);
    by_name[n] = &s;
    if (s.type == prometheus::MetricType::Histogram) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) by_name[n + suffix] = &s;
    }
  }
  std::set<std::string> labels{"job", "instance", "__name__"};
  std::string problems;
  bool any_metric = false;
  const std::regex ident(R"(\b(pgcloak_[a-zA-Z0-9_]+|up)\b(?!\s*\())");
  for (auto it = std::sregex_iterator(expr.begin(), expr.end(), ident); it != std::sregex_iterator(); ++it) {
    const std::string name = (*it)[1];
    if (name == "up") {
      any_metric = true;
      continue;
    }
    auto f = by_name.find(name);
    if (f == by_name.end()) {
      problems += "unknown metric " + name + "; ";
      continue;
    }
    any_metric = true;
    for (auto l : f->second->labels) labels.insert(std::string(l));
    if (name.ends_with("_bucket")) labels.insert("le");
  }
  if (!any_metric) problems += "uses no pgcloak metric; ";
  const std::regex grouping(R"(\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\))");
  const std::regex matcher(R"(([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*")");
  const std::regex label_values_fn(R"(label_values\(\s*[^,]+,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\))");
  auto check_label = [&](const std::string& l) {
    if (!l.empty() && !labels.count(l)) problems += "label " + l + " is not a label of the metrics used; ";
  };
  for (auto it = std::sregex_iterator(expr.begin(), expr.end(), grouping); it != std::sregex_iterator();
       ++it) {
    std::stringstream list((*it)[2].str());
    std::string l;
    while (std::getline(list, l, ',')) {
      l.erase(0, l.find_first_not_of(" \t\n"));
      l.erase(l.find_last_not_of(" \t\n") + 1);
      check_label(l);
    }
  }
  for (auto it = std::sregex_iterator(expr.begin(), expr.end(), matcher); it != std::sregex_iterator();
       ++it) {
    check_label((*it)[1]);
  }
  for (auto it = std::sregex_iterator(expr.begin(), expr.end(), label_values_fn);
       it != std::sregex_iterator(); ++it) {
    check_label((*it)[1]);
  }
  return problems;
}

TEST(MetricsDeployTest, TheCheckerCatchesMistakes) {
  EXPECT_EQ(check_expr("sum by (user) (rate(pgcloak_protected_rows_returned_total[5m]))"), "");
  EXPECT_EQ(
      check_expr(
          "histogram_quantile(0.95, sum by (le) (rate(pgcloak_statement_duration_seconds_bucket[5m])))"),
      "");
  EXPECT_NE(check_expr("rate(pgcloak_statements[5m])"), "");                        // not a family
  EXPECT_NE(check_expr("sum by (rule) (rate(pgcloak_statements_total[5m]))"), "");  // no such label
  EXPECT_NE(check_expr("pgcloak_denials_total{user=\"x\"}"), "");
  EXPECT_NE(check_expr("vector(1)"), "");
}

TEST(MetricsDeployTest, DashboardUsesOnlyMetricsFromTheTable) {
  const std::string path = std::string(PGCLOAK_SOURCE_DIR) + "/deploy/grafana/pgcloak-security.json";
  const std::string text = read_file(path);
  ASSERT_FALSE(text.empty()) << path;
  const auto dash = nlohmann::json::parse(text);
  EXPECT_TRUE(dash.contains("uid"));
  EXPECT_TRUE(dash.contains("title"));
  std::vector<std::string> exprs;
  collect_exprs(dash, exprs);
  EXPECT_GE(exprs.size(), 10U);
  for (const auto& e : exprs) EXPECT_EQ(check_expr(e), "") << e;
  // The panels the security team asked for.
  std::set<std::string> used;
  for (const auto& e : exprs) {
    for (const auto& s : Metrics::table()) {
      if (e.find(std::string(s.name)) != std::string::npos) used.insert(std::string(s.name));
    }
  }
  for (const char* need :
       {"pgcloak_connections_current", "pgcloak_statements_total", "pgcloak_denials_total",
        "pgcloak_protected_rows_returned_total", "pgcloak_masked_values_total", "pgcloak_auth_failures_total",
        "pgcloak_audit_queue_depth", "pgcloak_audit_write_failures_total", "pgcloak_alerts_total"}) {
    EXPECT_TRUE(used.count(need)) << "no panel uses " << need;
  }
}

TEST(MetricsDeployTest, AlertRulesAndTheirTestsUseOnlyMetricsFromTheTable) {
  const std::string dir = std::string(PGCLOAK_SOURCE_DIR) + "/deploy/prometheus/";
  const YAML::Node rules = YAML::LoadFile(dir + "pgcloak-alerts.yml");
  std::set<std::string> alerts;
  for (const auto& group : rules["groups"]) {
    for (const auto& rule : group["rules"]) {
      const std::string expr = rule["expr"].as<std::string>();
      EXPECT_EQ(check_expr(expr), "") << expr;
      if (rule["alert"]) alerts.insert(rule["alert"].as<std::string>());
    }
  }
  for (const char* need : {"PgcloakDown", "PgcloakSuspectedExfiltration", "PgcloakDenialSpike",
                           "PgcloakAuthFailureSpike", "PgcloakAuditSinkFailing"}) {
    EXPECT_TRUE(alerts.count(need)) << need;
  }
  // The promtool tests feed series by name: those must be real too, or a
  // test could pass against a metric pgcloak never exports.
  const YAML::Node tests = YAML::LoadFile(dir + "tests/pgcloak-alerts-test.yml");
  std::set<std::string> tested;
  for (const auto& t : tests["tests"]) {
    for (const auto& s : t["input_series"]) {
      const std::string series = s["series"].as<std::string>();
      EXPECT_EQ(check_expr(series), "") << series;
    }
    for (const auto& a : t["alert_rule_test"]) tested.insert(a["alertname"].as<std::string>());
  }
  for (const auto& a : alerts) EXPECT_TRUE(tested.count(a)) << "no promtool test for " << a;
}

}  // namespace
}  // namespace pgcloak::proxy
