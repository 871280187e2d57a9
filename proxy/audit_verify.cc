#include "proxy/audit_verify.h"

#include <algorithm>
#include <charconv>

#include "proxy/audit_compress.h"
#include "proxy/audit_file_sink.h"

namespace pgcloak::proxy {

namespace {

using S = AuditLineInfo::Status;

// A file's first line, read without decompressing the whole file.
struct FirstLine {
  std::string text;
  bool complete = false;   // ended with '\n'
  bool empty = false;      // the file has no bytes at all
  bool cut_short = false;  // a compressed stream ended before the first line did
};

Result<FirstLine> read_first_line(const std::string& path) {
  auto reader = AuditFileReader::open(path);
  if (!reader) return reader.error();
  FirstLine out;
  std::string buf(65536, '\0');
  constexpr size_t max_header = size_t{1} << 20;
  for (;;) {
    auto n = (*reader)->read(buf.data(), buf.size());
    if (!n && (*reader)->cut_short()) {
      // zstd decodes whole blocks: a cut file may yield nothing at all.
      out.cut_short = true;
      break;
    }
    if (!n) return n.error();
    if (*n == 0) break;
    const std::string_view got(buf.data(), *n);
    const auto nl = got.find('\n');
    out.text.append(got.substr(0, nl));
    if (nl != std::string_view::npos) {
      out.complete = true;
      break;
    }
    if (out.text.size() > max_header) break;
  }
  out.empty = out.text.empty() && !out.complete;
  return out;
}

// Logical name of a file: its base name without .zst or .gz (the name
// headers use).
std::string logical_name(const std::string& path) {
  std::string b = base_of(path);
  b.resize(b.size() - compressed_suffix_of(b).size());
  return b;
}

// seq of a line without a full parse, for looking ahead. Every record
// starts with {"v":1,"seq":
std::optional<uint64_t> quick_seq(std::string_view line) {
  constexpr std::string_view prefix = "{\"v\":1,\"seq\":";
  if (line.substr(0, prefix.size()) != prefix) return std::nullopt;
  uint64_t seq = 0;
  const char* b = line.data() + prefix.size();
  auto [ptr, ec] = std::from_chars(b, line.data() + line.size(), seq);
  if (ec != std::errc{} || ptr == b) return std::nullopt;
  return seq;
}

struct Header {
  std::string path;
  AuditLineInfo info;
};

class Verifier {
 public:
  Verifier(const AuditKey& key, const AuditVerifyOptions& options, AuditVerifyReport& report)
      : initial_(key), options_(options), report_(report) {}

  void run(const std::vector<std::string>& paths);

 private:
  bool fail(AuditProblemKind kind, const std::string& file, uint64_t line, std::string message) {
    report_.last_seq = seq_;
    report_.problem = AuditProblem{kind, file, line, std::move(message)};
    return false;
  }
  bool read_headers(const std::vector<std::string>& paths, std::vector<Header>& headers);
  bool verify_file(const Header& h, bool first, bool last);
  bool check_record(const std::string& path, const std::vector<std::string_view>& lines, size_t i,
                    const AuditKey& key);

