// The exfiltration detectors in accelerated time: each fires and stays
// quiet as it should, scopes by role, relation and category, cooldowns,
// warm-up, blocks, state save/load, reload, memory bounds, the facts built
// from a statement analysis, and a concurrency smoke test.
#include "rules/detection.h"

#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "rules/config.h"
#include "rules/protection.h"
#include "rules/session_policy.h"
#include "rules/statement_audit.h"
#include "tests/support/shop_policy.h"

namespace pgcloak::rules {
namespace {

using namespace std::chrono_literals;

std::shared_ptr<const DetectionConfig> config(const std::string& yaml) {
  auto load = parse_config(yaml);
  EXPECT_TRUE(load.ok()) << load.format("cfg");
  return std::make_shared<DetectionConfig>(load.config.detection);
}

// Monday 2025-03-24 00:00 UTC.
TimePoint monday() {
  return TimePoint(std::chrono::seconds(days_from_civil(2025, 3, 24) * 86400));
}

DetectIdentity person(std::string user, std::string group, uint64_t session = 1) {
  DetectIdentity who;
  who.user = user;
  who.roles = {user, std::move(group)};
  who.client_ip = "10.0.2.5";
  who.application_name = "crm";
  who.session_id = session;
  return who;
}

StatementFacts reads(const std::string& relation, std::vector<std::string> categories, uint64_t key = 0) {
  StatementFacts f;
  f.reads.push_back({relation, std::move(categories), false});
  f.key = key;
  f.shape = 42;
  return f;
}

// Runs one statement that returns `rows` rows in batches, as the relay
// would; returns every alert.
std::vector<Alert> run(Detector& d, const DetectIdentity& who, const StatementFacts& f, uint64_t rows,
                       TimePoint t, uint64_t batch = 100) {
  std::vector<Alert> alerts;
  StatementWatch w = d.on_statement(who, f, t, alerts);
  uint64_t n = 0;
  while (n < rows) {
    n = std::min(rows, n + batch);
    if (w.exceeded(n, n * 100)) {
      for (auto& a : d.limit_alert(who, f, w, n, n * 100, t)) alerts.push_back(std::move(a));
    }
  }
  d.on_statement_end(who, f, w, rows, rows * 100, t, alerts);
  return alerts;
}

std::vector<std::string> rule_names(const std::vector<Alert>& alerts) {
  std::vector<std::string> out;
  for (const auto& a : alerts) out.push_back(a.rule);
  return out;
}

using Names = std::vector<std::string>;

// ---------------------------------------------------------------------------

TEST(DetectionTest, NothingProtectedMeansNothingToDo) {
  Detector d(config(R"(
detection:
  rules:
    - {name: bulk, detector: statement_volume, max_rows: 10}
    - {name: night, detector: off_hours, allowed: [{from: "00:00", to: "00:01"}]}
)"));
  std::vector<Alert> alerts;
  StatementFacts none;
  StatementWatch w = d.on_statement(person("sam", "support_team"), none, monday() + 12h, alerts);
  EXPECT_FALSE(w.armed());
  EXPECT_FALSE(w.exceeded(1000000, 1000000000));
  d.on_statement_end(person("sam", "support_team"), none, w, 1000000, 0, monday() + 12h, alerts);
  EXPECT_TRUE(alerts.empty());
  EXPECT_EQ(d.stats().users, 0U);  // not even a user entry
}

TEST(DetectionTest, StatementVolumeFiresWhileRowsStream) {
  Detector d(config(R"(
detection:
  rules:
    - {name: bulk-read, detector: statement_volume, roles: [support_team], action: cancel, max_rows: 1000}
    - {name: bulk-bytes, detector: statement_volume, roles: [support_team], max_bytes: 1MiB}
)"));
  const auto sam = person("sam", "support_team");
  std::vector<Alert> alerts;
  const auto f = reads("public.customers", {"email"});
  StatementWatch w = d.on_statement(sam, f, monday() + 10h, alerts);
  EXPECT_TRUE(alerts.empty());
  EXPECT_EQ(w.max_rows, 1000U);
  EXPECT_EQ(w.max_bytes, 1048576U);
  EXPECT_FALSE(w.exceeded(1000, 1000));
  ASSERT_TRUE(w.exceeded(1001, 1000));
  auto fired = d.limit_alert(sam, f, w, 1001, 1000, monday() + 10h);
  ASSERT_EQ(fired.size(), 1U);
  EXPECT_EQ(fired[0].rule, "bulk-read");
  EXPECT_EQ(fired[0].detector, "statement_volume");
  EXPECT_EQ(fired[0].action, AlertAction::cancel);
  EXPECT_EQ(fired[0].relation, "public.customers");
  EXPECT_EQ(fired[0].category, "email");
  EXPECT_EQ(fired[0].observed, 1001);
  EXPECT_EQ(fired[0].baseline, 1000);
  EXPECT_EQ(fired[0].user, "sam");
  EXPECT_EQ(fired[0].client_ip, "10.0.2.5");
  // Re-armed on the next limit: bytes.
  EXPECT_FALSE(w.exceeded(5000, 1000));
  EXPECT_TRUE(w.exceeded(5000, 2 << 20));
  fired = d.limit_alert(sam, f, w, 5000, 2 << 20, monday() + 10h);
  ASSERT_EQ(fired.size(), 1U);
  EXPECT_EQ(fired[0].rule, "bulk-bytes");
  EXPECT_FALSE(w.exceeded(UINT64_MAX - 1, UINT64_MAX - 1));
  // Other roles are not watched.
  w = d.on_statement(person("ann", "analytics_team"), f, monday() + 10h, alerts);
  EXPECT_FALSE(w.armed());
}

TEST(DetectionTest, AnAlertOnlyLimitDoesNotHideALaterCancel) {
  Detector d(config(R"(
detection:
  rules:
    - {name: watch, detector: statement_volume, max_rows: 100}
    - {name: stop, detector: statement_volume, action: cancel, max_rows: 1000}
)"));
  auto alerts =
      run(d, person("sam", "support_team"), reads("public.customers", {"email"}), 5000, monday() + 10h);
  EXPECT_EQ(rule_names(alerts), (Names{"watch", "stop"}));
  // A limit passed between the last batch and the end is still reported.
  std::vector<Alert> end;
  const auto f = reads("public.customers", {"email"});
  StatementWatch w = d.on_statement(person("sue", "support_team"), f, monday() + 10h, end);
  d.on_statement_end(person("sue", "support_team"), f, w, 150, 0, monday() + 10h, end);
  EXPECT_EQ(rule_names(end), Names{"watch"});
}

TEST(DetectionTest, ScopesByRoleRelationAndCategory) {
  Detector d(config(R"(
detection:
  rules:
    - {name: payments, detector: statement_volume, relations: [public.payments], max_rows: 10}
    - {name: ids, detector: statement_volume, categories: [national_id], max_rows: 20}
    - {name: not-app, detector: statement_volume, exclude_roles: [app_services], max_rows: 30}
)"));
  const auto sam = person("sam", "support_team");
  std::vector<Alert> alerts;
  StatementWatch w = d.on_statement(sam, reads("public.customers", {"email"}), monday(), alerts);
  EXPECT_EQ(w.max_rows, 30U);
  w = d.on_statement(sam, reads("public.customers", {"email", "national_id"}), monday(), alerts);
  EXPECT_EQ(w.max_rows, 20U);
  const auto f = reads("public.customers", {"email", "national_id"});
  auto fired = d.limit_alert(sam, f, w, 25, 0, monday());
  ASSERT_EQ(fired.size(), 1U);
  EXPECT_EQ(fired[0].category, "national_id");  // the categories the rule is about
  w = d.on_statement(sam, reads("public.payments", {"card_number"}), monday(), alerts);
  EXPECT_EQ(w.max_rows, 10U);
  w = d.on_statement(person("app", "app_services"), reads("public.customers", {"email"}), monday(), alerts);
  EXPECT_FALSE(w.armed());
  EXPECT_TRUE(alerts.empty());
}

TEST(DetectionTest, CooldownLimitsAlertsButNotActions) {
  Detector d(config(R"(
detection:
  rules:
    - {name: watch, detector: statement_volume, max_rows: 10, cooldown: 5m}
    - {name: stop, detector: statement_volume, action: cancel, max_rows: 100, cooldown: 5m}
)"));
  const auto sam = person("sam", "support_team");
  const auto f = reads("public.customers", {"email"});
  EXPECT_EQ(rule_names(run(d, sam, f, 50, monday())), Names{"watch"});
  EXPECT_TRUE(run(d, sam, f, 50, monday() + 4min).empty());
  EXPECT_EQ(rule_names(run(d, sam, f, 50, monday() + 5min)), Names{"watch"});
  // Per relation: another relation is another alert.
  EXPECT_EQ(rule_names(run(d, sam, reads("public.payments", {"card_number"}), 50, monday() + 6min)),
            Names{"watch"});
  // Every cancel is reported.
  EXPECT_EQ(rule_names(run(d, sam, f, 500, monday() + 7min)), Names{"stop"});
  EXPECT_EQ(rule_names(run(d, sam, f, 500, monday() + 8min)), Names{"stop"});
}

TEST(DetectionTest, BlockHoldsForItsDuration) {
  Detector d(config(R"(
detection:
  rules:
    - {name: stop, detector: statement_volume, action: block, block_for: 15m, max_rows: 100}
)"));
  const auto sam = person("sam", "support_team");
  EXPECT_FALSE(d.blocked_until("sam", monday()).has_value());
  auto alerts = run(d, sam, reads("public.customers", {"email"}), 500, monday());
  ASSERT_EQ(alerts.size(), 1U);
  EXPECT_EQ(alerts[0].action, AlertAction::block);
  EXPECT_EQ(alerts[0].block_for, 900s);
  auto until = d.blocked_until("sam", monday() + 1min);
  ASSERT_TRUE(until.has_value());
  EXPECT_EQ(*until, monday() + 15min);
  EXPECT_FALSE(d.blocked_until("sam", monday() + 15min).has_value());
  EXPECT_FALSE(d.blocked_until("sue", monday() + 1min).has_value());
}

// Normal traffic for one user: about `per_minute` rows each minute of work
// hours, deterministic jitter.
void normal_minutes(Detector& d, const DetectIdentity& who, TimePoint from, int minutes, uint64_t per_minute,
                    std::vector<Alert>& alerts) {
  for (int m = 0; m < minutes; ++m) {
    const uint64_t rows = per_minute / 2 + (static_cast<uint64_t>(m) * 7919 % (per_minute + 1));
    for (auto& a : run(d, who, reads("public.customers", {"email"}, static_cast<uint64_t>(m)), rows,
                       from + std::chrono::minutes(m) + 10s)) {
      alerts.push_back(std::move(a));
    }
  }
}

TEST(DetectionTest, WindowVolumeLearnsThenFlagsABurst) {
  Detector d(config(R"(
detection:
  time_zone: UTC
  rules:
    - {name: volume-1m, detector: window_volume, window: 1m, sensitivity: 6, floor_rows: 100, warmup: 1h}
)"));
  const auto sam = person("sam", "support_team");
  std::vector<Alert> alerts;
  const TimePoint start = monday() + 8h;
  // During the warm-up even a large minute is learned, not flagged.
  normal_minutes(d, sam, start, 30, 40, alerts);
  EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}, 1), 3000, start + 30min + 5s).empty());
  normal_minutes(d, sam, start + 31min, 120, 40, alerts);
  EXPECT_TRUE(alerts.empty()) << alerts.front().message;
  // After it: a burst streams past the learned threshold and is caught mid-statement.
  std::vector<Alert> burst;
  const auto f = reads("public.customers", {"email"}, 99);
  StatementWatch w = d.on_statement(sam, f, start + 3h, burst);
  ASSERT_TRUE(w.armed());
  // At least the floor, and the 3000-row minute of the warm-up is the
  // largest seen in 8 days: up to 1.5x that is normal.
  EXPECT_GE(w.max_rows, 4500U);
  EXPECT_LT(w.max_rows, 4600U);
  uint64_t n = 0;
  while (!w.exceeded(n, 0)) n += 10;
  for (auto& a : d.limit_alert(sam, f, w, n, 0, start + 3h)) burst.push_back(std::move(a));
  ASSERT_EQ(burst.size(), 1U);
  EXPECT_EQ(burst[0].detector, "window_volume");
  EXPECT_GT(burst[0].observed, burst[0].baseline);
  d.on_statement_end(sam, f, w, n, 0, start + 3h, burst);
  EXPECT_EQ(burst.size(), 1U);  // one alert per window
}

TEST(DetectionTest, WindowVolumeRemembersLastWeeksPeak) {
  Detector d(config(R"(
detection:
  rules:
    - {name: volume-1h, detector: window_volume, window: 1h, floor_rows: 100, warmup: 1d}
)"));
  const auto ann = person("ann", "analytics_team");
  std::vector<Alert> alerts;
  // Eight days: 50 rows every work hour, and a 4000-row report on both
  // Mondays at 09:00. The first is in the warm-up; the second must not alert.
  for (int day = 0; day < 8; ++day) {
    for (int hour = 8; hour < 18; ++hour) {
      const TimePoint t = monday() + std::chrono::hours(24 * day + hour) + 5min;
      const bool report = day % 7 == 0 && hour == 9;
      if (day % 7 >= 5) continue;  // weekend
      for (auto& a : run(d, ann, reads("public.customers", {"email"}, static_cast<uint64_t>(hour)),
                         report ? 4000 + static_cast<uint64_t>(day) * 10 : 50, t)) {
        alerts.push_back(std::move(a));
      }
    }
  }
  EXPECT_TRUE(alerts.empty()) << alerts.front().message;
  // The same report on Tuesday is still within 1.5x of the last 8 days'
  // peak; three times it is not.
  const TimePoint tuesday = monday() + 8 * 24h + 11h;
  EXPECT_TRUE(run(d, ann, reads("public.customers", {"email"}, 7), 4500, tuesday).empty());
  auto burst = run(d, ann, reads("public.customers", {"email"}, 8), 12000, tuesday + 1h);
  EXPECT_EQ(rule_names(burst), Names{"volume-1h"});
}

TEST(DetectionTest, SlowDripCountsDistinctLookups) {
  Detector d(config(R"(
detection:
  rules:
    - {name: drip, detector: slow_drip, roles: [support_team], window: 1m, max_distinct: 10}
)"));
  const auto sam = person("sam", "support_team");
  const TimePoint t = monday() + 10h;
  // The same customer again and again is one key.
  for (int i = 0; i < 50; ++i)
    EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}, 7), 1, t + 1s * i).empty());
  for (uint64_t k = 1; k < 10; ++k)
    EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}, 100 + k), 1, t).empty());
  // 7 plus nine more is ten; the eleventh distinct key fires.
  auto alerts = run(d, sam, reads("public.customers", {"email"}, 200), 1, t + 50s);
  ASSERT_EQ(rule_names(alerts), Names{"drip"});
  EXPECT_EQ(alerts[0].observed, 11);
  EXPECT_EQ(alerts[0].baseline, 10);
  // Spread out, the same number of lookups is normal.
  const auto sue = person("sue", "support_team");
  for (uint64_t k = 0; k < 60; ++k) {
    EXPECT_TRUE(
        run(d, sue, reads("public.customers", {"email"}, k), 1, t + 10s * static_cast<int>(k)).empty())
        << k;
  }
  // Other roles are not in scope.
  const auto app = person("app", "app_services");
  for (uint64_t k = 0; k < 100; ++k)
    EXPECT_TRUE(run(d, app, reads("public.customers", {"email"}, k), 1, t).empty());
}

