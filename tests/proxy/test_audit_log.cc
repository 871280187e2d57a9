#include "proxy/audit_log.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <regex>
#include <set>

#include "proxy/audit_stdout_sink.h"
#include "proxy/audit_verify.h"
#include "tests/proxy/audit_test_util.h"

namespace pgcloak::proxy {
namespace {

using namespace audit_test;
using nlohmann::json;

AuditVerifyReport verify_all(const rules::AuditConfig& c, AuditVerifyOptions options = {}) {
  return verify_audit_files(all_files(c), initial_key(), options);
}

// Sets a file's modification time `days` days into the past.
void age_file(const std::string& path, int days) {
  const auto when = std::chrono::system_clock::now() - std::chrono::hours(24) * days;
  timespec ts{};
  ts.tv_sec = std::chrono::system_clock::to_time_t(when);
  const timespec times[2] = {ts, ts};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

TEST(AuditLogTest, RecordsRoundTripWithEveryField) {
  TempDir dir;
  auto c = test_config(dir);
  auto analyzer = [](const StatementCapture& st) {
    // Analysis fields are appended as JSON members.
    return std::string(R"("fingerprint":"f00d","normalized":)") +
           (st.extended ? R"("SELECT $1")" : R"("SELECT 1")");
  };
  auto log = open_log(c, {}, analyzer);
  ASSERT_TRUE(log);

  AuditEvent opened;
  opened.kind = "connection_opened";
  opened.session = test_session(42);
  opened.detail = {{"listener", "127.0.0.1:6432"}};
  const uint64_t s1 = log->submit(std::move(opened));

  AuditEvent failed = statement_event(0, "SELECT secret FROM t WHERE card = '4111111111111111'");
  failed.statement->extended = true;
  failed.statement->statement_name = "s1";
  failed.statement->portal_name = "p1";
  failed.statement->sqlstate = "42501";
  failed.statement->decision = "denied";
  failed.statement->rule = "deny:customers.card";
  failed.statement->parameters = std::vector<std::optional<std::string>>{"jane@example.com", std::nullopt};
  const uint64_t s2 = log->submit(std::move(failed));

  AuditEvent plain = statement_event(3);
  const uint64_t s3 = log->submit(std::move(plain));

  AuditEvent reload;
  reload.kind = "config_reload";
  reload.detail = {{"result", "applied"}};
  const uint64_t s4 = log->submit(std::move(reload));
  EXPECT_EQ(s2, s1 + 1);
  EXPECT_EQ(s3, s2 + 1);
  EXPECT_EQ(s4, s3 + 1);
  ASSERT_TRUE(wait_durable(*log, s4));
  EXPECT_GE(log->durable_seq(), s4);
  log->close();

  const auto lines = read_lines(c.file.path);
  ASSERT_EQ(lines.size(), 7U);  // audit_file, audit_started, 4 events, audit_stopped
  const std::regex mac_last(R"(.*,"mac":"[0-9a-f]{64}"\}$)");
  const std::regex ts_re(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$)");
  std::vector<json> r;
  for (const auto& l : lines) {
    EXPECT_TRUE(std::regex_match(l, mac_last)) << l;
    EXPECT_EQ(l.rfind("{\"v\":1,\"seq\":", 0), 0U) << l;  // schema version first, then seq
    r.push_back(json::parse(l));
  }
  for (size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i]["seq"], i + 1);
    EXPECT_TRUE(std::regex_match(r[i]["ts"].get<std::string>(), ts_re)) << r[i]["ts"];
  }
  EXPECT_EQ(r[0]["kind"], "audit_file");
  EXPECT_EQ(r[0]["epoch"], 0);
  EXPECT_EQ(r[0]["first_seq"], 1);
  EXPECT_TRUE(r[0]["prev_file"].is_null());
  EXPECT_EQ(r[0]["prev_seq"], 0);
  EXPECT_EQ(r[0]["prev_mac"], std::string(64, '0'));
  EXPECT_EQ(r[1]["kind"], "audit_started");
  EXPECT_EQ(r[1]["previous_run"], "none");
  EXPECT_EQ(r[1]["crash_detected"], false);
  EXPECT_EQ(r[1]["durability"], "strict");

  EXPECT_EQ(r[2]["kind"], "connection_opened");
  EXPECT_EQ(r[2]["session_id"], 42);
  EXPECT_EQ(r[2]["client"], "10.1.2.3:5555");
  EXPECT_EQ(r[2]["user"], "analyst");
  EXPECT_EQ(r[2]["database"], "shop");
  EXPECT_EQ(r[2]["application_name"], "psql");
  EXPECT_EQ(r[2]["policy"], "analysts");
  EXPECT_EQ(r[2]["tls"], true);
  EXPECT_EQ(r[2]["listener"], "127.0.0.1:6432");  // detail merged in

