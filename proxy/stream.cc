#include "proxy/stream.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <climits>

#include <sys/socket.h>
#include <unistd.h>

namespace pgcloak::proxy {

awaitable<error_code> Stream::wait(asio::socket_base::wait_type what) {
  if (auto* t = std::get_if<tcp::socket>(&socket_)) {
    auto [ec] = co_await t->async_wait(what, use_nothrow);
    co_return ec;
  }
  auto [ec] = co_await std::get<unix_stream::socket>(socket_).async_wait(what, use_nothrow);
  co_return ec;
}

error_code ssl_error_code(SSL* ssl, int ret) {
  const int saved_errno = errno;
  const int e = SSL_get_error(ssl, ret);
  switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: return asio::error::would_block;
    case SSL_ERROR_ZERO_RETURN: return asio::error::eof;  // close_notify: a clean end of the stream
    case SSL_ERROR_SYSCALL: {
      if (unsigned long err = ERR_get_error(); err != 0) {
        ERR_clear_error();
        return {static_cast<int>(err), asio::error::get_ssl_category()};
      }
      if (saved_errno != 0) return {saved_errno, asio::error::get_system_category()};
      return asio::ssl::error::stream_truncated;
    }
    default: {
      unsigned long err = ERR_get_error();
      ERR_clear_error();
      if (err == 0) return asio::ssl::error::unspecified_system_error;
      return {static_cast<int>(err), asio::error::get_ssl_category()};
    }
  }
}

template <class Op>
awaitable<std::tuple<error_code, int>> Stream::ssl_io(Op op) {
  for (;;) {
    ERR_clear_error();
    errno = 0;
    const int r = op(ssl_.get());
    if (r > 0) co_return std::tuple{error_code{}, r};
    const int e = SSL_get_error(ssl_.get(), r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      error_code wec = co_await wait(e == SSL_ERROR_WANT_READ ? asio::socket_base::wait_read
                                                              : asio::socket_base::wait_write);
      if (wec) co_return std::tuple{wec, 0};
      continue;
    }
    co_return std::tuple{ssl_error_code(ssl_.get(), r), 0};
  }
}

awaitable<std::tuple<error_code, size_t>> Stream::read_some(asio::mutable_buffer buffer) {
  if (ssl_) {
    const int want = static_cast<int>(std::min<size_t>(buffer.size(), INT_MAX));
    auto [ec, n] = co_await ssl_io([&](SSL* s) { return SSL_read(s, buffer.data(), want); });
    co_return std::tuple{ec, static_cast<size_t>(n)};
  }
  if (auto* t = std::get_if<tcp::socket>(&socket_))
    co_return co_await t->async_read_some(buffer, use_nothrow);
  co_return co_await std::get<unix_stream::socket>(socket_).async_read_some(buffer, use_nothrow);
}

awaitable<std::tuple<error_code, size_t>> Stream::write(asio::const_buffer buffer) {
  if (ssl_) {
    const auto* p = static_cast<const uint8_t*>(buffer.data());
    size_t done = 0;
    while (done < buffer.size()) {
      const int chunk = static_cast<int>(std::min<size_t>(buffer.size() - done, INT_MAX));
      auto [ec, n] = co_await ssl_io([&](SSL* s) { return SSL_write(s, p + done, chunk); });
      if (ec) co_return std::tuple{ec, done};
      done += static_cast<size_t>(n);
    }
    co_return std::tuple{error_code{}, done};
  }
  if (auto* t = std::get_if<tcp::socket>(&socket_))
    co_return co_await asio::async_write(*t, buffer, use_nothrow);
  co_return co_await asio::async_write(std::get<unix_stream::socket>(socket_), buffer, use_nothrow);
}

namespace {

// The last socket read of the current SSL_read on this thread (relay loops
// read one connection at a time).
thread_local const BIO* probe_bio = nullptr;
thread_local bool probe_short = false;

long tls_read_probe(BIO* b, int oper, const char* /*argp*/, size_t len, int /*argi*/, long /*argl*/, int ret,
                    size_t* processed) {
  if (oper == (BIO_CB_READ | BIO_CB_RETURN)) {
    probe_bio = b;
    probe_short = ret > 0 && processed != nullptr && *processed < len;
  }
  return ret;
}

}  // namespace

