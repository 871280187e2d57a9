#include "protocol/framing.h"

#include <algorithm>
#include <string>

namespace pgcloak::protocol {

namespace {

Error bad_length(uint32_t length, uint32_t max_length, std::string_view what) {
  if (length < min_length) {
    return Error::protocol("invalid " + std::string(what) + " length " + std::to_string(length) +
                           ": below the minimum of 4");
  }
  return Error::protocol("invalid " + std::string(what) + " length " + std::to_string(length) +
                         ": above the limit of " + std::to_string(max_length) + " bytes");
}

// A length field above INT32_MAX would be negative as PostgreSQL reads it, so
// no caller-supplied limit can admit one.
uint32_t effective_limit(uint32_t max_length) {
  return std::min(max_length, 0x7fffffffU);
}

bool length_ok(uint32_t length, uint32_t max_length) {
  return length >= min_length && length <= effective_limit(max_length);
}

}  // namespace

HeaderResult decode_header(Bytes in, uint32_t max_length) {
  HeaderResult r;
  if (in.size() < 5) return r;
  r.header.type = in[0];
  r.header.length = load_u32(in.data() + 1);
  r.header.header_size = 5;
  if (!length_ok(r.header.length, max_length)) {
    r.status = FrameStatus::error;
    r.error = bad_length(r.header.length, effective_limit(max_length), "message");
    return r;
  }
  r.status = FrameStatus::complete;
  return r;
}

FrameResult decode_frame(Bytes in, uint32_t max_length) {
  FrameResult r;
  HeaderResult h = decode_header(in, max_length);
  if (h.status != FrameStatus::complete) {
    r.status = h.status;
    r.error = std::move(h.error);
    return r;
  }
  if (in.size() < h.header.frame_size()) return r;
  r.status = FrameStatus::complete;
  r.frame.header = h.header;
  r.frame.body = in.subspan(5, h.header.body_size());
  return r;
}

FrameResult decode_startup_frame(Bytes in, uint32_t max_length) {
  FrameResult r;
  if (in.size() < 4) return r;
  uint32_t length = load_u32(in.data());
  uint32_t limit = std::min(max_length, max_startup_length);
  // The shortest startup packet (SSLRequest) has an 8-byte length.
  if (length < 8 || length > limit) {
    r.status = FrameStatus::error;
    r.error = length < 8 ? Error::protocol("invalid startup packet length " + std::to_string(length) +
                                           ": below the minimum of 8")
                         : bad_length(length, limit, "startup packet");
    return r;
  }
  if (in.size() < length) return r;
  r.status = FrameStatus::complete;
  r.frame.header = FrameHeader{0, length, 4};
  r.frame.body = in.subspan(4, length - 4);
  return r;
}

}  // namespace pgcloak::protocol
