#include "proxy/metrics.h"

#include <algorithm>
#include <cassert>

#include <prometheus/text_serializer.h>

namespace pgcloak::proxy {

namespace {

using prometheus::MetricType;

// Every family pgcloak exports (conventions, point 9): name, type, help and
// label names. docs/metrics.md describes each one with its cardinality
// bound; the dashboard and alert rules may only use these names (checked by
// tests/proxy/test_metrics.cc).
const std::vector<MetricSpec>& spec_table() {
  static const std::vector<MetricSpec> table{
      {MetricId::connections_current,
       "pgcloak_connections_current",
       MetricType::Gauge,
       "Client connections open now, by transport (tls or plain).",
       {"tls"}},
      {MetricId::connections_total,
       "pgcloak_connections_total",
       MetricType::Counter,
       "Client connections by transport and authentication result (ok, failed, or none when the "
       "connection ended before one).",
       {"tls", "auth"}},
      {MetricId::auth_failures_total,
       "pgcloak_auth_failures_total",
       MetricType::Counter,
       "Client authentication failures.",
       {}},
      {MetricId::statements_total,
       "pgcloak_statements_total",
       MetricType::Counter,
       "Statements by database, user, class (READ, WRITE, DDL, ROLE, FUNCTION, MISC) and policy decision "
       "(allowed, masked, denied).",
       {"database", "user", "class", "decision"}},
      {MetricId::statement_duration_seconds,
       "pgcloak_statement_duration_seconds",
       MetricType::Histogram,
       "Time from a statement's arrival to the end of its result, by class.",
       {"class"}},
      {MetricId::rows_returned_total,
       "pgcloak_rows_returned_total",
       MetricType::Counter,
       "Rows returned to clients, by user.",
       {"user"}},
      {MetricId::bytes_returned_total,
       "pgcloak_bytes_returned_total",
       MetricType::Counter,
       "Bytes of rows returned to clients, by user.",
       {"user"}},
      {MetricId::protected_rows_returned_total,
       "pgcloak_protected_rows_returned_total",
       MetricType::Counter,
       "Rows returned by statements that read at least one protected relation, by user.",
       {"user"}},
      {MetricId::relation_rows_returned_total,
       "pgcloak_relation_rows_returned_total",
       MetricType::Counter,
       "Rows returned by statements that read a protected relation, by relation (\"other\": statements "
       "that read none).",
       {"relation"}},
      {MetricId::relation_bytes_returned_total,
       "pgcloak_relation_bytes_returned_total",
       MetricType::Counter,
       "Bytes of rows returned by statements that read a protected relation, by relation (\"other\": "
       "statements that read none).",
       {"relation"}},
      {MetricId::masked_values_total,
       "pgcloak_masked_values_total",
       MetricType::Counter,
       "Values masked, by category and role.",
       {"category", "role"}},
      {MetricId::denials_total,
       "pgcloak_denials_total",
       MetricType::Counter,
       "Statements and requests refused by policy, by rule.",
       {"rule"}},
      {MetricId::backstop_hits_total,
       "pgcloak_backstop_hits_total",
       MetricType::Counter,
       "Result values the row backstop masked because statement rewriting had missed them.",
       {}},
      {MetricId::anomalies_total,
       "pgcloak_anomalies_total",
       MetricType::Counter,
       "Anomalies reported by the detectors, by detector and user.",
       {"detector", "user"}},
      {MetricId::alerts_total,
       "pgcloak_alerts_total",
       MetricType::Counter,
       "Alerts raised by the detectors, by detector and user.",
       {"detector", "user"}},
      {MetricId::audit_queue_depth,
       "pgcloak_audit_queue_depth",
       MetricType::Gauge,
       "Audit records submitted but not yet durable.",
       {}},
      {MetricId::audit_queue_limit,
       "pgcloak_audit_queue_limit",
       MetricType::Gauge,
       "audit.queue_limit: the queue depth at which new statements are held or refused.",
       {}},
      {MetricId::audit_write_latency_seconds,
       "pgcloak_audit_write_latency_seconds",
       MetricType::Gauge,
       "Time from submit to durable of the last audit batch.",
       {}},
      {MetricId::audit_records_written_total,
       "pgcloak_audit_records_written_total",
       MetricType::Counter,
       "Audit records made durable in every sink.",
       {}},
      {MetricId::audit_write_failures_total,
       "pgcloak_audit_write_failures_total",
       MetricType::Counter,
       "Audit sink write or sync failures.",
       {}},
      {MetricId::audit_healthy,
       "pgcloak_audit_healthy",
       MetricType::Gauge,
       "1 while every audit sink accepts writes and the queue is below its limit, else 0.",
       {}},
      {MetricId::upstream_connect_errors_total,
       "pgcloak_upstream_connect_errors_total",
       MetricType::Counter,
       "Failed connection attempts to the upstream PostgreSQL.",
       {}},
      {MetricId::upstream_connections_total,
       "pgcloak_upstream_connections_total",
       MetricType::Counter,
       "PostgreSQL connections sessions started on, by source: new, or pool (reused, upstream.pool).",
       {"source"}},
      {MetricId::upstream_pool_idle,
       "pgcloak_upstream_pool_idle",
       MetricType::Gauge,
       "PostgreSQL connections parked in the upstream pool, waiting for a client.",
       {}},
      {MetricId::upstream_pool_closed_total,
       "pgcloak_upstream_pool_closed_total",
       MetricType::Counter,
       "Connections the upstream pool closed instead of reusing, by reason (reset_failed, broken, expired, "
       "full, shutdown).",
       {"reason"}},
      {MetricId::config_reloads_total,
       "pgcloak_config_reloads_total",
       MetricType::Counter,
       "Configuration reloads (SIGHUP) by result (applied, rejected).",
       {"result"}},
      {MetricId::label_overflow_total,
       "pgcloak_label_overflow_total",
       MetricType::Counter,
       "Label values replaced by \"other\" because the label's cap was reached, by label (counted per "
       "lookup).",
       {"label"}},
      {MetricId::build_info,
       "pgcloak_build_info",
       MetricType::Gauge,
       "Always 1; the version is a label.",
       {"version"}},
  };
  return table;
}

// Statement durations from a sub-millisecond cached point query to a
// minute-long report.
const prometheus::Histogram::BucketBoundaries& duration_buckets() {
  static const prometheus::Histogram::BucketBoundaries b{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                         0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
  return b;
}

// Label caps that are not configurable: these values come from the
// configuration or from pgcloak's own code, so only a bug or a very large
// configuration reaches them.
constexpr size_t max_rules = 64;
constexpr size_t max_categories = 64;
constexpr size_t max_roles = 64;
constexpr size_t max_detectors = 32;
// Raw names remembered by the lookups of calls without a session; beyond
// that they are resolved through the caps on every call.
constexpr size_t max_cached_names = 16384;
constexpr size_t max_session_relations = 32;
constexpr size_t max_label_bytes = 128;

constexpr std::string_view other_label = "other";

size_t index_of(rules::AuditClass c) {
  return static_cast<size_t>(c);
}
size_t index_of(StatementVerdict v) {
  return static_cast<size_t>(v);
}

constexpr std::array<rules::AuditClass, 6> all_classes{rules::AuditClass::read,     rules::AuditClass::write,
                                                       rules::AuditClass::function, rules::AuditClass::role,
                                                       rules::AuditClass::ddl,      rules::AuditClass::misc};

// Length of the valid UTF-8 sequence at s[i], or 0 if there is none
// (overlong forms, surrogates and code points past U+10FFFF are invalid).
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  }
  return n;
}

// Prometheus rejects a whole scrape with an invalid UTF-8 label value, and
// PostgreSQL names are bytes in the database's encoding: invalid bytes
// become '?'. Long values are cut on a character boundary.
std::string sanitize_label(std::string_view value) {
  if (value.empty()) return "unknown";
  std::string out;
  out.reserve(std::min(value.size(), max_label_bytes));
  for (size_t i = 0; i < value.size();) {
    size_t n = utf8_sequence(value, i);
    if (out.size() + std::max<size_t>(n, 1) > max_label_bytes) break;
    if (n == 0) {
      out += '?';
      ++i;
    } else {
      out.append(value.substr(i, n));
      i += n;
    }
  }
  return out;
}

// A reusable per-thread key "a\0b" for the two-label lookups, so a lookup
// allocates nothing once the buffer has grown.
std::string_view pair_key(std::string_view a, std::string_view b) {
  thread_local std::string key;
  key.assign(a);
  key.push_back('\0');
  key.append(b);
  return key;
}

}  // namespace

