#include "rules/mask_value.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pgcloak::rules {
namespace {

ColumnType type_of(uint32_t oid, std::string name, char category, int32_t typmod = -1) {
  return ColumnType{oid, typmod, std::move(name), category};
}

const ColumnType kText = type_of(type_oid::text, "text", 'S');
const ColumnType kVarchar5 = type_of(type_oid::varchar, "character varying(5)", 'S', 9);
const ColumnType kChar6 = type_of(type_oid::bpchar, "character(6)", 'S', 10);
const ColumnType kInt2 = type_of(type_oid::int2, "smallint", 'N');
const ColumnType kInt4 = type_of(type_oid::int4, "integer", 'N');
const ColumnType kInt8 = type_of(type_oid::int8, "bigint", 'N');
const ColumnType kNumeric10_2 = type_of(type_oid::numeric, "numeric(10,2)", 'N', (10 << 16 | 2) + 4);
const ColumnType kNumeric = type_of(type_oid::numeric, "numeric", 'N');
const ColumnType kDate = type_of(type_oid::date, "date", 'D');
const ColumnType kTimestamp = type_of(type_oid::timestamp, "timestamp without time zone", 'D');
const ColumnType kTimestamptz = type_of(type_oid::timestamptz, "timestamp with time zone", 'D');

const MaskKeys kKeys = derive_mask_keys("master-secret-master-secret-master-secret");

std::optional<std::string> mask(const MaskSpec& s, const ColumnType& t, std::string_view v) {
  return mask_text_value(s, t, v, kKeys);
}

MaskSpec of(MaskKind k) {
  return MaskSpec::of(k);
}

MaskSpec to(DatePart p) {
  MaskSpec s = of(MaskKind::generalize);
  s.to = p;
  return s;
}

MaskSpec bucket(uint64_t b) {
  MaskSpec s = of(MaskKind::generalize);
  s.bucket = b;
  return s;
}

TEST(HmacTest, MatchesAReferenceImplementation) {
  std::array<uint8_t, 32> key{};
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i);
  auto h = hmac_sha256(key, "pgcloak");
  EXPECT_EQ(to_hex(h.data(), h.size()), "0c5161905c1f98699d445e9a43b59657aac5e8556f0ce4ad2748c4712921b441");
  // Derived, not the master key (Python: hmac.new(master, b"pgcloak mask hash v1", sha256)).
  EXPECT_EQ(to_hex(kKeys.hash_key.data(), 32),
            "028aa81177428d5534fdb6dd268bc542739330ae5ad7353422b1d9406fecaace");
  EXPECT_NE(kKeys.hash_key, kKeys.pseudonym_key);
}

TEST(MaskValueTest, Partial) {
  EXPECT_EQ(mask_partial("abcdefgh", 1, 2, "*"), "a*****gh");
  EXPECT_EQ(mask_partial("abc", 1, 2, "*"), "***");
  EXPECT_EQ(mask_partial("ab", 1, 2, "*"), "**");
  EXPECT_EQ(mask_partial("", 1, 2, "*"), "");
  EXPECT_EQ(mask_partial("0612345678", 0, 2, "*"), "********78");
  EXPECT_EQ(mask_partial("日本語テキスト", 0, 2, "•"), "•••••スト");  // characters, not bytes
  MaskSpec p = of(MaskKind::partial);
  p.keep_first = 1;
  p.keep_last = 1;
  EXPECT_EQ(mask(p, kText, "secret"), "s****t");
}

TEST(MaskValueTest, Email) {
  EXPECT_EQ(mask_email("jane.doe@example.com"), "j***@example.com");
  EXPECT_EQ(mask_email("no-at-sign"), "***");
  EXPECT_EQ(mask_email(""), "***");
  EXPECT_EQ(mask_email("a@b@c.example.org"), "a***@c.example.org");  // domain = after the last @
  EXPECT_EQ(mask_email("@"), "@***@");
  EXPECT_EQ(mask_email("élise@exemple.fr"), "é***@exemple.fr");
}

