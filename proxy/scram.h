// SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, on both ends.
//
// pgcloak terminates client TLS, so relaying SCRAM would break channel
// binding (the client binds to pgcloak's certificate, PostgreSQL to its own).
// Instead pgcloak terminates SCRAM itself, as PgBouncer does with auth_query:
//
//   client --SCRAM--> ScramServer(verifier from pg_authid)
//                       | the proof yields ClientKey, checked against StoredKey
//                       v
//   ScramClient(ClientKey, verifier) --SCRAM--> PostgreSQL
//
// No password is needed on the upstream leg: PostgreSQL holds the same
// verifier (same salt, same iteration count), and a SCRAM client needs only
// ClientKey to build a proof and ServerKey to check the server's signature.
//
// Pure computation: no sockets, no clocks. Every failure is an Error whose
// SQLSTATE and message are what PostgreSQL itself sends for that case, so a
// wrong password through pgcloak reads exactly like a wrong password direct.
// All errors are FATAL: authentication failures end the connection.
#pragma once

#include <openssl/ossl_typ.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"
#include "protocol/wire.h"

namespace pgcloak::proxy {

inline constexpr std::string_view scram_sha_256 = "SCRAM-SHA-256";
inline constexpr std::string_view scram_sha_256_plus = "SCRAM-SHA-256-PLUS";
inline constexpr std::string_view cbind_tls_server_end_point = "tls-server-end-point";
inline constexpr size_t scram_key_length = 32;
// PostgreSQL reads SASL messages with PG_MAX_AUTH_TOKEN_LENGTH as the limit.
inline constexpr size_t scram_max_message_length = 65535;

using ScramKey = std::array<uint8_t, scram_key_length>;

// A pg_authid.rolpassword of the form
//   SCRAM-SHA-256$<iterations>:<salt base64>$<StoredKey base64>:<ServerKey base64>
struct ScramVerifier {
  int iterations = 0;
  std::vector<uint8_t> salt;
  ScramKey stored_key{};
  ScramKey server_key{};
};

// Strict: exact layout, canonical base64, 32-byte keys, 1 <= iterations <=
// INT_MAX, non-empty salt. MD5 hashes and plain-text passwords get an error
// that says so. Errors are 28P01 and never quote the secret; like PostgreSQL
// (which only logs "User does not have a valid SCRAM secret"), the caller
// should log the message and tell the client only that authentication failed.
Result<ScramVerifier> parse_scram_verifier(std::string_view text);

// Builds a verifier the way PostgreSQL does (scram_build_secret):
// SaltedPassword = PBKDF2-HMAC-SHA256(SASLprep(password), salt, iterations),
// ClientKey = HMAC(SaltedPassword, "Client Key"), StoredKey = H(ClientKey),
// ServerKey = HMAC(SaltedPassword, "Server Key").
Result<std::string> make_scram_verifier(std::string_view password, std::span<const uint8_t> salt,
                                        int iterations);

// PostgreSQL's pg_saslprep as far as pgcloak replicates it:
//  - pure ASCII: returned unchanged (PostgreSQL does the same);
//  - not valid UTF-8: returned unchanged (PostgreSQL falls back to raw bytes);
//  - otherwise non-ASCII spaces (RFC 3454 C.1.2) become U+0020 and
//    "commonly mapped to nothing" characters (B.1) are dropped; if the result
//    holds a prohibited character (C.2.1-C.9) the raw input is used instead.
// NOT replicated: NFKC normalisation, the bidirectional-text rule (D.1/D.2)
// and the unassigned-code-point check (A.1). Passwords in NFKC form without
// RTL text (nearly all typed passwords: precomposed accents, CJK) come out
// identical to PostgreSQL's; others may not. pgcloak's main path never sees
// the password (it works from ClientKey), so this matters only for
// ScramClient(password) and make_scram_verifier().
std::string scram_saslprep(std::string_view password);

// The tls-server-end-point channel-binding data of a certificate (RFC 5929
// section 4.1): its DER hash with SHA-256 if it is signed with MD5, SHA-1 or
// SHA-256, otherwise with its signature's own hash. Certificates whose
// signature has no separate hash (Ed25519, Ed448) have no binding data.
Result<std::vector<uint8_t>> tls_server_end_point_hash(X509* cert);

// Produces a nonce: printable ASCII except ','. The default draws 18 random
// bytes (OpenSSL's CSPRNG) and base64-encodes them, as PostgreSQL and libpq
// do. Tests inject fixed nonces.
using ScramNonceSource = std::function<Result<std::string>()>;
Result<std::string> random_scram_nonce();

struct ScramServerOptions {
  // The user from the startup packet. PostgreSQL ignores the SCRAM username
  // and so do we; this one only goes into the 28P01 message.
  std::string user;
  // Binding data for pgcloak's own certificate on the client connection
  // (tls_server_end_point_hash); nullopt for a connection without TLS.
  // When set, SCRAM-SHA-256-PLUS is offered.
  std::optional<std::vector<uint8_t>> tls_server_end_point;
  ScramNonceSource nonce_source;  // empty: random_scram_nonce
};

// The client-facing end: verifies a client against a verifier and recovers
// its ClientKey. One exchange per object; after any error every further call
// fails too (fail closed).
class ScramServer {
 public:
  ScramServer(ScramVerifier verifier, ScramServerOptions options);
  ~ScramServer();
  ScramServer(const ScramServer&) = delete;
  ScramServer& operator=(const ScramServer&) = delete;
  ScramServer(ScramServer&&) = default;
  ScramServer& operator=(ScramServer&&) = default;

