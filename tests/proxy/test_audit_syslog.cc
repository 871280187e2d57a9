// The audit syslog sink (proxy/audit_syslog.h) against receivers in the
// test: a loopback TCP listener that parses RFC 6587 octet-counted frames,
// and an OpenSSL server with a throwaway CA made here (RFC 5425).
// tests/integration/test_audit_syslog.py covers a real rsyslog.
#include "proxy/alert_syslog.h"
#include "proxy/audit_syslog.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace pgcloak::proxy {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- framing

// Pops complete "MSG-LEN SP SYSLOG-MSG" frames (RFC 6587 section 3.4.1) off
// the front of buf. False when buf does not start with a well-formed frame
// header (MSG-LEN = NONZERO-DIGIT *DIGIT).
bool pop_frames(std::string& buf, std::vector<std::string>& out) {
  for (;;) {
    const size_t sp = buf.find(' ');
    const size_t digits = sp == std::string::npos ? buf.size() : sp;
    for (size_t i = 0; i < digits; ++i) {
      if (buf[i] < '0' || buf[i] > '9' || (i == 0 && buf[i] == '0')) return false;
    }
    if (digits > 9) return false;
    if (sp == std::string::npos) return true;  // header not complete yet
    if (sp == 0) return false;
    const size_t len = std::stoul(buf.substr(0, sp));
    if (buf.size() < sp + 1 + len) return true;
    out.push_back(buf.substr(sp + 1, len));
    buf.erase(0, sp + 1 + len);
  }
}

struct Received {
  std::vector<std::string> frames;
  bool eof = false;
  bool malformed = false;
  std::string rest;  // bytes after the last complete frame
};

// Reads from a plain socket until `want` frames arrived, the peer closed, or
// the timeout passed.
Received read_frames(int fd, size_t want, std::chrono::milliseconds timeout = 5s) {
  Received r;
  const auto deadline = Clock::now() + timeout;
  std::array<char, 65536> buf{};
  while (r.frames.size() < want) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
    if (n <= 0) {
      r.eof = true;
      break;
    }
    r.rest.append(buf.data(), static_cast<size_t>(n));
    if (!pop_frames(r.rest, r.frames)) {
      r.malformed = true;
      break;
    }
  }
  return r;
}

// The RFC 5424 fields of one received message.
struct Message {
  std::string pri_version, timestamp, hostname, app_name, procid, msgid, structured_data, msg;
};

std::optional<Message> parse_5424(const std::string& m) {
  std::array<std::string, 7> fields;
  size_t pos = 0;
  for (auto& f : fields) {
    const size_t sp = m.find(' ', pos);
    if (sp == std::string::npos) return std::nullopt;
    f = m.substr(pos, sp - pos);
    pos = sp + 1;
  }
  return Message{fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6], m.substr(pos)};
}

// "2024-02-29T23:59:59.000123Z" -> microseconds since the epoch.
std::optional<int64_t> parse_timestamp(const std::string& ts) {
  if (ts.size() != 27 || ts[4] != '-' || ts[7] != '-' || ts[10] != 'T' || ts[13] != ':' || ts[16] != ':' ||
      ts[19] != '.' || ts[26] != 'Z') {
    return std::nullopt;
  }
  std::tm tm{};
  long micros = 0;
  if (std::sscanf(ts.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%6ldZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &micros) != 7) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<int64_t>(timegm(&tm)) * 1000000 + micros;
}

std::string own_hostname() {
  std::array<char, 256> buf{};
  EXPECT_EQ(gethostname(buf.data(), buf.size() - 1), 0);
  return buf.data();
}

