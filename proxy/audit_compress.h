// Compression of rotated audit files, and reading any audit file back
// whatever its compression (docs/audit.md, "Files, rotation and retention").
//
// zstd is the default. On pgcloak's records (JSON with a hex MAC per line)
// its level 1 made a 100 MB trail 7.3 MB for 0.11 s of CPU, where gzip's
// default level made it 8.6 MB for 0.93 s. Compression runs on the audit
// writer's thread, so at 15,000 statements a second gzip cost about 5 µs of
// CPU per statement and zstd about 0.6. gzip stays available for tools that
// only read gzip.
//
// Readers tell the format by its magic bytes (RFC 1952 section 2.3.1 for
// gzip, RFC 8878 section 3.1.1 for zstd), not by the file's name, and
// report a stream that was cut short as an error.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "protocol/result.h"
#include "rules/audit_config.h"

namespace pgcloak::proxy {

// ".zst", ".gz" or "" (none): what a compressed rotated file's name ends with.
std::string_view compressed_suffix(rules::AuditCompression c);
// The compression suffix `name` ends with (".zst" or ".gz"), or "".
std::string_view compressed_suffix_of(std::string_view name);

// Writes one compressed stream to a descriptor it does not own.
class AuditCompressor {
 public:
  // c must not be none.
  static Result<std::unique_ptr<AuditCompressor>> open(rules::AuditCompression c, int fd);
  virtual ~AuditCompressor() = default;
  virtual Status write(std::string_view data) = 0;
  // Ends the stream; nothing may be written after.
  virtual Status finish() = 0;
};

// Reads a plain, gzip or zstd file as its plain content.
class AuditFileReader {
 public:
  static Result<std::unique_ptr<AuditFileReader>> open(const std::string& path);
  virtual ~AuditFileReader() = default;
  // Up to cap bytes; 0 at the end. An error for a damaged stream, or one
  // that ends in the middle (a file cut short).
  virtual Result<size_t> read(char* buf, size_t cap) = 0;
  // After an error from read(): the stream was cut short (it ended in the
  // middle), rather than damaged or unreadable.
  bool cut_short() const { return cut_short_; }

 protected:
  bool cut_short_ = false;
};

}  // namespace pgcloak::proxy
