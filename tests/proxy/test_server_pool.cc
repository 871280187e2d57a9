// ServerPool (upstream.pool) against a scripted PostgreSQL on the other end
// of a socketpair: the reset, parking, liveness checks, expiry, the size cap
// and shutdown. The end-to-end behaviour with a real PostgreSQL is in
// tests/integration/test_upstream_pool.py.
#include "proxy/server_pool.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "protocol/backend.h"
#include "protocol/wire.h"

namespace pgcloak::proxy {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// A pool whose resets run on a background io thread.
class PoolTest : public ::testing::Test {
 protected:
  void start(rules::UpstreamPoolConfig config) {
    pool_ = std::make_unique<ServerPool>(config, ctx_.get_executor());
    thread_ = std::thread([this] { ctx_.run(); });
  }
  void TearDown() override {
    if (pool_) pool_->close_all();
    guard_.reset();
    ctx_.stop();
    if (thread_.joinable()) thread_.join();
    pool_.reset();
    for (int fd : peers_) ::close(fd);
  }

  // A connection as the relay loop hands it over, and PostgreSQL's end.
  std::pair<PooledServer, int> connection(std::vector<std::pair<std::string, std::string>> params = {},
                                          Clock::time_point born = Clock::now()) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ::fcntl(sv[0], F_SETFL, ::fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    PooledServer s;
    s.stream.fd = sv[0];
    s.stream.is_unix = true;
    s.key = {1234, 5678};
    s.parameters = std::move(params);
    s.born = born;
    peers_.push_back(sv[1]);
    return {std::move(s), sv[1]};
  }

  // One message from pgcloak, as "type:payload", or "" at EOF or timeout.
  static std::string read_message(int fd, std::chrono::milliseconds timeout = 5000ms) {
    std::string out;
    auto read_exact = [&](size_t n) -> bool {
      std::string buf(n, '\0');
      size_t got = 0;
      while (got < n) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return false;
        const ssize_t r = ::read(fd, buf.data() + got, n - got);
        if (r <= 0) return false;
        got += static_cast<size_t>(r);
      }
      out += buf;
      return true;
    };
    if (!read_exact(5)) return "";
    uint32_t len = 0;
    std::memcpy(&len, out.data() + 1, 4);
    len = ntohl(len);
    if (len > 4 && !read_exact(len - 4)) return "";
    return std::string(1, out[0]) + ":" + out.substr(5);
  }

  static void write_all(int fd, const protocol::Buffer& b) {
    ASSERT_EQ(::write(fd, b.data(), b.size()), static_cast<ssize_t>(b.size()));
  }

  // PostgreSQL's answer to DISCARD ALL, with the settings it reports as
  // returning to their defaults.
  static void answer_discard(int fd, std::vector<std::pair<std::string, std::string>> reported = {}) {
    ASSERT_EQ(read_message(fd), std::string("Q:DISCARD ALL") + '\0');
    protocol::Buffer b;
    for (auto& [n, v] : reported) protocol::ParameterStatus{n, v}.encode(b);
    protocol::CommandComplete{"DISCARD ALL"}.encode(b);
    protocol::ReadyForQuery{'I'}.encode(b);
    write_all(fd, b);
  }

