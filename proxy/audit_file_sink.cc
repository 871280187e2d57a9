#include "proxy/audit_file_sink.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "proxy/audit_compress.h"
#include "proxy/log.h"

namespace pgcloak::proxy {

namespace {

// Compression works through a rotated file this much per writer round.
constexpr size_t compress_chunk = size_t{1} << 20;
// Recovery reads the active file's tail in windows starting at this size.
constexpr uint64_t tail_window = uint64_t{1} << 20;

Error io_error(const std::string& what, int err) {
  return Error::make(sqlstate::internal_error, what + ": " + errno_text(err));
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

Status pread_all(int fd, uint64_t offset, size_t len, std::string& out, const std::string& path) {
  out.resize(len);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, out.data() + done, len - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return io_error("cannot read " + path, errno);
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return ok_status();
}

// Saves bytes cut from the active file, so that recovery never destroys
// what may be evidence of tampering.
Result<std::string> save_discarded(const std::string& active, uint64_t after_seq, std::string_view bytes) {
  const std::string path = active + ".discarded-" + std::to_string(after_seq) + "-" +
                           std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                              std::chrono::system_clock::now().time_since_epoch())
                                              .count());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return io_error("cannot create " + path, errno);
  Status st = write_all(fd, bytes);
  if (st && ::fsync(fd) != 0) st = Error::make(sqlstate::internal_error, errno_text(errno));
  (void)::close(fd);
  if (!st) return Error::make(sqlstate::internal_error, "cannot write " + path + ": " + st.error().message);
  return path;
}

struct LineSpan {
  uint64_t begin = 0;  // absolute offsets; end is the '\n'
  uint64_t end = 0;
};

}  // namespace

std::vector<AuditRotatedFile> list_rotated_audit_files(const std::string& active_path) {
  std::vector<AuditRotatedFile> out;
  const std::string dir = dir_of(active_path);
  const std::string prefix = base_of(active_path) + ".";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (const dirent* e = ::readdir(d)) {
    std::string_view name(e->d_name);
    if (name.substr(0, prefix.size()) != prefix) continue;
    std::string_view rest = name.substr(prefix.size());
    const std::string_view suffix = compressed_suffix_of(rest);
    const bool compressed = !suffix.empty();
    rest.remove_suffix(suffix.size());
    if (!all_digits(rest)) continue;
    uint64_t epoch = 0;
    auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), epoch);
    if (ec != std::errc{}) continue;
    out.push_back({dir + "/" + std::string(name), epoch, compressed});
  }
  (void)::closedir(d);
  std::sort(out.begin(), out.end(), [](const AuditRotatedFile& a, const AuditRotatedFile& b) {
    return a.epoch != b.epoch ? a.epoch < b.epoch : !a.compressed && b.compressed;
  });
  return out;
}

Result<std::string> read_audit_file(const std::string& path) {
  auto reader = AuditFileReader::open(path);
  if (!reader) return reader.error();
  std::string out;
  std::string chunk(compress_chunk, '\0');
  for (;;) {
    auto n = (*reader)->read(chunk.data(), chunk.size());
    if (!n) return n.error();
    if (*n == 0) return out;
    out.append(chunk.data(), *n);
  }
}