std::string_view verdict_name(StatementVerdict v) {
  switch (v) {
    case StatementVerdict::allowed: return "allowed";
    case StatementVerdict::masked: return "masked";
    case StatementVerdict::denied: return "denied";
  }
  return "allowed";
}

namespace metrics_detail {

std::optional<std::string> LabelCap::admit(std::string_view value) {
  std::string label = sanitize_label(value);
  std::lock_guard lock(mu_);
  if (seen_.count(label) != 0) return label;
  if (seen_.size() < max_) {
    seen_.insert(label);
    return label;
  }
  overflow_->Increment();
  return std::nullopt;
}

}  // namespace metrics_detail

// --- connections ------------------------------------------------------------

ConnectionMetrics::ConnectionMetrics(Metrics* m, bool tls) : metrics_(m), tls_(tls) {}

ConnectionMetrics::ConnectionMetrics(ConnectionMetrics&& o) noexcept
    : metrics_(o.metrics_), tls_(o.tls_), auth_counted_(o.auth_counted_) {
  o.metrics_ = nullptr;
}

ConnectionMetrics& ConnectionMetrics::operator=(ConnectionMetrics&& o) noexcept {
  if (this != &o) {
    finish();
    metrics_ = o.metrics_;
    tls_ = o.tls_;
    auth_counted_ = o.auth_counted_;
    o.metrics_ = nullptr;
  }
  return *this;
}

