#include "proxy/http_endpoint.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <mutex>
#include <optional>
#include <type_traits>
#include <unordered_map>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "proxy/base64.h"
#include "proxy/log.h"

namespace pgcloak::proxy {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using Digest = std::array<unsigned char, 32>;
using Request = http::request<http::string_body>;

// The token is compared as SHA-256 digests with CRYPTO_memcmp: the time
// taken depends neither on where the first wrong byte is nor on the length
// of the guess.
Digest digest_of(std::string_view s) {
  Digest d{};
  unsigned int len = 0;
  EVP_Digest(s.data(), s.size(), d.data(), &len, EVP_sha256(), nullptr);
  return d;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x >= 'A' && x <= 'Z' ? x - 'A' + 'a' : x) == (y >= 'A' && y <= 'Z' ? y - 'A' + 'a' : y);
         });
}

// "Bearer <token>" (RFC 6750, section 2.1); the scheme is case-insensitive
// (RFC 7235, section 2.1).
std::optional<std::string_view> bearer_token(std::string_view v) {
  constexpr std::string_view scheme = "bearer";
  if (v.size() <= scheme.size() || !iequals(v.substr(0, scheme.size()), scheme) || v[scheme.size()] != ' ') {
    return std::nullopt;
  }
  v.remove_prefix(scheme.size());
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  if (v.empty()) return std::nullopt;
  return v;
}

// "Basic base64(user:password)" (RFC 7617): the password is the token.
std::optional<std::string> basic_password(std::string_view v) {
  constexpr std::string_view scheme = "basic";
  if (v.size() <= scheme.size() || !iequals(v.substr(0, scheme.size()), scheme) || v[scheme.size()] != ' ') {
    return std::nullopt;
  }
  v.remove_prefix(scheme.size());
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  auto raw = base64_decode(v);
  if (!raw) return std::nullopt;
  std::string text(raw->begin(), raw->end());
  const auto colon = text.find(':');
  if (colon == std::string::npos) return std::nullopt;
  return text.substr(colon + 1);
}

// What goes back to the client; close = the connection ends after it.
struct Reply {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::string www_authenticate;
  std::vector<std::pair<std::string, std::string>> headers;
  bool close = false;
};

Reply error_reply(unsigned status, std::string body, bool close) {
  Reply r;
  r.status = status;
  r.body = std::move(body) + "\n";
  r.close = close;
  return r;
}

// The status for a failed read, or 0 when there is no one left to answer
// (the client went away, timed out, or the socket failed).
unsigned status_for_read_error(const error_code& ec) {
  if (ec == http::error::header_limit || ec == http::error::buffer_overflow) return 431;
  if (ec == http::error::body_limit) return 413;
  if (ec == http::error::end_of_stream || ec == http::error::partial_message) return 0;
  if (ec.category() == http::make_error_code(http::error::bad_method).category()) return 400;
  return 0;
}

// Failed bearer tokens are worth a warning, but a scanner must not be able
// to flood the log: at most one line per 10 s, with the count in between.
void warn_unauthorized(const std::string& who, std::string_view path, bool had_token) {
  static std::atomic<int64_t> last_ms{0};
  static std::atomic<uint64_t> suppressed{0};
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t prev = last_ms.load();
  if (now - prev < 10000 || !last_ms.compare_exchange_strong(prev, now)) {
    suppressed.fetch_add(1);
    return;
  }
  const uint64_t more = suppressed.exchange(0);
  log::warn("http: refused " + std::string(path) + " from " + who +
            (had_token ? ": wrong bearer token" : ": no bearer token") +
            (more != 0 ? " (and " + std::to_string(more) + " more refusals since the last report)" : ""));
}

}  // namespace

struct HttpEndpointState {
  HttpEndpointState(asio::io_context& c, HttpEndpointOptions o)
      : ctx(c), options(std::move(o)), strand(asio::make_strand(c)), acceptor(strand) {}

  asio::io_context& ctx;
  const HttpEndpointOptions options;
  bool token_required = false;
  Digest token_digest{};
  asio::strand<asio::io_context::executor_type> strand;  // the acceptor's
  tcp::acceptor acceptor;
  tcp::endpoint local;
  std::atomic<size_t> open{0};

