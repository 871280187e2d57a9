// OpenSSL's error queue as one readable line, for log lines and error
// messages (TLS to syslog, to the alert webhook, ...).
#pragma once

#include <string>

namespace pgcloak::proxy {

// Everything on OpenSSL's (thread-local) error queue, oldest first, then
// clears it: "certificate verify failed; ...". Empty when it was empty.
std::string openssl_errors();

}  // namespace pgcloak::proxy
