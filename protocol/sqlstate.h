// Every SQLSTATE pgcloak emits, in one table (conventions, point 9). Codes
// are PostgreSQL's own (Appendix A, "PostgreSQL Error Codes").
#pragma once

#include <string_view>

namespace pgcloak::sqlstate {

inline constexpr std::string_view connection_exception = "08000";
inline constexpr std::string_view connection_failure = "08006";
inline constexpr std::string_view sqlclient_unable_to_establish_sqlconnection = "08001";
inline constexpr std::string_view protocol_violation = "08P01";
inline constexpr std::string_view invalid_authorization_specification = "28000";
inline constexpr std::string_view invalid_password = "28P01";
inline constexpr std::string_view feature_not_supported = "0A000";
inline constexpr std::string_view object_not_in_prerequisite_state = "55000";
inline constexpr std::string_view syntax_error = "42601";
inline constexpr std::string_view insufficient_privilege = "42501";
inline constexpr std::string_view invalid_parameter_value = "22023";
inline constexpr std::string_view too_many_connections = "53300";
inline constexpr std::string_view program_limit_exceeded = "54000";
inline constexpr std::string_view statement_too_complex = "54001";
inline constexpr std::string_view admin_shutdown = "57P01";
inline constexpr std::string_view cannot_connect_now = "57P03";
inline constexpr std::string_view idle_session_timeout = "57P05";
inline constexpr std::string_view query_canceled = "57014";
inline constexpr std::string_view config_file_error = "F0000";
inline constexpr std::string_view io_error = "58030";
inline constexpr std::string_view internal_error = "XX000";

}  // namespace pgcloak::sqlstate
