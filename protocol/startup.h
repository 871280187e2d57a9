// Startup-phase packets: the ones with no type byte that a client may send
// first (protocol docs, "Message Formats": StartupMessage, SSLRequest,
// GSSENCRequest, CancelRequest). They are told apart by the Int32 code that
// follows the length.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "protocol/framing.h"
#include "protocol/result.h"
#include "protocol/wire.h"

namespace pgcloak::protocol {

inline constexpr int32_t ssl_request_code = 80877103;     // 1234 << 16 | 5679
inline constexpr int32_t gssenc_request_code = 80877104;  // 1234 << 16 | 5680
inline constexpr int32_t cancel_request_code = 80877102;  // 1234 << 16 | 5678
inline constexpr uint16_t protocol_major = 3;
inline constexpr uint16_t protocol_minor = 0;

struct StartupMessage {
  uint16_t major = protocol_major;
  uint16_t minor = protocol_minor;
  // In wire order. "user" is required; "_pq_."-prefixed names are protocol
  // extension options, which 3.0 does not define.
  std::vector<std::pair<std::string, std::string>> parameters;

  const std::string* find(std::string_view name) const;
  static Result<StartupMessage> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct SSLRequest {
  static Result<SSLRequest> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct GSSENCRequest {
  static Result<GSSENCRequest> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct CancelRequest {
  int32_t process_id = 0;
  int32_t secret_key = 0;
  static Result<CancelRequest> decode(Bytes body);
  void encode(Buffer& out) const;
};

using StartupPacket = std::variant<StartupMessage, SSLRequest, GSSENCRequest, CancelRequest>;

// Decodes the body of a frame from decode_startup_frame(). A protocol major
// version other than 3 is an 0A000 error; a 3.x minor version above 0 decodes
// fine and the caller answers it with NegotiateProtocolVersion.
Result<StartupPacket> decode_startup_packet(Bytes body);

}  // namespace pgcloak::protocol
