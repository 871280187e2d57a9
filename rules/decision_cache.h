// Analysis results by statement text, so a masked session's repeated
// statements (prepared on every connection, ORM queries, reports) pay for
// libpg_query once. Texts that differ only in literal values share one
// entry through their literal skeleton (literal_skeleton.h) when the
// decision allows it (analyze_statement_template): simple-protocol point
// reads with a new id every time are then a scan and a copy, not a parse. Keyed by the SessionPolicy's
// identity as well, since the same text can be decided differently per policy; a policy replaced by a catalog
// refresh gets a new identity, so stale decisions are never reused. Bounded in bytes, least recently used out
// first. Not thread-safe: each relay loop has its own.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "rules/rewriter.h"

namespace pgcloak::rules {

class DecisionCache {
 public:
  explicit DecisionCache(size_t max_bytes) : max_bytes_(max_bytes) {}

  // analyze_statement() through the cache. Statements the cheap pre-check
  // passes are not cached: deciding them costs less than a lookup.
  std::shared_ptr<const StatementDecision> decide(std::string_view sql, const SessionPolicy& policy,
                                                  AnalysisMode mode = AnalysisMode::normal);

  size_t bytes() const { return bytes_; }
  size_t entries() const { return map_.size(); }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }

 private:
  struct Entry {
    std::string key;
    std::shared_ptr<const StatementDecision> decision;
    size_t bytes;
    // Skeleton entries: the decision's SQL with NUL bytes for literals
    // (decision->sql and output_sql are then empty).
    std::string sql_template;
    std::string output_template;
  };
  void evict();
  void insert(std::string key, std::shared_ptr<const StatementDecision> decision, std::string sql_template,
              std::string output_template);

  size_t max_bytes_;
  size_t bytes_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
  std::list<Entry> lru_;  // front = most recent
  std::unordered_map<std::string_view, std::list<Entry>::iterator> map_;
};

}  // namespace pgcloak::rules