// Past 512 keys in a window the count comes from a HyperLogLog sketch
// (standard error 1.6 %): a limit of 50,000 stays quiet at 46,000 distinct
// keys (5 sigma below) and fires before 54,000 (5 sigma above); repeats
// are still one key; a quiet window forgets, and counting starts exact.
TEST(DetectionTest, SlowDripCountsLargeWalksApproximately) {
  Detector d(config(R"(
detection:
  rules:
    - {name: drip, detector: slow_drip, roles: [support_team], window: 10m, max_distinct: 50000}
)"));
  const auto sam = person("sam", "support_team");
  const TimePoint t = monday() + 10h;
  auto lookup = [&](uint64_t key, TimePoint at) {
    return run(d, sam, reads("public.customers", {"email"}, key * 0x9e3779b97f4a7c15ULL + 12345), 1, at);
  };
  // 46,000 keys, each read three times, within two minutes.
  for (int pass = 0; pass < 3; ++pass) {
    for (uint64_t k = 0; k < 46000; ++k) {
      ASSERT_TRUE(lookup(k, t + std::chrono::milliseconds(k + 46000 * pass)).empty()) << k;
    }
  }
  std::vector<Alert> fired;
  uint64_t k = 46000;
  for (; k < 54000 && fired.empty(); ++k) fired = lookup(k, t + 3min);
  ASSERT_EQ(rule_names(fired), Names{"drip"}) << "no alert by 54,000 distinct keys";
  EXPECT_GT(fired[0].observed, 50000);
  EXPECT_LT(fired[0].observed, 52000);
  EXPECT_GT(k, 48000u);
  Detector small(config(R"(
detection:
  rules:
    - {name: drip, detector: slow_drip, roles: [support_team], window: 10m, max_distinct: 600, cooldown: 1m}
)"));
  auto walk = [&](uint64_t from, TimePoint at, uint64_t limit) {
    std::pair<uint64_t, std::vector<Alert>> out{0, {}};
    for (uint64_t n = 0; n < limit && out.second.empty(); ++n) {
      out.first = n + 1;
      out.second =
          run(small, sam, reads("public.customers", {"email"}, (from + n) * 0x9e3779b97f4a7c15ULL), 1, at);
    }
    return out;
  };
  // Exact up to 512 keys, then the sketch: a limit of 600 fires between
  // 585 and 615 distinct keys.
  auto [n1, f1] = walk(0, t, 700);
  ASSERT_EQ(rule_names(f1), Names{"drip"});
  EXPECT_GE(n1, 585u);
  EXPECT_LE(n1, 615u);
  // After a whole window without lookups the first walk is forgotten:
  // 512 new keys (counted exactly again) do not fire.
  auto [n2, f2] = walk(5000, t + 30min, 512);
  EXPECT_TRUE(f2.empty());
  // ... and the sketch takes over again past that.
  auto [n3, f3] = walk(6000, t + 30min + 1s, 200);
  ASSERT_EQ(rule_names(f3), Names{"drip"});
  EXPECT_GE(512 + n3, 585u);
  EXPECT_LE(512 + n3, 615u);
}

TEST(DetectionTest, FirstAccessAfterWarmup) {
  Detector d(config(R"(
detection:
  rules:
    - {name: new-table, detector: first_access, warmup: 1d}
)"));
  const auto sam = person("sam", "support_team");
  // Learning: nothing fires.
  EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}), 1, monday() + 10h).empty());
  EXPECT_TRUE(run(d, sam, reads("public.orders", {"free_text"}), 1, monday() + 11h).empty());
  const TimePoint later = monday() + 2 * 24h;
  EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}), 1, later).empty());
  auto alerts = run(d, sam, reads("public.payments", {"card_number"}), 1, later + 1min);
  ASSERT_EQ(rule_names(alerts), Names{"new-table"});
  EXPECT_EQ(alerts[0].relation, "public.payments");
  EXPECT_TRUE(run(d, sam, reads("public.payments", {"card_number"}), 1, later + 2min).empty());
  // A new category of a known relation.
  alerts = run(d, sam, reads("public.customers", {"email", "national_id"}), 1, later + 3min);
  ASSERT_EQ(rule_names(alerts), Names{"new-table"});
  EXPECT_EQ(alerts[0].category, "national_id");
  // A user first seen after the warm-up: everything is new to them.
  EXPECT_EQ(
      rule_names(run(d, person("newbie", "support_team"), reads("public.customers", {"email"}), 1, later)),
      Names{"new-table"});
}

