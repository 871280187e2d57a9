// HMAC-SHA256 (RFC 2104) with the key's padded states computed once.
//
// OpenSSL 3's one-shot HMAC() and EVP_MAC fetch SHA-256 and key a fresh
// context on every call, about a microsecond. Masking needs a MAC per
// result value and the audit trail one per record, so this keeps the
// SHA-256 states after the key's inner and outer pads: a MAC is then two
// short digests continued from copies of those states (about 0.2 µs for a
// short message).
//
// Not thread-safe: one user at a time. The states are key material; they
// are freed, and wiped by OpenSSL, with the object.
#pragma once

#include <openssl/types.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>

namespace pgcloak::rules {

class HmacSha256 {
 public:
  // Keys of at most 64 bytes (SHA-256's block); longer ones make ok() false.
  explicit HmacSha256(std::span<const uint8_t> key);
  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;

  // False when the states could not be set up (memory exhaustion, key too
  // long); mac() then fails too.
  bool ok() const { return inner_ != nullptr; }

  // The MAC of the concatenation of parts. False only when ok() is false
  // or memory is exhausted.
  bool mac(std::initializer_list<std::string_view> parts, std::array<uint8_t, 32>& out);

 private:
  EVP_MD_CTX* inner_ = nullptr;
  EVP_MD_CTX* outer_ = nullptr;
  EVP_MD_CTX* work_ = nullptr;
};

}  // namespace pgcloak::rules
