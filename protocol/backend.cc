// Backend messages (protocol docs, "Message Formats"). Same rules as
// frontend.cc: validate every count and length before reading, consume the
// body exactly.
#include "protocol/backend.h"

#include <algorithm>
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

std::string_view auth_message_name(AuthCode code) {
  switch (code) {
    case AuthCode::ok: return "AuthenticationOk";
    case AuthCode::kerberos_v5: return "AuthenticationKerberosV5";
    case AuthCode::cleartext_password: return "AuthenticationCleartextPassword";
    case AuthCode::md5_password: return "AuthenticationMD5Password";
    case AuthCode::gss: return "AuthenticationGSS";
    case AuthCode::gss_continue: return "AuthenticationGSSContinue";
    case AuthCode::sspi: return "AuthenticationSSPI";
    case AuthCode::sasl: return "AuthenticationSASL";
    case AuthCode::sasl_continue: return "AuthenticationSASLContinue";
    case AuthCode::sasl_final: return "AuthenticationSASLFinal";
  }
  return "Authentication";
}

// ErrorResponse and NoticeResponse: (Byte1 code, String value)* then a zero
// byte. Unknown codes are kept: "frontends should silently ignore fields of
// unrecognized type" (protocol docs, "Error and Notice Message Fields").
template <class M>
Result<M> decode_notice(Bytes body, std::string_view name) {
  FieldReader r(body, name);
  M m;
  for (;;) {
    uint8_t code = 0;
    if (!r.u8(code, "field list terminator")) return r.take_error();
    if (code == 0) break;
    std::string value;
    if (!r.cstring(value, "field " + type_text(code))) return r.take_error();
    m.fields.emplace_back(code, std::move(value));
  }
  if (!r.finish()) return r.take_error();
  return m;
}

void encode_notice(const NoticeFields& m, uint8_t type, Buffer& out) {
  Writer w(out);
  size_t at = w.begin(type);
  for (const auto& [code, value] : m.fields) {
    w.u8(code);
    w.cstring(value);
  }
  w.u8(0);
  w.end(at);
}

// CopyInResponse, CopyOutResponse, CopyBothResponse: Int8 overall format,
// Int16 N, Int16[N] column formats.
template <class M>
Result<M> decode_copy_response(Bytes body, std::string_view name) {
  FieldReader r(body, name);
  M m;
  uint8_t overall = 0;
  if (!r.u8(overall, "overall format") || !r.i16_array(m.column_formats, "column count") || !r.finish()) {
    return r.take_error();
  }
  m.overall_format = static_cast<int8_t>(overall);
  return m;
}

void encode_copy_response(const CopyResponseBody& m, uint8_t type, Buffer& out) {
  Writer w(out);
  size_t at = w.begin(type);
  w.u8(static_cast<uint8_t>(m.overall_format));
  w.i16(static_cast<int16_t>(m.column_formats.size()));
  for (int16_t f : m.column_formats) w.i16(f);
  w.end(at);
}

// Dispatch by type byte. A new message is one line in backend_messages.
using BackendDecoder = Result<BackendMessage> (*)(Bytes);

template <class M>
Result<BackendMessage> decode_as(Bytes body) {
  Result<M> r = M::decode(body);
  if (!r) return std::move(r).error();
  return BackendMessage{std::in_place_type<M>, std::move(r).value()};
}

struct BackendEntry {
  uint8_t type;
  BackendDecoder decode;
};

constexpr BackendEntry backend_messages[] = {
    {be::authentication, decode_as<Authentication>},
    {be::backend_key_data, decode_as<BackendKeyData>},
    {be::bind_complete, decode_as<BindComplete>},
    {be::close_complete, decode_as<CloseComplete>},
    {be::command_complete, decode_as<CommandComplete>},
    {be::copy_data, decode_as<CopyData>},
    {be::copy_done, decode_as<CopyDone>},
    {be::copy_in_response, decode_as<CopyInResponse>},
    {be::copy_out_response, decode_as<CopyOutResponse>},
    {be::copy_both_response, decode_as<CopyBothResponse>},
    {be::data_row, decode_as<DataRow>},
    {be::empty_query_response, decode_as<EmptyQueryResponse>},
    {be::error_response, decode_as<ErrorResponse>},
    {be::function_call_response, decode_as<FunctionCallResponse>},
    {be::negotiate_protocol_version, decode_as<NegotiateProtocolVersion>},
    {be::no_data, decode_as<NoData>},
    {be::notice_response, decode_as<NoticeResponse>},
    {be::notification_response, decode_as<NotificationResponse>},
    {be::parameter_description, decode_as<ParameterDescription>},
    {be::parameter_status, decode_as<ParameterStatus>},
    {be::parse_complete, decode_as<ParseComplete>},
    {be::portal_suspended, decode_as<PortalSuspended>},
    {be::ready_for_query, decode_as<ReadyForQuery>},
    {be::row_description, decode_as<RowDescription>},
};

