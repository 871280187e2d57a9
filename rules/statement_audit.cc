#include "rules/statement_audit.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <deque>
#include <optional>
#include <set>

#include "rules/literal_skeleton.h"
#include "rules/pg_tree.h"

namespace pgcloak::rules {

struct ParsedText {
  std::unique_ptr<ParseTree> tree;  // null = parse error
};

namespace {

// ---------------------------------------------------------------------------
// Tokens. pg_tree's scan_tokens() drops comments, and redaction needs to see
// them, so this scan keeps every token the scanner reports.

struct RawToken {
  size_t start = 0;
  PgQuery__Token kind = PG_QUERY__TOKEN__NUL;
};

bool is_literal(PgQuery__Token k) {
  switch (k) {
    case PG_QUERY__TOKEN__SCONST:
    case PG_QUERY__TOKEN__USCONST:
    case PG_QUERY__TOKEN__ICONST:
    case PG_QUERY__TOKEN__FCONST:
    case PG_QUERY__TOKEN__BCONST:
    case PG_QUERY__TOKEN__XCONST: return true;
    default: return false;
  }
}

bool is_comment(PgQuery__Token k) {
  return k == PG_QUERY__TOKEN__SQL_COMMENT || k == PG_QUERY__TOKEN__C_COMMENT;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool is_word_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return std::isalnum(u) != 0 || c == '_' || c == '$' || u >= 0x80;
}

std::optional<std::vector<RawToken>> scan_all(const std::string& text) {
  PgQueryScanResult r = pg_query_scan(text.c_str());
  if (r.error != nullptr) {
    pg_query_free_scan_result(r);
    return std::nullopt;
  }
  PgQuery__ScanResult* s =
      pg_query__scan_result__unpack(nullptr, r.pbuf.len, reinterpret_cast<const uint8_t*>(r.pbuf.data));
  pg_query_free_scan_result(r);
  if (s == nullptr) return std::nullopt;
  std::vector<RawToken> out;
  out.reserve(s->n_tokens);
  bool ordered = true;
  for (size_t i = 0; i < s->n_tokens; ++i) {
    const int start = s->tokens[i]->start;
    if (start < 0 || static_cast<size_t>(start) >= text.size() ||
        (!out.empty() && static_cast<size_t>(start) <= out.back().start)) {
      ordered = false;
      break;
    }
    out.push_back({static_cast<size_t>(start), s->tokens[i]->token});
  }
  pg_query__scan_result__free_unpacked(s, nullptr);
  if (!ordered) return std::nullopt;
  return out;
}

// Where token i ends. The scanner's own end offsets are wrong for some
// tokens (U&'...' and U&"..." report the length of the decoded text), so a
// token runs up to the next token's start, less whitespace.
size_t token_end(const std::string& text, const std::vector<RawToken>& tokens, size_t i) {
  size_t end = i + 1 < tokens.size() ? tokens[i + 1].start : text.size();
  const size_t floor = tokens[i].start + 1;
  while (end > floor && is_space(text[end - 1])) --end;
  return end;
}

unsigned param_number(std::string_view token) {
  unsigned n = 0;
  if (token.size() < 2 || token[0] != '$') return 0;
  auto [ptr, ec] = std::from_chars(token.data() + 1, token.data() + token.size(), n);
  if (ec != std::errc()) return 0;
  return n;
}

// Every literal token of text as the next $n, every comment dropped, and
// tokens separated by one space where the text had whitespace or a comment
// between them. nullopt when the text cannot be scanned.
std::optional<std::string> placeholders(const std::string& text) {
  auto tokens = scan_all(text);
  if (!tokens) return std::nullopt;
  unsigned next = 0;
  for (size_t i = 0; i < tokens->size(); ++i) {
    if ((*tokens)[i].kind != PG_QUERY__TOKEN__PARAM) continue;
    const size_t end = token_end(text, *tokens, i);
    next = std::max(
        next, param_number(std::string_view(text).substr((*tokens)[i].start, end - (*tokens)[i].start)));
  }
  std::string out;
  out.reserve(text.size());
  size_t prev_end = 0;
  bool separated = false;
  bool prev_replaced = false;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const RawToken& t = (*tokens)[i];
    const size_t end = token_end(text, *tokens, i);
    if (t.start > prev_end) separated = true;
    prev_end = end;
    if (is_comment(t.kind)) {
      separated = true;
      continue;
    }
    const bool replaced = is_literal(t.kind);
    const std::string piece = replaced ? "$" + std::to_string(++next) : text.substr(t.start, end - t.start);
    if (!out.empty()) {
      // A placeholder glued to a word would read as one identifier ("x$1"
      // or "$1abc"): keep them apart.
      const bool glue =
          (replaced || prev_replaced) && is_word_byte(out.back()) && is_word_byte(piece.front());
      if (separated || glue) out += ' ';
    }
    out += piece;
    separated = false;
    prev_replaced = replaced;
  }
  return out;
}

// The guarantee: a text is only reported if scanning it finds no literal
// and no comment.
bool free_of_literals(const std::string& text) {
  auto tokens = scan_all(text);
  if (!tokens) return false;
  return std::none_of(tokens->begin(), tokens->end(),
                      [](const RawToken& t) { return is_literal(t.kind) || is_comment(t.kind); });
}

// libpg_query's normaliser first (it numbers placeholders the way
// pg_stat_statements does), then placeholders() for what it leaves behind:
// it only replaces constants of plannable statements, so DDL defaults,
// COMMENT, COPY file names, NOTIFY payloads, PREPARE bodies and comments
// survive it.
std::string normalize(const std::string& stmt) {
  std::optional<std::string> out;
  PgQueryNormalizeResult n = pg_query_normalize(stmt.c_str());
  if (n.error == nullptr && n.normalized_query != nullptr) out = placeholders(n.normalized_query);
  pg_query_free_normalize_result(n);
  if (!out) out = placeholders(stmt);
  if (!out || !free_of_literals(*out)) return {};
  return *out;
}

// The statement with every literal replaced by a constant of the same kind,
// so it still parses to the same shape. libpg_query's fingerprint ignores
// the values of ordinary constants but hashes strings that are not
// constants in the tree (passwords, DO bodies, COPY file names, COMMENT
// text, typmods): a fingerprint of the raw text would let anyone holding the
// log confirm guesses of those values offline.
std::optional<std::string> neutral_literals(const std::string& stmt) {
  auto tokens = scan_all(stmt);
  if (!tokens) return std::nullopt;
  std::string out;
  out.reserve(stmt.size());
  size_t at = 0;
  for (size_t i = 0; i < tokens->size(); ++i) {
    const RawToken& t = (*tokens)[i];
    if (!is_literal(t.kind)) continue;
    size_t end = token_end(stmt, *tokens, i);
    std::string_view neutral = "''";
    switch (t.kind) {
      case PG_QUERY__TOKEN__ICONST: neutral = "0"; break;
      case PG_QUERY__TOKEN__FCONST: neutral = "0.0"; break;
      case PG_QUERY__TOKEN__BCONST: neutral = "B''"; break;
      case PG_QUERY__TOKEN__XCONST: neutral = "X''"; break;
      case PG_QUERY__TOKEN__USCONST:
        // U&'...' UESCAPE '!': a plain '' cannot take the UESCAPE clause.
        if (i + 2 < tokens->size() && (*tokens)[i + 1].kind == PG_QUERY__TOKEN__UESCAPE &&
            (*tokens)[i + 2].kind == PG_QUERY__TOKEN__SCONST) {
          end = token_end(stmt, *tokens, i + 2);
          i += 2;
        }
        break;
      default: break;
    }
    out.append(stmt, at, t.start - at);
    out += ' ';  // never glue onto a neighbouring word
    out += neutral;
    out += ' ';
    at = end;
  }
  out.append(stmt, at, std::string::npos);
  return out;
}

std::string fingerprint_of(const std::string& text) {
  PgQueryFingerprintResult f = pg_query_fingerprint(text.c_str());
  std::string out;
  if (f.error == nullptr && f.fingerprint_str != nullptr) out = f.fingerprint_str;
  pg_query_free_fingerprint_result(f);
  return out;
}

std::string fingerprint(const std::string& stmt, const std::string& normalized) {
  if (auto neutral = neutral_literals(stmt)) {
    std::string fp = fingerprint_of(*neutral);
    if (!fp.empty()) return fp;
  }
  // Should not happen (the neutral text parses whenever the statement
  // does); the normalised text holds no literal either.
  return normalized.empty() ? std::string() : fingerprint_of(normalized);
}

// ---------------------------------------------------------------------------
// Command tags and classes: PostgreSQL's CreateCommandTag() and
// GetCommandLogLevel() (tcop/utility.c), mapped to classes as pgAudit's
// log_audit_event() does: LOGSTMT_MOD is WRITE, LOGSTMT_DDL is DDL (ROLE for
// role and privilege statements), LOGSTMT_ALL is READ for SELECT, COPY and
// PREPARE, FUNCTION for DO and MISC otherwise. CALL is FUNCTION here:
// pgAudit logs the procedure it runs in that class.

struct FixedCommand {
  PgQuery__Node__NodeCase node;
  std::string_view tag;
  AuditClass audit_class;
};

// Statements whose tag and class do not depend on their fields.
constexpr FixedCommand fixed_commands[] = {
    {PG_QUERY__NODE__NODE_INSERT_STMT, "INSERT", AuditClass::write},
    {PG_QUERY__NODE__NODE_UPDATE_STMT, "UPDATE", AuditClass::write},
    {PG_QUERY__NODE__NODE_DELETE_STMT, "DELETE", AuditClass::write},
    {PG_QUERY__NODE__NODE_MERGE_STMT, "MERGE", AuditClass::write},
    {PG_QUERY__NODE__NODE_TRUNCATE_STMT, "TRUNCATE TABLE", AuditClass::write},
    {PG_QUERY__NODE__NODE_PLASSIGN_STMT, "SELECT", AuditClass::read},
    {PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT, "DECLARE CURSOR", AuditClass::misc},
    {PG_QUERY__NODE__NODE_EXECUTE_STMT, "EXECUTE", AuditClass::misc},
    {PG_QUERY__NODE__NODE_NOTIFY_STMT, "NOTIFY", AuditClass::misc},
    {PG_QUERY__NODE__NODE_LISTEN_STMT, "LISTEN", AuditClass::misc},
    {PG_QUERY__NODE__NODE_UNLISTEN_STMT, "UNLISTEN", AuditClass::misc},
    {PG_QUERY__NODE__NODE_LOAD_STMT, "LOAD", AuditClass::misc},
    {PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT, "SHOW", AuditClass::misc},
    {PG_QUERY__NODE__NODE_LOCK_STMT, "LOCK TABLE", AuditClass::misc},
    {PG_QUERY__NODE__NODE_CONSTRAINTS_SET_STMT, "SET CONSTRAINTS", AuditClass::misc},
    {PG_QUERY__NODE__NODE_CHECK_POINT_STMT, "CHECKPOINT", AuditClass::misc},
    {PG_QUERY__NODE__NODE_REINDEX_STMT, "REINDEX", AuditClass::misc},
    {PG_QUERY__NODE__NODE_DO_STMT, "DO", AuditClass::function},
    {PG_QUERY__NODE__NODE_CALL_STMT, "CALL", AuditClass::function},
    {PG_QUERY__NODE__NODE_CREATE_ROLE_STMT, "CREATE ROLE", AuditClass::role},
    {PG_QUERY__NODE__NODE_ALTER_ROLE_STMT, "ALTER ROLE", AuditClass::role},
    {PG_QUERY__NODE__NODE_ALTER_ROLE_SET_STMT, "ALTER ROLE", AuditClass::role},
    {PG_QUERY__NODE__NODE_DROP_ROLE_STMT, "DROP ROLE", AuditClass::role},
    {PG_QUERY__NODE__NODE_ALTER_DEFAULT_PRIVILEGES_STMT, "ALTER DEFAULT PRIVILEGES", AuditClass::role},
    {PG_QUERY__NODE__NODE_CREATE_DOMAIN_STMT, "CREATE DOMAIN", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_SCHEMA_STMT, "CREATE SCHEMA", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_STMT, "CREATE TABLE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_TABLE_SPACE_STMT, "CREATE TABLESPACE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_DROP_TABLE_SPACE_STMT, "DROP TABLESPACE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_TABLE_SPACE_OPTIONS_STMT, "ALTER TABLESPACE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_EXTENSION_STMT, "CREATE EXTENSION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_EXTENSION_STMT, "ALTER EXTENSION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_EXTENSION_CONTENTS_STMT, "ALTER EXTENSION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_FDW_STMT, "CREATE FOREIGN DATA WRAPPER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_FDW_STMT, "ALTER FOREIGN DATA WRAPPER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_FOREIGN_SERVER_STMT, "CREATE SERVER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_FOREIGN_SERVER_STMT, "ALTER SERVER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_USER_MAPPING_STMT, "CREATE USER MAPPING", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_USER_MAPPING_STMT, "ALTER USER MAPPING", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_DROP_USER_MAPPING_STMT, "DROP USER MAPPING", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_FOREIGN_TABLE_STMT, "CREATE FOREIGN TABLE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_IMPORT_FOREIGN_SCHEMA_STMT, "IMPORT FOREIGN SCHEMA", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_COMMENT_STMT, "COMMENT", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_SEC_LABEL_STMT, "SECURITY LABEL", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_DOMAIN_STMT, "ALTER DOMAIN", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_COMPOSITE_TYPE_STMT, "CREATE TYPE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_ENUM_STMT, "CREATE TYPE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_RANGE_STMT, "CREATE TYPE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_ENUM_STMT, "ALTER TYPE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_VIEW_STMT, "CREATE VIEW", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_INDEX_STMT, "CREATE INDEX", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_RULE_STMT, "CREATE RULE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_SEQ_STMT, "CREATE SEQUENCE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_SEQ_STMT, "ALTER SEQUENCE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATEDB_STMT, "CREATE DATABASE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_DATABASE_STMT, "ALTER DATABASE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_DATABASE_REFRESH_COLL_STMT, "ALTER DATABASE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_DATABASE_SET_STMT, "ALTER DATABASE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_DROPDB_STMT, "DROP DATABASE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CLUSTER_STMT, "CLUSTER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_REFRESH_MAT_VIEW_STMT, "REFRESH MATERIALIZED VIEW", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_SYSTEM_STMT, "ALTER SYSTEM", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_TRANSFORM_STMT, "CREATE TRANSFORM", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_TRIG_STMT, "CREATE TRIGGER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_EVENT_TRIG_STMT, "CREATE EVENT TRIGGER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_EVENT_TRIG_STMT, "ALTER EVENT TRIGGER", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_PLANG_STMT, "CREATE LANGUAGE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_DROP_OWNED_STMT, "DROP OWNED", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_REASSIGN_OWNED_STMT, "REASSIGN OWNED", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_CONVERSION_STMT, "CREATE CONVERSION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_CAST_STMT, "CREATE CAST", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_OP_CLASS_STMT, "CREATE OPERATOR CLASS", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_OP_FAMILY_STMT, "CREATE OPERATOR FAMILY", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_OP_FAMILY_STMT, "ALTER OPERATOR FAMILY", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_OPERATOR_STMT, "ALTER OPERATOR", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_TYPE_STMT, "ALTER TYPE", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_TSDICTIONARY_STMT, "ALTER TEXT SEARCH DICTIONARY", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_TSCONFIGURATION_STMT, "ALTER TEXT SEARCH CONFIGURATION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_POLICY_STMT, "CREATE POLICY", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_POLICY_STMT, "ALTER POLICY", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_AM_STMT, "CREATE ACCESS METHOD", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_PUBLICATION_STMT, "CREATE PUBLICATION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_PUBLICATION_STMT, "ALTER PUBLICATION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_SUBSCRIPTION_STMT, "CREATE SUBSCRIPTION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_SUBSCRIPTION_STMT, "ALTER SUBSCRIPTION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_DROP_SUBSCRIPTION_STMT, "DROP SUBSCRIPTION", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_CREATE_STATS_STMT, "CREATE STATISTICS", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_STATS_STMT, "ALTER STATISTICS", AuditClass::ddl},
    {PG_QUERY__NODE__NODE_ALTER_COLLATION_STMT, "ALTER COLLATION", AuditClass::ddl},
};

// The object word of DROP and ALTER tags (AlterObjectTypeCommandTag);
// PostgreSQL says "???" for the rest.
std::string_view object_word(PgQuery__ObjectType t) {
  switch (t) {
    case PG_QUERY__OBJECT_TYPE__OBJECT_ACCESS_METHOD: return "ACCESS METHOD";
    case PG_QUERY__OBJECT_TYPE__OBJECT_AGGREGATE: return "AGGREGATE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_CAST: return "CAST";
    case PG_QUERY__OBJECT_TYPE__OBJECT_COLLATION: return "COLLATION";
    case PG_QUERY__OBJECT_TYPE__OBJECT_CONVERSION: return "CONVERSION";
    case PG_QUERY__OBJECT_TYPE__OBJECT_DATABASE: return "DATABASE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_DOMAIN:
    case PG_QUERY__OBJECT_TYPE__OBJECT_DOMCONSTRAINT: return "DOMAIN";
    case PG_QUERY__OBJECT_TYPE__OBJECT_EVENT_TRIGGER: return "EVENT TRIGGER";
    case PG_QUERY__OBJECT_TYPE__OBJECT_EXTENSION: return "EXTENSION";
    case PG_QUERY__OBJECT_TYPE__OBJECT_FDW: return "FOREIGN DATA WRAPPER";
    case PG_QUERY__OBJECT_TYPE__OBJECT_FOREIGN_SERVER: return "SERVER";
    case PG_QUERY__OBJECT_TYPE__OBJECT_FOREIGN_TABLE: return "FOREIGN TABLE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_FUNCTION: return "FUNCTION";
    case PG_QUERY__OBJECT_TYPE__OBJECT_INDEX: return "INDEX";
    case PG_QUERY__OBJECT_TYPE__OBJECT_LANGUAGE: return "LANGUAGE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_LARGEOBJECT: return "LARGE OBJECT";
    case PG_QUERY__OBJECT_TYPE__OBJECT_MATVIEW: return "MATERIALIZED VIEW";
    case PG_QUERY__OBJECT_TYPE__OBJECT_OPCLASS: return "OPERATOR CLASS";
    case PG_QUERY__OBJECT_TYPE__OBJECT_OPERATOR: return "OPERATOR";
    case PG_QUERY__OBJECT_TYPE__OBJECT_OPFAMILY: return "OPERATOR FAMILY";
    case PG_QUERY__OBJECT_TYPE__OBJECT_POLICY: return "POLICY";
    case PG_QUERY__OBJECT_TYPE__OBJECT_PROCEDURE: return "PROCEDURE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_PUBLICATION: return "PUBLICATION";
    case PG_QUERY__OBJECT_TYPE__OBJECT_ROLE: return "ROLE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_ROUTINE: return "ROUTINE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_RULE: return "RULE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_SCHEMA: return "SCHEMA";
    case PG_QUERY__OBJECT_TYPE__OBJECT_SEQUENCE: return "SEQUENCE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_SUBSCRIPTION: return "SUBSCRIPTION";
    case PG_QUERY__OBJECT_TYPE__OBJECT_STATISTIC_EXT: return "STATISTICS";
    case PG_QUERY__OBJECT_TYPE__OBJECT_COLUMN:
    case PG_QUERY__OBJECT_TYPE__OBJECT_TABCONSTRAINT:
    case PG_QUERY__OBJECT_TYPE__OBJECT_TABLE: return "TABLE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_TABLESPACE: return "TABLESPACE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_TRANSFORM: return "TRANSFORM";
    case PG_QUERY__OBJECT_TYPE__OBJECT_TRIGGER: return "TRIGGER";
    case PG_QUERY__OBJECT_TYPE__OBJECT_TSCONFIGURATION: return "TEXT SEARCH CONFIGURATION";
    case PG_QUERY__OBJECT_TYPE__OBJECT_TSDICTIONARY: return "TEXT SEARCH DICTIONARY";
    case PG_QUERY__OBJECT_TYPE__OBJECT_TSPARSER: return "TEXT SEARCH PARSER";
    case PG_QUERY__OBJECT_TYPE__OBJECT_TSTEMPLATE: return "TEXT SEARCH TEMPLATE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_ATTRIBUTE:
    case PG_QUERY__OBJECT_TYPE__OBJECT_TYPE: return "TYPE";
    case PG_QUERY__OBJECT_TYPE__OBJECT_VIEW: return "VIEW";
    default: return {};
  }
}

std::string object_tag(std::string_view verb, PgQuery__ObjectType t) {
  const std::string_view word = object_word(t);
  if (word.empty()) return "???";
  return std::string(verb) + " " + std::string(word);
}

bool is_relation_kind(PgQuery__ObjectType t) {
  switch (t) {
    case PG_QUERY__OBJECT_TYPE__OBJECT_TABLE:
    case PG_QUERY__OBJECT_TYPE__OBJECT_VIEW:
    case PG_QUERY__OBJECT_TYPE__OBJECT_MATVIEW:
    case PG_QUERY__OBJECT_TYPE__OBJECT_INDEX:
    case PG_QUERY__OBJECT_TYPE__OBJECT_SEQUENCE:
    case PG_QUERY__OBJECT_TYPE__OBJECT_FOREIGN_TABLE: return true;
    default: return false;
  }
}

// Whether EXPLAIN's options make it run the statement (the last ANALYZE
// option wins, as in explain.c).
bool explain_analyze(const PgQuery__ExplainStmt* e) {
  bool analyze = false;
  for (size_t i = 0; i < e->n_options; ++i) {
    const PgQuery__Node* o = e->options[i];
    if (o == nullptr || o->node_case != PG_QUERY__NODE__NODE_DEF_ELEM) continue;
    const PgQuery__DefElem* d = o->def_elem;
    if (std::string_view(d->defname) != "analyze") continue;
    analyze = true;
    if (d->arg == nullptr) continue;
    if (d->arg->node_case == PG_QUERY__NODE__NODE_STRING) {
      std::string v = d->arg->string->sval;
      for (char& c : v) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      analyze = !(v == "false" || v == "off" || v == "0" || v == "no");
    } else if (d->arg->node_case == PG_QUERY__NODE__NODE_INTEGER) {
      analyze = d->arg->integer->ival != 0;
    }
  }
  return analyze;
}

const PgQuery__IntoClause* select_into(const PgQuery__SelectStmt* s) {
  // With set operations the INTO clause sits on the leftmost SELECT.
  while (s != nullptr) {
    if (s->into_clause != nullptr) return s->into_clause;
    s = s->larg;
  }
  return nullptr;
}

std::string command_tag(const PgQuery__Node* n) {
  switch (n->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT:
      return select_into(n->select_stmt) != nullptr ? "SELECT INTO" : "SELECT";
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
      switch (n->transaction_stmt->kind) {
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN: return "BEGIN";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START: return "START TRANSACTION";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT: return "COMMIT";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_TO: return "ROLLBACK";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT: return "SAVEPOINT";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE: return "RELEASE";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_PREPARE: return "PREPARE TRANSACTION";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT_PREPARED: return "COMMIT PREPARED";
        case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_PREPARED: return "ROLLBACK PREPARED";
        default: return "???";
      }
    case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
      return *n->close_portal_stmt->portalname == '\0' ? "CLOSE CURSOR ALL" : "CLOSE CURSOR";
    case PG_QUERY__NODE__NODE_FETCH_STMT: return n->fetch_stmt->ismove ? "MOVE" : "FETCH";
    case PG_QUERY__NODE__NODE_DROP_STMT: return object_tag("DROP", n->drop_stmt->remove_type);
    case PG_QUERY__NODE__NODE_RENAME_STMT: {
      const auto* r = n->rename_stmt;
      return object_tag("ALTER", r->rename_type == PG_QUERY__OBJECT_TYPE__OBJECT_COLUMN ? r->relation_type
                                                                                        : r->rename_type);
    }
    case PG_QUERY__NODE__NODE_ALTER_OBJECT_DEPENDS_STMT:
      return object_tag("ALTER", n->alter_object_depends_stmt->object_type);
    case PG_QUERY__NODE__NODE_ALTER_OBJECT_SCHEMA_STMT:
      return object_tag("ALTER", n->alter_object_schema_stmt->object_type);
    case PG_QUERY__NODE__NODE_ALTER_OWNER_STMT: return object_tag("ALTER", n->alter_owner_stmt->object_type);
    case PG_QUERY__NODE__NODE_ALTER_TABLE_MOVE_ALL_STMT:
      return object_tag("ALTER", n->alter_table_move_all_stmt->objtype);
    case PG_QUERY__NODE__NODE_ALTER_TABLE_STMT: return object_tag("ALTER", n->alter_table_stmt->objtype);
    case PG_QUERY__NODE__NODE_ALTER_FUNCTION_STMT: {
      const auto t = n->alter_function_stmt->objtype;
      if (t == PG_QUERY__OBJECT_TYPE__OBJECT_FUNCTION || t == PG_QUERY__OBJECT_TYPE__OBJECT_PROCEDURE ||
          t == PG_QUERY__OBJECT_TYPE__OBJECT_ROUTINE) {
        return object_tag("ALTER", t);
      }
      return "???";
    }
    case PG_QUERY__NODE__NODE_GRANT_STMT: return n->grant_stmt->is_grant ? "GRANT" : "REVOKE";
    case PG_QUERY__NODE__NODE_GRANT_ROLE_STMT:
      return n->grant_role_stmt->is_grant ? "GRANT ROLE" : "REVOKE ROLE";
    case PG_QUERY__NODE__NODE_DEFINE_STMT: {
      const auto t = n->define_stmt->kind;
      switch (t) {
        case PG_QUERY__OBJECT_TYPE__OBJECT_AGGREGATE:
        case PG_QUERY__OBJECT_TYPE__OBJECT_OPERATOR:
        case PG_QUERY__OBJECT_TYPE__OBJECT_TYPE:
        case PG_QUERY__OBJECT_TYPE__OBJECT_TSPARSER:
        case PG_QUERY__OBJECT_TYPE__OBJECT_TSDICTIONARY:
        case PG_QUERY__OBJECT_TYPE__OBJECT_TSTEMPLATE:
        case PG_QUERY__OBJECT_TYPE__OBJECT_TSCONFIGURATION:
        case PG_QUERY__OBJECT_TYPE__OBJECT_COLLATION:
        case PG_QUERY__OBJECT_TYPE__OBJECT_ACCESS_METHOD: return object_tag("CREATE", t);
        default: return "???";
      }
    }
    case PG_QUERY__NODE__NODE_CREATE_FUNCTION_STMT:
      return n->create_function_stmt->is_procedure ? "CREATE PROCEDURE" : "CREATE FUNCTION";
    case PG_QUERY__NODE__NODE_VACUUM_STMT: return n->vacuum_stmt->is_vacuumcmd ? "VACUUM" : "ANALYZE";
    case PG_QUERY__NODE__NODE_EXPLAIN_STMT: return "EXPLAIN";
    case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT: {
      const auto* c = n->create_table_as_stmt;
      if (c->objtype == PG_QUERY__OBJECT_TYPE__OBJECT_MATVIEW) return "CREATE MATERIALIZED VIEW";
      if (c->objtype == PG_QUERY__OBJECT_TYPE__OBJECT_TABLE)
        return c->is_select_into ? "SELECT INTO" : "CREATE TABLE AS";
      return "???";
    }
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT: {
      const auto k = n->variable_set_stmt->kind;
      return k == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET || k == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL
                 ? "RESET"
                 : "SET";
    }
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
      switch (n->discard_stmt->target) {
        case PG_QUERY__DISCARD_MODE__DISCARD_ALL: return "DISCARD ALL";
        case PG_QUERY__DISCARD_MODE__DISCARD_PLANS: return "DISCARD PLANS";
        case PG_QUERY__DISCARD_MODE__DISCARD_SEQUENCES: return "DISCARD SEQUENCES";
        case PG_QUERY__DISCARD_MODE__DISCARD_TEMP: return "DISCARD TEMP";
        default: return "???";
      }
    case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
      return *n->deallocate_stmt->name == '\0' ? "DEALLOCATE ALL" : "DEALLOCATE";
    case PG_QUERY__NODE__NODE_COPY_STMT: return "COPY";
    case PG_QUERY__NODE__NODE_PREPARE_STMT: return "PREPARE";
    default: break;
  }
  for (const auto& f : fixed_commands) {
    if (f.node == n->node_case) return std::string(f.tag);
  }
  return "???";
}

// ---------------------------------------------------------------------------
// The walk: relations named, protected columns referenced, and what the
// class needs to know (data-modifying parts, user-defined function calls).

std::string join_name(std::initializer_list<std::string_view> parts) {
  std::string out;
  for (auto p : parts) {
    if (p.empty()) continue;
    if (!out.empty()) out += '.';
    out += p;
  }
  return out;
}

std::string column_name(const QualifiedColumn& c) {
  return c.schema + "." + c.table + "." + c.column;
}

class Walker {
 public:
  explicit Walker(const Protection* protection)
      : protection_(protection), catalog_(protection != nullptr ? &protection->catalog() : nullptr) {}

