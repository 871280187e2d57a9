#include "proxy/scram.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "protocol/sqlstate.h"

namespace pgcloak::proxy {
namespace {

using protocol::as_bytes;

// RFC 7677 section 3.
constexpr std::string_view rfc_user = "user";
constexpr std::string_view rfc_client_nonce = "rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view rfc_server_nonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
constexpr std::string_view rfc_client_first = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
constexpr std::string_view rfc_server_first =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
constexpr std::string_view rfc_client_final =
    "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+"
    "Ute9ytag9zjfMHgsqmmiz7AndVQ=";
constexpr std::string_view rfc_server_final = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
const std::vector<uint8_t> rfc_salt = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
                                       0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};
// The same verifier computed independently (Python hashlib/hmac).
constexpr std::string_view rfc_verifier_text =
    "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
    "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
// ClientKey for "pencil" with the RFC salt, hex, from the same computation.
constexpr std::string_view rfc_client_key_hex =
    "a60fc923d67e8644a92d16b96eda5ef4656b0c725c484374be25535576996e8b";

// Verifiers produced by PostgreSQL 15.18 (SET password_encryption =
// 'scram-sha-256'; CREATE ROLE ... PASSWORD ...; SELECT rolpassword ...).
constexpr std::string_view pg_pencil =
    "SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==$ysnIRBJNyceNsebXBkUC50vc0Dpoi600ez7UznVt5eE=:"
    "I1mdD4PVUsfTz5GkZeEHrRkhwBMkB0CJne6xt2Knd8Y=";
// E'p\u00e2ssword': non-ASCII, already NFKC.
constexpr std::string_view pg_accent =
    "SCRAM-SHA-256$4096:kdD1GAzgdMRgJH/AyFXE9Q==$2cOiwg8tJQ/H1WdQtSzC9wFuVG18RDSb33AuzyQgEdI=:"
    "EX6MlpM+XSw9uFeyKVHmJPsXj4kKJzCXWq2+zH0i4ag=";
// E'a\u00a0b': NO-BREAK SPACE is mapped to a space.
constexpr std::string_view pg_nbsp =
    "SCRAM-SHA-256$4096:43WUy0M5tNAj7rHU8UUdAg==$VMHKUbcz+FH6vZfDia+w6YHbFy7bRu9T2eBKK+OZXAM=:"
    "fliJJz2gWh5aHvGvmqOMXW5sAk9LYxNdanhZQnIemdw=";
// E'x\u00ady': SOFT HYPHEN is mapped to nothing.
constexpr std::string_view pg_soft_hyphen =
    "SCRAM-SHA-256$4096:HZ4aFVPb75ibqspFN4Egpw==$WzpRGLgLKYkoFwRUKk8UVqF+XXRU88/B4cupa1e5YC0=:"
    "QMtNF4/DCL91y2Kt8rrBZrtfNPP0TCFZ/YuIlk0G8u0=";
// E'\u00e9\u0001z': a prohibited control character, so the raw bytes are used.
constexpr std::string_view pg_control =
    "SCRAM-SHA-256$4096:bS1zcGzS4ZhHD4ueGFbxyg==$8Ajs2Y8pVdhW1Xq7ziJOKItYIHIliaEFGHVg+XfdSlU=:"
    "ME8xGh1bl5esCuNOTWIXhxPRpuw3KXKfh9hcBdsl/ck=";

const std::vector<uint8_t> binding_x(32, 0x11);
const std::vector<uint8_t> binding_y(32, 0x22);

ScramNonceSource fixed_nonce(std::string_view nonce) {
  return [n = std::string(nonce)]() -> Result<std::string> { return n; };
}

const ScramVerifier& rfc_verifier() {
  static const ScramVerifier v = [] {
    Result<std::string> text = make_scram_verifier("pencil", rfc_salt, 4096);
    EXPECT_TRUE(text.ok());
    Result<ScramVerifier> parsed = parse_scram_verifier(*text);
    EXPECT_TRUE(parsed.ok());
    return *parsed;
  }();
  return v;
}

ScramKey rfc_client_key() {
  ScramKey k{};
  for (size_t i = 0; i < k.size(); ++i)
    k[i] = static_cast<uint8_t>(std::stoi(std::string(rfc_client_key_hex.substr(2 * i, 2)), nullptr, 16));
  return k;
}

std::unique_ptr<ScramServer> rfc_server(std::optional<std::vector<uint8_t>> binding = std::nullopt,
                                        std::string user = std::string(rfc_user)) {
  return std::make_unique<ScramServer>(
      rfc_verifier(), ScramServerOptions{std::move(user), std::move(binding), fixed_nonce(rfc_server_nonce)});
}

// A server that has accepted the RFC client-first and waits for client-final.
std::unique_ptr<ScramServer> rfc_server_at_final() {
  auto s = rfc_server();
  Result<std::string> first = s->handle_client_first(scram_sha_256, as_bytes(rfc_client_first));
  EXPECT_TRUE(first.ok());
  return s;
}

template <class T>
::testing::AssertionResult fails_with(const Result<T>& r, std::string_view code, std::string_view message,
                                      std::optional<std::string_view> detail = std::nullopt) {
  if (r.ok()) return ::testing::AssertionFailure() << "succeeded, expected " << code << " " << message;
  const Error& e = r.error();
  if (e.sqlstate != code || e.message != message || (detail && e.detail != *detail) ||
      e.severity != Severity::fatal) {
    return ::testing::AssertionFailure()
           << "got " << e.sqlstate << " \"" << e.message << "\" detail \"" << e.detail << "\" severity "
           << (e.severity == Severity::fatal ? "FATAL" : "ERROR");
  }
  return ::testing::AssertionSuccess();
}

// Runs a whole exchange; returns the first failure.
Status run_exchange(ScramClient& client, ScramServer& server) {
  Result<std::string> mech = client.select_mechanism(server.mechanisms());
  if (!mech) return std::move(mech).error();
  Result<std::string> c1 = client.client_first();
  if (!c1) return std::move(c1).error();
  Result<std::string> s1 = server.handle_client_first(*mech, as_bytes(*c1));
  if (!s1) return std::move(s1).error();
  Result<std::string> c2 = client.handle_server_first(as_bytes(*s1));
  if (!c2) return std::move(c2).error();
  Result<std::string> s2 = server.handle_client_final(as_bytes(*c2));
  if (!s2) return std::move(s2).error();
  return client.handle_server_final(as_bytes(*s2));
}

// --- RFC 7677 test vector ---------------------------------------------------

TEST(ScramTest, Rfc7677ClientSide) {
  ScramClient client("pencil",
                     ScramClientOptions{std::string(rfc_user), std::nullopt, fixed_nonce(rfc_client_nonce)});
  EXPECT_EQ(client.mechanism(), scram_sha_256);
  Result<std::string> first = client.client_first();
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, rfc_client_first);
  Result<std::string> final_msg = client.handle_server_first(as_bytes(rfc_server_first));
  ASSERT_TRUE(final_msg.ok()) << final_msg.error().message;
  EXPECT_EQ(*final_msg, rfc_client_final);
  EXPECT_TRUE(client.handle_server_final(as_bytes(rfc_server_final)).ok());
  EXPECT_TRUE(client.done());
}

