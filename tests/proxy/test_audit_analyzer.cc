// The audit writer's statement analysis: the JSON fields of a statement
// record, the protection source, sealing with audit.log_parameters, and
// that no customer value reaches the record in the clear.
#include "proxy/audit_analyzer.h"

#include <gtest/gtest.h>

#include "tests/support/shop_policy.h"

namespace pgcloak::proxy {
namespace {

constexpr std::string_view key_hex = "8f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

StatementCapture capture(std::string sql, unsigned index = 0) {
  StatementCapture c;
  c.sql = std::make_shared<const std::string>(std::move(sql));
  c.index = index;
  return c;
}

class AuditAnalyzerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    protection_ = pgcloak::testing::shop_protection();
    auto s = ParameterSealer::from_hex(key_hex);
    ASSERT_TRUE(s.ok());
    sealer_ = *s;
  }
  AuditAnalyzer::ProtectionSource source() {
    return [this] { return protection_; };
  }
  std::shared_ptr<const rules::Protection> protection_;
  std::shared_ptr<const ParameterSealer> sealer_;
};

TEST_F(AuditAnalyzerTest, RecordFields) {
  AuditAnalyzer analyzer(source());
  auto j = analyzer.analyze(
      capture("SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.ssn = "
              "'123-45-6789'"));
  EXPECT_EQ(j["fingerprint"].get<std::string>().size(), 16U);
  EXPECT_EQ(
      j["normalized"],
      "SELECT c.email, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.ssn = $1");
  EXPECT_EQ(j["class"], "READ");
  EXPECT_EQ(j["command"], "SELECT");
  EXPECT_EQ(j["relations"], nlohmann::json::array({"public.customers", "public.orders"}));
  EXPECT_EQ(j["protected_columns"],
            nlohmann::json::array({"public.customers.email", "public.customers.ssn"}));
  EXPECT_TRUE(j["copy"].is_null());
  EXPECT_EQ(j["parse_error"], false);
  // Exactly these fields: nothing else of the text can slip in.
  EXPECT_EQ(j.size(), 8U) << j.dump();
  EXPECT_FALSE(j.contains("sealed_text"));
  EXPECT_FALSE(j.contains("sealed_parameters"));
}

TEST_F(AuditAnalyzerTest, CopyAndParseErrors) {
  AuditAnalyzer analyzer(source());
  auto j = analyzer.analyze(capture("COPY customers (id, email) FROM STDIN"));
  EXPECT_EQ(j["class"], "WRITE");
  EXPECT_EQ(j["copy"], nlohmann::json({{"direction", "from"}, {"query", false}, {"endpoint", "stdin"}}));
  j = analyzer.analyze(capture("COPY (SELECT phone FROM customers) TO STDOUT"));
  EXPECT_EQ(j["copy"], nlohmann::json({{"direction", "to"}, {"query", true}, {"endpoint", "stdout"}}));
  j = analyzer.analyze(capture("SELEC * FROM customers WHERE email = 'alice@example.com'"));
  EXPECT_EQ(j["parse_error"], true);
  EXPECT_EQ(j["normalized"], "");
  EXPECT_EQ(j.dump().find("alice"), std::string::npos) << j.dump();
}

TEST_F(AuditAnalyzerTest, FollowsTheProtectionInForce) {
  std::shared_ptr<const rules::Protection> current;
  AuditAnalyzer analyzer([&] { return current; });
  auto j = analyzer.analyze(capture("SELECT email FROM customers"));
  EXPECT_EQ(j["relations"], nlohmann::json::array({"customers"}));
  EXPECT_TRUE(j["protected_columns"].empty());
  current = protection_;  // masking configured (a reload)
  j = analyzer.analyze(capture("SELECT email FROM customers"));
  EXPECT_EQ(j["relations"], nlohmann::json::array({"public.customers"}));
  EXPECT_EQ(j["protected_columns"], nlohmann::json::array({"public.customers.email"}));
}

TEST_F(AuditAnalyzerTest, MultiStatementQueriesAndTheCache) {
  AuditAnalyzer analyzer(source());
  const std::string sql = "BEGIN; UPDATE customers SET notes = 'Alice Smith' WHERE id = 1; COMMIT";
  EXPECT_EQ(analyzer.analyze(capture(sql, 0))["command"], "BEGIN");
  auto j = analyzer.analyze(capture(sql, 1));
  EXPECT_EQ(j["command"], "UPDATE");
  EXPECT_EQ(j["class"], "WRITE");
  EXPECT_EQ(j["normalized"], "UPDATE customers SET notes = $1 WHERE id = $2");
  EXPECT_EQ(analyzer.analyze(capture(sql, 2))["command"], "COMMIT");
  EXPECT_EQ(analyzer.cache_misses(), 3U);
  analyzer.analyze(capture(sql, 1));
  EXPECT_EQ(analyzer.cache_hits(), 1U);
}

