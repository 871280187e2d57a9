// The audit file sink (docs/audit.md, "Files, rotation and retention").
//
// The active file is `path`; a rotated file is `path.<epoch>` (the epoch of
// the key that chains it), and `path.<epoch>.zst` (or `.gz`) once compressed. Epochs
// grow by one per file, so names never collide and sort in chain order.
//
// Writes are all or nothing: a failed write or fsync truncates the file
// back to what was there before, so the writer can retry the same lines
// without leaving a torn or duplicated record behind.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "protocol/result.h"
#include "proxy/audit_chain.h"
#include "proxy/audit_sink.h"
#include "rules/audit_config.h"

namespace pgcloak::proxy {

// A rotated file found next to the active one.
struct AuditRotatedFile {
  std::string path;  // full path as found (with .zst or .gz when compressed)
  uint64_t epoch = 0;
  bool compressed = false;
};
// Rotated files of `active_path`, oldest epoch first. When both
// path.<e> and path.<e>.zst (or .gz) exist (a crash during compression)
// both are listed, the uncompressed one first.
std::vector<AuditRotatedFile> list_rotated_audit_files(const std::string& active_path);

// The whole content of a file, decompressed when it is zstd or gzip
// (AuditFileReader).
Result<std::string> read_audit_file(const std::string& path);

// Where the previous run's chain ended (AuditLog::open continues it).
struct AuditTail {
  bool found = false;           // some earlier record exists
  std::string file;             // logical name of the file holding it (base name, no .zst/.gz)
  bool in_active = false;       // that file is the active file
  uint64_t file_epoch = 0;      // from that file's header
  uint64_t file_first_seq = 0;  // the header's own seq
  std::chrono::system_clock::time_point file_started;  // the header's ts
  uint64_t active_size = 0;                            // bytes of the active file after recovery
  uint64_t last_seq = 0;
  AuditMac last_mac{};
  std::string last_kind;
  bool verified = false;         // the last record's MAC was checked with the key
  uint64_t truncated_bytes = 0;  // bytes cut from the end of the active file
  uint64_t discarded_lines = 0;  // complete lines among them that failed verification
  std::string discarded_file;    // where those bytes were saved (evidence), "" if none
};

// Reads back the newest file to its last complete record whose MAC
// verifies, truncating a torn (or unverifiable) tail of the active file.
// Complete lines that are cut are first saved to `path.discarded-<seq>`.
// `key` may be at an earlier epoch than the file; it is ratcheted on a
// copy. Errors when the active file cannot be trusted at all (no header,
// or a header the key does not verify: the wrong key).
Result<AuditTail> recover_audit_tail(const std::string& active_path, const AuditKey& key);

class AuditFileSink final : public AuditSink {
 public:
  explicit AuditFileSink(rules::AuditFileConfig config);
  ~AuditFileSink() override;
  AuditFileSink(const AuditFileSink&) = delete;
  AuditFileSink& operator=(const AuditFileSink&) = delete;

  Status write(std::span<const std::string> lines) override;
  Status sync() override;
  std::string describe() const override;

  // Appends to the existing active file recovered by recover_audit_tail.
  Status resume(const AuditTail& tail);
  // Moves the open active file (if any) aside to its rotated name and
  // creates a new, empty active file (mode 0600) whose header will be the
  // record `first_seq` of key epoch `epoch`. Safe to call again after a
  // failure: a step already done is not repeated.
  Status start_file(uint64_t epoch, uint64_t first_seq, std::chrono::system_clock::time_point now);

  bool is_open() const { return fd_ >= 0; }
  uint64_t epoch() const { return epoch_; }
  uint64_t first_seq() const { return first_seq_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return config_.path; }
  std::string rotated_name(uint64_t epoch) const;  // base name path.<epoch>
  // Size or age says rotate. A file that holds only its header is never
  // rotated by age (an idle log would otherwise make one file per period).
  bool rotation_due(std::chrono::system_clock::time_point now) const;
  std::optional<std::chrono::system_clock::time_point> age_deadline() const;

  // Compression of rotated files and retention, done by the writer thread
  // a bounded step at a time so that it never stalls group commit for long.
  void schedule_housekeeping();
  bool housekeeping_pending() const;
  void housekeeping_step();

 private:
  struct Compression;
  void start_next_compression();
  void finish_compression();
  void abandon_compression();
  void apply_retention();

  rules::AuditFileConfig config_;
  int fd_ = -1;
  uint64_t epoch_ = 0;
  uint64_t first_seq_ = 0;
  uint64_t size_ = 0;         // bytes in the file as far as we know
  uint64_t synced_size_ = 0;  // bytes known durable
  uint64_t lines_ = 0;        // lines written to this file (header included)
  uint64_t synced_lines_ = 0;
  bool damaged_ = false;  // a rollback truncate failed; retried before the next write
  std::chrono::system_clock::time_point started_{};
  std::vector<std::string> to_compress_;
  std::unique_ptr<Compression> compression_;
  bool retention_due_ = false;
};

}  // namespace pgcloak::proxy
