#include "protocol/startup.h"

#include <string>
#include <unordered_set>

namespace pgcloak::protocol {

namespace {

Error malformed(std::string_view what) {
  return Error::protocol("invalid startup packet layout: " + std::string(what));
}

// Client-supplied text quoted in an error: the error reaches logs and the
// client, so control bytes and non-ASCII are escaped and the length is capped
// (a name may be nearly 10000 bytes of anything).
std::string quoted(std::string_view s) {
  constexpr size_t max_shown = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < max_shown; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xf]);
    }
  }
  if (s.size() > max_shown) out += "...";
  out += "\"";
  return out;
}

void encode_code_only(Buffer& out, int32_t code) {
  Writer w(out);
  size_t at = w.begin_untyped();
  w.i32(code);
  w.end(at);
}

Result<Unit> expect_code_only(Bytes body, int32_t code, std::string_view name) {
  Reader r(body);
  int32_t got = 0;
  if (!r.i32(got) || got != code || !r.at_end()) {
    return malformed(std::string(name) + " must be exactly 8 bytes");
  }
  return Unit{};
}

}  // namespace

const std::string* StartupMessage::find(std::string_view name) const {
  for (const auto& [k, v] : parameters) {
    if (k == name) return &v;
  }
  return nullptr;
}

Result<StartupMessage> StartupMessage::decode(Bytes body) {
  Reader r(body);
  uint32_t version = 0;
  if (!r.u32(version)) return malformed("missing protocol version");
  StartupMessage m;
  m.major = static_cast<uint16_t>(version >> 16);
  m.minor = static_cast<uint16_t>(version & 0xffff);
  if (m.major != protocol_major) {
    return Error::make(sqlstate::feature_not_supported,
                       "unsupported frontend protocol " + std::to_string(m.major) + "." +
                           std::to_string(m.minor) + ": server supports 3.0 to 3.0",
                       Severity::fatal);
  }
  // name\0value\0 pairs, ended by a single \0 that must be the last byte.
  // A name may appear once: PostgreSQL takes the last "user" (and applies
  // every setting in order), so a proxy that reads one occurrence and lets
  // the server read another would decide on a login that is not the one
  // that runs (ProcessStartupPacket, src/backend/postmaster/postmaster.c).
  std::unordered_set<std::string_view> seen;
  for (;;) {
    std::string_view name;
    if (!r.cstring(name)) return malformed("parameter list is not terminated");
    if (name.empty()) break;
    if (!seen.insert(name).second) return malformed("parameter " + quoted(name) + " appears more than once");
    std::string_view value;
    if (!r.cstring(value)) return malformed("parameter " + quoted(name) + " has no value");
    m.parameters.emplace_back(std::string(name), std::string(value));
  }
  if (!r.at_end()) return malformed("bytes after the parameter list terminator");
  return m;
}

void StartupMessage::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin_untyped();
  w.u32((uint32_t{major} << 16) | minor);
  for (const auto& [k, v] : parameters) {
    w.cstring(k);
    w.cstring(v);
  }
  w.u8(0);
  w.end(at);
}

Result<SSLRequest> SSLRequest::decode(Bytes body) {
  auto s = expect_code_only(body, ssl_request_code, "SSLRequest");
  if (!s) return std::move(s).error();
  return SSLRequest{};
}
void SSLRequest::encode(Buffer& out) const {
  encode_code_only(out, ssl_request_code);
}

Result<GSSENCRequest> GSSENCRequest::decode(Bytes body) {
  auto s = expect_code_only(body, gssenc_request_code, "GSSENCRequest");
  if (!s) return std::move(s).error();
  return GSSENCRequest{};
}
void GSSENCRequest::encode(Buffer& out) const {
  encode_code_only(out, gssenc_request_code);
}

Result<CancelRequest> CancelRequest::decode(Bytes body) {
  Reader r(body);
  int32_t code = 0;
  CancelRequest c;
  if (!r.i32(code) || code != cancel_request_code || !r.i32(c.process_id) || !r.i32(c.secret_key) ||
      !r.at_end()) {
    return malformed("CancelRequest must be exactly 16 bytes");
  }
  return c;
}

void CancelRequest::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin_untyped();
  w.i32(cancel_request_code);
  w.i32(process_id);
  w.i32(secret_key);
  w.end(at);
}

Result<StartupPacket> decode_startup_packet(Bytes body) {
  if (body.size() < 4) return malformed("missing protocol version");
  auto code = static_cast<int32_t>(load_u32(body.data()));
  auto wrap = [](auto r) -> Result<StartupPacket> {
    if (!r) return std::move(r).error();
    return StartupPacket{std::move(r).value()};
  };
  switch (code) {
    case ssl_request_code: return wrap(SSLRequest::decode(body));
    case gssenc_request_code: return wrap(GSSENCRequest::decode(body));
    case cancel_request_code: return wrap(CancelRequest::decode(body));
    default: return wrap(StartupMessage::decode(body));
  }
}

}  // namespace pgcloak::protocol
