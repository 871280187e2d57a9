// pgcloak's Prometheus metrics (docs/metrics.md). Every family is declared
// once, in the table in metrics.cc (conventions, point 9); this header is the
// API the relay, session, audit and server code call.
//
// The hot path (one call per statement, up to ~100k/s over all threads)
// takes no lock shared by all threads: a session resolves its series once
// (Metrics::session) and afterwards only touches prometheus-cpp's atomics.
// Label values that grow with use (users, databases, relations, rules, ...)
// are capped; values past a cap are counted under "other" (docs/metrics.md,
// "Cardinality").
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_type.h>
#include <prometheus/registry.h>

#include "proxy/audit_log.h"
#include "proxy/server_pool.h"
#include "rules/statement_audit.h"

namespace pgcloak::proxy {

// The families, in the order of the table in metrics.cc (and of the output).
enum class MetricId : uint8_t {
  connections_current,
  connections_total,
  auth_failures_total,
  statements_total,
  statement_duration_seconds,
  rows_returned_total,
  bytes_returned_total,
  protected_rows_returned_total,
  relation_rows_returned_total,
  relation_bytes_returned_total,
  masked_values_total,
  denials_total,
  backstop_hits_total,
  anomalies_total,
  alerts_total,
  audit_queue_depth,
  audit_queue_limit,
  audit_write_latency_seconds,
  audit_records_written_total,
  audit_write_failures_total,
  audit_healthy,
  upstream_connect_errors_total,
  upstream_connections_total,
  upstream_pool_idle,
  upstream_pool_closed_total,
  config_reloads_total,
  label_overflow_total,
  build_info,
  count_  // not a family
};
inline constexpr size_t metric_family_count = static_cast<size_t>(MetricId::count_);

// One row of the table.
struct MetricSpec {
  MetricId id;
  std::string_view name;  // with the pgcloak_ prefix
  prometheus::MetricType type;
  std::string_view help;
  std::vector<std::string_view> labels;
};

// What the policy decided for a statement (label "decision").
enum class StatementVerdict : uint8_t { allowed, masked, denied };
std::string_view verdict_name(StatementVerdict v);

enum class ReloadResult : uint8_t { applied, rejected };

struct MetricsOptions {
  std::string version;         // pgcloak_build_info{version}
  size_t max_users = 100;      // metrics.max_users
  size_t max_databases = 20;   // metrics.max_databases
  size_t max_relations = 200;  // metrics.max_relations
};

// One statement, reported once its result is complete (or it was refused).
struct StatementMetrics {
  rules::AuditClass statement_class = rules::AuditClass::misc;
  StatementVerdict decision = StatementVerdict::allowed;
  // With decision denied: the rule that refused it ("deny:function", ...).
  // on_statement counts the denial, so do not call on_denial() as well.
  std::string_view rule;
  // From the statement's arrival to the end of its result.
  std::chrono::nanoseconds duration{0};
  uint64_t rows = 0;   // DataRows sent to the client
  uint64_t bytes = 0;  // bytes of those DataRows, headers included
  // The protected relations the statement reads ("schema.name"), e.g.
  // rules::StatementDecision::relations. Only these get a relation label:
  // rows of statements that read no protected relation count as "other".
  std::span<const std::string> protected_relations;
};

class Metrics;

namespace metrics_detail {

// The series of one (user, database) pair after capping.
struct UserSeries {
  prometheus::Counter* rows = nullptr;
  prometheus::Counter* bytes = nullptr;
  prometheus::Counter* protected_rows = nullptr;
};
struct SessionSeries {
  const UserSeries* user = nullptr;
  std::string user_label;
  std::string database_label;
  // [class][decision], created on first use so that combinations that never
  // happen do not show up as zero series.
  std::array<std::array<std::atomic<prometheus::Counter*>, 3>, 6> statements{};
};
struct RelationSeries {
  prometheus::Counter* rows = nullptr;
  prometheus::Counter* bytes = nullptr;
};

// string -> stable pointer, split into shards with their own lock so that
// threads looking up different keys do not contend. Entries are never
// removed; past max_entries new keys are resolved with make() every time
// instead of being remembered, so names beyond the label caps (which all map
// to "other") cannot grow the map without bound.
template <class T>
class ShardedMap {
 public:
  explicit ShardedMap(size_t max_entries) : max_entries_(max_entries) {}

