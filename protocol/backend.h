// Messages a server sends, one struct each, named as in the protocol docs
// ("Message Formats"). Same conventions as frontend.h: decode() takes one
// frame's body, encode() appends the whole message to a caller's buffer, and
// byte-valued fields are views into the decoded body.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "protocol/error.h"
#include "protocol/framing.h"
#include "protocol/frontend.h"
#include "protocol/result.h"
#include "protocol/wire.h"

namespace pgcloak::protocol {

// The Int32 that follows 'R' says which Authentication* message it is.
enum class AuthCode : int32_t {
  ok = 0,
  kerberos_v5 = 2,
  cleartext_password = 3,
  md5_password = 5,
  gss = 7,
  gss_continue = 8,
  sspi = 9,
  sasl = 10,
  sasl_continue = 11,
  sasl_final = 12,
};

// AuthenticationOk, AuthenticationCleartextPassword, AuthenticationMD5Password,
// AuthenticationSASL, AuthenticationSASLContinue, AuthenticationSASLFinal (and
// the GSS/SSPI/Kerberos codes, which the proxy refuses) share one layout
// prefix, so they share one struct keyed by code.
struct Authentication {
  AuthCode code = AuthCode::ok;
  std::vector<std::string> mechanisms;  // sasl: list ends with an empty name
  std::array<uint8_t, 4> salt{};        // md5_password
  Bytes data;                           // sasl_continue, sasl_final, gss_continue
  static Result<Authentication> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct BackendKeyData {
  int32_t process_id = 0;
  int32_t secret_key = 0;
  static Result<BackendKeyData> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct ParameterStatus {
  std::string name;
  std::string value;
  static Result<ParameterStatus> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct ReadyForQuery {
  uint8_t status = 'I';  // 'I' idle, 'T' in transaction, 'E' failed transaction
  static Result<ReadyForQuery> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct ParseComplete {
  static Result<ParseComplete> decode(Bytes body);
  void encode(Buffer& out) const;
};
struct BindComplete {
  static Result<BindComplete> decode(Bytes body);
  void encode(Buffer& out) const;
};
struct CloseComplete {
  static Result<CloseComplete> decode(Bytes body);
  void encode(Buffer& out) const;
};
struct NoData {
  static Result<NoData> decode(Bytes body);
  void encode(Buffer& out) const;
};
struct PortalSuspended {
  static Result<PortalSuspended> decode(Bytes body);
  void encode(Buffer& out) const;
};
struct EmptyQueryResponse {
  static Result<EmptyQueryResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct ParameterDescription {
  std::vector<uint32_t> type_oids;
  static Result<ParameterDescription> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct FieldDescription {
  std::string name;
  uint32_t table_oid = 0;     // 0 when not a plain column reference
  int16_t column_attnum = 0;  // 0 when not a plain column reference
  uint32_t type_oid = 0;
  int16_t type_size = 0;  // negative = variable width
  int32_t type_modifier = -1;
  int16_t format = 0;  // 0 text, 1 binary
};

struct RowDescription {
  std::vector<FieldDescription> fields;
  static Result<RowDescription> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct DataRow {
  std::vector<std::optional<Bytes>> values;  // nullopt = NULL
  static Result<DataRow> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct CommandComplete {
  std::string tag;
  static Result<CommandComplete> decode(Bytes body);
  void encode(Buffer& out) const;
};

// Field codes of ErrorResponse and NoticeResponse (protocol docs, "Error and
// Notice Message Fields").
namespace field {
inline constexpr uint8_t severity = 'S';
inline constexpr uint8_t severity_nonlocalized = 'V';
inline constexpr uint8_t sqlstate = 'C';
inline constexpr uint8_t message = 'M';
inline constexpr uint8_t detail = 'D';
inline constexpr uint8_t hint = 'H';
inline constexpr uint8_t position = 'P';
inline constexpr uint8_t internal_position = 'p';
inline constexpr uint8_t internal_query = 'q';
inline constexpr uint8_t where = 'W';
inline constexpr uint8_t schema_name = 's';
inline constexpr uint8_t table_name = 't';
inline constexpr uint8_t column_name = 'c';
inline constexpr uint8_t data_type_name = 'd';
inline constexpr uint8_t constraint_name = 'n';
inline constexpr uint8_t file = 'F';
inline constexpr uint8_t line = 'L';
inline constexpr uint8_t routine = 'R';
}  // namespace field

// Shared body of ErrorResponse and NoticeResponse: code-tagged strings in
// wire order. Unknown codes are kept, as the docs require clients to ignore
// (not reject) them.
struct NoticeFields {
  std::vector<std::pair<uint8_t, std::string>> fields;
  const std::string* find(uint8_t code) const;
};

struct ErrorResponse : NoticeFields {
  static Result<ErrorResponse> decode(Bytes body);
  void encode(Buffer& out) const;
  // S, V, C, M and, when set, D and H from a pgcloak Error.
  static ErrorResponse from_error(const Error& error);
};

struct NoticeResponse : NoticeFields {
  static Result<NoticeResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct NotificationResponse {
  int32_t process_id = 0;
  std::string channel;
  std::string payload;
  static Result<NotificationResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};

// Same layout for the three; the type byte tells them apart.
struct CopyResponseBody {
  int8_t overall_format = 0;  // 0 text, 1 binary
  std::vector<int16_t> column_formats;
};
struct CopyInResponse : CopyResponseBody {
  static Result<CopyInResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};
struct CopyOutResponse : CopyResponseBody {
  static Result<CopyOutResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};
struct CopyBothResponse : CopyResponseBody {
  static Result<CopyBothResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct FunctionCallResponse {
  std::optional<Bytes> result;  // nullopt = NULL
  static Result<FunctionCallResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct NegotiateProtocolVersion {
  int32_t newest_minor = 0;
  std::vector<std::string> unrecognized_options;
  static Result<NegotiateProtocolVersion> decode(Bytes body);
  void encode(Buffer& out) const;
};

// CopyData and CopyDone are the frontend structs (same layout both ways).
using BackendMessage =
    std::variant<Authentication, BackendKeyData, ParameterStatus, ReadyForQuery, ParseComplete, BindComplete,
                 CloseComplete, NoData, PortalSuspended, EmptyQueryResponse, ParameterDescription,
                 RowDescription, DataRow, CommandComplete, ErrorResponse, NoticeResponse,
                 NotificationResponse, CopyInResponse, CopyOutResponse, CopyBothResponse, CopyData, CopyDone,
                 FunctionCallResponse, NegotiateProtocolVersion>;

// Decodes a frame from decode_frame() by its type byte; unknown type = 08P01.
Result<BackendMessage> decode_backend(const Frame& frame);
void encode(const BackendMessage& message, Buffer& out);

}  // namespace pgcloak::protocol
