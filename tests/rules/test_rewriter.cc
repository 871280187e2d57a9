// Rewriter behaviour against the shop fixture's catalog, without a database.
// tests/integration/test_masking_*.py runs the same classes of attack against
// PostgreSQL through pgcloak.
#include "rules/rewriter.h"

#include <gtest/gtest.h>

#include "rules/pg_tree.h"
#include "tests/support/shop_policy.h"

namespace pgcloak::rules {
namespace {

using Action = StatementDecision::Action;

class RewriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    protection_ = testing::shop_protection();
    analyst_ = std::make_unique<SessionPolicy>(protection_, "analyst");
    support_ = std::make_unique<SessionPolicy>(protection_, "support");
    admin_ = std::make_unique<SessionPolicy>(protection_, "admin");
    nobody_ = std::make_unique<SessionPolicy>(protection_, "nobody");
  }
  StatementDecision as_support(std::string_view sql) { return analyze_statement(sql, *support_); }
  StatementDecision as_analyst(std::string_view sql) { return analyze_statement(sql, *analyst_); }

  // The rewritten text must still parse, and must not read customers
  // except through a masking subquery.
  static void expect_masked(const StatementDecision& d) {
    ASSERT_EQ(d.action, Action::rewrite) << (d.refusal ? d.refusal->message : "passed unchanged");
    auto tree = ParseTree::parse(d.sql);
    ASSERT_TRUE(tree.ok()) << d.sql;
  }
  static void expect_refused(const StatementDecision& d, std::string_view rule) {
    ASSERT_EQ(d.action, Action::refuse) << "sql: " << d.sql;
    ASSERT_TRUE(d.refusal.has_value());
    EXPECT_EQ(d.refusal->sqlstate, std::string(rule.substr(0, 5) == "parse" ? "42601" : "42501"));
    EXPECT_EQ(d.rule, rule) << d.refusal->message;
  }

  std::shared_ptr<const Protection> protection_;
  std::unique_ptr<SessionPolicy> analyst_, support_, admin_, nobody_;
};

TEST_F(RewriterTest, PolicyResolutionFollowsNestedGroups) {
  EXPECT_EQ(analyst_->policy().name, "analytics");  // analyst -> bi_readers -> analytics_team
  EXPECT_EQ(support_->policy().name, "support");
  EXPECT_EQ(admin_->policy().name, "admins");
  EXPECT_EQ(nobody_->policy().name, "default");
  EXPECT_FALSE(admin_->masks_anything());
  EXPECT_TRUE(nobody_->masks_anything());
}

TEST_F(RewriterTest, UnprotectedStatementsPassWithoutParsing) {
  auto d = as_support("SELECT count(*), sum(amount) FROM orders WHERE status = 'paid'");
  EXPECT_EQ(d.action, Action::pass);
  EXPECT_TRUE(d.sql.empty());
}

TEST_F(RewriterTest, SelectIsWrapped) {
  auto d = as_support("SELECT email FROM customers WHERE id = 7");
  expect_masked(d);
  EXPECT_NE(d.sql.find("FROM customers) AS \"customers\""), std::string::npos) << d.sql;
  EXPECT_NE(d.sql.find("WHERE id = 7"), std::string::npos);
  EXPECT_EQ(d.relations, std::vector<std::string>{"public.customers"});
}

TEST_F(RewriterTest, AliasesOnlyAndQualifiedNames) {
  expect_masked(
      as_support("SELECT c.email FROM public.customers AS c(i, n) JOIN orders o ON o.customer_id = c.i"));
  auto d = as_support("SELECT * FROM ONLY customers c");
  expect_masked(d);
  EXPECT_NE(d.sql.find("FROM ONLY customers) AS \"c\""), std::string::npos) << d.sql;
  d = as_support("TABLE customers");
  expect_masked(d);
  EXPECT_EQ(d.sql.find("TABLE"), std::string::npos) << d.sql;
}

TEST_F(RewriterTest, PartitionsAndViewsAreProtected) {
  expect_masked(as_support("SELECT card_number FROM payments_2025_01"));
  expect_masked(as_support("SELECT * FROM customer_contacts"));
  // A view column computed from protected data cannot be masked: refused.
  expect_refused(as_support("SELECT label FROM contact_labels"), "deny:column");
  // Its plainly copied unprotected column can still be read.
  expect_masked(as_support("SELECT id FROM contact_labels"));
}

TEST_F(RewriterTest, DeniedColumnRefusedEvenThroughStarAndWholeRow) {
  expect_refused(as_analyst("SELECT ssn FROM customers"), "deny:column");
  expect_refused(as_analyst("SELECT * FROM customers"), "deny:column");
  expect_refused(as_analyst("SELECT row_to_json(c) FROM customers c"), "deny:column");
  expect_masked(as_analyst("SELECT id, email FROM customers"));
}

