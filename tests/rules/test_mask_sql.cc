#include "rules/mask_sql.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace pgcloak::rules {
namespace {

ColumnType type_of(uint32_t oid, std::string name, char category, int32_t typmod = -1) {
  return ColumnType{oid, typmod, std::move(name), category};
}

const ColumnType kText = type_of(type_oid::text, "text", 'S');
const ColumnType kVarchar = type_of(type_oid::varchar, "character varying(40)", 'S', 44);
const ColumnType kInt = type_of(type_oid::int4, "integer", 'N');
const ColumnType kNumeric = type_of(type_oid::numeric, "numeric(10,2)", 'N', (10 << 16 | 2) + 4);
const ColumnType kDate = type_of(type_oid::date, "date", 'D');
const ColumnType kTimestamptz = type_of(type_oid::timestamptz, "timestamp with time zone", 'D');
const ColumnType kBool = type_of(type_oid::boolean, "boolean", 'B');
const ColumnType kUuid = type_of(type_oid::uuid, "uuid", 'U');
const ColumnType kBytea = type_of(type_oid::bytea, "bytea", 'U');
const ColumnType kJsonb = type_of(type_oid::jsonb, "jsonb", 'U');
const ColumnType kInet = type_of(869, "inet", 'I');

const std::string kMaster = "master-secret-master-secret-master-secret";
const MaskKeys kKeys = derive_mask_keys(kMaster);

std::string sql(const MaskSpec& spec, const ColumnType& t) {
  auto r = mask_sql_expression(spec, t, "t.\"col\"", kKeys);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : "";
}

Error err(const MaskSpec& spec, const ColumnType& t, const MaskKeys& keys = kKeys) {
  auto r = mask_sql_expression(spec, t, "t.\"col\"", keys);
  EXPECT_FALSE(r.ok());
  return r.ok() ? Error{} : r.error();
}

bool contains(const std::string& hay, std::string_view needle) {
  return hay.find(needle) != std::string::npos;
}

MaskSpec generalize_to(DatePart p) {
  MaskSpec s = MaskSpec::of(MaskKind::generalize);
  s.to = p;
  return s;
}

MaskSpec generalize_bucket(uint64_t b) {
  MaskSpec s = MaskSpec::of(MaskKind::generalize);
  s.bucket = b;
  return s;
}

MaskSpec custom(std::string e) {
  MaskSpec s = MaskSpec::of(MaskKind::custom);
  s.expression = std::move(e);
  return s;
}

MaskSpec masking_nulls(MaskSpec s) {
  s.mask_nulls = true;
  return s;
}

const std::string kGuard = "CASE WHEN ((t.\"col\")) IS NULL THEN NULL";

TEST(QuoteTest, IdentifiersAndLiterals) {
  EXPECT_EQ(quote_ident("email"), "\"email\"");
  EXPECT_EQ(quote_ident("We\"ird"), "\"We\"\"ird\"");
  EXPECT_EQ(quote_literal("it's"), "'it''s'");
  EXPECT_EQ(quote_literal("back\\slash"), "'back\\slash'");  // standard_conforming_strings = on
  EXPECT_EQ(quote_literal(""), "''");
  EXPECT_TRUE(has_nul(std::string_view("a\0b", 3)));
  EXPECT_FALSE(has_nul("ab"));
}

TEST(CastTypeNameTest, BuiltinNonKeywordsAreQualified) {
  EXPECT_EQ(cast_type_name(kText), "pg_catalog.text");
  EXPECT_EQ(cast_type_name(kDate), "pg_catalog.date");
  EXPECT_EQ(cast_type_name(kUuid), "pg_catalog.uuid");
  EXPECT_EQ(cast_type_name(kInt), "integer");  // keyword: no pg_catalog.integer exists
  EXPECT_EQ(cast_type_name(kVarchar), "character varying(40)");
  EXPECT_EQ(cast_type_name(kTimestamptz), "timestamp with time zone");
  EXPECT_EQ(cast_type_name(type_of(40000, "public.mood", 'E')), "public.mood");
}

TEST(MaskSqlTest, EveryExpressionIsACastToTheColumnType) {
  for (auto kind : {MaskKind::allow, MaskKind::redact, MaskKind::null, MaskKind::partial, MaskKind::email,
                    MaskKind::last4, MaskKind::hash, MaskKind::pseudonym, MaskKind::redact_patterns}) {
    std::string e = sql(MaskSpec::of(kind), kVarchar);
    EXPECT_EQ(e.rfind("CAST((", 0), 0U) << to_string(kind);
    EXPECT_TRUE(e.ends_with(") AS character varying(40))")) << e;
    EXPECT_FALSE(contains(e, "\\")) << e;  // no backslashes: safe whatever standard_conforming_strings says
  }
}

TEST(MaskSqlTest, NullGuardForValueMasks) {
  for (auto kind : {MaskKind::partial, MaskKind::email, MaskKind::last4, MaskKind::hash, MaskKind::pseudonym,
                    MaskKind::redact_patterns}) {
    EXPECT_TRUE(contains(sql(MaskSpec::of(kind), kText), kGuard)) << to_string(kind);
  }
  // mask_nulls: true on redact keeps the bare constant: NULL reads like a value.
  EXPECT_FALSE(contains(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kText), "IS NULL"));
}

