#include "rules/protection.h"

#include <algorithm>
#include <cctype>
#include <map>

namespace pgcloak::rules {

namespace {

// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
constexpr size_t max_identifier = 63;

bool word_byte(unsigned char c) {
  return std::isalnum(c) != 0 || c == '_' || c == '$' || c >= 0x80;
}

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool plain_word(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return word_byte(static_cast<unsigned char>(c)); });
}

// Statement keywords whose statements a masked session is refused (or that
// need a closer look) even when no protected name appears: DO, CREATE/ALTER
// FUNCTION and PROCEDURE, SET/RESET ROLE and SESSION AUTHORIZATION, COPY to
// files and programs, role membership (GRANT role, ALTER GROUP ... ADD
// USER), foreign tables and servers, SET session_authorization spelled as a
// setting, and EXPLAIN (EXECUTE of a prepared statement names nothing).
constexpr std::string_view sensitive_keywords[] = {
    "do",      "function", "procedure", "role",      "authorization", "copy",
    "trigger", "rule",     "policy",    "extension", "language",      "merge",
    "grant",   "user",     "foreign",   "server",    "mapping",       "session_authorization",
    "explain"};

// Settings that change how PostgreSQL reads a statement or what it tells
// the client about the statement it ran (session_settings.h), SET NAMES
// (client_encoding by another name), and the view that sets any setting.
constexpr std::string_view sensitive_settings[] = {
    "standard_conforming_strings", "backslash_quote", "client_encoding", "names",
    "client_min_messages",         "pg_settings"};
// Families of settings checked by prefix: parse trees and plans, traces, logs.
constexpr std::string_view sensitive_setting_prefixes[] = {"debug_", "trace_", "log_", "wal_debug"};

}  // namespace

const std::vector<DeniedBuiltin>& denied_builtin_functions() {
  static const std::vector<DeniedBuiltin> list = {
      {"query_to_xml", true, "it runs SQL given as a string"},
      {"cursor_to_xml", true, "it reads a cursor outside pgcloak's analysis"},
      {"table_to_xml", true, "it reads a table named by a string"},
      {"schema_to_xml", true, "it reads tables named by a string"},
      {"database_to_xml", true, "it reads every table"},
      {"ts_stat", false, "it runs SQL given as a string"},
      {"ts_rewrite", false, "it runs SQL given as a string"},
      {"dblink", true, "it runs SQL on another connection"},
      {"lo_", true, "large objects bypass query analysis"},
      {"loread", false, "large objects bypass query analysis"},
      {"lowrite", false, "large objects bypass query analysis"},
      {"pg_read_", true, "it reads server files"},
      {"pg_ls_", true, "it lists server files"},
      {"pg_stat_file", false, "it reads server file metadata"},
      {"pg_file_", true, "it writes server files"},
      {"pg_sleep", true, "timing side channels can reveal hidden values"},
      {"set_config", false, "it changes settings such as the role"},
      {"pg_stat_", true, "statistics views show other sessions' statements and values"},
      // The session's own statements as PostgreSQL received them: rewritten,
      // with the masking expressions and their HMAC keys.
      {"current_query", false, "it shows the rewritten statement with the masking keys"},
      {"pg_prepared_statement", false, "it shows rewritten statements with the masking keys"},
      {"pg_cursor", false, "it shows rewritten statements with the masking keys"},
  };
  return list;
}

const std::vector<DeniedBuiltin>& denied_builtin_relations() {
  static const std::vector<DeniedBuiltin> list = {
      {"pg_stats", true, "column statistics hold most-common values and histograms"},
      {"pg_statistic", true, "column statistics hold most-common values and histograms"},
      {"pg_stat_statements", true, "it shows other sessions' statements with literals"},
      {"pg_stat_activity", false, "it shows other sessions' statements with literals"},
      {"pg_largeobject", true, "large objects bypass query analysis"},
      {"pg_prepared_statements", false, "it shows rewritten statements with the masking keys"},
      {"pg_cursors", false, "it shows rewritten statements with the masking keys"},
  };
  return list;
}

namespace {
const DeniedBuiltin* find_in(const std::vector<DeniedBuiltin>& list, std::string_view name) {
  for (const auto& d : list) {
    if (d.prefix ? name.substr(0, d.name.size()) == d.name : name == d.name) return &d;
  }
  return nullptr;
}
}  // namespace

const DeniedBuiltin* find_denied_function(std::string_view name) {
  return find_in(denied_builtin_functions(), name);
}
const DeniedBuiltin* find_denied_relation(std::string_view name) {
  return find_in(denied_builtin_relations(), name);
}

