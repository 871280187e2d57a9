// Interop helper for proxy/scram against real PostgreSQL and real libpq,
// over a Unix socket, blocking I/O, one connection. Not part of pgcloak.
//
//   scram_tool login <socket>|tls:<port> <user> <password> <verifier>
//     Plays pgcloak's two halves: a client using <password> authenticates to
//     an in-memory ScramServer(<verifier>); the recovered ClientKey then logs
//     in to the real PostgreSQL at <socket> as <user>. Exit 0 on success.
//
//   scram_tool serve unix:<path>|tcp:<port> <user> <verifier> [<cert> <key>]
//     Listens on a Unix socket (e.g. unix:/tmp/x/.s.PGSQL.5999) or on
//     127.0.0.1:<port>, accepts one libpq client and runs ScramServer against
//     it. With a certificate and key it answers SSLRequest with TLS and
//     offers SCRAM-SHA-256-PLUS bound to that certificate. On success it sends
//     AuthenticationOk and then a FATAL "scram_tool: authenticated" so the
//     client (psql) prints proof that it accepted our server signature.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "protocol/backend.h"
#include "protocol/frontend.h"
#include "protocol/startup.h"
#include "protocol/wire.h"
#include "proxy/scram.h"

namespace {

using namespace pgcloak;  // NOLINT
using protocol::as_bytes;
using protocol::Buffer;

// Set once a TLS session is up on the served connection.
SSL* g_ssl = nullptr;

ssize_t do_write(int fd, const uint8_t* p, size_t n) {
  return g_ssl ? SSL_write(g_ssl, p, static_cast<int>(n)) : ::write(fd, p, n);
}
ssize_t do_read(int fd, uint8_t* p, size_t n) {
  return g_ssl ? SSL_read(g_ssl, p, static_cast<int>(n)) : ::read(fd, p, n);
}

bool write_all(int fd, const Buffer& b) {
  size_t done = 0;
  while (done < b.size()) {
    ssize_t n = do_write(fd, b.data() + done, b.size() - done);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool read_exact(int fd, uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t got = do_read(fd, p, n);
    if (got <= 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

// One typed message: type byte and body.
bool read_message(int fd, uint8_t& type, Buffer& body) {
  uint8_t head[5];
  if (!read_exact(fd, head, 5)) return false;
  type = head[0];
  uint32_t len = protocol::load_u32(head + 1);
  if (len < 4 || len > 1 << 20) return false;
  body.resize(len - 4);
  return read_exact(fd, body.data(), body.size());
}

int fail(const Error& e) {
  std::fprintf(stderr, "%s: %s%s%s\n", std::string(e.sqlstate).c_str(), e.message.c_str(),
               e.detail.empty() ? "" : " DETAIL: ", e.detail.c_str());
  return 1;
}

int fail_server(const Buffer& body) {
  auto err = protocol::ErrorResponse::decode(body);
  if (!err) return fail(err.error());
  const std::string* c = err->find(protocol::field::sqlstate);
  const std::string* m = err->find(protocol::field::message);
  std::fprintf(stderr, "server error %s: %s\n", c ? c->c_str() : "?", m ? m->c_str() : "?");
  return 1;
}

int connect_unix(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("connect");
    return -1;
  }
  return fd;
}

// Reads the next Authentication message, or reports an ErrorResponse. out
// holds views into body.
int expect_auth(int fd, protocol::AuthCode code, Buffer& body, protocol::Authentication& out) {
  uint8_t type = 0;
  if (!read_message(fd, type, body)) return std::fprintf(stderr, "connection lost\n"), 1;
  if (type == 'E') return fail_server(body);
  auto auth = protocol::Authentication::decode(body);
  if (type != 'R' || !auth) return std::fprintf(stderr, "unexpected message '%c'\n", type), 1;
  if (auth->code != code) return std::fprintf(stderr, "unexpected auth code %d\n", int(auth->code)), 1;
  out = *auth;
  return 0;
}

int login(const std::string& socket_path, const std::string& user, const std::string& password,
          const std::string& verifier_text) {
  auto verifier = proxy::parse_scram_verifier(verifier_text);
  if (!verifier) return fail(verifier.error());

  // Front half: the user's client against pgcloak's ScramServer.
  proxy::ScramServer front(*verifier, {user, std::nullopt, {}});
  proxy::ScramClient user_client(password);
  auto c1 = user_client.client_first();
  if (!c1) return fail(c1.error());
  auto s1 = front.handle_client_first(proxy::scram_sha_256, as_bytes(*c1));
  if (!s1) return fail(s1.error());
  auto c2 = user_client.handle_server_first(as_bytes(*s1));
  if (!c2) return fail(c2.error());
  auto s2 = front.handle_client_final(as_bytes(*c2));
  if (!s2) return fail(s2.error());
  std::printf("front: client authenticated, ClientKey recovered\n");

  // Back half: ClientKey against the real PostgreSQL.
  // "tls:<port>": 127.0.0.1 with SSLRequest and TLS, binding to PostgreSQL's
  // certificate; anything else is a Unix socket path.
  std::optional<std::vector<uint8_t>> binding;
  int fd = -1;
  if (socket_path.rfind("tls:", 0) == 0) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(std::stoi(socket_path.substr(4))));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
      return std::perror("connect"), 1;
    Buffer req;
    protocol::SSLRequest{}.encode(req);
    uint8_t answer = 0;
    if (!write_all(fd, req) || !read_exact(fd, &answer, 1) || answer != 'S') {
      return std::fprintf(stderr, "server refused TLS\n"), 1;
    }
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    g_ssl = SSL_new(ctx);
    SSL_set_fd(g_ssl, fd);
    if (SSL_connect(g_ssl) != 1) return std::fprintf(stderr, "TLS handshake failed\n"), 1;
    X509* peer = SSL_get1_peer_certificate(g_ssl);
    auto hash = proxy::tls_server_end_point_hash(peer);
    X509_free(peer);
    if (!hash) return fail(hash.error());
    binding = *hash;
  } else {
    fd = connect_unix(socket_path);
  }
  if (fd < 0) return 1;
  Buffer out;
  protocol::StartupMessage{3, 0, {{"user", user}, {"database", "postgres"}}}.encode(out);
  if (!write_all(fd, out)) return 1;
  Buffer in;
  protocol::Authentication auth;
  if (int rc = expect_auth(fd, protocol::AuthCode::sasl, in, auth)) return rc;
  proxy::ScramClient relay(*front.client_key(), front.verifier(), {"", binding, {}});
  auto mech = relay.select_mechanism(auth.mechanisms);
  if (!mech) return fail(mech.error());
  auto first = relay.client_first();
  if (!first) return fail(first.error());
  out.clear();
  protocol::SASLInitialResponse{*mech, as_bytes(*first)}.encode(out);
  if (!write_all(fd, out)) return 1;
  if (int rc = expect_auth(fd, protocol::AuthCode::sasl_continue, in, auth)) return rc;
  auto fin = relay.handle_server_first(auth.data);
  if (!fin) return fail(fin.error());
  out.clear();
  protocol::SASLResponse{as_bytes(*fin)}.encode(out);
  if (!write_all(fd, out)) return 1;
  if (int rc = expect_auth(fd, protocol::AuthCode::sasl_final, in, auth)) return rc;
  auto st = relay.handle_server_final(auth.data);
  if (!st) return fail(st.error());
  if (int rc = expect_auth(fd, protocol::AuthCode::ok, in, auth)) return rc;
  std::printf("back: PostgreSQL accepted the recovered ClientKey (%s) and its signature verified\n",
              mech->c_str());
  ::close(fd);
  return 0;
}

// Accepts one connection on "unix:<path>" or "tcp:<port>" (127.0.0.1).
int accept_one(const std::string& where) {
  int lfd = -1;
  if (where.rfind("unix:", 0) == 0) {
    std::string path = where.substr(5);
    lfd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    ::unlink(path.c_str());
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return std::perror("bind"), -1;
  } else if (where.rfind("tcp:", 0) == 0) {
    lfd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(std::stoi(where.substr(4))));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return std::perror("bind"), -1;
  } else {
    return -1;
  }
  if (::listen(lfd, 1) != 0) return -1;
  int fd = ::accept(lfd, nullptr, nullptr);
  ::close(lfd);
  if (where.rfind("unix:", 0) == 0) ::unlink(where.substr(5).c_str());
  return fd;
}

int serve(const std::string& where, const std::string& user, const std::string& verifier_text,
          const char* cert_file, const char* key_file) {
  auto verifier = proxy::parse_scram_verifier(verifier_text);
  if (!verifier) return fail(verifier.error());
  SSL_CTX* ctx = nullptr;
  std::optional<std::vector<uint8_t>> binding;
  if (cert_file != nullptr) {
    ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
      std::fprintf(stderr, "cannot load certificate or key\n");
      return 1;
    }
    auto hash = proxy::tls_server_end_point_hash(SSL_CTX_get0_certificate(ctx));
    if (!hash) return fail(hash.error());
    binding = *hash;
  }
  int fd = accept_one(where);
  if (fd < 0) return 1;

