#include "proxy/audit_verify.h"

#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <random>

#include "tests/proxy/audit_test_util.h"

namespace pgcloak::proxy {
namespace {

using namespace audit_test;
using nlohmann::json;

// A trail of several rotated files plus the active one, closed cleanly.
class AuditVerifyTest : public ::testing::Test {
 protected:
  void SetUp() override { make_trail(rules::AuditCompression::none); }

  void make_trail(rules::AuditCompression compress) {
    config_ = test_config(dir_);
    config_.file.rotate_size = 1000;
    config_.file.compress = compress;
    auto log = open_log(config_);
    ASSERT_TRUE(log);
    for (int round = 0; round < 8; ++round) {
      uint64_t last = 0;
      for (int i = 0; i < 5; ++i) last = log->submit(statement_event(static_cast<uint64_t>(i)));
      ASSERT_TRUE(wait_durable(*log, last));
    }
    if (compress != rules::AuditCompression::none) {
      ASSERT_TRUE(eventually([&] {
        auto files = list_rotated_audit_files(config_.file.path);
        return std::all_of(files.begin(), files.end(), [](const auto& f) { return f.compressed; });
      }));
    }
    log->close();
    files_ = all_files(config_);
    ASSERT_GE(files_.size(), 4U) << "the fixture needs rotated files";
  }

  AuditVerifyReport verify(AuditVerifyOptions options = {}) const {
    return verify_audit_files(files_, initial_key(), options);
  }

  // Expects exactly this first problem.
  void expect_problem(const AuditVerifyReport& r, AuditProblemKind kind, const std::string& file,
                      uint64_t line) {
    ASSERT_FALSE(r.ok()) << "tampering went undetected";
    EXPECT_EQ(r.problem->kind, kind) << r.format();
    EXPECT_EQ(r.problem->file, file) << r.format();
    EXPECT_EQ(r.problem->line, line) << r.format();
  }

