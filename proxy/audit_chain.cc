#include "proxy/audit_chain.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace pgcloak::proxy {

namespace {

constexpr std::string_view key_file_magic = "pgcloak-audit-key v1 epoch=";

Error key_error(std::string msg) {
  return Error::make(sqlstate::config_file_error, std::move(msg), Severity::fatal);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool parse_hex32(std::string_view hex, std::array<unsigned char, 32>& out) {
  if (hex.size() != 64) return false;
  for (size_t i = 0; i < 32; ++i) {
    int hi = hex_value(hex[2 * i]);
    int lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

}  // namespace

AuditKey& AuditKey::operator=(const AuditKey& other) {
  if (this != &other) {
    bytes_ = other.bytes_;
    epoch_ = other.epoch_;
    hmac_.reset();
  }
  return *this;
}

AuditKey::~AuditKey() {
  OPENSSL_cleanse(bytes_.data(), bytes_.size());
}

void AuditKey::ratchet() {
  std::array<unsigned char, EVP_MAX_MD_SIZE> next{};
  unsigned int len = 0;
  // SHA-256 cannot fail on a 32-byte input short of memory exhaustion; if
  // it ever did, continuing with the old key would silently break forward
  // security, so stop instead.
  if (EVP_Digest(bytes_.data(), bytes_.size(), next.data(), &len, EVP_sha256(), nullptr) != 1 ||
      len != bytes_.size()) {
    std::abort();
  }
  std::memcpy(bytes_.data(), next.data(), bytes_.size());
  OPENSSL_cleanse(next.data(), next.size());
  hmac_.reset();  // the old key's pads go with it
  ++epoch_;
}

bool AuditKey::ratchet_to(uint64_t epoch) {
  if (epoch < epoch_) return false;
  while (epoch_ < epoch) ratchet();
  return true;
}

Result<AuditKey> AuditKey::parse(std::string_view text) {
  text = trim(text);
  AuditKey key;
  std::string_view hex = text;
  if (text.substr(0, key_file_magic.size()) == key_file_magic) {
    std::string_view rest = text.substr(key_file_magic.size());
    uint64_t epoch = 0;
    auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), epoch);
    if (ec != std::errc{} || ptr == rest.data() || ptr == rest.data() + rest.size() || *ptr != ' ') {
      return key_error("malformed audit key: expected \"pgcloak-audit-key v1 epoch=N <64 hex digits>\"");
    }
    key.epoch_ = epoch;
    hex = trim(rest.substr(static_cast<size_t>(ptr - rest.data())));
  }
  if (!parse_hex32(hex, key.bytes_)) {
    return key_error(
        "malformed audit key: expected 64 hex digits (32 bytes, e.g. openssl rand -hex 32)" +
        std::string(hex.size() == 64 ? "" : ", found " + std::to_string(hex.size()) + " characters"));
  }
  return key;
}

AuditKey AuditKey::from_bytes(const unsigned char* bytes, uint64_t epoch) {
  AuditKey key;
  std::memcpy(key.bytes_.data(), bytes, key.bytes_.size());
  key.epoch_ = epoch;
  return key;
}

std::string format_audit_key(const AuditKey& key) {
  std::string hex = to_hex(key.data(), audit_key_size);
  std::string out = std::string(key_file_magic) + std::to_string(key.epoch()) + " " + hex + "\n";
  wipe(hex);
  return out;
}

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

Result<AuditKey> load_audit_key(const std::string& key_file, const std::string& key_env) {
  if (!key_file.empty() && !key_env.empty()) {
    return key_error("audit: set either key_file or key_env, not both");
  }
  std::string text;
  std::string source;
  if (!key_file.empty()) {
    source = "audit.key_file " + key_file;
    std::ifstream f(key_file, std::ios::binary);
    if (!f) return key_error("audit: cannot read " + source + ": " + errno_text(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    text = ss.str();
  } else if (!key_env.empty()) {
    source = "audit.key_env " + key_env;
    const char* v = std::getenv(key_env.c_str());
    if (v == nullptr) return key_error("audit: environment variable " + key_env + " is not set");
    text = v;
  } else {
    return key_error(
        "audit: a chain key is required: set audit.key_file or audit.key_env (32 bytes as 64 hex digits, "
        "e.g. openssl rand -hex 32)");
  }
  auto key = AuditKey::parse(text);
  wipe(text);
  if (!key) return key_error("audit: " + source + ": " + key.error().message);
  return key;
}

Status store_audit_key(const std::string& path, const AuditKey& key) {
  const std::string tmp = path + ".tmp";
  (void)::unlink(tmp.c_str());  // a leftover of a crash mid-write
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Error::make(sqlstate::internal_error, "cannot create " + tmp + ": " + errno_text(errno));
  }
  std::string text = format_audit_key(key);
  Status st = ok_status();
  if (::fchmod(fd, 0600) != 0) {
    st = Error::make(sqlstate::internal_error, "cannot chmod " + tmp + ": " + errno_text(errno));
  } else if (auto w = write_all(fd, text); !w) {
    st = Error::make(sqlstate::internal_error, "cannot write " + tmp + ": " + w.error().message);
  }
  wipe(text);
  if (st && ::fsync(fd) != 0) {
    st = Error::make(sqlstate::internal_error, "cannot fsync " + tmp + ": " + errno_text(errno));
  }
  if (::close(fd) != 0 && st) {
    st = Error::make(sqlstate::internal_error, "cannot close " + tmp + ": " + errno_text(errno));
  }
  if (st && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = Error::make(sqlstate::internal_error,
                     "cannot rename " + tmp + " to " + path + ": " + errno_text(errno));
  }
  if (!st) {
    (void)::unlink(tmp.c_str());
    return st;
  }
  return fsync_dir(dir_of(path));
}

AuditMac AuditKey::mac(const AuditMac& prev, std::string_view canonical) const {
  if (!hmac_) hmac_ = std::make_unique<rules::HmacSha256>(bytes_);
  AuditMac out{};
  // Only memory exhaustion makes HMAC fail; a record with a wrong MAC would
  // be indistinguishable from tampering, so stop rather than write one.
  if (!hmac_->mac({std::string_view(reinterpret_cast<const char*>(prev.data()), prev.size()), canonical},
                  out)) {
    std::abort();
  }
  return out;
}

AuditMac audit_mac(const AuditKey& key, const AuditMac& prev, std::string_view canonical) {
  return key.mac(prev, canonical);
}

std::optional<AuditLineParts> split_audit_line(std::string_view line) {
  if (line.size() < audit_mac_suffix_size + 1 || line.back() != '}') return std::nullopt;
  const size_t at = line.size() - audit_mac_suffix_size;
  if (line.substr(at, audit_mac_prefix.size()) != audit_mac_prefix) return std::nullopt;
  std::string_view hex = line.substr(at + audit_mac_prefix.size(), 2 * audit_mac_size);
  if (line[line.size() - 2] != '"') return std::nullopt;
  auto mac = mac_from_hex(hex);
  if (!mac) return std::nullopt;
  return AuditLineParts{line.substr(0, at), *mac};
}

std::string seal_audit_line(std::string canonical, const AuditMac& mac) {
  canonical.reserve(canonical.size() + audit_mac_suffix_size);
  canonical += audit_mac_prefix;
  canonical += to_hex(mac);
  canonical += "\"}";
  return canonical;
}

AuditLineInfo parse_audit_line(std::string_view line) {
  using S = AuditLineInfo::Status;
  AuditLineInfo info;
  auto parts = split_audit_line(line);
  if (!parts) {
    info.status = S::no_mac;
    info.why = "the line does not end with a \"mac\" field of 64 lower-case hex digits";
    return info;
  }
  info.parts = *parts;
  const auto j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    info.status = S::bad_json;
    info.why = "the line is not a valid JSON object";
    return info;
  }
  auto field = [&](const char* name) -> const nlohmann::json* {
    auto it = j.find(name);
    return it == j.end() ? nullptr : &*it;
  };
  const auto* v = field("v");
  const auto* seq = field("seq");
  const auto* kind = field("kind");
  if (v == nullptr || !v->is_number_unsigned() || v->get<uint64_t>() != audit_record_version) {
    info.status = S::bad_fields;
    info.why = "unsupported record version (expected \"v\":" + std::to_string(audit_record_version) + ")";
    return info;
  }
  if (seq == nullptr || !seq->is_number_unsigned() || kind == nullptr || !kind->is_string()) {
    info.status = S::bad_fields;
    info.why = "the record has no numeric \"seq\" or no \"kind\"";
    return info;
  }
  info.seq = seq->get<uint64_t>();
  info.kind = kind->get<std::string>();
  if (const auto* ts = field("ts"); ts != nullptr && ts->is_string()) info.ts = ts->get<std::string>();
  if (info.kind == audit_kind::audit_file) {
    const auto* epoch = field("epoch");
    const auto* prev_seq = field("prev_seq");
    const auto* prev_mac = field("prev_mac");
    const auto* prev_file = field("prev_file");
    std::optional<AuditMac> pm;
    if (prev_mac != nullptr && prev_mac->is_string()) pm = mac_from_hex(prev_mac->get<std::string>());
    if (epoch != nullptr && epoch->is_number_unsigned() && prev_seq != nullptr &&
        prev_seq->is_number_unsigned() && pm && prev_file != nullptr &&
        (prev_file->is_string() || prev_file->is_null())) {
      info.header_ok = true;
      info.epoch = epoch->get<uint64_t>();
      info.prev_seq = prev_seq->get<uint64_t>();
      info.prev_mac = *pm;
      info.prev_file = prev_file->is_string() ? prev_file->get<std::string>() : "";
    }
  }
  return info;
}

std::string to_hex(const unsigned char* data, size_t size) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(2 * size, '0');
  for (size_t i = 0; i < size; ++i) {
    out[2 * i] = digits[data[i] >> 4];
    out[2 * i + 1] = digits[data[i] & 0xf];
  }
  return out;
}

