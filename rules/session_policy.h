// The masking policy as one session user sees it: which MaskPolicy applies
// (resolved through role membership, nested groups included), and for every
// protected relation the column list of the masking subquery that replaces
// it in that user's statements. Immutable; shared by the sessions of one user
// until the protection (config or catalog) changes.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/error.h"
#include "rules/protection.h"

namespace pgcloak::rules {

struct RelationMasks {
  const RelationProtection* protection = nullptr;
  std::vector<MaskSpec> specs;  // parallel to the relation's columns (allow for unprotected ones)
  // Columns a statement may not read at all: deny in the policy, a view
  // column derived from protected data, or a mask that does not fit the
  // column's type (failing closed instead of returning raw data).
  std::vector<bool> refused;
  std::vector<std::string> refused_why;
  // "id", CAST(...) AS "email", ... : the select list of the masking subquery.
  std::string select_list;
  bool masks_anything = false;
  // Output masking (StatementDecision::output_sql): columns whose mask
  // pgcloak can apply to result rows itself, value for value what the SQL
  // expression gives (string columns; masks with a C++ twin in
  // mask_value.h that costs PostgreSQL real work per row: hash, pseudonym,
  // partial, email, last4, redact_patterns). output_select_list is
  // select_list with those columns read raw; empty when there are none.
  std::vector<bool> output_masked;
  std::string output_select_list;
};

class SessionPolicy {
 public:
  SessionPolicy(std::shared_ptr<const Protection> protection, std::string user);

  const std::string& user() const { return user_; }
  // Unique per SessionPolicy object for the life of the process (cache keys).
  uint64_t id() const { return id_; }
  const MaskPolicy& policy() const { return *policy_; }
  const Protection& protection() const { return *protection_; }
  // False = this user sees every protected column unmasked: statements pass
  // through untouched, byte for byte.
  bool masks_anything() const { return masks_anything_; }
  const RelationMasks* masks_for(uint32_t relation_oid) const;
  // Functions outside pg_catalog this user may call (masking.function_allowlist).
  bool function_allowed(std::string_view schema, std::string_view name) const;
  bool unqualified_function_allowed(std::string_view name) const;

 private:
  std::shared_ptr<const Protection> protection_;
  std::string user_;
  uint64_t id_ = 0;
  const MaskPolicy* policy_ = nullptr;
  bool masks_anything_ = false;
  std::unordered_map<uint32_t, RelationMasks> masks_;
};

}  // namespace pgcloak::rules
