// The audit trail: a writer thread that turns AuditEvents into JSON Lines,
// chains them with HMAC-SHA256, and writes them to every configured sink
// with group commit (docs/audit.md).
//
// Relay threads never block on it: submit() only enqueues. Strict
// durability is built on on_durable(): the relay holds a statement's
// ReadyForQuery until the writer reports that record fsynced.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/result.h"
#include "proxy/audit_event.h"
#include "proxy/audit_sink.h"
#include "rules/audit_config.h"

namespace pgcloak::proxy {

struct AuditStats {
  uint64_t queued = 0;       // records submitted but not yet durable (what queue_limit bounds)
  uint64_t written = 0;      // records durable in every sink since start
  uint64_t durable_seq = 0;  // highest sequence number known durable
  uint64_t failures = 0;     // sink write/sync failures since start
  uint64_t syncs = 0;        // fsync rounds (group commits)
  std::chrono::microseconds last_write_latency{0};  // submit to durable, last batch
  bool healthy = true;
};

class AuditLog {
 public:
  // Statement analysis for the record ("normalized", "fingerprint",
  // "class", "relations", "protected_columns", ...), run on the writer
  // thread. Must not return literals or parameter values.
  // Returns the fields as JSON object members without the braces
  // ("fingerprint":"…","class":"READ",…), appended to the record as they
  // are, so they must not reuse the writer's own field names (v, seq, ts,
  // kind, mac, the session and statement fields). Empty = no fields.
  using Analyzer = std::function<std::string(const StatementCapture&)>;

  // Opens the sinks, recovers the chain from the newest existing file
  // (so sequence numbers and MACs continue across restarts) and starts
  // the writer thread. Errors carry a message that says what to fix.
  static Result<std::unique_ptr<AuditLog>> open(const rules::AuditConfig& config, Analyzer analyzer);
  // The same with further sinks (the syslog sink, or a failing sink in
  // tests) that get every record after the configured file and stdout.
  static Result<std::unique_ptr<AuditLog>> open(const rules::AuditConfig& config, Analyzer analyzer,
                                                std::vector<std::unique_ptr<AuditSink>> extra_sinks);

  virtual ~AuditLog() = default;

  // Thread-safe, never blocks, never drops: returns the record's sequence
  // number. Records of statements that already ran must always be
  // accepted; admission control is accepting().
  virtual uint64_t submit(AuditEvent event) = 0;
  // False while a sink is failing or the queue is over queue_limit: new
  // statements are then refused (fail_closed) or held (block).
  virtual bool accepting() const = 0;
  // Calls done(true) from the writer thread once every record up to seq is
  // durable in all sinks; immediately (on the caller's thread) if it already
  // is. done(false) if the log is closed before that.
  virtual void on_durable(uint64_t seq, std::function<void(bool)> done) = 0;
  virtual uint64_t durable_seq() const = 0;
  virtual AuditStats stats() const = 0;
  // Writes the closing record, makes everything durable and stops the
  // writer. Idempotent.
  virtual void close() = 0;
};

}  // namespace pgcloak::proxy