std::optional<AuditMac> mac_from_hex(std::string_view hex) {
  // Lower case only: the writer emits lower case, and accepting both would
  // let a byte of a line change without changing what it means.
  if (hex.size() != 2 * audit_mac_size) return std::nullopt;
  for (char c : hex) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
  }
  AuditMac mac{};
  if (!parse_hex32(hex, mac)) return std::nullopt;
  return mac;
}

std::string format_audit_ts(std::chrono::system_clock::time_point at) {
  using namespace std::chrono;
  const auto us = duration_cast<microseconds>(at.time_since_epoch()).count();
  int64_t secs = us / 1000000;
  int64_t frac = us % 1000000;
  if (frac < 0) {
    frac += 1000000;
    --secs;
  }
  // Every audit record has a timestamp and most share their second with
  // the previous one on the same thread: the calendar part (gmtime_r and
  // snprintf, the costliest step of building a record) is kept per thread.
  thread_local int64_t cached_secs = INT64_MIN;
  thread_local std::array<char, 20> cached{};  // "YYYY-MM-DDTHH:MM:SS."
  if (secs != cached_secs) {
    const auto t = static_cast<std::time_t>(secs);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[64];
    (void)std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900, tm.tm_mon + 1,
                        tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (std::strlen(buf) != cached.size()) {
      // Not the fixed shape (no such year fits system_clock): not cached.
      (void)std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), "%06dZ",
                          static_cast<int>(frac));
      return buf;
    }
    std::memcpy(cached.data(), buf, cached.size());
    cached_secs = secs;
  }
  std::string out(cached.data(), cached.size());
  char digits[7] = {};
  for (int i = 5; i >= 0; --i) {
    digits[i] = static_cast<char>('0' + frac % 10);
    frac /= 10;
  }
  out.append(digits, 6);
  out += 'Z';
  return out;
}

