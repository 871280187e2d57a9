// The audit writer thread (docs/audit.md). Relay threads only enqueue;
// this thread owns everything else: JSON encoding, the MAC chain, the
// sinks, rotation and housekeeping. Nothing here blocks a relay thread for
// longer than one push_back under a mutex.
#include "proxy/audit_log.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "proxy/audit_chain.h"
#include "proxy/audit_file_sink.h"
#include "proxy/audit_stdout_sink.h"
#include "proxy/log.h"

namespace pgcloak::proxy {

namespace {

using Clock = std::chrono::steady_clock;
using SysClock = std::chrono::system_clock;
using OrderedJson = nlohmann::ordered_json;

// A failing sink is retried this often.
constexpr auto retry_interval = std::chrono::seconds(1);
// close() keeps retrying a failing sink this long before it gives up (and
// says which records are lost).
constexpr auto close_timeout = std::chrono::seconds(5);
// batched: records are written (not yet fsynced) at most this late, so a
// crash of pgcloak alone (not of the machine) loses almost nothing.
constexpr auto batched_write_delay = std::chrono::milliseconds(10);
// batched: this many queued records wake the writer at once.
constexpr size_t batched_wake_threshold = 4096;
// A repeated failure of the same sink is logged at most this often.
constexpr auto failure_log_interval = std::chrono::seconds(10);

// Fields the writer sets itself; a detail or analysis field of the same
// name is written as detail_<name> instead of replacing it.
bool reserved_field(std::string_view name) {
  return name == "v" || name == "seq" || name == "ts" || name == "kind" || name == "mac";
}

void put(OrderedJson& j, const std::string& key, OrderedJson value) {
  std::string k = key;
  while (reserved_field(k) || j.contains(k)) k = "detail_" + k;
  j[k] = std::move(value);
}

// Appends s as a JSON string. Printable ASCII without quotes or
// backslashes (names, tags, most identifiers) is copied as is; anything else
// goes through nlohmann's serializer, which escapes it and replaces invalid
// UTF-8 (a client may send any bytes as application_name) with U+FFFD.
void append_json_string(std::string& out, std::string_view s) {
  bool plain = true;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      plain = false;
      break;
    }
  }
  if (plain) {
    out += '"';
    out.append(s);
    out += '"';
    return;
  }
  out += nlohmann::json(std::string(s)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void append_member(std::string& out, std::string_view key, std::string_view value) {
  out += ",\"";
  out.append(key);
  out += "\":";
  append_json_string(out, value);
}

void append_member(std::string& out, std::string_view key, uint64_t value) {
  out += ",\"";
  out.append(key);
  out += "\":";
  out += std::to_string(value);
}

void merge(OrderedJson& j, const nlohmann::json& fields, const char* name_if_not_object) {
  if (fields.is_null()) return;
  if (!fields.is_object()) {
    put(j, name_if_not_object, OrderedJson(fields));
    return;
  }
  for (const auto& [k, v] : fields.items()) put(j, k, OrderedJson(v));
}

std::string_view to_string(rules::AuditDurability d) {
  return d == rules::AuditDurability::strict ? "strict" : "batched";
}

std::string_view to_string(rules::AuditOnFailure f) {
  return f == rules::AuditOnFailure::block ? "block" : "fail_closed";
}

struct Queued {
  uint64_t seq = 0;
  AuditEvent event;
  Clock::time_point submitted;
};

// Bookkeeping of one built line; the text is in AuditLogImpl::lines_ (kept
// contiguous so a run of lines can be handed to a sink as one span).
struct LineMeta {
  uint64_t seq = 0;
  Clock::time_point submitted;
  bool starts_file = false;  // the header of a new file: the file sink rotates before it
  uint64_t epoch = 0;        // starts_file: the new file's key epoch
};

struct SinkSlot {
  std::unique_ptr<AuditSink> sink;
  AuditFileSink* file = nullptr;  // set for the file sink
  size_t written = 0;             // lines_[0, written) are written to this sink
  size_t synced = 0;              // lines_[0, synced) are durable in it
  bool failing = false;
  std::string last_error;
  Clock::time_point last_logged;
};

class AuditLogImpl final : public AuditLog {
 public:
  AuditLogImpl(const rules::AuditConfig& config, Analyzer analyzer)
      : config_(config),
        analyzer_(std::move(analyzer)),
        strict_(config.durability == rules::AuditDurability::strict) {}

  ~AuditLogImpl() override { close(); }
  AuditLogImpl(const AuditLogImpl&) = delete;
  AuditLogImpl& operator=(const AuditLogImpl&) = delete;

  void add_sink(std::unique_ptr<AuditSink> sink, AuditFileSink* file) {
    SinkSlot slot;
    slot.sink = std::move(sink);
    slot.file = file;
    if (file != nullptr) file_ = file;
    sinks_.push_back(std::move(slot));
  }
  bool has_sinks() const { return !sinks_.empty(); }

  // Recovers the chain, writes the opening records into the pending lines
  // and starts the writer thread.
  Status start(AuditKey key);

  uint64_t submit(AuditEvent event) override;
  bool accepting() const override;
  void on_durable(uint64_t seq, std::function<void(bool)> done) override;
  uint64_t durable_seq() const override { return durable_seq_.load(std::memory_order_acquire); }
  AuditStats stats() const override;
  void close() override;

 private:
  // --- writer thread ---
  void run();
  void loop();
  Clock::time_point writer_deadline(Clock::time_point now) const;
  bool rotation_wanted() const;
  std::string build_record(const Queued& q);
  // Statement records, the bulk of the trail, are built as text directly:
  // the same fields in the same order as build_record, without a JSON
  // tree per record (measured: the tree cost more than the rest of the
  // writer together).
  std::string build_statement_record(const Queued& q);
  const std::string& session_fragment(const std::shared_ptr<const AuditSession>& s);
  std::string seal(const OrderedJson& j);
  void append_line(uint64_t seq, std::string text, Clock::time_point submitted, bool starts_file = false,
                   uint64_t epoch = 0);
  void append_header(uint64_t seq, const std::string& prev_file, bool rotation);
  void flush(bool sync);
  Status advance(SinkSlot& slot);
  Status sync_slot(SinkSlot& slot);
  void note_failure(SinkSlot& slot, const Error& e);
  void settle();
  void store_key_if_due();
  void finish();
  void fire_waiters(uint64_t upto, bool ok, bool all);

  const rules::AuditConfig config_;
  const Analyzer analyzer_;
  const bool strict_;
  // Writer thread: the session fields of recent sessions as JSON text,
  // keyed by the (kept alive) session object.
  std::unordered_map<const AuditSession*, std::pair<std::shared_ptr<const AuditSession>, std::string>>
      session_fragments_;

  // --- shared with submitting threads, under mu_ ---
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Queued> queue_;
  uint64_t next_seq_ = 1;
  bool stopping_ = false;
  bool closed_ = false;    // no more records are written
  bool finished_ = false;  // the writer thread has ended
  std::multimap<uint64_t, std::function<void(bool)>> waiters_;

  std::atomic<uint64_t> last_assigned_{0};
  std::atomic<uint64_t> durable_seq_{0};
  std::atomic<bool> healthy_{true};
  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<uint64_t> syncs_{0};
  std::atomic<int64_t> last_latency_us_{0};

  std::mutex close_mu_;
  std::thread writer_;

  // --- writer thread only (and start() before the thread exists) ---
  std::vector<SinkSlot> sinks_;
  AuditFileSink* file_ = nullptr;
  AuditKey key_;
  uint64_t key_file_epoch_ = 0;  // the epoch the key file holds
  bool key_store_failed_ = false;
  AuditMac prev_mac_{};
  std::vector<std::string> lines_;  // built, not yet durable in every sink
  std::vector<LineMeta> meta_;
  bool rotation_pending_ = false;  // a header for a new file is in lines_
  bool round_failed_ = false;
  Clock::time_point retry_at_;
  Clock::time_point last_queue_warning_;
};

// --- opening --------------------------------------------------------------------

Status AuditLogImpl::start(AuditKey key) {
  const auto now = SysClock::now();
  key_file_epoch_ = key.epoch();
  AuditTail tail;
  if (file_ != nullptr) {
    auto t = recover_audit_tail(file_->path(), key);
    if (!t) return Error::make(t.error().sqlstate, "audit: " + t.error().message, Severity::fatal);
    tail = std::move(*t);
  }
  bool new_file = true;
  if (file_ != nullptr && tail.in_active) {
    if (auto st = file_->resume(tail); !st) {
      return Error::make(st.error().sqlstate, "audit: " + st.error().message, Severity::fatal);
    }
    if (key.ratchet_to(tail.file_epoch)) {
      new_file = false;
    } else {
      // The key file is already past this file's epoch (it was restored or
      // replaced by hand): records cannot be appended under the old key, so
      // the file is rotated away and a new one starts at the key's epoch.
      log::warn("audit: the key is at epoch " + std::to_string(key.epoch()) + " but " + file_->path() +
                " is at epoch " + std::to_string(tail.file_epoch) +
                "; starting a new file (its last records were not verified)");
    }
  }
  key_ = key;
  prev_mac_ = tail.found ? tail.last_mac : AuditMac{};
  next_seq_ = tail.last_seq + 1;
  durable_seq_.store(tail.last_seq);

  if (new_file) {
    const uint64_t epoch = tail.found ? std::max(key_.epoch(), tail.file_epoch + 1) : key_.epoch();
    key_.ratchet_to(epoch);
    const uint64_t header_seq = next_seq_++;
    std::string prev_file;
    if (tail.found) prev_file = tail.in_active ? file_->rotated_name(tail.file_epoch) : tail.file;
    if (file_ != nullptr) {
      if (auto st = file_->start_file(epoch, header_seq, now); !st) {
        return Error::make(st.error().sqlstate, "audit: " + st.error().message, Severity::fatal);
      }
    }
    append_header(header_seq, prev_file, false);
  }
  // The key file moves forward with the newest file: a key stolen from it
  // later cannot recompute any earlier epoch's MACs.
  if (!config_.key_file.empty() && key_.epoch() != key_file_epoch_) {
    if (auto st = store_audit_key(config_.key_file, key_); !st) {
      return Error::make(sqlstate::config_file_error, "audit: cannot update key_file: " + st.error().message,
                         Severity::fatal);
    }
    key_file_epoch_ = key_.epoch();
  }

  const bool crash = tail.found && tail.last_kind != audit_kind::audit_stopped;
  if (crash) {
    log::warn(
        "audit: the previous run ended without audit_stopped (a crash or kill); the chain continues after "
        "seq " +
        std::to_string(tail.last_seq) + " in " + tail.file);
  }
  if (tail.truncated_bytes > 0) {
    log::warn("audit: cut " + std::to_string(tail.truncated_bytes) +
              " bytes of torn or unverifiable records from the end of " +
              (file_ != nullptr ? file_->path() : std::string("the audit file")) +
              (tail.discarded_file.empty() ? std::string()
                                           : " (" + std::to_string(tail.discarded_lines) +
                                                 " complete lines saved to " + tail.discarded_file + ")"));
  }
  OrderedJson j;
  j["v"] = audit_record_version;
  j["seq"] = next_seq_;
  j["ts"] = format_audit_ts(SysClock::now());
  j["kind"] = audit_kind::audit_started;
  j["epoch"] = key_.epoch();
  j["durability"] = to_string(config_.durability);
  j["on_failure"] = to_string(config_.on_failure);
  j["key_source"] = config_.key_file.empty() ? "env" : "file";
  OrderedJson sinks = OrderedJson::array();
  for (const auto& s : sinks_) sinks.push_back(s.sink->describe());
  j["sinks"] = std::move(sinks);
  j["previous_run"] = !tail.found ? "none" : crash ? "crash" : "clean";
  j["crash_detected"] = crash;
  j["last_intact_seq"] = tail.last_seq;
  if (tail.found) j["last_intact_file"] = tail.file;
  j["truncated_bytes"] = tail.truncated_bytes;
  if (tail.discarded_lines > 0) {
    j["discarded_lines"] = tail.discarded_lines;
    j["discarded_file"] = base_of(tail.discarded_file);
  }
  const uint64_t started_seq = next_seq_++;
  append_line(started_seq, seal(j), Clock::now());
  last_assigned_.store(started_seq);

  if (file_ != nullptr) file_->schedule_housekeeping();
  writer_ = std::thread([this] { run(); });
  return ok_status();
}

// --- the relay side ---------------------------------------------------------------

uint64_t AuditLogImpl::submit(AuditEvent event) {
  uint64_t seq = 0;
  bool wake = false;
  {
    std::lock_guard lk(mu_);
    seq = next_seq_++;
    if (closed_) {
      log::error("audit: record " + std::to_string(seq) + " (" + event.kind +
                 ") submitted after the audit log was closed; it is not written");
      return seq;
    }
    last_assigned_.store(seq, std::memory_order_release);
    wake = strict_ || queue_.empty() || queue_.size() + 1 >= batched_wake_threshold;
    queue_.push_back({seq, std::move(event), Clock::now()});
  }
  if (wake) cv_.notify_one();
  return seq;
}

bool AuditLogImpl::accepting() const {
  if (!healthy_.load(std::memory_order_acquire)) return false;
  const uint64_t outstanding =
      last_assigned_.load(std::memory_order_acquire) - durable_seq_.load(std::memory_order_acquire);
  return outstanding <= config_.queue_limit;
}

void AuditLogImpl::on_durable(uint64_t seq, std::function<void(bool)> done) {
  bool ok = false;
  {
    std::lock_guard lk(mu_);
    if (seq <= durable_seq_.load(std::memory_order_acquire)) {
      ok = true;
    } else if (!finished_) {
      waiters_.emplace(seq, std::move(done));
      return;
    }
  }
  // Decided already: answered on the caller's thread, outside the lock.
  done(ok);
}

AuditStats AuditLogImpl::stats() const {
  AuditStats s;
  const uint64_t durable = durable_seq_.load(std::memory_order_acquire);
  const uint64_t assigned = last_assigned_.load(std::memory_order_acquire);
  s.queued = assigned > durable ? assigned - durable : 0;
  s.written = written_.load();
  s.durable_seq = durable;
  s.failures = failures_.load();
  s.syncs = syncs_.load();
  s.last_write_latency = std::chrono::microseconds(last_latency_us_.load());
  s.healthy = healthy_.load();
  return s;
}

void AuditLogImpl::close() {
  std::lock_guard close_lk(close_mu_);
  if (writer_.joinable()) {
    bool open = false;
    {
      std::lock_guard lk(mu_);
      open = !closed_;
    }
    // The closing record is the last one; the writer drains the queue,
    // makes everything durable and returns.
    if (open) {
      AuditEvent stopped;
      stopped.kind = audit_kind::audit_stopped;
      (void)submit(std::move(stopped));
    }
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
      closed_ = true;
    }
    cv_.notify_one();
    writer_.join();
  }
  {
    std::lock_guard lk(mu_);
    closed_ = true;
    finished_ = true;
  }
  fire_waiters(0, false, true);
}

// --- the writer thread --------------------------------------------------------------

void AuditLogImpl::run() {
  try {
    loop();
  } catch (const std::exception& e) {
    // Nothing more can be written: say so loudly and refuse statements.
    healthy_.store(false);
    log::error(std::string("audit: the writer thread failed: ") + e.what() +
               "; no further records are written and new statements are refused");
    std::lock_guard lk(mu_);
    closed_ = true;
  }
}

Clock::time_point AuditLogImpl::writer_deadline(Clock::time_point now) const {
  Clock::time_point d = now + std::chrono::seconds(1);
  if (!healthy_.load()) return std::min(d, retry_at_);
  if (!meta_.empty()) d = std::min(d, meta_.front().submitted + config_.flush_interval);
  if (file_ != nullptr) {
    // Rotate right after the batch that filled the file, not when the next
    // record happens to arrive.
    if (rotation_wanted() || file_->housekeeping_pending()) return now;
    if (auto age = file_->age_deadline()) {
      d = std::min(d, now + std::chrono::duration_cast<Clock::duration>(*age - SysClock::now()));
    }
  }
  if (key_store_failed_) d = std::min(d, retry_at_);
  return d;
}

bool AuditLogImpl::rotation_wanted() const {
  return file_ != nullptr && !rotation_pending_ && healthy_.load() && file_->rotation_due(SysClock::now());
}

void AuditLogImpl::loop() {
  for (;;) {
    std::vector<Queued> batch;
    bool stop = false;
    uint64_t header_seq = 0;
    {
      std::unique_lock lk(mu_);
      for (;;) {
        if (stopping_) break;
        const auto now = Clock::now();
        auto deadline = writer_deadline(now);
        if (!queue_.empty() && healthy_.load()) {
          if (strict_ || queue_.size() >= batched_wake_threshold) break;
          deadline = std::min(deadline, queue_.front().submitted + batched_write_delay);
        }
        if (deadline <= now) break;
        cv_.wait_until(lk, deadline);
      }
      batch.swap(queue_);
      stop = stopping_;
      // The header of the next file takes the next seq while the lock is
      // held: every record before it is in this batch or an earlier one, so
      // it goes to the old file, and every later one to the new file.
      if (!stop && rotation_wanted()) {
        header_seq = next_seq_++;
        last_assigned_.store(header_seq, std::memory_order_release);
      }
    }
    for (auto& q : batch) append_line(q.seq, build_record(q), q.submitted);
    if (header_seq != 0) append_header(header_seq, file_->rotated_name(file_->epoch()), true);

    const auto now = Clock::now();
    if (healthy_.load() || now >= retry_at_) {
      const bool sync_due = !meta_.empty() && meta_.front().submitted + config_.flush_interval <= now;
      flush(strict_ || stop || !healthy_.load() || sync_due);
    }
    if (key_store_failed_ && Clock::now() >= retry_at_) store_key_if_due();
    const uint64_t outstanding = last_assigned_.load() - durable_seq_.load();
    if (outstanding > config_.queue_limit && Clock::now() - last_queue_warning_ > failure_log_interval) {
      last_queue_warning_ = Clock::now();
      log::warn("audit: " + std::to_string(outstanding) + " records wait for the audit writer (queue_limit " +
                std::to_string(config_.queue_limit) + "); new statements are " +
                (config_.on_failure == rules::AuditOnFailure::block ? "held" : "refused"));
    }
    if (stop) {
      finish();
      return;
    }
    if (healthy_.load() && file_ != nullptr && file_->housekeeping_pending()) file_->housekeeping_step();
  }
}

std::string AuditLogImpl::seal(const OrderedJson& j) {
  // Invalid UTF-8 (a client may send any bytes as application_name) is
  // replaced rather than thrown on: the record must still be written.
  std::string canonical = j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
  canonical.pop_back();  // the closing brace: the MAC field goes before it
  const AuditMac mac = audit_mac(key_, prev_mac_, canonical);
  prev_mac_ = mac;
  return seal_audit_line(std::move(canonical), mac);
}

const std::string& AuditLogImpl::session_fragment(const std::shared_ptr<const AuditSession>& s) {
  constexpr size_t max_sessions = 4096;
  if (auto it = session_fragments_.find(s.get()); it != session_fragments_.end()) return it->second.second;
  if (session_fragments_.size() >= max_sessions) session_fragments_.clear();
  std::string f;
  append_member(f, "session_id", s->session_id);
  append_member(f, "client", s->client_addr);
  append_member(f, "user", s->user);
  append_member(f, "database", s->database);
  append_member(f, "application_name", s->application_name);
  append_member(f, "policy", s->policy);
  f += s->tls ? ",\"tls\":true" : ",\"tls\":false";
  return session_fragments_.emplace(s.get(), std::make_pair(s, std::move(f))).first->second.second;
}

std::string AuditLogImpl::build_statement_record(const Queued& q) {
  const AuditEvent& ev = q.event;
  const StatementCapture& st = *ev.statement;
  std::string line;
  line.reserve(768);
  line += "{\"v\":";
  line += std::to_string(audit_record_version);
  append_member(line, "seq", q.seq);
  append_member(line, "ts", format_audit_ts(ev.at));
  append_member(line, "kind", ev.kind);
  if (ev.session) line += session_fragment(ev.session);
  append_member(line, "protocol", st.extended ? "extended" : "simple");
  if (st.extended) {
    append_member(line, "statement_name", st.statement_name);
    append_member(line, "portal_name", st.portal_name);
  }
  append_member(line, "command_tag", st.command_tag);
  append_member(line, "rows", st.rows);
  append_member(line, "bytes", st.bytes_to_client);
  append_member(line, "duration_us", static_cast<uint64_t>(std::max<int64_t>(st.duration.count(), 0)));
  if (!st.sqlstate.empty()) append_member(line, "sqlstate", st.sqlstate);
  append_member(line, "decision", st.decision);
  append_member(line, "rule", st.rule);
  // st.parameters (bind values) are customer data and are never written
  // here, not even in part: sealing them (AES-256-GCM, log_parameters)
  // happens in the analyzer, which returns only the sealed form.
  if (analyzer_) {
    try {
      std::string fields = analyzer_(st);
      if (!fields.empty()) {
        line += ',';
        line += fields;
      }
    } catch (const std::exception& e) {
      append_member(line, "analysis_error", e.what());
    }
  }
  // The canonical form is the line without its closing brace (audit_chain.h).
  const AuditMac mac = audit_mac(key_, prev_mac_, line);
  prev_mac_ = mac;
  return seal_audit_line(std::move(line), mac);
}

std::string AuditLogImpl::build_record(const Queued& q) {
  const AuditEvent& ev = q.event;
  if (ev.statement && (ev.detail.is_null() || ev.detail.empty())) {
    try {
      return build_statement_record(q);
    } catch (const std::exception&) {
      // Fall through: the general path below writes what it can.
    }
  }
  OrderedJson j;
  j["v"] = audit_record_version;
  j["seq"] = q.seq;
  j["ts"] = format_audit_ts(ev.at);
  j["kind"] = ev.kind;
  try {
    if (ev.session) {
      const AuditSession& s = *ev.session;
      j["session_id"] = s.session_id;
      j["client"] = s.client_addr;
      j["user"] = s.user;
      j["database"] = s.database;
      j["application_name"] = s.application_name;
      j["policy"] = s.policy;
      j["tls"] = s.tls;
    }
    merge(j, ev.detail, "detail");
    if (ev.statement) {
      const StatementCapture& st = *ev.statement;
      put(j, "protocol", st.extended ? "extended" : "simple");
      if (st.extended) {
        put(j, "statement_name", st.statement_name);
        put(j, "portal_name", st.portal_name);
      }
      put(j, "command_tag", st.command_tag);
      put(j, "rows", st.rows);
      put(j, "bytes", st.bytes_to_client);
      put(j, "duration_us", st.duration.count());
      if (!st.sqlstate.empty()) put(j, "sqlstate", st.sqlstate);
      put(j, "decision", st.decision);
      put(j, "rule", st.rule);
      // st.parameters (bind values) are customer data and are never written
      // here, not even in part: sealing them (AES-256-GCM, log_parameters)
      // happens in the analyzer, which returns only the sealed form.
      if (analyzer_) {
        try {
          const std::string fields = analyzer_(st);
          if (!fields.empty()) merge(j, nlohmann::json::parse("{" + fields + "}"), "analysis");
        } catch (const std::exception& e) {
          put(j, "analysis_error", e.what());
        }
      }
    }
    return seal(j);
  } catch (const std::exception& e) {
    // The record is still written, with what is known, so the chain has no
    // hole and the failure is visible in the trail itself.
    OrderedJson fallback;
    fallback["v"] = audit_record_version;
    fallback["seq"] = q.seq;
    fallback["ts"] = format_audit_ts(ev.at);
    fallback["kind"] = ev.kind;
    fallback["build_error"] = e.what();
    return seal(fallback);
  }
}

void AuditLogImpl::append_line(uint64_t seq, std::string text, Clock::time_point submitted, bool starts_file,
                               uint64_t epoch) {
  lines_.push_back(std::move(text));
  meta_.push_back({seq, submitted, starts_file, epoch});
}

void AuditLogImpl::append_header(uint64_t seq, const std::string& prev_file, bool rotation) {
  // The header is chained from the previous file's last record under the
  // new epoch's key. At a rotation the key is ratcheted here, which wipes
  // the old one; start() has already moved the key to the new epoch.
  const AuditMac prev = prev_mac_;
  if (rotation) key_.ratchet();
  OrderedJson j;
  j["v"] = audit_record_version;
  j["seq"] = seq;
  j["ts"] = format_audit_ts(SysClock::now());
  j["kind"] = audit_kind::audit_file;
  j["epoch"] = key_.epoch();
  j["first_seq"] = seq;
  j["prev_file"] = prev_file.empty() ? OrderedJson(nullptr) : OrderedJson(prev_file);
  j["prev_seq"] = seq - 1;
  j["prev_mac"] = to_hex(prev);
  append_line(seq, seal(j), Clock::now(), true, key_.epoch());
  if (rotation) rotation_pending_ = true;
}

void AuditLogImpl::flush(bool sync) {
  round_failed_ = false;
  for (auto& slot : sinks_) {
    if (auto st = advance(slot); !st) note_failure(slot, st.error());
  }
  if (sync) {
    bool synced_any = false;
    for (auto& slot : sinks_) {
      if (slot.synced >= slot.written) continue;
      synced_any = true;
      if (auto st = sync_slot(slot); !st) note_failure(slot, st.error());
    }
    if (synced_any) syncs_.fetch_add(1);
  }
  const bool ok = !round_failed_;
  if (ok) {
    for (auto& slot : sinks_) {
      if (slot.failing && slot.written == lines_.size()) {
        slot.failing = false;
        log::info("audit: " + slot.sink->describe() + " recovered; the records kept in memory are written");
      }
    }
  }
  healthy_.store(ok, std::memory_order_release);
  if (!ok) retry_at_ = Clock::now() + retry_interval;
  settle();
}

Status AuditLogImpl::sync_slot(SinkSlot& slot) {
  if (auto st = slot.sink->sync(); !st) {
    // What was written since the last good sync is not known to be there
    // (the file sink cut it; a network sink's peer went away): write it
    // again. This also makes the next retry call write(), which is what
    // reconnects a network sink; without new records (statements held by
    // on_failure: block) nothing else would.
    slot.written = slot.synced;
    return st;
  }
  slot.synced = slot.written;
  return ok_status();
}

Status AuditLogImpl::advance(SinkSlot& slot) {
  while (slot.written < lines_.size()) {
    size_t end = lines_.size();
    if (slot.file != nullptr) {
      const LineMeta& m = meta_[slot.written];
      if (m.starts_file && (!slot.file->is_open() || slot.file->first_seq() != m.seq)) {
        // Everything before the header belongs to the old file and must be
        // durable there before the file is renamed.
        if (slot.synced < slot.written) {
          if (auto st = sync_slot(slot); !st) return st;
        }
        if (auto st = slot.file->start_file(m.epoch, m.seq, SysClock::now()); !st) return st;
      }
      end = slot.written + 1;
      while (end < lines_.size() && !meta_[end].starts_file) ++end;
    }
    const bool header_segment = slot.file != nullptr && meta_[slot.written].starts_file;
    if (auto st =
            slot.sink->write(std::span<const std::string>(lines_.data() + slot.written, end - slot.written));
        !st) {
      return st;
    }
    slot.written = end;
    if (header_segment && rotation_pending_) {
      rotation_pending_ = false;
      store_key_if_due();
      slot.file->schedule_housekeeping();
    }
  }
  return ok_status();
}

void AuditLogImpl::store_key_if_due() {
  key_store_failed_ = false;
  if (config_.key_file.empty() || file_ == nullptr || key_file_epoch_ == file_->epoch()) return;
  // Only the key of the file being written goes to disk; the in-memory key
  // may already be one epoch further if a header is waiting.
  if (key_.epoch() != file_->epoch()) return;
  if (auto st = store_audit_key(config_.key_file, key_); !st) {
    key_store_failed_ = true;
    failures_.fetch_add(1);
    retry_at_ = Clock::now() + retry_interval;
    log::error("audit: cannot ratchet the key file: " + st.error().message +
               " (records are still written and chained; retrying)");
    return;
  }
  key_file_epoch_ = key_.epoch();
}

void AuditLogImpl::note_failure(SinkSlot& slot, const Error& e) {
  round_failed_ = true;
  failures_.fetch_add(1);
  const auto now = Clock::now();
  if (!slot.failing || slot.last_error != e.message || now - slot.last_logged > failure_log_interval) {
    slot.last_logged = now;
    log::error("audit: " + slot.sink->describe() + " failed: " + e.message + "; " +
               std::to_string(lines_.size() - std::min(slot.synced, lines_.size())) +
               " records kept in memory and retried every second; new statements are " +
               (config_.on_failure == rules::AuditOnFailure::block ? "held" : "refused") +
               " until it recovers");
  }
  slot.failing = true;
  slot.last_error = e.message;
}

void AuditLogImpl::settle() {
  size_t n = lines_.size();
  for (const auto& slot : sinks_) n = std::min(n, slot.synced);
  if (n == 0) return;
  Clock::time_point oldest = meta_.front().submitted;
  for (size_t i = 0; i < n; ++i) oldest = std::min(oldest, meta_[i].submitted);
  const uint64_t upto = meta_[n - 1].seq;
  lines_.erase(lines_.begin(), lines_.begin() + static_cast<std::ptrdiff_t>(n));
  meta_.erase(meta_.begin(), meta_.begin() + static_cast<std::ptrdiff_t>(n));
  for (auto& slot : sinks_) {
    slot.written -= n;
    slot.synced -= n;
  }
  written_.fetch_add(n);
  last_latency_us_.store(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - oldest).count());
  fire_waiters(upto, true, false);
}

