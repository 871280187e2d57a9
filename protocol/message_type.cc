#include "protocol/message_type.h"

#include <array>

namespace pgcloak::protocol {

namespace {

// One line per message, named as in the protocol docs ("Message Formats").
// CopyData and CopyDone travel both ways under the same type byte.
constexpr MessageTypeInfo message_types[] = {
    {fe::bind, Direction::frontend, "Bind"},
    {fe::close, Direction::frontend, "Close"},
    {fe::copy_fail, Direction::frontend, "CopyFail"},
    {fe::describe, Direction::frontend, "Describe"},
    {fe::execute, Direction::frontend, "Execute"},
    {fe::flush, Direction::frontend, "Flush"},
    {fe::function_call, Direction::frontend, "FunctionCall"},
    {fe::parse, Direction::frontend, "Parse"},
    // Also SASLInitialResponse, SASLResponse and GSSResponse; see message_type.h.
    {fe::password, Direction::frontend, "PasswordMessage"},
    {fe::query, Direction::frontend, "Query"},
    {fe::sync, Direction::frontend, "Sync"},
    {fe::terminate, Direction::frontend, "Terminate"},

    {fe::copy_data, Direction::both, "CopyData"},
    {fe::copy_done, Direction::both, "CopyDone"},

    {be::authentication, Direction::backend, "Authentication"},
    {be::backend_key_data, Direction::backend, "BackendKeyData"},
    {be::bind_complete, Direction::backend, "BindComplete"},
    {be::close_complete, Direction::backend, "CloseComplete"},
    {be::command_complete, Direction::backend, "CommandComplete"},
    {be::copy_in_response, Direction::backend, "CopyInResponse"},
    {be::copy_out_response, Direction::backend, "CopyOutResponse"},
    {be::copy_both_response, Direction::backend, "CopyBothResponse"},
    {be::data_row, Direction::backend, "DataRow"},
    {be::empty_query_response, Direction::backend, "EmptyQueryResponse"},
    {be::error_response, Direction::backend, "ErrorResponse"},
    {be::function_call_response, Direction::backend, "FunctionCallResponse"},
    {be::negotiate_protocol_version, Direction::backend, "NegotiateProtocolVersion"},
    {be::no_data, Direction::backend, "NoData"},
    {be::notice_response, Direction::backend, "NoticeResponse"},
    {be::notification_response, Direction::backend, "NotificationResponse"},
    {be::parameter_description, Direction::backend, "ParameterDescription"},
    {be::parameter_status, Direction::backend, "ParameterStatus"},
    {be::parse_complete, Direction::backend, "ParseComplete"},
    {be::portal_suspended, Direction::backend, "PortalSuspended"},
    {be::ready_for_query, Direction::backend, "ReadyForQuery"},
    {be::row_description, Direction::backend, "RowDescription"},
};

using NameTable = std::array<std::string_view, 256>;

// The same type byte means different messages in the two directions ('C' is
// Close from a client and CommandComplete from a server), hence two tables.
constexpr NameTable build_names(Direction direction) {
  NameTable names{};
  names.fill("unknown");
  for (const auto& info : message_types) {
    if (info.direction == direction || info.direction == Direction::both) {
      names[info.type] = info.name;
    }
  }
  return names;
}

constexpr NameTable frontend_names = build_names(Direction::frontend);
constexpr NameTable backend_names = build_names(Direction::backend);

}  // namespace

std::string_view frontend_message_name(uint8_t type) {
  return frontend_names[type];
}
std::string_view backend_message_name(uint8_t type) {
  return backend_names[type];
}

std::string printable_type(uint8_t type) {
  if (type >= 0x20 && type < 0x7f) return std::string("'") + static_cast<char>(type) + "'";
  static constexpr char hex[] = "0123456789abcdef";
  return std::string("0x") + hex[type >> 4] + hex[type & 15];
}

}  // namespace pgcloak::protocol
