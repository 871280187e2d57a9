#include "proxy/console_state.h"

#include <algorithm>

#include "proxy/audit_chain.h"

namespace pgcloak::proxy {

namespace {

int64_t minute_of(std::chrono::system_clock::time_point t) {
  return std::chrono::floor<std::chrono::minutes>(t.time_since_epoch()).count();
}

// Per second over the last full minute and the part of the current one, so
// the rate neither drops to zero at each minute boundary nor lags by a
// minute.
double rate(const std::array<uint64_t, MinuteRing::minutes>& h, std::chrono::system_clock::time_point now) {
  const auto since_minute =
      now.time_since_epoch() - std::chrono::floor<std::chrono::minutes>(now.time_since_epoch());
  const double elapsed = 60.0 + std::chrono::duration<double>(since_minute).count();
  return static_cast<double>(h[h.size() - 1] + h[h.size() - 2]) / elapsed;
}

nlohmann::json history_json(const std::array<uint64_t, MinuteRing::minutes>& h) {
  nlohmann::json a = nlohmann::json::array();
  for (uint64_t v : h) a.push_back(v);
  return a;
}

}  // namespace

void LiveSession::set_policy(std::string name) {
  std::lock_guard lock(policy_mu_);
  policy_ = std::move(name);
}

std::string LiveSession::policy() const {
  std::lock_guard lock(policy_mu_);
  return policy_;
}

void MinuteRing::add(int64_t minute, uint64_t n) {
  if (n == 0) return;
  const size_t i = static_cast<size_t>(minute % static_cast<int64_t>(slots));
  if (stamp_[i].load(std::memory_order_relaxed) != minute) {
    if (stamp_[i].exchange(minute, std::memory_order_relaxed) != minute) {
      count_[i].store(0, std::memory_order_relaxed);
    }
  }
  count_[i].fetch_add(n, std::memory_order_relaxed);
}

std::array<uint64_t, MinuteRing::minutes> MinuteRing::history(int64_t minute) const {
  std::array<uint64_t, minutes> out{};
  for (size_t k = 0; k < minutes; ++k) {
    const int64_t m = minute - static_cast<int64_t>(minutes - 1 - k);
    const size_t i = static_cast<size_t>(m % static_cast<int64_t>(slots));
    if (stamp_[i].load(std::memory_order_relaxed) == m) out[k] = count_[i].load(std::memory_order_relaxed);
  }
  return out;
}

ConsoleState::ConsoleState(ConsoleOptions options) : options_(options) {}

void ConsoleState::open_session(std::shared_ptr<LiveSession> s) {
  std::lock_guard lock(mu_);
  const uint64_t id = s->id;
  sessions_[id] = std::move(s);
}

void ConsoleState::close_session(uint64_t id) {
  std::lock_guard lock(mu_);
  sessions_.erase(id);
}

void ConsoleState::on_statement(LiveSession& s, const ConsoleStatement& st, Clock::time_point now) {
  const int64_t minute = minute_of(now);
  statements_.add(minute, 1);
  masked_values_.add(minute, st.masked_values);
  if (st.protected_rows == 0) return;
  protected_rows_.add(minute, st.protected_rows);
  std::lock_guard lock(mu_);
  auto it = readers_.find(s.user);
  if (it == readers_.end()) {
    if (readers_.size() >= options_.max_readers) {
      // Forget readers idle for an hour before refusing a new one.
      std::erase_if(readers_, [&](const auto& kv) { return kv.second.last_minute <= minute - 60; });
      if (readers_.size() >= options_.max_readers) return;
    }
    it = readers_.emplace(s.user, Reader{}).first;
  }
  Reader& r = it->second;
  const size_t i = static_cast<size_t>(minute % static_cast<int64_t>(r.stamp.size()));
  if (r.stamp[i] != minute) {
    r.stamp[i] = minute;
    r.rows[i] = 0;
    r.statements[i] = 0;
  }
  r.rows[i] += st.protected_rows;
  r.statements[i] += 1;
  r.last_minute = minute;
  for (const auto& rel : st.protected_relations) {
    if (auto f = std::find(r.relations.begin(), r.relations.end(), rel); f != r.relations.end()) {
      r.relations.erase(f);
    } else if (r.relations.size() >= options_.max_reader_relations) {
      r.relations.erase(r.relations.begin());
    }
    r.relations.push_back(rel);
  }
}

void ConsoleState::on_denial(ConsoleDenial d) {
  denials_.add(minute_of(d.time), 1);
  std::lock_guard lock(mu_);
  denial_log_.push_back(std::move(d));
  while (denial_log_.size() > options_.max_denials) denial_log_.pop_front();
}

void ConsoleState::on_alert(ConsoleAlert a) {
  std::lock_guard lock(mu_);
  alert_log_.push_back(std::move(a));
  while (alert_log_.size() > options_.max_alerts) alert_log_.pop_front();
}

nlohmann::json ConsoleState::snapshot(const Status& status, Clock::time_point now) const {
  using nlohmann::json;
  const int64_t minute = minute_of(now);
  json doc = {{"version", status.version},
              {"now", format_audit_ts(now)},
              {"uptime_seconds", status.uptime.count()},
              {"ready", status.ready},
              {"not_ready_reason", status.not_ready_reason}};

  std::vector<std::shared_ptr<LiveSession>> live;
  struct TopReader {
    std::string user;
    uint64_t rows = 0;
    uint64_t statements = 0;
    std::vector<std::string> relations;
  };
  std::vector<TopReader> top;
  json denials = json::array();
  json alerts = json::array();
  {
    std::lock_guard lock(mu_);
    live.reserve(sessions_.size());
    for (const auto& [id, s] : sessions_) live.push_back(s);
    for (const auto& [user, r] : readers_) {
      TopReader t{user, 0, 0, r.relations};
      for (size_t i = 0; i < r.stamp.size(); ++i) {
        if (r.stamp[i] > minute - static_cast<int64_t>(MinuteRing::minutes) && r.stamp[i] <= minute) {
          t.rows += r.rows[i];
          t.statements += r.statements[i];
        }
      }
      if (t.rows > 0) top.push_back(std::move(t));
    }
    // Newest first.
    for (auto it = denial_log_.rbegin(); it != denial_log_.rend(); ++it) {
      denials.push_back({{"time", format_audit_ts(it->time)},
                         {"session_id", it->session_id},
                         {"user", it->user},
                         {"client", it->client},
                         {"rule", it->rule},
                         {"message", it->message}});
    }
    for (auto it = alert_log_.rbegin(); it != alert_log_.rend(); ++it) {
      alerts.push_back({{"time", format_audit_ts(it->time)},
                        {"detector", it->detector},
                        {"user", it->user},
                        {"client", it->client},
                        {"relation", it->relation},
                        {"category", it->category},
                        {"observed", it->observed},
                        {"baseline", it->baseline},
                        {"rule", it->rule},
                        {"action", it->action}});
    }
  }

  std::sort(live.begin(), live.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  json sessions = json::array();
  for (const auto& s : live) {
    const int cls = s->current_class.load(std::memory_order_relaxed);
    sessions.push_back(
        {{"id", s->id},
         {"user", s->user},
         {"database", s->database},
         {"client", s->client},
         {"application_name", s->application_name},
         {"tls", s->tls},
         {"tls_version", s->tls_version},
         {"policy", s->policy()},
         {"connected_at", format_audit_ts(s->connected_at)},
         {"state", cls < 0 ? "idle" : "active"},
         {"current_class",
          cls < 0 ? json(nullptr)
                  : json(std::string(rules::audit_class_name(static_cast<rules::AuditClass>(cls))))},
         {"current_rows", s->current_rows.load(std::memory_order_relaxed)},
         {"statements", s->statements.load(std::memory_order_relaxed)},
         {"rows", s->rows.load(std::memory_order_relaxed)},
         {"protected_rows", s->protected_rows.load(std::memory_order_relaxed)},
         {"bytes", s->bytes.load(std::memory_order_relaxed)}});
  }
  doc["sessions"] = std::move(sessions);

  std::sort(top.begin(), top.end(), [](const TopReader& a, const TopReader& b) {
    return a.rows != b.rows ? a.rows > b.rows : a.user < b.user;
  });
  if (top.size() > options_.top_readers) top.resize(options_.top_readers);
  json readers = json::array();
  for (const auto& t : top) {
    readers.push_back({{"user", t.user},
                       {"protected_rows", t.rows},
                       {"statements", t.statements},
                       {"relations", t.relations}});
  }
  doc["top_readers"] = std::move(readers);
  doc["recent_denials"] = std::move(denials);
  doc["recent_alerts"] = std::move(alerts);

  const auto masked = masked_values_.history(minute);
  const auto denied = denials_.history(minute);
  const auto statements = statements_.history(minute);
  const auto protected_rows = protected_rows_.history(minute);
  doc["rates"] = {{"window_seconds", 60},
                  {"masked_values_per_second", rate(masked, now)},
                  {"denials_per_second", rate(denied, now)},
                  {"statements_per_second", rate(statements, now)},
                  {"protected_rows_per_second", rate(protected_rows, now)}};
  doc["history"] = {{"bucket_seconds", 60},
                    {"masked_values", history_json(masked)},
                    {"denials", history_json(denied)},
                    {"protected_rows", history_json(protected_rows)},
                    {"statements", history_json(statements)}};
  return doc;
}

}  // namespace pgcloak::proxy
