// One client connection, from the first byte to close. Phases are explicit
// (conventions, point 7): startup (SSLRequest/GSSENCRequest/CancelRequest/
// StartupMessage), tls, auth (relayed to PostgreSQL, or with auth.mode scram
// run by pgcloak itself, see auth_scram.cc), ready (relaying), and closing.
// Relaying itself runs in a relay loop (relay_loop.h), which keeps one
// bounded output buffer per direction (conventions, point 8): a client that
// reads slowly stops the reads from the server.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "protocol/frame_scanner.h"
#include "protocol/startup.h"
#include "protocol/wire.h"
#include "proxy/asio.h"
#include "proxy/cancel_registry.h"
#include "proxy/deadline.h"
#include "proxy/relay_loop.h"
#include "proxy/scram.h"
#include "proxy/server_state.h"
#include "proxy/stream.h"

namespace pgcloak::proxy {

// Who is on the other end, known once AuthenticationOk arrives; kept for the
// policy and audit work that builds on the session.
struct SessionIdentity {
  std::string user;
  std::string database;
  std::string application_name;
  std::string client_address;  // ip:port or "unix"
  bool tls = false;
  TlsInfo tls_info;
  bool upstream_tls = false;
  std::vector<std::pair<std::string, std::string>> startup_parameters;
  std::map<std::string, std::string> server_parameters;  // latest ParameterStatus values
  bool authenticated = false;
};

enum class Phase { startup, tls, auth, ready, closing };

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(ServerState& server, std::unique_ptr<Stream> client, uint64_t id);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Root coroutine: exceptions stop here and are logged (conventions, point 6).
  static awaitable<void> run(std::shared_ptr<Session> self);

  // Both must be called on the session's executor (post to executor()).
  // drain: end the session as soon as it is idle. terminate: end it now.
  void drain();
  void terminate(Error reason);

  uint64_t id() const { return id_; }
  asio::any_io_executor executor() { return executor_; }
  const SessionIdentity& identity() const { return identity_; }

 private:
  // Input buffered from a stream during startup and auth. Relaying reads
  // straight into chunk buffers instead.
  struct Inbound {
    protocol::Buffer data;
    size_t begin = 0;
    protocol::Bytes view() const { return protocol::Bytes(data).subspan(begin); }
    void consume(size_t n);
  };

  awaitable<void> main();
  awaitable<bool> negotiate_startup();
  awaitable<bool> connect_and_authenticate();
  // Connects to PostgreSQL and sends the client's StartupMessage.
  awaitable<bool> open_upstream();
  // One whole message from PostgreSQL, or nothing after the client has been
  // told why.
  awaitable<std::optional<protocol::Frame>> next_upstream_frame();
  awaitable<bool> lost_upstream();
  // After AuthenticationOk: ParameterStatus, BackendKeyData, ReadyForQuery.
  awaitable<bool> relay_session_setup();
  // The end of session setup, before the client hears `ready_for_query`
  // (detection may still refuse the login).
  awaitable<bool> finish_session_setup(protocol::Buffer ready_for_query);
  // auth.mode scram with upstream.pool: a parked PostgreSQL connection of
  // this role (server_pool.h) instead of a new one; the client is told
  // AuthenticationOk and the parameters PostgreSQL reported for it.
  awaitable<bool> resume_pooled_session(BackendKey key,
                                        std::vector<std::pair<std::string, std::string>> parameters);
  // After authentication (docs/detection.md): a blocked user is refused,
  // and the login is checked against service-account rules. False = the
  // client has been told why and the session ends.
  awaitable<bool> detection_admits();
  // The cancel action: a CancelRequest for this session's backend, then done().
  awaitable<void> cancel_upstream_for_detection(std::function<void()> done);

  // auth.mode scram (auth_scram.cc): pgcloak runs SCRAM with the client
  // against the verifier from auth_query, then with PostgreSQL from the
  // ClientKey the client proved.
  awaitable<bool> authenticate_scram();
  awaitable<bool> authenticate_upstream_scram(const ScramKey& client_key, const ScramVerifier& verifier,
                                              const std::string& lookup_db);
  // The body of the client's next 'p' message (or nothing after the client
  // has been told why).
  awaitable<std::optional<protocol::Buffer>> read_client_auth_message();
  awaitable<void> handle_cancel(const protocol::CancelRequest& request);
  // Sends PostgreSQL a CancelRequest for `key` and waits (bounded) until it
  // closes that connection, i.e. has signalled the backend. Failures are
  // logged with `failure` in front.
  awaitable<bool> deliver_cancel(BackendKey key, std::string_view failure);
  awaitable<void> relay();
  awaitable<void> close_client_gracefully();

  // Reads until `in` holds one whole frame (startup-style when `startup`).
  awaitable<protocol::FrameResult> read_frame(Stream& stream, Inbound& in, bool startup, uint32_t max_length);
  // The one way an error reaches the client before relaying; the relay
  // loop has its own (queued behind relayed output).
  awaitable<void> send_error(const Error& error);
  awaitable<bool> flush_client();
  awaitable<bool> write_upstream(protocol::Bytes bytes);
  void queue_to_client(protocol::Bytes bytes) {
    client_out_.insert(client_out_.end(), bytes.begin(), bytes.end());
  }

  void close_all();
  // Session-level audit events (docs/audit.md); no-op when audit is off.
  void audit_event(std::string kind, nlohmann::json detail);
  std::shared_ptr<const AuditSession> audit_session();
  // Remembers the SQLSTATE of an ErrorResponse relayed from PostgreSQL.
  void note_upstream_error(protocol::Bytes body);

  ServerState& server_;
  std::shared_ptr<const rules::Config> config_;  // snapshot for this session's lifetime
  std::unique_ptr<Stream> client_;
  std::unique_ptr<Stream> upstream_;
  asio::any_io_executor executor_;
  uint64_t id_;
  Phase phase_ = Phase::startup;
  SessionIdentity identity_;
  protocol::StartupMessage startup_;

  Inbound client_in_;
  Inbound upstream_in_;
  protocol::Buffer client_out_;  // handshake-phase output, flushed before reads

  Deadline handshake_deadline_;
  bool handshake_timed_out_ = false;
  bool registered_key_ = false;
  BackendKey client_key_;
  BackendKey upstream_key_;
  // Session pooling (upstream.pool): the pool key (empty = no pooling), when
  // the upstream connection was opened, and whether it came from the pool.
  std::string pool_key_;
  std::chrono::steady_clock::time_point upstream_born_{};
  bool upstream_reused_ = false;

  std::string last_error_sqlstate_;       // of the last error sent before relaying
  ConnectionMetrics connection_metrics_;  // connection gauges; empty when metrics are off
  std::chrono::system_clock::time_point connected_at_ = std::chrono::system_clock::now();
  std::shared_ptr<const rules::DetectIdentity> detect_identity_;  // set after auth when detection is on
  std::shared_ptr<const AuditSession> audit_session_;
  bool audit_session_complete_ = false;  // built after authentication: final
  bool closing_ = false;
  bool draining_ = false;
  // Set once relaying has started; the relay loop owns both connections then.
  std::shared_ptr<RelayHandle> relay_;
};

}  // namespace pgcloak::proxy