  const AuditKey& initial_;
  const AuditVerifyOptions& options_;
  AuditVerifyReport& report_;
  // The chain so far.
  uint64_t seq_ = 0;
  AuditMac mac_{};
  std::string last_kind_;
  std::string prev_path_;
  uint64_t prev_lines_ = 0;
};

bool Verifier::read_headers(const std::vector<std::string>& paths, std::vector<Header>& headers) {
  for (const auto& p : paths) {
    auto first = read_first_line(p);
    if (!first) return fail(AuditProblemKind::unreadable_file, p, 0, first.error().message);
    if (first->cut_short && !first->complete) {
      return fail(AuditProblemKind::truncated_file, p, 1,
                  "the compressed stream ends before its first line does: the file was cut short");
    }
    if (first->empty) {
      return fail(AuditProblemKind::truncated_file, p, 1,
                  "the file is empty (expected an audit_file header)");
    }
    if (!first->complete) {
      return fail(AuditProblemKind::truncated_file, p, 1,
                  "the file ends inside its first line: it was cut in the middle of its header record");
    }
    AuditLineInfo info = parse_audit_line(first->text);
    if (info.status == S::no_mac || info.status == S::bad_json) {
      return fail(AuditProblemKind::bad_json, p, 1, info.why);
    }
    if (info.status != S::ok) return fail(AuditProblemKind::bad_record, p, 1, info.why);
    if (info.kind != audit_kind::audit_file || !info.header_ok) {
      return fail(
          AuditProblemKind::bad_record, p, 1,
          "line 1 is not an audit_file header (kind \"" + info.kind +
              "\"): the file's first record was removed or altered, or this is not a pgcloak audit file");
    }
    headers.push_back({p, std::move(info)});
  }
  std::stable_sort(headers.begin(), headers.end(), [](const Header& a, const Header& b) {
    return a.info.epoch != b.info.epoch ? a.info.epoch < b.info.epoch : a.info.seq < b.info.seq;
  });
  for (size_t i = 1; i < headers.size(); ++i) {
    if (headers[i].info.epoch == headers[i - 1].info.epoch) {
      return fail(AuditProblemKind::duplicate_file, headers[i].path, 1,
                  "has the same epoch (" + std::to_string(headers[i].info.epoch) + ") as " +
                      headers[i - 1].path +
                      ": give each file once (not both a file and its compressed copy)");
    }
  }
  return true;
}

void Verifier::run(const std::vector<std::string>& paths) {
  std::vector<Header> headers;
  if (!read_headers(paths, headers)) return;
  for (size_t i = 0; i < headers.size(); ++i) {
    if (!verify_file(headers[i], i == 0, i + 1 == headers.size())) return;
  }
  report_.last_seq = seq_;
  if (last_kind_ != audit_kind::audit_stopped) {
    std::string what = "the newest record is seq " + std::to_string(seq_) + " (" + last_kind_ +
                       "), not audit_stopped: pgcloak is still running or stopped without closing the log "
                       "(a crash), or the end of the log was cut at a record boundary";
    if (options_.expect_stopped) {
      fail(AuditProblemKind::not_stopped, prev_path_, prev_lines_ + 1, what);
      return;
    }
    report_.notes.push_back(what + " (use --expect-stopped to treat this as a failure)");
  }
}

bool Verifier::verify_file(const Header& h, bool first, bool last) {
  const std::string& path = h.path;
  auto content = read_audit_file(path);
  if (!content) {
    return fail(AuditProblemKind::truncated_file, path, 0,
                content.error().message + " (a compressed file that was cut short reads like this)");
  }
  ++report_.files;
  const std::string& c = *content;
  std::vector<std::string_view> lines;
  size_t start = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i] == '\n') {
      lines.emplace_back(c.data() + start, i - start);
      start = i + 1;
    }
  }
  const bool torn = start < c.size();

  // Parsed again from this read: h.info (from the ordering pass) points
  // into a buffer that is gone, and the file must not have changed since.
  if (lines.empty()) {
    return fail(AuditProblemKind::truncated_file, path, 1,
                "the file lost its header while it was being read");
  }
  const AuditLineInfo hdr = parse_audit_line(lines[0]);
  if (hdr.status != S::ok || !hdr.header_ok || hdr.epoch != h.info.epoch || hdr.seq != h.info.seq) {
    return fail(AuditProblemKind::bad_record, path, 1, "the header changed while the file was being read");
  }
  AuditKey key = initial_;
  if (!key.ratchet_to(hdr.epoch)) {
    return fail(
        AuditProblemKind::wrong_key, path, 1,
        "the file is at key epoch " + std::to_string(hdr.epoch) + " but the key given is at epoch " +
            std::to_string(initial_.epoch()) +
            ": keys only ratchet forward, so verify with the initial key (or one of an earlier epoch)");
  }
  if (audit_mac(key, hdr.prev_mac, hdr.parts.canonical) != hdr.parts.mac) {
    return fail(AuditProblemKind::modified_record, path, 1,
                "the header record's MAC does not match: it was modified (or the key is wrong)");
  }
  if (first) {
    seq_ = hdr.prev_seq;
    mac_ = hdr.prev_mac;
    report_.first_seq = hdr.seq;
    if (!hdr.prev_file.empty()) {
      report_.notes.push_back("the chain begins in " + path + " after seq " + std::to_string(hdr.prev_seq) +
                              " of " + hdr.prev_file +
                              ", which was not given (earlier files removed by retention, or left out)");
    }
  } else if (hdr.prev_seq != seq_ || hdr.prev_mac != mac_) {
    const std::string prev_logical = logical_name(prev_path_);
    if (hdr.prev_file != prev_logical) {
      return fail(AuditProblemKind::missing_file, path, 1,
                  "continues from " + (hdr.prev_file.empty() ? std::string("nothing") : hdr.prev_file) +
                      " (its last record is seq " + std::to_string(hdr.prev_seq) +
                      "), which was not given; the " + "previous file given, " + prev_path_ +
                      ", ends at seq " + std::to_string(seq_));
    }
    if (hdr.prev_seq > seq_) {
      return fail(AuditProblemKind::truncated_file, prev_path_, prev_lines_ + 1,
                  "the file ends at seq " + std::to_string(seq_) + " (line " + std::to_string(prev_lines_) +
                      ") but " + path + " says it ended at seq " + std::to_string(hdr.prev_seq) +
                      ": records " + std::to_string(seq_ + 1) + ".." + std::to_string(hdr.prev_seq) +
                      " were cut off");
    }
    if (hdr.prev_seq < seq_) {
      return fail(AuditProblemKind::bad_record, prev_path_, prev_lines_ - (seq_ - hdr.prev_seq) + 1,
                  "records after seq " + std::to_string(hdr.prev_seq) + " follow, but " + path +
                      " says the file ended there: they were added");
    }
    return fail(AuditProblemKind::modified_record, prev_path_, prev_lines_,
                "the last record does not match the MAC that " + path + " says it had: it was replaced");
  }
  if (hdr.seq != hdr.prev_seq + 1) {
    return fail(
        AuditProblemKind::bad_record, path, 1,
        "the header has seq " + std::to_string(hdr.seq) + " after seq " + std::to_string(hdr.prev_seq));
  }
  seq_ = hdr.seq;
  mac_ = hdr.parts.mac;
  last_kind_ = hdr.kind;
  ++report_.records;

  for (size_t i = 1; i < lines.size(); ++i) {
    if (!check_record(path, lines, i, key)) return false;
  }
  report_.last_seq = seq_;
  prev_path_ = path;
  prev_lines_ = lines.size();
  if (torn) {
    std::string msg = "line " + std::to_string(lines.size() + 1) +
                      " is incomplete: the file was cut in the middle of a record (records up to seq " +
                      std::to_string(seq_) + " verify)";
    if (last) {
      msg +=
          ". In the newest file this is also what a crash leaves behind; pgcloak cuts such a line at "
          "its next start and says so in its audit_started record. It is tampering only if pgcloak was "
          "stopped cleanly (audit_stopped expected).";
    }
    return fail(AuditProblemKind::truncated_file, path, lines.size() + 1, msg);
  }
  return true;
}

