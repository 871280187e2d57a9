#include "proxy/alert_webhook.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "proxy/asio.h"
#include "proxy/log.h"
#include "proxy/openssl_errors.h"

namespace pgcloak::proxy {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using Request = http::request<http::string_body>;
using PlainStream = beast::tcp_stream;
using TlsStream = beast::ssl_stream<beast::tcp_stream>;

// A webhook answers with a short status text ("ok", Slack's
// "invalid_token"); anything bigger is not read, so a hostile or broken
// receiver cannot make the sink buffer without bound.
constexpr size_t max_response_header = size_t{16} << 10;
constexpr size_t max_response_body = size_t{64} << 10;
// Interim (1xx) answers skipped before the real one.
constexpr int max_interim_responses = 8;
// A kept-alive connection idle for this long is closed: a NAT or load
// balancer may have forgotten it, and the next alert would wait a whole
// timeout to find out.
constexpr auto idle_close = std::chrono::seconds(30);
constexpr auto log_interval = std::chrono::seconds(10);
// Slack's limits: 3000 characters for a section's text, 2000 per field.
constexpr size_t slack_section_max = 3000;
constexpr size_t slack_field_max = 2000;
// The alert keys shown as Slack fields, in this order (Slack allows 10).
constexpr std::array<std::string_view, 8> slack_fields{"user",     "client",   "relation", "category",
                                                       "observed", "baseline", "rule",     "action"};
constexpr size_t error_snippet_max = 100;

Error config_error(std::string msg) {
  return Error::make(sqlstate::config_file_error, std::move(msg));
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x >= 'A' && x <= 'Z' ? x - 'A' + 'a' : x) == (y >= 'A' && y <= 'Z' ? y - 'A' + 'a' : y);
         });
}

// Never empty in a message: "unknown error" when OpenSSL said nothing.
std::string tls_errors() {
  std::string out = openssl_errors();
  return out.empty() ? "unknown error" : out;
}

// Where alerts go, from WebhookOptions::url.
struct Target {
  bool tls = false;
  std::string host;  // without the brackets of an IPv6 literal
  bool host_is_ip = false;
  uint16_t port = 0;
  std::string host_header;  // as sent in Host: brackets, and the port unless the default
  std::string path;         // request target: path and query
  std::string describe;     // scheme://host:port, for logs; never the path
};

bool is_loopback_host(const std::string& host) {
  if (iequals(host, "localhost")) return true;
  error_code ec;
  const auto addr = asio::ip::make_address(host, ec);
  return !ec && addr.is_loopback();
}