  const json& st = r[3];
  EXPECT_EQ(st["kind"], "statement");
  EXPECT_EQ(st["protocol"], "extended");
  EXPECT_EQ(st["statement_name"], "s1");
  EXPECT_EQ(st["portal_name"], "p1");
  EXPECT_EQ(st["command_tag"], "SELECT 0");
  EXPECT_EQ(st["rows"], 0);
  EXPECT_EQ(st["bytes"], 100);
  EXPECT_EQ(st["duration_us"], 1234);
  EXPECT_EQ(st["sqlstate"], "42501");
  EXPECT_EQ(st["decision"], "denied");
  EXPECT_EQ(st["rule"], "deny:customers.card");
  EXPECT_EQ(st["fingerprint"], "f00d");
  EXPECT_EQ(st["normalized"], "SELECT $1");
  EXPECT_EQ(st["seq"], 4);
  EXPECT_FALSE(st.contains("parameters"));

  EXPECT_EQ(r[4]["protocol"], "simple");
  EXPECT_FALSE(r[4].contains("statement_name"));
  EXPECT_FALSE(r[4].contains("sqlstate"));  // only when the statement failed
  EXPECT_EQ(r[4]["decision"], "allowed");
  EXPECT_EQ(r[5]["kind"], "config_reload");
  EXPECT_FALSE(r[5].contains("session_id"));  // no session attached
  EXPECT_EQ(r[6]["kind"], "audit_stopped");

  // Neither the SQL text nor the bind values reach the file.
  const std::string all = read_plain(c.file.path);
  EXPECT_EQ(all.find("4111111111111111"), std::string::npos);
  EXPECT_EQ(all.find("jane@example.com"), std::string::npos);
  EXPECT_EQ(all.find("secret"), std::string::npos);

  EXPECT_EQ(file_mode(c.file.path), 0600U);
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
  EXPECT_EQ(report.records, 7U);
}

TEST(AuditLogTest, InvalidUtf8AndHostileDetailStillGiveOneValidLine) {
  TempDir dir;
  auto c = test_config(dir);
  auto log = open_log(c);
  ASSERT_TRUE(log);
  AuditEvent ev;
  ev.kind = "auth";
  auto s = std::make_shared<AuditSession>(*test_session());
  s->application_name = std::string("bad\xff\xfe utf8\nnewline");
  ev.session = s;
  ev.detail = {{"mac", "forged"}, {"kind", "forged"}, {"result", "failed"}};
  ASSERT_TRUE(wait_durable(*log, log->submit(std::move(ev))));
  log->close();
  const auto r = read_records(c.file.path);
  ASSERT_EQ(r.size(), 4U);
  EXPECT_EQ(r[2]["kind"], "auth");
  EXPECT_EQ(r[2]["detail_kind"], "forged");
  EXPECT_EQ(r[2]["detail_mac"], "forged");
  EXPECT_NE(r[2]["mac"], "forged");
  EXPECT_NE(r[2]["application_name"].get<std::string>().find("newline"), std::string::npos);
  EXPECT_TRUE(verify_all(c).ok()) << verify_all(c).format();
}

TEST(AuditLogTest, SeqAndChainContinueAfterReopen) {
  TempDir dir;
  auto c = test_config(dir);
  uint64_t last = 0;
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    for (int i = 0; i < 3; ++i) last = log->submit(statement_event());
    log->close();
  }
  auto log = open_log(c);
  ASSERT_TRUE(log);
  const uint64_t next = log->submit(statement_event());
  // last+1 was audit_stopped, last+2 the new audit_started.
  EXPECT_EQ(next, last + 3);
  log->close();
  const auto r = read_records(c.file.path);
  ASSERT_EQ(r.size(), 9U);  // one file, continued: no second header
  EXPECT_EQ(r[6]["kind"], "audit_started");
  EXPECT_EQ(r[6]["previous_run"], "clean");
  EXPECT_EQ(r[6]["crash_detected"], false);
  EXPECT_EQ(r[6]["last_intact_seq"], last + 1);
  EXPECT_EQ(r[7]["seq"], next);
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
  EXPECT_EQ(report.last_seq, next + 1);
}

