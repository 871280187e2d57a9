#include "rules/mask_value.h"

#include <algorithm>
#include <vector>

namespace pgcloak::rules {

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}
bool is_alnum(char c) {
  return is_digit(c) || is_alpha(c);
}

// Byte offsets where UTF-8 characters start (PostgreSQL counts characters,
// not bytes, in char_length/left/right and in varchar(n)).
std::vector<size_t> char_starts(std::string_view s) {
  std::vector<size_t> out;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) out.push_back(i);
  }
  return out;
}

// The text of a string column as CAST(v AS text) sees it: char(n) loses its
// trailing blanks.
std::string_view as_text(const ColumnType& type, std::string_view s) {
  if (type.oid == type_oid::bpchar) {
    while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  }
  return s;
}

// What CAST(s AS varchar(n) / character(n)) makes of a text value: an
// explicit cast truncates to n characters, character(n) pads with blanks.
std::string fit_string(const ColumnType& type, std::string s) {
  if ((type.oid != type_oid::varchar && type.oid != type_oid::bpchar) || type.typmod < 4) return s;
  const size_t n = static_cast<size_t>(type.typmod - 4);
  auto starts = char_starts(s);
  if (starts.size() > n) {
    s.resize(starts[n]);
    starts.resize(n);
  }
  if (type.oid == type_oid::bpchar) s.append(n - starts.size(), ' ');
  return s;
}

bool numeric_typmod(int32_t typmod, int& precision, int& scale) {
  if (typmod < 4) return false;
  int32_t t = typmod - 4;
  precision = (t >> 16) & 0xffff;
  scale = ((t & 0x7ff) ^ 1024) - 1024;
  return true;
}

std::optional<std::string> redact_value(const MaskSpec& spec, const ColumnType& type) {
  if (is_string_type(type)) return fit_string(type, spec.value.value_or("***"));
  switch (type.oid) {
    case type_oid::int2:
    case type_oid::int4:
    case type_oid::int8:
    case type_oid::float4:
    case type_oid::float8: return "0";
    case type_oid::numeric: {
      int p = 0;
      int s = 0;
      if (numeric_typmod(type.typmod, p, s) && s > 0) return "0." + std::string(static_cast<size_t>(s), '0');
      return "0";
    }
    case type_oid::date: return "1900-01-01";
    case type_oid::timestamp: return "1900-01-01 00:00:00";
    case type_oid::timestamptz: return "1900-01-01 00:00:00+00";
    case type_oid::boolean: return "f";
    case type_oid::uuid: return "00000000-0000-0000-0000-000000000000";
    case type_oid::bytea: return "\\x";
    case type_oid::json:
    case type_oid::jsonb: return "{}";
    default: return std::nullopt;
  }
}

uint64_t hex_prefix(const std::array<uint8_t, 32>& h, int hex_digits) {
  uint64_t v = 0;
  for (int i = 0; i < hex_digits; ++i) {
    uint8_t b = h[static_cast<size_t>(i / 2)];
    v = (v << 4) | ((i % 2 == 0) ? (b >> 4) : (b & 0xf));
  }
  return v;
}

std::optional<std::string> hash_value(const MaskSpec& spec, const ColumnType& type, std::string_view text,
                                      const MaskKeys& keys) {
  if (!keys.present) return std::nullopt;
  if (is_string_type(type)) {
    auto h = hmac_sha256(keys.hash_key, as_text(type, text));
    int len = std::clamp(spec.length, 1, max_hash_length);
    return fit_string(type, to_hex(h.data(), h.size()).substr(0, static_cast<size_t>(len)));
  }
  auto h = hmac_sha256(keys.hash_key, text);
  switch (type.oid) {
    case type_oid::int8: return std::to_string(static_cast<int64_t>(hex_prefix(h, 16)));
    case type_oid::int4: return std::to_string(static_cast<int32_t>(static_cast<uint32_t>(hex_prefix(h, 8))));
    case type_oid::int2:
      return std::to_string(static_cast<int32_t>(static_cast<uint32_t>(hex_prefix(h, 8))) >> 16);
    case type_oid::numeric: {
      uint64_t n = hex_prefix(h, 15);
      int p = 0;
      int s = 0;
      if (!numeric_typmod(type.typmod, p, s)) return std::to_string(n);
      uint64_t mod = 1;
      for (int i = 0; i < std::min(p, 18); ++i) mod *= 10;
      std::string digits = std::to_string(n % mod);
      if (s < 0) return digits == "0" ? digits : digits + std::string(static_cast<size_t>(-s), '0');
      if (s == 0) return digits;
      if (digits.size() < static_cast<size_t>(s) + 1) {
        digits.insert(0, static_cast<size_t>(s) + 1 - digits.size(), '0');
      }
      digits.insert(digits.size() - static_cast<size_t>(s), ".");
      return digits;
    }
    default: return std::nullopt;
  }
}

