// pgcloak's HTTP endpoint (docs/metrics.md, "Endpoint"): a small HTTP/1.1
// server on Boost.Beast for /metrics, /healthz, /readyz and the console.
// The caller registers the routes and runs the io_context; the endpoint
// owns what every route needs to be safe on a network: the bearer token
// check, optional TLS, request limits and timeouts.
//
// Only GET and HEAD exist (every route is read-only); anything else gets
// 405. A malformed or oversized request gets its 4xx and the connection is
// closed, since the stream can no longer be trusted to be in sync.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/result.h"
#include "proxy/asio.h"

namespace pgcloak::proxy {

struct HttpRequest {
  std::string_view method;  // "GET" or "HEAD" (routes), "POST" (actions)
  std::string_view path;    // the target up to '?'
  std::string_view query;   // after '?', empty if none
};

struct HttpResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  // Extra headers (Content-Security-Policy for the console, ...).
  std::vector<std::pair<std::string, std::string>> headers;
};

// Runs on the endpoint's io_context thread: keep it short (serialize the
// metrics, copy a snapshot), never block on I/O.
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpEndpointOptions {
  std::string host = "127.0.0.1";  // literal address; loopback unless asked otherwise
  uint16_t port = 9930;            // 0 = any free port (tests)
  // Empty = no token. Otherwise every path except public_paths needs
  // "Authorization: Bearer <token>", or HTTP Basic credentials whose
  // password is the token (any user name): a browser cannot send a bearer
  // token when it opens /console, but it asks for Basic credentials itself
  // and repeats them for the page's API calls.
  std::string token;
  // Load balancers and kubelets probe health without credentials, and the
  // answers ("ok", "not ready: ...") reveal nothing about the data.
  std::vector<std::string> public_paths{"/healthz", "/readyz"};
  std::shared_ptr<ssl::context> tls;  // null = plain HTTP; see make_http_tls_context
  uint32_t max_header_bytes = 8192;   // request line and headers
  uint64_t max_body_bytes = 0;        // GET/HEAD carry no body
  size_t max_connections = 32;        // more are closed at once
  // A request (or the TLS handshake) must arrive completely within this,
  // so a client that trickles bytes cannot hold a connection.
  std::chrono::milliseconds read_timeout{10000};
  // How long a keep-alive connection may wait for its next request.
  std::chrono::milliseconds idle_timeout{30000};
  std::chrono::milliseconds write_timeout{10000};
  unsigned max_requests_per_connection = 10000;
};

// A server context for the endpoint: TLS 1.2 or later, no compression or
// renegotiation. Errors name the metrics.tls key to fix.
Result<std::shared_ptr<ssl::context>> make_http_tls_context(const std::string& cert_file,
                                                            const std::string& key_file);

struct HttpEndpointState;  // http_endpoint.cc; shared with the connections

class HttpEndpoint {
 public:
  HttpEndpoint(asio::io_context& ctx, HttpEndpointOptions options);
  // Stops (see stop()). Destroy the endpoint before its io_context.
  ~HttpEndpoint();
  HttpEndpoint(const HttpEndpoint&) = delete;
  HttpEndpoint& operator=(const HttpEndpoint&) = delete;

  // Exact path match ("/metrics"). Register routes before start().
  void add_route(std::string path, HttpHandler handler);
  // An action (POST with an empty body), e.g. lifting a block. Only with a
  // token configured (403 otherwise: an action must never be open to
  // anyone who can reach the port), and only with the Bearer scheme: a
  // browser re-sends Basic credentials by itself, so a hostile page could
  // make it POST here (cross-site request forgery); it never adds a bearer
  // token on its own.
  void add_action(std::string path, HttpHandler handler);
  // Binds and listens, then accepts on the io_context. Errors say which
  // address could not be used and why.
  Status start();
  // The bound address (the actual port when options.port was 0).
  tcp::endpoint local_endpoint() const;
  // Stops accepting and closes every open connection. Thread-safe and
  // idempotent; takes effect on the io_context's threads.
  void stop();
  size_t open_connections() const;

 private:
  std::shared_ptr<HttpEndpointState> state_;
};

}  // namespace pgcloak::proxy
