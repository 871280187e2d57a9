#include "proxy/relay_loop.h"

#include <openssl/err.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>

#include "protocol/backend.h"
#include "protocol/frame_scanner.h"
#include "protocol/message_type.h"
#include "proxy/log.h"

namespace pgcloak::proxy {

namespace {

namespace fe = protocol::fe;
namespace be = protocol::be;
using protocol::Buffer;
using protocol::Bytes;
using protocol::printable_type;
using Clock = std::chrono::steady_clock;

// One receive: large enough that a bulk result moves in few system calls.
constexpr size_t rx_size = size_t{64} * 1024;
// A side is not read while this much is still owed to the other side, so a
// slow reader stops the fast writer: per session at most about
// 2 x (out_cap + rx_size) bytes are buffered.
constexpr size_t out_cap = size_t{64} * 1024;
// Reads per connection per loop pass before others get a turn.
constexpr int pass_budget = 16;
// How long a closing connection may take to flush what it owes the client.
constexpr auto close_linger = std::chrono::seconds(5);
constexpr auto tick_interval = std::chrono::milliseconds(500);

constexpr auto make_type_table(std::initializer_list<uint8_t> types) {
  std::array<bool, 256> t{};
  for (uint8_t c : types) t[c] = true;
  return t;
}

// Message types a client may send once authenticated (protocol docs,
// "Message Formats"). Anything else is refused: pgcloak never forwards a
// message it cannot classify.
constexpr auto frontend_types = make_type_table(
    {fe::bind, fe::close, fe::copy_data, fe::copy_done, fe::copy_fail, fe::describe, fe::execute, fe::flush,
     fe::function_call, fe::parse, fe::query, fe::sync, fe::terminate});
constexpr auto backend_types = make_type_table({be::authentication,
                                                be::backend_key_data,
                                                be::bind_complete,
                                                be::close_complete,
                                                be::command_complete,
                                                be::copy_data,
                                                be::copy_done,
                                                be::copy_in_response,
                                                be::copy_out_response,
                                                be::copy_both_response,
                                                be::data_row,
                                                be::empty_query_response,
                                                be::error_response,
                                                be::function_call_response,
                                                be::negotiate_protocol_version,
                                                be::no_data,
                                                be::notice_response,
                                                be::notification_response,
                                                be::parameter_description,
                                                be::parameter_status,
                                                be::parse_complete,
                                                be::portal_suspended,
                                                be::ready_for_query,
                                                be::row_description});

constexpr uint8_t terminate_message[] = {'X', 0, 0, 0, 4};

enum class Io { ok, would_block, eof, error };

}  // namespace

// One relayed session: the client side, the PostgreSQL side, what each is
// owed, and the protocol state the proxy must track between them.
class RelayConnection {
 public:
  RelayConnection(RelayLoop& loop, RelayStart start);
  ~RelayConnection();
  RelayConnection(const RelayConnection&) = delete;
  RelayConnection& operator=(const RelayConnection&) = delete;

  bool open();  // registers with epoll and forwards what start-up left over
  void on_event(bool upstream_side, uint32_t events);
  // Returns true when it stopped on its budget with work left.
  bool pump();
  void drain();
  void terminate_with(const Error& reason);
  void tick(Clock::time_point now);
  void close_now();
  bool closed() const { return closed_; }

  // The epoll cookie of each side: the connection plus which side.
  struct Tag {
    RelayConnection* conn;
    bool upstream;
  };

 private:
  struct Side {
    int fd = -1;
    SslPtr ssl;
    bool readable = true;  // not known to be drained (edge-triggered)
    bool writable = true;  // not known to be full
    bool read_wants_write = false;
    bool write_wants_read = false;
    bool epollout = false;  // EPOLLOUT currently requested
    bool dead = false;      // read EOF or an error; nothing more is read or written
    Buffer out;             // owed to this side
    size_t out_begin = 0;
    Tag tag{};
    size_t pending() const { return out.size() - out_begin; }
    void append(Bytes b) {
      if (out_begin > 0 && out_begin == out.size()) {
        out.clear();
        out_begin = 0;
      }
      out.insert(out.end(), b.begin(), b.end());
    }
  };

