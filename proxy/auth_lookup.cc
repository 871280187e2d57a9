#include "proxy/auth_lookup.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <stdexcept>

namespace pgcloak::proxy {

namespace {

// PostgreSQL's SCRAM_DEFAULT_ITERATIONS and SCRAM_DEFAULT_SALT_LEN.
constexpr int mock_iterations = 4096;
constexpr size_t mock_salt_length = 16;

void wipe(ScramVerifier& v) {
  OPENSSL_cleanse(v.stored_key.data(), v.stored_key.size());
  OPENSSL_cleanse(v.server_key.data(), v.server_key.size());
}

}  // namespace

AuthLookup::AuthLookup(const rules::Config& config, PgSidePool& pool)
    : query_(config.auth.auth_query),
      dbname_(config.auth.auth_dbname),
      ttl_(config.auth.verifier_cache_ttl),
      pool_(pool) {}

std::string AuthLookup::database_for(const std::string& client_database) const {
  return dbname_.empty() ? client_database : dbname_;
}

std::optional<ScramVerifier> AuthLookup::cached(const std::string& dbname, const std::string& user) {
  if (ttl_.count() <= 0) return std::nullopt;
  std::lock_guard lock(mu_);
  auto it = cache_.find({dbname, user});
  if (it == cache_.end()) return std::nullopt;
  if (std::chrono::steady_clock::now() - it->second.fetched >= ttl_) {
    wipe(it->second.verifier);
    cache_.erase(it);
    return std::nullopt;
  }
  return it->second.verifier;
}

void AuthLookup::forget(const std::string& dbname, const std::string& user) {
  std::lock_guard lock(mu_);
  if (auto it = cache_.find({dbname, user}); it != cache_.end()) {
    wipe(it->second.verifier);
    cache_.erase(it);
  }
}

VerifierLookup AuthLookup::fetch(const std::string& dbname, const std::string& user) {
  VerifierLookup out;
  auto rows = pool_.query(dbname, query_, {user});
  if (!rows) {
    const Error& e = rows.error();
    if (is_connection_error(e)) {
      out.outcome = VerifierLookup::Outcome::unavailable;
      out.reason = e.message;
    } else {
      out.reason = "auth.auth_query failed in database \"" + dbname + "\" (SQLSTATE " +
                   std::string(e.sqlstate) + "): " + e.message;
    }
    return out;
  }
  if (rows->empty()) {
    out.reason =
        "auth.auth_query returned no row (the role does not exist, cannot log in, or is a superuser)";
    return out;
  }
  if (rows->size() > 1) {
    out.reason = "auth.auth_query returned " + std::to_string(rows->size()) + " rows instead of one";
    return out;
  }
  const PgRow& row = rows->front();
  if (row.size() < 2) {
    out.reason = "auth.auth_query must return two columns (usename, passwd)";
    return out;
  }
  if (!row[1] || row[1]->empty()) {
    out.reason = "the role has no password";
    return out;
  }
  auto verifier = parse_scram_verifier(*row[1]);
  OPENSSL_cleanse(rows->front()[1]->data(), rows->front()[1]->size());
  if (!verifier) {
    out.reason = "the role has no usable SCRAM secret: " + verifier.error().message;
    return out;
  }
  out.outcome = VerifierLookup::Outcome::found;
  out.verifier = std::move(verifier).value();
  if (ttl_.count() > 0) {
    std::lock_guard lock(mu_);
    auto& entry = cache_[{dbname, user}];
    wipe(entry.verifier);
    entry = Entry{*out.verifier, std::chrono::steady_clock::now()};
  }
  return out;
}

ScramVerifier mock_scram_verifier(std::string_view user) {
  static const std::array<uint8_t, 32> secret = [] {
    std::array<uint8_t, 32> s{};
    if (RAND_bytes(s.data(), static_cast<int>(s.size())) != 1) {
      throw std::runtime_error("RAND_bytes failed");
    }
    return s;
  }();
  auto derive = [&](std::string_view label, ScramKey& out) {
    std::string input(secret.begin(), secret.end());
    input.append(label);
    input.push_back('\0');
    input.append(user);
    unsigned int len = 0;
    if (EVP_Digest(input.data(), input.size(), out.data(), &len, EVP_sha256(), nullptr) != 1) {
      throw std::runtime_error("EVP_Digest failed");
    }
    OPENSSL_cleanse(input.data(), input.size());
  };
  ScramVerifier v;
  v.iterations = mock_iterations;
  ScramKey salt{};
  derive("salt", salt);
  v.salt.assign(salt.begin(), salt.begin() + mock_salt_length);
  derive("stored", v.stored_key);
  derive("server", v.server_key);
  return v;
}

}  // namespace pgcloak::proxy