// Issue 17: a constant must not turn NULL into a value, or count(col),
// col IS NULL and coalesce(col, ...) answer wrongly for masked roles.
TEST(MaskSqlTest, NullStaysNullUnderEveryMask) {
  EXPECT_EQ(sql(MaskSpec::of(MaskKind::redact), kText),
            "CAST((CASE WHEN ((t.\"col\")) IS NULL THEN NULL ELSE CAST(('***') AS pg_catalog.text) END) AS "
            "pg_catalog.text)");
  for (const ColumnType& t :
       {kText, kVarchar, kInt, kNumeric, kDate, kTimestamptz, kBool, kUuid, kBytea, kJsonb}) {
    EXPECT_TRUE(sql(MaskSpec::of(MaskKind::redact), t).starts_with("CAST((" + kGuard + " ELSE CAST(("))
        << t.sql_name;
  }
  MaskSpec v = MaskSpec::of(MaskKind::redact);
  v.value = "n/a";
  EXPECT_TRUE(contains(sql(v, kText), kGuard + " ELSE CAST(('n/a') AS pg_catalog.text) END"));
  // A type whose constant is NULL needs no guard: every row reads NULL.
  EXPECT_EQ(sql(MaskSpec::of(MaskKind::redact), kInet), "CAST((NULL) AS pg_catalog.inet)");
  EXPECT_EQ(sql(MaskSpec::of(MaskKind::null), kText), "CAST((NULL) AS pg_catalog.text)");
  // custom: the expression never sees a NULL (coalesce would make it a value).
  EXPECT_EQ(sql(custom("coalesce({value}, 'none')"), kText),
            "CAST((" + kGuard + " ELSE (coalesce((t.\"col\"), 'none')) END) AS pg_catalog.text)");
  // Every other mask, on every type it applies to.
  for (const ColumnType& t : {kText, kVarchar}) {
    for (auto kind : {MaskKind::partial, MaskKind::email, MaskKind::last4, MaskKind::hash,
                      MaskKind::pseudonym, MaskKind::redact_patterns}) {
      EXPECT_TRUE(contains(sql(MaskSpec::of(kind), t), kGuard)) << to_string(kind) << " " << t.sql_name;
    }
  }
  EXPECT_TRUE(contains(sql(MaskSpec::of(MaskKind::hash), kInt), kGuard));
  EXPECT_TRUE(contains(sql(MaskSpec::of(MaskKind::hash), kNumeric), kGuard));
  EXPECT_TRUE(contains(sql(generalize_to(DatePart::year), kDate), kGuard));
  EXPECT_TRUE(contains(sql(generalize_to(DatePart::day), kDate), kGuard));
  EXPECT_TRUE(contains(sql(generalize_to(DatePart::month), kTimestamptz), kGuard));
  EXPECT_TRUE(contains(sql(generalize_bucket(10), kInt), kGuard));
  EXPECT_EQ(sql(MaskSpec::of(MaskKind::allow), kText), "CAST(((t.\"col\")) AS pg_catalog.text)");
}

