// Where an exfiltration alert goes (docs/detection.md, "Alerts"): pgcloak's
// log, the metrics (pgcloak_alerts_total), the console, the audit trail (an
// "alert" event, which also reaches the audit syslog sink), the webhook and
// the alert syslog sink (detection.syslog).
// The audit trail is the one that loses nothing; the webhook is best effort
// with retries and a bounded queue.
//
// Thread-safe: relay threads raise alerts concurrently.
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "rules/detection.h"

namespace pgcloak::proxy {

class AuditLog;
class AlertWebhook;
class ConsoleState;
class Metrics;
struct AuditSession;

struct AlertHubSinks {
  Metrics* metrics = nullptr;
  ConsoleState* console = nullptr;
  AuditLog* audit = nullptr;
  AlertWebhook* webhook = nullptr;
  class AlertSyslog* syslog = nullptr;
};

// The alert as every sink writes it: names, counts and limits only.
nlohmann::json alert_json(const rules::Alert& a);
// One line for people (logs, Slack).
std::string alert_summary(const rules::Alert& a);

class AlertHub {
 public:
  explicit AlertHub(AlertHubSinks sinks) : sinks_(sinks) {}
  // session: the session the alert is about (null for none), so its audit
  // record carries the same who/where fields as the statements.
  void raise(const rules::Alert& a, const std::shared_ptr<const AuditSession>& session);

 private:
  AlertHubSinks sinks_;
};

}  // namespace pgcloak::proxy