  std::mutex mu;  // everything below
  std::unordered_map<std::string, HttpHandler> routes;
  std::unordered_map<std::string, HttpHandler> actions;
  std::unordered_map<uint64_t, std::function<void()>> closers;  // open connections
  uint64_t next_id = 0;
  bool stopped = false;
};

namespace {

using State = HttpEndpointState;

Reply dispatch(State& st, const Request& req, const std::string& who) {
  if (req.version() >= 11 && req.find(http::field::host) == req.end()) {
    return error_reply(400, "bad request: HTTP/1.1 needs a Host header", true);
  }
  const std::string_view target = req.target();
  if (target.empty() || target.front() != '/') {
    return error_reply(400, "bad request: the target must be a path", true);
  }
  // Two Authorization headers could be read differently by a proxy in
  // front and by us; refuse the ambiguity.
  if (req.count(http::field::authorization) > 1) {
    return error_reply(400, "bad request: more than one Authorization header", true);
  }
  const auto q = target.find('?');
  const std::string_view path = target.substr(0, q);
  const std::string_view query = q == std::string_view::npos ? std::string_view() : target.substr(q + 1);

  const auto& pub = st.options.public_paths;
  const bool is_public = std::find(pub.begin(), pub.end(), path) != pub.end();
  // Checked before the route lookup, so that without the token a 404 does
  // not reveal which paths exist.
  if (st.token_required && !is_public) {
    auto it = req.find(http::field::authorization);
    std::optional<std::string> token;
    if (it != req.end()) {
      if (auto b = bearer_token(it->value())) {
        token = std::string(*b);
      } else {
        token = basic_password(it->value());
      }
    }
    bool is_action = false;
    {
      std::lock_guard lock(st.mu);
      is_action = st.actions.count(std::string(path)) != 0;
    }
    const bool bearer = it != req.end() && bearer_token(it->value()).has_value();
    if (!token || (is_action && !bearer) ||
        CRYPTO_memcmp(digest_of(*token).data(), st.token_digest.data(), st.token_digest.size()) != 0) {
      warn_unauthorized(who, path, it != req.end());
      Reply r = error_reply(401, "unauthorized: send Authorization: Bearer <token>", false);
      // Two challenges (RFC 7235 section 4.1): scrapers use Bearer, browsers
      // prompt for Basic (any user name, the token as password). Each in a
      // header of its own: Chromium reads only the first scheme of a
      // combined header and would never prompt.
      r.www_authenticate =
          it == req.end() ? "Bearer realm=\"pgcloak\"" : "Bearer realm=\"pgcloak\", error=\"invalid_token\"";
      r.headers.emplace_back("WWW-Authenticate", "Basic realm=\"pgcloak\", charset=\"UTF-8\"");
      return r;
    }
  }

  HttpHandler handler;
  bool action = false;
  {
    std::lock_guard lock(st.mu);
    if (auto it = st.actions.find(std::string(path)); it != st.actions.end()) {
      handler = it->second;
      action = true;
    }
  }
  const bool post = req.method() == http::verb::post;
  if (action || post) {
    if (!action) return error_reply(405, "method not allowed: use GET", false);
    if (!post) {
      Reply r = error_reply(405, "method not allowed: use POST", false);
      r.headers.emplace_back("Allow", "POST");
      return r;
    }
    if (!st.token_required) {
      return error_reply(403, "forbidden: actions need a token (set metrics.token_file or metrics.token_env)",
                         false);
    }
  }
  if (!action) {
    std::lock_guard lock(st.mu);
    if (auto it = st.routes.find(std::string(path)); it != st.routes.end()) handler = it->second;
  }
  if (!handler) return error_reply(404, "not found", false);
  try {
    HttpResponse res = handler(HttpRequest{req.method_string(), path, query});
    Reply r;
    r.status = res.status;
    r.content_type = std::move(res.content_type);
    r.body = std::move(res.body);
    r.headers = std::move(res.headers);
    return r;
  } catch (const std::exception& e) {
    log::error("http: handler for " + std::string(path) + " failed: " + e.what());
    return error_reply(500, "internal error", false);
  }
}

template <class Stream>
awaitable<bool> write_reply(Stream& stream, const State& st, unsigned version, bool head, const Reply& r,
                            bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(r.status), version};
  res.set(http::field::server, "pgcloak");
  res.set(http::field::content_type, r.content_type);
  // Metrics and console data are live and may name users: never cache.
  res.set(http::field::cache_control, "no-store");
  res.set("X-Content-Type-Options", "nosniff");
  if (!r.www_authenticate.empty()) res.set(http::field::www_authenticate, r.www_authenticate);
  for (const auto& [name, value] : r.headers) res.insert(name, value);
  const bool own_allow =
      std::any_of(r.headers.begin(), r.headers.end(), [](const auto& h) { return h.first == "Allow"; });
  if (r.status == 405 && !own_allow) res.set(http::field::allow, "GET, HEAD");
  res.keep_alive(keep_alive);
  if (head) {
    res.content_length(r.body.size());
  } else {
    res.body() = r.body;
    res.prepare_payload();
  }
  beast::get_lowest_layer(stream).expires_after(st.options.write_timeout);
  auto [ec, n] = co_await http::async_write(stream, res, use_nothrow);
  co_return !ec;
}