TEST(ScramTest, Rfc7677ServerSide) {
  EXPECT_EQ(*make_scram_verifier("pencil", rfc_salt, 4096), rfc_verifier_text);
  auto server = rfc_server();
  EXPECT_EQ(server->mechanisms(), std::vector<std::string>{"SCRAM-SHA-256"});
  Result<std::string> first = server->handle_client_first(scram_sha_256, as_bytes(rfc_client_first));
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(*first, rfc_server_first);
  EXPECT_FALSE(server->client_key().has_value());
  Result<std::string> final_msg = server->handle_client_final(as_bytes(rfc_client_final));
  ASSERT_TRUE(final_msg.ok()) << final_msg.error().message;
  EXPECT_EQ(*final_msg, rfc_server_final);
  EXPECT_TRUE(server->done());
  ASSERT_TRUE(server->client_key().has_value());
  EXPECT_EQ(*server->client_key(), rfc_client_key());
}

TEST(ScramTest, Rfc7677ClientFromRecoveredKey) {
  // ClientKey + verifier reproduce the password client's exact messages.
  ScramClient client(rfc_client_key(), rfc_verifier(),
                     ScramClientOptions{std::string(rfc_user), std::nullopt, fixed_nonce(rfc_client_nonce)});
  EXPECT_EQ(*client.client_first(), rfc_client_first);
  EXPECT_EQ(*client.handle_server_first(as_bytes(rfc_server_first)), rfc_client_final);
  EXPECT_TRUE(client.handle_server_final(as_bytes(rfc_server_final)).ok());
}

// --- Round trips --------------------------------------------------------------

TEST(ScramTest, RoundTripPassword) {
  ScramServer server(rfc_verifier(), {"alice", std::nullopt, {}});
  ScramClient client("pencil");
  Status st = run_exchange(client, server);
  ASSERT_TRUE(st.ok()) << st.error().message << " " << st.error().detail;
  EXPECT_TRUE(client.done());
  EXPECT_TRUE(server.done());
  EXPECT_FALSE(server.channel_binding_used());
}

TEST(ScramTest, RoundTripThroughRecoveredClientKey) {
  // client(password) -> pgcloak's ScramServer -> ClientKey ->
  // pgcloak's ScramClient -> "PostgreSQL" (a second ScramServer, same verifier).
  ScramServer front(rfc_verifier(), {"alice", binding_x, {}});
  ScramClient user_client("pencil", {"", binding_x, {}});
  Status st = run_exchange(user_client, front);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(front.channel_binding_used());
  ASSERT_TRUE(front.client_key().has_value());

  ScramServer upstream(rfc_verifier(), {"alice", std::nullopt, {}});
  ScramClient relay(*front.client_key(), front.verifier());
  st = run_exchange(relay, upstream);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_TRUE(relay.done());
  EXPECT_EQ(*upstream.client_key(), *front.client_key());

  // Upstream TLS too: the relay binds to the upstream certificate.
  ScramServer upstream_tls(rfc_verifier(), {"alice", binding_y, {}});
  ScramClient relay_tls(*front.client_key(), front.verifier(), {"", binding_y, {}});
  st = run_exchange(relay_tls, upstream_tls);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(relay_tls.mechanism(), scram_sha_256_plus);
  EXPECT_TRUE(upstream_tls.channel_binding_used());
}

TEST(ScramTest, RecoveredKeyFailsCleanlyWhenVerifierChanged) {
  ScramServer front(rfc_verifier(), {"alice", std::nullopt, {}});
  ScramClient user_client("pencil");
  ASSERT_TRUE(run_exchange(user_client, front).ok());

  // The password was reset between pgcloak's lookup and the upstream login:
  // same password, new salt.
  Result<ScramVerifier> changed = parse_scram_verifier(pg_pencil);
  ASSERT_TRUE(changed.ok());
  ScramServer upstream(*changed, {"alice", std::nullopt, {}});
  ScramClient relay(*front.client_key(), front.verifier());
  Status st = run_exchange(relay, upstream);
  EXPECT_TRUE(fails_with(st, sqlstate::invalid_authorization_specification,
                         "the role's SCRAM verifier changed during authentication"));

  // Same salt, different iteration count.
  ScramClient relay2(*front.client_key(), front.verifier(), {"", std::nullopt, fixed_nonce("abc")});
  ASSERT_TRUE(relay2.client_first().ok());
  EXPECT_TRUE(fails_with(relay2.handle_server_first(as_bytes("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4097")),
                         sqlstate::invalid_authorization_specification,
                         "the role's SCRAM verifier changed during authentication"));
}

