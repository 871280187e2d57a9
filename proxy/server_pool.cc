#include "proxy/server_pool.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cerrno>

#include <sys/socket.h>
#include <unistd.h>

#include "protocol/backend.h"
#include "protocol/framing.h"
#include "protocol/frontend.h"
#include "protocol/message_type.h"
#include "protocol/wire.h"
#include "proxy/deadline.h"
#include "proxy/log.h"

namespace pgcloak::proxy {

namespace {

namespace be = protocol::be;
using Clock = std::chrono::steady_clock;

constexpr uint8_t terminate_message[] = {'X', 0, 0, 0, 4};

// Parked connections only ever receive the answers to DISCARD ALL, which are
// small; anything bigger is a broken stream.
constexpr uint32_t reset_max_message = 1U << 20;

// Whether a parked connection is still usable: nothing may have arrived
// since it was parked (PostgreSQL sends an idle session only an error before
// it closes it, e.g. 57P01 on shutdown, or asynchronous messages pgcloak
// would have to relay), and it must not be closed.
bool quiet_and_open(const DetachedStream& s) {
  if (s.ssl && SSL_pending(s.ssl.get()) > 0) return false;
  uint8_t byte = 0;
  for (;;) {
    const ssize_t r = ::recv(s.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
}

void set_parameter(std::vector<std::pair<std::string, std::string>>& params, std::string name,
                   std::string value) {
  for (auto& [n, v] : params) {
    if (n == name) {
      v = std::move(value);
      return;
    }
  }
  params.emplace_back(std::move(name), std::move(value));
}

// Runs DISCARD ALL on `stream` and reads its answer up to ReadyForQuery.
// ParameterStatus messages on the way (settings returning to their session
// defaults) update `server`. Returns why it failed, or "" on success.
awaitable<std::string> discard_all(Stream& stream, PooledServer& server) {
  protocol::Buffer query;
  protocol::Query{"DISCARD ALL"}.encode(query);
  if (auto [ec, n] = co_await stream.write(asio::buffer(query)); ec)
    co_return "write failed: " + ec.message();
  protocol::Buffer in;
  size_t begin = 0;
  bool discarded = false;
  for (;;) {
    auto r = protocol::decode_frame(protocol::Bytes(in).subspan(begin), reset_max_message);
    if (r.status == protocol::FrameStatus::error) co_return r.error.message;
    if (r.status == protocol::FrameStatus::need_more) {
      if (begin > 0) {
        in.erase(in.begin(), in.begin() + static_cast<ptrdiff_t>(begin));
        begin = 0;
      }
      const size_t have = in.size();
      in.resize(have + 4096);
      auto [ec, n] = co_await stream.read_some(asio::buffer(in.data() + have, 4096));
      in.resize(have + n);
      if (ec) co_return "read failed: " + ec.message();
      continue;
    }
    const auto& frame = r.frame;
    begin += frame.size();
    switch (frame.type()) {
      case be::command_complete: {
        auto cc = protocol::CommandComplete::decode(frame.body);
        if (!cc) co_return cc.error().message;
        discarded = cc->tag == "DISCARD ALL";
        break;
      }
      case be::parameter_status: {
        auto ps = protocol::ParameterStatus::decode(frame.body);
        if (!ps) co_return ps.error().message;
        set_parameter(server.parameters, std::move(ps->name), std::move(ps->value));
        break;
      }
      case be::notice_response:
      case be::notification_response:  // LISTENs of the last client, before UNLISTEN *
        break;
      case be::error_response: {
        auto err = protocol::ErrorResponse::decode(frame.body);
        const std::string* message = err ? err->find('M') : nullptr;
        co_return "PostgreSQL refused DISCARD ALL: " + (message ? *message : std::string("(no message)"));
      }
      case be::ready_for_query: {
        auto rfq = protocol::ReadyForQuery::decode(frame.body);
        if (!rfq) co_return rfq.error().message;
        if (!discarded) co_return "no DISCARD ALL command tag before ReadyForQuery";
        if (rfq->status != 'I') co_return "not idle after DISCARD ALL";
        if (begin != in.size()) co_return "unexpected bytes after ReadyForQuery";
        co_return "";
      }
      default:
        co_return "unexpected message type " + protocol::printable_type(frame.type()) +
            " in the answer to DISCARD ALL";
    }
  }
}

}  // namespace

std::string_view pool_close_name(PoolClose why) {
  switch (why) {
    case PoolClose::reset_failed: return "reset_failed";
    case PoolClose::broken: return "broken";
    case PoolClose::expired: return "expired";
    case PoolClose::full: return "full";
    case PoolClose::shutdown: return "shutdown";
    case PoolClose::count_: break;
  }
  return "unknown";
}

void close_pooled(DetachedStream& stream) {
  if (stream.fd < 0) return;
  // Both best effort: a backend that misses Terminate sees EOF and exits
  // just the same.
  if (stream.ssl) {
    ERR_clear_error();
    SSL_write(stream.ssl.get(), terminate_message, sizeof terminate_message);
    SSL_shutdown(stream.ssl.get());
    ERR_clear_error();
    stream.ssl.reset();
  } else {
    [[maybe_unused]] ssize_t n =
        ::send(stream.fd, terminate_message, sizeof terminate_message, MSG_DONTWAIT | MSG_NOSIGNAL);
  }
  ::close(stream.fd);
  stream.fd = -1;
}

ServerPool::ServerPool(rules::UpstreamPoolConfig config, asio::any_io_executor executor)
    : config_(config), executor_(std::move(executor)) {}

ServerPool::~ServerPool() {
  // No posting here: the io threads may be gone. Whatever is parked is
  // closed; the sweeper's timer goes with its io_context.
  std::lock_guard lock(mu_);
  close_parked_locked();
}

std::string ServerPool::key_for(const std::vector<std::pair<std::string, std::string>>& startup_parameters) {
  // Sorted, so that the order a driver sends them in does not matter; NUL
  // cannot occur inside startup strings, so it separates unambiguously.
  auto params = startup_parameters;
  std::sort(params.begin(), params.end());
  std::string key;
  for (const auto& [name, value] : params) {
    key += name;
    key += '\0';
    key += value;
    key += '\0';
  }
  return key;
}

std::optional<PooledServer> ServerPool::checkout(const std::string& key) {
  std::lock_guard lock(mu_);
  if (closed_) return std::nullopt;
  auto it = idle_by_key_.find(key);
  if (it == idle_by_key_.end()) return std::nullopt;
  auto& list = it->second;
  const auto now = Clock::now();
  std::optional<PooledServer> found;
  while (!list.empty() && !found) {
    PooledServer s = std::move(list.back());
    list.pop_back();
    --idle_;
    if (now - s.born >= config_.max_lifetime) {
      discard_locked(s, PoolClose::expired);
    } else if (!quiet_and_open(s.stream)) {
      discard_locked(s, PoolClose::broken);
    } else {
      found = std::move(s);
    }
  }
  if (list.empty()) idle_by_key_.erase(it);
  if (found) ++stats_.reused;
  return found;
}

void ServerPool::give_back(std::string key, PooledServer server) {
  {
    std::lock_guard lock(mu_);
    if (closed_ || Clock::now() - server.born >= config_.max_lifetime) {
      discard_locked(server, closed_ ? PoolClose::shutdown : PoolClose::expired);
      return;
    }
  }
  // The relay loop thread must not wait for PostgreSQL; the reset is a
  // coroutine on an io thread.
  asio::co_spawn(executor_, reset_and_park(std::move(key), std::move(server)), asio::detached);
}

awaitable<void> ServerPool::reset_and_park(std::string key, PooledServer server) {
  const int32_t pid = server.key.process_id;
  auto stream = Stream::adopt(executor_, std::move(server.stream));
  if (!stream) {
    std::lock_guard lock(mu_);
    ++stats_.closed[static_cast<size_t>(PoolClose::reset_failed)];
    co_return;
  }
  std::string failure;
  {
    Deadline deadline(executor_);
    deadline.arm(config_.reset_timeout, [&stream] { stream->close(); });
    failure = co_await discard_all(*stream, server);
    if (deadline.expired()) failure = "no answer to DISCARD ALL within upstream.pool.reset_timeout";
  }
  server.stream = stream->detach();
  if (!failure.empty()) {
    log::warn("upstream pool: closing the connection to backend " + std::to_string(pid) +
              " instead of reusing it: " + failure);
    std::lock_guard lock(mu_);
    discard_locked(server, PoolClose::reset_failed);
    co_return;
  }
  park(std::move(key), std::move(server));
}

void ServerPool::park(std::string key, PooledServer server) {
  std::lock_guard lock(mu_);
  if (closed_) {
    discard_locked(server, PoolClose::shutdown);
    return;
  }
  if (idle_ >= config_.max_idle) {
    // Full: make room by closing the connection idle the longest, which is
    // the least likely to be asked for again.
    auto oldest = idle_by_key_.end();
    for (auto it = idle_by_key_.begin(); it != idle_by_key_.end(); ++it) {
      if (oldest == idle_by_key_.end() || it->second.front().idle_since < oldest->second.front().idle_since)
        oldest = it;
    }
    if (oldest == idle_by_key_.end()) {
      discard_locked(server, PoolClose::full);
      return;
    }
    discard_locked(oldest->second.front(), PoolClose::full);
    oldest->second.pop_front();
    --idle_;
    if (oldest->second.empty()) idle_by_key_.erase(oldest);
  }
  server.idle_since = Clock::now();
  idle_by_key_[std::move(key)].push_back(std::move(server));
  ++idle_;
  ++stats_.parked;
}

void ServerPool::sweep(Clock::time_point now) {
  std::lock_guard lock(mu_);
  for (auto it = idle_by_key_.begin(); it != idle_by_key_.end();) {
    auto& list = it->second;
    for (auto s = list.begin(); s != list.end();) {
      const bool expired =
          now - s->born >= config_.max_lifetime || now - s->idle_since >= config_.idle_timeout;
      const bool broken = !expired && !quiet_and_open(s->stream);
      if (expired || broken) {
        discard_locked(*s, expired ? PoolClose::expired : PoolClose::broken);
        s = list.erase(s);
        --idle_;
      } else {
        ++s;
      }
    }
    it = list.empty() ? idle_by_key_.erase(it) : std::next(it);
  }
}

awaitable<void> ServerPool::run() {
  {
    std::lock_guard lock(mu_);
    if (closed_) co_return;
    sweep_timer_ = std::make_shared<asio::steady_timer>(executor_);
  }
  auto timer = sweep_timer_;
  for (;;) {
    timer->expires_after(std::chrono::seconds(1));
    auto [ec] = co_await timer->async_wait(use_nothrow);
    {
      std::lock_guard lock(mu_);
      if (ec || closed_) co_return;
    }
    sweep(Clock::now());
  }
}

void ServerPool::close_all() {
  std::lock_guard lock(mu_);
  close_parked_locked();
  if (sweep_timer_) asio::post(executor_, [t = std::move(sweep_timer_)] { t->cancel(); });
}

PoolStats ServerPool::stats() const {
  std::lock_guard lock(mu_);
  PoolStats s = stats_;
  s.idle = idle_;
  return s;
}

void ServerPool::close_parked_locked() {
  closed_ = true;
  for (auto& [key, list] : idle_by_key_) {
    for (auto& s : list) discard_locked(s, PoolClose::shutdown);
  }
  idle_by_key_.clear();
  idle_ = 0;
}

void ServerPool::discard_locked(PooledServer& server, PoolClose why) {
  close_pooled(server.stream);
  ++stats_.closed[static_cast<size_t>(why)];
}

}  // namespace pgcloak::proxy