  Io read(Side& s, uint8_t* buf, size_t cap, size_t& n, int& err);
  Io flush(Side& s, int& err);
  void update_interest(Side& s);
  bool from_client(Bytes chunk);
  bool from_server(Bytes chunk);
  void client_gone();
  void upstream_gone(bool error, int err);
  void begin_closing();
  bool idle() const {
    return server_at_ready_ && pending_ready_ == 0 && client_scanner_.at_boundary() &&
           upstream_.pending() == 0;
  }
  void queue_error(const Error& e) {
    Buffer b;
    protocol::ErrorResponse::from_error(e).encode(b);
    client_.append(b);
  }

  RelayLoop& loop_;
  uint64_t id_;
  Side client_;
  Side upstream_;
  Buffer from_client_start_;
  std::chrono::milliseconds client_idle_;
  std::function<void()> on_closed_;
  protocol::FrameScanner client_scanner_;
  protocol::FrameScanner server_scanner_;

  // One ReadyForQuery answers each Query, Sync and FunctionCall; counting
  // them tells whether PostgreSQL still owes the client a response.
  uint64_t pending_ready_ = 0;
  bool server_at_ready_ = true;
  uint8_t transaction_status_ = 'I';
  uint8_t last_server_type_ = 0;
  bool terminate_sent_ = false;  // Terminate forwarded or sent to PostgreSQL
  bool draining_ = false;
  bool closing_ = false;  // nothing more is read; flush what the client is owed, then close
  bool closed_ = false;
  Clock::time_point last_activity_ = Clock::now();
  Clock::time_point closing_since_{};
};

RelayConnection::RelayConnection(RelayLoop& loop, RelayStart start)
    : loop_(loop),
      id_(start.session_id),
      from_client_start_(std::move(start.from_client)),
      client_idle_(start.client_idle),
      on_closed_(std::move(start.on_closed)),
      client_scanner_(start.max_message_size),
      server_scanner_(start.max_message_size),
      draining_(start.draining) {
  client_.fd = start.client.fd;
  client_.ssl = std::move(start.client.ssl);
  client_.tag = {this, false};
  upstream_.fd = start.upstream.fd;
  upstream_.ssl = std::move(start.upstream.ssl);
  upstream_.tag = {this, true};
  client_.out = std::move(start.to_client);
}

RelayConnection::~RelayConnection() {
  close_now();
}

bool RelayConnection::open() {
  for (Side* s : {&client_, &upstream_}) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = &s->tag;
    if (s->fd < 0 || epoll_ctl(loop_.epoll_fd_, EPOLL_CTL_ADD, s->fd, &ev) != 0) {
      log::error(std::string("relay: cannot watch a session socket: ") + std::strerror(errno), id_);
      close_now();
      return false;
    }
  }
  if (!from_client_start_.empty()) {
    Buffer carried = std::move(from_client_start_);
    if (!from_client(carried)) return true;
  }
  if (draining_) drain();
  return true;
}

// --- I/O --------------------------------------------------------------------

Io RelayConnection::read(Side& s, uint8_t* buf, size_t cap, size_t& n, int& err) {
  n = 0;
  if (s.ssl) {
    ERR_clear_error();
    errno = 0;
    const int r = SSL_read(s.ssl.get(), buf, static_cast<int>(std::min<size_t>(cap, INT_MAX)));
    if (r > 0) {
      n = static_cast<size_t>(r);
      return Io::ok;
    }
    switch (SSL_get_error(s.ssl.get(), r)) {
      case SSL_ERROR_WANT_READ: s.readable = false; return Io::would_block;
      case SSL_ERROR_WANT_WRITE:
        s.read_wants_write = true;
        s.readable = false;
        return Io::would_block;
      case SSL_ERROR_ZERO_RETURN: return Io::eof;
      default:
        err = errno != 0 ? errno : EPROTO;
        ERR_clear_error();
        return Io::error;
    }
  }
  for (;;) {
    const ssize_t r = ::recv(s.fd, buf, cap, 0);
    if (r > 0) {
      n = static_cast<size_t>(r);
      // A stream socket returns less than asked only when its receive queue
      // is empty; the next edge says when more arrives.
      if (n < cap) s.readable = false;
      return Io::ok;
    }
    if (r == 0) return Io::eof;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      s.readable = false;
      return Io::would_block;
    }
    err = errno;
    return Io::error;
  }
}

