// Exfiltration detection (docs/detection.md): the rules of the `detection:`
// section evaluated against what sessions do, while they do it. Pure policy:
// no I/O and no clock. Every call takes `now`, so tests and the evaluation
// harness (bench/exfil_eval.cc) run weeks of traffic in seconds, and the
// proxy passes system_clock::now().
//
// How the proxy drives it, per session:
//
//   on_connect()                        after authentication (service_account; blocks)
//   on_statement()                      when a statement starts; returns a StatementWatch
//   watch.exceeded(rows, bytes)         after each batch of DataRows: two integer compares
//   limit_alert()                       only when exceeded() turned true
//   on_statement_end()                  at CommandComplete (or the error that ended it)
//   on_denial()                         when pgcloak refused a statement (probing)
//   on_disconnect()                     frees the session's probing state
//
// and acts on every Alert returned (alert, cancel, terminate, block).
//
// Thread safety: every member function may be called from any thread at
// once. State is sharded by user name, each shard behind its own mutex, so
// relay threads serving different users do not contend. A statement that
// reads no protected data (StatementFacts::reads empty) returns at once:
// no lock, no allocation.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/result.h"
#include "rules/detection_config.h"
#include "rules/statement_audit.h"

namespace pgcloak::rules {

class Protection;
class SessionPolicy;

using TimePoint = std::chrono::system_clock::time_point;

struct DetectIdentity {
  std::string user;
  // The login and every group it belongs to, nested groups included
  // (Catalog::is_member), resolved by the caller once per session.
  std::vector<std::string> roles;
  std::string client_ip;  // literal address; empty for a Unix socket
  std::string application_name;
  uint64_t session_id = 0;  // unique per session for the life of the process
};

// One protected relation a statement reads: the configured table the data
// comes from (a read of a partition or a view counts for its table), and the
// categories of the protected columns read from it.
struct ProtectedRead {
  std::string relation;  // "schema.name"
  std::vector<std::string> categories;
  bool unfiltered = false;  // rows returned with no WHERE/JOIN condition or LIMIT (a full scan)
};

// What is known about a statement when it starts.
struct StatementFacts {
  AuditClass statement_class = AuditClass::read;
  std::vector<ProtectedRead> reads;  // empty = reads no protected data: nothing to do
  bool copy_to = false;              // COPY ... TO (a table or a query)
  // WHERE / JOIN ON / HAVING references a protected column this session
  // sees masked: a query that can test hidden values.
  bool predicate_on_masked = false;
  // Hash of the statement's literal or bind values (the text itself in the
  // simple protocol, the Bind parameters in the extended one): distinct
  // keys count distinct lookups (slow_drip) and distinct predicates (probing).
  uint64_t key = 0;
  // Hash of the statement without its values (the audit fingerprint).
  uint64_t shape = 0;
};

// Builds facts from the statement analysis: reads (mapped to their
// configured tables and categories), unfiltered reads, COPY TO, and masked
// predicates (policy null = nothing is masked). key is left to the caller.
// Only READ and WRITE statements read; COPY FROM, DDL and grants do not.
StatementFacts statement_facts(const StatementAudit& audit, const Protection& protection,
                               const SessionPolicy* policy);
// statement_facts() through a cache: the facts of an analysis are the same
// every time its statement runs (key aside, left to the caller), and
// deriving them is about 1.6 us of string work per protected statement.
// Keyed by the analysis object, which an entry keeps alive so that its
// address cannot be reused, and by the policy's id; a new protection
// empties the cache. Bounded by entries (emptied when full). Not
// thread-safe: each relay loop has its own.
class StatementFactsCache {
 public:
  explicit StatementFactsCache(size_t max_entries = 4096) : max_entries_(max_entries) {}
  // The reference is valid until the next call.
  const StatementFacts& get(const std::shared_ptr<const StatementAudit>& audit,
                            const std::shared_ptr<const Protection>& protection, const SessionPolicy* policy);
  size_t entries() const { return map_.size(); }

 private:
  struct Entry {
    std::shared_ptr<const StatementAudit> audit;
    uint64_t policy_id;
    StatementFacts facts;
  };
  size_t max_entries_;
  std::shared_ptr<const Protection> protection_;
  std::unordered_map<const StatementAudit*, std::vector<Entry>> map_;  // a few policies per analysis
};

// FNV-1a, for keys and shapes.
uint64_t detection_hash(std::string_view bytes, uint64_t seed = 0xcbf29ce484222325ULL);
// The 16 hex digits of StatementAudit::fingerprint as a number (0 if not hex).
uint64_t fingerprint_value(std::string_view fingerprint);

struct Alert {
  std::string rule;
  std::string detector;
  AlertAction action = AlertAction::alert;
  std::string user;
  std::string client_ip;
  std::string application_name;
  std::string relation;  // empty for service_account and denial probing
  std::string category;  // the categories involved, comma-separated
  double observed = 0;   // rows, bytes, distinct keys, denials, ... (see message)
  double baseline = 0;   // the limit or learned threshold it was compared with
  uint64_t session_id = 0;
  TimePoint at;
  std::chrono::seconds block_for{0};  // action block: refuse the user's logins this long
  // One line for humans. Never holds data: only names, counts and limits.
  std::string message;
};

struct DetectorRules;  // detection.cc: a compiled configuration

// The streaming limits of one statement. exceeded() is the whole per-batch
// cost; everything else happens in limit_alert() once a limit is passed.
struct StatementWatch {
  uint64_t max_rows = std::numeric_limits<uint64_t>::max();
  uint64_t max_bytes = std::numeric_limits<uint64_t>::max();
  bool exceeded(uint64_t rows, uint64_t bytes) const { return rows > max_rows || bytes > max_bytes; }
  bool armed() const { return count != 0; }

