// Framing of the two wire formats. Startup-phase packets are
// Int32 length + body; every later message is Byte1 type + Int32 length +
// body, where the length counts itself but not the type byte (protocol docs,
// "Message Formats"). Decoders never consume input: they report how many bytes
// make up the frame, and the caller drops them once it is done with the view.
#pragma once

#include <cstdint>

#include "protocol/error.h"
#include "protocol/wire.h"

namespace pgcloak::protocol {

// Smallest legal length field: the four bytes of the length itself.
inline constexpr uint32_t min_length = 4;
// PostgreSQL refuses startup packets above 10000 bytes
// (MAX_STARTUP_PACKET_LENGTH in src/include/libpq/pqcomm.h); so do we.
inline constexpr uint32_t max_startup_length = 10000;
// PostgreSQL's own ceiling for any message (PQ_LARGE_MESSAGE_LIMIT, 1 GiB - 1).
inline constexpr uint32_t default_max_message_length = 0x3fffffff;

enum class FrameStatus : uint8_t { need_more, complete, error };

struct FrameHeader {
  uint8_t type = 0;     // 0 for startup-phase packets
  uint32_t length = 0;  // as on the wire: counts itself, not the type byte
  // Bytes of header in front of the body: 5 for typed, 4 for startup packets.
  uint32_t header_size = 5;
  uint64_t frame_size() const { return uint64_t{header_size} + length - 4; }
  uint32_t body_size() const { return length - 4; }
};

struct Frame {
  FrameHeader header;
  Bytes body;
  uint8_t type() const { return header.type; }
  uint64_t size() const { return header.frame_size(); }
};

struct HeaderResult {
  FrameStatus status = FrameStatus::need_more;
  FrameHeader header;
  Error error;
};

struct FrameResult {
  FrameStatus status = FrameStatus::need_more;
  Frame frame;
  Error error;
};

// Typed messages. The header alone is enough to route a message whose body
// the proxy only forwards (conventions: forward on the header).
HeaderResult decode_header(Bytes in, uint32_t max_length);
FrameResult decode_frame(Bytes in, uint32_t max_length);

// Startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
// CancelRequest). max_length is capped at max_startup_length.
FrameResult decode_startup_frame(Bytes in, uint32_t max_length = max_startup_length);

}  // namespace pgcloak::protocol
