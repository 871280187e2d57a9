#include "proxy/audit_syslog.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <deque>
#include <optional>
#include <system_error>
#include <utility>

#include "proxy/log.h"
#include "proxy/openssl_errors.h"

namespace pgcloak::proxy {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr unsigned max_facility = 23;  // RFC 5424 table 1: local7
constexpr size_t max_hostname = 255;   // RFC 5424 section 6
constexpr size_t max_app_name = 48;
// Frames are handed to the socket (or to SSL_write) in chunks of about this
// size, so a large batch does not need one buffer for all of it.
constexpr size_t send_chunk = size_t{64} * 1024;
// What was sent on a connection is sent again on the next one when the
// first ends abnormally: TCP syslog has no acknowledgement, and a receiver
// that stops (or crashes) discards what it had not yet read from its socket,
// which the kernel already counted as delivered. More than the socket
// buffers of both ends can hold, so nothing handed to a receiver that then
// went away is missing from its successor (duplicates are dropped by seq).
constexpr size_t resend_window = size_t{4} << 20;
// A receiver has nothing to say on a syslog connection (RFC 6587, RFC 5425
// are one-way); bound how much we read and throw away when checking it.
constexpr int max_drain_reads = 64;

struct SslCtxDeleter {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxDeleter>;
struct SslDeleter {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslPtr = std::unique_ptr<SSL, SslDeleter>;
struct AddrinfoDeleter {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};

std::string errno_text(int err) {
  std::string s = std::error_code(err, std::system_category()).message();
  // "Connection refused" -> "connection refused": it follows a colon.
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

// PRINTUSASCII (RFC 5424 section 6): the header fields may hold nothing else.
bool printusascii(std::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 33 || u > 126) return false;
  }
  return true;
}

bool is_ip_literal(const std::string& host) {
  in6_addr addr6{};
  in_addr addr4{};
  return inet_pton(AF_INET, host.c_str(), &addr4) == 1 || inet_pton(AF_INET6, host.c_str(), &addr6) == 1;
}

enum class WaitResult { ready, timeout, failed };

// poll() for events on fd until deadline, restarting on EINTR.
WaitResult wait_until(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return WaitResult::timeout;
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX)));
    if (r > 0) return WaitResult::ready;  // POLLERR/POLLHUP too: the next call reports why
    if (r == 0) continue;                 // re-checks the deadline
    if (errno != EINTR) return WaitResult::failed;
  }
}

Error config_error(std::string msg) {
  return Error::make(sqlstate::config_file_error, std::move(msg));
}

class SyslogSink final : public AuditSink {
 public:
  SyslogSink(rules::AuditSyslogConfig config, SyslogSinkOptions options, SyslogHeader header, SslCtxPtr ctx)
      : config_(std::move(config)), options_(options), header_(std::move(header)), ctx_(std::move(ctx)) {
    endpoint_ = config_.host.find(':') != std::string::npos ? "[" + config_.host + "]" : config_.host;
    endpoint_ += ":" + std::to_string(config_.port);
  }
  SyslogSink(const SyslogSink&) = delete;
  SyslogSink& operator=(const SyslogSink&) = delete;
  ~SyslogSink() override { disconnect(Close::graceful); }

  Status write(std::span<const std::string> lines) override;
  Status sync() override;
  std::string describe() const override {
    return std::string("syslog ") + (ctx_ ? "tls://" : "tcp://") + endpoint_;
  }

 private:
  Status connect();
  Status connect_tcp(Clock::time_point deadline);
  Status handshake(Clock::time_point deadline);
  std::optional<std::string> connection_lost();
  Status send_bytes(std::string_view data, std::optional<Clock::time_point> deadline);
  Status flush_tls(std::optional<Clock::time_point> deadline);
  Status send_payload(std::string_view data);
  enum class Close { graceful, abort };
  void drain_input();
  bool close_gracefully();
  void disconnect(Close how = Close::abort);
  Error send_error(std::string what) const {
    return Error::make(sqlstate::connection_failure,
                       "sending to syslog receiver " + endpoint_ + " failed: " + what);
  }

