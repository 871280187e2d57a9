// Which relations and columns hold protected data, whoever is asking:
// the configured protected columns, the same columns in inheritance children
// and partitions (at any depth), and the columns of views and materialized
// views that read protected columns. Built from the masking config and the
// catalog; immutable and shared by every session until the next reload or
// catalog refresh.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "rules/catalog.h"
#include "rules/masking_config.h"

namespace pgcloak::rules {

struct RelationProtection {
  const CatalogRelation* relation = nullptr;
  struct Column {
    std::optional<std::string> category;  // set = protected, masked per policy
    QualifiedColumn source;               // the configured column it comes from
    // A view column computed from protected data in a way pgcloak cannot
    // mask (an expression, or a name that matches no column it reads):
    // reading it is refused for masked sessions.
    bool derived = false;
    // For derived columns: the protected columns (and categories) the
    // view reads; the column is refused unless the policy allows them all.
    std::vector<std::pair<QualifiedColumn, std::string>> derived_from;
  };
  std::vector<Column> columns;  // parallel to relation->columns
  bool is_view() const { return relation->kind == 'v' || relation->kind == 'm'; }
};

class Protection {
 public:
  static std::shared_ptr<const Protection> build(std::shared_ptr<const MaskingConfig> config,
                                                 std::shared_ptr<const Catalog> catalog);

  const RelationProtection* find(uint32_t oid) const;
  // Protected relations with this name in any schema.
  std::vector<const RelationProtection*> by_name(std::string_view name) const;
  const std::vector<RelationProtection>& relations() const { return relations_; }
  const Catalog& catalog() const { return *catalog_; }
  std::shared_ptr<const Catalog> catalog_ptr() const { return catalog_; }
  const MaskingConfig& config() const { return *config_; }

  // The cheap pre-check that keeps ordinary statements off the parser: false
  // means no word in the text can name a protected relation, a dependent
  // view, a non-built-in function, operator or cast, or a statement or
  // built-in a masked session is refused. It over-approximates on purpose:
  // words inside literals and comments count too, and anything odd
  // (Unicode-escaped identifiers, over-long names) counts as sensitive.
  bool may_be_sensitive(std::string_view sql) const;
  // Whether a name the analysis matches (a protected relation or a
  // dependent view, a function, a cast target type, an operator) has a
  // byte above 0x7F. The catalog's names are UTF-8; a statement sent in
  // another client encoding spells such a name with other bytes, which
  // pgcloak would not recognise and PostgreSQL would (after conversion).
  bool has_non_ascii_names() const { return non_ascii_names_; }

  // Configured protected columns that do not exist in the database (typos,
  // dropped tables): logged at load.
  std::vector<std::string> warnings;

 private:
  std::shared_ptr<const MaskingConfig> config_;
  std::shared_ptr<const Catalog> catalog_;
  std::vector<RelationProtection> relations_;
  std::unordered_map<uint32_t, size_t> by_oid_;
  std::unordered_multimap<std::string, size_t> by_name_;
  std::unordered_set<std::string> sensitive_words_;
  std::vector<std::string> sensitive_substrings_;  // names that are not plain words, operators
  bool non_ascii_names_ = false;
};

// Built-in functions and relations a masked session may never use, with the
// reason (MASKING-THREATS.md classes 11, 16, 17, 18, 19).
struct DeniedBuiltin {
  std::string_view name;
  bool prefix;
  std::string_view why;
};
const std::vector<DeniedBuiltin>& denied_builtin_functions();
const std::vector<DeniedBuiltin>& denied_builtin_relations();
const DeniedBuiltin* find_denied_function(std::string_view name);
const DeniedBuiltin* find_denied_relation(std::string_view name);

}  // namespace pgcloak::rules
