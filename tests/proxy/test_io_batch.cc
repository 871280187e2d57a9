// IoBatch (proxy/io_batch.h): socket calls issued together through
// io_uring, each with the result its own recv() or send() would have had.
// Where io_uring is unavailable (create() says why), the tests that need a
// ring are skipped and the reason is printed.

#include "proxy/io_batch.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <vector>

namespace pgcloak::proxy {
namespace {

struct Pair {
  int a = -1;
  int b = -1;
  Pair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    a = sv[0];
    b = sv[1];
  }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;
};

class IoBatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto b = IoBatch::create(64);
    if (!b) GTEST_SKIP() << b.error().message;
    batch_ = std::move(*b);
  }
  std::map<uint64_t, ssize_t> run() {
    std::map<uint64_t, ssize_t> out;
    for (const auto& c : batch_->run()) {
      EXPECT_TRUE(out.emplace(c.tag, c.res).second) << "tag " << c.tag << " completed twice";
    }
    return out;
  }
  std::unique_ptr<IoBatch> batch_;
};

TEST_F(IoBatchTest, EmptyRunDoesNothing) {
  EXPECT_TRUE(batch_->run().empty());
  EXPECT_EQ(batch_->batches(), 0U);
}

TEST_F(IoBatchTest, ReceiveOnAnEmptySocketCompletesWithEagain) {
  Pair p;
  std::array<char, 16> buf{};
  ASSERT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 7));
  auto r = run();
  ASSERT_EQ(r.size(), 1U);
  EXPECT_EQ(r[7], -EAGAIN);
}

TEST_F(IoBatchTest, ReceiveReturnsWhatIsWaitingAndNoMore) {
  Pair p;
  ASSERT_EQ(::send(p.b, "hello", 5, 0), 5);
  std::array<char, 16> buf{};
  ASSERT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 1));
  auto r = run();
  EXPECT_EQ(r[1], 5);
  EXPECT_EQ(std::string(buf.data(), 5), "hello");
  // The bytes were consumed: a second receive finds the socket empty.
  ASSERT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 2));
  EXPECT_EQ(run()[2], -EAGAIN);
}

TEST_F(IoBatchTest, ReceiveStopsAtTheBufferLength) {
  Pair p;
  ASSERT_EQ(::send(p.b, "0123456789", 10, 0), 10);
  std::array<char, 4> buf{};
  ASSERT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 1));
  EXPECT_EQ(run()[1], 4);
  EXPECT_EQ(std::string(buf.data(), 4), "0123");
  std::array<char, 16> rest{};
  EXPECT_EQ(::recv(p.a, rest.data(), rest.size(), 0), 6);
}

TEST_F(IoBatchTest, EndOfStreamIsZero) {
  Pair p;
  ::shutdown(p.b, SHUT_WR);
  std::array<char, 16> buf{};
  ASSERT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 3));
  EXPECT_EQ(run()[3], 0);
}

TEST_F(IoBatchTest, SendDeliversTheBytes) {
  Pair p;
  const std::string msg = "Q\x00\x00\x00\x0dSELECT 1";
  ASSERT_TRUE(batch_->send(p.a, msg.data(), msg.size(), 9));
  EXPECT_EQ(run()[9], static_cast<ssize_t>(msg.size()));
  std::array<char, 64> buf{};
  ASSERT_EQ(::recv(p.b, buf.data(), buf.size(), 0), static_cast<ssize_t>(msg.size()));
  EXPECT_EQ(std::string(buf.data(), msg.size()), msg);
}

TEST_F(IoBatchTest, SendToAFullSocketDoesNotWait) {
  Pair p;
  std::vector<char> chunk(64 * 1024, 'x');
  while (::send(p.a, chunk.data(), chunk.size(), MSG_DONTWAIT) > 0) {
  }
  ASSERT_TRUE(batch_->send(p.a, chunk.data(), chunk.size(), 4));
  EXPECT_EQ(run()[4], -EAGAIN);
  // Nothing was parked in the ring: draining the peer later does not make
  // the send happen behind the caller's back.
  std::vector<char> sink(1 << 20);
  while (::recv(p.b, sink.data(), sink.size(), MSG_DONTWAIT) > 0) {
  }
  EXPECT_EQ(::recv(p.b, sink.data(), sink.size(), MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
}

TEST_F(IoBatchTest, SendToAClosedPeerIsEpipeWithoutSignal) {
  Pair p;
  ::close(p.b);
  p.b = -1;
  ASSERT_TRUE(batch_->send(p.a, "x", 1, 5));
  // MSG_NOSIGNAL: the test process is still here to see the result.
  EXPECT_EQ(run()[5], -EPIPE);
}

TEST_F(IoBatchTest, BadDescriptorIsReportedPerOperation) {
  Pair p;
  ASSERT_EQ(::send(p.b, "ok", 2, 0), 2);
  std::array<char, 8> buf{};
  std::array<char, 8> other{};
  ASSERT_TRUE(batch_->recv(-1, other.data(), other.size(), 1));
  ASSERT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 2));
  auto r = run();
  EXPECT_EQ(r[1], -EBADF);
  EXPECT_EQ(r[2], 2);  // the failing operation did not stop the batch
}