TEST(MaskValueTest, Last4) {
  EXPECT_EQ(mask_last4("4242-4242-4242-4242"), "****-****-****-4242");
  EXPECT_EQ(mask_last4("4242 4242 4242 4242"), "**** **** **** 4242");
  EXPECT_EQ(mask_last4("1234"), "1234");
  EXPECT_EQ(mask_last4("12a345"), "*2a345");
  EXPECT_EQ(mask_last4("no digits"), "no digits");
}

TEST(MaskValueTest, RedactPatterns) {
  EXPECT_EQ(mask_redact_patterns("mail jane@example.com, card 4242 4242 4242 4242, ssn 123-45-6789, "
                                 "tel +1 (555) 123-4567."),
            "mail [email], card [card], ssn [national_id], tel [phone].");
  EXPECT_EQ(mask_redact_patterns("4111111111111111"), "[card]");
  EXPECT_EQ(mask_redact_patterns("4111-1111-1111-1111"), "[card]");                 // not [phone]-[phone]
  EXPECT_EQ(mask_redact_patterns("12345678901234567890"), "12345678901234567890");  // 20 digits: neither
  EXPECT_EQ(mask_redact_patterns("order 12345 shipped"), "order 12345 shipped");
  EXPECT_EQ(mask_redact_patterns("a@b@c.example.org"), "a@[email]");
  EXPECT_EQ(mask_redact_patterns("bad@domain"), "bad@domain");
  EXPECT_EQ(mask_redact_patterns("555-123-4567 and 06 12 34 56 78"), "[phone] and [phone]");
  EXPECT_EQ(mask_redact_patterns("(555)1234567"), "[phone]");
  EXPECT_EQ(mask_redact_patterns(""), "");
}

TEST(MaskValueTest, RedactConstantsPerType) {
  EXPECT_EQ(mask(of(MaskKind::redact), kText, "secret"), "***");
  EXPECT_EQ(mask(of(MaskKind::redact), kChar6, "secret"), "***   ");  // character(n) pads
  MaskSpec long_value = of(MaskKind::redact);
  long_value.value = "[redacted]";
  EXPECT_EQ(mask(long_value, kVarchar5, "x"), "[reda");  // an explicit cast truncates
  EXPECT_EQ(mask(of(MaskKind::redact), kInt4, "42"), "0");
  EXPECT_EQ(mask(of(MaskKind::redact), kNumeric10_2, "42.00"), "0.00");
  EXPECT_EQ(mask(of(MaskKind::redact), kDate, "2024-01-01"), "1900-01-01");
  EXPECT_EQ(mask(of(MaskKind::redact), kTimestamptz, "2024-01-01 00:00:00+00"), "1900-01-01 00:00:00+00");
  EXPECT_EQ(mask(of(MaskKind::redact), type_of(type_oid::boolean, "boolean", 'B'), "t"), "f");
  EXPECT_EQ(mask(of(MaskKind::redact), type_of(type_oid::bytea, "bytea", 'U'), "\\x01"), "\\x");
  EXPECT_EQ(mask(of(MaskKind::redact), type_of(869, "inet", 'I'), "10.0.0.1"), std::nullopt);
  MaskSpec redact_nulls = of(MaskKind::redact);
  redact_nulls.mask_nulls = true;
  EXPECT_EQ(mask_null_value(redact_nulls, kText), "***");
  EXPECT_EQ(mask_null_value(of(MaskKind::email), kText), std::nullopt);
  EXPECT_EQ(mask(of(MaskKind::null), kText, "x"), std::nullopt);
  EXPECT_EQ(mask(of(MaskKind::deny), kText, "x"), std::nullopt);
  EXPECT_EQ(mask(of(MaskKind::allow), kText, "x"), "x");
}