  void run(const PgQuery__Node* stmt) {
    Scope* root = new_scope(nullptr);
    visit(&stmt->base, root);
    resolve_pending();
    if (protection_ != nullptr) unfiltered_statement(stmt);
  }

  std::vector<std::string> relations;
  std::set<std::string> protected_columns;
  std::set<std::pair<uint32_t, uint32_t>> protected_refs;
  std::set<std::string> predicate_columns;
  std::set<std::pair<uint32_t, uint32_t>> predicate_refs;
  std::set<uint32_t> unfiltered;  // oids of relations read without a restriction
  bool modifies = false;          // an INSERT, UPDATE, DELETE or MERGE anywhere
  bool user_function = false;     // a call of a function that is not built in

 private:
  // A name a column reference can qualify: a relation, or something opaque
  // (a CTE, a subquery or function alias) whose own references were counted
  // where they were written.
  struct Entry {
    std::string alias;  // what qualifies its columns: the alias, else the name
    bool has_alias = false;
    std::string schema;   // as written
    std::string relname;  // as written
    std::vector<const CatalogRelation*> candidates;
    bool opaque = false;
  };
  struct Scope {
    Scope* parent = nullptr;
    std::vector<std::string> ctes;  // CTE names visible from here
    std::vector<Entry> entries;
  };
  // A column named without its relation, resolved once all scopes are known.
  struct PendingRef {
    Scope* scope;
    std::vector<std::string> fields;  // last empty = *
    bool predicate = false;           // inside WHERE, JOIN ON, HAVING
  };
  // A column a statement writes (or COPY moves) in a known relation.
  struct PendingWrite {
    const PgQuery__RangeVar* relation;
    std::optional<std::string> column;  // nullopt = every column
  };