TEST_F(IoBatchTest, ManySocketsInOneCall) {
  constexpr int n = 24;
  std::vector<std::unique_ptr<Pair>> pairs;
  std::vector<std::array<char, 32>> bufs(n);
  for (int i = 0; i < n; ++i) {
    pairs.push_back(std::make_unique<Pair>());
    const std::string m = "session " + std::to_string(i);
    ASSERT_EQ(::send(pairs[i]->b, m.data(), m.size(), 0), static_cast<ssize_t>(m.size()));
  }
  for (int i = 0; i < n; ++i) {
    // Reads on the even sessions, replies on the odd ones, in one batch.
    if (i % 2 == 0) {
      ASSERT_TRUE(batch_->recv(pairs[i]->a, bufs[i].data(), bufs[i].size(), i));
    } else {
      ASSERT_TRUE(batch_->send(pairs[i]->a, "reply", 5, i));
    }
  }
  const uint64_t before = batch_->batches();
  auto r = run();
  EXPECT_EQ(batch_->batches(), before + 1);
  EXPECT_EQ(batch_->operations(), static_cast<uint64_t>(n));
  ASSERT_EQ(r.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    if (i % 2 == 0) {
      const std::string m = "session " + std::to_string(i);
      ASSERT_EQ(r[i], static_cast<ssize_t>(m.size())) << i;
      EXPECT_EQ(std::string(bufs[i].data(), m.size()), m);
    } else {
      EXPECT_EQ(r[i], 5) << i;
      std::array<char, 8> got{};
      EXPECT_EQ(::recv(pairs[i]->b, got.data(), got.size(), 0), 5);
    }
  }
}

TEST_F(IoBatchTest, TwoSendsOnOneSocketKeepTheirOrder) {
  Pair p;
  ASSERT_TRUE(batch_->send(p.a, "first,", 6, 1));
  ASSERT_TRUE(batch_->send(p.a, "second", 6, 2));
  auto r = run();
  EXPECT_EQ(r[1], 6);
  EXPECT_EQ(r[2], 6);
  std::array<char, 16> buf{};
  ASSERT_EQ(::recv(p.b, buf.data(), buf.size(), 0), 12);
  EXPECT_EQ(std::string(buf.data(), 12), "first,second");
}

TEST_F(IoBatchTest, FullBatchRefusesMoreUntilRun) {
  Pair p;
  std::array<char, 4> buf{};
  size_t queued = 0;
  while (batch_->recv(p.a, buf.data(), buf.size(), queued)) ++queued;
  EXPECT_EQ(queued, batch_->capacity());
  EXPECT_TRUE(batch_->full());
  EXPECT_FALSE(batch_->send(p.a, "x", 1, 999));
  auto r = run();
  EXPECT_EQ(r.size(), queued);
  for (const auto& [tag, res] : r) EXPECT_EQ(res, -EAGAIN) << tag;
  EXPECT_FALSE(batch_->full());
  EXPECT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 0));
  EXPECT_EQ(run()[0], -EAGAIN);
}

TEST_F(IoBatchTest, ReusedAcrossManyRuns) {
  Pair p;
  std::array<char, 8> buf{};
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(batch_->send(p.b, "ab", 2, 1));
    ASSERT_TRUE(batch_->recv(p.a, buf.data(), buf.size(), 2));
    auto r = run();
    // In one batch the send is issued first, so the receive sees its bytes.
    ASSERT_EQ(r[1], 2) << i;
    ASSERT_EQ(r[2], 2) << i;
  }
  EXPECT_EQ(batch_->batches(), 1000U);
  EXPECT_FALSE(batch_->failed());
}

TEST(IoBatchCreate, EitherWorksOrSaysWhy) {
  auto b = IoBatch::create(8);
  if (b) {
    EXPECT_GE((*b)->capacity(), 8U);
  } else {
    EXPECT_NE(b.error().message.find("io_uring is not available"), std::string::npos) << b.error().message;
  }
}

}  // namespace
}  // namespace pgcloak::proxy