TEST(MaskSqlTest, MaskNullsGivesNullTheMaskOrIsRefused) {
  // redact: NULL reads as the same constant as every other value.
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kText), "CAST(('***') AS pg_catalog.text)");
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kDate),
            "CAST(('1900-01-01') AS pg_catalog.date)");
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::null)), kInt), "CAST((NULL) AS integer)");
  // custom: the expression gets the NULL and decides.
  EXPECT_EQ(sql(masking_nulls(custom("coalesce({value}, 'none')")), kText),
            "CAST((coalesce((t.\"col\"), 'none')) AS pg_catalog.text)");
  // Masks computed from the value have nothing to compute for a NULL: the
  // column is refused (fail closed) rather than shown with NULLs apparent.
  for (const auto& spec :
       {MaskSpec::of(MaskKind::allow), MaskSpec::of(MaskKind::partial), MaskSpec::of(MaskKind::email),
        MaskSpec::of(MaskKind::last4), MaskSpec::of(MaskKind::hash), MaskSpec::of(MaskKind::pseudonym),
        MaskSpec::of(MaskKind::redact_patterns), generalize_to(DatePart::year)}) {
    const ColumnType& t = spec.kind == MaskKind::generalize ? kDate : kText;
    Error e = err(masking_nulls(spec), t);
    EXPECT_EQ(e.sqlstate, sqlstate::insufficient_privilege) << to_string(spec.kind);
    EXPECT_TRUE(contains(e.message, "mask_nulls")) << e.message;
    EXPECT_TRUE(contains(e.message, "\"" + std::string(to_string(spec.kind)) + "\"")) << e.message;
  }
  EXPECT_TRUE(mask_nulls_supported(MaskKind::redact));
  EXPECT_TRUE(mask_nulls_supported(MaskKind::null));
  EXPECT_TRUE(mask_nulls_supported(MaskKind::custom));
  EXPECT_FALSE(mask_nulls_supported(MaskKind::hash));
  EXPECT_FALSE(mask_nulls_supported(MaskKind::allow));
  EXPECT_FALSE(mask_nulls_supported(MaskKind::deny));
}

TEST(MaskSqlTest, FunctionsAndOperatorsAreQualified) {
  std::string e = sql(MaskSpec::of(MaskKind::email), kText);
  EXPECT_TRUE(contains(e, "pg_catalog.strpos("));
  EXPECT_TRUE(contains(e, "OPERATOR(pg_catalog.||)"));
  EXPECT_FALSE(contains(e, " || "));
  std::string h = sql(MaskSpec::of(MaskKind::hash), kText);
  EXPECT_TRUE(contains(h, "pg_catalog.sha256("));
  EXPECT_TRUE(contains(h, "pg_catalog.convert_to(CAST(((t.\"col\")) AS pg_catalog.text), 'UTF8')"));
}

TEST(MaskSqlTest, RedactConstantsPerType) {
  // With mask_nulls the constant stands alone; without it, the same constant
  // sits in the ELSE branch of the NULL guard.
  auto redact = [](const ColumnType& t, std::string constant, std::optional<std::string> value = {}) {
    MaskSpec s = MaskSpec::of(MaskKind::redact);
    s.value = std::move(value);
    const std::string bare = "CAST((" + constant + ") AS " + cast_type_name(t) + ")";
    EXPECT_EQ(sql(masking_nulls(s), t), bare);
    EXPECT_EQ(sql(s, t), "CAST((" + kGuard + " ELSE " + bare + " END) AS " + cast_type_name(t) + ")");
  };
  redact(kText, "'***'");
  redact(kText, "'it''s hidden'", "it's hidden");
  redact(kInt, "0");
  redact(kNumeric, "0");
  redact(kDate, "'1900-01-01'");
  redact(kBool, "false");
  redact(kUuid, "'00000000-0000-0000-0000-000000000000'");
  redact(kBytea, "pg_catalog.decode('', 'hex')");
  redact(kJsonb, "'{}'");
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kText), "CAST(('***') AS pg_catalog.text)");
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kInt), "CAST((0) AS integer)");
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kNumeric), "CAST((0) AS numeric(10,2))");
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kBool), "CAST((false) AS boolean)");
  EXPECT_EQ(sql(MaskSpec::of(MaskKind::redact), kInet), "CAST((NULL) AS pg_catalog.inet)");
  EXPECT_EQ(sql(masking_nulls(MaskSpec::of(MaskKind::redact)), kInet), "CAST((NULL) AS pg_catalog.inet)");
  EXPECT_EQ(sql(MaskSpec::of(MaskKind::null), kInt), "CAST((NULL) AS integer)");
}

TEST(MaskSqlTest, PartialUsesItsParameters) {
  MaskSpec p = MaskSpec::of(MaskKind::partial);
  p.keep_first = 2;
  p.keep_last = 3;
  p.fill = "#";
  std::string e = sql(p, kText);
  EXPECT_TRUE(contains(e, "OPERATOR(pg_catalog.<=) 5)"));
  EXPECT_TRUE(contains(e, "pg_catalog.left(CAST(((t.\"col\")) AS pg_catalog.text), 2)"));
  EXPECT_TRUE(contains(e, "pg_catalog.right(CAST(((t.\"col\")) AS pg_catalog.text), 3)"));
  EXPECT_TRUE(contains(e, "pg_catalog.repeat('#'"));
  p.fill = "'";
  EXPECT_TRUE(contains(sql(p, kText), "pg_catalog.repeat(''''"));
  p.keep_first = -1;
  EXPECT_FALSE(mask_sql_expression(p, kText, "v", kKeys).ok());
}

