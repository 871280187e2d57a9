// The alert webhook against a real HTTP(S) receiver on loopback, written
// here with Beast: delivery order and keep-alive, the Slack payload, TLS
// verification with a test CA, retries and backoff, the queue limit,
// reconnects and stop(). Waits are bounded and generous; no test depends on
// how fast the machine is.
#include "proxy/alert_webhook.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "proxy/asio.h"

namespace pgcloak::proxy {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using namespace std::chrono_literals;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// --- The receiver ---------------------------------------------------------

struct Received {
  size_t connection = 0;  // 1 = the first connection accepted
  std::string method;
  std::string target;
  http::fields headers;
  std::string body;
  Clock::time_point at;
};

struct Reply {
  unsigned status = 200;
  std::string body = "ok";
  std::vector<std::pair<std::string, std::string>> headers;
  bool close = false;       // Connection: close
  bool drop_after = false;  // closes without saying so, like an idle timeout
  std::chrono::milliseconds delay{0};
  bool hold = false;  // no answer until release()
};

// The request and how many came before it.
using Handler = std::function<Reply(const Received&, size_t index)>;

Reply ok_reply(const Received&, size_t) {
  return Reply{};
}

class Receiver {
 public:
  explicit Receiver(Handler handler, std::shared_ptr<ssl::context> tls = nullptr, uint16_t port = 0)
      : handler_(std::move(handler)), tls_(std::move(tls)) {
    const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), port);
    acceptor_.open(ep.protocol());
    acceptor_.set_option(asio::socket_base::reuse_address(true));
    acceptor_.bind(ep);
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    asio::co_spawn(ctx_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { ctx_.run(); });
  }
  ~Receiver() {
    released_ = true;
    ctx_.stop();
    thread_.join();
  }

  uint16_t port() const { return port_; }
  size_t connections() const { return connections_.load(); }
  size_t handshake_failures() const { return handshake_failures_.load(); }
  int tls_version() const { return tls_version_.load(); }
  void release() { released_ = true; }
  std::vector<Received> received() const {
    std::lock_guard lock(mu_);
    return received_;
  }

 private:
  awaitable<void> accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow);
      if (ec) co_return;
      asio::co_spawn(ctx_, serve(std::move(socket), ++connections_), asio::detached);
    }
  }

  awaitable<void> serve(tcp::socket socket, size_t id) {
    if (tls_) {
      beast::ssl_stream<beast::tcp_stream> s(std::move(socket), *tls_);
      beast::get_lowest_layer(s).expires_after(10s);
      auto [ec] = co_await s.async_handshake(ssl::stream_base::server, use_nothrow);
      if (ec) {
        ++handshake_failures_;
        co_return;
      }
      tls_version_ = SSL_version(s.native_handle());
      co_await serve_stream(s, id);
    } else {
      beast::tcp_stream s(std::move(socket));
      co_await serve_stream(s, id);
    }
  }

  template <class Stream>
  awaitable<void> serve_stream(Stream& s, size_t id) {
    beast::flat_buffer buf;
    for (;;) {
      beast::get_lowest_layer(s).expires_never();
      http::request<http::string_body> req;
      auto [ec, n] = co_await http::async_read(s, buf, req, use_nothrow);
      if (ec) co_return;
      Received r{id,
                 std::string(req.method_string()),
                 std::string(req.target()),
                 static_cast<const http::fields&>(req),
                 req.body(),
                 Clock::now()};
      size_t index = 0;
      {
        std::lock_guard lock(mu_);
        index = received_.size();
        received_.push_back(r);
      }
      const Reply reply = handler_(r, index);
      asio::steady_timer timer(ctx_);
      if (reply.delay.count() > 0) {
        timer.expires_after(reply.delay);
        co_await timer.async_wait(use_nothrow);
      }
      while (reply.hold && !released_) {
        timer.expires_after(10ms);
        co_await timer.async_wait(use_nothrow);
      }
      http::response<http::string_body> res{static_cast<http::status>(reply.status), 11};
      res.set(http::field::server, "test-receiver");
      for (const auto& [name, value] : reply.headers) res.set(name, value);
      res.body() = reply.body;
      res.keep_alive(!reply.close);
      res.prepare_payload();
      beast::get_lowest_layer(s).expires_after(10s);
      auto [wec, wn] = co_await http::async_write(s, res, use_nothrow);
      if (wec || reply.close || reply.drop_after) {
        beast::get_lowest_layer(s).close();
        co_return;
      }
    }
  }

  asio::io_context ctx_;
  tcp::acceptor acceptor_{ctx_};
  Handler handler_;
  std::shared_ptr<ssl::context> tls_;
  uint16_t port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Received> received_;
  std::atomic<size_t> connections_{0};
  std::atomic<size_t> handshake_failures_{0};
  std::atomic<int> tls_version_{0};
  std::atomic<bool> released_{false};
};

