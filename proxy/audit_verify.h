// `pgcloak audit verify`: checks the MAC chain of audit files, across
// rotated and compressed files, and reports the first problem by file and
// line (docs/audit.md, "Verifying").
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/audit_chain.h"

namespace pgcloak::proxy {

enum class AuditProblemKind {
  modified_record,    // the MAC does not match: the record was changed
  deleted_records,    // a gap in seq: records were removed
  reordered_records,  // seq goes backwards, or a missing seq comes later
  truncated_file,     // a torn last line, or a file shorter than the next file's header says
  missing_file,       // a file the chain runs through was not given
  bad_json,           // a line that is not a sealed JSON record
  bad_record,         // valid JSON but not a valid record here (no header, unknown version, ...)
  wrong_key,          // the key given cannot verify this file's epoch
  unreadable_file,    // cannot be opened or decompressed
  duplicate_file,     // two files with the same epoch
  not_stopped,        // --expect-stopped and the last record is not audit_stopped
};
std::string_view to_string(AuditProblemKind kind);

struct AuditProblem {
  AuditProblemKind kind = AuditProblemKind::modified_record;
  std::string file;   // as given
  uint64_t line = 0;  // 1-based; 0 = the file as a whole
  std::string message;
};

struct AuditVerifyOptions {
  // Fail unless the newest record is audit_stopped, i.e. the log was closed
  // cleanly. Without it a cut at a record boundary at the very end of the
  // newest file is only a note: it looks the same as a running or crashed
  // pgcloak.
  bool expect_stopped = false;
};

struct AuditVerifyReport {
  uint64_t records = 0;  // records whose MAC was checked (headers included)
  size_t files = 0;      // files read
  uint64_t first_seq = 0;
  uint64_t last_seq = 0;
  std::optional<AuditProblem> problem;  // the first one found
  std::vector<std::string> notes;       // not failures, but worth knowing
  bool ok() const { return !problem; }
  // What the CLI prints: a summary or the problem, then the notes.
  std::string format() const;
};

// `initial_key` is the key the chain started with (or any key of an epoch
// not later than the oldest file's); each file's key is ratcheted from it.
// Files are ordered by their headers, so any order on the command line
// works; zstd- and gzip-compressed files are read transparently.
AuditVerifyReport verify_audit_files(const std::vector<std::string>& files, const AuditKey& initial_key,
                                     const AuditVerifyOptions& options = {});

}  // namespace pgcloak::proxy
