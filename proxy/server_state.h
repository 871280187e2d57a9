// State shared by every session and the server: the loaded config, TLS
// contexts, the cancel-key registry and the set of live sessions. Sessions
// run on different io threads, so what is mutable here is synchronised.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "proxy/asio.h"
#include "proxy/audit_log.h"
#include "proxy/auth_lookup.h"
#include "proxy/cancel_registry.h"
#include "proxy/console_state.h"
#include "proxy/metrics.h"
#include "proxy/pg_side_connection.h"
#include "proxy/policy_store.h"
#include "proxy/relay_loop.h"
#include "proxy/server_pool.h"
#include "rules/config.h"
#include "rules/detection.h"

namespace pgcloak::proxy {

class Session;

class SessionRegistry {
 public:
  uint64_t next_id() { return next_id_.fetch_add(1) + 1; }
  void add(uint64_t id, const std::shared_ptr<Session>& s);
  void remove(uint64_t id);
  size_t size() const;
  std::vector<std::shared_ptr<Session>> snapshot() const;

 private:
  std::atomic<uint64_t> next_id_{0};
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions_;
};

// Whether PostgreSQL answers, for /readyz: the latest of the sessions'
// connects and the endpoint's own probe wins.
class UpstreamHealth {
 public:
  void note_ok();
  void note_failure(std::string why);
  // Empty = reachable (or not tried yet); otherwise why it is not.
  std::string problem() const;

 private:
  mutable std::mutex mu_;
  std::string problem_;
};

struct ServerState {
  std::shared_ptr<const rules::Config> config;
  std::shared_ptr<ssl::context> client_tls;    // null when TLS towards clients is off
  std::shared_ptr<ssl::context> upstream_tls;  // null when upstream.sslmode is disable
  CancelRegistry cancels;
  SessionRegistry sessions;
  RelayPool relays;  // relaying sessions, one epoll loop per thread
  std::atomic<bool> draining{false};
  // pgcloak's own connections to PostgreSQL and the auth.mode scram lookup;
  // null when auth.mode is passthrough.
  std::unique_ptr<PgSidePool> catalog;
  std::unique_ptr<AuthLookup> auth_lookup;
  // Session pooling of PostgreSQL connections (upstream.pool; only with
  // auth.mode scram); null when off.
  std::unique_ptr<ServerPool> upstream_pool;
  // The masking policy per login, from the masking config and the catalog
  // (kept fresh by catalog_refresher when masking is enabled).
  std::unique_ptr<PolicyStore> policies;
  // The audit trail (null when audit is off). After relays and policies:
  // its writer calls the analyzer (policies) and posts to relay loops, so
  // it is closed and destroyed before them.
  std::unique_ptr<AuditLog> audit;
  // Metrics and the console (null when metrics.enabled is false).
  std::unique_ptr<Metrics> metrics;
  std::unique_ptr<ConsoleState> console;
  UpstreamHealth upstream_health;
  // Exfiltration detection (null when detection is off) and where its
  // alerts go.
  std::unique_ptr<rules::Detector> detector;
  std::unique_ptr<class AlertWebhook> webhook;
  std::unique_ptr<class AlertSyslog> alert_syslog;
  std::unique_ptr<class AlertHub> alerts;
  // Blocking calls (libpq) run here, off the io threads (run_blocking.h).
  // Declared last so it is joined before what its calls use goes away.
  std::unique_ptr<asio::thread_pool> blocking;
};

}  // namespace pgcloak::proxy