  Scope* new_scope(Scope* parent) {
    scopes_.emplace_back();
    scopes_.back().parent = parent;
    return &scopes_.back();
  }

  static bool cte_visible(const Scope* s, std::string_view name) {
    for (; s != nullptr; s = s->parent) {
      if (std::find(s->ctes.begin(), s->ctes.end(), name) != s->ctes.end()) return true;
    }
    return false;
  }

  void children(const ProtobufCMessage* m, Scope* s, std::string_view skip_field = {}) {
    walk_children(m, [&](const ProtobufCMessage* c, std::string_view field) {
      if (!skip_field.empty() && field == skip_field) return false;
      // Everything below a condition can test values, subqueries included.
      const bool predicate = field == "where_clause" || field == "having_clause" || field == "quals" ||
                             field == "join_condition";
      if (predicate) ++predicate_depth_;
      visit(c, s);
      if (predicate) --predicate_depth_;
      return false;
    });
  }

  // A statement with its own FROM scope. WITH names are visible to the
  // statement; without RECURSIVE each CTE body sees only the CTEs before it,
  // so "WITH customers AS (SELECT * FROM customers)" reads the table.
  Scope* with_scope(const PgQuery__WithClause* with, Scope* parent) {
    if (with == nullptr) return new_scope(parent);
    std::vector<const PgQuery__CommonTableExpr*> ctes;
    for (size_t i = 0; i < with->n_ctes; ++i) {
      const PgQuery__Node* n = with->ctes[i];
      if (n != nullptr && n->node_case == PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR)
        ctes.push_back(n->common_table_expr);
    }
    Scope* chain = new_scope(parent);
    if (with->recursive) {
      for (const auto* c : ctes) chain->ctes.emplace_back(c->ctename);
      for (const auto* c : ctes) {
        if (c->ctequery != nullptr) visit(&c->ctequery->base, chain);
      }
    } else {
      for (const auto* c : ctes) {
        if (c->ctequery != nullptr) visit(&c->ctequery->base, chain);
        chain = new_scope(chain);
        chain->ctes.emplace_back(c->ctename);
      }
    }
    return new_scope(chain);
  }