template <class Stream>
constexpr bool is_tls = !std::is_same_v<Stream, beast::tcp_stream>;

// Ends a connection so that the client still reads our last answer: TLS
// sends close_notify; plain TCP half-closes and reads what the client is
// still sending (a rejected oversized request, say) before closing, because
// closing with unread data resets the connection and can discard the answer
// in flight.
template <class Stream>
awaitable<void> close_gracefully(Stream& stream) {
  auto& lowest = beast::get_lowest_layer(stream);
  lowest.expires_after(std::chrono::seconds(1));
  if constexpr (is_tls<Stream>) {
    co_await stream.async_shutdown(use_nothrow);
  } else {
    error_code ignored;
    lowest.socket().shutdown(tcp::socket::shutdown_send, ignored);
    std::array<char, 4096> sink{};
    size_t drained = 0;
    while (drained < (size_t{64} << 10)) {
      auto [ec, n] = co_await lowest.async_read_some(asio::buffer(sink), use_nothrow);
      if (ec) break;
      drained += n;
    }
  }
  lowest.close();
}

template <class Stream>
awaitable<void> serve_stream(std::shared_ptr<State> st, std::shared_ptr<Stream> stream, std::string who) {
  const HttpEndpointOptions& o = st->options;
  auto& lowest = beast::get_lowest_layer(*stream);

  // stop() closes the socket on the connection's strand; the pending
  // operation then completes with an error and the loop ends.
  uint64_t id = 0;
  {
    std::lock_guard lock(st->mu);
    if (st->stopped) co_return;
    id = st->next_id++;
    st->closers[id] = [weak = std::weak_ptr<Stream>(stream), ex = lowest.get_executor()] {
      asio::post(ex, [weak] {
        if (auto s = weak.lock()) beast::get_lowest_layer(*s).close();
      });
    };
  }
  struct Unregister {
    State& st;
    uint64_t id;
    ~Unregister() {
      std::lock_guard lock(st.mu);
      st.closers.erase(id);
    }
  } unregister{*st, id};

  if constexpr (is_tls<Stream>) {
    lowest.expires_after(o.read_timeout);
    auto [ec] = co_await stream->async_handshake(ssl::stream_base::server, use_nothrow);
    if (ec) {
      log::debug("http: TLS handshake with " + who + " failed: " + ec.message());
      lowest.close();
      co_return;
    }
  }

  // Room for one request plus what a client may pipeline behind it.
  beast::flat_buffer buffer(size_t{o.max_header_bytes} + o.max_body_bytes + 4096);
  for (unsigned served = 0; served < o.max_requests_per_connection; ++served) {
    // Waiting for a request is bounded by the idle timeout (the read
    // timeout for a new connection); once its first byte is here, all of it
    // must arrive within the read timeout.
    if (buffer.size() == 0) {
      lowest.expires_after(served == 0 ? o.read_timeout : o.idle_timeout);
      auto [ec, n] = co_await stream->async_read_some(buffer.prepare(4096), use_nothrow);
      if (ec) break;
      buffer.commit(n);
    }
    http::request_parser<http::string_body> parser;
    parser.header_limit(o.max_header_bytes);
    // The body limit applies once the method is known to be GET or HEAD:
    // a POST gets 405, whatever its Content-Length.
    parser.body_limit(boost::none);
    lowest.expires_after(o.read_timeout);
    auto [hec, hn] = co_await http::async_read_header(*stream, buffer, parser, use_nothrow);
    error_code ec = hec;
    if (!ec) {
      const auto method = parser.get().method();
      bool action = false;
      if (method == http::verb::post) {
        const std::string_view target = parser.get().target();
        std::lock_guard lock(st->mu);
        action = st->actions.count(std::string(target.substr(0, target.find('?')))) != 0;
      }
      // POST only to actions, whose (empty) body is bounded like any other.
      if (method != http::verb::get && method != http::verb::head && !action) {
        // Its body is never read, so the connection cannot go on.
        co_await write_reply(*stream, *st, parser.get().version(), false,
                             error_reply(405, "method not allowed: use GET", true), false);
        co_await close_gracefully(*stream);
        co_return;
      }
      if (auto length = parser.content_length(); length && *length > o.max_body_bytes) {
        ec = http::error::body_limit;
      } else if (!parser.is_done()) {
        parser.body_limit(o.max_body_bytes);  // chunked bodies are checked as they arrive
        auto [bec, bn] = co_await http::async_read(*stream, buffer, parser, use_nothrow);
        ec = bec;
      }
    }
    if (ec) {
      if (unsigned status = status_for_read_error(ec); status != 0) {
        log::debug("http: bad request from " + who + ": " + ec.message());
        co_await write_reply(*stream, *st, 11, false,
                             error_reply(status,
                                         status == 431   ? "request header fields too large"
                                         : status == 413 ? "request body too large"
                                                         : "bad request",
                                         true),
                             false);
        co_await close_gracefully(*stream);
      }
      co_return;
    }

    const Request& req = parser.get();
    Reply reply = dispatch(*st, req, who);
    const bool keep = !reply.close && req.keep_alive() && served + 1 < o.max_requests_per_connection;
    if (!co_await write_reply(*stream, *st, req.version(), req.method() == http::verb::head, reply, keep)) {
      co_return;
    }
    if (!keep) break;
  }
  co_await close_gracefully(*stream);
}

