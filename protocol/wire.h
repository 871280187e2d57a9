// Bounds-checked primitives for reading message bodies and writing messages
// into a caller-owned buffer. All integers are big-endian (protocol docs,
// "Message Data Types").
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgcloak::protocol {

using Bytes = std::span<const uint8_t>;
using Buffer = std::vector<uint8_t>;

inline uint32_t load_u32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
inline uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}
inline void store_u32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

inline std::string_view as_chars(Bytes b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}
inline Bytes as_bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Reads fields from one message body. Every read checks the remaining length
// first and returns false instead of reading past the end; decoders turn a
// false into an 08P01 error that names the message and field.
class Reader {
 public:
  explicit Reader(Bytes body) : data_(body) {}

  size_t remaining() const { return data_.size() - pos_; }
  bool at_end() const { return pos_ == data_.size(); }
  size_t position() const { return pos_; }

  bool u8(uint8_t& out) {
    if (remaining() < 1) return false;
    out = data_[pos_++];
    return true;
  }
  bool i16(int16_t& out) {
    if (remaining() < 2) return false;
    out = static_cast<int16_t>(load_u16(data_.data() + pos_));
    pos_ += 2;
    return true;
  }
  bool u32(uint32_t& out) {
    if (remaining() < 4) return false;
    out = load_u32(data_.data() + pos_);
    pos_ += 4;
    return true;
  }
  bool i32(int32_t& out) {
    uint32_t v = 0;
    if (!u32(v)) return false;
    out = static_cast<int32_t>(v);
    return true;
  }
  // A NUL-terminated string; the terminator must lie inside the body.
  bool cstring(std::string_view& out) {
    // memchr on an empty span may see a null pointer, which is undefined even
    // with a zero length.
    if (remaining() == 0) return false;
    const auto* start = data_.data() + pos_;
    const void* nul = std::memchr(start, 0, remaining());
    if (nul == nullptr) return false;
    size_t n = static_cast<const uint8_t*>(nul) - start;
    out = {reinterpret_cast<const char*>(start), n};
    pos_ += n + 1;
    return true;
  }
  bool cstring(std::string& out) {
    std::string_view v;
    if (!cstring(v)) return false;
    out.assign(v);
    return true;
  }
  bool bytes(size_t n, Bytes& out) {
    if (remaining() < n) return false;
    out = data_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  // Int32 length then that many bytes; -1 means NULL. Any other negative
  // length is malformed.
  bool nullable_bytes(std::optional<Bytes>& out) {
    int32_t len = 0;
    if (!i32(len)) return false;
    if (len == -1) {
      out.reset();
      return true;
    }
    if (len < 0) return false;
    Bytes b;
    if (!bytes(static_cast<size_t>(len), b)) return false;
    out = b;
    return true;
  }
  Bytes rest() {
    Bytes r = data_.subspan(pos_);
    pos_ = data_.size();
    return r;
  }

 private:
  Bytes data_;
  size_t pos_ = 0;
};

// Appends messages to a caller-owned buffer. begin() writes the type byte and
// a length placeholder; end() patches the length once the body is written.
class Writer {
 public:
  explicit Writer(Buffer& out) : out_(out) {}

  // Typed message: type byte + length. Returns the offset of the length.
  size_t begin(uint8_t type) {
    out_.push_back(type);
    return begin_untyped();
  }
  // Startup-phase packets have no type byte.
  size_t begin_untyped() {
    size_t at = out_.size();
    out_.resize(at + 4);
    return at;
  }
  void end(size_t length_at) {
    store_u32(out_.data() + length_at, static_cast<uint32_t>(out_.size() - length_at));
  }

  void u8(uint8_t v) { out_.push_back(v); }
  void i16(int16_t v) {
    out_.push_back(static_cast<uint8_t>(static_cast<uint16_t>(v) >> 8));
    out_.push_back(static_cast<uint8_t>(v));
  }
  void u32(uint32_t v) {
    size_t at = out_.size();
    out_.resize(at + 4);
    store_u32(out_.data() + at, v);
  }
  void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
  // A string with an embedded NUL is cut at that NUL: written whole, the
  // receiver would end the field there and read the remainder as further
  // fields, letting text smuggle fields into the message.
  void cstring(std::string_view s) {
    s = s.substr(0, s.find('\0'));
    out_.insert(out_.end(), s.begin(), s.end());
    out_.push_back(0);
  }
  void bytes(Bytes b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void bytes(std::string_view s) { bytes(as_bytes(s)); }
  void nullable_bytes(const std::optional<Bytes>& b) {
    if (!b) {
      i32(-1);
      return;
    }
    i32(static_cast<int32_t>(b->size()));
    bytes(*b);
  }

  Buffer& buffer() { return out_; }

 private:
  Buffer& out_;
};

}  // namespace pgcloak::protocol