Result<Target> parse_url(std::string_view url) {
  auto fail = [](const std::string& why) { return config_error("alert webhook url " + why); };
  Target t;
  if (url.size() >= 8 && iequals(url.substr(0, 8), "https://")) {
    t.tls = true;
    url.remove_prefix(8);
  } else if (url.size() >= 7 && iequals(url.substr(0, 7), "http://")) {
    url.remove_prefix(7);
  } else {
    return fail("must start with https:// (or http:// for a loopback host)");
  }
  // Spaces and control characters would end up in the request line, or
  // split it (CR LF): the URL must be percent-encoded already.
  for (char c : url) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return fail("must not contain spaces, control or non-ASCII characters");
  }
  const size_t end = url.find_first_of("/?#");
  const std::string_view authority = url.substr(0, end);
  const std::string_view rest = end == std::string_view::npos ? std::string_view() : url.substr(end);
  if (rest.find('#') != std::string_view::npos) return fail("must not have a fragment (#...)");
  // Credentials in the URL would be sent nowhere (we do not do Basic) and
  // printed wherever the URL is: use bearer_token.
  if (authority.find('@') != std::string_view::npos) {
    return fail("must not contain credentials (user@host); use the bearer token");
  }
  std::string_view host;
  std::string_view port;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return fail("has an unterminated [IPv6 address]");
    host = authority.substr(1, close - 1);
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return fail("has junk after the [IPv6 address]");
      has_port = true;
      port = after.substr(1);
    }
    error_code ec;
    (void)asio::ip::make_address_v6(std::string(host), ec);
    if (ec) return fail("must have an IPv6 address inside [...]");
    t.host_is_ip = true;
  } else {
    const size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_port = true;
      port = authority.substr(colon + 1);
      if (port.find(':') != std::string_view::npos) return fail("must put an IPv6 address in [brackets]");
    }
    for (char c : host) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_') {
        return fail("has an invalid host name");
      }
    }
    error_code ec;
    (void)asio::ip::make_address_v4(std::string(host), ec);
    t.host_is_ip = !ec;
  }
  if (host.empty()) return fail("has no host");
  t.host = std::string(host);
  t.port = t.tls ? 443 : 80;
  if (has_port) {
    unsigned value = 0;
    if (port.empty() || port.size() > 5) return fail("has an invalid port");
    for (char c : port) {
      if (c < '0' || c > '9') return fail("has an invalid port");
      value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value == 0 || value > 65535) return fail("has an invalid port (1..65535)");
    t.port = static_cast<uint16_t>(value);
  }
  // Alerts name users, clients and relations, and the token goes with
  // them: in clear text only to this host itself (tests, a local relay).
  if (!t.tls && !is_loopback_host(t.host)) {
    return fail("may use http:// only for a loopback host (127.0.0.1, ::1, localhost); use https://");
  }
  const bool v6 = t.host.find(':') != std::string::npos;
  const std::string bracketed = v6 ? "[" + t.host + "]" : t.host;
  t.host_header = bracketed;
  if (t.port != (t.tls ? 443 : 80)) t.host_header += ":" + std::to_string(t.port);
  t.path = rest.empty() || rest.front() == '?' ? "/" + std::string(rest) : std::string(rest);
  t.describe = std::string(t.tls ? "https://" : "http://") + bracketed + ":" + std::to_string(t.port);
  return t;
}

// TLS 1.2 or later, the peer verified against ca_file or the system store;
// the host name is set per connection (connect()).
Result<std::unique_ptr<ssl::context>> make_client_tls(const std::string& ca_file) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
  SSL_CTX* h = ctx->native_handle();
  SSL_CTX_set_min_proto_version(h, TLS1_2_VERSION);
  SSL_CTX_set_options(h, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_verify(h, SSL_VERIFY_PEER, nullptr);
  ERR_clear_error();
  if (ca_file.empty()) {
    if (SSL_CTX_set_default_verify_paths(h) != 1) {
      return config_error("cannot load the system trust store for the alert webhook: " + tls_errors());
    }
  } else if (SSL_CTX_load_verify_locations(h, ca_file.c_str(), nullptr) != 1) {
    return config_error("cannot load the alert webhook ca_file \"" + ca_file + "\": " + tls_errors());
  }
  return ctx;
}

// Cuts s to at most max bytes (Slack counts characters, never more than
// bytes), ending with an ellipsis, and never inside a UTF-8 sequence or an
// escape (&amp;), which Slack would show garbled.
std::string cut(std::string s, size_t max) {
  static constexpr std::string_view ellipsis = "\xE2\x80\xA6";  // U+2026
  if (s.size() <= max) return s;
  size_t n = max > ellipsis.size() ? max - ellipsis.size() : 0;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  if (n > 0) {
    const size_t amp = s.rfind('&', n - 1);
    if (amp != std::string::npos && n - amp < 5 && s.find(';', amp) >= n) n = amp;
  }
  s.resize(n);
  s += ellipsis;
  return s;
}

std::string field_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  // 42.0 reads better as 42 in a chat message.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d == static_cast<double>(static_cast<int64_t>(d)) && d > -1e15 && d < 1e15) {
      return std::to_string(static_cast<int64_t>(d));
    }
  }
  return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The first bytes of an error answer ("invalid_token", "no_service"), on