Result<AuditTail> recover_audit_tail(const std::string& active_path, const AuditKey& key) {
  AuditTail tail;
  struct stat st {};
  if (::stat(active_path.c_str(), &st) == 0) {
    int fd = ::open(active_path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return io_error("cannot open " + active_path, errno);
    struct Closer {
      int fd;
      ~Closer() { (void)::close(fd); }
    } closer{fd};
    const auto size = static_cast<uint64_t>(st.st_size);
    std::string head;
    if (auto r = pread_all(fd, 0, static_cast<size_t>(std::min(size, tail_window)), head, active_path); !r) {
      return r.error();
    }
    const auto nl = head.find('\n');
    if (nl == std::string::npos && size > tail_window) {
      return Error::make(sqlstate::config_file_error,
                         active_path +
                             " does not look like an audit file (no line break in its first MiB); "
                             "move it away to start a new file");
    }
    if (nl != std::string::npos) {
      const std::string_view header_line(head.data(), nl);
      const AuditLineInfo header = parse_audit_line(header_line);
      if (header.status != AuditLineInfo::Status::ok || header.kind != audit_kind::audit_file ||
          !header.header_ok) {
        return Error::make(sqlstate::config_file_error,
                           active_path +
                               " does not begin with an audit_file header record; move it away (and "
                               "check it with pgcloak audit verify) to start a new file");
      }
      AuditKey k = key;
      const bool can_verify = k.ratchet_to(header.epoch);
      if (can_verify && audit_mac(k, header.prev_mac, header.parts.canonical) != header.parts.mac) {
        return Error::make(sqlstate::config_file_error,
                           "the header of " + active_path + " (epoch " + std::to_string(header.epoch) +
                               ") does not verify with the configured audit key: wrong key_file/key_env?");
      }
      // Walk back from the last complete line to one whose MAC verifies
      // against the line before it. The window grows until it reaches one.
      uint64_t window = std::min(size, tail_window);
      std::optional<LineSpan> accepted;
      AuditLineInfo accepted_info;
      uint64_t complete_after = 0;  // complete lines after the accepted one
      for (;;) {
        const uint64_t off = size - window;
        std::string buf;
        if (auto r = pread_all(fd, off, static_cast<size_t>(window), buf, active_path); !r) return r.error();
        std::vector<LineSpan> lines;
        uint64_t start = 0;
        bool first = true;
        for (size_t i = 0; i < buf.size(); ++i) {
          if (buf[i] != '\n') continue;
          // The first piece of a window that starts mid-file may be part of
          // a longer line: only lines that start inside the window count.
          if (!(first && off > 0)) lines.push_back({off + start, off + i});
          first = false;
          start = i + 1;
        }
        auto text = [&](const LineSpan& s) {
          return std::string_view(buf.data() + (s.begin - off), s.end - s.begin);
        };
        for (size_t idx = lines.size(); idx-- > 0;) {
          const std::string_view line = text(lines[idx]);
          const bool is_header = lines[idx].begin == 0;
          if (is_header) {
            accepted = lines[idx];
            accepted_info = header;
          } else {
            if (idx == 0) break;  // the line before it is outside the window: grow it
            const AuditLineInfo info = parse_audit_line(line);
            const auto prev = split_audit_line(text(lines[idx - 1]));
            const bool ok =
                info.status == AuditLineInfo::Status::ok &&
                (!can_verify || (prev && audit_mac(k, prev->mac, info.parts.canonical) == info.parts.mac));
            if (ok) {
              accepted = lines[idx];
              accepted_info = info;
            }
          }
          if (accepted) {
            complete_after = lines.size() - 1 - idx;
            break;
          }
        }
        if (accepted || window == size) break;
        window = std::min(size, window * 2);
      }
      if (!accepted) {
        // Cannot happen: the header itself is accepted when reached.
        return Error::make(sqlstate::internal_error,
                           "audit recovery found no intact record in " + active_path);
      }
      const uint64_t cut = accepted->end + 1;
      tail.found = true;
      tail.in_active = true;
      tail.file = base_of(active_path);
      tail.file_epoch = header.epoch;
      tail.file_first_seq = header.seq;
      tail.file_started = parse_audit_ts(header.ts).value_or(std::chrono::system_clock::now());
      tail.last_seq = accepted_info.seq;
      tail.last_mac = accepted_info.parts.mac;
      tail.last_kind = accepted_info.kind;
      tail.verified = can_verify;
      tail.active_size = cut;
      tail.truncated_bytes = size - cut;
      tail.discarded_lines = complete_after;
      if (cut < size) {
        if (complete_after > 0) {
          std::string bytes;
          if (auto r = pread_all(fd, cut, static_cast<size_t>(size - cut), bytes, active_path); !r) {
            return r.error();
          }
          auto saved = save_discarded(active_path, tail.last_seq, bytes);
          if (!saved) return saved.error();
          tail.discarded_file = *saved;
        }
        if (::ftruncate(fd, static_cast<off_t>(cut)) != 0 || ::fsync(fd) != 0) {
          return io_error("cannot truncate the torn tail of " + active_path, errno);
        }
      }
      return tail;
    }
    // Not even the header is complete: the crash came right after the file
    // was created at a rotation. The previous file holds the chain.
    tail.truncated_bytes = size;
    if (::unlink(active_path.c_str()) != 0) return io_error("cannot remove " + active_path, errno);
    if (auto r = fsync_dir(dir_of(active_path)); !r) return r.error();
  } else if (errno != ENOENT) {
    return io_error("cannot stat " + active_path, errno);
  }

  // No usable active file: continue from the newest rotated one.
  auto rotated = list_rotated_audit_files(active_path);
  if (rotated.empty()) return tail;
  const uint64_t newest = rotated.back().epoch;
  const auto it =
      std::find_if(rotated.begin(), rotated.end(), [&](const auto& f) { return f.epoch == newest; });
  auto content = read_audit_file(it->path);
  if (!content) return content.error();
  const std::string& c = *content;
  const auto first_nl = c.find('\n');
  const auto last_nl = c.rfind('\n');
  if (first_nl == std::string::npos) {
    return Error::make(sqlstate::config_file_error,
                       it->path + " holds no complete record; move it away to start a new chain");
  }
  const AuditLineInfo header = parse_audit_line(std::string_view(c).substr(0, first_nl));
  const auto prev_nl = last_nl == 0 ? std::string::npos : c.rfind('\n', last_nl - 1);
  const size_t last_begin = prev_nl == std::string::npos ? 0 : prev_nl + 1;
  const AuditLineInfo last = parse_audit_line(std::string_view(c).substr(last_begin, last_nl - last_begin));
  if (!header.header_ok || last.status != AuditLineInfo::Status::ok) {
    return Error::make(sqlstate::config_file_error,
                       it->path + " does not end in an intact record; check it with pgcloak audit verify");
  }
  tail.found = true;
  tail.file = base_of(it->path);
  if (it->compressed) tail.file.resize(tail.file.size() - 3);
  tail.file_epoch = header.epoch;
  tail.file_first_seq = header.seq;
  tail.file_started = parse_audit_ts(header.ts).value_or(std::chrono::system_clock::now());
  tail.last_seq = last.seq;
  tail.last_mac = last.parts.mac;
  tail.last_kind = last.kind;
  // Rotated files are fsynced before they are renamed, so their last
  // record is complete; checking its MAC needs the one before it.
  AuditKey k = key;
  if (k.ratchet_to(header.epoch)) {
    AuditMac prev = header.prev_mac;
    if (last_begin > 0) {
      const auto before = c.rfind('\n', last_begin - 2);
      const size_t b = before == std::string::npos ? 0 : before + 1;
      if (auto p = split_audit_line(std::string_view(c).substr(b, last_begin - 1 - b))) prev = p->mac;
    }
    tail.verified = audit_mac(k, prev, last.parts.canonical) == last.parts.mac;
    if (!tail.verified) {
      log::warn("audit: the last record of " + it->path +
                " does not verify; continuing the chain from it anyway");
    }
  }
  return tail;
}

// --- the sink -------------------------------------------------------------------

struct AuditFileSink::Compression {
  std::string src;
  std::string tmp;
  std::string dst;
  int in_fd = -1;
  int out_fd = -1;
  std::unique_ptr<AuditCompressor> compressor;
  struct stat src_stat {};
};

AuditFileSink::AuditFileSink(rules::AuditFileConfig config) : config_(std::move(config)) {}

AuditFileSink::~AuditFileSink() {
  abandon_compression();
  if (fd_ >= 0) (void)::close(fd_);
}

std::string AuditFileSink::describe() const {
  return "file " + config_.path;
}

std::string AuditFileSink::rotated_name(uint64_t epoch) const {
  return base_of(config_.path) + "." + std::to_string(epoch);
}

Status AuditFileSink::write(std::span<const std::string> lines) {
  if (fd_ < 0) {
    return Error::make(sqlstate::internal_error,
                       "no active audit file " + config_.path + " (rotation failed)");
  }
  if (damaged_) {
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
      return io_error("cannot restore " + config_.path + " after a failed write", errno);
    }
    damaged_ = false;
  }
  size_t total = 0;
  for (const auto& l : lines) total += l.size() + 1;
  std::string buf;
  buf.reserve(total);
  for (const auto& l : lines) {
    buf += l;
    buf += '\n';
  }
  if (auto st = write_all(fd_, buf); !st) {
    // All or nothing: cut a partial write so a retry cannot leave a torn or
    // doubled record in the middle of the file.
    if (::ftruncate(fd_, static_cast<off_t>(size_)) != 0) damaged_ = true;
    return Error::make(sqlstate::internal_error,
                       "write to " + config_.path + " failed: " + st.error().message);
  }
  size_ += buf.size();
  lines_ += lines.size();
  return ok_status();
}

