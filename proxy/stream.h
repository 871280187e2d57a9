// A byte stream to a client or to PostgreSQL: TCP or a Unix socket, with TLS
// layered on after the SSLRequest exchange. The session code reads and writes
// through this one type whatever the transport is.
//
// A Stream is not movable once TLS has started (the SSL layer refers to the
// socket), so sessions hold them by unique_ptr.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <variant>

#include "proxy/asio.h"

namespace pgcloak::proxy {

struct TlsInfo {
  std::string version;  // e.g. "TLSv1.3"
  std::string cipher;
  std::string client_cert_subject;  // empty without a client certificate
};

class Stream {
 public:
  explicit Stream(tcp::socket socket) : socket_(std::move(socket)) {}
  explicit Stream(unix_stream::socket socket) : socket_(std::move(socket)) {}
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  awaitable<std::tuple<error_code, size_t>> read_some(asio::mutable_buffer buffer);
  awaitable<std::tuple<error_code, size_t>> write(asio::const_buffer buffer);
  // Relaying is mostly small messages that fit in the socket buffer. For a
  // plain socket, try_write() hands them to send(2) directly: no completion
  // is posted and no coroutine suspends, so one incoming message costs one
  // pass of the event loop instead of three. Returns the bytes taken (0 with
  // would_block when the kernel takes nothing, or always 0 under TLS, whose
  // records must go through the asynchronous path).
  size_t try_write(asio::const_buffer buffer, error_code& ec);
  // Puts a plain socket into non-blocking mode so try_write() never blocks.
  void enable_try_write();

  // Server side: the client sent SSLRequest and we answered 'S'.
  awaitable<error_code> tls_accept(ssl::context& context);
  // Client side towards PostgreSQL; verify_host empty = no host verification.
  awaitable<error_code> tls_connect(ssl::context& context, const std::string& sni_host,
                                    const std::string& verify_host);
  // Sends close_notify when TLS is up; bounded by the caller's deadline.
  awaitable<void> tls_shutdown();

  bool is_tls() const { return tls_ != nullptr; }
  bool is_unix() const { return std::holds_alternative<unix_stream::socket>(socket_); }
  TlsInfo tls_info() const;
  std::string peer_address() const;  // "ip:port", or "unix" for Unix sockets
  std::string peer_ip() const;       // "ip" only, "local" for Unix sockets
  asio::any_io_executor executor();

  // Aborts pending operations; safe to call more than once.
  void close();
  // Aborts pending operations but keeps the connection open.
  void cancel();
  bool is_open() const;
  void set_nodelay();

 private:
  std::variant<tcp::socket, unix_stream::socket> socket_;
  std::unique_ptr<ssl::stream<tcp::socket&>> tls_;
  bool try_write_ok_ = false;
};

}  // namespace pgcloak::proxy