  rules::AuditSyslogConfig config_;
  SyslogSinkOptions options_;
  SyslogHeader header_;
  SslCtxPtr ctx_;  // null = plain TCP
  std::string endpoint_;
  int fd_ = -1;  // non-blocking
  // TLS runs on memory BIOs and all socket I/O is ours: one code path for
  // deadlines, and send(MSG_NOSIGNAL) so a reset connection never raises
  // SIGPIPE (OpenSSL's socket BIO uses write(2)).
  SslPtr ssl_;
  BIO* rbio_ = nullptr;  // network -> OpenSSL; owned by ssl_
  BIO* wbio_ = nullptr;  // OpenSSL -> network; owned by ssl_
  bool tls_up_ = false;
  std::optional<Error> failed_;  // the last write() failed; cleared by a good one
  std::string frames_;
  // Frames sent recently (at most resend_window bytes), oldest first, and
  // whether the connection they went to ended abnormally.
  std::deque<std::string> sent_;
  size_t sent_bytes_ = 0;
  bool resend_ = false;
  void remember_sent(std::string frames);
};

void SyslogSink::remember_sent(std::string frames) {
  sent_bytes_ += frames.size();
  sent_.push_back(std::move(frames));
  while (sent_bytes_ > resend_window && sent_.size() > 1) {
    sent_bytes_ -= sent_.front().size();
    sent_.pop_front();
  }
}

Status SyslogSink::write(std::span<const std::string> lines) {
  if (fd_ >= 0) {
    // The receiver may have closed the connection since the last write
    // (restart, idle timeout). Sending into it would "succeed" into the
    // kernel and be lost with the RST, so reconnect first; rsyslog's own
    // TCP forwarder checks the same way before sending.
    if (auto why = connection_lost()) {
      log::warn("audit: syslog receiver " + endpoint_ + " " + *why + "; reconnecting");
      disconnect();
    }
  }
  if (fd_ < 0) {
    if (auto st = connect(); !st) {
      failed_ = st.error();
      return st;
    }
  }
  if (resend_) {
    // The last connection ended abnormally: what it may not have delivered
    // goes first (see resend_window).
    for (const auto& f : sent_) {
      if (auto st = send_payload(f); !st) {
        disconnect();
        failed_ = st.error();
        return st;
      }
    }
    resend_ = false;
  }
  // One timestamp per batch: these lines are sent now; each record carries
  // its own event time in the JSON.
  const auto now = std::chrono::system_clock::now();
  frames_.clear();
  for (const auto& line : lines) {
    append_syslog_frame(frames_, header_, now, line);
    if (frames_.size() >= send_chunk || &line == &lines.back()) {
      if (auto st = send_payload(frames_); !st) {
        // The receiver may hold a prefix of this batch: the writer re-sends
        // all of it on a new connection (duplicates, dropped by seq). An
        // incomplete frame is discarded by an octet-counting receiver when
        // the connection closes.
        disconnect();
        failed_ = st.error();
        return st;
      }
      remember_sent(std::move(frames_));
      frames_ = std::string();
    }
  }
  if (frames_.capacity() > 16 * send_chunk) frames_ = std::string();
  failed_.reset();
  return ok_status();
}

Status SyslogSink::sync() {
  // write() hands everything to the kernel before it returns, so there is
  // nothing to flush: report whether that is still true.
  if (failed_) return *failed_;
  if (fd_ >= 0) {
    if (auto why = connection_lost()) {
      disconnect();
      failed_ = Error::make(sqlstate::connection_failure,
                            "syslog receiver " + endpoint_ + " " + *why +
                                " after the last write; records sent since may not have been received");
      return *failed_;
    }
  }
  return ok_status();
}

