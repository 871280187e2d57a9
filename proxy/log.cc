#include "proxy/log.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

namespace pgcloak::log {

namespace {
std::atomic<int> g_level{static_cast<int>(rules::LogLevel::info)};

std::string_view level_name(rules::LogLevel l) {
  switch (l) {
    case rules::LogLevel::debug: return "DEBUG";
    case rules::LogLevel::info: return "INFO";
    case rules::LogLevel::warn: return "WARN";
    case rules::LogLevel::error: return "ERROR";
  }
  return "?";
}
}  // namespace

void set_level(rules::LogLevel level) {
  g_level.store(static_cast<int>(level));
}

bool enabled(rules::LogLevel level) {
  return static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void write(rules::LogLevel level, uint64_t session_id, std::string_view message) {
  if (!enabled(level)) return;
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t t = system_clock::to_time_t(now);
  auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char ts[80];
  (void)std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                      tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  std::string line;
  line.reserve(message.size() + 64);
  line += ts;
  line += ' ';
  line += level_name(level);
  if (session_id != 0) {
    line += " [s";
    line += std::to_string(session_id);
    line += ']';
  }
  line += ' ';
  line += message;
  line += '\n';
  // A single write keeps lines whole; short writes to a pipe of < PIPE_BUF
  // bytes do not happen, and longer lines are rare enough to loop.
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n <= 0) break;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

}  // namespace pgcloak::log
