// The masks of mask_sql.h applied in C++ to one value in PostgreSQL's text
// output format: the second line of defence on result rows. For a value v,
// mask_text_value(spec, type, text(v)) is what mask_sql_expression(spec,
// type, ...) would make PostgreSQL send for v, with these assumptions:
//  - text is UTF-8 (client_encoding UTF8) and DateStyle is ISO;
//  - timestamptz results keep the input's UTC offset (exact when the
//    session's offset does not change across the truncated range, e.g. UTC),
//    and redact gives "1900-01-01 00:00:00+00" (the SQL constant as shown
//    with TimeZone = UTC);
//  - custom and deny give NULL (nullopt): a C++ copy of an arbitrary SQL
//    expression is not possible, and NULL is the safe answer.
// Masks that do not apply to the type (mask_sql_expression returns an error)
// also give NULL. NULL input is the caller's business: a NULL stays NULL for
// every mask, unless the rule sets mask_nulls (then redact gives its
// constant), see mask_null_value().
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "rules/mask.h"

namespace pgcloak::rules {

std::optional<std::string> mask_text_value(const MaskSpec& spec, const ColumnType& type,
                                           std::string_view text_value, const MaskKeys& keys);

// What the mask makes of a NULL: NULL (nullopt), except redact's constant
// when the rule sets mask_nulls: true.
std::optional<std::string> mask_null_value(const MaskSpec& spec, const ColumnType& type);

// The building blocks, for tests.
std::string mask_partial(std::string_view s, int keep_first, int keep_last, std::string_view fill);
std::string mask_email(std::string_view s);
std::string mask_last4(std::string_view s);
std::string mask_redact_patterns(std::string_view s);

}  // namespace pgcloak::rules
