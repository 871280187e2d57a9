#include "protocol/frame_relay.h"

#include <gtest/gtest.h>

#include "tests/support/raw_message.h"

namespace pgcloak::protocol {
namespace {

using testing::concat;
using testing::RawMessage;

// Holds every Query ('Q') and replaces it with "Q<upper-cased body>";
// everything else passes. Feeds `stream` in chunks of `step` bytes.
struct Relayed {
  Buffer out;
  std::vector<uint8_t> held_types;
  Status status = ok_status();
  bool boundary = true;
};

Relayed relay(const Buffer& stream, size_t step, uint32_t max_length = 1 << 20) {
  FrameRelay r(max_length);
  Relayed run;
  for (size_t at = 0; at < stream.size() && run.status; at += step) {
    const size_t n = std::min(step, stream.size() - at);
    run.status = r.feed(
        Bytes(stream.data() + at, n), run.out,
        [](uint8_t type, uint32_t) {
          if (type == '!') return FrameAction::reject;
          return type == 'Q' ? FrameAction::hold : FrameAction::pass;
        },
        [&](uint8_t type, Bytes frame, Buffer& out) {
          run.held_types.push_back(type);
          Buffer b = RawMessage('Q').str("HELD").bytes();
          out.insert(out.end(), b.begin(), b.end());
          EXPECT_EQ(frame.size(),
                    frame[1] * 0x1000000u + frame[2] * 0x10000u + frame[3] * 0x100u + frame[4] + 1);
        },
        Error::make(sqlstate::protocol_violation, "rejected"));
  }
  run.boundary = r.at_boundary();
  return run;
}

const Buffer kBind = RawMessage('B').str("").str("s1").i16(0).i16(0).i16(0).bytes();
const Buffer kQuery = RawMessage('Q').str("select 1").bytes();
const Buffer kSync = RawMessage('S').bytes();
const Buffer kHeld = RawMessage('Q').str("HELD").bytes();

TEST(FrameRelay, PassThroughIsByteIdenticalForEverySplit) {
  const Buffer stream = concat({kBind, kSync, kBind, kSync});
  for (size_t step = 1; step <= stream.size(); ++step) {
    Relayed r = relay(stream, step);
    ASSERT_TRUE(r.status) << step;
    EXPECT_EQ(r.out, stream) << "step " << step;
    EXPECT_TRUE(r.boundary);
  }
}

TEST(FrameRelay, HeldFramesAreReplacedWholeForEverySplit) {
  const Buffer stream = concat({kBind, kQuery, kSync, kQuery});
  const Buffer expected = concat({kBind, kHeld, kSync, kHeld});
  for (size_t step = 1; step <= stream.size(); ++step) {
    Relayed r = relay(stream, step);
    ASSERT_TRUE(r.status) << step;
    EXPECT_EQ(r.out, expected) << "step " << step;
    EXPECT_EQ(r.held_types.size(), 2U);
  }
}

TEST(FrameRelay, PartialHeldFrameIsNeverForwarded) {
  const Buffer stream = concat({kSync, kQuery});
  Relayed r = relay(Buffer(stream.begin(), stream.end() - 1), 3);
  ASSERT_TRUE(r.status);
  EXPECT_EQ(r.out, kSync);
  EXPECT_FALSE(r.boundary);
}

TEST(FrameRelay, BodilessHeldFrameCompletesAtOnce) {
  const Buffer empty_query = RawMessage('Q').bytes();  // length 4, no body
  for (size_t step = 1; step <= 6; ++step) {
    Relayed r = relay(concat({kSync, empty_query}), step);
    ASSERT_TRUE(r.status);
    EXPECT_EQ(r.out, concat({kSync, kHeld})) << step;
    EXPECT_TRUE(r.boundary);
  }
}

TEST(FrameRelay, BoundaryLengthsAreErrorsAndStopForwarding) {
  for (uint32_t bad : {0U, 1U, 2U, 3U}) {
    Buffer stream = kSync;
    Buffer frame = {'B', 0, 0, 0, static_cast<uint8_t>(bad)};
    stream.insert(stream.end(), frame.begin(), frame.end());
    Relayed r = relay(stream, stream.size());
    EXPECT_FALSE(r.status) << bad;
    EXPECT_EQ(r.out, kSync) << bad;  // nothing of the bad frame
  }
  // Above the configured maximum.
  Relayed r = relay(concat({kSync, kBind}), 64, 8);
  EXPECT_FALSE(r.status);
  EXPECT_EQ(r.out, kSync);
  // Exactly at the maximum is fine.
  Relayed ok = relay(kBind, 3, static_cast<uint32_t>(kBind.size() - 1));
  EXPECT_TRUE(ok.status);
  EXPECT_EQ(ok.out, kBind);
}

TEST(FrameRelay, RejectStopsBeforeTheFrame) {
  const Buffer bad = RawMessage('!').str("x").bytes();
  for (size_t step = 1; step <= 12; ++step) {
    Relayed r = relay(concat({kSync, bad, kSync}), step);
    EXPECT_FALSE(r.status);
    EXPECT_EQ(r.status.error().message, "rejected");
    EXPECT_EQ(r.out, kSync) << step;
  }
}

}  // namespace
}  // namespace pgcloak::protocol
