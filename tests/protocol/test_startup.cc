// Startup-phase packets: exact sizes, version checks, the parameter list.
#include "protocol/startup.h"

#include <gtest/gtest.h>

#include "tests/support/frame_stream.h"
#include "tests/support/raw_message.h"

namespace pgcloak::protocol {
namespace {

using testing::Buffer;
using testing::check_splits;
using testing::encoded;
using testing::FrameStream;
using testing::RawMessage;

constexpr uint32_t v3_0 = 3u << 16;

// Frames one whole startup packet and decodes its body.
Result<StartupPacket> decode_packet(const Buffer& packet) {
  FrameResult f = decode_startup_frame(packet);
  if (f.status == FrameStatus::error) return f.error;
  if (f.status != FrameStatus::complete || f.frame.size() != packet.size()) {
    return Error::make(sqlstate::internal_error, "test: packet does not frame as one packet");
  }
  return decode_startup_packet(f.frame.body);
}

void expect_protocol_error(const Result<StartupPacket>& r, std::string_view needle) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sqlstate, sqlstate::protocol_violation);
  EXPECT_EQ(r.error().severity, Severity::fatal);
  EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
}

TEST(SSLRequest, ExactlyEightBytes) {
  Buffer b = RawMessage::untyped().i32(ssl_request_code).bytes();
  ASSERT_EQ(b.size(), 8u);
  auto r = decode_packet(b);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(std::holds_alternative<SSLRequest>(*r));
  EXPECT_EQ(encoded(SSLRequest{}), b);
}

TEST(SSLRequest, WrongSizesAreRejected) {
  // Twelve bytes: a code followed by anything is not an SSLRequest.
  expect_protocol_error(decode_packet(RawMessage::untyped().i32(ssl_request_code).i32(0).bytes()),
                        "SSLRequest must be exactly 8 bytes");
  expect_protocol_error(decode_packet(RawMessage::untyped().i32(ssl_request_code).u8(0).bytes()),
                        "SSLRequest must be exactly 8 bytes");
  // Too short to hold the code.
  EXPECT_FALSE(SSLRequest::decode(RawMessage::untyped().i16(1234).body()).ok());
  // The right size with another code.
  EXPECT_FALSE(SSLRequest::decode(RawMessage::untyped().i32(gssenc_request_code).body()).ok());
}

TEST(GSSENCRequest, ExactlyEightBytes) {
  Buffer b = RawMessage::untyped().i32(gssenc_request_code).bytes();
  auto r = decode_packet(b);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(std::holds_alternative<GSSENCRequest>(*r));
  EXPECT_EQ(encoded(GSSENCRequest{}), b);
}

TEST(GSSENCRequest, WrongSizesAreRejected) {
  expect_protocol_error(decode_packet(RawMessage::untyped().i32(gssenc_request_code).i32(0).bytes()),
                        "GSSENCRequest must be exactly 8 bytes");
  EXPECT_FALSE(GSSENCRequest::decode(RawMessage::untyped().raw("abc").body()).ok());
}

TEST(CancelRequest, ExactlySixteenBytes) {
  Buffer b = RawMessage::untyped().i32(cancel_request_code).i32(4242).i32(-7).bytes();
  ASSERT_EQ(b.size(), 16u);
  auto r = decode_packet(b);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_TRUE(std::holds_alternative<CancelRequest>(*r));
  const auto& c = std::get<CancelRequest>(*r);
  EXPECT_EQ(c.process_id, 4242);
  EXPECT_EQ(c.secret_key, -7);
  EXPECT_EQ(encoded(c), b);
}

TEST(CancelRequest, WrongSizesAreRejected) {
  expect_protocol_error(decode_packet(RawMessage::untyped().i32(cancel_request_code).bytes()),
                        "CancelRequest must be exactly 16 bytes");
  expect_protocol_error(decode_packet(RawMessage::untyped().i32(cancel_request_code).i32(1).bytes()),
                        "CancelRequest must be exactly 16 bytes");
  expect_protocol_error(
      decode_packet(RawMessage::untyped().i32(cancel_request_code).i32(1).i32(2).u8(0).bytes()),
      "CancelRequest must be exactly 16 bytes");
  expect_protocol_error(
      decode_packet(RawMessage::untyped().i32(cancel_request_code).i32(1).i32(2).i32(3).bytes()),
      "CancelRequest must be exactly 16 bytes");
}