ConnectionMetrics::~ConnectionMetrics() {
  finish();
}

void ConnectionMetrics::set_tls() {
  if (metrics_ == nullptr || tls_) return;
  metrics_->connections_current_[0]->Decrement();
  metrics_->connections_current_[1]->Increment();
  tls_ = true;
}

void ConnectionMetrics::on_auth(bool ok) {
  if (metrics_ == nullptr || auth_counted_) return;
  auth_counted_ = true;
  metrics_->connections_total_[tls_ ? 1 : 0][ok ? 1 : 2]->Increment();
  if (!ok) metrics_->auth_failures_->Increment();
}

void ConnectionMetrics::finish() {
  if (metrics_ == nullptr) return;
  if (!auth_counted_) metrics_->connections_total_[tls_ ? 1 : 0][0]->Increment();
  metrics_->connections_current_[tls_ ? 1 : 0]->Decrement();
  metrics_ = nullptr;
}

// --- sessions ---------------------------------------------------------------

void SessionMetrics::on_masked_values(std::string_view category, std::string_view role, uint64_t n) {
  if (metrics_ != nullptr) metrics_->on_masked_values(category, role, n);
}

void SessionMetrics::on_backstop_hit(uint64_t hits) {
  if (metrics_ != nullptr) metrics_->on_backstop_hit(hits);
}

void SessionMetrics::on_statement(const StatementMetrics& s) {
  if (metrics_ == nullptr) return;
  metrics_->record_statement(*series_, s, this);
}

metrics_detail::RelationSeries* SessionMetrics::relation(std::string_view name) {
  for (const auto& [n, r] : relations_) {
    if (n == name) return r;
  }
  auto* r = metrics_->resolve_relation(name);
  if (relations_.size() < max_session_relations) relations_.emplace_back(std::string(name), r);
  return r;
}

// --- Metrics ------------------------------------------------------------------

std::span<const MetricSpec> Metrics::table() {
  return spec_table();
}