TEST_F(RewriterTest, RefusedStatements) {
  expect_refused(as_support("DO $$ BEGIN RAISE NOTICE '%', 1; END $$"), "deny:do");
  expect_refused(as_support("SET ROLE admin"), "deny:set-role");
  expect_refused(as_support("RESET ROLE"), "deny:set-role");
  expect_refused(as_support("SET SESSION AUTHORIZATION admin"), "deny:set-role");
  expect_refused(as_support("SELECT set_config('role', 'admin', false)"), "deny:function");
  expect_refused(as_support("SELECT query_to_xml('select * from customers', true, true, '')"),
                 "deny:function");
  expect_refused(as_support("SELECT * FROM pg_stats WHERE tablename = 'customers'"), "deny:statistics");
  expect_refused(as_support("SELECT query FROM pg_stat_activity"), "deny:statistics");
  expect_refused(as_support("EXPLAIN SELECT * FROM customers WHERE email = 'x'"), "deny:explain");
  expect_refused(as_support("COPY customers TO '/tmp/x'"), "deny:copy-file");
  expect_refused(as_support("SELECT leak_customers()"), "deny:function");
  expect_refused(as_support("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'"),
                 "deny:function-ddl");
  expect_refused(as_support("CREATE VIEW v AS SELECT * FROM customers"), "deny:create-view");
  expect_refused(as_support("SELEC email FROM customers"), "parse");
}

TEST_F(RewriterTest, WritesThatRead) {
  expect_refused(as_support("UPDATE customers SET notes = 'x' WHERE email LIKE 'a%'"),
                 "deny:dml-reads-protected");
  expect_refused(as_support("DELETE FROM customers WHERE ssn = '1' RETURNING id"),
                 "deny:dml-reads-protected");
  expect_refused(as_support("UPDATE customers SET notes = 'x' WHERE id = 1 RETURNING *"),
                 "deny:dml-reads-protected");
  expect_refused(as_support("INSERT INTO customers (id, email) VALUES (1, 'a') RETURNING email"),
                 "deny:dml-reads-protected");
  auto d = as_support("INSERT INTO customers (id, email) VALUES (1, 'a@b.c')");
  EXPECT_EQ(d.action, Action::pass) << (d.refusal ? d.refusal->message : d.sql);
  d = as_support("UPDATE customers SET full_name = 'x' WHERE id = 1");  // full_name is allowed for support
  EXPECT_EQ(d.action, Action::pass) << (d.refusal ? d.refusal->message : d.sql);
}

TEST_F(RewriterTest, ServerSideCopiesHoldMaskedValues) {
  expect_masked(as_support("CREATE TABLE copy AS SELECT * FROM customers"));
  expect_masked(as_support("SELECT * INTO copy2 FROM customers"));
  expect_masked(as_support("INSERT INTO orders (id, status) SELECT id, email FROM customers"));
  auto d = as_support("COPY customers (id, email) TO STDOUT");
  expect_masked(d);
  EXPECT_NE(d.sql.find("COPY  (SELECT \"id\", \"email\" FROM (SELECT"), std::string::npos) << d.sql;
  expect_masked(as_support("COPY (SELECT email FROM customers) TO STDOUT"));
  expect_masked(as_support("DECLARE c CURSOR FOR SELECT email FROM customers"));
  expect_masked(as_support("PREPARE p AS SELECT email FROM customers WHERE id = $1"));
}

TEST_F(RewriterTest, NamingTricks) {
  expect_masked(as_support("SELECT email FROM \"customers\""));
  expect_masked(as_support("SELECT email FROM U&\"\\0063ustomers\""));
  expect_masked(as_support("SELECT email FROM PUBLIC.CUSTOMERS"));
  expect_masked(as_support("SELECT 1; SELECT email FROM /* x */ customers"));
  // A different relation that only looks alike is left alone.
  EXPECT_EQ(as_support("SELECT * FROM \"Customers\"").action, Action::pass);
}

