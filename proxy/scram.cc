#include "proxy/scram.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <climits>
#include <cstring>
#include <utility>

#include "protocol/sqlstate.h"
#include "proxy/base64.h"

namespace pgcloak::proxy {
namespace {

// ---------------------------------------------------------------------------
// Errors. Every message and SQLSTATE below is PostgreSQL's own (server side,
// auth-scram.c / auth-sasl.c) or libpq's (client side, fe-auth-scram.c), so
// that pgcloak's answers are indistinguishable from PostgreSQL's.

Error fatal(std::string_view code, std::string message, std::string detail = {}) {
  Error e = Error::make(code, std::move(message), Severity::fatal);
  e.detail = std::move(detail);
  return e;
}

Error malformed(std::string detail) {
  return fatal(sqlstate::protocol_violation, "malformed SCRAM message", std::move(detail));
}

Error bad_state() {
  return fatal(sqlstate::internal_error, "invalid SCRAM exchange state");
}

Error crypto_failure(std::string_view what) {
  return fatal(sqlstate::internal_error, "could not compute " + std::string(what));
}

constexpr std::string_view plus_without_data =
    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.";
constexpr std::string_view plain_with_data =
    "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel "
    "binding data.";

// A byte as PostgreSQL prints it in SCRAM errors: 'c' if printable, else hex.
std::string sanitize_char(char c) {
  if (c >= 0x21 && c <= 0x7E) return std::string{'\'', c, '\''};
  constexpr char hex[] = "0123456789abcdef";
  const auto b = static_cast<unsigned char>(c);
  return std::string{'0', 'x', hex[b >> 4], hex[b & 0xF]};
}

// A peer-supplied string for an error message: at most 30 characters, each
// non-printable one replaced by '?'.
std::string sanitize_str(std::string_view s) {
  std::string out(s.substr(0, 30));
  for (char& c : out) {
    if (c < 0x21 || c > 0x7E) c = '?';
  }
  return out;
}

// RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. printable ASCII except ','.
bool is_scram_printable(std::string_view s) {
  for (char c : s) {
    if (c < 0x21 || c > 0x7E || c == ',') return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Primitives (OpenSSL). H = SHA-256, HMAC = HMAC-SHA-256, Hi = PBKDF2.

bool sha256(std::span<const uint8_t> in, ScramKey& out) {
  unsigned int len = 0;
  return EVP_Digest(in.data(), in.size(), out.data(), &len, EVP_sha256(), nullptr) == 1 &&
         len == scram_key_length;
}

bool hmac_sha256(std::span<const uint8_t> key, std::string_view data, ScramKey& out) {
  unsigned int len = 0;
  return HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
              reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(),
              &len) != nullptr &&
         len == scram_key_length;
}

bool salted_password(std::string_view password, std::span<const uint8_t> salt, int iterations,
                     ScramKey& out) {
  return PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(),
                           static_cast<int>(salt.size()), iterations, EVP_sha256(),
                           static_cast<int>(out.size()), out.data()) == 1;
}

bool equal_secret(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

// Clears key material when it goes out of scope.
struct Cleanse {
  void* p;
  size_t n;
  ~Cleanse() { OPENSSL_cleanse(p, n); }
};

// Decimal 1..INT_MAX, digits only (no sign, no spaces, no leading '+').
std::optional<int> parse_iterations(std::string_view s) {
  if (s.empty() || s.size() > 10) return std::nullopt;
  long long v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  if (v < 1 || v > INT_MAX) return std::nullopt;
  return static_cast<int>(v);
}

// ---------------------------------------------------------------------------
// Attribute reader over one SCRAM message, with PostgreSQL's tokenisation: a
// value runs to the next ',' or the end, and that ',' is consumed. Embedded
// NULs are rejected before a cursor is made, so '\0' from peek() means end.

class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}

  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void advance() { ++pos_; }
  size_t pos() const { return pos_; }
  std::string_view rest() const { return s_.substr(pos_); }

  // The server's read_attr_value.
  Result<std::string_view> server_attr(char attr) {
    if (peek() != attr) {
      return malformed(std::string("Expected attribute \"") + attr + "\" but found \"" +
                       sanitize_char(peek()) + "\".");
    }
    advance();
    if (peek() != '=')
      return malformed(std::string("Expected character \"=\" for attribute \"") + attr + "\".");
    advance();
    return value();
  }