// --- Helpers ---------------------------------------------------------------

bool eventually(const std::function<bool()>& done, std::chrono::milliseconds within = 20s) {
  const auto until = Clock::now() + within;
  while (!done()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

WebhookOptions fast_options(const std::string& url) {
  WebhookOptions o;
  o.url = url;
  o.timeout = 5000ms;
  o.initial_backoff = 20ms;
  o.max_backoff = 100ms;
  return o;
}

std::string url_for(const Receiver& rx, const std::string& path = "/hook",
                    const std::string& host = "127.0.0.1", bool https = false) {
  return std::string(https ? "https://" : "http://") + host + ":" + std::to_string(rx.port()) + path;
}

std::unique_ptr<AlertWebhook> start_webhook(const WebhookOptions& o) {
  auto hook = AlertWebhook::start(o);
  if (!hook.ok()) {
    ADD_FAILURE() << hook.error().message;
    return nullptr;
  }
  return std::move(*hook);
}

json alert(int seq) {
  return json{{"detector", "volume"}, {"user", "alice"}, {"relation", "public.customers"}, {"seq", seq}};
}

// --- Delivery --------------------------------------------------------------

TEST(AlertWebhook, DeliversInOrderOverOneKeptAliveConnection) {
  Receiver rx(ok_reply);
  WebhookOptions o = fast_options(url_for(rx, "/hooks/pgcloak?team=sec"));
  o.bearer_token = "tok-123";
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(hook->submit(alert(i), "alert " + std::to_string(i)));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 5; }));

  const auto got = rx.received();
  ASSERT_EQ(got.size(), 5U);
  for (int i = 0; i < 5; ++i) {
    const Received& r = got[i];
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.target, "/hooks/pgcloak?team=sec");
    EXPECT_EQ(r.headers[http::field::content_type], "application/json");
    EXPECT_EQ(r.headers[http::field::user_agent], "pgcloak");
    EXPECT_EQ(r.headers[http::field::authorization], "Bearer tok-123");
    EXPECT_EQ(r.headers[http::field::host], "127.0.0.1:" + std::to_string(rx.port()));
    EXPECT_EQ(json::parse(r.body), alert(i)) << r.body;
    EXPECT_EQ(r.connection, 1U);
  }
  EXPECT_EQ(rx.connections(), 1U);
  const WebhookStats s = hook->stats();
  EXPECT_EQ(s.queued, 0U);
  EXPECT_EQ(s.failed_attempts, 0U);
  EXPECT_EQ(s.abandoned, 0U);
  EXPECT_EQ(s.dropped, 0U);
  EXPECT_EQ(s.last_error, "");
  EXPECT_EQ(hook->describe(), "http://127.0.0.1:" + std::to_string(rx.port()));
}

