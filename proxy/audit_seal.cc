#include "proxy/audit_seal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <optional>
#include <sstream>
#include <vector>

#include "proxy/base64.h"

namespace pgcloak::proxy {

namespace {

constexpr size_t nonce_length = 12;  // GCM's native IV size: no GHASH of the IV
constexpr size_t tag_length = 16;
constexpr std::string_view version_prefix = "v1.";

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Bumped in the child after fork(): a child must never reuse nonces its
// parent drew.
std::atomic<uint64_t> fork_generation{0};

// Nonces drawn from OpenSSL's CSPRNG in batches: one RAND_bytes call costs
// about as much as the whole encryption of a statement, and nonces are not
// secret (they are written next to the ciphertext). Per thread, so no lock.
bool next_nonce(std::array<uint8_t, nonce_length>& nonce) {
  static const bool registered = [] {
    return pthread_atfork(nullptr, nullptr,
                          [] { fork_generation.fetch_add(1, std::memory_order_relaxed); }) == 0;
  }();
  if (!registered) return RAND_bytes(nonce.data(), static_cast<int>(nonce.size())) == 1;
  constexpr size_t batch = 256;
  struct Buffer {
    std::array<uint8_t, nonce_length * batch> bytes{};
    size_t used = nonce_length * batch;
    uint64_t generation = 0;
  };
  thread_local Buffer buf;
  const uint64_t generation = fork_generation.load(std::memory_order_relaxed);
  if (buf.used == buf.bytes.size() || buf.generation != generation) {
    if (RAND_bytes(buf.bytes.data(), static_cast<int>(buf.bytes.size())) != 1) return false;
    buf.used = 0;
    buf.generation = generation;
  }
  std::copy_n(buf.bytes.begin() + static_cast<std::ptrdiff_t>(buf.used), nonce_length, nonce.begin());
  // Never hand out the same bytes twice.
  std::fill_n(buf.bytes.begin() + static_cast<std::ptrdiff_t>(buf.used), nonce_length, uint8_t{0});
  buf.used += nonce_length;
  return true;
}

struct CipherCtx {
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  CipherCtx() = default;
  CipherCtx(const CipherCtx&) = delete;
  CipherCtx& operator=(const CipherCtx&) = delete;
  ~CipherCtx() { EVP_CIPHER_CTX_free(ctx); }
};

Error seal_error(std::string what) {
  return Error::make(sqlstate::internal_error, "pgcloak could not seal an audit value: " + std::move(what));
}

Error unseal_error(std::string_view why) {
  return Error::make(sqlstate::invalid_parameter_value,
                     "pgcloak: the sealed audit value cannot be opened: " + std::string(why));
}

}  // namespace

Result<std::shared_ptr<const ParameterSealer>> ParameterSealer::from_hex(std::string_view hex) {
  while (!hex.empty() &&
         (hex.back() == '\n' || hex.back() == '\r' || hex.back() == ' ' || hex.back() == '\t')) {
    hex.remove_suffix(1);
  }
  if (hex.size() != 2 * parameter_key_length) {
    return Error::make(sqlstate::config_file_error,
                       "the parameter key must be " + std::to_string(2 * parameter_key_length) +
                           " hexadecimal characters (32 bytes), found " + std::to_string(hex.size()) +
                           " characters",
                       Severity::fatal, "Create one with: openssl rand -hex 32");
  }
  std::shared_ptr<ParameterSealer> s(new ParameterSealer());
  for (size_t i = 0; i < parameter_key_length; ++i) {
    const int hi = hex_value(hex[2 * i]);
    const int lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return Error::make(sqlstate::config_file_error,
                         "the parameter key must be hexadecimal; character " +
                             std::to_string(2 * i + (hi < 0 ? 1 : 2)) + " is not",
                         Severity::fatal, "Create one with: openssl rand -hex 32");
    }
    s->key_[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return std::shared_ptr<const ParameterSealer>(std::move(s));
}

Result<std::shared_ptr<const ParameterSealer>> ParameterSealer::from_key_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return Error::make(sqlstate::config_file_error, "audit.parameter_key_file: cannot read \"" + path + "\"",
                       Severity::fatal,
                       "audit.log_parameters needs a key file holding 64 hexadecimal characters "
                       "(openssl rand -hex 32 > FILE; chmod 600 FILE)");
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  auto sealer = from_hex(text);
  OPENSSL_cleanse(text.data(), text.size());
  if (!sealer) {
    Error e = sealer.error();
    e.message = "audit.parameter_key_file \"" + path + "\": " + e.message;
    return e;
  }
  return sealer;
}

ParameterSealer::~ParameterSealer() {
  OPENSSL_cleanse(key_.data(), key_.size());
}

Result<std::string> ParameterSealer::seal(std::string_view plaintext) const {
  std::array<uint8_t, nonce_length> nonce{};
  if (!next_nonce(nonce)) return seal_error("no random nonce");
  CipherCtx c;
  if (c.ctx == nullptr) return seal_error("no cipher context");
  std::vector<uint8_t> out(plaintext.size() + tag_length);
  int n = 0;
  int total = 0;
  if (EVP_EncryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, key_.data(), nonce.data()) != 1 ||
      EVP_EncryptUpdate(c.ctx, out.data(), &n, reinterpret_cast<const unsigned char*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1) {
    return seal_error("encryption failed");
  }
  total = n;
  if (EVP_EncryptFinal_ex(c.ctx, out.data() + total, &n) != 1) return seal_error("encryption failed");
  total += n;
  if (EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_GET_TAG, static_cast<int>(tag_length), out.data() + total) !=
      1) {
    return seal_error("no authentication tag");
  }
  total += static_cast<int>(tag_length);
  std::string sealed(version_prefix);
  sealed += base64_encode(std::span<const uint8_t>(nonce.data(), nonce.size()));
  sealed += '.';
  sealed += base64_encode(std::span<const uint8_t>(out.data(), static_cast<size_t>(total)));
  return sealed;
}