// ---------------------------------------------------------------- sockets

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A listener on 127.0.0.1 (port 0 = any free port).
Fd listen_on(uint16_t port, int backlog = 16, int rcvbuf = 0) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd.valid());
  const int one = 1;
  EXPECT_EQ(setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
  if (rcvbuf > 0) {
    EXPECT_EQ(setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(fd.get(), backlog), 0);
  return fd;
}

uint16_t port_of(const Fd& fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  EXPECT_EQ(getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  return ntohs(a.sin_port);
}

// A loopback port nothing listens on: connecting to it is refused.
uint16_t closed_port() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return port_of(fd);
}

Fd accept_within(const Fd& listener, std::chrono::milliseconds timeout) {
  pollfd p{listener.get(), POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return Fd();
  return Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
}

rules::AuditSyslogConfig plain_config(uint16_t port) {
  rules::AuditSyslogConfig c;
  c.host = "127.0.0.1";
  c.port = port;
  c.hostname = "db-gw-1.example";
  c.connect_timeout = 2000ms;
  return c;
}

std::unique_ptr<AuditSink> must_make(const rules::AuditSyslogConfig& c, const SyslogSinkOptions& o = {}) {
  auto r = make_syslog_sink(c, o);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? std::move(r).value() : nullptr;
}

// The JSON part of each frame.
std::vector<std::string> msgs_of(const std::vector<std::string>& frames) {
  std::vector<std::string> out;
  for (const auto& f : frames) {
    auto m = parse_5424(f);
    out.push_back(m ? m->msg : "<unparsable: " + f + ">");
  }
  return out;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ------------------------------------------------------------ format only

TEST(SyslogFrame, ExactBytes) {
  using namespace std::chrono;
  const sys_days day = year{2024} / February / 29;
  const system_clock::time_point at = day + 23h + 59min + 59s + 123us;
  SyslogHeader h{13, "db-gw-1.example", "pgcloak", "4242"};
  std::string out;
  append_syslog_frame(out, h, at, R"({"seq":1})");
  const std::string msg =
      R"(<110>1 2024-02-29T23:59:59.000123Z db-gw-1.example pgcloak 4242 audit - {"seq":1})";
  EXPECT_EQ(out, std::to_string(msg.size()) + " " + msg);

  // Appends: a second frame follows the first with nothing in between.
  append_syslog_frame(out, h, at, R"({"seq":2})");
  std::vector<std::string> frames;
  ASSERT_TRUE(pop_frames(out, frames));
  EXPECT_TRUE(out.empty());
  ASSERT_EQ(frames.size(), 2U);
  EXPECT_EQ(frames[1],
            R"(<110>1 2024-02-29T23:59:59.000123Z db-gw-1.example pgcloak 4242 audit - {"seq":2})");
}

TEST(SyslogFrame, PriorityIsFacilityTimesEightPlusInformational) {
  const auto at = std::chrono::system_clock::time_point{};  // the epoch
  for (auto [facility, pri] :
       {std::pair{0U, "<6>1 "}, {13U, "<110>1 "}, {16U, "<134>1 "}, {23U, "<190>1 "}}) {
    std::string out;
    append_syslog_frame(out, SyslogHeader{facility, "h", "a", "1"}, at, "{}");
    EXPECT_TRUE(contains(out, std::string(" ") + pri + "1970-01-01T00:00:00.000000Z h a 1 audit - {}"))
        << out;
  }
}

TEST(SyslogFrame, LengthCountsOctetsOfUtf8) {
  // "Zoë" and a rocket: 2 + 4 octets for 2 characters.
  const std::string json = "{\"name\":\"Zo\xc3\xab \xf0\x9f\x9a\x80\"}";
  std::string out;
  append_syslog_frame(out, SyslogHeader{13, "h", "a", "1"}, std::chrono::system_clock::time_point{}, json);
  const std::string expect_msg = "<110>1 1970-01-01T00:00:00.000000Z h a 1 audit - " + json;
  EXPECT_EQ(out, std::to_string(expect_msg.size()) + " " + expect_msg);
  ASSERT_EQ(json.size(), 20U);         // 17 characters
  EXPECT_EQ(out.substr(0, 3), "69 ");  // 49 header octets + 20
}

// ------------------------------------------------------------- validation

TEST(SyslogConfig, RejectsBadSettings) {
  auto expect_error = [](rules::AuditSyslogConfig c, const std::string& needle) {
    auto r = make_syslog_sink(c);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_TRUE(contains(r.error().message, needle)) << r.error().message;
  };
  auto base = plain_config(514);
  auto c = base;
  c.host.clear();
  expect_error(c, "audit.syslog.host");
  c = base;
  c.port = 0;
  expect_error(c, "audit.syslog.port");
  c = base;
  c.facility = 24;
  expect_error(c, "audit.syslog.facility");
  c = base;
  c.app_name = "pg cloak";
  expect_error(c, "audit.syslog.app_name");
  c = base;
  c.app_name = std::string(49, 'a');
  expect_error(c, "audit.syslog.app_name");
  c = base;
  c.hostname = "db\tgw";
  expect_error(c, "audit.syslog.hostname");
  c = base;
  c.connect_timeout = 0ms;
  expect_error(c, "audit.syslog.connect_timeout");
  c = base;
  c.tls = true;
  expect_error(c, "audit.syslog.ca_file is required");
  c.ca_file = "/nonexistent/pgcloak-test/ca.crt";
  expect_error(c, "/nonexistent/pgcloak-test/ca.crt");
}

TEST(SyslogConfig, DescribeNamesTransportAndEndpoint) {
  auto sink = must_make(plain_config(6514));
  ASSERT_TRUE(sink);
  EXPECT_EQ(sink->describe(), "syslog tcp://127.0.0.1:6514");
  auto c = plain_config(6514);
  c.host = "::1";
  sink = must_make(c);
  ASSERT_TRUE(sink);
  EXPECT_EQ(sink->describe(), "syslog tcp://[::1]:6514");
}

// ---------------------------------------------------------------- plain TCP

TEST(SyslogTcp, SendsOneOctetCountedRfc5424FramePerLine) {
  Fd listener = listen_on(0);
  auto config = plain_config(port_of(listener));
  config.hostname.clear();  // gethostname()
  config.app_name = "pgcloak-test";
  config.facility = 16;  // local0
  auto sink = must_make(config);
  ASSERT_TRUE(sink);
  const std::vector<std::string> lines = {
      R"({"seq":1,"kind":"audit_started"})",
      "{\"seq\":2,\"user\":\"Bj\xc3\xb6rk \xe6\x9d\xb1\xe4\xba\xac\"}",
      R"({"seq":3,"pad":")" + std::string(20000, 'x') + "\"}",
  };
  const auto before = std::chrono::system_clock::now();
  ASSERT_TRUE(sink->write(lines).ok());
  ASSERT_TRUE(sink->sync().ok());
  const auto after = std::chrono::system_clock::now();

  Fd conn = accept_within(listener, 5s);
  ASSERT_TRUE(conn.valid());
  Received r = read_frames(conn.get(), lines.size());
  ASSERT_FALSE(r.malformed) << r.rest.substr(0, 100);
  ASSERT_EQ(r.frames.size(), lines.size());
  EXPECT_TRUE(r.rest.empty());
  const std::string host = own_hostname();
  for (size_t i = 0; i < lines.size(); ++i) {
    auto m = parse_5424(r.frames[i]);
    ASSERT_TRUE(m) << r.frames[i].substr(0, 200);
    EXPECT_EQ(m->pri_version, "<134>1");
    EXPECT_EQ(m->hostname, host);
    EXPECT_EQ(m->app_name, "pgcloak-test");
    EXPECT_EQ(m->procid, std::to_string(getpid()));
    EXPECT_EQ(m->msgid, "audit");
    EXPECT_EQ(m->structured_data, "-");
    EXPECT_EQ(m->msg, lines[i]);  // no BOM, byte for byte
    auto ts = parse_timestamp(m->timestamp);
    ASSERT_TRUE(ts) << m->timestamp;
    using std::chrono::duration_cast;
    using std::chrono::microseconds;
    EXPECT_GE(*ts, duration_cast<microseconds>(before.time_since_epoch()).count() - 1);
    EXPECT_LE(*ts, duration_cast<microseconds>(after.time_since_epoch()).count() + 1);
  }
}

TEST(SyslogTcp, ManyBatchesArriveInOrderOnOneConnection) {
  Fd listener = listen_on(0);
  auto sink = must_make(plain_config(port_of(listener)));
  ASSERT_TRUE(sink);
  std::vector<std::string> all;
  for (int b = 0; b < 20; ++b) {
    std::vector<std::string> batch;
    batch.reserve(250);
    for (int i = 0; i < 250; ++i) batch.push_back(R"({"seq":)" + std::to_string(b * 250 + i + 1) + "}");
    ASSERT_TRUE(sink->write(batch).ok());
    all.insert(all.end(), batch.begin(), batch.end());
  }
  ASSERT_TRUE(sink->sync().ok());
  Fd conn = accept_within(listener, 5s);
  ASSERT_TRUE(conn.valid());
  Received r = read_frames(conn.get(), all.size());
  ASSERT_FALSE(r.malformed);
  EXPECT_EQ(msgs_of(r.frames), all);
  // One connection for everything: no second one is waiting.
  EXPECT_FALSE(accept_within(listener, 100ms).valid());
}

TEST(SyslogTcp, ErrorWhenNothingListens) {
  const uint16_t port = closed_port();
  auto sink = must_make(plain_config(port));
  ASSERT_TRUE(sink);
  const std::vector<std::string> lines = {R"({"seq":1})"};
  auto st = sink->write(lines);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(contains(st.error().message, "127.0.0.1:" + std::to_string(port))) << st.error().message;
  EXPECT_TRUE(contains(st.error().message, "connection refused")) << st.error().message;
  // Nothing was handed over, so sync must not claim it was.
  EXPECT_FALSE(sink->sync().ok());
  // Each write tries again (lazily) and fails the same way.
  EXPECT_FALSE(sink->write(lines).ok());
}

TEST(SyslogTcp, EmptyWriteOnlyConnects) {
  Fd listener = listen_on(0);
  auto sink = must_make(plain_config(port_of(listener)));
  ASSERT_TRUE(sink);
  ASSERT_TRUE(sink->write({}).ok());
  ASSERT_TRUE(sink->sync().ok());
  Fd conn = accept_within(listener, 5s);
  ASSERT_TRUE(conn.valid());
  Received r = read_frames(conn.get(), 1, 200ms);
  EXPECT_TRUE(r.frames.empty());
  EXPECT_TRUE(r.rest.empty());
}

TEST(SyslogTcp, ReconnectsWhenTheReceiverClosedTheConnection) {
  Fd listener = listen_on(0);
  auto sink = must_make(plain_config(port_of(listener)));
  ASSERT_TRUE(sink);
  const std::vector<std::string> first = {R"({"seq":1})", R"({"seq":2})"};
  const std::vector<std::string> second = {R"({"seq":3})", R"({"seq":4})"};
  ASSERT_TRUE(sink->write(first).ok());
  Fd conn1 = accept_within(listener, 5s);
  ASSERT_TRUE(conn1.valid());
  EXPECT_EQ(msgs_of(read_frames(conn1.get(), 2).frames), first);
  conn1.reset();  // the receiver restarts; loopback delivers the FIN at once
  std::this_thread::sleep_for(20ms);

  // Sending into the closed connection would "succeed" and vanish with the
  // RST: the sink must notice the close and send on a new connection.
  ASSERT_TRUE(sink->write(second).ok());
  ASSERT_TRUE(sink->sync().ok());
  Fd conn2 = accept_within(listener, 5s);
  ASSERT_TRUE(conn2.valid())
      << "the sink did not reconnect; the second batch went into the closed connection";
  // The sink cannot know what the old receiver read before it went away:
  // what it sent there comes again first (duplicates are dropped by seq).
  Received r = read_frames(conn2.get(), 4);
  EXPECT_FALSE(r.malformed);
  std::vector<std::string> expected = first;
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(msgs_of(r.frames), expected);
}

TEST(SyslogTcp, RecordsAReceiverDiscardedUnreadAreSentAgain) {
  Fd listener = listen_on(0);
  auto sink = must_make(plain_config(port_of(listener)));
  ASSERT_TRUE(sink);
  std::vector<std::string> unread;
  for (int i = 1; i <= 50; ++i) unread.push_back(R"({"seq":)" + std::to_string(i) + "}");
  ASSERT_TRUE(sink->write(unread).ok());
  ASSERT_TRUE(sink->sync().ok());  // delivered to the kernel: all the sink can know
  Fd conn1 = accept_within(listener, 5s);
  ASSERT_TRUE(conn1.valid());
  conn1.reset();  // the receiver crashes without reading: its socket buffer is gone
  std::this_thread::sleep_for(20ms);
  const std::vector<std::string> next = {R"({"seq":51})"};
  auto st = sink->write(next);
  if (!st.ok()) ASSERT_TRUE(sink->write(next).ok());  // the writer's retry
  ASSERT_TRUE(sink->sync().ok());
  Fd conn2 = accept_within(listener, 5s);
  ASSERT_TRUE(conn2.valid());
  Received r = read_frames(conn2.get(), 51);
  EXPECT_FALSE(r.malformed);
  std::vector<std::string> expected = unread;
  expected.push_back(next.front());
  EXPECT_EQ(msgs_of(r.frames), expected);
}

TEST(SyslogTcp, SyncReportsAConnectionClosedAfterTheLastWrite) {
  Fd listener = listen_on(0);
  auto sink = must_make(plain_config(port_of(listener)));
  ASSERT_TRUE(sink);
  const std::vector<std::string> lines = {R"({"seq":1})"};
  ASSERT_TRUE(sink->write(lines).ok());
  Fd conn = accept_within(listener, 5s);
  ASSERT_TRUE(conn.valid());
  conn.reset();  // closed without reading: the record may be lost
  std::this_thread::sleep_for(20ms);
  auto st = sink->sync();
  ASSERT_FALSE(st.ok());
  // Closed with our record unread, Linux answers with RST: "reset".
  EXPECT_TRUE(contains(st.error().message, "after the last write")) << st.error().message;
  EXPECT_TRUE(contains(st.error().message, "127.0.0.1:")) << st.error().message;
  // The writer re-sends; the new connection carries the record (once as
  // what the old connection may have lost, once as the writer's retry).
  ASSERT_TRUE(sink->write(lines).ok());
  ASSERT_TRUE(sink->sync().ok());
  Fd conn2 = accept_within(listener, 5s);
  ASSERT_TRUE(conn2.valid());
  EXPECT_EQ(msgs_of(read_frames(conn2.get(), 2).frames), (std::vector<std::string>{lines[0], lines[0]}));
}

TEST(SyslogTcp, ReceiverDownThenBackOnTheSamePort) {
  Fd listener = listen_on(0);
  const uint16_t port = port_of(listener);
  auto sink = must_make(plain_config(port));
  ASSERT_TRUE(sink);
  const std::vector<std::string> first = {R"({"seq":1})"};
  const std::vector<std::string> second = {R"({"seq":2})", R"({"seq":3})"};
  ASSERT_TRUE(sink->write(first).ok());
  {
    Fd conn = accept_within(listener, 5s);
    ASSERT_TRUE(conn.valid());
    EXPECT_EQ(msgs_of(read_frames(conn.get(), 1).frames), first);
  }
  listener.reset();  // receiver gone
  std::this_thread::sleep_for(20ms);
  auto st = sink->write(second);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(contains(st.error().message, "127.0.0.1:" + std::to_string(port))) << st.error().message;
  EXPECT_TRUE(contains(st.error().message, "connection refused")) << st.error().message;
  EXPECT_FALSE(sink->sync().ok());

  listener = listen_on(port);             // receiver back
  ASSERT_TRUE(sink->write(second).ok());  // the writer's retry of the same lines
  ASSERT_TRUE(sink->sync().ok());
  Fd conn = accept_within(listener, 5s);
  ASSERT_TRUE(conn.valid());
  std::vector<std::string> expected = first;  // sent again: the old connection ended abnormally
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(msgs_of(read_frames(conn.get(), 3).frames), expected);
}

TEST(SyslogTcp, ClosingDeliversEverythingToAReceiverThatTalksBack) {
  // A TLS receiver sends session tickets or its close_notify whenever it
  // likes. Anything arriving after close() makes Linux reset the connection
  // and drop the unsent tail of our send queue (RFC 1122 section 4.2.2.13).
  // A receiver that reads slowly and keeps sending a byte shows whether the
  // sink's close waits for the receiver to read everything.
  Fd listener = listen_on(0, 16, 8192);
  auto sink = must_make(plain_config(port_of(listener)));
  ASSERT_TRUE(sink);
  ASSERT_TRUE(sink->write({}).ok());
  Fd conn = accept_within(listener, 5s);
  ASSERT_TRUE(conn.valid());
  struct Outcome {
    size_t frames = 0;
    bool clean_eof = false;
    std::string error;
  };
  auto receiver = std::async(std::launch::async, [fd = conn.get()] {
    Outcome out;
    std::string buf;
    std::vector<std::string> frames;
    std::array<char, 4096> chunk{};
    const auto deadline = Clock::now() + 20s;
    while (Clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 5) < 0) break;
      const ssize_t n = ::recv(fd, chunk.data(), chunk.size(), MSG_DONTWAIT);
      if (n == 0) {
        out.clean_eof = true;
        (void)::shutdown(fd, SHUT_WR);  // a receiver closes when the sender did
        break;
      }
      if (n < 0 && errno != EAGAIN) {
        out.error = std::strerror(errno);
        break;
      }
      if (n > 0) {
        buf.append(chunk.data(), static_cast<size_t>(n));
        if (!pop_frames(buf, frames)) {
          out.error = "malformed frame";
          break;
        }
      }
      (void)::send(fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      std::this_thread::sleep_for(2ms);
    }
    out.frames = frames.size();
    return out;
  });
  std::string record(4000, 'q');
  record.insert(0, R"({"pad":")");
  record.append(R"("})");
  const std::vector<std::string> batch(128, record);  // 512 KiB
  ASSERT_TRUE(sink->write(batch).ok());
  const auto t0 = Clock::now();
  sink.reset();  // the writer's final close
  EXPECT_LT(Clock::now() - t0, 10s);
  const Outcome out = receiver.get();
  EXPECT_EQ(out.error, "");
  EXPECT_TRUE(out.clean_eof);
  EXPECT_EQ(out.frames, batch.size());
}

