#include "rules/prepared_names.h"

#include <cctype>

namespace pgcloak::rules {

namespace {

bool space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

class Words {
 public:
  explicit Words(std::string_view s) : s_(s) {}

  void skip_space() {
    while (at_ < s_.size() && space(s_[at_])) ++at_;
  }

  // The next word if it is `kw` (case-insensitive, whole word).
  bool keyword(std::string_view kw) {
    skip_space();
    if (s_.size() - at_ < kw.size()) return false;
    for (size_t i = 0; i < kw.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(s_[at_ + i])) != kw[i]) return false;
    }
    const size_t end = at_ + kw.size();
    if (end < s_.size() && ident_char(s_[end])) return false;
    at_ = end;
    return true;
  }

  // An identifier as PostgreSQL folds it (scan.l): unquoted is lower-cased
  // (ASCII), "quoted" is kept with "" as one quote.
  std::optional<std::string> identifier() {
    skip_space();
    if (at_ >= s_.size()) return std::nullopt;
    std::string out;
    if (s_[at_] == '"') {
      for (size_t i = at_ + 1; i < s_.size(); ++i) {
        if (s_[i] != '"') {
          out += s_[i];
        } else if (i + 1 < s_.size() && s_[i + 1] == '"') {
          out += '"';
          ++i;
        } else {
          at_ = i + 1;
          if (out.empty()) return std::nullopt;  // "" is not an identifier
          return out;
        }
      }
      return std::nullopt;  // unterminated
    }
    const char first = s_[at_];
    if (!(std::isalpha(static_cast<unsigned char>(first)) || first == '_' ||
          static_cast<unsigned char>(first) >= 0x80)) {
      return std::nullopt;
    }
    while (at_ < s_.size() && ident_char(s_[at_])) {
      out += static_cast<char>(std::tolower(static_cast<unsigned char>(s_[at_])));
      ++at_;
    }
    return out;
  }

  // Only white space and at most one ';' left.
  bool at_end() {
    skip_space();
    if (at_ < s_.size() && s_[at_] == ';') ++at_;
    skip_space();
    return at_ == s_.size();
  }

 private:
  static bool ident_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' ||
           static_cast<unsigned char>(c) >= 0x80;
  }

  std::string_view s_;
  size_t at_ = 0;
};

}  // namespace

std::optional<Deallocation> deallocation_of(std::string_view sql) {
  Words w(sql);
  if (w.keyword("discard")) {
    if (w.keyword("all") && w.at_end()) return Deallocation{true, {}};
    return std::nullopt;
  }
  if (!w.keyword("deallocate")) return std::nullopt;
  (void)w.keyword("prepare");
  if (w.keyword("all")) {
    if (w.at_end()) return Deallocation{true, {}};
    return std::nullopt;
  }
  auto name = w.identifier();
  if (!name || !w.at_end()) return std::nullopt;
  return Deallocation{false, std::move(*name)};
}

}  // namespace pgcloak::rules