Metrics::Metrics(MetricsOptions options)
    : options_(std::move(options)),
      registry_(std::make_shared<prometheus::Registry>()),
      users_by_label_(SIZE_MAX),
      sessions_by_name_(max_cached_names),
      sessions_by_label_(SIZE_MAX),
      relations_by_name_(max_cached_names),
      relations_by_label_(SIZE_MAX),
      denials_by_rule_(max_cached_names),
      masked_by_key_(max_cached_names),
      anomalies_by_key_(max_cached_names),
      alerts_by_key_(max_cached_names) {
  const auto t = table();
  for (size_t i = 0; i < t.size(); ++i) {
    const MetricSpec& spec = t[i];
    assert(static_cast<size_t>(spec.id) == i);
    const std::string name(spec.name);
    const std::string help(spec.help);
    switch (spec.type) {
      case MetricType::Counter:
        families_[i] = &prometheus::BuildCounter().Name(name).Help(help).Register(*registry_);
        break;
      case MetricType::Gauge:
        families_[i] = &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_);
        break;
      case MetricType::Histogram:
        families_[i] = &prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_);
        break;
      default: assert(false && "metric type without a builder"); break;
    }
  }

  for (int tls = 0; tls < 2; ++tls) {
    const std::string t_label = tls != 0 ? "tls" : "plain";
    connections_current_[tls] = &gauge(MetricId::connections_current, {t_label});
    connections_total_[tls][0] = &counter(MetricId::connections_total, {t_label, "none"});
    connections_total_[tls][1] = &counter(MetricId::connections_total, {t_label, "ok"});
    connections_total_[tls][2] = &counter(MetricId::connections_total, {t_label, "failed"});
  }
  auth_failures_ = &counter(MetricId::auth_failures_total, {});
  backstop_hits_ = &counter(MetricId::backstop_hits_total, {});
  for (auto c : all_classes) {
    duration_[index_of(c)] =
        &histogram(MetricId::statement_duration_seconds, {std::string(rules::audit_class_name(c))});
  }
  other_relation_.rows = &counter(MetricId::relation_rows_returned_total, {std::string(other_label)});
  other_relation_.bytes = &counter(MetricId::relation_bytes_returned_total, {std::string(other_label)});
  audit_queue_depth_ = &gauge(MetricId::audit_queue_depth, {});
  audit_queue_limit_ = &gauge(MetricId::audit_queue_limit, {});
  audit_latency_ = &gauge(MetricId::audit_write_latency_seconds, {});
  audit_written_ = &counter(MetricId::audit_records_written_total, {});
  audit_failures_ = &counter(MetricId::audit_write_failures_total, {});
  audit_healthy_ = &gauge(MetricId::audit_healthy, {});
  // Healthy until a sample says otherwise: without audit configured there
  // is nothing to fail.
  audit_healthy_->Set(1);
  upstream_errors_ = &counter(MetricId::upstream_connect_errors_total, {});
  upstream_connections_[0] = &counter(MetricId::upstream_connections_total, {"new"});
  upstream_connections_[1] = &counter(MetricId::upstream_connections_total, {"pool"});
  pool_idle_ = &gauge(MetricId::upstream_pool_idle, {});
  for (size_t i = 0; i < pool_closed_.size(); ++i) {
    pool_closed_[i] = &counter(MetricId::upstream_pool_closed_total,
                               {std::string(pool_close_name(static_cast<PoolClose>(i)))});
  }
  reloads_[0] = &counter(MetricId::config_reloads_total, {"applied"});
  reloads_[1] = &counter(MetricId::config_reloads_total, {"rejected"});
  gauge(MetricId::build_info, {options_.version.empty() ? "unknown" : options_.version}).Set(1);

  auto cap = [&](std::string_view label, size_t max) {
    return std::make_unique<metrics_detail::LabelCap>(
        max, &counter(MetricId::label_overflow_total, {std::string(label)}));
  };
  users_ = cap("user", std::max<size_t>(options_.max_users, 1));
  databases_ = cap("database", std::max<size_t>(options_.max_databases, 1));
  relations_ = cap("relation", std::max<size_t>(options_.max_relations, 1));
  rules_ = cap("rule", max_rules);
  categories_ = cap("category", max_categories);
  roles_ = cap("role", max_roles);
  detectors_ = cap("detector", max_detectors);
}

Metrics::~Metrics() = default;

template <class T>
prometheus::Family<T>& Metrics::family(MetricId id) const {
  assert(table()[static_cast<size_t>(id)].type == T::metric_type);
  return *static_cast<prometheus::Family<T>*>(families_[static_cast<size_t>(id)]);
}

prometheus::Labels Metrics::labels(MetricId id, const std::vector<std::string>& values) const {
  const MetricSpec& spec = table()[static_cast<size_t>(id)];
  assert(spec.labels.size() == values.size());
  prometheus::Labels out;
  for (size_t i = 0; i < spec.labels.size() && i < values.size(); ++i) {
    out.emplace(std::string(spec.labels[i]), values[i]);
  }
  return out;
}

prometheus::Counter& Metrics::counter(MetricId id, const std::vector<std::string>& values) {
  return family<prometheus::Counter>(id).Add(labels(id, values));
}

prometheus::Gauge& Metrics::gauge(MetricId id, const std::vector<std::string>& values) {
  return family<prometheus::Gauge>(id).Add(labels(id, values));
}

prometheus::Histogram& Metrics::histogram(MetricId id, const std::vector<std::string>& values) {
  return family<prometheus::Histogram>(id).Add(labels(id, values), duration_buckets());
}

