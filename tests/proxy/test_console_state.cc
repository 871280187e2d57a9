#include "proxy/console_state.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace pgcloak::proxy {
namespace {

using Clock = std::chrono::system_clock;
using std::chrono::minutes;
using std::chrono::seconds;

// A fixed, minute-aligned instant, so tests do not depend on when they run.
const Clock::time_point t0 = Clock::time_point(std::chrono::floor<minutes>(seconds(1'800'000'000)));

std::shared_ptr<LiveSession> live(uint64_t id, std::string user) {
  auto s = std::make_shared<LiveSession>();
  s->id = id;
  s->user = std::move(user);
  s->database = "shop";
  s->client = "127.0.0.1:" + std::to_string(40000 + id);
  s->application_name = "app";
  s->tls = true;
  s->tls_version = "TLSv1.3";
  s->connected_at = t0;
  s->set_policy("support");
  return s;
}

TEST(MinuteRingTest, KeepsTheLastHourPerMinute) {
  MinuteRing r;
  const int64_t m = 1000;
  r.add(m, 5);
  r.add(m, 2);
  r.add(m - 1, 3);
  r.add(m - 59, 1);
  r.add(m - 60, 100);  // outside the hour
  auto h = r.history(m);
  EXPECT_EQ(h[59], 7U);
  EXPECT_EQ(h[58], 3U);
  EXPECT_EQ(h[0], 1U);
  uint64_t total = 0;
  for (auto v : h) total += v;
  EXPECT_EQ(total, 11U);
  // A slot reused a full ring later starts from zero, not from the old count.
  r.add(m + 61, 4);
  EXPECT_EQ(r.history(m + 61)[59], 4U);
  EXPECT_EQ(r.history(m + 61)[0], 0U);  // m + 2: never written
}

TEST(MinuteRingTest, ConcurrentAddsWithinAMinuteAreNotLost) {
  MinuteRing r;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&r] {
      for (int i = 0; i < 10000; ++i) r.add(42, 1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(r.history(42)[59], 40000U);
}

TEST(ConsoleStateTest, ListsLiveSessionsWithTheirCounters) {
  ConsoleState c;
  auto a = live(2, "alice");
  auto b = live(1, "bob");
  c.open_session(a);
  c.open_session(b);
  a->current_class = static_cast<int>(rules::AuditClass::read);
  a->current_rows = 17;
  a->statements = 3;
  a->rows = 40;
  a->protected_rows = 20;
  auto doc = c.snapshot({"1.2.3", true, "", seconds(5)}, t0 + seconds(30));
  ASSERT_EQ(doc["sessions"].size(), 2U);
  EXPECT_EQ(doc["sessions"][0]["user"], "bob");  // by id
  const auto& s = doc["sessions"][1];
  EXPECT_EQ(s["user"], "alice");
  EXPECT_EQ(s["state"], "active");
  EXPECT_EQ(s["current_class"], "READ");
  EXPECT_EQ(s["current_rows"], 17);
  EXPECT_EQ(s["statements"], 3);
  EXPECT_EQ(s["protected_rows"], 20);
  EXPECT_EQ(s["policy"], "support");
  EXPECT_EQ(s["tls_version"], "TLSv1.3");
  EXPECT_TRUE(doc["sessions"][0]["current_class"].is_null());
  EXPECT_EQ(doc["sessions"][0]["state"], "idle");
  EXPECT_EQ(doc["version"], "1.2.3");
  EXPECT_EQ(doc["uptime_seconds"], 5);
  c.close_session(2);
  EXPECT_EQ(c.snapshot({}, t0)["sessions"].size(), 1U);
}

TEST(ConsoleStateTest, TopReadersCoverTheLastHourOnly) {
  ConsoleState c;
  auto a = live(1, "alice");
  auto b = live(2, "bob");
  const std::vector<std::string> customers{"public.customers"};
  const std::vector<std::string> payments{"public.payments"};
  c.on_statement(*a, {100, 0, customers}, t0);
  c.on_statement(*a, {50, 0, payments}, t0 + minutes(30));
  c.on_statement(*b, {120, 0, customers}, t0 + minutes(59));
  c.on_statement(*b, {0, 0, {}}, t0 + minutes(59));  // no protected rows: not a reader
  auto doc = c.snapshot({}, t0 + minutes(59));
  ASSERT_EQ(doc["top_readers"].size(), 2U);
  EXPECT_EQ(doc["top_readers"][0]["user"], "alice");
  EXPECT_EQ(doc["top_readers"][0]["protected_rows"], 150);
  EXPECT_EQ(doc["top_readers"][0]["statements"], 2);
  EXPECT_EQ(doc["top_readers"][0]["relations"], nlohmann::json({"public.customers", "public.payments"}));
  EXPECT_EQ(doc["top_readers"][1]["protected_rows"], 120);
  // An hour after alice's first read, only her second one counts.
  doc = c.snapshot({}, t0 + minutes(60));
  EXPECT_EQ(doc["top_readers"][0]["user"], "bob");
  EXPECT_EQ(doc["top_readers"][1]["protected_rows"], 50);
  // Two hours on, nobody.
  EXPECT_TRUE(c.snapshot({}, t0 + minutes(120))["top_readers"].empty());
}

TEST(ConsoleStateTest, ReadersAreCappedAndIdleOnesMakeRoom) {
  ConsoleState c(ConsoleOptions{.max_readers = 2});
  const std::vector<std::string> rel{"public.customers"};
  c.on_statement(*live(1, "a"), {1, 0, rel}, t0);
  c.on_statement(*live(2, "b"), {1, 0, rel}, t0);
  c.on_statement(*live(3, "c"), {1, 0, rel}, t0);  // over the cap: not tracked
  EXPECT_EQ(c.snapshot({}, t0)["top_readers"].size(), 2U);
  // An hour later a and b are idle and c fits.
  c.on_statement(*live(3, "c"), {5, 0, rel}, t0 + minutes(61));
  auto doc = c.snapshot({}, t0 + minutes(61));
  ASSERT_EQ(doc["top_readers"].size(), 1U);
  EXPECT_EQ(doc["top_readers"][0]["user"], "c");
}

TEST(ConsoleStateTest, DenialsAndAlertsNewestFirstAndBounded) {
  ConsoleState c(ConsoleOptions{.max_denials = 3, .max_alerts = 2});
  for (int i = 0; i < 5; ++i) {
    c.on_denial({t0 + seconds(i), 7, "bob", "10.0.0.1:5", "deny:do", "refused " + std::to_string(i)});
  }
  c.on_alert(
      {t0, "statement_volume", "bob", "10.0.0.1:5", "public.customers", "email", 5000, 100, "bulk", "alert"});
  c.on_alert({t0 + seconds(1), "first_access", "eve", "", "", "", 1, 0, "first", "alert"});
  c.on_alert({t0 + seconds(2), "probing", "mallory", "", "", "", 10, 0, "probe", "terminate"});
  auto doc = c.snapshot({}, t0 + seconds(10));
  ASSERT_EQ(doc["recent_denials"].size(), 3U);
  EXPECT_EQ(doc["recent_denials"][0]["message"], "refused 4");
  EXPECT_EQ(doc["recent_denials"][2]["message"], "refused 2");
  EXPECT_EQ(doc["recent_denials"][0]["rule"], "deny:do");
  ASSERT_EQ(doc["recent_alerts"].size(), 2U);
  EXPECT_EQ(doc["recent_alerts"][0]["detector"], "probing");
  EXPECT_EQ(doc["recent_alerts"][1]["user"], "eve");
  // Every denial counts in the rate and history, kept entries or not.
  EXPECT_EQ(doc["history"]["denials"][59], 5);
  EXPECT_GT(doc["rates"]["denials_per_second"].get<double>(), 0.0);
}

TEST(ConsoleStateTest, RatesSpanTheLastMinuteAndTheCurrentOne) {
  ConsoleState c;
  auto a = live(1, "alice");
  for (int i = 0; i < 60; ++i) c.on_statement(*a, {0, 2, {}}, t0 + seconds(i));  // previous minute
  for (int i = 0; i < 30; ++i) c.on_statement(*a, {0, 0, {}}, t0 + minutes(1) + seconds(i));
  auto doc = c.snapshot({}, t0 + minutes(1) + seconds(30));
  // 90 statements over 90 seconds; 120 masked values over 90 seconds.
  EXPECT_DOUBLE_EQ(doc["rates"]["statements_per_second"].get<double>(), 1.0);
  EXPECT_NEAR(doc["rates"]["masked_values_per_second"].get<double>(), 120.0 / 90.0, 1e-9);
  EXPECT_EQ(doc["history"]["statements"].size(), 60U);
  EXPECT_EQ(doc["history"]["statements"][58], 60);
  EXPECT_EQ(doc["history"]["statements"][59], 30);
}

TEST(ConsoleStateTest, ValuesThatAreNotUtf8DoNotBreakTheDocument) {
  ConsoleState c;
  auto s = live(1, std::string("bad\xff\xfe", 5));
  c.open_session(s);
  auto text = c.snapshot({}, t0).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  EXPECT_NE(text.find("bad\xEF\xBF\xBD"), std::string::npos);  // U+FFFD
}

}  // namespace
}  // namespace pgcloak::proxy