TEST(SyslogTcp, StalledReceiverBecomesAnErrorWithinTheSendTimeout) {
  Fd listener = listen_on(0, 16, 4096);  // small receive buffer: stalls sooner
  SyslogSinkOptions options;
  options.send_timeout = 300ms;
  auto sink = must_make(plain_config(port_of(listener)), options);
  ASSERT_TRUE(sink);
  ASSERT_TRUE(sink->write({}).ok());
  Fd conn = accept_within(listener, 5s);  // accepted, never read
  ASSERT_TRUE(conn.valid());
  const std::vector<std::string> batch(64, R"({"pad":")" + std::string(16384, 'p') + "\"}");  // ~1 MiB
  std::optional<Error> error;
  Clock::duration failing_call{};
  for (int i = 0; i < 256 && !error; ++i) {
    const auto t0 = Clock::now();
    auto st = sink->write(batch);
    if (!st.ok()) {
      error = st.error();
      failing_call = Clock::now() - t0;
    }
  }
  ASSERT_TRUE(error) << "256 MiB were accepted by a receiver that never reads";
  EXPECT_TRUE(contains(error->message, "stopped reading")) << error->message;
  EXPECT_TRUE(contains(error->message, "127.0.0.1:")) << error->message;
  EXPECT_GE(failing_call, 300ms);
  EXPECT_LT(failing_call, 5s);
  EXPECT_FALSE(sink->sync().ok());
}