TEST(AlertWebhook, SlackPayloadShapeAndEscaping) {
  Receiver rx(ok_reply);
  WebhookOptions o = fast_options(url_for(rx));
  o.slack = true;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  const json a = {{"detector", "volume"}, {"user", "<!channel> & co"},
                  {"client", "10.1.2.3"}, {"relation", "public.customers"},
                  {"category", "email"},  {"observed", 12000.0},
                  {"baseline", 40.5},     {"rule", "bulk_read"},
                  {"action", "alert"}};
  ASSERT_TRUE(hook->submit(a, "alice read 12000 rows of <public.customers> & more"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 1; }));
  const auto got = rx.received();
  ASSERT_EQ(got.size(), 1U);
  EXPECT_EQ(got[0].body.find("<!channel>"), std::string::npos);
  const json body = json::parse(got[0].body);
  const std::string summary = "alice read 12000 rows of &lt;public.customers&gt; &amp; more";
  EXPECT_EQ(body["text"], summary);
  ASSERT_EQ(body["blocks"].size(), 2U);
  EXPECT_EQ(
      body["blocks"][0],
      (json{{"type", "section"}, {"text", {{"type", "mrkdwn"}, {"text", "*pgcloak alert*: " + summary}}}}));
  EXPECT_EQ(body["blocks"][1]["type"], "section");
  const json& fields = body["blocks"][1]["fields"];
  ASSERT_EQ(fields.size(), 8U) << fields.dump();
  const std::vector<std::string> want = {"*user*\n&lt;!channel&gt; &amp; co",
                                         "*client*\n10.1.2.3",
                                         "*relation*\npublic.customers",
                                         "*category*\nemail",
                                         "*observed*\n12000",
                                         "*baseline*\n40.5",
                                         "*rule*\nbulk_read",
                                         "*action*\nalert"};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(fields[i], (json{{"type", "mrkdwn"}, {"text", want[i]}}));
  }
}

TEST(AlertWebhook, SlackPayloadSkipsMissingKeysAndCutsLongTexts) {
  EXPECT_EQ(slack_escape("a<b>&c"), "a&lt;b&gt;&amp;c");
  // No key Slack shows: no fields section (Slack refuses an empty one).
  const json bare = slack_payload(json{{"detector", "volume"}}, "x");
  ASSERT_EQ(bare["blocks"].size(), 1U);
  const json some = slack_payload(json{{"rule", "r1"}, {"user", "bob"}, {"client", nullptr}}, "x");
  ASSERT_EQ(some["blocks"][1]["fields"].size(), 2U);
  EXPECT_EQ(some["blocks"][1]["fields"][0]["text"], "*user*\nbob");  // the table's order, not the alert's
  EXPECT_EQ(some["blocks"][1]["fields"][1]["text"], "*rule*\nr1");

  // A huge, escape-heavy text is cut to Slack's limits, never inside an
  // escape or a UTF-8 sequence.
  std::string long_text;
  for (int i = 0; i < 1500; ++i) long_text += "\xC3\xA9<&";
  const json big = slack_payload(json{{"user", long_text}}, long_text);
  const std::string section = big["blocks"][0]["text"]["text"];
  const std::string field = big["blocks"][1]["fields"][0]["text"];
  EXPECT_LE(section.size(), 3000U);
  EXPECT_LE(field.size(), 2000U);
  EXPECT_LE(big["text"].get<std::string>().size(), 3000U);
  for (const std::string& s : {section, field}) {
    const std::string ellipsis = "\xE2\x80\xA6";
    ASSERT_GE(s.size(), ellipsis.size());
    EXPECT_EQ(s.substr(s.size() - ellipsis.size()), ellipsis);
    const std::string head = s.substr(0, s.size() - ellipsis.size());
    // Ends after a complete unit: "é", "&lt;" or "&amp;".
    EXPECT_TRUE(head.ends_with("\xC3\xA9") || head.ends_with("&lt;") || head.ends_with("&amp;"))
        << head.substr(head.size() - 8);
  }
}

// --- TLS -------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pgcloak-webhook-XXXXXX").string();
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

struct KeyPair {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  KeyPair() = default;
  KeyPair(const KeyPair&) = delete;
  KeyPair& operator=(const KeyPair&) = delete;
  ~KeyPair() {
    X509_free(cert);
    EVP_PKEY_free(key);
  }
  std::string cert_pem() const {
    BIO* b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, cert);
    char* data = nullptr;
    const long n = BIO_get_mem_data(b, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(b);
    return out;
  }
  std::string key_pem() const {
    BIO* b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
    char* data = nullptr;
    const long n = BIO_get_mem_data(b, &data);
    std::string out(data, static_cast<size_t>(n));
    BIO_free(b);
    return out;
  }
};

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
  ASSERT_NE(ext, nullptr) << value;
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