  void visit(const ProtobufCMessage* m, Scope* s) {
    if (is(m, pg_query__node__descriptor)) return children(m, s);
    if (is(m, pg_query__select_stmt__descriptor)) {
      const auto* sel = reinterpret_cast<const PgQuery__SelectStmt*>(m);
      return children(m, with_scope(sel->with_clause, s), "with_clause");
    }
    if (is(m, pg_query__insert_stmt__descriptor)) {
      modifies = true;
      const auto* ins = reinterpret_cast<const PgQuery__InsertStmt*>(m);
      children(m, with_scope(ins->with_clause, s), "with_clause");
      if (ins->n_cols == 0 && ins->select_stmt != nullptr) {
        writes_.push_back({ins->relation, std::nullopt});
      }
      targets(ins->relation, ins->cols, ins->n_cols);
      if (ins->on_conflict_clause != nullptr) {
        targets(ins->relation, ins->on_conflict_clause->target_list, ins->on_conflict_clause->n_target_list);
      }
      return;
    }
    if (is(m, pg_query__update_stmt__descriptor)) {
      modifies = true;
      const auto* up = reinterpret_cast<const PgQuery__UpdateStmt*>(m);
      children(m, with_scope(up->with_clause, s), "with_clause");
      targets(up->relation, up->target_list, up->n_target_list);
      return;
    }
    if (is(m, pg_query__delete_stmt__descriptor)) {
      modifies = true;
      const auto* del = reinterpret_cast<const PgQuery__DeleteStmt*>(m);
      return children(m, with_scope(del->with_clause, s), "with_clause");
    }
    if (is(m, pg_query__merge_stmt__descriptor)) {
      modifies = true;
      const auto* mg = reinterpret_cast<const PgQuery__MergeStmt*>(m);
      children(m, with_scope(mg->with_clause, s), "with_clause");
      for (size_t i = 0; i < mg->n_merge_when_clauses; ++i) {
        const PgQuery__Node* n = mg->merge_when_clauses[i];
        if (n == nullptr || n->node_case != PG_QUERY__NODE__NODE_MERGE_WHEN_CLAUSE) continue;
        const auto* w = n->merge_when_clause;
        if (w->command_type == PG_QUERY__CMD_TYPE__CMD_INSERT && w->n_target_list == 0 && w->n_values > 0) {
          writes_.push_back({mg->relation, std::nullopt});
        }
        targets(mg->relation, w->target_list, w->n_target_list);
      }
      return;
    }
    if (is(m, pg_query__range_var__descriptor))
      return range_var(reinterpret_cast<const PgQuery__RangeVar*>(m), s);
    if (is(m, pg_query__column_ref__descriptor)) {
      const auto* cr = reinterpret_cast<const PgQuery__ColumnRef*>(m);
      auto fields = string_list(cr->fields, cr->n_fields);
      if (!fields.empty()) refs_.push_back({s, std::move(fields), predicate_depth_ > 0});
      return;
    }
    if (is(m, pg_query__a__indirection__descriptor)) {
      // (c).email is column email of c, not the whole row of c.
      const auto* ind = reinterpret_cast<const PgQuery__AIndirection*>(m);
      if (ind->arg != nullptr && ind->arg->node_case == PG_QUERY__NODE__NODE_COLUMN_REF &&
          ind->arg->column_ref->n_fields == 1 && ind->n_indirection > 0 &&
          ind->indirection[0]->node_case == PG_QUERY__NODE__NODE_STRING) {
        auto head = string_list(ind->arg->column_ref->fields, 1);
        if (!head[0].empty()) {
          refs_.push_back({s, {head[0], ind->indirection[0]->string->sval}, predicate_depth_ > 0});
          for (size_t i = 1; i < ind->n_indirection; ++i) visit(&ind->indirection[i]->base, s);
          return;
        }
      }
    } else if (is(m, pg_query__range_subselect__descriptor)) {
      const auto* r = reinterpret_cast<const PgQuery__RangeSubselect*>(m);
      if (r->alias != nullptr) opaque(s, r->alias->aliasname);
    } else if (is(m, pg_query__range_function__descriptor)) {
      const auto* r = reinterpret_cast<const PgQuery__RangeFunction*>(m);
      if (r->alias != nullptr) opaque(s, r->alias->aliasname);
    } else if (is(m, pg_query__func_call__descriptor)) {
      func_call(reinterpret_cast<const PgQuery__FuncCall*>(m));
    } else if (is(m, pg_query__copy_stmt__descriptor)) {
      const auto* c = reinterpret_cast<const PgQuery__CopyStmt*>(m);
      if (c->relation != nullptr) {
        if (c->n_attlist == 0) writes_.push_back({c->relation, std::nullopt});
        for (const auto& col : string_list(c->attlist, c->n_attlist)) writes_.push_back({c->relation, col});
      }
    } else if (is(m, pg_query__index_elem__descriptor)) {
      name_ref(s, reinterpret_cast<const PgQuery__IndexElem*>(m)->name);
    } else if (is(m, pg_query__stats_elem__descriptor)) {
      name_ref(s, reinterpret_cast<const PgQuery__StatsElem*>(m)->name);
    } else if (is(m, pg_query__alter_table_cmd__descriptor)) {
      // A column name for column subcommands; a constraint or index name
      // for others, which then matches no column.
      name_ref(s, reinterpret_cast<const PgQuery__AlterTableCmd*>(m)->name);
    } else if (is(m, pg_query__access_priv__descriptor)) {
      const auto* p = reinterpret_cast<const PgQuery__AccessPriv*>(m);
      for (const auto& col : string_list(p->cols, p->n_cols)) name_ref(s, col);
      return;
    } else if (is(m, pg_query__vacuum_relation__descriptor)) {
      const auto* v = reinterpret_cast<const PgQuery__VacuumRelation*>(m);
      for (const auto& col : string_list(v->va_cols, v->n_va_cols)) name_ref(s, col);
    } else if (is(m, pg_query__rename_stmt__descriptor)) {
      const auto* r = reinterpret_cast<const PgQuery__RenameStmt*>(m);
      if (r->rename_type == PG_QUERY__OBJECT_TYPE__OBJECT_COLUMN) name_ref(s, r->subname);
    } else if (is(m, pg_query__drop_stmt__descriptor)) {
      const auto* d = reinterpret_cast<const PgQuery__DropStmt*>(m);
      if (is_relation_kind(d->remove_type)) {
        for (size_t i = 0; i < d->n_objects; ++i) {
          const PgQuery__Node* o = d->objects[i];
          if (o != nullptr && o->node_case == PG_QUERY__NODE__NODE_LIST) {
            named_relation(string_list(o->list->items, o->list->n_items), std::nullopt);
          }
        }
      }
      return;
    } else if (is(m, pg_query__comment_stmt__descriptor)) {
      const auto* c = reinterpret_cast<const PgQuery__CommentStmt*>(m);
      if (c->object != nullptr && c->object->node_case == PG_QUERY__NODE__NODE_LIST) {
        auto names = string_list(c->object->list->items, c->object->list->n_items);
        if (c->objtype == PG_QUERY__OBJECT_TYPE__OBJECT_COLUMN && names.size() >= 2) {
          std::string col = names.back();
          names.pop_back();
          named_relation(names, col);
        } else if (is_relation_kind(c->objtype)) {
          named_relation(names, std::nullopt);
        }
      }
      return;
    }
    children(m, s);
  }