void AuditLogImpl::fire_waiters(uint64_t upto, bool ok, bool all) {
  std::vector<std::function<void(bool)>> ready;
  {
    std::lock_guard lk(mu_);
    if (ok) durable_seq_.store(upto, std::memory_order_release);
    auto end = all ? waiters_.end() : waiters_.upper_bound(upto);
    for (auto it = waiters_.begin(); it != end; ++it) ready.push_back(std::move(it->second));
    waiters_.erase(waiters_.begin(), end);
  }
  for (auto& done : ready) done(ok);
}

void AuditLogImpl::finish() {
  const auto give_up = Clock::now() + close_timeout;
  while (!lines_.empty() && Clock::now() < give_up) {
    std::this_thread::sleep_until(std::min(retry_at_, give_up));
    flush(true);
  }
  if (!lines_.empty()) {
    std::string why;
    for (const auto& s : sinks_) {
      if (s.failing) why += (why.empty() ? "" : "; ") + s.sink->describe() + ": " + s.last_error;
    }
    log::error("audit: closing with " + std::to_string(lines_.size()) + " records (seq " +
               std::to_string(meta_.front().seq) + ".." + std::to_string(meta_.back().seq) +
               ") not durable in every sink: " + why);
  }
}

}  // namespace

Result<std::unique_ptr<AuditLog>> AuditLog::open(const rules::AuditConfig& config, Analyzer analyzer) {
  std::vector<std::unique_ptr<AuditSink>> extra_sinks;
  // ---- Extra sinks from the configuration go here. ----
  // The syslog sink (proxy/audit_syslog.h) is added when configured:
  //   if (config.syslog.enabled()) {
  //     auto s = make_syslog_sink(config.syslog);
  //     if (!s) return s.error();
  //     extra_sinks.push_back(std::move(*s));
  //   }
  return open(config, std::move(analyzer), std::move(extra_sinks));
}

