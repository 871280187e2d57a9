// The HTTP endpoint over real loopback sockets: routes, the bearer token,
// limits, timeouts, TLS and shutdown. The server runs on its own io_context
// thread; the tests are blocking clients built on Beast's parser.
#include "proxy/http_endpoint.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "proxy/base64.h"

namespace pgcloak::proxy {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using namespace std::chrono_literals;

const std::string token = "0123456789abcdef0123456789abcdef";

struct Reply {
  unsigned status = 0;
  http::fields headers;
  std::string body;
  bool keep_alive = false;
};

// Reads one response; nullopt if the server closed or reset instead.
template <class Stream>
std::optional<Reply> read_reply(Stream& s, beast::flat_buffer& buf, bool head = false) {
  http::response_parser<http::string_body> p;
  p.skip(head);
  error_code ec;
  http::read(s, buf, p, ec);
  if (ec) return std::nullopt;
  Reply r;
  r.status = p.get().result_int();
  r.headers = p.get().base();
  r.body = p.get().body();
  r.keep_alive = p.get().keep_alive();
  return r;
}

// True once the server has closed the connection (EOF or reset).
bool closed_by_server(tcp::socket& s, std::chrono::milliseconds within = 3000ms) {
  s.non_blocking(false);
  timeval tv{static_cast<time_t>(within.count() / 1000),
             static_cast<suseconds_t>(within.count() % 1000 * 1000)};
  ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::array<char, 4096> b{};
  for (;;) {
    error_code ec;
    s.read_some(asio::buffer(b), ec);
    if (ec == asio::error::eof || ec == asio::error::connection_reset) return true;
    if (ec) return false;  // timed out: still open
  }
}

std::string get(std::string_view path, std::string_view extra_headers = "") {
  return "GET " + std::string(path) + " HTTP/1.1\r\nHost: localhost\r\n" + std::string(extra_headers) +
         "\r\n";
}
std::string auth() {
  return "Authorization: Bearer " + token + "\r\n";
}

class HttpEndpointTest : public ::testing::Test {
 protected:
  void start(HttpEndpointOptions o = {}) {
    o.host = "127.0.0.1";
    o.port = 0;
    endpoint_ = std::make_unique<HttpEndpoint>(ctx_, std::move(o));
    endpoint_->add_route("/metrics", [](const HttpRequest&) {
      return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", "pgcloak_up 1\n"};
    });
    endpoint_->add_route("/healthz", [](const HttpRequest&) {
      return HttpResponse{200, "text/plain", "ok\n"};
    });
    endpoint_->add_route("/readyz", [](const HttpRequest&) {
      return HttpResponse{503, "text/plain", "not ready\n"};
    });
    endpoint_->add_route("/echo", [](const HttpRequest& r) {
      return HttpResponse{200, "text/plain",
                          std::string(r.method) + " " + std::string(r.path) + " ? " + std::string(r.query)};
    });
    endpoint_->add_route("/boom",
                         [](const HttpRequest&) -> HttpResponse { throw std::runtime_error("bug"); });
    endpoint_->add_action("/act", [](const HttpRequest& r) {
      return HttpResponse{200, "text/plain", std::string(r.method) + " " + std::string(r.query)};
    });
    auto st = endpoint_->start();
    ASSERT_TRUE(st.ok()) << st.error().message;
    port_ = endpoint_->local_endpoint().port();
    ASSERT_NE(port_, 0);
    runner_ = std::thread([this] {
      ctx_.run();
      done_.set_value();
    });
  }

  void TearDown() override {
    if (!endpoint_) return;
    endpoint_->stop();
    guard_.reset();
    // stop() must end every connection: the io_context then runs out of work.
    if (done_.get_future().wait_for(5s) != std::future_status::ready) {
      ADD_FAILURE() << "connections still open 5 s after stop()";
      ctx_.stop();
    }
    runner_.join();
    endpoint_.reset();
  }

  tcp::socket connect() {
    tcp::socket s(client_ctx_);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_));
    return s;
  }

  // One request on a new connection.
  std::optional<Reply> request(const std::string& raw, bool head = false) {
    auto s = connect();
    asio::write(s, asio::buffer(raw));
    beast::flat_buffer buf;
    return read_reply(s, buf, head);
  }

  void wait_for_open(size_t n) {
    for (int i = 0; i < 300 && endpoint_->open_connections() != n; ++i) std::this_thread::sleep_for(10ms);
    ASSERT_EQ(endpoint_->open_connections(), n);
  }

  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_ = asio::make_work_guard(ctx_);
  asio::io_context client_ctx_;
  std::unique_ptr<HttpEndpoint> endpoint_;
  std::thread runner_;
  std::promise<void> done_;
  uint16_t port_ = 0;
};

