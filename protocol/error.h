// The one error type of pgcloak. protocol/ and rules/ return it inside a
// Result; proxy/ turns it into an ErrorResponse with send_error(). It carries
// exactly the fields a PostgreSQL ErrorResponse needs so nothing is lost on
// the way to the client (protocol docs, "Error and Notice Message Fields").
#pragma once

#include <string>
#include <string_view>

#include "protocol/sqlstate.h"

namespace pgcloak {

enum class Severity { error, fatal };

struct Error {
  std::string_view sqlstate = sqlstate::internal_error;
  Severity severity = Severity::error;
  std::string message;
  std::string detail;
  std::string hint;

  static Error make(std::string_view code, std::string msg, Severity sev = Severity::error,
                    std::string hint_text = {}) {
    Error e;
    e.sqlstate = code;
    e.severity = sev;
    e.message = std::move(msg);
    e.hint = std::move(hint_text);
    return e;
  }
  // A malformed frame or field: the stream cannot be trusted past this point,
  // so these are always FATAL (conventions: fail closed, 08P01, then close).
  static Error protocol(std::string msg) {
    return make(sqlstate::protocol_violation, std::move(msg), Severity::fatal);
  }
};

}  // namespace pgcloak
