// Sends JSON lines from stdin to a syslog receiver through the audit trail's
// syslog sink (proxy/audit_syslog.h), the way the audit writer does. Used by
// tests/integration/test_audit_syslog.py against a real rsyslog.
//
//   audit_syslog_send --host H --port P [--tls --ca-file F] [--app-name A]
//                     [--hostname N] [--facility F] [--connect-timeout-ms MS]
//                     [--retry-ms MS] < lines
//
// Lines are collected into a batch until an empty line or end of input, then
// sent with one write() and one sync(). Like the writer, a failed batch is
// kept and sent again (every 100 ms, for at most --retry-ms; 0 = fail at
// once). After each batch it prints "sent N" (or "failed: why" on stderr
// per failed attempt) and flushes, so a test can drive it step by step.
// Exit status: 0 all sent, 1 a batch could not be sent in time, 2 usage.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "proxy/audit_syslog.h"

namespace {

int usage(const std::string& why) {
  std::cerr
      << "audit_syslog_send: " << why
      << "\nusage: audit_syslog_send --host H --port P [--tls --ca-file F] [--app-name A] [--hostname N]"
         " [--facility F] [--connect-timeout-ms MS] [--retry-ms MS] < lines\n";
  return 2;
}

bool send_batch(pgcloak::proxy::AuditSink& sink, const std::vector<std::string>& batch,
                std::chrono::milliseconds retry_for) {
  const auto give_up = std::chrono::steady_clock::now() + retry_for;
  for (;;) {
    auto st = sink.write(batch);
    if (st) st = sink.sync();
    if (st) {
      std::cout << "sent " << batch.size() << std::endl;  // flush: the test waits for it
      return true;
    }
    std::cerr << "failed: " << st.error().message << std::endl;
    if (std::chrono::steady_clock::now() >= give_up) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

int main(int argc, char** argv) {
  pgcloak::rules::AuditSyslogConfig config;
  std::chrono::milliseconds retry_for{0};
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--tls") {
      config.tls = true;
      continue;
    }
    if (i + 1 >= argc) return usage("missing value for " + std::string(arg));
    const std::string value = argv[++i];
    try {
      if (arg == "--host") {
        config.host = value;
      } else if (arg == "--port") {
        config.port = static_cast<uint16_t>(std::stoul(value));
      } else if (arg == "--ca-file") {
        config.ca_file = value;
      } else if (arg == "--app-name") {
        config.app_name = value;
      } else if (arg == "--hostname") {
        config.hostname = value;
      } else if (arg == "--facility") {
        config.facility = static_cast<unsigned>(std::stoul(value));
      } else if (arg == "--connect-timeout-ms") {
        config.connect_timeout = std::chrono::milliseconds(std::stol(value));
      } else if (arg == "--retry-ms") {
        retry_for = std::chrono::milliseconds(std::stol(value));
      } else {
        return usage("unknown option " + std::string(arg));
      }
    } catch (const std::exception&) {
      return usage("bad value for " + std::string(arg) + ": " + value);
    }
  }
  auto sink = pgcloak::proxy::make_syslog_sink(config);
  if (!sink) {
    std::cerr << "audit_syslog_send: " << sink.error().message << "\n";
    return 2;
  }
  std::vector<std::string> batch;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (!line.empty()) {
      batch.push_back(line);
      continue;
    }
    if (!batch.empty() && !send_batch(**sink, batch, retry_for)) return 1;
    batch.clear();
  }
  if (!batch.empty() && !send_batch(**sink, batch, retry_for)) return 1;
  return 0;
}
