#include "rules/prepared_names.h"

#include <gtest/gtest.h>

namespace pgcloak::rules {
namespace {

void expect_name(std::string_view sql, const std::string& name) {
  auto d = deallocation_of(sql);
  ASSERT_TRUE(d.has_value()) << sql;
  EXPECT_FALSE(d->all) << sql;
  EXPECT_EQ(d->name, name) << sql;
}

void expect_all(std::string_view sql) {
  auto d = deallocation_of(sql);
  ASSERT_TRUE(d.has_value()) << sql;
  EXPECT_TRUE(d->all) << sql;
}

TEST(PreparedNamesTest, OneStatement) {
  expect_name("DEALLOCATE _pg3_0", "_pg3_0");  // psycopg
  expect_name("deallocate prepare S_12;", "s_12");
  expect_name("  DEALLOCATE\n\t\"S_12\" ; ", "S_12");
  expect_name("DEALLOCATE \"a\"\"b\"", "a\"b");
  expect_name("DEALLOCATE stmt$1", "stmt$1");
  expect_name("DEALLOCATE \"all\"", "all");
}

TEST(PreparedNamesTest, All) {
  expect_all("DEALLOCATE ALL");
  expect_all("deallocate prepare all;");
  expect_all("DISCARD ALL");
  expect_all(" discard all ; ");
}

TEST(PreparedNamesTest, AnythingElseIsNotADeallocation) {
  for (std::string_view sql :
       {"", ";", "SELECT 1", "DEALLOCATE", "DEALLOCATE;", "DEALLOCATE a b", "DEALLOCATE a; SELECT 1",
        "DEALLOCATE 1abc", "DEALLOCATE \"\"", "DEALLOCATE \"open", "DEALLOCATEx", "DEALLOCATE ALL x",
        "DISCARD PLANS", "DISCARD", "DISCARD ALL; SELECT 1", "/* c */ DEALLOCATE a", "DEALLOCATE a;;",
        "PREPARE a AS SELECT 1", "EXECUTE a"}) {
    EXPECT_FALSE(deallocation_of(sql).has_value()) << sql;
  }
}

}  // namespace
}  // namespace pgcloak::rules