TEST(SyslogTcp, ConnectTimesOutWhenTheReceiverDoesNotAnswer) {
  // A full accept queue: Linux drops further SYNs, so connect() neither
  // succeeds nor fails, as with a receiver behind a black-holing firewall.
  Fd listener = listen_on(0, 0);
  const uint16_t port = port_of(listener);
  std::vector<Fd> fillers;
  for (int i = 0; i < 4; ++i) {
    Fd f(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    (void)::connect(f.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    fillers.push_back(std::move(f));
  }
  std::this_thread::sleep_for(50ms);
  auto config = plain_config(port);
  config.connect_timeout = 300ms;
  auto sink = must_make(config);
  ASSERT_TRUE(sink);
  const auto t0 = Clock::now();
  const std::vector<std::string> lines = {R"({"seq":1})"};
  auto st = sink->write(lines);
  const auto took = Clock::now() - t0;
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(contains(st.error().message, "timed out after 300 ms")) << st.error().message;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 3s);
}

// -------------------------------------------------------------------- TLS

struct KeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CertDeleter {
  void operator()(X509* c) const { X509_free(c); }
};
struct CtxDeleter {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using KeyPtr = std::unique_ptr<EVP_PKEY, KeyDeleter>;
using CertPtr = std::unique_ptr<X509, CertDeleter>;
using CtxPtr = std::unique_ptr<SSL_CTX, CtxDeleter>;

void add_ext(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, ctx, nid, value);
  ASSERT_NE(ext, nullptr) << value;
  EXPECT_EQ(X509_add_ext(cert, ext, -1), 1);
  X509_EXTENSION_free(ext);
}

// A certificate for key: a self-signed CA when issuer is null, else a server
// leaf with the given subjectAltName signed by issuer.
CertPtr make_cert(const std::string& cn, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key, const char* san) {
  static long serial = 1;
  CertPtr cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1,
                             -1, 0);
  X509_set_issuer_name(cert.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer != nullptr ? issuer : cert.get(), cert.get(), nullptr, nullptr, 0);
  if (issuer == nullptr) {
    add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_ext(cert.get(), &ctx, NID_subject_key_identifier, "hash");
  } else {
    add_ext(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    add_ext(cert.get(), &ctx, NID_ext_key_usage, "serverAuth");
    add_ext(cert.get(), &ctx, NID_subject_alt_name, san);
    add_ext(cert.get(), &ctx, NID_authority_key_identifier, "keyid");
  }
  EXPECT_GT(X509_sign(cert.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()), 0);
  return cert;
}

void write_pem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr) << path;
  if (cert != nullptr) {
    EXPECT_EQ(PEM_write_X509(f, cert), 1);
  }
  if (key != nullptr) {
    EXPECT_EQ(PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr), 1);
  }
  EXPECT_EQ(std::fclose(f), 0);
}

