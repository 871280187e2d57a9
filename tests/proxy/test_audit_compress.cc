#include "proxy/audit_compress.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <random>
#include <string>

#include <gtest/gtest.h>

#include "audit_test_util.h"

namespace pgcloak::proxy {
namespace {

using audit_test::read_plain;
using audit_test::TempDir;
using audit_test::write_file;
using rules::AuditCompression;

// Audit-like text: JSON lines with varying numbers and a random hex MAC, so
// that it compresses about as real records do and is larger than the
// codecs' internal buffers.
std::string sample_records(size_t lines) {
  std::mt19937_64 rng(42);
  std::string out;
  for (size_t i = 0; i < lines; ++i) {
    out += "{\"v\":1,\"seq\":" + std::to_string(i) +
           ",\"kind\":\"statement\",\"rows\":" + std::to_string(rng() % 1000) + ",\"mac\":\"";
    for (int k = 0; k < 4; ++k) {
      char hex[17];
      std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(rng()));
      out += hex;
    }
    out += "\"}\n";
  }
  return out;
}

// Compresses `content` to `path`, handing it to the compressor in pieces
// of `piece` bytes.
void compress_to(const std::string& path, AuditCompression c, const std::string& content, size_t piece) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  auto z = AuditCompressor::open(c, fd);
  ASSERT_TRUE(z) << z.error().message;
  for (size_t at = 0; at < content.size(); at += piece) {
    ASSERT_TRUE((*z)->write(std::string_view(content).substr(at, piece)));
  }
  ASSERT_TRUE((*z)->finish());
  z->reset();
  ASSERT_EQ(::close(fd), 0);
}

// Reads a file through AuditFileReader with a buffer of `cap` bytes.
Result<std::string> read_back(const std::string& path, size_t cap) {
  auto r = AuditFileReader::open(path);
  if (!r) return r.error();
  std::string out;
  std::string buf(cap, '\0');
  for (;;) {
    auto n = (*r)->read(buf.data(), buf.size());
    if (!n) return n.error();
    if (*n == 0) return out;
    out.append(buf.data(), *n);
  }
}

class AuditCompressTest : public ::testing::TestWithParam<AuditCompression> {
 protected:
  TempDir dir_;
  std::string path_ = dir_ / "f";
};

INSTANTIATE_TEST_SUITE_P(Formats, AuditCompressTest,
                         ::testing::Values(AuditCompression::zstd, AuditCompression::gzip),
                         [](const auto& p) { return p.param == AuditCompression::zstd ? "zstd" : "gzip"; });

TEST_P(AuditCompressTest, RoundTripsWhateverTheWriteAndReadSizes) {
  const std::string content = sample_records(20000);  // ~2 MB: several codec buffers
  ASSERT_GT(content.size(), size_t{1} << 20);
  for (size_t piece : {size_t{1} << 20, size_t{4096}, size_t{7}}) {
    compress_to(path_, GetParam(), piece == 7 ? content.substr(0, 5000) : content, piece);
    const std::string want = piece == 7 ? content.substr(0, 5000) : content;
    EXPECT_LT(read_plain(path_).size(), want.size() / 2) << "not compressed (piece " << piece << ")";
    for (size_t cap : {size_t{1}, size_t{3}, size_t{65536}, size_t{1} << 21}) {
      if (cap < 4 && want.size() > 100000) continue;  // byte by byte is slow and adds nothing
      auto got = read_back(path_, cap);
      ASSERT_TRUE(got) << got.error().message;
      EXPECT_EQ(*got, want) << "piece " << piece << ", read size " << cap;
    }
  }
}

TEST_P(AuditCompressTest, AnEmptyStreamReadsAsEmpty) {
  compress_to(path_, GetParam(), "", 1);
  EXPECT_FALSE(read_plain(path_).empty());  // a header and an end, still
  auto got = read_back(path_, 4096);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(*got, "");
}