// A test CA (EC P-256), or a server certificate it issues for `dns`.
void make_cert(KeyPair& out, const std::string& cn, const KeyPair* ca, const std::string& dns) {
  static int serial = 1;
  out.key = EVP_EC_gen("P-256");
  ASSERT_NE(out.key, nullptr);
  out.cert = X509_new();
  X509_set_version(out.cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(out.cert), serial++);
  X509_gmtime_adj(X509_getm_notBefore(out.cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(out.cert), 86400);
  X509_set_pubkey(out.cert, out.key);
  X509_NAME* name = X509_get_subject_name(out.cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                             -1, 0);
  X509* issuer = ca ? ca->cert : out.cert;
  X509_set_issuer_name(out.cert, X509_get_subject_name(issuer));
  if (!ca) {
    add_ext(out.cert, issuer, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(out.cert, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(out.cert, issuer, NID_subject_key_identifier, "hash");
  } else {
    add_ext(out.cert, issuer, NID_basic_constraints, "CA:FALSE");
    add_ext(out.cert, issuer, NID_key_usage, "critical,digitalSignature");
    add_ext(out.cert, issuer, NID_ext_key_usage, "serverAuth");
    add_ext(out.cert, issuer, NID_subject_alt_name, ("DNS:" + dns).c_str());
    add_ext(out.cert, issuer, NID_authority_key_identifier, "keyid:always");
  }
  ASSERT_GT(X509_sign(out.cert, ca ? ca->key : out.key, EVP_sha256()), 0);
}

std::shared_ptr<ssl::context> server_tls(const KeyPair& leaf) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  const std::string cert = leaf.cert_pem();
  const std::string key = leaf.key_pem();
  ctx->use_certificate_chain(asio::buffer(cert));
  ctx->use_private_key(asio::buffer(key), ssl::context::pem);
  return ctx;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  f << text;
}

class AlertWebhookTls : public ::testing::Test {
 protected:
  void SetUp() override {
    make_cert(ca_, "pgcloak test CA", nullptr, "");
    make_cert(other_ca_, "some other CA", nullptr, "");
    make_cert(localhost_, "localhost", &ca_, "localhost");
    make_cert(elsewhere_, "alerts.example.com", &ca_, "alerts.example.com");
    write_file(dir_ / "ca.pem", ca_.cert_pem());
    write_file(dir_ / "other-ca.pem", other_ca_.cert_pem());
  }

  // Submits one alert and waits until it is delivered or given up.
  WebhookStats send_one(const std::string& url, const std::string& ca_file) {
    WebhookOptions o = fast_options(url);
    o.ca_file = ca_file;
    o.max_attempts = 2;
    auto hook = start_webhook(o);
    if (!hook) return {};
    EXPECT_TRUE(hook->submit(alert(1), "tls"));
    EXPECT_TRUE(eventually([&] {
      const auto s = hook->stats();
      return s.delivered + s.abandoned == 1;
    }));
    return hook->stats();
  }

  TempDir dir_;
  KeyPair ca_, other_ca_, localhost_, elsewhere_;
};

TEST_F(AlertWebhookTls, DeliversOverVerifiedTls) {
  Receiver rx(ok_reply, server_tls(localhost_));
  const WebhookStats s = send_one(url_for(rx, "/hook", "localhost", true), dir_ / "ca.pem");
  EXPECT_EQ(s.delivered, 1U) << s.last_error;
  EXPECT_EQ(s.failed_attempts, 0U);
  const auto got = rx.received();
  ASSERT_EQ(got.size(), 1U);
  EXPECT_EQ(got[0].headers[http::field::host], "localhost:" + std::to_string(rx.port()));
  EXPECT_EQ(json::parse(got[0].body), alert(1));
  EXPECT_GE(rx.tls_version(), TLS1_2_VERSION);
}

TEST_F(AlertWebhookTls, RefusesAWrongHostName) {
  // Signed by the trusted CA, but for another name.
  Receiver rx(ok_reply, server_tls(elsewhere_));
  const WebhookStats s = send_one(url_for(rx, "/hook", "localhost", true), dir_ / "ca.pem");
  EXPECT_EQ(s.delivered, 0U);
  EXPECT_EQ(s.failed_attempts, 2U);
  EXPECT_EQ(s.abandoned, 1U);
  EXPECT_NE(s.last_error.find("hostname mismatch"), std::string::npos) << s.last_error;
  EXPECT_TRUE(rx.received().empty());
  EXPECT_GE(rx.handshake_failures(), 1U);

  // An IP address must be in the certificate as one, too.
  Receiver rx_ip(ok_reply, server_tls(localhost_));
  const WebhookStats by_ip = send_one(url_for(rx_ip, "/hook", "127.0.0.1", true), dir_ / "ca.pem");
  EXPECT_EQ(by_ip.delivered, 0U);
  EXPECT_NE(by_ip.last_error.find("IP address mismatch"), std::string::npos) << by_ip.last_error;
  EXPECT_TRUE(rx_ip.received().empty());
}

TEST_F(AlertWebhookTls, RefusesAnUntrustedCertificate) {
  Receiver rx(ok_reply, server_tls(localhost_));
  const std::string url = url_for(rx, "/hook", "localhost", true);
  const WebhookStats other = send_one(url, dir_ / "other-ca.pem");
  EXPECT_EQ(other.delivered, 0U);
  EXPECT_EQ(other.failed_attempts, 2U);
  EXPECT_NE(other.last_error.find("certificate was not accepted"), std::string::npos) << other.last_error;
  // The system trust store does not know the test CA either.
  const WebhookStats system = send_one(url, "");
  EXPECT_EQ(system.delivered, 0U);
  EXPECT_NE(system.last_error.find("certificate was not accepted"), std::string::npos) << system.last_error;
  EXPECT_TRUE(rx.received().empty());
}

// --- Retries ---------------------------------------------------------------

TEST(AlertWebhook, RetriesServerErrorsWithBackoff) {
  Receiver rx([](const Received&, size_t i) {
    Reply r;
    if (i < 2) r.status = 500;
    return r;
  });
  auto hook = start_webhook(fast_options(url_for(rx)));
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(7), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 1; }));
  const WebhookStats s = hook->stats();
  EXPECT_EQ(s.failed_attempts, 2U);
  EXPECT_EQ(s.abandoned, 0U);
  EXPECT_NE(s.last_error.find("HTTP 500"), std::string::npos) << s.last_error;
  const auto got = rx.received();
  ASSERT_EQ(got.size(), 3U);
  for (const auto& r : got) EXPECT_EQ(json::parse(r.body), alert(7));
  // Backoff: initial_backoff (20 ms) with at least half of it fixed.
  EXPECT_GE(got[1].at - got[0].at, 10ms);
  EXPECT_GE(got[2].at - got[1].at, 20ms);
}