  // Internal to Detector.
  struct Limit {
    uint64_t value = 0;   // fires when the measure goes above it
    double baseline = 0;  // for the alert
    uint32_t rule = 0;    // index into the rules the watch was armed with
    uint16_t read = 0;    // index into StatementFacts::reads
    bool bytes = false;   // the measure: bytes, else rows
    bool fired = false;
    uint64_t offset = 0;  // window_volume: rows already in the window
  };
  static constexpr size_t max_limits = 8;
  std::array<Limit, max_limits> limits{};
  uint8_t count = 0;
  std::shared_ptr<const DetectorRules> rules;
  void rearm();
};

class Detector {
 public:
  explicit Detector(std::shared_ptr<const DetectionConfig> config);
  ~Detector();
  Detector(const Detector&) = delete;
  Detector& operator=(const Detector&) = delete;

  // New rules; learned state is kept for rules whose name, detector and
  // window are unchanged (state is keyed by them).
  void reload(std::shared_ptr<const DetectionConfig> config);
  std::shared_ptr<const DetectionConfig> config() const;
  // False while the rules in force are none (or `enabled: false` since a
  // reload): the proxy then skips deriving statement facts and keys, so
  // switched-off detection costs one relaxed load per statement.
  bool active() const { return active_.load(std::memory_order_relaxed); }

  // service_account; also where a blocked user is refused (blocked_until).
  std::vector<Alert> on_connect(const DetectIdentity& who, TimePoint now);
  void on_disconnect(const DetectIdentity& who);
  // pgcloak refused a statement of this session (a policy denial).
  std::vector<Alert> on_denial(const DetectIdentity& who, std::string_view denial_rule, TimePoint now);

  // Statement start: first_access, off_hours, bulk_export (COPY TO,
  // unfiltered reads with min_rows 0), slow_drip, probing predicates.
  // Returns the streaming limits: statement_volume, the remaining budget of
  // window_volume windows, bulk_export min_rows.
  StatementWatch on_statement(const DetectIdentity& who, const StatementFacts& facts, TimePoint now,
                              std::vector<Alert>& alerts);
  // Call when watch.exceeded(rows, bytes): alerts for every limit passed,
  // then re-arms the watch to the next limit (an alert-only rule must not
  // hide a later cancel).
  std::vector<Alert> limit_alert(const DetectIdentity& who, const StatementFacts& facts,
                                 StatementWatch& watch, uint64_t rows, uint64_t bytes, TimePoint now);
  // Statement end with what it returned: window_volume accounting, and any
  // limit passed since the last check.
  void on_statement_end(const DetectIdentity& who, const StatementFacts& facts, StatementWatch& watch,
                        uint64_t rows, uint64_t bytes, TimePoint now, std::vector<Alert>& alerts);

  // Set while a block action holds: refuse the user's sessions until then.
  std::optional<TimePoint> blocked_until(std::string_view user, TimePoint now) const;
  // The blocks in force, by user name; and lifting one (an administrator's
  // decision: true when there was a block).
  std::vector<std::pair<std::string, TimePoint>> blocks(TimePoint now) const;
  bool unblock(std::string_view user, TimePoint now);

  // Baselines, first-access history, learned service-account clients,
  // blocks and when learning started, as JSON (version 1). Short-lived
  // counters (slow_drip, probing, cooldowns) are not saved.
  nlohmann::json save_state(TimePoint now) const;
  // Replaces the state. A document of another format or version, or a
  // malformed one, leaves the state empty and says why.
  Status load_state(const nlohmann::json& state);

  struct Stats {
    size_t users = 0;
    size_t tracked = 0;  // (user, relation) entries
    uint64_t evicted_users = 0;
  };
  Stats stats() const;

 private:
  struct Shard;
  struct UserState;
  Shard& shard_for(std::string_view user) const;
  UserState& user_state(Shard& s, const DetectIdentity& who, int64_t now_ms, const DetectorRules& rules);
  std::shared_ptr<const DetectorRules> compile(
      std::shared_ptr<const DetectionConfig> config);  // caller holds compile_mu_
  std::shared_ptr<const DetectorRules> rules() const;
  int64_t started(int64_t now_ms);

  static constexpr size_t shard_count = 32;
  std::unique_ptr<Shard[]> shards_;
  // Read by every statement that reads protected data, so no mutex: relay
  // threads only take their user's shard lock.
  std::atomic<std::shared_ptr<const DetectorRules>> rules_;
  std::atomic<bool> active_{false};
  std::mutex compile_mu_;              // reload() against reload() and load_state()
  std::vector<std::string> slot_ids_;  // slot -> "name/detector/window"; guarded by compile_mu_
  std::atomic<int64_t> started_ms_{0};
  std::atomic<uint64_t> evicted_{0};
};

}  // namespace pgcloak::rules
