// The audit trail's tamper evidence (docs/audit.md, "Chain and key"),
// shared by the writer (audit_log.cc) and `pgcloak audit verify`
// (audit_verify.cc) so both agree byte for byte on what a MAC covers.
//
// A record line is
//   <canonical>,"mac":"<64 lower-case hex digits>"}
// where <canonical> is the record's JSON object without its closing brace,
// and mac_i = HMAC-SHA256(k_epoch, mac_{i-1} || <canonical>_i) over exactly
// those bytes. The verifier strips the fixed-size suffix from the line as
// it is in the file; nothing is re-serialised.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "protocol/result.h"
#include "rules/hmac_sha256.h"

namespace pgcloak::proxy {

// The record kinds the audit writer itself emits; relay events name theirs
// in audit_event.h. One table (conventions, point 9).
namespace audit_kind {
inline constexpr std::string_view audit_file = "audit_file";        // first record of every file
inline constexpr std::string_view audit_started = "audit_started";  // the writer started
inline constexpr std::string_view audit_stopped = "audit_stopped";  // clean close()
inline constexpr std::string_view statement = "statement";
}  // namespace audit_kind

inline constexpr int audit_record_version = 1;  // the "v" field
inline constexpr size_t audit_key_size = 32;
inline constexpr size_t audit_mac_size = 32;
// ,"mac":"<64 hex>"}
inline constexpr std::string_view audit_mac_prefix = ",\"mac\":\"";
inline constexpr size_t audit_mac_suffix_size = audit_mac_prefix.size() + 2 * audit_mac_size + 2;

using AuditMac = std::array<unsigned char, audit_mac_size>;

// The chain key of one epoch. The bytes are wiped when the key is ratcheted
// or destroyed, so an earlier epoch's key does not linger in memory.
class AuditKey {
 public:
  AuditKey() = default;
  AuditKey(const AuditKey& other) : bytes_(other.bytes_), epoch_(other.epoch_) {}
  AuditKey& operator=(const AuditKey& other);
  ~AuditKey();

  const unsigned char* data() const { return bytes_.data(); }
  uint64_t epoch() const { return epoch_; }
  // k_{e+1} = SHA-256(k_e).
  void ratchet();
  // Ratchets forward to `epoch` (no-op if already there). Keys cannot go
  // backwards: false if `epoch` is earlier than this key's.
  bool ratchet_to(uint64_t epoch);

  // "pgcloak-audit-key v1 epoch=N <64 hex>", or a bare 64-hex key (epoch 0).
  // Surrounding white space is ignored.
  static Result<AuditKey> parse(std::string_view text);
  static AuditKey from_bytes(const unsigned char* bytes, uint64_t epoch);

  // HMAC-SHA256 under this key of prev || canonical (audit_mac). Keeps the
  // key's prepared pads, so a key is used by one thread at a time; a copy
  // prepares its own, and ratchet() wipes them with the old key.
  AuditMac mac(const AuditMac& prev, std::string_view canonical) const;

 private:
  std::array<unsigned char, audit_key_size> bytes_{};
  uint64_t epoch_ = 0;
  mutable std::unique_ptr<rules::HmacSha256> hmac_;  // built at the first mac()
};

// The key file line for `key` (with a trailing newline). Holds key material:
// the caller wipes it with wipe().
std::string format_audit_key(const AuditKey& key);
// OPENSSL_cleanse of a string's bytes.
void wipe(std::string& s);

// The key from `key_file` or the environment variable `key_env` (exactly
// one is set). The error says which source failed and why, never the key.
Result<AuditKey> load_audit_key(const std::string& key_file, const std::string& key_env);
// Replaces `path` atomically with `key`: a 0600 temporary file in the same
// directory is written and fsynced, renamed over `path`, and the directory
// fsynced, so a crash leaves either the old key or the new one.
Status store_audit_key(const std::string& path, const AuditKey& key);

AuditMac audit_mac(const AuditKey& key, const AuditMac& prev, std::string_view canonical);

// A line split into the bytes its MAC covers and the MAC it carries.
struct AuditLineParts {
  std::string_view canonical;
  AuditMac mac{};
};
// nullopt unless the line ends with ,"mac":"<64 lower-case hex>"}.
std::optional<AuditLineParts> split_audit_line(std::string_view line);
// canonical + ,"mac":"<hex>"}
std::string seal_audit_line(std::string canonical, const AuditMac& mac);

// What recovery and the verifier need from a line, parsed once.
struct AuditLineInfo {
  enum class Status {
    ok,
    no_mac,      // does not end with ,"mac":"<64 hex>"}
    bad_json,    // not a JSON object
    bad_fields,  // "v", "seq" or "kind" missing or of the wrong type, or an unknown "v"
  };
  Status status = Status::ok;
  std::string why;  // for everything but ok
  AuditLineParts parts;
  uint64_t seq = 0;
  std::string kind;
  std::string ts;
  // audit_file headers: header_ok says the fields below are all present.
  bool header_ok = false;
  uint64_t epoch = 0;
  uint64_t prev_seq = 0;
  AuditMac prev_mac{};
  std::string prev_file;  // "" for the first file of a chain
};
AuditLineInfo parse_audit_line(std::string_view line);

std::string to_hex(const unsigned char* data, size_t size);
inline std::string to_hex(const AuditMac& mac) {
  return to_hex(mac.data(), mac.size());
}
std::optional<AuditMac> mac_from_hex(std::string_view hex);

// RFC 3339 in UTC with microseconds: 2024-05-01T12:34:56.123456Z.
std::string format_audit_ts(std::chrono::system_clock::time_point at);
std::optional<std::chrono::system_clock::time_point> parse_audit_ts(std::string_view text);

// Path helpers for the audit files.
std::string dir_of(const std::string& path);   // "." for a bare name
std::string base_of(const std::string& path);  // the last component
// Makes a rename or a new file in `dir` durable.
Status fsync_dir(const std::string& dir);
// Writes all of data (retrying short writes); the error is errno's text.
Status write_all(int fd, std::string_view data);
std::string errno_text(int err);

}  // namespace pgcloak::proxy
