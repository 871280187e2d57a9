// The TZif reader against known offsets (Europe/Berlin, America/New_York
// around their DST switches, UTC), the POSIX TZ footer for times past the
// last transition, malformed input, and a cross-check against glibc's own
// reading of the same files.
#include "rules/tzif.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>
#include <fstream>

namespace pgcloak::rules {
namespace {

int64_t utc(int y, unsigned mo, unsigned d, int h, int mi, int s = 0) {
  return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
}

std::shared_ptr<const TimeZone> zone(const char* name) {
  auto tz = TimeZone::load(name);
  if (!tz) {
    ADD_FAILURE() << tz.error().message;
    return TimeZone::utc();
  }
  return *tz;
}

TEST(TzifTest, CivilDays) {
  EXPECT_EQ(days_from_civil(1970, 1, 1), 0);
  EXPECT_EQ(days_from_civil(2000, 3, 1), 11017);
  EXPECT_EQ(days_from_civil(1969, 12, 31), -1);
  int y = 0;
  unsigned m = 0;
  unsigned d = 0;
  for (int64_t days : {-800000LL, -1LL, 0LL, 11016LL, 19000LL, 60000LL}) {
    civil_from_days(days, y, m, d);
    EXPECT_EQ(days_from_civil(y, m, d), days);
  }
}

TEST(TzifTest, BerlinSummerAndWinter) {
  auto berlin = zone("Europe/Berlin");
  EXPECT_EQ(berlin->offset_at(utc(2024, 1, 15, 12, 0)), 3600);
  EXPECT_EQ(berlin->offset_at(utc(2024, 7, 1, 12, 0)), 7200);
  // 2024-03-31 01:00 UTC: clocks go from 02:00 CET to 03:00 CEST.
  EXPECT_EQ(berlin->offset_at(utc(2024, 3, 31, 0, 59, 59)), 3600);
  EXPECT_EQ(berlin->offset_at(utc(2024, 3, 31, 1, 0, 0)), 7200);
  // 2024-10-27 01:00 UTC: back to CET.
  EXPECT_EQ(berlin->offset_at(utc(2024, 10, 27, 0, 59, 59)), 7200);
  EXPECT_EQ(berlin->offset_at(utc(2024, 10, 27, 1, 0, 0)), 3600);
  // Far past any transition the file lists: the footer rule decides.
  EXPECT_EQ(berlin->offset_at(utc(2091, 7, 1, 12, 0)), 7200);
  EXPECT_EQ(berlin->offset_at(utc(2091, 12, 1, 12, 0)), 3600);
  // Before 1893 Berlin used local mean time (+0:53:28).
  EXPECT_EQ(berlin->offset_at(utc(1850, 1, 1, 0, 0)), 3208);
}

TEST(TzifTest, NewYorkDstSwitch) {
  auto ny = zone("America/New_York");
  // 2024-03-10 07:00 UTC: 02:00 EST -> 03:00 EDT.
  EXPECT_EQ(ny->offset_at(utc(2024, 3, 10, 6, 59, 59)), -18000);
  EXPECT_EQ(ny->offset_at(utc(2024, 3, 10, 7, 0, 0)), -14400);
  // 2024-11-03 06:00 UTC: 02:00 EDT -> 01:00 EST.
  EXPECT_EQ(ny->offset_at(utc(2024, 11, 3, 5, 59, 59)), -14400);
  EXPECT_EQ(ny->offset_at(utc(2024, 11, 3, 6, 0, 0)), -18000);
  EXPECT_EQ(ny->offset_at(utc(2060, 3, 14, 7, 0, 0)), -14400);  // footer: second Sunday of March
  EXPECT_EQ(ny->offset_at(utc(2060, 3, 14, 6, 59, 59)), -18000);
}

TEST(TzifTest, UtcAndLocalCalendar) {
  auto u = zone("UTC");
  EXPECT_EQ(u->offset_at(utc(2024, 7, 1, 0, 0)), 0);
  EXPECT_EQ(TimeZone::utc()->offset_at(0), 0);
  auto berlin = zone("Europe/Berlin");
  // 2025-03-30 is a Sunday; 00:30 UTC is 01:30 CET, 01:30 UTC is 03:30 CEST.
  LocalTime lt = berlin->local(utc(2025, 3, 30, 1, 30));
  EXPECT_EQ(lt.weekday, 6U);
  EXPECT_EQ(lt.minute_of_day, 3 * 60 + 30U);
  EXPECT_EQ(lt.day, 30U);
  lt = berlin->local(utc(2025, 3, 30, 0, 30));
  EXPECT_EQ(lt.minute_of_day, 1 * 60 + 30U);
  // Monday 2025-03-31 22:30 UTC is Tuesday 00:30 in Berlin.
  lt = berlin->local(utc(2025, 3, 31, 22, 30));
  EXPECT_EQ(lt.weekday, 1U);
  EXPECT_EQ(lt.minute_of_day, 30U);
  EXPECT_EQ(lt.day, 1U);
  EXPECT_EQ(lt.month, 4U);
}

TEST(TzifTest, PosixRules) {
  auto r = parse_posix_tz("CET-1CEST,M3.5.0,M10.5.0/3");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->std_offset, 3600);
  EXPECT_EQ(r->dst_offset, 7200);
  EXPECT_EQ(r->offset_at(utc(2030, 6, 1, 0, 0)), 7200);
  // Southern hemisphere: DST spans the new year.
  r = parse_posix_tz("AEST-10AEDT,M10.1.0,M4.1.0/3");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->offset_at(utc(2030, 1, 15, 0, 0)), 11 * 3600);
  EXPECT_EQ(r->offset_at(utc(2030, 7, 15, 0, 0)), 10 * 3600);
  r = parse_posix_tz("<+0530>-5:30");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->offset_at(0), 5 * 3600 + 1800);
  r = parse_posix_tz("EST5EDT");  // no dates: the US rules
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->offset_at(utc(2030, 7, 1, 12, 0)), -4 * 3600);
  // Julian days.
  r = parse_posix_tz("XXX0YYY,J60/0,J300/0");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->offset_at(utc(2024, 3, 1, 12, 0)), 3600);  // J60 is March 1 even in a leap year
  EXPECT_EQ(r->offset_at(utc(2024, 2, 29, 12, 0)), 0);
  for (const char* bad : {"", "C-1", "CET", "CET-1CEST,M13.1.0,M10.5.0", "CET-1CEST,M3.5.0",
                          "CET-1CEST,J0,J5", "<+05-5", "CET-1CEST,M3.5.0,M10.5.0/200"}) {
    EXPECT_FALSE(parse_posix_tz(bad).ok()) << bad;
  }
}

