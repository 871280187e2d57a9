// Audit records on standard output, one JSON object per line, for
// containers whose runtime collects stdout (docs/audit.md, "Sinks").
// pgcloak's own log goes to stderr, so the two never mix.
#pragma once

#include <cstdio>
#include <span>
#include <string>

#include "proxy/audit_sink.h"

namespace pgcloak::proxy {

class AuditStdoutSink final : public AuditSink {
 public:
  // `out` is stdout in pgcloak; tests pass a temporary file.
  explicit AuditStdoutSink(std::FILE* out = stdout) : out_(out) {}

  Status write(std::span<const std::string> lines) override;
  // fflush: delivered to whatever reads the pipe. There is nothing to fsync.
  Status sync() override;
  std::string describe() const override { return "stdout"; }

 private:
  std::FILE* out_;
};

}  // namespace pgcloak::proxy