std::shared_ptr<const Protection> Protection::build(std::shared_ptr<const MaskingConfig> config,
                                                    std::shared_ptr<const Catalog> catalog) {
  auto p = std::make_shared<Protection>();
  p->config_ = std::move(config);
  p->catalog_ = std::move(catalog);
  const Catalog& cat = *p->catalog_;
  const MaskingConfig& cfg = *p->config_;

  // oid -> per-column protection, grown to a fixpoint below.
  std::map<uint32_t, std::vector<RelationProtection::Column>> found;
  auto slot = [&](const CatalogRelation& rel) -> std::vector<RelationProtection::Column>& {
    auto& cols = found[rel.oid];
    if (cols.size() != rel.columns.size()) cols.resize(rel.columns.size());
    return cols;
  };
  auto index_of = [](const CatalogRelation& rel, std::string_view name) -> int {
    for (size_t i = 0; i < rel.columns.size(); ++i) {
      if (rel.columns[i].name == name) return static_cast<int>(i);
    }
    return -1;
  };

  for (const auto& pc : cfg.protected_columns) {
    const CatalogRelation* rel = cat.find(pc.column.schema, pc.column.table);
    if (rel == nullptr) {
      p->warnings.push_back("protected column " + pc.column.quoted() + ": table not found in the database");
      continue;
    }
    int i = index_of(*rel, pc.column.column);
    if (i < 0) {
      p->warnings.push_back("protected column " + pc.column.quoted() + ": column not found in the database");
      continue;
    }
    auto& col = slot(*rel)[static_cast<size_t>(i)];
    col.category = pc.category;
    col.source = pc.column;
  }

  // Children and partitions inherit their parents' protection by column
  // name; views and materialized views take it from the columns they read.
  // Repeat until nothing changes: partitions of partitions, views on views.
  for (bool changed = true; changed;) {
    changed = false;
    for (const auto& rel : cat.relations) {
      auto mark = [&](int i, const RelationProtection::Column& from) {
        auto& cols = slot(rel);
        auto& c = cols[static_cast<size_t>(i)];
        if (from.category && !c.category) {
          c.category = from.category;
          c.source = from.source;
          changed = true;
        }
        if (from.derived && !c.derived && !c.category) {
          c.derived = true;
          c.derived_from = from.derived_from;
          changed = true;
        }
      };
      for (uint32_t parent_oid : rel.parents) {
        auto it = found.find(parent_oid);
        const CatalogRelation* parent = cat.find(parent_oid);
        if (it == found.end() || parent == nullptr) continue;
        const auto parent_cols = it->second;  // copy: slot() may rehash `found`
        for (size_t j = 0; j < parent_cols.size() && j < parent->columns.size(); ++j) {
          if (!parent_cols[j].category && !parent_cols[j].derived) continue;
          int i = index_of(rel, parent->columns[j].name);
          if (i >= 0) mark(i, parent_cols[j]);
        }
      }
      if (rel.kind != 'v' && rel.kind != 'm') continue;
      // Which protected columns does this view read, and which view
      // columns can be matched to them by name?
      bool reads_unmatched = false;
      std::vector<std::pair<QualifiedColumn, std::string>> read_protected;
      std::vector<std::pair<int, RelationProtection::Column>> matched;
      for (auto [base_oid, attnum] : rel.reads) {
        auto it = found.find(base_oid);
        const CatalogRelation* base = cat.find(base_oid);
        if (it == found.end() || base == nullptr) continue;
        const auto base_cols = it->second;
        for (size_t j = 0; j < base_cols.size() && j < base->columns.size(); ++j) {
          if (!base_cols[j].category && !base_cols[j].derived) continue;
          if (attnum != 0 && base->columns[j].attnum != attnum) continue;
          if (base_cols[j].category) {
            read_protected.emplace_back(base_cols[j].source, *base_cols[j].category);
          } else {
            read_protected.insert(read_protected.end(), base_cols[j].derived_from.begin(),
                                  base_cols[j].derived_from.end());
          }
          int i = index_of(rel, base->columns[j].name);
          if (i >= 0 && attnum != 0) {
            matched.emplace_back(i, base_cols[j]);
          } else {
            reads_unmatched = true;  // a whole-row read, or a renamed/computed use
          }
        }
      }
      for (const auto& [i, col] : matched) mark(i, col);
      if (reads_unmatched) {
        // Some view column is computed from protected data and we cannot
        // tell which: every column not known to be a plain copy of an
        // unprotected column it reads is treated as derived.
        std::unordered_set<std::string> plain_unprotected;
        for (auto [base_oid, attnum] : rel.reads) {
          const CatalogRelation* base = cat.find(base_oid);
          if (base == nullptr || attnum == 0) continue;
          auto it = found.find(base_oid);
          for (size_t j = 0; j < base->columns.size(); ++j) {
            if (base->columns[j].attnum != attnum) continue;
            bool prot = it != found.end() && j < it->second.size() &&
                        (it->second[j].category || it->second[j].derived);
            if (!prot) plain_unprotected.insert(base->columns[j].name);
          }
        }
        RelationProtection::Column derived;
        derived.derived = true;
        derived.derived_from = read_protected;
        for (size_t i = 0; i < rel.columns.size(); ++i) {
          if (plain_unprotected.count(rel.columns[i].name) != 0) continue;
          mark(static_cast<int>(i), derived);
        }
      }
    }
  }

  for (auto& [oid, cols] : found) {
    const CatalogRelation* rel = cat.find(oid);
    if (rel == nullptr) continue;
    bool any = std::any_of(cols.begin(), cols.end(), [](const auto& c) { return c.category || c.derived; });
    if (!any) continue;
    RelationProtection rp;
    rp.relation = rel;
    rp.columns = cols;
    p->by_oid_[oid] = p->relations_.size();
    p->by_name_.emplace(rel->name, p->relations_.size());
    p->relations_.push_back(std::move(rp));
  }

  // The pre-check's vocabulary.
  auto add_name = [&](const std::string& name) {
    if (std::any_of(name.begin(), name.end(),
                    [](char c) { return (static_cast<unsigned char>(c) & 0x80) != 0; }))
      p->non_ascii_names_ = true;
    std::string l = lower_ascii(name);
    if (plain_word(l)) {
      p->sensitive_words_.insert(l);
    } else {
      p->sensitive_substrings_.push_back(l);
    }
  };
  for (const auto& rp : p->relations_) add_name(rp.relation->name);
  for (const auto& f : cat.user_function_names) add_name(f);
  for (const auto& t : cat.user_cast_target_types) add_name(t);
  for (const auto& o : cat.user_operator_names) p->sensitive_substrings_.push_back(o);
  for (const auto& rp : p->relations_) {
    for (const auto& c : rp.relation->columns) {
      if (std::any_of(c.name.begin(), c.name.end(),
                      [](char ch) { return (static_cast<unsigned char>(ch) & 0x80) != 0; }))
        p->non_ascii_names_ = true;
    }
  }
  for (auto k : sensitive_keywords) p->sensitive_words_.insert(std::string(k));
  for (auto k : sensitive_settings) p->sensitive_words_.insert(std::string(k));
  return p;
}