  uint8_t len_bytes[4];
  Buffer startup;
  for (;;) {
    if (!read_exact(fd, len_bytes, 4)) return 1;
    startup.resize(protocol::load_u32(len_bytes) - 4);
    if (!read_exact(fd, startup.data(), startup.size())) return 1;
    if (startup.size() == 4 && protocol::load_u32(startup.data()) == 80877103) {  // SSLRequest
      const uint8_t answer = ctx != nullptr ? 'S' : 'N';
      if (::write(fd, &answer, 1) != 1) return 1;
      if (ctx != nullptr) {
        g_ssl = SSL_new(ctx);
        SSL_set_fd(g_ssl, fd);
        if (SSL_accept(g_ssl) != 1) return std::fprintf(stderr, "TLS handshake failed\n"), 1;
      }
      continue;
    }
    if (startup.size() == 4 && protocol::load_u32(startup.data()) == 80877104) {  // GSSENCRequest
      const uint8_t answer = 'N';
      if (::write(fd, &answer, 1) != 1) return 1;
      continue;
    }
    break;
  }

  proxy::ScramServer server(*verifier, {user, g_ssl != nullptr ? binding : std::nullopt, {}});
  Buffer out;
  auto send_error = [&](const Error& e) {
    out.clear();
    protocol::ErrorResponse::from_error(e).encode(out);
    write_all(fd, out);
    if (g_ssl) SSL_shutdown(g_ssl);
    ::close(fd);
    return fail(e);
  };
  protocol::Authentication sasl;
  sasl.code = protocol::AuthCode::sasl;
  sasl.mechanisms = server.mechanisms();
  sasl.encode(out);
  write_all(fd, out);

