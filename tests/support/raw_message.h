// Builds wire bytes field by field with no validation at all, so a test can
// write exactly the malformed input it means: a negative count, a length that
// lies, a missing terminator (conventions, point 10: one shared helper builds
// raw messages). Only the standard library; usable from any test.
//
//   Buffer b = RawMessage('B').str("").str("s1").i16(0).i16(-1).i16(0).bytes();
//   Buffer s = RawMessage::untyped().i32(80877103).bytes();   // SSLRequest
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgcloak::testing {

using Buffer = std::vector<uint8_t>;

class RawMessage {
 public:
  // A typed message: Byte1 type, Int32 length, body.
  explicit RawMessage(uint8_t type) : type_(type) {}
  // A startup-phase packet: Int32 length, body, no type byte.
  static RawMessage untyped() { return RawMessage(); }

  RawMessage& u8(uint8_t v) {
    body_.push_back(v);
    return *this;
  }
  RawMessage& i16(int16_t v) {
    auto u = static_cast<uint16_t>(v);
    body_.push_back(static_cast<uint8_t>(u >> 8));
    body_.push_back(static_cast<uint8_t>(u));
    return *this;
  }
  RawMessage& u32(uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) body_.push_back(static_cast<uint8_t>(v >> shift));
    return *this;
  }
  RawMessage& i32(int32_t v) { return u32(static_cast<uint32_t>(v)); }
  // A String field: the text and its NUL terminator.
  RawMessage& str(std::string_view s) { return raw(s).u8(0); }
  // Bytes as they are, no terminator.
  RawMessage& raw(std::string_view s) {
    body_.insert(body_.end(), s.begin(), s.end());
    return *this;
  }
  RawMessage& raw(std::span<const uint8_t> b) {
    body_.insert(body_.end(), b.begin(), b.end());
    return *this;
  }
  // n filler bytes.
  RawMessage& fill(size_t n, uint8_t v = 'x') {
    body_.insert(body_.end(), n, v);
    return *this;
  }
  // Int32 length + bytes; pass std::nullopt for a NULL (-1).
  RawMessage& value(std::optional<std::string_view> v) {
    if (!v) return i32(-1);
    return i32(static_cast<int32_t>(v->size())).raw(*v);
  }
  // Writes this value into the length field instead of the true length.
  RawMessage& length(uint32_t v) {
    length_ = v;
    return *this;
  }

  const Buffer& body() const { return body_; }
  // The true length field: the body plus the four bytes of the length.
  uint32_t true_length() const { return static_cast<uint32_t>(body_.size() + 4); }

  // The whole message as it would appear on the wire.
  Buffer bytes() const {
    Buffer out;
    if (type_) out.push_back(*type_);
    uint32_t len = length_.value_or(true_length());
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(len >> shift));
    out.insert(out.end(), body_.begin(), body_.end());
    return out;
  }

 private:
  RawMessage() = default;

  std::optional<uint8_t> type_;
  std::optional<uint32_t> length_;
  Buffer body_;
};

// Several messages back to back, as a coalesced read would deliver them.
inline Buffer concat(std::initializer_list<Buffer> parts) {
  Buffer out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Bytes as text, so gtest can compare and print them.
inline std::string text(std::span<const uint8_t> b) {
  return {b.begin(), b.end()};
}
inline std::string text(const Buffer& b) {
  return {b.begin(), b.end()};
}
inline std::optional<std::string> text(const std::optional<std::span<const uint8_t>>& b) {
  if (!b) return std::nullopt;
  return text(*b);
}
inline std::vector<std::optional<std::string>> texts(
    const std::vector<std::optional<std::span<const uint8_t>>>& values) {
  std::vector<std::optional<std::string>> out;
  for (const auto& v : values) out.push_back(text(v));
  return out;
}
inline std::span<const uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Encodes any codec message (anything with encode(Buffer&)) into a new buffer.
template <class M>
Buffer encoded(const M& message) {
  Buffer out;
  message.encode(out);
  return out;
}

}  // namespace pgcloak::testing