Status AuditFileSink::sync() {
  if (fd_ < 0) {
    return Error::make(sqlstate::internal_error,
                       "no active audit file " + config_.path + " (rotation failed)");
  }
  if (synced_size_ == size_) return ok_status();
  if (::fdatasync(fd_) != 0) {
    const int err = errno;
    // After a failed fsync the kernel may have dropped the dirty pages, so
    // what was written since the last good fsync cannot be trusted: cut it,
    // and the writer writes those lines again.
    if (::ftruncate(fd_, static_cast<off_t>(synced_size_)) != 0) damaged_ = true;
    size_ = synced_size_;
    lines_ = synced_lines_;
    return io_error("fsync of " + config_.path + " failed", err);
  }
  synced_size_ = size_;
  synced_lines_ = lines_;
  return ok_status();
}

Status AuditFileSink::resume(const AuditTail& tail) {
  int fd = ::open(config_.path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return io_error("cannot open " + config_.path, errno);
  struct stat st {};
  if (::fchmod(fd, 0600) != 0 || ::fstat(fd, &st) != 0) {
    const int err = errno;
    (void)::close(fd);
    return io_error("cannot set the mode of " + config_.path, err);
  }
  if (fd_ >= 0) (void)::close(fd_);
  fd_ = fd;
  epoch_ = tail.file_epoch;
  first_seq_ = tail.file_first_seq;
  size_ = synced_size_ = static_cast<uint64_t>(st.st_size);
  lines_ = synced_lines_ = 1 + (tail.last_seq - tail.file_first_seq);
  started_ = tail.file_started;
  damaged_ = false;
  return ok_status();
}

Status AuditFileSink::start_file(uint64_t epoch, uint64_t first_seq,
                                 std::chrono::system_clock::time_point now) {
  const std::string dir = dir_of(config_.path);
  if (fd_ >= 0) {
    // The old file must be complete on disk before it gets its final name.
    if (::fdatasync(fd_) != 0) return io_error("fsync of " + config_.path + " failed", errno);
    const std::string rotated = dir + "/" + rotated_name(epoch_);
    if (exists(rotated) || exists(rotated + ".gz") || exists(rotated + ".zst")) {
      return Error::make(sqlstate::internal_error,
                         "cannot rotate " + config_.path + ": " + rotated + " already exists");
    }
    if (::rename(config_.path.c_str(), rotated.c_str()) != 0) {
      return io_error("cannot rename " + config_.path + " to " + rotated, errno);
    }
    (void)::close(fd_);
    fd_ = -1;
    if (config_.compress != rules::AuditCompression::none) to_compress_.push_back(rotated);
    retention_due_ = true;
    log::info("audit: rotated " + config_.path + " to " + rotated);
  }
  int fd = ::open(config_.path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) {
    // Created by an earlier attempt whose header was never written.
    struct stat st {};
    if (::stat(config_.path.c_str(), &st) == 0 && st.st_size == 0) {
      fd = ::open(config_.path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    } else {
      return Error::make(sqlstate::internal_error,
                         "cannot start a new audit file: " + config_.path + " exists and is not empty");
    }
  }
  if (fd < 0) return io_error("cannot create " + config_.path, errno);
  if (::fchmod(fd, 0600) != 0) {
    const int err = errno;
    (void)::close(fd);
    return io_error("cannot set the mode of " + config_.path, err);
  }
  if (auto st = fsync_dir(dir); !st) {
    (void)::close(fd);
    return st;
  }
  fd_ = fd;
  epoch_ = epoch;
  first_seq_ = first_seq;
  size_ = synced_size_ = 0;
  lines_ = synced_lines_ = 0;
  started_ = now;
  damaged_ = false;
  return ok_status();
}

bool AuditFileSink::rotation_due(std::chrono::system_clock::time_point now) const {
  if (fd_ < 0 || lines_ <= 1) return false;
  if (config_.rotate_size > 0 && size_ >= config_.rotate_size) return true;
  auto deadline = age_deadline();
  return deadline && now >= *deadline;
}

std::optional<std::chrono::system_clock::time_point> AuditFileSink::age_deadline() const {
  if (fd_ < 0 || lines_ <= 1 || config_.rotate_age.count() <= 0) return std::nullopt;
  return started_ + config_.rotate_age;
}

// --- compression and retention ------------------------------------------------

void AuditFileSink::schedule_housekeeping() {
  retention_due_ = true;
  if (config_.compress == rules::AuditCompression::none) return;
  const std::string dir = dir_of(config_.path);
  const std::string prefix = base_of(config_.path) + ".";
  // Leftovers of a compression that a crash interrupted.
  if (!compression_) {
    if (DIR* d = ::opendir(dir.c_str())) {
      std::vector<std::string> stale;
      while (const dirent* e = ::readdir(d)) {
        std::string_view name(e->d_name);
        if (name.size() <= prefix.size() + 4 || name.substr(0, prefix.size()) != prefix ||
            name.substr(name.size() - 4) != ".tmp") {
          continue;
        }
        std::string_view rest = name.substr(prefix.size(), name.size() - prefix.size() - 4);
        const std::string_view suffix = compressed_suffix_of(rest);
        rest.remove_suffix(suffix.size());
        if (!suffix.empty() && all_digits(rest)) stale.push_back(dir + "/" + std::string(name));
      }
      (void)::closedir(d);
      for (const auto& s : stale) (void)::unlink(s.c_str());
    }
  }
  const auto files = list_rotated_audit_files(config_.path);
  for (size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    if (f.compressed) continue;
    const bool has_compressed =
        i + 1 < files.size() && files[i + 1].epoch == f.epoch && files[i + 1].compressed;
    if (has_compressed) {
      // The compressed copy was renamed into place (complete) but the
      // original not yet removed when the previous run stopped.
      if (::unlink(f.path.c_str()) == 0) log::info("audit: removed " + f.path + ", already compressed");
      continue;
    }
    if (compression_ && compression_->src == f.path) continue;
    if (std::find(to_compress_.begin(), to_compress_.end(), f.path) == to_compress_.end()) {
      to_compress_.push_back(f.path);
    }
  }
}

bool AuditFileSink::housekeeping_pending() const {
  return retention_due_ || compression_ != nullptr || !to_compress_.empty();
}

void AuditFileSink::housekeeping_step() {
  if (retention_due_) {
    retention_due_ = false;
    apply_retention();
  }
  if (!compression_) start_next_compression();
  if (!compression_) return;
  auto& c = *compression_;
  std::string buf(compress_chunk, '\0');
  ssize_t n = 0;
  do {
    n = ::read(c.in_fd, buf.data(), buf.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    log::warn("audit: cannot compress " + c.src + ": read: " + errno_text(errno) +
              " (left uncompressed; retried at the next rotation)");
    abandon_compression();
    return;
  }
  if (n == 0) {
    finish_compression();
    return;
  }
  if (auto st = c.compressor->write({buf.data(), static_cast<size_t>(n)}); !st) {
    log::warn("audit: cannot compress " + c.src + ": " + st.error().message +
              " (left uncompressed; retried at the next rotation)");
    abandon_compression();
  }
}

void AuditFileSink::start_next_compression() {
  while (!to_compress_.empty() && !compression_) {
    auto c = std::make_unique<Compression>();
    c->src = to_compress_.front();
    to_compress_.erase(to_compress_.begin());
    c->dst = c->src + std::string(compressed_suffix(config_.compress));
    c->tmp = c->dst + ".tmp";
    c->in_fd = ::open(c->src.c_str(), O_RDONLY | O_CLOEXEC);
    if (c->in_fd < 0) {
      if (errno != ENOENT) log::warn("audit: cannot compress " + c->src + ": " + errno_text(errno));
      continue;
    }
    (void)::unlink(c->tmp.c_str());
    c->out_fd = ::open(c->tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    std::string why;
    if (::fstat(c->in_fd, &c->src_stat) != 0 || c->out_fd < 0 || ::fchmod(c->out_fd, 0600) != 0) {
      why = errno_text(errno);
    } else if (auto z = AuditCompressor::open(config_.compress, c->out_fd); !z) {
      why = z.error().message;
    } else {
      c->compressor = std::move(*z);
    }
    compression_ = std::move(c);
    if (!why.empty()) {
      log::warn("audit: cannot compress " + compression_->src + ": cannot create " + compression_->tmp +
                ": " + why);
      abandon_compression();
      return;
    }
  }
}

void AuditFileSink::finish_compression() {
  auto& c = *compression_;
  auto finished = c.compressor->finish();
  c.compressor.reset();
  // Keep the rotated file's time: retention counts from the rotation, not
  // from when compression finished.
  const timespec times[2] = {c.src_stat.st_atim, c.src_stat.st_mtim};
  if (!finished || ::fsync(c.out_fd) != 0 || ::futimens(c.out_fd, times) != 0 ||
      ::rename(c.tmp.c_str(), c.dst.c_str()) != 0) {
    log::warn("audit: cannot compress " + c.src + ": cannot finish " + c.dst + ": " +
              (finished ? errno_text(errno) : finished.error().message) +
              " (left uncompressed; retried at the next rotation)");
    abandon_compression();
    return;
  }
  const std::string dir = dir_of(c.dst);
  // The compressed file must be durable under its name before the original
  // goes.
  if (fsync_dir(dir) && ::unlink(c.src.c_str()) == 0) {
    (void)fsync_dir(dir);
    log::info("audit: compressed " + c.src + " to " + c.dst);
  } else {
    log::warn("audit: compressed " + c.src + " but cannot remove it: " + errno_text(errno));
  }
  (void)::close(c.in_fd);
  (void)::close(c.out_fd);
  compression_.reset();
}

void AuditFileSink::abandon_compression() {
  if (!compression_) return;
  auto& c = *compression_;
  c.compressor.reset();
  if (c.in_fd >= 0) (void)::close(c.in_fd);
  if (c.out_fd >= 0) {
    (void)::close(c.out_fd);
    (void)::unlink(c.tmp.c_str());
  }
  compression_.reset();
}

void AuditFileSink::apply_retention() {
  if (config_.retention_days == 0) return;
  const auto now = std::chrono::system_clock::now();
  const auto cutoff = now - std::chrono::hours(24) * config_.retention_days;
  bool removed = false;
  for (const auto& f : list_rotated_audit_files(config_.path)) {
    struct stat st {};
    if (::stat(f.path.c_str(), &st) != 0) continue;
    const auto mtime = std::chrono::system_clock::from_time_t(st.st_mtim.tv_sec);
    if (mtime >= cutoff) continue;
    if (compression_ && compression_->src == f.path) abandon_compression();
    std::erase(to_compress_, f.path);
    if (::unlink(f.path.c_str()) == 0) {
      removed = true;
      log::info("audit: retention removed " + f.path + " (older than " +
                std::to_string(config_.retention_days) + " days)");
    } else {
      log::warn("audit: retention cannot remove " + f.path + ": " + errno_text(errno));
    }
  }
  if (removed) (void)fsync_dir(dir_of(config_.path));
}

}  // namespace pgcloak::proxy