TEST(TzifTest, NamesThatLeaveTheDirectoryAreRefused) {
  for (const char* bad : {"../etc/passwd", "/etc/localtime", "Europe/../../x", "", "Europe//Berlin", "a b",
                          ".hidden", "Europe/"}) {
    EXPECT_FALSE(valid_time_zone_name(bad)) << bad;
    EXPECT_FALSE(TimeZone::load(bad).ok()) << bad;
  }
  EXPECT_TRUE(valid_time_zone_name("Etc/GMT+5"));
  EXPECT_TRUE(valid_time_zone_name("America/Argentina/Buenos_Aires"));
  auto missing = TimeZone::load("Mars/Olympus_Mons");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("unknown time zone"), std::string::npos);
}

TEST(TzifTest, MalformedFilesAreErrors) {
  EXPECT_FALSE(TimeZone::parse("x", "").ok());
  EXPECT_FALSE(TimeZone::parse("x", "TZif2").ok());
  EXPECT_FALSE(TimeZone::parse("x", std::string(44, 'A')).ok());
  // A valid file cut anywhere must fail cleanly, never read past the end.
  std::ifstream f("/usr/share/zoneinfo/Europe/Berlin", std::ios::binary);
  ASSERT_TRUE(f.good());
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_TRUE(TimeZone::parse("Europe/Berlin", bytes).ok());
  for (size_t cut = 0; cut + 1 < bytes.size(); cut += 7) {
    EXPECT_FALSE(TimeZone::parse("x", bytes.substr(0, cut)).ok()) << cut;
  }
}

// glibc reads the same files (and the same footer rules); both must agree
// on every offset. The TZ environment variable is only touched here, in a
// single-threaded test; pgcloak itself never does that.
TEST(TzifTest, AgreesWithGlibc) {
  const char* zones[] = {"Europe/Berlin",
                         "America/New_York",
                         "Australia/Sydney",
                         "Asia/Kolkata",
                         "America/Sao_Paulo",
                         "Pacific/Chatham",
                         "Africa/Casablanca",
                         "Europe/London",
                         "America/St_Johns",
                         "Asia/Tehran",
                         "UTC"};
  const char* old = std::getenv("TZ");
  const std::string saved = old != nullptr ? old : "";
  for (const char* name : zones) {
    auto tz = zone(name);
    setenv("TZ", name, 1);
    tzset();
    int mismatches = 0;
    // Every ~3.7 days from 1975 to 2075, plus the exact instants around each
    // transition the sampling hits.
    for (int64_t t = utc(1975, 1, 1, 0, 0); t < utc(2075, 1, 1, 0, 0); t += 3 * 86400 + 61 * 293) {
      const time_t tt = static_cast<time_t>(t);
      struct tm tm {};
      localtime_r(&tt, &tm);
      if (tm.tm_gmtoff != tz->offset_at(t) && ++mismatches < 5) {
        ADD_FAILURE() << name << " at " << t << ": glibc " << tm.tm_gmtoff << ", ours " << tz->offset_at(t);
      }
    }
    EXPECT_EQ(mismatches, 0) << name;
  }
  if (old != nullptr) {
    setenv("TZ", saved.c_str(), 1);
  } else {
    unsetenv("TZ");
  }
  tzset();
}

}  // namespace
}  // namespace pgcloak::rules
