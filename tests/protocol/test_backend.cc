// Backend messages: round trips, Authentication per code, every count and
// length boundary, ErrorResponse fields, split and coalesced streams.
#include "protocol/backend.h"

#include <gtest/gtest.h>

#include "protocol/message_type.h"
#include "tests/support/codec_checks.h"
#include "tests/support/frame_stream.h"
#include "tests/support/raw_message.h"

namespace pgcloak::protocol {
namespace {

using testing::Buffer;
using testing::bytes_of;
using testing::check_splits;
using testing::decode_wire;
using testing::encoded;
using testing::expect_invalid;
using testing::expect_valid;
using testing::RawMessage;
using testing::text;
using testing::texts;

using BackendRoundTrip = testing::RoundTrip;

Authentication auth(AuthCode code) {
  Authentication a;
  a.code = code;
  return a;
}

// ---- Round trips.

TEST_F(BackendRoundTrip, AuthenticationWithoutData) {
  for (AuthCode code :
       {AuthCode::ok, AuthCode::cleartext_password, AuthCode::kerberos_v5, AuthCode::gss, AuthCode::sspi}) {
    Authentication got = round_trip(auth(code), 'R');
    EXPECT_EQ(got.code, code);
    EXPECT_EQ(encoded(auth(code)).size(), 9u) << "type, length and code only";
  }
}

TEST_F(BackendRoundTrip, AuthenticationMD5) {
  Authentication m = auth(AuthCode::md5_password);
  m.salt = {0x01, 0x00, 0xff, 0x7f};
  Authentication got = round_trip(m, 'R');
  EXPECT_EQ(got.code, AuthCode::md5_password);
  EXPECT_EQ(got.salt, m.salt);
}

TEST_F(BackendRoundTrip, AuthenticationSASL) {
  Authentication m = auth(AuthCode::sasl);
  m.mechanisms = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"};
  Authentication got = round_trip(m, 'R');
  EXPECT_EQ(got.mechanisms, m.mechanisms) << "the empty terminator is not a mechanism";
  EXPECT_EQ(encoded(m), RawMessage('R').i32(10).str("SCRAM-SHA-256-PLUS").str("SCRAM-SHA-256").u8(0).bytes());
}

TEST_F(BackendRoundTrip, AuthenticationWithData) {
  for (AuthCode code : {AuthCode::sasl_continue, AuthCode::sasl_final, AuthCode::gss_continue}) {
    Authentication m = auth(code);
    m.data = bytes_of("r=abc,s=salt,i=4096");
    Authentication got = round_trip(m, 'R');
    EXPECT_EQ(got.code, code);
    EXPECT_EQ(text(got.data), "r=abc,s=salt,i=4096");
    EXPECT_TRUE(round_trip(auth(code), 'R').data.empty());
  }
}

TEST_F(BackendRoundTrip, SimpleMessages) {
  BackendKeyData k = round_trip(BackendKeyData{1234, -99}, 'K');
  EXPECT_EQ(k.process_id, 1234);
  EXPECT_EQ(k.secret_key, -99);

  ParameterStatus p = round_trip(ParameterStatus{"TimeZone", "UTC"}, 'S');
  EXPECT_EQ(p.name, "TimeZone");
  EXPECT_EQ(p.value, "UTC");

  for (uint8_t status : {uint8_t{'I'}, uint8_t{'T'}, uint8_t{'E'}}) {
    EXPECT_EQ(round_trip(ReadyForQuery{status}, 'Z').status, status);
  }

  EXPECT_EQ(round_trip(CommandComplete{"INSERT 0 3"}, 'C').tag, "INSERT 0 3");

  NotificationResponse n = round_trip(NotificationResponse{77, "chan", "payload"}, 'A');
  EXPECT_EQ(n.process_id, 77);
  EXPECT_EQ(n.channel, "chan");
  EXPECT_EQ(n.payload, "payload");
}

TEST_F(BackendRoundTrip, EmptyMessages) {
  round_trip(ParseComplete{}, '1');
  round_trip(BindComplete{}, '2');
  round_trip(CloseComplete{}, '3');
  round_trip(NoData{}, 'n');
  round_trip(PortalSuspended{}, 's');
  round_trip(EmptyQueryResponse{}, 'I');
  round_trip(CopyDone{}, 'c');
}

TEST_F(BackendRoundTrip, ParameterDescription) {
  ParameterDescription got = round_trip(ParameterDescription{{23, 25, 0xffffffff}}, 't');
  EXPECT_EQ(got.type_oids, (std::vector<uint32_t>{23, 25, 0xffffffff}));
  EXPECT_TRUE(round_trip(ParameterDescription{}, 't').type_oids.empty());
}

TEST_F(BackendRoundTrip, RowDescription) {
  RowDescription m;
  m.fields = {{"id", 16384, 1, 23, 4, -1, 0}, {"", 0, 0, 25, -1, 104, 1}};
  RowDescription got = round_trip(m, 'T');
  ASSERT_EQ(got.fields.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const auto& a = m.fields[i];
    const auto& b = got.fields[i];
    EXPECT_EQ(b.name, a.name);
    EXPECT_EQ(b.table_oid, a.table_oid);
    EXPECT_EQ(b.column_attnum, a.column_attnum);
    EXPECT_EQ(b.type_oid, a.type_oid);
    EXPECT_EQ(b.type_size, a.type_size);
    EXPECT_EQ(b.type_modifier, a.type_modifier);
    EXPECT_EQ(b.format, a.format);
  }
  EXPECT_TRUE(round_trip(RowDescription{}, 'T').fields.empty());
}

TEST_F(BackendRoundTrip, DataRow) {
  DataRow m;
  m.values = {bytes_of("1"), std::nullopt, bytes_of(""), bytes_of("alice@example.com")};
  DataRow got = round_trip(m, 'D');
  EXPECT_EQ(texts(got.values),
            (std::vector<std::optional<std::string>>{"1", std::nullopt, "", "alice@example.com"}));
  EXPECT_TRUE(round_trip(DataRow{}, 'D').values.empty());
}

TEST_F(BackendRoundTrip, ErrorAndNoticeResponse) {
  ErrorResponse e;
  e.fields = {{'S', "ERROR"}, {'V', "ERROR"},
              {'C', "42P01"}, {'M', "relation \"x\" does not exist"},
              {'P', "15"},    {'Z', "unknown code, kept"}};
  ErrorResponse got = round_trip(e, 'E');
  EXPECT_EQ(got.fields, e.fields);

  NoticeResponse n;
  n.fields = {{'S', "NOTICE"}, {'M', "hello"}};
  EXPECT_EQ(round_trip(n, 'N').fields, n.fields);
  EXPECT_TRUE(round_trip(NoticeResponse{}, 'N').fields.empty());
}

TEST_F(BackendRoundTrip, CopyResponses) {
  CopyInResponse in;
  in.overall_format = 1;
  in.column_formats = {1, 1};
  CopyInResponse a = round_trip(in, 'G');
  EXPECT_EQ(a.overall_format, 1);
  EXPECT_EQ(a.column_formats, in.column_formats);

  CopyOutResponse out;
  out.column_formats = {0, 0, 0};
  CopyOutResponse b = round_trip(out, 'H');
  EXPECT_EQ(b.overall_format, 0);
  EXPECT_EQ(b.column_formats, out.column_formats);

  CopyBothResponse both;
  CopyBothResponse c = round_trip(both, 'W');
  EXPECT_TRUE(c.column_formats.empty());

  CopyData d = round_trip(CopyData{bytes_of("x\ty\n")}, 'd');
  EXPECT_EQ(text(d.data), "x\ty\n");
}

TEST_F(BackendRoundTrip, FunctionCallResponse) {
  EXPECT_EQ(text(round_trip(FunctionCallResponse{bytes_of("42")}, 'V').result),
            std::optional<std::string>("42"));
  EXPECT_FALSE(round_trip(FunctionCallResponse{std::nullopt}, 'V').result.has_value());
}

TEST_F(BackendRoundTrip, NegotiateProtocolVersion) {
  NegotiateProtocolVersion m{0, {"_pq_.a", "_pq_.b"}};
  NegotiateProtocolVersion got = round_trip(m, 'v');
  EXPECT_EQ(got.newest_minor, 0);
  EXPECT_EQ(got.unrecognized_options, m.unrecognized_options);
  EXPECT_TRUE(round_trip(NegotiateProtocolVersion{}, 'v').unrecognized_options.empty());
}

// ---- Authentication: decoded per code.

TEST(AuthenticationDecode, CodesWithoutDataTakeNoBytes) {
  expect_valid<Authentication>(RawMessage('R').i32(0).bytes());
  expect_invalid<Authentication>(RawMessage('R').i32(0).u8(0).bytes(), "AuthenticationOk",
                                 "1 unexpected bytes");
  expect_invalid<Authentication>(RawMessage('R').i32(3).fill(4).bytes(), "AuthenticationCleartextPassword",
                                 "4 unexpected bytes");
  expect_invalid<Authentication>(RawMessage('R').i32(2).u8(1).bytes(), "AuthenticationKerberosV5",
                                 "unexpected bytes");
  expect_invalid<Authentication>(RawMessage('R').i32(7).u8(1).bytes(), "AuthenticationGSS",
                                 "unexpected bytes");
  expect_invalid<Authentication>(RawMessage('R').i32(9).u8(1).bytes(), "AuthenticationSSPI",
                                 "unexpected bytes");
}

TEST(AuthenticationDecode, MD5SaltIsExactlyFourBytes) {
  expect_valid<Authentication>(RawMessage('R').i32(5).fill(4).bytes());
  expect_invalid<Authentication>(RawMessage('R').i32(5).fill(3).bytes(), "AuthenticationMD5Password",
                                 "salt is missing");
  expect_invalid<Authentication>(RawMessage('R').i32(5).bytes(), "AuthenticationMD5Password",
                                 "salt is missing");
  expect_invalid<Authentication>(RawMessage('R').i32(5).fill(5).bytes(), "AuthenticationMD5Password",
                                 "1 unexpected bytes");
}

TEST(AuthenticationDecode, SASLMechanismList) {
  expect_valid<Authentication>(RawMessage('R').i32(10).str("SCRAM-SHA-256").u8(0).bytes());
  // An empty list is well-formed; refusing it is the proxy's business.
  expect_valid<Authentication>(RawMessage('R').i32(10).u8(0).bytes());
  // The terminating empty name is required.
  expect_invalid<Authentication>(RawMessage('R').i32(10).str("SCRAM-SHA-256").bytes(), "AuthenticationSASL",
                                 "mechanism list is not NUL-terminated");
  expect_invalid<Authentication>(RawMessage('R').i32(10).bytes(), "AuthenticationSASL",
                                 "mechanism list is not NUL-terminated");
  expect_invalid<Authentication>(RawMessage('R').i32(10).raw("SCRAM").bytes(), "AuthenticationSASL",
                                 "not NUL-terminated");
  expect_invalid<Authentication>(RawMessage('R').i32(10).str("A").u8(0).str("B").bytes(),
                                 "AuthenticationSASL", "2 unexpected bytes");
}

TEST(AuthenticationDecode, DataCodesTakeTheRestOfTheBody) {
  for (int32_t code : {8, 11, 12}) {
    Buffer wire = RawMessage('R').i32(code).u8(0).raw("data").u8(0).bytes();
    Result<Authentication> r = decode_wire<Authentication>(wire);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(text(r->data), std::string("\0data\0", 6));
  }
}

TEST(AuthenticationDecode, UnknownCodesAreRejected) {
  for (int32_t code : {-1, 1, 4, 6, 13, INT32_MAX, INT32_MIN}) {
    expect_invalid<Authentication>(RawMessage('R').i32(code).bytes(), "Authentication",
                                   "unknown authentication code " + std::to_string(code));
  }
  expect_invalid<Authentication>(RawMessage('R').i16(0).bytes(), "Authentication",
                                 "authentication code is missing");
}

// ---- Fixed-size messages.

TEST(BackendKeyDataDecode, ExactlyEightBytes) {
  expect_valid<BackendKeyData>(RawMessage('K').i32(1).i32(2).bytes());
  expect_invalid<BackendKeyData>(RawMessage('K').i32(1).fill(3).bytes(), "BackendKeyData",
                                 "secret key is missing");
  expect_invalid<BackendKeyData>(RawMessage('K').bytes(), "BackendKeyData", "process ID is missing");
  expect_invalid<BackendKeyData>(RawMessage('K').i32(1).i32(2).u8(0).bytes(), "BackendKeyData",
                                 "1 unexpected bytes");
}

TEST(ReadyForQueryDecode, StatusMustBeITOrE) {
  for (uint8_t s : {uint8_t{'I'}, uint8_t{'T'}, uint8_t{'E'}}) {
    expect_valid<ReadyForQuery>(RawMessage('Z').u8(s).bytes());
  }
  for (uint8_t s : {uint8_t{'i'}, uint8_t{'X'}, uint8_t{0}, uint8_t{0xff}}) {
    expect_invalid<ReadyForQuery>(RawMessage('Z').u8(s).bytes(), "ReadyForQuery", "is not 'I', 'T' or 'E'");
  }
  expect_invalid<ReadyForQuery>(RawMessage('Z').bytes(), "ReadyForQuery", "transaction status is missing");
  expect_invalid<ReadyForQuery>(RawMessage('Z').u8('I').u8('I').bytes(), "ReadyForQuery",
                                "1 unexpected bytes");
}

TEST(EmptyBackendMessages, AnyBodyIsAnError) {
  expect_invalid<ParseComplete>(RawMessage('1').u8(0).bytes(), "ParseComplete", "unexpected");
  expect_invalid<BindComplete>(RawMessage('2').u8(0).bytes(), "BindComplete", "unexpected");
  expect_invalid<CloseComplete>(RawMessage('3').u8(0).bytes(), "CloseComplete", "unexpected");
  expect_invalid<NoData>(RawMessage('n').u8(0).bytes(), "NoData", "unexpected");
  expect_invalid<PortalSuspended>(RawMessage('s').u8(0).bytes(), "PortalSuspended", "unexpected");
  expect_invalid<EmptyQueryResponse>(RawMessage('I').u8(0).bytes(), "EmptyQueryResponse", "unexpected");
  expect_invalid<CopyDone>(RawMessage('c').u8(0).bytes(), "CopyDone", "unexpected");
}

// ---- String messages.

TEST(StringMessages, TerminatorsAndTrailingBytes) {
  expect_invalid<ParameterStatus>(RawMessage('S').str("a").bytes(), "ParameterStatus",
                                  "parameter value is not NUL-terminated");
  expect_invalid<ParameterStatus>(RawMessage('S').raw("a").bytes(), "ParameterStatus",
                                  "parameter name is not NUL-terminated");
  expect_invalid<ParameterStatus>(RawMessage('S').str("a").str("b").u8(0).bytes(), "ParameterStatus",
                                  "1 unexpected bytes");
  expect_invalid<CommandComplete>(RawMessage('C').raw("SELECT 1").bytes(), "CommandComplete",
                                  "command tag is not NUL-terminated");
  expect_invalid<CommandComplete>(RawMessage('C').str("SELECT 1").str("x").bytes(), "CommandComplete",
                                  "unexpected bytes");
  expect_invalid<NotificationResponse>(RawMessage('A').i32(1).str("c").bytes(), "NotificationResponse",
                                       "payload is not NUL-terminated");
  expect_invalid<NotificationResponse>(RawMessage('A').i16(1).bytes(), "NotificationResponse",
                                       "process ID is missing");
  expect_invalid<NotificationResponse>(RawMessage('A').i32(1).str("c").str("p").u8(0).bytes(),
                                       "NotificationResponse", "unexpected bytes");
}

// ---- Counts.

Buffer parameter_description_with(int16_t count, size_t oids) {
  RawMessage m('t');
  m.i16(count);
  for (size_t i = 0; i < oids; ++i) m.u32(25);
  return m.bytes();
}

TEST(ParameterDescriptionDecode, CountBoundaries) {
  expect_invalid<ParameterDescription>(parameter_description_with(-2, 0), "ParameterDescription",
                                       "parameter count 65534 needs at least");
  expect_invalid<ParameterDescription>(parameter_description_with(-1, 1), "ParameterDescription",
                                       "parameter count 65535 needs at least");
  expect_valid<ParameterDescription>(parameter_description_with(0, 0));
  expect_valid<ParameterDescription>(parameter_description_with(2, 2));
  expect_invalid<ParameterDescription>(parameter_description_with(3, 2), "ParameterDescription",
                                       "parameter count 3 needs at least 12 bytes but 8 remain");
  expect_invalid<ParameterDescription>(parameter_description_with(1, 2), "ParameterDescription",
                                       "4 unexpected bytes");
  expect_invalid<ParameterDescription>(RawMessage('t').bytes(), "ParameterDescription",
                                       "parameter count is missing");
}

RawMessage field(std::string_view name) {
  return std::move(RawMessage('f').str(name).u32(1).i16(1).u32(23).i16(4).i32(-1).i16(0));
}

Buffer row_description_with(int16_t count, std::vector<RawMessage> fields) {
  RawMessage m('T');
  m.i16(count);
  for (const auto& f : fields) m.raw(f.body());
  return m.bytes();
}

TEST(RowDescriptionDecode, CountBoundaries) {
  // The smallest field is 19 bytes (empty name + 18 fixed bytes).
  expect_invalid<RowDescription>(row_description_with(-2, {}), "RowDescription",
                                 "field count 65534 needs at least");
  expect_invalid<RowDescription>(row_description_with(-1, {field("")}), "RowDescription",
                                 "field count 65535 needs at least");
  expect_valid<RowDescription>(row_description_with(0, {}));
  expect_valid<RowDescription>(row_description_with(2, {field(""), field("")}));
  expect_invalid<RowDescription>(row_description_with(3, {field(""), field("")}), "RowDescription",
                                 "field count 3 needs at least 57 bytes but 38 remain");
  // Longer names make the count fit the minimum while the fields run out.
  expect_invalid<RowDescription>(row_description_with(2, {field("abcdefghijklmnopqrstuvwxyz")}),
                                 "RowDescription", "is not NUL-terminated");
  expect_invalid<RowDescription>(row_description_with(1, {field(""), field("")}), "RowDescription",
                                 "19 unexpected bytes");
}

TEST(RowDescriptionDecode, TruncatedField) {
  Buffer wire = RawMessage('T').i16(1).str("name").u32(1).i16(1).u32(23).i16(4).i32(-1).fill(1).bytes();
  expect_invalid<RowDescription>(wire, "RowDescription", "format code is missing");
}

Buffer data_row_with(int16_t count, std::vector<RawMessage> values) {
  RawMessage m('D');
  m.i16(count);
  for (const auto& v : values) m.raw(v.body());
  return m.bytes();
}

RawMessage col(std::optional<std::string_view> v) {
  return std::move(RawMessage('v').value(v));
}
RawMessage col_length(int32_t len, size_t data = 0) {
  return std::move(RawMessage('v').i32(len).fill(data));
}

TEST(DataRowDecode, ColumnCountBoundaries) {
  expect_invalid<DataRow>(data_row_with(-2, {}), "DataRow", "column count 65534 needs at least");
  expect_invalid<DataRow>(data_row_with(-1, {col({})}), "DataRow", "column count 65535 needs at least");
  expect_valid<DataRow>(data_row_with(0, {}));
  expect_valid<DataRow>(data_row_with(2, {col({}), col({})}));
  expect_invalid<DataRow>(data_row_with(3, {col({}), col({})}), "DataRow",
                          "column count 3 needs at least 12 bytes but 8 remain");
  expect_invalid<DataRow>(data_row_with(1, {col("a"), col("b")}), "DataRow", "5 unexpected bytes");
}

TEST(DataRowDecode, ColumnLengthBoundaries) {
  expect_invalid<DataRow>(data_row_with(1, {col_length(-2, 4)}), "DataRow", "column 0 length -2 is negative");
  expect_invalid<DataRow>(data_row_with(1, {col_length(INT32_MIN)}), "DataRow", "is negative");
  Result<DataRow> null = decode_wire<DataRow>(data_row_with(1, {col_length(-1)}));
  ASSERT_TRUE(null.ok()) << null.error().message;
  EXPECT_FALSE(null->values[0].has_value());
  Buffer empty_wire = data_row_with(1, {col_length(0)});
  Result<DataRow> empty = decode_wire<DataRow>(empty_wire);
  ASSERT_TRUE(empty.ok()) << empty.error().message;
  ASSERT_TRUE(empty->values[0].has_value());
  EXPECT_TRUE(empty->values[0]->empty());
  // Exactly the remaining bytes, then one more.
  expect_valid<DataRow>(data_row_with(1, {col_length(6, 6)}));
  expect_invalid<DataRow>(data_row_with(1, {col_length(7, 6)}), "DataRow",
                          "column 0 length 7 exceeds the 6 remaining bytes");
  expect_invalid<DataRow>(data_row_with(2, {col("ok"), col_length(-3)}), "DataRow",
                          "column 1 length -3 is negative");
  expect_invalid<DataRow>(data_row_with(2, {col("ok"), col_length(INT32_MAX, 4)}), "DataRow",
                          "column 1 length 2147483647 exceeds the 4 remaining bytes");
}

TEST(FunctionCallResponseDecode, LengthBoundaries) {
  expect_invalid<FunctionCallResponse>(RawMessage('V').i32(-2).bytes(), "FunctionCallResponse",
                                       "result value length -2 is negative");
  expect_valid<FunctionCallResponse>(RawMessage('V').i32(-1).bytes());
  expect_valid<FunctionCallResponse>(RawMessage('V').i32(0).bytes());
  expect_valid<FunctionCallResponse>(RawMessage('V').i32(3).fill(3).bytes());
  expect_invalid<FunctionCallResponse>(RawMessage('V').i32(4).fill(3).bytes(), "FunctionCallResponse",
                                       "result value length 4 exceeds the 3 remaining bytes");
  expect_invalid<FunctionCallResponse>(RawMessage('V').i32(-1).u8(0).bytes(), "FunctionCallResponse",
                                       "1 unexpected bytes");
  expect_invalid<FunctionCallResponse>(RawMessage('V').bytes(), "FunctionCallResponse",
                                       "result value length is missing");
}

Buffer copy_response_with(uint8_t type, int16_t count, size_t formats) {
  RawMessage m(type);
  m.u8(0).i16(count);
  for (size_t i = 0; i < formats; ++i) m.i16(0);
  return m.bytes();
}

TEST(CopyResponseDecode, ColumnCountBoundaries) {
  expect_invalid<CopyInResponse>(copy_response_with('G', -2, 0), "CopyInResponse",
                                 "column count 65534 needs at least");
  expect_invalid<CopyOutResponse>(copy_response_with('H', -1, 1), "CopyOutResponse",
                                  "column count 65535 needs at least");
  expect_valid<CopyBothResponse>(copy_response_with('W', 0, 0));
  expect_valid<CopyInResponse>(copy_response_with('G', 3, 3));
  expect_invalid<CopyOutResponse>(copy_response_with('H', 4, 3), "CopyOutResponse",
                                  "column count 4 needs at least 8 bytes but 6 remain");
  expect_invalid<CopyBothResponse>(copy_response_with('W', 1, 2), "CopyBothResponse", "2 unexpected bytes");
  expect_invalid<CopyInResponse>(RawMessage('G').bytes(), "CopyInResponse", "overall format is missing");
  expect_invalid<CopyInResponse>(RawMessage('G').u8(1).u8(0).bytes(), "CopyInResponse",
                                 "column count is missing");
}

Buffer negotiate_with(int32_t count, std::vector<std::string_view> options) {
  RawMessage m('v');
  m.i32(0).i32(count);
  for (auto o : options) m.str(o);
  return m.bytes();
}

TEST(NegotiateProtocolVersionDecode, OptionCountBoundaries) {
  expect_invalid<NegotiateProtocolVersion>(negotiate_with(-2, {}), "NegotiateProtocolVersion",
                                           "unrecognized option count -2 is negative");
  expect_invalid<NegotiateProtocolVersion>(negotiate_with(-1, {"a"}), "NegotiateProtocolVersion",
                                           "unrecognized option count -1 is negative");
  expect_valid<NegotiateProtocolVersion>(negotiate_with(0, {}));
  // Each name takes at least its terminator, so two empty names fill 2 bytes.
  expect_valid<NegotiateProtocolVersion>(negotiate_with(2, {"", ""}));
  expect_invalid<NegotiateProtocolVersion>(negotiate_with(3, {"", ""}), "NegotiateProtocolVersion",
                                           "unrecognized option count 3 needs at least 3 bytes but "
                                           "2 remain");
  expect_invalid<NegotiateProtocolVersion>(negotiate_with(INT32_MAX, {"a"}), "NegotiateProtocolVersion",
                                           "needs at least");
  expect_invalid<NegotiateProtocolVersion>(negotiate_with(2, {"_pq_.abc"}), "NegotiateProtocolVersion",
                                           "not NUL-terminated");
  expect_invalid<NegotiateProtocolVersion>(negotiate_with(1, {"a", "b"}), "NegotiateProtocolVersion",
                                           "2 unexpected bytes");
}

// ---- ErrorResponse and NoticeResponse.

TEST(ErrorResponseDecode, FieldListLayout) {
  // Only the terminator: no fields, still well-formed.
  expect_valid<ErrorResponse>(RawMessage('E').u8(0).bytes());
  // Empty body: the terminator is missing.
  expect_invalid<ErrorResponse>(RawMessage('E').bytes(), "ErrorResponse", "field list terminator is missing");
  expect_invalid<ErrorResponse>(RawMessage('E').u8('S').str("ERROR").bytes(), "ErrorResponse",
                                "field list terminator is missing");
  expect_invalid<ErrorResponse>(RawMessage('E').u8('M').raw("boom").bytes(), "ErrorResponse",
                                "field 'M' is not NUL-terminated");
  expect_invalid<ErrorResponse>(RawMessage('E').u8('M').bytes(), "ErrorResponse",
                                "field 'M' is not NUL-terminated");
  expect_invalid<ErrorResponse>(RawMessage('E').u8('M').str("x").u8(0).u8('M').bytes(), "ErrorResponse",
                                "1 unexpected bytes");
  expect_invalid<NoticeResponse>(RawMessage('N').bytes(), "NoticeResponse",
                                 "field list terminator is missing");
  expect_invalid<NoticeResponse>(RawMessage('N').u8(0).u8(0).bytes(), "NoticeResponse", "1 unexpected bytes");
}

TEST(ErrorResponseDecode, UnknownCodesAreKeptInOrder) {
  Buffer wire = RawMessage('E')
                    .u8('S')
                    .str("ERROR")
                    .u8('?')
                    .str("future")
                    .u8(0xfe)
                    .str("")
                    .u8('M')
                    .str("m")
                    .u8(0)
                    .bytes();
  Result<ErrorResponse> r = decode_wire<ErrorResponse>(wire);
  ASSERT_TRUE(r.ok()) << r.error().message;
  using Fields = std::vector<std::pair<uint8_t, std::string>>;
  EXPECT_EQ(r->fields, (Fields{{'S', "ERROR"}, {'?', "future"}, {0xfe, ""}, {'M', "m"}}));
  ASSERT_NE(r->find('?'), nullptr);
  EXPECT_EQ(*r->find('?'), "future");
  EXPECT_EQ(encoded(*r), wire);
}

TEST(NoticeFields, FindReturnsTheFirstMatchOrNull) {
  NoticeFields f;
  f.fields = {{'M', "first"}, {'D', "detail"}, {'M', "second"}};
  ASSERT_NE(f.find('M'), nullptr);
  EXPECT_EQ(*f.find('M'), "first");
  EXPECT_EQ(*f.find('D'), "detail");
  EXPECT_EQ(f.find('H'), nullptr);
  EXPECT_EQ(NoticeFields{}.find('M'), nullptr);
}

TEST(ErrorResponseFromError, FatalProtocolViolation) {
  ErrorResponse e = ErrorResponse::from_error(Error::protocol("bad frame"));
  using Fields = std::vector<std::pair<uint8_t, std::string>>;
  EXPECT_EQ(e.fields, (Fields{{'S', "FATAL"}, {'V', "FATAL"}, {'C', "08P01"}, {'M', "bad frame"}}));
}

TEST(ErrorResponseFromError, ErrorWithDetailAndHint) {
  Error err = Error::make(sqlstate::insufficient_privilege, "denied by rule r1 on table t", Severity::error,
                          "ask an admin");
  err.detail = "column ssn is masked";
  ErrorResponse e = ErrorResponse::from_error(err);
  using Fields = std::vector<std::pair<uint8_t, std::string>>;
  EXPECT_EQ(e.fields, (Fields{{'S', "ERROR"},
                              {'V', "ERROR"},
                              {'C', "42501"},
                              {'M', "denied by rule r1 on table t"},
                              {'D', "column ssn is masked"},
                              {'H', "ask an admin"}}));
  // And it reaches the wire as a well-formed ErrorResponse.
  Buffer wire = encoded(e);
  Result<ErrorResponse> back = decode_wire<ErrorResponse>(wire);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->fields, e.fields);
}

TEST(ErrorResponseFromError, HintWithoutDetail) {
  Error err = Error::make(sqlstate::feature_not_supported, "no", Severity::fatal, "hint");
  ErrorResponse e = ErrorResponse::from_error(err);
  EXPECT_EQ(e.find(field::detail), nullptr);
  ASSERT_NE(e.find(field::hint), nullptr);
  EXPECT_EQ(*e.find(field::hint), "hint");
  EXPECT_EQ(*e.find(field::severity), "FATAL");
}

TEST(ErrorResponseEncode, EmbeddedNulCannotForgeFields) {
  // Text from a client (a quoted identifier, a parameter) may end up in an
  // error message. A NUL inside it must not start a new field on the wire.
  constexpr char text_with_nuls[] = "denied: x\0C00000\0Mall fine";
  Error err =
      Error::make(sqlstate::insufficient_privilege, std::string(text_with_nuls, sizeof text_with_nuls - 1));
  Buffer wire = encoded(ErrorResponse::from_error(err));
  Result<ErrorResponse> back = decode_wire<ErrorResponse>(wire);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->fields.size(), 4u);
  EXPECT_EQ(*back->find('C'), "42501");
  EXPECT_EQ(*back->find('M'), "denied: x");
}