Status SyslogSink::connect() {
  const auto deadline = Clock::now() + config_.connect_timeout;
  if (auto st = connect_tcp(deadline); !st) return st;
  if (ctx_) {
    if (auto st = handshake(deadline); !st) {
      disconnect();
      return st;
    }
  }
  return ok_status();
}

Status SyslogSink::connect_tcp(Clock::time_point deadline) {
  auto fail = [&](const std::string& why) -> Error {
    return Error::make(sqlstate::sqlclient_unable_to_establish_sqlconnection,
                       "cannot connect to syslog receiver " + endpoint_ + ": " + why);
  };
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(config_.port);
  if (int rc = getaddrinfo(config_.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return fail(rc == EAI_SYSTEM ? errno_text(errno)
                                 : std::string("cannot resolve host: ") + gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, AddrinfoDeleter> list(found);
  std::string last = "no address";
  for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    const int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last = errno_text(errno);
      continue;
    }
    int err = 0;
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) err = errno;
    if (err == EINPROGRESS) {
      switch (wait_until(fd, POLLOUT, deadline)) {
        case WaitResult::ready: {
          socklen_t len = sizeof err;
          if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
          break;
        }
        case WaitResult::timeout:
          ::close(fd);
          return fail("timed out after " + std::to_string(config_.connect_timeout.count()) + " ms");
        case WaitResult::failed: err = errno; break;
      }
    }
    if (err != 0) {
      last = errno_text(err);
      ::close(fd);
      continue;
    }
    // Frames are batched by write(); send each batch now. Keepalive finds a
    // receiver that vanished from an idle connection.
    const int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    fd_ = fd;
    return ok_status();
  }
  return fail(last);
}

Status SyslogSink::handshake(Clock::time_point deadline) {
  ssl_.reset(SSL_new(ctx_.get()));
  rbio_ = BIO_new(BIO_s_mem());
  wbio_ = BIO_new(BIO_s_mem());
  if (!ssl_ || rbio_ == nullptr || wbio_ == nullptr) {
    BIO_free(rbio_);
    BIO_free(wbio_);
    rbio_ = wbio_ = nullptr;
    return Error::make(sqlstate::internal_error,
                       "cannot set up TLS for syslog receiver " + endpoint_ + ": " + openssl_errors());
  }
  SSL_set_bio(ssl_.get(), rbio_, wbio_);
  SSL_set_connect_state(ssl_.get());
  // RFC 5425 section 5.2: the receiver's certificate must match the name we
  // connect to: an IP SAN for an address, a DNS SAN otherwise. SNI only
  // carries host names (RFC 6066 section 3 forbids literal addresses).
  auto fail = [&](const std::string& why) -> Error {
    return Error::make(sqlstate::sqlclient_unable_to_establish_sqlconnection,
                       "TLS handshake with syslog receiver " + endpoint_ + " failed: " + why);
  };
  const bool names_set =
      is_ip_literal(config_.host)
          ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), config_.host.c_str()) == 1
          : SSL_set_tlsext_host_name(ssl_.get(), config_.host.c_str()) == 1 &&
                SSL_set1_host(ssl_.get(), config_.host.c_str()) == 1;
  if (!names_set) return fail("cannot set the expected host name: " + openssl_errors());
  std::array<char, 16384> buf{};
  for (;;) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_.get());
    const int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_.get(), r);
    if (r != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
      std::string why = openssl_errors();
      if (why.empty()) why = "error " + std::to_string(e);
      if (const long v = SSL_get_verify_result(ssl_.get()); v != X509_V_OK) {
        why += std::string(": ") + X509_verify_cert_error_string(v);
      }
      // Let the receiver log why (the alert is in wbio_); best effort.
      (void)flush_tls(Clock::now() + milliseconds(100));
      return fail(why);
    }
    if (auto st = flush_tls(deadline); !st) return fail(st.error().message);
    if (r == 1) break;
    if (e != SSL_ERROR_WANT_READ) continue;
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
    if (n > 0) {
      BIO_write(rbio_, buf.data(), static_cast<int>(n));
    } else if (n == 0) {
      return fail("the receiver closed the connection");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      switch (wait_until(fd_, POLLIN, deadline)) {
        case WaitResult::ready: break;
        case WaitResult::timeout:
          return fail("timed out after " + std::to_string(config_.connect_timeout.count()) +
                      " ms (does the receiver speak TLS on this port?)");
        case WaitResult::failed: return fail(errno_text(errno));
      }
    } else if (errno != EINTR) {
      return fail(errno_text(errno));
    }
  }
  tls_up_ = true;
  return ok_status();
}