// Output masking (StatementDecision::output_sql): support's email (email),
// phone (partial), card_number (last4) and notes (redact_patterns) of
// customers (attnums 3, 4, 6, 9) may be masked in result rows by pgcloak.
TEST_F(RewriterTest, OutputMaskingPlansSimpleSelects) {
  const std::vector<std::pair<uint32_t, int16_t>> support_cols{
      {16400, 3}, {16400, 4}, {16400, 6}, {16400, 9}};
  struct Case {
    std::string_view sql;
    uint32_t fields;
  };
  for (const Case& c : {Case{"SELECT * FROM customers", 4}, Case{"TABLE customers", 4},
                        Case{"SELECT * FROM customers WHERE id = 7", 4},
                        Case{"SELECT email, id FROM customers c WHERE c.id < 10 ORDER BY id DESC LIMIT 5", 1},
                        Case{"SELECT c.email, c.phone, email FROM ONLY public.customers AS c", 3},
                        Case{"SELECT *, notes FROM customers OFFSET 2", 5},
                        Case{"SELECT c.* FROM customers c WHERE created_at > now() - interval '1 day'", 4},
                        Case{"SELECT id AS email, full_name FROM customers ORDER BY full_name", 0},
                        Case{"select EMAIL from CUSTOMERS;", 1}}) {
    SCOPED_TRACE(c.sql);
    auto d = as_support(c.sql);
    expect_masked(d);
    EXPECT_EQ(d.output_fields, c.fields);
    if (c.fields == 0) {
      EXPECT_TRUE(d.output_sql.empty()) << d.output_sql;
      continue;
    }
    EXPECT_EQ(d.output_columns, support_cols);
    ASSERT_TRUE(ParseTree::parse(d.output_sql).ok()) << d.output_sql;
    // The output-masked columns are read raw; everything else is masked as
    // in `sql`.
    EXPECT_NE(d.output_sql.find("\"email\", \"phone\""), std::string::npos) << d.output_sql;
    EXPECT_NE(d.output_sql.find("AS \"ssn\""), std::string::npos) << d.output_sql;
    EXPECT_EQ(d.sql.find("\"email\", \"phone\""), std::string::npos) << d.sql;
  }
}

// Anything that lets PostgreSQL compute with a raw value, or hides which
// result column carries it, keeps the masks in SQL.
TEST_F(RewriterTest, OutputMaskingOnlyWhenRawValuesReachNothingButTheOutput) {
  int rewritten = 0;
  for (std::string_view sql : {
           "SELECT * FROM customers WHERE email = 'a@b.c'",         // predicate
           "SELECT * FROM customers WHERE lower(phone) LIKE '%1'",  // inside an expression
           "SELECT * FROM customers ORDER BY email",                // sort
           "SELECT * FROM customers ORDER BY 3",                    // sort by position
           "SELECT email FROM customers ORDER BY 1",                //
           "SELECT * FROM customers ORDER BY card_number USING <",  //
           "SELECT email AS e FROM customers",                      // renamed result column
           "SELECT lower(email) FROM customers",                    // expression
           "SELECT email || '' FROM customers",                     //
           "SELECT email::varchar FROM customers",                  // cast
           "SELECT customers FROM customers",                       // whole row
           "SELECT c FROM customers c",                             //
           "SELECT id FROM customers c WHERE c IS NOT NULL",        // whole row in a predicate
           "SELECT id FROM customers c WHERE (c).email IS NULL",    //
           "SELECT * FROM customers WHERE id IN (SELECT 1)",        // subquery
           "SELECT * FROM customers WHERE EXISTS (SELECT email)",   // correlated
           "SELECT DISTINCT email FROM customers",                  // DISTINCT
           "SELECT DISTINCT ON (id) email FROM customers",          //
           "SELECT email FROM customers GROUP BY email",            // grouping
           "SELECT email, count(*) OVER () FROM customers",         // window
           "SELECT * FROM customers FOR UPDATE",                    // locking
           "SELECT * INTO TEMP t FROM customers",                   // INTO
           "WITH x AS (SELECT 1) SELECT * FROM customers",          // CTE
           "SELECT email FROM customers UNION ALL SELECT 'x'",      // set operation
           "SELECT c.email FROM customers c, orders o",             // two relations
           "SELECT c.email FROM customers c JOIN orders o ON o.customer_id = c.id",
           "SELECT email FROM customers AS c(a, b, email)",     // renamed columns
           "SELECT * FROM customers LIMIT (SELECT 1)",          //
           "SELECT * FROM customers; SELECT 1",                 // two statements
           "SELECT 1; SELECT * FROM customers",                 //
           "SELECT * FROM (SELECT * FROM customers) s",         // subquery in FROM
           "COPY (SELECT * FROM customers) TO STDOUT",          // not a SELECT
           "DECLARE c CURSOR FOR SELECT * FROM customers",      //
           "EXPLAIN SELECT * FROM customers",                   //
           "CREATE TABLE t AS SELECT * FROM customers",         //
           "INSERT INTO orders (id) SELECT id FROM customers",  //
       }) {
    SCOPED_TRACE(sql);
    auto d = as_support(sql);
    if (d.action == Action::refuse) continue;  // refused outright is fine too
    ++rewritten;
    EXPECT_TRUE(d.output_sql.empty()) << d.output_sql;
    EXPECT_EQ(d.output_fields, 0U);
    EXPECT_TRUE(d.output_columns.empty());
  }
  EXPECT_GE(rewritten, 30);  // the others were refused for other reasons
}

