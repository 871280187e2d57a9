// Delivers security alerts (suspected data exfiltration, ...) to an HTTP(S)
// webhook: each alert is POSTed as JSON, either as given or in Slack's
// incoming-webhook shape.
//
// Delivery model. submit() only queues (bounded, never blocks); one worker
// coroutine on the sink's own thread and io_context delivers the queue in
// order over one kept-alive connection, reconnecting when it is closed.
// An alert is delivered on a 2xx answer. Connect and TLS errors, timeouts,
// 5xx, 408 and 429 are retried with exponential backoff and jitter (429 and
// 503 honour Retry-After in seconds), up to max_attempts; other answers
// (4xx: a wrong URL or token) are not retried, since sending the same
// request again cannot fix them. A failing alert delays the ones behind it,
// at most by max_attempts attempts. Delivery is at least once: an attempt
// that timed out may have been processed, and is sent again.
//
// This is a notification channel, not a record: every alert also goes to
// the audit trail, which loses nothing. So a full queue drops (and counts)
// alerts instead of slowing the detectors down.
//
// What is never logged: the URL's path and query (a Slack webhook URL is a
// credential: the secret is in the path), the bearer token, and the alert
// payloads. Failures are logged as warnings, at most one line per 10 s.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "protocol/result.h"

namespace pgcloak::proxy {

struct WebhookOptions {
  // http:// or https:// host[:port]/path[?query]. Plain http only for
  // loopback hosts (127.0.0.0/8, ::1, "localhost"): alerts name users and
  // relations, and a token may go with them.
  std::string url;
  // Slack-compatible payload: {"text": ..., "blocks": [...]} (slack_payload).
  bool slack = false;
  // PEM file of CAs to trust for https; empty = the system trust store.
  std::string ca_file;
  // Optional: sent as "Authorization: Bearer <token>".
  std::string bearer_token;
  // One attempt as a whole (resolve, connect, TLS handshake, request,
  // response) must complete within this.
  std::chrono::milliseconds timeout{5000};
  size_t queue_limit = 1000;  // alerts waiting, the one being delivered included
  unsigned max_attempts = 6;  // per alert, the first one included
  std::chrono::milliseconds initial_backoff{500};
  std::chrono::milliseconds max_backoff{30000};  // also caps Retry-After
};

struct WebhookStats {
  uint64_t queued = 0;           // waiting now, the one being delivered included
  uint64_t delivered = 0;        // got a 2xx
  uint64_t failed_attempts = 0;  // attempts that did not get a 2xx
  uint64_t abandoned = 0;        // given up: max_attempts reached, or an answer that is not retried
  uint64_t dropped = 0;          // refused by submit() (queue full, stopped), or still queued at stop()
  std::string last_error;        // the last failed attempt's reason; empty if none yet
};

// The Slack payload for an alert: "text" (the notification) is the
// summary; a section repeats it after "*pgcloak alert*:", and a second
// section has one mrkdwn field per alert key present among user, client,
// relation, category, observed, baseline, rule, action. All text is
// escaped with slack_escape(), so a user or relation name cannot mention
// (<!channel>) or link (<https://...|...>); long texts are cut to Slack's
// limits (3000 characters per section, 2000 per field).
nlohmann::json slack_payload(const nlohmann::json& alert, std::string_view summary);
// &, < and > as &amp;, &lt; and &gt;: the only escaping Slack's mrkdwn has.
std::string slack_escape(std::string_view text);

struct AlertWebhookState;  // alert_webhook.cc; shared with the worker thread

class AlertWebhook {
 public:
  // Validates the options (URL, limits, ca_file), then starts the sink's
  // thread. Does not connect: the first alert does.
  static Result<std::unique_ptr<AlertWebhook>> start(WebhookOptions options);
  // stop(0): what has not been delivered yet is dropped.
  ~AlertWebhook();
  AlertWebhook(const AlertWebhook&) = delete;
  AlertWebhook& operator=(const AlertWebhook&) = delete;

  // Queues an alert; thread-safe, never blocks (no I/O, no waiting for the
  // worker). False when the queue is full or the sink is stopping; the
  // alert is then counted in dropped. The alert must not contain row data;
  // summary is a one-line description (Slack's "text").
  bool submit(nlohmann::json alert, std::string summary);
  WebhookStats stats() const;
  // Delivers what it can within drain (retries and backoff included), then
  // ends the connection and joins the thread; what is left is counted as
  // dropped. Later submits return false. Idempotent, but call it from one
  // thread at a time (it joins the sink's thread).
  void stop(std::chrono::milliseconds drain);
  // "https://host:port", without the path (which may hold a secret).
  const std::string& describe() const;

 private:
  explicit AlertWebhook(std::shared_ptr<AlertWebhookState> state);
  std::shared_ptr<AlertWebhookState> state_;
};

}  // namespace pgcloak::proxy
