// PostgreSQL's own parser and scanner (libpg_query, PostgreSQL 15) with
// their protobuf output unpacked into protobuf-c structs, plus a generic
// walk over any node. The walk uses protobuf-c's descriptors, so every node
// type and every field is visited without a hand-written list that could
// miss one: the rewriter only special-cases the nodes it understands and
// sees all the others.
#pragma once

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"

namespace pgcloak::rules {

class ParseTree {
 public:
  // Parses sql (which must not contain NUL). A syntax error becomes 42601
  // with PostgreSQL's message and the position.
  static Result<std::unique_ptr<ParseTree>> parse(const std::string& sql);
  ~ParseTree();
  ParseTree(const ParseTree&) = delete;
  ParseTree& operator=(const ParseTree&) = delete;

  const PgQuery__ParseResult& result() const { return *result_; }

 private:
  ParseTree() = default;
  PgQuery__ParseResult* result_ = nullptr;
};

struct Token {
  int start = 0;
  int end = 0;
  PgQuery__Token kind = PG_QUERY__TOKEN__NUL;
  bool keyword = false;
};

// The scanner's tokens (comments excluded), in order.
Result<std::vector<Token>> scan_tokens(const std::string& sql);

// Calls visit(message, field_name_in_parent) for every message below root
// (root excluded), depth first. Returning false from visit skips that
// message's children.
using NodeVisitor = std::function<bool(const ProtobufCMessage* message, std::string_view parent_field)>;
void walk_children(const ProtobufCMessage* root, const NodeVisitor& visit);

// The String node list of a qualified name, as plain strings.
std::vector<std::string> string_list(PgQuery__Node* const* items, size_t n);

inline bool is(const ProtobufCMessage* m, const ProtobufCMessageDescriptor& d) {
  return m->descriptor == &d;
}

}  // namespace pgcloak::rules
