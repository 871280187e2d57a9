#include "proxy/audit_analyzer.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgcloak::proxy {

namespace {

// Length of the UTF-8 sequence starting at s[i], 0 if it is not a valid one
// (overlong forms, surrogates and code points above U+10FFFF included).
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return n;
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_safe(std::string_view s) {
  if (valid_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_sequence(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    } else {
      out.append(s, i, n);
      i += n;
    }
  }
  return out;
}

nlohmann::json string_array(const std::vector<std::string>& items) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& s : items) a.push_back(utf8_safe(s));
  return a;
}

// The bind values as the JSON text that gets sealed. Text-format values are
// JSON strings; bytes that are not UTF-8 (binary-format parameters) are
// kept exactly, as {"base64": ...}.
std::string parameters_text(const std::vector<std::optional<std::string>>& params) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& p : params) {
    if (!p) {
      a.push_back(nullptr);
    } else if (valid_utf8(*p)) {
      a.push_back(*p);
    } else {
      std::string b64(4 * ((p->size() + 2) / 3), '\0');
      const int n =
          EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()),
                          reinterpret_cast<const unsigned char*>(p->data()), static_cast<int>(p->size()));
      b64.resize(static_cast<size_t>(n));
      a.push_back({{"base64", b64}});
    }
  }
  return a.dump();
}

}  // namespace

nlohmann::json to_json(const rules::StatementAudit& audit) {
  nlohmann::json j = nlohmann::json::object();
  j["fingerprint"] = audit.fingerprint;
  j["normalized"] = utf8_safe(audit.normalized);
  j["class"] = std::string(rules::audit_class_name(audit.audit_class));
  j["command"] = audit.command;
  j["relations"] = string_array(audit.relations);
  j["protected_columns"] = string_array(audit.protected_columns);
  if (audit.copy) {
    j["copy"] = {{"direction", audit.copy->from ? "from" : "to"},
                 {"query", audit.copy->query},
                 {"endpoint", audit.copy->endpoint}};
  } else {
    j["copy"] = nullptr;
  }
  j["parse_error"] = audit.parse_error;
  return j;
}

AuditAnalyzer::AuditAnalyzer(ProtectionSource protection, std::shared_ptr<const ParameterSealer> sealer,
                             size_t cache_bytes)
    : protection_(std::move(protection)), sealer_(std::move(sealer)), cache_(cache_bytes) {}

nlohmann::json AuditAnalyzer::analyze(const StatementCapture& capture) {
  std::string text = "{";
  text += analyze_fragment(capture);
  text += '}';
  return nlohmann::json::parse(text);
}

std::string AuditAnalyzer::analyze_fragment(const StatementCapture& capture) {
  static const std::string empty;
  const std::string& sql = capture.sql != nullptr ? *capture.sql : empty;
  std::shared_ptr<const rules::Protection> protection = protection_ ? protection_() : nullptr;
  std::shared_ptr<const rules::StatementAudit> audit;
  std::string out;
  {
    std::lock_guard lock(mutex_);
    if (protection.get() != prepared_protection_) {
      // A reload or catalog refresh: forget the old analyses (and let the
      // old protection go).
      prepared_.clear();
      prepared_protection_ = protection.get();
    }
    if (capture.extended && capture.sql != nullptr) {
      const PreparedKey key{capture.sql.get(), capture.index, protection.get()};
      if (auto p = prepared_.find(key); p != prepared_.end()) {
        audit = p->second.audit;
      } else {
        audit = cache_.get(sql, capture.index, protection);
        if (prepared_.size() >= max_prepared) prepared_.clear();
        prepared_.emplace(key, PreparedEntry{capture.sql, protection, audit});
      }
    } else {
      audit = cache_.get(sql, capture.index, protection);
    }
    if (auto declared = track_cursor(capture.connection, *audit, audit)) {
      // FETCH: the relations and protected columns its rows come from.
      nlohmann::json j = to_json(*audit);
      j["relations"] = string_array(declared->relations);
      j["protected_columns"] = string_array(declared->protected_columns);
      j["cursor"] = utf8_safe(audit->cursor_name);
      std::string f = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      out = f.substr(1, f.size() - 2);
      return with_sealed(capture, sql, *audit, std::move(out));
    }
    // The fields as JSON text, once per analysis: statements repeat (the
    // cache above), and so does their text.
    auto it = fragments_.find(audit.get());
    if (it == fragments_.end()) {
      if (fragments_.size() >= max_fragments) fragments_.clear();
      std::string f = to_json(*audit).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      f = f.substr(1, f.size() - 2);  // without the braces
      it = fragments_.emplace(audit.get(), std::make_pair(audit, std::move(f))).first;
    }
    out = it->second.second;
  }
  return with_sealed(capture, sql, *audit, std::move(out));
}

