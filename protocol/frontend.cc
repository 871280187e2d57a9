// Frontend messages (protocol docs, "Message Formats"). Every decoder checks
// each count and length against the remaining bytes before it reads, and
// requires the body to be consumed exactly.
#include "protocol/frontend.h"

#include <array>
#include <string>
#include <utility>

#include "protocol/field_reader.h"
#include "protocol/message_type.h"

namespace pgcloak::protocol {

using detail::decode_empty;
using detail::encode_empty;
using detail::FieldReader;
using detail::type_text;

namespace {

// Describe and Close name a prepared statement ('S') or a portal ('P');
// anything else is rejected, as PostgreSQL does.
bool read_kind(FieldReader& r, uint8_t& kind) {
  if (!r.u8(kind, "kind")) return false;
  if (kind == 'S' || kind == 'P') return true;
  return r.fail("kind " + type_text(kind) + " is neither 'S' nor 'P'");
}

// Bind and FunctionCall: "The number of parameter format codes ... can be
// zero ..., or one, in which case the specified format code is applied to all
// parameters; or it can equal the actual number of parameters."
bool check_format_count(FieldReader& r, size_t formats, size_t values, std::string_view what) {
  if (formats == 0 || formats == 1 || formats == values) return true;
  return r.fail(std::string(what) + " format count " + std::to_string(formats) + " is neither 0, 1 nor the " +
                std::string(what) + " count " + std::to_string(values));
}

void write_i16_array(Writer& w, const std::vector<int16_t>& values) {
  w.i16(static_cast<int16_t>(values.size()));
  for (int16_t v : values) w.i16(v);
}

void write_values(Writer& w, const std::vector<std::optional<Bytes>>& values) {
  w.i16(static_cast<int16_t>(values.size()));
  for (const auto& v : values) w.nullable_bytes(v);
}

// Dispatch by type byte. A new message is one line in frontend_messages.
using FrontendDecoder = Result<FrontendMessage> (*)(Bytes);

template <class M>
Result<FrontendMessage> decode_as(Bytes body) {
  Result<M> r = M::decode(body);
  if (!r) return std::move(r).error();
  return FrontendMessage{std::in_place_type<M>, std::move(r).value()};
}

struct FrontendEntry {
  uint8_t type;
  FrontendDecoder decode;
};

constexpr FrontendEntry frontend_messages[] = {
    {fe::bind, decode_as<Bind>},
    {fe::close, decode_as<Close>},
    {fe::copy_data, decode_as<CopyData>},
    {fe::copy_done, decode_as<CopyDone>},
    {fe::copy_fail, decode_as<CopyFail>},
    {fe::describe, decode_as<Describe>},
    {fe::execute, decode_as<Execute>},
    {fe::flush, decode_as<Flush>},
    {fe::function_call, decode_as<FunctionCall>},
    {fe::parse, decode_as<Parse>},
    {fe::query, decode_as<Query>},
    {fe::sync, decode_as<Sync>},
    {fe::terminate, decode_as<Terminate>},
};

constexpr std::array<FrontendDecoder, 256> frontend_decoders = [] {
  std::array<FrontendDecoder, 256> table{};
  for (const auto& e : frontend_messages) table[e.type] = e.decode;
  return table;
}();

}  // namespace

// ---- Query: String query.
Result<Query> Query::decode(Bytes body) {
  FieldReader r(body, "Query");
  Query m;
  if (!r.cstring(m.sql, "query string") || !r.finish()) return r.take_error();
  return m;
}

void Query::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::query);
  w.cstring(sql);
  w.end(at);
}

// ---- Parse: String name, String query, Int16 count, Int32[count] type OIDs.
Result<Parse> Parse::decode(Bytes body) {
  FieldReader r(body, "Parse");
  Parse m;
  if (!r.cstring(m.statement, "statement name") || !r.cstring(m.query, "query string") ||
      !r.u32_array(m.parameter_types, "parameter type count") || !r.finish()) {
    return r.take_error();
  }
  return m;
}

void Parse::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::parse);
  w.cstring(statement);
  w.cstring(query);
  w.i16(static_cast<int16_t>(parameter_types.size()));
  for (uint32_t oid : parameter_types) w.u32(oid);
  w.end(at);
}

// ---- Bind: String portal, String statement, Int16 C + Int16[C] parameter
// formats, Int16 P + P x (Int32 length, Byte[length]) values, Int16 R +
// Int16[R] result formats.
Result<Bind> Bind::decode(Bytes body) {
  FieldReader r(body, "Bind");
  Bind m;
  size_t params = 0;
  if (!r.cstring(m.portal, "portal name") || !r.cstring(m.statement, "statement name") ||
      !r.i16_array(m.parameter_formats, "parameter format count") ||
      !r.count16(params, 4, "parameter count") ||
      !check_format_count(r, m.parameter_formats.size(), params, "parameter")) {
    return r.take_error();
  }
  m.parameters.resize(params);
  for (size_t i = 0; i < params; ++i) {
    if (!r.nullable_bytes(m.parameters[i], "parameter", i)) return r.take_error();
  }
  if (!r.i16_array(m.result_formats, "result format count") || !r.finish()) return r.take_error();
  return m;
}

void Bind::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::bind);
  w.cstring(portal);
  w.cstring(statement);
  write_i16_array(w, parameter_formats);
  write_values(w, parameters);
  write_i16_array(w, result_formats);
  w.end(at);
}