// ---- Dispatch.

TEST(DecodeBackend, UnknownAndFrontendOnlyTypesAreRejected) {
  for (uint8_t type : {uint8_t{'Q'}, uint8_t{'P'}, uint8_t{'B'}, uint8_t{'p'}, uint8_t{0}, uint8_t{0xff}}) {
    Buffer wire = RawMessage(type).bytes();
    FrameResult f = decode_frame(wire, default_max_message_length);
    ASSERT_EQ(f.status, FrameStatus::complete);
    auto r = decode_backend(f.frame);
    ASSERT_FALSE(r.ok()) << int{type};
    EXPECT_EQ(r.error().sqlstate, sqlstate::protocol_violation);
    EXPECT_NE(r.error().message.find("invalid backend message type"), std::string::npos);
  }
}

TEST(DecodeBackend, EveryNamedBackendTypeHasADecoder) {
  for (int t = 0; t < 256; ++t) {
    auto type = static_cast<uint8_t>(t);
    if (backend_message_name(type) == "unknown") continue;
    Buffer wire = RawMessage(type).bytes();
    FrameResult f = decode_frame(wire, default_max_message_length);
    auto r = decode_backend(f.frame);
    if (!r.ok()) {
      EXPECT_EQ(r.error().message.find("invalid backend message type"), std::string::npos)
          << backend_message_name(type);
    }
  }
}