  // The mechanisms for AuthenticationSASL, preferred first.
  std::vector<std::string> mechanisms() const;

  // SASLInitialResponse: the chosen mechanism and the client-first-message.
  // Returns the server-first-message for AuthenticationSASLContinue.
  Result<std::string> handle_client_first(std::string_view mechanism, protocol::Bytes message);
  // SASLResponse: the client-final-message. Returns the server-final-message
  // for AuthenticationSASLFinal; the client is authenticated only then.
  Result<std::string> handle_client_final(protocol::Bytes message);

  bool done() const { return state_ == State::done; }
  bool channel_binding_used() const { return channel_binding_used_; }
  // The ClientKey the client proved it has; set only after success.
  const std::optional<ScramKey>& client_key() const { return client_key_; }
  const ScramVerifier& verifier() const { return verifier_; }

 private:
  enum class State { client_first, client_final, done, failed };
  Error fail(Error e);

  ScramVerifier verifier_;
  ScramServerOptions options_;
  State state_ = State::client_first;
  bool channel_binding_used_ = false;
  char cbind_flag_ = 0;
  std::string gs2_header_;
  std::string client_nonce_;
  std::string server_nonce_;
  std::string client_first_bare_;
  std::string server_first_;
  std::optional<ScramKey> client_key_;
};

struct ScramClientOptions {
  // Sent as n=...; PostgreSQL ignores it and libpq sends it empty.
  std::string user;
  // Binding data for the upstream server's certificate when the connection
  // to PostgreSQL is TLS; SCRAM-SHA-256-PLUS is then used unless the server
  // does not offer it (see select_mechanism).
  std::optional<std::vector<uint8_t>> tls_server_end_point;
  ScramNonceSource nonce_source;  // empty: random_scram_nonce
};

// The PostgreSQL-facing end. Built either from a password or from the
// ClientKey a ScramServer recovered plus the verifier it used; in the second
// case PostgreSQL must announce the verifier's salt and iteration count,
// otherwise the role's password changed and the exchange fails cleanly.
// Call order: [select_mechanism], client_first, handle_server_first,
// handle_server_final; done() only after the server's signature checked out.
class ScramClient {
 public:
  explicit ScramClient(std::string_view password, ScramClientOptions options = {});
  ScramClient(const ScramKey& client_key, const ScramVerifier& verifier, ScramClientOptions options = {});
  ~ScramClient();
  ScramClient(const ScramClient&) = delete;
  ScramClient& operator=(const ScramClient&) = delete;
  ScramClient(ScramClient&&) = default;
  ScramClient& operator=(ScramClient&&) = default;

  // Picks from the server's AuthenticationSASL list, as libpq does:
  // SCRAM-SHA-256-PLUS when we have binding data and it is offered, else
  // SCRAM-SHA-256 (gs2 flag 'y' if we could have bound, 'n' otherwise).
  // Without this call the mechanism is -PLUS iff binding data was given.
  Result<std::string> select_mechanism(std::span<const std::string> offered);
  std::string_view mechanism() const;

  // The client-first-message for SASLInitialResponse.
  Result<std::string> client_first();
  // Takes the server-first-message, returns the client-final-message.
  Result<std::string> handle_server_first(protocol::Bytes message);
  // Takes the server-final-message and verifies the server signature.
  Status handle_server_final(protocol::Bytes message);

  bool done() const { return state_ == State::done; }

 private:
  enum class State { initial, server_first, server_final, done, failed };
  Error fail(Error e);

  std::string password_;                       // after SASLprep; empty in key mode
  std::optional<ScramVerifier> key_verifier_;  // set in key mode
  ScramKey client_key_{};
  ScramKey server_key_{};
  ScramClientOptions options_;
  bool use_plus_ = false;
  char cbind_flag_ = 'n';
  State state_ = State::initial;
  std::string client_nonce_;
  std::string client_first_bare_;
  std::string auth_message_;
};

}  // namespace pgcloak::proxy