// one line of printable ASCII, so the log shows why the webhook refused.
std::string snippet(std::string_view body) {
  std::string out;
  for (char c : body.substr(0, error_snippet_max)) {
    const auto u = static_cast<unsigned char>(c);
    const char p = u >= 0x20 && u < 0x7f ? c : ' ';
    if (p == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += p;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  if (body.size() > error_snippet_max) out += "...";
  return out;
}

std::optional<milliseconds> parse_retry_after(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  // delay-seconds only (RFC 9110 section 10.2.3); an HTTP-date falls back
  // to our own backoff.
  if (v.empty() || v.size() > 9) return std::nullopt;
  int64_t seconds = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return std::nullopt;
    seconds = seconds * 10 + (c - '0');
  }
  return milliseconds(seconds * 1000);
}

// At most one warning per log_interval, with the number held back: a
// webhook that is down must show in the log, but not once per alert.
// Worker thread only.
class LogLimiter {
 public:
  void warn(const std::string& message) {
    const auto now = Clock::now();
    if (last_ && now - *last_ < log_interval) {
      ++suppressed_;
      return;
    }
    last_ = now;
    std::string line = message;
    if (suppressed_ != 0) {
      line += " (" + std::to_string(suppressed_) + " more webhook warnings since the last one)";
      suppressed_ = 0;
    }
    log::warn(line);
  }

 private:
  std::optional<Clock::time_point> last_;
  uint64_t suppressed_ = 0;
};

struct Entry {
  nlohmann::json alert;
  std::string summary;
};

}  // namespace

struct AlertWebhookState {
  AlertWebhookState(WebhookOptions o, Target t, std::unique_ptr<ssl::context> c)
      : options(std::move(o)), target(std::move(t)), tls(std::move(c)), rng(std::random_device{}()) {}

  const WebhookOptions options;
  const Target target;
  const std::unique_ptr<ssl::context> tls;  // null = plain http

  // Shared with the callers of submit(), stats() and stop().
  mutable std::mutex mu;
  std::deque<Entry> queue;  // the front is the alert being delivered
  WebhookStats stats;       // stats.queued is queue.size()
  bool stopping = false;
  bool finished = false;  // the worker has ended
  // The worker waits for an alert: the next submit() wakes it.
  bool waiting = false;

  // The worker's; the io thread only. ctx first: it must outlive the
  // I/O objects below.
  asio::io_context ctx{1};
  asio::steady_timer wake{ctx};
  bool wake_requested = false;  // a wake that came before the worker waited
  asio::steady_timer backoff{ctx};
  asio::steady_timer drain{ctx};
  asio::steady_timer resolve_timer{ctx};
  tcp::resolver resolver{ctx};
  std::unique_ptr<PlainStream> plain;
  std::unique_ptr<TlsStream> secure;
  beast::flat_buffer buffer{max_response_header + max_response_body};
  bool aborted = false;  // stop()'s drain time is over
  std::minstd_rand rng;
  // Two budgets, so that retry noise cannot hide a lost alert.
  LogLimiter retry_log;  // attempts that will be retried
  LogLimiter loss_log;   // alerts given up, refused or dropped
  uint64_t drops_reported = 0;
  uint64_t failures_in_a_row = 0;

  std::thread thread;

  std::string prefix() const { return "alert webhook " + target.describe + ": "; }
};

