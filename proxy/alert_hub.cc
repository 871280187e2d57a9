#include "proxy/alert_hub.h"

#include <cmath>

#include "proxy/alert_syslog.h"
#include "proxy/alert_webhook.h"
#include "proxy/audit_chain.h"
#include "proxy/audit_log.h"
#include "proxy/console_state.h"
#include "proxy/log.h"
#include "proxy/metrics.h"

namespace pgcloak::proxy {

namespace {

// Counts are integers in practice; keep them integers in JSON and text.
nlohmann::json number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 9.0e15) return static_cast<int64_t>(v);
  return v;
}

std::string number_text(double v) {
  return number(v).dump();
}

}  // namespace

nlohmann::json alert_json(const rules::Alert& a) {
  nlohmann::json j = {{"rule", a.rule},
                      {"detector", a.detector},
                      {"action", std::string(rules::action_name(a.action))},
                      {"user", a.user},
                      {"client", a.client_ip},
                      {"application_name", a.application_name},
                      {"relation", a.relation},
                      {"category", a.category},
                      {"observed", number(a.observed)},
                      {"baseline", number(a.baseline)},
                      {"session_id", a.session_id},
                      {"time", format_audit_ts(a.at)},
                      {"message", a.message}};
  if (a.block_for.count() > 0) j["block_for_s"] = a.block_for.count();
  return j;
}

std::string alert_summary(const rules::Alert& a) {
  std::string s = a.rule + " (" + a.detector + "): user " + a.user;
  if (!a.client_ip.empty()) s += " from " + a.client_ip;
  if (!a.relation.empty()) s += " on " + a.relation;
  s += ": " + number_text(a.observed) + " against " + number_text(a.baseline);
  s += "; action " + std::string(rules::action_name(a.action));
  if (!a.message.empty()) s += ". " + a.message;
  return s;
}

void AlertHub::raise(const rules::Alert& a, const std::shared_ptr<const AuditSession>& session) {
  const std::string summary = alert_summary(a);
  log::warn("alert: " + summary, a.session_id);
  if (sinks_.metrics != nullptr) sinks_.metrics->on_alert(a.detector, a.user);
  if (sinks_.console != nullptr) {
    sinks_.console->on_alert({a.at, a.detector, a.user, a.client_ip, a.relation, a.category, a.observed,
                              a.baseline, a.rule, std::string(rules::action_name(a.action))});
  }
  nlohmann::json j = alert_json(a);
  if (sinks_.audit != nullptr) {
    AuditEvent ev;
    ev.kind = "alert";
    ev.at = a.at;
    ev.session = session;
    ev.detail = j;
    sinks_.audit->submit(std::move(ev));
  }
  if (sinks_.syslog != nullptr &&
      !sinks_.syslog->send(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))) {
    log::warn("alert syslog queue full: this alert is in the audit trail and the log only", a.session_id);
  }
  if (sinks_.webhook != nullptr && !sinks_.webhook->submit(std::move(j), summary)) {
    log::warn("alert webhook queue full: this alert is in the audit trail and the log only", a.session_id);
  }
}

}  // namespace pgcloak::proxy
