#include "rules/rewriter.h"

#include <algorithm>
#include <cctype>
#include <unordered_set>

#include "rules/mask_sql.h"
#include "rules/pg_tree.h"
#include "rules/session_settings.h"

namespace pgcloak::rules {

namespace {

// Parent fields under which a RangeVar is a table being read (gram.y:
// from_clause, using_clause of DELETE, both sides of a JOIN). Everywhere
// else a RangeVar names an object a statement acts on.
bool read_position(std::string_view field) {
  return field == "from_clause" || field == "using_clause" || field == "larg" || field == "rarg";
}

// The value of SET name TO value as one string, the way PostgreSQL's
// ExtractSetVariableArgs flattens a single constant. nullopt for RESET,
// DEFAULT and FROM CURRENT, which return to (or keep) a value the session
// already had; an empty string for a value pgcloak does not read (a list),
// which no check takes for a safe one.
std::optional<std::string> set_value(const PgQuery__VariableSetStmt* s) {
  switch (s->kind) {
    case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_DEFAULT:
    case PG_QUERY__VARIABLE_SET_KIND__VAR_RESET:
    case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_CURRENT: return std::nullopt;
    case PG_QUERY__VARIABLE_SET_KIND__VAR_SET_VALUE: break;
    default: return std::string();
  }
  if (s->n_args != 1 || s->args[0]->node_case != PG_QUERY__NODE__NODE_A_CONST) return std::string();
  const PgQuery__AConst* c = s->args[0]->a_const;
  if (c->isnull) return std::string();
  switch (c->val_case) {
    case PG_QUERY__A__CONST__VAL_IVAL: return c->ival != nullptr ? std::to_string(c->ival->ival) : "0";
    case PG_QUERY__A__CONST__VAL_BOOLVAL: return c->boolval != nullptr && c->boolval->boolval ? "on" : "off";
    case PG_QUERY__A__CONST__VAL_SVAL:
      return c->sval != nullptr && c->sval->sval != nullptr ? std::string(c->sval->sval) : std::string();
    case PG_QUERY__A__CONST__VAL_FVAL:
      return c->fval != nullptr && c->fval->fval != nullptr ? std::string(c->fval->fval) : std::string();
    default: return std::string();
  }
}

// Whether an EXECUTE of a prepared statement stands anywhere below m.
bool contains_execute(const ProtobufCMessage* m) {
  bool found = is(m, pg_query__execute_stmt__descriptor);
  if (!found) {
    walk_children(m, [&](const ProtobufCMessage* c, std::string_view) {
      if (is(c, pg_query__execute_stmt__descriptor)) found = true;
      return !found;
    });
  }
  return found;
}

// A name copied into a splice must not comment out what follows it: a
// trailing "-- comment" runs to the end of the line.
std::string end_line_comment(std::string text) {
  if (text.find("--") != std::string::npos) text += '\n';
  return text;
}

struct Edit {
  int start = 0;
  int end = 0;
  std::string text;
  std::string output_text;  // the splice of StatementDecision::output_sql, if it differs
};

class Analyzer {
 public:
  Analyzer(std::string sql, const SessionPolicy& policy, AnalysisMode mode)
      : sql_(std::move(sql)), policy_(policy), strict_(mode == AnalysisMode::strict) {}
  StatementDecision run();
  // After run(): the rewrite (or output rewrite) with the literals at
  // `literals` as NUL bytes; nullopt when an edit touches one.
  std::optional<std::string> splice_template(bool output,
                                             const std::vector<std::pair<size_t, size_t>>& literals) const;
  // After run(): whether the decision depends on a constant's value (SET).
  bool value_dependent() const { return value_dependent_; }

 private:
  void statement(const PgQuery__Node* node);
  void visit(const ProtobufCMessage* m, std::string_view field);
  void visit_children(const ProtobufCMessage* m) {
    walk_children(m, [this](const ProtobufCMessage* c, std::string_view f) {
      if (!decision_.refusal) visit(c, f);
      return false;
    });
  }
  // Whether any protected relation is read or named below m (nothing edited).
  bool probe(const ProtobufCMessage* m);
  void range_var(const PgQuery__RangeVar* rv, std::string_view field);
  const RelationMasks* resolve(const PgQuery__RangeVar* rv);
  void wrap(const PgQuery__RangeVar* rv, const RelationMasks& m);
  void copy(const PgQuery__CopyStmt* c);
  void dml_target(const PgQuery__RangeVar* target, const ProtobufCMessage* stmt, bool insert);
  void func_call(const PgQuery__FuncCall* f);
  void attribute_call(std::string_view name);
  void setting(const PgQuery__VariableSetStmt* s);
  // Past a U&"..." identifier's UESCAPE 'c' clause, if token k has one.
  int skip_uescape(int k);
  void check_refused_columns(size_t first_wrapped, size_t first_column_ref);
  void plan_output_masking(const PgQuery__SelectStmt* s, size_t first_wrapped);
  // The text with edits_ applied (sorted, checked); `output`: their
  // output_text where they have one.
  std::string splice(bool output) const;
  void refuse(std::string_view rule, std::string_view what, std::string_view why);
  bool refused() const { return decision_.refusal.has_value(); }
  const std::vector<Token>* tokens();
  int token_at(int location);
  // Where token k ends. The scanner's own end offsets are wrong for some
  // tokens (U&"..." identifiers), so this is where the next token starts,
  // less whitespace; a comment in between stays with token k.
  int token_end(int k);
  std::string qualified(const RelationMasks& m) const {
    const auto* rel = m.protection->relation;
    return rel->schema + "." + rel->name;
  }
  void note_relation(const RelationMasks& m) {
    auto q = qualified(m);
    if (std::find(decision_.relations.begin(), decision_.relations.end(), q) == decision_.relations.end()) {
      decision_.relations.push_back(std::move(q));
    }
  }

