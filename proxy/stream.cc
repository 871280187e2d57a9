#include "proxy/stream.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>

namespace pgcloak::proxy {

// Not coroutines themselves: they hand back the underlying operation's
// awaitable, which saves a coroutine frame and a resumption per I/O on the
// relay path.
awaitable<std::tuple<error_code, size_t>> Stream::read_some(asio::mutable_buffer buffer) {
  if (tls_) return tls_->async_read_some(buffer, use_nothrow);
  if (auto* t = std::get_if<tcp::socket>(&socket_)) return t->async_read_some(buffer, use_nothrow);
  return std::get<unix_stream::socket>(socket_).async_read_some(buffer, use_nothrow);
}

awaitable<std::tuple<error_code, size_t>> Stream::write(asio::const_buffer buffer) {
  if (tls_) return asio::async_write(*tls_, buffer, use_nothrow);
  if (auto* t = std::get_if<tcp::socket>(&socket_)) return asio::async_write(*t, buffer, use_nothrow);
  return asio::async_write(std::get<unix_stream::socket>(socket_), buffer, use_nothrow);
}

void Stream::enable_try_write() {
  if (tls_) return;
  error_code ec;
  std::visit([&](auto& s) { s.non_blocking(true, ec); }, socket_);
  try_write_ok_ = !ec;
}

size_t Stream::try_write(asio::const_buffer buffer, error_code& ec) {
  if (!try_write_ok_) {
    ec = asio::error::would_block;
    return 0;
  }
  return std::visit([&](auto& s) { return s.write_some(buffer, ec); }, socket_);
}

awaitable<error_code> Stream::tls_accept(ssl::context& context) {
  auto* t = std::get_if<tcp::socket>(&socket_);
  if (t == nullptr) co_return asio::error::operation_not_supported;
  tls_ = std::make_unique<ssl::stream<tcp::socket&>>(*t, context);
  auto [ec] = co_await tls_->async_handshake(ssl::stream_base::server, use_nothrow);
  co_return ec;
}

awaitable<error_code> Stream::tls_connect(ssl::context& context, const std::string& sni_host,
                                          const std::string& verify_host) {
  auto* t = std::get_if<tcp::socket>(&socket_);
  if (t == nullptr) co_return asio::error::operation_not_supported;
  tls_ = std::make_unique<ssl::stream<tcp::socket&>>(*t, context);
  if (!sni_host.empty()) SSL_set_tlsext_host_name(tls_->native_handle(), sni_host.c_str());
  if (!verify_host.empty()) {
    tls_->set_verify_mode(ssl::verify_peer);
    tls_->set_verify_callback(ssl::host_name_verification(verify_host));
  }
  auto [ec] = co_await tls_->async_handshake(ssl::stream_base::client, use_nothrow);
  co_return ec;
}

awaitable<void> Stream::tls_shutdown() {
  if (!tls_) co_return;
  co_await tls_->async_shutdown(use_nothrow);
}

TlsInfo Stream::tls_info() const {
  TlsInfo info;
  if (!tls_) return info;
  SSL* ssl = tls_->native_handle();
  info.version = SSL_get_version(ssl);
  info.cipher = SSL_get_cipher_name(ssl);
  if (X509* cert = SSL_get_peer_certificate(ssl)) {
    char buf[512];
    X509_NAME_oneline(X509_get_subject_name(cert), buf, sizeof buf);
    info.client_cert_subject = buf;
    X509_free(cert);
  }
  return info;
}

std::string Stream::peer_address() const {
  if (const auto* t = std::get_if<tcp::socket>(&socket_)) {
    error_code ec;
    auto ep = t->remote_endpoint(ec);
    if (ec) return "unknown";
    auto addr = ep.address();
    std::string a = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
    return a + ":" + std::to_string(ep.port());
  }
  return "unix";
}

std::string Stream::peer_ip() const {
  if (const auto* t = std::get_if<tcp::socket>(&socket_)) {
    error_code ec;
    auto ep = t->remote_endpoint(ec);
    return ec ? "unknown" : ep.address().to_string();
  }
  return "local";
}

asio::any_io_executor Stream::executor() {
  return std::visit([](auto& s) -> asio::any_io_executor { return s.get_executor(); }, socket_);
}

void Stream::close() {
  std::visit(
      [](auto& s) {
        error_code ec;
        s.shutdown(asio::socket_base::shutdown_both, ec);
        s.close(ec);
      },
      socket_);
}

void Stream::cancel() {
  std::visit(
      [](auto& s) {
        error_code ec;
        s.cancel(ec);
      },
      socket_);
}

bool Stream::is_open() const {
  return std::visit([](const auto& s) { return s.is_open(); }, socket_);
}

void Stream::set_nodelay() {
  if (auto* t = std::get_if<tcp::socket>(&socket_)) {
    error_code ec;
    t->set_option(tcp::no_delay(true), ec);
  }
}

}  // namespace pgcloak::proxy
