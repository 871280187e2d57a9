// pgcloak's own operational log (not the audit trail): one line per event on
// stderr, "ts level [session] message". Each line is a single write(2), so
// lines from different io threads never interleave.
#pragma once

#include <atomic>
#include <cstdint>
#include <string_view>

#include "rules/config.h"

namespace pgcloak::log {

void set_level(rules::LogLevel level);
bool enabled(rules::LogLevel level);
void write(rules::LogLevel level, uint64_t session_id, std::string_view message);

inline void debug(std::string_view m, uint64_t sid = 0) {
  if (enabled(rules::LogLevel::debug)) write(rules::LogLevel::debug, sid, m);
}
inline void info(std::string_view m, uint64_t sid = 0) {
  write(rules::LogLevel::info, sid, m);
}
inline void warn(std::string_view m, uint64_t sid = 0) {
  write(rules::LogLevel::warn, sid, m);
}
inline void error(std::string_view m, uint64_t sid = 0) {
  write(rules::LogLevel::error, sid, m);
}

}  // namespace pgcloak::log
