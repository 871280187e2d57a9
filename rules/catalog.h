// What pgcloak knows about the database: relations and their columns,
// inheritance and partitioning, which views read which columns, role
// membership, and which functions, operators and casts are not PostgreSQL's
// own. proxy/catalog_loader.cc fills it from pg_catalog over a side
// connection; everything here is plain data, so rules/ is testable without a
// database.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "rules/mask.h"

namespace pgcloak::rules {

struct CatalogColumn {
  std::string name;
  int16_t attnum = 0;
  ColumnType type;
};

struct CatalogRelation {
  uint32_t oid = 0;
  std::string schema;
  std::string name;
  char kind = 'r';                     // pg_class.relkind: r p v m f
  std::vector<CatalogColumn> columns;  // attnum order, dropped columns left out
  std::vector<uint32_t> parents;       // pg_inherits: inheritance parents and partition parents
  // Views and materialized views: the columns of other relations their
  // definition reads (pg_depend through pg_rewrite); attnum 0 = whole row.
  std::vector<std::pair<uint32_t, int16_t>> reads;
  const CatalogColumn* column(std::string_view column_name) const;
};

struct CatalogRole {
  uint32_t oid = 0;
  std::string name;
  std::vector<uint32_t> member_of;  // pg_auth_members.roleid for member = oid
};

class Catalog {
 public:
  std::vector<CatalogRelation> relations;
  std::vector<CatalogRole> roles;
  // Names (lowercase as stored) of functions, operators and cast target
  // types that are not built in: anything outside pg_catalog and
  // information_schema. A masked session may not call them (unless
  // allowlisted) because they can read tables with their owner's rights.
  std::vector<std::string> user_function_names;
  std::vector<std::string> user_operator_names;
  std::vector<std::string> user_cast_target_types;
  uint64_t generation = 0;  // bumped by the loader on every refresh

  // Builds the lookup indexes; call once after filling the vectors.
  void finalize();

  const CatalogRelation* find(uint32_t oid) const;
  const CatalogRelation* find(std::string_view schema, std::string_view name) const;
  // Every relation with that name, whatever its schema.
  std::vector<const CatalogRelation*> find_by_name(std::string_view name) const;
  // Transitive membership (pg_has_role(role, group, 'MEMBER')); a role is a
  // member of itself.
  bool is_member(std::string_view role, std::string_view group) const;
  bool is_user_function(std::string_view name) const { return user_functions_.count(std::string(name)) != 0; }
  bool is_user_operator(std::string_view name) const { return user_operators_.count(std::string(name)) != 0; }
  bool is_user_cast_target(std::string_view name) const { return user_casts_.count(std::string(name)) != 0; }

 private:
  std::unordered_map<uint32_t, size_t> by_oid_;
  std::unordered_multimap<std::string, size_t> by_name_;
  std::unordered_map<std::string, size_t> roles_by_name_;
  std::unordered_map<uint32_t, size_t> roles_by_oid_;
  std::unordered_set<std::string> user_functions_;
  std::unordered_set<std::string> user_operators_;
  std::unordered_set<std::string> user_casts_;
};

}  // namespace pgcloak::rules