ConnectionMetrics Metrics::on_connection_opened(bool tls) {
  connections_current_[tls ? 1 : 0]->Increment();
  return ConnectionMetrics(this, tls);
}

metrics_detail::UserSeries* Metrics::resolve_user(const std::string& label) {
  return users_by_label_.find_or_make(label, [&] {
    metrics_detail::UserSeries u;
    u.rows = &counter(MetricId::rows_returned_total, {label});
    u.bytes = &counter(MetricId::bytes_returned_total, {label});
    u.protected_rows = &counter(MetricId::protected_rows_returned_total, {label});
    std::lock_guard lock(owned_mu_);
    return &user_series_.emplace_back(u);
  });
}

metrics_detail::SessionSeries* Metrics::resolve_session(std::string_view user, std::string_view database) {
  const std::string user_label = users_->admit(user).value_or(std::string(other_label));
  const std::string db_label = databases_->admit(database).value_or(std::string(other_label));
  return sessions_by_label_.find_or_make(pair_key(user_label, db_label), [&] {
    const metrics_detail::UserSeries* u = resolve_user(user_label);
    std::lock_guard lock(owned_mu_);
    auto& s = session_series_.emplace_back();
    s.user = u;
    s.user_label = user_label;
    s.database_label = db_label;
    return &s;
  });
}

metrics_detail::RelationSeries* Metrics::resolve_relation(std::string_view name) {
  return relations_by_name_.find_or_make(name, [&]() -> metrics_detail::RelationSeries* {
    auto label = relations_->admit(name);
    if (!label) return &other_relation_;
    return relations_by_label_.find_or_make(*label, [&] {
      metrics_detail::RelationSeries r;
      r.rows = &counter(MetricId::relation_rows_returned_total, {*label});
      r.bytes = &counter(MetricId::relation_bytes_returned_total, {*label});
      std::lock_guard lock(owned_mu_);
      return &relation_series_.emplace_back(r);
    });
  });
}

SessionMetrics Metrics::session(std::string_view user, std::string_view database) {
  return SessionMetrics(this, resolve_session(user, database));
}

void Metrics::on_statement(std::string_view user, std::string_view database, const StatementMetrics& s) {
  auto* series = sessions_by_name_.find_or_make(pair_key(user, database),
                                                [&] { return resolve_session(user, database); });
  record_statement(*series, s, nullptr);
}

prometheus::Counter* Metrics::statement_counter(metrics_detail::SessionSeries& s, rules::AuditClass c,
                                                StatementVerdict v) {
  auto& cell = s.statements[index_of(c)][index_of(v)];
  prometheus::Counter* p = cell.load(std::memory_order_acquire);
  if (p == nullptr) {
    // Two threads may both get here: Family::Add returns the same series
    // for the same labels, so both store the same pointer.
    p = &counter(MetricId::statements_total,
                 {s.database_label, s.user_label, std::string(rules::audit_class_name(c)),
                  std::string(verdict_name(v))});
    cell.store(p, std::memory_order_release);
  }
  return p;
}

void Metrics::record_statement(metrics_detail::SessionSeries& s, const StatementMetrics& st,
                               SessionMetrics* cache) {
  const size_t ci = index_of(st.statement_class);
  if (ci >= all_classes.size() || index_of(st.decision) > 2) return;  // not a valid enum value
  statement_counter(s, st.statement_class, st.decision)->Increment();
  duration_[ci]->Observe(std::chrono::duration<double>(st.duration).count());
  const auto rows = static_cast<double>(st.rows);
  const auto bytes = static_cast<double>(st.bytes);
  if (st.rows != 0) s.user->rows->Increment(rows);
  if (st.bytes != 0) s.user->bytes->Increment(bytes);
  if (st.rows != 0 || st.bytes != 0) {
    if (st.protected_relations.empty()) {
      other_relation_.rows->Increment(rows);
      other_relation_.bytes->Increment(bytes);
    } else {
      s.user->protected_rows->Increment(rows);
      for (const auto& name : st.protected_relations) {
        auto* r = cache != nullptr ? cache->relation(name) : resolve_relation(name);
        r->rows->Increment(rows);
        r->bytes->Increment(bytes);
      }
    }
  }
  if (st.decision == StatementVerdict::denied) on_denial(st.rule);
}

