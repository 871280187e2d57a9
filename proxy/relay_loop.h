// The relay phase of every session, driven by a small edge-triggered epoll
// loop per relay thread instead of by Asio.
//
// Why not Asio here: relaying a pgbench-style transaction is four socket
// operations (client recv, server send, server recv, client send). Asio's
// reactor always retries a recv speculatively after one succeeds, so every
// message costs an extra recv(2) that fails with EAGAIN, and its scheduler
// adds epoll_wait(0) passes between handlers; measured, that was 6.3 system
// calls per transaction against PgBouncer's 4.2, and system calls dominate a
// proxy's cost. Here a short read on a stream socket means the kernel queue
// was empty, so the loop waits for the next edge instead of asking again,
// and EPOLLOUT is only requested while a write is blocked.
//
// Start-up and authentication stay with Asio coroutines (session.cc); once a
// session is authenticated it detaches both descriptors (and TLS state) and
// adopts them here. Each connection is then touched only by its loop's
// thread; other threads reach it through RelayHandle, which posts.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "protocol/error.h"
#include "protocol/result.h"
#include "protocol/wire.h"
#include "proxy/audit_event.h"
#include "proxy/console_state.h"
#include "proxy/io_batch.h"
#include "proxy/metrics.h"
#include "proxy/stream.h"
#include "rules/decision_cache.h"
#include "rules/detection.h"
#include "rules/session_policy.h"

namespace pgcloak::proxy {

class AuditLog;
class RelayLoop;
class RelayConnection;

// The session user's masking policy as of now. policy null and no error =
// nothing is masked for this user; an error = the policy cannot be known
// (no catalog yet), so every statement is refused (fail closed).
struct PolicyLookup {
  std::shared_ptr<const rules::SessionPolicy> policy;
  std::optional<Error> unavailable;
};

// How a relaying session follows policy changes (SIGHUP, catalog refresh):
// generation() is cheap and checked before each client chunk; lookup() runs
// only when it changed.
struct PolicyHooks {
  std::function<uint64_t()> generation;
  std::function<PolicyLookup()> lookup;
  std::function<void()> catalog_changed;  // DDL passed through, or a transaction that ran DDL ended
  std::function<bool()> stale;            // the catalog may miss recent DDL: analyse strictly
  explicit operator bool() const { return generation && lookup; }
};

// How a relaying session writes its audit trail (docs/audit.md). Empty =
// audit is off.
struct AuditHooks {
  AuditLog* log = nullptr;
  std::shared_ptr<const AuditSession> session;
  bool strict = false;      // hold ReadyForQuery until the statement's record is durable
  bool fail_closed = true;  // refuse new statements while the log is not accepting (else hold them)
  bool log_parameters = false;
  explicit operator bool() const { return log != nullptr; }
};

// How a relaying session reports to the metrics and the console
// (docs/metrics.md). Empty = neither is on.
struct ObserveHooks {
  SessionMetrics metrics;             // empty = metrics off
  std::shared_ptr<LiveSession> live;  // null = no console
  ConsoleState* console = nullptr;    // with live
  // The protection in force (null = nothing protected): which relations
  // and columns a statement reads, for rows by protected relation.
  std::function<std::shared_ptr<const rules::Protection>()> protection;
  // Exfiltration detection (docs/detection.md); null = off.
  rules::Detector* detector = nullptr;
  std::shared_ptr<const rules::DetectIdentity> identity;
  // Rebuilds identity (its groups) from the catalog in force; called when
  // the policy generation moves (a catalog refresh, a reload).
  std::function<std::shared_ptr<const rules::DetectIdentity>()> refresh_identity;
  class AlertHub* alerts = nullptr;
  // Sends PostgreSQL a CancelRequest for this session's backend (the cancel
  // action), then calls done on any thread. Set with detector.
  std::function<void(std::function<void()> done)> cancel_upstream;
  explicit operator bool() const {
    return static_cast<bool>(metrics) || live != nullptr || detector != nullptr;
  }
};

// Everything a session hands over when it starts relaying.
struct RelayStart {
  uint64_t session_id = 0;
  DetachedStream client;
  DetachedStream upstream;
  protocol::Buffer from_client;  // client bytes read during start-up but not yet forwarded
  protocol::Buffer to_client;    // bytes owed to the client (the start-up tail)
  uint32_t max_message_size = 0;
  std::chrono::milliseconds client_idle{0};  // 0 = no idle timeout
  bool draining = false;
  // The session's client_encoding and server_encoding (ParameterStatus):
  // output masking needs result rows in UTF-8, as the SQL masks see them.
  std::string client_encoding;
  std::string server_encoding;
  // Masked statements are refused while this is "off": pgcloak parses with
  // standard strings (backslashes are not escapes), as PostgreSQL does by
  // default.
  std::string standard_conforming_strings;
  PolicyHooks policy;    // empty = masking is off
  AuditHooks audit;      // empty = audit is off
  ObserveHooks observe;  // empty = no metrics or console
  // Called on the loop thread once both descriptors are closed.
  std::function<void()> on_closed;
  // Session pooling (upstream.pool, server_pool.h): when set and the client
  // leaves cleanly (Terminate or EOF while idle outside a transaction, with
  // nothing owed either way), the upstream is handed here on the loop thread,
  // out of epoll and with its TLS state, instead of being closed; PostgreSQL
  // never sees the client's Terminate.
  std::function<void(DetachedStream)> recycle_upstream;
};

// Thread-safe way to act on a relaying connection from elsewhere.
class RelayHandle {
 public:
  RelayHandle(RelayLoop& loop, std::weak_ptr<RelayConnection> conn) : loop_(loop), conn_(std::move(conn)) {}
  // End the session as soon as it is idle (no statement or transaction open).
  void drain();
  // End it now, telling the client why.
  void terminate(Error reason);

