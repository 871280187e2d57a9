// Enforcement by rewriting (MASKING-THREATS.md, "the strong design"): for a
// session whose policy masks anything, every statement is parsed with
// PostgreSQL's own parser and each read of a protected relation is replaced
// by a masking subquery with the same column names, order and types:
//
//   SELECT email FROM customers c WHERE email LIKE 'a%'
//   SELECT email FROM (SELECT "id", CAST(... "email" ...) AS "email", ...
//                      FROM customers) AS "c" WHERE email LIKE 'a%'
//
// so predicates, joins, sorts, groups, aggregates, casts and whole-row
// references only ever see masked values. The client's own SQL text is
// spliced at the byte locations the parser reports (comments, literals and
// $n parameters stay as they were). What cannot be rewritten safely is
// refused with 42501 and a message naming the rule and the object.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/error.h"
#include "rules/session_policy.h"

namespace pgcloak::rules {

struct StatementDecision {
  enum class Action {
    pass,     // forward the statement unchanged
    rewrite,  // forward `sql` instead
    refuse,   // do not run it; answer with `refusal`
  };
  Action action = Action::pass;
  std::string sql;
  std::optional<Error> refusal;
  std::string rule;                    // what decided: "masking", "deny:do", ...
  std::vector<std::string> relations;  // protected relations read, "schema.name"
  bool catalog_may_change = false;     // DDL: refresh the catalog afterwards
};

// normal: statements the pre-check finds harmless pass unparsed.
// strict: while the catalog may be stale (DDL just ran), every statement is
// parsed and reading a relation the catalog does not know is refused
// (55000), because it may be a new view over protected data.
enum class AnalysisMode { normal, strict };

// Analyses one Query string or Parse statement (it may hold several
// statements). policy.masks_anything() must be true; unmasked sessions never
// get here. Never throws.
StatementDecision analyze_statement(std::string_view sql, const SessionPolicy& policy,
                                    AnalysisMode mode = AnalysisMode::normal);

// Whether a statement text may change the catalog (CREATE, ALTER, DROP,
// GRANT, ...), from its words outside literals and comments. A heuristic
// for unmasked sessions, whose statements are not parsed: it only decides
// when the catalog is refreshed, never what is allowed.
bool may_change_catalog(std::string_view sql);

// The 42501 refusal every denial uses: "<what> is not allowed ...".
Error policy_refusal(const SessionPolicy& policy, std::string_view rule, std::string_view what,
                     std::string_view why);

}  // namespace pgcloak::rules
