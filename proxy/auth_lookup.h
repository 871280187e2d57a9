// Where auth.mode scram gets a login's SCRAM verifier: auth.auth_query on
// the catalog connection (PgBouncer's auth_query), with a short-lived cache.
//
// Security: the outcome distinguishes "no usable verifier" (unknown role,
// MD5 or no password, a failing auth_query) from "PostgreSQL unreachable".
// The session answers the first exactly like a wrong password, after a full
// SCRAM exchange against mock_scram_verifier(), so a client cannot tell which
// roles exist. Reasons are for pgcloak's log and never contain the secret.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "proxy/pg_side_connection.h"
#include "proxy/scram.h"
#include "rules/config.h"

namespace pgcloak::proxy {

struct VerifierLookup {
  enum class Outcome {
    found,        // verifier is set
    no_verifier,  // authenticate against a mock verifier, then fail with 28P01
    unavailable,  // the catalog connection failed: tell the client 08006
  };
  Outcome outcome = Outcome::no_verifier;
  std::optional<ScramVerifier> verifier;
  std::string reason;  // for pgcloak's log
};

class AuthLookup {
 public:
  AuthLookup(const rules::Config& config, PgSidePool& pool);

  // The database auth_query runs in: auth.auth_dbname, else the client's.
  std::string database_for(const std::string& client_database) const;

  // Non-blocking: a verifier fetched less than auth.verifier_cache_ttl ago.
  std::optional<ScramVerifier> cached(const std::string& dbname, const std::string& user);
  // Blocking (run_blocking): runs auth_query and caches a verifier it finds.
  VerifierLookup fetch(const std::string& dbname, const std::string& user);
  // Drops a cached verifier that failed (the password may have changed).
  void forget(const std::string& dbname, const std::string& user);

 private:
  struct Entry {
    ScramVerifier verifier;
    std::chrono::steady_clock::time_point fetched;
  };
  using Key = std::pair<std::string, std::string>;  // dbname, user

  std::string query_;
  std::string dbname_;
  std::chrono::steady_clock::duration ttl_;
  PgSidePool& pool_;
  std::mutex mu_;
  std::map<Key, Entry> cache_;
};

// The verifier PostgreSQL's mock authentication would use for `user`: the
// default iteration count and a salt derived from the user name and a
// per-process secret, so repeated attempts for one name see the same salt
// (as for a real role) while the keys match no password.
ScramVerifier mock_scram_verifier(std::string_view user);

}  // namespace pgcloak::proxy
