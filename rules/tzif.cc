#include "rules/tzif.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace pgcloak::rules {

namespace {

Error tz_error(std::string msg) {
  return Error::make(sqlstate::config_file_error, std::move(msg));
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

bool leap_year(int y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

unsigned month_length(int y, unsigned m) {
  static constexpr unsigned lengths[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap_year(y) ? 29 : lengths[m - 1];
}

// --- POSIX TZ strings (POSIX.1-2017 8.3, "TZ"; RFC 8536 3.3) ------------------

class TzScanner {
 public:
  explicit TzScanner(std::string_view s) : s_(s) {}
  bool done() const { return i_ >= s_.size(); }
  char peek() const { return done() ? '\0' : s_[i_]; }
  bool eat(char c) {
    if (peek() != c) return false;
    ++i_;
    return true;
  }

  // "CET" (three or more letters) or "<+0530>" (quoted: letters, digits, + -).
  bool name() {
    if (eat('<')) {
      const size_t start = i_;
      while (!done() && s_[i_] != '>') {
        const char c = s_[i_];
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                        c == '+' || c == '-';
        if (!ok) return false;
        ++i_;
      }
      if (!eat('>')) return false;
      return i_ - 1 - start >= 3;
    }
    const size_t start = i_;
    while (!done() && ((s_[i_] >= 'A' && s_[i_] <= 'Z') || (s_[i_] >= 'a' && s_[i_] <= 'z'))) ++i_;
    return i_ - start >= 3;
  }

  bool number(int& out, int max_digits) {
    int digits = 0;
    int v = 0;
    while (!done() && s_[i_] >= '0' && s_[i_] <= '9' && digits < max_digits) {
      v = v * 10 + (s_[i_] - '0');
      ++i_;
      ++digits;
    }
    if (digits == 0) return false;
    out = v;
    return true;
  }

  // [+-]hh[:mm[:ss]], hours up to max_hours. Returns seconds with the sign
  // as written.
  bool hms(int32_t& out, int max_hours) {
    int sign = 1;
    if (eat('-')) {
      sign = -1;
    } else {
      eat('+');
    }
    int h = 0;
    int m = 0;
    int sec = 0;
    if (!number(h, 3) || h > max_hours) return false;
    if (eat(':')) {
      if (!number(m, 2) || m > 59) return false;
      if (eat(':')) {
        if (!number(sec, 2) || sec > 59) return false;
      }
    }
    out = sign * (h * 3600 + m * 60 + sec);
    return true;
  }

  bool date(PosixTzRule::Date& d) {
    using Kind = PosixTzRule::Date::Kind;
    if (eat('J')) {
      d.kind = Kind::julian_no_leap;
      if (!number(d.day, 3) || d.day < 1 || d.day > 365) return false;
    } else if (eat('M')) {
      d.kind = Kind::month_week_day;
      if (!number(d.month, 2) || d.month < 1 || d.month > 12) return false;
      if (!eat('.') || !number(d.week, 1) || d.week < 1 || d.week > 5) return false;
      if (!eat('.') || !number(d.day, 1) || d.day > 6) return false;
    } else {
      d.kind = Kind::zero_based;
      if (!number(d.day, 3) || d.day > 365) return false;
    }
    d.time = 7200;
    if (eat('/')) {
      // RFC 8536 3.3.1 extends the hour range to -167..167.
      if (!hms(d.time, 167)) return false;
    }
    return true;
  }

 private:
  std::string_view s_;
  size_t i_ = 0;
};

// Days since the epoch of a rule date in year y.
int64_t rule_day(int y, const PosixTzRule::Date& d) {
  using Kind = PosixTzRule::Date::Kind;
  const int64_t jan1 = days_from_civil(y, 1, 1);
  switch (d.kind) {
    case Kind::julian_no_leap:
      // Jn counts 1..365 and never Feb 29: from March on, a leap year is a
      // day further.
      return jan1 + d.day - 1 + (leap_year(y) && d.day >= 60 ? 1 : 0);
    case Kind::zero_based: return jan1 + d.day;
    case Kind::month_week_day: {
      const int64_t first = days_from_civil(y, static_cast<unsigned>(d.month), 1);
      const int first_dow =
          static_cast<int>(((first + 4) % 7 + 7) % 7);  // 0 = Sunday; 1970-01-01 was a Thursday
      int mday = (d.day - first_dow + 7) % 7 + 1 + (d.week - 1) * 7;
      const int len = static_cast<int>(month_length(y, static_cast<unsigned>(d.month)));
      while (mday > len) mday -= 7;  // week 5 = the last one
      return first + mday - 1;
    }
  }
  return jan1;
}

}  // namespace

int64_t days_from_civil(int year, unsigned month, unsigned day) {
  // Howard Hinnant's algorithm (public domain, "chrono-Compatible Low-Level
  // Date Algorithms").
  const int64_t y = static_cast<int64_t>(year) - (month <= 2 ? 1 : 0);
  const int64_t era = floor_div(y, 400);
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void civil_from_days(int64_t days, int& year, unsigned& month, unsigned& day) {
  const int64_t z = days + 719468;
  const int64_t era = floor_div(z, 146097);
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  day = doy - (153 * mp + 2) / 5 + 1;
  month = mp < 10 ? mp + 3 : mp - 9;
  year = static_cast<int>(static_cast<int64_t>(yoe) + era * 400 + (month <= 2 ? 1 : 0));
}

Result<PosixTzRule> parse_posix_tz(std::string_view text) {
  PosixTzRule r;
  TzScanner s(text);
  auto bad = [&] { return tz_error("invalid POSIX TZ rule \"" + std::string(text) + "\""); };
  int32_t west = 0;
  if (!s.name() || !s.hms(west, 24)) return bad();
  r.std_offset = -west;
  if (s.done()) return r;
  if (!s.name()) return bad();
  r.has_dst = true;
  r.dst_offset = r.std_offset + 3600;
  if (s.peek() != ',' && !s.done()) {
    if (!s.hms(west, 24)) return bad();
    r.dst_offset = -west;
  }
  if (s.done()) {
    // No dates: POSIX leaves them to the implementation; glibc and the tz
    // code use the US rules.
    r.start = {PosixTzRule::Date::Kind::month_week_day, 0, 2, 3, 7200};
    r.end = {PosixTzRule::Date::Kind::month_week_day, 0, 1, 11, 7200};
    return r;
  }
  if (!s.eat(',') || !s.date(r.start) || !s.eat(',') || !s.date(r.end) || !s.done()) return bad();
  return r;
}

int32_t PosixTzRule::offset_at(int64_t t) const {
  if (!has_dst) return std_offset;
  int year = 0;
  unsigned month = 0;
  unsigned day = 0;
  civil_from_days(floor_div(t + std_offset, 86400), year, month, day);
  // Start is written in standard time, end in daylight time.
  const int64_t start_utc = rule_day(year, start) * 86400 + start.time - std_offset;
  const int64_t end_utc = rule_day(year, end) * 86400 + end.time - dst_offset;
  bool dst = false;
  if (start_utc < end_utc) {
    dst = t >= start_utc && t < end_utc;
  } else {
    // Southern hemisphere: daylight time spans the new year.
    dst = !(t >= end_utc && t < start_utc);
  }
  return dst ? dst_offset : std_offset;
}

bool valid_time_zone_name(std::string_view name) {
  if (name.empty() || name.size() > 255 || name.front() == '/' || name.back() == '/') return false;
  size_t part = 0;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == '/') {
      const std::string_view p = name.substr(part, i - part);
      if (p.empty() || p == "." || p == ".." || p.front() == '.') return false;
      part = i + 1;
      continue;
    }
    const char c = name[i];
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '_' || c == '+' || c == '.';
    if (!ok) return false;
  }
  return true;
}

namespace {

class ByteReader {
 public:
  explicit ByteReader(std::string_view b) : b_(b) {}
  bool has(size_t n) const { return n <= b_.size() - i_; }
  void skip(size_t n) { i_ += n; }
  size_t pos() const { return i_; }
  uint32_t be32() {
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) v = (v << 8) | static_cast<uint8_t>(b_[i_++]);
    return v;
  }
  int64_t be64() {
    uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v = (v << 8) | static_cast<uint8_t>(b_[i_++]);
    return static_cast<int64_t>(v);
  }
  uint8_t u8() { return static_cast<uint8_t>(b_[i_++]); }
  std::string_view rest() const { return b_.substr(i_); }

 private:
  std::string_view b_;
  size_t i_ = 0;
};

struct TzifCounts {
  uint32_t isut = 0, isstd = 0, leap = 0, time = 0, type = 0, chars = 0;
};

bool read_header(ByteReader& r, char& version, TzifCounts& c) {
  if (!r.has(44)) return false;
  std::string_view magic = r.rest().substr(0, 4);
  if (magic != "TZif") return false;
  r.skip(4);
  version = static_cast<char>(r.u8());
  r.skip(15);
  c.isut = r.be32();
  c.isstd = r.be32();
  c.leap = r.be32();
  c.time = r.be32();
  c.type = r.be32();
  c.chars = r.be32();
  return true;
}

}  // namespace

Result<std::shared_ptr<const TimeZone>> TimeZone::parse(std::string_view name, std::string_view tzif) {
  auto bad = [&](std::string why) { return tz_error("time zone \"" + std::string(name) + "\": " + why); };
  ByteReader r(tzif);
  char version = 0;
  TzifCounts c;
  if (!read_header(r, version, c)) return bad("not a TZif file");
  // Sanity limits far above any real zone; they keep the sizes below from
  // overflowing.
  if (c.time > 100000 || c.type == 0 || c.type > 256 || c.chars > 65536 || c.leap > 10000 ||
      (c.isut != 0 && c.isut != c.type) || (c.isstd != 0 && c.isstd != c.type)) {
    return bad("TZif header counts are out of range");
  }
  size_t time_size = 4;
  size_t leap_size = 8;
  if (version >= '2') {
    // Skip the 32-bit block; the 64-bit one after it says the same and more.
    const size_t v1 =
        size_t{c.time} * 5 + size_t{c.type} * 6 + c.chars + size_t{c.leap} * 8 + c.isstd + c.isut;
    if (!r.has(v1)) return bad("truncated TZif data");
    r.skip(v1);
    if (!read_header(r, version, c)) return bad("missing the TZif version 2 header");
    if (c.time > 100000 || c.type == 0 || c.type > 256 || c.chars > 65536 || c.leap > 10000 ||
        (c.isut != 0 && c.isut != c.type) || (c.isstd != 0 && c.isstd != c.type)) {
      return bad("TZif header counts are out of range");
    }
    time_size = 8;
    leap_size = 12;
  }
  if (c.leap != 0) return bad("zones with leap seconds (\"right/\" zones) are not supported");
  const size_t block = size_t{c.time} * (time_size + 1) + size_t{c.type} * 6 + c.chars +
                       size_t{c.leap} * leap_size + c.isstd + c.isut;
  if (!r.has(block)) return bad("truncated TZif data");

  auto tz = std::make_shared<TimeZone>();
  tz->name_ = std::string(name);
  tz->transitions_.reserve(c.time);
  for (uint32_t i = 0; i < c.time; ++i) {
    const int64_t t = time_size == 8 ? r.be64() : static_cast<int32_t>(r.be32());
    if (!tz->transitions_.empty() && t <= tz->transitions_.back())
      return bad("transitions are not ascending");
    tz->transitions_.push_back(t);
  }
  std::vector<uint8_t> index(c.time);
  for (uint32_t i = 0; i < c.time; ++i) {
    index[i] = r.u8();
    if (index[i] >= c.type) return bad("a transition names an unknown time type");
  }
  std::vector<int32_t> type_offsets(c.type);
  for (uint32_t i = 0; i < c.type; ++i) {
    const auto off = static_cast<int32_t>(r.be32());
    r.skip(2);  // isdst, designation index: not needed for offsets
    // RFC 8536: -2^31 is invalid; real offsets are within a day.
    if (off <= -93600 || off >= 93600) return bad("a UT offset is out of range");
    type_offsets[i] = off;
  }
  r.skip(c.chars + c.isstd + c.isut);
  tz->offsets_.reserve(c.time);
  for (uint32_t i = 0; i < c.time; ++i) tz->offsets_.push_back(type_offsets[index[i]]);
  tz->initial_offset_ = type_offsets[0];

  if (version >= '2') {
    std::string_view rest = r.rest();
    if (rest.size() < 2 || rest.front() != '\n') return bad("missing the TZif footer");
    const size_t end = rest.find('\n', 1);
    if (end == std::string_view::npos) return bad("unterminated TZif footer");
    const std::string_view footer = rest.substr(1, end - 1);
    if (!footer.empty()) {
      auto rule = parse_posix_tz(footer);
      if (!rule) return bad(rule.error().message);
      tz->footer_ = *rule;
      tz->has_footer_ = true;
    }
  }
  return std::shared_ptr<const TimeZone>(std::move(tz));
}

std::shared_ptr<const TimeZone> TimeZone::utc() {
  static const std::shared_ptr<const TimeZone> zone = [] {
    auto tz = std::make_shared<TimeZone>();
    tz->name_ = "UTC";
    return std::shared_ptr<const TimeZone>(std::move(tz));
  }();
  return zone;
}

Result<std::shared_ptr<const TimeZone>> TimeZone::load(std::string_view name) {
  // Messages are appended piecewise: GCC 12 warns (-Wrestrict, a false
  // positive, PR 105651) on "\"" + std::string(...) chains here.
  std::string quoted = "\"";
  quoted.append(name);
  quoted += '"';
  if (!valid_time_zone_name(name)) {
    return tz_error(quoted + " is not a time zone name (e.g. Europe/Berlin, UTC)");
  }
  std::string dir = "/usr/share/zoneinfo";
  if (const char* env = std::getenv("TZDIR"); env != nullptr && *env != '\0') dir = env;
  std::ifstream f(dir + "/" + std::string(name), std::ios::binary);
  if (!f) {
    // Without tzdata installed UTC still works.
    if (name == "UTC" || name == "Etc/UTC") return utc();
    return tz_error("unknown time zone " + quoted + " (no " + dir + "/" + std::string(name) +
                    "; is tzdata installed?)");
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  if (bytes.size() > (size_t{4} << 20))
    return tz_error("time zone file \"" + std::string(name) + "\" is too large");
  return parse(name, bytes);
}

int32_t TimeZone::offset_at(int64_t t) const {
  if (transitions_.empty() || t < transitions_.front()) {
    if (transitions_.empty() && has_footer_) return footer_.offset_at(t);
    return initial_offset_;
  }
  if (t >= transitions_.back() && has_footer_) return footer_.offset_at(t);
  const auto it = std::upper_bound(transitions_.begin(), transitions_.end(), t);
  return offsets_[static_cast<size_t>(it - transitions_.begin()) - 1];
}

LocalTime TimeZone::local(int64_t t) const {
  LocalTime lt;
  lt.utc_offset = offset_at(t);
  const int64_t local = t + lt.utc_offset;
  const int64_t days = floor_div(local, 86400);
  civil_from_days(days, lt.year, lt.month, lt.day);
  lt.weekday = static_cast<unsigned>(((days + 3) % 7 + 7) % 7);  // 1970-01-01 was a Thursday
  lt.minute_of_day = static_cast<unsigned>((local - days * 86400) / 60);
  return lt;
}

LocalTime TimeZone::local(std::chrono::system_clock::time_point t) const {
  return local(std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count());
}

}  // namespace pgcloak::rules