TEST(DetectionTest, OffHoursFollowsTheScheduleInItsZone) {
  Detector d(config(R"(
detection:
  rules:
    - name: night
      detector: off_hours
      exclude_roles: [app_services]
      time_zone: Europe/Berlin
      allowed:
        - {days: [mon, tue, wed, thu, fri], from: "07:00", to: "20:00"}
        - {days: [sat], from: "22:00", to: "02:00"}
)"));
  const auto sam = person("sam", "support_team");
  const auto f = reads("public.customers", {"email"});
  // 2025-03-24 is a Monday; Berlin is UTC+1 until 2025-03-30.
  EXPECT_TRUE(run(d, sam, f, 1, monday() + 6h + 30min).empty());   // 07:30 Berlin
  EXPECT_TRUE(run(d, sam, f, 1, monday() + 18h + 59min).empty());  // 19:59
  auto alerts = run(d, sam, f, 1, monday() + 19h + 1min);          // 20:01
  ASSERT_EQ(rule_names(alerts), Names{"night"});
  EXPECT_NE(alerts[0].message.find("Mon at 20:01 Europe/Berlin"), std::string::npos) << alerts[0].message;
  EXPECT_TRUE(run(d, sam, f, 1, monday() + 5 * 24h + 21h + 30min).empty());  // Sat 22:30
  EXPECT_TRUE(
      run(d, sam, f, 1, monday() + 6 * 24h + 0h + 30min).empty());  // Sun 01:30, still Saturday's slot
  // Sunday 2025-03-30 after the switch to CEST: 02:30 UTC is 04:30 Berlin.
  EXPECT_EQ(rule_names(run(d, sam, f, 1, monday() + 6 * 24h + 2h + 30min)), Names{"night"});
  // Monday 2025-03-31 05:30 UTC is 07:30 CEST: allowed again.
  EXPECT_TRUE(run(d, sam, f, 1, monday() + 7 * 24h + 5h + 30min).empty());
  // The service account works at night.
  EXPECT_TRUE(run(d, person("app", "app_services"), f, 1, monday() + 2h).empty());
}

TEST(DetectionTest, BulkExportShapes) {
  Detector d(config(R"(
detection:
  rules:
    - {name: export, detector: bulk_export, copy_to: true, full_scan: true, min_rows: 100}
)"));
  const auto ann = person("ann", "analytics_team");
  auto copy = reads("public.customers", {"email"});
  copy.copy_to = true;
  auto alerts = run(d, ann, copy, 0, monday() + 10h);
  ASSERT_EQ(rule_names(alerts), Names{"export"});
  EXPECT_NE(alerts[0].message.find("COPY"), std::string::npos);
  auto scan = reads("public.payments", {"card_number"});
  scan.reads[0].unfiltered = true;
  EXPECT_TRUE(run(d, ann, scan, 99, monday() + 11h).empty());
  alerts = run(d, ann, scan, 5000, monday() + 11h + 10min, 50);
  ASSERT_EQ(rule_names(alerts), Names{"export"});
  EXPECT_EQ(alerts[0].observed, 100);  // caught at the first batch past min_rows
  // Filtered reads are not an export shape.
  EXPECT_TRUE(run(d, ann, reads("public.customers", {"email"}), 5000, monday() + 12h).empty());
}

TEST(DetectionTest, ProbingPerSession) {
  Detector d(config(R"(
detection:
  rules:
    - {name: probe, detector: probing, window: 1m, max_denials: 3, max_predicates: 5}
)"));
  const auto s1 = person("sam", "support_team", 1);
  const auto s2 = person("sam", "support_team", 2);
  const TimePoint t = monday() + 10h;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(d.on_denial(s1, "deny_column", t + 1s * i).empty());
  EXPECT_TRUE(d.on_denial(s2, "deny_column", t).empty());  // another session
  auto alerts = d.on_denial(s1, "deny_column", t + 5s);
  ASSERT_EQ(rule_names(alerts), Names{"probe"});
  EXPECT_EQ(alerts[0].observed, 4);
  EXPECT_NE(alerts[0].message.find("deny_column"), std::string::npos);
  // Denials spread beyond the window do not add up.
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(d.on_denial(s2, "deny_column", t + 40s * (i + 1)).empty());
  // Distinct conditions on masked columns.
  for (uint64_t k = 0; k < 5; ++k) {
    auto f = reads("public.customers", {"national_id"}, k);
    f.predicate_on_masked = true;
    EXPECT_TRUE(run(d, s2, f, 0, t + 2min).empty());
  }
  auto f = reads("public.customers", {"national_id"}, 77);
  f.predicate_on_masked = true;
  EXPECT_EQ(rule_names(run(d, s2, f, 0, t + 2min)), Names{"probe"});
  // The same conditions without a masked predicate do not count.
  f.predicate_on_masked = false;
  for (uint64_t k = 100; k < 120; ++k) {
    f.key = k;
    EXPECT_TRUE(run(d, s1, f, 0, t + 3min).empty());
  }
  d.on_disconnect(s1);
  d.on_disconnect(s2);
}

TEST(DetectionTest, ServiceAccountAddressesAndApplicationNames) {
  Detector d(config(R"(
detection:
  rules:
    - {name: app-misuse, detector: service_account, roles: [app_services], clients: [10.0.0.0/8, "2001:db8::/32"],
       application_names: [shop-web], learn: true, warmup: 1d}
)"));
  auto app = person("app", "app_services");
  app.application_name = "shop-web";
  app.client_ip = "10.1.2.3";
  EXPECT_TRUE(d.on_connect(app, monday()).empty());
  // Learned in the warm-up: another address and a worker process.
  auto worker = app;
  worker.client_ip = "172.16.0.5";
  worker.application_name = "shop-worker";
  EXPECT_TRUE(d.on_connect(worker, monday() + 1h).empty());
  const TimePoint later = monday() + 2 * 24h;
  EXPECT_TRUE(d.on_connect(worker, later).empty());
  auto v6 = app;
  v6.client_ip = "2001:db8::17";
  EXPECT_TRUE(d.on_connect(v6, later).empty());
  auto intruder = app;
  intruder.client_ip = "192.168.77.5";
  intruder.application_name = "psql";
  auto alerts = d.on_connect(intruder, later);
  ASSERT_EQ(alerts.size(), 2U);
  EXPECT_EQ(alerts[0].detector, "service_account");
  EXPECT_NE(alerts[0].message.find("192.168.77.5"), std::string::npos);
  EXPECT_NE(alerts[1].message.find("psql"), std::string::npos);
  // Cooldown: the same intruder again within 5 minutes is not re-reported.
  EXPECT_TRUE(d.on_connect(intruder, later + 1min).empty());
  // People are not service accounts.
  auto sam = person("sam", "support_team");
  sam.client_ip = "192.168.77.5";
  EXPECT_TRUE(d.on_connect(sam, later).empty());
}

TEST(DetectionTest, ServiceAccountWithoutLearningUsesTheListsAtOnce) {
  Detector d(config(R"(
detection:
  rules:
    - {name: app-misuse, detector: service_account, roles: [app_services], clients: [10.0.0.0/8]}
)"));
  auto app = person("app", "app_services");
  app.client_ip = "192.168.1.1";
  EXPECT_EQ(d.on_connect(app, monday()).size(), 1U);
  app.client_ip = "";  // a Unix socket has no address
  EXPECT_EQ(d.on_connect(app, monday()).size(), 1U);
  app.client_ip = "10.9.9.9";
  app.application_name = "anything";  // names are not checked without a list or learning
  EXPECT_TRUE(d.on_connect(app, monday()).empty());
}

// A detector that has seen a week of traffic.
void train(Detector& d) {
  const auto sam = person("sam", "support_team");
  auto app = person("app", "app_services");
  app.client_ip = "172.16.0.5";
  d.on_connect(app, monday());
  for (int day = 0; day < 3; ++day) {
    for (int m = 0; m < 240; m += 3) {
      const TimePoint t = monday() + std::chrono::hours(24 * day + 9) + std::chrono::minutes(m);
      run(d, sam, reads("public.customers", {"email"}, static_cast<uint64_t>(m)),
          20 + static_cast<uint64_t>(m % 7), t);
    }
  }
}

const char* const training_rules = R"(
detection:
  rules:
    - {name: volume-1m, detector: window_volume, window: 1m, floor_rows: 50, warmup: 1d}
    - {name: new-table, detector: first_access, warmup: 1d}
    - {name: app-misuse, detector: service_account, roles: [app_services], learn: true, warmup: 1d}
)";

TEST(DetectionTest, StateSurvivesSaveAndLoad) {
  auto cfg = config(training_rules);
  Detector a(cfg);
  train(a);
  // Users come out in hash order; sorted, two saves of one state are equal.
  auto sorted = [](nlohmann::json doc) {
    std::sort(doc["users"].begin(), doc["users"].end(),
              [](const nlohmann::json& x, const nlohmann::json& y) { return x["user"] < y["user"]; });
    return doc;
  };
  const nlohmann::json saved = sorted(a.save_state(monday() + 3 * 24h));
  EXPECT_EQ(saved["version"], 1);
  EXPECT_EQ(saved["format"], "pgcloak-detection-state");
  // Round trip through text, as through the state file.
  Detector b(cfg);
  ASSERT_TRUE(b.load_state(nlohmann::json::parse(saved.dump())).ok());
  EXPECT_EQ(sorted(b.save_state(monday() + 3 * 24h)), saved);
  // Both behave the same afterwards.
  const TimePoint t = monday() + 3 * 24h + 10h;
  const auto sam = person("sam", "support_team");
  for (Detector* d : {&a, &b}) {
    EXPECT_TRUE(run(*d, sam, reads("public.customers", {"email"}, 1), 25, t).empty());
    EXPECT_EQ(rule_names(run(*d, sam, reads("public.payments", {"card_number"}, 2), 1, t + 1min)),
              Names{"new-table"});
    EXPECT_EQ(rule_names(run(*d, sam, reads("public.customers", {"email"}, 3), 5000, t + 2min)),
              Names{"volume-1m"});
    auto app = person("app", "app_services");
    app.client_ip = "172.16.0.5";
    EXPECT_TRUE(d->on_connect(app, t).empty());
    app.client_ip = "172.16.0.6";
    EXPECT_EQ(d->on_connect(app, t).size(), 1U);
  }
}

TEST(DetectionTest, UnknownStateVersionsStartFresh) {
  Detector d(config(training_rules));
  train(d);
  auto saved = d.save_state(monday() + 3 * 24h);
  saved["version"] = 2;
  auto st = d.load_state(saved);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("version 2 is not supported"), std::string::npos);
  EXPECT_EQ(d.stats().users, 0U);
  EXPECT_FALSE(d.load_state(nlohmann::json::parse(R"({"format": "something else"})")).ok());
  EXPECT_FALSE(
      d.load_state(nlohmann::json::parse(
                       R"({"format": "pgcloak-detection-state", "version": 1, "users": [{"user": 5}]})"))
          .ok());
  EXPECT_EQ(d.stats().users, 0U);
  // Fresh means learning again: no first-access alerts until the warm-up passed.
  EXPECT_TRUE(
      run(d, person("sam", "support_team"), reads("public.payments", {"card_number"}), 1, monday() + 5 * 24h)
          .empty());
}

TEST(DetectionTest, ReloadKeepsLearnedState) {
  Detector d(config(training_rules));
  train(d);
  d.reload(config(std::string(training_rules) +
                  "    - {name: bulk, detector: statement_volume, max_rows: 100000}\n"));
  const TimePoint t = monday() + 3 * 24h + 10h;
  const auto sam = person("sam", "support_team");
  EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}, 1), 25, t).empty());
  EXPECT_EQ(rule_names(run(d, sam, reads("public.customers", {"email"}, 3), 5000, t + 2min)),
            Names{"volume-1m"});
  // A changed window is another baseline: it learns again.
  d.reload(config(R"(
detection:
  rules:
    - {name: volume-1m, detector: window_volume, window: 2m, floor_rows: 50, warmup: 1d}
)"));
  EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}, 3), 5000, t + 10min).empty());
}

