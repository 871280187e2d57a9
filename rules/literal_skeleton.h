// A statement text with the values of its plain literals taken out. Two
// texts with the same skeleton differ only in those values: they parse to
// the same tree but for the constants, so the analyses that do not look at
// constant values (audit profile, masking decision) can be shared between
// them. Point reads in the simple protocol (a new literal every time,
// pgbench -S) then cost a scan instead of libpg_query passes.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgcloak::rules {

struct LiteralSkeleton {
  // 'strings' become '', numbers that are not part of an identifier or a $n
  // parameter become one marker byte (0x01).
  std::string text;
  // Where the literals are in the original text: (offset, length), in order.
  std::vector<std::pair<size_t, size_t>> literals;
};

// Anything whose lexing is not that simple gives no skeleton, and the text
// must be analysed on its own: backslashes, dollar quotes, comments,
// prefixed strings (E'', B'', X'', U&'', N''), more than one statement,
// NUL bytes, and integers long enough to lex as another constant type.
std::optional<LiteralSkeleton> literal_skeleton(std::string_view sql);

}  // namespace pgcloak::rules