// Whether the receiver closed or reset the connection. Never blocks.
std::optional<std::string> SyslogSink::connection_lost() {
  std::array<char, 16384> buf{};
  for (int i = 0; i < max_drain_reads; ++i) {
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n == 0) return "closed the connection";
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return "reset the connection (" + errno_text(errno) + ")";
    }
    // Plain TCP: nothing is expected, drop it. TLS: session tickets, key
    // updates or close_notify, which OpenSSL handles below.
    if (ssl_) BIO_write(rbio_, buf.data(), static_cast<int>(n));
  }
  if (ssl_) {
    for (int i = 0; i < max_drain_reads; ++i) {
      ERR_clear_error();
      const int r = SSL_read(ssl_.get(), buf.data(), static_cast<int>(buf.size()));
      if (r > 0) continue;  // application data from a receiver is meaningless: drop
      const int e = SSL_get_error(ssl_.get(), r);
      if (e == SSL_ERROR_WANT_READ) break;
      if (e == SSL_ERROR_ZERO_RETURN) return "closed the TLS session (close_notify)";
      const std::string why = openssl_errors();
      return "broke the TLS session" + (why.empty() ? std::string() : " (" + why + ")");
    }
  }
  return std::nullopt;
}

// Sends all of data. With a deadline (the handshake) that is the limit;
// without, the send fails once it made no progress for send_timeout.
Status SyslogSink::send_bytes(std::string_view data, std::optional<Clock::time_point> deadline) {
  auto stall_deadline = deadline ? *deadline : Clock::now() + options_.send_timeout;
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<size_t>(n);
      if (!deadline) stall_deadline = Clock::now() + options_.send_timeout;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return send_error(errno_text(errno));
    switch (wait_until(fd_, POLLOUT, stall_deadline)) {
      case WaitResult::ready: break;
      case WaitResult::timeout:
        if (deadline) return send_error("timed out");
        return send_error("the receiver stopped reading (no progress for " +
                          std::to_string(options_.send_timeout.count()) + " ms)");
      case WaitResult::failed: return send_error(errno_text(errno));
    }
  }
  return ok_status();
}

Status SyslogSink::flush_tls(std::optional<Clock::time_point> deadline) {
  std::array<char, 16384> buf{};
  for (;;) {
    const int n = BIO_read(wbio_, buf.data(), static_cast<int>(buf.size()));
    if (n <= 0) return ok_status();
    if (auto st = send_bytes({buf.data(), static_cast<size_t>(n)}, deadline); !st) return st;
  }
}

Status SyslogSink::send_payload(std::string_view data) {
  if (!ssl_) return send_bytes(data, std::nullopt);
  // The write BIO is memory, so SSL_write takes everything at once; the
  // records go out through flush_tls() with the stall timeout.
  ERR_clear_error();
  const int r = SSL_write(ssl_.get(), data.data(), static_cast<int>(data.size()));
  if (r <= 0) {
    const std::string why = openssl_errors();
    return send_error("SSL_write: " +
                      (why.empty() ? "error " + std::to_string(SSL_get_error(ssl_.get(), r)) : why));
  }
  return flush_tls(std::nullopt);
}

