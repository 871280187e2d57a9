// A byte stream to a client or to PostgreSQL: TCP or a Unix socket, with TLS
// layered on after the SSLRequest exchange. Session start-up (negotiation and
// authentication) reads and writes through this type with coroutines; once a
// session relays, detach() hands the descriptor and its TLS state to a relay
// loop (relay_loop.h), which drives them without Asio.
//
// TLS is OpenSSL on the socket itself (SSL_set_fd), not Asio's ssl::stream:
// the relay loop must be able to continue the very same TLS session with
// plain non-blocking SSL_read/SSL_write, which Asio's memory-BIO engine does
// not allow.
#pragma once

#include <openssl/ssl.h>

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

struct SslDeleter {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslPtr = std::unique_ptr<SSL, SslDeleter>;

// Whether the socket under an SSL object was drained by the last read
// OpenSSL made from it during the latest SSL_read on this thread: set on
// return from each read of a socket BIO (start_tls installs the probe).
// tls_read_probe_begin() before SSL_read; tls_read_probe_result(rbio)
// after it: nullopt when that SSL_read read nothing from this socket (it was
// served from OpenSSL's buffer), else whether the read returned less than
// asked, i.e. the kernel's receive queue was empty. With read-ahead that
// lets the relay loop wait for the next edge instead of asking again (one
// recv(2) per message instead of two, as for plain sockets).
void tls_read_probe_begin();
std::optional<bool> tls_read_probe_result(const BIO* rbio);

// What a relay loop takes over: an open non-blocking descriptor and, when
// TLS is up, the SSL object bound to it. Whoever holds it closes both.
struct DetachedStream {
  int fd = -1;
  SslPtr ssl;
  bool is_unix = false;
};

class Stream {
 public:
  explicit Stream(tcp::socket socket) : socket_(std::move(socket)) {}
  explicit Stream(unix_stream::socket socket) : socket_(std::move(socket)) {}
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  awaitable<std::tuple<error_code, size_t>> read_some(asio::mutable_buffer buffer);
  // Writes all of buffer (or fails).
  awaitable<std::tuple<error_code, size_t>> write(asio::const_buffer buffer);

  // Server side: the client sent SSLRequest and we answered 'S'.
  awaitable<error_code> tls_accept(ssl::context& context);
  // Client side towards PostgreSQL; verify_host empty = no host verification
  // (sslmode prefer/require).
  awaitable<error_code> tls_connect(ssl::context& context, const std::string& sni_host,
                                    const std::string& verify_host);
  // Sends close_notify when TLS is up; bounded by the caller's deadline.
  awaitable<void> tls_shutdown();

  // Gives up the descriptor (and TLS state) for relaying. Nothing may be
  // pending on the stream; it is unusable afterwards.
  DetachedStream detach();
  // The reverse: a stream on `executor` for a detached descriptor (the
  // upstream pool takes connections back from relay loops this way). On
  // failure the descriptor is closed and nullptr returned.
  static std::unique_ptr<Stream> adopt(asio::any_io_executor executor, DetachedStream detached);

  bool is_tls() const { return ssl_ != nullptr; }
  bool is_unix() const { return std::holds_alternative<unix_stream::socket>(socket_); }
  SSL* ssl() const { return ssl_.get(); }
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
  awaitable<error_code> wait(asio::socket_base::wait_type what);
  // Runs an SSL call until it completes, waiting for readability or
  // writability as OpenSSL asks. Returns the call's positive result or an
  // error (eof for a clean TLS close).
  template <class Op>
  awaitable<std::tuple<error_code, int>> ssl_io(Op op);
  awaitable<error_code> tls_handshake();
  error_code start_tls(ssl::context& context);

  std::variant<tcp::socket, unix_stream::socket> socket_;
  SslPtr ssl_;
};

// Maps a failed SSL_* call (its return value) to an error_code, consuming
// OpenSSL's error queue. want_read/want_write are reported as would_block.
error_code ssl_error_code(SSL* ssl, int ret);

}  // namespace pgcloak::proxy
