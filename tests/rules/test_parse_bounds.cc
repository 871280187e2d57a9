// Depth bounds on statements (rules/parse_bounds.h): no statement can
// overflow a thread's stack in libpg_query, protobuf-c or pgcloak's own
// walkers, and ordinary statements are not affected. The deep statements
// are those of the crash reports: deep NOT, parentheses, operator chains,
// nested ARRAY, CASE and subqueries, UNION chains, and 1 MB statements.
#include "rules/parse_bounds.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <thread>

#include "rules/rewriter.h"
#include "rules/statement_audit.h"
#include "tests/support/shop_policy.h"

namespace pgcloak::rules {
namespace {

std::string repeat(std::string_view s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

// The deep statement kinds, n levels deep.
std::vector<std::pair<std::string, std::string>> deep_statements(size_t n) {
  return {
      {"NOT", "SELECT " + repeat("NOT ", n) + "true"},
      {"parentheses", "SELECT " + repeat("(", n) + "1" + repeat(")", n)},
      {"operator chain", "SELECT 1" + repeat("+1", n)},
      {"cast chain", "SELECT 1" + repeat("::int", n)},
      {"ARRAY", "SELECT " + repeat("ARRAY[", n) + "1" + repeat("]", n)},
      {"CASE", "SELECT " + repeat("CASE WHEN true THEN ", n) + "1" + repeat(" END", n)},
      {"subqueries", "SELECT " + repeat("(SELECT ", n) + "1" + repeat(")", n)},
      {"UNION chain", "SELECT 1" + repeat(" UNION SELECT 1", n)},
      {"JOIN chain", "SELECT 1 FROM t0" + repeat(" JOIN t0 USING (id)", n)},
      {"CASE operands", "SELECT 1" + repeat("+CASE WHEN true THEN 1 END", n)},
      {"UNION with lists", "SELECT 1, 2" + repeat(" UNION SELECT 1, 2 WHERE a AND b", n)},
      {"JOIN with conditions", "SELECT 1 FROM t" + repeat(" JOIN t ON a = 1 AND b = 2", n)},
  };
}

// Runs f on a thread with the default stack, as the relay threads do.
void on_thread(const std::function<void()>& f) {
  std::thread t(f);
  t.join();
}

TEST(ParseBoundsTest, TokenBoundFollowsNestingNotLength) {
  auto bound = [](const std::string& sql) {
    auto t = scan_tokens(sql);
    EXPECT_TRUE(t.ok()) << sql;
    return t ? token_nesting_bound(*t) : 0;
  };
  // Siblings in lists do not add up.
  EXPECT_LT(bound("SELECT " + repeat("a + 1, ", 5000) + "1"), 10U);
  EXPECT_LT(bound("SELECT 1 WHERE " + repeat("a = 1 AND ", 5000) + "true"), 10U);
  EXPECT_LT(bound("SELECT 1 WHERE " + repeat("a = 1 OR ", 5000) + "true"), 10U);
  EXPECT_LT(bound("SELECT CASE " + repeat("WHEN x = 1 THEN 'a' ", 5000) + "END"), 10U);
  EXPECT_LT(bound("INSERT INTO t VALUES " + repeat("(1, 'x'), ", 5000) + "(1, 'x')"), 10U);
  EXPECT_LT(bound("SELECT '" + repeat("+1", 50000) + "'"), 10U);  // one string constant
  EXPECT_LT(bound("SELECT 1 -- " + repeat("+1", 50000)), 10U);    // a comment
  // Chains and brackets do.
  EXPECT_GE(bound("SELECT 1" + repeat("+1", 5000)), 10000U);
  EXPECT_GE(bound("SELECT " + repeat("NOT ", 5000) + "true"), 5000U);
  EXPECT_GE(bound("SELECT " + repeat("(", 5000) + "1" + repeat(")", 5000)), 5000U);
  EXPECT_GE(bound("SELECT 1" + repeat(" UNION SELECT 1", 5000)), 5000U);
  EXPECT_GE(bound("SELECT " + repeat("f(", 3000) + "1" + repeat(")", 3000)), 3000U);
  // Chains whose steps hold separators of their own (found by a red-team
  // pass: these crashed libpg_query with the separators counted as ends).
  EXPECT_GE(bound("SELECT 1" + repeat("+CASE WHEN true THEN 1 END", 30000)), 30000U);
  EXPECT_GE(bound("SELECT 1, 2" + repeat(" UNION SELECT 1, 2 WHERE a AND b", 20000)), 20000U);
  EXPECT_GE(bound("SELECT 1 FROM t" + repeat(" JOIN t ON a = 1 AND b = 2", 20000)), 20000U);
  // CASE branches are siblings.
  EXPECT_LT(bound("SELECT CASE " + repeat("WHEN x = 1 THEN a + 1 ", 20000) + "END"), 10U);
  // Unbalanced brackets never underflow.
  EXPECT_LT(bound("SELECT ))) 1"), 10U);
}

TEST(ParseBoundsTest, ProtobufDepthIsExact) {
  for (size_t n : {1U, 10U, 100U}) {
    const std::string sql = "SELECT " + repeat("NOT ", n) + "true";
    PgQueryProtobufParseResult r = pg_query_parse_protobuf(sql.c_str());
    ASSERT_EQ(r.error, nullptr);
    const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(r.parse_tree.data),
                                         r.parse_tree.len);
    const size_t depth = protobuf_depth(bytes, pg_query__parse_result__descriptor, 100000);
    // Each NOT is a Node holding a BoolExpr whose args hold the next Node.
    if (n > 1) {
      const std::string shallower = "SELECT " + repeat("NOT ", n - 1) + "true";
      PgQueryProtobufParseResult r2 = pg_query_parse_protobuf(shallower.c_str());
      const std::span<const uint8_t> b2(reinterpret_cast<const uint8_t*>(r2.parse_tree.data),
                                        r2.parse_tree.len);
      EXPECT_EQ(protobuf_depth(b2, pg_query__parse_result__descriptor, 100000) + 2, depth) << n;
      pg_query_free_protobuf_parse_result(r2);
    }
    // Stops early, and never reads past a truncated buffer.
    EXPECT_GT(protobuf_depth(bytes, pg_query__parse_result__descriptor, 3), 3U);
    for (size_t cut = 1; cut < bytes.size(); cut += 7) {
      const size_t d = protobuf_depth(bytes.first(cut), pg_query__parse_result__descriptor, 100000);
      EXPECT_TRUE(d == SIZE_MAX || d <= depth) << cut;
    }
    pg_query_free_protobuf_parse_result(r);
  }
}

TEST(ParseBoundsTest, DeepStatementsAreRefusedWith54001) {
  for (size_t n : {2500U, 5000U, 40000U}) {
    for (const auto& [what, sql] : deep_statements(n)) {
      if (what == "parentheses") continue;  // parentheses around a constant make no nodes (below)
      SCOPED_TRACE(what + " x" + std::to_string(n));
      on_thread([&] {
        auto t = ParseTree::parse(sql);
        ASSERT_FALSE(t.ok()) << what;
        // Past bison's own stack (10,000 states), libpg_query reports
        // "memory exhausted" itself, as PostgreSQL would (54001 there too
        // in spirit; 42601 from the parser).
        const auto code = t.error().sqlstate;
        EXPECT_TRUE(code == sqlstate::statement_too_complex || code == sqlstate::syntax_error) << code;
      });
    }
  }
  // 1 MB chains: refused before libpg_query parses them.
  for (const std::string& huge :
       {"SELECT 1" + repeat("+1", 500000),
        "SELECT 1" + repeat("+CASE WHEN true THEN 1 END", 40000) + " FROM customers",
        "SELECT 1, 2" + repeat(" UNION SELECT 1, 2", 60000)}) {
    on_thread([&] {
      auto t = ParseTree::parse(huge);
      ASSERT_FALSE(t.ok());
      EXPECT_EQ(t.error().sqlstate, sqlstate::statement_too_complex);
    });
  }
}

TEST(ParseBoundsTest, OrdinaryAndWideStatementsStillParse) {
  for (const auto& [what, sql] : deep_statements(200)) {
    SCOPED_TRACE(what);
    EXPECT_TRUE(ParseTree::parse(sql).ok());
  }
  // 1 MB statements that are wide, not deep.
  std::string wide = "SELECT 0";
  for (int i = 1; wide.size() < (1U << 20); ++i) wide += ", " + std::to_string(i);
  EXPECT_TRUE(ParseTree::parse(wide).ok());
  EXPECT_TRUE(ParseTree::parse("SELECT 1 WHERE " + repeat("a = 1 AND ", 50000) + "true").ok());
  EXPECT_TRUE(ParseTree::parse("SELECT '" + repeat("x", 1 << 20) + "'").ok());
}

// The deepest statements the bounds let through go through every walker
// pgcloak has (the rewriter and the audit analysis) on a thread's stack.
TEST(ParseBoundsTest, WalkersHandleTheDeepestAllowedStatements) {
  auto protection = testing::shop_protection();
  SessionPolicy support(protection, "support");
  size_t accepted = 0;
  for (size_t n = 100; n <= 2000; n += 100) {
    for (auto [what, sql] : deep_statements(n)) {
      // Read the protected table at the bottom so the rewriter walks it all.
      if (what == "subqueries")
        sql = "SELECT " + repeat("(SELECT ", n) + "email FROM customers" + repeat(")", n);
      if (what == "operator chain") sql = "SELECT email" + repeat(" || 'x'", n) + " FROM customers";
      on_thread([&] {
        auto d = analyze_statement(sql, support);
        auto a = audit_statement(sql, 0, protection.get());
        if (d.action == StatementDecision::Action::refuse) {
          ASSERT_TRUE(d.refusal.has_value());
          EXPECT_TRUE(d.refusal->sqlstate == sqlstate::statement_too_complex ||
                      d.refusal->sqlstate == sqlstate::syntax_error)
              << what << " x" << n << ": " << d.refusal->message;
        } else if (!a.parse_error) {
          ++accepted;
        }
      });
    }
  }
  EXPECT_GT(accepted, 20U);
}

}  // namespace
}  // namespace pgcloak::rules