// Reads and drops whatever the receiver sent, without waiting.
void SyslogSink::drain_input() {
  std::array<char, 16384> buf{};
  for (int i = 0; i < max_drain_reads; ++i) {
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n > 0 || (n < 0 && errno == EINTR)) continue;
    break;
  }
}

// Ends a healthy connection so that everything written reaches the
// receiver. After close(), anything the receiver sends (a TLS session
// ticket, its close_notify) makes Linux answer with RST and discard the
// unsent tail of our send queue (RFC 1122 section 4.2.2.13); rsyslog then
// logs "Incomplete frame at end of stream" and loses the last records. So:
// close_notify (RFC 5425 section 4.4), FIN after the queued data
// (shutdown), and wait, reading and dropping, until the receiver closes its
// side, which it does only after reading our FIN. Bounded by send_timeout.
// True when the receiver closed cleanly.
bool SyslogSink::close_gracefully() {
  const auto deadline = Clock::now() + options_.send_timeout;
  if (ssl_ && tls_up_) {
    ERR_clear_error();
    (void)SSL_shutdown(ssl_.get());
    if (!flush_tls(deadline)) return false;
  }
  if (::shutdown(fd_, SHUT_WR) != 0) return false;
  std::array<char, 16384> buf{};
  for (;;) {
    const ssize_t n = ::recv(fd_, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n == 0) return true;
    if (n > 0 || errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
    if (wait_until(fd_, POLLIN, deadline) != WaitResult::ready) return false;
  }
}

void SyslogSink::disconnect(Close how) {
  if (fd_ < 0) return;
  if (how == Close::abort) resend_ = !sent_.empty();
  if (how == Close::graceful) {
    if (!close_gracefully()) {
      log::warn("audit: syslog receiver " + endpoint_ +
                " did not confirm the end of the connection; the last records may not have arrived");
    }
  } else if (ssl_ && tls_up_) {
    // The connection failed or the receiver closed it: close_notify as a
    // courtesy (RFC 5425 section 4.4), without waiting.
    ERR_clear_error();
    (void)SSL_shutdown(ssl_.get());
    std::array<char, 1024> buf{};
    const int n = BIO_read(wbio_, buf.data(), static_cast<int>(buf.size()));
    if (n > 0) (void)::send(fd_, buf.data(), static_cast<size_t>(n), MSG_NOSIGNAL | MSG_DONTWAIT);
  }
  ERR_clear_error();
  drain_input();  // closing with unread input would send RST as well
  ::close(fd_);
  fd_ = -1;
  ssl_.reset();
  rbio_ = wbio_ = nullptr;
  tls_up_ = false;
}

}  // namespace

void append_syslog_frame(std::string& out, const SyslogHeader& header,
                         std::chrono::system_clock::time_point at, std::string_view msg) {
  using namespace std::chrono;
  // TIMESTAMP: RFC 3339 full-date "T" full-time in UTC ("Z") with six
  // fractional digits, the most RFC 5424 section 6.2.3 allows.
  const auto since = floor<microseconds>(at).time_since_epoch();
  const auto secs = floor<seconds>(since);
  const auto micros = (since - secs).count();
  const std::time_t t = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::array<char, 64> head{};
  const int n = std::snprintf(head.data(), head.size(), "<%u>1 %04d-%02d-%02dT%02d:%02d:%02d.%06lldZ ",
                              header.facility * 8 + header.severity, tm.tm_year + 1900, tm.tm_mon + 1,
                              tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(micros));
  const std::string_view pri_version_time(head.data(), n > 0 ? static_cast<size_t>(n) : 0);
  // PROCID, MSGID ("audit", "alert"), STRUCTURED-DATA "-" (NILVALUE: the record's
  // fields are all in the JSON), then MSG. MSG is UTF-8 JSON without the
  // BOM that RFC 5424 section 6.4 asks for: RFC 8259 section 8.1 forbids a
  // BOM in front of networked JSON, and rsyslog keeps it as part of the
  // message (rsyslog issue #284), so the received line would not be JSON.
  const size_t len = pri_version_time.size() + header.hostname.size() + 1 + header.app_name.size() + 1 +
                     header.procid.size() + 1 + header.msgid.size() + sizeof(" - ") - 1 + msg.size();
  out += std::to_string(len);
  out += ' ';
  out += pri_version_time;
  out += header.hostname;
  out += ' ';
  out += header.app_name;
  out += ' ';
  out += header.procid;
  out += ' ';
  out += header.msgid;
  out += " - ";
  out += msg;
}