  void opaque(Scope* s, const char* alias) {
    Entry e;
    e.alias = alias;
    e.has_alias = true;
    e.opaque = true;
    s->entries.push_back(std::move(e));
  }

  void name_ref(Scope* s, std::string_view name) {
    if (!name.empty()) refs_.push_back({s, {std::string(name)}});
  }

  void targets(const PgQuery__RangeVar* relation, PgQuery__Node* const* items, size_t n) {
    if (relation == nullptr) return;
    for (size_t i = 0; i < n; ++i) {
      const PgQuery__Node* t = items[i];
      if (t != nullptr && t->node_case == PG_QUERY__NODE__NODE_RES_TARGET && *t->res_target->name != '\0') {
        writes_.push_back({relation, std::string(t->res_target->name)});
      }
    }
  }

  void func_call(const PgQuery__FuncCall* f) {
    auto names = string_list(f->funcname, f->n_funcname);
    if (names.empty()) return;
    if (names.size() == 1) {
      if (catalog_ != nullptr && catalog_->is_user_function(names.back())) user_function = true;
      return;
    }
    const std::string& schema = names[names.size() - 2];
    if (schema != "pg_catalog" && schema != "information_schema") user_function = true;
  }

  // The catalog's relations a name can mean: the one in its schema when
  // qualified, else every relation of that name (search_path is the
  // session's and unknown here).
  std::vector<const CatalogRelation*> candidates(std::string_view schema, std::string_view name) const {
    if (catalog_ == nullptr) return {};
    if (!schema.empty()) {
      const CatalogRelation* r = catalog_->find(schema, name);
      return r != nullptr ? std::vector<const CatalogRelation*>{r} : std::vector<const CatalogRelation*>{};
    }
    return catalog_->find_by_name(name);
  }

