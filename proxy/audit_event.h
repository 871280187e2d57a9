// What the running proxy hands the audit log. Capturing is cheap on the
// relay threads (copies of strings the relay already has); parsing,
// normalising, JSON encoding and MACs happen on the audit writer thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pgcloak::proxy {

// Who a session is; shared by all of the session's records.
struct AuditSession {
  uint64_t session_id = 0;
  std::string client_addr;  // "ip:port" or "unix"
  std::string user;         // login role
  std::string database;
  std::string application_name;
  std::string policy;  // masking policy that applies ("" = masking off)
  bool tls = false;
};

// One statement as the relay saw it. The SQL text can hold customer data
// in literals: it is analysed (normalised) on the writer thread and never
// written as is (docs/audit.md, "Redaction").
struct StatementCapture {
  std::shared_ptr<const std::string> sql;  // the client's text (one Query or Parse)
  uint64_t connection = 0;                 // the relay's connection id (cursors are per connection)
  unsigned index = 0;                      // which statement of a multi-statement Query (0-based)
  bool extended = false;                   // extended protocol (Parse/Bind/Execute)
  std::string statement_name;              // extended: prepared statement name ("" = unnamed)
  std::string portal_name;                 // extended: portal name
  std::string command_tag;                 // from CommandComplete ("" if none)
  uint64_t rows = 0;                       // rows returned (DataRow) or affected (tag)
  uint64_t bytes_to_client = 0;            // bytes of the response frames
  std::chrono::microseconds duration{0};
  std::string sqlstate;              // set when the statement failed
  std::string decision = "allowed";  // allowed | masked | denied
  std::string rule;                  // the rule that decided ("" = none)
  // Bind parameter values in text form; filled only with log_parameters.
  std::optional<std::vector<std::optional<std::string>>> parameters;
};

struct AuditEvent {
  // connection_opened, tls, auth, statement, function_call, denial, alert,
  // config_reload, disconnect, audit_started, audit_stopped
  std::string kind;
  std::chrono::system_clock::time_point at = std::chrono::system_clock::now();
  std::shared_ptr<const AuditSession> session;       // null for events without a session
  nlohmann::json detail = nlohmann::json::object();  // kind-specific fields; never customer data
  std::optional<StatementCapture> statement;         // kind == "statement"
};

}  // namespace pgcloak::proxy
