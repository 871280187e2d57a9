// Fuzzes the startup-phase decoders: decode_startup_frame, then
// decode_startup_packet and each packet decoder on the body. Whatever decodes
// must re-encode to the same bytes and decode again to the same packet.
#include <cstddef>
#include <cstdint>
#include <variant>

#include "protocol/startup.h"
#include "tests/fuzz/fuzz_check.h"

using namespace pgcloak;            // NOLINT(google-build-using-namespace)
using namespace pgcloak::protocol;  // NOLINT(google-build-using-namespace)
using fuzz::check_error;
using fuzz::same_bytes;

namespace {

Buffer encode_packet(const StartupPacket& p) {
  Buffer out;
  std::visit([&out](const auto& packet) { packet.encode(out); }, p);
  return out;
}

// StartupMessage has no type byte, so compare whole packets, not bodies.
template <class M>
void check_packet_decoder(Bytes body, Bytes whole) {
  Result<M> r = M::decode(body);
  if (!r.ok()) {
    check_error(r.error());
    return;
  }
  Buffer out;
  r->encode(out);
  FUZZ_CHECK(same_bytes(out, whole));
}

}  // namespace

// NOLINTNEXTLINE(readability-identifier-naming): the name libFuzzer calls.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  FrameResult f = decode_startup_frame(in);
  if (f.status == FrameStatus::error) {
    check_error(f.error);
    return 0;
  }
  if (f.status == FrameStatus::need_more) {
    FUZZ_CHECK(size < 4 || load_u32(data) > size);
    return 0;
  }
  FUZZ_CHECK(f.frame.size() <= size && f.frame.size() >= 8);
  FUZZ_CHECK(f.frame.size() <= max_startup_length);
  FUZZ_CHECK(f.frame.body.data() == data + 4 && f.frame.body.size() + 4 == f.frame.size());
  Bytes whole = in.first(f.frame.size());

  // Each decoder on its own, whatever the code says.
  check_packet_decoder<StartupMessage>(f.frame.body, whole);
  check_packet_decoder<SSLRequest>(f.frame.body, whole);
  check_packet_decoder<GSSENCRequest>(f.frame.body, whole);
  check_packet_decoder<CancelRequest>(f.frame.body, whole);

  Result<StartupPacket> r = decode_startup_packet(f.frame.body);
  if (!r.ok()) {
    check_error(r.error());
    return 0;
  }
  if (const auto* m = std::get_if<StartupMessage>(&*r)) {
    FUZZ_CHECK(m->major == protocol_major);
    for (const auto& [name, value] : m->parameters) {
      FUZZ_CHECK(!name.empty());
      FUZZ_CHECK(m->find(name) != nullptr);
    }
  }
  Buffer out = encode_packet(*r);
  FUZZ_CHECK(same_bytes(out, whole));

  FrameResult again = decode_startup_frame(out);
  FUZZ_CHECK(again.status == FrameStatus::complete && again.frame.size() == out.size());
  Result<StartupPacket> r2 = decode_startup_packet(again.frame.body);
  FUZZ_CHECK(r2.ok() && r2->index() == r->index());
  FUZZ_CHECK(encode_packet(*r2) == out);
  return 0;
}
