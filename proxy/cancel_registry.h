// Maps the BackendKeyData pgcloak hands to each client onto the key of the
// PostgreSQL backend serving it. Clients never see upstream keys: a key
// leaked from one client cannot cancel anything through another path, and an
// upstream pid does not reveal how many backends exist.
//
// Shared by all io threads, hence the mutex; lookups happen once per cancel
// and inserts once per connection, far from the hot path.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>

namespace pgcloak::proxy {

struct BackendKey {
  int32_t process_id = 0;
  int32_t secret_key = 0;
};

class CancelRegistry {
 public:
  // Draws a fresh random key (OpenSSL's CSPRNG) that no live session holds
  // and maps it to the upstream key.
  BackendKey add(const BackendKey& upstream);
  void remove(const BackendKey& client_key);
  // The upstream key for a client's CancelRequest, or nothing when the pid is
  // unknown or the secret does not match (compared in constant time).
  std::optional<BackendKey> find(const BackendKey& client_key) const;
  size_t size() const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<int32_t, std::pair<int32_t, BackendKey>> keys_;  // pid -> (secret, upstream)
};

}  // namespace pgcloak::proxy