void tls_read_probe_begin() {
  probe_bio = nullptr;
}

std::optional<bool> tls_read_probe_result(const BIO* rbio) {
  if (probe_bio == nullptr || probe_bio != rbio) return std::nullopt;
  return probe_short;
}

error_code Stream::start_tls(ssl::context& context) {
  auto* t = std::get_if<tcp::socket>(&socket_);
  if (t == nullptr) return asio::error::operation_not_supported;
  error_code ec;
  t->native_non_blocking(true, ec);
  if (ec) return ec;
  ssl_.reset(SSL_new(context.native_handle()));
  if (!ssl_ || SSL_set_fd(ssl_.get(), static_cast<int>(t->native_handle())) != 1) {
    ssl_.reset();
    return asio::error::no_memory;
  }
  // Partial writes let the relay loop hand OpenSSL whatever it has; read
  // ahead lets one recv(2) bring in several records.
  SSL_set_mode(ssl_.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_set_read_ahead(ssl_.get(), 1);
  BIO_set_callback_ex(SSL_get_rbio(ssl_.get()), tls_read_probe);
  return {};
}

awaitable<error_code> Stream::tls_handshake() {
  auto [ec, r] = co_await ssl_io([](SSL* s) { return SSL_do_handshake(s); });
  co_return ec;
}

awaitable<error_code> Stream::tls_accept(ssl::context& context) {
  if (error_code ec = start_tls(context)) co_return ec;
  SSL_set_accept_state(ssl_.get());
  co_return co_await tls_handshake();
}

awaitable<error_code> Stream::tls_connect(ssl::context& context, const std::string& sni_host,
                                          const std::string& verify_host) {
  if (error_code ec = start_tls(context)) co_return ec;
  SSL* s = ssl_.get();
  SSL_set_connect_state(s);
  if (!sni_host.empty()) SSL_set_tlsext_host_name(s, sni_host.c_str());
  if (!verify_host.empty()) {
    // verify-full: the chain against sslrootcert (set on the context) and
    // the name against the host, an IP address matching an iPAddress SAN.
    SSL_set_verify(s, SSL_VERIFY_PEER, nullptr);
    X509_VERIFY_PARAM* param = SSL_get0_param(s);
    error_code aec;
    asio::ip::make_address(verify_host, aec);
    if (!aec) {
      X509_VERIFY_PARAM_set1_ip_asc(param, verify_host.c_str());
    } else {
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      SSL_set1_host(s, verify_host.c_str());
    }
  }
  co_return co_await tls_handshake();
}

awaitable<void> Stream::tls_shutdown() {
  if (!ssl_) co_return;
  // SSL_shutdown returns 0 once our close_notify is sent; like PostgreSQL we
  // do not wait for the peer's.
  co_await ssl_io([](SSL* s) {
    const int r = SSL_shutdown(s);
    return r >= 0 ? 1 : r;
  });
}

DetachedStream Stream::detach() {
  DetachedStream d;
  d.is_unix = is_unix();
  d.ssl = std::move(ssl_);
  std::visit(
      [&](auto& s) {
        error_code ec;
        s.native_non_blocking(true, ec);
        if (!ec) d.fd = static_cast<int>(s.release(ec));
        if (ec) d.fd = -1;
      },
      socket_);
  return d;
}

std::unique_ptr<Stream> Stream::adopt(asio::any_io_executor executor, DetachedStream detached) {
  if (detached.fd < 0) return nullptr;
  error_code ec;
  std::unique_ptr<Stream> stream;
  if (detached.is_unix) {
    unix_stream::socket s(executor);
    s.assign(unix_stream(), detached.fd, ec);
    if (!ec) stream = std::make_unique<Stream>(std::move(s));
  } else {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (::getsockname(detached.fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ec = error_code(errno, boost::system::system_category());
    } else {
      tcp::socket s(executor);
      s.assign(addr.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), detached.fd, ec);
      if (!ec) stream = std::make_unique<Stream>(std::move(s));
    }
  }
  if (!stream) {
    detached.ssl.reset();
    ::close(detached.fd);
    return nullptr;
  }
  stream->ssl_ = std::move(detached.ssl);
  return stream;
}

TlsInfo Stream::tls_info() const {
  TlsInfo info;
  if (!ssl_) return info;
  SSL* ssl = ssl_.get();
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