bool Verifier::check_record(const std::string& path, const std::vector<std::string_view>& lines, size_t i,
                            const AuditKey& key) {
  const uint64_t line_no = i + 1;
  const AuditLineInfo info = parse_audit_line(lines[i]);
  if (info.status == S::no_mac || info.status == S::bad_json) {
    return fail(AuditProblemKind::bad_json, path, line_no, info.why + " (modified?)");
  }
  if (info.status != S::ok) return fail(AuditProblemKind::bad_record, path, line_no, info.why);
  const uint64_t expected = seq_ + 1;
  const bool mac_ok = audit_mac(key, mac_, info.parts.canonical) == info.parts.mac;
  if (mac_ok && info.kind == audit_kind::audit_file) {
    return fail(AuditProblemKind::bad_record, path, line_no, "an audit_file header in the middle of a file");
  }
  if (mac_ok && info.seq == expected) {
    seq_ = info.seq;
    mac_ = info.parts.mac;
    last_kind_ = info.kind;
    ++report_.records;
    return true;
  }
  if (mac_ok) {
    return fail(AuditProblemKind::bad_record, path, line_no,
                "seq " + std::to_string(info.seq) + " where " + std::to_string(expected) +
                    " was expected, yet the MAC chains: records were written with the key out of order");
  }
  if (info.seq == expected) {
    return fail(AuditProblemKind::modified_record, path, line_no,
                "seq " + std::to_string(info.seq) + ": the MAC does not match; the record was modified");
  }
  // The seq is not the expected one and the MAC does not chain. If the
  // next line carries expected+1, this line's own seq was edited.
  if (i + 1 < lines.size() && quick_seq(lines[i + 1]) == expected + 1) {
    return fail(AuditProblemKind::modified_record, path, line_no,
                "seq " + std::to_string(info.seq) + " where " + std::to_string(expected) +
                    " was expected, and the MAC does not match: the record was modified");
  }
  if (info.seq > expected) {
    for (size_t j = i + 1; j < lines.size(); ++j) {
      if (quick_seq(lines[j]) == expected) {
        return fail(AuditProblemKind::reordered_records, path, line_no,
                    "seq " + std::to_string(info.seq) + " where " + std::to_string(expected) +
                        " was expected; seq " + std::to_string(expected) + " comes later, at line " +
                        std::to_string(j + 1) + ": records were reordered");
      }
    }
    return fail(AuditProblemKind::deleted_records, path, line_no,
                "seq " + std::to_string(info.seq) + " follows seq " + std::to_string(seq_) + ": " +
                    (info.seq - expected == 1 ? "record " + std::to_string(expected) + " was"
                                              : "records " + std::to_string(expected) + ".." +
                                                    std::to_string(info.seq - 1) + " were") +
                    " deleted");
  }
  return fail(AuditProblemKind::reordered_records, path, line_no,
              "seq " + std::to_string(info.seq) + " comes after seq " + std::to_string(seq_) +
                  ": records were reordered or repeated");
}

}  // namespace