HttpEndpointOptions with_token() {
  HttpEndpointOptions o;
  o.token = token;
  return o;
}

TEST_F(HttpEndpointTest, ServesARouteAndKeepsTheConnectionAlive) {
  start(with_token());
  auto s = connect();
  beast::flat_buffer buf;
  for (int i = 0; i < 3; ++i) {
    asio::write(s, asio::buffer(get("/metrics", auth())));
    auto r = read_reply(s, buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200U);
    EXPECT_EQ(r->body, "pgcloak_up 1\n");
    EXPECT_EQ(r->headers[http::field::content_type], "text/plain; version=0.0.4; charset=utf-8");
    EXPECT_EQ(r->headers[http::field::cache_control], "no-store");
    EXPECT_TRUE(r->keep_alive);
  }
  // Two pipelined requests in one write get two answers, in order.
  asio::write(s, asio::buffer(get("/echo?a=1", auth()) + get("/echo?b=2", auth())));
  auto first = read_reply(s, buf);
  auto second = read_reply(s, buf);
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->body, "GET /echo ? a=1");
  EXPECT_EQ(second->body, "GET /echo ? b=2");
  // Connection: close is honoured.
  asio::write(s, asio::buffer(get("/metrics", auth() + "Connection: close\r\n")));
  auto last = read_reply(s, buf);
  ASSERT_TRUE(last);
  EXPECT_FALSE(last->keep_alive);
  EXPECT_TRUE(closed_by_server(s));
}

std::string post(std::string_view path, std::string_view extra_headers = "") {
  return "POST " + std::string(path) + " HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n" +
         std::string(extra_headers) + "\r\n";
}

// Actions change state (lifting a block): POST only, a token must be
// configured, and only as a bearer token, which a browser never adds by
// itself (Basic credentials it re-sends on its own: CSRF).
TEST_F(HttpEndpointTest, ActionsNeedPostAndABearerToken) {
  start(with_token());
  auto ok = request(post("/act?user=a", auth()));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200U);
  EXPECT_EQ(ok->body, "POST user=a");
  auto basic = request(post("/act", "Authorization: Basic " + base64_encode("x:" + token) + "\r\n"));
  ASSERT_TRUE(basic);
  EXPECT_EQ(basic->status, 401U);
  auto none = request(post("/act"));
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401U);
  auto as_get = request(get("/act", auth()));
  ASSERT_TRUE(as_get);
  EXPECT_EQ(as_get->status, 405U);
  EXPECT_EQ(as_get->headers[http::field::allow], "POST");
  // POST to a read-only route is still refused.
  auto to_route = request(post("/metrics", auth()));
  ASSERT_TRUE(to_route);
  EXPECT_EQ(to_route->status, 405U);
  // A body is not accepted.
  auto body = request("POST /act HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n" + auth() + "\r\nabc");
  ASSERT_TRUE(body);
  EXPECT_EQ(body->status, 413U);
}

