#include "rules/literal_skeleton.h"

#include <cctype>

namespace pgcloak::rules {

namespace {

bool identifier_byte(unsigned char c) {
  return std::isalnum(c) != 0 || c == '_' || c == '$' || c >= 0x80;
}

}  // namespace

std::optional<LiteralSkeleton> literal_skeleton(std::string_view sql) {
  constexpr char number_marker = '\x01';
  LiteralSkeleton sk;
  std::string& out = sk.text;
  out.reserve(sql.size());
  size_t i = 0;
  const size_t n = sql.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(sql[i]);
    if (c == '\\' || c == 0) return std::nullopt;
    if (c == '-' && i + 1 < n && sql[i + 1] == '-') return std::nullopt;
    if (c == '/' && i + 1 < n && sql[i + 1] == '*') return std::nullopt;
    if (c == ';') {
      for (size_t k = i + 1; k < n; ++k) {
        if (std::isspace(static_cast<unsigned char>(sql[k])) == 0) return std::nullopt;
      }
      out.append(sql.substr(i));
      return sk;
    }
    if (c == '$' && (i + 1 >= n || std::isdigit(static_cast<unsigned char>(sql[i + 1])) == 0) &&
        (i == 0 || !identifier_byte(static_cast<unsigned char>(sql[i - 1])))) {
      return std::nullopt;  // a dollar quote
    }
    if (c == '"') {  // a quoted identifier, kept as written
      size_t k = i + 1;
      for (;;) {
        k = sql.find('"', k);
        if (k == std::string_view::npos) return std::nullopt;
        if (k + 1 < n && sql[k + 1] == '"') {
          k += 2;
          continue;
        }
        break;
      }
      out.append(sql.substr(i, k + 1 - i));
      i = k + 1;
      continue;
    }
    if (c == '\'') {
      if (i > 0 && identifier_byte(static_cast<unsigned char>(sql[i - 1])))
        return std::nullopt;  // E'', B'', ...
      size_t k = i + 1;
      for (;;) {
        k = sql.find('\'', k);
        if (k == std::string_view::npos) return std::nullopt;
        if (k + 1 < n && sql[k + 1] == '\'') {
          k += 2;
          continue;
        }
        break;
      }
      out += "''";
      sk.literals.emplace_back(i, k + 1 - i);
      i = k + 1;
      continue;
    }
    if (std::isdigit(c) != 0 && (i == 0 || !identifier_byte(static_cast<unsigned char>(sql[i - 1])))) {
      size_t k = i;
      while (k < n && std::isdigit(static_cast<unsigned char>(sql[k])) != 0) ++k;
      if (k - i > 9) return std::nullopt;  // may lex as a float or numeric constant
      out += number_marker;
      sk.literals.emplace_back(i, k - i);
      i = k;
      continue;
    }
    out += static_cast<char>(c);
    ++i;
  }
  return sk;
}

}  // namespace pgcloak::rules