TEST(ScramTest, ClientKeyThatDoesNotMatchVerifierIsRefused) {
  ScramKey wrong = rfc_client_key();
  wrong[0] ^= 1;
  ScramClient relay(wrong, rfc_verifier());
  EXPECT_TRUE(fails_with(relay.client_first(), sqlstate::internal_error,
                         "SCRAM ClientKey does not match the verifier's StoredKey"));
}

// --- Verifiers produced by PostgreSQL ----------------------------------------

TEST(ScramTest, PostgresVerifierAuthenticatesPencil) {
  Result<ScramVerifier> v = parse_scram_verifier(pg_pencil);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->iterations, 4096);
  EXPECT_EQ(v->salt.size(), 16U);
  ScramServer server(*v, {"u", std::nullopt, {}});
  ScramClient client("pencil");
  Status st = run_exchange(client, server);
  ASSERT_TRUE(st.ok()) << st.error().message;

  ScramServer server2(*v, {"u", std::nullopt, {}});
  ScramClient wrong("pencil2");
  EXPECT_TRUE(fails_with(run_exchange(wrong, server2), sqlstate::invalid_password,
                         "password authentication failed for user \"u\""));
}

TEST(ScramTest, MakeVerifierMatchesPostgres) {
  struct Case {
    std::string_view verifier;
    std::string password;
  };
  const Case cases[] = {
      {pg_pencil, "pencil"},
      {pg_accent, "p\xc3\xa2ssword"},
      {pg_nbsp,
       "a\xc2\xa0"
       "b"},
      {pg_soft_hyphen,
       "x\xc2\xad"
       "y"},
      {pg_control, "\xc3\xa9\x01z"},
  };
  for (const Case& c : cases) {
    Result<ScramVerifier> v = parse_scram_verifier(c.verifier);
    ASSERT_TRUE(v.ok());
    Result<std::string> made = make_scram_verifier(c.password, v->salt, v->iterations);
    ASSERT_TRUE(made.ok());
    EXPECT_EQ(*made, c.verifier) << "password " << c.password;
    ScramServer server(*v, {"u", std::nullopt, {}});
    ScramClient client(c.password);
    EXPECT_TRUE(run_exchange(client, server).ok()) << "password " << c.password;
  }
}

TEST(ScramTest, SaslPrep) {
  EXPECT_EQ(scram_saslprep("pencil"), "pencil");
  EXPECT_EQ(scram_saslprep(std::string_view("a\x01\x7f b", 5)),
            std::string("a\x01\x7f b", 5));                   // ASCII: as is
  EXPECT_EQ(scram_saslprep("\xff\xfe"), "\xff\xfe");          // not UTF-8
  EXPECT_EQ(scram_saslprep("\xc0\xaf"), "\xc0\xaf");          // overlong
  EXPECT_EQ(scram_saslprep("\xed\xa0\x80"), "\xed\xa0\x80");  // surrogate
  EXPECT_EQ(scram_saslprep("a\xe3\x80\x80"
                           "b"),
            "a b");  // IDEOGRAPHIC SPACE
  EXPECT_EQ(scram_saslprep("a\xe2\x80\x8d"
                           "b"),
            "ab");  // ZERO WIDTH JOINER: mapped to nothing
  // Private use character: prohibited, so the raw password is used.
  EXPECT_EQ(scram_saslprep("\xc2\xa0\xee\x80\x80"), "\xc2\xa0\xee\x80\x80");
  EXPECT_EQ(scram_saslprep("\xc3\xa9t\xc3\xa9"), "\xc3\xa9t\xc3\xa9");
}

// --- Verifier parsing -----------------------------------------------------------

TEST(ScramTest, ParseVerifierRoundTrips) {
  const std::vector<uint8_t> salt = {1, 2, 3, 4, 5};
  Result<std::string> text = make_scram_verifier("secret", salt, 1);
  ASSERT_TRUE(text.ok());
  Result<ScramVerifier> v = parse_scram_verifier(*text);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->iterations, 1);
  EXPECT_EQ(v->salt, salt);
  EXPECT_TRUE(fails_with(make_scram_verifier("x", {}, 4096), sqlstate::internal_error,
                         "SCRAM salt must not be empty"));
  EXPECT_FALSE(make_scram_verifier("x", salt, 0).ok());
}