// A throwaway PKI: the receiver's CA, an unrelated CA, a server certificate
// for localhost/127.0.0.1 and one for another name, both from the first CA.
class SyslogTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pgcloak-syslog-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    pki_dir = tmpl;
    KeyPtr ca_key(EVP_EC_gen("P-256"));
    KeyPtr other_key(EVP_EC_gen("P-256"));
    KeyPtr server_key(EVP_EC_gen("P-256"));
    ASSERT_TRUE(ca_key && other_key && server_key);
    CertPtr ca = make_cert("pgcloak test syslog CA", ca_key.get(), nullptr, nullptr, nullptr);
    CertPtr other = make_cert("pgcloak test unrelated CA", other_key.get(), nullptr, nullptr, nullptr);
    CertPtr server =
        make_cert("localhost", server_key.get(), ca.get(), ca_key.get(), "DNS:localhost,IP:127.0.0.1");
    CertPtr elsewhere =
        make_cert("elsewhere.example", server_key.get(), ca.get(), ca_key.get(), "DNS:elsewhere.example");
    write_pem(path("ca.crt"), ca.get(), nullptr);
    write_pem(path("other-ca.crt"), other.get(), nullptr);
    write_pem(path("server.crt"), server.get(), nullptr);
    write_pem(path("elsewhere.crt"), elsewhere.get(), nullptr);
    write_pem(path("server.key"), nullptr, server_key.get());
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    std::filesystem::remove_all(pki_dir, ec);
  }
  static std::string path(const std::string& name) { return pki_dir + "/" + name; }

  static CtxPtr server_ctx(const std::string& cert) {
    CtxPtr ctx(SSL_CTX_new(TLS_server_method()));
    EXPECT_EQ(SSL_CTX_use_certificate_file(ctx.get(), path(cert).c_str(), SSL_FILETYPE_PEM), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey_file(ctx.get(), path("server.key").c_str(), SSL_FILETYPE_PEM), 1);
    return ctx;
  }

  static rules::AuditSyslogConfig tls_config(uint16_t port, const std::string& ca = "ca.crt") {
    auto c = plain_config(port);
    c.tls = true;
    c.ca_file = path(ca);
    return c;
  }

  struct Served {
    bool handshake = false;
    std::vector<std::string> frames;
    bool client_close_notify = false;  // the sink closed the session properly
    std::string error;
  };

  // One TLS connection on the receiver side: accept, handshake, read
  // `want` frames, then either close with close_notify (hang_up) or keep
  // reading until the sink closes the connection.
  static Served serve_one(int listener, SSL_CTX* ctx, size_t want, bool hang_up) {
    // OpenSSL's socket BIO write()s: a close_notify to a sink that already
    // closed would raise SIGPIPE. Blocked in this receiver thread only, so
    // the tests still catch a sink that raises it on the test's own thread.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    Served out;
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) {
      out.error = "no connection";
      return out;
    }
    Fd conn(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    const timeval tv{5, 0};
    (void)setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL* ssl = SSL_new(ctx);
    SSL_set_fd(ssl, conn.get());
    if (SSL_accept(ssl) == 1) {
      out.handshake = true;
      std::string buf;
      std::array<char, 16384> chunk{};
      while (out.frames.size() < want) {
        const int n = SSL_read(ssl, chunk.data(), static_cast<int>(chunk.size()));
        if (n <= 0) break;
        buf.append(chunk.data(), static_cast<size_t>(n));
        if (!pop_frames(buf, out.frames)) {
          out.error = "malformed frame";
          break;
        }
      }
      while (!hang_up && SSL_read(ssl, chunk.data(), static_cast<int>(chunk.size())) > 0) {
        out.error = "unexpected bytes after the last frame";
      }
      out.client_close_notify = (SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN) != 0;
      (void)SSL_shutdown(ssl);
    } else {
      out.error = "handshake failed";
    }
    SSL_free(ssl);
    ERR_clear_error();
    return out;
  }

  static inline std::string pki_dir;
};

