#include "proxy/base64.h"

#include <openssl/evp.h>

namespace pgcloak::proxy {

namespace {

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

std::string base64_encode(std::span<const uint8_t> in) {
  std::string out(4 * ((in.size() + 2) / 3), '\0');
  if (!in.empty()) {
    const int n =
        EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), in.data(), static_cast<int>(in.size()));
    out.resize(static_cast<size_t>(n));
  }
  return out;
}

std::string base64_encode(std::string_view in) {
  return base64_encode(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(in.data()), in.size()));
}

std::optional<std::vector<uint8_t>> base64_decode(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  size_t pad = 0;
  if (!in.empty() && in.back() == '=') pad = (in.size() >= 2 && in[in.size() - 2] == '=') ? 2 : 1;
  std::vector<uint8_t> out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    const size_t data_chars = last ? 4 - pad : 4;
    uint32_t group = 0;
    for (size_t j = 0; j < 4; ++j) {
      int v = 0;
      if (j < data_chars) {
        v = base64_value(in[i + j]);
        if (v < 0) return std::nullopt;
      }
      group = (group << 6) | static_cast<uint32_t>(v);
    }
    out.push_back(static_cast<uint8_t>(group >> 16));
    if (data_chars >= 3) out.push_back(static_cast<uint8_t>(group >> 8));
    if (data_chars == 4) out.push_back(static_cast<uint8_t>(group));
    // Non-canonical: bits below the last full byte must be zero.
    if (data_chars == 3 && (group & 0xFF) != 0) return std::nullopt;
    if (data_chars == 2 && (group & 0xFFFF) != 0) return std::nullopt;
  }
  return out;
}

}  // namespace pgcloak::proxy
