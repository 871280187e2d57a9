// The `detection:` section of the configuration (docs/detection.md): rules
// that watch for exfiltration while it happens. Plain data; parsed and
// validated in config_loader.cc, evaluated by rules/detection.h.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "rules/audit_config.h"
#include "rules/tzif.h"

namespace pgcloak::rules {

enum class DetectorKind {
  statement_volume,  // rows or bytes of one statement, checked while rows stream
  window_volume,     // rows per user and relation per window against a learned baseline
  slow_drip,         // distinct statement keys per user and relation per window
  first_access,      // a relation or category the user never read before
  off_hours,         // protected reads outside a schedule
  bulk_export,       // COPY TO, or an unfiltered read of a protected relation
  probing,           // denied statements or distinct predicates on masked columns per session
  service_account,   // a service account from a new address or application_name
};
std::string_view detector_name(DetectorKind k);

// What pgcloak does when a rule fires. Every action also raises the alert.
enum class AlertAction {
  alert,      // record and notify only
  cancel,     // cancel the running statement (57014)
  terminate,  // end the session (57P01-style FATAL)
  block,      // end the session and refuse the user's logins for block_for
};
std::string_view action_name(AlertAction a);

// An IPv4 or IPv6 network in CIDR notation; a bare address is /32 or /128.
struct Cidr {
  std::array<uint8_t, 16> address{};  // IPv4 as ::ffff:a.b.c.d
  unsigned prefix = 0;                // over the 128-bit form
  bool contains(const std::array<uint8_t, 16>& ip) const;
};
// "10.0.0.0/8", "2001:db8::/32", "192.0.2.7". nullopt when malformed.
std::optional<Cidr> parse_cidr(std::string_view text);
// A literal IPv4 or IPv6 address (an IPv4-mapped IPv6 address is the IPv4
// one). nullopt for anything else, including host names and "unix".
std::optional<std::array<uint8_t, 16>> parse_ip(std::string_view text);

// A span of allowed local time on some weekdays. to_minute <= from_minute
// spans midnight ("22:00"-"06:00" belongs to the day it starts on).
struct ScheduleSlot {
  uint8_t days = 0;  // bit 0 = Monday .. bit 6 = Sunday
  unsigned from_minute = 0;
  unsigned to_minute = 24 * 60;
};

struct DetectionRule {
  std::string name;
  DetectorKind detector = DetectorKind::statement_volume;
  // Scope. Empty = everyone / every protected relation / every category.
  // roles match the login or any group it belongs to (nested groups
  // included, resolved by the caller).
  std::vector<std::string> roles;
  std::vector<std::string> exclude_roles;
  std::vector<std::string> relations;  // "schema.name", normalised
  std::vector<std::string> categories;
  AlertAction action = AlertAction::alert;
  std::chrono::seconds block_for{0};  // action block
  // At most one alert per rule, user and relation per cooldown (off_hours:
  // per rule and user; probing: per session; service_account: per address
  // or application_name). Rules that act (cancel, terminate, block) report
  // every time they act.
  std::chrono::seconds cooldown{300};

  // statement_volume. 0 = no limit on that measure.
  uint64_t max_rows = 0;
  uint64_t max_bytes = 0;
  // window_volume, slow_drip, probing: the window length.
  std::chrono::seconds window{60};
  // window_volume: threshold = max(floor_rows, median + sensitivity x MAD x
  // 1.4826, 1.5 x the largest window of the last 8 days).
  double sensitivity = 6.0;
  uint64_t floor_rows = 1000;
  // window_volume, first_access, service_account: learn without alerting
  // for this long (see docs/detection.md, "Warm-up").
  std::chrono::seconds warmup{0};
  // slow_drip
  uint64_t max_distinct = 0;
  // off_hours
  std::shared_ptr<const TimeZone> time_zone;  // null = detection.time_zone
  std::vector<ScheduleSlot> allowed;
  // bulk_export
  bool copy_to = true;
  bool full_scan = true;
  uint64_t min_rows = 0;  // full_scan: alert once this many rows streamed (0 = at the start)
  // probing. 0 = that signal is off.
  uint64_t max_denials = 0;
  uint64_t max_predicates = 0;
  // service_account
  std::vector<Cidr> clients;
  std::vector<std::string> application_names;
  bool learn = false;
};

// Where alerts are POSTed (docs/detection.md, "Alerts"), besides the log,
// the metrics, the console and the audit trail.
struct DetectionWebhook {
  std::string url;         // https://...; http:// only to a loopback host
  bool slack = false;      // Slack-compatible payload ({"text": ..., "blocks": ...})
  std::string ca_file;     // empty = the system's trust store
  std::string token_file;  // optional bearer token, from a file (first line)
  std::string token_env;   // ... or an environment variable
  std::string token;       // the effective token, read when the configuration is loaded
  std::chrono::milliseconds timeout{5000};
  uint64_t queue_limit = 1000;
  bool enabled() const { return !url.empty(); }
};

struct DetectionConfig {
  bool enabled = false;  // true when the section is present (and not `enabled: false`)
  DetectionWebhook webhook;
  // Alerts as RFC 5424 messages (MSGID "alert", severity warning) to a
  // syslog receiver over TCP or TLS, independent of the audit trail's own
  // syslog sink. Empty host = off.
  AuditSyslogConfig syslog;
  uint64_t syslog_queue_limit = 1000;
  // Baselines, first-access history, learned clients and active blocks.
  // Written by the proxy; empty = kept in memory only.
  std::string state_file;
  std::chrono::seconds save_interval{60};
  // The zone of off_hours rules without their own, and of the work-hours
  // split of window_volume baselines (weekdays 07:00-19:00 vs. the rest).
  std::shared_ptr<const TimeZone> time_zone = TimeZone::utc();
  // Memory bound: (user, relation) entries kept across all rules; the least
  // recently active users are forgotten first.
  uint64_t max_tracked = 100000;
  std::vector<DetectionRule> rules;
};

}  // namespace pgcloak::rules