  // Schema-qualified when the catalog resolves the name: one relation of
  // that name, or several of which one is in public (PostgreSQL's default
  // search_path is "$user", public, the default the rewriter assumes too).
  // As written otherwise.
  static std::string display(const std::string& catalogname, const std::string& schema,
                             const std::string& name, const std::vector<const CatalogRelation*>& found) {
    const CatalogRelation* pick = nullptr;
    if (found.size() == 1) {
      pick = found.front();
    } else {
      for (const auto* r : found) {
        if (r->schema == "public") pick = r;
      }
    }
    if (pick != nullptr) return pick->schema + "." + pick->name;
    return join_name({catalogname, schema, name});
  }

  void note_relation(std::string name) {
    if (std::find(relations.begin(), relations.end(), name) == relations.end())
      relations.push_back(std::move(name));
  }

  Entry entry_for(const PgQuery__RangeVar* rv) const {
    Entry e;
    e.schema = rv->schemaname;
    e.relname = rv->relname;
    e.has_alias = rv->alias != nullptr && *rv->alias->aliasname != '\0';
    e.alias = e.has_alias ? rv->alias->aliasname : rv->relname;
    e.candidates = candidates(e.schema, e.relname);
    return e;
  }

  void range_var(const PgQuery__RangeVar* rv, Scope* s) {
    if (*rv->schemaname == '\0' && *rv->catalogname == '\0' && cte_visible(s, rv->relname)) {
      opaque(s, rv->alias != nullptr ? rv->alias->aliasname : rv->relname);
      return;
    }
    Entry e = entry_for(rv);
    note_relation(display(rv->catalogname, e.schema, e.relname, e.candidates));
    s->entries.push_back(std::move(e));
  }

  // A relation named by a list of identifiers ([[catalog.]schema.]name), with
  // one of its columns.
  void named_relation(const std::vector<std::string>& names, const std::optional<std::string>& column) {
    if (names.empty()) return;
    const std::string& name = names.back();
    const std::string schema = names.size() >= 2 ? names[names.size() - 2] : std::string();
    const std::string cat = names.size() >= 3 ? names[names.size() - 3] : std::string();
    auto found = candidates(schema, name);
    note_relation(display(cat, schema, name, found));
    for (const auto* r : found) {
      if (column) {
        add_column(r, *column);
      }
    }
  }

  void add_protected(const RelationProtection& rp, size_t i) {
    const auto& rel = *rp.relation;
    const auto& col = rp.columns[i];
    if (!col.category && !col.derived) return;
    protected_columns.insert(rel.schema + "." + rel.name + "." + rel.columns[i].name);
    protected_refs.emplace(rel.oid, static_cast<uint32_t>(i));
    // The configured column behind a partition's or view's column, so a
    // search by configured column finds every read of it.
    if (col.category) protected_columns.insert(column_name(col.source));
    for (const auto& [src, category] : col.derived_from) protected_columns.insert(column_name(src));
    if (resolving_predicate_) {
      predicate_columns.insert(rel.schema + "." + rel.name + "." + rel.columns[i].name);
      predicate_refs.emplace(rel.oid, static_cast<uint32_t>(i));
      if (col.category) predicate_columns.insert(column_name(col.source));
      for (const auto& [src, category] : col.derived_from) predicate_columns.insert(column_name(src));
    }
  }

  // Whether the relation has the column; protected ones are recorded.
  bool add_column(const CatalogRelation* r, std::string_view column) {
    const RelationProtection* rp = protection_ != nullptr ? protection_->find(r->oid) : nullptr;
    for (size_t i = 0; i < r->columns.size(); ++i) {
      if (r->columns[i].name != column) continue;
      if (rp != nullptr && i < rp->columns.size()) add_protected(*rp, i);
      return true;
    }
    return false;
  }

  void add_all(const Entry& e) {
    if (protection_ == nullptr) return;
    for (const auto* r : e.candidates) {
      const RelationProtection* rp = protection_->find(r->oid);
      if (rp == nullptr) continue;
      for (size_t i = 0; i < rp->columns.size() && i < r->columns.size(); ++i) add_protected(*rp, i);
    }
  }

  static bool qualifies(const Entry& e, const std::vector<std::string>& q) {
    if (q.size() == 1) return e.alias == q[0];
    if (e.has_alias || e.opaque || q.size() > 3) return false;
    if (e.relname != q.back()) return false;
    const std::string& schema = q[q.size() - 2];
    if (e.schema == schema) return true;
    return std::any_of(e.candidates.begin(), e.candidates.end(),
                       [&](const CatalogRelation* r) { return r->schema == schema; });
  }

  static const Entry* find_entry(const Scope* s, const std::vector<std::string>& q) {
    for (; s != nullptr; s = s->parent) {
      for (const auto& e : s->entries) {
        if (qualifies(e, q)) return &e;
      }
    }
    return nullptr;
  }

  // An unqualified name: a column of the innermost level that has one,
  // else a whole-row reference to a relation of that alias. Columns of
  // relations outside the catalog (and of subqueries) are unknown, so the
  // search goes on outwards past them: it may over-report, never under.
  void lookup_column(const Scope* s, const std::string& name) {
    for (; s != nullptr; s = s->parent) {
      bool found = false;
      for (const auto& e : s->entries) {
        for (const auto* r : e.candidates) found = add_column(r, name) || found;
      }
      if (found) return;
      for (const auto& e : s->entries) {
        if (e.alias == name) {
          add_all(e);
          return;
        }
      }
    }
  }

  void resolve_pending() {
    if (protection_ == nullptr) return;
    for (const auto& ref : refs_) {
      const auto& f = ref.fields;
      const bool star = f.back().empty();
      resolving_predicate_ = ref.predicate && !star;
      if (star && f.size() == 1) {
        for (const auto& e : ref.scope->entries) add_all(e);
        continue;
      }
      if (f.size() == 1) {
        lookup_column(ref.scope, f[0]);
        continue;
      }
      std::vector<std::string> qualifier(f.begin(), f.end() - 1);
      const Entry* e = find_entry(ref.scope, qualifier);
      if (e != nullptr) {
        if (star) {
          add_all(*e);
        } else {
          for (const auto* r : e->candidates) add_column(r, f.back());
        }
      } else if (qualifier.size() == 1) {
        lookup_column(ref.scope, qualifier[0]);  // composite_column.field
      }
    }
    resolving_predicate_ = false;
    for (const auto& w : writes_) {
      Entry e = entry_for(w.relation);
      if (!w.column) {
        add_all(e);
        continue;
      }
      for (const auto* r : e.candidates) add_column(r, *w.column);
    }
  }

  // --- Unfiltered reads (bulk-export shapes) ---------------------------------
  // A separate walk over the FROM structure only: which relations have their
  // rows returned with nothing restricting them. Over-reporting here raises
  // false bulk-export alerts and under-reporting misses exports, so the rules
  // are simple and stated: a WHERE or LIMIT on a query restricts everything
  // in its FROM; an inner join's condition restricts both sides, a left
  // join's the right side, a full join's neither; a subquery in FROM inherits
  // its parent's restriction; a CTE reference reads the CTE's body.

