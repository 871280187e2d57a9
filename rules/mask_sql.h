// Masks as SQL expressions. The rewriter replaces each protected table with
// a subquery that selects mask_sql_expression(...) in place of each protected
// column, so every later use of the column (predicates, joins, sorts,
// aggregates, casts) sees only the masked value.
//
// Guarantees of every generated expression:
//  - type-preserving: CAST((...) AS <the column's type>), so RowDescription
//    carries the same type OID and typmod;
//  - NULL in, NULL out, for every mask, so count(col), col IS NULL and
//    coalesce() give the true answers; only a rule with mask_nulls: true
//    (redact, null and custom, see mask_nulls_supported()) gives NULL the
//    mask's constant or hands it to the custom expression;
//  - no run-time error for any input value (an error message can print the
//    value): only total functions, valid regexes, no division by zero;
//  - search_path-proof: every function, operator and non-keyword type name
//    is qualified with pg_catalog, because a masked user could otherwise put
//    their own sha256() or || ahead of the built-in one and receive the value;
//  - no backslashes in literals, so the text means the same whatever
//    standard_conforming_strings says.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"
#include "rules/mask.h"

namespace pgcloak::rules {

inline constexpr std::string_view mask_value_placeholder = "{value}";

// "name" with embedded quotes doubled. Always quotes, so keywords and
// mixed case are safe.
std::string quote_ident(std::string_view ident);
// 'text' with embedded quotes doubled, for standard_conforming_strings = on.
// Never produces E'' strings. Text must not contain NUL (PostgreSQL text
// cannot hold it); callers check with has_nul().
std::string quote_literal(std::string_view text);
bool has_nul(std::string_view text);

// The type name to write in CAST(... AS <name>): format_type() output, with
// pg_catalog. prepended to built-in names that are not SQL keywords.
std::string cast_type_name(const ColumnType& type);

// The SQL expression for one masked column. value_sql is the already quoted
// column reference (t."email"). Errors (42501) name the mask and the type
// when the mask does not apply to the type, the key is missing, or a custom
// template is invalid; deny has no expression (the rewriter refuses instead).
Result<std::string> mask_sql_expression(const MaskSpec& spec, const ColumnType& type,
                                        std::string_view value_sql, const MaskKeys& keys);

// Validates a custom mask template with PostgreSQL's own parser
// (libpg_query): one expression, {value} used only as a value (not inside a
// literal or comment), no subqueries, no other columns, no parameters, no
// window or aggregate calls, and only allowed functions: a fixed list of
// pg_catalog built-ins plus extra_functions ("schema.function", already
// normalised: unquoted parts lowercased). Some functions are refused even
// when listed (query_to_xml and relatives, dblink*, pg_read*, lo_*,
// set_config, pg_sleep*, ...).
Status validate_custom_expression(std::string_view expression,
                                  const std::vector<std::string>& extra_functions);

// The regular expressions redact_patterns applies, in order (exposed for
// tests and documentation). Replacement text: [email], [card],
// [national_id], [phone].
struct RedactPattern {
  std::string_view regex;
  std::string_view replacement;
};
const std::vector<RedactPattern>& redact_patterns();

}  // namespace pgcloak::rules