TEST(AuditLogTest, CrashRecoveryCutsATornLastLine) {
  TempDir dir;
  auto c = test_config(dir);
  uint64_t last = 0;
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    for (int i = 0; i < 5; ++i) last = log->submit(statement_event());
    log->close();
  }
  // What a kill in the middle of a write leaves: no audit_stopped, and half
  // a record at the end.
  auto lines = read_lines(c.file.path);
  lines.pop_back();
  write_lines(c.file.path, lines);
  const std::string torn = R"({"v":1,"seq":)" + std::to_string(last + 1) + R"(,"ts":"2024-01-0)";
  {
    std::ofstream f(c.file.path, std::ios::app | std::ios::binary);
    f << torn;
  }
  EXPECT_EQ(verify_all(c).problem->kind, AuditProblemKind::truncated_file);

  auto log = open_log(c);
  ASSERT_TRUE(log);
  const uint64_t next = log->submit(statement_event());
  EXPECT_EQ(next, last + 2);  // the torn record's seq is reused by audit_started
  log->close();
  const auto r = read_records(c.file.path);
  const json& started = r[r.size() - 3];
  EXPECT_EQ(started["kind"], "audit_started");
  EXPECT_EQ(started["seq"], last + 1);
  EXPECT_EQ(started["previous_run"], "crash");
  EXPECT_EQ(started["crash_detected"], true);
  EXPECT_EQ(started["last_intact_seq"], last);
  EXPECT_EQ(started["truncated_bytes"], torn.size());
  EXPECT_FALSE(started.contains("discarded_lines"));
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
}

TEST(AuditLogTest, RecoveryKeepsUnverifiableCompleteLinesAsEvidence) {
  TempDir dir;
  auto c = test_config(dir);
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    log->submit(statement_event());
    log->close();
  }
  // A complete last line whose MAC does not chain (an edited audit_stopped).
  auto lines = read_lines(c.file.path);
  std::string forged = lines.back();
  forged.replace(forged.find("audit_stopped"), 13, "audit_stoppeX");
  lines.back() = forged;
  write_lines(c.file.path, lines);

  auto log = open_log(c);
  ASSERT_TRUE(log);
  log->close();
  const auto r = read_records(c.file.path);
  const json& started = r[3];
  EXPECT_EQ(started["kind"], "audit_started");
  EXPECT_EQ(started["crash_detected"], true);  // the intact chain ends without audit_stopped
  EXPECT_EQ(started["discarded_lines"], 1);
  const std::string saved = dir / started["discarded_file"].get<std::string>();
  EXPECT_EQ(read_plain(saved), forged + "\n");
  EXPECT_EQ(file_mode(saved), 0600U);
  EXPECT_TRUE(verify_all(c).ok()) << verify_all(c).format();
}

TEST(AuditLogTest, KeyErrorsAreClear) {
  TempDir dir;
  auto c = test_config(dir);
  c.key_file = dir / "missing.key";
  auto missing = AuditLog::open(c, nullptr);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("cannot read audit.key_file"), std::string::npos)
      << missing.error().message;

  c.key_file.clear();
  auto none = AuditLog::open(c, nullptr);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("a chain key is required"), std::string::npos) << none.error().message;

  c.key_file = dir / "short.key";
  write_file(c.key_file, "abcd\n");
  auto bad = AuditLog::open(c, nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("64 hex digits"), std::string::npos) << bad.error().message;
  EXPECT_EQ(bad.error().message.find("abcd"), std::string::npos);  // never echo key material

  c.key_file.clear();
  c.key_env = "PGCLOAK_TEST_AUDIT_KEY_UNSET";
  ::unsetenv(c.key_env.c_str());
  auto unset = AuditLog::open(c, nullptr);
  ASSERT_FALSE(unset.ok());
  EXPECT_NE(unset.error().message.find("is not set"), std::string::npos) << unset.error().message;
}

TEST(AuditLogTest, AWrongKeyRefusesToContinueTheChain) {
  TempDir dir;
  auto c = test_config(dir);
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    log->close();
  }
  write_file(c.key_file, std::string(64, 'e') + "\n");
  auto log = AuditLog::open(c, nullptr);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.error().message.find("does not verify with the configured audit key"), std::string::npos)
      << log.error().message;
}

TEST(AuditLogTest, OpenFailsClearlyWhenTheDirectoryIsMissing) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.path = dir / "no/such/dir/audit.jsonl";
  auto log = AuditLog::open(c, nullptr);
  ASSERT_FALSE(log.ok());
  EXPECT_NE(log.error().message.find("cannot create " + c.file.path), std::string::npos)
      << log.error().message;
}