Io RelayConnection::flush(Side& s, int& err) {
  while (s.pending() > 0) {
    const uint8_t* p = s.out.data() + s.out_begin;
    size_t n = 0;
    if (s.ssl) {
      ERR_clear_error();
      errno = 0;
      // The length never shrinks between retries (out only grows at the
      // end), as OpenSSL requires after WANT_WRITE.
      const int r = SSL_write(s.ssl.get(), p, static_cast<int>(std::min<size_t>(s.pending(), 1 << 20)));
      if (r <= 0) {
        switch (SSL_get_error(s.ssl.get(), r)) {
          case SSL_ERROR_WANT_WRITE: s.writable = false; return Io::would_block;
          case SSL_ERROR_WANT_READ:
            s.write_wants_read = true;
            s.writable = false;
            return Io::would_block;
          default:
            err = errno != 0 ? errno : EPROTO;
            ERR_clear_error();
            return Io::error;
        }
      }
      n = static_cast<size_t>(r);
    } else {
      const ssize_t r = ::send(s.fd, p, s.pending(), MSG_NOSIGNAL);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          s.writable = false;
          return Io::would_block;
        }
        err = errno;
        return Io::error;
      }
      n = static_cast<size_t>(r);
    }
    s.out_begin += n;
  }
  s.out.clear();
  s.out_begin = 0;
  return Io::ok;
}

void RelayConnection::update_interest(Side& s) {
  if (s.fd < 0) return;
  const bool want = (s.pending() > 0 && !s.writable) || s.read_wants_write;
  if (want == s.epollout) return;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (want ? EPOLLOUT : 0U);
  ev.data.ptr = &s.tag;
  // Re-arming also reports readiness that is already there, so no edge is lost.
  if (epoll_ctl(loop_.epoll_fd_, EPOLL_CTL_MOD, s.fd, &ev) == 0) s.epollout = want;
}

void RelayConnection::on_event(bool upstream_side, uint32_t events) {
  Side& s = upstream_side ? upstream_ : client_;
  if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0U) {
    s.readable = true;
    if (s.write_wants_read) {
      s.write_wants_read = false;
      s.writable = true;
    }
  }
  if ((events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0U) {
    s.writable = true;
    if (s.read_wants_write) {
      s.read_wants_write = false;
      s.readable = true;
    }
  }
}

// --- the pump ---------------------------------------------------------------

bool RelayConnection::pump() {
  uint8_t* rx = loop_.rx_.data();
  int budget = pass_budget;
  bool progress = true;
  while (progress && !closed_) {
    progress = false;
    int err = 0;
    // Client to PostgreSQL.
    if (!closing_ && !client_.dead && client_.readable && upstream_.pending() < out_cap) {
      size_t n = 0;
      switch (read(client_, rx, rx_size, n, err)) {
        case Io::ok:
          last_activity_ = Clock::now();
          progress = true;
          if (!from_client(Bytes(rx, n))) break;
          break;
        case Io::would_block: break;
        case Io::eof: client_gone(); break;
        case Io::error:
          log::debug(std::string("client connection error: ") + std::strerror(err), id_);
          client_gone();
          break;
      }
      if (closed_) return false;
    }
    if (upstream_.pending() > 0 && upstream_.writable && !upstream_.dead) {
      const size_t before = upstream_.pending();
      if (flush(upstream_, err) == Io::error) {
        upstream_gone(true, err);
        if (closed_) return false;
      }
      if (upstream_.pending() != before) progress = true;
    }
    // PostgreSQL to client.
    if (!closing_ && !upstream_.dead && upstream_.readable && client_.pending() < out_cap) {
      size_t n = 0;
      switch (read(upstream_, rx, rx_size, n, err)) {
        case Io::ok:
          last_activity_ = Clock::now();
          progress = true;
          from_server(Bytes(rx, n));
          break;
        case Io::would_block: break;
        case Io::eof: upstream_gone(false, 0); break;
        case Io::error: upstream_gone(true, err); break;
      }
      if (closed_) return false;
    }
    if (client_.pending() > 0 && client_.writable && !client_.dead) {
      const size_t before = client_.pending();
      if (flush(client_, err) == Io::error) {
        log::debug(std::string("client connection error: ") + std::strerror(err), id_);
        client_gone();
        return false;
      }
      if (client_.pending() != before) progress = true;
    }
    if (closing_) {
      // Once the client has what it is owed (and PostgreSQL its Terminate),
      // end the session.
      const bool upstream_done = upstream_.dead || upstream_.pending() == 0;
      if (client_.pending() == 0 && upstream_done) {
        close_now();
        return false;
      }
    }
    if (progress && --budget == 0) {
      update_interest(client_);
      update_interest(upstream_);
      return true;
    }
  }
  if (!closed_) {
    update_interest(client_);
    update_interest(upstream_);
  }
  return false;
}

