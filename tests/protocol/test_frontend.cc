// Frontend messages: round trips, every count and length boundary, the
// layout rules of "Message Formats", split and coalesced streams.
#include "protocol/frontend.h"

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

// ---- Round trips.

using FrontendRoundTrip = testing::RoundTrip;

TEST_F(FrontendRoundTrip, Query) {
  Query got = round_trip(Query{"select 1; select 'é'"}, 'Q');
  EXPECT_EQ(got.sql, "select 1; select 'é'");
  EXPECT_EQ(round_trip(Query{""}, 'Q').sql, "");
}

TEST_F(FrontendRoundTrip, Parse) {
  Parse m{"stmt", "select $1::int, $2", {23, 0}};
  Parse got = round_trip(m, 'P');
  EXPECT_EQ(got.statement, "stmt");
  EXPECT_EQ(got.query, "select $1::int, $2");
  EXPECT_EQ(got.parameter_types, (std::vector<uint32_t>{23, 0}));
  Parse unnamed = round_trip(Parse{"", "select 1", {}}, 'P');
  EXPECT_EQ(unnamed.statement, "");
  EXPECT_TRUE(unnamed.parameter_types.empty());
  // OIDs above INT32_MAX are legal unsigned values.
  EXPECT_EQ(round_trip(Parse{"", "q", {0xfffffffe}}, 'P').parameter_types[0], 0xfffffffeu);
}

TEST_F(FrontendRoundTrip, Bind) {
  Bind m;
  m.portal = "p1";
  m.statement = "s1";
  m.parameter_formats = {0, 1, 0};
  m.parameters = {bytes_of("42"), std::nullopt, bytes_of("")};
  m.result_formats = {1};
  Bind got = round_trip(m, 'B');
  EXPECT_EQ(got.portal, "p1");
  EXPECT_EQ(got.statement, "s1");
  EXPECT_EQ(got.parameter_formats, m.parameter_formats);
  EXPECT_EQ(texts(got.parameters), (std::vector<std::optional<std::string>>{"42", std::nullopt, ""}));
  EXPECT_EQ(got.result_formats, m.result_formats);

  Bind empty = round_trip(Bind{}, 'B');
  EXPECT_TRUE(empty.parameters.empty());
  EXPECT_TRUE(empty.parameter_formats.empty());
  EXPECT_TRUE(empty.result_formats.empty());
}

TEST_F(FrontendRoundTrip, BindBinaryValueWithNulBytes) {
  Bind m;
  const uint8_t value[] = {0, 0, 0, 7, 0};
  m.parameter_formats = {1};
  m.parameters = {Bytes(value)};
  Bind got = round_trip(m, 'B');
  ASSERT_EQ(got.parameters.size(), 1u);
  ASSERT_TRUE(got.parameters[0].has_value());
  EXPECT_EQ(text(*got.parameters[0]), text(Bytes(value)));
}

TEST_F(FrontendRoundTrip, DescribeAndClose) {
  Describe d = round_trip(Describe{'P', "portal"}, 'D');
  EXPECT_EQ(d.kind, 'P');
  EXPECT_EQ(d.name, "portal");
  Describe s = round_trip(Describe{'S', ""}, 'D');
  EXPECT_EQ(s.kind, 'S');
  EXPECT_EQ(s.name, "");
  Close c = round_trip(Close{'S', "stmt"}, 'C');
  EXPECT_EQ(c.kind, 'S');
  EXPECT_EQ(c.name, "stmt");
  EXPECT_EQ(round_trip(Close{'P', ""}, 'C').kind, 'P');
}

TEST_F(FrontendRoundTrip, Execute) {
  Execute got = round_trip(Execute{"portal", 100}, 'E');
  EXPECT_EQ(got.portal, "portal");
  EXPECT_EQ(got.max_rows, 100);
  EXPECT_EQ(round_trip(Execute{"", 0}, 'E').max_rows, 0);
}