constexpr std::array<BackendDecoder, 256> backend_decoders = [] {
  std::array<BackendDecoder, 256> table{};
  for (const auto& e : backend_messages) table[e.type] = e.decode;
  return table;
}();

}  // namespace

// ---- Authentication*: Int32 code, then a code-specific tail.
Result<Authentication> Authentication::decode(Bytes body) {
  FieldReader r(body, "Authentication");
  Authentication m;
  int32_t code = 0;
  if (!r.i32(code, "authentication code")) return r.take_error();
  // Any int32 is a valid value of an enum with a fixed underlying type.
  m.code = static_cast<AuthCode>(code);
  r.set_message(auth_message_name(m.code));
  switch (m.code) {
    case AuthCode::ok:
    case AuthCode::cleartext_password:
    case AuthCode::kerberos_v5:
    case AuthCode::gss:
    case AuthCode::sspi: break;
    case AuthCode::md5_password: {
      Bytes salt;
      if (!r.bytes(m.salt.size(), salt, "salt")) return r.take_error();
      std::copy(salt.begin(), salt.end(), m.salt.begin());
      break;
    }
    case AuthCode::sasl:
      // "A zero byte is required as terminator after the last authentication
      // mechanism name."
      for (;;) {
        std::string name;
        if (!r.cstring(name, "mechanism list")) return r.take_error();
        if (name.empty()) break;
        m.mechanisms.push_back(std::move(name));
      }
      break;
    case AuthCode::sasl_continue:
    case AuthCode::sasl_final:
    case AuthCode::gss_continue: m.data = r.rest(); break;
    default: r.fail("unknown authentication code " + std::to_string(code)); return r.take_error();
  }
  if (!r.finish()) return r.take_error();
  return m;
}

void Authentication::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::authentication);
  w.i32(static_cast<int32_t>(code));
  switch (code) {
    case AuthCode::md5_password: w.bytes(Bytes(salt)); break;
    case AuthCode::sasl:
      for (const auto& name : mechanisms) w.cstring(name);
      w.u8(0);
      break;
    case AuthCode::sasl_continue:
    case AuthCode::sasl_final:
    case AuthCode::gss_continue: w.bytes(data); break;
    default: break;
  }
  w.end(at);
}

// ---- BackendKeyData: Int32 process ID, Int32 secret key.
Result<BackendKeyData> BackendKeyData::decode(Bytes body) {
  FieldReader r(body, "BackendKeyData");
  BackendKeyData m;
  if (!r.i32(m.process_id, "process ID") || !r.i32(m.secret_key, "secret key") || !r.finish()) {
    return r.take_error();
  }
  return m;
}

void BackendKeyData::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::backend_key_data);
  w.i32(process_id);
  w.i32(secret_key);
  w.end(at);
}

// ---- ParameterStatus: String name, String value.
Result<ParameterStatus> ParameterStatus::decode(Bytes body) {
  FieldReader r(body, "ParameterStatus");
  ParameterStatus m;
  if (!r.cstring(m.name, "parameter name") || !r.cstring(m.value, "parameter value") || !r.finish()) {
    return r.take_error();
  }
  return m;
}

void ParameterStatus::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::parameter_status);
  w.cstring(name);
  w.cstring(value);
  w.end(at);
}

// ---- ReadyForQuery: Byte1 status, one of 'I', 'T', 'E'.
Result<ReadyForQuery> ReadyForQuery::decode(Bytes body) {
  FieldReader r(body, "ReadyForQuery");
  ReadyForQuery m;
  if (!r.u8(m.status, "transaction status")) return r.take_error();
  if (m.status != 'I' && m.status != 'T' && m.status != 'E') {
    r.fail("transaction status " + type_text(m.status) + " is not 'I', 'T' or 'E'");
    return r.take_error();
  }
  if (!r.finish()) return r.take_error();
  return m;
}

void ReadyForQuery::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::ready_for_query);
  w.u8(status);
  w.end(at);
}

