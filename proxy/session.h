// One client connection, from the first byte to close. Phases are explicit
// (conventions, point 7): startup (SSLRequest/GSSENCRequest/CancelRequest/
// StartupMessage), tls, auth (relayed to PostgreSQL), ready (relaying), and
// closing. During relaying there is one reader per direction and one writer
// that owns the client-bound queue (conventions, point 8); the queue holds at
// most a few chunks, so a client that reads slowly stops the server reader.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "protocol/frame_scanner.h"
#include "protocol/startup.h"
#include "protocol/wire.h"
#include "proxy/asio.h"
#include "proxy/cancel_registry.h"
#include "proxy/deadline.h"
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

// Leaves new elements uninitialised on resize: relay chunks are resized to
// their full capacity before every read, and zeroing 64 KiB per read showed
// up as the largest user-space cost in profiles.
template <class T>
struct DefaultInitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {  // NOLINT(readability-identifier-naming): allocator requirement
    using other = DefaultInitAllocator<U>;
  };
  using std::allocator<T>::allocator;
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// A block of relayed bytes on its way to the client. Empty = end of stream.
using Chunk = std::vector<uint8_t, DefaultInitAllocator<uint8_t>>;

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
  awaitable<void> handle_cancel(const protocol::CancelRequest& request);
  awaitable<void> relay();
  awaitable<void> pump_client_to_server();
  awaitable<void> pump_server_to_client();
  awaitable<void> client_writer();
  awaitable<void> idle_watchdog();
  awaitable<void> terminate_with(Error reason);
  awaitable<void> close_client_gracefully();

  // Reads until `in` holds one whole frame (startup-style when `startup`).
  awaitable<protocol::FrameResult> read_frame(Stream& stream, Inbound& in, bool startup, uint32_t max_length);
  // The one way an error reaches the client: queued behind relayed output
  // while relaying, written directly before that.
  awaitable<void> send_error(const Error& error);
  awaitable<bool> flush_client();
  awaitable<bool> write_upstream(protocol::Bytes bytes);
  void queue_to_client(protocol::Bytes bytes) {
    client_out_.insert(client_out_.end(), bytes.begin(), bytes.end());
  }

  bool idle() const;
  void close_all();
  Chunk take_chunk();
  void recycle(Chunk&& c);

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

  // Relay state. All of it is touched only on this session's executor.
  using ChunkChannel = asio::experimental::channel<void(error_code, Chunk)>;
  std::unique_ptr<ChunkChannel> to_client_;
  std::vector<Chunk> spare_chunks_;
  protocol::FrameScanner client_scanner_;
  protocol::FrameScanner server_scanner_;
  // One ReadyForQuery answers each Query, Sync and FunctionCall; counting
  // them tells whether PostgreSQL still owes the client a response.
  uint64_t pending_ready_ = 0;
  bool server_at_ready_ = false;
  uint8_t transaction_status_ = 'I';
  uint8_t last_server_type_ = 0;
  bool upstream_writing_ = false;
  bool terminate_sent_ = false;
  bool closing_ = false;
  bool draining_ = false;
  bool terminating_ = false;
  std::chrono::steady_clock::time_point last_activity_;
  asio::steady_timer idle_timer_;
  bool reader_done_ = false;  // the client-to-server pump has returned
  bool writer_busy_ = false;  // the writer holds a chunk it has not finished writing
  asio::steady_timer reader_done_event_;
};

}  // namespace pgcloak::proxy