bool RelayConnection::from_client(Bytes chunk) {
  bool violated = false;
  bool saw_terminate = false;
  Error violation;
  auto st = client_scanner_.scan(
      chunk, [](uint8_t, uint32_t) { return false; },
      [&](uint8_t type, uint32_t, const Bytes*) {
        if (violated) return;
        if (!frontend_types[type]) {
          violated = true;
          violation = Error::protocol("invalid frontend message type " + printable_type(type));
          return;
        }
        if (type == fe::query || type == fe::sync || type == fe::function_call) {
          ++pending_ready_;
          server_at_ready_ = false;
        } else if (type == fe::terminate) {
          saw_terminate = true;
        }
      });
  if (!st && !violated) {
    violated = true;
    violation = st.error();
  }
  if (violated) {
    // Fail closed: a malformed stream is not forwarded, not even in part.
    log::warn("closing session: " + violation.message, id_);
    queue_error(violation);
    begin_closing();
    return false;
  }
  upstream_.append(chunk);
  if (saw_terminate) {
    terminate_sent_ = true;
    begin_closing();
    return false;
  }
  return true;
}

bool RelayConnection::from_server(Bytes chunk) {
  bool violated = false;
  bool ended_ready = false;
  Error violation;
  auto st = server_scanner_.scan(
      chunk, [](uint8_t type, uint32_t) { return type == be::ready_for_query; },
      [&](uint8_t type, uint32_t, const Bytes* body) {
        if (violated) return;
        if (!backend_types[type]) {
          violated = true;
          violation = Error::protocol("invalid message type " + printable_type(type) + " from PostgreSQL");
          return;
        }
        ended_ready = false;
        last_server_type_ = type;
        if (type == be::ready_for_query) {
          if (body == nullptr || body->size() != 1) {
            violated = true;
            violation = Error::protocol("malformed ReadyForQuery from PostgreSQL");
            return;
          }
          transaction_status_ = (*body)[0];
          if (pending_ready_ > 0) --pending_ready_;
          ended_ready = true;
        }
      });
  if (!st && !violated) {
    violated = true;
    violation = st.error();
  }
  if (violated) {
    log::warn("closing session: " + violation.message, id_);
    queue_error(violation);
    begin_closing();
    return false;
  }
  client_.append(chunk);
  server_at_ready_ = ended_ready && server_scanner_.at_boundary();
  if (draining_ && idle() && transaction_status_ == 'I') {
    terminate_with(Error::make(sqlstate::admin_shutdown,
                               "terminating connection because pgcloak is shutting down", Severity::fatal,
                               "Reconnect in a moment."));
  }
  return true;
}

// --- endings ----------------------------------------------------------------

void RelayConnection::begin_closing() {
  if (closing_) return;
  closing_ = true;
  closing_since_ = Clock::now();
}

void RelayConnection::client_gone() {
  client_.dead = true;
  client_.out.clear();
  client_.out_begin = 0;
  // The client vanished without Terminate; end the backend cleanly rather
  // than leave PostgreSQL to notice a reset.
  if (!terminate_sent_ && !upstream_.dead && client_scanner_.at_boundary()) {
    terminate_sent_ = true;
    upstream_.append(Bytes(terminate_message));
    int err = 0;
    flush(upstream_, err);  // best effort: the session is over either way
  }
  close_now();
}