// Issue 17: NULL stays NULL in result rows too (output masking and the
// backstop ask mask_null_value() what a NULL becomes), unless the rule sets
// mask_nulls: true; then it is what the SQL mask gives a NULL.
TEST(MaskValueTest, NullStaysNullUnlessMaskNulls) {
  const ColumnType kBool = type_of(type_oid::boolean, "boolean", 'B');
  MaskSpec c = of(MaskKind::custom);
  c.expression = "coalesce({value}, 'none')";
  std::vector<MaskSpec> specs{of(MaskKind::allow),
                              of(MaskKind::deny),
                              of(MaskKind::redact),
                              of(MaskKind::null),
                              of(MaskKind::partial),
                              of(MaskKind::email),
                              of(MaskKind::last4),
                              of(MaskKind::hash),
                              of(MaskKind::pseudonym),
                              to(DatePart::year),
                              bucket(10),
                              of(MaskKind::redact_patterns),
                              c};
  MaskSpec v = of(MaskKind::redact);
  v.value = "n/a";
  specs.push_back(v);
  for (const auto& spec : specs) {
    for (const ColumnType& t : {kText, kVarchar5, kChar6, kInt4, kNumeric10_2, kDate, kTimestamptz, kBool}) {
      EXPECT_EQ(mask_null_value(spec, t), std::nullopt) << to_string(spec.kind) << " on " << t.sql_name;
    }
  }
  auto nulls = [](MaskSpec s) {
    s.mask_nulls = true;
    return s;
  };
  // redact: the same constant a non-NULL gets, per type.
  for (const ColumnType& t : {kText, kVarchar5, kChar6, kInt4, kNumeric10_2, kDate, kTimestamptz, kBool}) {
    EXPECT_EQ(mask_null_value(nulls(of(MaskKind::redact)), t), mask(of(MaskKind::redact), t, "x"))
        << t.sql_name;
  }
  EXPECT_EQ(mask_null_value(nulls(of(MaskKind::redact)), kChar6), "***   ");
  EXPECT_EQ(mask_null_value(nulls(v), kText), "n/a");
  EXPECT_EQ(mask_null_value(nulls(of(MaskKind::redact)), kDate), "1900-01-01");
  EXPECT_EQ(mask_null_value(nulls(of(MaskKind::redact)), type_of(869, "inet", 'I')), std::nullopt);
  // null stays NULL; custom has no C++ copy, so NULL as for any value.
  EXPECT_EQ(mask_null_value(nulls(of(MaskKind::null)), kText), std::nullopt);
  EXPECT_EQ(mask_null_value(nulls(c), kText), std::nullopt);
}

TEST(MaskValueTest, CharNLosesTrailingBlanksThenPads) {
  EXPECT_EQ(mask(of(MaskKind::email), kChar6, "a@b   "), "a***@b");
  EXPECT_EQ(mask(of(MaskKind::last4), kChar6, "12    "), "12    ");
  EXPECT_EQ(mask(of(MaskKind::email), kVarchar5, "jane@example.com"), "j***@");
}

TEST(MaskValueTest, HashIsKeyedDeterministicAndSized) {
  EXPECT_EQ(mask(of(MaskKind::hash), kText, "jane.doe@example.com"), "938ce7e33b20fc74");
  EXPECT_EQ(mask(of(MaskKind::hash), kText, "x"), mask(of(MaskKind::hash), kText, "x"));
  EXPECT_NE(mask(of(MaskKind::hash), kText, "x"), mask(of(MaskKind::hash), kText, "y"));
  EXPECT_NE(mask_text_value(of(MaskKind::hash), kText, "x", derive_mask_keys(std::string(40, 'z'))),
            mask(of(MaskKind::hash), kText, "x"));
  MaskSpec h = of(MaskKind::hash);
  h.length = 64;
  EXPECT_EQ(mask(h, kText, "x")->size(), 64U);
  EXPECT_EQ(mask(of(MaskKind::hash), kChar6, "x     "), mask(of(MaskKind::hash), kText, "x")->substr(0, 6));
  EXPECT_EQ(mask_text_value(of(MaskKind::hash), kText, "x", MaskKeys{}), std::nullopt);  // no key, no value
}

TEST(MaskValueTest, HashOnNumbersStaysInRange) {
  EXPECT_EQ(mask(of(MaskKind::hash), kInt8, "12345"), "3544757310472680891");
  EXPECT_EQ(mask(of(MaskKind::hash), kInt4, "12345"), "825328126");
  EXPECT_EQ(mask(of(MaskKind::hash), kInt2, "12345"), std::to_string(825328126 >> 16));
  for (int i = 0; i < 200; ++i) {
    long v = std::stol(*mask(of(MaskKind::hash), kInt2, std::to_string(i)));
    EXPECT_GE(v, -32768);
    EXPECT_LE(v, 32767);
    std::string n = *mask(of(MaskKind::hash), kNumeric10_2, std::to_string(i));
    ASSERT_NE(n.find('.'), std::string::npos);
    EXPECT_EQ(n.size() - n.find('.'), 3U);  // two decimals
    EXPECT_LE(n.find('.'), 8U);             // below 10^8
  }
  EXPECT_EQ(mask(of(MaskKind::hash), kDate, "2024-01-01"), std::nullopt);
}

