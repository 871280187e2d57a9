// The mask model: what a policy asks to be done to a protected column
// (MaskSpec), the column's type as PostgreSQL describes it (ColumnType), and
// the key material keyed masks use (MaskKeys). mask_sql.h turns these into a
// SQL expression, mask_value.h applies the same masks to text-format values.
// No I/O here.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pgcloak::rules {

enum class MaskKind {
  allow,            // no masking
  deny,             // the rewriter refuses queries that read the column
  redact,           // a type-correct constant
  null,             // NULL of the column's type
  partial,          // keep the first/last characters, fill the middle
  email,            // j***@example.com
  last4,            // ****-****-****-4242
  hash,             // keyed HMAC-SHA256, hex (strings) or a number (integers, numerics)
  pseudonym,        // deterministic fake names / emails
  generalize,       // date_trunc for dates/timestamps, buckets for numbers
  redact_patterns,  // emails, phones, cards, SSNs inside free text
  custom,           // an administrator's SQL template over {value}
};
std::string_view to_string(MaskKind kind);
std::optional<MaskKind> mask_kind_from_string(std::string_view name);

// Whether `mask_nulls: true` means something for a mask. A NULL has no value
// to derive a mask from, so only masks whose output does not depend on the
// value can make a NULL look like a non-NULL: redact (its constant), null
// (NULL for every row already) and custom (the administrator's expression
// receives the NULL and decides). For allow, deny and the masks computed from
// the value (partial, email, last4, hash, pseudonym, generalize,
// redact_patterns) it is refused: any stand-in for NULL would be one fixed
// output that differs from every masked value, so the NULLs would still be
// recognisable, and the option would promise what it cannot keep.
bool mask_nulls_supported(MaskKind kind);

enum class DatePart { year, month, day };
std::string_view to_string(DatePart part);

enum class PseudonymKind { name, first_name, last_name, email };
std::string_view to_string(PseudonymKind kind);

inline constexpr int default_hash_length = 16;
inline constexpr int max_hash_length = 64;     // hex digits of SHA-256
inline constexpr int max_partial_keep = 1000;  // keep_first/keep_last upper bound

struct MaskSpec {
  MaskKind kind = MaskKind::redact;
  // partial
  int keep_first = 0;
  int keep_last = 0;
  std::string fill = "*";  // exactly one character (UTF-8)
  // generalize: exactly one of the two
  std::optional<DatePart> to;
  std::optional<uint64_t> bucket;  // positive
  // pseudonym: unset = chosen by category (email -> email, otherwise name)
  std::optional<PseudonymKind> pseudonym_kind;
  // hash
  int length = default_hash_length;
  // redact: used for string columns; other types get their own constant
  std::optional<std::string> value;
  // custom: SQL expression over the placeholder {value}
  std::string expression;
  // custom: schema-qualified functions allowed on top of the built-in list
  // (masking.function_allowlist; the config loader fills it in).
  std::vector<std::string> allowed_functions;
  // false (the default): a NULL stays NULL, whatever the mask, so that
  // count(col), col IS NULL and coalesce() give the true answers. true: for
  // columns whose NULL-ness is itself sensitive, NULL is masked too: redact
  // gives NULL its constant, custom hands NULL to the expression. Only those
  // masks (and null) accept it; see mask_nulls_supported().
  bool mask_nulls = false;

  // A reload compares configurations: an unchanged masking section keeps the
  // running policies (and their decision caches).
  bool operator==(const MaskSpec&) const = default;

  static MaskSpec of(MaskKind k) {
    MaskSpec s;
    s.kind = k;
    return s;
  }
};

// A column's type as the rewriter learns it from the catalog.
struct ColumnType {
  uint32_t oid = 0;
  int32_t typmod = -1;
  std::string sql_name;  // format_type(oid, typmod), e.g. "character varying(255)"
  char category = 'X';   // pg_type.typcategory
};

// Built-in type OIDs the masks treat specially (pg_type.dat).
namespace type_oid {
inline constexpr uint32_t boolean = 16;
inline constexpr uint32_t bytea = 17;
inline constexpr uint32_t name = 19;
inline constexpr uint32_t int8 = 20;
inline constexpr uint32_t int2 = 21;
inline constexpr uint32_t int4 = 23;
inline constexpr uint32_t text = 25;
inline constexpr uint32_t json = 114;
inline constexpr uint32_t float4 = 700;
inline constexpr uint32_t float8 = 701;
inline constexpr uint32_t bpchar = 1042;
inline constexpr uint32_t varchar = 1043;
inline constexpr uint32_t date = 1082;
inline constexpr uint32_t timestamp = 1114;
inline constexpr uint32_t timestamptz = 1184;
inline constexpr uint32_t numeric = 1700;
inline constexpr uint32_t uuid = 2950;
inline constexpr uint32_t jsonb = 3802;
}  // namespace type_oid

bool is_string_type(const ColumnType& t);    // typcategory 'S'
bool is_integer_type(const ColumnType& t);   // int2, int4, int8
bool is_datetime_type(const ColumnType& t);  // date, timestamp, timestamptz

// Keys derived from the configured master secret. The master secret itself
// never leaves the config loader: each mask gets its own HMAC-derived key, and
// only the derived keys' HMAC pads ever appear in SQL text (which PostgreSQL
// may log).
struct MaskKeys {
  bool present = false;
  std::array<uint8_t, 32> hash_key{};
  std::array<uint8_t, 32> pseudonym_key{};
  bool operator==(const MaskKeys&) const = default;
};
inline constexpr size_t min_master_key_length = 32;
// hash_key = HMAC-SHA256(master, "pgcloak mask hash v1"),
// pseudonym_key = HMAC-SHA256(master, "pgcloak mask pseudonym v1").
MaskKeys derive_mask_keys(std::string_view master_key);

// HMAC-SHA256(key, data).
std::array<uint8_t, 32> hmac_sha256(const std::array<uint8_t, 32>& key, std::string_view data);
std::string to_hex(const uint8_t* data, size_t n);

// The name lists pseudonyms are drawn from (50 each, ASCII).
const std::vector<std::string_view>& pseudonym_first_names();
const std::vector<std::string_view>& pseudonym_last_names();

}  // namespace pgcloak::rules