TEST_F(FrontendRoundTrip, EmptyMessages) {
  round_trip(Sync{}, 'S');
  round_trip(Flush{}, 'H');
  round_trip(Terminate{}, 'X');
  round_trip(CopyDone{}, 'c');
  EXPECT_EQ(encoded(Sync{}), (Buffer{'S', 0, 0, 0, 4}));
}

TEST_F(FrontendRoundTrip, CopyDataAndCopyFail) {
  CopyData got = round_trip(CopyData{bytes_of("1\tfoo\n")}, 'd');
  EXPECT_EQ(text(got.data), "1\tfoo\n");
  EXPECT_TRUE(round_trip(CopyData{}, 'd').data.empty());
  EXPECT_EQ(round_trip(CopyFail{"client gave up"}, 'f').message, "client gave up");
}

TEST_F(FrontendRoundTrip, FunctionCall) {
  FunctionCall m;
  m.function_oid = 1598;
  m.argument_formats = {1};
  m.arguments = {bytes_of("ab"), std::nullopt};
  m.result_format = 1;
  FunctionCall got = round_trip(m, 'F');
  EXPECT_EQ(got.function_oid, 1598u);
  EXPECT_EQ(got.argument_formats, m.argument_formats);
  EXPECT_EQ(texts(got.arguments), (std::vector<std::optional<std::string>>{"ab", std::nullopt}));
  EXPECT_EQ(got.result_format, 1);
}

TEST_F(FrontendRoundTrip, PasswordMessages) {
  EXPECT_EQ(round_trip(PasswordMessage{"md5abc"}, 'p').password, "md5abc");

  SASLInitialResponse init{"SCRAM-SHA-256", bytes_of("n,,n=,r=nonce")};
  SASLInitialResponse got = round_trip(init, 'p');
  EXPECT_EQ(got.mechanism, "SCRAM-SHA-256");
  EXPECT_EQ(text(got.data), std::optional<std::string>("n,,n=,r=nonce"));
  SASLInitialResponse none = round_trip(SASLInitialResponse{"SCRAM-SHA-256", std::nullopt}, 'p');
  EXPECT_FALSE(none.data.has_value());
  SASLInitialResponse empty = round_trip(SASLInitialResponse{"X", bytes_of("")}, 'p');
  ASSERT_TRUE(empty.data.has_value());
  EXPECT_TRUE(empty.data->empty());

  EXPECT_EQ(text(round_trip(SASLResponse{bytes_of("c=biws,r=x,p=y")}, 'p').data), "c=biws,r=x,p=y");
}

// ---- Dispatch.

TEST(DecodeFrontend, PasswordTypeNeedsItsOwnDecoder) {
  Buffer wire = encoded(PasswordMessage{"secret"});
  FrameResult f = decode_frame(wire, default_max_message_length);
  ASSERT_EQ(f.status, FrameStatus::complete);
  auto r = decode_frontend(f.frame);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sqlstate, sqlstate::protocol_violation);
  EXPECT_NE(r.error().message.find("'p'"), std::string::npos) << r.error().message;
}

TEST(DecodeFrontend, UnknownAndBackendOnlyTypesAreRejected) {
  for (uint8_t type : {uint8_t{'Z'}, uint8_t{'T'}, uint8_t{'R'}, uint8_t{0}, uint8_t{0xff}}) {
    Buffer wire = RawMessage(type).bytes();
    FrameResult f = decode_frame(wire, default_max_message_length);
    ASSERT_EQ(f.status, FrameStatus::complete);
    auto r = decode_frontend(f.frame);
    ASSERT_FALSE(r.ok()) << int{type};
    EXPECT_EQ(r.error().sqlstate, sqlstate::protocol_violation);
    EXPECT_NE(r.error().message.find("invalid frontend message type"), std::string::npos);
  }
}

TEST(DecodeFrontend, EveryNamedFrontendTypeHasADecoder) {
  // Keeps the dispatch table and the type table in step: every type byte
  // message_type.cc knows for the frontend decodes (or, for 'p', is refused
  // with the dedicated error) rather than falling through as unknown.
  for (int t = 0; t < 256; ++t) {
    auto type = static_cast<uint8_t>(t);
    if (frontend_message_name(type) == "unknown") continue;
    Buffer wire = RawMessage(type).bytes();
    FrameResult f = decode_frame(wire, default_max_message_length);
    auto r = decode_frontend(f.frame);
    if (!r.ok()) {
      EXPECT_EQ(r.error().message.find("invalid frontend message type"), std::string::npos)
          << frontend_message_name(type);
    }
  }
}

