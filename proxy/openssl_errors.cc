#include "proxy/openssl_errors.h"

#include <openssl/err.h>

#include <array>

namespace pgcloak::proxy {

std::string openssl_errors() {
  std::string out;
  const char* data = nullptr;
  int flags = 0;
  while (unsigned long code = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags)) {
    if (!out.empty()) out += "; ";
    if (const char* reason = ERR_reason_error_string(code)) {
      out += reason;
    } else {
      std::array<char, 256> buf{};
      ERR_error_string_n(code, buf.data(), buf.size());
      out += buf.data();
    }
    // The detail OpenSSL attached, e.g. the host name that did not match.
    if ((flags & ERR_TXT_STRING) != 0 && data != nullptr && *data != '\0') {
      out += " (";
      out += data;
      out += ")";
    }
  }
  return out;
}

}  // namespace pgcloak::proxy
