// Bounds on how deeply a statement nests, checked without recursion before
// the parser's and protobuf-c's recursive code sees it, so that no
// statement can overflow a relay thread's stack (SQLSTATE 54001, as
// PostgreSQL answers a statement deeper than its max_stack_depth).
//
// Two places recurse once per nesting level:
//  - libpg_query itself, in its output functions. Left-recursive grammar
//    rules (binary operators, UNION, JOIN, ::) cost the parser no stack of
//    its own, so `SELECT 1+1+...+1` nests as deep as it is long. Checked
//    before parsing on the scanner's tokens (token_nesting_bound).
//  - protobuf-c's unpack, the deeper of the two (about 0.8 KB of stack per
//    message level). Checked exactly on the serialized tree before it is
//    unpacked (protobuf_depth).
#pragma once

#include <protobuf-c/protobuf-c.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "rules/pg_tree.h"

namespace pgcloak::rules {

// Message levels of a parse tree pgcloak unpacks and walks: about half as
// many expression levels. PostgreSQL's own limit (max_stack_depth 2 MB) is
// of the same order.
inline constexpr size_t max_tree_depth = 2000;
// Tokens on one nesting path of a statement before it is parsed (see
// token_nesting_bound): far below the depth at which libpg_query's own
// recursion needs more than a thread's stack, and a bound on its time,
// which grows with the square of the depth.
inline constexpr size_t max_token_path = 10000;
// Shorter statements cannot nest deep enough to matter to libpg_query, so
// they are not scanned twice.
inline constexpr size_t token_path_check_from = size_t{16} * 1024;

// An estimate, from above, of how deep the parse tree of `tokens` can nest
// beyond what the grammar's own stack allows: per bracket level (brackets
// and CASE ... END), the tokens since the last separator at that level
// (`,` `;` AND OR WHEN THEN ELSE, which separate list items whose trees are
// siblings) plus the UNION, INTERSECT, EXCEPT and JOIN steps at that level
// (left-recursive chains whose steps hold separators), summed over the
// open levels.
size_t token_nesting_bound(const std::vector<Token>& tokens);

// How deeply messages nest in a serialized protobuf message of type
// `root`, counted with an explicit stack. Stops counting past `stop_at`;
// a malformed encoding counts as SIZE_MAX.
size_t protobuf_depth(std::span<const uint8_t> bytes, const ProtobufCMessageDescriptor& root, size_t stop_at);

}  // namespace pgcloak::rules