TEST(AlertWebhook, GivesUpAfterMaxAttempts) {
  Receiver rx([](const Received&, size_t i) {
    Reply r;
    if (i < 3) r.status = 503;
    return r;
  });
  WebhookOptions o = fast_options(url_for(rx));
  o.max_attempts = 3;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(1), "x"));
  ASSERT_TRUE(hook->submit(alert(2), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 1; }));
  const WebhookStats s = hook->stats();
  EXPECT_EQ(s.abandoned, 1U);
  EXPECT_EQ(s.failed_attempts, 3U);
  const auto got = rx.received();
  ASSERT_EQ(got.size(), 4U);
  EXPECT_EQ(json::parse(got[3].body), alert(2));
}

TEST(AlertWebhook, HonoursRetryAfterCappedByMaxBackoff) {
  Receiver rx([](const Received&, size_t i) {
    Reply r;
    if (i == 0) {
      r.status = 429;
      r.headers = {{"Retry-After", "1"}};
    } else if (i == 2) {
      r.status = 429;
      r.headers = {{"Retry-After", "3600"}};
    }
    return r;
  });
  WebhookOptions o = fast_options(url_for(rx));
  o.initial_backoff = 10ms;
  o.max_backoff = 30000ms;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(1), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 1; }));
  auto got = rx.received();
  ASSERT_EQ(got.size(), 2U);
  // Retry-After: 1 wins over the 10 ms backoff.
  EXPECT_GE(got[1].at - got[0].at, 900ms);
  hook->stop(1000ms);

  // An hour is capped at max_backoff.
  o.max_backoff = 100ms;
  auto capped = start_webhook(o);
  ASSERT_TRUE(capped);
  ASSERT_TRUE(capped->submit(alert(2), "x"));
  ASSERT_TRUE(eventually([&] { return capped->stats().delivered == 1; }));
  EXPECT_EQ(capped->stats().failed_attempts, 1U);
  EXPECT_NE(capped->stats().last_error.find("HTTP 429"), std::string::npos);
}

