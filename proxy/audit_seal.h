// Sealing of statement texts and bind parameters for the audit log
// (audit.log_parameters, docs/audit.md, "Statement analysis"): the log never
// holds them in the clear, only AES-256-GCM ciphertexts that the holders of
// audit.parameter_key_file can open.
//
//   v1.<base64 nonce (12 bytes)>.<base64 ciphertext || tag (16 bytes)>
//
// Each seal draws a fresh random 96-bit nonce, so sealing the same text
// twice gives different records (no equality oracle across the log). GCM's
// tag makes any change to a sealed value fail to open. Random nonces are
// safe for about 2^32 seals per key; rotate the key well before that.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "protocol/result.h"

namespace pgcloak::proxy {

inline constexpr size_t parameter_key_length = 32;

class ParameterSealer {
 public:
  // The key as 64 hexadecimal characters (openssl rand -hex 32); trailing
  // whitespace (a newline) is ignored. Errors say what is wrong without
  // printing the key.
  static Result<std::shared_ptr<const ParameterSealer>> from_hex(std::string_view hex);
  // from_hex() on the file's contents; the error names the file.
  static Result<std::shared_ptr<const ParameterSealer>> from_key_file(const std::string& path);

  ParameterSealer(const ParameterSealer&) = delete;
  ParameterSealer& operator=(const ParameterSealer&) = delete;
  ~ParameterSealer();  // wipes the key

  // Fails only when OpenSSL does (no randomness).
  Result<std::string> seal(std::string_view plaintext) const;
  // For authorised readers: fails on a malformed value, a wrong key or any
  // altered byte.
  Result<std::string> unseal(std::string_view sealed) const;

 private:
  ParameterSealer() = default;
  std::array<uint8_t, parameter_key_length> key_{};
};

}  // namespace pgcloak::proxy