  struct CteEnv {
    const CteEnv* parent = nullptr;
    std::vector<std::pair<std::string, const PgQuery__Node*>> ctes;
    bool recursive = false;
  };
  static constexpr int max_unfiltered_depth = 32;

  void unfiltered_statement(const PgQuery__Node* n) {
    switch (n->node_case) {
      case PG_QUERY__NODE__NODE_SELECT_STMT: unfiltered_select(n->select_stmt, false, nullptr, 0); break;
      case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
        if (n->declare_cursor_stmt->query != nullptr) unfiltered_statement(n->declare_cursor_stmt->query);
        break;
      case PG_QUERY__NODE__NODE_PREPARE_STMT:
        if (n->prepare_stmt->query != nullptr) unfiltered_statement(n->prepare_stmt->query);
        break;
      case PG_QUERY__NODE__NODE_COPY_STMT: {
        const auto* c = n->copy_stmt;
        if (c->is_from) break;
        if (c->relation != nullptr) unfiltered_range_var(c->relation, false, nullptr, 0);
        if (c->query != nullptr && c->query->node_case == PG_QUERY__NODE__NODE_SELECT_STMT)
          unfiltered_select(c->query->select_stmt, false, nullptr, 0);
        break;
      }
      default: break;
    }
  }

  void unfiltered_select(const PgQuery__SelectStmt* s, bool filtered, const CteEnv* env, int depth) {
    if (s == nullptr || depth > max_unfiltered_depth) return;
    CteEnv local;
    local.parent = env;
    if (s->with_clause != nullptr) {
      local.recursive = s->with_clause->recursive;
      for (size_t i = 0; i < s->with_clause->n_ctes; ++i) {
        const PgQuery__Node* c = s->with_clause->ctes[i];
        if (c != nullptr && c->node_case == PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR &&
            c->common_table_expr->ctequery != nullptr) {
          local.ctes.emplace_back(c->common_table_expr->ctename, c->common_table_expr->ctequery);
        }
      }
      env = &local;
    }
    const bool limited = s->limit_count != nullptr;
    if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE &&
        s->op != PG_QUERY__SET_OPERATION__SET_OPERATION_UNDEFINED) {
      unfiltered_select(s->larg, filtered || limited, env, depth + 1);
      unfiltered_select(s->rarg, filtered || limited, env, depth + 1);
      return;
    }
    const bool f = filtered || limited || s->where_clause != nullptr;
    for (size_t i = 0; i < s->n_from_clause; ++i) unfiltered_from(s->from_clause[i], f, env, depth + 1);
  }

  void unfiltered_from(const PgQuery__Node* n, bool filtered, const CteEnv* env, int depth) {
    if (n == nullptr || depth > max_unfiltered_depth) return;
    switch (n->node_case) {
      case PG_QUERY__NODE__NODE_RANGE_VAR: unfiltered_range_var(n->range_var, filtered, env, depth); break;
      case PG_QUERY__NODE__NODE_RANGE_SUBSELECT:
        if (n->range_subselect->subquery != nullptr &&
            n->range_subselect->subquery->node_case == PG_QUERY__NODE__NODE_SELECT_STMT) {
          unfiltered_select(n->range_subselect->subquery->select_stmt, filtered, env, depth + 1);
        }
        break;
      case PG_QUERY__NODE__NODE_JOIN_EXPR: {
        const auto* j = n->join_expr;
        const bool cond = j->quals != nullptr || j->n_using_clause > 0 || j->is_natural;
        bool left = filtered;
        bool right = filtered;
        switch (j->jointype) {
          case PG_QUERY__JOIN_TYPE__JOIN_LEFT: right = right || cond; break;
          case PG_QUERY__JOIN_TYPE__JOIN_RIGHT: left = left || cond; break;
          case PG_QUERY__JOIN_TYPE__JOIN_FULL: break;
          default:
            left = left || cond;
            right = right || cond;
            break;
        }
        unfiltered_from(j->larg, left, env, depth + 1);
        unfiltered_from(j->rarg, right, env, depth + 1);
        break;
      }
      default: break;  // functions, VALUES, table samples: not a relation's rows
    }
  }

  void unfiltered_range_var(const PgQuery__RangeVar* rv, bool filtered, const CteEnv* env, int depth) {
    if (*rv->schemaname == '\0' && *rv->catalogname == '\0') {
      for (const CteEnv* e = env; e != nullptr; e = e->parent) {
        for (size_t i = 0; i < e->ctes.size(); ++i) {
          if (e->ctes[i].first != rv->relname) continue;
          // The body sees its parent's names and, without RECURSIVE, only
          // the CTEs before it.
          CteEnv body;
          body.parent = e->parent;
          body.recursive = e->recursive;
          body.ctes.assign(e->ctes.begin(),
                           e->recursive ? e->ctes.end() : e->ctes.begin() + static_cast<long>(i));
          const PgQuery__Node* q = e->ctes[i].second;
          if (q->node_case == PG_QUERY__NODE__NODE_SELECT_STMT)
            unfiltered_select(q->select_stmt, filtered, &body, depth + 1);
          return;
        }
      }
    }
    if (filtered) return;
    for (const auto* r : candidates(rv->schemaname, rv->relname)) unfiltered.insert(r->oid);
  }

  const Protection* protection_;
  const Catalog* catalog_;
  std::deque<Scope> scopes_;  // stable addresses
  std::vector<PendingRef> refs_;
  std::vector<PendingWrite> writes_;
  int predicate_depth_ = 0;
  bool resolving_predicate_ = false;
};

// The class: the command's own (fixed_commands, command_tag's cases), with
// what only the walk knows.
AuditClass statement_class(const PgQuery__Node* n, const Walker& w) {
  switch (n->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT:
      if (select_into(n->select_stmt) != nullptr) return AuditClass::ddl;  // SELECT INTO creates a table
      if (w.modifies) return AuditClass::write;  // WITH x AS (DELETE ... RETURNING *) SELECT ...
      // SELECT f() reading no relation: the function is what runs.
      if (w.user_function && w.relations.empty()) return AuditClass::function;
      return AuditClass::read;
    case PG_QUERY__NODE__NODE_COPY_STMT:
      if (n->copy_stmt->is_from || w.modifies) return AuditClass::write;
      return AuditClass::read;
    case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
      // EXPLAIN ANALYZE runs the statement; plain EXPLAIN does not.
      if (explain_analyze(n->explain_stmt) && n->explain_stmt->query != nullptr)
        return statement_class(n->explain_stmt->query, w);
      return AuditClass::misc;
    case PG_QUERY__NODE__NODE_PREPARE_STMT:
      return n->prepare_stmt->query != nullptr ? statement_class(n->prepare_stmt->query, w)
                                               : AuditClass::read;
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
    case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
    case PG_QUERY__NODE__NODE_FETCH_STMT:
    case PG_QUERY__NODE__NODE_VACUUM_STMT:
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
    case PG_QUERY__NODE__NODE_DEALLOCATE_STMT: return AuditClass::misc;
    case PG_QUERY__NODE__NODE_GRANT_STMT:
    case PG_QUERY__NODE__NODE_GRANT_ROLE_STMT: return AuditClass::role;
    case PG_QUERY__NODE__NODE_RENAME_STMT:
      return n->rename_stmt->rename_type == PG_QUERY__OBJECT_TYPE__OBJECT_ROLE ? AuditClass::role
                                                                               : AuditClass::ddl;
    case PG_QUERY__NODE__NODE_DROP_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OBJECT_DEPENDS_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OBJECT_SCHEMA_STMT:
    case PG_QUERY__NODE__NODE_ALTER_OWNER_STMT:
    case PG_QUERY__NODE__NODE_ALTER_TABLE_MOVE_ALL_STMT:
    case PG_QUERY__NODE__NODE_ALTER_TABLE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_FUNCTION_STMT:
    case PG_QUERY__NODE__NODE_DEFINE_STMT:
    case PG_QUERY__NODE__NODE_CREATE_FUNCTION_STMT:
    case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT: return AuditClass::ddl;
    default: break;
  }
  for (const auto& f : fixed_commands) {
    if (f.node == n->node_case) return f.audit_class;
  }
  return AuditClass::misc;  // pgAudit's default
}

