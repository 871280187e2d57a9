// Reader and Writer: the bounds checks every decoder relies on.
#include "protocol/wire.h"

#include <gtest/gtest.h>

#include "tests/support/raw_message.h"

namespace pgcloak::protocol {
namespace {

using testing::text;

TEST(Reader, IntegersAreBigEndianAndBoundsChecked) {
  const uint8_t data[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0xff};
  Reader r(data);
  int16_t a = 0;
  uint32_t b = 0;
  uint8_t c = 0;
  ASSERT_TRUE(r.i16(a));
  EXPECT_EQ(a, 0x0102);
  ASSERT_TRUE(r.u32(b));
  EXPECT_EQ(b, 0x03040506u);
  EXPECT_FALSE(r.i16(a)) << "only one byte left";
  EXPECT_EQ(r.remaining(), 1u) << "a failed read consumes nothing";
  ASSERT_TRUE(r.u8(c));
  EXPECT_EQ(c, 0xff);
  EXPECT_TRUE(r.at_end());
  EXPECT_FALSE(r.u8(c));
}

TEST(Reader, NegativeInt16AndInt32) {
  const uint8_t data[] = {0xff, 0xfe, 0xff, 0xff, 0xff, 0xff};
  Reader r(data);
  int16_t a = 0;
  int32_t b = 0;
  ASSERT_TRUE(r.i16(a));
  EXPECT_EQ(a, -2);
  ASSERT_TRUE(r.i32(b));
  EXPECT_EQ(b, -1);
}

TEST(Reader, CstringNeedsTerminatorInsideBody) {
  const uint8_t data[] = {'a', 'b', 0, 'c'};
  Reader r(data);
  std::string_view s;
  ASSERT_TRUE(r.cstring(s));
  EXPECT_EQ(s, "ab");
  EXPECT_FALSE(r.cstring(s)) << "'c' has no terminator";
  EXPECT_EQ(r.remaining(), 1u);
}

TEST(Reader, CstringOnEmptyBodyFails) {
  Reader empty{Bytes{}};
  std::string_view s;
  EXPECT_FALSE(empty.cstring(s));
}

TEST(Reader, NullableBytesBoundaries) {
  auto read = [](int32_t len, size_t have) {
    auto b = testing::RawMessage('x').i32(len).fill(have).body();
    Reader r(b);
    std::optional<Bytes> out;
    bool ok = r.nullable_bytes(out);
    return std::make_pair(ok, ok && out ? std::optional<size_t>(out->size()) : std::nullopt);
  };
  EXPECT_FALSE(read(-2, 0).first);
  EXPECT_EQ(read(-1, 0), std::make_pair(true, std::optional<size_t>()));
  EXPECT_EQ(read(0, 0), std::make_pair(true, std::optional<size_t>(0)));
  EXPECT_EQ(read(3, 3), std::make_pair(true, std::optional<size_t>(3)));
  EXPECT_FALSE(read(4, 3).first);
  EXPECT_FALSE(read(INT32_MIN, 8).first);
}

TEST(Writer, PatchesLengthAndWritesBigEndian) {
  Buffer out = {0xaa};  // existing content must be kept
  Writer w(out);
  size_t at = w.begin('Q');
  w.i16(-2);
  w.i32(0x01020304);
  w.end(at);
  EXPECT_EQ(out, (Buffer{0xaa, 'Q', 0, 0, 0, 10, 0xff, 0xfe, 1, 2, 3, 4}));
}

TEST(Writer, CstringCutsAtEmbeddedNul) {
  // An embedded NUL would end the field early and let the rest of the text
  // be read as further fields.
  Buffer out;
  Writer w(out);
  w.cstring(std::string_view("ab\0Mforged", 10));
  EXPECT_EQ(text(out), std::string("ab\0", 3));
}

TEST(Writer, NullableBytes) {
  Buffer out;
  Writer w(out);
  w.nullable_bytes(std::nullopt);
  w.nullable_bytes(testing::bytes_of("hi"));
  EXPECT_EQ(out, (Buffer{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 2, 'h', 'i'}));
}

}  // namespace
}  // namespace pgcloak::protocol