namespace {

using State = AlertWebhookState;

bool connected(const State& st) {
  return st.plain || st.secure;
}

// No operation may be pending on the connection.
void close_connection(State& st) {
  error_code ignored;
  if (st.plain) st.plain->socket().close(ignored);
  if (st.secure) beast::get_lowest_layer(*st.secure).socket().close(ignored);
  st.plain.reset();
  st.secure.reset();
  st.buffer.clear();
}

// Runs on the io thread (posted by submit() and stop()).
void request_wake(State& st) {
  st.wake_requested = true;
  st.wake.cancel();
}

// stop()'s drain time is over: whatever the worker waits for completes at
// once with an error, and it sees `aborted`.
void abort_worker(State& st) {
  st.aborted = true;
  if (st.plain) st.plain->close();
  if (st.secure) beast::get_lowest_layer(*st.secure).close();
  st.backoff.cancel();
  st.resolve_timer.cancel();
  request_wake(st);
}

std::string transport_text(const State& st, const error_code& ec) {
  if (ec == beast::error::timeout) {
    return "timed out (timeout " + std::to_string(st.options.timeout.count()) + " ms)";
  }
  if (ec == http::error::end_of_stream || ec == asio::error::eof) return "the server closed the connection";
  if (ec == ssl::error::stream_truncated) return "the server closed the TLS connection";
  return ec.message();
}

// The host's addresses, within the attempt's deadline. Asio's resolver
// cannot be cancelled once getaddrinfo() runs, so the worker waits on a
// timer and abandons a lookup that is too slow.
awaitable<std::string> resolve(State& st, Clock::time_point deadline, std::vector<tcp::endpoint>& out) {
  struct Lookup {
    bool done = false;
    bool abandoned = false;
    error_code ec;
    tcp::resolver::results_type results;
  };
  auto lookup = std::make_shared<Lookup>();
  State* s = &st;
  st.resolver.async_resolve(st.target.host, std::to_string(st.target.port),
                            [lookup, s](error_code ec, tcp::resolver::results_type results) {
                              lookup->done = true;
                              lookup->ec = ec;
                              lookup->results = std::move(results);
                              if (!lookup->abandoned) s->resolve_timer.cancel();
                            });
  st.resolve_timer.expires_at(deadline);
  co_await st.resolve_timer.async_wait(use_nothrow);
  if (!lookup->done) {
    lookup->abandoned = true;
    st.resolver.cancel();
    co_return st.aborted ? "stopped" : "resolving the host name timed out";
  }
  if (lookup->ec) co_return "cannot resolve the host name: " + lookup->ec.message();
  for (const auto& entry : lookup->results) out.push_back(entry.endpoint());
  co_return std::string();
}

// Why a TLS handshake failed: the certificate check's own reason
// ("hostname mismatch", "unable to get local issuer certificate") when
// there is one, since that is what an operator has to fix.
std::string handshake_text(const State& st, SSL* ssl, const error_code& ec) {
  const long verify = SSL_get_verify_result(ssl);
  if (verify != X509_V_OK) {
    return std::string("TLS: the server certificate was not accepted: ") +
           X509_verify_cert_error_string(verify);
  }
  return "TLS handshake failed: " + transport_text(st, ec);
}

// Opens a connection (TLS included); an empty string on success, else why not.
awaitable<std::string> open_connection(State& st, Clock::time_point deadline) {
  std::vector<tcp::endpoint> endpoints;
  error_code ec;
  const auto addr = asio::ip::make_address(st.target.host, ec);
  if (!ec) {
    endpoints.emplace_back(addr, st.target.port);
  } else {
    std::string why = co_await resolve(st, deadline, endpoints);
    if (!why.empty()) co_return why;
  }
  if (st.aborted) co_return "stopped";
  if (!st.tls) {
    // http:// is allowed for loopback hosts only (parse_url); "localhost"
    // is a name, so hold its addresses to that too.
    std::erase_if(endpoints, [](const tcp::endpoint& e) { return !e.address().is_loopback(); });
    if (endpoints.empty()) co_return "the host resolves to no loopback address (required for http://)";
  }
  if (endpoints.empty()) co_return "the host name has no address";

  beast::tcp_stream* lowest = nullptr;
  if (st.tls) {
    st.secure = std::make_unique<TlsStream>(st.ctx, *st.tls);
    lowest = &beast::get_lowest_layer(*st.secure);
  } else {
    st.plain = std::make_unique<PlainStream>(st.ctx);
    lowest = st.plain.get();
  }
  lowest->expires_at(deadline);
  auto [cec, ep] = co_await lowest->async_connect(endpoints, use_nothrow);
  if (cec) {
    close_connection(st);
    co_return "cannot connect: " + transport_text(st, cec);
  }
  error_code ignored;
  lowest->socket().set_option(tcp::no_delay(true), ignored);
  if (!st.tls) co_return std::string();

  SSL* ssl = st.secure->native_handle();
  // SNI carries host names only (RFC 6066 section 3). The certificate must
  // name the host we asked for: without this check any certificate from a
  // trusted CA would do, and alerts could be sent to whoever holds one.
  if (st.target.host_is_ip) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), st.target.host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, st.target.host.c_str());
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set1_host(ssl, st.target.host.c_str());
  }
  lowest->expires_at(deadline);
  auto [hec] = co_await st.secure->async_handshake(ssl::stream_base::client, use_nothrow);
  if (hec) {
    std::string why = handshake_text(st, ssl, hec);
    ERR_clear_error();
    close_connection(st);
    co_return why;
  }
  co_return std::string();
}

