#include "rules/pg_tree.h"

#include "protocol/error.h"
#include "rules/parse_bounds.h"

namespace pgcloak::rules {

namespace {

Error too_deep(size_t limit, std::string_view what) {
  return Error::make(sqlstate::statement_too_complex,
                     "pgcloak: the statement nests too deeply to analyse (" + std::string(what) + " " +
                         std::to_string(limit) + ")",
                     Severity::error, "Split the statement, or nest expressions less deeply.");
}

}  // namespace

Result<std::unique_ptr<ParseTree>> ParseTree::parse(const std::string& sql) {
  // Depth bounds first: libpg_query's and protobuf-c's recursion must never
  // meet a statement deeper than a thread's stack (rules/parse_bounds.h).
  if (sql.size() >= token_path_check_from) {
    auto tokens = scan_tokens(sql);
    if (tokens && token_nesting_bound(*tokens) > max_token_path) {
      return too_deep(max_token_path, "more than this many tokens on one nesting path:");
    }
  }
  PgQueryProtobufParseResult r = pg_query_parse_protobuf(sql.c_str());
  if (r.error != nullptr) {
    std::string msg = r.error->message != nullptr ? r.error->message : "syntax error";
    const int pos = r.error->cursorpos;
    pg_query_free_protobuf_parse_result(r);
    return Error::make(
        sqlstate::syntax_error,
        "pgcloak could not parse the statement: " + msg +
            (pos > 0 ? " (at character " + std::to_string(pos) + ")" : std::string()),
        Severity::error,
        "Sessions whose data is masked may only run statements PostgreSQL 15's parser accepts.");
  }
  const std::span<const uint8_t> serialized(reinterpret_cast<const uint8_t*>(r.parse_tree.data),
                                            r.parse_tree.len);
  if (protobuf_depth(serialized, pg_query__parse_result__descriptor, max_tree_depth) > max_tree_depth) {
    pg_query_free_protobuf_parse_result(r);
    return too_deep(max_tree_depth, "more levels than");
  }
  std::unique_ptr<ParseTree> tree(new ParseTree());
  tree->result_ = pg_query__parse_result__unpack(nullptr, r.parse_tree.len,
                                                 reinterpret_cast<const uint8_t*>(r.parse_tree.data));
  pg_query_free_protobuf_parse_result(r);
  if (tree->result_ == nullptr) {
    return Error::make(sqlstate::internal_error, "pgcloak could not read the parse tree of the statement");
  }
  return tree;
}

ParseTree::~ParseTree() {
  if (result_ != nullptr) pg_query__parse_result__free_unpacked(result_, nullptr);
}

Result<std::vector<Token>> scan_tokens(const std::string& sql) {
  PgQueryScanResult r = pg_query_scan(sql.c_str());
  if (r.error != nullptr) {
    std::string msg = r.error->message != nullptr ? r.error->message : "scan error";
    pg_query_free_scan_result(r);
    return Error::make(sqlstate::syntax_error, "pgcloak could not scan the statement: " + msg);
  }
  PgQuery__ScanResult* s =
      pg_query__scan_result__unpack(nullptr, r.pbuf.len, reinterpret_cast<const uint8_t*>(r.pbuf.data));
  pg_query_free_scan_result(r);
  if (s == nullptr)
    return Error::make(sqlstate::internal_error, "pgcloak could not read the statement's tokens");
  std::vector<Token> out;
  out.reserve(s->n_tokens);
  for (size_t i = 0; i < s->n_tokens; ++i) {
    const auto* t = s->tokens[i];
    if (t->token == PG_QUERY__TOKEN__SQL_COMMENT || t->token == PG_QUERY__TOKEN__C_COMMENT) continue;
    out.push_back({t->start, t->end, t->token, t->keyword_kind != PG_QUERY__KEYWORD_KIND__NO_KEYWORD});
  }
  pg_query__scan_result__free_unpacked(s, nullptr);
  return out;
}

namespace {

void walk_message(const ProtobufCMessage* m, const NodeVisitor& visit) {
  const ProtobufCMessageDescriptor* d = m->descriptor;
  const auto* base = reinterpret_cast<const char*>(m);
  for (unsigned i = 0; i < d->n_fields; ++i) {
    const ProtobufCFieldDescriptor& f = d->fields[i];
    if (f.type != PROTOBUF_C_TYPE_MESSAGE) continue;
    if ((f.flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0U) {
      // Only the member the oneof's case names is set (Node's node_case).
      const auto which = *reinterpret_cast<const uint32_t*>(base + f.quantifier_offset);
      if (which != f.id) continue;
    }
    if (f.label == PROTOBUF_C_LABEL_REPEATED) {
      const auto n = *reinterpret_cast<const size_t*>(base + f.quantifier_offset);
      auto* const* items = *reinterpret_cast<ProtobufCMessage* const* const*>(base + f.offset);
      for (size_t k = 0; k < n; ++k) {
        if (items[k] != nullptr && visit(items[k], f.name)) walk_message(items[k], visit);
      }
    } else {
      const auto* child = *reinterpret_cast<const ProtobufCMessage* const*>(base + f.offset);
      if (child != nullptr && visit(child, f.name)) walk_message(child, visit);
    }
  }
}

}  // namespace

void walk_children(const ProtobufCMessage* root, const NodeVisitor& visit) {
  walk_message(root, visit);
}

std::vector<std::string> string_list(PgQuery__Node* const* items, size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) {
    const PgQuery__Node* node = items[i];
    if (node != nullptr && node->node_case == PG_QUERY__NODE__NODE_STRING && node->string != nullptr) {
      out.emplace_back(node->string->sval);
    } else {
      out.emplace_back();  // e.g. A_Star in a column reference
    }
  }
  return out;
}

}  // namespace pgcloak::rules