TEST(AlertWebhook, ClientErrorsAreNotRetriedBut408Is) {
  Receiver rx([](const Received&, size_t i) {
    Reply r;
    if (i == 0) {
      r.status = 400;
      r.body = "invalid_payload";
    } else if (i == 2) {
      r.status = 408;
    }
    return r;
  });
  WebhookOptions o = fast_options(url_for(rx));
  o.max_attempts = 5;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(1), "x"));
  ASSERT_TRUE(hook->submit(alert(2), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 1; }));
  WebhookStats s = hook->stats();
  EXPECT_EQ(s.abandoned, 1U);
  EXPECT_EQ(s.failed_attempts, 1U);
  EXPECT_NE(s.last_error.find("HTTP 400 (invalid_payload)"), std::string::npos) << s.last_error;
  auto got = rx.received();
  ASSERT_EQ(got.size(), 2U);
  EXPECT_EQ(json::parse(got[0].body), alert(1));
  EXPECT_EQ(json::parse(got[1].body), alert(2));

  ASSERT_TRUE(hook->submit(alert(3), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 2; }));
  s = hook->stats();
  EXPECT_EQ(s.failed_attempts, 2U);
  EXPECT_EQ(s.abandoned, 1U);
  EXPECT_EQ(rx.received().size(), 4U);
}

TEST(AlertWebhook, ATimedOutAttemptIsRetried) {
  Receiver rx([](const Received&, size_t i) {
    Reply r;
    if (i == 0) r.delay = 3000ms;
    return r;
  });
  WebhookOptions o = fast_options(url_for(rx));
  o.timeout = 300ms;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(1), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 1; }));
  const WebhookStats s = hook->stats();
  EXPECT_EQ(s.failed_attempts, 1U);
  EXPECT_NE(s.last_error.find("timed out"), std::string::npos) << s.last_error;
  EXPECT_EQ(rx.received().size(), 2U);
  EXPECT_EQ(rx.connections(), 2U);
}

TEST(AlertWebhook, AnOversizedAnswerIsBounded) {
  Receiver rx([](const Received&, size_t i) {
    Reply r;
    if (i == 0) r.body = std::string(size_t{1} << 20, 'x');
    return r;
  });
  auto hook = start_webhook(fast_options(url_for(rx)));
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(1), "x"));
  ASSERT_TRUE(hook->submit(alert(2), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 2; }));
  // The 2xx counts; the unread rest makes the connection unusable.
  EXPECT_EQ(hook->stats().failed_attempts, 0U);
  EXPECT_EQ(rx.connections(), 2U);
}

// --- Queue, connections, stop ----------------------------------------------

TEST(AlertWebhook, AFullQueueDropsAndCounts) {
  Receiver rx([](const Received&, size_t) {
    Reply r;
    r.hold = true;
    return r;
  });
  WebhookOptions o = fast_options(url_for(rx));
  o.queue_limit = 2;
  o.timeout = 30000ms;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  // The alert in flight counts against the limit.
  EXPECT_TRUE(hook->submit(alert(1), "x"));
  EXPECT_TRUE(hook->submit(alert(2), "x"));
  EXPECT_FALSE(hook->submit(alert(3), "x"));
  WebhookStats s = hook->stats();
  EXPECT_EQ(s.dropped, 1U);
  EXPECT_EQ(s.queued, 2U);
  rx.release();
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 2; }));
  EXPECT_TRUE(hook->submit(alert(4), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 3; }));
  const auto got = rx.received();
  ASSERT_EQ(got.size(), 3U);
  EXPECT_EQ(json::parse(got[2].body), alert(4));
  EXPECT_EQ(hook->stats().dropped, 1U);
}