PGCLOAK_EMPTY_MESSAGE(ParseComplete, be::parse_complete)

PGCLOAK_EMPTY_MESSAGE(BindComplete, be::bind_complete)

PGCLOAK_EMPTY_MESSAGE(CloseComplete, be::close_complete)

PGCLOAK_EMPTY_MESSAGE(NoData, be::no_data)

PGCLOAK_EMPTY_MESSAGE(PortalSuspended, be::portal_suspended)

PGCLOAK_EMPTY_MESSAGE(EmptyQueryResponse, be::empty_query_response)

// ---- ParameterDescription: Int16 N, Int32[N] type OIDs.
Result<ParameterDescription> ParameterDescription::decode(Bytes body) {
  FieldReader r(body, "ParameterDescription");
  ParameterDescription m;
  if (!r.u32_array(m.type_oids, "parameter count") || !r.finish()) return r.take_error();
  return m;
}

void ParameterDescription::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::parameter_description);
  w.i16(static_cast<int16_t>(type_oids.size()));
  for (uint32_t oid : type_oids) w.u32(oid);
  w.end(at);
}

// ---- RowDescription: Int16 N, then per field String name, Int32 table OID,
// Int16 attnum, Int32 type OID, Int16 type size, Int32 modifier, Int16 format.
Result<RowDescription> RowDescription::decode(Bytes body) {
  // The smallest field description: empty name (1 byte) + 18 fixed bytes.
  constexpr size_t min_field_size = 1 + 4 + 2 + 4 + 2 + 4 + 2;
  FieldReader r(body, "RowDescription");
  RowDescription m;
  size_t n = 0;
  if (!r.count16(n, min_field_size, "field count")) return r.take_error();
  m.fields.resize(n);
  for (auto& f : m.fields) {
    if (!r.cstring(f.name, "field name") || !r.u32(f.table_oid, "table OID") ||
        !r.i16(f.column_attnum, "column attribute number") || !r.u32(f.type_oid, "type OID") ||
        !r.i16(f.type_size, "type size") || !r.i32(f.type_modifier, "type modifier") ||
        !r.i16(f.format, "format code")) {
      return r.take_error();
    }
  }
  if (!r.finish()) return r.take_error();
  return m;
}

void RowDescription::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::row_description);
  w.i16(static_cast<int16_t>(fields.size()));
  for (const auto& f : fields) {
    w.cstring(f.name);
    w.u32(f.table_oid);
    w.i16(f.column_attnum);
    w.u32(f.type_oid);
    w.i16(f.type_size);
    w.i32(f.type_modifier);
    w.i16(f.format);
  }
  w.end(at);
}

// ---- DataRow: Int16 N, then N x (Int32 length, -1 = NULL; Byte[length]).
Result<DataRow> DataRow::decode(Bytes body) {
  FieldReader r(body, "DataRow");
  DataRow m;
  size_t n = 0;
  if (!r.count16(n, 4, "column count")) return r.take_error();
  m.values.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (!r.nullable_bytes(m.values[i], "column", i)) return r.take_error();
  }
  if (!r.finish()) return r.take_error();
  return m;
}

void DataRow::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::data_row);
  w.i16(static_cast<int16_t>(values.size()));
  for (const auto& v : values) w.nullable_bytes(v);
  w.end(at);
}

// ---- CommandComplete: String tag.
Result<CommandComplete> CommandComplete::decode(Bytes body) {
  FieldReader r(body, "CommandComplete");
  CommandComplete m;
  if (!r.cstring(m.tag, "command tag") || !r.finish()) return r.take_error();
  return m;
}

void CommandComplete::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::command_complete);
  w.cstring(tag);
  w.end(at);
}

const std::string* NoticeFields::find(uint8_t code) const {
  for (const auto& [c, value] : fields) {
    if (c == code) return &value;
  }
  return nullptr;
}

Result<ErrorResponse> ErrorResponse::decode(Bytes body) {
  return decode_notice<ErrorResponse>(body, "ErrorResponse");
}
void ErrorResponse::encode(Buffer& out) const {
  encode_notice(*this, be::error_response, out);
}

