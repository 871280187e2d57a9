#include "proxy/audit_compress.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <vector>

#include "proxy/audit_chain.h"

namespace pgcloak::proxy {

namespace {

// Level 1: see the header. Higher levels cost several times the CPU for a
// few percent on these records.
constexpr int zstd_level = 1;
// zlib's default (what `gzip` does); the gzip option is for compatibility.
constexpr char gzip_mode[] = "wb6";

Error failed(std::string msg) {
  return Error::make(sqlstate::internal_error, std::move(msg));
}

class ZstdCompressor final : public AuditCompressor {
 public:
  ZstdCompressor(ZSTD_CCtx* ctx, int fd) : ctx_(ctx), fd_(fd), out_(ZSTD_CStreamOutSize()) {}
  ~ZstdCompressor() override { ZSTD_freeCCtx(ctx_); }

  Status write(std::string_view data) override { return run(data, ZSTD_e_continue); }
  Status finish() override { return run({}, ZSTD_e_end); }

 private:
  Status run(std::string_view data, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    for (;;) {
      ZSTD_outBuffer out{out_.data(), out_.size(), 0};
      const size_t left = ZSTD_compressStream2(ctx_, &out, &in, mode);
      if (ZSTD_isError(left)) return failed(std::string("zstd: ") + ZSTD_getErrorName(left));
      if (out.pos > 0) {
        if (auto st = write_all(fd_, {out_.data(), out.pos}); !st) return st;
      }
      // continue: done once the input is consumed; end: once nothing is
      // left to flush (left == 0).
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) return ok_status();
    }
  }

  ZSTD_CCtx* ctx_;
  int fd_;
  std::vector<char> out_;
};

class GzipCompressor final : public AuditCompressor {
 public:
  explicit GzipCompressor(gzFile gz) : gz_(gz) {}
  ~GzipCompressor() override {
    if (gz_ != nullptr) (void)gzclose_w(gz_);
  }

  Status write(std::string_view data) override {
    while (!data.empty()) {
      const auto n = static_cast<unsigned>(std::min<size_t>(data.size(), size_t{1} << 30));
      if (gzwrite(gz_, data.data(), n) != static_cast<int>(n)) return error();
      data.remove_prefix(n);
    }
    return ok_status();
  }

  Status finish() override {
    const int rc = gzclose_w(gz_);
    gz_ = nullptr;
    if (rc != Z_OK) return failed(rc == Z_ERRNO ? errno_text(errno) : "gzip: error " + std::to_string(rc));
    return ok_status();
  }

 private:
  Error error() const {
    int err = 0;
    const char* msg = gzerror(gz_, &err);
    return failed(err == Z_ERRNO ? errno_text(errno) : std::string("gzip: ") + msg);
  }
  gzFile gz_;
};

class PlainReader final : public AuditFileReader {
 public:
  PlainReader(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PlainReader() override { (void)::close(fd_); }

  Result<size_t> read(char* buf, size_t cap) override {
    for (;;) {
      const ssize_t n = ::read(fd_, buf, cap);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR) return failed("cannot read " + path_ + ": " + errno_text(errno));
    }
  }

 private:
  int fd_;
  std::string path_;
};

class GzipReader final : public AuditFileReader {
 public:
  GzipReader(gzFile gz, std::string path) : gz_(gz), path_(std::move(path)) {}
  ~GzipReader() override {
    if (gz_ != nullptr) (void)gzclose_r(gz_);
  }

  Result<size_t> read(char* buf, size_t cap) override {
    if (gz_ == nullptr) return size_t{0};
    const auto want = static_cast<unsigned>(std::min<size_t>(cap, size_t{1} << 30));
    const int n = gzread(gz_, buf, want);
    if (n > 0) return static_cast<size_t>(n);
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(gz_, &err);
      return failed("cannot read " + path_ + ": " + (err == Z_ERRNO ? errno_text(errno) : msg));
    }
    // A stream cut short reads as a clean end plus a pending error, which
    // gzclose_r reports.
    const int rc = gzclose_r(gz_);
    gz_ = nullptr;
    if (rc == Z_BUF_ERROR) {
      cut_short_ = true;
      return failed("cannot read " + path_ + ": the gzip stream is incomplete (cut short)");
    }
    if (rc != Z_OK) return failed("cannot read " + path_ + ": the gzip stream is damaged");
    return size_t{0};
  }

 private:
  gzFile gz_;
  std::string path_;
};

class ZstdReader final : public AuditFileReader {
 public:
  ZstdReader(ZSTD_DCtx* ctx, int fd, std::string path)
      : ctx_(ctx), fd_(fd), path_(std::move(path)), in_buf_(ZSTD_DStreamInSize()) {}
  ~ZstdReader() override {
    ZSTD_freeDCtx(ctx_);
    (void)::close(fd_);
  }