// ---- Streams.

std::vector<Buffer> one_of_each() {
  Authentication sasl = auth(AuthCode::sasl);
  sasl.mechanisms = {"SCRAM-SHA-256"};
  RowDescription rows;
  rows.fields = {{"email", 1, 2, 25, -1, -1, 0}};
  DataRow row;
  row.values = {bytes_of("a@b.c"), std::nullopt};
  ErrorResponse error = ErrorResponse::from_error(Error::protocol("x"));
  NoticeResponse notice;
  notice.fields = {{'S', "WARNING"}, {'M', "w"}};
  CopyInResponse copy_in;
  copy_in.column_formats = {0};
  CopyOutResponse copy_out;
  CopyBothResponse copy_both;
  copy_both.overall_format = 1;
  copy_both.column_formats = {1, 1};
  // In the order of the BackendMessage alternatives, so the n-th message must
  // decode to alternative n.
  return {encoded(sasl),
          encoded(BackendKeyData{1, 2}),
          encoded(ParameterStatus{"server_version", "15.4"}),
          encoded(ReadyForQuery{'T'}),
          encoded(ParseComplete{}),
          encoded(BindComplete{}),
          encoded(CloseComplete{}),
          encoded(NoData{}),
          encoded(PortalSuspended{}),
          encoded(EmptyQueryResponse{}),
          encoded(ParameterDescription{{23}}),
          encoded(rows),
          encoded(row),
          encoded(CommandComplete{"SELECT 1"}),
          encoded(error),
          encoded(notice),
          encoded(NotificationResponse{9, "c", "p"}),
          encoded(copy_in),
          encoded(copy_out),
          encoded(copy_both),
          encoded(CopyData{bytes_of("1\n")}),
          encoded(CopyDone{}),
          encoded(FunctionCallResponse{bytes_of("r")}),
          encoded(NegotiateProtocolVersion{0, {"_pq_.x"}})};
}

