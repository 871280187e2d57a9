// Fuzzes the statement analysis path (statement text -> analysis): the
// masking decision for the shop fixture's masked policies, the audit
// analysis, the literal skeleton and the startup options reader, on
// arbitrary bytes. None may crash, whatever the nesting (rules/
// parse_bounds.h), and every decision must be one the relay can act on: a
// refusal carries a SQLSTATE and a message, and a rewrite parses again (or
// is too deep to, 54001).
#include <cstddef>
#include <cstdint>
#include <string>

#include "rules/literal_skeleton.h"
#include "rules/pg_tree.h"
#include "rules/rewriter.h"
#include "rules/startup_options.h"
#include "rules/statement_audit.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/support/shop_policy.h"

using namespace pgcloak;         // NOLINT(google-build-using-namespace)
using namespace pgcloak::rules;  // NOLINT(google-build-using-namespace)

// NOLINTNEXTLINE(readability-identifier-naming): the name libFuzzer calls.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto protection = pgcloak::testing::shop_protection();
  static const SessionPolicy support(protection, "support");
  static const SessionPolicy analyst(protection, "analyst");
  const std::string sql(reinterpret_cast<const char*>(data), size);
  for (const SessionPolicy* policy : {&support, &analyst}) {
    const StatementDecision d = analyze_statement(sql, *policy);
    switch (d.action) {
      case StatementDecision::Action::pass: break;
      case StatementDecision::Action::refuse:
        FUZZ_CHECK(d.refusal.has_value());
        FUZZ_CHECK(d.refusal->sqlstate.size() == 5);
        FUZZ_CHECK(!d.refusal->message.empty());
        break;
      case StatementDecision::Action::rewrite: {
        auto again = ParseTree::parse(d.sql);
        FUZZ_CHECK(again.ok() || again.error().sqlstate == sqlstate::statement_too_complex);
        FUZZ_CHECK(!d.relations.empty());
        break;
      }
    }
  }
  (void)audit_statement(sql, 0, protection.get());
  (void)literal_skeleton(sql);
  (void)requested_settings({{"options", sql}});
  return 0;
}
