// Framing: the length field at every boundary, split and coalesced reads.
#include "protocol/framing.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "tests/support/frame_stream.h"
#include "tests/support/raw_message.h"

namespace pgcloak::protocol {
namespace {

using testing::Buffer;
using testing::check_splits;
using testing::concat;
using testing::FrameStream;
using testing::RawMessage;
using testing::text;

// A typed header with an arbitrary length field and `body` bytes after it.
Buffer typed(uint32_t length, size_t body = 0) {
  return RawMessage('Q').fill(body).length(length).bytes();
}
Buffer untyped(uint32_t length, size_t body) {
  return RawMessage::untyped().fill(body).length(length).bytes();
}

void expect_protocol_error(const Error& e, std::string_view needle) {
  EXPECT_EQ(e.sqlstate, sqlstate::protocol_violation);
  EXPECT_EQ(e.severity, Severity::fatal);
  EXPECT_NE(e.message.find(needle), std::string::npos) << e.message;
}

TEST(DecodeHeader, NeedsFiveBytes) {
  Buffer b = typed(4);
  for (size_t n = 0; n < 5; ++n) {
    EXPECT_EQ(decode_header(Bytes(b).first(n), 100).status, FrameStatus::need_more) << n;
  }
  HeaderResult h = decode_header(b, 100);
  ASSERT_EQ(h.status, FrameStatus::complete);
  EXPECT_EQ(h.header.type, 'Q');
  EXPECT_EQ(h.header.length, 4u);
  EXPECT_EQ(h.header.header_size, 5u);
  EXPECT_EQ(h.header.body_size(), 0u);
  EXPECT_EQ(h.header.frame_size(), 5u);
}

class BelowMinimumLength : public ::testing::TestWithParam<uint32_t> {};

TEST_P(BelowMinimumLength, IsAnError) {
  // The length counts itself, so 0..3 cannot be right; with 0 the next
  // "message" would start inside this header.
  Buffer b = typed(GetParam(), 8);
  FrameResult f = decode_frame(b, default_max_message_length);
  ASSERT_EQ(f.status, FrameStatus::error);
  expect_protocol_error(f.error, "below the minimum of 4");
  EXPECT_EQ(decode_header(b, default_max_message_length).status, FrameStatus::error);
}

INSTANTIATE_TEST_SUITE_P(Lengths, BelowMinimumLength, ::testing::Values(0u, 1u, 2u, 3u));

TEST(DecodeFrame, LengthFourIsAnEmptyBody) {
  Buffer b = typed(4);
  FrameResult f = decode_frame(b, default_max_message_length);
  ASSERT_EQ(f.status, FrameStatus::complete);
  EXPECT_EQ(f.frame.type(), 'Q');
  EXPECT_TRUE(f.frame.body.empty());
  EXPECT_EQ(f.frame.size(), 5u);
}

TEST(DecodeFrame, LengthAtMaxIsAcceptedAndMaxPlusOneRejected) {
  constexpr uint32_t max = 100;
  Buffer at_max = typed(max, max - 4);
  // One byte short of the frame is need_more, not an error.
  EXPECT_EQ(decode_frame(Bytes(at_max).first(at_max.size() - 1), max).status, FrameStatus::need_more);
  FrameResult f = decode_frame(at_max, max);
  ASSERT_EQ(f.status, FrameStatus::complete);
  EXPECT_EQ(f.frame.body.size(), max - 4);
  EXPECT_EQ(f.frame.size(), max + 1);

  // Rejected on the header alone, before the body arrives: a peer must not
  // make the proxy buffer an oversized message.
  Buffer above = typed(max + 1);
  FrameResult g = decode_frame(above, max);
  ASSERT_EQ(g.status, FrameStatus::error);
  expect_protocol_error(g.error, "above the limit of 100");
}

TEST(DecodeFrame, DefaultMaximumBoundary) {
  // Only the header is present: a 1 GiB body must not be needed to decide.
  Buffer at_max = typed(default_max_message_length);
  EXPECT_EQ(decode_header(at_max, default_max_message_length).status, FrameStatus::complete);
  EXPECT_EQ(decode_frame(at_max, default_max_message_length).status, FrameStatus::need_more);
  Buffer above = typed(default_max_message_length + 1);
  EXPECT_EQ(decode_frame(above, default_max_message_length).status, FrameStatus::error);
}

class HugeLength : public ::testing::TestWithParam<uint32_t> {};

TEST_P(HugeLength, IsRejectedEvenWithoutALimit) {
  // 0x80000000 and above are negative as PostgreSQL reads the Int32.
  Buffer b = typed(GetParam());
  FrameResult f = decode_frame(b, UINT32_MAX);
  ASSERT_EQ(f.status, FrameStatus::error);
  expect_protocol_error(f.error, "above the limit of 2147483647");
  EXPECT_EQ(decode_frame(b, default_max_message_length).status, FrameStatus::error);
}

INSTANTIATE_TEST_SUITE_P(Lengths, HugeLength, ::testing::Values(0x80000000u, 0xFFFFFFFFu));

TEST(DecodeFrame, Int32MaxIsTheCeilingWithoutALimit) {
  Buffer b = typed(0x7fffffffu);
  EXPECT_EQ(decode_header(b, UINT32_MAX).status, FrameStatus::complete);
}

TEST(DecodeFrame, BodyIsAViewOfExactlyTheFrame) {
  Buffer b = concat({RawMessage('Q').raw("abc").bytes(), RawMessage('S').bytes()});
  FrameResult f = decode_frame(b, default_max_message_length);
  ASSERT_EQ(f.status, FrameStatus::complete);
  EXPECT_EQ(text(f.frame.body), "abc");
  EXPECT_EQ(f.frame.body.data(), b.data() + 5) << "no copy";
  EXPECT_EQ(f.frame.size(), 8u);
}

TEST(DecodeFrame, EveryPrefixIsNeedMore) {
  Buffer b = RawMessage('P').str("s").str("select 1").i16(0).bytes();
  for (size_t n = 0; n < b.size(); ++n) {
    EXPECT_EQ(decode_frame(Bytes(b).first(n), default_max_message_length).status, FrameStatus::need_more)
        << n;
  }
  EXPECT_EQ(decode_frame(b, default_max_message_length).status, FrameStatus::complete);
}

TEST(DecodeFrame, CoalescedMessagesDecodeInSequence) {
  std::vector<Buffer> messages = {RawMessage('Q').str("select 1").bytes(), RawMessage('S').bytes(),
                                  RawMessage('d').fill(300).bytes(), RawMessage('X').bytes()};
  Buffer all = concat({messages[0], messages[1], messages[2], messages[3]});
  Bytes rest(all);
  for (const auto& m : messages) {
    FrameResult f = decode_frame(rest, default_max_message_length);
    ASSERT_EQ(f.status, FrameStatus::complete);
    EXPECT_EQ(f.frame.type(), m[0]);
    EXPECT_EQ(f.frame.size(), m.size());
    rest = rest.subspan(f.frame.size());
  }
  EXPECT_TRUE(rest.empty());
  EXPECT_EQ(decode_frame(rest, default_max_message_length).status, FrameStatus::need_more);
}

TEST(DecodeFrame, SplitAndCoalescedStreams) {
  std::vector<Buffer> messages = {RawMessage('Q').str("select 1").bytes(), RawMessage('S').bytes(),
                                  RawMessage('d').fill(70).bytes(), RawMessage('H').bytes()};
  EXPECT_EQ(check_splits(messages), "");
}

TEST(DecodeFrame, BadLengthAfterGoodMessageStopsTheStream) {
  // Fail closed: nothing after a bad length is framed.
  Buffer all = concat({RawMessage('S').bytes(), typed(2), RawMessage('S').bytes()});
  FrameStream s;
  EXPECT_EQ(s.feed(all).size(), 1u);
  EXPECT_TRUE(s.failed());
}

// ---- Startup-phase packets.

TEST(DecodeStartupFrame, NeedsFourBytes) {
  Buffer b = untyped(8, 4);
  for (size_t n = 0; n < 8; ++n) {
    EXPECT_EQ(decode_startup_frame(Bytes(b).first(n)).status, FrameStatus::need_more) << n;
  }
  FrameResult f = decode_startup_frame(b);
  ASSERT_EQ(f.status, FrameStatus::complete);
  EXPECT_EQ(f.frame.type(), 0);
  EXPECT_EQ(f.frame.header.header_size, 4u);
  EXPECT_EQ(f.frame.body.size(), 4u);
  EXPECT_EQ(f.frame.size(), 8u);
}

class StartupBelowEight : public ::testing::TestWithParam<uint32_t> {};

TEST_P(StartupBelowEight, IsAnError) {
  // Not even room for the protocol version or request code.
  Buffer b = untyped(GetParam(), 8);
  FrameResult f = decode_startup_frame(b);
  ASSERT_EQ(f.status, FrameStatus::error);
  expect_protocol_error(f.error, "below the minimum of 8");
}

INSTANTIATE_TEST_SUITE_P(Lengths, StartupBelowEight, ::testing::Values(0u, 1u, 2u, 3u, 4u, 5u, 6u, 7u));

TEST(DecodeStartupFrame, TenThousandIsTheCeiling) {
  Buffer at_max = untyped(max_startup_length, max_startup_length - 4);
  EXPECT_EQ(decode_startup_frame(at_max).status, FrameStatus::complete);
  // Rejected on the length alone.
  Buffer above = untyped(max_startup_length + 1, 0);
  FrameResult f = decode_startup_frame(above);
  ASSERT_EQ(f.status, FrameStatus::error);
  expect_protocol_error(f.error, "above the limit of 10000");
}

TEST(DecodeStartupFrame, CallerLimitCannotRaiseTheCeiling) {
  Buffer above = untyped(max_startup_length + 1, 0);
  EXPECT_EQ(decode_startup_frame(above, UINT32_MAX).status, FrameStatus::error);
}

TEST(DecodeStartupFrame, CallerLimitCanLowerIt) {
  EXPECT_EQ(decode_startup_frame(untyped(64, 60), 64).status, FrameStatus::complete);
  EXPECT_EQ(decode_startup_frame(untyped(65, 61), 64).status, FrameStatus::error);
}

TEST(DecodeStartupFrame, HugeLengthsAreRejected) {
  for (uint32_t len : {0x80000000u, 0xFFFFFFFFu, default_max_message_length}) {
    EXPECT_EQ(decode_startup_frame(untyped(len, 4)).status, FrameStatus::error) << len;
  }
}

TEST(DecodeStartupFrame, SplitAtEveryPoint) {
  Buffer packet = RawMessage::untyped().u32(196608).str("user").str("bob").u8(0).bytes();
  EXPECT_EQ(check_splits({packet}, FrameStream::Kind::startup), "");
}

}  // namespace
}  // namespace pgcloak::protocol