void Metrics::on_denial(std::string_view rule) {
  denials_by_rule_
      .find_or_make(rule,
                    [&] {
                      return &counter(MetricId::denials_total,
                                      {rules_->admit(rule).value_or(std::string(other_label))});
                    })
      ->Increment();
}

void Metrics::on_backstop_hit(uint64_t hits) {
  if (hits != 0) backstop_hits_->Increment(static_cast<double>(hits));
}

void Metrics::on_masked_values(std::string_view category, std::string_view role, uint64_t n) {
  if (n == 0) return;
  masked_by_key_
      .find_or_make(pair_key(category, role),
                    [&] {
                      return &counter(MetricId::masked_values_total,
                                      {categories_->admit(category).value_or(std::string(other_label)),
                                       roles_->admit(role).value_or(std::string(other_label))});
                    })
      ->Increment(static_cast<double>(n));
}

void Metrics::on_anomaly(std::string_view detector, std::string_view user) {
  anomalies_by_key_
      .find_or_make(pair_key(detector, user),
                    [&] {
                      return &counter(MetricId::anomalies_total,
                                      {detectors_->admit(detector).value_or(std::string(other_label)),
                                       users_->admit(user).value_or(std::string(other_label))});
                    })
      ->Increment();
}

void Metrics::on_alert(std::string_view detector, std::string_view user) {
  alerts_by_key_
      .find_or_make(pair_key(detector, user),
                    [&] {
                      return &counter(MetricId::alerts_total,
                                      {detectors_->admit(detector).value_or(std::string(other_label)),
                                       users_->admit(user).value_or(std::string(other_label))});
                    })
      ->Increment();
}

void Metrics::set_audit_stats(const AuditStats& stats, uint64_t queue_limit) {
  std::lock_guard lock(samples_mu_);
  audit_queue_depth_->Set(static_cast<double>(stats.queued));
  audit_queue_limit_->Set(static_cast<double>(queue_limit));
  audit_latency_->Set(std::chrono::duration<double>(stats.last_write_latency).count());
  audit_healthy_->Set(stats.healthy ? 1 : 0);
  // Cumulative values from the audit log; a smaller value means a new log
  // (counted from zero again), whose whole value is new.
  auto advance = [](prometheus::Counter* c, uint64_t& seen, uint64_t now) {
    const uint64_t delta = now >= seen ? now - seen : now;
    if (delta != 0) c->Increment(static_cast<double>(delta));
    seen = now;
  };
  advance(audit_written_, audit_written_seen_, stats.written);
  advance(audit_failures_, audit_failures_seen_, stats.failures);
}

void Metrics::on_upstream_connect_error() {
  upstream_errors_->Increment();
}

void Metrics::on_upstream_connection(bool reused) {
  upstream_connections_[reused ? 1 : 0]->Increment();
}

void Metrics::set_pool_stats(const PoolStats& stats) {
  std::lock_guard lock(samples_mu_);
  pool_idle_->Set(static_cast<double>(stats.idle));
  for (size_t i = 0; i < pool_closed_.size(); ++i) {
    if (stats.closed[i] > pool_closed_seen_[i]) {
      pool_closed_[i]->Increment(static_cast<double>(stats.closed[i] - pool_closed_seen_[i]));
    }
    pool_closed_seen_[i] = stats.closed[i];
  }
}

void Metrics::on_config_reload(ReloadResult result) {
  reloads_[result == ReloadResult::applied ? 0 : 1]->Increment();
}

void Metrics::add_scrape_hook(std::function<void()> hook) {
  std::lock_guard lock(hooks_mu_);
  hooks_.push_back(std::move(hook));
}

std::string Metrics::serialize() const {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard lock(hooks_mu_);
    hooks = hooks_;
  }
  for (const auto& h : hooks) h();

  std::vector<prometheus::MetricFamily> collected = registry_->Collect();
  // In table order, and with the families that have no series yet, so that
  // the output lists every family with its HELP and TYPE.
  std::vector<prometheus::MetricFamily> ordered;
  ordered.reserve(table().size());
  for (const auto& spec : table()) {
    auto it = std::find_if(collected.begin(), collected.end(),
                           [&](const prometheus::MetricFamily& f) { return f.name == spec.name; });
    if (it != collected.end()) {
      ordered.push_back(std::move(*it));
    } else {
      ordered.push_back({std::string(spec.name), std::string(spec.help), spec.type, {}});
    }
  }
  return prometheus::TextSerializer().Serialize(ordered);
}

}  // namespace pgcloak::proxy