  Result<size_t> read(char* buf, size_t cap) override {
    ZSTD_outBuffer out{buf, cap, 0};
    while (out.pos == 0 && !done_) {
      if (in_.pos == in_.size && !eof_) {
        ssize_t n = 0;
        do {
          n = ::read(fd_, in_buf_.data(), in_buf_.size());
        } while (n < 0 && errno == EINTR);
        if (n < 0) return failed("cannot read " + path_ + ": " + errno_text(errno));
        in_ = {in_buf_.data(), static_cast<size_t>(n), 0};
        eof_ = n == 0;
      }
      const size_t consumed_before = in_.pos;
      const size_t hint = ZSTD_decompressStream(ctx_, &out, &in_);
      if (ZSTD_isError(hint)) return failed("cannot read " + path_ + ": zstd: " + ZSTD_getErrorName(hint));
      // 0 = a frame just ended; more may follow (frames concatenate). A
      // call that moved nothing says nothing: after a frame's end it
      // returns the size of the next frame's header.
      if (in_.pos != consumed_before || out.pos != 0) mid_frame_ = hint != 0;
      if (eof_ && in_.pos == in_.size && out.pos == 0) {
        if (mid_frame_) {
          cut_short_ = true;
          return failed("cannot read " + path_ + ": the zstd stream is incomplete (cut short)");
        }
        done_ = true;
      }
    }
    return out.pos;
  }

 private:
  ZSTD_DCtx* ctx_;
  int fd_;
  std::string path_;
  std::vector<char> in_buf_;
  ZSTD_inBuffer in_{nullptr, 0, 0};
  bool eof_ = false;
  bool done_ = false;
  bool mid_frame_ = false;
};

}  // namespace

std::string_view compressed_suffix(rules::AuditCompression c) {
  switch (c) {
    case rules::AuditCompression::zstd: return ".zst";
    case rules::AuditCompression::gzip: return ".gz";
    case rules::AuditCompression::none: break;
  }
  return "";
}

std::string_view compressed_suffix_of(std::string_view name) {
  for (std::string_view s : {std::string_view(".zst"), std::string_view(".gz")}) {
    if (name.size() > s.size() && name.substr(name.size() - s.size()) == s) return s;
  }
  return "";
}

Result<std::unique_ptr<AuditCompressor>> AuditCompressor::open(rules::AuditCompression c, int fd) {
  if (c == rules::AuditCompression::zstd) {
    ZSTD_CCtx* ctx = ZSTD_createCCtx();
    if (ctx == nullptr) return failed("zstd: out of memory");
    // The frame's checksum makes a damaged file fail to decompress, rather
    // than read back as different records.
    if (ZSTD_isError(ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, zstd_level)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(ctx, ZSTD_c_checksumFlag, 1))) {
      ZSTD_freeCCtx(ctx);
      return failed("zstd: cannot set the compression parameters");
    }
    return std::unique_ptr<AuditCompressor>(new ZstdCompressor(ctx, fd));
  }
  if (c == rules::AuditCompression::gzip) {
    // gzclose closes the descriptor it was given: give it its own.
    const int own = ::dup(fd);
    if (own < 0) return failed(errno_text(errno));
    gzFile gz = gzdopen(own, gzip_mode);
    if (gz == nullptr) {
      (void)::close(own);
      return failed("gzip: out of memory");
    }
    return std::unique_ptr<AuditCompressor>(new GzipCompressor(gz));
  }
  return failed("no compression configured");
}

Result<std::unique_ptr<AuditFileReader>> AuditFileReader::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return failed("cannot open " + path + ": " + errno_text(errno));
  std::array<unsigned char, 4> magic{};
  ssize_t got = 0;
  do {
    got = ::pread(fd, magic.data(), magic.size(), 0);
  } while (got < 0 && errno == EINTR);
  if (got < 0) {
    const int err = errno;
    (void)::close(fd);
    return failed("cannot read " + path + ": " + errno_text(err));
  }
  if (got == 4 && magic == std::array<unsigned char, 4>{0x28, 0xb5, 0x2f, 0xfd}) {
    ZSTD_DCtx* ctx = ZSTD_createDCtx();
    if (ctx == nullptr) {
      (void)::close(fd);
      return failed("cannot read " + path + ": out of memory");
    }
    return std::unique_ptr<AuditFileReader>(new ZstdReader(ctx, fd, path));
  }
  if (got >= 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
    gzFile gz = gzdopen(fd, "rb");
    if (gz == nullptr) {
      (void)::close(fd);
      return failed("cannot read " + path + ": out of memory");
    }
    (void)gzbuffer(gz, 1U << 17);
    return std::unique_ptr<AuditFileReader>(new GzipReader(gz, path));
  }
  return std::unique_ptr<AuditFileReader>(new PlainReader(fd, path));
}

}  // namespace pgcloak::proxy