std::shared_ptr<const rules::StatementAudit> AuditAnalyzer::track_cursor(
    uint64_t connection, const rules::StatementAudit& a,
    const std::shared_ptr<const rules::StatementAudit>& self) {
  using Op = rules::StatementAudit::CursorOp;
  if (a.parse_error || a.cursor_op == Op::none) return nullptr;
  if (a.cursor_op == Op::fetch) {
    auto c = cursors_.find(connection);
    if (c == cursors_.end()) return nullptr;
    auto it = c->second.find(a.cursor_name);
    return it == c->second.end() ? nullptr : it->second;
  }
  if (a.cursor_op == Op::close) {
    auto c = cursors_.find(connection);
    if (c == cursors_.end()) return nullptr;
    if (a.cursor_name.empty()) {
      cursor_count_ -= c->second.size();
      cursors_.erase(c);
    } else {
      cursor_count_ -= c->second.erase(a.cursor_name);
    }
    return nullptr;
  }
  // DECLARE.
  if (cursor_count_ >= max_cursors) {
    cursors_.clear();
    cursor_count_ = 0;
  }
  auto [it, added] = cursors_[connection].insert_or_assign(a.cursor_name, self);
  if (added) ++cursor_count_;
  return nullptr;
}

std::string AuditAnalyzer::with_sealed(const StatementCapture& capture, const std::string& sql,
                                       const rules::StatementAudit& audit, std::string out) {
  if (sealer_ == nullptr) return out;
  // audit.log_parameters: the original, sealed. A seal that fails leaves
  // the field null with the reason; never the clear text.
  nlohmann::json extra = nlohmann::json::object();
  const std::string_view text =
      std::string_view(sql).substr(std::min(audit.offset, sql.size()), audit.length);
  auto sealed = sealer_->seal(text);
  if (sealed) {
    extra["sealed_text"] = *sealed;
  } else {
    extra["sealed_text"] = nullptr;
    extra["seal_error"] = sealed.error().message;
  }
  if (capture.parameters) {
    std::string params = parameters_text(*capture.parameters);
    auto sealed_params = sealer_->seal(params);
    OPENSSL_cleanse(params.data(), params.size());
    if (sealed_params) {
      extra["sealed_parameters"] = *sealed_params;
    } else {
      extra["sealed_parameters"] = nullptr;
      extra["seal_error"] = sealed_params.error().message;
    }
  }
  std::string e = extra.dump();
  out += ',';
  out.append(e, 1, e.size() - 2);
  return out;
}

uint64_t AuditAnalyzer::cache_hits() const {
  std::lock_guard lock(mutex_);
  return cache_.hits();
}

uint64_t AuditAnalyzer::cache_misses() const {
  std::lock_guard lock(mutex_);
  return cache_.misses();
}

AuditLog::Analyzer make_audit_analyzer(AuditAnalyzer::ProtectionSource protection,
                                       std::shared_ptr<const ParameterSealer> sealer) {
  auto analyzer = std::make_shared<AuditAnalyzer>(std::move(protection), std::move(sealer));
  return [analyzer](const StatementCapture& capture) { return analyzer->analyze_fragment(capture); };
}

}  // namespace pgcloak::proxy