TEST(ScramTest, ParseVerifierRejectsOtherFormats) {
  auto rejects = [](std::string_view text, std::string_view message_part) {
    Result<ScramVerifier> v = parse_scram_verifier(text);
    ASSERT_FALSE(v.ok()) << text;
    EXPECT_EQ(v.error().sqlstate, sqlstate::invalid_password) << text;
    EXPECT_NE(v.error().message.find(message_part), std::string::npos) << v.error().message;
    // Never echo the secret.
    EXPECT_EQ(v.error().message.find("ysnIRBJN"), std::string::npos);
  };
  rejects("md5a4b6155cd2e9b9a9c28fb0a3c8bd1e5f", "MD5 password");
  rejects("pencil", "plain-text password?");
  rejects("", "no password");
  const std::string keys =
      "ysnIRBJNyceNsebXBkUC50vc0Dpoi600ez7UznVt5eE=:I1mdD4PVUsfTz5GkZeEHrRkhwBMkB0CJne6xt2Knd8Y=";
  rejects("scram-sha-256$4096:8dhzuf8bN7bZL3IZbic0+w==$" + keys, "plain-text password?");
  rejects("SCRAM-SHA-256$0:8dhzuf8bN7bZL3IZbic0+w==$" + keys, "iteration count");
  rejects("SCRAM-SHA-256$-1:8dhzuf8bN7bZL3IZbic0+w==$" + keys, "iteration count");
  rejects("SCRAM-SHA-256$+4096:8dhzuf8bN7bZL3IZbic0+w==$" + keys, "iteration count");
  rejects("SCRAM-SHA-256$2147483648:8dhzuf8bN7bZL3IZbic0+w==$" + keys, "iteration count");
  rejects("SCRAM-SHA-256$99999999999999999999:8dhzuf8bN7bZL3IZbic0+w==$" + keys, "iteration count");
  rejects("SCRAM-SHA-256$abc:8dhzuf8bN7bZL3IZbic0+w==$" + keys, "iteration count");
  rejects("SCRAM-SHA-256$4096:$" + keys, "salt");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w=$" + keys, "salt");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==\n$" + keys, "salt");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+x==$" + keys, "salt");  // non-canonical pad bits
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==", "two '$'");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==$" + keys + "$", "two '$'");
  rejects("SCRAM-SHA-256$4096$" + keys, "<iterations>:<salt>");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==:x$" + keys, "<iterations>:<salt>");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==$ysnIRBJNyceNsebXBkUC50vc0Dpoi600ez7UznVt5eE=",
          "<StoredKey>:<ServerKey>");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==$AAAA:I1mdD4PVUsfTz5GkZeEHrRkhwBMkB0CJne6xt2Knd8Y=",
          "StoredKey");
  rejects("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==$ysnIRBJNyceNsebXBkUC50vc0Dpoi600ez7UznVt5eE=:I1md!",
          "ServerKey");
  EXPECT_TRUE(parse_scram_verifier("SCRAM-SHA-256$4096:8dhzuf8bN7bZL3IZbic0+w==$" + keys).ok());
}

// --- Server-side failures --------------------------------------------------------

TEST(ScramTest, WrongPasswordIs28P01) {
  ScramServer server(rfc_verifier(), {"alice", std::nullopt, {}});
  ScramClient client("pencil!");
  EXPECT_TRUE(fails_with(run_exchange(client, server), sqlstate::invalid_password,
                         "password authentication failed for user \"alice\""));
  EXPECT_FALSE(server.client_key().has_value());
  EXPECT_FALSE(server.done());
  // Fail closed: the exchange is over.
  EXPECT_TRUE(fails_with(server.handle_client_final(as_bytes(rfc_client_final)), sqlstate::internal_error,
                         "invalid SCRAM exchange state"));
}

TEST(ScramTest, TamperedProofIs28P01) {
  std::string msg(rfc_client_final);
  msg[msg.size() - 5] = msg[msg.size() - 5] == 'A' ? 'B' : 'A';
  EXPECT_TRUE(fails_with(rfc_server_at_final()->handle_client_final(as_bytes(msg)),
                         sqlstate::invalid_password, "password authentication failed for user \"user\""));
}

TEST(ScramTest, TamperedNonce) {
  std::string msg(rfc_client_final);
  msg.replace(msg.find("$k0"), 3, "$k1");
  EXPECT_TRUE(fails_with(rfc_server_at_final()->handle_client_final(as_bytes(msg)),
                         sqlstate::protocol_violation, "invalid SCRAM response", "Nonce does not match."));
  // The client's own part of the nonce dropped.
  msg = std::string(rfc_client_final);
  msg.replace(msg.find("r=rOpr"), 6, "r=");
  EXPECT_TRUE(fails_with(rfc_server_at_final()->handle_client_final(as_bytes(msg)),
                         sqlstate::protocol_violation, "invalid SCRAM response", "Nonce does not match."));
}

TEST(ScramTest, WrongChannelBindingAttribute) {
  for (std::string_view c : {"eSws", "cD10bHMtc2VydmVyLWVuZC1wb2ludCws", "", "biws=="}) {
    std::string msg(rfc_client_final);
    msg.replace(2, 4, c);
    EXPECT_TRUE(fails_with(rfc_server_at_final()->handle_client_final(as_bytes(msg)),
                           sqlstate::protocol_violation,
                           "unexpected SCRAM channel-binding attribute in client-final-message"))
        << c;
  }
}

TEST(ScramTest, YFlagAfterOfferingPlusIsADowngrade) {
  auto server = rfc_server(binding_x);
  EXPECT_EQ(server->mechanisms(), (std::vector<std::string>{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}));
  EXPECT_TRUE(
      fails_with(server->handle_client_first(scram_sha_256, as_bytes("y,,n=,r=abc")),
                 sqlstate::invalid_authorization_specification, "SCRAM channel binding negotiation error",
                 "The client supports SCRAM channel binding but thinks the server does not.  However, "
                 "this server does support channel binding."));
  // The same from a real client whose view of our offer was stripped of -PLUS.
  ScramServer server2(rfc_verifier(), {"user", binding_x, {}});
  ScramClient client("pencil", {"", binding_x, {}});
  const std::vector<std::string> stripped = {"SCRAM-SHA-256"};
  ASSERT_EQ(*client.select_mechanism(stripped), "SCRAM-SHA-256");
  Result<std::string> first = client.client_first();
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->substr(0, 3), "y,,");
  EXPECT_TRUE(fails_with(server2.handle_client_first(scram_sha_256, as_bytes(*first)),
                         sqlstate::invalid_authorization_specification,
                         "SCRAM channel binding negotiation error"));
}

TEST(ScramTest, YFlagWithoutPlusOfferIsAccepted) {
  // A TLS client talking to a server that cannot bind: 'y' and c=eSws.
  ScramServer server(rfc_verifier(), {"user", std::nullopt, {}});
  ScramClient client("pencil", {"", binding_x, {}});
  Status st = run_exchange(client, server);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(client.mechanism(), scram_sha_256);
  EXPECT_FALSE(server.channel_binding_used());
}