// ---- Query, CopyFail, PasswordMessage: one String.

TEST(QueryDecode, StringMustBeTerminatedInsideTheBody) {
  expect_invalid<Query>(RawMessage('Q').raw("select 1").bytes(), "Query",
                        "query string is not NUL-terminated");
  expect_invalid<Query>(RawMessage('Q').bytes(), "Query", "query string is not NUL-terminated");
}

TEST(QueryDecode, TrailingBytesAfterTheString) {
  // "select 1\0drop table t\0" must not be half-read: a policy check would
  // see one statement while a lenient server might see another.
  expect_invalid<Query>(RawMessage('Q').str("select 1").str("drop table t").bytes(), "Query",
                        "unexpected bytes after the last field");
}

TEST(CopyFailDecode, Layout) {
  expect_valid<CopyFail>(RawMessage('f').str("").bytes());
  expect_invalid<CopyFail>(RawMessage('f').raw("oops").bytes(), "CopyFail", "not NUL-terminated");
  expect_invalid<CopyFail>(RawMessage('f').str("a").u8(1).bytes(), "CopyFail", "unexpected bytes");
}

TEST(PasswordMessageDecode, Layout) {
  expect_valid<PasswordMessage>(RawMessage('p').str("pw").bytes());
  expect_invalid<PasswordMessage>(RawMessage('p').raw("pw").bytes(), "PasswordMessage",
                                  "password is not NUL-terminated");
  expect_invalid<PasswordMessage>(RawMessage('p').str("pw").u8(0).bytes(), "PasswordMessage",
                                  "unexpected bytes");
}

// ---- Parse.

Buffer parse_with(int16_t count, size_t oids) {
  RawMessage m('P');
  m.str("s").str("select $1");
  m.i16(count);
  for (size_t i = 0; i < oids; ++i) m.u32(23);
  return m.bytes();
}

TEST(ParseDecode, ParameterTypeCountBoundaries) {
  expect_invalid<Parse>(parse_with(-2, 0), "Parse", "parameter type count 65534 needs at least");
  expect_invalid<Parse>(parse_with(-1, 4), "Parse", "parameter type count 65535 needs at least");
  expect_valid<Parse>(parse_with(0, 0));
  expect_valid<Parse>(parse_with(3, 3));  // exactly the remaining bytes
  expect_invalid<Parse>(parse_with(4, 3), "Parse",
                        "parameter type count 4 needs at least 16 bytes but 12 remain");
  expect_invalid<Parse>(parse_with(INT16_MIN, 0), "Parse", "count 32768 needs at least");
  expect_invalid<Parse>(parse_with(INT16_MAX, 2), "Parse", "needs at least");
  expect_invalid<Parse>(parse_with(0, 1), "Parse", "4 unexpected bytes");
}

TEST(ParseDecode, MissingFields) {
  expect_invalid<Parse>(RawMessage('P').str("s").bytes(), "Parse", "query string is not NUL-terminated");
  expect_invalid<Parse>(RawMessage('P').raw("s").bytes(), "Parse", "statement name is not NUL-terminated");
  expect_invalid<Parse>(RawMessage('P').str("s").str("q").u8(0).bytes(), "Parse",
                        "parameter type count is missing");
  // A half-present OID: the count claims one but only 3 bytes follow.
  expect_invalid<Parse>(RawMessage('P').str("s").str("q").i16(1).fill(3).bytes(), "Parse",
                        "needs at least 4 bytes but 3 remain");
}

// ---- Bind.

struct BindLayout {
  int16_t format_count = 0;
  std::vector<int16_t> formats;
  int16_t param_count = 0;
  std::vector<RawMessage> params;  // each appended as-is (length + data)
  int16_t result_count = 0;
  std::vector<int16_t> results;
};