TEST_F(SyslogTls, DeliversFramesToAVerifiedReceiver) {
  Fd listener = listen_on(0);
  CtxPtr ctx = server_ctx("server.crt");
  const std::vector<std::string> lines = {
      R"({"seq":1})", "{\"seq\":2,\"city\":\"M\xc3\xbcnchen\"}",
      R"({"seq":3,"pad":")" + std::string(70000, 'z') + "\"}",  // several TLS records
  };
  auto server = std::async(std::launch::async, serve_one, listener.get(), ctx.get(), lines.size(), false);
  auto sink = must_make(tls_config(port_of(listener)));
  ASSERT_TRUE(sink);
  EXPECT_EQ(sink->describe(), "syslog tls://127.0.0.1:" + std::to_string(port_of(listener)));
  auto st = sink->write(lines);
  ASSERT_TRUE(st.ok()) << st.error().message;
  st = sink->sync();
  ASSERT_TRUE(st.ok()) << st.error().message;
  sink.reset();  // closes the session
  Served s = server.get();
  EXPECT_TRUE(s.handshake) << s.error;
  EXPECT_EQ(s.error, "");
  EXPECT_EQ(msgs_of(s.frames), lines);
  EXPECT_TRUE(s.client_close_notify);  // RFC 5425 section 4.4
}

