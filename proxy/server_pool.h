// Session pooling of PostgreSQL connections (README, "upstream.pool").
//
// Starting a PostgreSQL backend costs a fork, authentication and, for the
// first few thousand statements, page faults on shared buffers and cold
// catalog caches; measured on the benchmark machine a fresh backend spends
// 1.5-2x the CPU of a warm one per pgbench transaction. PgBouncer keeps its
// server connections between clients for that reason. pgcloak does the same
// in session mode, and only with auth.mode scram: then pgcloak itself has
// authenticated the client against the role's verifier, so handing it a
// backend that PostgreSQL authenticated for the same role earlier skips
// nothing. In passthrough mode every client must face PostgreSQL's own
// authentication and there is no pool.
//
// A connection comes back only when its client left cleanly: idle, outside
// a transaction, nothing owed in either direction (relay_loop.cc decides).
// It is then reset with DISCARD ALL (protocol docs, "DISCARD": closes
// cursors, drops temporary tables and prepared statements, resets every
// setting to its session default, unlistens, releases advisory locks) before
// anyone else can have it, and parked under the exact key of its start-up:
// role, database and every startup parameter. A connection that fails the
// reset, sends anything while parked, outlives max_lifetime or idles past
// idle_timeout is closed with Terminate.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/asio.h"
#include "proxy/cancel_registry.h"
#include "proxy/stream.h"
#include "rules/config.h"

namespace pgcloak::proxy {

// One PostgreSQL connection between two clients.
struct PooledServer {
  DetachedStream stream;
  BackendKey key;  // PostgreSQL's BackendKeyData for this backend
  // The ParameterStatus values a client of this backend is told at start-up
  // (current as of the reset).
  std::vector<std::pair<std::string, std::string>> parameters;
  std::chrono::steady_clock::time_point born{};
  std::chrono::steady_clock::time_point idle_since{};
};

// Why a connection left the pool (or never entered it); a bounded label set
// for pgcloak_upstream_pool_closed_total.
enum class PoolClose : uint8_t { reset_failed, broken, expired, full, shutdown, count_ };
std::string_view pool_close_name(PoolClose why);

struct PoolStats {
  size_t idle = 0;
  uint64_t reused = 0;  // checkouts that found a connection
  uint64_t parked = 0;  // connections reset and parked
  std::array<uint64_t, static_cast<size_t>(PoolClose::count_)> closed{};
};

class ServerPool {
 public:
  // Resets run as coroutines on `executor`.
  ServerPool(rules::UpstreamPoolConfig config, asio::any_io_executor executor);
  ~ServerPool();
  ServerPool(const ServerPool&) = delete;
  ServerPool& operator=(const ServerPool&) = delete;

  // The key of a session: role, database and all startup parameters.
  static std::string key_for(const std::vector<std::pair<std::string, std::string>>& startup_parameters);

  // Thread-safe. The most recently parked live connection for `key`, or
  // nothing. Connections found dead or expired on the way are closed.
  std::optional<PooledServer> checkout(const std::string& key);

  // Thread-safe. Takes a connection whose client left cleanly, resets it and
  // parks it (or closes it when the reset fails or the pool is full).
  void give_back(std::string key, PooledServer server);

  // Closes connections idle longer than idle_timeout or older than
  // max_lifetime; run() calls it every second.
  void sweep(std::chrono::steady_clock::time_point now);
  // Periodic sweeps until close_all().
  awaitable<void> run();
  // Closes everything parked and refuses what comes back later (shutdown).
  void close_all();

  PoolStats stats() const;
  const rules::UpstreamPoolConfig& config() const { return config_; }

 private:
  awaitable<void> reset_and_park(std::string key, PooledServer server);
  void park(std::string key, PooledServer server);
  // Under mu_: counts and closes.
  void discard_locked(PooledServer& server, PoolClose why);
  // Under mu_: closes everything parked and refuses what comes back later.
  void close_parked_locked();

  rules::UpstreamPoolConfig config_;
  asio::any_io_executor executor_;
  mutable std::mutex mu_;
  bool closed_ = false;
  size_t idle_ = 0;
  std::map<std::string, std::deque<PooledServer>> idle_by_key_;  // back = most recent
  PoolStats stats_;
  std::shared_ptr<asio::steady_timer> sweep_timer_;
};

// Sends Terminate (best effort, non-blocking), ends TLS and closes.
void close_pooled(DetachedStream& stream);

}  // namespace pgcloak::proxy