// ---- Describe: Byte1 'S'/'P', String name.
Result<Describe> Describe::decode(Bytes body) {
  FieldReader r(body, "Describe");
  Describe m;
  if (!read_kind(r, m.kind) || !r.cstring(m.name, "name") || !r.finish()) return r.take_error();
  return m;
}

void Describe::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::describe);
  w.u8(kind);
  w.cstring(name);
  w.end(at);
}

// ---- Execute: String portal, Int32 max rows.
Result<Execute> Execute::decode(Bytes body) {
  FieldReader r(body, "Execute");
  Execute m;
  if (!r.cstring(m.portal, "portal name") || !r.i32(m.max_rows, "maximum row count") || !r.finish()) {
    return r.take_error();
  }
  return m;
}

void Execute::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::execute);
  w.cstring(portal);
  w.i32(max_rows);
  w.end(at);
}

PGCLOAK_EMPTY_MESSAGE(Sync, fe::sync)

PGCLOAK_EMPTY_MESSAGE(Flush, fe::flush)

// ---- Close: Byte1 'S'/'P', String name.
Result<Close> Close::decode(Bytes body) {
  FieldReader r(body, "Close");
  Close m;
  if (!read_kind(r, m.kind) || !r.cstring(m.name, "name") || !r.finish()) return r.take_error();
  return m;
}

void Close::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::close);
  w.u8(kind);
  w.cstring(name);
  w.end(at);
}

PGCLOAK_EMPTY_MESSAGE(Terminate, fe::terminate)

// ---- CopyData: the whole body is data, in either direction.
Result<CopyData> CopyData::decode(Bytes body) {
  return CopyData{body};
}

void CopyData::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::copy_data);
  w.bytes(data);
  w.end(at);
}

PGCLOAK_EMPTY_MESSAGE(CopyDone, fe::copy_done)

// ---- CopyFail: String error message.
Result<CopyFail> CopyFail::decode(Bytes body) {
  FieldReader r(body, "CopyFail");
  CopyFail m;
  if (!r.cstring(m.message, "error message") || !r.finish()) return r.take_error();
  return m;
}

void CopyFail::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::copy_fail);
  w.cstring(message);
  w.end(at);
}

// ---- FunctionCall: Int32 OID, Int16 C + Int16[C] argument formats, Int16 N
// + N x (Int32 length, Byte[length]) arguments, Int16 result format.
Result<FunctionCall> FunctionCall::decode(Bytes body) {
  FieldReader r(body, "FunctionCall");
  FunctionCall m;
  size_t args = 0;
  if (!r.u32(m.function_oid, "function OID") || !r.i16_array(m.argument_formats, "argument format count") ||
      !r.count16(args, 4, "argument count") ||
      !check_format_count(r, m.argument_formats.size(), args, "argument")) {
    return r.take_error();
  }
  m.arguments.resize(args);
  for (size_t i = 0; i < args; ++i) {
    if (!r.nullable_bytes(m.arguments[i], "argument", i)) return r.take_error();
  }
  if (!r.i16(m.result_format, "result format") || !r.finish()) return r.take_error();
  return m;
}

void FunctionCall::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::function_call);
  w.u32(function_oid);
  write_i16_array(w, argument_formats);
  write_values(w, arguments);
  w.i16(result_format);
  w.end(at);
}

// ---- PasswordMessage: String password.
Result<PasswordMessage> PasswordMessage::decode(Bytes body) {
  FieldReader r(body, "PasswordMessage");
  PasswordMessage m;
  if (!r.cstring(m.password, "password") || !r.finish()) return r.take_error();
  return m;
}

void PasswordMessage::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::password);
  w.cstring(password);
  w.end(at);
}

// ---- SASLInitialResponse: String mechanism, Int32 length (-1 = none),
// Byte[length] initial response.
Result<SASLInitialResponse> SASLInitialResponse::decode(Bytes body) {
  FieldReader r(body, "SASLInitialResponse");
  SASLInitialResponse m;
  if (!r.cstring(m.mechanism, "mechanism name") || !r.nullable_bytes(m.data, "initial response") ||
      !r.finish()) {
    return r.take_error();
  }
  return m;
}

void SASLInitialResponse::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::password);
  w.cstring(mechanism);
  w.nullable_bytes(data);
  w.end(at);
}

// ---- SASLResponse (and GSSResponse): the whole body is data.
Result<SASLResponse> SASLResponse::decode(Bytes body) {
  return SASLResponse{body};
}

void SASLResponse::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(fe::password);
  w.bytes(data);
  w.end(at);
}

Result<FrontendMessage> decode_frontend(const Frame& frame) {
  if (frame.type() == fe::password) {
    // Which 'p' it is depends on the authentication request in flight, which
    // the codec does not track (see the 'p' decoders in frontend.h).
    return Error::protocol(
        "'p' message must be decoded as PasswordMessage, SASLInitialResponse or SASLResponse "
        "by the authentication exchange");
  }
  FrontendDecoder decode = frontend_decoders[frame.type()];
  if (decode == nullptr) {
    return Error::protocol("invalid frontend message type " + type_text(frame.type()));
  }
  return decode(frame.body);
}

void encode(const FrontendMessage& message, Buffer& out) {
  std::visit([&out](const auto& m) { m.encode(out); }, message);
}

}  // namespace pgcloak::protocol
