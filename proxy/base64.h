// Base64 (RFC 4648 section 4), shared by SCRAM, sealed audit parameters and
// HTTP Basic credentials. Encoding is OpenSSL's; decoding is our own because
// EVP_DecodeBlock skips whitespace and hides padding. Decoding accepts only
// canonical text: length a multiple of 4, alphabet characters, '=' only as
// 1-2 trailing pad characters, unused pad bits zero. Every producer of what
// pgcloak decodes writes canonical base64, so anything else was altered.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pgcloak::proxy {

std::string base64_encode(std::span<const uint8_t> in);
std::string base64_encode(std::string_view in);
std::optional<std::vector<uint8_t>> base64_decode(std::string_view in);

}  // namespace pgcloak::proxy