// `enabled: false` by reload: inactive (the proxy skips detection), no
// alerts, and the learned state is still there when the rules come back.
TEST(DetectionTest, SwitchedOffByReloadAndBack) {
  Detector d(config(training_rules));
  EXPECT_TRUE(d.active());
  train(d);
  const TimePoint t = monday() + 3 * 24h + 10h;
  const auto sam = person("sam", "support_team");
  d.reload(config(std::string(training_rules) + "  enabled: false\n"));
  EXPECT_FALSE(d.active());
  EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}, 3), 5000, t).empty());
  EXPECT_TRUE(run(d, sam, reads("public.payments", {"card"}, 1), 10, t + 1min).empty());
  d.reload(config(training_rules));
  EXPECT_TRUE(d.active());
  // Baseline kept: the usual read is quiet, a burst is flagged; first
  // access still knows customers but not payments.
  EXPECT_TRUE(run(d, sam, reads("public.customers", {"email"}, 1), 25, t + 5min).empty());
  EXPECT_EQ(rule_names(run(d, sam, reads("public.customers", {"email"}, 3), 5000, t + 7min)),
            Names{"volume-1m"});
  EXPECT_EQ(rule_names(run(d, sam, reads("public.payments", {"card"}, 1), 10, t + 9min)), Names{"new-table"});
  // No rules at all is inactive too.
  d.reload(config("detection:\n  rules: []\n"));
  EXPECT_FALSE(d.active());
}

