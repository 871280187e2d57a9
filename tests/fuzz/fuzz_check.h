// Oracles shared by the fuzz targets. A failed check aborts, which libFuzzer
// reports as a crash and saves the input under tests/fuzz/artifacts/.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "protocol/backend.h"
#include "protocol/framing.h"

#define FUZZ_CHECK(cond)                                                                       \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      (void)std::fprintf(stderr, "%s:%d: fuzz check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

namespace pgcloak::fuzz {

using protocol::Buffer;
using protocol::Bytes;

inline bool same_bytes(Bytes a, Bytes b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// Every decode failure must be a well-formed FATAL error that the proxy can
// send as is: 08P01 (or 0A000 for an unsupported protocol version), a
// message, and an ErrorResponse built from it that decodes back to the same
// fields (nothing in the message may break the framing of the error itself).
inline void check_error(const Error& e) {
  FUZZ_CHECK(e.sqlstate == sqlstate::protocol_violation || e.sqlstate == sqlstate::feature_not_supported);
  FUZZ_CHECK(e.severity == Severity::fatal);
  FUZZ_CHECK(!e.message.empty());
  protocol::ErrorResponse response = protocol::ErrorResponse::from_error(e);
  Buffer wire;
  response.encode(wire);
  protocol::FrameResult f = protocol::decode_frame(wire, protocol::default_max_message_length);
  FUZZ_CHECK(f.status == protocol::FrameStatus::complete && f.frame.size() == wire.size());
  Result<protocol::ErrorResponse> back = protocol::ErrorResponse::decode(f.frame.body);
  FUZZ_CHECK(back.ok());
  FUZZ_CHECK(back->fields == response.fields);
}

// The header decoder and the frame decoder must agree on every input.
inline void check_framing_agrees(Bytes in, const protocol::FrameResult& f, uint32_t max_length) {
  protocol::HeaderResult h = protocol::decode_header(in, max_length);
  if (f.status == protocol::FrameStatus::error) {
    FUZZ_CHECK(h.status == protocol::FrameStatus::error);
    check_error(f.error);
    return;
  }
  if (f.status == protocol::FrameStatus::complete) {
    FUZZ_CHECK(h.status == protocol::FrameStatus::complete);
    FUZZ_CHECK(h.header.type == f.frame.type() && h.header.length == f.frame.header.length);
    FUZZ_CHECK(f.frame.size() <= in.size());
    FUZZ_CHECK(f.frame.body.data() == in.data() + 5);
    FUZZ_CHECK(f.frame.body.size() + 5 == f.frame.size());
    FUZZ_CHECK(f.frame.header.length >= protocol::min_length && f.frame.header.length <= max_length);
  }
}

// Decodes body as M; on success the re-encoding must reproduce `whole` (the
// decoders are strict, so there is exactly one encoding of each message).
// Returns whether it decoded.
template <class M>
bool check_round_trip(Bytes body, Bytes whole) {
  Result<M> r = M::decode(body);
  if (!r.ok()) {
    check_error(r.error());
    return false;
  }
  Buffer out;
  r->encode(out);
  FUZZ_CHECK(out.size() == whole.size());
  // Same body; the type byte may differ when a 'p' decoder is tried on a
  // frame of another type.
  FUZZ_CHECK(same_bytes(Bytes(out).subspan(1), whole.subspan(1)));
  return true;
}

}  // namespace pgcloak::fuzz
