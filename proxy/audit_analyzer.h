// The audit writer's statement analysis (AuditLog::Analyzer): turns a
// StatementCapture into the record's statement fields with
// rules::audit_statement(), through a cache. Runs on the writer thread.
//
// Fields (docs/audit.md, "Statement analysis"): fingerprint, normalized,
// class, command, relations, protected_columns, copy, parse_error; with a
// ParameterSealer (audit.log_parameters) also sealed_text and, for the
// extended protocol, sealed_parameters. Nothing else of the client's text
// or bind values is ever returned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

#include "proxy/audit_event.h"
#include "proxy/audit_log.h"
#include "proxy/audit_seal.h"
#include "rules/protection.h"
#include "rules/statement_audit.h"

namespace pgcloak::proxy {

// The analysis fields of a statement record. Strings that are not valid
// UTF-8 (identifiers in a client encoding other than UTF-8) get U+FFFD for
// their bad bytes, so the record always serialises.
nlohmann::json to_json(const rules::StatementAudit& audit);

class AuditAnalyzer {
 public:
  // The protection in force now (null = masking off); called per record,
  // so a reload or catalog refresh is picked up by the next one.
  using ProtectionSource = std::function<std::shared_ptr<const rules::Protection>()>;

  explicit AuditAnalyzer(ProtectionSource protection, std::shared_ptr<const ParameterSealer> sealer = nullptr,
                         size_t cache_bytes = size_t{16} << 20);

  // The fields as JSON object members without the braces (AuditLog::Analyzer).
  std::string analyze_fragment(const StatementCapture& capture);
  // The same, parsed (tests and tools).
  nlohmann::json analyze(const StatementCapture& capture);

  uint64_t cache_hits() const;
  uint64_t cache_misses() const;

 private:
  ProtectionSource protection_;
  std::shared_ptr<const ParameterSealer> sealer_;
  mutable std::mutex mutex_;  // the cache is not thread-safe; the writer is the only caller in practice
  rules::StatementAuditCache cache_;
  // analyze_fragment()'s text per cached analysis (kept alive while here).
  static constexpr size_t max_fragments = 4096;
  std::unordered_map<const rules::StatementAudit*,
                     std::pair<std::shared_ptr<const rules::StatementAudit>, std::string>>
      fragments_;
  // Prepared statements: every Execute of one carries the same text object
  // (the Parse's), so its analysis is found by that object's address
  // without hashing or skeletonising the text again. The entry keeps the
  // text and the protection alive, so an address cannot be reused for other
  // text while it is here.
  struct PreparedKey {
    const std::string* sql;
    size_t index;
    const rules::Protection* protection;
    bool operator==(const PreparedKey&) const = default;
  };
  struct PreparedKeyHash {
    size_t operator()(const PreparedKey& k) const {
      return std::hash<const void*>()(k.sql) ^ (k.index * 0x9e3779b97f4a7c15ULL) ^
             (std::hash<const void*>()(k.protection) << 1);
    }
  };
  struct PreparedEntry {
    std::shared_ptr<const std::string> sql;
    std::shared_ptr<const rules::Protection> protection;
    std::shared_ptr<const rules::StatementAudit> audit;
  };
  static constexpr size_t max_prepared = 4096;
  // Open cursors by connection and name: a FETCH names no relation, so its
  // record lists those of the cursor's DECLARE. Records of one connection
  // reach the writer in order. Bounded; a connection's entry goes with its
  // CLOSE ALL / DISCARD ALL or when the table is full.
  std::unordered_map<uint64_t, std::unordered_map<std::string, std::shared_ptr<const rules::StatementAudit>>>
      cursors_;
  size_t cursor_count_ = 0;
  static constexpr size_t max_cursors = 4096;
  // Follows DECLARE/CLOSE; for a FETCH of a known cursor, the DECLARE.
  // Appends the sealed text and parameters (log_parameters) to the fields.
  std::string with_sealed(const StatementCapture& capture, const std::string& sql,
                          const rules::StatementAudit& audit, std::string out);
  std::shared_ptr<const rules::StatementAudit> track_cursor(
      uint64_t connection, const rules::StatementAudit& a,
      const std::shared_ptr<const rules::StatementAudit>& self);
  std::unordered_map<PreparedKey, PreparedEntry, PreparedKeyHash> prepared_;
  const rules::Protection* prepared_protection_ = nullptr;  // what prepared_ was filled under
};

// The AuditLog::Analyzer for AuditLog::open().
AuditLog::Analyzer make_audit_analyzer(AuditAnalyzer::ProtectionSource protection,
                                       std::shared_ptr<const ParameterSealer> sealer = nullptr);

}  // namespace pgcloak::proxy