TEST(DetectionTest, MemoryIsBounded) {
  Detector d(config(R"(
detection:
  max_tracked: 640
  rules:
    - {name: new-table, detector: first_access, warmup: 1d}
)"));
  for (int u = 0; u < 5000; ++u) {
    run(d, person("user" + std::to_string(u), "support_team"), reads("public.customers", {"email"}), 1,
        monday() + std::chrono::seconds(u));
  }
  const auto st = d.stats();
  EXPECT_LE(st.tracked, 640U + 32U * 2U);
  EXPECT_GT(st.evicted_users, 0U);
}

TEST(DetectionTest, ConcurrentUsersOnManyThreads) {
  Detector d(config(R"(
detection:
  rules:
    - {name: bulk, detector: statement_volume, max_rows: 500, cooldown: 0s}
    - {name: drip, detector: slow_drip, window: 1m, max_distinct: 1000}
    - {name: volume-1m, detector: window_volume, window: 1m, floor_rows: 100000, warmup: 1h}
    - {name: new-table, detector: first_access, warmup: 1d}
)"));
  constexpr int threads = 8;
  constexpr int statements = 20000;
  std::vector<std::thread> pool;
  std::vector<size_t> alerts(threads);
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      // Two threads per user: sessions of one user on different relay threads.
      auto who = person("user" + std::to_string(i / 2), "support_team", static_cast<uint64_t>(i));
      for (int k = 0; k < statements; ++k) {
        const uint64_t rows = k % 1000 == 0 ? 600 : 1;
        alerts[static_cast<size_t>(i)] +=
            run(d, who, reads("public.customers", {"email"}, static_cast<uint64_t>(k)), rows,
                monday() + std::chrono::milliseconds(k * 10))
                .size();
      }
      d.on_disconnect(who);
    });
  }
  for (auto& t : pool) t.join();
  // 20 oversized statements per thread (no cooldown), and the drip rule
  // (two threads share each user's keys, so over 1000 distinct a minute) at
  // most once per user in its 5-minute cooldown.
  for (size_t a : alerts) {
    EXPECT_GE(a, 20U);
    EXPECT_LE(a, 20U + 2U);
  }
  EXPECT_EQ(d.stats().users, static_cast<size_t>(threads / 2));
}