awaitable<void> serve_connection(std::shared_ptr<State> st, tcp::socket socket) {
  struct OpenCount {
    State& st;
    ~OpenCount() { st.open.fetch_sub(1); }
  } open_count{*st};
  error_code ec;
  const auto peer = socket.remote_endpoint(ec);
  const std::string who = ec ? "?" : peer.address().to_string() + ":" + std::to_string(peer.port());
  // The root of the connection: nothing below may take the process down.
  try {
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    if (st->options.tls) {
      auto stream =
          std::make_shared<beast::ssl_stream<beast::tcp_stream>>(std::move(socket), *st->options.tls);
      co_await serve_stream(st, std::move(stream), who);
    } else {
      auto stream = std::make_shared<beast::tcp_stream>(std::move(socket));
      co_await serve_stream(st, std::move(stream), who);
    }
  } catch (const std::exception& e) {
    log::warn("http: connection from " + who + " ended: " + e.what());
  }
}

awaitable<void> accept_loop(std::shared_ptr<State> st) {
  for (;;) {
    auto strand = asio::make_strand(st->ctx);
    auto [ec, socket] = co_await st->acceptor.async_accept(strand, use_nothrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !st->acceptor.is_open()) co_return;
      log::warn("http: accept failed: " + ec.message());
      // Out of descriptors: back off instead of spinning on the error.
      asio::steady_timer t(st->strand, std::chrono::milliseconds(100));
      co_await t.async_wait(use_nothrow);
      continue;
    }
    // Over the limit the connection is closed at once: a slow or hostile
    // client must not make Prometheus or the health checks wait in line.
    if (st->open.load() >= st->options.max_connections) {
      log::debug("http: refusing a connection: max_connections (" +
                 std::to_string(st->options.max_connections) + ") reached");
      error_code ignored;
      socket.close(ignored);
      continue;
    }
    st->open.fetch_add(1);
    asio::co_spawn(strand, serve_connection(st, tcp::socket(std::move(socket))), asio::detached);
  }
}

}  // namespace