TEST(ScramTest, MechanismAndFlagMustAgree) {
  EXPECT_TRUE(
      fails_with(rfc_server(binding_x)->handle_client_first(scram_sha_256_plus, as_bytes(rfc_client_first)),
                 sqlstate::protocol_violation, "malformed SCRAM message",
                 "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel "
                 "binding data."));
  EXPECT_TRUE(fails_with(
      rfc_server(binding_x)->handle_client_first(scram_sha_256, as_bytes("p=tls-server-end-point,,n=,r=abc")),
      sqlstate::protocol_violation, "malformed SCRAM message",
      "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel "
      "binding data."));
  // -PLUS was not offered (no TLS), so choosing it is invalid.
  EXPECT_TRUE(fails_with(
      rfc_server()->handle_client_first(scram_sha_256_plus, as_bytes("p=tls-server-end-point,,n=,r=abc")),
      sqlstate::protocol_violation, "client selected an invalid SASL authentication mechanism"));
  EXPECT_TRUE(fails_with(rfc_server()->handle_client_first("SCRAM-SHA-1", as_bytes(rfc_client_first)),
                         sqlstate::protocol_violation,
                         "client selected an invalid SASL authentication mechanism"));
}

TEST(ScramTest, ChannelBindingTypeMustBeTlsServerEndPoint) {
  EXPECT_TRUE(fails_with(
      rfc_server(binding_x)->handle_client_first(scram_sha_256_plus, as_bytes("p=tls-unique,,n=,r=abc")),
      sqlstate::protocol_violation, "unsupported SCRAM channel-binding type \"tls-unique\""));
  // Hostile type names are sanitised and truncated in the message.
  std::string evil = "p=" + std::string(100, 'x') + "\x01,,n=,r=abc";
  EXPECT_TRUE(fails_with(rfc_server(binding_x)->handle_client_first(scram_sha_256_plus, as_bytes(evil)),
                         sqlstate::protocol_violation,
                         "unsupported SCRAM channel-binding type \"" + std::string(30, 'x') + "\""));
}

TEST(ScramTest, ChannelBindingDataMustMatch) {
  ScramServer good_server(rfc_verifier(), {"user", binding_x, {}});
  ScramClient good("pencil", {"", binding_x, {}});
  Status st = run_exchange(good, good_server);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(good.mechanism(), scram_sha_256_plus);
  EXPECT_TRUE(good_server.channel_binding_used());

  // A client that sees a different certificate (a man in the middle).
  ScramServer server(rfc_verifier(), {"user", binding_x, {}});
  ScramClient mitm("pencil", {"", binding_y, {}});
  EXPECT_TRUE(fails_with(run_exchange(mitm, server), sqlstate::invalid_authorization_specification,
                         "SCRAM channel binding check failed"));
  EXPECT_FALSE(server.client_key().has_value());
}

TEST(ScramTest, AuthzidAndExtensionsAreRefused) {
  EXPECT_TRUE(fails_with(rfc_server()->handle_client_first(scram_sha_256, as_bytes("n,a=bob,n=,r=abc")),
                         sqlstate::feature_not_supported,
                         "client uses authorization identity, but it is not supported"));
  EXPECT_TRUE(fails_with(rfc_server()->handle_client_first(scram_sha_256, as_bytes("n,,m=ext,n=,r=abc")),
                         sqlstate::feature_not_supported, "client requires an unsupported SCRAM extension"));
  // Optional extensions are ignored, as the RFC says.
  EXPECT_TRUE(rfc_server()->handle_client_first(scram_sha_256, as_bytes("n,,n=,r=abc,x=1,Y=2")).ok());
  // The SCRAM username is ignored (PostgreSQL uses the startup user).
  EXPECT_TRUE(rfc_server()->handle_client_first(scram_sha_256, as_bytes("n,,n=someone=2Celse,r=abc")).ok());
}

TEST(ScramTest, MalformedClientFirst) {
  struct Case {
    std::string input;
    std::string detail;
  };
  const Case cases[] = {
      {"x,,n=,r=abc", "Unexpected channel-binding flag \"'x'\"."},
      {"\xff,,n=,r=abc", "Unexpected channel-binding flag \"0xff\"."},
      {"n", "Comma expected, but found character \"0x00\"."},
      {"n;,n=,r=abc", "Comma expected, but found character \"';'\"."},
      {"n,", "Unexpected attribute \"0x00\" in client-first-message."},
      {"n,b,n=,r=abc", "Unexpected attribute \"'b'\" in client-first-message."},
      {"n,,", "Expected attribute \"n\" but found \"0x00\"."},
      {"n,,r=abc", "Expected attribute \"n\" but found \"'r'\"."},
      {"n,,n", "Expected character \"=\" for attribute \"n\"."},
      {"n,,n=", "Expected attribute \"r\" but found \"0x00\"."},
      {"n,,n=,x=abc", "Expected attribute \"r\" but found \"'x'\"."},
      {"n,,n=,r=abc,1=2", "Attribute expected, but found invalid character \"'1'\"."},
      {"n,,n=,r=abc,x", "Expected character \"=\" for attribute \"x\"."},
      {std::string("n,,n=,r=a\0c", 11), "Message length does not match input length."},
      {"", "The message is empty."},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(fails_with(rfc_server()->handle_client_first(scram_sha_256, as_bytes(c.input)),
                           sqlstate::protocol_violation, "malformed SCRAM message", c.detail))
        << c.input;
  }
  EXPECT_TRUE(fails_with(rfc_server()->handle_client_first(scram_sha_256, as_bytes("n,,n=,r=ab c")),
                         sqlstate::protocol_violation, "non-printable characters in SCRAM nonce"));
  EXPECT_TRUE(fails_with(rfc_server()->handle_client_first(scram_sha_256, as_bytes("n,,n=,r=ab\x80")),
                         sqlstate::protocol_violation, "non-printable characters in SCRAM nonce"));
  std::string huge = "n,,n=,r=" + std::string(scram_max_message_length, 'a');
  EXPECT_TRUE(fails_with(rfc_server()->handle_client_first(scram_sha_256, as_bytes(huge)),
                         sqlstate::protocol_violation, "invalid message length"));
  // Long but within the limit: fine.
  std::string long_ok = "n,,n=,r=" + std::string(scram_max_message_length - 8, 'a');
  EXPECT_TRUE(rfc_server()->handle_client_first(scram_sha_256, as_bytes(long_ok)).ok());
}

