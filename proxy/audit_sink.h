// Where audit lines go. The audit writer thread is the only caller, so
// sinks need no locking of their own.
#pragma once

#include <span>
#include <string>

#include "protocol/result.h"

namespace pgcloak::proxy {

class AuditSink {
 public:
  virtual ~AuditSink() = default;
  // Appends complete lines (each one JSON object, without the trailing
  // newline). An error means the sink is failing; the writer keeps the
  // lines and retries them, it never drops them.
  virtual Status write(std::span<const std::string> lines) = 0;
  // Makes everything written so far durable (fsync for files, delivered to
  // the kernel's socket buffer for network sinks).
  virtual Status sync() = 0;
  virtual std::string describe() const = 0;
};

}  // namespace pgcloak::proxy