TEST_F(SyslogTls, VerifiesTheHostNameWithSni) {
  Fd listener = listen_on(0);
  CtxPtr ctx = server_ctx("server.crt");
  const std::vector<std::string> lines = {R"({"seq":1})"};
  auto server = std::async(std::launch::async, serve_one, listener.get(), ctx.get(), lines.size(), false);
  auto config = tls_config(port_of(listener));
  config.host = "localhost";  // may resolve to ::1 first, where nothing listens
  auto sink = must_make(config);
  ASSERT_TRUE(sink);
  auto st = sink->write(lines);
  ASSERT_TRUE(st.ok()) << st.error().message;
  sink.reset();
  Served s = server.get();
  EXPECT_EQ(msgs_of(s.frames), lines);
}

TEST_F(SyslogTls, WrongCaIsACertificateVerifyFailure) {
  Fd listener = listen_on(0);
  CtxPtr ctx = server_ctx("server.crt");
  auto server = std::async(std::launch::async, serve_one, listener.get(), ctx.get(), 1, true);
  const uint16_t port = port_of(listener);
  auto sink = must_make(tls_config(port, "other-ca.crt"));
  ASSERT_TRUE(sink);
  const std::vector<std::string> lines = {R"({"seq":1})"};
  auto st = sink->write(lines);
  ASSERT_FALSE(st.ok());
  const std::string& msg = st.error().message;
  EXPECT_TRUE(contains(msg, "127.0.0.1:" + std::to_string(port))) << msg;
  EXPECT_TRUE(contains(msg, "certificate verify failed")) << msg;
  EXPECT_TRUE(contains(msg, "unable to get local issuer certificate")) << msg;
  Served s = server.get();
  EXPECT_FALSE(s.handshake);
  EXPECT_TRUE(s.frames.empty());
  EXPECT_FALSE(sink->sync().ok());
}

TEST_F(SyslogTls, CertificateForAnotherNameIsRejected) {
  Fd listener = listen_on(0);
  CtxPtr ctx = server_ctx("elsewhere.crt");
  auto server = std::async(std::launch::async, serve_one, listener.get(), ctx.get(), 1, true);
  auto sink = must_make(tls_config(port_of(listener)));
  ASSERT_TRUE(sink);
  const std::vector<std::string> lines = {R"({"seq":1})"};
  auto st = sink->write(lines);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(contains(st.error().message, "certificate verify failed")) << st.error().message;
  EXPECT_TRUE(contains(st.error().message, "IP address mismatch")) << st.error().message;
  EXPECT_FALSE(server.get().handshake);
}

TEST_F(SyslogTls, ReconnectsAfterTheReceiverClosedTheSession) {
  Fd listener = listen_on(0);
  CtxPtr ctx = server_ctx("server.crt");
  auto sink = must_make(tls_config(port_of(listener)));
  ASSERT_TRUE(sink);
  const std::vector<std::string> first = {R"({"seq":1})", R"({"seq":2})"};
  const std::vector<std::string> second = {R"({"seq":3})"};
  auto server = std::async(std::launch::async, serve_one, listener.get(), ctx.get(), first.size(), true);
  ASSERT_TRUE(sink->write(first).ok());
  EXPECT_EQ(msgs_of(server.get().frames), first);  // then close_notify and close
  std::this_thread::sleep_for(20ms);
  // What went to the old session is sent again first (see the TCP case).
  std::vector<std::string> expected = first;
  expected.insert(expected.end(), second.begin(), second.end());
  server = std::async(std::launch::async, serve_one, listener.get(), ctx.get(), expected.size(), true);
  auto st = sink->write(second);
  ASSERT_TRUE(st.ok()) << st.error().message;
  Served s = server.get();
  EXPECT_TRUE(s.handshake) << "the sink did not reconnect: " << s.error;
  EXPECT_EQ(msgs_of(s.frames), expected);
}

