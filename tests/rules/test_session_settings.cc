// Which settings a masked session may have and change (rules/
// session_settings.h): encodings by every name PostgreSQL accepts, the
// start-up allow-list, and the reading under which statements are analysed.
#include "rules/session_settings.h"

#include <gtest/gtest.h>

#include "tests/support/shop_policy.h"

namespace pgcloak::rules {
namespace {

TEST(SessionSettingsTest, EncodingsAsPostgresNamesThem) {
  for (const char* e : {"SJIS", "sjis", "Shift_JIS", "SHIFT-JIS", "mskanji", "WIN932", "windows-932",
                        "SHIFT_JIS_2004", "BIG5", "Big-5", "win950", "GBK", "CP936" /* unknown */, "win936",
                        "UHC", "win949", "GB18030", "JOHAB"}) {
    EXPECT_NE(encoding_reading(e), EncodingReading::same) << e;
  }
  EXPECT_EQ(encoding_reading("SJIS"), EncodingReading::client_only);
  EXPECT_EQ(encoding_reading("gb-18030"), EncodingReading::client_only);
  EXPECT_EQ(encoding_reading("CP936"), EncodingReading::unknown);
  EXPECT_EQ(encoding_reading(""), EncodingReading::unknown);
  EXPECT_EQ(encoding_reading("auto"), EncodingReading::unknown);
  for (const char* e :
       {"UTF8", "utf-8", "Unicode", "LATIN1", "ISO_8859_5", "iso-8859-15", "EUC_JP", "EUC_JIS_2004", "euc-kr",
        "WIN1252", "windows-1251", "KOI8R", "KOI8U", "SQL_ASCII", "MULE_INTERNAL", "WIN866", "TCVN"}) {
    EXPECT_EQ(encoding_reading(e), EncodingReading::same) << e;
  }
}

TEST(SessionSettingsTest, MaskedStartupAllowList) {
  for (auto [name, value] : std::vector<std::pair<const char*, const char*>>{
           {"application_name", "psql"},
           {"client_encoding", "UTF8"},
           {"client_encoding", "utf-8"},
           {"datestyle", "ISO, MDY"},
           {"timezone", "UTC"},
           {"extra_float_digits", "3"},
           {"search_path", "public"},
           {"statement_timeout", "5s"},
           {"client_min_messages", "warning"},
           {"standard_conforming_strings", "on"},
       }) {
    EXPECT_FALSE(masked_startup_refusal(name, value).has_value()) << name << "=" << value;
  }
  for (auto [name, value] : std::vector<std::pair<const char*, const char*>>{
           {"role", "bi_readers"},
           {"session_authorization", "postgres"},
           {"debug_print_rewritten", "on"},
           {"debug_pretty_print", "on"},
           {"trace_sort", "on"},
           {"client_min_messages", "log"},
           {"client_min_messages", "debug2"},
           {"standard_conforming_strings", "off"},
           {"backslash_quote", "on"},
           {"client_encoding", "SJIS"},
           {"client_encoding", "GB18030"},
           {"client_encoding", "nonsense"},
           {"options", "-c role=x"},
           {"log_statement", "all"},
           {"work_mem_x", "1"},
           {"pgcloak.anything", "1"},
           {"", ""},
       }) {
    EXPECT_TRUE(masked_startup_refusal(name, value).has_value()) << name << "=" << value;
  }
}

TEST(SessionSettingsTest, ReadingFollowsParameterStatus) {
  SessionReading r;
  r.note("client_encoding", "UTF8");
  r.note("standard_conforming_strings", "on");
  r.set_start();
  EXPECT_FALSE(r.unsafe_now());
  r.note("client_encoding", "LATIN1");
  EXPECT_FALSE(r.unsafe_now());
  EXPECT_FALSE(r.names_in_utf8);
  r.note("client_encoding", "SQL_ASCII");
  EXPECT_TRUE(r.names_in_utf8);
  r.note("client_encoding", "SJIS");
  EXPECT_TRUE(r.unsafe_now());
  r.note("client_encoding", "UTF8");
  r.note("standard_conforming_strings", "off");
  EXPECT_TRUE(r.unsafe_now());
  r.note("application_name", "x");  // other parameters change nothing
  r.note("standard_conforming_strings", "on");
  EXPECT_FALSE(r.unsafe_now());
}

TEST(SessionSettingsTest, ReadingRefusals) {
  auto protection = testing::shop_protection();
  SessionReading ok;
  EXPECT_FALSE(reading_refusal(ok, "SELECT 'é' FROM customers", *protection).has_value());

  SessionReading strings_off = ok;
  strings_off.standard_strings = false;
  auto r = reading_refusal(strings_off, "SELECT 1", *protection);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->rule, "standard-strings");
  EXPECT_EQ(r->error.sqlstate, sqlstate::feature_not_supported);

  // Off at the start: RESET would return to it, so even on now is refused.
  SessionReading started_off = ok;
  started_off.start_standard_strings = false;
  ASSERT_TRUE(reading_refusal(started_off, "SELECT 1", *protection).has_value());

  SessionReading started_sjis = ok;
  started_sjis.start_encoding_same = false;
  r = reading_refusal(started_sjis, "SELECT 1", *protection);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->rule, "encoding");
  EXPECT_NE(r->error.message.find("ASCII-safe"), std::string::npos);

  // Outside UTF8, non-ASCII bytes matter only when a protected name has them
  // (the shop's names are ASCII).
  SessionReading latin1 = ok;
  latin1.names_in_utf8 = false;
  EXPECT_FALSE(reading_refusal(latin1, "SELECT '\xe9' FROM customers", *protection).has_value());
  EXPECT_FALSE(protection->has_non_ascii_names());
}

TEST(SessionSettingsTest, NonAsciiNamesNeedUtf8) {
  auto cat = testing::shop_catalog();
  cat->relations.push_back(
      testing::relation(16600, "public", "kund\xc3\xa9n", 'r', {{"id", "bigint"}, {"adresse", "text"}}));
  cat->finalize();
  std::string yaml(testing::shop_masking_yaml);
  const std::string anchor = "  protected_columns:\n";
  yaml.insert(yaml.find(anchor) + anchor.size(),
              "    - {column: \"public.kund\xc3\xa9n.adresse\", category: address}\n");
  auto protection = testing::protection_from(yaml, cat);
  ASSERT_TRUE(protection->has_non_ascii_names());
  SessionReading latin1;
  latin1.names_in_utf8 = false;
  auto r = reading_refusal(latin1, "SELECT adresse FROM kund\xe9n", *protection);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->rule, "encoding");
  EXPECT_FALSE(reading_refusal(latin1, "SELECT 1", *protection).has_value());  // ASCII only
  SessionReading utf8;
  EXPECT_FALSE(reading_refusal(utf8, "SELECT adresse FROM kund\xc3\xa9n", *protection).has_value());
}

}  // namespace
}  // namespace pgcloak::rules