TEST(ScramTest, MalformedClientFinal) {
  const std::string nonce = "r=" + std::string(rfc_client_nonce) + std::string(rfc_server_nonce);
  const std::string proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
  struct Case {
    std::string input;
    std::string detail;
  };
  const Case cases[] = {
      {"r=x", "Expected attribute \"c\" but found \"'r'\"."},
      {"c=biws", "Expected attribute \"r\" but found \"0x00\"."},
      {"c=biws," + nonce, "Attribute expected, but found end of string."},
      {"c=biws," + nonce + ",", "Attribute expected, but found end of string."},
      {"c=biws," + nonce + ",p", "Expected character \"=\" for attribute \"p\"."},
      {"c=biws," + nonce + ",p=", "Malformed proof in client-final-message."},
      {"c=biws," + nonce + ",p=!!!!", "Malformed proof in client-final-message."},
      {"c=biws," + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ",
       "Malformed proof in client-final-message."},
      {"c=biws," + nonce + ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVR=",
       "Malformed proof in client-final-message."},
      // 31 and 33 bytes.
      {"c=biws," + nonce + ",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
       "Malformed proof in client-final-message."},
      {"c=biws," + nonce + ",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
       "Malformed proof in client-final-message."},
      {"c=biws," + nonce + "," + proof + ",x=1", "Garbage found at the end of client-final-message."},
      {"c=biws," + nonce + "," + proof + ",,", "Garbage found at the end of client-final-message."},
      {std::string("c=biws\0", 7) + nonce + "," + proof, "Message length does not match input length."},
      {"", "The message is empty."},
  };
  for (const Case& c : cases) {
    EXPECT_TRUE(fails_with(rfc_server_at_final()->handle_client_final(as_bytes(c.input)),
                           sqlstate::protocol_violation, "malformed SCRAM message", c.detail))
        << c.input;
  }
  // Extensions before the proof are part of client-final-message-without-proof:
  // accepted syntactically, then the proof no longer matches.
  EXPECT_TRUE(
      fails_with(rfc_server_at_final()->handle_client_final(as_bytes("c=biws," + nonce + ",x=1," + proof)),
                 sqlstate::invalid_password, "password authentication failed for user \"user\""));
  // A trailing comma after the proof is tolerated, as in PostgreSQL.
  EXPECT_TRUE(rfc_server_at_final()->handle_client_final(as_bytes(std::string(rfc_client_final) + ",")).ok());
}

TEST(ScramTest, CallsOutOfOrderFail) {
  auto s = rfc_server();
  EXPECT_TRUE(fails_with(s->handle_client_final(as_bytes(rfc_client_final)), sqlstate::internal_error,
                         "invalid SCRAM exchange state"));
  EXPECT_FALSE(s->handle_client_first(scram_sha_256, as_bytes(rfc_client_first)).ok());

  auto done = rfc_server_at_final();
  ASSERT_TRUE(done->handle_client_final(as_bytes(rfc_client_final)).ok());
  EXPECT_FALSE(done->handle_client_final(as_bytes(rfc_client_final)).ok());

  ScramClient c("pencil");
  EXPECT_FALSE(c.handle_server_first(as_bytes(rfc_server_first)).ok());
  EXPECT_FALSE(c.client_first().ok());  // failed for good
}

TEST(ScramTest, BadServerNonceSourceFailsClosed) {
  for (std::string_view bad : {"", "a,b", "a b"}) {
    ScramServer s(rfc_verifier(), {"u", std::nullopt, fixed_nonce(bad)});
    EXPECT_TRUE(fails_with(s.handle_client_first(scram_sha_256, as_bytes(rfc_client_first)),
                           sqlstate::internal_error, "could not generate random nonce"));
  }
  Result<std::string> n = random_scram_nonce();
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->size(), 24U);
  EXPECT_NE(*n, *random_scram_nonce());
}

// --- Client-side failures -------------------------------------------------------

ScramClient rfc_client_at_first() {
  ScramClient c(rfc_client_key(), rfc_verifier(), {"user", std::nullopt, fixed_nonce(rfc_client_nonce)});
  EXPECT_TRUE(c.client_first().ok());
  return ScramClient(std::move(c));
}