TEST(StartupMessage, RoundTrip) {
  StartupMessage m;
  m.parameters = {{"user", "alice"}, {"database", "shop"}, {"application_name", ""}};
  Buffer b = encoded(m);
  Buffer expected = RawMessage::untyped()
                        .u32(v3_0)
                        .str("user")
                        .str("alice")
                        .str("database")
                        .str("shop")
                        .str("application_name")
                        .str("")
                        .u8(0)
                        .bytes();
  EXPECT_EQ(b, expected);
  auto r = decode_packet(b);
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_TRUE(std::holds_alternative<StartupMessage>(*r));
  const auto& got = std::get<StartupMessage>(*r);
  EXPECT_EQ(got.major, 3);
  EXPECT_EQ(got.minor, 0);
  EXPECT_EQ(got.parameters, m.parameters);
  ASSERT_NE(got.find("database"), nullptr);
  EXPECT_EQ(*got.find("database"), "shop");
  ASSERT_NE(got.find("application_name"), nullptr);
  EXPECT_EQ(*got.find("application_name"), "");
  EXPECT_EQ(got.find("options"), nullptr);
}

TEST(StartupMessage, EmptyParameterListDecodes) {
  // Whether "user" is present is the proxy's decision, not the codec's.
  auto r = decode_packet(RawMessage::untyped().u32(v3_0).u8(0).bytes());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(std::get<StartupMessage>(*r).parameters.empty());
}

TEST(StartupMessage, Protocol2IsFeatureNotSupported) {
  auto r = decode_packet(RawMessage::untyped().u32(2u << 16).str("user").str("bob").u8(0).bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sqlstate, sqlstate::feature_not_supported);
  EXPECT_EQ(r.error().severity, Severity::fatal);
  EXPECT_NE(r.error().message.find("2.0"), std::string::npos) << r.error().message;
}

TEST(StartupMessage, OtherMajorVersionsAreFeatureNotSupported) {
  for (uint32_t version : {0u, 1u << 16, 4u << 16, 0xffffffffu}) {
    auto r = decode_packet(RawMessage::untyped().u32(version).u8(0).bytes());
    ASSERT_FALSE(r.ok()) << version;
    EXPECT_EQ(r.error().sqlstate, sqlstate::feature_not_supported) << version;
  }
}

TEST(StartupMessage, Minor1DecodesForNegotiation) {
  auto r = decode_packet(
      RawMessage::untyped().u32(v3_0 | 1).str("user").str("bob").str("_pq_.x").str("1").u8(0).bytes());
  ASSERT_TRUE(r.ok()) << r.error().message;
  const auto& m = std::get<StartupMessage>(*r);
  EXPECT_EQ(m.major, 3);
  EXPECT_EQ(m.minor, 1);
  ASSERT_EQ(m.parameters.size(), 2u);
  EXPECT_EQ(m.parameters[1].first, "_pq_.x");
  // Re-encoding keeps the requested version.
  EXPECT_EQ(encoded(m),
            RawMessage::untyped().u32(v3_0 | 1).str("user").str("bob").str("_pq_.x").str("1").u8(0).bytes());
}

TEST(StartupMessage, UnterminatedParameterList) {
  // name/value pairs but no final zero byte.
  expect_protocol_error(decode_packet(RawMessage::untyped().u32(v3_0).str("user").str("bob").bytes()),
                        "parameter list is not terminated");
  // No parameters and no terminator either.
  expect_protocol_error(decode_packet(RawMessage::untyped().u32(v3_0).bytes()),
                        "parameter list is not terminated");
  // The last name runs to the end of the packet.
  expect_protocol_error(decode_packet(RawMessage::untyped().u32(v3_0).raw("user").bytes()),
                        "parameter list is not terminated");
}

TEST(StartupMessage, NameWithoutValue) {
  expect_protocol_error(decode_packet(RawMessage::untyped().u32(v3_0).str("user").bytes()),
                        "parameter \"user\" has no value");
  expect_protocol_error(decode_packet(RawMessage::untyped().u32(v3_0).str("user").raw("bob").bytes()),
                        "parameter \"user\" has no value");
}