std::string_view to_string(AuditProblemKind kind) {
  switch (kind) {
    case AuditProblemKind::modified_record: return "modified record";
    case AuditProblemKind::deleted_records: return "deleted records";
    case AuditProblemKind::reordered_records: return "reordered records";
    case AuditProblemKind::truncated_file: return "truncated file";
    case AuditProblemKind::missing_file: return "missing file";
    case AuditProblemKind::bad_json: return "bad JSON";
    case AuditProblemKind::bad_record: return "bad record";
    case AuditProblemKind::wrong_key: return "wrong key";
    case AuditProblemKind::unreadable_file: return "unreadable file";
    case AuditProblemKind::duplicate_file: return "duplicate file";
    case AuditProblemKind::not_stopped: return "not stopped";
  }
  return "?";
}

std::string AuditVerifyReport::format() const {
  std::string out;
  if (problem) {
    out += "FAILED: " + problem->file;
    if (problem->line > 0) out += ":" + std::to_string(problem->line);
    out += ": " + std::string(to_string(problem->kind)) + ": " + problem->message + "\n";
    if (records > 0) {
      out += "before it, " + std::to_string(records) + " records verified (seq " + std::to_string(first_seq) +
             ".." + std::to_string(last_seq) + ")\n";
    }
  } else {
    out += "OK: " + std::to_string(records) + " records in " + std::to_string(files) +
           " files verified, seq " + std::to_string(first_seq) + ".." + std::to_string(last_seq) + "\n";
  }
  for (const auto& n : notes) out += "note: " + n + "\n";
  return out;
}

AuditVerifyReport verify_audit_files(const std::vector<std::string>& files, const AuditKey& initial_key,
                                     const AuditVerifyOptions& options) {
  AuditVerifyReport report;
  if (files.empty()) {
    report.problem = AuditProblem{AuditProblemKind::missing_file, "", 0, "no files given"};
    return report;
  }
  // A shell glob such as audit.jsonl* also matches what is not part of the
  // chain: skipping these cannot hide records, since the chain would then
  // run through a missing file.
  std::vector<std::string> chain_files;
  for (const auto& f : files) {
    const std::string name = base_of(f);
    const std::string_view stem =
        std::string_view(name).substr(0, name.size() - std::min<size_t>(4, name.size()));
    if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp" && !compressed_suffix_of(stem).empty()) {
      report.notes.push_back("skipped " + f + ": an unfinished compression (pgcloak removes it)");
    } else if (name.find(".discarded-") != std::string::npos) {
      report.notes.push_back("skipped " + f +
                             ": bytes cut from the end of the active file at a restart because they did not "
                             "verify (kept as evidence; see the audit_started record)");
    } else {
      chain_files.push_back(f);
    }
  }
  if (chain_files.empty()) {
    report.problem = AuditProblem{AuditProblemKind::missing_file, "", 0, "no audit files given"};
    return report;
  }
  Verifier v(initial_key, options, report);
  v.run(chain_files);
  return report;
}

}  // namespace pgcloak::proxy