 private:
  RelayLoop& loop_;
  std::weak_ptr<RelayConnection> conn_;
};

class RelayLoop {
 public:
  RelayLoop();
  ~RelayLoop();
  RelayLoop(const RelayLoop&) = delete;
  RelayLoop& operator=(const RelayLoop&) = delete;

  // batch_io: issue the socket calls of ready sessions together through
  // io_uring (io_batch.h) when the kernel allows it; else one system call
  // per read and write.
  Status start(bool batch_io);
  // Closes whatever is still relaying and joins the thread.
  void stop();

  // Thread-safe.
  std::shared_ptr<RelayHandle> adopt(RelayStart start);
  void post(std::function<void()> task);
  size_t size() const { return count_.load(std::memory_order_relaxed); }
  // Socket calls are batched through io_uring (false: epoll and one system
  // call each). Fixed once started.
  bool batching() const { return batch_ != nullptr; }
  const std::string& batch_error() const { return batch_error_; }

 private:
  friend class RelayConnection;
  void run();
  void run_posted();
  void tick(std::chrono::steady_clock::time_point now);
  void retire(RelayConnection* conn);
  // Strict audit: `conn` holds output until record `seq` is durable. One
  // on_durable registration per loop at a time, whatever the number of
  // waiting sessions (group commit wakes the loop once per fsync).
  void await_durable(AuditLog& log, const std::shared_ptr<RelayConnection>& conn, uint64_t seq);
  void durable_progress(AuditLog& log);
  // Batched I/O: the reads of the sessions an epoll wake-up found ready, in
  // one io_uring call, then each session's pump.
  void pump_ready(std::vector<RelayConnection*>& ready);
  // Batched I/O: the sends the pumps queued, in one io_uring call; the
  // sessions are pumped again with the results. Runs before the loop sleeps.
  void flush_sends();

  int epoll_fd_ = -1;
  int event_fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::function<void()>> posted_;
  bool stopping_ = false;
  std::atomic<size_t> count_{0};

  // Loop-thread state.
  std::vector<std::shared_ptr<RelayConnection>> conns_;
  std::vector<RelayConnection*> again_;  // hit their per-pass budget; continue next pass
  std::vector<std::shared_ptr<RelayConnection>> retired_;
  protocol::Buffer rx_;             // one receive buffer per loop: data is processed before the next read
  std::unique_ptr<IoBatch> batch_;  // null: one system call per read and write
  // Batched reads land here, one slot per side, and are handed to the pumps
  // before the next batch reuses the slots.
  std::unique_ptr<uint8_t[]> slots_;
  std::vector<std::shared_ptr<RelayConnection>> send_queue_;  // sessions with a send queued
  std::vector<RelayConnection*> staged_;                      // sessions with reads in the current batch
  std::vector<RelayConnection*> ready_;                       // sessions an epoll wake-up found ready
  uint64_t epoch_ = 0;       // numbers epoll wake-ups (de-duplicates ready sessions)
  std::string batch_error_;  // why batch_io was asked for but is off
  rules::DecisionCache decisions_;
  // Class and protected relations of observed statements (metrics, console).
  rules::StatementAuditCache profiles_{size_t{4} << 20};
  rules::StatementFactsCache facts_;  // exfiltration detection
  std::vector<std::pair<uint64_t, std::weak_ptr<RelayConnection>>> durable_waiters_;
  uint64_t durable_registered_ = 0;  // seq of the outstanding on_durable registration (0 = none)
  std::chrono::steady_clock::time_point next_tick_{};
};

// N loops, one thread each; sessions go to the loop with the fewest.
class RelayPool {
 public:
  Status start(unsigned loops, bool batch_io);
  void stop();
  RelayLoop& pick();
  bool batching() const { return !loops_.empty() && loops_.front()->batching(); }
  std::string batch_error() const { return loops_.empty() ? std::string() : loops_.front()->batch_error(); }

 private:
  std::vector<std::unique_ptr<RelayLoop>> loops_;
};

}  // namespace pgcloak::proxy