Result<std::unique_ptr<AuditSink>> make_syslog_sink(const rules::AuditSyslogConfig& config) {
  return make_syslog_sink(config, SyslogSinkOptions{});
}

Result<std::unique_ptr<AuditSink>> make_syslog_sink(const rules::AuditSyslogConfig& config,
                                                    const SyslogSinkOptions& options) {
  const std::string& sec = options.section;
  if (config.host.empty()) return config_error(sec + ".host is empty");
  if (config.port == 0) return config_error(sec + ".port must be 1..65535");
  if (config.facility > max_facility) {
    return config_error(sec + ".facility must be 0..23 (RFC 5424 section 6.2.1), not " +
                        std::to_string(config.facility));
  }
  if (config.connect_timeout.count() <= 0) return config_error(sec + ".connect_timeout must be positive");
  if (options.send_timeout.count() <= 0) return config_error("syslog send timeout must be positive");
  SyslogHeader header;
  header.facility = config.facility;
  header.severity = std::min(options.severity, 7U);
  header.msgid = options.msgid.empty() ? "-" : options.msgid;
  header.procid = std::to_string(::getpid());
  if (config.app_name.size() > max_app_name || !printusascii(config.app_name)) {
    return config_error(sec +
                        ".app_name must be at most 48 printable ASCII characters without spaces "
                        "(RFC 5424 section 6.2.5)");
  }
  header.app_name = config.app_name.empty() ? "-" : config.app_name;
  if (!config.hostname.empty()) {
    if (config.hostname.size() > max_hostname || !printusascii(config.hostname)) {
      return config_error(sec +
                          ".hostname must be at most 255 printable ASCII characters without spaces "
                          "(RFC 5424 section 6.2.4)");
    }
    header.hostname = config.hostname;
  } else {
    std::array<char, 256> buf{};
    if (gethostname(buf.data(), buf.size() - 1) == 0) header.hostname = buf.data();
    // Section 6.2.4: NILVALUE when the host name is not known (or unusable).
    if (header.hostname.empty() || header.hostname.size() > max_hostname || !printusascii(header.hostname)) {
      header.hostname = "-";
    }
  }
  SslCtxPtr ctx;
  if (config.tls) {
    if (config.ca_file.empty()) {
      return config_error(sec + ".ca_file is required with " + sec +
                          ".tls: the receiver's certificate "
                          "is verified against it (RFC 5425 section 5)");
    }
    ERR_clear_error();
    ctx.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx) return config_error("cannot create a TLS context for " + sec + ": " + openssl_errors());
    // RFC 9662 updates RFC 5425 to TLS 1.2 at least; no compression (CRIME)
    // and no renegotiation, as for pgcloak's other TLS connections.
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
    SSL_CTX_set_options(ctx.get(), SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if (SSL_CTX_load_verify_locations(ctx.get(), config.ca_file.c_str(), nullptr) != 1) {
      return config_error("cannot load " + sec + ".ca_file \"" + config.ca_file + "\": " + openssl_errors());
    }
  }
  return std::unique_ptr<AuditSink>(
      std::make_unique<SyslogSink>(config, options, std::move(header), std::move(ctx)));
}

}  // namespace pgcloak::proxy