  TempDir dir_;
  rules::AuditConfig config_;
  std::vector<std::string> files_;  // oldest first; the active file last
};

TEST_F(AuditVerifyTest, AnIntactTrailVerifiesInAnyOrder) {
  auto r = verify({.expect_stopped = true});
  ASSERT_TRUE(r.ok()) << r.format();
  uint64_t lines = 0;
  for (const auto& f : files_) lines += read_lines(f).size();
  EXPECT_EQ(r.records, lines);
  EXPECT_EQ(r.files, files_.size());
  EXPECT_EQ(r.first_seq, 1U);
  EXPECT_EQ(r.last_seq, lines);
  EXPECT_TRUE(r.notes.empty());
  EXPECT_EQ(r.format(), "OK: " + std::to_string(lines) + " records in " + std::to_string(files_.size()) +
                            " files verified, seq 1.." + std::to_string(lines) + "\n");

  std::mt19937 rng(7);
  std::shuffle(files_.begin(), files_.end(), rng);
  EXPECT_TRUE(verify().ok());
}

TEST_F(AuditVerifyTest, EditingAByteIsAModifiedRecord) {
  auto lines = read_lines(files_[1]);
  ASSERT_GT(lines.size(), 5U);
  auto at = lines[4].find("\"analyst\"");
  ASSERT_NE(at, std::string::npos);
  lines[4][at + 1] = 'A';  // "Analyst"
  write_lines(files_[1], lines);
  expect_problem(verify(), AuditProblemKind::modified_record, files_[1], 5);
}

TEST_F(AuditVerifyTest, EditingTheMacOrTheSeqIsAModifiedRecord) {
  auto lines = read_lines(files_[2]);
  std::string& mac_line = lines[2];
  char& c = mac_line[mac_line.size() - 3];  // the last hex digit of the MAC
  c = c == '0' ? '1' : '0';
  write_lines(files_[2], lines);
  expect_problem(verify(), AuditProblemKind::modified_record, files_[2], 3);

  lines = read_lines(files_[1]);
  const uint64_t seq = json::parse(lines[3])["seq"];
  const std::string from = "\"seq\":" + std::to_string(seq) + ",";
  lines[3].replace(lines[3].find(from), from.size(), "\"seq\":" + std::to_string(seq + 50) + ",");
  write_lines(files_[1], lines);
  expect_problem(verify(), AuditProblemKind::modified_record, files_[1], 4);
}

TEST_F(AuditVerifyTest, DeletingALineIsDeletedRecords) {
  auto lines = read_lines(files_[1]);
  lines.erase(lines.begin() + 3);
  write_lines(files_[1], lines);
  auto r = verify();
  expect_problem(r, AuditProblemKind::deleted_records, files_[1], 4);
  EXPECT_NE(r.problem->message.find("was deleted"), std::string::npos) << r.format();
}

TEST_F(AuditVerifyTest, SwappingTwoLinesIsReorderedRecords) {
  auto lines = read_lines(files_[2]);
  std::swap(lines[2], lines[3]);
  write_lines(files_[2], lines);
  auto r = verify();
  expect_problem(r, AuditProblemKind::reordered_records, files_[2], 3);
  EXPECT_NE(r.problem->message.find("at line 4"), std::string::npos) << r.format();
}

TEST_F(AuditVerifyTest, TruncatingARotatedFileMidLine) {
  std::string content = read_plain(files_[1]);
  const size_t lines = read_lines(files_[1]).size();
  content.resize(content.size() - 20);  // into the last record
  write_file(files_[1], content);
  auto r = verify();
  expect_problem(r, AuditProblemKind::truncated_file, files_[1], lines);
  EXPECT_EQ(r.problem->message.find("crash"), std::string::npos)
      << "a rotated file is complete: no crash excuse";
}

TEST_F(AuditVerifyTest, TruncatingARotatedFileAtALineBoundary) {
  auto lines = read_lines(files_[1]);
  lines.resize(lines.size() - 2);
  write_lines(files_[1], lines);
  auto r = verify();
  // Only the next file's header can tell: it names the last seq.
  expect_problem(r, AuditProblemKind::truncated_file, files_[1], lines.size() + 1);
  EXPECT_NE(r.problem->message.find("were cut off"), std::string::npos) << r.format();
}

TEST_F(AuditVerifyTest, DeletingARotatedFileIsAMissingFile) {
  const std::string gone = files_[2];
  std::filesystem::remove(gone);
  files_.erase(files_.begin() + 2);
  auto r = verify();
  expect_problem(r, AuditProblemKind::missing_file, files_[2], 1);
  EXPECT_NE(r.problem->message.find(base_of(gone)), std::string::npos) << r.format();
  // Also when the missing file is passed but cannot be read.
  files_.insert(files_.begin() + 2, gone);
  expect_problem(verify(), AuditProblemKind::unreadable_file, gone, 0);
}

TEST_F(AuditVerifyTest, WithoutTheOldestFilesTheChainStartsLaterWithANote) {
  files_.erase(files_.begin());
  auto r = verify();
  ASSERT_TRUE(r.ok()) << r.format();
  EXPECT_GT(r.first_seq, 1U);
  ASSERT_EQ(r.notes.size(), 1U);
  EXPECT_NE(r.notes[0].find("audit.jsonl.0, which was not given"), std::string::npos) << r.notes[0];
}

TEST_F(AuditVerifyTest, ATornTailOfTheNewestFileIsReportedAsPossiblyACrash) {
  const std::string active = files_.back();
  const size_t lines = read_lines(active).size();
  std::string content = read_plain(active);
  content += R"({"v":1,"seq":99999,"ts":"2024)";
  write_file(active, content);
  auto r = verify();
  expect_problem(r, AuditProblemKind::truncated_file, active, lines + 1);
  EXPECT_NE(r.problem->message.find("crash"), std::string::npos) << r.format();
  EXPECT_NE(r.problem->message.find("audit_stopped"), std::string::npos) << r.format();
}

TEST_F(AuditVerifyTest, CuttingTheNewestFileAtALineBoundaryNeedsExpectStopped) {
  const std::string active = files_.back();
  auto lines = read_lines(active);
  lines.pop_back();  // audit_stopped
  write_lines(active, lines);
  auto r = verify();
  ASSERT_TRUE(r.ok()) << r.format();
  ASSERT_EQ(r.notes.size(), 1U);
  EXPECT_NE(r.notes[0].find("not audit_stopped"), std::string::npos) << r.notes[0];
  expect_problem(verify({.expect_stopped = true}), AuditProblemKind::not_stopped, active, lines.size() + 1);
}

TEST_F(AuditVerifyTest, GarbageIsBadJson) {
  auto lines = read_lines(files_[0]);
  lines[3] = "this is not json";
  write_lines(files_[0], lines);
  expect_problem(verify(), AuditProblemKind::bad_json, files_[0], 4);

  lines[3] = R"({"v":1,"seq":4,"kind":"x","mac":"00"})";
  write_lines(files_[0], lines);
  expect_problem(verify(), AuditProblemKind::bad_json, files_[0], 4);
}

TEST_F(AuditVerifyTest, ARemovedHeaderIsABadRecord) {
  auto lines = read_lines(files_[1]);
  lines.erase(lines.begin());
  write_lines(files_[1], lines);
  expect_problem(verify(), AuditProblemKind::bad_record, files_[1], 1);
}

TEST_F(AuditVerifyTest, TheWrongKeyFailsAtTheFirstHeader) {
  auto other = AuditKey::parse(std::string(64, 'a'));
  ASSERT_TRUE(other.ok());
  auto r = verify_audit_files(files_, *other);
  expect_problem(r, AuditProblemKind::modified_record, files_[0], 1);
  EXPECT_NE(r.problem->message.find("key is wrong"), std::string::npos) << r.format();

  AuditKey later = initial_key();
  later.ratchet();
  expect_problem(verify_audit_files(files_, later), AuditProblemKind::wrong_key, files_[0], 1);
  // A later key still verifies the later files alone.
  std::vector<std::string> tail(files_.begin() + 1, files_.end());
  EXPECT_TRUE(verify_audit_files(tail, later).ok());
}

TEST_F(AuditVerifyTest, FilesOutsideTheChainAreSkippedWithANote) {
  write_file(dir_ / "audit.jsonl.9.gz.tmp", "partial");
  write_file(dir_ / "audit.jsonl.9.zst.tmp", "partial");
  write_file(dir_ / "audit.jsonl.discarded-12-1700000000", "{\"v\":1}\n");
  files_.push_back(dir_ / "audit.jsonl.9.gz.tmp");
  files_.push_back(dir_ / "audit.jsonl.9.zst.tmp");
  files_.push_back(dir_ / "audit.jsonl.discarded-12-1700000000");
  auto r = verify();
  ASSERT_TRUE(r.ok()) << r.format();
  EXPECT_EQ(r.notes.size(), 3U) << r.format();
}

TEST_F(AuditVerifyTest, TheSameFileTwiceIsADuplicate) {
  files_.push_back(files_[1]);
  EXPECT_EQ(verify().problem->kind, AuditProblemKind::duplicate_file);
}

TEST_F(AuditVerifyTest, EmptyFileIsTruncated) {
  write_file(files_[1], "");
  expect_problem(verify(), AuditProblemKind::truncated_file, files_[1], 1);
}

// Rewrites a compressed file with new content, in the same format, with
// the libraries' one-shot APIs (not pgcloak's streaming code).
void recompress(const std::string& path, const std::string& content, rules::AuditCompression format) {
  std::string out;
  if (format == rules::AuditCompression::zstd) {
    out.resize(ZSTD_compressBound(content.size()));
    const size_t n = ZSTD_compress(out.data(), out.size(), content.data(), content.size(), 3);
    ASSERT_FALSE(ZSTD_isError(n));
    out.resize(n);
    write_file(path, out);
    return;
  }
  gzFile gz = gzopen(path.c_str(), "wb");
  ASSERT_NE(gz, nullptr);
  ASSERT_EQ(gzwrite(gz, content.data(), static_cast<unsigned>(content.size())),
            static_cast<int>(content.size()));
  ASSERT_EQ(gzclose(gz), Z_OK);
}

class AuditVerifyCompressedTest : public AuditVerifyTest,
                                  public ::testing::WithParamInterface<rules::AuditCompression> {
 protected:
  void SetUp() override { make_trail(GetParam()); }
  std::string suffix() const { return GetParam() == rules::AuditCompression::zstd ? ".zst" : ".gz"; }
};

INSTANTIATE_TEST_SUITE_P(Formats, AuditVerifyCompressedTest,
                         ::testing::Values(rules::AuditCompression::zstd, rules::AuditCompression::gzip),
                         [](const auto& p) {
                           return p.param == rules::AuditCompression::zstd ? "zstd" : "gzip";
                         });

TEST_P(AuditVerifyCompressedTest, CompressedFilesAreReadTransparently) {
  ASSERT_TRUE(files_[0].ends_with(suffix())) << files_[0];
  auto r = verify({.expect_stopped = true});
  EXPECT_TRUE(r.ok()) << r.format();
}

TEST_P(AuditVerifyCompressedTest, TheFilesAreStandardStreams) {
  // Decoded by the library's one-shot API, independently of pgcloak's reader.
  const std::string raw = read_plain(files_[0]);
  std::string plain;
  if (GetParam() == rules::AuditCompression::zstd) {
    const auto size = ZSTD_getFrameContentSize(raw.data(), raw.size());
    ASSERT_NE(size, ZSTD_CONTENTSIZE_ERROR);
    // A streamed frame does not record its size: decode into a generous buffer.
    plain.resize(size == ZSTD_CONTENTSIZE_UNKNOWN ? raw.size() * 64 : size);
    const size_t n = ZSTD_decompress(plain.data(), plain.size(), raw.data(), raw.size());
    ASSERT_FALSE(ZSTD_isError(n)) << ZSTD_getErrorName(n);
    plain.resize(n);
  } else {
    z_stream z{};
    ASSERT_EQ(inflateInit2(&z, 16 + MAX_WBITS), Z_OK);
    plain.resize(raw.size() * 64);
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
    z.avail_in = static_cast<uInt>(raw.size());
    z.next_out = reinterpret_cast<Bytef*>(plain.data());
    z.avail_out = static_cast<uInt>(plain.size());
    ASSERT_EQ(inflate(&z, Z_FINISH), Z_STREAM_END);
    plain.resize(z.total_out);
    inflateEnd(&z);
  }
  EXPECT_EQ(plain, *read_audit_file(files_[0]));
  EXPECT_TRUE(plain.starts_with("{\"v\":1,\"seq\":")) << plain.substr(0, 40);
}

TEST_P(AuditVerifyCompressedTest, TamperingInsideACompressedFileIsFound) {
  std::string content = *read_audit_file(files_[1]);
  const auto at = content.find("\"shop\"");
  ASSERT_NE(at, std::string::npos);
  const size_t line = static_cast<size_t>(std::count(content.begin(), content.begin() + at, '\n')) + 1;
  content[at + 1] = 'S';
  recompress(files_[1], content, GetParam());
  expect_problem(verify(), AuditProblemKind::modified_record, files_[1], line);
}

TEST_P(AuditVerifyCompressedTest, ACutCompressedFileIsATruncatedFile) {
  std::string raw = read_plain(files_[1]);
  raw.resize(raw.size() / 2);
  write_file(files_[1], raw);
  auto r = verify();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.problem->kind, AuditProblemKind::truncated_file) << r.format();
  EXPECT_EQ(r.problem->file, files_[1]);
}

TEST_P(AuditVerifyCompressedTest, ADamagedByteInACompressedFileIsFound) {
  // In the middle of the data: the zstd frame checksum or gzip's CRC (or the
  // decoder itself) rejects it, or the records' MACs do.
  std::string raw = read_plain(files_[1]);
  raw[raw.size() / 2] = static_cast<char>(raw[raw.size() / 2] ^ 0x20);
  write_file(files_[1], raw);
  auto r = verify();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.problem->file, files_[1]) << r.format();
}

}  // namespace
}  // namespace pgcloak::proxy
