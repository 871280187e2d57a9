// Statement analysis for audit records against the shop fixture's catalog:
// classes and command tags, the redaction guarantee of the normalised text
// and the fingerprint, relations and protected columns, statement indexes,
// parse errors and the cache.
#include "rules/statement_audit.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "rules/pg_tree.h"
#include "tests/support/shop_policy.h"

namespace pgcloak::rules {
namespace {

class StatementAuditTest : public ::testing::Test {
 protected:
  void SetUp() override { protection_ = testing::shop_protection(); }
  StatementAudit audit(std::string_view sql, unsigned index = 0) const {
    return audit_statement(sql, index, protection_.get());
  }
  std::shared_ptr<const Protection> protection_;
};

// ---------------------------------------------------------------------------
// Classes and command tags.

struct ClassCase {
  std::string_view sql;
  AuditClass audit_class;
  std::string_view command;
};

TEST_F(StatementAuditTest, ClassesFollowPgAudit) {
  const ClassCase cases[] = {
      // READ
      {"SELECT email FROM customers WHERE id = 1", AuditClass::read, "SELECT"},
      {"SELECT 1", AuditClass::read, "SELECT"},
      {"SELECT now()", AuditClass::read, "SELECT"},
      {"TABLE orders", AuditClass::read, "SELECT"},
      {"VALUES (1), (2)", AuditClass::read, "SELECT"},
      {"SELECT * FROM orders FOR UPDATE", AuditClass::read, "SELECT"},
      {"WITH x AS (SELECT * FROM orders) SELECT * FROM x", AuditClass::read, "SELECT"},
      {"COPY customers TO STDOUT", AuditClass::read, "COPY"},
      {"COPY (SELECT id FROM orders) TO STDOUT WITH (FORMAT csv)", AuditClass::read, "COPY"},
      {"PREPARE p AS SELECT * FROM orders WHERE id = $1", AuditClass::read, "PREPARE"},
      {"SELECT leak_customers() FROM orders", AuditClass::read, "SELECT"},
      // WRITE
      {"INSERT INTO orders (customer_id, amount) VALUES (1, 2)", AuditClass::write, "INSERT"},
      {"UPDATE orders SET status = 'x' WHERE id = 1", AuditClass::write, "UPDATE"},
      {"DELETE FROM orders WHERE id = 1", AuditClass::write, "DELETE"},
      {"TRUNCATE orders", AuditClass::write, "TRUNCATE TABLE"},
      {"COPY orders FROM STDIN", AuditClass::write, "COPY"},
      {"MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN DELETE",
       AuditClass::write, "MERGE"},
      {"WITH d AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM d", AuditClass::write, "SELECT"},
      {"PREPARE q AS INSERT INTO orders (id) VALUES ($1)", AuditClass::write, "PREPARE"},
      {"EXPLAIN ANALYZE UPDATE orders SET status = 'x'", AuditClass::write, "EXPLAIN"},
      {"COPY (DELETE FROM orders RETURNING id) TO STDOUT", AuditClass::write, "COPY"},
      // FUNCTION
      {"DO $$ BEGIN RAISE NOTICE 'x'; END $$", AuditClass::function, "DO"},
      {"CALL archive_orders(2024)", AuditClass::function, "CALL"},
      {"SELECT leak_customers()", AuditClass::function, "SELECT"},
      {"SELECT * FROM public.get_auth('x')", AuditClass::function, "SELECT"},
      // ROLE
      {"CREATE ROLE r1 LOGIN PASSWORD 'x'", AuditClass::role, "CREATE ROLE"},
      {"CREATE USER u1", AuditClass::role, "CREATE ROLE"},
      {"ALTER ROLE r1 NOSUPERUSER", AuditClass::role, "ALTER ROLE"},
      {"ALTER ROLE r1 SET work_mem = '1MB'", AuditClass::role, "ALTER ROLE"},
      {"ALTER ROLE r1 RENAME TO r2", AuditClass::role, "ALTER ROLE"},
      {"DROP ROLE r1", AuditClass::role, "DROP ROLE"},
      {"GRANT SELECT ON customers TO support_team", AuditClass::role, "GRANT"},
      {"REVOKE SELECT ON customers FROM support_team", AuditClass::role, "REVOKE"},
      {"GRANT support_team TO r1", AuditClass::role, "GRANT ROLE"},
      {"REVOKE support_team FROM r1", AuditClass::role, "REVOKE ROLE"},
      {"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r1", AuditClass::role, "ALTER DEFAULT PRIVILEGES"},
      // DDL
      {"CREATE TABLE t (a int)", AuditClass::ddl, "CREATE TABLE"},
      {"CREATE TABLE t2 AS SELECT * FROM orders", AuditClass::ddl, "CREATE TABLE AS"},
      {"SELECT * INTO t3 FROM orders", AuditClass::ddl, "SELECT INTO"},
      {"CREATE MATERIALIZED VIEW mv AS SELECT 1", AuditClass::ddl, "CREATE MATERIALIZED VIEW"},
      {"CREATE VIEW v AS SELECT * FROM orders", AuditClass::ddl, "CREATE VIEW"},
      {"ALTER TABLE orders ADD COLUMN note text", AuditClass::ddl, "ALTER TABLE"},
      {"ALTER VIEW customer_contacts RENAME TO cc", AuditClass::ddl, "ALTER VIEW"},
      {"ALTER TABLE orders RENAME COLUMN status TO state", AuditClass::ddl, "ALTER TABLE"},
      {"DROP TABLE orders", AuditClass::ddl, "DROP TABLE"},
      {"DROP INDEX i1", AuditClass::ddl, "DROP INDEX"},
      {"DROP FUNCTION f(int)", AuditClass::ddl, "DROP FUNCTION"},
      {"CREATE INDEX ON orders (status)", AuditClass::ddl, "CREATE INDEX"},
      {"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", AuditClass::ddl, "CREATE FUNCTION"},
      {"CREATE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'", AuditClass::ddl, "CREATE PROCEDURE"},
      {"CREATE SCHEMA s", AuditClass::ddl, "CREATE SCHEMA"},
      {"CREATE TYPE mood AS ENUM ('a', 'b')", AuditClass::ddl, "CREATE TYPE"},
      {"CREATE EXTENSION pgcrypto", AuditClass::ddl, "CREATE EXTENSION"},
      {"COMMENT ON TABLE orders IS 'x'", AuditClass::ddl, "COMMENT"},
      {"ALTER SYSTEM SET work_mem = '64MB'", AuditClass::ddl, "ALTER SYSTEM"},
      {"CLUSTER orders USING orders_pkey", AuditClass::ddl, "CLUSTER"},
      {"REFRESH MATERIALIZED VIEW mv", AuditClass::ddl, "REFRESH MATERIALIZED VIEW"},
      {"CREATE DATABASE d", AuditClass::ddl, "CREATE DATABASE"},
      {"ALTER TABLE orders OWNER TO r1", AuditClass::ddl, "ALTER TABLE"},
      {"ALTER TABLE orders SET SCHEMA s", AuditClass::ddl, "ALTER TABLE"},
      {"DROP OWNED BY r1", AuditClass::ddl, "DROP OWNED"},
      // MISC
      {"BEGIN", AuditClass::misc, "BEGIN"},
      {"START TRANSACTION ISOLATION LEVEL SERIALIZABLE", AuditClass::misc, "START TRANSACTION"},
      {"COMMIT", AuditClass::misc, "COMMIT"},
      {"ROLLBACK", AuditClass::misc, "ROLLBACK"},
      {"SAVEPOINT s1", AuditClass::misc, "SAVEPOINT"},
      {"RELEASE SAVEPOINT s1", AuditClass::misc, "RELEASE"},
      {"SET search_path = public", AuditClass::misc, "SET"},
      {"SET ROLE r1", AuditClass::misc, "SET"},
      {"RESET ALL", AuditClass::misc, "RESET"},
      {"SHOW work_mem", AuditClass::misc, "SHOW"},
      {"DISCARD ALL", AuditClass::misc, "DISCARD ALL"},
      {"DISCARD PLANS", AuditClass::misc, "DISCARD PLANS"},
      {"DECLARE c CURSOR FOR SELECT * FROM orders", AuditClass::misc, "DECLARE CURSOR"},
      {"FETCH 10 FROM c", AuditClass::misc, "FETCH"},
      {"MOVE 1 IN c", AuditClass::misc, "MOVE"},
      {"CLOSE c", AuditClass::misc, "CLOSE CURSOR"},
      {"CLOSE ALL", AuditClass::misc, "CLOSE CURSOR ALL"},
      {"CHECKPOINT", AuditClass::misc, "CHECKPOINT"},
      {"VACUUM orders", AuditClass::misc, "VACUUM"},
      {"ANALYZE orders", AuditClass::misc, "ANALYZE"},
      {"REINDEX TABLE orders", AuditClass::misc, "REINDEX"},
      {"LOCK TABLE orders IN SHARE MODE", AuditClass::misc, "LOCK TABLE"},
      {"LISTEN ch", AuditClass::misc, "LISTEN"},
      {"NOTIFY ch", AuditClass::misc, "NOTIFY"},
      {"EXECUTE p(1)", AuditClass::misc, "EXECUTE"},
      {"DEALLOCATE p", AuditClass::misc, "DEALLOCATE"},
      {"DEALLOCATE ALL", AuditClass::misc, "DEALLOCATE ALL"},
      {"EXPLAIN SELECT * FROM orders", AuditClass::misc, "EXPLAIN"},
      {"EXPLAIN (ANALYZE off) DELETE FROM orders", AuditClass::misc, "EXPLAIN"},
      {"SET CONSTRAINTS ALL DEFERRED", AuditClass::misc, "SET CONSTRAINTS"},
  };
  for (const auto& c : cases) {
    const auto a = audit(c.sql);
    EXPECT_FALSE(a.parse_error) << c.sql;
    EXPECT_EQ(audit_class_name(a.audit_class), audit_class_name(c.audit_class)) << c.sql;
    EXPECT_EQ(a.command, c.command) << c.sql;
  }
  EXPECT_GE(std::size(cases), 40U);
}

TEST_F(StatementAuditTest, FunctionClassNeedsTheCatalogForUnqualifiedNames) {
  // Without a catalog an unqualified call cannot be told from a built-in.
  EXPECT_EQ(audit_statement("SELECT leak_customers()", 0, nullptr).audit_class, AuditClass::read);
  EXPECT_EQ(audit_statement("SELECT public.leak_customers()", 0, nullptr).audit_class, AuditClass::function);
  EXPECT_EQ(audit_statement("SELECT pg_catalog.now()", 0, nullptr).audit_class, AuditClass::read);
}

// ---------------------------------------------------------------------------
// Redaction: the demo customers' values in every literal form.

// Fragments of the demo values, including those an escaped spelling leaves
// readable ("lice" of U&'\0061lice').
constexpr std::string_view needles[] = {"alice@example.com", "example", "lice", "4242424242424242", "4242",
                                        "123-45-6789",       "6789",    "45-",  "Alice Smith",      "Smith"};

constexpr std::string_view redaction_cases[] = {
    "SELECT * FROM customers WHERE email = 'alice@example.com'",
    "SELECT * FROM customers WHERE card_number = '4242424242424242' AND ssn = '123-45-6789'",
    "SELECT * FROM customers WHERE id = 4242424242424242 OR id = 4242424242424242.5e3",
    "SELECT * FROM customers WHERE ssn = 123-45-6789",
    "SELECT * FROM customers WHERE full_name = E'Alice\\x20Smith' OR email = E'alice\\x40example.com'",
    "SELECT E'\\u0061lice@example.com', e'Alice Smith\\n'",
    "SELECT U&'\\0061lice@example.com'",
    "SELECT U&'!0061lice Smith' UESCAPE '!'",
    "SELECT N'Alice Smith'",
    "SELECT $$alice@example.com$$, $tag$Alice Smith$tag$",
    "SELECT 'alice@'\n'example.com'",
    "SELECT 1 -- alice@example.com",
    "/* 4242424242424242 */ SELECT 1",
    "SELECT /* nested /* 123-45-6789 */ still a comment */ 1",
    "SELECT 1 /* Alice Smith */ + 2 -- 4242\n",
    "SELECT date '6789-01-01', interval '4242 days', timestamp '2024-01-01 4:42', text 'alice@example.com'",
    "SELECT varchar(20) 'Alice Smith', '123-45-6789'::text, CAST('4242424242424242' AS bigint)",
    "SELECT ARRAY['alice@example.com', 'Alice Smith'], '{4242424242424242,1}'::bigint[]",
    "SELECT ROW('Alice Smith', 4242), B'1010', X'4242'",
    "SELECT 'alice@example.com'::text COLLATE \"C\"",
    "CREATE ROLE r1 LOGIN PASSWORD 'alice@example.com'",
    "ALTER ROLE r1 WITH PASSWORD '4242424242424242' VALID UNTIL '6789-12-31'",
    "ALTER USER r1 PASSWORD 'Alice Smith'",
    "CREATE ROLE r2 ENCRYPTED PASSWORD $pw$123-45-6789$pw$",
    "SET application_name = 'alice@example.com'",
    "SET LOCAL my.ssn TO '123-45-6789'",
    "ALTER SYSTEM SET cluster_name = 'Alice Smith'",
    "COPY customers FROM '/tmp/alice@example.com.csv' WITH (FORMAT csv, DELIMITER ';', NULL '4242')",
    "COPY customers TO PROGRAM 'mail alice@example.com'",
    "COPY (SELECT * FROM customers WHERE ssn = '123-45-6789') TO STDOUT",
    "DO $$ BEGIN RAISE NOTICE 'Alice Smith'; END $$",
    "DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1 FROM customers WHERE ssn = '123-45-6789'; END $body$",
    "DO 'BEGIN PERFORM ''alice@example.com''; END'",
    "INSERT INTO customers (full_name, email, card_number, ssn) VALUES ('Alice Smith', 'alice@example.com', "
    "'4242424242424242', '123-45-6789')",
    "UPDATE customers SET notes = 'Alice Smith called' WHERE email LIKE 'alice%' RETURNING id",
    "DELETE FROM customers WHERE card_number = '4242424242424242'",
    "MERGE INTO customers c USING orders o ON c.id = o.customer_id WHEN MATCHED THEN UPDATE SET email = "
    "'alice@example.com'",
    "PREPARE p AS SELECT * FROM customers WHERE email = 'alice@example.com'",
    "EXPLAIN SELECT * FROM customers WHERE ssn = '123-45-6789'",
    "DECLARE c CURSOR FOR SELECT * FROM customers WHERE full_name = 'Alice Smith'",
    "CREATE TABLE t (e text DEFAULT 'alice@example.com', CHECK (e <> 'Alice Smith'))",
    "CREATE VIEW v AS SELECT * FROM customers WHERE ssn = '123-45-6789'",
    "ALTER TABLE customers ALTER COLUMN notes SET DEFAULT 'Alice Smith'",
    "COMMENT ON COLUMN customers.ssn IS 'e.g. 123-45-6789'",
    "SECURITY LABEL ON TABLE customers IS 'Alice Smith'",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $f$ SELECT 'alice@example.com' $f$",
    "CREATE USER MAPPING FOR r1 SERVER s1 OPTIONS (user 'alice@example.com', password '4242424242424242')",
    "NOTIFY ch, 'alice@example.com'",
    "SELECT pg_notify('ch', 'Alice Smith')",
    "SELECT * FROM customers WHERE phone ~ '4242' LIMIT 6789 OFFSET 4242",
    "SELECT * FROM customers WHERE email = $1 AND full_name = 'Alice Smith'",
    "INSERT INTO customers (email) SELECT 'alice@example.com' WHERE NOT EXISTS (SELECT 1 FROM customers "
    "WHERE ssn = '123-45-6789')",
};

// Another customer's values in the same places.
std::string swap_values(std::string sql) {
  const std::pair<std::string_view, std::string_view> swaps[] = {
      {"alice@example.com", "bobby@sample.org"},
      {"4242424242424242", "5555555555554444"},
      {"123-45-6789", "987-65-4321"},
      {"Alice Smith", "Bobby Jones"},
      {"0061lice", "0062obby"},
      {"4242", "1357"},
      {"Alice", "Bobby"},
      {"alice", "bobby"},
      {"example.com", "sample.org"},
  };
  for (const auto& [from, to] : swaps) {
    for (size_t at = sql.find(from); at != std::string::npos; at = sql.find(from, at + to.size())) {
      sql.replace(at, from.size(), to);
    }
  }
  return sql;
}

void expect_no_customer_data(const StatementAudit& a, std::string_view sql) {
  std::vector<std::string> outputs = {a.normalized, a.fingerprint, a.command};
  outputs.insert(outputs.end(), a.relations.begin(), a.relations.end());
  outputs.insert(outputs.end(), a.protected_columns.begin(), a.protected_columns.end());
  if (a.copy) outputs.push_back(a.copy->endpoint);
  for (const auto& out : outputs) {
    for (auto needle : needles) {
      EXPECT_EQ(out.find(needle), std::string::npos)
          << "\"" << needle << "\" in \"" << out << "\" for: " << sql;
    }
  }
}

TEST_F(StatementAuditTest, NormalizedTextAndFingerprintHoldNoLiteral) {
  EXPECT_GE(std::size(redaction_cases), 30U);
  for (auto sql : redaction_cases) {
    const auto a = audit(sql);
    ASSERT_FALSE(a.parse_error) << sql;
    ASSERT_FALSE(a.normalized.empty()) << sql;
    ASSERT_EQ(a.fingerprint.size(), 16U) << sql;
    expect_no_customer_data(a, sql);
    // The guarantee as stated: no constant and no comment in what is logged.
    auto tokens = scan_tokens(a.normalized);
    ASSERT_TRUE(tokens.ok()) << a.normalized;
    for (const auto& t : *tokens) {
      EXPECT_NE(t.kind, PG_QUERY__TOKEN__SCONST) << a.normalized;
      EXPECT_NE(t.kind, PG_QUERY__TOKEN__USCONST) << a.normalized;
      EXPECT_NE(t.kind, PG_QUERY__TOKEN__ICONST) << a.normalized;
      EXPECT_NE(t.kind, PG_QUERY__TOKEN__FCONST) << a.normalized;
      EXPECT_NE(t.kind, PG_QUERY__TOKEN__BCONST) << a.normalized;
      EXPECT_NE(t.kind, PG_QUERY__TOKEN__XCONST) << a.normalized;
    }
    EXPECT_EQ(a.normalized.find("--"), std::string::npos) << a.normalized;
    EXPECT_EQ(a.normalized.find("/*"), std::string::npos) << a.normalized;
    // Neither output depends on the values: another customer's statement
    // looks the same in the log, so the log cannot confirm a guess.
    const std::string other = swap_values(std::string(sql));
    ASSERT_NE(other, sql) << "no demo value to swap in: " << sql;
    const auto b = audit(other);
    EXPECT_EQ(b.normalized, a.normalized) << sql;
    EXPECT_EQ(b.fingerprint, a.fingerprint) << sql;
  }
}

TEST_F(StatementAuditTest, RawFingerprintWouldLeakPasswordsButOursDoesNot) {
  // libpg_query's fingerprint of the raw text hashes the password: the log
  // would let anyone test guesses offline. Ours hashes it neutralised.
  auto raw = [](const char* sql) {
    PgQueryFingerprintResult f = pg_query_fingerprint(sql);
    std::string out = f.fingerprint_str != nullptr ? f.fingerprint_str : "";
    pg_query_free_fingerprint_result(f);
    return out;
  };
  const char* a = "CREATE ROLE r1 PASSWORD 'alice@example.com'";
  const char* b = "CREATE ROLE r1 PASSWORD 'bobby@sample.org'";
  ASSERT_NE(raw(a), raw(b));
  EXPECT_EQ(audit(a).fingerprint, audit(b).fingerprint);
  // For ordinary statements it is libpg_query's fingerprint, unchanged.
  const char* q = "SELECT email FROM customers WHERE id = 42 AND full_name = 'Alice Smith'";
  EXPECT_EQ(audit(q).fingerprint, raw(q));
}

TEST_F(StatementAuditTest, NormalizedTextKeepsStructure) {
  auto a = audit("SELECT  email\n  FROM customers -- who\n WHERE id = $1 AND full_name = 'x' AND ssn = 'y'");
  EXPECT_EQ(a.normalized, "SELECT email FROM customers WHERE id = $1 AND full_name = $2 AND ssn = $3");
  // Constants libpg_query's normaliser leaves (DDL) are numbered after its own.
  a = audit("CREATE TABLE t (a varchar(20) DEFAULT 'x')");
  EXPECT_EQ(a.normalized, "CREATE TABLE t (a varchar($1) DEFAULT $2)");
  a = audit("COPY customers FROM '/tmp/f.csv'");
  EXPECT_EQ(a.normalized, "COPY customers FROM $1");
  a = audit("DO $$ BEGIN NULL; END $$");
  EXPECT_EQ(a.normalized, "DO $1");
}

TEST_F(StatementAuditTest, ParseErrorsReportNothingOfTheText) {
  const std::string_view bad[] = {
      "SELECT * FROM customers WHERE email = 'alice@example.com' AND",
      "SELEC 'Alice Smith'",
      "SELECT 'alice@example.com",
      "SELECT 'a' '4242424242424242'",
      "SELECT * FROM customers WHERE ssn = '123-45-6789'; SELEC 1",
      "SELECT $$Alice Smith",
      "SELECT 1 /* 123-45-6789",
      std::string_view("SELECT '4242424242424242\0'", 27),
  };
  for (auto sql : bad) {
    const auto a = audit(sql);
    EXPECT_TRUE(a.parse_error) << sql;
    EXPECT_TRUE(a.normalized.empty()) << sql;
    EXPECT_TRUE(a.fingerprint.empty()) << sql;
    EXPECT_TRUE(a.command.empty()) << sql;
    EXPECT_TRUE(a.relations.empty()) << sql;
    EXPECT_TRUE(a.protected_columns.empty()) << sql;
    // Sealing covers the whole text.
    EXPECT_EQ(a.offset, 0U);
    EXPECT_EQ(std::string_view(sql).substr(a.offset, a.length), sql);
  }
}

// ---------------------------------------------------------------------------
// Statement index of a multi-statement Query.

TEST_F(StatementAuditTest, MultiStatementIndexSelectsTheStatement) {
  const std::string sql =
      "BEGIN; SELECT email FROM customers WHERE id = 1;\n-- note 4242\nUPDATE orders SET status = 'x'; "
      "COMMIT";
  auto a = audit(sql, 0);
  EXPECT_EQ(a.command, "BEGIN");
  EXPECT_EQ(a.normalized, "BEGIN");
  a = audit(sql, 1);
  EXPECT_EQ(a.command, "SELECT");
  EXPECT_EQ(a.audit_class, AuditClass::read);
  EXPECT_EQ(a.normalized, "SELECT email FROM customers WHERE id = $1");
  EXPECT_EQ(a.relations, std::vector<std::string>{"public.customers"});
  EXPECT_EQ(a.protected_columns, std::vector<std::string>{"public.customers.email"});
  EXPECT_EQ(sql.substr(a.offset, a.length), " SELECT email FROM customers WHERE id = 1");
  a = audit(sql, 2);
  EXPECT_EQ(a.command, "UPDATE");
  EXPECT_EQ(a.normalized, "UPDATE orders SET status = $1");  // the comment before it is gone
  EXPECT_EQ(a.relations, std::vector<std::string>{"public.orders"});
  EXPECT_TRUE(a.protected_columns.empty());
  a = audit(sql, 3);
  EXPECT_EQ(a.command, "COMMIT");
  // Out of range: nothing to say about it.
  a = audit(sql, 4);
  EXPECT_TRUE(a.parse_error);
  EXPECT_TRUE(a.normalized.empty());
  // The whole text is parsed first, as PostgreSQL does: one syntax error
  // anywhere means no statement of it ran.
  a = audit("SELECT 1; SELEC 2", 0);
  EXPECT_TRUE(a.parse_error);
}

TEST_F(StatementAuditTest, EmptyQuery) {
  for (std::string_view sql : {"", " ; ; ", "-- only a comment 4242"}) {
    const auto a = audit(sql);
    EXPECT_TRUE(a.empty) << sql;
    EXPECT_FALSE(a.parse_error) << sql;
    EXPECT_TRUE(a.normalized.empty()) << sql;
    EXPECT_TRUE(a.command.empty()) << sql;
  }
}

// ---------------------------------------------------------------------------
// Relations and protected columns.

using Strings = std::vector<std::string>;

const Strings all_customer_columns = {"public.customers.address",     "public.customers.birth_date",
                                      "public.customers.card_number", "public.customers.email",
                                      "public.customers.full_name",   "public.customers.notes",
                                      "public.customers.phone",       "public.customers.ssn"};

TEST_F(StatementAuditTest, ExplicitColumnsAndJoins) {
  auto a = audit(
      "SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.status = 'x'");
  EXPECT_EQ(a.relations, (Strings{"public.customers", "public.orders"}));
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.email"});
  // Unqualified names resolve to the relation that has the column.
  a = audit("SELECT phone, amount FROM orders JOIN customers ON customers.id = orders.customer_id");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.phone"});
  // Schema-qualified column references.
  a = audit("SELECT public.customers.ssn FROM public.customers");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.ssn"});
  // Columns used only in predicates, ordering and grouping count too.
  a = audit("SELECT count(*) FROM customers WHERE birth_date > '2000-01-01' GROUP BY address ORDER BY 1");
  EXPECT_EQ(a.protected_columns, (Strings{"public.customers.address", "public.customers.birth_date"}));
  // Nothing protected.
  a = audit("SELECT id, created_at FROM customers");
  EXPECT_TRUE(a.protected_columns.empty());
  EXPECT_EQ(a.relations, Strings{"public.customers"});
}

// What the metrics count rows and masked values by: the protected relations
// read and, per protected column, its place in the relation.
TEST_F(StatementAuditTest, ProtectedRelationsAndColumnReferences) {
  auto a = audit("SELECT c.email, c.phone, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id");
  EXPECT_EQ(a.protected_relations, Strings{"public.customers"});
  ASSERT_EQ(a.protected_refs.size(), 2U);
  const auto* rp = protection_->by_name("customers").front();
  for (const auto& [oid, column] : a.protected_refs) {
    EXPECT_EQ(oid, rp->relation->oid);
    ASSERT_LT(column, rp->columns.size());
    EXPECT_TRUE(rp->columns[column].category.has_value());
    const std::string name = rp->relation->columns[column].name;
    EXPECT_TRUE(name == "email" || name == "phone") << name;
  }
  // Reading only unprotected columns of a protected table is not a
  // protected read.
  a = audit("SELECT id, created_at FROM customers");
  EXPECT_TRUE(a.protected_relations.empty());
  EXPECT_TRUE(a.protected_refs.empty());
  a = audit("SELECT c.card_number, p.card_number FROM customers c JOIN payments p ON p.customer_id = c.id");
  EXPECT_EQ(a.protected_relations.size(), 2U);
  EXPECT_EQ(a.protected_refs.size(), 2U);
  // Without a protection nothing is protected.
  a = audit_statement("SELECT email FROM customers", 0, nullptr);
  EXPECT_TRUE(a.protected_relations.empty());
}

TEST_F(StatementAuditTest, StarAndWholeRowExpandToEveryProtectedColumn) {
  EXPECT_EQ(audit("SELECT * FROM customers").protected_columns, all_customer_columns);
  EXPECT_EQ(audit("SELECT c.* FROM customers c JOIN orders o ON o.customer_id = c.id").protected_columns,
            all_customer_columns);
  EXPECT_EQ(audit("SELECT row_to_json(c) FROM customers c").protected_columns, all_customer_columns);
  EXPECT_EQ(audit("SELECT c FROM customers c").protected_columns, all_customer_columns);
  EXPECT_EQ(audit("SELECT (c).* FROM customers c").protected_columns, all_customer_columns);
  // (c).email is one column, not the row.
  EXPECT_EQ(audit("SELECT (c).email FROM customers c").protected_columns, Strings{"public.customers.email"});
  // o.* is orders only; * of the subquery's own FROM is customers.
  EXPECT_TRUE(
      audit("SELECT o.* FROM orders o JOIN customers c ON o.customer_id = c.id").protected_columns.empty());
  EXPECT_TRUE(audit("SELECT * FROM orders WHERE customer_id IN (SELECT id FROM customers)")
                  .protected_columns.empty());
  EXPECT_EQ(audit("SELECT id FROM orders WHERE EXISTS (SELECT * FROM customers)").protected_columns,
            all_customer_columns);
  EXPECT_EQ(audit("SELECT count(*) FROM customers").protected_columns, Strings{});
}

TEST_F(StatementAuditTest, SubqueriesAndCorrelation) {
  auto a = audit("SELECT x FROM (SELECT email AS x FROM customers) s");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.email"});
  a = audit("SELECT o.id FROM orders o WHERE o.customer_id IN (SELECT id FROM customers WHERE ssn = $1)");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.ssn"});
  EXPECT_EQ(a.relations, (Strings{"public.orders", "public.customers"}));
  // A correlated reference reaches the outer customers.
  a = audit(
      "SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id AND "
      "c.notes IS NOT NULL)");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.notes"});
  a = audit("SELECT s.x FROM customers c, LATERAL (SELECT c.phone AS x) s");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.phone"});
  // A name the inner FROM has stays there: payments.card_number, not the
  // outer customers'.
  a = audit("SELECT id FROM customers WHERE id IN (SELECT customer_id FROM payments WHERE card_number = $1)");
  EXPECT_EQ(a.protected_columns, Strings{"public.payments.card_number"});
}

TEST_F(StatementAuditTest, CtesAreNotRelationsButTheirBodiesCount) {
  auto a = audit("WITH x AS (SELECT email FROM customers) SELECT * FROM x");
  EXPECT_EQ(a.relations, Strings{"public.customers"});
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.email"});
  // Without RECURSIVE, a CTE's body reads the table of the same name.
  a = audit("WITH customers AS (SELECT id, phone FROM customers) SELECT * FROM customers");
  EXPECT_EQ(a.relations, Strings{"public.customers"});
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.phone"});
  // With RECURSIVE the name is the CTE everywhere.
  a = audit(
      "WITH RECURSIVE customers(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM customers WHERE id < 3) "
      "SELECT * FROM customers");
  EXPECT_TRUE(a.relations.empty());
  EXPECT_TRUE(a.protected_columns.empty());
  // Later CTEs see earlier ones.
  a = audit("WITH a AS (SELECT ssn FROM customers), b AS (SELECT * FROM a) SELECT * FROM b");
  EXPECT_EQ(a.relations, Strings{"public.customers"});
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.ssn"});
}

TEST_F(StatementAuditTest, ViewsAndPartitionsReportTheirSources) {
  auto a = audit("SELECT email FROM customer_contacts");
  EXPECT_EQ(a.relations, Strings{"public.customer_contacts"});
  EXPECT_EQ(a.protected_columns, (Strings{"public.customer_contacts.email", "public.customers.email"}));
  a = audit("SELECT id FROM customer_contacts");
  EXPECT_TRUE(a.protected_columns.empty());
  // A view column computed from protected data: every column it reads.
  a = audit("SELECT label FROM contact_labels");
  EXPECT_EQ(a.protected_columns,
            (Strings{"public.contact_labels.label", "public.customers.email", "public.customers.full_name"}));
  a = audit("SELECT * FROM customer_contacts");
  EXPECT_EQ(a.protected_columns.size(), 6U);
  a = audit("SELECT card_number FROM payments_2025_01");
  EXPECT_EQ(a.protected_columns,
            (Strings{"public.payments.card_number", "public.payments_2025_01.card_number"}));
}

TEST_F(StatementAuditTest, WritesReportTheColumnsWritten) {
  auto a = audit("INSERT INTO customers (full_name, email) VALUES ($1, $2)");
  EXPECT_EQ(a.protected_columns, (Strings{"public.customers.email", "public.customers.full_name"}));
  // INSERT ... SELECT: what is read and what is written.
  a = audit("INSERT INTO orders (customer_id, amount) SELECT id, 1 FROM customers WHERE email = $1");
  EXPECT_EQ(a.relations, (Strings{"public.orders", "public.customers"}));
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.email"});
  // Without a column list every column is written.
  a = audit("INSERT INTO customers SELECT * FROM customers WHERE id = 1");
  EXPECT_EQ(a.protected_columns, all_customer_columns);
  a = audit("UPDATE customers SET notes = $1 WHERE id = $2");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.notes"});
  a = audit("UPDATE customers SET notes = $1 WHERE id = $2 RETURNING *");
  EXPECT_EQ(a.protected_columns, all_customer_columns);
  a = audit("DELETE FROM customers WHERE ssn = $1");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.ssn"});
  a = audit(
      "INSERT INTO customers (id, email) VALUES (1, $1) ON CONFLICT (email) DO UPDATE SET notes = "
      "excluded.notes");
  EXPECT_EQ(a.protected_columns, (Strings{"public.customers.email", "public.customers.notes"}));
  a = audit(
      "MERGE INTO customers c USING orders o ON c.id = o.customer_id WHEN MATCHED THEN UPDATE SET phone = "
      "$1");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.phone"});
}

TEST_F(StatementAuditTest, Copy) {
  auto a = audit("COPY customers TO STDOUT");
  ASSERT_TRUE(a.copy.has_value());
  EXPECT_FALSE(a.copy->from);
  EXPECT_FALSE(a.copy->query);
  EXPECT_EQ(a.copy->endpoint, "stdout");
  EXPECT_EQ(a.protected_columns, all_customer_columns);
  a = audit("COPY customers (id, email) FROM STDIN");
  ASSERT_TRUE(a.copy.has_value());
  EXPECT_TRUE(a.copy->from);
  EXPECT_EQ(a.copy->endpoint, "stdin");
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.email"});
  a = audit("COPY (SELECT phone FROM customers) TO STDOUT");
  ASSERT_TRUE(a.copy.has_value());
  EXPECT_TRUE(a.copy->query);
  EXPECT_EQ(a.relations, Strings{"public.customers"});
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.phone"});
  a = audit("COPY orders TO '/tmp/orders.csv'");
  EXPECT_EQ(a.copy->endpoint, "file");
  a = audit("COPY orders FROM PROGRAM 'cat /tmp/x'");
  EXPECT_EQ(a.copy->endpoint, "program");
  EXPECT_FALSE(audit("SELECT 1").copy.has_value());
}

// A FETCH names no relation; detection charges its rows to the DECLARE.
TEST_F(StatementAuditTest, Cursors) {
  using Op = StatementAudit::CursorOp;
  auto a = audit("DECLARE Dump NO SCROLL CURSOR WITH HOLD FOR SELECT email FROM customers");
  EXPECT_EQ(a.cursor_op, Op::declare);
  EXPECT_EQ(a.cursor_name, "dump");  // unquoted: folded, as PostgreSQL does
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.email"});
  EXPECT_EQ(a.unfiltered_relations, Strings{"public.customers"});
  a = audit("FETCH FORWARD 500 FROM dump");
  EXPECT_EQ(a.cursor_op, Op::fetch);
  EXPECT_EQ(a.cursor_name, "dump");
  EXPECT_TRUE(a.relations.empty());
  EXPECT_TRUE(a.protected_columns.empty());
  for (const char* sql : {"FETCH \"MyCur\"", "FETCH ALL IN \"MyCur\"", "FETCH NEXT FROM \"MyCur\"",
                          "FETCH ABSOLUTE 7 \"MyCur\"", "FETCH BACKWARD ALL FROM \"MyCur\""}) {
    a = audit(sql);
    EXPECT_EQ(a.cursor_op, Op::fetch) << sql;
    EXPECT_EQ(a.cursor_name, "MyCur") << sql;
  }
  EXPECT_EQ(audit("MOVE FORWARD 500 IN dump").cursor_op, Op::none);  // returns no rows
  a = audit("CLOSE dump");
  EXPECT_EQ(a.cursor_op, Op::close);
  EXPECT_EQ(a.cursor_name, "dump");
  a = audit("CLOSE ALL");
  EXPECT_EQ(a.cursor_op, Op::close);
  EXPECT_EQ(a.cursor_name, "");
  a = audit("DISCARD ALL");
  EXPECT_EQ(a.cursor_op, Op::close);
  EXPECT_EQ(a.cursor_name, "");
  EXPECT_EQ(audit("DISCARD PLANS").cursor_op, Op::none);
  EXPECT_EQ(audit("SELECT 1").cursor_op, Op::none);
}

TEST_F(StatementAuditTest, DdlAndGrantsNameColumns) {
  EXPECT_EQ(audit("GRANT SELECT (email, id) ON customers TO r1").protected_columns,
            Strings{"public.customers.email"});
  EXPECT_EQ(audit("CREATE INDEX ON customers (lower(email))").protected_columns,
            Strings{"public.customers.email"});
  EXPECT_EQ(audit("CREATE INDEX ON customers (ssn)").protected_columns, Strings{"public.customers.ssn"});
  EXPECT_EQ(audit("ALTER TABLE customers RENAME COLUMN phone TO tel").protected_columns,
            Strings{"public.customers.phone"});
  EXPECT_EQ(audit("ALTER TABLE customers ALTER COLUMN notes TYPE varchar").protected_columns,
            Strings{"public.customers.notes"});
  auto a = audit("COMMENT ON COLUMN public.customers.ssn IS 'x'");
  EXPECT_EQ(a.relations, Strings{"public.customers"});
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.ssn"});
  a = audit("CREATE VIEW v AS SELECT full_name FROM customers");
  EXPECT_EQ(a.relations, (Strings{"v", "public.customers"}));
  EXPECT_EQ(a.protected_columns, Strings{"public.customers.full_name"});
  a = audit("DROP TABLE customers, orders, nosuch");
  EXPECT_EQ(a.relations, (Strings{"public.customers", "public.orders", "nosuch"}));
  EXPECT_EQ(audit("VACUUM ANALYZE customers (email)").protected_columns, Strings{"public.customers.email"});
}

TEST_F(StatementAuditTest, RelationNamesResolveThroughTheCatalog) {
  auto a = audit("SELECT * FROM nosuch.tbl JOIN orders USING (id) JOIN Customers ON true");
  EXPECT_EQ(a.relations, (Strings{"nosuch.tbl", "public.orders", "public.customers"}));
  a = audit("SELECT * FROM \"Mixed Case\"");
  EXPECT_EQ(a.relations, Strings{"Mixed Case"});
  a = audit("SELECT * FROM shop.public.orders");
  EXPECT_EQ(a.relations, Strings{"public.orders"});
  // Without masking configured: as written, no protected columns.
  a = audit_statement("SELECT email FROM customers c JOIN public.orders o ON o.customer_id = c.id", 0,
                      nullptr);
  EXPECT_EQ(a.relations, (Strings{"customers", "public.orders"}));
  EXPECT_TRUE(a.protected_columns.empty());
  EXPECT_EQ(a.normalized, "SELECT email FROM customers c JOIN public.orders o ON o.customer_id = c.id");
}

TEST_F(StatementAuditTest, AmbiguousNamesPreferPublicAndReportEveryCandidate) {
  auto catalog = testing::shop_catalog();
  auto archive = testing::relation(17000, "archive", "customers", 'r', {{"id", "bigint"}, {"email", "text"}});
  catalog->relations.push_back(archive);
  catalog->finalize();
  rules::SecretSources secrets;
  secrets.read_file = [](const std::string&) { return std::optional<std::string>(); };
  secrets.get_env = [](const std::string&) {
    return std::optional<std::string>("test-mask-key-test-mask-key-test-mask-key");
  };
  std::string yaml(testing::shop_masking_yaml);
  const std::string anchor = "    - {column: public.payments.card_number, category: card_number}\n";
  const size_t at = yaml.find(anchor);
  ASSERT_NE(at, std::string::npos);
  yaml.insert(at + anchor.size(), "    - {column: archive.customers.email, category: email}\n");
  auto load = rules::parse_config(yaml, secrets);
  ASSERT_TRUE(load.ok()) << load.format("archive");
  auto protection = Protection::build(std::make_shared<MaskingConfig>(load.config.masking), catalog);
  // search_path is the session's: the name may mean either table, so both
  // tables' email columns are reported; the relation shows as public's.
  auto a = audit_statement("SELECT email FROM customers", 0, protection.get());
  EXPECT_EQ(a.relations, Strings{"public.customers"});
  EXPECT_EQ(a.protected_columns, (Strings{"archive.customers.email", "public.customers.email"}));
  a = audit_statement("SELECT email FROM archive.customers", 0, protection.get());
  EXPECT_EQ(a.relations, Strings{"archive.customers"});
  EXPECT_EQ(a.protected_columns, Strings{"archive.customers.email"});
}

// ---------------------------------------------------------------------------
// The cache.

// Bulk-export shapes: protected relations whose rows come back with nothing
// restricting them.
TEST_F(StatementAuditTest, UnfilteredRelations) {
  const Strings customers{"public.customers"};
  const Strings none{};
  struct Case {
    std::string_view sql;
    Strings unfiltered;
  };
  const Case cases[] = {
      {"SELECT * FROM customers", customers},
      {"SELECT email FROM customers ORDER BY id", customers},
      {"SELECT email, count(*) FROM customers GROUP BY email", customers},
      {"SELECT email FROM customers WHERE id = $1", none},
      {"SELECT email FROM customers LIMIT 10", none},
      {"SELECT email FROM customers FETCH FIRST 10 ROWS ONLY", none},
      {"SELECT id, created_at FROM customers", none},  // nothing protected read
      // Joins: a condition restricts the inner side(s); a left join keeps
      // every row of its left side.
      {"SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id", none},
      {"SELECT c.email FROM customers c LEFT JOIN orders o ON o.customer_id = c.id", customers},
      {"SELECT c.email FROM orders o LEFT JOIN customers c ON o.customer_id = c.id", none},
      {"SELECT c.email FROM orders o RIGHT JOIN customers c ON o.customer_id = c.id", customers},
      {"SELECT c.email FROM customers c FULL JOIN orders o ON o.customer_id = c.id", customers},
      {"SELECT c.email FROM customers c CROSS JOIN orders o", customers},
      {"SELECT c.email FROM customers c JOIN orders o USING (id)", none},
      {"SELECT c.email FROM customers c, orders o WHERE o.customer_id = c.id", none},
      // Subqueries and CTEs carry the restriction of where they are used.
      {"SELECT x FROM (SELECT email AS x FROM customers) s", customers},
      {"SELECT x FROM (SELECT email AS x FROM customers) s WHERE x LIKE $1", none},
      {"SELECT x FROM (SELECT email AS x FROM customers) s LIMIT 5", none},
      {"WITH x AS (SELECT email FROM customers) SELECT * FROM x", customers},
      {"WITH x AS (SELECT email FROM customers WHERE id < $1) SELECT * FROM x", none},
      {"WITH x AS (SELECT email FROM customers) SELECT * FROM x WHERE email = $1", none},
      {"WITH customers AS (SELECT id, phone FROM customers) SELECT * FROM customers", customers},
      {"SELECT email FROM customers UNION SELECT email FROM customers WHERE id = 1", customers},
      {"(SELECT email FROM customers UNION ALL SELECT 'x') LIMIT 3", none},
      // A subquery in WHERE returns nothing to the client.
      {"SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE email IS NOT NULL)", none},
      // Views and partitions by their own name (the detector maps them).
      {"SELECT * FROM customer_contacts", Strings{"public.customer_contacts"}},
      {"SELECT card_number FROM payments_2025_01", Strings{"public.payments_2025_01"}},
      // COPY of a whole table, or of an unfiltered query.
      {"COPY customers TO STDOUT", customers},
      {"COPY (SELECT email FROM customers) TO STDOUT", customers},
      {"COPY (SELECT email FROM customers WHERE id = 1) TO STDOUT", none},
      {"COPY customers FROM STDIN", none},
      // Writes return no rows (without RETURNING reads are not scans).
      {"INSERT INTO orders (customer_id) SELECT id FROM customers WHERE email = $1", none},
      {"DECLARE c CURSOR FOR SELECT email FROM customers", customers},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(audit(c.sql).unfiltered_relations, c.unfiltered) << c.sql;
  }
  // Only with a catalog.
  EXPECT_TRUE(audit_statement("SELECT * FROM customers", 0, nullptr).unfiltered_relations.empty());
}

// What can test a value: WHERE, JOIN ON, HAVING (subqueries there too).
TEST_F(StatementAuditTest, PredicateColumns) {
  auto a = audit("SELECT email FROM customers WHERE ssn LIKE $1");
  EXPECT_EQ(a.predicate_columns, Strings{"public.customers.ssn"});
  EXPECT_EQ(a.protected_columns, (Strings{"public.customers.email", "public.customers.ssn"}));
  ASSERT_EQ(a.predicate_refs.size(), 1U);
  const auto* rp = protection_->by_name("customers").front();
  EXPECT_EQ(a.predicate_refs[0].first, rp->relation->oid);
  EXPECT_EQ(rp->relation->columns[a.predicate_refs[0].second].name, "ssn");
  EXPECT_TRUE(audit("SELECT email, ssn FROM customers WHERE id = $1").predicate_columns.empty());
  EXPECT_TRUE(audit("SELECT email FROM customers ORDER BY phone").predicate_columns.empty());
  EXPECT_EQ(audit("SELECT o.id FROM orders o JOIN customers c ON c.email = o.status").predicate_columns,
            Strings{"public.customers.email"});
  EXPECT_EQ(audit("SELECT count(*) FROM customers GROUP BY id HAVING max(birth_date) > $1").predicate_columns,
            Strings{"public.customers.birth_date"});
  EXPECT_EQ(audit("SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE phone = $1)")
                .predicate_columns,
            Strings{"public.customers.phone"});
  // A subquery's select list inside WHERE is compared too.
  EXPECT_EQ(audit("SELECT id FROM orders WHERE status IN (SELECT notes FROM customers)").predicate_columns,
            Strings{"public.customers.notes"});
  // * tests nothing.
  EXPECT_TRUE(audit("SELECT id FROM orders WHERE EXISTS (SELECT * FROM customers WHERE id = $1)")
                  .predicate_columns.empty());
  EXPECT_EQ(audit("UPDATE customers SET notes = $1 WHERE email = $2").predicate_columns,
            Strings{"public.customers.email"});
  EXPECT_EQ(audit("DELETE FROM customers WHERE ssn = $1").predicate_columns, Strings{"public.customers.ssn"});
  // Through a view: the view's column and the configured one.
  EXPECT_EQ(audit("SELECT id FROM customer_contacts WHERE email = $1").predicate_columns,
            (Strings{"public.customer_contacts.email", "public.customers.email"}));
}

TEST_F(StatementAuditTest, CacheReturnsTheSameAnalysis) {
  StatementAuditCache cache;
  const std::string sql = "SELECT email FROM customers WHERE id = $1";
  auto first = cache.get(sql, 0, protection_);
  auto second = cache.get(sql, 0, protection_);
  EXPECT_EQ(first.get(), second.get());
  EXPECT_EQ(cache.hits(), 1U);
  EXPECT_EQ(cache.misses(), 1U);
  EXPECT_EQ(first->normalized, audit(sql).normalized);
  // Another index of the same text is another entry.
  const std::string multi = "BEGIN; SELECT ssn FROM customers; COMMIT";
  for (unsigned i = 0; i < 3; ++i) {
    auto cached = cache.get(multi, i, protection_);
    auto direct = audit(multi, i);
    EXPECT_EQ(cached->command, direct.command);
    EXPECT_EQ(cached->normalized, direct.normalized);
    EXPECT_EQ(cached->protected_columns, direct.protected_columns);
    EXPECT_EQ(cached->offset, direct.offset);
  }
  EXPECT_EQ(cache.entries(), 4U);
  // A new protection (reload, catalog refresh) starts afresh.
  auto fresh = testing::shop_protection();
  auto third = cache.get(sql, 0, fresh);
  EXPECT_NE(third.get(), first.get());
  EXPECT_EQ(cache.entries(), 1U);
  // Without masking the same text analyses differently.
  auto unmasked = cache.get("SELECT email FROM customers", 0, nullptr);
  EXPECT_TRUE(unmasked->protected_columns.empty());
  EXPECT_EQ(unmasked->relations, Strings{"customers"});
}

TEST_F(StatementAuditTest, CacheStaysWithinItsBudget) {
  StatementAuditCache cache(64 * 1024);
  for (int i = 0; i < 2000; ++i) {
    cache.get("SELECT email AS e" + std::to_string(i) + " FROM customers", 0, protection_);
  }
  EXPECT_LE(cache.bytes(), 64U * 1024);
  EXPECT_GT(cache.entries(), 10U);
  EXPECT_LT(cache.entries(), 2000U);
  // The most recent entries are the ones kept.
  const uint64_t hits = cache.hits();
  cache.get("SELECT email AS e1999 FROM customers", 0, protection_);
  EXPECT_EQ(cache.hits(), hits + 1);
  cache.get("SELECT email AS e0 FROM customers", 0, protection_);
  EXPECT_EQ(cache.hits(), hits + 1);
}

// Texts that differ only in plain literal values share one analysis (the
// literal skeleton): it must be exactly the analysis each would get alone.
TEST_F(StatementAuditTest, CacheSharesAnalysesAcrossLiteralValues) {
  StatementAuditCache cache;
  const std::vector<std::string> same_shape = {
      "SELECT email FROM customers WHERE id = 1 AND full_name = 'Alice Smith'",
      "SELECT email FROM customers WHERE id = 987654321 AND full_name = 'O''Brien; DROP'",
      "SELECT email FROM customers WHERE id = 42 AND full_name = ''",
  };
  for (const auto& sql : same_shape) {
    auto cached = cache.get(sql, 0, protection_);
    auto direct = audit(sql);
    EXPECT_EQ(cached->normalized, direct.normalized) << sql;
    EXPECT_EQ(cached->fingerprint, direct.fingerprint) << sql;
    EXPECT_EQ(cached->relations, direct.relations) << sql;
    EXPECT_EQ(cached->protected_columns, direct.protected_columns) << sql;
    EXPECT_EQ(cached->offset, 0U);
    EXPECT_EQ(std::string_view(sql).substr(cached->offset, cached->length), sql);
  }
  EXPECT_EQ(cache.misses(), 1U);
  EXPECT_EQ(cache.hits(), 2U);
  // Different shapes, or texts whose lexing a byte scan cannot be sure of,
  // are analysed on their own, and still correctly.
  const std::vector<std::string> own = {
      "SELECT email FROM customers WHERE id = 1 AND full_name = E'Alice\\'s'",
      "SELECT email FROM customers WHERE id = 1 -- 'Alice Smith'",
      "SELECT email FROM customers WHERE id = 1 /* 4242424242424242 */",
      "SELECT email FROM customers WHERE id = $$1$$",
      "SELECT email FROM customers WHERE id = 12345678901",
      "SELECT email FROM customers WHERE id = 1; SELECT 2",
      "SELECT email FROM customers WHERE id = 1 AND full_name = 'x' AND ssn = 'y'",
      "SELECT email FROM customers WHERE id = $1",
      "SELECT email FROM customers WHERE id = 1 AND \"full_name\" = 'Alice'",
      "SELECT email FROM customers2 WHERE id = 1 AND full_name = 'Alice'",
  };
  for (const auto& sql : own) {
    auto cached = cache.get(sql, 0, protection_);
    auto direct = audit(sql);
    EXPECT_EQ(cached->normalized, direct.normalized) << sql;
    EXPECT_EQ(cached->fingerprint, direct.fingerprint) << sql;
    EXPECT_EQ(cached->relations, direct.relations) << sql;
  }
  EXPECT_EQ(cache.hits(), 2U);
}

// What one analysis costs, cold and from the cache (reported in the docs).
TEST_F(StatementAuditTest, CostPerAnalysis) {
  const std::string statements[] = {
      "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
      "SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.ssn = "
      "'123-45-6789' "
      "AND o.status IN ('paid', 'open') ORDER BY o.created_at DESC LIMIT 10",
      "UPDATE pgbench_accounts SET abalance = abalance + -4242 WHERE aid = 6789",
  };
  using clock = std::chrono::steady_clock;
  constexpr int rounds = 300;
  for (const auto& sql : statements) {
    const auto t0 = clock::now();
    size_t sink = 0;
    for (int i = 0; i < rounds; ++i) sink += audit(sql).normalized.size();
    const auto t1 = clock::now();
    StatementAuditCache cache;
    sink += cache.get(sql, 0, protection_)->normalized.size();
    const auto t2 = clock::now();
    for (int i = 0; i < rounds * 10; ++i) sink += cache.get(sql, 0, protection_)->normalized.size();
    const auto t3 = clock::now();
    const double cold_us = std::chrono::duration<double, std::micro>(t1 - t0).count() / rounds;
    const double cached_us = std::chrono::duration<double, std::micro>(t3 - t2).count() / (rounds * 10);
    std::cout << "[ cost     ] " << cold_us << " us cold, " << cached_us
              << " us cached: " << sql.substr(0, 40) << "...\n";
    EXPECT_GT(sink, 0U);
    EXPECT_LT(cached_us, cold_us);
  }
}

}  // namespace
}  // namespace pgcloak::rules