std::string to_lower_ascii(std::string_view s) {
  std::string out(s);
  for (auto& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

std::optional<std::string> pseudonym_value(const MaskSpec& spec, const ColumnType& type,
                                           std::string_view text, const MaskKeys& keys) {
  if (!keys.present || !is_string_type(type)) return std::nullopt;
  auto h = hmac_sha256(keys.pseudonym_key, as_text(type, text));
  const auto& firsts = pseudonym_first_names();
  const auto& lasts = pseudonym_last_names();
  std::string_view first = firsts[h[0] % firsts.size()];
  std::string_view last = lasts[h[1] % lasts.size()];
  std::string out;
  switch (spec.pseudonym_kind.value_or(PseudonymKind::name)) {
    case PseudonymKind::name: out = std::string(first) + " " + std::string(last); break;
    case PseudonymKind::first_name: out = std::string(first); break;
    case PseudonymKind::last_name: out = std::string(last); break;
    case PseudonymKind::email: {
      int nn = h[2] % 100;
      out = to_lower_ascii(first) + "." + to_lower_ascii(last) + (nn < 10 ? "0" : "") + std::to_string(nn) +
            "@example.net";
      break;
    }
  }
  return fit_string(type, out);
}

// "YYYY-MM-DD[ HH:MM:SS[.ffffff]][+TZ][ BC]" truncated to a year, month or
// day; "infinity" and "-infinity" stay.
std::optional<std::string> generalize_datetime(DatePart to, const ColumnType& type, std::string_view text) {
  if (text == "infinity" || text == "-infinity") return std::string(text);
  size_t y = 0;
  while (y < text.size() && is_digit(text[y])) ++y;
  if (y == 0 || y + 6 > text.size() || text[y] != '-' || text[y + 3] != '-') return std::nullopt;
  std::string year(text.substr(0, y));
  std::string month(text.substr(y + 1, 2));
  std::string day(text.substr(y + 4, 2));
  std::string_view rest = text.substr(y + 6);
  std::string bc;
  if (rest.size() >= 3 && rest.substr(rest.size() - 3) == " BC") {
    bc = " BC";
    rest.remove_suffix(3);
  }
  if (to == DatePart::year) month = "01";
  if (to != DatePart::day) day = "01";
  std::string out = year + "-" + month + "-" + day;
  if (type.oid == type_oid::date) return out + bc;
  // Time part: " HH:MM:SS[.frac]" then, for timestamptz, the offset.
  if (rest.empty() || rest[0] != ' ') return std::nullopt;
  std::string offset;
  if (type.oid == type_oid::timestamptz) {
    auto at = rest.find_first_of("+-", 1);
    if (at == std::string_view::npos) return std::nullopt;
    offset = std::string(rest.substr(at));
  }
  return out + " 00:00:00" + offset + bc;
}

// trunc(v / bucket) * bucket on the decimal text of v (div() in the SQL).
std::optional<std::string> generalize_number(uint64_t bucket, const ColumnType& type, std::string_view text) {
  if (bucket == 0) return std::nullopt;
  if (text == "NaN" || text == "Infinity" || text == "-Infinity") return std::string(text);
  bool negative = false;
  if (!text.empty() && text[0] == '-') {
    negative = true;
    text.remove_prefix(1);
  }
  size_t i = 0;
  while (i < text.size() && is_digit(text[i])) ++i;
  if (i == 0) return std::nullopt;
  std::string digits(text.substr(0, i));
  uint64_t rem = 0;  // < bucket <= 10^18, so rem * 10 + 9 fits
  for (char c : digits) rem = (rem * 10 + static_cast<unsigned>(c - '0')) % bucket;
  // digits -= rem
  std::string r = std::to_string(static_cast<uint64_t>(rem));
  int borrow = 0;
  for (size_t k = 0; k < digits.size(); ++k) {
    size_t di = digits.size() - 1 - k;
    int sub = (k < r.size() ? r[r.size() - 1 - k] - '0' : 0) + borrow;
    int d = digits[di] - '0' - sub;
    borrow = d < 0 ? 1 : 0;
    if (d < 0) d += 10;
    digits[di] = static_cast<char>('0' + d);
  }
  size_t nz = digits.find_first_not_of('0');
  std::string out = nz == std::string::npos ? "0" : digits.substr(nz);
  if (negative && out != "0") out.insert(0, "-");
  int p = 0;
  int s = 0;
  if (type.oid == type_oid::numeric && numeric_typmod(type.typmod, p, s) && s > 0) {
    out += "." + std::string(static_cast<size_t>(s), '0');
  }
  return out;
}

// --- redact_patterns: the regexes of mask_sql.cc, matched the way
// PostgreSQL's regexp_replace(..., 'g') does: leftmost start, then the
// longest match there (all four patterns are greedy), continuing after it.
// All four patterns only involve ASCII, so scanning bytes is the same as
// scanning UTF-8 characters.

using Matcher = size_t (*)(std::string_view s, size_t at);  // end, or npos
constexpr size_t no_match = std::string_view::npos;

std::string replace_all(std::string_view s, Matcher m, std::string_view replacement) {
  std::string out;
  size_t i = 0;
  size_t copied = 0;
  while (i < s.size()) {
    size_t end = m(s, i);
    if (end == no_match || end == i) {
      ++i;
      continue;
    }
    out.append(s.substr(copied, i - copied));
    out.append(replacement);
    i = copied = end;
  }
  out.append(s.substr(copied));
  return out;
}

// Digits separated by up to max_sep separator characters, min..max digits
// in total, ending at a digit not followed by a digit. Longest end, or npos.
size_t digit_chain(std::string_view s, size_t p, size_t max_sep, std::string_view seps, int min_digits,
                   int max_digits) {
  size_t best = no_match;
  int count = 0;
  while (p < s.size() && is_digit(s[p])) {
    while (p < s.size() && is_digit(s[p])) {
      ++p;
      if (++count > max_digits) return best;
    }
    if (count >= min_digits) best = p;
    size_t k = 0;
    while (k < max_sep && p + k < s.size() && seps.find(s[p + k]) != std::string_view::npos) ++k;
    if (k == 0 || p + k >= s.size() || !is_digit(s[p + k])) break;
    p += k;
  }
  return best;
}

bool digit_before(std::string_view s, size_t at) {
  return at > 0 && is_digit(s[at - 1]);
}

// [A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+[.][A-Za-z]{2,}
size_t match_email(std::string_view s, size_t at) {
  auto local = [](char c) { return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-'; };
  auto domain = [](char c) { return is_alnum(c) || c == '.' || c == '-'; };
  if (!local(s[at])) return no_match;
  size_t r = at;
  while (r < s.size() && local(s[r])) ++r;
  if (r >= s.size() || s[r] != '@') return no_match;
  size_t d = r + 1;
  size_t best = no_match;
  size_t letters = 0;
  for (size_t j = d; j < s.size() && domain(s[j]); ++j) {
    letters = is_alpha(s[j]) ? letters + 1 : 0;
    if (letters >= 2 && j >= letters && j - letters >= d + 1 && s[j - letters] == '.') best = j + 1;
  }
  return best;
}

// (?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])
size_t match_card(std::string_view s, size_t at) {
  if (!is_digit(s[at]) || digit_before(s, at)) return no_match;
  return digit_chain(s, at, 1, " -", 13, 19);
}

// (?<![0-9])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9])
size_t match_ssn(std::string_view s, size_t at) {
  if (digit_before(s, at) || at + 11 > s.size()) return no_match;
  static constexpr std::string_view shape = "ddd-dd-dddd";
  for (size_t k = 0; k < shape.size(); ++k) {
    char c = s[at + k];
    if (shape[k] == 'd' ? !is_digit(c) : c != '-') return no_match;
  }
  if (at + 11 < s.size() && is_digit(s[at + 11])) return no_match;
  return at + 11;
}

// (?<![0-9])[+]?[(]?[0-9](?:[ .()-]{0,2}[0-9]){6,14}(?![0-9])
size_t match_phone(std::string_view s, size_t at) {
  if (digit_before(s, at)) return no_match;
  size_t p = at;
  if (s[p] == '+') ++p;
  if (p < s.size() && s[p] == '(') ++p;
  if (p >= s.size() || !is_digit(s[p])) return no_match;
  return digit_chain(s, p, 2, " .()-", 7, 15);
}

}  // namespace

std::string mask_partial(std::string_view s, int keep_first, int keep_last, std::string_view fill) {
  auto starts = char_starts(s);
  const size_t len = starts.size();
  const size_t first = static_cast<size_t>(std::max(keep_first, 0));
  const size_t last = static_cast<size_t>(std::max(keep_last, 0));
  std::string out;
  if (len <= first + last) {
    for (size_t i = 0; i < len; ++i) out += fill;
    return out;
  }
  out.append(s.substr(0, starts[first]));
  for (size_t i = 0; i < len - first - last; ++i) out += fill;
  if (last > 0) out.append(s.substr(starts[len - last]));
  return out;
}

std::string mask_email(std::string_view s) {
  auto at = s.rfind('@');
  if (at == std::string_view::npos) return "***";
  auto starts = char_starts(s);
  size_t first_end = starts.size() > 1 ? starts[1] : s.size();
  return std::string(s.substr(0, first_end)) + "***@" + std::string(s.substr(at + 1));
}

std::string mask_last4(std::string_view s) {
  size_t digits = static_cast<size_t>(std::count_if(s.begin(), s.end(), is_digit));
  std::string out(s);
  size_t to_hide = digits > 4 ? digits - 4 : 0;
  for (auto& c : out) {
    if (to_hide == 0) break;
    if (is_digit(c)) {
      c = '*';
      --to_hide;
    }
  }
  return out;
}

std::string mask_redact_patterns(std::string_view s) {
  std::string out = replace_all(s, match_email, "[email]");
  out = replace_all(out, match_card, "[card]");
  out = replace_all(out, match_ssn, "[national_id]");
  return replace_all(out, match_phone, "[phone]");
}

std::optional<std::string> mask_null_value(const MaskSpec& spec, const ColumnType& type) {
  // As mask_sql_expression: NULL stays NULL unless the rule masks NULLs, and
  // of the masks that may (mask_nulls_supported()) only redact has a value
  // for it here; null is NULL and custom has no C++ copy.
  if (spec.mask_nulls && spec.kind == MaskKind::redact) return redact_value(spec, type);
  return std::nullopt;
}

std::optional<std::string> mask_text_value(const MaskSpec& spec, const ColumnType& type,
                                           std::string_view text_value, const MaskKeys& keys) {
  const bool str = is_string_type(type);
  switch (spec.kind) {
    case MaskKind::allow: return std::string(text_value);
    case MaskKind::deny:
    case MaskKind::null:
    case MaskKind::custom: return std::nullopt;
    case MaskKind::redact: return redact_value(spec, type);
    case MaskKind::partial:
      if (!str) return std::nullopt;
      return fit_string(type,
                        mask_partial(as_text(type, text_value), spec.keep_first, spec.keep_last, spec.fill));
    case MaskKind::email:
      if (!str) return std::nullopt;
      return fit_string(type, mask_email(as_text(type, text_value)));
    case MaskKind::last4:
      if (!str) return std::nullopt;
      return fit_string(type, mask_last4(as_text(type, text_value)));
    case MaskKind::hash: return hash_value(spec, type, text_value, keys);
    case MaskKind::pseudonym: return pseudonym_value(spec, type, text_value, keys);
    case MaskKind::generalize:
      if (spec.to && is_datetime_type(type)) return generalize_datetime(*spec.to, type, text_value);
      if (spec.bucket && (is_integer_type(type) || type.oid == type_oid::numeric)) {
        return generalize_number(*spec.bucket, type, text_value);
      }
      return std::nullopt;
    case MaskKind::redact_patterns:
      if (!str) return std::nullopt;
      return fit_string(type, mask_redact_patterns(as_text(type, text_value)));
  }
  return std::nullopt;
}

}  // namespace pgcloak::rules