TEST_F(HttpEndpointTest, ActionsAreRefusedWithoutAConfiguredToken) {
  start();
  auto r = request(post("/act"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403U);
  EXPECT_NE(r->body.find("token"), std::string::npos);
}

TEST_F(HttpEndpointTest, TheTokenIsRequiredExceptForHealthChecks) {
  start(with_token());
  auto none = request(get("/metrics"));
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 401U);
  {
    // Two challenges, each in a header of its own (browsers read only the
    // first scheme of a combined one).
    auto [b, e] = none->headers.equal_range(http::field::www_authenticate);
    std::vector<std::string> challenges;
    for (auto it = b; it != e; ++it) challenges.emplace_back(it->value());
    EXPECT_EQ(challenges, (std::vector<std::string>{"Bearer realm=\"pgcloak\"",
                                                    "Basic realm=\"pgcloak\", charset=\"UTF-8\""}));
  }
  EXPECT_EQ(none->body.find("pgcloak_up"), std::string::npos);

  auto wrong = request(get("/metrics", "Authorization: Bearer " + std::string(token.size(), 'x') + "\r\n"));
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401U);
  EXPECT_EQ(wrong->headers[http::field::www_authenticate],
            "Bearer realm=\"pgcloak\", error=\"invalid_token\"");
  for (const std::string& bad :
       {"Authorization: Bearer " + token.substr(0, 31) + "\r\n",  // a prefix
        "Authorization: Bearer " + token + "0\r\n",               // longer
        "Authorization: Basic " + token + "\r\n",                 // Basic, but not base64 of user:password
        "Authorization: Basic " + base64_encode("admin:" + token.substr(1)) + "\r\n",  // wrong password
        "Authorization: Basic " + base64_encode(token) + "\r\n",                       // no user:password
        std::string("Authorization: Bearer\r\n"), "Authorization: Bearer" + token + "\r\n"}) {
    auto r = request(get("/metrics", bad));
    ASSERT_TRUE(r) << bad;
    EXPECT_EQ(r->status, 401U) << bad;
  }
  // The scheme is case-insensitive; extra spaces are tolerated.
  auto lower = request(get("/metrics", "authorization: bearer   " + token + "  \r\n"));
  ASSERT_TRUE(lower);
  EXPECT_EQ(lower->status, 200U);
  // Browsers send Basic credentials: any user name, the token as password.
  auto basic = request(get("/metrics", "Authorization: Basic " + base64_encode("console:" + token) + "\r\n"));
  ASSERT_TRUE(basic);
  EXPECT_EQ(basic->status, 200U);
  // Without the token, unknown paths are 401 too: a 404 would reveal which
  // paths exist.
  auto unknown = request(get("/console"));
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 401U);
  // Two Authorization headers are ambiguous: refused, and the connection closed.
  auto twice = request(get("/metrics", auth() + auth()));
  ASSERT_TRUE(twice);
  EXPECT_EQ(twice->status, 400U);

  auto health = request(get("/healthz"));
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200U);
  EXPECT_EQ(health->body, "ok\n");
  auto ready = request(get("/readyz?verbose=1"));
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503U);  // the handler's own status passes through
}

TEST_F(HttpEndpointTest, WithoutATokenEverythingIsOpen) {
  start();
  auto r = request(get("/metrics"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200U);
}

TEST_F(HttpEndpointTest, NotFoundMethodsHeadAndHandlerErrors) {
  start(with_token());
  auto missing = request(get("/nope", auth()));
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404U);

  for (const char* method : {"POST", "PUT", "DELETE", "OPTIONS", "PATCH"}) {
    auto s = connect();
    asio::write(s, asio::buffer(std::string(method) + " /metrics HTTP/1.1\r\nHost: x\r\n" + auth() +
                                "Content-Length: 5\r\n\r\nhello"));
    beast::flat_buffer buf;
    auto r = read_reply(s, buf);
    ASSERT_TRUE(r) << method;
    EXPECT_EQ(r->status, 405U) << method;
    EXPECT_EQ(r->headers[http::field::allow], "GET, HEAD");
    EXPECT_TRUE(closed_by_server(s)) << method;
  }

  auto head = request("HEAD /metrics HTTP/1.1\r\nHost: x\r\n" + auth() + "\r\n", true);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200U);
  EXPECT_EQ(head->headers[http::field::content_length], "13");
  EXPECT_TRUE(head->body.empty());

  auto boom = request(get("/boom", auth()));
  ASSERT_TRUE(boom);
  EXPECT_EQ(boom->status, 500U);
  EXPECT_EQ(boom->body.find("bug"), std::string::npos);  // no internals to the client
}