TEST(ScramTest, ClientRejectsBadServerFirst) {
  struct Case {
    std::string input;
    std::string message;
  };
  const std::string salt = ",s=W22ZaJ0SNY7soEsUEjb6gQ==";
  const std::string nonce = "r=" + std::string(rfc_client_nonce) + "xyz";
  const Case cases[] = {
      {"r=someone-elses-nonce" + salt + ",i=4096", "invalid SCRAM response (nonce mismatch)"},
      {"r=" + std::string(rfc_client_nonce) + salt + ",i=4096", "invalid SCRAM response (nonce mismatch)"},
      {nonce + "\x01" + salt + ",i=4096", "invalid SCRAM response (nonce mismatch)"},
      {"m=x," + nonce + salt + ",i=4096", "malformed SCRAM message (attribute \"r\" expected)"},
      {"rr=" + nonce.substr(2), "malformed SCRAM message (expected character \"=\" for attribute \"r\")"},
      {"r:" + nonce, "malformed SCRAM message (expected character \"=\" for attribute \"r\")"},
      {nonce + ",s=,i=4096", "malformed SCRAM message (invalid salt)"},
      {nonce + ",s=***,i=4096", "malformed SCRAM message (invalid salt)"},
      {nonce + salt + ",i=0", "malformed SCRAM message (invalid iteration count)"},
      {nonce + salt + ",i=-1", "malformed SCRAM message (invalid iteration count)"},
      {nonce + salt + ",i=4096x", "malformed SCRAM message (invalid iteration count)"},
      {nonce + salt + ",i=2147483648", "malformed SCRAM message (invalid iteration count)"},
      {nonce + salt, "malformed SCRAM message (attribute \"i\" expected)"},
      {nonce + salt + ",i=4096,x=1", "malformed SCRAM message (garbage at end of server-first-message)"},
      {"", "malformed SCRAM message (empty message)"},
      {std::string("r=\0", 3), "malformed SCRAM message (length mismatch)"},
  };
  for (const Case& c : cases) {
    ScramClient client = rfc_client_at_first();
    EXPECT_TRUE(
        fails_with(client.handle_server_first(as_bytes(c.input)), sqlstate::protocol_violation, c.message))
        << c.input;
  }
}

