#include "proxy/cancel_registry.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace pgcloak::proxy {

namespace {
int32_t random_i32(bool positive) {
  uint32_t v = 0;
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&v), sizeof v) != 1) {
    throw std::runtime_error("OpenSSL RAND_bytes failed");
  }
  if (positive) v &= 0x7fffffffU;
  return static_cast<int32_t>(v);
}
}  // namespace

BackendKey CancelRegistry::add(const BackendKey& upstream) {
  std::lock_guard lock(mu_);
  for (;;) {
    // Positive, non-zero pids look like real ones to tools that print them.
    BackendKey k{random_i32(true), random_i32(false)};
    if (k.process_id == 0) continue;
    if (keys_.try_emplace(k.process_id, k.secret_key, upstream).second) return k;
  }
}

void CancelRegistry::remove(const BackendKey& client_key) {
  std::lock_guard lock(mu_);
  auto it = keys_.find(client_key.process_id);
  if (it != keys_.end() && it->second.first == client_key.secret_key) keys_.erase(it);
}

std::optional<BackendKey> CancelRegistry::find(const BackendKey& client_key) const {
  std::lock_guard lock(mu_);
  auto it = keys_.find(client_key.process_id);
  if (it == keys_.end()) return std::nullopt;
  int32_t expected = it->second.first;
  if (CRYPTO_memcmp(&expected, &client_key.secret_key, sizeof expected) != 0) return std::nullopt;
  return it->second.second;
}

size_t CancelRegistry::size() const {
  std::lock_guard lock(mu_);
  return keys_.size();
}

}  // namespace pgcloak::proxy
