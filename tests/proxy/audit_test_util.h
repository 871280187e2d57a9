// Shared helpers of the audit tests: a temporary directory, a config that
// writes there, sinks with explicit fault injection, and file helpers.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "proxy/audit_chain.h"
#include "proxy/audit_file_sink.h"
#include "proxy/audit_log.h"
#include "proxy/audit_sink.h"

namespace pgcloak::proxy::audit_test {

// 32 bytes as hex; the initial chain key of every test.
inline const std::string initial_key_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

inline AuditKey initial_key() {
  return *AuditKey::parse(initial_key_hex);
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "pgcloak-audit-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
}

inline std::string read_plain(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Complete lines of a (possibly gzip) audit file.
inline std::vector<std::string> read_lines(const std::string& path) {
  auto content = read_audit_file(path);
  EXPECT_TRUE(content.ok()) << path;
  std::vector<std::string> out;
  if (!content) return out;
  std::istringstream ss(*content);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

inline void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  write_file(path, s);
}

inline std::vector<nlohmann::json> read_records(const std::string& path) {
  std::vector<nlohmann::json> out;
  for (const auto& l : read_lines(path)) out.push_back(nlohmann::json::parse(l));
  return out;
}

inline unsigned file_mode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 0777;
}

// The configuration of a test: strict, a key file with the initial key,
// the active file in `dir`, no rotation unless asked.
inline rules::AuditConfig test_config(const TempDir& dir) {
  rules::AuditConfig c;
  c.enabled = true;
  c.durability = rules::AuditDurability::strict;
  c.flush_interval = std::chrono::milliseconds(5);
  c.key_file = dir / "audit.key";
  c.file.path = dir / "audit.jsonl";
  c.file.rotate_size = 0;
  c.file.rotate_age = std::chrono::milliseconds(0);
  c.file.compress = rules::AuditCompression::none;
  if (!std::filesystem::exists(c.key_file)) write_file(c.key_file, initial_key_hex + "\n");
  return c;
}

inline std::shared_ptr<const AuditSession> test_session(uint64_t id = 7) {
  auto s = std::make_shared<AuditSession>();
  s->session_id = id;
  s->client_addr = "10.1.2.3:5555";
  s->user = "analyst";
  s->database = "shop";
  s->application_name = "psql";
  s->policy = "analysts";
  s->tls = true;
  return s;
}

inline AuditEvent statement_event(uint64_t rows = 1, std::string sql = "SELECT 1") {
  AuditEvent ev;
  ev.kind = "statement";
  ev.session = test_session();
  StatementCapture st;
  st.sql = std::make_shared<const std::string>(std::move(sql));
  st.command_tag = "SELECT " + std::to_string(rows);
  st.rows = rows;
  st.bytes_to_client = 100 + rows;
  st.duration = std::chrono::microseconds(1234);
  ev.statement = std::move(st);
  return ev;
}

inline std::unique_ptr<AuditLog> open_log(const rules::AuditConfig& config,
                                          std::vector<std::unique_ptr<AuditSink>> extra = {},
                                          AuditLog::Analyzer analyzer = nullptr) {
  auto log = AuditLog::open(config, std::move(analyzer), std::move(extra));
  EXPECT_TRUE(log.ok()) << (log.ok() ? "" : log.error().message);
  if (!log) return nullptr;
  return std::move(*log);
}

// Blocks until `seq` is durable; false on done(false) or after `timeout`.
inline bool wait_durable(AuditLog& log, uint64_t seq,
                         std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
  auto p = std::make_shared<std::promise<bool>>();
  auto f = p->get_future();
  log.on_durable(seq, [p](bool ok) { p->set_value(ok); });
  if (f.wait_for(timeout) != std::future_status::ready) return false;
  return f.get();
}

inline bool eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds(10000)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

// A sink the test controls: it records what it gets, can be made to fail
// writes or syncs, and can hold sync() until released.
struct ScriptedSinkState {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::string> lines;  // accepted by write()
  size_t synced = 0;               // lines covered by the last good sync()
  uint64_t sync_calls = 0;
  uint64_t failed_calls = 0;
  bool fail_writes = false;
  bool fail_syncs = false;
  // Like a network sink whose peer went away: once a sync failed, syncs
  // keep failing until the next write() (which would reconnect).
  bool sticky_sync_failure = false;
  bool sync_broken = false;
  bool hold_sync = false;
  bool in_sync = false;

  void set(bool ScriptedSinkState::*flag, bool value) {
    {
      std::lock_guard lk(mu);
      this->*flag = value;
    }
    cv.notify_all();
  }
};

class ScriptedSink final : public AuditSink {
 public:
  explicit ScriptedSink(std::shared_ptr<ScriptedSinkState> state) : state_(std::move(state)) {}
  Status write(std::span<const std::string> lines) override {
    std::lock_guard lk(state_->mu);
    if (state_->fail_writes) {
      ++state_->failed_calls;
      return Error::make(sqlstate::internal_error, "injected write failure (disk full)");
    }
    state_->lines.insert(state_->lines.end(), lines.begin(), lines.end());
    state_->sync_broken = false;
    return ok_status();
  }
  Status sync() override {
    std::unique_lock lk(state_->mu);
    state_->in_sync = true;
    state_->cv.notify_all();
    state_->cv.wait(lk, [&] { return !state_->hold_sync; });
    state_->in_sync = false;
    ++state_->sync_calls;
    if (state_->fail_syncs || state_->sync_broken) {
      ++state_->failed_calls;
      if (state_->sticky_sync_failure) state_->sync_broken = true;
      return Error::make(sqlstate::internal_error, "injected sync failure");
    }
    state_->synced = state_->lines.size();
    return ok_status();
  }
  std::string describe() const override { return "scripted sink"; }

 private:
  std::shared_ptr<ScriptedSinkState> state_;
};

inline std::vector<std::unique_ptr<AuditSink>> sinks_of(std::shared_ptr<ScriptedSinkState> state) {
  std::vector<std::unique_ptr<AuditSink>> v;
  v.push_back(std::make_unique<ScriptedSink>(std::move(state)));
  return v;
}

// All audit files of a test directory: rotated ones oldest first, then
// the active file.
inline std::vector<std::string> all_files(const rules::AuditConfig& c) {
  std::vector<std::string> out;
  for (const auto& f : list_rotated_audit_files(c.file.path)) out.push_back(f.path);
  if (std::filesystem::exists(c.file.path)) out.push_back(c.file.path);
  return out;
}

}  // namespace pgcloak::proxy::audit_test
