// The masking decision cache (rules/decision_cache.h): texts that differ
// only in literal values share one analysis through their literal
// skeleton, and every answer must be exactly what analyze_statement()
// gives for that text alone.
#include "rules/decision_cache.h"

#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <random>

#include "rules/literal_skeleton.h"
#include "tests/support/shop_policy.h"

namespace pgcloak::rules {
namespace {

using Action = StatementDecision::Action;

class DecisionCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    protection_ = testing::shop_protection();
    support_ = std::make_unique<SessionPolicy>(protection_, "support");
    analyst_ = std::make_unique<SessionPolicy>(protection_, "analyst");
  }
  static void expect_same(const StatementDecision& cached, const StatementDecision& direct,
                          std::string_view sql) {
    SCOPED_TRACE(sql);
    EXPECT_EQ(cached.action, direct.action);
    EXPECT_EQ(cached.sql, direct.sql);
    EXPECT_EQ(cached.output_sql, direct.output_sql);
    EXPECT_EQ(cached.output_columns, direct.output_columns);
    EXPECT_EQ(cached.output_fields, direct.output_fields);
    EXPECT_EQ(cached.rule, direct.rule);
    EXPECT_EQ(cached.relations, direct.relations);
    EXPECT_EQ(cached.catalog_may_change, direct.catalog_may_change);
    ASSERT_EQ(cached.refusal.has_value(), direct.refusal.has_value());
    if (direct.refusal) {
      EXPECT_EQ(cached.refusal->message, direct.refusal->message);
    }
  }

  std::shared_ptr<const Protection> protection_;
  std::unique_ptr<SessionPolicy> support_, analyst_;
};

TEST_F(DecisionCacheTest, LiteralSkeletonFindsEveryPlainLiteral) {
  const std::string sql = "SELECT * FROM t WHERE a = 'x''y' AND b = 42 AND c IN (1.5, '') AND d$1 = $2";
  auto sk = literal_skeleton(sql);
  ASSERT_TRUE(sk.has_value());
  std::vector<std::string> lits;
  for (auto [at, len] : sk->literals) lits.push_back(sql.substr(at, len));
  EXPECT_EQ(lits, (std::vector<std::string>{"'x''y'", "42", "1", "5", "''"}));
  EXPECT_EQ(sk->text, "SELECT * FROM t WHERE a = '' AND b = \x01 AND c IN (\x01.\x01, '') AND d$1 = $2");
  for (std::string_view no : {"SELECT E'a'", "SELECT 1 -- c", "SELECT $$a$$", "SELECT 1; SELECT 2",
                              "SELECT 12345678901", "SELECT /* c */ 1", "SELECT 'open"}) {
    EXPECT_FALSE(literal_skeleton(no).has_value()) << no;
  }
}

// Point reads with a new literal every time (the simple protocol): one
// analysis, then scans; each answer equals the direct one.
TEST_F(DecisionCacheTest, SharesDecisionsAcrossLiteralValues) {
  DecisionCache cache(1 << 20);
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    const std::string id = std::to_string(rng() % 1000000);
    const std::string name(static_cast<size_t>(rng() % 12), 'a' + static_cast<char>(rng() % 26));
    for (const std::string& sql :
         {"SELECT id, email, phone FROM customers WHERE id = " + id,
          "SELECT id, email FROM customers c WHERE c.id = " + id + " AND full_name <> '" + name + "' LIMIT 3",
          "SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.id = " +
              id,
          "SELECT email FROM customers WHERE email = '" + name + "@example.com'",
          "SELECT count(*) FROM orders WHERE amount > " + id}) {
      expect_same(*cache.decide(sql, *support_), analyze_statement(sql, *support_), sql);
      expect_same(*cache.decide(sql, *analyst_), analyze_statement(sql, *analyst_), sql);
    }
  }
  // Five shapes (one passes without parsing and is not cached), two policies.
  EXPECT_EQ(cache.entries(), 8U);
  EXPECT_EQ(cache.misses(), 8U);
  EXPECT_GE(cache.hits(), 199U * 8);
}

