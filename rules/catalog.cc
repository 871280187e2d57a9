#include "rules/catalog.h"

namespace pgcloak::rules {

const CatalogColumn* CatalogRelation::column(std::string_view column_name) const {
  for (const auto& c : columns) {
    if (c.name == column_name) return &c;
  }
  return nullptr;
}

void Catalog::finalize() {
  by_oid_.clear();
  by_name_.clear();
  roles_by_name_.clear();
  roles_by_oid_.clear();
  for (size_t i = 0; i < relations.size(); ++i) {
    by_oid_[relations[i].oid] = i;
    by_name_.emplace(relations[i].name, i);
  }
  for (size_t i = 0; i < roles.size(); ++i) {
    roles_by_name_[roles[i].name] = i;
    roles_by_oid_[roles[i].oid] = i;
  }
  user_functions_ = {user_function_names.begin(), user_function_names.end()};
  user_operators_ = {user_operator_names.begin(), user_operator_names.end()};
  user_casts_ = {user_cast_target_types.begin(), user_cast_target_types.end()};
}

const CatalogRelation* Catalog::find(uint32_t oid) const {
  auto it = by_oid_.find(oid);
  return it == by_oid_.end() ? nullptr : &relations[it->second];
}

const CatalogRelation* Catalog::find(std::string_view schema, std::string_view name) const {
  auto [b, e] = by_name_.equal_range(std::string(name));
  for (auto it = b; it != e; ++it) {
    if (relations[it->second].schema == schema) return &relations[it->second];
  }
  return nullptr;
}

std::vector<const CatalogRelation*> Catalog::find_by_name(std::string_view name) const {
  std::vector<const CatalogRelation*> out;
  auto [b, e] = by_name_.equal_range(std::string(name));
  for (auto it = b; it != e; ++it) out.push_back(&relations[it->second]);
  return out;
}

bool Catalog::is_member(std::string_view role, std::string_view group) const {
  if (role == group) return true;
  auto r = roles_by_name_.find(std::string(role));
  auto g = roles_by_name_.find(std::string(group));
  if (r == roles_by_name_.end() || g == roles_by_name_.end()) return false;
  const uint32_t target = roles[g->second].oid;
  // Breadth-first over pg_auth_members; cycles are impossible in PostgreSQL
  // but the visited set keeps a corrupt catalog from looping.
  std::vector<uint32_t> queue{roles[r->second].oid};
  std::unordered_set<uint32_t> seen{queue.front()};
  for (size_t i = 0; i < queue.size(); ++i) {
    auto it = roles_by_oid_.find(queue[i]);
    if (it == roles_by_oid_.end()) continue;
    for (uint32_t parent : roles[it->second].member_of) {
      if (parent == target) return true;
      if (seen.insert(parent).second) queue.push_back(parent);
    }
  }
  return false;
}

}  // namespace pgcloak::rules