TEST(BackendStream, CoalescedMessagesDecodeInOrder) {
  std::vector<Buffer> messages = one_of_each();
  Buffer all;
  for (const auto& m : messages) all.insert(all.end(), m.begin(), m.end());
  Bytes rest(all);
  size_t index = 0;
  while (!rest.empty()) {
    FrameResult f = decode_frame(rest, default_max_message_length);
    ASSERT_EQ(f.status, FrameStatus::complete) << index;
    auto r = decode_backend(f.frame);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->index(), index) << backend_message_name(f.frame.type());
    Buffer again;
    encode(*r, again);
    EXPECT_EQ(again, messages[index]);
    rest = rest.subspan(f.frame.size());
    ++index;
  }
  EXPECT_EQ(index, messages.size());
  EXPECT_EQ(messages.size(), std::variant_size_v<BackendMessage>) << "one of each alternative";
}

TEST(BackendStream, SplitAtEveryPointAndByteAtATime) {
  EXPECT_EQ(check_splits(one_of_each()), "");
}

TEST(BackendStream, LargeDataRowSplitByteAtATime) {
  DataRow row;
  std::string big(700, 'z');
  row.values = {bytes_of(big), std::nullopt, bytes_of(big)};
  EXPECT_EQ(check_splits({encoded(row), encoded(CommandComplete{"SELECT 1"}), encoded(ReadyForQuery{'I'})}),
            "");
}

}  // namespace
}  // namespace pgcloak::protocol
