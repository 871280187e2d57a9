// Type bytes of every v3 message, in one table (protocol docs, "Message
// Formats"). Adding a message is one line here plus its struct.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pgcloak::protocol {

enum class Direction : uint8_t { frontend, backend, both };

namespace fe {  // sent by the client
inline constexpr uint8_t bind = 'B';
inline constexpr uint8_t close = 'C';
inline constexpr uint8_t copy_data = 'd';
inline constexpr uint8_t copy_done = 'c';
inline constexpr uint8_t copy_fail = 'f';
inline constexpr uint8_t describe = 'D';
inline constexpr uint8_t execute = 'E';
inline constexpr uint8_t flush = 'H';
inline constexpr uint8_t function_call = 'F';
inline constexpr uint8_t parse = 'P';
// PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse share 'p';
// which one it is follows from the authentication request that preceded it.
inline constexpr uint8_t password = 'p';
inline constexpr uint8_t query = 'Q';
inline constexpr uint8_t sync = 'S';
inline constexpr uint8_t terminate = 'X';
}  // namespace fe

namespace be {  // sent by the server
inline constexpr uint8_t authentication = 'R';
inline constexpr uint8_t backend_key_data = 'K';
inline constexpr uint8_t bind_complete = '2';
inline constexpr uint8_t close_complete = '3';
inline constexpr uint8_t command_complete = 'C';
inline constexpr uint8_t copy_data = 'd';
inline constexpr uint8_t copy_done = 'c';
inline constexpr uint8_t copy_in_response = 'G';
inline constexpr uint8_t copy_out_response = 'H';
inline constexpr uint8_t copy_both_response = 'W';
inline constexpr uint8_t data_row = 'D';
inline constexpr uint8_t empty_query_response = 'I';
inline constexpr uint8_t error_response = 'E';
inline constexpr uint8_t function_call_response = 'V';
inline constexpr uint8_t negotiate_protocol_version = 'v';
inline constexpr uint8_t no_data = 'n';
inline constexpr uint8_t notice_response = 'N';
inline constexpr uint8_t notification_response = 'A';
inline constexpr uint8_t parameter_description = 't';
inline constexpr uint8_t parameter_status = 'S';
inline constexpr uint8_t parse_complete = '1';
inline constexpr uint8_t portal_suspended = 's';
inline constexpr uint8_t ready_for_query = 'Z';
inline constexpr uint8_t row_description = 'T';
}  // namespace be

struct MessageTypeInfo {
  uint8_t type;
  Direction direction;
  std::string_view name;
};

// Name of a type byte for logs and errors; "unknown" when not in the table.
std::string_view frontend_message_name(uint8_t type);
std::string_view backend_message_name(uint8_t type);
// For error messages: 'Q' for printable type bytes, "0x.." otherwise.
std::string printable_type(uint8_t type);

}  // namespace pgcloak::protocol
