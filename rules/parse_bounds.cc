#include "rules/parse_bounds.h"

#include <limits>

namespace pgcloak::rules {

namespace {

bool separator(PgQuery__Token kind) {
  switch (kind) {
    case PG_QUERY__TOKEN__ASCII_44:  // ,
    case PG_QUERY__TOKEN__ASCII_59:  // ;
    case PG_QUERY__TOKEN__AND:
    case PG_QUERY__TOKEN__OR:
    case PG_QUERY__TOKEN__WHEN:
    case PG_QUERY__TOKEN__THEN:
    case PG_QUERY__TOKEN__ELSE: return true;
    default: return false;
  }
}

// Brackets, and CASE ... END, whose WHEN/THEN/ELSE separate only its own
// branches: a chain of `+ CASE ... END` nests one level per step.
bool opens(PgQuery__Token kind) {
  return kind == PG_QUERY__TOKEN__ASCII_40 || kind == PG_QUERY__TOKEN__ASCII_91 ||  // ( [
         kind == PG_QUERY__TOKEN__CASE;
}

bool closes(PgQuery__Token kind) {
  return kind == PG_QUERY__TOKEN__ASCII_41 || kind == PG_QUERY__TOKEN__ASCII_93 ||  // ) ]
         kind == PG_QUERY__TOKEN__END_P;
}

// Left-recursive rules whose steps hold separators of their own: each
// SELECT of a UNION chain has its select list and WHERE clause, each JOIN
// its ON condition. They nest one level per step across separators.
bool chains_across_separators(PgQuery__Token kind) {
  return kind == PG_QUERY__TOKEN__UNION || kind == PG_QUERY__TOKEN__INTERSECT ||
         kind == PG_QUERY__TOKEN__EXCEPT || kind == PG_QUERY__TOKEN__JOIN;
}

// Protobuf's base-128 varint (protobuf encoding docs, "Base 128 Varints").
bool read_varint(std::span<const uint8_t> b, size_t& at, uint64_t& out) {
  out = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (at >= b.size()) return false;
    const uint8_t byte = b[at++];
    out |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

}  // namespace

size_t token_nesting_bound(const std::vector<Token>& tokens) {
  // Per open bracket: tokens since the last separator, and chain steps
  // that no separator ends.
  struct Level {
    size_t since_separator = 0;
    size_t chain = 0;
  };
  std::vector<Level> levels(1);
  size_t path = 0;  // the sum of both counts over the open levels
  size_t deepest = 0;
  for (const Token& t : tokens) {
    if (separator(t.kind)) {
      path -= levels.back().since_separator;
      levels.back().since_separator = 0;
      continue;
    }
    if (closes(t.kind)) {
      if (levels.size() > 1) {
        path -= levels.back().since_separator + levels.back().chain;
        levels.pop_back();
      }
      continue;
    }
    if (chains_across_separators(t.kind)) {
      ++levels.back().chain;
    } else {
      ++levels.back().since_separator;
    }
    ++path;
    if (opens(t.kind)) levels.emplace_back();
    deepest = std::max(deepest, path);
  }
  return deepest;
}

size_t protobuf_depth(std::span<const uint8_t> bytes, const ProtobufCMessageDescriptor& root,
                      size_t stop_at) {
  constexpr size_t malformed = std::numeric_limits<size_t>::max();
  struct Level {
    size_t end;
    const ProtobufCMessageDescriptor* descriptor;
  };
  std::vector<Level> open{{bytes.size(), &root}};
  size_t deepest = 1;
  size_t at = 0;
  while (true) {
    while (open.size() > 1 && at == open.back().end) open.pop_back();
    if (at == bytes.size()) return open.size() == 1 ? deepest : malformed;
    if (at > open.back().end) return malformed;
    uint64_t key = 0;
    if (!read_varint(bytes, at, key)) return malformed;
    switch (key & 7) {
      case 0: {  // varint
        uint64_t ignored = 0;
        if (!read_varint(bytes, at, ignored)) return malformed;
        break;
      }
      case 1:  // 64-bit
        if (bytes.size() - at < 8) return malformed;
        at += 8;
        break;
      case 5:  // 32-bit
        if (bytes.size() - at < 4) return malformed;
        at += 4;
        break;
      case 2: {  // length-delimited: a message, or a string, bytes or packed values
        uint64_t len = 0;
        if (!read_varint(bytes, at, len) || len > open.back().end - at) return malformed;
        const auto* field =
            protobuf_c_message_descriptor_get_field(open.back().descriptor, static_cast<unsigned>(key >> 3));
        if (field != nullptr && field->type == PROTOBUF_C_TYPE_MESSAGE) {
          open.push_back({at + static_cast<size_t>(len),
                          static_cast<const ProtobufCMessageDescriptor*>(field->descriptor)});
          deepest = std::max(deepest, open.size());
          if (deepest > stop_at) return deepest;
        } else {
          at += static_cast<size_t>(len);
        }
        break;
      }
      default: return malformed;  // groups (3, 4) are not used by libpg_query
    }
  }
}

}  // namespace pgcloak::rules
