// The syslog sink of the audit trail (docs/audit.md, "Syslog"): every audit
// line becomes one RFC 5424 message, sent over TCP with RFC 6587 octet
// counting, optionally inside TLS (RFC 5425).
//
// Delivery model. Syslog over TCP has no application-level acknowledgement
// (RFC 6587 section 3.4), so write() succeeding means "handed to the kernel"
// (or, with TLS, SSL_write completed and the ciphertext handed to the
// kernel), which is what AuditSink::sync() promises for network sinks. On
// any failure the connection is dropped and write() returns an error; the
// writer keeps the lines and re-sends them, and the next write() reconnects.
// Lines that got through before the failure are then sent again: a reader
// drops duplicates by the record's "seq". Destroying the sink closes
// gracefully: close_notify, FIN, then it waits (at most send_timeout) for
// the receiver to close its side, i.e. to have read everything.
//
// All socket I/O is non-blocking with poll() deadlines, so no call waits
// forever: connect and TLS handshake together are bounded by
// connect_timeout, and a send that makes no progress for send_timeout (a
// stalled receiver) fails. Host name resolution uses getaddrinfo(), bounded
// by the resolver's own timeouts (resolv.conf "timeout"/"attempts").
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "protocol/result.h"
#include "proxy/audit_sink.h"
#include "rules/audit_config.h"

namespace pgcloak::proxy {

// Knobs that are not (yet) configuration keys.
struct SyslogSinkOptions {
  // A send that makes no progress for this long fails: the receiver stopped
  // reading (SO_SNDTIMEO semantics, implemented with poll()).
  std::chrono::milliseconds send_timeout{10000};
  // MSGID and severity of every message (RFC 5424 sections 6.2.7, 6.2.1),
  // and the configuration section named in errors. Audit records are
  // "audit", informational; alerts (alert_syslog.h) "alert", warning.
  std::string msgid = "audit";
  unsigned severity = 6;
  std::string section = "audit.syslog";
};

// The RFC 5424 header fields (section 6) that are the same for every message
// of a sink. Fields are sent as given; make_syslog_sink() validates them.
struct SyslogHeader {
  unsigned facility = 13;
  std::string hostname;  // "-" = NILVALUE
  std::string app_name;  // "-" = NILVALUE
  std::string procid;
  unsigned severity = 6;  // informational
  std::string msgid = "audit";
};

// Appends one frame "MSG-LEN SP SYSLOG-MSG" (RFC 6587 section 3.4.1) holding
//   <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
// with PRI = facility * 8 + severity, TIMESTAMP in UTC with
// microseconds, no STRUCTURED-DATA, and msg as the MSG, without a BOM.
void append_syslog_frame(std::string& out, const SyslogHeader& header,
                         std::chrono::system_clock::time_point at, std::string_view msg);

// Validates the configuration and, with tls, loads ca_file. Does not
// connect: the first write() does (an empty write() only connects, which
// lets a caller check the receiver at start-up).
Result<std::unique_ptr<AuditSink>> make_syslog_sink(const rules::AuditSyslogConfig& config);
Result<std::unique_ptr<AuditSink>> make_syslog_sink(const rules::AuditSyslogConfig& config,
                                                    const SyslogSinkOptions& options);

}  // namespace pgcloak::proxy