TEST_F(HttpEndpointTest, MalformedRequestsGet400AndTheConnectionCloses) {
  start(with_token());
  for (const std::string& bad : {
           std::string("\x16\x03\x01\x02\x00garbage\r\n\r\n"),  // TLS on a plain port
           std::string("GET /metrics\r\n\r\n"),                 // no version
           std::string("GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n"),
           std::string("GET /metrics HTTP/1.1\r\n\r\n"),                           // no Host
           std::string("GET http://evil/metrics HTTP/1.1\r\nHost: x\r\n\r\n"),     // not a path
           std::string("GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),  // no colon
           std::string("GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
           std::string("G\x01T /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
       }) {
    auto s = connect();
    asio::write(s, asio::buffer(bad));
    beast::flat_buffer buf;
    auto r = read_reply(s, buf);
    ASSERT_TRUE(r) << bad;
    EXPECT_EQ(r->status, 400U) << bad;
    EXPECT_FALSE(r->keep_alive);
    EXPECT_TRUE(closed_by_server(s)) << bad;
  }
  // Random bytes: any 4xx or a close, never a crash or a hang.
  std::mt19937 rng(42);
  for (int i = 0; i < 50; ++i) {
    std::string junk(1 + rng() % 2000, '\0');
    for (auto& ch : junk) ch = static_cast<char>(rng());
    auto s = connect();
    asio::write(s, asio::buffer(junk + "\r\n\r\n"));
    beast::flat_buffer buf;
    if (auto r = read_reply(s, buf)) {
      EXPECT_GE(r->status, 400U);
      EXPECT_LT(r->status, 500U);
    }
    EXPECT_TRUE(closed_by_server(s));
  }
  auto still = request(get("/metrics", auth()));
  ASSERT_TRUE(still);
  EXPECT_EQ(still->status, 200U);
}

TEST_F(HttpEndpointTest, OversizedHeadersAndBodiesAreRefused) {
  HttpEndpointOptions o = with_token();
  o.max_header_bytes = 2048;
  start(o);
  auto big = request(get("/metrics", auth() + "X-Filler: " + std::string(4000, 'a') + "\r\n"));
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 431U);
  // Far past the buffer: still answered rather than reset, because the
  // server reads (and drops) what the client is still sending before it
  // closes.
  {
    auto s = connect();
    error_code ec;
    asio::write(s, asio::buffer(get("/metrics", "X-Filler: " + std::string(50000, 'a') + "\r\n")), ec);
    beast::flat_buffer buf;
    auto huge = read_reply(s, buf);
    ASSERT_TRUE(huge);
    EXPECT_EQ(huge->status, 431U);
    EXPECT_TRUE(closed_by_server(s));
  }
  auto body = request(get("/metrics", auth() + "Content-Length: 10\r\n") + "0123456789");
  ASSERT_TRUE(body);
  EXPECT_EQ(body->status, 413U);
  auto chunked =
      request(get("/metrics", auth() + "Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n0\r\n\r\n");
  ASSERT_TRUE(chunked);
  EXPECT_EQ(chunked->status, 413U);
  // An empty body is no body.
  auto empty = request(get("/metrics", auth() + "Content-Length: 0\r\n"));
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->status, 200U);
}

TEST_F(HttpEndpointTest, SlowAndIdleClientsAreDisconnected) {
  HttpEndpointOptions o = with_token();
  o.read_timeout = 300ms;
  o.idle_timeout = 500ms;
  start(o);
  // A request trickled in too slowly: closed after the read timeout even
  // though bytes keep arriving.
  auto slow = connect();
  const auto begin = std::chrono::steady_clock::now();
  const std::string req = get("/metrics", auth());
  bool cut = false;
  for (char ch : req) {
    error_code ec;
    asio::write(slow, asio::buffer(&ch, 1), ec);
    if (ec) {
      cut = true;
      break;
    }
    std::this_thread::sleep_for(50ms);
    if (std::chrono::steady_clock::now() - begin > 2s) break;
  }
  EXPECT_TRUE(cut || closed_by_server(slow, 1000ms));
  EXPECT_LT(std::chrono::steady_clock::now() - begin, 2500ms);

  // A connection that never sends anything.
  auto silent = connect();
  EXPECT_TRUE(closed_by_server(silent, 2000ms));

  // Keep-alive: served, then closed once idle.
  auto idle = connect();
  asio::write(idle, asio::buffer(get("/metrics", auth())));
  beast::flat_buffer buf;
  auto r = read_reply(idle, buf);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200U);
  const auto served = std::chrono::steady_clock::now();
  EXPECT_TRUE(closed_by_server(idle, 3000ms));
  EXPECT_GE(std::chrono::steady_clock::now() - served, 400ms);
  wait_for_open(0);
}

TEST_F(HttpEndpointTest, ConcurrentConnectionsAreBounded) {
  HttpEndpointOptions o = with_token();
  o.max_connections = 2;
  start(o);
  auto a = connect();
  auto b = connect();
  wait_for_open(2);
  auto c = connect();  // over the limit: closed at once
  EXPECT_TRUE(closed_by_server(c, 2000ms));
  // The two admitted connections still work.
  for (auto* s : {&a, &b}) {
    asio::write(*s, asio::buffer(get("/metrics", auth())));
    beast::flat_buffer buf;
    auto r = read_reply(*s, buf);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200U);
  }
  // Once one closes, a new connection is admitted.
  a.close();
  wait_for_open(1);
  auto d = request(get("/metrics", auth()));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, 200U);
}