// Runs `chunks` rounds of `per_chunk` statements, each round made durable
// before the next. The writer decides to rotate between batches; records
// queued at that moment still go to the old file, so a file ends up holding
// one or two rounds.
uint64_t run_rounds(AuditLog& log, int chunks, int per_chunk) {
  uint64_t last = 0;
  for (int i = 0; i < chunks; ++i) {
    for (int j = 0; j < per_chunk; ++j) last = log.submit(statement_event(static_cast<uint64_t>(j)));
    EXPECT_TRUE(wait_durable(log, last));
  }
  return last;
}

TEST(AuditLogTest, RotatesBySizeRatchetsTheKeyFileAndCompresses) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.rotate_size = 1000;
  c.file.compress = rules::AuditCompression::zstd;
  auto log = open_log(c);
  ASSERT_TRUE(log);
  run_rounds(*log, 10, 4);
  // Compression runs on the writer thread after each rotation.
  ASSERT_TRUE(eventually([&] {
    auto files = list_rotated_audit_files(c.file.path);
    return files.size() >= 5 &&
           std::all_of(files.begin(), files.end(), [](const auto& f) { return f.compressed; });
  })) << "rotated files were not all compressed";
  log->close();

  const auto rotated = list_rotated_audit_files(c.file.path);
  for (size_t i = 0; i < rotated.size(); ++i) {
    EXPECT_EQ(rotated[i].epoch, i);  // audit.jsonl.<epoch>.zst, epochs 0, 1, 2, ...
    EXPECT_EQ(file_mode(rotated[i].path), 0600U) << rotated[i].path;
    // The writer may rotate once more after the wait above, just before
    // close(); that last file is compressed at the next start (see
    // schedule_housekeeping), every earlier one is compressed now.
    if (i + 1 < rotated.size()) {
      EXPECT_TRUE(rotated[i].compressed) << rotated[i].path;
    }
    if (rotated[i].compressed) {
      EXPECT_EQ(rotated[i].path, dir / ("audit.jsonl." + std::to_string(i) + ".zst"));
      EXPECT_FALSE(std::filesystem::exists(dir / ("audit.jsonl." + std::to_string(i))));
    }
  }
  // Each file starts with a header that links it to the previous one.
  const auto active = read_records(c.file.path);
  EXPECT_EQ(active[0]["kind"], "audit_file");
  EXPECT_EQ(active[0]["epoch"], rotated.size());
  EXPECT_EQ(active[0]["prev_file"], "audit.jsonl." + std::to_string(rotated.size() - 1));
  const auto prev = read_records(rotated.back().path);
  EXPECT_EQ(active[0]["prev_seq"], prev.back()["seq"]);
  EXPECT_EQ(active[0]["prev_mac"], prev.back()["mac"]);

  // The key file now holds the current epoch's key, k_n = SHA-256^n(k_0).
  auto stored = AuditKey::parse(read_plain(c.key_file));
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->epoch(), rotated.size());
  EXPECT_EQ(
      read_plain(c.key_file).rfind("pgcloak-audit-key v1 epoch=" + std::to_string(rotated.size()) + " ", 0),
      0U);
  AuditKey expected = initial_key();
  expected.ratchet_to(rotated.size());
  EXPECT_EQ(to_hex(stored->data(), 32), to_hex(expected.data(), 32));
  EXPECT_EQ(file_mode(c.key_file), 0600U);

  // The initial key verifies every epoch; the current key cannot forge or
  // check the earlier ones.
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
  EXPECT_EQ(report.files, rotated.size() + 1);
  auto with_current = verify_audit_files(all_files(c), *stored);
  ASSERT_FALSE(with_current.ok());
  EXPECT_EQ(with_current.problem->kind, AuditProblemKind::wrong_key);
}

// gzip remains for tools that read only gzip; a trail may mix both formats
// (compress changed between runs) and still verifies as one chain.
TEST(AuditLogTest, GzipCompressionAndMixedTrails) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.rotate_size = 1000;
  c.file.compress = rules::AuditCompression::gzip;
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    run_rounds(*log, 4, 4);
    ASSERT_TRUE(eventually([&] {
      auto files = list_rotated_audit_files(c.file.path);
      return files.size() >= 2 && files.front().compressed;
    }));
    log->close();
  }
  c.file.compress = rules::AuditCompression::zstd;
  auto log = open_log(c);
  ASSERT_TRUE(log);
  run_rounds(*log, 4, 4);
  ASSERT_TRUE(eventually([&] {
    auto files = list_rotated_audit_files(c.file.path);
    return std::any_of(files.begin(), files.end(), [](const auto& f) { return f.path.ends_with(".zst"); });
  }));
  log->close();
  const auto rotated = list_rotated_audit_files(c.file.path);
  EXPECT_TRUE(rotated.front().path.ends_with(".gz")) << rotated.front().path;
  EXPECT_TRUE(verify_all(c, {.expect_stopped = true}).ok()) << verify_all(c).format();
}
TEST(AuditLogTest, ReopenAfterRotationContinuesWithTheRatchetedKeyFile) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.rotate_size = 1500;
  for (int run = 0; run < 3; ++run) {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    run_rounds(*log, 3, 6);
    log->close();
  }
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
  EXPECT_GE(list_rotated_audit_files(c.file.path).size(), 4U);
}