Buffer bind_with(const BindLayout& l) {
  RawMessage m('B');
  m.str("portal").str("stmt").i16(l.format_count);
  for (int16_t f : l.formats) m.i16(f);
  m.i16(l.param_count);
  for (const auto& p : l.params) m.raw(p.body());
  m.i16(l.result_count);
  for (int16_t f : l.results) m.i16(f);
  return m.bytes();
}

RawMessage value(std::optional<std::string_view> v) {
  return std::move(RawMessage('v').value(v));
}
RawMessage length_only(int32_t len, size_t data = 0) {
  return std::move(RawMessage('v').i32(len).fill(data));
}

TEST(BindDecode, ParameterFormatCountBoundaries) {
  expect_invalid<Bind>(bind_with({.format_count = -2}), "Bind",
                       "parameter format count 65534 needs at least");
  expect_invalid<Bind>(bind_with({.format_count = -1, .formats = {0}}), "Bind",
                       "parameter format count 65535 needs at least");
  expect_valid<Bind>(bind_with({.format_count = 0}));
  // Exactly the remaining bytes: the count eats the parameter and result
  // counts as format codes, so those are then missing.
  expect_invalid<Bind>(bind_with({.format_count = 2}), "Bind", "parameter count is missing");
  expect_invalid<Bind>(bind_with({.format_count = 3}), "Bind",
                       "parameter format count 3 needs at least 6 bytes but 4 remain");
}

TEST(BindDecode, ParameterCountBoundaries) {
  expect_invalid<Bind>(bind_with({.param_count = -2}), "Bind", "parameter count 65534 needs at least");
  expect_invalid<Bind>(bind_with({.param_count = -1, .params = {value("x")}}), "Bind",
                       "parameter count 65535 needs at least");
  expect_valid<Bind>(bind_with({.param_count = 0}));
  // Two NULLs (8 bytes) plus the 2-byte result count: 10 bytes remain, so a
  // count of 2 is exact and 3 needs 12.
  expect_valid<Bind>(bind_with({.param_count = 2, .params = {value({}), value({})}}));
  expect_invalid<Bind>(bind_with({.param_count = 3, .params = {value({}), value({})}}), "Bind",
                       "parameter count 3 needs at least 12 bytes but 10 remain");
}

// PostgreSQL reads Int16 counts unsigned and accepts up to 65535 Bind
// parameters (PostgreSQL 14+), so a count above 32767 is not an error.
TEST(BindDecode, CountsAboveInt16MaxAreUnsigned) {
  Bind m;
  m.parameters.assign(40000, std::nullopt);
  Buffer wire;
  m.encode(wire);
  auto frame = decode_frame(wire, default_max_message_length);
  ASSERT_EQ(frame.status, FrameStatus::complete);
  Result<Bind> back = Bind::decode(frame.frame.body);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->parameters.size(), 40000U);
}

TEST(BindDecode, ParameterLengthBoundaries) {
  auto one = [](RawMessage p) { return bind_with({.param_count = 1, .params = {std::move(p)}}); };
  expect_invalid<Bind>(one(length_only(-2, 4)), "Bind", "parameter 0 length -2 is negative");
  expect_invalid<Bind>(one(length_only(INT32_MIN, 4)), "Bind", "is negative");
  Result<Bind> null = decode_wire<Bind>(one(length_only(-1)));
  ASSERT_TRUE(null.ok()) << null.error().message;
  EXPECT_FALSE(null->parameters[0].has_value()) << "-1 is NULL";
  Buffer empty_wire = one(length_only(0));
  Result<Bind> empty = decode_wire<Bind>(empty_wire);
  ASSERT_TRUE(empty.ok()) << empty.error().message;
  ASSERT_TRUE(empty->parameters[0].has_value()) << "0 is an empty value, not NULL";
  EXPECT_TRUE(empty->parameters[0]->empty());
  // 3 data bytes then the 2-byte result count: 5 bytes remain after the
  // length. 5 consumes the result count; 6 runs past the body.
  expect_valid<Bind>(one(length_only(3, 3)));
  expect_invalid<Bind>(one(length_only(5, 3)), "Bind", "result format count is missing");
  expect_invalid<Bind>(one(length_only(6, 3)), "Bind", "parameter 0 length 6 exceeds the 5 remaining bytes");
  // The error names which parameter.
  expect_invalid<Bind>(bind_with({.param_count = 2, .params = {value("ok"), length_only(-5, 4)}}), "Bind",
                       "parameter 1 length -5 is negative");
}