void RelayConnection::upstream_gone(bool error, int err) {
  upstream_.dead = true;
  upstream_.out.clear();
  upstream_.out_begin = 0;
  if (!terminate_sent_ && !closing_) {
    log::info(std::string("PostgreSQL closed the connection") +
                  (error ? ": " + std::string(std::strerror(err)) : ""),
              id_);
    // Whatever PostgreSQL said before closing (e.g. FATAL 57P01) is already
    // queued; if it closed mid-message or mid-statement the client still
    // needs a proper error.
    if (!server_scanner_.at_boundary()) {
      queue_error(Error::make(sqlstate::connection_failure,
                              "the connection to PostgreSQL was lost in the middle of a message",
                              Severity::fatal));
    } else if ((!server_at_ready_ || pending_ready_ > 0) && last_server_type_ != be::error_response) {
      queue_error(Error::make(
          sqlstate::connection_failure, "the connection to PostgreSQL was lost while a statement was running",
          Severity::fatal, "Retry the statement; if it keeps failing, check the PostgreSQL server log."));
    }
  }
  begin_closing();
}

void RelayConnection::terminate_with(const Error& reason) {
  if (closing_ || closed_) return;
  log::info("terminating session: " + reason.message, id_);
  queue_error(reason);
  if (!terminate_sent_ && !upstream_.dead && client_scanner_.at_boundary()) {
    terminate_sent_ = true;
    upstream_.append(Bytes(terminate_message));
  }
  terminate_sent_ = true;
  begin_closing();
}

void RelayConnection::drain() {
  draining_ = true;
  if (idle() && transaction_status_ == 'I') {
    terminate_with(Error::make(sqlstate::admin_shutdown,
                               "terminating connection because pgcloak is shutting down", Severity::fatal,
                               "Reconnect in a moment."));
  }
}

void RelayConnection::tick(Clock::time_point now) {
  if (closed_) return;
  if (closing_) {
    if (now - closing_since_ >= close_linger) close_now();
    return;
  }
  if (client_idle_.count() > 0 && now - last_activity_ >= client_idle_ && idle()) {
    terminate_with(Error::make(sqlstate::idle_session_timeout,
                               "terminating connection due to client idle timeout", Severity::fatal,
                               "pgcloak closes sessions idle for longer than timeouts.client_idle (" +
                                   std::to_string(client_idle_.count()) + " ms)."));
  }
}

void RelayConnection::close_now() {
  if (closed_) return;
  closed_ = true;
  if (client_.ssl && !client_.dead) {
    // PostgreSQL ends TLS with close_notify, so clients tell a deliberate
    // close from a truncated stream; one non-blocking attempt.
    ERR_clear_error();
    SSL_shutdown(client_.ssl.get());
    ERR_clear_error();
  }
  for (Side* s : {&client_, &upstream_}) {
    if (s->fd >= 0) {
      epoll_ctl(loop_.epoll_fd_, EPOLL_CTL_DEL, s->fd, nullptr);
      s->ssl.reset();
      ::close(s->fd);
      s->fd = -1;
    }
  }
  loop_.retire(this);
  if (on_closed_) {
    auto cb = std::move(on_closed_);
    on_closed_ = nullptr;
    cb();
  }
}

// --- handle -------------------------------------------------------------------

void RelayHandle::drain() {
  loop_.post([c = conn_] {
    if (auto conn = c.lock()) {
      conn->drain();
      conn->pump();
    }
  });
}

void RelayHandle::terminate(Error reason) {
  loop_.post([c = conn_, reason = std::move(reason)] {
    if (auto conn = c.lock()) {
      conn->terminate_with(reason);
      conn->pump();
    }
  });
}

// --- loop -----------------------------------------------------------------------

RelayLoop::RelayLoop() : rx_(rx_size) {}

RelayLoop::~RelayLoop() {
  stop();
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

Status RelayLoop::start() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || event_fd_ < 0) {
    return Error::make(sqlstate::internal_error,
                       std::string("cannot create the relay loop: ") + std::strerror(errno));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;  // the wake-up descriptor
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev) != 0) {
    return Error::make(sqlstate::internal_error,
                       std::string("cannot create the relay loop: ") + std::strerror(errno));
  }
  thread_ = std::thread([this] { run(); });
  return ok_status();
}