TEST(AlertWebhook, DeliversOnceTheReceiverIsUp) {
  uint16_t port = 0;
  {
    asio::io_context ctx;
    tcp::acceptor probe(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port = probe.local_endpoint().port();
  }
  WebhookOptions o = fast_options("http://127.0.0.1:" + std::to_string(port) + "/hook");
  o.max_attempts = 1000;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(1), "x"));
  ASSERT_TRUE(hook->submit(alert(2), "x"));
  ASSERT_TRUE(eventually([&] { return hook->stats().failed_attempts >= 2; }));
  EXPECT_NE(hook->stats().last_error.find("cannot connect"), std::string::npos) << hook->stats().last_error;
  Receiver rx(ok_reply, nullptr, port);
  ASSERT_TRUE(eventually([&] { return hook->stats().delivered == 2; }));
  const auto got = rx.received();
  ASSERT_EQ(got.size(), 2U);
  EXPECT_EQ(json::parse(got[0].body), alert(1));
  EXPECT_EQ(json::parse(got[1].body), alert(2));
  EXPECT_EQ(hook->stats().abandoned, 0U);
}

TEST(AlertWebhook, ReconnectsWhenTheServerClosesTheConnection) {
  Receiver rx([](const Received&, size_t i) {
    Reply r;
    if (i == 0) r.drop_after = true;  // as if its keep-alive timeout struck
    if (i == 1) r.close = true;       // Connection: close
    return r;
  });
  auto hook = start_webhook(fast_options(url_for(rx)));
  ASSERT_TRUE(hook);
  for (uint64_t i = 1; i <= 4; ++i) {
    ASSERT_TRUE(hook->submit(alert(static_cast<int>(i)), "x"));
    ASSERT_TRUE(eventually([&] { return hook->stats().delivered == i; }));
    std::this_thread::sleep_for(50ms);  // the closes reach the webhook first
  }
  // A closed idle connection is found when the next request fails before
  // any answer: that request goes again on a new connection, and is not a
  // failed attempt.
  EXPECT_EQ(hook->stats().failed_attempts, 0U) << hook->stats().last_error;
  const auto got = rx.received();
  ASSERT_EQ(got.size(), 4U);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(json::parse(got[i].body), alert(i + 1));
  EXPECT_EQ(got[0].connection, 1U);
  EXPECT_EQ(got[1].connection, 2U);
  EXPECT_EQ(got[2].connection, 3U);
  EXPECT_EQ(got[3].connection, 3U);
}

TEST(AlertWebhook, StopDrainsTheQueue) {
  Receiver rx([](const Received&, size_t) {
    Reply r;
    r.delay = 30ms;
    return r;
  });
  auto hook = start_webhook(fast_options(url_for(rx)));
  ASSERT_TRUE(hook);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(hook->submit(alert(i), "x"));
  hook->stop(30000ms);
  WebhookStats s = hook->stats();
  EXPECT_EQ(s.delivered, 5U);
  EXPECT_EQ(s.queued, 0U);
  EXPECT_EQ(s.dropped, 0U);
  EXPECT_EQ(rx.received().size(), 5U);
  EXPECT_FALSE(hook->submit(alert(9), "after stop"));
  EXPECT_EQ(hook->stats().dropped, 1U);
  hook->stop(1000ms);  // idempotent
}

TEST(AlertWebhook, StopGivesUpAfterTheDrainTime) {
  Receiver rx([](const Received&, size_t) {
    Reply r;
    r.hold = true;
    return r;
  });
  WebhookOptions o = fast_options(url_for(rx));
  o.timeout = 30000ms;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(hook->submit(alert(i), "x"));
  ASSERT_TRUE(eventually([&] { return rx.received().size() == 1; }));
  const auto t0 = Clock::now();
  hook->stop(200ms);
  EXPECT_LT(Clock::now() - t0, 10s);
  const WebhookStats s = hook->stats();
  EXPECT_EQ(s.delivered, 0U);
  EXPECT_EQ(s.dropped, 3U);
  EXPECT_EQ(s.queued, 0U);
  EXPECT_EQ(s.failed_attempts, 0U);  // cut short by stop(), not by the receiver
}