TEST_F(AuditAnalyzerTest, PreparedStatementsAreFoundByTheirTextObject) {
  std::shared_ptr<const rules::Protection> current;
  AuditAnalyzer analyzer([&] { return current; });
  StatementCapture execute = capture("SELECT email FROM customers WHERE id = $1");
  execute.extended = true;
  EXPECT_EQ(analyzer.analyze(execute)["relations"], nlohmann::json::array({"customers"}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(analyzer.analyze(execute)["command"], "SELECT");
  // Every later Execute of the same Parse: no cache lookup by text at all.
  EXPECT_EQ(analyzer.cache_misses(), 1U);
  EXPECT_EQ(analyzer.cache_hits(), 0U);
  // A reload changes the protection: the same text object is analysed anew.
  current = protection_;
  auto j = analyzer.analyze(execute);
  EXPECT_EQ(j["relations"], nlohmann::json::array({"public.customers"}));
  EXPECT_EQ(j["protected_columns"], nlohmann::json::array({"public.customers.email"}));
  // Another statement with equal text (another Parse) shares the analysis
  // through the text cache; one with other text gets its own.
  StatementCapture other = capture("SELECT email FROM customers WHERE id = $1");
  other.extended = true;
  EXPECT_EQ(analyzer.analyze(other)["protected_columns"], j["protected_columns"]);
  StatementCapture orders = capture("SELECT amount FROM orders WHERE id = $1");
  orders.extended = true;
  EXPECT_EQ(analyzer.analyze(orders)["relations"], nlohmann::json::array({"public.orders"}));
  EXPECT_EQ(analyzer.analyze(execute)["protected_columns"], j["protected_columns"]);
}

TEST_F(AuditAnalyzerTest, FetchRecordsNameTheRelationsOfTheirCursor) {
  AuditAnalyzer analyzer(source());
  auto on = [](uint64_t connection, std::string sql) {
    StatementCapture c = capture(std::move(sql));
    c.connection = connection;
    return c;
  };
  auto declare = analyzer.analyze(on(1, "DECLARE big CURSOR FOR SELECT email, ssn FROM customers"));
  EXPECT_EQ(declare["relations"], nlohmann::json::array({"public.customers"}));
  EXPECT_FALSE(declare.contains("cursor"));
  auto fetch = analyzer.analyze(on(1, "FETCH 100 FROM big"));
  EXPECT_EQ(fetch["command"], "FETCH");
  EXPECT_EQ(fetch["relations"], nlohmann::json::array({"public.customers"}));
  EXPECT_EQ(fetch["protected_columns"],
            nlohmann::json::array({"public.customers.email", "public.customers.ssn"}));
  EXPECT_EQ(fetch["cursor"], "big");
  // Another connection's cursor of the same name is another cursor.
  auto other = analyzer.analyze(on(2, "FETCH 100 FROM big"));
  EXPECT_TRUE(other["relations"].empty()) << other.dump();
  EXPECT_FALSE(other.contains("cursor"));
  // Names fold as PostgreSQL folds them; CLOSE forgets.
  EXPECT_EQ(analyzer.analyze(on(1, "FETCH NEXT FROM BIG"))["cursor"], "big");
  analyzer.analyze(on(1, "CLOSE big"));
  EXPECT_TRUE(analyzer.analyze(on(1, "FETCH 100 FROM big"))["relations"].empty());
  // CLOSE ALL (and DISCARD ALL) forget every cursor of the connection.
  analyzer.analyze(on(1, "DECLARE a CURSOR FOR SELECT amount FROM orders"));
  analyzer.analyze(on(1, "DECLARE b CURSOR FOR SELECT phone FROM customers"));
  EXPECT_EQ(analyzer.analyze(on(1, "FETCH ALL FROM a"))["relations"],
            nlohmann::json::array({"public.orders"}));
  analyzer.analyze(on(1, "CLOSE ALL"));
  EXPECT_TRUE(analyzer.analyze(on(1, "FETCH ALL FROM a"))["relations"].empty());
  EXPECT_TRUE(analyzer.analyze(on(1, "FETCH ALL FROM b"))["relations"].empty());
}

TEST_F(AuditAnalyzerTest, SealsTextAndParametersWhenConfigured) {
  AuditAnalyzer analyzer(source(), sealer_);
  const std::string sql = "SELECT 1; SELECT * FROM customers WHERE email = $1 AND full_name = 'Alice Smith'";
  StatementCapture c = capture(sql, 1);
  c.extended = true;
  c.parameters = std::vector<std::optional<std::string>>{std::string("alice@example.com"), std::nullopt,
                                                         std::string("4242424242424242")};
  auto j = analyzer.analyze(c);
  ASSERT_TRUE(j["sealed_text"].is_string());
  ASSERT_TRUE(j["sealed_parameters"].is_string());
  // In the clear: nothing.
  const std::string record = j.dump();
  for (std::string_view v : {"alice@example.com", "Alice Smith", "4242424242424242"}) {
    EXPECT_EQ(record.find(v), std::string::npos) << v << " in " << record;
  }
  // Authorised readers get the statement (this one, not the whole Query)
  // and the bind values, NULL as null.
  auto text = sealer_->unseal(j["sealed_text"].get<std::string>());
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, " SELECT * FROM customers WHERE email = $1 AND full_name = 'Alice Smith'");
  auto params = sealer_->unseal(j["sealed_parameters"].get<std::string>());
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(nlohmann::json::parse(*params),
            nlohmann::json::parse(R"(["alice@example.com", null, "4242424242424242"])"));
  // The same statement again seals differently: no equality oracle.
  auto again = analyzer.analyze(c);
  EXPECT_NE(again["sealed_text"], j["sealed_text"]);
  EXPECT_NE(again["sealed_parameters"], j["sealed_parameters"]);
  // The simple protocol has no bind values.
  auto simple = analyzer.analyze(capture("SELECT 'alice@example.com'"));
  EXPECT_TRUE(simple.contains("sealed_text"));
  EXPECT_FALSE(simple.contains("sealed_parameters"));
  // A parse error seals the whole text.
  auto bad = analyzer.analyze(capture("SELEC 'Alice Smith'"));
  EXPECT_EQ(*sealer_->unseal(bad["sealed_text"].get<std::string>()), "SELEC 'Alice Smith'");
}

TEST_F(AuditAnalyzerTest, BinaryParametersAreKeptExactly) {
  AuditAnalyzer analyzer(source(), sealer_);
  StatementCapture c = capture("SELECT * FROM customers WHERE id = $1");
  c.parameters = std::vector<std::optional<std::string>>{std::string("\x00\x00\x00\x2a\xff", 5)};
  auto j = analyzer.analyze(c);
  auto params = sealer_->unseal(j["sealed_parameters"].get<std::string>());
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(nlohmann::json::parse(*params), nlohmann::json::parse(R"([{"base64": "AAAAKv8="}])"));
}

TEST_F(AuditAnalyzerTest, RecordsAlwaysSerialise) {
  // An identifier in LATIN1 is not UTF-8: the record still dumps.
  AuditAnalyzer analyzer(source());
  auto j = analyzer.analyze(capture("SELECT * FROM caf\xe9 WHERE x = 'caf\xe9'"));
  std::string dumped;
  ASSERT_NO_THROW(dumped = j.dump());
  EXPECT_NE(j["normalized"].get<std::string>().find("caf\xEF\xBF\xBD"), std::string::npos) << dumped;
}

TEST_F(AuditAnalyzerTest, WorksAsTheAuditLogAnalyzer) {
  AuditLog::Analyzer analyzer = make_audit_analyzer(source(), sealer_);
  // The analyzer returns JSON members without braces, appended to records.
  const std::string fields = analyzer(capture("DELETE FROM customers WHERE ssn = '123-45-6789'"));
  EXPECT_EQ(fields.find("123-45-6789"), std::string::npos);
  auto j = nlohmann::json::parse("{" + fields + "}");
  EXPECT_EQ(j["class"], "WRITE");
  EXPECT_EQ(j["protected_columns"], nlohmann::json::array({"public.customers.ssn"}));
  EXPECT_EQ(j.dump().find("123-45-6789"), std::string::npos);
  EXPECT_EQ(*sealer_->unseal(j["sealed_text"].get<std::string>()),
            "DELETE FROM customers WHERE ssn = '123-45-6789'");
  AuditLog::Analyzer plain = make_audit_analyzer(nullptr);
  auto k = nlohmann::json::parse("{" + plain(capture("SELECT email FROM customers")) + "}");
  EXPECT_EQ(k["relations"], nlohmann::json::array({"customers"}));
  EXPECT_FALSE(k.contains("sealed_text"));
}

}  // namespace
}  // namespace pgcloak::proxy