TEST(MaskValueTest, Pseudonyms) {
  MaskSpec p = of(MaskKind::pseudonym);
  std::string name = *mask(p, kText, "Jane Doe");
  EXPECT_EQ(name, *mask(p, kText, "Jane Doe"));
  ASSERT_NE(name.find(' '), std::string::npos);
  p.pseudonym_kind = PseudonymKind::email;
  std::string email = *mask(p, kText, "jane@example.com");
  EXPECT_TRUE(email.ends_with("@example.net")) << email;
  EXPECT_NE(email.find('.'), email.find('@') - 3);  // first.last<nn>
  EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(email[email.find('@') - 1])));
  p.pseudonym_kind = PseudonymKind::first_name;
  EXPECT_EQ(mask(p, kText, "Jane Doe"), name.substr(0, name.find(' ')));
  p.pseudonym_kind = PseudonymKind::last_name;
  EXPECT_EQ(mask(p, kText, "Jane Doe"), name.substr(name.find(' ') + 1));
  EXPECT_EQ(pseudonym_first_names().size(), 50U);
  EXPECT_EQ(pseudonym_last_names().size(), 50U);
}

TEST(MaskValueTest, GeneralizeDates) {
  EXPECT_EQ(mask(to(DatePart::year), kDate, "1987-06-05"), "1987-01-01");
  EXPECT_EQ(mask(to(DatePart::month), kDate, "1987-06-05"), "1987-06-01");
  EXPECT_EQ(mask(to(DatePart::day), kDate, "1987-06-05"), "1987-06-05");
  EXPECT_EQ(mask(to(DatePart::year), kDate, "infinity"), "infinity");
  EXPECT_EQ(mask(to(DatePart::year), kDate, "0044-03-15 BC"), "0044-01-01 BC");
  EXPECT_EQ(mask(to(DatePart::year), kDate, "5874897-12-31"), "5874897-01-01");
  EXPECT_EQ(mask(to(DatePart::month), kTimestamp, "2024-03-15 10:22:33.123456"), "2024-03-01 00:00:00");
  EXPECT_EQ(mask(to(DatePart::day), kTimestamptz, "2024-03-15 10:22:33+05:30"), "2024-03-15 00:00:00+05:30");
  EXPECT_EQ(mask(to(DatePart::year), kTimestamptz, "0044-03-15 10:00:00+00 BC"), "0044-01-01 00:00:00+00 BC");
  EXPECT_EQ(mask(to(DatePart::year), kText, "1987-06-05"), std::nullopt);
}

TEST(MaskValueTest, GeneralizeNumbersTruncateTowardZero) {
  EXPECT_EQ(mask(bucket(1000), kInt4, "12345"), "12000");
  EXPECT_EQ(mask(bucket(1000), kInt4, "-12345"), "-12000");
  EXPECT_EQ(mask(bucket(1000), kInt4, "-999"), "0");
  EXPECT_EQ(mask(bucket(7), kInt8, "-9223372036854775808"), "-9223372036854775807");
  EXPECT_EQ(mask(bucket(1000), kNumeric10_2, "12345.67"), "12000.00");
  EXPECT_EQ(mask(bucket(1000), kNumeric10_2, "-99999999.99"), "-99999000.00");  // never past the type's range
  EXPECT_EQ(mask(bucket(10), kNumeric, "123456789012345678901234567890.5"), "123456789012345678901234567890");
  EXPECT_EQ(mask(bucket(10), kNumeric, "NaN"), "NaN");
  EXPECT_EQ(mask(bucket(10), kDate, "2024-01-01"), std::nullopt);
}

TEST(MaskValueTest, CustomHasNoCppCopy) {
  MaskSpec c = of(MaskKind::custom);
  c.expression = "upper({value})";
  EXPECT_EQ(mask(c, kText, "x"), std::nullopt);
}

}  // namespace
}  // namespace pgcloak::rules