  // Finds key, or calls make() (under the shard's lock) to resolve it.
  template <class Make>
  T* find_or_make(std::string_view key, Make&& make) {
    Shard& s = shards_[std::hash<std::string_view>{}(key) % shard_count];
    {
      std::shared_lock lock(s.mu);
      if (auto it = s.map.find(key); it != s.map.end()) return it->second;
    }
    std::unique_lock lock(s.mu);
    if (auto it = s.map.find(key); it != s.map.end()) return it->second;
    // Copied first: key may view a buffer that make() reuses.
    std::string owned(key);
    T* made = make();
    if (entries_.load(std::memory_order_relaxed) < max_entries_) {
      entries_.fetch_add(1, std::memory_order_relaxed);
      s.map.emplace(std::move(owned), made);
    }
    return made;
  }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  static constexpr size_t shard_count = 16;
  struct Shard {
    std::shared_mutex mu;
    std::unordered_map<std::string, T*, Hash, std::equal_to<>> map;
  };
  std::array<Shard, shard_count> shards_;
  size_t max_entries_;
  std::atomic<size_t> entries_{0};
};

// Admits the first `max` distinct values of one label; later ones become
// "other". Values are made safe for the exposition format first (valid
// UTF-8, at most 128 bytes). Only called when a series is resolved, never
// per statement of a session.
class LabelCap {
 public:
  LabelCap(size_t max, prometheus::Counter* overflow) : max_(max), overflow_(overflow) {}
  // The label to use, or nullopt for "other" (counted as an overflow).
  std::optional<std::string> admit(std::string_view value);

 private:
  std::mutex mu_;
  std::unordered_set<std::string> seen_;
  size_t max_;
  prometheus::Counter* overflow_;
};

}  // namespace metrics_detail

// A session's view of the metrics: the (user, database) series resolved
// once. Use it from one thread at a time (the session's); a
// default-constructed one ignores every call (metrics off).
class SessionMetrics {
 public:
  SessionMetrics() = default;
  void on_statement(const StatementMetrics& s);
  // Metrics::on_masked_values / on_backstop_hit, or nothing when off.
  void on_masked_values(std::string_view category, std::string_view role, uint64_t n);
  void on_backstop_hit(uint64_t hits = 1);
  explicit operator bool() const { return metrics_ != nullptr; }

 private:
  friend class Metrics;
  SessionMetrics(Metrics* m, metrics_detail::SessionSeries* s) : metrics_(m), series_(s) {}
  metrics_detail::RelationSeries* relation(std::string_view name);

  Metrics* metrics_ = nullptr;
  metrics_detail::SessionSeries* series_ = nullptr;
  // The protected relations this session read: a handful, so a linear scan
  // beats the shared map and takes no lock.
  std::vector<std::pair<std::string, metrics_detail::RelationSeries*>> relations_;
};

// One client connection from accept to close: keeps
// pgcloak_connections_current right on every exit path and counts the
// connection in pgcloak_connections_total once its auth result is known
// (auth="none" if it ends before one). Movable; a default-constructed one
// does nothing.
class ConnectionMetrics {
 public:
  ConnectionMetrics() = default;
  ConnectionMetrics(ConnectionMetrics&& o) noexcept;
  ConnectionMetrics& operator=(ConnectionMetrics&& o) noexcept;
  ConnectionMetrics(const ConnectionMetrics&) = delete;
  ConnectionMetrics& operator=(const ConnectionMetrics&) = delete;
  ~ConnectionMetrics();

  // The client switched to TLS (SSLRequest answered 'S', handshake done).
  void set_tls();
  // The first call counts; a failure also counts in pgcloak_auth_failures_total.
  void on_auth(bool ok);

 private:
  friend class Metrics;
  ConnectionMetrics(Metrics* m, bool tls);
  void finish();

  Metrics* metrics_ = nullptr;
  bool tls_ = false;
  bool auth_counted_ = false;
};

class Metrics {
 public:
  explicit Metrics(MetricsOptions options);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The table: every family pgcloak exports, in output order.
  static std::span<const MetricSpec> table();

  // --- connections --------------------------------------------------------
  // At accept (tls = false unless the listener is TLS-only); keep the
  // result for the life of the connection.
  ConnectionMetrics on_connection_opened(bool tls = false);

  // --- statements ---------------------------------------------------------
  // After authentication: user and database must be the authenticated ones,
  // never names from an unauthenticated StartupMessage, or anyone could fill
  // the user cap with junk.
  SessionMetrics session(std::string_view user, std::string_view database);
  // The same without a SessionMetrics: resolves the series through a shared
  // sharded map on every call (slower; for callers that have no session).
  void on_statement(std::string_view user, std::string_view database, const StatementMetrics& s);

  // --- policy -------------------------------------------------------------
  // A denial not tied to a counted statement (e.g. a refused startup
  // setting). Denied statements are counted by on_statement.
  void on_denial(std::string_view rule);
  void on_backstop_hit(uint64_t hits = 1);
  // role: the role (or masking policy) the masks applied for.
  void on_masked_values(std::string_view category, std::string_view role, uint64_t n);

  // --- detection ----------------------------------------------------------
  void on_anomaly(std::string_view detector, std::string_view user);
  void on_alert(std::string_view detector, std::string_view user);

  // --- audit and operations -----------------------------------------------
  // From AuditLog::stats(), e.g. in a scrape hook. failures and written are
  // cumulative and turned into counter increments here.
  void set_audit_stats(const AuditStats& stats, uint64_t queue_limit);
  void on_upstream_connect_error();
  // A session got its PostgreSQL connection: reused from the upstream pool,
  // or newly opened.
  void on_upstream_connection(bool reused);
  // From ServerPool::stats(), in a scrape hook; cumulative counts become
  // counter increments here.
  void set_pool_stats(const PoolStats& stats);
  void on_config_reload(ReloadResult result);

