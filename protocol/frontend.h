// Messages a client sends after startup, one struct each, named as in the
// protocol docs ("Message Formats"). decode() takes the body of one frame
// (after the type byte and length); encode() appends the whole message,
// type byte and length included, to a caller-owned buffer.
//
// Byte-valued fields are views into the decoded body: the frame's buffer must
// outlive the struct. Text fields the proxy keeps (names, SQL) are copied.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "protocol/framing.h"
#include "protocol/result.h"
#include "protocol/wire.h"

namespace pgcloak::protocol {

struct Query {
  std::string sql;
  static Result<Query> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Parse {
  std::string statement;  // "" is the unnamed statement
  std::string query;
  std::vector<uint32_t> parameter_types;  // 0 = unspecified
  static Result<Parse> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Bind {
  std::string portal;
  std::string statement;
  std::vector<int16_t> parameter_formats;        // 0 text, 1 binary
  std::vector<std::optional<Bytes>> parameters;  // nullopt = NULL
  std::vector<int16_t> result_formats;
  static Result<Bind> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Describe {
  uint8_t kind = 'S';  // 'S' statement or 'P' portal
  std::string name;
  static Result<Describe> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Execute {
  std::string portal;
  int32_t max_rows = 0;  // 0 = no limit
  static Result<Execute> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Sync {
  static Result<Sync> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Flush {
  static Result<Flush> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Close {
  uint8_t kind = 'S';  // 'S' statement or 'P' portal
  std::string name;
  static Result<Close> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct Terminate {
  static Result<Terminate> decode(Bytes body);
  void encode(Buffer& out) const;
};

// CopyData and CopyDone travel both ways with the same layout and type byte.
struct CopyData {
  Bytes data;
  static Result<CopyData> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct CopyDone {
  static Result<CopyDone> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct CopyFail {
  std::string message;
  static Result<CopyFail> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct FunctionCall {
  uint32_t function_oid = 0;
  std::vector<int16_t> argument_formats;
  std::vector<std::optional<Bytes>> arguments;
  int16_t result_format = 0;
  static Result<FunctionCall> decode(Bytes body);
  void encode(Buffer& out) const;
};

// 'p' messages. Which one a 'p' is depends on the authentication request
// the server sent last, so the caller picks the decoder.
struct PasswordMessage {
  std::string password;  // cleartext or "md5..." hash
  static Result<PasswordMessage> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct SASLInitialResponse {
  std::string mechanism;
  std::optional<Bytes> data;  // Int32 -1 on the wire = no initial response
  static Result<SASLInitialResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};

struct SASLResponse {
  Bytes data;
  static Result<SASLResponse> decode(Bytes body);
  void encode(Buffer& out) const;
};

// Every frontend message whose type byte alone identifies it. 'p' messages
// are decoded with their own decoders, see above.
using FrontendMessage = std::variant<Query, Parse, Bind, Describe, Execute, Sync, Flush, Close, Terminate,
                                     CopyData, CopyDone, CopyFail, FunctionCall>;

// Decodes a frame from decode_frame() by its type byte. An unknown type or a
// 'p' message is an 08P01 error.
Result<FrontendMessage> decode_frontend(const Frame& frame);
void encode(const FrontendMessage& message, Buffer& out);

}  // namespace pgcloak::protocol