// Output masking accepts only references it can prove are one stored
// column (an allow-list): every whole-row form, and functions of the row in
// attribute notation (c.to_jsonb is to_jsonb(c)), keep the masking subquery
// for every column, so the row they see is masked.
TEST_F(RewriterTest, OutputMaskingRefusesEveryWholeRowForm) {
  for (std::string_view sql : {
           "SELECT email, c.to_jsonb FROM customers c",
           "SELECT email, c.row_to_json FROM customers c",
           "SELECT email, c.to_json FROM customers c",
           "SELECT email, c.concat FROM customers c",
           "SELECT email, customers.to_jsonb FROM customers",
           "SELECT email, \"c\".\"to_jsonb\" FROM customers c",
           "SELECT email, c.hstore FROM customers c",
           "SELECT email, c.textout FROM customers c",
           "SELECT email FROM customers c WHERE c.to_jsonb->>'email' LIKE 'kimberly%'",
           "SELECT email FROM customers c WHERE c.to_jsonb IS NOT NULL",
           "SELECT email FROM customers c ORDER BY c.to_jsonb->>'email'",
           "SELECT email FROM customers c ORDER BY c.row_to_json::text",
           "SELECT email FROM customers c WHERE (c.to_jsonb->>'email')::int = 1",
           "SELECT email FROM customers c WHERE id = (c.to_jsonb->>'id')::bigint",
           "SELECT email, c FROM customers c",
           "SELECT email FROM customers c WHERE c IS NOT NULL",
           "SELECT email FROM customers c WHERE c::text LIKE '%@%'",
           "SELECT email FROM customers c WHERE length(c::text) > 0",
           "SELECT email FROM customers c WHERE (c).* IS NOT NULL",
           "SELECT email FROM customers c WHERE (c).email IS NOT NULL",
           "SELECT email FROM customers c WHERE (c).to_jsonb IS NOT NULL",
           "SELECT email FROM customers c WHERE ROW(c.*) IS NOT NULL",
           "SELECT email FROM customers c WHERE to_jsonb(c) IS NOT NULL",
           "SELECT email FROM customers c WHERE row_to_json(c.*) IS NOT NULL",
           "SELECT email FROM customers c ORDER BY c.*",
           "SELECT email FROM customers c LIMIT length(c::text)",
           "SELECT email FROM customers c WHERE c.xmin IS NOT NULL",
           "SELECT email FROM public.customers WHERE public.customers.id = 1",
           "SELECT email FROM customers WHERE customers IS NOT NULL",
           "SELECT email FROM customers c WHERE c.nonexistent = 1",
           "SELECT card_number, p.to_jsonb FROM payments p",
           "SELECT card_number FROM payments p WHERE p.to_jsonb->>'card_number' LIKE '4%'",
       }) {
    SCOPED_TRACE(sql);
    auto d = as_support(sql);
    if (d.action == Action::refuse) continue;  // refused outright is fine too
    expect_masked(d);
    EXPECT_TRUE(d.output_sql.empty()) << d.output_sql;
    EXPECT_EQ(d.output_fields, 0U);
    EXPECT_TRUE(d.output_columns.empty());
  }
  // Plain columns, qualified or not, still are.
  for (std::string_view sql : {"SELECT c.email FROM customers c WHERE c.id < 5 ORDER BY c.id",
                               "SELECT email FROM customers WHERE customers.id = 3",
                               "SELECT c.* FROM customers c WHERE lower(c.full_name) LIKE 'a%'"}) {
    SCOPED_TRACE(sql);
    auto d = as_support(sql);
    expect_masked(d);
    EXPECT_FALSE(d.output_sql.empty());
  }
}

// The analyst's hash is applied in rows when a key is configured; a refused
// column still refuses the statement.
TEST_F(RewriterTest, OutputMaskingForHashAndRefusals) {
  auto d = as_analyst("SELECT id, email FROM customers WHERE id = 1");
  expect_masked(d);
  EXPECT_EQ(d.output_fields, 1U);
  EXPECT_EQ(d.output_columns, (std::vector<std::pair<uint32_t, int16_t>>{{16400, 3}}));
  expect_refused(as_analyst("SELECT * FROM customers"), "deny:column");
  // Unmasked policies never get here; payments (partitioned) plans too.
  d = as_support("SELECT card_number FROM payments");
  expect_masked(d);
  EXPECT_EQ(d.output_columns, (std::vector<std::pair<uint32_t, int16_t>>{{16430, 3}}));
}

}  // namespace
}  // namespace pgcloak::rules
