// Internal to protocol/*.cc: a Reader that knows which message it is reading
// and names the field in every error, so a malformed body always turns into
// an 08P01 like `invalid Bind message: parameter count -1 is negative`.
//
// The first failure sticks: later reads do nothing and return false, so a
// decoder can chain reads with && and return take_error() once. Every length
// and count is checked against the remaining bytes before anything is read or
// allocated (conventions: validate before consuming), which also bounds every
// vector reserve() by the size of the body.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol/error.h"
#include "protocol/wire.h"

namespace pgcloak::protocol::detail {

// A type byte for error text: 'Q' when printable, 0x00 otherwise.
inline std::string type_text(uint8_t type) {
  if (type >= 0x20 && type < 0x7f) return std::string{'\'', static_cast<char>(type), '\''};
  static constexpr char hex[] = "0123456789abcdef";
  return std::string{'0', 'x', hex[type >> 4], hex[type & 0xf]};
}

class FieldReader {
 public:
  FieldReader(Bytes body, std::string_view message) : r_(body), message_(message) {}

  bool ok() const { return !error_.has_value(); }
  size_t remaining() const { return r_.remaining(); }
  bool at_end() const { return r_.at_end(); }
  // Messages sharing one type byte (Authentication*) are named once the
  // discriminating field is known.
  void set_message(std::string_view message) { message_ = message; }

  bool u8(uint8_t& out, std::string_view field) { return ok() && (r_.u8(out) || missing(field)); }
  bool i16(int16_t& out, std::string_view field) { return ok() && (r_.i16(out) || missing(field)); }
  bool i32(int32_t& out, std::string_view field) { return ok() && (r_.i32(out) || missing(field)); }
  bool u32(uint32_t& out, std::string_view field) { return ok() && (r_.u32(out) || missing(field)); }

  bool cstring(std::string_view& out, std::string_view field) {
    if (!ok()) return false;
    if (r_.cstring(out)) return true;
    return fail(std::string(field) + " is not NUL-terminated inside the message");
  }
  bool cstring(std::string& out, std::string_view field) {
    std::string_view v;
    if (!cstring(v, field)) return false;
    out.assign(v);
    return true;
  }

  bool bytes(size_t n, Bytes& out, std::string_view field) {
    return ok() && (r_.bytes(n, out) || missing(field));
  }

  // An Int16 count of items that each take at least min_item_size bytes.
  // PostgreSQL reads these counts unsigned (pq_getmsgint(msg, 2)), so a Bind
  // may carry up to 65535 parameters; we do the same. A count that cannot fit
  // in what is left of the body is rejected before any item is read.
  bool count16(size_t& out, size_t min_item_size, std::string_view field) {
    int16_t n = 0;
    if (!i16(n, field)) return false;
    return check_count(static_cast<uint16_t>(n), min_item_size, field, out);
  }
  // Same for the Int32 counts (NegotiateProtocolVersion).
  bool count32(size_t& out, size_t min_item_size, std::string_view field) {
    int32_t n = 0;
    if (!i32(n, field)) return false;
    return check_count(n, min_item_size, field, out);
  }

  // Int16 count followed by that many Int16 values (format codes).
  bool i16_array(std::vector<int16_t>& out, std::string_view count_field) {
    size_t n = 0;
    if (!count16(n, 2, count_field)) return false;
    out.resize(n);
    for (auto& v : out) r_.i16(v);  // cannot fail: count16 checked the room
    return true;
  }
  // Int16 count followed by that many Int32 values (type OIDs).
  bool u32_array(std::vector<uint32_t>& out, std::string_view count_field) {
    size_t n = 0;
    if (!count16(n, 4, count_field)) return false;
    out.resize(n);
    for (auto& v : out) r_.u32(v);  // cannot fail: count16 checked the room
    return true;
  }

  // Int32 length then that many bytes. -1 is NULL; any other negative length
  // is malformed (protocol docs, Bind / DataRow / FunctionCall). `index` is
  // the position in its list, only used in the error text.
  bool nullable_bytes(std::optional<Bytes>& out, std::string_view field,
                      std::optional<size_t> index = std::nullopt) {
    int32_t len = 0;
    if (!ok()) return false;
    if (!r_.i32(len)) return fail(describe(field, index) + " length is missing");
    if (len == -1) {
      out.reset();
      return true;
    }
    if (len < 0) {
      return fail(describe(field, index) + " length " + std::to_string(len) + " is negative");
    }
    if (static_cast<size_t>(len) > r_.remaining()) {
      return fail(describe(field, index) + " length " + std::to_string(len) + " exceeds the " +
                  std::to_string(r_.remaining()) + " remaining bytes");
    }
    Bytes b;
    r_.bytes(static_cast<size_t>(len), b);
    out = b;
    return true;
  }

  Bytes rest() { return ok() ? r_.rest() : Bytes{}; }

  // The body must be consumed exactly: bytes after the last field mean the
  // sender and we disagree about the layout, and a policy proxy must not
  // guess which of us is right.
  bool finish() {
    if (!ok()) return false;
    if (r_.at_end()) return true;
    return fail(std::to_string(r_.remaining()) + " unexpected bytes after the last field");
  }

  bool fail(std::string what) {
    if (ok()) error_ = Error::protocol("invalid " + std::string(message_) + " message: " + what);
    return false;
  }

  Error take_error() {
    if (!error_) return Error::protocol("invalid " + std::string(message_) + " message");
    return std::move(*error_);
  }

 private:
  static std::string describe(std::string_view field, std::optional<size_t> index) {
    if (!index) return std::string(field);
    return std::string(field) + " " + std::to_string(*index);
  }
  bool missing(std::string_view field) {
    return fail(std::string(field) + " is missing (" + std::to_string(r_.remaining()) + " bytes left)");
  }
  template <class Int>
  bool check_count(Int n, size_t min_item_size, std::string_view field, size_t& out) {
    if (n < 0) return fail(std::string(field) + " " + std::to_string(n) + " is negative");
    auto need = static_cast<uint64_t>(n) * min_item_size;
    if (need > r_.remaining()) {
      return fail(std::string(field) + " " + std::to_string(n) + " needs at least " + std::to_string(need) +
                  " bytes but " + std::to_string(r_.remaining()) + " remain");
    }
    out = static_cast<size_t>(n);
    return true;
  }

  Reader r_;
  std::string_view message_;
  std::optional<Error> error_;
};

// Messages whose body is empty (Sync, Flush, Terminate, CopyDone,
// ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended,
// EmptyQueryResponse): any byte in the body is malformed.
template <class M>
Result<M> decode_empty(Bytes body, std::string_view name) {
  FieldReader r(body, name);
  if (!r.finish()) return r.take_error();
  return M{};
}

inline void encode_empty(Buffer& out, uint8_t type) {
  Writer w(out);
  w.end(w.begin(type));
}

}  // namespace pgcloak::protocol::detail

// Defines decode() and encode() of a message with an empty body.
#define PGCLOAK_EMPTY_MESSAGE(Name, type_byte) \
  Result<Name> Name::decode(Bytes body) {      \
    return decode_empty<Name>(body, #Name);    \
  }                                            \
  void Name::encode(Buffer& out) const {       \
    encode_empty(out, type_byte);              \
  }