TEST(ScramTest, ClientRejectsBadServerFinal) {
  auto at_final = [] {
    ScramClient c = rfc_client_at_first();
    EXPECT_TRUE(c.handle_server_first(as_bytes(rfc_server_first)).ok());
    return c;
  };
  {
    ScramClient c = at_final();
    EXPECT_TRUE(fails_with(c.handle_server_final(as_bytes("e=invalid-proof")),
                           sqlstate::invalid_authorization_specification,
                           "error received from server in SCRAM exchange: invalid-proof"));
  }
  {
    // A server that does not know the verifier cannot sign.
    ScramClient c = at_final();
    EXPECT_TRUE(fails_with(c.handle_server_final(as_bytes("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
                           sqlstate::invalid_authorization_specification, "incorrect server signature"));
    EXPECT_FALSE(c.done());
  }
  const std::pair<std::string, std::string> cases[] = {
      {"v=AAAA", "malformed SCRAM message (invalid server signature)"},
      {"v=not base64!", "malformed SCRAM message (invalid server signature)"},
      {std::string(rfc_server_final) + ",x=1",
       "malformed SCRAM message (garbage at end of server-final-message)"},
      {"x=1", "malformed SCRAM message (attribute \"v\" expected)"},
      {"", "malformed SCRAM message (empty message)"},
  };
  for (const auto& [input, message] : cases) {
    ScramClient c = at_final();
    EXPECT_TRUE(fails_with(c.handle_server_final(as_bytes(input)), sqlstate::protocol_violation, message))
        << input;
  }
}

TEST(ScramTest, ClientSelectsMechanismLikeLibpq) {
  const std::vector<std::string> both = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"};
  const std::vector<std::string> plain = {"SCRAM-SHA-256"};
  const std::vector<std::string> plus_only = {"SCRAM-SHA-256-PLUS"};
  const std::vector<std::string> other = {"OAUTHBEARER"};
  {
    ScramClient c("x", {"", binding_x, fixed_nonce("n1")});
    EXPECT_EQ(*c.select_mechanism(both), "SCRAM-SHA-256-PLUS");
    EXPECT_EQ(*c.client_first(), "p=tls-server-end-point,,n=,r=n1");
  }
  {
    ScramClient c("x", {"", std::nullopt, fixed_nonce("n1")});
    EXPECT_EQ(*c.select_mechanism(both), "SCRAM-SHA-256");
    EXPECT_EQ(*c.client_first(), "n,,n=,r=n1");
  }
  {
    ScramClient c("x", {"", binding_x, fixed_nonce("n1")});
    EXPECT_EQ(*c.select_mechanism(plain), "SCRAM-SHA-256");
    EXPECT_EQ(*c.client_first(), "y,,n=,r=n1");
  }
  {
    ScramClient c("x");
    EXPECT_TRUE(fails_with(c.select_mechanism(plus_only), sqlstate::protocol_violation,
                           "server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection"));
  }
  {
    ScramClient c("x");
    EXPECT_TRUE(fails_with(c.select_mechanism(other), sqlstate::protocol_violation,
                           "none of the server's SASL authentication mechanisms are supported"));
  }
  {
    ScramClient c("x", {"a,b=c", std::nullopt, fixed_nonce("n1")});
    EXPECT_EQ(*c.client_first(), "n,,n=a=2Cb=3Dc,r=n1");
  }
}

// --- Robustness: truncations and random mutations never crash ---------------------

std::string mutate(std::string s, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  const int ops = 1 + static_cast<int>(rng() % 3);
  for (int i = 0; i < ops; ++i) {
    const size_t pos = s.empty() ? 0 : rng() % s.size();
    switch (rng() % 4) {
      case 0:
        if (!s.empty()) s[pos] = static_cast<char>(byte(rng));
        break;
      case 1: s.insert(s.begin() + static_cast<std::ptrdiff_t>(pos), static_cast<char>(byte(rng))); break;
      case 2:
        if (!s.empty()) s.erase(pos, 1);
        break;
      default: {
        const char specials[] = {',', '=', '\0', 'p', 'r', 'c', 'n', 'y', 'a', 'm'};
        if (!s.empty()) s[pos] = specials[rng() % sizeof(specials)];
      }
    }
  }
  return s;
}

TEST(ScramTest, TruncatedAndMutatedMessagesFailWithoutCrashing) {
  std::mt19937 rng(20240501);
  const std::string client_first(rfc_client_first);
  const std::string client_final(rfc_client_final);
  // Truncated client-final: every strict prefix is rejected.
  for (size_t n = 0; n < client_final.size(); ++n) {
    Result<std::string> r = rfc_server_at_final()->handle_client_final(as_bytes(client_final.substr(0, n)));
    EXPECT_FALSE(r.ok()) << n;
  }
  for (size_t n = 0; n <= client_first.size(); ++n) {
    (void)rfc_server()->handle_client_first(scram_sha_256, as_bytes(client_first.substr(0, n)));
    (void)rfc_server(binding_x)->handle_client_first(scram_sha_256_plus, as_bytes(client_first.substr(0, n)));
  }
  for (int i = 0; i < 3000; ++i) {
    std::string m = mutate(client_first, rng);
    (void)rfc_server()->handle_client_first(scram_sha_256, as_bytes(m));
    (void)rfc_server(binding_x)->handle_client_first(scram_sha_256_plus, as_bytes(m));
    std::string f = mutate(client_final, rng);
    Result<std::string> r = rfc_server_at_final()->handle_client_final(as_bytes(f));
    // Any change to a valid client-final is caught, except a trailing comma.
    if (f != client_final && f != client_final + ",") {
      EXPECT_FALSE(r.ok()) << f;
    }
  }
  // Client side: mutated server-first messages (a changed server nonce is
  // legitimately accepted; anything else that parses must still be safe).
  for (int i = 0; i < 1000; ++i) {
    ScramClient c = rfc_client_at_first();
    std::string sf = mutate(std::string(rfc_server_first), rng);
    if (c.handle_server_first(as_bytes(sf)).ok()) {
      EXPECT_FALSE(c.handle_server_final(as_bytes(rfc_server_final)).ok() && sf != rfc_server_first) << sf;
    }
  }
  for (int i = 0; i < 500; ++i) {
    ScramClient c = rfc_client_at_first();
    ASSERT_TRUE(c.handle_server_first(as_bytes(rfc_server_first)).ok());
    std::string fin = mutate(std::string(rfc_server_final), rng);
    EXPECT_EQ(c.handle_server_final(as_bytes(fin)).ok(),
              fin == rfc_server_final || fin == std::string(rfc_server_final) + ",")
        << fin;
  }
  // Random garbage.
  for (int i = 0; i < 2000; ++i) {
    std::string g(rng() % 64, '\0');
    for (char& ch : g) ch = static_cast<char>(rng());
    (void)rfc_server()->handle_client_first(scram_sha_256, as_bytes(g));
    EXPECT_FALSE(rfc_server_at_final()->handle_client_final(as_bytes(g)).ok());
  }
}

// --- tls-server-end-point -------------------------------------------------------

using X509Ptr = std::unique_ptr<X509, decltype(&X509_free)>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

X509Ptr self_signed(EVP_PKEY* key, const EVP_MD* md) {
  X509Ptr cert(X509_new(), &X509_free);
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("pgcloak"), -1,
                             -1, 0);
  X509_set_issuer_name(cert.get(), name);
  EXPECT_GT(X509_sign(cert.get(), key, md), 0);
  return cert;
}

std::vector<uint8_t> der_digest(X509* cert, const EVP_MD* md) {
  unsigned char* der = nullptr;
  int len = i2d_X509(cert, &der);
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned int out_len = 0;
  EVP_Digest(der, static_cast<size_t>(len), out.data(), &out_len, md, nullptr);
  OPENSSL_free(der);
  out.resize(out_len);
  return out;
}

TEST(ScramTest, TlsServerEndPointHash) {
  PkeyPtr ec(EVP_EC_gen("P-256"), &EVP_PKEY_free);
  ASSERT_TRUE(ec);
  for (const EVP_MD* md : {EVP_sha256(), EVP_sha1()}) {
    X509Ptr cert = self_signed(ec.get(), md);
    Result<std::vector<uint8_t>> h = tls_server_end_point_hash(cert.get());
    ASSERT_TRUE(h.ok()) << h.error().message;
    EXPECT_EQ(*h, der_digest(cert.get(), EVP_sha256()));  // SHA-1 is upgraded to SHA-256
  }
  for (const EVP_MD* md : {EVP_sha384(), EVP_sha512()}) {
    X509Ptr cert = self_signed(ec.get(), md);
    Result<std::vector<uint8_t>> h = tls_server_end_point_hash(cert.get());
    ASSERT_TRUE(h.ok()) << h.error().message;
    EXPECT_EQ(*h, der_digest(cert.get(), md));
    EXPECT_EQ(h->size(), static_cast<size_t>(EVP_MD_get_size(md)));
  }
  PkeyPtr ed(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"), &EVP_PKEY_free);
  ASSERT_TRUE(ed);
  X509Ptr ed_cert = self_signed(ed.get(), nullptr);
  EXPECT_FALSE(tls_server_end_point_hash(ed_cert.get()).ok());
  EXPECT_FALSE(tls_server_end_point_hash(nullptr).ok());

  // End to end with real certificate hashes.
  X509Ptr ours = self_signed(ec.get(), EVP_sha256());
  X509Ptr theirs = self_signed(ec.get(), EVP_sha384());
  ScramServer server(rfc_verifier(), {"user", *tls_server_end_point_hash(ours.get()), {}});
  ScramClient client("pencil", {"", *tls_server_end_point_hash(ours.get()), {}});
  EXPECT_TRUE(run_exchange(client, server).ok());
  ScramServer server2(rfc_verifier(), {"user", *tls_server_end_point_hash(ours.get()), {}});
  ScramClient client2("pencil", {"", *tls_server_end_point_hash(theirs.get()), {}});
  EXPECT_TRUE(fails_with(run_exchange(client2, server2), sqlstate::invalid_authorization_specification,
                         "SCRAM channel binding check failed"));
}

}  // namespace
}  // namespace pgcloak::proxy