// What cannot be shared is still right: refusals (their messages may quote
// positions), texts without a skeleton, strict mode kept apart.
TEST_F(DecisionCacheTest, RefusalsAndOtherTextsAreDecidedOnTheirOwn) {
  DecisionCache cache(1 << 20);
  for (const std::string& sql : {
           std::string("SELECT * FROM customers WHERE id = 1 AND"),        // syntax error
           std::string("SELECT * FROM customers WHERE id = 12345 AND"),    // same skeleton, other position
           std::string("SELECT ssn FROM customers WHERE id = 5"),          // analyst: denied
           std::string("SELECT ssn FROM customers WHERE id = 6"),          //
           std::string("SELECT * FROM customers WHERE id = 1 -- note"),    // no skeleton
           std::string("SELECT * FROM customers WHERE note = E'a\\'b'"),   //
           std::string("SELECT * FROM customers WHERE id = 2; SELECT 1"),  //
       }) {
    for (int round = 0; round < 2; ++round) {
      expect_same(*cache.decide(sql, *analyst_), analyze_statement(sql, *analyst_), sql);
      expect_same(*cache.decide(sql, *analyst_, AnalysisMode::strict),
                  analyze_statement(sql, *analyst_, AnalysisMode::strict), sql);
    }
  }
}

// The pipelined attack on the cache: SET standard_conforming_strings TO 1,
// twice, then TO 0. The three texts share a literal skeleton, but the
// decision depends on the value: each must be decided on its own.
TEST_F(DecisionCacheTest, SettingsAreNeverSharedAcrossValues) {
  DecisionCache cache(1 << 20);
  for (const auto* policy : {support_.get(), analyst_.get()}) {
    for (const char* sql : {"SET standard_conforming_strings TO 1", "SET standard_conforming_strings TO 1",
                            "SET standard_conforming_strings TO 0", "SET standard_conforming_strings = 'on'",
                            "SET standard_conforming_strings = 'off'", "SET client_encoding = 'UTF8'",
                            "SET client_encoding = 'SJIS'", "SET client_min_messages = 'notice'",
                            "SET client_min_messages = 'debug2'", "SET client_encoding = 'LATIN1'",
                            "SET client_encoding = 'BIG5'"}) {
      expect_same(*cache.decide(sql, *policy), analyze_statement(sql, *policy), sql);
    }
    EXPECT_EQ(cache.decide("SET standard_conforming_strings TO 0", *policy)->action, Action::refuse);
    EXPECT_EQ(cache.decide("SET client_encoding = 'SJIS'", *policy)->action, Action::refuse);
    EXPECT_EQ(cache.decide("SET client_min_messages = 'debug2'", *policy)->action, Action::refuse);
  }
}

TEST_F(DecisionCacheTest, BoundedInBytes) {
  DecisionCache cache(64 * 1024);
  for (int i = 0; i < 2000; ++i) {
    const std::string sql = "SELECT email AS e" + std::to_string(i) + " FROM customers";
    expect_same(*cache.decide(sql, *support_), analyze_statement(sql, *support_), sql);
  }
  EXPECT_LE(cache.bytes(), 64U * 1024);
  EXPECT_GT(cache.entries(), 5U);
  EXPECT_LT(cache.entries(), 2000U);
}

// What a masked point read costs, parsed and from the cache with a new
// literal (reported, not asserted: machines are noisy).
TEST_F(DecisionCacheTest, CostPerDecision) {
  using clock = std::chrono::steady_clock;
  DecisionCache cache(1 << 20);
  constexpr int rounds = 2000;
  size_t sink = 0;
  const auto t0 = clock::now();
  for (int i = 0; i < rounds / 10; ++i)
    sink +=
        analyze_statement("SELECT * FROM customers WHERE id = " + std::to_string(i), *support_).sql.size();
  const auto t1 = clock::now();
  for (int i = 0; i < rounds; ++i)
    sink += cache.decide("SELECT * FROM customers WHERE id = " + std::to_string(i), *support_)->sql.size();
  const auto t2 = clock::now();
  std::cout << "[ cost     ] " << std::chrono::duration<double, std::micro>(t1 - t0).count() / (rounds / 10)
            << " us parsed, " << std::chrono::duration<double, std::micro>(t2 - t1).count() / rounds
            << " us cached with a new literal\n";
  EXPECT_GT(sink, 0U);
}

}  // namespace
}  // namespace pgcloak::rules
