#include "rules/session_policy.h"

#include <algorithm>
#include <atomic>

#include "rules/mask_sql.h"

namespace pgcloak::rules {

namespace {

// Whether pgcloak may apply `spec` to text-format values of a column of
// `type` in result rows instead of PostgreSQL: mask_text_value() gives the
// SQL expression's output for it (tests/integration/test_mask_expressions.py
// checks that value for value in a real PostgreSQL), and computing it in
// SQL costs more than a constant. char/varchar/text only: their text output
// is the value itself.
bool output_maskable(const MaskSpec& spec, const ColumnType& type, const MaskKeys& keys) {
  if (type.oid != type_oid::text && type.oid != type_oid::varchar && type.oid != type_oid::bpchar)
    return false;
  // Result rows keep a NULL as NULL (relay_loop.cc forwards length -1 as it
  // came), which is what the SQL masks do too, unless the rule masks NULLs.
  if (spec.mask_nulls) return false;
  switch (spec.kind) {
    case MaskKind::hash:
    case MaskKind::pseudonym: return keys.present;
    case MaskKind::partial:
    case MaskKind::email:
    case MaskKind::last4:
    case MaskKind::redact_patterns: return true;
    default: return false;
  }
}

}  // namespace

SessionPolicy::SessionPolicy(std::shared_ptr<const Protection> protection, std::string user)
    : protection_(std::move(protection)), user_(std::move(user)) {
  static std::atomic<uint64_t> next_id{0};
  id_ = next_id.fetch_add(1) + 1;
  const Catalog& cat = protection_->catalog();
  policy_ =
      &protection_->config().policy_for([&](std::string_view role) { return cat.is_member(user_, role); });

  for (const auto& rp : protection_->relations()) {
    RelationMasks m;
    m.protection = &rp;
    const auto& cols = rp.relation->columns;
    m.specs.resize(cols.size(), MaskSpec::of(MaskKind::allow));
    m.refused.resize(cols.size(), false);
    m.refused_why.resize(cols.size());
    m.output_masked.resize(cols.size(), false);
    std::string output_list;
    bool any_output = false;
    for (size_t i = 0; i < cols.size(); ++i) {
      const auto& pc = rp.columns[i];
      std::string expr;
      const std::string name = quote_ident(cols[i].name);
      if (pc.derived) {
        const bool all_allowed =
            std::all_of(pc.derived_from.begin(), pc.derived_from.end(), [&](const auto& src) {
              return policy_->spec_for(src.first, src.second).kind == MaskKind::allow;
            });
        if (!all_allowed || pc.derived_from.empty()) {
          m.refused[i] = true;
          m.refused_why[i] = "the view computes it from protected data in a way pgcloak cannot mask";
        }
      } else if (pc.category) {
        m.specs[i] = policy_->spec_for(pc.source, *pc.category);
        if (m.specs[i].kind == MaskKind::deny) {
          m.refused[i] = true;
          m.refused_why[i] = "policy \"" + policy_->name + "\" denies category " + *pc.category;
        } else if (m.specs[i].kind != MaskKind::allow) {
          auto e = mask_sql_expression(m.specs[i], cols[i].type, name, protection_->config().keys);
          if (e) {
            expr = std::move(e).value();
            m.masks_anything = true;
          } else {
            // Fail closed: a mask that cannot apply to this column's type
            // refuses reads of the column instead of showing raw data.
            m.refused[i] = true;
            m.refused_why[i] = e.error().message;
          }
        }
      }
      if (m.refused[i]) {
        expr = "CAST(NULL AS " + cast_type_name(cols[i].type) + ")";
        m.masks_anything = true;
      }
      if (!m.refused[i] && !expr.empty() &&
          output_maskable(m.specs[i], cols[i].type, protection_->config().keys)) {
        m.output_masked[i] = true;
        any_output = true;
      }
      if (!m.select_list.empty()) m.select_list += ", ";
      m.select_list += expr.empty() ? name : expr + " AS " + name;
      if (!output_list.empty()) output_list += ", ";
      output_list += expr.empty() || m.output_masked[i] ? name : expr + " AS " + name;
    }
    if (any_output) m.output_select_list = std::move(output_list);
    masks_anything_ = masks_anything_ || m.masks_anything;
    masks_.emplace(rp.relation->oid, std::move(m));
  }
}

const RelationMasks* SessionPolicy::masks_for(uint32_t relation_oid) const {
  auto it = masks_.find(relation_oid);
  return it == masks_.end() ? nullptr : &it->second;
}

bool SessionPolicy::function_allowed(std::string_view schema, std::string_view name) const {
  const std::string full = std::string(schema) + "." + std::string(name);
  const auto& list = protection_->config().function_allowlist;
  return std::find(list.begin(), list.end(), full) != list.end();
}

bool SessionPolicy::unqualified_function_allowed(std::string_view name) const {
  // Unqualified, the name resolves through search_path, which the session
  // controls: allowed only if no user function by that name exists, or the
  // allowlist names it (an allowlisted name is trusted in any schema).
  if (!protection_->catalog().is_user_function(name)) return true;
  const auto& list = protection_->config().function_allowlist;
  return std::any_of(list.begin(), list.end(), [&](const std::string& f) {
    auto dot = f.rfind('.');
    return dot != std::string::npos && std::string_view(f).substr(dot + 1) == name;
  });
}

}  // namespace pgcloak::rules