TEST(AuditLogTest, EnvironmentKeyRatchetsInMemory) {
  TempDir dir;
  auto c = test_config(dir);
  c.key_file.clear();
  c.key_env = "PGCLOAK_TEST_AUDIT_KEY";
  ::setenv(c.key_env.c_str(), initial_key_hex.c_str(), 1);
  c.file.rotate_size = 1500;
  for (int run = 0; run < 2; ++run) {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    run_rounds(*log, 3, 6);
    log->close();
  }
  ::unsetenv(c.key_env.c_str());
  EXPECT_GE(list_rotated_audit_files(c.file.path).size(), 3U);
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
}

TEST(AuditLogTest, CrashDuringRotationContinuesFromTheRotatedFile) {
  TempDir dir;
  auto c = test_config(dir);
  uint64_t last = 0;
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    last = run_rounds(*log, 1, 4);
    log->close();
  }
  // The active file was renamed and its successor created, but the crash
  // came before the new header was complete.
  auto lines = read_lines(c.file.path);
  lines.pop_back();  // no audit_stopped: the run did not end cleanly
  write_lines(dir / "audit.jsonl.0", lines);
  write_file(c.file.path, R"({"v":1,"seq":)");
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    log->close();
  }
  const auto r = read_records(c.file.path);
  EXPECT_EQ(r[0]["epoch"], 1);
  EXPECT_EQ(r[0]["prev_file"], "audit.jsonl.0");
  EXPECT_EQ(r[0]["prev_seq"], last);
  EXPECT_EQ(r[1]["crash_detected"], true);
  EXPECT_EQ(r[1]["truncated_bytes"], 13);
  EXPECT_EQ(AuditKey::parse(read_plain(c.key_file))->epoch(), 1U);
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
}

TEST(AuditLogTest, RetentionDeletesOldRotatedFiles) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.rotate_size = 1000;
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    run_rounds(*log, 10, 4);
    log->close();
  }
  auto rotated = list_rotated_audit_files(c.file.path);
  ASSERT_GE(rotated.size(), 4U);
  // The two oldest are 40 days old, the third 20: with 30 days of
  // retention only the two go.
  age_file(rotated[0].path, 40);
  age_file(rotated[1].path, 40);
  age_file(rotated[2].path, 20);
  write_file(dir / "unrelated.jsonl.0", "not ours\n");
  age_file(dir / "unrelated.jsonl.0", 400);

  c.file.retention_days = 30;
  auto log = open_log(c);
  ASSERT_TRUE(log);
  ASSERT_TRUE(eventually([&] { return !std::filesystem::exists(rotated[1].path); }));
  log->close();
  EXPECT_FALSE(std::filesystem::exists(rotated[0].path));
  EXPECT_TRUE(std::filesystem::exists(rotated[2].path));
  EXPECT_TRUE(std::filesystem::exists(dir / "unrelated.jsonl.0"));
  // What is left still verifies; the report says where the chain begins.
  auto report = verify_all(c);
  EXPECT_TRUE(report.ok()) << report.format();
  ASSERT_FALSE(report.notes.empty());
  EXPECT_NE(report.notes[0].find("audit.jsonl.1"), std::string::npos) << report.notes[0];
}

TEST(AuditLogTest, CompressionKeepsTheRotationTimeForRetention) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.rotate_size = 1500;
  {
    auto log = open_log(c);
    ASSERT_TRUE(log);
    run_rounds(*log, 3, 6);
    log->close();
  }
  auto rotated = list_rotated_audit_files(c.file.path);
  ASSERT_GE(rotated.size(), 2U);
  age_file(rotated[0].path, 10);
  c.file.compress = rules::AuditCompression::zstd;
  auto log = open_log(c);  // compresses what the first run left uncompressed
  ASSERT_TRUE(log);
  ASSERT_TRUE(eventually([&] { return std::filesystem::exists(rotated[0].path + ".zst"); }));
  log->close();
  struct stat st {};
  ASSERT_EQ(::stat((rotated[0].path + ".zst").c_str(), &st), 0);
  const auto age =
      std::chrono::system_clock::now() - std::chrono::system_clock::from_time_t(st.st_mtim.tv_sec);
  EXPECT_GT(age, std::chrono::hours(24) * 9);
  EXPECT_TRUE(verify_all(c).ok()) << verify_all(c).format();
}