TEST(BindDecode, FormatCountMustBeZeroOneOrTheParameterCount) {
  auto params3 = std::vector<RawMessage>{value("1"), value("2"), value("3")};
  expect_valid<Bind>(bind_with({.param_count = 3, .params = params3}));
  expect_valid<Bind>(bind_with({.format_count = 1, .formats = {1}, .param_count = 3, .params = params3}));
  expect_valid<Bind>(
      bind_with({.format_count = 3, .formats = {0, 1, 0}, .param_count = 3, .params = params3}));
  expect_invalid<Bind>(bind_with({.format_count = 2, .formats = {0, 1}, .param_count = 3, .params = params3}),
                       "Bind", "parameter format count 2 is neither 0, 1 nor the parameter count 3");
  // One format with zero parameters is allowed by the "one" clause.
  expect_valid<Bind>(bind_with({.format_count = 1, .formats = {0}}));
  expect_invalid<Bind>(bind_with({.format_count = 2, .formats = {0, 0}}), "Bind",
                       "parameter format count 2 is neither 0, 1 nor the parameter count 0");
}

TEST(BindDecode, ResultFormatCountBoundaries) {
  expect_invalid<Bind>(bind_with({.result_count = -2}), "Bind", "result format count 65534 needs at least");
  expect_invalid<Bind>(bind_with({.result_count = -1, .results = {0}}), "Bind",
                       "result format count 65535 needs at least");
  expect_valid<Bind>(bind_with({.result_count = 2, .results = {1, 0}}));
  expect_invalid<Bind>(bind_with({.result_count = 3, .results = {1, 0}}), "Bind",
                       "result format count 3 needs at least 6 bytes but 4 remain");
  expect_invalid<Bind>(bind_with({.result_count = 1, .results = {1, 0}}), "Bind",
                       "2 unexpected bytes after the last field");
}

TEST(BindDecode, MissingNames) {
  expect_invalid<Bind>(RawMessage('B').bytes(), "Bind", "portal name is not NUL-terminated");
  expect_invalid<Bind>(RawMessage('B').str("").raw("st").bytes(), "Bind",
                       "statement name is not NUL-terminated");
}

// ---- Describe, Close, Execute.

TEST(DescribeDecode, KindMustBeStatementOrPortal) {
  expect_valid<Describe>(RawMessage('D').u8('S').str("x").bytes());
  expect_valid<Describe>(RawMessage('D').u8('P').str("").bytes());
  expect_invalid<Describe>(RawMessage('D').u8('X').str("x").bytes(), "Describe",
                           "kind 'X' is neither 'S' nor 'P'");
  expect_invalid<Describe>(RawMessage('D').u8('s').str("x").bytes(), "Describe", "kind 's'");
  expect_invalid<Describe>(RawMessage('D').u8(0).str("x").bytes(), "Describe", "kind 0x00");
  expect_invalid<Describe>(RawMessage('D').bytes(), "Describe", "kind is missing");
  expect_invalid<Describe>(RawMessage('D').u8('S').bytes(), "Describe", "name is not NUL-terminated");
  expect_invalid<Describe>(RawMessage('D').u8('S').str("x").u8('y').bytes(), "Describe",
                           "1 unexpected bytes");
}

TEST(CloseDecode, KindMustBeStatementOrPortal) {
  expect_valid<Close>(RawMessage('C').u8('P').str("x").bytes());
  expect_invalid<Close>(RawMessage('C').u8('p').str("x").bytes(), "Close", "kind 'p' is neither 'S' nor 'P'");
  expect_invalid<Close>(RawMessage('C').u8('S').raw("x").bytes(), "Close", "name is not NUL-terminated");
  expect_invalid<Close>(RawMessage('C').u8('S').str("").u8(0).bytes(), "Close", "unexpected bytes");
}