TEST_F(HttpEndpointTest, StopClosesOpenConnectionsAndTheListener) {
  start(with_token());
  auto s = connect();
  wait_for_open(1);
  endpoint_->stop();
  EXPECT_TRUE(closed_by_server(s, 2000ms));
  wait_for_open(0);
  tcp::socket late(client_ctx_);
  error_code ec;
  late.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port_), ec);
  if (!ec) {
    EXPECT_TRUE(closed_by_server(late, 2000ms));
  }
}

TEST_F(HttpEndpointTest, ListenErrorsAreReported) {
  start();
  HttpEndpoint second(ctx_, HttpEndpointOptions{.host = "127.0.0.1", .port = port_});
  auto st = second.start();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("cannot listen on 127.0.0.1:" + std::to_string(port_)), std::string::npos)
      << st.error().message;
  HttpEndpoint bad(ctx_, HttpEndpointOptions{.host = "no-such-host.invalid", .port = 0});
  EXPECT_FALSE(bad.start().ok());
}

// --- TLS ----------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pgcloak-http-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A throwaway self-signed certificate for 127.0.0.1 (EC P-256).
void make_cert(const std::string& cert_path, const std::string& key_path) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  ASSERT_NE(key, nullptr);
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 86400);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("127.0.0.1"),
                             -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, &v3, NID_subject_alt_name, "IP:127.0.0.1");
  X509_add_ext(cert, san, -1);
  X509_EXTENSION_free(san);
  ASSERT_GT(X509_sign(cert, key, EVP_sha256()), 0);
  FILE* f = std::fopen(cert_path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_X509(f, cert);
  std::fclose(f);
  f = std::fopen(key_path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  X509_free(cert);
  EVP_PKEY_free(key);
}

TEST_F(HttpEndpointTest, TlsRoundTripAndOldVersionsRefused) {
  TempDir dir;
  const std::string cert = dir / "cert.pem";
  const std::string key = dir / "key.pem";
  make_cert(cert, key);
  auto tls = make_http_tls_context(cert, key);
  ASSERT_TRUE(tls.ok()) << tls.error().message;
  HttpEndpointOptions o = with_token();
  o.tls = *tls;
  start(o);

  ssl::context client(ssl::context::tls_client);
  client.load_verify_file(cert);
  client.set_verify_mode(ssl::verify_peer);
  X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(client.native_handle()), "127.0.0.1");
  // Verified against the throwaway certificate, then three requests on one
  // kept-alive TLS connection.
  ssl::stream<tcp::socket> s(connect(), client);
  s.handshake(ssl::stream_base::client);
  EXPECT_GE(SSL_version(s.native_handle()), TLS1_2_VERSION);
  beast::flat_buffer buf;
  asio::write(s, asio::buffer(get("/metrics", auth())));
  auto ok = read_reply(s, buf);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200U);
  EXPECT_EQ(ok->body, "pgcloak_up 1\n");
  asio::write(s, asio::buffer(get("/metrics")));
  auto refused = read_reply(s, buf);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 401U);
  asio::write(s, asio::buffer(get("/healthz")));
  auto health = read_reply(s, buf);
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200U);

  // A client limited to TLS 1.1 (and willing to use it) gets no session.
  ssl::context old(ssl::context::tls_client);
  SSL_CTX_set_security_level(old.native_handle(), 0);
  SSL_CTX_set_min_proto_version(old.native_handle(), TLS1_VERSION);
  SSL_CTX_set_max_proto_version(old.native_handle(), TLS1_1_VERSION);
  old.set_verify_mode(ssl::verify_none);
  ssl::stream<tcp::socket> legacy(connect(), old);
  error_code ec;
  legacy.handshake(ssl::stream_base::client, ec);
  EXPECT_TRUE(ec);

  // Plain HTTP on the TLS port: no answer, no crash.
  auto plain = request(get("/metrics", auth()));
  EXPECT_FALSE(plain);

  // A key that does not belong to the certificate is reported.
  const std::string other_cert = dir / "other.pem";
  const std::string other_key = dir / "other-key.pem";
  make_cert(other_cert, other_key);
  auto mismatch = make_http_tls_context(cert, other_key);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.error().message.find("metrics.tls.key_file"), std::string::npos)
      << mismatch.error().message;
  auto missing = make_http_tls_context(dir / "nope.pem", key);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("metrics.tls.cert_file"), std::string::npos);
}

}  // namespace
}  // namespace pgcloak::proxy