  std::string sql_;
  const SessionPolicy& policy_;
  bool strict_ = false;
  std::unordered_set<std::string> cte_names_;  // strict mode: names that are not relations
  StatementDecision decision_;
  std::vector<Edit> edits_;
  std::optional<std::vector<Token>> tokens_;
  bool probing_ = false;
  bool probe_found_ = false;
  std::unordered_set<const void*> skip_;  // RangeVars that are DML targets or new names
  struct Wrapped {
    const RelationMasks* masks;
    std::string alias;
    const PgQuery__RangeVar* rv = nullptr;
  };
  std::vector<Wrapped> wrapped_;
  std::vector<const PgQuery__ColumnRef*> column_refs_;
  bool output_planned_ = false;   // plan_output_masking() filled decision_.output_*
  bool value_dependent_ = false;  // the decision looked at a constant's value
};

void Analyzer::refuse(std::string_view rule, std::string_view what, std::string_view why) {
  if (decision_.refusal) return;
  decision_.rule = std::string(rule);
  decision_.refusal = policy_refusal(policy_, rule, what, why);
}

const std::vector<Token>* Analyzer::tokens() {
  if (!tokens_) {
    auto t = scan_tokens(sql_);
    if (!t) {
      refuse("rewrite", "this statement", "pgcloak could not tokenise it to rewrite it");
      return nullptr;
    }
    tokens_ = std::move(t).value();
  }
  return &*tokens_;
}

int Analyzer::token_at(int location) {
  const auto* t = tokens();
  if (t == nullptr) return -1;
  auto it = std::lower_bound(t->begin(), t->end(), location,
                             [](const Token& tok, int loc) { return tok.start < loc; });
  if (it == t->end() || it->start != location) return -1;
  return static_cast<int>(it - t->begin());
}

int Analyzer::token_end(int k) {
  const auto& t = *tokens_;
  int end = k + 1 < static_cast<int>(t.size()) ? t[static_cast<size_t>(k) + 1].start
                                               : static_cast<int>(sql_.size());
  const int floor = t[static_cast<size_t>(k)].start + 1;
  while (end > floor &&
         (sql_[static_cast<size_t>(end) - 1] == ' ' || sql_[static_cast<size_t>(end) - 1] == '\t' ||
          sql_[static_cast<size_t>(end) - 1] == '\n' || sql_[static_cast<size_t>(end) - 1] == '\r')) {
    --end;
  }
  return end;
}

StatementDecision Analyzer::run() {
  decision_.rule = "masking";
  auto tree = ParseTree::parse(sql_);
  if (!tree) {
    // Fail closed (issue: parse failures are refused for masked roles).
    decision_.action = StatementDecision::Action::refuse;
    decision_.rule = "parse";
    decision_.refusal = tree.error();
    return decision_;
  }
  const auto& result = (*tree)->result();
  if (strict_) {
    walk_children(&result.base, [this](const ProtobufCMessage* m, std::string_view) {
      if (is(m, pg_query__common_table_expr__descriptor)) {
        cte_names_.insert(reinterpret_cast<const PgQuery__CommonTableExpr*>(m)->ctename);
      }
      return true;
    });
  }
  for (size_t i = 0; i < result.n_stmts && !refused(); ++i) {
    if (result.stmts[i]->stmt != nullptr) statement(result.stmts[i]->stmt);
  }
  if (refused()) {
    decision_.action = StatementDecision::Action::refuse;
    return decision_;
  }
  if (edits_.empty()) return decision_;
  std::sort(edits_.begin(), edits_.end(), [](const Edit& a, const Edit& b) { return a.start < b.start; });
  int at = 0;
  for (const auto& e : edits_) {
    if (e.start < at || e.end < e.start || e.end > static_cast<int>(sql_.size())) {
      decision_.action = StatementDecision::Action::refuse;
      decision_.refusal =
          policy_refusal(policy_, "rewrite", "this statement", "pgcloak could not rewrite it safely");
      return decision_;
    }
    at = e.end;
  }
  decision_.action = StatementDecision::Action::rewrite;
  decision_.sql = splice(false);
  if (output_planned_ && result.n_stmts == 1) {
    decision_.output_sql = splice(true);
  } else {
    output_planned_ = false;
    decision_.output_columns.clear();
    decision_.output_fields = 0;
  }
  return decision_;
}

std::string Analyzer::splice(bool output) const {
  std::string out;
  out.reserve(sql_.size() + edits_.size() * 256);
  size_t at = 0;
  for (const auto& e : edits_) {
    out.append(sql_, at, static_cast<size_t>(e.start) - at);
    out += output && !e.output_text.empty() ? e.output_text : e.text;
    at = static_cast<size_t>(e.end);
  }
  out.append(sql_, at, std::string::npos);
  return out;
}

std::optional<std::string> Analyzer::splice_template(
    bool output, const std::vector<std::pair<size_t, size_t>>& literals) const {
  std::string out;
  out.reserve(sql_.size() + edits_.size() * 256);
  size_t li = 0;
  // sql_[from, to) with each literal inside as one NUL byte.
  auto copy = [&](size_t from, size_t to) {
    while (li < literals.size() && literals[li].first < to) {
      const auto [start, len] = literals[li];
      if (start < from) return false;  // straddles an edit
      if (start + len > to) return false;
      out.append(sql_, from, start - from);
      out += '\0';
      from = start + len;
      ++li;
    }
    out.append(sql_, from, to - from);
    return true;
  };
  size_t at = 0;
  for (const auto& e : edits_) {
    if (!copy(at, static_cast<size_t>(e.start))) return std::nullopt;
    out += output && !e.output_text.empty() ? e.output_text : e.text;
    at = static_cast<size_t>(e.end);
  }
  if (!copy(at, sql_.size()) || li != literals.size()) return std::nullopt;
  // The NUL bytes must be the literals' and nothing else's.
  if (static_cast<size_t>(std::count(out.begin(), out.end(), '\0')) != literals.size()) return std::nullopt;
  return out;
}

void Analyzer::statement(const PgQuery__Node* node) {
  const size_t first_wrapped = wrapped_.size();
  const size_t first_ref = column_refs_.size();
  switch (node->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT:
    case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
    case PG_QUERY__NODE__NODE_PREPARE_STMT:
    case PG_QUERY__NODE__NODE_EXECUTE_STMT:
    case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
    case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
    case PG_QUERY__NODE__NODE_FETCH_STMT:
    case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
    case PG_QUERY__NODE__NODE_LISTEN_STMT:
    case PG_QUERY__NODE__NODE_UNLISTEN_STMT:
    case PG_QUERY__NODE__NODE_NOTIFY_STMT:
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
    case PG_QUERY__NODE__NODE_CALL_STMT: break;
    default: decision_.catalog_may_change = true;
  }
  switch (node->node_case) {
    case PG_QUERY__NODE__NODE_DO_STMT:
      return refuse("deny:do", "DO blocks", "they run procedural code pgcloak cannot analyse");
    case PG_QUERY__NODE__NODE_CREATE_FUNCTION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_FUNCTION_STMT:
      return refuse("deny:function-ddl", "creating or altering functions and procedures",
                    "a function can read protected tables with its owner's rights");
    case PG_QUERY__NODE__NODE_CREATE_TRIG_STMT:
    case PG_QUERY__NODE__NODE_RULE_STMT:
    case PG_QUERY__NODE__NODE_CREATE_EVENT_TRIG_STMT:
    case PG_QUERY__NODE__NODE_CREATE_POLICY_STMT:
    case PG_QUERY__NODE__NODE_ALTER_POLICY_STMT:
    case PG_QUERY__NODE__NODE_CREATE_EXTENSION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_EXTENSION_STMT:
    case PG_QUERY__NODE__NODE_ALTER_EXTENSION_CONTENTS_STMT:
    case PG_QUERY__NODE__NODE_CREATE_PLANG_STMT:
    case PG_QUERY__NODE__NODE_CREATE_CAST_STMT:
    case PG_QUERY__NODE__NODE_CREATE_TRANSFORM_STMT:
    case PG_QUERY__NODE__NODE_CREATE_CONVERSION_STMT:
      return refuse("deny:code-ddl", "creating triggers, rules, policies, extensions, languages or casts",
                    "they run code pgcloak cannot analyse");
    case PG_QUERY__NODE__NODE_DEFINE_STMT:
      if (node->define_stmt->kind == PG_QUERY__OBJECT_TYPE__OBJECT_OPERATOR ||
          node->define_stmt->kind == PG_QUERY__OBJECT_TYPE__OBJECT_AGGREGATE) {
        return refuse("deny:code-ddl", "creating operators or aggregates",
                      "they run functions pgcloak cannot analyse");
      }
      break;
    case PG_QUERY__NODE__NODE_CREATE_ROLE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_ROLE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_ROLE_SET_STMT:
    case PG_QUERY__NODE__NODE_GRANT_ROLE_STMT:
    case PG_QUERY__NODE__NODE_ALTER_SYSTEM_STMT:
      return refuse("deny:identity", "changing roles, role memberships or server settings",
                    "masking follows the login role");
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
      setting(node->variable_set_stmt);
      if (refused()) return;
      break;
    case PG_QUERY__NODE__NODE_ALTER_DATABASE_SET_STMT:
      // The database's default for a setting applies to every later session
      // (ALTER ROLE ... SET is refused above).
      if (node->alter_database_set_stmt->setstmt != nullptr) {
        const auto name = setting_key(node->alter_database_set_stmt->setstmt->name != nullptr
                                          ? node->alter_database_set_stmt->setstmt->name
                                          : "");
        if (name == "role" || name == "session_authorization") {
          return refuse("deny:identity", "changing roles, role memberships or server settings",
                        "masking follows the login role");
        }
        setting(node->alter_database_set_stmt->setstmt);
        if (refused()) return;
      }
      break;
    case PG_QUERY__NODE__NODE_CREATE_FOREIGN_TABLE_STMT:
    case PG_QUERY__NODE__NODE_IMPORT_FOREIGN_SCHEMA_STMT:
    case PG_QUERY__NODE__NODE_CREATE_FOREIGN_SERVER_STMT:
    case PG_QUERY__NODE__NODE_ALTER_FOREIGN_SERVER_STMT:
    case PG_QUERY__NODE__NODE_CREATE_USER_MAPPING_STMT:
    case PG_QUERY__NODE__NODE_ALTER_USER_MAPPING_STMT:
    case PG_QUERY__NODE__NODE_CREATE_FDW_STMT:
    case PG_QUERY__NODE__NODE_ALTER_FDW_STMT:
      // postgres_fdw is dblink by another name: a foreign table over the
      // real table reads it on a connection pgcloak never sees.
      return refuse("deny:foreign-data",
                    "creating foreign tables, foreign servers, user mappings or wrappers",
                    "a foreign table can read protected tables over a connection pgcloak does not mask");
    case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
      if (node->explain_stmt->query != nullptr && contains_execute(&node->explain_stmt->query->base)) {
        // The prepared statement was rewritten: its plan shows the masking
        // expressions, HMAC keys included, and pgcloak does not know what
        // it reads. In any nesting: EXPLAIN CREATE TABLE AS EXECUTE shows
        // the same plan.
        return refuse("deny:explain", "EXPLAIN of a prepared statement",
                      "its plan shows the masking expressions and their keys, and estimates that can depend "
                      "on hidden values");
      }
      if (node->explain_stmt->query != nullptr && probe(&node->explain_stmt->query->base)) {
        return refuse("deny:explain", "EXPLAIN of a statement that reads protected data",
                      "plans show row estimates and timings that depend on hidden values");
      }
      if (refused()) return;
      return visit_children(&node->explain_stmt->base);
    case PG_QUERY__NODE__NODE_VIEW_STMT:
      skip_.insert(node->view_stmt->view);
      if (node->view_stmt->query != nullptr && probe(&node->view_stmt->query->base)) {
        return refuse("deny:create-view", "creating a view over protected data",
                      "the view would read the unmasked table for everyone who uses it");
      }
      if (refused()) return;
      break;
    case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT: {
      const auto* c = node->create_table_as_stmt;
      if (c->into != nullptr) skip_.insert(c->into->rel);
      if (c->objtype == PG_QUERY__OBJECT_TYPE__OBJECT_MATVIEW && c->query != nullptr &&
          probe(&c->query->base)) {
        return refuse("deny:create-view", "creating a materialized view over protected data",
                      "refreshing it later would copy unmasked values");
      }
      if (refused()) return;
      break;  // CREATE TABLE AS / SELECT INTO: the query is rewritten, so the copy holds masked values
    }
    case PG_QUERY__NODE__NODE_MERGE_STMT:
      if (probe(&node->merge_stmt->base)) {
        return refuse("deny:merge", "MERGE involving protected data",
                      "its join and conditions would read unmasked values");
      }
      if (refused()) return;
      break;
    case PG_QUERY__NODE__NODE_COPY_STMT:
      copy(node->copy_stmt);
      if (refused()) return;
      break;
    case PG_QUERY__NODE__NODE_INSERT_STMT:
      dml_target(node->insert_stmt->relation, &node->insert_stmt->base, true);
      break;
    case PG_QUERY__NODE__NODE_UPDATE_STMT:
      dml_target(node->update_stmt->relation, &node->update_stmt->base, false);
      break;
    case PG_QUERY__NODE__NODE_DELETE_STMT:
      dml_target(node->delete_stmt->relation, &node->delete_stmt->base, false);
      break;
    default: break;
  }
  if (refused()) return;
  visit(&node->base, "stmt");
  if (!refused()) check_refused_columns(first_wrapped, first_ref);
  if (!refused() && node->node_case == PG_QUERY__NODE__NODE_SELECT_STMT)
    plan_output_masking(node->select_stmt, first_wrapped);
}

bool Analyzer::probe(const ProtobufCMessage* m) {
  const bool saved = probing_;
  probing_ = true;
  probe_found_ = false;
  visit(m, "probe");
  probing_ = saved;
  return probe_found_;
}

void Analyzer::visit(const ProtobufCMessage* m, std::string_view field) {
  if (refused()) return;
  if (is(m, pg_query__node__descriptor)) {
    // A Node is only the wrapper of one member: its children see the field
    // the Node sits in (from_clause, larg, ...).
    walk_children(m, [&](const ProtobufCMessage* c, std::string_view) {
      visit(c, field);
      return false;
    });
    return;
  }
  if (is(m, pg_query__range_var__descriptor)) {
    range_var(reinterpret_cast<const PgQuery__RangeVar*>(m), field);
    return;
  }
  if (is(m, pg_query__func_call__descriptor)) {
    func_call(reinterpret_cast<const PgQuery__FuncCall*>(m));
  } else if (is(m, pg_query__a__expr__descriptor)) {
    const auto* e = reinterpret_cast<const PgQuery__AExpr*>(m);
    auto names = string_list(e->name, e->n_name);
    if (!names.empty() && policy_.protection().catalog().is_user_operator(names.back())) {
      return refuse("deny:function", "operator " + names.back(),
                    "it is not built in, and its function could read protected tables");
    }
  } else if (is(m, pg_query__type_cast__descriptor)) {
    const auto* t = reinterpret_cast<const PgQuery__TypeCast*>(m);
    if (t->type_name != nullptr) {
      auto names = string_list(t->type_name->names, t->type_name->n_names);
      if (!names.empty() && policy_.protection().catalog().is_user_cast_target(names.back())) {
        return refuse("deny:function", "a cast to " + names.back(),
                      "the cast runs a function that is not built in and could read protected tables");
      }
    }
  } else if (is(m, pg_query__range_table_sample__descriptor)) {
    const auto* s = reinterpret_cast<const PgQuery__RangeTableSample*>(m);
    if (s->relation != nullptr && s->relation->node_case == PG_QUERY__NODE__NODE_RANGE_VAR &&
        resolve(s->relation->range_var) != nullptr) {
      if (probing_) {
        probe_found_ = true;
        return;
      }
      return refuse("deny:tablesample", "TABLESAMPLE on a protected relation",
                    "pgcloak cannot mask a sampled scan");
    }
  } else if (is(m, pg_query__column_ref__descriptor)) {
    const auto* cr = reinterpret_cast<const PgQuery__ColumnRef*>(m);
    column_refs_.push_back(cr);
    // x.f is f(x) when f is a function of x's row type, not a column.
    if (cr->n_fields >= 2) attribute_call(string_list(cr->fields, cr->n_fields).back());
  } else if (is(m, pg_query__a__indirection__descriptor)) {
    const auto* ind = reinterpret_cast<const PgQuery__AIndirection*>(m);
    for (const auto& name : string_list(ind->indirection, ind->n_indirection)) {
      if (!name.empty()) attribute_call(name);  // (x).f is f(x) too
    }
  } else if (is(m, pg_query__create_stmt__descriptor)) {
    skip_.insert(reinterpret_cast<const PgQuery__CreateStmt*>(m)->relation);  // the new table's name
  } else if (is(m, pg_query__into_clause__descriptor)) {
    skip_.insert(reinterpret_cast<const PgQuery__IntoClause*>(m)->rel);
  }
  if (refused()) return;
  visit_children(m);
}

const RelationMasks* Analyzer::resolve(const PgQuery__RangeVar* rv) {
  auto candidates = policy_.protection().by_name(rv->relname);
  if (rv->schemaname != nullptr && *rv->schemaname != '\0') {
    std::erase_if(candidates,
                  [&](const RelationProtection* p) { return p->relation->schema != rv->schemaname; });
  }
  if (candidates.empty()) return nullptr;
  const RelationMasks* m = policy_.masks_for(candidates.front()->relation->oid);
  for (size_t i = 1; i < candidates.size(); ++i) {
    const RelationMasks* other = policy_.masks_for(candidates[i]->relation->oid);
    if (other == nullptr || m == nullptr || other->select_list != m->select_list) {
      // Unqualified, the name resolves through search_path, which the
      // session controls: with two protected relations of that name and
      // different masks we cannot know which one it reads.
      refuse("ambiguous", std::string("relation ") + rv->relname,
             "protected relations of that name exist in several schemas; qualify it with its schema");
      return nullptr;
    }
  }
  return m;
}

void Analyzer::range_var(const PgQuery__RangeVar* rv, std::string_view field) {
  if (const DeniedBuiltin* d = find_denied_relation(rv->relname)) {
    return refuse("deny:statistics", std::string(rv->relname), d->why);
  }
  if (skip_.count(rv) != 0) return;
  const RelationMasks* m = resolve(rv);
  if (m == nullptr) {
    if (strict_ && !probing_ && read_position(field) && cte_names_.count(rv->relname) == 0 &&
        policy_.protection().catalog().find_by_name(rv->relname).empty()) {
      decision_.rule = "catalog-refresh";
      decision_.refusal =
          Error::make(sqlstate::object_not_in_prerequisite_state,
                      std::string("pgcloak: relation \"") + rv->relname +
                          "\" is not in pgcloak's catalog yet; it is being refreshed after a schema change",
                      Severity::error, "Retry in a moment.");
    }
    return;
  }
  note_relation(*m);
  if (probing_) {
    probe_found_ = true;
    return;
  }
  if (!read_position(field)) {
    return refuse("deny:protected-object", "this statement on protected relation " + qualified(*m),
                  "masked sessions may only read protected relations (and write without reading them)");
  }
  wrap(rv, *m);
}

void Analyzer::wrap(const PgQuery__RangeVar* rv, const RelationMasks& m) {
  if (!m.masks_anything) return;  // every column is allowed for this policy
  const auto* toks = tokens();
  int i = token_at(rv->location);
  if (toks == nullptr || i < 0)
    return refuse("rewrite", "this statement", "pgcloak could not locate a table reference");
  const auto& t = *toks;
  const int n = static_cast<int>(t.size());
  auto kind = [&](int k) { return k >= 0 && k < n ? t[k].kind : PG_QUERY__TOKEN__NUL; };

  int last = skip_uescape(i);
  while (kind(last + 1) == PG_QUERY__TOKEN__ASCII_46 && last + 2 < n)
    last = skip_uescape(last + 2);  // schema . name
  const int name_start = t[i].start;
  const int name_end = token_end(last);
  int first = i;
  bool only = false;
  if (kind(i - 1) == PG_QUERY__TOKEN__ONLY) {
    only = true;
    first = i - 1;
  } else if (kind(i - 1) == PG_QUERY__TOKEN__ASCII_40 && kind(i - 2) == PG_QUERY__TOKEN__ONLY) {
    only = true;
    first = i - 2;
    if (kind(last + 1) != PG_QUERY__TOKEN__ASCII_41)
      return refuse("rewrite", "this statement", "unexpected ONLY syntax");
    ++last;
  }
  if (kind(last + 1) == PG_QUERY__TOKEN__ASCII_42 && rv->inh) ++last;  // legacy "tbl *"
  const bool table_statement = kind(first - 1) == PG_QUERY__TOKEN__TABLE;
  if (table_statement) --first;
  std::string alias = quote_ident(rv->relname);
  std::string alias_name = rv->relname;
  if (rv->alias != nullptr) {
    if (kind(last + 1) == PG_QUERY__TOKEN__AS) ++last;
    if (last + 1 >= n) return refuse("rewrite", "this statement", "unexpected alias syntax");
    last = skip_uescape(last + 1);  // the alias name
    alias_name = rv->alias->aliasname;
    alias = quote_ident(alias_name);
    if (rv->alias->n_colnames > 0) {
      if (kind(last + 1) != PG_QUERY__TOKEN__ASCII_40)
        return refuse("rewrite", "this statement", "unexpected alias syntax");
      int depth = 0;
      do {
        ++last;
        if (kind(last) == PG_QUERY__TOKEN__ASCII_40) ++depth;
        if (kind(last) == PG_QUERY__TOKEN__ASCII_41) --depth;
      } while (depth > 0 && last + 1 < n);
      if (depth != 0) return refuse("rewrite", "this statement", "unexpected alias syntax");
      auto cols = string_list(rv->alias->colnames, rv->alias->n_colnames);
      alias += "(";
      for (size_t k = 0; k < cols.size(); ++k) alias += (k > 0 ? ", " : "") + quote_ident(cols[k]);
      alias += ")";
    }
  }
  auto splice = [&](const std::string& select_list) {
    std::string text = "(SELECT " + select_list + " FROM " + (only ? "ONLY " : "") +
                       end_line_comment(sql_.substr(static_cast<size_t>(name_start),
                                                    static_cast<size_t>(name_end - name_start))) +
                       ") AS " + alias;
    if (table_statement) text = "SELECT * FROM " + text;
    // Keep a space on both sides so the splice never glues onto a neighbour.
    return " " + text + " ";
  };
  edits_.push_back({t[first].start, token_end(last), splice(m.select_list),
                    m.output_select_list.empty() ? std::string() : splice(m.output_select_list)});
  wrapped_.push_back({&m, alias_name, rv});
}

void Analyzer::copy(const PgQuery__CopyStmt* c) {
  if ((c->filename != nullptr && *c->filename != '\0') || c->is_program) {
    return refuse("deny:copy-file", "COPY to or from a server file or program",
                  "it bypasses the client connection pgcloak masks");
  }
  if (c->relation == nullptr) return;
  skip_.insert(c->relation);
  const RelationMasks* m = resolve(c->relation);
  if (m == nullptr) return;
  note_relation(*m);
  if (c->is_from || !m->masks_anything) return;  // COPY FROM writes without reading
  auto cols = string_list(c->attlist, c->n_attlist);
  const auto& rel_cols = m->protection->relation->columns;
  for (size_t k = 0; k < rel_cols.size(); ++k) {
    if (m->refused[k] &&
        (cols.empty() || std::find(cols.begin(), cols.end(), rel_cols[k].name) != cols.end())) {
      return refuse("deny:column", "reading column " + rel_cols[k].name + " of " + qualified(*m),
                    m->refused_why[k]);
    }
  }
  // PostgreSQL copies out of plain tables only (views, materialized views,
  // foreign and partitioned tables are refused with 42809): leave those to
  // it, so the client gets PostgreSQL's own error and no data.
  if (m->protection->relation->kind != 'r') return;
  const auto* toks = tokens();
  int i = token_at(c->relation->location);
  if (toks == nullptr || i < 0)
    return refuse("rewrite", "this statement", "pgcloak could not locate the COPY table");
  const auto& t = *toks;
  const int n = static_cast<int>(t.size());
  int last = skip_uescape(i);
  while (last + 2 < n && t[last + 1].kind == PG_QUERY__TOKEN__ASCII_46) last = skip_uescape(last + 2);
  const int name_end = token_end(last);
  if (!cols.empty()) {
    if (last + 1 >= n || t[last + 1].kind != PG_QUERY__TOKEN__ASCII_40) {
      return refuse("rewrite", "this statement", "unexpected COPY column list");
    }
    int depth = 0;
    do {
      ++last;
      if (t[last].kind == PG_QUERY__TOKEN__ASCII_40) ++depth;
      if (t[last].kind == PG_QUERY__TOKEN__ASCII_41) --depth;
    } while (depth > 0 && last + 1 < n);
  }
  std::string select;
  for (const auto& col : cols) select += (select.empty() ? "" : ", ") + quote_ident(col);
  if (select.empty()) select = "*";
  // COPY tbl TO reads that table alone, not its inheritance children: ONLY.
  std::string text = " (SELECT " + select + " FROM (SELECT " + m->select_list + " FROM ONLY " +
                     end_line_comment(sql_.substr(static_cast<size_t>(t[i].start),
                                                  static_cast<size_t>(name_end - t[i].start))) +
                     ") AS " + quote_ident(c->relation->relname) + ") ";
  edits_.push_back({t[i].start, token_end(last), std::move(text)});
}

void Analyzer::dml_target(const PgQuery__RangeVar* target, const ProtobufCMessage* stmt, bool insert) {
  if (target == nullptr) return;
  if (std::string_view(target->relname) == "pg_settings") {
    // UPDATE pg_settings is set_config() (refused) by another name.
    return refuse("deny:settings", "changing settings through pg_settings",
                  "it changes settings such as the role or how strings are read");
  }
  skip_.insert(target);
  const RelationMasks* m = resolve(target);
  if (m == nullptr) return;
  note_relation(*m);
  const auto& cols = m->protection->relation->columns;
  std::unordered_set<std::string> hidden;
  for (size_t k = 0; k < cols.size(); ++k) {
    if (m->refused[k] || m->specs[k].kind != MaskKind::allow) hidden.insert(cols[k].name);
  }
  if (hidden.empty()) return;
  const std::string alias = target->alias != nullptr ? target->alias->aliasname : target->relname;
  // Which parts of the statement may read the target's stored values:
  // for INSERT only RETURNING and ON CONFLICT; for UPDATE and DELETE
  // everything (SET, WHERE, FROM/USING, RETURNING), where even the
  // affected-row count is an oracle (MASKING-THREATS.md, class 13).
  std::vector<const ProtobufCMessage*> parts;
  if (insert) {
    const auto* ins = reinterpret_cast<const PgQuery__InsertStmt*>(stmt);
    for (size_t k = 0; k < ins->n_returning_list; ++k) parts.push_back(&ins->returning_list[k]->base);
    if (ins->on_conflict_clause != nullptr) parts.push_back(&ins->on_conflict_clause->base);
  } else {
    parts.push_back(stmt);
  }
  bool bad = false;
  std::string column;
  for (const auto* part : parts) {
    auto check = [&](const ProtobufCMessage* c, std::string_view) {
      if (bad) return false;
      if (is(c, pg_query__index_elem__descriptor)) {
        // ON CONFLICT (col): the arbiter compares the new row with stored
        // values, so whether the row is inserted says whether a guess exists.
        const char* name = reinterpret_cast<const PgQuery__IndexElem*>(c)->name;
        if (name != nullptr && hidden.count(name) != 0) {
          bad = true;
          column = name;
          return false;
        }
        return true;
      }
      if (!is(c, pg_query__column_ref__descriptor)) return true;
      const auto* cr = reinterpret_cast<const PgQuery__ColumnRef*>(c);
      auto f = string_list(cr->fields, cr->n_fields);
      if (f.empty()) return false;
      if (insert && f.size() >= 2 && f.front() == "excluded") return false;  // the row being inserted
      const bool star = f.back().empty();
      if (star || (f.size() == 1 && f.front() == alias) || hidden.count(f.back()) != 0) {
        bad = true;
        column = star ? "*" : f.back();
      }
      return false;
    };
    if (check(part, "")) walk_children(part, check);
  }
  if (bad) {
    refuse("deny:dml-reads-protected",
           std::string(insert ? "INSERT" : "UPDATE/DELETE") + " reading " + column +
               " of protected relation " + qualified(*m),
           "writes may not read, test or return protected columns; their results would reveal hidden values");
  }
}

void Analyzer::func_call(const PgQuery__FuncCall* f) {
  auto names = string_list(f->funcname, f->n_funcname);
  if (names.empty()) return;
  const std::string& name = names.back();
  std::string shown;
  for (const auto& n : names) shown += (shown.empty() ? "" : ".") + n;
  if (const DeniedBuiltin* d = find_denied_function(name)) {
    return refuse("deny:function", "function " + shown, d->why);
  }
  if (names.size() == 1) {
    if (!policy_.unqualified_function_allowed(name)) {
      refuse("deny:function", "function " + shown,
             "it is not built in (not in pg_catalog) and could read protected tables with its owner's "
             "rights; an "
             "administrator can add it to masking.function_allowlist");
    }
    return;
  }
  const std::string& schema = names[names.size() - 2];
  if (schema == "pg_catalog") return;
  if (!policy_.function_allowed(schema, name)) {
    refuse(
        "deny:function", "function " + shown,
        "it is not built in (not in pg_catalog) and could read protected tables with its owner's rights; an "
        "administrator can add it to masking.function_allowlist");
  }
}

void Analyzer::attribute_call(std::string_view name) {
  if (policy_.unqualified_function_allowed(name)) return;
  refuse("deny:function", "function " + std::string(name) + " (called with attribute notation)",
         "it is not built in (not in pg_catalog) and could read protected tables with its owner's rights; an "
         "administrator can add it to masking.function_allowlist");
}

void Analyzer::setting(const PgQuery__VariableSetStmt* s) {
  // The decision depends on the value, a constant: texts that differ only
  // in it must not share one (DecisionCache).
  value_dependent_ = true;
  const std::string name = setting_key(s->name != nullptr ? s->name : "");
  if (name == "role" || name == "session_authorization") {
    return refuse("deny:set-role", "SET ROLE, RESET ROLE and SET SESSION AUTHORIZATION",
                  "masking follows the login role and cannot follow a switch");
  }
  const auto value = set_value(s);
  auto why = masked_set_refusal(name, value);
  if (!why) return;
  std::string_view rule = "deny:setting";
  if (name == "standard_conforming_strings" || name == "backslash_quote") {
    rule = "deny:string-syntax";
  } else if (name == "client_encoding") {
    rule = "deny:encoding";
  } else if (name.rfind("debug_", 0) == 0 || name.rfind("trace_", 0) == 0 || name == "client_min_messages") {
    rule = "deny:debug-output";
  }
  std::string what = "setting " + name;
  if (name == "standard_conforming_strings") what = "turning standard_conforming_strings off";
  if (value) what += " to " + *value;
  refuse(rule, what, *why);
}

int Analyzer::skip_uescape(int k) {
  const auto& t = *tokens_;
  const int n = static_cast<int>(t.size());
  if (k + 2 < n && t[static_cast<size_t>(k) + 1].kind == PG_QUERY__TOKEN__UESCAPE &&
      t[static_cast<size_t>(k) + 2].kind == PG_QUERY__TOKEN__SCONST) {
    return k + 2;
  }
  return k;
}

// Output masking (StatementDecision::output_sql). Conservative on purpose:
// the raw values of output-masked columns may reach nothing PostgreSQL
// computes, only the result rows, where the relay masks them. So: one
// SELECT reading one protected relation, no CTE, set operation, DISTINCT,
// grouping, window, locking or INTO; a select list of plain column
// references (no expressions, no alias on an output-masked column, no
// whole-row reference); and WHERE, ORDER BY, OFFSET and LIMIT free of
// subqueries, stars, whole-row references, output-masked column names and
// ORDER BY positions. PostgreSQL reports each such column as an output
// column with the relation's OID and the column's number; the count of
// them follows from the select list, and the relay checks it.
void Analyzer::plan_output_masking(const PgQuery__SelectStmt* s, size_t first_wrapped) {
  if (wrapped_.size() != first_wrapped + 1 || edits_.empty()) return;
  const Wrapped& w = wrapped_.back();
  const RelationMasks& m = *w.masks;
  if (m.output_select_list.empty() || w.rv == nullptr) return;
  if (s->n_distinct_clause > 0 || s->into_clause != nullptr || s->n_group_clause > 0 ||
      s->having_clause != nullptr || s->n_window_clause > 0 || s->n_values_lists > 0 ||
      s->n_locking_clause > 0 || s->with_clause != nullptr || s->op != PG_QUERY__SET_OPERATION__SETOP_NONE ||
      s->n_from_clause != 1 || s->from_clause[0]->node_case != PG_QUERY__NODE__NODE_RANGE_VAR ||
      s->from_clause[0]->range_var != w.rv) {
    return;
  }
  if (w.rv->alias != nullptr && w.rv->alias->n_colnames > 0) return;  // columns renamed
  const auto& cols = m.protection->relation->columns;
  std::unordered_set<std::string> raw;
  for (size_t k = 0; k < cols.size(); ++k) {
    if (m.output_masked[k]) raw.insert(cols[k].name);
  }
  // An allow-list of the references PostgreSQL reads as one stored column
  // of this relation: `col` and `alias.col`, where col is a column of the
  // relation and not also the alias. Anything else may be the whole row
  // (`c`, `c.*` outside the select list, `(c).*`, `ROW(c.*)`) or a function
  // of it in attribute notation (`c.to_jsonb` is to_jsonb(c): PostgreSQL's
  // ParseFuncOrColumn), and a whole row holds the raw values that this
  // plan leaves to the relay to mask: such a statement keeps the masking
  // subquery for every column.
  std::unordered_set<std::string> columns;
  for (const auto& c : cols) columns.insert(c.name);
  const std::string alias = w.alias;
  auto plain_column = [&](const std::vector<std::string>& f) {
    if (f.size() == 1) return columns.count(f[0]) != 0 && f[0] != alias;
    return f.size() == 2 && f[0] == alias && columns.count(f[1]) != 0;
  };
  auto star = [&](const std::vector<std::string>& f) {
    return (f.size() == 1 && f[0].empty()) || (f.size() == 2 && f[0] == alias && f[1].empty());
  };
  uint32_t fields = 0;
  for (size_t i = 0; i < s->n_target_list; ++i) {
    const PgQuery__Node* n = s->target_list[i];
    if (n->node_case != PG_QUERY__NODE__NODE_RES_TARGET) return;
    const PgQuery__ResTarget* rt = n->res_target;
    if (rt->val == nullptr || rt->val->node_case != PG_QUERY__NODE__NODE_COLUMN_REF || rt->n_indirection > 0)
      return;
    const PgQuery__ColumnRef* cr = rt->val->column_ref;
    auto f = string_list(cr->fields, cr->n_fields);
    if (star(f)) {  // * or alias.*
      fields += static_cast<uint32_t>(raw.size());
    } else if (!plain_column(f)) {
      return;
    } else if (raw.count(f.back()) != 0) {
      if (rt->name != nullptr && *rt->name != '\0') return;
      ++fields;
    }
  }
  if (fields == 0) return;
  // WHERE, ORDER BY, OFFSET and LIMIT: plain columns that are not read raw,
  // constants, operators and functions of those; no subquery, no star, no
  // field selection from a row.
  bool clean = true;
  auto check = [&](const ProtobufCMessage* c, std::string_view) {
    if (!clean) return false;
    if (is(c, pg_query__sub_link__descriptor) || is(c, pg_query__a__indirection__descriptor) ||
        is(c, pg_query__a__star__descriptor)) {
      clean = false;
    } else if (is(c, pg_query__column_ref__descriptor)) {
      const auto* cr = reinterpret_cast<const PgQuery__ColumnRef*>(c);
      auto f = string_list(cr->fields, cr->n_fields);
      if (!plain_column(f) || raw.count(f.back()) != 0) clean = false;
      return false;
    }
    return clean;
  };
  auto clean_expr = [&](const PgQuery__Node* e) {
    if (e != nullptr && check(&e->base, "")) walk_children(&e->base, check);
    return clean;
  };
  if (!clean_expr(s->where_clause) || !clean_expr(s->limit_offset) || !clean_expr(s->limit_count)) return;
  for (size_t i = 0; i < s->n_sort_clause; ++i) {
    const PgQuery__Node* n = s->sort_clause[i];
    if (n->node_case != PG_QUERY__NODE__NODE_SORT_BY || n->sort_by->node == nullptr) return;
    // ORDER BY 3 sorts by the third result column, whatever it holds.
    if (n->sort_by->node->node_case == PG_QUERY__NODE__NODE_A_CONST || n->sort_by->n_use_op > 0) return;
    if (!clean_expr(n->sort_by->node)) return;
  }
  for (size_t k = 0; k < cols.size(); ++k) {
    if (m.output_masked[k])
      decision_.output_columns.emplace_back(m.protection->relation->oid, cols[k].attnum);
  }
  decision_.output_fields = fields;
  output_planned_ = true;
}

void Analyzer::check_refused_columns(size_t first_wrapped, size_t first_ref) {
  for (size_t w = first_wrapped; w < wrapped_.size(); ++w) {
    const RelationMasks& m = *wrapped_[w].masks;
    const auto& cols = m.protection->relation->columns;
    for (size_t k = 0; k < cols.size(); ++k) {
      if (!m.refused[k]) continue;
      for (size_t r = first_ref; r < column_refs_.size(); ++r) {
        auto f = string_list(column_refs_[r]->fields, column_refs_[r]->n_fields);
        if (f.empty()) continue;
        const bool star = f.back().empty();
        const bool whole_row = f.size() == 1 && f.front() == wrapped_[w].alias;
        if (star || whole_row || f.back() == cols[k].name) {
          return refuse("deny:column",
                        "reading column " + cols[k].name + " of " + qualified(m) +
                            (star        ? " (through *)"
                             : whole_row ? " (through a whole-row reference)"
                                         : ""),
                        m.refused_why[k]);
        }
      }
    }
  }
}

}  // namespace

Error policy_refusal(const SessionPolicy& policy, std::string_view rule, std::string_view what,
                     std::string_view why) {
  return Error::make(
      sqlstate::insufficient_privilege,
      "pgcloak: " + std::string(what) + " is not allowed for role \"" + policy.user() +
          "\" under masking policy \"" + policy.policy().name + "\" (rule " + std::string(rule) + ")",
      Severity::error,
      std::string("Why: ") + std::string(why) + ". Ask your data administrator if you need this access.");
}

StatementDecision analyze_statement(std::string_view sql, const SessionPolicy& policy, AnalysisMode mode) {
  StatementDecision d;
  if (!policy.masks_anything()) return d;
  if (mode == AnalysisMode::normal && !policy.protection().may_be_sensitive(sql)) return d;
  if (sql.find('\0') != std::string_view::npos) {
    d.action = StatementDecision::Action::refuse;
    d.rule = "parse";
    d.refusal =
        policy_refusal(policy, "parse", "a statement containing a NUL byte", "PostgreSQL cannot parse it");
    return d;
  }
  Analyzer a{std::string(sql), policy, mode};
  return a.run();
}

DecisionTemplate analyze_statement_template(std::string_view sql, const SessionPolicy& policy,
                                            AnalysisMode mode,
                                            const std::vector<std::pair<size_t, size_t>>& literals) {
  DecisionTemplate t;
  if (!policy.masks_anything() ||
      (mode == AnalysisMode::normal && !policy.protection().may_be_sensitive(sql)) ||
      sql.find('\0') != std::string_view::npos) {
    t.decision = analyze_statement(sql, policy, mode);
    return t;
  }
  Analyzer a{std::string(sql), policy, mode};
  t.decision = a.run();
  if (a.value_dependent()) return t;
  switch (t.decision.action) {
    case StatementDecision::Action::pass: t.shareable = true; break;
    case StatementDecision::Action::refuse: break;
    case StatementDecision::Action::rewrite: {
      auto sql_t = a.splice_template(false, literals);
      std::optional<std::string> out_t;
      if (sql_t && !t.decision.output_sql.empty()) out_t = a.splice_template(true, literals);
      if (sql_t && (t.decision.output_sql.empty() || out_t)) {
        t.shareable = true;
        t.sql_template = std::move(*sql_t);
        if (out_t) t.output_template = std::move(*out_t);
      }
      break;
    }
  }
  return t;
}

bool may_change_catalog(std::string_view sql) {
  static constexpr std::string_view ddl_words[] = {"create", "alter",  "drop",     "comment",  "grant",
                                                   "revoke", "import", "security", "reassign", "refresh"};
  const size_t n = sql.size();
  std::string word;
  for (size_t i = 0; i < n;) {
    const char c = sql[i];
    if (c == '\'' || c == '"') {  // skip a literal or quoted identifier
      size_t j = sql.find(c, i + 1);
      i = j == std::string_view::npos ? n : j + 1;
      continue;
    }
    if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
      size_t j = sql.find('\n', i);
      i = j == std::string_view::npos ? n : j + 1;
      continue;
    }
    if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
      size_t j = sql.find("*/", i + 2);
      i = j == std::string_view::npos ? n : j + 2;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) == 0 && c != '_') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && (std::isalnum(static_cast<unsigned char>(sql[j])) != 0 || sql[j] == '_' || sql[j] == '$'))
      ++j;
    if (j - i <= 8) {
      word.assign(sql.substr(i, j - i));
      for (char& ch : word) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      for (auto w : ddl_words) {
        if (word == w) return true;
      }
    }
    i = j;
  }
  return false;
}

}  // namespace pgcloak::rules