TEST(MaskSqlTest, HashNeverContainsTheMasterKey) {
  std::string e = sql(MaskSpec::of(MaskKind::hash), kText);
  EXPECT_FALSE(contains(e, kMaster));
  EXPECT_FALSE(contains(e, to_hex(reinterpret_cast<const uint8_t*>(kMaster.data()), kMaster.size())));
  EXPECT_FALSE(contains(e, to_hex(kKeys.hash_key.data(), 32)));  // only the pads
  EXPECT_TRUE(contains(e, ", 1, 16)"));
  MaskSpec eight = MaskSpec::of(MaskKind::hash);
  eight.length = 8;
  EXPECT_TRUE(contains(sql(eight, kText), ", 1, 8)"));
}

TEST(MaskSqlTest, HashOnNumbersMapsIntoTheType) {
  EXPECT_TRUE(contains(sql(MaskSpec::of(MaskKind::hash), kInt), "AS bit(32))) AS integer)"));
  std::string n = sql(MaskSpec::of(MaskKind::hash), kNumeric);
  EXPECT_TRUE(contains(n, "pg_catalog.mod("));
  EXPECT_TRUE(contains(n, "10000000000)"));                 // 10^precision
  EXPECT_TRUE(contains(n, "OPERATOR(pg_catalog./) 100)"));  // 10^scale
}

TEST(MaskSqlTest, GeneralizeShapes) {
  EXPECT_TRUE(contains(sql(generalize_to(DatePart::month), kTimestamptz),
                       "pg_catalog.date_trunc('month', CAST(((t.\"col\")) AS timestamp with time zone))"));
  std::string d = sql(generalize_to(DatePart::year), kDate);
  EXPECT_TRUE(contains(d, "pg_catalog.isfinite("));  // infinity stays infinity
  EXPECT_FALSE(contains(d, "timestamp"));            // dates never go through timestamp's smaller range
  std::string b = sql(generalize_bucket(1000), kInt);
  EXPECT_TRUE(
      contains(b, "pg_catalog.div(CAST(((t.\"col\")) AS numeric), 1000) OPERATOR(pg_catalog.*) 1000"));
}

TEST(MaskSqlTest, RedactPatternsOrderCardsBeforePhones) {
  const auto& p = redact_patterns();
  ASSERT_EQ(p.size(), 4U);
  EXPECT_EQ(p[0].replacement, "[email]");
  EXPECT_EQ(p[1].replacement, "[card]");
  EXPECT_EQ(p[2].replacement, "[national_id]");
  EXPECT_EQ(p[3].replacement, "[phone]");
  std::string e = sql(MaskSpec::of(MaskKind::redact_patterns), kText);
  // Nested calls: the innermost (applied first) appears first in the text.
  EXPECT_LT(e.find("[email]"), e.find("[card]"));
  EXPECT_LT(e.find("[card]"), e.find("[phone]"));
}

TEST(MaskSqlTest, MismatchedTypesAreRefusedNamingMaskAndType) {
  struct Case {
    MaskSpec spec;
    ColumnType type;
    std::string mask;
  };
  for (const auto& c : std::vector<Case>{
           {MaskSpec::of(MaskKind::email), kDate, "email"},
           {MaskSpec::of(MaskKind::last4), kInt, "last4"},
           {MaskSpec::of(MaskKind::partial), kUuid, "partial"},
           {MaskSpec::of(MaskKind::pseudonym), kInt, "pseudonym"},
           {MaskSpec::of(MaskKind::redact_patterns), kJsonb, "redact_patterns"},
           {MaskSpec::of(MaskKind::hash), kDate, "hash"},
           {MaskSpec::of(MaskKind::hash), kBool, "hash"},
           {generalize_to(DatePart::year), kText, "generalize"},
           {generalize_bucket(10), kDate, "generalize"},
           {generalize_bucket(10), type_of(type_oid::float8, "double precision", 'N'), "generalize"}}) {
    Error e = err(c.spec, c.type);
    EXPECT_EQ(e.sqlstate, sqlstate::insufficient_privilege);
    EXPECT_TRUE(contains(e.message, "\"" + c.mask + "\"")) << e.message;
    EXPECT_TRUE(contains(e.message, c.type.sql_name)) << e.message;
  }
  EXPECT_TRUE(contains(err(MaskSpec::of(MaskKind::hash), kDate).hint, "redact or null"));
}