TEST(ExecuteDecode, Layout) {
  expect_valid<Execute>(RawMessage('E').str("").i32(-1).bytes());
  expect_invalid<Execute>(RawMessage('E').str("").i16(0).bytes(), "Execute", "maximum row count is missing");
  expect_invalid<Execute>(RawMessage('E').raw("portal").bytes(), "Execute",
                          "portal name is not NUL-terminated");
  expect_invalid<Execute>(RawMessage('E').str("").i32(0).u8(0).bytes(), "Execute", "unexpected bytes");
}

// ---- Messages with an empty body.

TEST(EmptyMessages, AnyBodyIsAnError) {
  expect_invalid<Sync>(RawMessage('S').u8(0).bytes(), "Sync", "1 unexpected bytes");
  expect_invalid<Flush>(RawMessage('H').fill(4).bytes(), "Flush", "4 unexpected bytes");
  expect_invalid<Terminate>(RawMessage('X').u8(0).bytes(), "Terminate", "unexpected bytes");
  expect_invalid<CopyDone>(RawMessage('c').u8(0).bytes(), "CopyDone", "unexpected bytes");
}

TEST(CopyDataDecode, AnyBodyIsData) {
  expect_valid<CopyData>(RawMessage('d').bytes());
  expect_valid<CopyData>(RawMessage('d').u8(0).fill(100).u8(0).bytes());
}

// ---- FunctionCall.

Buffer function_call_with(int16_t format_count, std::vector<int16_t> formats, int16_t arg_count,
                          std::vector<RawMessage> args, bool with_result_format = true) {
  RawMessage m('F');
  m.u32(1598).i16(format_count);
  for (int16_t f : formats) m.i16(f);
  m.i16(arg_count);
  for (const auto& a : args) m.raw(a.body());
  if (with_result_format) m.i16(0);
  return m.bytes();
}

TEST(FunctionCallDecode, CountAndLengthBoundaries) {
  expect_invalid<FunctionCall>(function_call_with(-2, {}, 0, {}), "FunctionCall",
                               "argument format count 65534 needs at least");
  expect_invalid<FunctionCall>(function_call_with(0, {}, -1, {}), "FunctionCall",
                               "argument count 65535 needs at least");
  expect_valid<FunctionCall>(function_call_with(0, {}, 0, {}));
  expect_valid<FunctionCall>(function_call_with(0, {}, 1, {value({})}));
  expect_invalid<FunctionCall>(function_call_with(0, {}, 2, {value({})}), "FunctionCall",
                               "argument count 2 needs at least 8 bytes but 6 remain");
  expect_invalid<FunctionCall>(function_call_with(0, {}, 1, {length_only(-2)}), "FunctionCall",
                               "argument 0 length -2 is negative");
  // 1 data byte and the 2-byte result format remain after the length: 3 is
  // exact (and eats the result format), 4 runs past the body.
  expect_invalid<FunctionCall>(function_call_with(0, {}, 1, {length_only(3, 1)}), "FunctionCall",
                               "result format is missing");
  expect_invalid<FunctionCall>(function_call_with(0, {}, 1, {length_only(4, 1)}), "FunctionCall",
                               "argument 0 length 4 exceeds the 3 remaining bytes");
  expect_invalid<FunctionCall>(function_call_with(2, {0, 1}, 1, {value("a")}), "FunctionCall",
                               "argument format count 2 is neither 0, 1 nor the argument count 1");
  expect_invalid<FunctionCall>(function_call_with(0, {}, 0, {}, false), "FunctionCall",
                               "result format is missing");
  expect_invalid<FunctionCall>(RawMessage('F').i16(0).bytes(), "FunctionCall", "function OID is missing");
}

// ---- SASLInitialResponse and SASLResponse.