const RelationProtection* Protection::find(uint32_t oid) const {
  auto it = by_oid_.find(oid);
  return it == by_oid_.end() ? nullptr : &relations_[it->second];
}

std::vector<const RelationProtection*> Protection::by_name(std::string_view name) const {
  std::vector<const RelationProtection*> out;
  auto [b, e] = by_name_.equal_range(std::string(name));
  for (auto it = b; it != e; ++it) out.push_back(&relations_[it->second]);
  return out;
}

bool Protection::may_be_sensitive(std::string_view sql) const {
  std::string word;
  const size_t n = sql.size();
  for (size_t i = 0; i < n;) {
    const auto c = static_cast<unsigned char>(sql[i]);
    if (!word_byte(c)) {
      // U&"..." and U&'...' spell names with escapes the word scan cannot see.
      if (c == '&' && i > 0 && (sql[i - 1] == 'u' || sql[i - 1] == 'U')) return true;
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && word_byte(static_cast<unsigned char>(sql[j]))) ++j;
    if (j - i > max_identifier) return true;  // PostgreSQL would truncate it: let the parser decide
    word.assign(sql.substr(i, j - i));
    for (char& ch : word) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (sensitive_words_.count(word) != 0) return true;
    for (auto prefix : sensitive_setting_prefixes) {
      if (std::string_view(word).substr(0, prefix.size()) == prefix) return true;
    }
    if (find_denied_function(word) != nullptr || find_denied_relation(word) != nullptr) return true;
    i = j;
  }
  if (!sensitive_substrings_.empty()) {
    std::string lowered = lower_ascii(sql);
    for (const auto& s : sensitive_substrings_) {
      if (lowered.find(s) != std::string::npos) return true;
    }
  }
  return false;
}

}  // namespace pgcloak::rules