TEST(AlertWebhook, DestroyingWithoutStopDoesNotHang) {
  WebhookOptions o = fast_options("http://127.0.0.1:1/hook");
  o.max_attempts = 1000;
  auto hook = start_webhook(o);
  ASSERT_TRUE(hook);
  ASSERT_TRUE(hook->submit(alert(1), "x"));
  hook.reset();
}

// --- Options -----------------------------------------------------------------

TEST(AlertWebhook, RejectsBadOptions) {
  auto fails = [](WebhookOptions o, const std::string& needle) {
    auto r = AlertWebhook::start(std::move(o));
    if (r.ok()) return ::testing::AssertionFailure() << "accepted";
    if (r.error().message.find(needle) == std::string::npos) {
      return ::testing::AssertionFailure() << r.error().message;
    }
    return ::testing::AssertionSuccess();
  };
  auto with_url = [](const std::string& url) {
    WebhookOptions o;
    o.url = url;
    return o;
  };
  EXPECT_TRUE(fails(with_url(""), "must start with https://"));
  EXPECT_TRUE(fails(with_url("ftp://example.com/x"), "must start with https://"));
  EXPECT_TRUE(fails(with_url("http://example.com/hook"), "only for a loopback host"));
  EXPECT_TRUE(fails(with_url("http://10.0.0.1/hook"), "only for a loopback host"));
  EXPECT_TRUE(fails(with_url("https:///path"), "has no host"));
  EXPECT_TRUE(fails(with_url("https://example.com:0/"), "invalid port"));
  EXPECT_TRUE(fails(with_url("https://example.com:99999/"), "invalid port"));
  EXPECT_TRUE(fails(with_url("https://example.com:/"), "invalid port"));
  EXPECT_TRUE(fails(with_url("https://user:pw@example.com/"), "credentials"));
  EXPECT_TRUE(fails(with_url("https://example.com/a b"), "spaces"));
  EXPECT_TRUE(fails(with_url("https://example.com/a\r\nX-Injected: 1"), "control"));
  EXPECT_TRUE(fails(with_url("https://[::1/x"), "unterminated"));
  EXPECT_TRUE(fails(with_url("https://::1/x"), "brackets"));
  EXPECT_TRUE(fails(with_url("https://example.com/x#frag"), "fragment"));
  WebhookOptions o = with_url("https://example.com/hook");
  o.bearer_token = "abc\r\nX-Injected: 1";
  EXPECT_TRUE(fails(o, "bearer token"));
  o = with_url("https://example.com/hook");
  o.ca_file = "/nonexistent/ca.pem";
  EXPECT_TRUE(fails(o, "ca_file"));
  o = with_url("http://127.0.0.1:8080/hook");
  o.ca_file = "/etc/ssl/certs/ca-certificates.crt";
  EXPECT_TRUE(fails(o, "not https://"));
  o = with_url("https://example.com/hook");
  o.queue_limit = 0;
  EXPECT_TRUE(fails(o, "queue_limit"));
  o = with_url("https://example.com/hook");
  o.max_attempts = 0;
  EXPECT_TRUE(fails(o, "max_attempts"));
  o = with_url("https://example.com/hook");
  o.max_backoff = 1ms;
  EXPECT_TRUE(fails(o, "max_backoff"));
  o = with_url("https://example.com/hook");
  o.timeout = 0ms;
  EXPECT_TRUE(fails(o, "timeout"));

  // Accepted without connecting; describe() never shows the path, which
  // holds the secret of a Slack webhook URL.
  for (const auto& [url, describe] : std::vector<std::pair<std::string, std::string>>{
           {"https://hooks.example.com/services/T0/B0/SECRET", "https://hooks.example.com:443"},
           {"HTTPS://hooks.example.com:8443?x=SECRET", "https://hooks.example.com:8443"},
           {"http://localhost:8080/SECRET", "http://localhost:8080"},
           {"http://[::1]:8080/SECRET", "http://[::1]:8080"},
           {"https://192.0.2.1/SECRET", "https://192.0.2.1:443"}}) {
    auto r = AlertWebhook::start(with_url(url));
    ASSERT_TRUE(r.ok()) << url << ": " << r.error().message;
    EXPECT_EQ((*r)->describe(), describe);
    (*r)->stop(0ms);
  }
}

}  // namespace
}  // namespace pgcloak::proxy
