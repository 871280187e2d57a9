// The masking policy every session asks for: the current rules::Protection
// (masking config + the catalog read from catalog.dbname) and, per login,
// the rules::SessionPolicy built from it. Shared by all io threads through
// ServerState; catalog_refresher() keeps it fresh.
//
// Fail closed: while masking is configured but no catalog has loaded yet,
// for_user() returns an error instead of a policy, so a session can refuse
// rather than relay unmasked data. Once a catalog has loaded, a failed
// refresh keeps it (a stale catalog still protects every relation it knew).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "protocol/result.h"
#include "proxy/asio.h"
#include "proxy/pg_side_connection.h"
#include "rules/catalog.h"
#include "rules/config.h"
#include "rules/protection.h"
#include "rules/session_policy.h"

namespace pgcloak::proxy {

class PolicyStore {
 public:
  // Reads one catalog; blocking. Errors are logged and keep the old catalog.
  using Loader = std::function<Result<std::shared_ptr<rules::Catalog>>()>;

  // Loads over its own side connection: catalog.user on catalog.dbname,
  // reached like upstream; reopened after any failed load.
  explicit PolicyStore(std::shared_ptr<const rules::Config> config);
  // Any loader (tests).
  PolicyStore(std::shared_ptr<const rules::MaskingConfig> masking, rules::Duration refresh_interval,
              Loader loader, std::string source = "the catalog");

  // Masking has protected columns. When false there is nothing to load and
  // for_user() returns nullptr for everyone.
  bool enabled() const { return enabled_; }
  // SIGHUP: new masking rules (protected columns, policies, keys) on the
  // catalog already loaded. Live sessions pick them up at their next
  // statement (the generation moves). Whether masking is on at all is fixed
  // at start: returns an error when the new config would switch it.
  Status reload_masking(std::shared_ptr<const rules::MaskingConfig> masking);
  // The masking rules in force (the last reload's, else the start's).
  std::shared_ptr<const rules::MaskingConfig> masking() const;
  rules::Duration refresh_interval() const { return refresh_interval_; }

  // The policy of a login: nullptr when masking is disabled; an Error (57P03)
  // while masking is enabled and no catalog has loaded yet. Cached per user
  // until the protection changes. Thread-safe, non-blocking. The error has
  // severity ERROR; a caller refusing a new session makes it FATAL.
  Result<std::shared_ptr<const rules::SessionPolicy>> for_user(const std::string& user);
  // The current protection; nullptr before the first load (or when disabled).
  std::shared_ptr<const rules::Protection> protection() const;
  // Number of the catalog in use: 1 for the first successful load, +1 for
  // each later one; 0 = none loaded yet.
  uint64_t generation() const { return generation_.load(); }

  // Blocking (run it with run_blocking): loads the catalog and installs it.
  // Concurrent callers are serialized, and a caller whose request is covered
  // by a load that started after it asked gets that load's outcome instead
  // of starting another one. On failure the previous catalog stays in use.
  Status refresh();
  // Builds the protection for `catalog` and makes it current (refresh()'s
  // second half; also for tests). Numbers the catalog and logs the summary.
  void install(std::shared_ptr<rules::Catalog> catalog, std::chrono::steady_clock::duration took = {});

  // Any thread: asks catalog_refresher() for a refresh soon (e.g. after a
  // session ran DDL). Requests made before that refresh starts coalesce.
  void request_refresh();
  // Any thread: DDL passed through pgcloak (or a transaction that ran DDL
  // ended), so the catalog in use may miss a new view, function or renamed
  // table. Until a load that started after this call has finished, stale()
  // is true and masked sessions analyse every statement strictly
  // (rules::AnalysisMode::strict). Also requests a refresh.
  void mark_stale();
  bool stale() const { return stale_marks_.load() > fresh_through_.load(); }
  // Ends catalog_refresher() (server shutdown).
  void stop();

 private:
  friend awaitable<void> catalog_refresher(PolicyStore& store, asio::thread_pool& blocking);
  // catalog_refresher()'s wake-up: set while it waits, so request_refresh()
  // and stop() can cut the wait short from any thread.
  struct Waker {
    asio::any_io_executor executor;
    asio::steady_timer* timer = nullptr;
  };
  void attach(Waker waker);
  void detach();
  void wake();
  bool take_request() { return refresh_requested_.exchange(false); }
  bool requested() const { return refresh_requested_.load(); }
  bool stopping() const { return stopping_.load(); }

  std::shared_ptr<const rules::MaskingConfig> masking_;  // guarded by mu_ after start
  bool enabled_ = false;
  rules::Duration refresh_interval_;
  std::atomic<uint64_t> stale_marks_{0};
  std::atomic<uint64_t> fresh_through_{0};
  Loader loader_;
  std::string source_;  // for log lines: where the catalog comes from

  mutable std::mutex mu_;  // guards the members below, up to refresh_mu_
  std::shared_ptr<const rules::Protection> protection_;
  std::unordered_map<std::string, std::shared_ptr<const rules::SessionPolicy>> by_user_;
  std::string last_error_;                    // why the last load failed; empty after a success
  std::vector<std::string> logged_warnings_;  // the protection warnings last logged
  bool failed_before_ = false;

  std::mutex refresh_mu_;                     // one load at a time
  std::atomic<uint64_t> requests_{0};         // refresh() calls so far
  uint64_t covered_ = 0;                      // requests_ seen when the last finished load started
  std::optional<Status> last_outcome_;        // that load's outcome
  std::atomic<uint64_t> next_generation_{0};  // numbers handed out by install()
  std::atomic<uint64_t> generation_{0};       // the number of protection_'s catalog

  std::mutex waker_mu_;
  std::optional<Waker> waker_;
  std::atomic<bool> refresh_requested_{false};
  std::atomic<bool> stopping_{false};
};

// Loads the catalog at once, then every catalog.refresh_interval and
// whenever request_refresh() asks, each load on `blocking` (run_blocking).
// After failures it retries sooner (1s, doubling up to the interval). Spawn
// it on one io thread when masking is enabled; it returns after stop().
awaitable<void> catalog_refresher(PolicyStore& store, asio::thread_pool& blocking);

}  // namespace pgcloak::proxy