ErrorResponse ErrorResponse::from_error(const Error& error) {
  // S is localized and V is not (PostgreSQL 9.6+); pgcloak does not localize,
  // so both carry the same English word.
  std::string severity = error.severity == Severity::fatal ? "FATAL" : "ERROR";
  ErrorResponse m;
  m.fields.emplace_back(field::severity, severity);
  m.fields.emplace_back(field::severity_nonlocalized, std::move(severity));
  m.fields.emplace_back(field::sqlstate, std::string(error.sqlstate));
  m.fields.emplace_back(field::message, error.message);
  if (!error.detail.empty()) m.fields.emplace_back(field::detail, error.detail);
  if (!error.hint.empty()) m.fields.emplace_back(field::hint, error.hint);
  return m;
}

Result<NoticeResponse> NoticeResponse::decode(Bytes body) {
  return decode_notice<NoticeResponse>(body, "NoticeResponse");
}
void NoticeResponse::encode(Buffer& out) const {
  encode_notice(*this, be::notice_response, out);
}

// ---- NotificationResponse: Int32 process ID, String channel, String payload.
Result<NotificationResponse> NotificationResponse::decode(Bytes body) {
  FieldReader r(body, "NotificationResponse");
  NotificationResponse m;
  if (!r.i32(m.process_id, "process ID") || !r.cstring(m.channel, "channel name") ||
      !r.cstring(m.payload, "payload") || !r.finish()) {
    return r.take_error();
  }
  return m;
}

void NotificationResponse::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::notification_response);
  w.i32(process_id);
  w.cstring(channel);
  w.cstring(payload);
  w.end(at);
}

Result<CopyInResponse> CopyInResponse::decode(Bytes body) {
  return decode_copy_response<CopyInResponse>(body, "CopyInResponse");
}
void CopyInResponse::encode(Buffer& out) const {
  encode_copy_response(*this, be::copy_in_response, out);
}

Result<CopyOutResponse> CopyOutResponse::decode(Bytes body) {
  return decode_copy_response<CopyOutResponse>(body, "CopyOutResponse");
}
void CopyOutResponse::encode(Buffer& out) const {
  encode_copy_response(*this, be::copy_out_response, out);
}

Result<CopyBothResponse> CopyBothResponse::decode(Bytes body) {
  return decode_copy_response<CopyBothResponse>(body, "CopyBothResponse");
}
void CopyBothResponse::encode(Buffer& out) const {
  encode_copy_response(*this, be::copy_both_response, out);
}

// ---- FunctionCallResponse: Int32 length (-1 = NULL), Byte[length] result.
Result<FunctionCallResponse> FunctionCallResponse::decode(Bytes body) {
  FieldReader r(body, "FunctionCallResponse");
  FunctionCallResponse m;
  if (!r.nullable_bytes(m.result, "result value") || !r.finish()) return r.take_error();
  return m;
}

void FunctionCallResponse::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::function_call_response);
  w.nullable_bytes(result);
  w.end(at);
}

// ---- NegotiateProtocolVersion: Int32 newest minor version, Int32 N,
// String[N] unrecognized option names.
Result<NegotiateProtocolVersion> NegotiateProtocolVersion::decode(Bytes body) {
  FieldReader r(body, "NegotiateProtocolVersion");
  NegotiateProtocolVersion m;
  size_t n = 0;
  if (!r.i32(m.newest_minor, "newest minor version") || !r.count32(n, 1, "unrecognized option count")) {
    return r.take_error();
  }
  // Appended one by one rather than sized up front: an Int32 count bounded
  // only by the body would otherwise allocate a std::string per claimed
  // option (~32x the message size) before the first name is checked.
  for (size_t i = 0; i < n; ++i) {
    std::string option;
    if (!r.cstring(option, "option name")) return r.take_error();
    m.unrecognized_options.push_back(std::move(option));
  }
  if (!r.finish()) return r.take_error();
  return m;
}

void NegotiateProtocolVersion::encode(Buffer& out) const {
  Writer w(out);
  size_t at = w.begin(be::negotiate_protocol_version);
  w.i32(newest_minor);
  w.i32(static_cast<int32_t>(unrecognized_options.size()));
  for (const auto& option : unrecognized_options) w.cstring(option);
  w.end(at);
}

Result<BackendMessage> decode_backend(const Frame& frame) {
  BackendDecoder decode = backend_decoders[frame.type()];
  if (decode == nullptr) {
    return Error::protocol("invalid backend message type " + type_text(frame.type()));
  }
  return decode(frame.body);
}

void encode(const BackendMessage& message, Buffer& out) {
  std::visit([&out](const auto& m) { m.encode(out); }, message);
}

}  // namespace pgcloak::protocol
