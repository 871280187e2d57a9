// GoogleTest checks shared by the codec tests: decode one raw message as a
// given struct, cross-check it against the type-byte dispatch, and round-trip
// structs through encode -> decode_frame -> decode.
#pragma once

#include <gtest/gtest.h>

#include <deque>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "protocol/backend.h"
#include "protocol/frontend.h"
#include "tests/support/raw_message.h"

namespace pgcloak::testing {

template <class T, class V>
struct is_alternative : std::false_type {};
template <class T, class... Ts>
struct is_alternative<T, std::variant<Ts...>> : std::bool_constant<(std::is_same_v<T, Ts> || ...)> {};

// decode_frontend / decode_backend must agree with M::decode, on success
// (same alternative, same bytes when re-encoded) and on failure (same error).
template <class Variant, class M>
void expect_dispatch_agrees(const protocol::Frame& frame, const Result<M>& direct) {
  Result<Variant> via = [&] {
    if constexpr (std::is_same_v<Variant, protocol::FrontendMessage>) {
      return protocol::decode_frontend(frame);
    } else {
      return protocol::decode_backend(frame);
    }
  }();
  ASSERT_EQ(via.ok(), direct.ok()) << (via.ok() ? direct.error().message : via.error().message);
  if (via.ok()) {
    ASSERT_TRUE(std::holds_alternative<M>(*via));
    Buffer again;
    protocol::encode(*via, again);
    EXPECT_EQ(again, encoded(*direct)) << "encode(variant) differs from M::encode";
  } else {
    EXPECT_EQ(via.error().message, direct.error().message);
  }
}

// Frames `wire`, which must be exactly one message, and decodes it as M.
template <class M>
Result<M> decode_wire(const Buffer& wire) {
  protocol::FrameResult f = protocol::decode_frame(wire, protocol::default_max_message_length);
  if (f.status != protocol::FrameStatus::complete || f.frame.size() != wire.size()) {
    ADD_FAILURE() << "test input does not frame as exactly one message";
    return Error::make(sqlstate::internal_error, "test: bad frame");
  }
  Result<M> direct = M::decode(f.frame.body);
  if constexpr (is_alternative<M, protocol::FrontendMessage>::value) {
    expect_dispatch_agrees<protocol::FrontendMessage>(f.frame, direct);
  }
  if constexpr (is_alternative<M, protocol::BackendMessage>::value) {
    expect_dispatch_agrees<protocol::BackendMessage>(f.frame, direct);
  }
  return direct;
}

// Expects `wire` to be refused as M with an 08P01 that starts with
// "invalid <message> message: " and contains `needle`.
template <class M>
void expect_invalid(const Buffer& wire, std::string_view message, std::string_view needle) {
  Result<M> r = decode_wire<M>(wire);
  ASSERT_FALSE(r.ok()) << "decoded although it should not: " << needle;
  EXPECT_EQ(r.error().sqlstate, sqlstate::protocol_violation);
  EXPECT_EQ(r.error().severity, Severity::fatal);
  const std::string& got = r.error().message;
  EXPECT_EQ(got.rfind("invalid " + std::string(message) + " message: ", 0), 0u) << got;
  EXPECT_NE(got.find(needle), std::string::npos) << got;
}

// Expects `wire` to decode as M and to re-encode to the very same bytes.
template <class M>
void expect_valid(const Buffer& wire) {
  Result<M> r = decode_wire<M>(wire);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(encoded(*r), wire) << "re-encoding must give back the same bytes";
}

// Round trips keep the wire buffers alive in the fixture because decoded
// byte fields are views into them.
class RoundTrip : public ::testing::Test {
 protected:
  // encode -> decode_frame -> M::decode (and the dispatch); the caller then
  // compares the fields it set.
  template <class M>
  M round_trip(const M& m, uint8_t type) {
    const Buffer& wire = wires_.emplace_back(encoded(m));
    EXPECT_EQ(wire.at(0), type);
    Result<M> r = decode_wire<M>(wire);
    if (!r.ok()) {
      ADD_FAILURE() << r.error().message;
      return M{};
    }
    EXPECT_EQ(encoded(*r), wire);
    return *r;
  }

 private:
  std::deque<Buffer> wires_;
};

}  // namespace pgcloak::testing