Result<std::string> ParameterSealer::unseal(std::string_view sealed) const {
  if (sealed.substr(0, version_prefix.size()) != version_prefix) return unseal_error("unknown format");
  sealed.remove_prefix(version_prefix.size());
  const size_t dot = sealed.find('.');
  if (dot == std::string_view::npos) return unseal_error("malformed");
  auto nonce = base64_decode(sealed.substr(0, dot));
  auto body = base64_decode(sealed.substr(dot + 1));
  if (!nonce || !body || nonce->size() != nonce_length || body->size() < tag_length) {
    return unseal_error("malformed");
  }
  const size_t ct_len = body->size() - tag_length;
  CipherCtx c;
  if (c.ctx == nullptr) return unseal_error("no cipher context");
  std::string out(ct_len, '\0');
  int n = 0;
  int total = 0;
  if (EVP_DecryptInit_ex(c.ctx, EVP_aes_256_gcm(), nullptr, key_.data(), nonce->data()) != 1 ||
      EVP_DecryptUpdate(c.ctx, reinterpret_cast<unsigned char*>(out.data()), &n, body->data(),
                        static_cast<int>(ct_len)) != 1) {
    return unseal_error("decryption failed");
  }
  total = n;
  if (EVP_CIPHER_CTX_ctrl(c.ctx, EVP_CTRL_GCM_SET_TAG, static_cast<int>(tag_length), body->data() + ct_len) !=
      1) {
    return unseal_error("decryption failed");
  }
  // The tag check: a wrong key or any altered byte ends here.
  if (EVP_DecryptFinal_ex(c.ctx, reinterpret_cast<unsigned char*>(out.data()) + total, &n) != 1) {
    OPENSSL_cleanse(out.data(), out.size());
    return unseal_error("wrong key or altered value");
  }
  total += n;
  out.resize(static_cast<size_t>(total));
  return out;
}

}  // namespace pgcloak::proxy
