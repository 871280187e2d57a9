#include "proxy/upstream.h"

#include "protocol/startup.h"
#include "proxy/deadline.h"

namespace pgcloak::proxy {

namespace {

Error connect_error(const rules::UpstreamConfig& config, const std::string& what) {
  return Error::make(
      sqlstate::connection_failure,
      "pgcloak could not connect to the PostgreSQL server at " + config.describe() + ": " + what,
      Severity::fatal,
      "Check that PostgreSQL is running there and that upstream.host, upstream.port and "
      "upstream.sslmode in pgcloak's configuration are right.");
}

std::string seconds(rules::Duration d) {
  auto ms = d.count();
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + "s" : std::to_string(ms) + "ms";
}

}  // namespace

awaitable<Result<std::unique_ptr<Stream>>> connect_upstream(const rules::UpstreamConfig& config,
                                                            ssl::context* tls) {
  auto ex = co_await asio::this_coro::executor;
  Deadline deadline(ex);
  std::unique_ptr<Stream> stream;

  if (config.is_unix_socket()) {
    unix_stream::socket sock(ex);
    deadline.arm(config.connect_timeout, [&] {
      error_code ignored;
      sock.close(ignored);
    });
    auto [ec] = co_await sock.async_connect(unix_stream::endpoint(config.unix_socket_path()), use_nothrow);
    if (deadline.expired())
      co_return connect_error(config, "timed out after " + seconds(config.connect_timeout));
    if (ec) co_return connect_error(config, ec.message());
    deadline.disarm();
    // PostgreSQL never offers TLS on Unix sockets; libpq skips SSLRequest there.
    co_return std::make_unique<Stream>(std::move(sock));
  }

  tcp::socket sock(ex);
  tcp::resolver resolver(ex);
  deadline.arm(config.connect_timeout, [&] {
    resolver.cancel();
    error_code ignored;
    sock.close(ignored);
  });
  error_code ec;
  auto address = asio::ip::make_address(config.host, ec);
  if (!ec) {
    std::tie(ec) = co_await sock.async_connect(tcp::endpoint(address, config.port), use_nothrow);
  } else {
    auto [rec, results] =
        co_await resolver.async_resolve(config.host, std::to_string(config.port), use_nothrow);
    if (rec) {
      if (deadline.expired()) co_return connect_error(config, "timed out resolving the host name");
      co_return connect_error(config, "cannot resolve host name: " + rec.message());
    }
    tcp::endpoint ep;
    std::tie(ec, ep) = co_await asio::async_connect(sock, results, use_nothrow);
  }
  if (deadline.expired())
    co_return connect_error(config, "timed out after " + seconds(config.connect_timeout));
  if (ec) co_return connect_error(config, ec.message());

  stream = std::make_unique<Stream>(std::move(sock));
  stream->set_nodelay();
  // The TCP socket now lives inside the stream; re-aim the deadline at it.
  deadline.arm(config.connect_timeout, [s = stream.get()] { s->close(); });

  if (config.sslmode != rules::SslMode::disable) {
    protocol::Buffer req;
    protocol::SSLRequest{}.encode(req);
    auto [wec, wn] = co_await stream->write(asio::buffer(req));
    if (wec) co_return connect_error(config, "sending SSLRequest: " + wec.message());
    // Read exactly one byte: anything the server sends after 'S' belongs to
    // the TLS handshake, and must not be buffered as plaintext
    // (CVE-2021-23222 class).
    uint8_t answer = 0;
    auto [rec, rn] = co_await stream->read_some(asio::buffer(&answer, 1));
    if (deadline.expired()) co_return connect_error(config, "timed out waiting for the SSLRequest answer");
    if (rec) co_return connect_error(config, "reading the SSLRequest answer: " + rec.message());
    if (answer == 'S') {
      error_code not_ip;
      asio::ip::make_address(config.host, not_ip);
      const bool is_ip = !not_ip;  // SNI carries host names only (RFC 6066, section 3)
      const std::string sni = is_ip ? std::string() : config.host;
      const std::string verify = config.sslmode == rules::SslMode::verify_full ? config.host : std::string();
      auto hec = co_await stream->tls_connect(*tls, sni, verify);
      if (deadline.expired()) co_return connect_error(config, "timed out during the TLS handshake");
      if (hec) co_return connect_error(config, "TLS handshake failed: " + hec.message());
    } else if (answer == 'N') {
      if (config.sslmode != rules::SslMode::prefer) {
        co_return connect_error(config, "the server does not support SSL, but upstream.sslmode is " +
                                            std::string(rules::to_string(config.sslmode)));
      }
      // prefer: the server said no; the connection stays usable in plaintext.
    } else {
      co_return connect_error(config, "unexpected answer to SSLRequest (not a PostgreSQL server?)");
    }
  }
  deadline.disarm();
  co_return std::move(stream);
}

}  // namespace pgcloak::proxy