TEST(AuditLogTest, RotatesByAge) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.rotate_age = std::chrono::milliseconds(150);
  auto log = open_log(c);
  ASSERT_TRUE(log);
  ASSERT_TRUE(wait_durable(*log, log->submit(statement_event())));
  // No further records: the writer rotates on its own when the age passes.
  ASSERT_TRUE(eventually([&] { return list_rotated_audit_files(c.file.path).size() == 1; }));
  // A file holding only its header is not rotated again.
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(list_rotated_audit_files(c.file.path).size(), 1U);
  log->close();
  EXPECT_TRUE(verify_all(c, {.expect_stopped = true}).ok());
}

TEST(AuditLogTest, StrictReportsDurableOnlyAfterSync) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.path.clear();  // only the scripted sink
  auto state = std::make_shared<ScriptedSinkState>();
  state->hold_sync = true;
  auto log = open_log(c, sinks_of(state));
  ASSERT_TRUE(log);
  const uint64_t seq = log->submit(statement_event());
  std::atomic<int> fired{0};
  std::atomic<bool> covered{false};
  log->on_durable(seq, [&](bool ok) {
    std::lock_guard lk(state->mu);
    // The line of `seq` is among those the last sync covered.
    bool found = false;
    for (size_t i = 0; i < state->synced; ++i) {
      if (json::parse(state->lines[i])["seq"] == seq) found = true;
    }
    covered = found && ok;
    ++fired;
  });
  {
    std::unique_lock lk(state->mu);
    ASSERT_TRUE(state->cv.wait_for(lk, std::chrono::seconds(5), [&] { return state->in_sync; }));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(fired.load(), 0);  // written perhaps, but not synced
  EXPECT_LT(log->durable_seq(), seq);
  state->set(&ScriptedSinkState::hold_sync, false);
  ASSERT_TRUE(eventually([&] { return fired.load() == 1; }));
  EXPECT_TRUE(covered.load());

  // Already durable: answered at once, on the caller's thread.
  std::thread::id called_on;
  log->on_durable(seq, [&](bool) { called_on = std::this_thread::get_id(); });
  EXPECT_EQ(called_on, std::this_thread::get_id());

  // Never reached: done(false) at close.
  std::atomic<int> result{-1};
  log->on_durable(seq + 1000, [&](bool ok) { result = ok ? 1 : 0; });
  log->close();
  EXPECT_EQ(result.load(), 0);
}

TEST(AuditLogTest, ConcurrentSubmittersShareSyncs) {
  TempDir dir;
  auto c = test_config(dir);
  auto log = open_log(c);
  ASSERT_TRUE(log);
  constexpr int threads = 4;
  constexpr int per_thread = 300;
  std::vector<std::vector<uint64_t>> seqs(threads);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) seqs[t].push_back(log->submit(statement_event()));
    });
  }
  for (auto& t : ts) t.join();
  std::set<uint64_t> all;
  for (const auto& v : seqs) {
    EXPECT_TRUE(std::is_sorted(v.begin(), v.end()));
    all.insert(v.begin(), v.end());
  }
  EXPECT_EQ(all.size(), static_cast<size_t>(threads * per_thread));
  ASSERT_TRUE(wait_durable(*log, *all.rbegin()));
  const AuditStats stats = log->stats();
  EXPECT_GE(stats.written, static_cast<uint64_t>(threads * per_thread));
  EXPECT_EQ(stats.queued, 0U);
  EXPECT_GT(stats.syncs, 0U);
  log->close();
  const auto lines = read_lines(c.file.path);
  EXPECT_EQ(lines.size(), static_cast<size_t>(threads * per_thread + 3));
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
}

