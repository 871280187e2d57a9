#include "proxy/audit_stdout_sink.h"

#include <cerrno>

#include "proxy/audit_chain.h"

namespace pgcloak::proxy {

Status AuditStdoutSink::write(std::span<const std::string> lines) {
  for (const auto& l : lines) {
    if (std::fwrite(l.data(), 1, l.size(), out_) != l.size() || std::fputc('\n', out_) == EOF) {
      const int err = errno;
      std::clearerr(out_);
      // A pipe cannot take back what it accepted: a retry may repeat lines
      // here (the verifier reports them as reordered), never lose them.
      return Error::make(sqlstate::internal_error, "write to stdout failed: " + errno_text(err));
    }
  }
  return ok_status();
}

Status AuditStdoutSink::sync() {
  if (std::fflush(out_) != 0) {
    const int err = errno;
    std::clearerr(out_);
    return Error::make(sqlstate::internal_error, "flush of stdout failed: " + errno_text(err));
  }
  return ok_status();
}

}  // namespace pgcloak::proxy
