// The syslog sink of exfiltration alerts (docs/detection.md, "Alerts and
// actions in the proxy"): each alert as one RFC 5424 message, MSGID
// "alert", severity warning, its JSON (names, counts and limits, never data)
// as MSG, over TCP with octet counting or TLS (the audit trail's syslog
// transport, audit_syslog.h). Separate from the audit trail's own syslog
// sink, so alerts reach a SIEM or the local rsyslog even when the audit
// trail goes only to files.
//
// Relay threads must never wait for a syslog receiver: send() only queues
// (bounded by queue_limit; an alert beyond it is counted as dropped and is
// still in the audit trail and the log). One thread delivers, reconnecting
// with backoff while the receiver is away and re-sending what a failed
// write may not have delivered (a receiver drops duplicates by the alert's
// time, user and rule).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "protocol/result.h"
#include "proxy/audit_sink.h"
#include "proxy/audit_syslog.h"
#include "rules/audit_config.h"

namespace pgcloak::proxy {

class AlertSyslog {
 public:
  // Validates the target (as detection.syslog) and starts the delivery
  // thread; connecting happens on the first alert.
  static Result<std::unique_ptr<AlertSyslog>> open(const rules::AuditSyslogConfig& config,
                                                   uint64_t queue_limit, SyslogSinkOptions options = {});
  ~AlertSyslog();
  AlertSyslog(const AlertSyslog&) = delete;
  AlertSyslog& operator=(const AlertSyslog&) = delete;

  // Thread-safe, never blocks. False = the queue is full and the alert was
  // dropped (counted).
  bool send(std::string message);
  // Delivers what is queued for at most `drain`, then stops the thread.
  void stop(std::chrono::milliseconds drain);

  uint64_t delivered() const { return delivered_.load(); }
  uint64_t dropped() const { return dropped_.load(); }
  std::string describe() const { return describe_; }

 private:
  AlertSyslog(std::unique_ptr<AuditSink> sink, uint64_t queue_limit);
  void run();

  std::unique_ptr<AuditSink> sink_;
  std::string describe_;
  uint64_t queue_limit_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  size_t in_flight_ = 0;  // taken by the thread, not yet delivered
  bool stopping_ = false;
  std::chrono::steady_clock::time_point drain_until_{};
  std::atomic<uint64_t> delivered_{0};
  std::atomic<uint64_t> dropped_{0};
  std::thread thread_;
};

}  // namespace pgcloak::proxy