Result<std::unique_ptr<AuditLog>> AuditLog::open(const rules::AuditConfig& config, Analyzer analyzer,
                                                 std::vector<std::unique_ptr<AuditSink>> extra_sinks) {
  if (!config.enabled) {
    return Error::make(sqlstate::config_file_error, "audit: the audit section is not enabled",
                       Severity::fatal);
  }
  auto key = load_audit_key(config.key_file, config.key_env);
  if (!key) return key.error();
  auto log = std::make_unique<AuditLogImpl>(config, std::move(analyzer));
  if (!config.file.path.empty()) {
    auto file = std::make_unique<AuditFileSink>(config.file);
    AuditFileSink* raw = file.get();
    log->add_sink(std::move(file), raw);
  }
  if (config.stdout_sink) log->add_sink(std::make_unique<AuditStdoutSink>(), nullptr);
  for (auto& s : extra_sinks) {
    if (s) log->add_sink(std::move(s), nullptr);
  }
  if (!log->has_sinks()) {
    return Error::make(sqlstate::config_file_error,
                       "audit: no sink configured: set audit.file.path, audit.stdout or audit.syslog.host",
                       Severity::fatal);
  }
  if (auto st = log->start(*key); !st) return st.error();
  return std::unique_ptr<AuditLog>(std::move(log));
}

}  // namespace pgcloak::proxy
