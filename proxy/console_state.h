// What the security console (/console, /api/console; docs/metrics.md,
// "Console") shows: the live sessions, who read protected data in the last
// hour, recent denials and alerts, and per-minute activity.
//
// Writers are the session and relay threads, the reader is the HTTP
// endpoint's thread. The per-statement path touches only atomics
// (LiveSession counters, the minute rings); the mutex is taken only for
// statements that read protected data or were refused, and by snapshots.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "rules/statement_audit.h"

namespace pgcloak::proxy {

// One authenticated session as the console shows it. Identity fields are
// set before the session is registered and never change; the counters are
// written by the session's relay thread and read by snapshots.
struct LiveSession {
  uint64_t id = 0;
  std::string user;
  std::string database;
  std::string client;
  std::string application_name;
  bool tls = false;
  std::string tls_version;
  std::chrono::system_clock::time_point connected_at{};

  // -1 = idle, otherwise a rules::AuditClass of the running statement.
  std::atomic<int> current_class{-1};
  std::atomic<uint64_t> current_rows{0};  // rows of the running statement so far
  std::atomic<uint64_t> statements{0};
  std::atomic<uint64_t> rows{0};
  std::atomic<uint64_t> protected_rows{0};
  std::atomic<uint64_t> bytes{0};

  void set_policy(std::string name);
  std::string policy() const;

 private:
  mutable std::mutex policy_mu_;
  std::string policy_;
};

struct ConsoleDenial {
  std::chrono::system_clock::time_point time;
  uint64_t session_id = 0;
  std::string user;
  std::string client;
  std::string rule;
  std::string message;
};

// An alert as the console lists it (filled by the detectors, issue 6).
struct ConsoleAlert {
  std::chrono::system_clock::time_point time;
  std::string detector;
  std::string user;
  std::string client;
  std::string relation;
  std::string category;
  double observed = 0;
  double baseline = 0;
  std::string rule;
  std::string action;
};

// Counts per wall-clock minute over the last hour, updated with relaxed
// atomics. A bucket is reset by the first writer of a new minute; an
// increment racing with that reset can be lost, which a console rate can
// afford and a lock on every statement could not.
class MinuteRing {
 public:
  static constexpr size_t minutes = 60;
  void add(int64_t minute, uint64_t n);
  // The last `minutes` buckets ending with `minute`, oldest first.
  std::array<uint64_t, minutes> history(int64_t minute) const;

 private:
  static constexpr size_t slots = minutes + 1;
  std::array<std::atomic<int64_t>, slots> stamp_{};
  std::array<std::atomic<uint64_t>, slots> count_{};
};

struct ConsoleOptions {
  size_t max_denials = 100;   // recent denials kept
  size_t max_alerts = 100;    // recent alerts kept
  size_t max_readers = 1000;  // users tracked for "top readers"; later ones are not listed
  size_t max_reader_relations = 8;
  size_t top_readers = 20;  // rows of the top-readers table
};

// What a finished statement adds to the console.
struct ConsoleStatement {
  uint64_t protected_rows = 0;
  uint64_t masked_values = 0;
  std::span<const std::string> protected_relations;
};

class ConsoleState {
 public:
  using Clock = std::chrono::system_clock;
  explicit ConsoleState(ConsoleOptions options = {});

  // Registers a live session; it stays listed until close_session(id).
  void open_session(std::shared_ptr<LiveSession> s);
  void close_session(uint64_t id);

  // Every finished statement of a registered session (relay thread).
  void on_statement(LiveSession& s, const ConsoleStatement& st, Clock::time_point now = Clock::now());
  void on_denial(ConsoleDenial d);
  void on_alert(ConsoleAlert a);

  struct Status {
    std::string version;
    bool ready = true;
    std::string not_ready_reason;
    std::chrono::seconds uptime{0};
  };
  // The /api/console document (docs/metrics.md, "Console API").
  nlohmann::json snapshot(const Status& status, Clock::time_point now = Clock::now()) const;

 private:
  struct Reader {
    std::array<int64_t, MinuteRing::minutes + 1> stamp{};
    std::array<uint64_t, MinuteRing::minutes + 1> rows{};
    std::array<uint32_t, MinuteRing::minutes + 1> statements{};
    std::vector<std::string> relations;  // most recent last, at most max_reader_relations
    int64_t last_minute = 0;
  };

  ConsoleOptions options_;
  MinuteRing statements_;
  MinuteRing protected_rows_;
  MinuteRing masked_values_;
  MinuteRing denials_;

  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<LiveSession>> sessions_;
  std::unordered_map<std::string, Reader> readers_;
  std::deque<ConsoleDenial> denial_log_;
  std::deque<ConsoleAlert> alert_log_;
};

}  // namespace pgcloak::proxy