  uint8_t type = 0;
  Buffer body;
  if (!read_message(fd, type, body) || type != 'p') return 1;
  auto initial = protocol::SASLInitialResponse::decode(body);
  if (!initial || !initial->data) return 1;
  std::printf("serve: client chose %s\n", initial->mechanism.c_str());
  auto s1 = server.handle_client_first(initial->mechanism, *initial->data);
  if (!s1) return send_error(s1.error());
  out.clear();
  protocol::Authentication cont;
  cont.code = protocol::AuthCode::sasl_continue;
  cont.data = as_bytes(*s1);
  cont.encode(out);
  write_all(fd, out);

  if (!read_message(fd, type, body) || type != 'p') return 1;
  auto s2 = server.handle_client_final(body);
  if (!s2) return send_error(s2.error());
  out.clear();
  protocol::Authentication final_msg;
  final_msg.code = protocol::AuthCode::sasl_final;
  final_msg.data = as_bytes(*s2);
  final_msg.encode(out);
  protocol::Authentication ok;
  ok.code = protocol::AuthCode::ok;
  ok.encode(out);
  write_all(fd, out);
  std::printf("serve: client authenticated (channel binding %s)\n",
              server.channel_binding_used() ? "used" : "not used");
  send_error(Error::make(sqlstate::admin_shutdown, "scram_tool: authenticated", Severity::fatal));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 6 && std::string(argv[1]) == "login") return login(argv[2], argv[3], argv[4], argv[5]);
  if ((argc == 5 || argc == 7) && std::string(argv[1]) == "serve") {
    return serve(argv[2], argv[3], argv[4], argc == 7 ? argv[5] : nullptr, argc == 7 ? argv[6] : nullptr);
  }
  std::fprintf(stderr,
               "usage: scram_tool login <socket> <user> <password> <verifier>\n"
               "       scram_tool serve unix:<path>|tcp:<port> <user> <verifier> [<cert.pem> <key.pem>]\n");
  return 2;
}