TEST(MaskSqlTest, DenyHasNoExpressionAndKeyedMasksNeedAKey) {
  EXPECT_TRUE(contains(err(MaskSpec::of(MaskKind::deny), kText).message, "deny"));
  EXPECT_TRUE(contains(err(MaskSpec::of(MaskKind::hash), kText, MaskKeys{}).message, "needs a key"));
  EXPECT_TRUE(contains(err(MaskSpec::of(MaskKind::pseudonym), kText, MaskKeys{}).message, "needs a key"));
  EXPECT_FALSE(mask_sql_expression(MaskSpec::of(MaskKind::redact), ColumnType{}, "v", kKeys).ok());
}

TEST(MaskSqlTest, CustomTemplateIsSubstitutedAndCast) {
  EXPECT_EQ(sql(masking_nulls(custom("upper({value}) || '-' || lower({value})")), kText),
            "CAST((upper((t.\"col\")) || '-' || lower((t.\"col\"))) AS pg_catalog.text)");
  EXPECT_EQ(
      sql(custom("upper({value}) || '-' || lower({value})"), kText),
      "CAST((" + kGuard + " ELSE (upper((t.\"col\")) || '-' || lower((t.\"col\"))) END) AS pg_catalog.text)");
  EXPECT_FALSE(mask_sql_expression(custom("pg_sleep(1)"), kText, "v", kKeys).ok());
}

TEST(CustomValidationTest, AcceptsPlainExpressions) {
  for (std::string e : {"upper({value})", "pg_catalog.left({value}, 2) || '...'", "coalesce({value}, 'none')",
                        "CASE WHEN {value} LIKE '%@%' THEN 'email' ELSE 'other' END",
                        "substring({value} from 1 for 3)", "extract(year from {value})", "md5({value}::text)",
                        "{value} /* a comment */", "round({value}, -3)"}) {
    auto s = validate_custom_expression(e, {});
    EXPECT_TRUE(s.ok()) << e << ": " << (s.ok() ? "" : s.error().message);
  }
}

TEST(CustomValidationTest, RefusesWhatCouldReadOrLeak) {
  struct Case {
    std::string expr;
    std::string why;
  };
  for (const auto& c : std::vector<Case>{
           {"", "empty"},
           {"'constant'", "must use {value}"},
           {"(SELECT secret FROM t) || {value}", "subqueries"},
           {"{value} || (SELECT 1)", "subqueries"},
           {"EXISTS (SELECT 1) OR {value} IS NULL", "subqueries"},
           {"other_col || {value}", "other than {value}"},
           {"{value} || t.other", "other than {value}"},
           {"query_to_xml('select 1', true, true, '') || {value}", "query_to_xml"},
           {"pg_catalog.query_to_xml('select 1', true, true, '') || {value}", "not allowed"},
           {"pg_sleep(1) || {value}", "pg_sleep"},
           {"dblink_exec('x') || {value}", "dblink"},
           {"pg_read_file('/etc/passwd') || {value}", "pg_read_file"},
           {"lo_get(1) || {value}", "lo_get"},
           {"set_config('role', 'x', false) || {value}", "set_config"},
           {"public.f({value})", "not allowed"},
           {"now()::text || {value}", "not allowed"},
           {"count({value})", "not allowed"},
           {"sum(length({value})) OVER ()", "window"},
           {"{value}) FROM t --", "single expression"},
           {"{value}); DROP TABLE t; SELECT (1", "exactly one"},
           {"{value}, 1", "row"},
           {"{value} AS x", "parse"},
           {"'{value}'", "only stand for a value"},
           {"{value} -- {value}", "parse"},
           {"$1 || {value}", "parameters"},
           {"{value} OPERATOR(public.+) 1", "operators"},
           {"pgcloak_mask_value_placeholder || {value}", "placeholder"},
       }) {
    auto s = validate_custom_expression(c.expr, {});
    ASSERT_FALSE(s.ok()) << c.expr;
    EXPECT_TRUE(contains(s.error().message, c.why)) << c.expr << ": " << s.error().message;
    EXPECT_EQ(s.error().sqlstate, sqlstate::insufficient_privilege);
  }
}

TEST(CustomValidationTest, AllowlistedFunctionsOutsidePgCatalog) {
  EXPECT_FALSE(validate_custom_expression("util.mask_iban({value})", {}).ok());
  EXPECT_TRUE(validate_custom_expression("util.mask_iban({value})", {"util.mask_iban"}).ok());
  // Some functions are refused even when listed.
  EXPECT_FALSE(validate_custom_expression("public.dblink({value})", {"public.dblink"}).ok());
}

}  // namespace
}  // namespace pgcloak::rules