// One request and its answer on the open connection.
struct Answer {
  error_code ec;  // the request failed before a complete answer
  bool got_bytes = false;
  unsigned status = 0;
  bool reusable = false;  // the connection can carry the next request
  std::optional<milliseconds> retry_after;
  std::string body;
};

template <class Stream>
awaitable<Answer> exchange(State& st, Stream& stream, const Request& req, Clock::time_point deadline) {
  Answer a;
  auto& lowest = beast::get_lowest_layer(stream);
  lowest.expires_at(deadline);
  auto [wec, wn] = co_await http::async_write(stream, req, use_nothrow);
  if (wec) {
    a.ec = wec;
    co_return a;
  }
  for (int interim = 0;; ++interim) {
    http::response_parser<http::string_body> parser;
    parser.header_limit(max_response_header);
    parser.body_limit(max_response_body);
    auto [rec, rn] = co_await http::async_read(stream, st.buffer, parser, use_nothrow);
    a.got_bytes = a.got_bytes || parser.got_some();
    bool complete = true;
    if (rec) {
      // An oversized body: the status is known, the rest is not read.
      if (rec != http::error::body_limit || !parser.is_header_done()) {
        a.ec = rec;
        co_return a;
      }
      complete = false;
    }
    const auto& res = parser.get();
    a.status = res.result_int();
    if (a.status >= 100 && a.status < 200 && complete && interim < max_interim_responses) continue;
    // Bytes after the answer would be a second answer to a single request:
    // the stream is out of sync.
    a.reusable = complete && res.keep_alive() && st.buffer.size() == 0;
    if (auto it = res.find(http::field::retry_after); it != res.end()) {
      a.retry_after = parse_retry_after(it->value());
    }
    a.body = res.body().substr(0, error_snippet_max + 1);
    co_return a;
  }
}

struct Outcome {
  bool delivered = false;
  bool retry = false;
  std::optional<milliseconds> retry_after;
  std::string error;
};