void RelayLoop::stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] auto r = ::write(event_fd_, &one, sizeof one);
  thread_.join();
}

void RelayLoop::post(std::function<void()> task) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    wake = posted_.empty();
    posted_.push_back(std::move(task));
  }
  if (wake) {
    const uint64_t one = 1;
    [[maybe_unused]] auto r = ::write(event_fd_, &one, sizeof one);
  }
}

std::shared_ptr<RelayHandle> RelayLoop::adopt(RelayStart start) {
  auto conn = std::make_shared<RelayConnection>(*this, std::move(start));
  auto handle = std::make_shared<RelayHandle>(*this, conn);
  count_.fetch_add(1, std::memory_order_relaxed);
  post([this, conn] {
    conns_.push_back(conn);
    if (conn->open() && conn->pump()) again_.push_back(conn.get());
  });
  return handle;
}

void RelayLoop::retire(RelayConnection* conn) {
  // Called from inside the connection: keep it alive until the pass ends.
  auto it = std::find_if(conns_.begin(), conns_.end(), [&](const auto& c) { return c.get() == conn; });
  if (it != conns_.end()) {
    retired_.push_back(std::move(*it));
    *it = std::move(conns_.back());
    conns_.pop_back();
    count_.fetch_sub(1, std::memory_order_relaxed);
  }
  std::erase(again_, conn);
}

void RelayLoop::run_posted() {
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard lock(mu_);
    tasks.swap(posted_);
  }
  for (auto& t : tasks) t();
}

void RelayLoop::tick(Clock::time_point now) {
  // Copy: ticking may retire connections.
  std::vector<std::shared_ptr<RelayConnection>> all = conns_;
  for (auto& c : all) {
    c->tick(now);
    if (!c->closed() && c->pump()) again_.push_back(c.get());
  }
}

void RelayLoop::run() {
  std::array<epoll_event, 256> events{};
  for (;;) {
    int timeout = again_.empty() ? static_cast<int>(tick_interval.count()) : 0;
    const int n = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), timeout);
    if (n < 0 && errno != EINTR) {
      log::error(std::string("relay loop: epoll_wait failed: ") + std::strerror(errno));
      break;
    }
    // Connections that used up their budget last pass go first, once.
    std::vector<RelayConnection*> again;
    again.swap(again_);
    for (RelayConnection* c : again) {
      if (!c->closed() && c->pump()) again_.push_back(c);
    }
    for (int i = 0; i < n; ++i) {
      auto* tag = static_cast<RelayConnection::Tag*>(events[i].data.ptr);
      if (tag == nullptr) {
        uint64_t v = 0;
        [[maybe_unused]] auto r = ::read(event_fd_, &v, sizeof v);
        continue;
      }
      RelayConnection* c = tag->conn;
      if (c->closed()) continue;
      c->on_event(tag->upstream, events[i].events);
      if (std::find(again_.begin(), again_.end(), c) != again_.end()) continue;
      if (c->pump()) again_.push_back(c);
    }
    run_posted();
    const auto now = Clock::now();
    if (now >= next_tick_) {
      next_tick_ = now + tick_interval;
      tick(now);
    }
    retired_.clear();
    bool stop = false;
    {
      std::lock_guard lock(mu_);
      stop = stopping_;
    }
    if (stop) break;
  }
  run_posted();
  std::vector<std::shared_ptr<RelayConnection>> all = conns_;
  for (auto& c : all) c->close_now();
  retired_.clear();
}

// --- pool -----------------------------------------------------------------------

Status RelayPool::start(unsigned loops) {
  for (unsigned i = 0; i < std::max(1U, loops); ++i) {
    loops_.push_back(std::make_unique<RelayLoop>());
    if (auto st = loops_.back()->start(); !st) return st;
  }
  return ok_status();
}

void RelayPool::stop() {
  for (auto& l : loops_) l->stop();
}

RelayLoop& RelayPool::pick() {
  RelayLoop* best = loops_.front().get();
  for (auto& l : loops_) {
    if (l->size() < best->size()) best = l.get();
  }
  return *best;
}

}  // namespace pgcloak::proxy