std::optional<std::chrono::system_clock::time_point> parse_audit_ts(std::string_view text) {
  // Exactly the shape format_audit_ts writes.
  if (text.size() != 27 || text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' ||
      text[16] != ':' || text[19] != '.' || text[26] != 'Z') {
    return std::nullopt;
  }
  auto num = [&](size_t at, size_t len, int& out) {
    auto [ptr, ec] = std::from_chars(text.data() + at, text.data() + at + len, out);
    return ec == std::errc{} && ptr == text.data() + at + len;
  };
  std::tm tm{};
  int year = 0;
  int month = 0;
  int micros = 0;
  if (!num(0, 4, year) || !num(5, 2, month) || !num(8, 2, tm.tm_mday) || !num(11, 2, tm.tm_hour) ||
      !num(14, 2, tm.tm_min) || !num(17, 2, tm.tm_sec) || !num(20, 6, micros)) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  const std::time_t t = timegm(&tm);
  return std::chrono::system_clock::from_time_t(t) + std::chrono::microseconds(micros);
}

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

Status fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return Error::make(sqlstate::internal_error, "cannot open directory " + dir + ": " + errno_text(errno));
  }
  Status st = ok_status();
  if (::fsync(fd) != 0) {
    st = Error::make(sqlstate::internal_error, "cannot fsync directory " + dir + ": " + errno_text(errno));
  }
  (void)::close(fd);
  return st;
}

Status write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::make(sqlstate::internal_error, errno_text(errno));
    if (n == 0) return Error::make(sqlstate::internal_error, "write returned 0");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return ok_status();
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the message, possibly not in buf.
  return strerror_r(err, buf, sizeof buf);
}

}  // namespace pgcloak::proxy