// ---------------------------------------------------------------------------
// Facts from the statement analysis (shop fixture).

TEST(DetectionFactsTest, ReadsCategoriesAndShapes) {
  auto protection = testing::shop_protection();
  SessionPolicy support(protection, "support");
  SessionPolicy admin(protection, "admin");
  auto facts = [&](std::string_view sql, const SessionPolicy* p) {
    return statement_facts(audit_statement(sql, 0, protection.get()), *protection, p);
  };
  auto f = facts("SELECT full_name, email FROM customers WHERE ssn = $1", &support);
  ASSERT_EQ(f.reads.size(), 1U);
  EXPECT_EQ(f.reads[0].relation, "public.customers");
  EXPECT_EQ(f.reads[0].categories, (Names{"email", "national_id", "person_name"}));
  EXPECT_FALSE(f.reads[0].unfiltered);
  EXPECT_TRUE(f.predicate_on_masked);  // ssn is redacted for support
  EXPECT_NE(f.shape, 0U);
  EXPECT_FALSE(facts("SELECT full_name, email FROM customers WHERE ssn = $1", &admin).predicate_on_masked);
  // full_name is allowed for support: not a masked predicate.
  EXPECT_FALSE(facts("SELECT email FROM customers WHERE full_name = $1", &support).predicate_on_masked);
  // Nothing protected: no reads.
  EXPECT_TRUE(facts("SELECT id, created_at FROM customers", &support).reads.empty());
  EXPECT_TRUE(facts("SELECT abalance FROM pgbench_accounts WHERE aid = 1", &support).reads.empty());
  // Unfiltered reads and COPY.
  f = facts("SELECT * FROM customers", &support);
  ASSERT_EQ(f.reads.size(), 1U);
  EXPECT_TRUE(f.reads[0].unfiltered);
  f = facts("COPY customers TO STDOUT", &support);
  EXPECT_TRUE(f.copy_to);
  ASSERT_EQ(f.reads.size(), 1U);
  EXPECT_TRUE(f.reads[0].unfiltered);
  EXPECT_TRUE(facts("COPY customers (id, email) FROM STDIN", &support).reads.empty());
  // A cursor's DECLARE reads what its query reads (its FETCHes are charged
  // to these facts by the proxy).
  f = facts("DECLARE c CURSOR FOR SELECT email FROM customers", &support);
  ASSERT_EQ(f.reads.size(), 1U);
  EXPECT_EQ(f.reads[0].relation, "public.customers");
  EXPECT_TRUE(f.reads[0].unfiltered);
  EXPECT_TRUE(facts("FETCH 100 FROM c", &support).reads.empty());
  // A partition or a view counts for the configured table.
  f = facts("SELECT card_number FROM payments_2025_01", &support);
  ASSERT_EQ(f.reads.size(), 1U);
  EXPECT_EQ(f.reads[0].relation, "public.payments");
  EXPECT_TRUE(f.reads[0].unfiltered);
  f = facts("SELECT email FROM customer_contacts WHERE id = $1", &support);
  ASSERT_EQ(f.reads.size(), 1U);
  EXPECT_EQ(f.reads[0].relation, "public.customers");
  EXPECT_EQ(f.reads[0].categories, Names{"email"});
  // Literal values do not change the shape.
  EXPECT_EQ(facts("SELECT email FROM customers WHERE id = 1", &support).shape,
            facts("SELECT email FROM customers WHERE id = 2", &support).shape);
}

