#include "rules/mask_sql.h"

#include <pg_query.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <set>

namespace pgcloak::rules {

namespace {

constexpr uint32_t first_normal_object_id = 16384;

Error mask_error(std::string msg, std::string hint = {}) {
  return Error::make(sqlstate::insufficient_privilege, std::move(msg), Severity::error, std::move(hint));
}

Error not_applicable(MaskKind kind, const ColumnType& type, std::string_view what) {
  return mask_error(
      "mask \"" + std::string(to_string(kind)) + "\" cannot be applied to a column of type " + type.sql_name,
      std::string(what));
}

// a OPERATOR(pg_catalog.op) b, parenthesised so callers can nest freely.
std::string op(std::string_view a, std::string_view o, std::string_view b) {
  std::string out;
  out.reserve(a.size() + o.size() + b.size() + 32);
  out += '(';
  out += a;
  out += " OPERATOR(pg_catalog.";
  out += o;
  out += ") ";
  out += b;
  out += ')';
  return out;
}

std::string fn(std::string_view name, std::initializer_list<std::string_view> args) {
  std::string out = "pg_catalog." + std::string(name) + "(";
  bool first = true;
  for (auto a : args) {
    if (!first) out += ", ";
    first = false;
    out += a;
  }
  return out + ")";
}

std::string cast(std::string_view expr, std::string_view type) {
  return "CAST((" + std::string(expr) + ") AS " + std::string(type) + ")";
}

std::string as_text(std::string_view value_sql) {
  return cast(value_sql, "pg_catalog.text");
}

// HMAC-SHA256(key, data) with PostgreSQL's built-in sha256(bytea) (>= 11):
// sha256((K ^ opad) || sha256((K ^ ipad) || data)). The pads are derived from
// a per-mask derived key, never from the master secret.
std::string hmac_sql(const std::array<uint8_t, 32>& key, std::string_view data_bytea) {
  std::array<uint8_t, 64> ipad{};
  std::array<uint8_t, 64> opad{};
  for (size_t i = 0; i < 64; ++i) {
    uint8_t k = i < key.size() ? key[i] : 0;
    ipad[i] = k ^ 0x36;
    opad[i] = k ^ 0x5c;
  }
  std::string inner =
      fn("sha256", {op(fn("decode", {quote_literal(to_hex(ipad.data(), 64)), "'hex'"}), "||", data_bytea)});
  return fn("sha256", {op(fn("decode", {quote_literal(to_hex(opad.data(), 64)), "'hex'"}), "||", inner)});
}

std::string hmac_hex_sql(const std::array<uint8_t, 32>& key, std::string_view value_sql) {
  return fn("encode", {hmac_sql(key, fn("convert_to", {as_text(value_sql), "'UTF8'"})), "'hex'"});
}

// NULL in, NULL out. A mask hides a value, not whether there is one; a
// value in place of NULL would falsify what masked roles compute from NULLs:
// count(col) counts the rows where col is not NULL (PostgreSQL docs,
// "Aggregate Functions"), and col IS NULL, coalesce() and outer joins all
// depend on it ("Comparison Functions and Operators"). Only a rule with
// mask_nulls: true opts out (mask_sql_expression).
std::string null_guard(std::string_view value_sql, std::string_view expr) {
  return "CASE WHEN (" + std::string(value_sql) + ") IS NULL THEN NULL ELSE " + std::string(expr) + " END";
}

std::string sql_array(const std::vector<std::string_view>& items, bool lower) {
  std::string out = "(ARRAY[";
  for (size_t i = 0; i < items.size(); ++i) {
    std::string s(items[i]);
    if (lower) std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    if (i > 0) out += ',';
    out += quote_literal(s);
  }
  return out + "])";
}

std::string pow10(int n) {
  std::string out(static_cast<size_t>(n) + 1, '0');
  out[0] = '1';
  return out;
}

// numeric typmod -> (precision, scale); PostgreSQL 15 allows a negative scale.
bool numeric_typmod(int32_t typmod, int& precision, int& scale) {
  if (typmod < 4) return false;
  int32_t t = typmod - 4;
  precision = (t >> 16) & 0xffff;
  scale = ((t & 0x7ff) ^ 1024) - 1024;
  return true;
}

std::string redact_constant(const MaskSpec& spec, const ColumnType& type) {
  if (is_string_type(type)) return quote_literal(spec.value.value_or("***"));
  switch (type.oid) {
    case type_oid::int2:
    case type_oid::int4:
    case type_oid::int8:
    case type_oid::numeric:
    case type_oid::float4:
    case type_oid::float8: return "0";
    case type_oid::date: return "'1900-01-01'";
    case type_oid::timestamp: return "'1900-01-01 00:00:00'";
    case type_oid::timestamptz: return "'1900-01-01 00:00:00+00'";
    case type_oid::boolean: return "false";
    case type_oid::uuid: return "'00000000-0000-0000-0000-000000000000'";
    case type_oid::bytea: return fn("decode", {"''", "'hex'"});
    case type_oid::json:
    case type_oid::jsonb: return "'{}'";
    default: return "NULL";
  }
}

Result<std::string> hash_expression(const MaskSpec& spec, const ColumnType& type, std::string_view v,
                                    const MaskKeys& keys) {
  std::string hex = hmac_hex_sql(keys.hash_key, v);
  auto hex_prefix = [&](int digits) {
    return op("'x'", "||", fn("substr", {hex, "1", std::to_string(digits)}));
  };
  if (is_string_type(type)) {
    int len = std::clamp(spec.length, 1, max_hash_length);
    return null_guard(v, fn("substr", {hex, "1", std::to_string(len)}));
  }
  // Integers: the leading bits of the HMAC as a two's complement number of
  // the column's width, so every output is a valid value of the type.
  if (type.oid == type_oid::int8) return null_guard(v, cast(cast(hex_prefix(16), "bit(64)"), "bigint"));
  if (type.oid == type_oid::int4) return null_guard(v, cast(cast(hex_prefix(8), "bit(32)"), "integer"));
  if (type.oid == type_oid::int2) {
    return null_guard(v, op(cast(cast(hex_prefix(8), "bit(32)"), "integer"), ">>", "16"));
  }
  if (type.oid == type_oid::numeric) {
    // 60 bits: always a non-negative bigint. With a typmod (p, s) the result
    // is (n mod 10^p) * 10^-s, whose magnitude is below 10^(p-s): it fits.
    std::string n = cast(cast(hex_prefix(15), "bit(60)"), "bigint");
    int p = 0;
    int s = 0;
    if (!numeric_typmod(type.typmod, p, s)) return null_guard(v, n);
    std::string m = cast(fn("mod", {n, pow10(std::min(p, 18))}), "numeric");
    if (s > 0) m = op(m, "/", pow10(s));
    if (s < 0) m = op(m, "*", pow10(-s));
    return null_guard(v, m);
  }
  return not_applicable(MaskKind::hash, type,
                        "hash applies to string, integer and numeric columns; use redact or null");
}

Result<std::string> pseudonym_expression(const MaskSpec& spec, std::string_view v, const MaskKeys& keys) {
  std::string h = hmac_sql(keys.pseudonym_key, fn("convert_to", {as_text(v), "'UTF8'"}));
  const auto& firsts = pseudonym_first_names();
  const auto& lasts = pseudonym_last_names();
  auto index = [&](int byte, size_t n) {
    return op(op(fn("get_byte", {h, std::to_string(byte)}), "%", std::to_string(n)), "+", "1");
  };
  auto first = [&](bool lower) { return sql_array(firsts, lower) + "[" + index(0, firsts.size()) + "]"; };
  auto last = [&](bool lower) { return sql_array(lasts, lower) + "[" + index(1, lasts.size()) + "]"; };
  std::string expr;
  switch (spec.pseudonym_kind.value_or(PseudonymKind::name)) {
    case PseudonymKind::name: expr = op(op(first(false), "||", "' '"), "||", last(false)); break;
    case PseudonymKind::first_name: expr = first(false); break;
    case PseudonymKind::last_name: expr = last(false); break;
    case PseudonymKind::email: {
      std::string nn =
          fn("lpad", {cast(op(fn("get_byte", {h, "2"}), "%", "100"), "pg_catalog.text"), "2", "'0'"});
      expr = op(op(op(op(first(true), "||", "'.'"), "||", last(true)), "||", nn), "||", "'@example.net'");
      break;
    }
  }
  return null_guard(v, expr);
}

Result<std::string> generalize_expression(const MaskSpec& spec, const ColumnType& type, std::string_view v) {
  if (spec.to) {
    if (!is_datetime_type(type)) {
      return not_applicable(MaskKind::generalize, type,
                            "generalize with \"to\" applies to date and timestamp columns");
    }
    std::string part(to_string(*spec.to));
    if (type.oid == type_oid::date) {
      // Date arithmetic rather than date_trunc: date_trunc would go through
      // timestamp, whose range is smaller than date's (an error, not a value).
      if (*spec.to == DatePart::day) return null_guard(v, "(" + std::string(v) + ")");
      std::string field = *spec.to == DatePart::year ? "'doy'" : "'day'";
      std::string back =
          op("(" + std::string(v) + ")", "-",
             op(cast(fn("extract", {field, "(" + std::string(v) + ")"}), "integer"), "-", "1"));
      return "CASE WHEN (" + std::string(v) + ") IS NULL THEN NULL WHEN " +
             fn("isfinite", {"(" + std::string(v) + ")"}) + " THEN " + back + " ELSE (" + std::string(v) +
             ") END";
    }
    std::string ts =
        type.oid == type_oid::timestamptz ? "timestamp with time zone" : "timestamp without time zone";
    return null_guard(v, fn("date_trunc", {quote_literal(part), cast(v, ts)}));
  }
  if (spec.bucket) {
    if (!is_integer_type(type) && type.oid != type_oid::numeric) {
      return not_applicable(MaskKind::generalize, type,
                            "generalize with \"bucket\" applies to integer and numeric columns");
    }
    if (*spec.bucket == 0) return mask_error("generalize: bucket must be positive");
    // div() truncates toward zero, so |result| <= |value|: it always fits
    // the column's type (floor() could step past the type's minimum).
    std::string b = std::to_string(*spec.bucket);
    return null_guard(v, op(fn("div", {cast(v, "numeric"), b}), "*", b));
  }
  return mask_error("generalize needs \"to\" (year, month, day) or \"bucket\"");
}

}  // namespace

std::string quote_ident(std::string_view ident) {
  std::string out = "\"";
  for (char c : ident) {
    out += c;
    if (c == '"') out += '"';
  }
  return out + "\"";
}

std::string quote_literal(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

bool has_nul(std::string_view text) {
  return text.find('\0') != std::string_view::npos;
}

std::string cast_type_name(const ColumnType& type) {
  // Type names that are SQL keywords resolve in the grammar, not through
  // search_path, and have no pg_catalog.<keyword> spelling.
  static const std::set<std::string_view> keywords{
      "bigint",           "bit",   "boolean",  "char",    "character", "dec",      "decimal",
      "double precision", "float", "int",      "integer", "interval",  "national", "nchar",
      "numeric",          "real",  "smallint", "time",    "timestamp", "varchar"};
  const std::string& n = type.sql_name;
  bool bare = !n.empty() && std::all_of(n.begin(), n.end(), [](unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
  if (type.oid < first_normal_object_id && bare && !keywords.count(n)) return "pg_catalog." + n;
  return n;
}

const std::vector<RedactPattern>& redact_patterns() {
  // Bracket expressions instead of backslash escapes (see the header), and
  // [0-9] rather than \d, which some locales widen to non-ASCII digits.
  // Order matters: cards before SSNs and phones so a card number is never
  // half-replaced as a phone number.
  static const std::vector<RedactPattern> patterns{
      {"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+[.][A-Za-z]{2,}", "[email]"},
      {"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])", "[card]"},
      {"(?<![0-9])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9])", "[national_id]"},
      {"(?<![0-9])[+]?[(]?[0-9](?:[ .()-]{0,2}[0-9]){6,14}(?![0-9])", "[phone]"},
  };
  return patterns;
}

Result<std::string> mask_sql_expression(const MaskSpec& spec, const ColumnType& type,
                                        std::string_view value_sql, const MaskKeys& keys) {
  if (type.sql_name.empty()) return mask_error("mask: the column's type name is empty");
  const std::string v = "(" + std::string(value_sql) + ")";
  const std::string t = cast_type_name(type);
  auto string_only = [&]() -> Status {
    if (is_string_type(type)) return ok_status();
    return not_applicable(spec.kind, type, "this mask applies to string columns; use redact, null or hash");
  };
  auto needs_key = [&]() -> Status {
    if (keys.present) return ok_status();
    return mask_error("mask \"" + std::string(to_string(spec.kind)) + "\" needs a key",
                      "set masking.hash_key_file or masking.hash_key_env");
  };

  // The config loader refuses mask_nulls: true on these masks
  // (mask_nulls_supported() says why); a spec built elsewhere fails closed.
  if (spec.mask_nulls && !mask_nulls_supported(spec.kind)) {
    return mask_error("mask \"" + std::string(to_string(spec.kind)) +
                          "\" cannot mask NULLs: it has no value to compute from, so NULLs would stay "
                          "recognisable (mask_nulls: true applies to redact, null and custom)",
                      "remove mask_nulls or use redact");
  }

  switch (spec.kind) {
    case MaskKind::allow: return cast(v, t);
    case MaskKind::deny:
      return mask_error("mask \"deny\" has no expression: queries reading the column are refused");
    case MaskKind::null: return cast("NULL", t);
    case MaskKind::redact: {
      if (spec.value && has_nul(*spec.value)) return mask_error("redact: value contains a NUL character");
      const std::string constant = redact_constant(spec, type);
      // A type without a constant reads NULL for every row: nothing to guard.
      if (spec.mask_nulls || constant == "NULL") return cast(constant, t);
      // The constant is cast inside the guard too, so it is read as the
      // column's type exactly as in the bare form (an untyped literal in a
      // CASE would otherwise resolve to text first).
      return cast(null_guard(v, cast(constant, t)), t);
    }
    case MaskKind::partial: {
      if (auto s = string_only(); !s) return std::move(s).error();
      if (spec.keep_first < 0 || spec.keep_last < 0 || spec.keep_first > max_partial_keep ||
          spec.keep_last > max_partial_keep) {
        return mask_error("partial: keep_first and keep_last must be between 0 and " +
                          std::to_string(max_partial_keep));
      }
      if (spec.fill.empty() || has_nul(spec.fill)) return mask_error("partial: fill must be one character");
      const std::string s = as_text(v);
      const std::string len = fn("char_length", {s});
      const std::string fill = quote_literal(spec.fill);
      const std::string kept = std::to_string(spec.keep_first + spec.keep_last);
      std::string expr = "CASE WHEN " + op(len, "<=", kept) + " THEN " + fn("repeat", {fill, len}) +
                         " ELSE " +
                         op(op(fn("left", {s, std::to_string(spec.keep_first)}), "||",
                               fn("repeat", {fill, op(len, "-", kept)})),
                            "||", fn("right", {s, std::to_string(spec.keep_last)})) +
                         " END";
      return cast(null_guard(v, expr), t);
    }
    case MaskKind::email: {
      if (auto s = string_only(); !s) return std::move(s).error();
      const std::string s = as_text(v);
      std::string expr =
          "CASE WHEN " + op(fn("strpos", {s, "'@'"}), "=", "0") + " THEN '***' ELSE " +
          op(op(fn("left", {s, "1"}), "||", "'***@'"), "||", fn("substring", {s, "'[^@]*$'"})) + " END";
      return cast(null_guard(v, expr), t);
    }
    case MaskKind::last4: {
      if (auto s = string_only(); !s) return std::move(s).error();
      return cast(
          null_guard(v, fn("regexp_replace", {as_text(v), "'[0-9](?=([^0-9]*[0-9]){4})'", "'*'", "'g'"})), t);
    }
    case MaskKind::hash: {
      if (auto s = needs_key(); !s) return std::move(s).error();
      auto e = hash_expression(spec, type, v, keys);
      if (!e) return e;
      return cast(*e, t);
    }
    case MaskKind::pseudonym: {
      if (auto s = string_only(); !s) return std::move(s).error();
      if (auto s = needs_key(); !s) return std::move(s).error();
      auto e = pseudonym_expression(spec, v, keys);
      if (!e) return e;
      return cast(*e, t);
    }
    case MaskKind::generalize: {
      auto e = generalize_expression(spec, type, v);
      if (!e) return e;
      return cast(*e, t);
    }
    case MaskKind::redact_patterns: {
      if (auto s = string_only(); !s) return std::move(s).error();
      std::string expr = as_text(v);
      for (const auto& p : redact_patterns()) {
        expr = fn("regexp_replace", {expr, quote_literal(p.regex), quote_literal(p.replacement), "'g'"});
      }
      return cast(null_guard(v, expr), t);
    }
    case MaskKind::custom: {
      if (auto s = validate_custom_expression(spec.expression, spec.allowed_functions); !s) {
        return std::move(s).error();
      }
      std::string expr;
      std::string_view rest = spec.expression;
      for (;;) {
        auto at = rest.find(mask_value_placeholder);
        if (at == std::string_view::npos) break;
        expr += rest.substr(0, at);
        expr += v;
        rest.remove_prefix(at + mask_value_placeholder.size());
      }
      expr += rest;
      // With mask_nulls the expression also receives NULLs and decides what
      // they read as (coalesce(), CASE); otherwise a NULL stays NULL however
      // the expression would treat it. The validated template is one
      // expression, so parentheses keep it whole inside the CASE.
      if (spec.mask_nulls) return cast(expr, t);
      return cast(null_guard(v, "(" + expr + ")"), t);
    }
  }
  return mask_error("unknown mask");
}

// --- custom template validation ---------------------------------------------

namespace {

// The placeholder column used while parsing; a template that spells it out
// itself is refused, so every column reference we find is one of ours.
constexpr std::string_view placeholder_column = "pgcloak_mask_value_placeholder";

// pg_catalog functions a custom template may call: pure, total on ordinary
// input, and unable to run SQL or touch files.
const std::set<std::string_view>& builtin_allowlist() {
  static const std::set<std::string_view> names{
      "abs",          "btrim",     "ceil",      "ceiling",        "char_length", "character_length",
      "concat",       "concat_ws", "date_part", "date_trunc",     "decode",      "div",
      "encode",       "extract",   "floor",     "initcap",        "isfinite",    "left",
      "length",       "lower",     "lpad",      "ltrim",          "md5",         "mod",
      "octet_length", "overlay",   "position",  "regexp_replace", "repeat",      "replace",
      "reverse",      "right",     "round",     "rpad",           "rtrim",       "sha224",
      "sha256",       "sha384",    "sha512",    "sign",           "split_part",  "strpos",
      "substr",       "substring", "to_char",   "to_hex",         "translate",   "trim",
      "trunc",        "upper",     "btrim",     "make_date",      "convert_to",
  };
  return names;
}

bool denied_function(std::string_view name) {
  static constexpr std::string_view prefixes[] = {"dblink",    "pg_read",      "lo_",     "pg_sleep",
                                                  "pg_ls",     "pg_stat_file", "pg_file", "pg_terminate",
                                                  "pg_cancel", "pg_reload"};
  static constexpr std::string_view exact[] = {"query_to_xml",
                                               "query_to_xmlschema",
                                               "query_to_xml_and_xmlschema",
                                               "cursor_to_xml",
                                               "cursor_to_xmlschema",
                                               "table_to_xml",
                                               "table_to_xmlschema",
                                               "table_to_xml_and_xmlschema",
                                               "schema_to_xml",
                                               "schema_to_xmlschema",
                                               "schema_to_xml_and_xmlschema",
                                               "database_to_xml",
                                               "database_to_xmlschema",
                                               "database_to_xml_and_xmlschema",
                                               "set_config",
                                               "current_setting",
                                               "loread",
                                               "lowrite",
                                               "pg_advisory_lock",
                                               "txid_current"};
  for (auto p : prefixes) {
    if (name.substr(0, p.size()) == p) return true;
  }
  return std::find(std::begin(exact), std::end(exact), name) != std::end(exact);
}

Error custom_error(std::string msg) {
  return Error::make(sqlstate::insufficient_privilege, "custom mask: " + std::move(msg));
}

std::vector<std::string> name_list(const YAML::Node& list) {
  std::vector<std::string> out;
  if (!list.IsSequence()) return out;
  for (const auto& e : list) {
    if (e["String"] && e["String"]["sval"]) {
      out.push_back(e["String"]["sval"].as<std::string>());
    } else {
      out.push_back("*");  // A_Star or something unexpected: never matches
    }
  }
  return out;
}

struct Walk {
  const std::vector<std::string>& extra;
  int placeholders = 0;

  Status node(const YAML::Node& n) {
    if (n.IsSequence()) {
      for (const auto& e : n) {
        if (auto s = node(e); !s) return s;
      }
      return ok_status();
    }
    if (!n.IsMap()) return ok_status();
    for (auto it = n.begin(); it != n.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      const YAML::Node v = it->second;
      if (key == "SubLink") return custom_error("subqueries are not allowed");
      if (key == "ParamRef") return custom_error("parameters ($n) are not allowed");
      if (key == "RowExpr") return custom_error("row constructors are not allowed: a mask gives one value");
      if (key == "ColumnRef") {
        auto fields = name_list(v["fields"]);
        if (fields.size() != 1 || fields[0] != placeholder_column) {
          return custom_error("references to columns other than {value} are not allowed");
        }
        ++placeholders;
        continue;
      }
      if (key == "FuncCall") {
        if (auto s = function(v); !s) return s;
      }
      if (key == "A_Expr") {
        auto names = name_list(v["name"]);
        if (names.size() > 1 && names[0] != "pg_catalog") {
          return custom_error("operators outside pg_catalog are not allowed");
        }
      }
      if (auto s = node(v); !s) return s;
    }
    return ok_status();
  }

  Status function(const YAML::Node& call) {
    auto names = name_list(call["funcname"]);
    std::string shown;
    for (const auto& p : names) shown += (shown.empty() ? "" : ".") + p;
    if (call["over"]) return custom_error("window functions are not allowed: " + shown);
    if (call["agg_star"] || call["agg_distinct"] || call["agg_order"] || call["agg_filter"]) {
      return custom_error("aggregates are not allowed: " + shown);
    }
    if (names.empty() || names.size() > 2) return custom_error("function name not allowed: " + shown);
    const std::string& base = names.back();
    if (denied_function(base)) return custom_error("function " + shown + " is not allowed in masks");
    bool builtin = names.size() == 1 || names[0] == "pg_catalog";
    if (builtin && builtin_allowlist().count(base)) return ok_status();
    if (names.size() == 2 && std::find(extra.begin(), extra.end(), shown) != extra.end()) return ok_status();
    return custom_error("function " + shown +
                        " is not allowed: use a pg_catalog built-in from the documented list or add the "
                        "schema-qualified name to masking.function_allowlist");
  }
};

}  // namespace

Status validate_custom_expression(std::string_view expression,
                                  const std::vector<std::string>& extra_functions) {
  if (expression.empty()) return custom_error("expression is empty");
  if (has_nul(expression)) return custom_error("expression contains a NUL character");
  if (expression.find(placeholder_column) != std::string_view::npos) {
    return custom_error("expression must not spell the internal placeholder name");
  }
  std::string sql = "SELECT (";
  int textual = 0;
  std::string_view rest = expression;
  for (;;) {
    auto at = rest.find(mask_value_placeholder);
    if (at == std::string_view::npos) break;
    sql += rest.substr(0, at);
    sql += placeholder_column;
    rest.remove_prefix(at + mask_value_placeholder.size());
    ++textual;
  }
  sql += rest;
  sql += ")";
  if (textual == 0)
    return custom_error("expression must use {value} (for a constant, use redact with a value)");

  PgQueryParseResult parsed = pg_query_parse(sql.c_str());
  if (parsed.error) {
    std::string msg = parsed.error->message ? parsed.error->message : "syntax error";
    pg_query_free_parse_result(parsed);
    return custom_error("does not parse: " + msg);
  }
  YAML::Node tree;
  try {
    // libpg_query's JSON is valid YAML flow syntax; yaml-cpp is already a
    // dependency of rules/, so it doubles as the JSON reader.
    tree = YAML::Load(parsed.parse_tree);
  } catch (const YAML::Exception& e) {
    pg_query_free_parse_result(parsed);
    return custom_error(std::string("cannot read the parse tree: ") + e.what());
  }
  pg_query_free_parse_result(parsed);

  try {
    const YAML::Node stmts = tree["stmts"];
    if (!stmts.IsSequence() || stmts.size() != 1) return custom_error("must be exactly one expression");
    const YAML::Node select = stmts[0]["stmt"]["SelectStmt"];
    if (!select || !select.IsMap()) return custom_error("must be an expression");
    for (auto it = select.begin(); it != select.end(); ++it) {
      auto key = it->first.as<std::string>();
      if (key != "targetList" && key != "limitOption" && key != "op") {
        return custom_error("must be a single expression (found a " + key + ")");
      }
    }
    const YAML::Node targets = select["targetList"];
    if (!targets.IsSequence() || targets.size() != 1) return custom_error("must be exactly one expression");
    const YAML::Node target = targets[0]["ResTarget"];
    if (!target || target["name"] || target["indirection"] || !target["val"]) {
      return custom_error("must be exactly one expression");
    }
    Walk walk{extra_functions};
    if (auto s = walk.node(target["val"]); !s) return s;
    if (walk.placeholders != textual) {
      return custom_error("{value} may only stand for a value, not inside a literal, identifier or comment");
    }
  } catch (const YAML::Exception& e) {
    return custom_error(std::string("unexpected parse tree: ") + e.what());
  }
  return ok_status();
}

}  // namespace pgcloak::rules