// One attempt: a 2xx, or why not and whether trying again can help.
awaitable<Outcome> attempt(State& st, const Request& req) {
  for (int round = 0;; ++round) {
    const auto deadline = Clock::now() + st.options.timeout;
    const bool reused = connected(st);
    if (!reused) {
      std::string why = co_await open_connection(st, deadline);
      if (!why.empty()) co_return Outcome{false, true, std::nullopt, std::move(why)};
    }
    // (Not a conditional expression: GCC 12 miscompiles co_await inside one.)
    Answer a;
    if (st.secure) {
      a = co_await exchange(st, *st.secure, req, deadline);
    } else {
      a = co_await exchange(st, *st.plain, req, deadline);
    }
    if (a.ec) {
      close_connection(st);
      // A kept-alive connection the server closed while it was idle (its
      // keep-alive timeout, a restart) fails before any answer: the server
      // never took the request, so it goes again at once on a new
      // connection and does not count as a failed attempt.
      if (reused && !a.got_bytes && a.ec != beast::error::timeout && round == 0 && !st.aborted) continue;
      co_return Outcome{false, true, std::nullopt, transport_text(st, a.ec)};
    }
    if (!a.reusable) close_connection(st);
    if (a.status >= 200 && a.status < 300) co_return Outcome{true, false, std::nullopt, {}};
    Outcome o;
    o.error = "HTTP " + std::to_string(a.status);
    if (const std::string text = snippet(a.body); !text.empty()) o.error += " (" + text + ")";
    // 408, 429 and 5xx may succeed later; any other answer (a wrong URL,
    // token or payload; a redirect, which is not followed) will not.
    o.retry = a.status == 408 || a.status == 429 || a.status >= 500;
    if (a.status == 429 || a.status == 503) o.retry_after = a.retry_after;
    co_return o;
  }
}

// The delay before attempt `failed + 1`: initial_backoff doubled per
// failure up to max_backoff, then "equal jitter" (half fixed, half random),
// so that pgcloak instances sharing a webhook do not retry in lockstep.
milliseconds backoff_delay(State& st, unsigned failed) {
  const int64_t max = st.options.max_backoff.count();
  int64_t base = st.options.initial_backoff.count();
  for (unsigned i = 1; i < failed && base < max; ++i) base *= 2;
  base = std::min(base, max);
  std::uniform_int_distribution<int64_t> jitter(0, base / 2);
  return milliseconds(base - base / 2 + jitter(st.rng));
}

Request make_request(const State& st, const Entry& e) {
  Request req{http::verb::post, st.target.path, 11};
  req.set(http::field::host, st.target.host_header);
  req.set(http::field::user_agent, "pgcloak");
  req.set(http::field::content_type, "application/json");
  if (!st.options.bearer_token.empty())
    req.set(http::field::authorization, "Bearer " + st.options.bearer_token);
  req.keep_alive(true);
  const nlohmann::json& payload = st.options.slack ? slack_payload(e.alert, e.summary) : e.alert;
  // Invalid UTF-8 (a name in a client encoding other than UTF-8) becomes
  // U+FFFD instead of making the alert unsendable.
  req.body() = payload.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  req.prepare_payload();
  return req;
}

// Delivers one alert, retrying as the options allow. False only when
// stop()'s drain time ran out first: the alert is then still pending.
awaitable<bool> deliver(State& st, const Entry& entry) {
  const Request req = make_request(st, entry);
  const unsigned max_attempts = st.options.max_attempts;
  for (unsigned n = 1;; ++n) {
    Outcome o = co_await attempt(st, req);
    if (o.delivered) {
      {
        std::lock_guard lock(st.mu);
        ++st.stats.delivered;
      }
      if (st.failures_in_a_row != 0) {
        log::info(st.prefix() + "delivering again, after " + std::to_string(st.failures_in_a_row) +
                  " failed attempt(s)");
        st.failures_in_a_row = 0;
      }
      co_return true;
    }
    if (st.aborted) co_return false;
    {
      std::lock_guard lock(st.mu);
      ++st.stats.failed_attempts;
      st.stats.last_error = o.error;
    }
    ++st.failures_in_a_row;
    log::debug(st.prefix() + "attempt " + std::to_string(n) + " failed: " + o.error);
    if (!o.retry || n >= max_attempts) {
      {
        std::lock_guard lock(st.mu);
        ++st.stats.abandoned;
      }
      // A 4xx is a configuration problem (URL, token): it must be seen.
      st.loss_log.warn(st.prefix() +
                       (o.retry ? "giving up on an alert after " + std::to_string(n) + " attempts: "
                                : "an alert was refused and is not retried: ") +
                       o.error + (o.retry ? "" : "; check the webhook URL and token"));
      co_return true;
    }
    milliseconds delay =
        o.retry_after ? std::min(*o.retry_after, st.options.max_backoff) : backoff_delay(st, n);
    st.retry_log.warn(st.prefix() + "attempt " + std::to_string(n) + " of " + std::to_string(max_attempts) +
                      " failed: " + o.error + "; retrying in " + std::to_string(delay.count()) + " ms");
    st.backoff.expires_after(delay);
    co_await st.backoff.async_wait(use_nothrow);
    if (st.aborted) co_return false;
  }
}