TEST(StartupMessage, ParameterNameInErrorIsEscapedAndCapped) {
  // The name is client-controlled and the error reaches logs: no raw control
  // bytes (a newline could forge a log line), and no 10 kB echo.
  auto r = decode_packet(RawMessage::untyped().u32(v3_0).str("us\ner\x01\"").bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("parameter \"us\\x0aer\\x01\\x22\" has no value"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);

  auto long_name = decode_packet(RawMessage::untyped().u32(v3_0).str(std::string(5000, 'n')).bytes());
  ASSERT_FALSE(long_name.ok());
  EXPECT_LT(long_name.error().message.size(), 200u);
  EXPECT_NE(long_name.error().message.find("...\" has no value"), std::string::npos);
}

// PostgreSQL keeps the last "user": a second one made pgcloak pick the
// policy of the first login while PostgreSQL ran the second, unmasked.
TEST(StartupMessage, DuplicateParametersAreRefused) {
  for (const char* name : {"user", "database", "options", "client_encoding", "application_name"}) {
    SCOPED_TRACE(name);
    expect_protocol_error(decode_packet(RawMessage::untyped()
                                            .u32(v3_0)
                                            .str(name)
                                            .str("a")
                                            .str("x")
                                            .str("y")
                                            .str(name)
                                            .str("b")
                                            .u8(0)
                                            .bytes()),
                          "appears more than once");
  }
  // Names differing in case are different parameters to PostgreSQL too.
  auto ok = decode_packet(RawMessage::untyped()
                              .u32(v3_0)
                              .str("user")
                              .str("a")
                              .str("USER")
                              .str("b")
                              .str("role")
                              .str("c")
                              .u8(0)
                              .bytes());
  ASSERT_TRUE(ok.ok());
}

TEST(StartupMessage, BytesAfterTerminator) {
  expect_protocol_error(
      decode_packet(RawMessage::untyped().u32(v3_0).str("user").str("bob").u8(0).u8(0).bytes()),
      "bytes after the parameter list terminator");
  expect_protocol_error(
      decode_packet(RawMessage::untyped().u32(v3_0).str("user").str("bob").u8(0).str("x").str("y").bytes()),
      "bytes after the parameter list terminator");
}

TEST(StartupPacket, BodyShorterThanACode) {
  for (size_t n = 0; n < 4; ++n) {
    auto body = RawMessage::untyped().fill(n, 0).body();
    auto r = decode_startup_packet(body);
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.error().sqlstate, sqlstate::protocol_violation);
  }
}

TEST(StartupPacket, LengthBelowEightAndAboveTenThousand) {
  // The framing refuses these before any body is decoded.
  for (uint32_t len : {0u, 3u, 4u, 7u}) {
    auto r = decode_packet(RawMessage::untyped().i32(ssl_request_code).length(len).bytes());
    expect_protocol_error(r, "below the minimum of 8");
  }
  StartupMessage big;
  big.parameters = {{"user", "bob"}, {"options", std::string(10000, 'x')}};
  Buffer b = encoded(big);
  ASSERT_GT(b.size(), max_startup_length);
  expect_protocol_error(decode_packet(b), "above the limit of 10000");
}

TEST(StartupPacket, LargestAcceptedStartupMessage) {
  StartupMessage m;
  // 4 length + 4 version + "user\0" (5) + value + NUL + final NUL = 10000.
  m.parameters = {{"user", std::string(10000 - 4 - 4 - 5 - 1 - 1, 'u')}};
  Buffer b = encoded(m);
  ASSERT_EQ(b.size(), max_startup_length);
  auto r = decode_packet(b);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(std::get<StartupMessage>(*r).parameters, m.parameters);
}

TEST(StartupPacket, SplitAtEveryPoint) {
  StartupMessage m;
  m.parameters = {{"user", "bob"}, {"database", "db"}};
  EXPECT_EQ(check_splits({encoded(m)}, FrameStream::Kind::startup), "");
  EXPECT_EQ(check_splits({encoded(CancelRequest{1, 2})}, FrameStream::Kind::startup), "");
}

TEST(StartupPacket, SSLRequestFollowedByBytesFramesOnlyTheRequest) {
  // A client may pipeline nothing after SSLRequest before the server answers;
  // the framer reports exactly 8 bytes so the proxy can see the leftovers and
  // refuse them (plaintext injected before the TLS handshake).
  Buffer b = testing::concat(
      {RawMessage::untyped().i32(ssl_request_code).bytes(), RawMessage('Q').str("select 1").bytes()});
  FrameResult f = decode_startup_frame(b);
  ASSERT_EQ(f.status, FrameStatus::complete);
  EXPECT_EQ(f.frame.size(), 8u);
  EXPECT_LT(f.frame.size(), b.size());
}

}  // namespace
}  // namespace pgcloak::protocol
