// Time zones from the system's tz database (/usr/share/zoneinfo), without
// the C library's process-wide TZ state: localtime_r() follows the TZ
// environment variable, and setenv()/tzset() race with every other thread,
// while GCC 12's <chrono> has no std::chrono::locate_zone. A TimeZone is
// immutable once loaded and safe to share between threads.
//
// The files are TZif (RFC 8536), version 2 or later for 64-bit times, and
// usually "slim": they list transitions up to about 2037 at most, often far
// fewer, and leave every later time to the POSIX TZ rule in their footer
// ("CET-1CEST,M3.5.0,M10.5.0/3"). Both are read here.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"

namespace pgcloak::rules {

// A local calendar position, enough for schedules.
struct LocalTime {
  int year = 1970;
  unsigned month = 1;    // 1..12
  unsigned day = 1;      // 1..31
  unsigned weekday = 3;  // 0 = Monday .. 6 = Sunday (ISO order)
  unsigned minute_of_day = 0;
  int32_t utc_offset = 0;  // seconds east of UTC
};

// The POSIX TZ rule of a footer: standard time, and optionally daylight
// saving time between two yearly dates.
struct PosixTzRule {
  struct Date {
    enum class Kind { julian_no_leap, zero_based, month_week_day } kind = Kind::month_week_day;
    int day = 0;          // Jn: 1..365; n: 0..365; Mm.w.d: d, 0 = Sunday
    int week = 0;         // Mm.w.d: 1..5, 5 = last
    int month = 0;        // Mm.w.d: 1..12
    int32_t time = 7200;  // seconds after local midnight; may be negative or past 24h
  };
  int32_t std_offset = 0;  // seconds east of UTC (POSIX writes them west)
  bool has_dst = false;
  int32_t dst_offset = 0;
  Date start;
  Date end;

  int32_t offset_at(int64_t unix_seconds) const;
};

// Parses a POSIX TZ string (the footer of a TZif file); nullopt-like error
// when it is malformed.
Result<PosixTzRule> parse_posix_tz(std::string_view text);

class TimeZone {
 public:
  // Reads /usr/share/zoneinfo/<name> (or $TZDIR/<name>). Names are checked
  // first: IANA names only ("Europe/Berlin", "UTC", "Etc/GMT+5"), never a
  // path that leaves the directory.
  static Result<std::shared_ptr<const TimeZone>> load(std::string_view name);
  // Parses TZif bytes (tests; load() reads the file and calls this).
  static Result<std::shared_ptr<const TimeZone>> parse(std::string_view name, std::string_view tzif);
  static std::shared_ptr<const TimeZone> utc();

  const std::string& name() const { return name_; }
  int32_t offset_at(int64_t unix_seconds) const;  // seconds east of UTC
  LocalTime local(std::chrono::system_clock::time_point t) const;
  LocalTime local(int64_t unix_seconds) const;

 private:
  std::string name_;
  std::vector<int64_t> transitions_;  // ascending UTC seconds
  std::vector<int32_t> offsets_;      // offset in force from transitions_[i]
  int32_t initial_offset_ = 0;        // before the first transition (time type 0)
  bool has_footer_ = false;
  PosixTzRule footer_;
};

// Whether a time zone name is shaped like an IANA name (no "..", no leading
// '/', only letters, digits and - _ + /).
bool valid_time_zone_name(std::string_view name);

// Days since 1970-01-01 of a proleptic Gregorian date, and back.
int64_t days_from_civil(int year, unsigned month, unsigned day);
void civil_from_days(int64_t days, int& year, unsigned& month, unsigned& day);

}  // namespace pgcloak::rules
