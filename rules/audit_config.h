// The `audit:` section of the configuration (docs/audit.md). Plain data;
// parsed and validated in config_loader.cc.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace pgcloak::rules {

// When a statement's record must be on disk relative to the client seeing
// its result (docs/audit.md, "Durability").
enum class AuditDurability {
  batched,  // records are fsynced at least every flush_interval
  strict,   // ReadyForQuery is held until the statement's record is fsynced
};

// What happens to new statements while the audit sink cannot write.
enum class AuditOnFailure {
  fail_closed,  // refused with an error that says why (default)
  block,        // held until the sink recovers
};

// How rotated audit files are compressed (docs/audit.md, "Files, rotation
// and retention").
enum class AuditCompression {
  none,
  zstd,  // default: about 6x less CPU than gzip on audit records, smaller files
  gzip,  // for tools that only read gzip
};

struct AuditFileConfig {
  std::string path;  // empty = no file sink; the active file, rotated files get a suffix
  uint64_t rotate_size = uint64_t{256} << 20;              // 0 = never rotate by size
  std::chrono::milliseconds rotate_age{24 * 3600 * 1000};  // 0 = never rotate by age
  AuditCompression compress = AuditCompression::zstd;      // of rotated files
  unsigned retention_days = 0;                             // delete rotated files older than this; 0 = keep
};

// RFC 5424 messages over TCP (RFC 6587 octet counting), optionally TLS.
struct AuditSyslogConfig {
  std::string host;  // empty = no syslog sink
  uint16_t port = 514;
  bool tls = false;
  std::string ca_file;  // TLS: verify the receiver against this CA (required with tls)
  std::string app_name = "pgcloak";
  std::string hostname;    // empty = gethostname()
  unsigned facility = 13;  // log audit
  std::chrono::milliseconds connect_timeout{5000};
  bool enabled() const { return !host.empty(); }
};

struct AuditConfig {
  bool enabled = false;  // true when the section is present (and not `enabled: false`)
  AuditDurability durability = AuditDurability::batched;
  std::chrono::milliseconds flush_interval{200};  // batched: fsync at least this often
  AuditOnFailure on_failure = AuditOnFailure::fail_closed;
  // HMAC chain key: 32 bytes as 64 hex characters, from a file or an
  // environment variable. A key file is rewritten with the ratcheted key at
  // each rotation, so keep a copy of the initial key for `audit verify`.
  std::string key_file;
  std::string key_env;
  // Literals and bind parameter values are never written in the clear; with
  // this on they are written sealed with AES-256-GCM (costly, see docs).
  bool log_parameters = false;
  std::string parameter_key_file;  // 32 bytes as 64 hex characters
  uint64_t queue_limit = 100000;   // records waiting for the writer before new statements are held/refused
  bool stdout_sink = false;        // also write every record to stdout (containers)
  AuditFileConfig file;
  AuditSyslogConfig syslog;
};

}  // namespace pgcloak::rules