TEST(DetectionFactsTest, HashesAndFingerprints) {
  EXPECT_EQ(fingerprint_value("00000000000000ff"), 255U);
  EXPECT_EQ(fingerprint_value("zz"), 0U);
  EXPECT_EQ(fingerprint_value(""), 0U);
  EXPECT_NE(detection_hash("a"), detection_hash("b"));
  EXPECT_EQ(detection_hash("abc"), detection_hash("abc"));
}

}  // namespace
}  // namespace pgcloak::rules

namespace pgcloak::rules {
namespace {
// What deriving a statement's facts costs per statement (reported, not
// asserted): the relay does it for every statement that reads protected data.
TEST(DetectionCostTest, StatementFactsPerStatement) {
  auto protection = testing::shop_protection();
  SessionPolicy support(protection, "support");
  auto audit = audit_statement("SELECT * FROM customers WHERE id = 5", 0, protection.get());
  ASSERT_FALSE(audit.protected_refs.empty());
  constexpr int rounds = 20000;
  size_t sink = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < rounds; ++i) sink += statement_facts(audit, *protection, &support).reads.size();
  const auto t1 = std::chrono::steady_clock::now();
  StatementFactsCache cache;
  auto shared = std::make_shared<const StatementAudit>(audit);
  for (int i = 0; i < rounds; ++i) sink += cache.get(shared, protection, &support).reads.size();
  const auto t2 = std::chrono::steady_clock::now();
  std::cout << "[ cost     ] statement_facts: "
            << std::chrono::duration<double, std::nano>(t1 - t0).count() / rounds << " ns per statement, "
            << std::chrono::duration<double, std::nano>(t2 - t1).count() / rounds << " ns from the cache\n";
  EXPECT_EQ(sink, size_t{2 * rounds});
}

bool same_facts(const StatementFacts& a, const StatementFacts& b) {
  if (a.reads.size() != b.reads.size()) return false;
  for (size_t i = 0; i < a.reads.size(); ++i) {
    if (a.reads[i].relation != b.reads[i].relation || a.reads[i].categories != b.reads[i].categories ||
        a.reads[i].unfiltered != b.reads[i].unfiltered) {
      return false;
    }
  }
  return a.statement_class == b.statement_class && a.copy_to == b.copy_to &&
         a.predicate_on_masked == b.predicate_on_masked && a.shape == b.shape && a.key == b.key;
}

// The cache answers what statement_facts() answers, per analysis and policy,
// and forgets everything when the protection changes.
TEST(DetectionCostTest, FactsCacheMatchesStatementFacts) {
  auto protection = testing::shop_protection();
  SessionPolicy support(protection, "support");
  SessionPolicy analyst(protection, "analyst");
  StatementFactsCache cache(8);
  std::vector<std::shared_ptr<const StatementAudit>> audits;
  for (const char* sql :
       {"SELECT * FROM customers WHERE id = 5", "SELECT id FROM customers WHERE email = 'x'",
        "SELECT email FROM customers", "COPY customers TO STDOUT", "SELECT 1"}) {
    audits.push_back(std::make_shared<const StatementAudit>(audit_statement(sql, 0, protection.get())));
  }
  for (int round = 0; round < 3; ++round) {
    for (const auto& a : audits) {
      const std::vector<const SessionPolicy*> policies{&support, &analyst, nullptr};
      for (const SessionPolicy* p : policies) {
        EXPECT_TRUE(same_facts(cache.get(a, protection, p), statement_facts(*a, *protection, p)));
      }
    }
  }
  EXPECT_LE(cache.entries(), 8U);
  // A new protection (catalog refresh, SIGHUP) starts over.
  auto other = testing::shop_protection();
  EXPECT_TRUE(same_facts(cache.get(audits[0], other, nullptr), statement_facts(*audits[0], *other, nullptr)));
  EXPECT_EQ(cache.entries(), 1U);
}
}  // namespace
}  // namespace pgcloak::rules
