// The StartupMessage settings as PostgreSQL reads them (rules/
// startup_options.h). Every spelling of the startup attacks in
// docs/masking.md ("Parser differentials") must come out as the setting
// PostgreSQL would apply.
#include "rules/startup_options.h"

#include <gtest/gtest.h>

namespace pgcloak::rules {
namespace {

using Params = std::vector<std::pair<std::string, std::string>>;

std::vector<std::string> names(const std::vector<RequestedSetting>& s) {
  std::vector<std::string> out;
  for (const auto& r : s) out.push_back(r.name + "=" + r.value);
  return out;
}

TEST(StartupOptionsTest, SplitsAsPgSplitOpts) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split_startup_options(""), V{});
  EXPECT_EQ(split_startup_options("   \t\n "), V{});
  EXPECT_EQ(split_startup_options("-c a=b"), (V{"-c", "a=b"}));
  EXPECT_EQ(split_startup_options("  -c   a=b\t-c\nx=y  "), (V{"-c", "a=b", "-c", "x=y"}));
  // A backslash makes the next character literal (a space, a backslash,
  // any letter) and disappears.
  EXPECT_EQ(split_startup_options(R"(-c a=b\ c)"), (V{"-c", "a=b c"}));
  EXPECT_EQ(split_startup_options(R"(-c debug\_print\_rewritten=on)"), (V{"-c", "debug_print_rewritten=on"}));
  EXPECT_EQ(split_startup_options(R"(-c r\ole=x)"), (V{"-c", "role=x"}));
  EXPECT_EQ(split_startup_options(R"(-c a=\\)"), (V{"-c", R"(a=\)"}));
  EXPECT_EQ(split_startup_options(R"(a\)"), (V{"a"}));  // a trailing backslash escapes nothing
}

TEST(StartupOptionsTest, ReadsSwitchesAsProcessPostgresSwitches) {
  auto read = [](std::string options) {
    return requested_settings(Params{{"user", "u"}, {"options", std::move(options)}});
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(names(*read("-c debug_print_rewritten=on")), (V{"debug_print_rewritten=on"}));
  EXPECT_EQ(names(*read(R"(-c debug\_print\_rewritten=on -c client_min_messages=log)")),
            (V{"debug_print_rewritten=on", "client_min_messages=log"}));
  EXPECT_EQ(names(*read("--debug-print-rewritten=on")), (V{"debug_print_rewritten=on"}));
  EXPECT_EQ(names(*read("-cdebug-print-parse=on")), (V{"debug_print_parse=on"}));
  EXPECT_EQ(names(*read("-c DEBUG_Print_Plan=on")), (V{"debug_print_plan=on"}));
  EXPECT_EQ(names(*read(R"(-c r\ole=bi_readers)")), (V{"role=bi_readers"}));
  EXPECT_EQ(names(*read("-c role=a=b")), (V{"role=a=b"}));
  EXPECT_EQ(names(*read("--client-encoding=SJIS")), (V{"client_encoding=SJIS"}));
  // The value keeps its dashes and case.
  EXPECT_EQ(names(*read("-c application_name=A-B")), (V{"application_name=A-B"}));
  // Grouped switches and other switches are reported, never skipped.
  auto grouped = *read("-Ec debug_print_parse=on");
  ASSERT_EQ(grouped.size(), 2U);
  EXPECT_TRUE(grouped[0].other_switch);
  EXPECT_EQ(grouped[0].name, "-E");
  EXPECT_EQ(grouped[1].name, "debug_print_parse");
  auto debug = *read("-d 5");
  ASSERT_EQ(debug.size(), 1U);
  EXPECT_TRUE(debug[0].other_switch);
  EXPECT_EQ(debug[0].name, "-d");
  EXPECT_EQ(debug[0].value, "5");
  auto attached = *read("-d5 -S 64");
  ASSERT_EQ(attached.size(), 2U);
  EXPECT_EQ(attached[0].value, "5");
  EXPECT_EQ(attached[1].name, "-S");
  // What PostgreSQL refuses as a whole: nothing can be said of it.
  for (const char* bad :
       {"-c", "-c name", "--name", "word", "-", "--", "-- -c a=b", "-X", "-c a=b extra", "-:", "-c a=b -d"}) {
    EXPECT_FALSE(read(bad).has_value()) << bad;
  }
  // Bytes above 0x7F: the backend's isspace() may split there (0xA0 in
  // single-byte locales), so the words are not certain.
  EXPECT_FALSE(read("-c application_name=x\xA0-c\xA0role=y").has_value());
  EXPECT_FALSE(read("-c application_name=\xC3\xA9").has_value());
  EXPECT_TRUE(read("").has_value());
  EXPECT_TRUE(read("   ").has_value());
}

TEST(StartupOptionsTest, ParametersAreSettingsWithoutRegardToCase) {
  auto s = requested_settings(Params{{"user", "u"},
                                     {"database", "d"},
                                     {"replication", "false"},
                                     {"_pq_.some_option", "x"},
                                     {"ROLE", "bi_readers"},
                                     {"Client_Encoding", "BIG5"},
                                     {"application_name", "psql"}});
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(names(*s),
            (std::vector<std::string>{"role=bi_readers", "client_encoding=BIG5", "application_name=psql"}));
  // Only the exact lower-case "options" is the command line; "OPTIONS" is
  // a (non-existent) setting PostgreSQL refuses.
  auto upper = requested_settings(Params{{"OPTIONS", "-c role=x"}});
  ASSERT_TRUE(upper.has_value());
  EXPECT_EQ(names(*upper), (std::vector<std::string>{"options=-c role=x"}));
}

}  // namespace
}  // namespace pgcloak::rules
