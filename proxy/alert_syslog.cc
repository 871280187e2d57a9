#include "proxy/alert_syslog.h"

#include <algorithm>
#include <span>
#include <utility>
#include <vector>

#include "proxy/log.h"

namespace pgcloak::proxy {

namespace {
using Clock = std::chrono::steady_clock;
constexpr auto first_backoff = std::chrono::milliseconds(500);
constexpr auto max_backoff = std::chrono::seconds(30);
}  // namespace

Result<std::unique_ptr<AlertSyslog>> AlertSyslog::open(const rules::AuditSyslogConfig& config,
                                                       uint64_t queue_limit, SyslogSinkOptions options) {
  options.msgid = "alert";
  options.severity = 4;  // warning (RFC 5424 section 6.2.1)
  options.section = "detection.syslog";
  auto sink = make_syslog_sink(config, options);
  if (!sink) return std::move(sink).error();
  return std::unique_ptr<AlertSyslog>(
      new AlertSyslog(std::move(sink).value(), std::max<uint64_t>(queue_limit, 1)));
}

AlertSyslog::AlertSyslog(std::unique_ptr<AuditSink> sink, uint64_t queue_limit)
    : sink_(std::move(sink)), describe_(sink_->describe()), queue_limit_(queue_limit) {
  thread_ = std::thread([this] { run(); });
}

AlertSyslog::~AlertSyslog() {
  stop(std::chrono::milliseconds(0));
}

bool AlertSyslog::send(std::string message) {
  {
    std::lock_guard lk(mu_);
    if (stopping_ || queue_.size() + in_flight_ >= queue_limit_) {
      dropped_.fetch_add(1);
      return false;
    }
    queue_.push_back(std::move(message));
  }
  cv_.notify_one();
  return true;
}

void AlertSyslog::stop(std::chrono::milliseconds drain) {
  {
    std::lock_guard lk(mu_);
    if (!stopping_) {
      stopping_ = true;
      drain_until_ = Clock::now() + drain;
    }
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void AlertSyslog::run() {
  std::vector<std::string> batch;
  auto backoff = std::chrono::milliseconds(0);
  Clock::time_point last_warning{};
  for (;;) {
    {
      std::unique_lock lk(mu_);
      if (batch.empty()) {
        cv_.wait(lk, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping with nothing left
        while (!queue_.empty()) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        in_flight_ = batch.size();
      } else if (backoff.count() > 0) {
        // Waiting to retry; stop() cuts the wait short once its drain time
        // is over.
        const auto until = Clock::now() + backoff;
        cv_.wait_until(lk, until, [&] { return stopping_ && Clock::now() >= drain_until_; });
      }
      if (stopping_ && Clock::now() >= drain_until_ && !batch.empty() && backoff.count() > 0) {
        dropped_.fetch_add(batch.size() + queue_.size());
        log::warn("alert syslog: " + std::to_string(batch.size() + queue_.size()) + " alerts to " +
                  describe_ + " not delivered before shutdown (they are in the audit trail and the log)");
        return;
      }
    }
    auto st = sink_->write(std::span<const std::string>(batch));
    if (st) st = sink_->sync();
    if (st) {
      delivered_.fetch_add(batch.size());
      batch.clear();
      backoff = std::chrono::milliseconds(0);
      std::lock_guard lk(mu_);
      in_flight_ = 0;
      continue;
    }
    // The receiver is away: keep the batch, retry with backoff. The sink
    // reconnects on the next write.
    backoff =
        backoff.count() == 0 ? first_backoff : std::min<std::chrono::milliseconds>(backoff * 2, max_backoff);
    if (Clock::now() - last_warning >= std::chrono::seconds(30)) {
      last_warning = Clock::now();
      log::warn("alert syslog: cannot deliver " + std::to_string(batch.size()) + " alerts to " + describe_ +
                ": " + st.error().message + "; retrying (the alerts are in the audit trail and the log)");
    }
  }
}

}  // namespace pgcloak::proxy