  // Runs before every serialize(), on the scraping thread: the place to
  // sample values that are cheaper to read than to push (audit stats).
  void add_scrape_hook(std::function<void()> hook);

  // Prometheus text exposition format 0.0.4. Families without series still
  // get their HELP and TYPE lines, so the output documents every family.
  std::string serialize() const;

 private:
  friend class SessionMetrics;
  friend class ConnectionMetrics;

  template <class T>
  prometheus::Family<T>& family(MetricId id) const;
  prometheus::Counter& counter(MetricId id, const std::vector<std::string>& values);
  prometheus::Gauge& gauge(MetricId id, const std::vector<std::string>& values);
  prometheus::Histogram& histogram(MetricId id, const std::vector<std::string>& values);
  prometheus::Labels labels(MetricId id, const std::vector<std::string>& values) const;

  metrics_detail::UserSeries* resolve_user(const std::string& label);
  metrics_detail::SessionSeries* resolve_session(std::string_view user, std::string_view database);
  metrics_detail::RelationSeries* resolve_relation(std::string_view name);
  prometheus::Counter* statement_counter(metrics_detail::SessionSeries& s, rules::AuditClass c,
                                         StatementVerdict v);
  void record_statement(metrics_detail::SessionSeries& s, const StatementMetrics& st, SessionMetrics* cache);

  MetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::array<void*, metric_family_count> families_{};  // Family<Counter|Gauge|Histogram>*

  // Series with fixed label sets, created up front (and shown as zero).
  std::array<prometheus::Gauge*, 2> connections_current_{};                 // [tls]
  std::array<std::array<prometheus::Counter*, 3>, 2> connections_total_{};  // [tls][none, ok, failed]
  prometheus::Counter* auth_failures_ = nullptr;
  prometheus::Counter* backstop_hits_ = nullptr;
  std::array<prometheus::Histogram*, 6> duration_{};  // [class]
  prometheus::Gauge* audit_queue_depth_ = nullptr;
  prometheus::Gauge* audit_queue_limit_ = nullptr;
  prometheus::Gauge* audit_latency_ = nullptr;
  prometheus::Counter* audit_written_ = nullptr;
  prometheus::Counter* audit_failures_ = nullptr;
  prometheus::Gauge* audit_healthy_ = nullptr;
  prometheus::Counter* upstream_errors_ = nullptr;
  std::array<prometheus::Counter*, 2> upstream_connections_{};  // [new, pool]
  prometheus::Gauge* pool_idle_ = nullptr;
  std::array<prometheus::Counter*, static_cast<size_t>(PoolClose::count_)> pool_closed_{};
  std::array<uint64_t, static_cast<size_t>(PoolClose::count_)> pool_closed_seen_{};
  std::array<prometheus::Counter*, 2> reloads_{};  // [applied, rejected]
  metrics_detail::RelationSeries other_relation_;

  std::unique_ptr<metrics_detail::LabelCap> users_;
  std::unique_ptr<metrics_detail::LabelCap> databases_;
  std::unique_ptr<metrics_detail::LabelCap> relations_;
  std::unique_ptr<metrics_detail::LabelCap> rules_;
  std::unique_ptr<metrics_detail::LabelCap> categories_;
  std::unique_ptr<metrics_detail::LabelCap> roles_;
  std::unique_ptr<metrics_detail::LabelCap> detectors_;

  // Resolved series, owned here so that pointers handed out stay valid.
  std::mutex owned_mu_;
  std::deque<metrics_detail::UserSeries> user_series_;
  std::deque<metrics_detail::SessionSeries> session_series_;
  std::deque<metrics_detail::RelationSeries> relation_series_;
  metrics_detail::ShardedMap<metrics_detail::UserSeries> users_by_label_;
  metrics_detail::ShardedMap<metrics_detail::SessionSeries> sessions_by_name_;
  metrics_detail::ShardedMap<metrics_detail::SessionSeries> sessions_by_label_;
  metrics_detail::ShardedMap<metrics_detail::RelationSeries> relations_by_name_;
  metrics_detail::ShardedMap<metrics_detail::RelationSeries> relations_by_label_;
  metrics_detail::ShardedMap<prometheus::Counter> denials_by_rule_;
  metrics_detail::ShardedMap<prometheus::Counter> masked_by_key_;
  metrics_detail::ShardedMap<prometheus::Counter> anomalies_by_key_;
  metrics_detail::ShardedMap<prometheus::Counter> alerts_by_key_;

  std::mutex samples_mu_;
  uint64_t audit_written_seen_ = 0;
  uint64_t audit_failures_seen_ = 0;

  mutable std::mutex hooks_mu_;
  std::vector<std::function<void()>> hooks_;
};

}  // namespace pgcloak::proxy
