// pgcloak's configuration model. Loaded from YAML by config_loader.cc;
// everything downstream reads these plain structs. Later issues add roles,
// masking, audit, metrics and alerting as further top-level sections.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/framing.h"
#include "protocol/result.h"
#include "rules/audit_config.h"
#include "rules/detection_config.h"
#include "rules/masking_config.h"

namespace pgcloak::rules {

using Duration = std::chrono::milliseconds;

// libpq's sslmode values that make sense for a proxy (libpq docs, "SSL Mode
// Descriptions"). allow and verify-ca are deliberately absent: allow is
// downgrade-by-design and verify-ca checks a chain without the host name.
enum class SslMode { disable, prefer, require, verify_full };
std::string_view to_string(SslMode mode);

enum class LogLevel { debug, info, warn, error };

struct ListenAddress {
  std::string host;  // literal IPv4/IPv6 address or a resolvable name
  uint16_t port = 0;
};

struct TlsConfig {
  std::string cert_file;
  std::string key_file;
  bool require = false;
  std::string client_ca_file;  // non-empty = clients must present a cert (mTLS)
  std::string min_version = "1.2";
  bool enabled() const { return !cert_file.empty(); }
};

// Session pooling of PostgreSQL connections (README, "upstream.pool"): a
// backend whose client left cleanly is reset with DISCARD ALL and handed to
// the next client of the same role, database and startup parameters. Only
// with auth.mode scram, where pgcloak itself authenticates every client.
struct UpstreamPoolConfig {
  bool enabled = false;
  uint32_t max_idle = 100;           // idle connections kept, over all keys
  Duration idle_timeout{600'000};    // idle longer = closed (PgBouncer's server_idle_timeout default)
  Duration max_lifetime{3'600'000};  // a connection older than this is not reused
  Duration reset_timeout{5'000};     // DISCARD ALL must answer within this
};

struct UpstreamConfig {
  std::string host = "127.0.0.1";  // a leading '/' names a Unix socket directory
  uint16_t port = 5432;
  SslMode sslmode = SslMode::prefer;
  std::string sslrootcert;
  Duration connect_timeout{5000};
  UpstreamPoolConfig pool;
  bool is_unix_socket() const { return !host.empty() && host.front() == '/'; }
  std::string unix_socket_path() const;  // host/.s.PGSQL.port, as libpq builds it
  std::string describe() const;          // for log lines and error messages
};

struct Timeouts {
  Duration handshake{10000};
  Duration client_idle{0};  // 0 = never
  Duration shutdown_grace{30000};
};

struct Limits {
  uint32_t max_message_size = protocol::default_max_message_length;
};

struct LogConfig {
  LogLevel level = LogLevel::info;
};

// Who authenticates clients (README, "auth").
enum class AuthMode {
  passthrough,  // PostgreSQL authenticates; pgcloak relays the exchange
  scram,        // pgcloak terminates SCRAM-SHA-256 with verifiers from auth_query
};

struct AuthConfig {
  AuthMode mode = AuthMode::passthrough;
  // Run on the catalog connection with the login name as $1; returns
  // (usename, passwd) with passwd a pg_authid.rolpassword.
  std::string auth_query = "SELECT usename, passwd FROM pgcloak.get_auth($1)";
  std::string auth_dbname;             // empty = the client's database
  Duration verifier_cache_ttl{60000};  // 0 = every login fetches
};

// pgcloak's own side connection to PostgreSQL (auth lookups, later the
// masking catalog). Host, port and TLS come from upstream.
struct CatalogConfig {
  std::string user = "pgcloak";
  // The effective password: catalog.password, or the first line of
  // catalog.password_file (read when the configuration is loaded).
  std::string password;
  std::string password_file;
  // The database the masking catalog is read from (relations, views and
  // functions are per database; roles are cluster-wide). Required when
  // masking has protected columns.
  std::string dbname;
  Duration refresh_interval{60000};  // re-read the catalog this often (at least 1s)
};

// The HTTP endpoint for /metrics, /healthz, /readyz and the console
// (docs/metrics.md). On by default, on loopback: Prometheus users expect a
// scrape target without extra setup, and loopback exposes nothing.
struct MetricsConfig {
  bool enabled = true;
  ListenAddress listen{"127.0.0.1", 9930};
  // Bearer token, from a file (first line) or an environment variable;
  // required when listen is not a loopback address, since the metrics name
  // users and protected relations.
  std::string token_file;
  std::string token_env;
  std::string token;          // the effective token, read when the configuration is loaded
  std::string tls_cert_file;  // both set = HTTPS
  std::string tls_key_file;
  // Label caps (docs/metrics.md, "Cardinality"): later values become "other".
  unsigned max_users = 100;
  unsigned max_databases = 20;
  unsigned max_relations = 200;
  bool tls_enabled() const { return !tls_cert_file.empty(); }
};

struct Config {
  std::vector<ListenAddress> listen{{"127.0.0.1", 6432}};
  std::string unix_socket_dir;
  unsigned threads = 0;  // 0 = hardware concurrency
  // Relay loops issue the socket calls of ready sessions together through
  // io_uring when the kernel allows it (auto), or one system call each (off).
  enum class IoUring : uint8_t { auto_, off };
  IoUring io_uring = IoUring::auto_;
  unsigned max_connections = 10000;
  TlsConfig tls;
  UpstreamConfig upstream;
  Timeouts timeouts;
  Limits limits;
  LogConfig log;
  MaskingConfig masking;
  AuthConfig auth;
  CatalogConfig catalog;
  AuditConfig audit;
  MetricsConfig metrics;
  DetectionConfig detection;
};

// One problem found in a config file, with a 1-based position.
struct ConfigIssue {
  int line = 0;
  int column = 0;
  std::string message;
};

struct ConfigLoad {
  Config config;
  std::vector<ConfigIssue> issues;  // empty = valid
  bool ok() const { return issues.empty(); }
  // "source:line:col: message" per issue, one per line.
  std::string format(std::string_view source) const;
};

// Parses and validates. Never throws: YAML syntax errors, unknown keys, wrong
// types and out-of-range values all become issues, so --check-config can list
// every problem at once.
ConfigLoad parse_config(std::string_view yaml_text);
// The same, with the masking key read through `secrets` (tests inject one).
ConfigLoad parse_config(std::string_view yaml_text, const SecretSources& secrets);
ConfigLoad load_config_file(const std::string& path);

// "250ms", "10s", "5m", "1h", "2d", or a bare integer of milliseconds.
Result<Duration> parse_duration(std::string_view text);
// "4096", "64KiB", "16MiB", "1GiB" (also kB/MB/GB as powers of 1024, as
// PostgreSQL's own GUC units do).
Result<uint64_t> parse_size(std::string_view text);

}  // namespace pgcloak::rules
