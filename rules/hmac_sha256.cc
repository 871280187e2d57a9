#include "rules/hmac_sha256.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

namespace pgcloak::rules {

namespace {
constexpr size_t block_size = 64;  // SHA-256 (RFC 6234 section 4.1)
}

HmacSha256::HmacSha256(std::span<const uint8_t> key) {
  if (key.size() > block_size) return;
  std::array<uint8_t, block_size> ipad{};
  std::array<uint8_t, block_size> opad{};
  for (size_t i = 0; i < block_size; ++i) {
    const uint8_t b = i < key.size() ? key[i] : 0;
    ipad[i] = b ^ 0x36;
    opad[i] = b ^ 0x5c;
  }
  EVP_MD_CTX* inner = EVP_MD_CTX_new();
  EVP_MD_CTX* outer = EVP_MD_CTX_new();
  EVP_MD_CTX* work = EVP_MD_CTX_new();
  const bool ok = inner != nullptr && outer != nullptr && work != nullptr &&
                  EVP_DigestInit_ex(inner, EVP_sha256(), nullptr) == 1 &&
                  EVP_DigestUpdate(inner, ipad.data(), ipad.size()) == 1 &&
                  EVP_DigestInit_ex(outer, EVP_sha256(), nullptr) == 1 &&
                  EVP_DigestUpdate(outer, opad.data(), opad.size()) == 1;
  OPENSSL_cleanse(ipad.data(), ipad.size());
  OPENSSL_cleanse(opad.data(), opad.size());
  if (!ok) {
    EVP_MD_CTX_free(inner);
    EVP_MD_CTX_free(outer);
    EVP_MD_CTX_free(work);
    return;
  }
  inner_ = inner;
  outer_ = outer;
  work_ = work;
}

HmacSha256::~HmacSha256() {
  EVP_MD_CTX_free(inner_);
  EVP_MD_CTX_free(outer_);
  EVP_MD_CTX_free(work_);
}

bool HmacSha256::mac(std::initializer_list<std::string_view> parts, std::array<uint8_t, 32>& out) {
  if (!ok()) return false;
  std::array<uint8_t, 32> inner{};
  unsigned int len = 0;
  if (EVP_MD_CTX_copy_ex(work_, inner_) != 1) return false;
  for (std::string_view p : parts) {
    if (EVP_DigestUpdate(work_, p.data(), p.size()) != 1) return false;
  }
  const bool done = EVP_DigestFinal_ex(work_, inner.data(), &len) == 1 &&
                    EVP_MD_CTX_copy_ex(work_, outer_) == 1 &&
                    EVP_DigestUpdate(work_, inner.data(), inner.size()) == 1 &&
                    EVP_DigestFinal_ex(work_, out.data(), &len) == 1;
  OPENSSL_cleanse(inner.data(), inner.size());
  return done;
}

}  // namespace pgcloak::rules