TEST_P(AuditCompressTest, AStreamCutShortAtAnyLengthIsAnError) {
  const std::string content = sample_records(3000);
  compress_to(path_, GetParam(), content, 65536);
  const std::string whole = read_plain(path_);
  // Every cut but "nothing at all" (an empty file is plain and empty).
  for (size_t keep : {size_t{1}, size_t{2}, size_t{4}, size_t{10}, whole.size() / 3, whole.size() / 2,
                      whole.size() - 9, whole.size() - 4, whole.size() - 1}) {
    write_file(path_, whole.substr(0, keep));
    auto got = read_back(path_, 65536);
    if (keep < (GetParam() == AuditCompression::zstd ? 4U : 2U)) {
      // Shorter than the magic number: read as a plain file, whose bytes
      // are not a record (verify then reports the file as damaged).
      ASSERT_TRUE(got);
      EXPECT_EQ(*got, whole.substr(0, keep));
      continue;
    }
    EXPECT_FALSE(got) << "a stream cut to " << keep << " of " << whole.size() << " bytes read as complete";
    if (keep > whole.size() / 4) {
      // Cut in its data (not its header): reported as cut short.
      auto r = AuditFileReader::open(path_);
      ASSERT_TRUE(r);
      std::string buf(65536, '\0');
      Result<size_t> n = size_t{1};
      while (n && *n > 0) n = (*r)->read(buf.data(), buf.size());
      EXPECT_FALSE(n);
      EXPECT_TRUE((*r)->cut_short()) << keep;
    }
  }
}

TEST_P(AuditCompressTest, ADamagedStreamIsAnErrorButNotCutShort) {
  compress_to(path_, GetParam(), sample_records(3000), 65536);
  std::string raw = read_plain(path_);
  // The trailer: zstd's content checksum, gzip's CRC-32 and length.
  raw[raw.size() - 2] = static_cast<char>(raw[raw.size() - 2] ^ 0x01);
  write_file(path_, raw);
  auto r = AuditFileReader::open(path_);
  ASSERT_TRUE(r);
  std::string buf(65536, '\0');
  Result<size_t> n = size_t{1};
  while (n && *n > 0) n = (*r)->read(buf.data(), buf.size());
  EXPECT_FALSE(n) << "a damaged checksum read as complete";
  EXPECT_FALSE((*r)->cut_short());
}

TEST_P(AuditCompressTest, ConcatenatedStreamsReadAsOne) {
  // zstd frames and gzip members both concatenate (RFC 8878 section 3.1,
  // RFC 1952 section 2.2); `cat a.zst b.zst > c.zst` is a valid file.
  compress_to(path_, GetParam(), "first\n", 64);
  const std::string a = read_plain(path_);
  compress_to(path_, GetParam(), "second\n", 64);
  write_file(path_, a + read_plain(path_));
  auto got = read_back(path_, 4096);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(*got, "first\nsecond\n");
}

TEST(AuditCompressTest, PlainFilesAreReadAsTheyAre) {
  TempDir dir;
  for (const std::string content : {"", "{", "{\"v\":1}\n", "\x1f", "\x28\xb5\x2f"}) {
    write_file(dir / "plain", content);
    auto got = read_back(dir / "plain", 2);
    ASSERT_TRUE(got) << got.error().message;
    EXPECT_EQ(*got, content);
  }
}

TEST(AuditCompressTest, TheFormatIsToldByMagicNotByName) {
  TempDir dir;
  compress_to(dir / "audit.jsonl.3.gz", AuditCompression::zstd, "zstd inside\n", 64);
  auto got = read_back(dir / "audit.jsonl.3.gz", 4096);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(*got, "zstd inside\n");
}

TEST(AuditCompressTest, AMissingFileIsAnErrorNamingIt) {
  auto got = AuditFileReader::open("/nonexistent/pgcloak-audit");
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().message.find("/nonexistent/pgcloak-audit"), std::string::npos);
}

TEST(AuditCompressTest, Suffixes) {
  EXPECT_EQ(compressed_suffix(AuditCompression::zstd), ".zst");
  EXPECT_EQ(compressed_suffix(AuditCompression::gzip), ".gz");
  EXPECT_EQ(compressed_suffix(AuditCompression::none), "");
  EXPECT_EQ(compressed_suffix_of("audit.jsonl.4.zst"), ".zst");
  EXPECT_EQ(compressed_suffix_of("audit.jsonl.4.gz"), ".gz");
  EXPECT_EQ(compressed_suffix_of("audit.jsonl.4"), "");
  EXPECT_EQ(compressed_suffix_of(".gz"), "");  // a suffix needs a name before it
  EXPECT_EQ(compressed_suffix_of("audit.jsonl.4.gz.tmp"), "");
}

}  // namespace
}  // namespace pgcloak::proxy