Result<std::shared_ptr<ssl::context>> make_http_tls_context(const std::string& cert_file,
                                                            const std::string& key_file) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx->native_handle(),
                      SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  try {
    ctx->use_certificate_chain_file(cert_file);
  } catch (const boost::system::system_error& e) {
    return Error::make(sqlstate::config_file_error,
                       "cannot load metrics.tls.cert_file \"" + cert_file + "\": " + e.code().message());
  }
  try {
    ctx->use_private_key_file(key_file, ssl::context::pem);
  } catch (const boost::system::system_error& e) {
    return Error::make(sqlstate::config_file_error,
                       "cannot load metrics.tls.key_file \"" + key_file + "\": " + e.code().message());
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    return Error::make(sqlstate::config_file_error,
                       "metrics.tls.key_file does not match metrics.tls.cert_file");
  }
  return ctx;
}

HttpEndpoint::HttpEndpoint(asio::io_context& ctx, HttpEndpointOptions options)
    : state_(std::make_shared<HttpEndpointState>(ctx, std::move(options))) {
  if (!state_->options.token.empty()) {
    state_->token_required = true;
    state_->token_digest = digest_of(state_->options.token);
  }
}

HttpEndpoint::~HttpEndpoint() {
  stop();
}

void HttpEndpoint::add_action(std::string path, HttpHandler handler) {
  std::lock_guard lock(state_->mu);
  state_->actions[std::move(path)] = std::move(handler);
}

void HttpEndpoint::add_route(std::string path, HttpHandler handler) {
  std::lock_guard lock(state_->mu);
  state_->routes[std::move(path)] = std::move(handler);
}

Status HttpEndpoint::start() {
  HttpEndpointState& st = *state_;
  const std::string where = st.options.host + ":" + std::to_string(st.options.port);
  error_code ec;
  tcp::endpoint ep;
  auto addr = asio::ip::make_address(st.options.host, ec);
  if (ec) {
    tcp::resolver resolver(st.ctx);
    auto results = resolver.resolve(st.options.host, std::to_string(st.options.port), ec);
    if (ec || results.empty()) {
      return Error::make(sqlstate::config_file_error,
                         "cannot resolve metrics.listen address \"" + st.options.host + "\"");
    }
    ep = *results.begin();
  } else {
    ep = tcp::endpoint(addr, st.options.port);
  }
  st.acceptor.open(ep.protocol(), ec);
  if (!ec) st.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec && ep.address().is_v6()) st.acceptor.set_option(asio::ip::v6_only(true), ec);
  if (!ec) st.acceptor.bind(ep, ec);
  if (!ec) st.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) st.local = st.acceptor.local_endpoint(ec);
  if (ec) {
    return Error::make(sqlstate::config_file_error,
                       "cannot listen on " + where + " for metrics: " + ec.message());
  }
  asio::co_spawn(st.strand, accept_loop(state_), asio::detached);
  return ok_status();
}

tcp::endpoint HttpEndpoint::local_endpoint() const {
  return state_->local;
}

size_t HttpEndpoint::open_connections() const {
  return state_->open.load();
}

void HttpEndpoint::stop() {
  std::vector<std::function<void()>> closers;
  {
    std::lock_guard lock(state_->mu);
    if (state_->stopped) return;
    state_->stopped = true;
    for (const auto& [id, close] : state_->closers) closers.push_back(close);
  }
  asio::post(state_->strand, [st = state_] {
    error_code ignored;
    st->acceptor.close(ignored);
  });
  for (const auto& close : closers) close();
}

}  // namespace pgcloak::proxy
