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
  // Output masking (docs/masking.md): a rewrite that pgcloak may run in the
  // simple protocol instead of `sql`, where the columns in output_columns
  // (relation OID, attnum) are read raw and pgcloak masks them in the
  // result rows, identified by RowDescription's table OID and column
  // number. Only for one SELECT from one protected relation whose
  // output-masked columns appear nowhere but as plain result columns, so
  // that what PostgreSQL computes (filter, order, limit) never sees them.
  // PostgreSQL must report exactly output_fields such result columns;
  // with any other count the relay sends no row. Empty when not possible.
  std::string output_sql;
  std::vector<std::pair<uint32_t, int16_t>> output_columns;
  uint32_t output_fields = 0;
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

// For DecisionCache: analyze_statement(), plus whether the decision holds
// for every text with the same literal skeleton (literal_skeleton.h), given
// the literals' places in `sql`. When it does, `sql_template` and
// `output_template` are the decision's sql and output_sql with each of
// those literals replaced by one NUL byte, in order: another text's
// literals go there. Only pass and rewrite decisions are shared (a refusal
// can quote a position), and only when no edit touches a literal. The
// decision itself never depends on a literal's value: the analysis looks
// at names, never at constants.
struct DecisionTemplate {
  StatementDecision decision;
  bool shareable = false;
  std::string sql_template;
  std::string output_template;
};
DecisionTemplate analyze_statement_template(std::string_view sql, const SessionPolicy& policy,
                                            AnalysisMode mode,
                                            const std::vector<std::pair<size_t, size_t>>& literals);

// Whether a statement text may change the catalog (CREATE, ALTER, DROP,
// GRANT, ...), from its words outside literals and comments. A heuristic
// for unmasked sessions, whose statements are not parsed: it only decides
// when the catalog is refreshed, never what is allowed.
bool may_change_catalog(std::string_view sql);

// The 42501 refusal every denial uses: "<what> is not allowed ...".
Error policy_refusal(const SessionPolicy& policy, std::string_view rule, std::string_view what,
                     std::string_view why);

}  // namespace pgcloak::rules