// Waits for submit() or stop(); closes a connection that stays idle.
awaitable<void> wait_for_work(State& st) {
  if (!st.wake_requested) {
    st.wake.expires_at(connected(st) ? Clock::now() + idle_close : Clock::time_point::max());
    auto [ec] = co_await st.wake.async_wait(use_nothrow);
    if (!ec && !st.wake_requested && connected(st)) {
      log::debug(st.prefix() + "closing the idle connection");
      close_connection(st);
    }
  }
  st.wake_requested = false;
  std::lock_guard lock(st.mu);
  st.waiting = false;
}

void report_drops(State& st) {
  uint64_t dropped = 0;
  {
    std::lock_guard lock(st.mu);
    dropped = st.stats.dropped;
  }
  if (dropped == st.drops_reported) return;
  st.loss_log.warn(st.prefix() + "dropped " + std::to_string(dropped - st.drops_reported) +
                   " alert(s): the queue is full (" + std::to_string(st.options.queue_limit) +
                   " alerts); they are in the audit trail");
  st.drops_reported = dropped;
}

// The worker: delivers the queue front to back, one alert at a time.
awaitable<void> run_worker(State* s) {
  State& st = *s;
  try {
    for (;;) {
      const Entry* next = nullptr;
      {
        std::lock_guard lock(st.mu);
        if (st.aborted) break;
        if (st.queue.empty()) {
          if (st.stopping) break;
          st.waiting = true;
        } else {
          // submit() only appends, which leaves references to the front valid.
          next = &st.queue.front();
        }
      }
      report_drops(st);
      if (next == nullptr) {
        co_await wait_for_work(st);
        continue;
      }
      const bool done = co_await deliver(st, *next);
      if (!done) break;
      std::lock_guard lock(st.mu);
      st.queue.pop_front();
    }
  } catch (const std::exception& e) {
    log::error(st.prefix() + "stopped delivering alerts: " + e.what());
  }
  close_connection(st);
  size_t left = 0;
  {
    std::lock_guard lock(st.mu);
    st.finished = true;
    left = st.queue.size();
    st.stats.dropped += left;
    st.queue.clear();
  }
  if (left != 0) {
    log::warn(st.prefix() + "stopped with " + std::to_string(left) +
              " alert(s) not delivered; they are in the audit trail");
  }
  // A host name lookup may still be running on Asio's resolver thread; it
  // must not keep the sink's thread alive.
  st.drain.cancel();
  st.ctx.stop();
}

}  // namespace

std::string slack_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      default: out += c;
    }
  }
  return out;
}

nlohmann::json slack_payload(const nlohmann::json& alert, std::string_view summary) {
  // Every text is escaped: names come from clients (user, application,
  // relation), and unescaped "<!channel>" or "<https://x|click here>" would
  // page a whole channel or plant a link in a security alert.
  const std::string escaped = slack_escape(summary);
  nlohmann::json blocks = nlohmann::json::array();
  blocks.push_back(
      {{"type", "section"},
       {"text", {{"type", "mrkdwn"}, {"text", cut("*pgcloak alert*: " + escaped, slack_section_max)}}}});
  nlohmann::json fields = nlohmann::json::array();
  if (alert.is_object()) {
    for (std::string_view key : slack_fields) {
      auto it = alert.find(key);
      if (it == alert.end() || it->is_null()) continue;
      fields.push_back(
          {{"type", "mrkdwn"},
           {"text", cut("*" + std::string(key) + "*\n" + slack_escape(field_text(*it)), slack_field_max)}});
    }
  }
  // Slack refuses a section with an empty "fields".
  if (!fields.empty()) blocks.push_back({{"type", "section"}, {"fields", std::move(fields)}});
  return {{"text", cut(escaped, slack_section_max)}, {"blocks", std::move(blocks)}};
}