Buffer sasl_initial_with(int32_t len, size_t data) {
  return RawMessage('p').str("SCRAM-SHA-256").i32(len).fill(data).bytes();
}

TEST(SASLInitialResponseDecode, LengthBoundaries) {
  expect_invalid<SASLInitialResponse>(sasl_initial_with(-2, 0), "SASLInitialResponse",
                                      "initial response length -2 is negative");
  Result<SASLInitialResponse> none = decode_wire<SASLInitialResponse>(sasl_initial_with(-1, 0));
  ASSERT_TRUE(none.ok()) << none.error().message;
  EXPECT_FALSE(none->data.has_value());
  expect_valid<SASLInitialResponse>(sasl_initial_with(0, 0));
  expect_valid<SASLInitialResponse>(sasl_initial_with(10, 10));
  expect_invalid<SASLInitialResponse>(sasl_initial_with(11, 10), "SASLInitialResponse",
                                      "length 11 exceeds the 10 remaining bytes");
  expect_invalid<SASLInitialResponse>(sasl_initial_with(9, 10), "SASLInitialResponse", "1 unexpected bytes");
  expect_invalid<SASLInitialResponse>(sasl_initial_with(-1, 1), "SASLInitialResponse", "1 unexpected bytes");
  expect_invalid<SASLInitialResponse>(RawMessage('p').str("SCRAM-SHA-256").i16(0).bytes(),
                                      "SASLInitialResponse", "initial response length is missing");
  expect_invalid<SASLInitialResponse>(RawMessage('p').raw("SCRAM").bytes(), "SASLInitialResponse",
                                      "mechanism name is not NUL-terminated");
}

TEST(SASLResponseDecode, AnyBodyIsData) {
  expect_valid<SASLResponse>(RawMessage('p').bytes());
  expect_valid<SASLResponse>(RawMessage('p').u8(0).raw("x").u8(0).bytes());
}

// ---- Streams.

std::vector<Buffer> one_of_each() {
  Bind bind;
  bind.parameter_formats = {0};
  bind.parameters = {bytes_of("7"), std::nullopt};
  bind.result_formats = {0, 1};
  FunctionCall call;
  call.function_oid = 1;
  call.arguments = {bytes_of("x")};
  // In the order of the FrontendMessage alternatives, so the n-th message
  // must decode to alternative n.
  return {encoded(Query{"select 1"}),
          encoded(Parse{"s", "select $1", {23}}),
          encoded(bind),
          encoded(Describe{'P', ""}),
          encoded(Execute{"", 0}),
          encoded(Sync{}),
          encoded(Flush{}),
          encoded(Close{'S', "s"}),
          encoded(Terminate{}),
          encoded(CopyData{bytes_of("row\n")}),
          encoded(CopyDone{}),
          encoded(CopyFail{"bad"}),
          encoded(call)};
}

TEST(FrontendStream, CoalescedMessagesDecodeInOrder) {
  std::vector<Buffer> messages = one_of_each();
  Buffer all;
  for (const auto& m : messages) all.insert(all.end(), m.begin(), m.end());
  Bytes rest(all);
  size_t index = 0;
  while (!rest.empty()) {
    FrameResult f = decode_frame(rest, default_max_message_length);
    ASSERT_EQ(f.status, FrameStatus::complete) << index;
    auto r = decode_frontend(f.frame);
    ASSERT_TRUE(r.ok()) << r.error().message;
    // Each decodes to the alternative of its own type byte and re-encodes to
    // exactly the bytes it came from.
    EXPECT_EQ(r->index(), index) << frontend_message_name(f.frame.type());
    Buffer again;
    encode(*r, again);
    EXPECT_EQ(again, messages[index]);
    rest = rest.subspan(f.frame.size());
    ++index;
  }
  EXPECT_EQ(index, messages.size());
  EXPECT_EQ(messages.size(), std::variant_size_v<FrontendMessage>) << "one of each alternative";
}

TEST(FrontendStream, SplitAtEveryPointAndByteAtATime) {
  EXPECT_EQ(check_splits(one_of_each()), "");
}

}  // namespace
}  // namespace pgcloak::protocol
