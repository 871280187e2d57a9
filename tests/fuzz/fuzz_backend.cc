// Fuzzes the backend decoders: frames cut from one stream with decode_frame,
// each decoded with decode_backend. Whatever decodes must re-encode to
// exactly the bytes it came from.
#include <cstddef>
#include <cstdint>
#include <variant>

#include "protocol/backend.h"
#include "tests/fuzz/fuzz_check.h"

using namespace pgcloak;            // NOLINT(google-build-using-namespace)
using namespace pgcloak::protocol;  // NOLINT(google-build-using-namespace)
using fuzz::check_error;
using fuzz::check_framing_agrees;
using fuzz::same_bytes;

// NOLINTNEXTLINE(readability-identifier-naming): the name libFuzzer calls.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes rest(data, size);
  while (true) {
    FrameResult f = decode_frame(rest, default_max_message_length);
    check_framing_agrees(rest, f, default_max_message_length);
    if (f.status != FrameStatus::complete) break;
    Bytes whole = rest.first(f.frame.size());

    Result<BackendMessage> m = decode_backend(f.frame);
    if (m.ok()) {
      Buffer out;
      encode(*m, out);
      FUZZ_CHECK(same_bytes(out, whole));
      if (const auto* z = std::get_if<ReadyForQuery>(&*m)) {
        FUZZ_CHECK(z->status == 'I' || z->status == 'T' || z->status == 'E');
      }
      if (const auto* e = std::get_if<ErrorResponse>(&*m)) {
        for (const auto& [code, value] : e->fields) FUZZ_CHECK(code != 0);
      }
      if (const auto* a = std::get_if<Authentication>(&*m)) {
        for (const auto& name : a->mechanisms) FUZZ_CHECK(!name.empty());
      }
    } else {
      check_error(m.error());
    }
    rest = rest.subspan(f.frame.size());
  }
  return 0;
}