  // The server's read_any_attr: ALPHA "=" value.
  Result<std::pair<char, std::string_view>> server_any_attr() {
    char attr = peek();
    if (attr == '\0') return malformed("Attribute expected, but found end of string.");
    if (!((attr >= 'A' && attr <= 'Z') || (attr >= 'a' && attr <= 'z'))) {
      return malformed("Attribute expected, but found invalid character \"" + sanitize_char(attr) + "\".");
    }
    advance();
    if (peek() != '=')
      return malformed(std::string("Expected character \"=\" for attribute \"") + attr + "\".");
    advance();
    return std::pair<char, std::string_view>{attr, value()};
  }

  // libpq's read_attr_value, for messages from PostgreSQL.
  Result<std::string_view> client_attr(char attr) {
    if (peek() != attr) {
      return Error::protocol(std::string("malformed SCRAM message (attribute \"") + attr + "\" expected)");
    }
    advance();
    if (peek() != '=') {
      return Error::protocol(
          std::string("malformed SCRAM message (expected character \"=\" for attribute \"") + attr + "\")");
    }
    advance();
    return value();
  }

 private:
  std::string_view value() {
    size_t end = s_.find(',', pos_);
    if (end == std::string_view::npos) end = s_.size();
    std::string_view v = s_.substr(pos_, end - pos_);
    pos_ = end < s_.size() ? end + 1 : end;
    return v;
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// The checks PostgreSQL makes on a SASL message before parsing it.
Result<std::string_view> server_input(protocol::Bytes message) {
  if (message.size() > scram_max_message_length) return Error::protocol("invalid message length");
  if (message.empty()) return malformed("The message is empty.");
  std::string_view s = protocol::as_chars(message);
  if (s.find('\0') != std::string_view::npos) return malformed("Message length does not match input length.");
  return s;
}

// The same checks with libpq's wording, for messages from PostgreSQL.
Result<std::string_view> client_input(protocol::Bytes message) {
  if (message.size() > scram_max_message_length) return Error::protocol("invalid message length");
  if (message.empty()) return Error::protocol("malformed SCRAM message (empty message)");
  std::string_view s = protocol::as_chars(message);
  if (s.find('\0') != std::string_view::npos)
    return Error::protocol("malformed SCRAM message (length mismatch)");
  return s;
}

Result<std::string> next_nonce(const ScramNonceSource& source) {
  Result<std::string> nonce = source ? source() : random_scram_nonce();
  if (!nonce) return nonce;
  if (nonce->empty() || nonce->size() > 1024 || !is_scram_printable(*nonce)) {
    return fatal(sqlstate::internal_error, "could not generate random nonce");
  }
  return nonce;
}

// ---------------------------------------------------------------------------
// SASLprep (RFC 4013) tables from RFC 3454, as code point ranges.

struct Range {
  char32_t lo;
  char32_t hi;
};

constexpr Range non_ascii_space[] = {  // C.1.2
    {0x00A0, 0x00A0}, {0x1680, 0x1680}, {0x2000, 0x200B},
    {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}};

constexpr Range mapped_to_nothing[] = {  // B.1
    {0x00AD, 0x00AD}, {0x034F, 0x034F}, {0x1806, 0x1806}, {0x180B, 0x180D},
    {0x200B, 0x200D}, {0x2060, 0x2060}, {0xFE00, 0xFE0F}, {0xFEFF, 0xFEFF}};

constexpr Range prohibited_ranges[] = {
    // C.1.2 non-ASCII space (mapped away before the check, listed for completeness)
    {0x00A0, 0x00A0},
    {0x1680, 0x1680},
    {0x2000, 0x200B},
    {0x202F, 0x202F},
    {0x205F, 0x205F},
    {0x3000, 0x3000},
    // C.2.1 ASCII control
    {0x0000, 0x001F},
    {0x007F, 0x007F},
    // C.2.2 non-ASCII control
    {0x0080, 0x009F},
    {0x06DD, 0x06DD},
    {0x070F, 0x070F},
    {0x180E, 0x180E},
    {0x200C, 0x200D},
    {0x2028, 0x2029},
    {0x2060, 0x2063},
    {0x206A, 0x206F},
    {0xFEFF, 0xFEFF},
    {0xFFF9, 0xFFFC},
    {0x1D173, 0x1D17A},
    // C.3 private use
    {0xE000, 0xF8FF},
    {0xF0000, 0xFFFFD},
    {0x100000, 0x10FFFD},
    // C.4 non-character code points (the per-plane xFFFE-xFFFF are checked separately)
    {0xFDD0, 0xFDEF},
    // C.5 surrogates
    {0xD800, 0xDFFF},
    // C.6 inappropriate for plain text
    {0xFFF9, 0xFFFD},
    // C.7 inappropriate for canonical representation
    {0x2FF0, 0x2FFB},
    // C.8 change display properties or deprecated
    {0x0340, 0x0341},
    {0x200E, 0x200F},
    {0x202A, 0x202E},
    {0x206A, 0x206F},
    // C.9 tagging
    {0xE0001, 0xE0001},
    {0xE0020, 0xE007F}};

template <size_t N>
bool in_table(char32_t c, const Range (&table)[N]) {
  for (const Range& r : table) {
    if (c >= r.lo && c <= r.hi) return true;
  }
  return false;
}

bool is_prohibited(char32_t c) {
  return in_table(c, prohibited_ranges) || (c & 0xFFFE) == 0xFFFE;
}

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool decode_utf8(std::string_view s, std::vector<char32_t>& out) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t len = 0;
    char32_t c = 0;
    char32_t min = 0;
    if (b < 0x80) {
      len = 1, c = b;
    } else if ((b & 0xE0) == 0xC0) {
      len = 2, c = b & 0x1F, min = 0x80;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3, c = b & 0x0F, min = 0x800;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4, c = b & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (len > s.size() - i) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cont = static_cast<unsigned char>(s[i + k]);
      if ((cont & 0xC0) != 0x80) return false;
      c = (c << 6) | (cont & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return false;
    out.push_back(c);
    i += len;
  }
  return true;
}

void encode_utf8(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

struct DerivedKeys {
  ScramKey client_key{};
  ScramKey stored_key{};
  ScramKey server_key{};
  ~DerivedKeys() {
    OPENSSL_cleanse(client_key.data(), client_key.size());
    OPENSSL_cleanse(server_key.data(), server_key.size());
  }
};

// SaltedPassword -> ClientKey, StoredKey, ServerKey.
bool derive_keys(std::string_view prepared_password, std::span<const uint8_t> salt, int iterations,
                 DerivedKeys& keys) {
  ScramKey salted{};
  Cleanse guard{salted.data(), salted.size()};
  return salted_password(prepared_password, salt, iterations, salted) &&
         hmac_sha256(salted, "Client Key", keys.client_key) && sha256(keys.client_key, keys.stored_key) &&
         hmac_sha256(salted, "Server Key", keys.server_key);
}

}  // namespace

// ---------------------------------------------------------------------------
// Free functions

Result<ScramVerifier> parse_scram_verifier(std::string_view text) {
  auto invalid = [](std::string why, std::string hint = {}) {
    Error e = fatal(sqlstate::invalid_password, "invalid SCRAM verifier: " + std::move(why));
    e.hint = std::move(hint);
    return e;
  };
  constexpr std::string_view prefix = "SCRAM-SHA-256$";
  constexpr std::string_view reset_hint =
      "pgcloak authenticates clients itself and needs a SCRAM-SHA-256 verifier: set password_encryption = "
      "'scram-sha-256' and set the role's password again.";
  if (text.size() == 35 && text.substr(0, 3) == "md5" &&
      text.substr(3).find_first_not_of("0123456789abcdef") == std::string_view::npos) {
    return invalid("the role has an MD5 password", std::string(reset_hint));
  }
  if (text.empty()) return invalid("the role has no password", std::string(reset_hint));
  if (text.substr(0, prefix.size()) != prefix) {
    return invalid(
        "not in SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> form (a plain-text password?)",
        std::string(reset_hint));
  }
  std::string_view rest = text.substr(prefix.size());
  // <iterations>:<salt>$<StoredKey>:<ServerKey>, each part non-empty, no extra separators.
  const size_t dollar = rest.find('$');
  if (dollar == std::string_view::npos || rest.find('$', dollar + 1) != std::string_view::npos) {
    return invalid("expected exactly two '$' separators");
  }
  std::string_view params = rest.substr(0, dollar);
  std::string_view keys = rest.substr(dollar + 1);
  const size_t c1 = params.find(':');
  const size_t c2 = keys.find(':');
  if (c1 == std::string_view::npos || params.find(':', c1 + 1) != std::string_view::npos ||
      c2 == std::string_view::npos || keys.find(':', c2 + 1) != std::string_view::npos) {
    return invalid("expected <iterations>:<salt> and <StoredKey>:<ServerKey>");
  }
  ScramVerifier v;
  std::optional<int> iterations = parse_iterations(params.substr(0, c1));
  if (!iterations) return invalid("iteration count must be an integer from 1 to 2147483647");
  v.iterations = *iterations;
  std::optional<std::vector<uint8_t>> salt = base64_decode(params.substr(c1 + 1));
  if (!salt || salt->empty()) return invalid("salt is not valid base64");
  v.salt = std::move(*salt);
  std::optional<std::vector<uint8_t>> stored = base64_decode(keys.substr(0, c2));
  std::optional<std::vector<uint8_t>> server = base64_decode(keys.substr(c2 + 1));
  if (!stored || stored->size() != scram_key_length) return invalid("StoredKey is not 32 bytes of base64");
  if (!server || server->size() != scram_key_length) return invalid("ServerKey is not 32 bytes of base64");
  std::copy(stored->begin(), stored->end(), v.stored_key.begin());
  std::copy(server->begin(), server->end(), v.server_key.begin());
  OPENSSL_cleanse(stored->data(), stored->size());
  OPENSSL_cleanse(server->data(), server->size());
  return v;
}

Result<std::string> make_scram_verifier(std::string_view password, std::span<const uint8_t> salt,
                                        int iterations) {
  if (salt.empty()) return fatal(sqlstate::internal_error, "SCRAM salt must not be empty");
  if (iterations < 1) return fatal(sqlstate::internal_error, "SCRAM iteration count must be at least 1");
  std::string prepared = scram_saslprep(password);
  Cleanse guard{prepared.data(), prepared.size()};
  DerivedKeys keys;
  if (!derive_keys(prepared, salt, iterations, keys)) return crypto_failure("SCRAM keys");
  return "SCRAM-SHA-256$" + std::to_string(iterations) + ":" + base64_encode(salt) + "$" +
         base64_encode(keys.stored_key) + ":" + base64_encode(keys.server_key);
}

std::string scram_saslprep(std::string_view password) {
  bool ascii = true;
  for (char c : password) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(password);
  std::vector<char32_t> chars;
  if (!decode_utf8(password, chars)) return std::string(password);
  std::string out;
  out.reserve(password.size());
  for (char32_t c : chars) {
    if (in_table(c, non_ascii_space)) {
      out += ' ';
    } else if (in_table(c, mapped_to_nothing)) {
      continue;
    } else if (is_prohibited(c)) {
      return std::string(password);
    } else {
      encode_utf8(c, out);
    }
  }
  return out;
}

Result<std::vector<uint8_t>> tls_server_end_point_hash(X509* cert) {
  if (cert == nullptr) return fatal(sqlstate::internal_error, "no certificate for SCRAM channel binding");
  int md_nid = NID_undef;
  int pk_nid = NID_undef;
  int security_bits = 0;
  uint32_t flags = 0;
  if (X509_get_signature_info(cert, &md_nid, &pk_nid, &security_bits, &flags) != 1) {
    return fatal(sqlstate::internal_error, "could not determine server certificate signature algorithm");
  }
  const EVP_MD* md = nullptr;
  if (md_nid == NID_md5 || md_nid == NID_sha1 || md_nid == NID_sha256) {
    md = EVP_sha256();  // RFC 5929 section 4.1
  } else if (md_nid != NID_undef) {
    md = EVP_get_digestbynid(md_nid);
  }
  if (md == nullptr) {
    const char* name = md_nid == NID_undef ? "none" : OBJ_nid2sn(md_nid);
    return fatal(sqlstate::internal_error,
                 std::string("could not find digest for certificate signature (") +
                     (name ? name : "unknown") +
                     "); tls-server-end-point channel binding is not defined for it");
  }
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  if (X509_digest(cert, md, out.data(), &len) != 1) return crypto_failure("certificate hash");
  out.resize(len);
  return out;
}

Result<std::string> random_scram_nonce() {
  uint8_t raw[18];  // SCRAM_RAW_NONCE_LEN in PostgreSQL and libpq
  if (RAND_bytes(raw, sizeof(raw)) != 1)
    return fatal(sqlstate::internal_error, "could not generate random nonce");
  return base64_encode(std::span<const uint8_t>(raw, sizeof(raw)));
}

// ---------------------------------------------------------------------------
// ScramServer

ScramServer::ScramServer(ScramVerifier verifier, ScramServerOptions options)
    : verifier_(std::move(verifier)), options_(std::move(options)) {}

ScramServer::~ScramServer() {
  OPENSSL_cleanse(verifier_.stored_key.data(), verifier_.stored_key.size());
  OPENSSL_cleanse(verifier_.server_key.data(), verifier_.server_key.size());
  if (client_key_) OPENSSL_cleanse(client_key_->data(), client_key_->size());
}

Error ScramServer::fail(Error e) {
  state_ = State::failed;
  if (client_key_) OPENSSL_cleanse(client_key_->data(), client_key_->size());
  client_key_.reset();
  return e;
}

std::vector<std::string> ScramServer::mechanisms() const {
  std::vector<std::string> out;
  if (options_.tls_server_end_point) out.emplace_back(scram_sha_256_plus);
  out.emplace_back(scram_sha_256);
  return out;
}

Result<std::string> ScramServer::handle_client_first(std::string_view mechanism, protocol::Bytes message) {
  if (state_ != State::client_first) return fail(bad_state());
  const bool offered_plus = options_.tls_server_end_point.has_value();
  if (mechanism == scram_sha_256_plus && offered_plus) {
    channel_binding_used_ = true;
  } else if (mechanism == scram_sha_256) {
    channel_binding_used_ = false;
  } else {
    return fail(
        fatal(sqlstate::protocol_violation, "client selected an invalid SASL authentication mechanism"));
  }
  Result<std::string_view> input = server_input(message);
  if (!input) return fail(std::move(input).error());
  Cursor cur(*input);

  // gs2-cbind-flag. The 'y' case is the downgrade check: a client that can
  // bind but believes we cannot has had SCRAM-SHA-256-PLUS stripped from our
  // offer by someone in the middle.
  cbind_flag_ = cur.peek();
  switch (cbind_flag_) {
    case 'n':
    case 'y':
      if (cbind_flag_ == 'y' && offered_plus) {
        // 28000, as PostgreSQL's read_client_first_message (auth-scram.c).
        return fail(
            fatal(sqlstate::invalid_authorization_specification, "SCRAM channel binding negotiation error",
                  "The client supports SCRAM channel binding but thinks the server does not.  However, "
                  "this server does support channel binding."));
      }
      if (channel_binding_used_) return fail(malformed(std::string(plus_without_data)));
      cur.advance();
      if (cur.peek() != ',') {
        return fail(malformed("Comma expected, but found character \"" + sanitize_char(cur.peek()) + "\"."));
      }
      cur.advance();
      break;
    case 'p': {
      if (!channel_binding_used_) return fail(malformed(std::string(plain_with_data)));
      Result<std::string_view> type = cur.server_attr('p');
      if (!type) return fail(std::move(type).error());
      if (*type != cbind_tls_server_end_point) {
        return fail(fatal(sqlstate::protocol_violation,
                          "unsupported SCRAM channel-binding type \"" + sanitize_str(*type) + "\""));
      }
      break;
    }
    default:
      return fail(malformed("Unexpected channel-binding flag \"" + sanitize_char(cbind_flag_) + "\"."));
  }
  if (cur.peek() == 'a') {
    return fail(fatal(sqlstate::feature_not_supported,
                      "client uses authorization identity, but it is not supported"));
  }
  if (cur.peek() != ',') {
    return fail(
        malformed("Unexpected attribute \"" + sanitize_char(cur.peek()) + "\" in client-first-message."));
  }
  cur.advance();
  gs2_header_ = std::string(input->substr(0, cur.pos()));
  client_first_bare_ = std::string(cur.rest());

  if (cur.peek() == 'm') {
    return fail(fatal(sqlstate::feature_not_supported, "client requires an unsupported SCRAM extension"));
  }
  // The SCRAM username is ignored, as in PostgreSQL: the role is the one from
  // the startup packet, and libpq sends an empty name here.
  Result<std::string_view> user = cur.server_attr('n');
  if (!user) return fail(std::move(user).error());
  Result<std::string_view> nonce = cur.server_attr('r');
  if (!nonce) return fail(std::move(nonce).error());
  if (!is_scram_printable(*nonce)) {
    return fail(fatal(sqlstate::protocol_violation, "non-printable characters in SCRAM nonce"));
  }
  client_nonce_ = std::string(*nonce);
  while (cur.peek() != '\0') {  // optional extensions, ignored
    auto ext = cur.server_any_attr();
    if (!ext) return fail(std::move(ext).error());
  }

  Result<std::string> server_nonce = next_nonce(options_.nonce_source);
  if (!server_nonce) return fail(std::move(server_nonce).error());
  server_nonce_ = std::move(*server_nonce);
  server_first_ = "r=" + client_nonce_ + server_nonce_ + ",s=" + base64_encode(verifier_.salt) +
                  ",i=" + std::to_string(verifier_.iterations);
  state_ = State::client_final;
  return server_first_;
}

Result<std::string> ScramServer::handle_client_final(protocol::Bytes message) {
  if (state_ != State::client_final) return fail(bad_state());
  Result<std::string_view> input = server_input(message);
  if (!input) return fail(std::move(input).error());
  Cursor cur(*input);

  Result<std::string_view> cbind = cur.server_attr('c');
  if (!cbind) return fail(std::move(cbind).error());
  if (channel_binding_used_) {
    // c= must be base64(gs2-header || tls-server-end-point hash of our certificate).
    std::string cbind_input = gs2_header_;
    cbind_input.append(options_.tls_server_end_point->begin(), options_.tls_server_end_point->end());
    if (*cbind != base64_encode(cbind_input)) {
      return fail(fatal(sqlstate::invalid_authorization_specification, "SCRAM channel binding check failed"));
    }
  } else if (!((*cbind == "biws" && cbind_flag_ == 'n') || (*cbind == "eSws" && cbind_flag_ == 'y'))) {
    // "biws" = base64("n,,"), "eSws" = base64("y,,").
    return fail(fatal(sqlstate::protocol_violation,
                      "unexpected SCRAM channel-binding attribute in client-final-message"));
  }
  Result<std::string_view> final_nonce = cur.server_attr('r');
  if (!final_nonce) return fail(std::move(final_nonce).error());

  // Optional extensions, then the proof; client-final-message-without-proof
  // ends just before the ',' that precedes "p=".
  size_t proof_start = 0;
  std::string_view proof_b64;
  for (;;) {
    proof_start = cur.pos() - 1;
    auto attr = cur.server_any_attr();
    if (!attr) return fail(std::move(attr).error());
    if (attr->first == 'p') {
      proof_b64 = attr->second;
      break;
    }
  }
  std::optional<std::vector<uint8_t>> proof = base64_decode(proof_b64);
  if (!proof || proof->size() != scram_key_length) {
    return fail(malformed("Malformed proof in client-final-message."));
  }
  if (cur.peek() != '\0') return fail(malformed("Garbage found at the end of client-final-message."));
  std::string_view without_proof = input->substr(0, proof_start);

  if (*final_nonce != client_nonce_ + server_nonce_) {
    return fail(fatal(sqlstate::protocol_violation, "invalid SCRAM response", "Nonce does not match."));
  }

  // ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the client knows
  // the password (or its ClientKey) iff H(ClientKey) == StoredKey.
  std::string auth_message = client_first_bare_ + "," + server_first_ + "," + std::string(without_proof);
  ScramKey signature{};
  ScramKey key{};
  ScramKey key_hash{};
  Cleanse g1{signature.data(), signature.size()};
  Cleanse g2{key.data(), key.size()};
  if (!hmac_sha256(verifier_.stored_key, auth_message, signature))
    return fail(crypto_failure("ClientSignature"));
  for (size_t i = 0; i < scram_key_length; ++i) key[i] = (*proof)[i] ^ signature[i];
  if (!sha256(key, key_hash)) return fail(crypto_failure("StoredKey"));
  if (!equal_secret(key_hash, verifier_.stored_key)) {
    return fail(fatal(sqlstate::invalid_password,
                      "password authentication failed for user \"" + options_.user + "\""));
  }
  ScramKey server_signature{};
  if (!hmac_sha256(verifier_.server_key, auth_message, server_signature)) {
    return fail(crypto_failure("ServerSignature"));
  }
  client_key_ = key;
  state_ = State::done;
  return "v=" + base64_encode(server_signature);
}

// ---------------------------------------------------------------------------
// ScramClient

ScramClient::ScramClient(std::string_view password, ScramClientOptions options)
    : password_(scram_saslprep(password)), options_(std::move(options)) {
  use_plus_ = options_.tls_server_end_point.has_value();
  cbind_flag_ = use_plus_ ? 'p' : 'n';
}

ScramClient::ScramClient(const ScramKey& client_key, const ScramVerifier& verifier,
                         ScramClientOptions options)
    : key_verifier_(verifier),
      client_key_(client_key),
      server_key_(verifier.server_key),
      options_(std::move(options)) {
  use_plus_ = options_.tls_server_end_point.has_value();
  cbind_flag_ = use_plus_ ? 'p' : 'n';
}

ScramClient::~ScramClient() {
  OPENSSL_cleanse(password_.data(), password_.size());
  OPENSSL_cleanse(client_key_.data(), client_key_.size());
  OPENSSL_cleanse(server_key_.data(), server_key_.size());
  if (key_verifier_) {
    OPENSSL_cleanse(key_verifier_->stored_key.data(), key_verifier_->stored_key.size());
    OPENSSL_cleanse(key_verifier_->server_key.data(), key_verifier_->server_key.size());
  }
}

Error ScramClient::fail(Error e) {
  state_ = State::failed;
  return e;
}

Result<std::string> ScramClient::select_mechanism(std::span<const std::string> offered) {
  if (state_ != State::initial) return fail(bad_state());
  bool has_plus = false;
  bool has_plain = false;
  for (const std::string& m : offered) {
    has_plus = has_plus || m == scram_sha_256_plus;
    has_plain = has_plain || m == scram_sha_256;
  }
  const bool can_bind = options_.tls_server_end_point.has_value();
  if (can_bind && has_plus) {
    use_plus_ = true;
    cbind_flag_ = 'p';
  } else if (has_plain) {
    // 'y': we could have bound; a server that also could will see the downgrade.
    use_plus_ = false;
    cbind_flag_ = can_bind ? 'y' : 'n';
  } else if (has_plus) {
    return fail(
        Error::protocol("server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection"));
  } else {
    return fail(Error::protocol("none of the server's SASL authentication mechanisms are supported"));
  }
  return std::string(mechanism());
}

std::string_view ScramClient::mechanism() const {
  return use_plus_ ? scram_sha_256_plus : scram_sha_256;
}

Result<std::string> ScramClient::client_first() {
  if (state_ != State::initial) return fail(bad_state());
  if (key_verifier_) {
    ScramKey stored{};
    if (!sha256(client_key_, stored)) return fail(crypto_failure("StoredKey"));
    if (!equal_secret(stored, key_verifier_->stored_key)) {
      return fail(fatal(sqlstate::internal_error, "SCRAM ClientKey does not match the verifier's StoredKey"));
    }
  }
  Result<std::string> nonce = next_nonce(options_.nonce_source);
  if (!nonce) return fail(std::move(nonce).error());
  client_nonce_ = std::move(*nonce);
  std::string user;
  for (char c : options_.user) {  // saslname escaping, RFC 5802 section 5.1
    if (c == ',') {
      user += "=2C";
    } else if (c == '=') {
      user += "=3D";
    } else {
      user += c;
    }
  }
  client_first_bare_ = "n=" + user + ",r=" + client_nonce_;
  std::string gs2 =
      use_plus_ ? "p=" + std::string(cbind_tls_server_end_point) + ",," : std::string(1, cbind_flag_) + ",,";
  state_ = State::server_first;
  return gs2 + client_first_bare_;
}

Result<std::string> ScramClient::handle_server_first(protocol::Bytes message) {
  if (state_ != State::server_first) return fail(bad_state());
  Result<std::string_view> input = client_input(message);
  if (!input) return fail(std::move(input).error());
  Cursor cur(*input);

  Result<std::string_view> nonce = cur.client_attr('r');
  if (!nonce) return fail(std::move(nonce).error());
  if (nonce->size() <= client_nonce_.size() || nonce->substr(0, client_nonce_.size()) != client_nonce_ ||
      !is_scram_printable(*nonce)) {
    return fail(Error::protocol("invalid SCRAM response (nonce mismatch)"));
  }
  Result<std::string_view> salt_b64 = cur.client_attr('s');
  if (!salt_b64) return fail(std::move(salt_b64).error());
  std::optional<std::vector<uint8_t>> salt = base64_decode(*salt_b64);
  if (!salt || salt->empty()) return fail(Error::protocol("malformed SCRAM message (invalid salt)"));
  Result<std::string_view> iterations_text = cur.client_attr('i');
  if (!iterations_text) return fail(std::move(iterations_text).error());
  std::optional<int> iterations = parse_iterations(*iterations_text);
  if (!iterations) return fail(Error::protocol("malformed SCRAM message (invalid iteration count)"));
  if (cur.peek() != '\0') {
    return fail(Error::protocol("malformed SCRAM message (garbage at end of server-first-message)"));
  }

  if (key_verifier_) {
    // Only the verifier pgcloak checked the client against fits ClientKey.
    if (*salt != key_verifier_->salt || *iterations != key_verifier_->iterations) {
      Error e = fatal(sqlstate::invalid_authorization_specification,
                      "the role's SCRAM verifier changed during authentication",
                      "PostgreSQL announced a different salt or iteration count than the verifier pgcloak "
                      "verified the client against, so the role's password was changed in between.");
      e.hint = "Connect again.";
      return fail(std::move(e));
    }
  } else {
    DerivedKeys keys;
    if (!derive_keys(password_, *salt, *iterations, keys)) return fail(crypto_failure("SCRAM keys"));
    client_key_ = keys.client_key;
    server_key_ = keys.server_key;
  }

  std::string cbind_input =
      use_plus_ ? "p=" + std::string(cbind_tls_server_end_point) + ",," : std::string(1, cbind_flag_) + ",,";
  if (use_plus_) {
    cbind_input.append(options_.tls_server_end_point->begin(), options_.tls_server_end_point->end());
  }
  std::string without_proof = "c=" + base64_encode(cbind_input) + ",r=" + std::string(*nonce);
  auth_message_ = client_first_bare_ + "," + std::string(*input) + "," + without_proof;

  ScramKey stored{};
  ScramKey signature{};
  ScramKey proof{};
  Cleanse g1{signature.data(), signature.size()};
  Cleanse g2{proof.data(), proof.size()};
  if (!sha256(client_key_, stored) || !hmac_sha256(stored, auth_message_, signature)) {
    return fail(crypto_failure("ClientProof"));
  }
  for (size_t i = 0; i < scram_key_length; ++i) proof[i] = client_key_[i] ^ signature[i];
  state_ = State::server_final;
  return without_proof + ",p=" + base64_encode(proof);
}

Status ScramClient::handle_server_final(protocol::Bytes message) {
  if (state_ != State::server_final) return fail(bad_state());
  Result<std::string_view> input = client_input(message);
  if (!input) return fail(std::move(input).error());
  Cursor cur(*input);

  if (cur.peek() == 'e') {
    Result<std::string_view> why = cur.client_attr('e');
    if (!why) return fail(std::move(why).error());
    return fail(fatal(sqlstate::invalid_authorization_specification,
                      "error received from server in SCRAM exchange: " + sanitize_str(*why)));
  }
  Result<std::string_view> v = cur.client_attr('v');
  if (!v) return fail(std::move(v).error());
  std::optional<std::vector<uint8_t>> signature = base64_decode(*v);
  if (!signature || signature->size() != scram_key_length) {
    return fail(Error::protocol("malformed SCRAM message (invalid server signature)"));
  }
  if (cur.peek() != '\0') {
    return fail(Error::protocol("malformed SCRAM message (garbage at end of server-final-message)"));
  }
  ScramKey expected{};
  if (!hmac_sha256(server_key_, auth_message_, expected)) return fail(crypto_failure("ServerSignature"));
  if (!equal_secret(expected, *signature)) {
    return fail(fatal(sqlstate::invalid_authorization_specification, "incorrect server signature"));
  }
  state_ = State::done;
  return ok_status();
}

}  // namespace pgcloak::proxy