TEST(AuditLogTest, BatchedSyncsWithinTheFlushInterval) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.path.clear();
  c.durability = rules::AuditDurability::batched;
  c.flush_interval = std::chrono::milliseconds(100);
  auto state = std::make_shared<ScriptedSinkState>();
  auto log = open_log(c, sinks_of(state));
  ASSERT_TRUE(log);
  ASSERT_TRUE(wait_durable(*log, 2));  // the opening records
  uint64_t syncs_before = 0;
  {
    std::lock_guard lk(state->mu);
    syncs_before = state->sync_calls;
  }
  const auto start = std::chrono::steady_clock::now();
  uint64_t last = 0;
  for (int i = 0; i < 200; ++i) last = log->submit(statement_event());
  // Written promptly, but durable only after the next fsync round.
  ASSERT_TRUE(wait_durable(*log, last, std::chrono::milliseconds(5000)));
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, std::chrono::milliseconds(1000));
  std::lock_guard lk(state->mu);
  EXPECT_LE(state->sync_calls - syncs_before, 3U);  // 200 records, one or two group commits
  EXPECT_EQ(state->synced, state->lines.size());
}

TEST(AuditLogTest, AFailingSinkStopsAcceptingKeepsRecordsAndRecovers) {
  TempDir dir;
  auto c = test_config(dir);
  auto state = std::make_shared<ScriptedSinkState>();
  auto log = open_log(c, sinks_of(state));
  ASSERT_TRUE(log);
  ASSERT_TRUE(wait_durable(*log, 2));
  EXPECT_TRUE(log->accepting());

  state->set(&ScriptedSinkState::fail_writes, true);
  uint64_t last = 0;
  for (int i = 0; i < 10; ++i) last = log->submit(statement_event());
  std::atomic<int> durable{-1};
  log->on_durable(last, [&](bool ok) { durable = ok ? 1 : 0; });
  ASSERT_TRUE(eventually([&] { return !log->accepting(); }));
  AuditStats stats = log->stats();
  EXPECT_FALSE(stats.healthy);
  EXPECT_GE(stats.failures, 1U);
  EXPECT_GE(stats.queued, 10U);
  // Records keep coming (statements that already ran) and are kept.
  for (int i = 0; i < 5; ++i) last = log->submit(statement_event());
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));  // at least one retry
  EXPECT_EQ(durable.load(), -1);
  EXPECT_FALSE(log->accepting());
  EXPECT_GE(log->stats().failures, 2U);

  state->set(&ScriptedSinkState::fail_writes, false);
  ASSERT_TRUE(eventually([&] { return log->accepting(); }, std::chrono::seconds(5)));
  ASSERT_TRUE(wait_durable(*log, last));
  EXPECT_EQ(durable.load(), 1);
  EXPECT_TRUE(log->stats().healthy);
  log->close();

  // Both sinks hold every record exactly once, in order.
  std::vector<std::string> sink_lines;
  {
    std::lock_guard lk(state->mu);
    sink_lines = state->lines;
  }
  const auto file_lines = read_lines(c.file.path);
  EXPECT_EQ(sink_lines, file_lines);
  for (size_t i = 0; i < file_lines.size(); ++i) EXPECT_EQ(json::parse(file_lines[i])["seq"], i + 1);
  EXPECT_EQ(file_lines.size(), last + 1);
  auto report = verify_all(c, {.expect_stopped = true});
  EXPECT_TRUE(report.ok()) << report.format();
}

TEST(AuditLogTest, AFailingSyncIsRetriedToo) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.path.clear();
  auto state = std::make_shared<ScriptedSinkState>();
  auto log = open_log(c, sinks_of(state));
  ASSERT_TRUE(log);
  ASSERT_TRUE(wait_durable(*log, 2));
  state->set(&ScriptedSinkState::fail_syncs, true);
  const uint64_t seq = log->submit(statement_event());
  ASSERT_TRUE(eventually([&] { return !log->accepting(); }));
  EXPECT_LT(log->durable_seq(), seq);
  state->set(&ScriptedSinkState::fail_syncs, false);
  ASSERT_TRUE(wait_durable(*log, seq, std::chrono::milliseconds(5000)));
  EXPECT_TRUE(log->accepting());
}

// A network sink that lost its peer fails every sync until it is written
// to again (write() reconnects). With statements held (on_failure: block)
// no new record arrives to cause that write: the writer itself must write
// the unconfirmed records again, or the trail never recovers.
TEST(AuditLogTest, AStickySyncFailureRecoversWithoutNewRecords) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.path.clear();
  auto state = std::make_shared<ScriptedSinkState>();
  state->sticky_sync_failure = true;
  auto log = open_log(c, sinks_of(state));
  ASSERT_TRUE(log);
  ASSERT_TRUE(wait_durable(*log, 2));
  state->set(&ScriptedSinkState::fail_syncs, true);
  const uint64_t seq = log->submit(statement_event());
  ASSERT_TRUE(eventually([&] { return !log->accepting(); }));
  state->set(&ScriptedSinkState::fail_syncs, false);  // the peer is back; nothing new is submitted
  ASSERT_TRUE(wait_durable(*log, seq, std::chrono::milliseconds(5000)));
  EXPECT_TRUE(log->accepting());
  std::lock_guard lk(state->mu);
  EXPECT_EQ(json::parse(state->lines.back())["seq"], seq);  // written again after the failure
}

