#include "rules/decision_cache.h"

namespace pgcloak::rules {

namespace {
// Entries larger than this are decided but not kept: one huge statement
// must not push out everything else.
constexpr size_t max_entry_fraction = 8;
constexpr size_t entry_overhead = 128;
}  // namespace

std::shared_ptr<const StatementDecision> DecisionCache::decide(std::string_view sql,
                                                               const SessionPolicy& policy,
                                                               AnalysisMode mode) {
  if (!policy.masks_anything() ||
      (mode == AnalysisMode::normal && !policy.protection().may_be_sensitive(sql))) {
    static const auto pass = std::make_shared<const StatementDecision>();
    return pass;
  }
  std::string key = std::to_string(policy.id());
  key += mode == AnalysisMode::strict ? 's' : 'n';
  key += sql;
  if (auto it = map_.find(key); it != map_.end()) {
    ++hits_;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->decision;
  }
  ++misses_;
  auto decision = std::make_shared<const StatementDecision>(analyze_statement(sql, policy, mode));
  const size_t bytes = key.size() + decision->sql.size() + entry_overhead;
  if (bytes > max_bytes_ / max_entry_fraction) return decision;
  lru_.push_front({std::move(key), decision, bytes});
  map_.emplace(lru_.front().key, lru_.begin());
  bytes_ += bytes;
  evict();
  return decision;
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