  template <class Pred>
  static bool eventually(Pred pred) {
    for (int i = 0; i < 500; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  static bool peer_sees_terminate_then_eof(int fd) {
    return read_message(fd) == "X:" && read_message(fd, 2000ms).empty();
  }

  size_t closed(PoolClose why) const { return pool_->stats().closed[static_cast<size_t>(why)]; }

  asio::io_context ctx_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_ = asio::make_work_guard(ctx_);
  std::unique_ptr<ServerPool> pool_;
  std::thread thread_;
  std::vector<int> peers_;
};

rules::UpstreamPoolConfig config() {
  rules::UpstreamPoolConfig c;
  c.enabled = true;
  return c;
}

TEST(ServerPoolKey, IgnoresOrderButNotContent) {
  using P = std::vector<std::pair<std::string, std::string>>;
  const P a = {{"user", "alice"}, {"database", "shop"}, {"application_name", "psql"}};
  const P b = {{"application_name", "psql"}, {"user", "alice"}, {"database", "shop"}};
  EXPECT_EQ(ServerPool::key_for(a), ServerPool::key_for(b));
  EXPECT_NE(ServerPool::key_for(a), ServerPool::key_for({{"user", "alice"}, {"database", "shop"}}));
  EXPECT_NE(ServerPool::key_for(a),
            ServerPool::key_for({{"user", "alice"}, {"database", "shop"}, {"application_name", "psql2"}}));
  // Names and values cannot run into each other.
  EXPECT_NE(ServerPool::key_for({{"user", "ab"}, {"database", "c"}}),
            ServerPool::key_for({{"user", "a"}, {"database", "bc"}}));
}

TEST_F(PoolTest, ResetsParksAndHandsOutOnlyForTheSameKey) {
  start(config());
  auto [server, pg] = connection({{"TimeZone", "Asia/Tokyo"}, {"application_name", "psql"}});
  pool_->give_back("k1", std::move(server));
  // The reset's ParameterStatus updates what the next client is told.
  answer_discard(pg, {{"TimeZone", "UTC"}, {"DateStyle", "ISO, MDY"}});
  ASSERT_TRUE(eventually([&] { return pool_->stats().idle == 1; }));
  EXPECT_EQ(pool_->stats().parked, 1U);

  EXPECT_FALSE(pool_->checkout("k2").has_value());
  auto got = pool_->checkout("k1");
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->key.process_id, 1234);
  const std::vector<std::pair<std::string, std::string>> want = {
      {"TimeZone", "UTC"}, {"application_name", "psql"}, {"DateStyle", "ISO, MDY"}};
  EXPECT_EQ(got->parameters, want);
  EXPECT_FALSE(pool_->checkout("k1").has_value());
  EXPECT_EQ(pool_->stats().reused, 1U);
  EXPECT_EQ(pool_->stats().idle, 0U);
  close_pooled(got->stream);
  EXPECT_TRUE(peer_sees_terminate_then_eof(pg));
}

TEST_F(PoolTest, AFailedResetClosesTheConnection) {
  start(config());
  auto [server, pg] = connection();
  pool_->give_back("k", std::move(server));
  ASSERT_EQ(read_message(pg), std::string("Q:DISCARD ALL") + '\0');
  protocol::Buffer b;
  protocol::ErrorResponse::from_error(
      Error::make("25001", "DISCARD ALL cannot run inside a transaction block"))
      .encode(b);
  protocol::ReadyForQuery{'T'}.encode(b);
  write_all(pg, b);
  ASSERT_TRUE(eventually([&] { return closed(PoolClose::reset_failed) == 1; }));
  EXPECT_TRUE(peer_sees_terminate_then_eof(pg));
  EXPECT_FALSE(pool_->checkout("k").has_value());
}

TEST_F(PoolTest, AResetWithoutAnswerTimesOut) {
  auto c = config();
  c.reset_timeout = 1s;
  start(c);
  auto [server, pg] = connection();
  pool_->give_back("k", std::move(server));
  ASSERT_EQ(read_message(pg), std::string("Q:DISCARD ALL") + '\0');
  // No answer: closed after reset_timeout, not parked.
  ASSERT_TRUE(eventually([&] { return closed(PoolClose::reset_failed) == 1; }));
  EXPECT_EQ(pool_->stats().idle, 0U);
}

TEST_F(PoolTest, AConnectionThatSpeaksOrClosesWhileParkedIsDropped) {
  start(config());
  auto [a, pg_a] = connection();
  auto [b, pg_b] = connection();
  pool_->give_back("k", std::move(a));
  answer_discard(pg_a);
  ASSERT_TRUE(eventually([&] { return pool_->stats().idle == 1; }));
  pool_->give_back("k", std::move(b));
  answer_discard(pg_b);
  ASSERT_TRUE(eventually([&] { return pool_->stats().idle == 2; }));
  // b (parked last, handed out first) gets a FATAL from PostgreSQL; a's
  // backend goes away.
  protocol::Buffer fatal;
  protocol::ErrorResponse::from_error(
      Error::make("57P01", "terminating connection due to administrator command", Severity::fatal))
      .encode(fatal);
  write_all(pg_b, fatal);
  ::shutdown(pg_a, SHUT_RDWR);
  EXPECT_FALSE(pool_->checkout("k").has_value());
  EXPECT_EQ(closed(PoolClose::broken), 2U);
  EXPECT_EQ(pool_->stats().idle, 0U);
}

TEST_F(PoolTest, OldOrLongIdleConnectionsAreClosed) {
  auto c = config();
  c.max_lifetime = 10s;
  c.idle_timeout = 3s;
  start(c);
  // Past max_lifetime when it comes back: closed without a reset.
  auto [old, pg_old] = connection({}, Clock::now() - 11s);
  pool_->give_back("k", std::move(old));
  EXPECT_EQ(closed(PoolClose::expired), 1U);
  EXPECT_TRUE(peer_sees_terminate_then_eof(pg_old));

  auto [idle, pg_idle] = connection();
  pool_->give_back("k", std::move(idle));
  answer_discard(pg_idle);
  ASSERT_TRUE(eventually([&] { return pool_->stats().idle == 1; }));
  pool_->sweep(Clock::now() + 1s);
  EXPECT_EQ(pool_->stats().idle, 1U);
  pool_->sweep(Clock::now() + 4s);
  EXPECT_EQ(pool_->stats().idle, 0U);
  EXPECT_EQ(closed(PoolClose::expired), 2U);
  EXPECT_TRUE(peer_sees_terminate_then_eof(pg_idle));
}

TEST_F(PoolTest, AFullPoolClosesTheConnectionIdleLongest) {
  auto c = config();
  c.max_idle = 1;
  start(c);
  auto [first, pg_first] = connection();
  pool_->give_back("a", std::move(first));
  answer_discard(pg_first);
  ASSERT_TRUE(eventually([&] { return pool_->stats().idle == 1; }));
  auto [second, pg_second] = connection();
  pool_->give_back("b", std::move(second));
  answer_discard(pg_second);
  ASSERT_TRUE(eventually([&] { return closed(PoolClose::full) == 1; }));
  EXPECT_TRUE(peer_sees_terminate_then_eof(pg_first));
  EXPECT_FALSE(pool_->checkout("a").has_value());
  auto got = pool_->checkout("b");
  ASSERT_TRUE(got.has_value());
  close_pooled(got->stream);
}

TEST_F(PoolTest, CloseAllEndsParkedConnectionsAndRefusesLaterOnes) {
  start(config());
  auto [parked, pg_parked] = connection();
  pool_->give_back("k", std::move(parked));
  answer_discard(pg_parked);
  ASSERT_TRUE(eventually([&] { return pool_->stats().idle == 1; }));
  pool_->close_all();
  EXPECT_TRUE(peer_sees_terminate_then_eof(pg_parked));
  auto [late, pg_late] = connection();
  pool_->give_back("k", std::move(late));
  EXPECT_TRUE(peer_sees_terminate_then_eof(pg_late));
  EXPECT_EQ(closed(PoolClose::shutdown), 2U);
  EXPECT_FALSE(pool_->checkout("k").has_value());
}

}  // namespace
}  // namespace pgcloak::proxy