TEST(AuditLogTest, QueueLimitStopsAccepting) {
  TempDir dir;
  auto c = test_config(dir);
  c.file.path.clear();
  c.queue_limit = 5;
  auto state = std::make_shared<ScriptedSinkState>();
  auto log = open_log(c, sinks_of(state));
  ASSERT_TRUE(log);
  ASSERT_TRUE(wait_durable(*log, 2));
  state->set(&ScriptedSinkState::hold_sync, true);
  uint64_t last = 0;
  for (int i = 0; i < 10; ++i) last = log->submit(statement_event());
  EXPECT_FALSE(log->accepting());
  EXPECT_GE(log->stats().queued, 6U);
  EXPECT_TRUE(log->stats().healthy);  // slow, not failing
  state->set(&ScriptedSinkState::hold_sync, false);
  ASSERT_TRUE(wait_durable(*log, last));
  EXPECT_TRUE(log->accepting());
}

TEST(AuditLogTest, ClosingTwiceAndSubmittingAfterCloseAreSafe) {
  TempDir dir;
  auto c = test_config(dir);
  auto log = open_log(c);
  ASSERT_TRUE(log);
  log->close();
  log->close();
  const auto before = read_lines(c.file.path).size();
  (void)log->submit(statement_event());
  EXPECT_EQ(read_lines(c.file.path).size(), before);
}

TEST(AuditStdoutSinkTest, WritesLinesAndFlushes) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  AuditStdoutSink sink(f);
  const std::vector<std::string> lines{"{\"a\":1}", "{\"b\":2}"};
  ASSERT_TRUE(sink.write(lines).ok());
  ASSERT_TRUE(sink.sync().ok());
  std::rewind(f);
  char buf[64] = {};
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  EXPECT_EQ(std::string(buf, n), "{\"a\":1}\n{\"b\":2}\n");
  EXPECT_EQ(sink.describe(), "stdout");
  (void)std::fclose(f);
}

TEST(AuditChainTest, KeyFormatsAndRatchet) {
  auto bare = AuditKey::parse("  " + initial_key_hex + "\n");
  ASSERT_TRUE(bare.ok());
  EXPECT_EQ(bare->epoch(), 0U);
  AuditKey k = *bare;
  k.ratchet();
  // k_1 = SHA-256(k_0), known answer (sha256 of bytes 00..1f).
  EXPECT_EQ(to_hex(k.data(), 32), "630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd");
  auto v1 = AuditKey::parse(format_audit_key(k));
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->epoch(), 1U);
  EXPECT_EQ(to_hex(v1->data(), 32), to_hex(k.data(), 32));
  EXPECT_FALSE(k.ratchet_to(0));  // never backwards
  EXPECT_FALSE(AuditKey::parse("pgcloak-audit-key v1 epoch=x " + initial_key_hex).ok());
  EXPECT_FALSE(AuditKey::parse(initial_key_hex.substr(2)).ok());
}

TEST(AuditChainTest, TimestampsRoundTrip) {
  const auto t = std::chrono::system_clock::time_point(std::chrono::microseconds(1700000000123456LL));
  EXPECT_EQ(format_audit_ts(t), "2023-11-14T22:13:20.123456Z");
  EXPECT_EQ(parse_audit_ts("2023-11-14T22:13:20.123456Z"), t);
  EXPECT_FALSE(parse_audit_ts("2023-11-14 22:13:20Z").has_value());
  // The same second again (the cached calendar part), the next second and
  // the last second before 1970.
  using std::chrono::microseconds;
  using std::chrono::system_clock;
  EXPECT_EQ(format_audit_ts(t + microseconds(7)), "2023-11-14T22:13:20.123463Z");
  EXPECT_EQ(format_audit_ts(t + microseconds(876544)), "2023-11-14T22:13:21.000000Z");
  EXPECT_EQ(format_audit_ts(system_clock::time_point(microseconds(-1))), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(format_audit_ts(t), "2023-11-14T22:13:20.123456Z");
  for (int64_t us : {int64_t{0}, int64_t{999999}, int64_t{1000000}, int64_t{86399999999}}) {
    const auto at = system_clock::time_point(microseconds(us));
    EXPECT_EQ(parse_audit_ts(format_audit_ts(at)), at) << us;
  }
}

}  // namespace
}  // namespace pgcloak::proxy
