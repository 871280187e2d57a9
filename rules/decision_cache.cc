#include "rules/decision_cache.h"

#include "rules/literal_skeleton.h"

namespace pgcloak::rules {

namespace {
// Entries larger than this are decided but not kept: one huge statement
// must not push out everything else.
constexpr size_t max_entry_fraction = 8;
constexpr size_t entry_overhead = 128;

// A template (analyze_statement_template) with this text's literals in
// place of its NUL bytes.
std::string instantiate(const std::string& tmpl, std::string_view sql,
                        const std::vector<std::pair<size_t, size_t>>& literals) {
  std::string out;
  if (tmpl.empty()) return out;
  out.reserve(tmpl.size() + sql.size());
  size_t li = 0;
  size_t at = 0;
  for (size_t nul = tmpl.find('\0'); nul != std::string::npos; nul = tmpl.find('\0', at)) {
    out.append(tmpl, at, nul - at);
    const auto [start, len] = literals[li++];  // same skeleton: as many literals as NULs
    out.append(sql.substr(start, len));
    at = nul + 1;
  }
  out.append(tmpl, at, std::string::npos);
  return out;
}

std::shared_ptr<const StatementDecision> with_sql(const StatementDecision& shape, const std::string& sql_t,
                                                  const std::string& output_t, std::string_view sql,
                                                  const std::vector<std::pair<size_t, size_t>>& literals) {
  auto d = std::make_shared<StatementDecision>(shape);
  d->sql = instantiate(sql_t, sql, literals);
  d->output_sql = instantiate(output_t, sql, literals);
  return d;
}

}  // namespace

std::shared_ptr<const StatementDecision> DecisionCache::decide(std::string_view sql,
                                                               const SessionPolicy& policy,
                                                               AnalysisMode mode) {
  if (!policy.masks_anything() ||
      (mode == AnalysisMode::normal && !policy.protection().may_be_sensitive(sql))) {
    static const auto pass = std::make_shared<const StatementDecision>();
    return pass;
  }
  std::string prefix = std::to_string(policy.id());
  prefix += mode == AnalysisMode::strict ? 's' : 'n';
  auto skeleton = literal_skeleton(sql);
  std::string skeleton_key;
  if (skeleton) {
    skeleton_key = prefix;
    skeleton_key += '\x02';  // cannot start a text: keys of skeletons and of texts never collide
    skeleton_key += skeleton->text;
    if (auto it = map_.find(skeleton_key); it != map_.end()) {
      ++hits_;
      lru_.splice(lru_.begin(), lru_, it->second);
      const Entry& e = *it->second;
      if (e.decision->action != StatementDecision::Action::rewrite) return e.decision;
      return with_sql(*e.decision, e.sql_template, e.output_template, sql, skeleton->literals);
    }
  }
  std::string text_key = std::move(prefix);
  text_key += sql;
  if (auto it = map_.find(text_key); it != map_.end()) {
    ++hits_;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->decision;
  }
  ++misses_;
  if (skeleton) {
    auto t = analyze_statement_template(sql, policy, mode, skeleton->literals);
    auto decision = std::make_shared<const StatementDecision>(std::move(t.decision));
    if (t.shareable) {
      // One entry for every text of this skeleton: the decision without
      // its SQL, and the SQL as templates.
      auto shape = std::make_shared<StatementDecision>(*decision);
      shape->sql.clear();
      shape->output_sql.clear();
      insert(std::move(skeleton_key), std::move(shape), std::move(t.sql_template),
             std::move(t.output_template));
      return decision;
    }
    insert(std::move(text_key), decision, {}, {});
    return decision;
  }
  auto decision = std::make_shared<const StatementDecision>(analyze_statement(sql, policy, mode));
  insert(std::move(text_key), decision, {}, {});
  return decision;
}

void DecisionCache::insert(std::string key, std::shared_ptr<const StatementDecision> decision,
                           std::string sql_template, std::string output_template) {
  const size_t bytes = key.size() + decision->sql.size() + decision->output_sql.size() +
                       decision->output_columns.size() * 8 + sql_template.size() + output_template.size() +
                       entry_overhead;
  if (bytes > max_bytes_ / max_entry_fraction) return;
  lru_.push_front(
      {std::move(key), std::move(decision), bytes, std::move(sql_template), std::move(output_template)});
  map_.emplace(lru_.front().key, lru_.begin());
  bytes_ += bytes;
  evict();
}

void DecisionCache::evict() {
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    Entry& last = lru_.back();
    bytes_ -= last.bytes;
    map_.erase(last.key);
    lru_.pop_back();
  }
}

}  // namespace pgcloak::rules