Result<std::unique_ptr<AlertWebhook>> AlertWebhook::start(WebhookOptions options) {
  auto target = parse_url(options.url);
  if (!target) return target.error();
  if (options.timeout.count() <= 0) return config_error("alert webhook timeout must be positive");
  if (options.queue_limit == 0) return config_error("alert webhook queue_limit must be at least 1");
  if (options.max_attempts == 0) return config_error("alert webhook max_attempts must be at least 1");
  if (options.initial_backoff.count() <= 0)
    return config_error("alert webhook initial_backoff must be positive");
  if (options.max_backoff < options.initial_backoff) {
    return config_error("alert webhook max_backoff must not be below initial_backoff");
  }
  // The token goes into a header line: CR LF would inject headers.
  for (char c : options.bearer_token) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return config_error("alert webhook bearer token must be printable ASCII without spaces");
    }
  }
  std::unique_ptr<ssl::context> tls;
  if (target->tls) {
    auto ctx = make_client_tls(options.ca_file);
    if (!ctx) return ctx.error();
    tls = std::move(*ctx);
  } else if (!options.ca_file.empty()) {
    return config_error("alert webhook ca_file is set, but the url is not https://");
  }
  auto st = std::make_shared<AlertWebhookState>(std::move(options), std::move(*target), std::move(tls));
  asio::co_spawn(st->ctx, run_worker(st.get()), asio::detached);
  st->thread = std::thread([s = st.get()] {
    try {
      s->ctx.run();
    } catch (const std::exception& e) {
      log::error(s->prefix() + "thread failed: " + e.what());
    }
  });
  log::info(st->prefix() + "delivering alerts" + (st->options.slack ? " (Slack format)" : ""));
  return std::unique_ptr<AlertWebhook>(new AlertWebhook(std::move(st)));
}

AlertWebhook::AlertWebhook(std::shared_ptr<AlertWebhookState> state) : state_(std::move(state)) {}

AlertWebhook::~AlertWebhook() {
  stop(milliseconds(0));
}

bool AlertWebhook::submit(nlohmann::json alert, std::string summary) {
  State& st = *state_;
  std::lock_guard lock(st.mu);
  if (st.stopping || st.finished || st.queue.size() >= st.options.queue_limit) {
    ++st.stats.dropped;
    return false;
  }
  st.queue.push_back(Entry{std::move(alert), std::move(summary)});
  if (st.waiting) {
    st.waiting = false;
    asio::post(st.ctx, [s = &st] { request_wake(*s); });
  }
  return true;
}

WebhookStats AlertWebhook::stats() const {
  const State& st = *state_;
  std::lock_guard lock(st.mu);
  WebhookStats s = st.stats;
  s.queued = st.queue.size();
  return s;
}

void AlertWebhook::stop(std::chrono::milliseconds drain) {
  State& st = *state_;
  {
    std::lock_guard lock(st.mu);
    st.stopping = true;
  }
  if (!st.thread.joinable()) return;
  asio::post(st.ctx, [s = &st, drain] {
    s->drain.expires_after(drain);
    s->drain.async_wait([s](error_code ec) {
      if (!ec) abort_worker(*s);
    });
    request_wake(*s);
  });
  st.thread.join();
}

const std::string& AlertWebhook::describe() const {
  return state_->target.describe;
}

}  // namespace pgcloak::proxy