TEST_F(SyslogTls, HandshakeIsBoundedByTheConnectTimeout) {
  Fd listener = listen_on(0);  // the kernel accepts; nobody answers the ClientHello
  auto config = tls_config(port_of(listener));
  config.connect_timeout = 300ms;
  auto sink = must_make(config);
  ASSERT_TRUE(sink);
  const auto t0 = Clock::now();
  const std::vector<std::string> lines = {R"({"seq":1})"};
  auto st = sink->write(lines);
  const auto took = Clock::now() - t0;
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(contains(st.error().message, "TLS handshake")) << st.error().message;
  EXPECT_TRUE(contains(st.error().message, "timed out after 300 ms")) << st.error().message;
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 3s);
}

// ---------------------------------------------------------------- alerts

TEST(AlertSyslog, AlertsAreWarningsWithMsgidAlert) {
  Fd listener = listen_on(0);
  auto config = plain_config(port_of(listener));
  config.facility = 4;  // auth
  auto sink = AlertSyslog::open(config, 10);
  ASSERT_TRUE(sink) << sink.error().message;
  const std::string alert = R"({"rule":"people-bulk","user":"support","observed":5000,"limit":1000})";
  ASSERT_TRUE((*sink)->send(alert));
  Fd conn = accept_within(listener, 5s);
  ASSERT_TRUE(conn.valid());
  Received r = read_frames(conn.get(), 1);
  ASSERT_EQ(r.frames.size(), 1U);
  auto m = parse_5424(r.frames[0]);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->pri_version, "<36>1");  // auth (4) * 8 + warning (4)
  EXPECT_EQ(m->msgid, "alert");
  EXPECT_EQ(m->msg, alert);
  (*sink)->stop(1s);
  EXPECT_EQ((*sink)->delivered(), 1U);
  EXPECT_EQ((*sink)->dropped(), 0U);
}

TEST(AlertSyslog, KeepsAlertsWhileTheReceiverIsAwayAndBoundsTheQueue) {
  Fd listener = listen_on(0);
  const uint16_t port = port_of(listener);
  listener.reset();  // nobody listens yet
  auto sink = AlertSyslog::open(plain_config(port), 3);
  ASSERT_TRUE(sink) << sink.error().message;
  EXPECT_TRUE((*sink)->send(R"({"n":1})"));
  EXPECT_TRUE((*sink)->send(R"({"n":2})"));
  EXPECT_TRUE((*sink)->send(R"({"n":3})"));
  // Beyond queue_limit: dropped and counted, never blocking the caller.
  EXPECT_FALSE((*sink)->send(R"({"n":4})"));
  EXPECT_EQ((*sink)->dropped(), 1U);
  std::this_thread::sleep_for(100ms);  // at least one failed attempt
  listener = listen_on(port);          // the receiver comes back
  Fd conn = accept_within(listener, 10s);
  ASSERT_TRUE(conn.valid());
  Received r = read_frames(conn.get(), 3, 10s);
  std::vector<std::string> got = msgs_of(r.frames);
  // A first batch may have been cut into pieces by the failures; what
  // arrives is every alert, in order, each once at least.
  std::vector<std::string> unique;
  for (auto& g : got) {
    if (unique.empty() || unique.back() != g) unique.push_back(g);
  }
  EXPECT_EQ(unique, (std::vector<std::string>{R"({"n":1})", R"({"n":2})", R"({"n":3})"}));
  (*sink)->stop(1s);
  EXPECT_EQ((*sink)->delivered(), 3U);
}

TEST(AlertSyslog, StopGivesUpOnAnAbsentReceiverAfterTheDrainTime) {
  auto sink = AlertSyslog::open(plain_config(closed_port()), 10);
  ASSERT_TRUE(sink) << sink.error().message;
  ASSERT_TRUE((*sink)->send(R"({"n":1})"));
  std::this_thread::sleep_for(50ms);
  const auto t0 = Clock::now();
  (*sink)->stop(200ms);
  EXPECT_LT(Clock::now() - t0, 10s);  // bounded, not a timing assertion on speed
  EXPECT_EQ((*sink)->delivered(), 0U);
  EXPECT_EQ((*sink)->dropped(), 1U);
}

TEST(AlertSyslog, RejectsAnInvalidTargetUnderItsOwnName) {
  auto config = plain_config(514);
  config.tls = true;  // without ca_file
  auto sink = AlertSyslog::open(config, 10);
  ASSERT_FALSE(sink);
  EXPECT_TRUE(contains(sink.error().message, "detection.syslog.ca_file")) << sink.error().message;
}

}  // namespace
}  // namespace pgcloak::proxy
