#include "protocol/frame_scanner.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace pgcloak::protocol {
namespace {

struct Seen {
  uint8_t type;
  uint32_t length;
  bool has_body;
  std::string body;
};

Buffer msg(uint8_t type, const std::string& body) {
  Buffer out;
  Writer w(out);
  size_t at = w.begin(type);
  w.bytes(body);
  w.end(at);
  return out;
}

Buffer concat(std::initializer_list<Buffer> parts) {
  Buffer out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Scans `stream` cut at the given offsets; bodies of 'Z' and 'E' are asked for.
std::vector<Seen> scan_split(const Buffer& stream, const std::vector<size_t>& cuts, bool* ok = nullptr) {
  FrameScanner s(1 << 20);
  std::vector<Seen> seen;
  size_t prev = 0;
  std::vector<size_t> all = cuts;
  all.push_back(stream.size());
  bool good = true;
  for (size_t cut : all) {
    Bytes chunk(stream.data() + prev, cut - prev);
    auto st = s.scan(
        chunk, [](uint8_t t, uint32_t) { return t == 'Z' || t == 'E'; },
        [&](uint8_t t, uint32_t len, const Bytes* body) {
          seen.push_back({t, len, body != nullptr, body ? std::string(as_chars(*body)) : std::string()});
        });
    if (!st) good = false;
    prev = cut;
  }
  if (ok) *ok = good && s.at_boundary();
  return seen;
}

TEST(FrameScannerTest, CoalescedFramesAreReportedInOrder) {
  Buffer stream = concat({msg('T', "rowdesc"), msg('D', "row1"), msg('D', "row2"),
                          msg('C', std::string("SELECT 2\0", 9)), msg('Z', "I")});
  bool ok = false;
  auto seen = scan_split(stream, {}, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(seen.size(), 5U);
  EXPECT_EQ(seen[0].type, 'T');
  EXPECT_FALSE(seen[0].has_body);  // not asked for, so skipped
  EXPECT_EQ(seen[1].length, 8U);
  EXPECT_EQ(seen[4].type, 'Z');
  ASSERT_TRUE(seen[4].has_body);
  EXPECT_EQ(seen[4].body, "I");
}

TEST(FrameScannerTest, EverySplitPointGivesTheSameFrames) {
  Buffer stream = concat({msg('D', "abc"), msg('E', std::string("SERROR\0", 7)), msg('Z', "T")});
  auto whole = scan_split(stream, {});
  for (size_t cut = 1; cut < stream.size(); ++cut) {
    bool ok = false;
    auto seen = scan_split(stream, {cut}, &ok);
    ASSERT_TRUE(ok) << "cut at " << cut;
    ASSERT_EQ(seen.size(), whole.size()) << "cut at " << cut;
    for (size_t i = 0; i < seen.size(); ++i) {
      EXPECT_EQ(seen[i].type, whole[i].type);
      EXPECT_EQ(seen[i].body, whole[i].body) << "cut at " << cut;
    }
  }
}

TEST(FrameScannerTest, OneByteAtATime) {
  Buffer stream = concat({msg('Z', "I"), msg('Z', "E")});
  std::vector<size_t> cuts;
  for (size_t i = 1; i < stream.size(); ++i) cuts.push_back(i);
  bool ok = false;
  auto seen = scan_split(stream, cuts, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(seen.size(), 2U);
  EXPECT_EQ(seen[0].body, "I");
  EXPECT_EQ(seen[1].body, "E");
}

TEST(FrameScannerTest, NotAtBoundaryInsideAFrame) {
  Buffer stream = msg('D', std::string(100, 'x'));
  FrameScanner s(1 << 20);
  auto none = [](uint8_t, uint32_t) { return false; };
  auto ignore = [](uint8_t, uint32_t, const Bytes*) {};
  EXPECT_TRUE(s.scan(Bytes(stream.data(), 3), none, ignore).ok());
  EXPECT_FALSE(s.at_boundary());  // partial header
  EXPECT_TRUE(s.scan(Bytes(stream.data() + 3, 50), none, ignore).ok());
  EXPECT_FALSE(s.at_boundary());  // partial body
  EXPECT_TRUE(s.scan(Bytes(stream.data() + 53, stream.size() - 53), none, ignore).ok());
  EXPECT_TRUE(s.at_boundary());
}

TEST(FrameScannerTest, HugeSkippedBodyIsNotBuffered) {
  // A 512 MiB DataRow header followed by a little of its body: the scanner
  // must accept it (under the limit) and only count bytes.
  FrameScanner s(1U << 30);
  Buffer head = {'D', 0x20, 0, 0, 4};
  int frames = 0;
  auto st = s.scan(
      Bytes(head), [](uint8_t, uint32_t) { return false; },
      [&](uint8_t t, uint32_t len, const Bytes* body) {
        ++frames;
        EXPECT_EQ(t, 'D');
        EXPECT_EQ(len, 0x20000004U);
        EXPECT_EQ(body, nullptr);
      });
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(frames, 1);
  Buffer chunk(1 << 16, 'y');
  for (int i = 0; i < 4; ++i)
    ASSERT_TRUE(s.scan(
                     Bytes(chunk), [](uint8_t, uint32_t) { return false; },
                     [&](uint8_t, uint32_t, const Bytes*) { ++frames; })
                    .ok());
  EXPECT_EQ(frames, 1);  // still inside the same body
  EXPECT_FALSE(s.at_boundary());
}

TEST(FrameScannerTest, BadLengthsAreErrors) {
  for (uint32_t bad : {0U, 1U, 2U, 3U, 0x80000000U, 0xffffffffU}) {
    Buffer b = {'Q', static_cast<uint8_t>(bad >> 24), static_cast<uint8_t>(bad >> 16),
                static_cast<uint8_t>(bad >> 8), static_cast<uint8_t>(bad)};
    FrameScanner s(1U << 30);
    auto st = s.scan(
        Bytes(b), [](uint8_t, uint32_t) { return false; }, [](uint8_t, uint32_t, const Bytes*) {});
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_EQ(st.error().sqlstate, sqlstate::protocol_violation);
  }
}

TEST(FrameScannerTest, LimitIsInclusive) {
  Buffer at_limit = {'D', 0, 0, 0x10, 0};  // length 4096
  Buffer over = {'D', 0, 0, 0x10, 1};
  FrameScanner a(4096);
  EXPECT_TRUE(
      a.scan(
           Bytes(at_limit), [](uint8_t, uint32_t) { return false; }, [](uint8_t, uint32_t, const Bytes*) {})
          .ok());
  FrameScanner b(4096);
  EXPECT_FALSE(
      b.scan(
           Bytes(over), [](uint8_t, uint32_t) { return false; }, [](uint8_t, uint32_t, const Bytes*) {})
          .ok());
}

TEST(FrameScannerTest, EmptyBodyFrameWithBodyRequested) {
  Buffer stream = concat({msg('E', ""), msg('Z', "I")});
  bool ok = false;
  auto seen = scan_split(stream, {3}, &ok);
  ASSERT_TRUE(ok);
  ASSERT_EQ(seen.size(), 2U);
  EXPECT_TRUE(seen[0].has_body);
  EXPECT_EQ(seen[0].body, "");
}

}  // namespace
}  // namespace pgcloak::protocol
