// Fuzzes the frontend decoders the way the proxy meets them: frames cut from
// one stream with decode_frame, each decoded with decode_frontend, plus the
// three 'p' decoders (which one applies depends on auth state the codec does
// not track, so all three are tried on every frame). Whatever decodes must
// re-encode to exactly the bytes it came from.
#include <cstddef>
#include <cstdint>
#include <variant>

#include "protocol/frontend.h"
#include "protocol/message_type.h"
#include "tests/fuzz/fuzz_check.h"

using namespace pgcloak;            // NOLINT(google-build-using-namespace)
using namespace pgcloak::protocol;  // NOLINT(google-build-using-namespace)
using fuzz::check_error;
using fuzz::check_framing_agrees;
using fuzz::check_round_trip;
using fuzz::same_bytes;

// NOLINTNEXTLINE(readability-identifier-naming): the name libFuzzer calls.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes rest(data, size);
  while (true) {
    FrameResult f = decode_frame(rest, default_max_message_length);
    check_framing_agrees(rest, f, default_max_message_length);
    if (f.status != FrameStatus::complete) break;
    Bytes whole = rest.first(f.frame.size());

    check_round_trip<PasswordMessage>(f.frame.body, whole);
    check_round_trip<SASLInitialResponse>(f.frame.body, whole);
    check_round_trip<SASLResponse>(f.frame.body, whole);

    Result<FrontendMessage> m = decode_frontend(f.frame);
    if (m.ok()) {
      FUZZ_CHECK(f.frame.type() != fe::password);
      Buffer out;
      encode(*m, out);
      FUZZ_CHECK(same_bytes(out, whole));
      if (const auto* bind = std::get_if<Bind>(&*m)) {
        size_t formats = bind->parameter_formats.size();
        FUZZ_CHECK(formats <= 1 || formats == bind->parameters.size());
      }
      if (const auto* d = std::get_if<Describe>(&*m)) FUZZ_CHECK(d->kind == 'S' || d->kind == 'P');
      if (const auto* c = std::get_if<Close>(&*m)) FUZZ_CHECK(c->kind == 'S' || c->kind == 'P');
    } else {
      check_error(m.error());
    }
    rest = rest.subspan(f.frame.size());
  }
  return 0;
}