ParsedText parse_text(std::string_view sql) {
  ParsedText p;
  if (sql.find('\0') != std::string_view::npos) return p;  // libpg_query would stop at the NUL
  auto tree = ParseTree::parse(std::string(sql));
  // The error message is not kept: it quotes the text near the error,
  // literals included.
  if (tree) p.tree = std::move(tree).value();
  return p;
}

StatementAudit analyse(std::string_view sql, const ParsedText& parsed, unsigned index,
                       const Protection* protection) {
  StatementAudit a;
  a.length = std::string_view::npos;  // to the end of the text
  if (parsed.tree == nullptr) {
    a.parse_error = true;
    return a;
  }
  const PgQuery__ParseResult& result = parsed.tree->result();
  a.statements_in_text = static_cast<unsigned>(result.n_stmts);
  if (result.n_stmts == 0) {
    a.empty = true;
    return a;
  }
  if (index >= result.n_stmts || result.stmts[index]->stmt == nullptr) {
    a.parse_error = true;  // the caller's index does not match the text
    return a;
  }
  const PgQuery__RawStmt* raw = result.stmts[index];
  const auto loc = static_cast<size_t>(std::max(raw->stmt_location, 0));
  if (loc > sql.size()) {
    a.parse_error = true;
    return a;
  }
  const size_t len =
      raw->stmt_len > 0 ? std::min(static_cast<size_t>(raw->stmt_len), sql.size() - loc) : sql.size() - loc;
  a.offset = loc;
  // The last statement runs to the end of the text: texts that share an
  // analysis through their literal skeleton differ in length there.
  a.length = raw->stmt_len > 0 ? len : std::string_view::npos;
  const std::string stmt(sql.substr(loc, len));

  a.normalized = normalize(stmt);
  if (a.normalized.empty()) {
    // Not even the scanner could make sense of it: say nothing about it.
    a.parse_error = true;
    return a;
  }
  a.fingerprint = fingerprint(stmt, a.normalized);

  const PgQuery__Node* node = raw->stmt;
  Walker w(protection);
  w.run(node);
  a.command = command_tag(node);
  a.audit_class = statement_class(node, w);
  a.relations = std::move(w.relations);
  a.protected_columns.assign(w.protected_columns.begin(), w.protected_columns.end());
  a.protected_refs.assign(w.protected_refs.begin(), w.protected_refs.end());
  if (protection != nullptr) {
    for (const auto& [oid, column] : a.protected_refs) {
      if (const RelationProtection* rp = protection->find(oid)) {
        std::string name = rp->relation->schema + "." + rp->relation->name;
        if (std::find(a.protected_relations.begin(), a.protected_relations.end(), name) ==
            a.protected_relations.end()) {
          a.protected_relations.push_back(std::move(name));
        }
      }
    }
  }
  if (protection != nullptr) {
    for (const auto& name : a.protected_relations) {
      for (const uint32_t oid : w.unfiltered) {
        const RelationProtection* rp = protection->find(oid);
        if (rp != nullptr && rp->relation->schema + "." + rp->relation->name == name) {
          a.unfiltered_relations.push_back(name);
          break;
        }
      }
    }
  }
  a.predicate_columns.assign(w.predicate_columns.begin(), w.predicate_columns.end());
  a.predicate_refs.assign(w.predicate_refs.begin(), w.predicate_refs.end());
  if (node->node_case == PG_QUERY__NODE__NODE_COPY_STMT) {
    const auto* c = node->copy_stmt;
    CopyAudit copy;
    copy.from = c->is_from;
    copy.query = c->query != nullptr;
    if (c->is_program) {
      copy.endpoint = "program";
    } else if (*c->filename != '\0') {
      copy.endpoint = "file";
    } else {
      copy.endpoint = c->is_from ? "stdin" : "stdout";
    }
    a.copy = std::move(copy);
  }
  auto name = [](const char* n) { return n == nullptr ? std::string() : std::string(n); };
  switch (node->node_case) {
    case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
      a.cursor_op = StatementAudit::CursorOp::declare;
      a.cursor_name = name(node->declare_cursor_stmt->portalname);
      break;
    case PG_QUERY__NODE__NODE_FETCH_STMT:
      if (!node->fetch_stmt->ismove) {
        a.cursor_op = StatementAudit::CursorOp::fetch;
        a.cursor_name = name(node->fetch_stmt->portalname);
      }
      break;
    case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
      a.cursor_op = StatementAudit::CursorOp::close;
      a.cursor_name = name(node->close_portal_stmt->portalname);
      break;
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
      if (node->discard_stmt->target == PG_QUERY__DISCARD_MODE__DISCARD_ALL)
        a.cursor_op = StatementAudit::CursorOp::close;
      break;
    default: break;
  }
  return a;
}

constexpr size_t entry_overhead = 256;
// Results larger than this share of the cache are computed but not kept.
constexpr size_t max_entry_fraction = 8;

}  // namespace

std::string_view audit_class_name(AuditClass c) {
  switch (c) {
    case AuditClass::read: return "READ";
    case AuditClass::write: return "WRITE";
    case AuditClass::function: return "FUNCTION";
    case AuditClass::role: return "ROLE";
    case AuditClass::ddl: return "DDL";
    case AuditClass::misc: return "MISC";
  }
  return "MISC";
}

size_t StatementAudit::bytes() const {
  size_t n = sizeof(*this) + fingerprint.size() + normalized.size() + command.size() + cursor_name.size();
  for (const auto& r : relations) n += sizeof(std::string) + r.size();
  for (const auto& c : protected_columns) n += sizeof(std::string) + c.size();
  for (const auto& r : protected_relations) n += sizeof(std::string) + r.size();
  for (const auto& r : unfiltered_relations) n += sizeof(std::string) + r.size();
  for (const auto& c : predicate_columns) n += sizeof(std::string) + c.size();
  n += protected_refs.size() * sizeof(protected_refs[0]);
  n += predicate_refs.size() * sizeof(predicate_refs[0]);
  if (copy) n += copy->endpoint.size();
  return n;
}

StatementAudit audit_statement(std::string_view sql, unsigned index, const Protection* protection) {
  return analyse(sql, parse_text(sql), index, protection);
}

void StatementAuditCache::clear() {
  map_.clear();
  lru_.clear();
  bytes_ = 0;
}

void StatementAuditCache::evict() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    Entry& last = lru_.back();
    bytes_ -= last.bytes;
    map_.erase(last.key);
    lru_.pop_back();
  }
}

std::shared_ptr<const StatementAudit> StatementAuditCache::get(
    std::string_view sql, unsigned index, const std::shared_ptr<const Protection>& protection) {
  if (protection != protection_) {
    clear();
    protection_ = protection;
  }
  std::string key = std::to_string(index);
  key += '\0';
  if (auto skeleton = index == 0 ? literal_skeleton(sql) : std::nullopt) {
    key += '\x02';  // cannot start a text: keys of skeletons and of texts never collide
    key += skeleton->text;
  } else {
    key += sql;
  }
  if (auto it = map_.find(key); it != map_.end()) {
    ++hits_;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->audit;
  }
  ++misses_;
  std::shared_ptr<const StatementAudit> audit;
  if (last_parsed_ != nullptr && sql == last_text_) {
    audit = std::make_shared<const StatementAudit>(analyse(sql, *last_parsed_, index, protection.get()));
  } else {
    auto parsed = std::make_shared<const ParsedText>(parse_text(sql));
    audit = std::make_shared<const StatementAudit>(analyse(sql, *parsed, index, protection.get()));
    // Keep the parse of a multi-statement text for its next records.
    if (parsed->tree != nullptr && parsed->tree->result().n_stmts > 1) {
      last_text_.assign(sql);
      last_parsed_ = std::move(parsed);
    } else {
      last_text_.clear();
      last_parsed_.reset();
    }
  }
  const size_t bytes = key.size() + audit->bytes() + entry_overhead;
  if (bytes > max_bytes_ / max_entry_fraction) return audit;
  lru_.push_front({std::move(key), audit, bytes});
  map_.emplace(lru_.front().key, lru_.begin());
  bytes_ += bytes;
  evict();
  return audit;
}

}  // namespace pgcloak::rules
