// YAML -> Config. yaml-cpp reports positions through Node::Mark(), which we
// carry into every issue so --check-config can point at the offending line.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "rules/config.h"
#include "rules/mask_sql.h"

namespace pgcloak::rules {

std::string_view to_string(SslMode mode) {
  switch (mode) {
    case SslMode::disable: return "disable";
    case SslMode::prefer: return "prefer";
    case SslMode::require: return "require";
    case SslMode::verify_full: return "verify-full";
  }
  return "?";
}

std::string UpstreamConfig::unix_socket_path() const {
  return host + "/.s.PGSQL." + std::to_string(port);
}

std::string UpstreamConfig::describe() const {
  if (is_unix_socket()) return "Unix socket " + unix_socket_path();
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string ConfigLoad::format(std::string_view source) const {
  std::string out;
  for (const auto& i : issues) {
    out += std::string(source) + ":" + std::to_string(i.line) + ":" + std::to_string(i.column) + ": " +
           i.message + "\n";
  }
  return out;
}

Result<Duration> parse_duration(std::string_view text) {
  uint64_t n = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc{} || ptr == text.data()) {
    return Error::make(sqlstate::config_file_error,
                       "invalid duration \"" + std::string(text) + "\": use e.g. 500ms, 10s, 5m, 1h, 2d");
  }
  std::string_view unit(ptr, text.data() + text.size() - ptr);
  static const std::map<std::string_view, uint64_t> units{
      {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"min", 60000}, {"h", 3600000}, {"d", 86400000}};
  auto it = units.find(unit);
  if (it == units.end()) {
    return Error::make(sqlstate::config_file_error,
                       "invalid duration unit \"" + std::string(unit) + "\": use ms, s, m, h or d");
  }
  if (n > (uint64_t{1} << 40) / it->second) {
    return Error::make(sqlstate::config_file_error, "duration \"" + std::string(text) + "\" is too large");
  }
  return Duration(static_cast<int64_t>(n * it->second));
}

Result<uint64_t> parse_size(std::string_view text) {
  uint64_t n = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc{} || ptr == text.data()) {
    return Error::make(sqlstate::config_file_error,
                       "invalid size \"" + std::string(text) + "\": use e.g. 65536, 64KiB, 16MiB, 1GiB");
  }
  std::string_view unit(ptr, text.data() + text.size() - ptr);
  static const std::map<std::string_view, uint64_t> units{{"", 1},
                                                          {"B", 1},
                                                          {"kB", 1ULL << 10},
                                                          {"KiB", 1ULL << 10},
                                                          {"MB", 1ULL << 20},
                                                          {"MiB", 1ULL << 20},
                                                          {"GB", 1ULL << 30},
                                                          {"GiB", 1ULL << 30}};
  auto it = units.find(unit);
  if (it == units.end()) {
    return Error::make(sqlstate::config_file_error,
                       "invalid size unit \"" + std::string(unit) + "\": use B, KiB, MiB or GiB");
  }
  if (n > (uint64_t{1} << 50) / it->second) {
    return Error::make(sqlstate::config_file_error, "size \"" + std::string(text) + "\" is too large");
  }
  return n * it->second;
}

// --- masking: model helpers (rules/masking_config.h) --------------------------

const std::vector<std::string_view>& builtin_mask_categories() {
  static const std::vector<std::string_view> names{"email",       "phone",   "national_id", "card_number",
                                                   "person_name", "address", "birth_date",  "free_text"};
  return names;
}

std::string QualifiedColumn::quoted() const {
  return quote_ident(schema) + "." + quote_ident(table) + "." + quote_ident(column);
}

// PostgreSQL's identifier rules (docs, "Identifiers and Key Words"): unquoted
// names are letters, digits, _ and $ (not first), folded to lower case;
// "quoted" names are kept as written with "" standing for ". Non-ASCII bytes
// count as letters and are not folded, as in a UTF-8 database.
std::optional<std::vector<std::string>> parse_qualified_name(std::string_view text, size_t parts,
                                                             std::string& why) {
  constexpr size_t max_identifier_bytes = 63;  // NAMEDATALEN - 1
  std::vector<std::string> out;
  size_t i = 0;
  for (;;) {
    std::string part;
    if (i < text.size() && text[i] == '"') {
      ++i;
      bool closed = false;
      while (i < text.size()) {
        if (text[i] == '"') {
          if (i + 1 < text.size() && text[i + 1] == '"') {
            part += '"';
            i += 2;
            continue;
          }
          closed = true;
          ++i;
          break;
        }
        part += text[i++];
      }
      if (!closed) {
        why = "unterminated quoted identifier";
        return std::nullopt;
      }
      if (part.empty()) {
        why = "zero-length quoted identifier";
        return std::nullopt;
      }
      if (part.find('\0') != std::string::npos) {
        why = "identifier contains a NUL character";
        return std::nullopt;
      }
    } else {
      auto letter = [](unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
      };
      auto follow = [&](unsigned char c) { return letter(c) || (c >= '0' && c <= '9') || c == '$'; };
      if (i >= text.size() || !letter(static_cast<unsigned char>(text[i]))) {
        why = "expected an identifier at \"" + std::string(text.substr(i)) + "\"";
        return std::nullopt;
      }
      while (i < text.size() && follow(static_cast<unsigned char>(text[i]))) {
        char c = text[i++];
        part += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
      }
    }
    if (part.size() > max_identifier_bytes) {
      why = "identifier \"" + part + "\" is longer than 63 bytes";
      return std::nullopt;
    }
    out.push_back(std::move(part));
    if (i == text.size()) break;
    if (text[i] != '.') {
      why = "unexpected \"" + std::string(text.substr(i)) +
            "\" (write \"Quoted\" identifiers for other characters)";
      return std::nullopt;
    }
    ++i;
  }
  if (out.size() != parts) {
    why = "expected " + std::to_string(parts) + " dot-separated parts, found " + std::to_string(out.size());
    return std::nullopt;
  }
  return out;
}

std::optional<QualifiedColumn> parse_qualified_column(std::string_view text, std::string& why) {
  auto parts = parse_qualified_name(text, 3, why);
  if (!parts) return std::nullopt;
  return QualifiedColumn{(*parts)[0], (*parts)[1], (*parts)[2]};
}

MaskSpec MaskPolicy::spec_for(const QualifiedColumn& column, std::string_view category) const {
  MaskSpec spec = default_spec;
  if (auto it = column_rules.find(column); it != column_rules.end()) {
    spec = it->second;
  } else if (auto ct = category_rules.find(std::string(category)); ct != category_rules.end()) {
    spec = ct->second;
  }
  if (spec.kind == MaskKind::pseudonym && !spec.pseudonym_kind) {
    spec.pseudonym_kind = category == "email" ? PseudonymKind::email : PseudonymKind::name;
  }
  return spec;
}

const ProtectedColumn* MaskingConfig::find_protected(const QualifiedColumn& column) const {
  for (const auto& p : protected_columns) {
    if (p.column == column) return &p;
  }
  return nullptr;
}

const MaskPolicy& MaskingConfig::policy_for(
    const std::function<bool(std::string_view role)>& is_member) const {
  for (const auto& p : policies) {
    for (const auto& r : p.roles) {
      if (is_member(r)) return p;
    }
  }
  return default_policy;
}

SecretSources system_secret_sources() {
  SecretSources s;
  s.read_file = [](const std::string& path) -> std::optional<std::string> {
    std::ifstream f(path, std::ios::binary);
    if (!f) return std::nullopt;
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  s.get_env = [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
  return s;
}

namespace {

// Walks one YAML mapping against a table of known keys. Unknown keys are
// reported rather than ignored: a misspelt "requre: true" must not silently
// leave TLS optional.
class Walker {
 public:
  explicit Walker(std::vector<ConfigIssue>& issues) : issues_(issues) {}

  void issue(const YAML::Node& at, std::string msg) {
    const auto m = at.Mark();
    issues_.push_back({m.line + 1, m.column + 1, std::move(msg)});
  }

  using Handler = std::function<void(const YAML::Node&)>;
  void mapping(const YAML::Node& node, std::string_view where,
               const std::vector<std::pair<std::string_view, Handler>>& keys) {
    if (!node.IsMap()) {
      issue(node, std::string(where) + " must be a mapping");
      return;
    }
    for (auto it = node.begin(); it != node.end(); ++it) {
      std::string key;
      try {
        key = it->first.as<std::string>();
      } catch (const YAML::Exception&) {
        issue(it->first, "keys in " + std::string(where) + " must be strings");
        continue;
      }
      auto k = std::find_if(keys.begin(), keys.end(), [&](const auto& e) { return e.first == key; });
      if (k == keys.end()) {
        std::string known;
        for (const auto& e : keys) known += (known.empty() ? "" : ", ") + std::string(e.first);
        issue(it->first,
              "unknown key \"" + key + "\" in " + std::string(where) + " (known keys: " + known + ")");
        continue;
      }
      k->second(it->second);
    }
  }

  bool scalar(const YAML::Node& n, std::string_view name, std::string& out) {
    if (!n.IsScalar()) {
      issue(n, std::string(name) + " must be a string");
      return false;
    }
    out = n.Scalar();
    return true;
  }

  void string(const YAML::Node& n, std::string_view name, std::string& out) { scalar(n, name, out); }

  // False (and an issue) when n is not a boolean.
  bool boolean(const YAML::Node& n, std::string_view name, bool& out) {
    std::string s;
    if (!scalar(n, name, s)) return false;
    if (s == "true" || s == "yes" || s == "on") {
      out = true;
    } else if (s == "false" || s == "no" || s == "off") {
      out = false;
    } else {
      issue(n, std::string(name) + " must be true or false, not \"" + s + "\"");
      return false;
    }
    return true;
  }

  template <class Int>
  void integer(const YAML::Node& n, std::string_view name, Int& out, uint64_t lo, uint64_t hi) {
    std::string s;
    if (!scalar(n, name, s)) return;
    uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || ptr != s.data() + s.size()) {
      issue(n, std::string(name) + " must be a non-negative integer, not \"" + s + "\"");
      return;
    }
    if (v < lo || v > hi) {
      issue(n, std::string(name) + " must be between " + std::to_string(lo) + " and " + std::to_string(hi));
      return;
    }
    out = static_cast<Int>(v);
  }

  void duration(const YAML::Node& n, std::string_view name, Duration& out) {
    std::string s;
    if (!scalar(n, name, s)) return;
    auto d = parse_duration(s);
    if (!d) {
      issue(n, std::string(name) + ": " + d.error().message);
      return;
    }
    out = *d;
  }

  template <class E>
  void enumeration(const YAML::Node& n, std::string_view name, E& out,
                   const std::vector<std::pair<std::string_view, E>>& values) {
    std::string s;
    if (!scalar(n, name, s)) return;
    for (const auto& [k, v] : values) {
      if (k == s) {
        out = v;
        return;
      }
    }
    std::string known;
    for (const auto& [k, v] : values) known += (known.empty() ? "" : ", ") + std::string(k);
    issue(n, std::string(name) + " must be one of " + known + ", not \"" + s + "\"");
  }

 private:
  std::vector<ConfigIssue>& issues_;
};

// "host:port", "[v6]:port". A bare ":port" means all IPv4 interfaces, which
// must be asked for explicitly as 0.0.0.0 to avoid exposing pgcloak by accident.
bool parse_listen(const std::string& s, ListenAddress& out, std::string& why) {
  std::string host;
  std::string port;
  if (!s.empty() && s.front() == '[') {
    auto close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') {
      why = "IPv6 addresses are written [addr]:port";
      return false;
    }
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else {
    auto colon = s.rfind(':');
    if (colon == std::string::npos) {
      why = "expected host:port";
      return false;
    }
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  if (host.empty()) {
    why = "host is empty: write 127.0.0.1, 0.0.0.0 or [::] explicitly";
    return false;
  }
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc{} || ptr != port.data() + port.size() || p == 0 || p > 65535) {
    why = "port must be 1-65535";
    return false;
  }
  out.host = host;
  out.port = static_cast<uint16_t>(p);
  return true;
}

void check_readable(Walker& w, const YAML::Node& at, const std::string& path, std::string_view name) {
  if (path.empty()) return;
  std::ifstream f(path);
  if (!f) w.issue(at, std::string(name) + ": cannot read \"" + path + "\"");
}

// --- masking: parsing -----------------------------------------------------------

// Checks that need the whole section (keys may come in any order), run after
// the walk.
struct MaskingParse {
  YAML::Node section;
  YAML::Node key_file_at;
  YAML::Node key_env_at;
  std::vector<YAML::Node> keyed_rules;                              // hash / pseudonym
  std::vector<std::pair<YAML::Node, std::string>> category_refs;    // must be known
  std::vector<std::pair<YAML::Node, QualifiedColumn>> column_refs;  // must be protected
  std::vector<std::pair<YAML::Node, std::string>> customs;          // templates to validate
};

size_t utf8_length(std::string_view s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

bool valid_category_name(std::string_view s) {
  if (s.empty() || !(s[0] >= 'a' && s[0] <= 'z')) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

// A rule value: "email", "allow", ... or {mask: partial, keep_first: 1, ...}.
bool parse_mask_spec(Walker& w, const YAML::Node& n, const std::string& where, MaskSpec& out,
                     MaskingParse& mp) {
  if (!n.IsScalar() && !n.IsMap() && !n.IsNull()) {
    w.issue(n, where + " must be a mask name or a mapping with a \"mask\" key");
    return false;
  }
  if (n.IsMap() && !n["mask"]) {
    w.issue(n, where + ": a mapping needs a \"mask\" key");
    return false;
  }
  // Constructed once: assigning to a yaml-cpp Node rewrites the node it
  // refers to.
  const YAML::Node name_at = n.IsMap() ? n["mask"] : n;
  std::string name;
  if (name_at.IsNull()) {
    name = "null";  // YAML reads an unquoted null (or ~) as a null, not as a string
  } else if (!w.scalar(name_at, where + ".mask", name)) {
    return false;
  }
  auto kind = mask_kind_from_string(name);
  if (!kind) {
    std::string known;
    for (auto k : {MaskKind::allow, MaskKind::deny, MaskKind::redact, MaskKind::null, MaskKind::partial,
                   MaskKind::email, MaskKind::last4, MaskKind::hash, MaskKind::pseudonym,
                   MaskKind::generalize, MaskKind::redact_patterns, MaskKind::custom}) {
      known += (known.empty() ? "" : ", ") + std::string(to_string(k));
    }
    w.issue(name_at, where + ": unknown mask \"" + name + "\" (known masks: " + known + ")");
    return false;
  }
  MaskSpec spec = MaskSpec::of(*kind);
  if (*kind == MaskKind::hash || *kind == MaskKind::pseudonym) mp.keyed_rules.push_back(n);
  const std::string m = where + " (" + name + ")";
  std::vector<std::pair<std::string_view, Walker::Handler>> keys{{"mask", [](const YAML::Node&) {}}};
  // Every mask knows the key, so that a misplaced mask_nulls gets a reason
  // rather than "unknown key".
  keys.push_back(
      {"mask_nulls", [&](const YAML::Node& v) {
         bool on = false;
         if (!w.boolean(v, m + ".mask_nulls", on)) return;
         if (on && !mask_nulls_supported(*kind)) {
           // See mask_nulls_supported() for why.
           std::string why = ": mask_nulls: true needs a mask that can give a NULL a stand-in ";
           why += "(redact, null or custom); ";
           if (*kind == MaskKind::allow) {
             why += "\"allow\" shows values as stored, and a NULL is stored as NULL";
           } else if (*kind == MaskKind::deny) {
             why += "\"deny\" refuses the column, so there is nothing to mask";
           } else {
             why += "\"" + name + "\" computes from the value and a NULL has none, so the NULLs ";
             why += "would still be recognisable. Use redact for columns whose NULL-ness is sensitive";
           }
           w.issue(v, m + why);
           return;
         }
         spec.mask_nulls = on;
       }});
  switch (*kind) {
    case MaskKind::partial:
      keys.push_back({"keep_first", [&](const YAML::Node& v) {
                        w.integer(v, m + ".keep_first", spec.keep_first, 0, max_partial_keep);
                      }});
      keys.push_back({"keep_last", [&](const YAML::Node& v) {
                        w.integer(v, m + ".keep_last", spec.keep_last, 0, max_partial_keep);
                      }});
      keys.push_back({"fill", [&](const YAML::Node& v) {
                        std::string f;
                        if (!w.scalar(v, m + ".fill", f)) return;
                        if (utf8_length(f) != 1 || f[0] == '\0') {
                          w.issue(v, m + ".fill must be exactly one character, not \"" + f + "\"");
                          return;
                        }
                        spec.fill = f;
                      }});
      break;
    case MaskKind::hash:
      keys.push_back({"length", [&](const YAML::Node& v) {
                        w.integer(v, m + ".length", spec.length, 1, max_hash_length);
                      }});
      break;
    case MaskKind::pseudonym:
      keys.push_back({"kind", [&](const YAML::Node& v) {
                        PseudonymKind k = PseudonymKind::name;
                        std::string s;
                        if (!w.scalar(v, m + ".kind", s)) return;
                        w.enumeration(v, m + ".kind", k,
                                      {{"name", PseudonymKind::name},
                                       {"first_name", PseudonymKind::first_name},
                                       {"last_name", PseudonymKind::last_name},
                                       {"email", PseudonymKind::email}});
                        spec.pseudonym_kind = k;
                      }});
      break;
    case MaskKind::generalize:
      keys.push_back({"to", [&](const YAML::Node& v) {
                        DatePart p = DatePart::year;
                        std::string s;
                        if (!w.scalar(v, m + ".to", s)) return;
                        if (s != "year" && s != "month" && s != "day") {
                          w.issue(v, m + ".to must be one of year, month, day, not \"" + s + "\"");
                          return;
                        }
                        w.enumeration(
                            v, m + ".to", p,
                            {{"year", DatePart::year}, {"month", DatePart::month}, {"day", DatePart::day}});
                        spec.to = p;
                      }});
      keys.push_back(
          {"bucket", [&](const YAML::Node& v) {
             uint64_t b = 0;
             std::string s;
             if (!w.scalar(v, m + ".bucket", s)) return;
             auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), b);
             if (ec != std::errc{} || ptr != s.data() + s.size() || b == 0 || b > 1000000000000000000ULL) {
               w.issue(v, m + ".bucket must be a positive whole number (at most 10^18), not \"" + s + "\"");
               return;
             }
             spec.bucket = b;
           }});
      break;
    case MaskKind::redact:
      keys.push_back({"value", [&](const YAML::Node& v) {
                        std::string s;
                        if (!w.scalar(v, m + ".value", s)) return;
                        if (s.find('\0') != std::string::npos) {
                          w.issue(v, m + ".value must not contain NUL characters");
                          return;
                        }
                        spec.value = s;
                      }});
      break;
    case MaskKind::custom:
      keys.push_back({"expression", [&](const YAML::Node& v) {
                        if (w.scalar(v, m + ".expression", spec.expression))
                          mp.customs.emplace_back(v, spec.expression);
                      }});
      break;
    default: break;
  }
  if (n.IsMap()) w.mapping(n, m, keys);
  if (*kind == MaskKind::generalize) {
    if (spec.to && spec.bucket) {
      w.issue(n, m + ": give either \"to\" (dates, timestamps) or \"bucket\" (numbers), not both");
    } else if (!n.IsMap() || (!n["to"] && !n["bucket"])) {
      w.issue(n, m + " needs \"to\" (year, month or day) for dates and timestamps, or a positive \"bucket\" "
                     "for numbers, e.g. {mask: generalize, to: year}");
    }
  }
  if (*kind == MaskKind::custom && spec.expression.empty() && (!n.IsMap() || !n["expression"])) {
    w.issue(
        n, m + " needs an \"expression\" using {value}, e.g. {mask: custom, expression: \"upper({value})\"}");
  }
  out = std::move(spec);
  return true;
}

// default: + rules: of a policy (or of default_policy).
void parse_policy_body(Walker& w, const std::string& where, MaskPolicy& p, MaskingParse& mp,
                       std::vector<std::pair<std::string_view, Walker::Handler>>& keys) {
  keys.push_back({"default", [&](const YAML::Node& v) {
                    MaskSpec s;
                    if (parse_mask_spec(w, v, where + ".default", s, mp)) p.default_spec = s;
                  }});
  keys.push_back({"rules", [&](const YAML::Node& v) {
                    if (!v.IsMap()) {
                      if (!v.IsNull())
                        w.issue(v, where + ".rules must be a mapping of category or column to mask");
                      return;
                    }
                    for (auto it = v.begin(); it != v.end(); ++it) {
                      std::string key;
                      if (!w.scalar(it->first, where + ".rules key", key)) continue;
                      MaskSpec s;
                      if (!parse_mask_spec(w, it->second, where + ".rules." + key, s, mp)) continue;
                      if (key.find('.') != std::string::npos || key.find('"') != std::string::npos) {
                        std::string why;
                        auto col = parse_qualified_column(key, why);
                        if (!col) {
                          w.issue(it->first, where + ".rules: invalid column \"" + key + "\": " + why);
                          continue;
                        }
                        if (p.column_rules.count(*col)) {
                          w.issue(it->first, where + ".rules: column \"" + key + "\" is listed twice");
                          continue;
                        }
                        mp.column_refs.emplace_back(it->first, *col);
                        p.column_rules[*col] = s;
                      } else {
                        if (p.category_rules.count(key)) {
                          w.issue(it->first, where + ".rules: category \"" + key + "\" is listed twice");
                          continue;
                        }
                        mp.category_refs.emplace_back(it->first, key);
                        p.category_rules[key] = s;
                      }
                    }
                  }});
}

void parse_masking(Walker& w, const YAML::Node& n, MaskingConfig& mc, MaskingParse& mp) {
  mp.section = n;
  w.mapping(
      n, "masking",
      {
          {"hash_key_file",
           [&](const YAML::Node& v) {
             mp.key_file_at = v;
             w.string(v, "masking.hash_key_file", mc.hash_key_file);
           }},
          {"hash_key_env",
           [&](const YAML::Node& v) {
             mp.key_env_at = v;
             w.string(v, "masking.hash_key_env", mc.hash_key_env);
           }},
          {"categories",
           [&](const YAML::Node& v) {
             if (!v.IsSequence()) {
               w.issue(v, "masking.categories must be a list of names");
               return;
             }
             for (const auto& e : v) {
               std::string s;
               if (!w.scalar(e, "masking.categories entry", s)) continue;
               const auto& builtin = builtin_mask_categories();
               if (!valid_category_name(s)) {
                 w.issue(e, "masking.categories: \"" + s +
                                "\" is not a valid category name (lower case letters, "
                                "digits and _, starting with a letter)");
               } else if (std::find(builtin.begin(), builtin.end(), s) != builtin.end()) {
                 w.issue(e,
                         "masking.categories: \"" + s + "\" is a built-in category and needs no declaration");
               } else if (std::find(mc.categories.begin(), mc.categories.end(), s) != mc.categories.end()) {
                 w.issue(e, "masking.categories: \"" + s + "\" is declared twice");
               } else {
                 mc.categories.push_back(s);
               }
             }
           }},
          {"protected_columns",
           [&](const YAML::Node& v) {
             if (!v.IsSequence()) {
               w.issue(v, "masking.protected_columns must be a list of {column, category}");
               return;
             }
             for (const auto& e : v) {
               ProtectedColumn pc;
               std::string col_text;
               bool have_col = false;
               bool have_cat = false;
               w.mapping(e, "masking.protected_columns entry",
                         {
                             {"column",
                              [&](const YAML::Node& c) {
                                if (!w.scalar(c, "masking.protected_columns column", col_text)) return;
                                std::string why;
                                auto col = parse_qualified_column(col_text, why);
                                if (!col) {
                                  w.issue(c, "masking.protected_columns: invalid column \"" + col_text +
                                                 "\": " + why + " (write schema.table.column)");
                                  return;
                                }
                                if (mc.find_protected(*col)) {
                                  w.issue(c, "masking.protected_columns: column " + col->quoted() +
                                                 " is listed twice");
                                  return;
                                }
                                pc.column = *col;
                                have_col = true;
                              }},
                             {"category",
                              [&](const YAML::Node& c) {
                                if (!w.scalar(c, "masking.protected_columns category", pc.category)) return;
                                mp.category_refs.emplace_back(c, pc.category);
                                have_cat = true;
                              }},
                         });
               if (!e.IsMap()) continue;
               if (!e["column"]) w.issue(e, "masking.protected_columns entry needs a \"column\"");
               if (!e["category"]) w.issue(e, "masking.protected_columns entry needs a \"category\"");
               if (have_col && have_cat) mc.protected_columns.push_back(std::move(pc));
             }
           }},
          {"policies",
           [&](const YAML::Node& v) {
             if (!v.IsSequence()) {
               w.issue(v, "masking.policies must be a list");
               return;
             }
             for (const auto& e : v) {
               MaskPolicy p;
               std::string where = "masking.policies[" + std::to_string(mc.policies.size()) + "]";
               std::vector<std::pair<std::string_view, Walker::Handler>> keys{
                   {"name",
                    [&](const YAML::Node& x) {
                      if (!w.scalar(x, where + ".name", p.name)) return;
                      if (p.name.empty()) {
                        w.issue(x, where + ".name must not be empty");
                        return;
                      }
                      for (const auto& other : mc.policies) {
                        if (other.name == p.name)
                          w.issue(x, "masking.policies: duplicate policy name \"" + p.name + "\"");
                      }
                      where = "masking.policies." + p.name;
                    }},
                   {"roles",
                    [&](const YAML::Node& x) {
                      if (!x.IsSequence() || x.size() == 0) {
                        w.issue(x, where + ".roles must be a non-empty list of role names");
                        return;
                      }
                      for (const auto& r : x) {
                        std::string role;
                        if (!w.scalar(r, where + ".roles entry", role)) continue;
                        if (role.empty() || role.find('\0') != std::string::npos || role.size() > 63) {
                          w.issue(r, where + ".roles: \"" + role + "\" is not a valid role name");
                          continue;
                        }
                        p.roles.push_back(role);
                      }
                    }},
               };
               // "name" first so messages about the rest can use it.
               if (e.IsMap() && e["name"] && e["name"].IsScalar() && !e["name"].Scalar().empty()) {
                 where = "masking.policies." + e["name"].Scalar();
               }
               parse_policy_body(w, where, p, mp, keys);
               w.mapping(e, where, keys);
               if (!e.IsMap()) continue;
               if (!e["name"]) w.issue(e, where + " needs a \"name\"");
               if (!e["roles"]) w.issue(e, where + " needs \"roles\" (a non-empty list of role names)");
               mc.policies.push_back(std::move(p));
             }
           }},
          {"default_policy",
           [&](const YAML::Node& v) {
             static const std::string where = "masking.default_policy";
             std::vector<std::pair<std::string_view, Walker::Handler>> keys;
             parse_policy_body(w, where, mc.default_policy, mp, keys);
             w.mapping(v, "masking.default_policy", keys);
           }},
          {"function_allowlist",
           [&](const YAML::Node& v) {
             if (!v.IsSequence()) {
               w.issue(v, "masking.function_allowlist must be a list of schema.function names");
               return;
             }
             for (const auto& e : v) {
               std::string s;
               if (!w.scalar(e, "masking.function_allowlist entry", s)) continue;
               std::string why;
               auto parts = parse_qualified_name(s, 2, why);
               if (!parts) {
                 w.issue(e, "masking.function_allowlist: invalid function \"" + s + "\": " + why +
                                " (write schema.function)");
                 continue;
               }
               mc.function_allowlist.push_back((*parts)[0] + "." + (*parts)[1]);
             }
           }},
      });
}

// Cross-checks of the masking section, and the key.
void check_masking(Walker& w, MaskingConfig& mc, MaskingParse& mp, const SecretSources& secrets) {
  if (!mp.section) return;
  const auto& builtin = builtin_mask_categories();
  for (const auto& [at, cat] : mp.category_refs) {
    if (std::find(builtin.begin(), builtin.end(), cat) == builtin.end() &&
        std::find(mc.categories.begin(), mc.categories.end(), cat) == mc.categories.end()) {
      w.issue(at, "masking: unknown category \"" + cat + "\" (declare it in masking.categories)");
    }
  }
  for (const auto& [at, col] : mp.column_refs) {
    if (!mc.find_protected(col)) {
      w.issue(at, "masking: rule for column " + col.quoted() + ", which is not in masking.protected_columns");
    }
  }
  for (const auto& [at, expr] : mp.customs) {
    if (auto s = validate_custom_expression(expr, mc.function_allowlist); !s) w.issue(at, s.error().message);
  }
  auto share_allowlist = [&](MaskSpec& s) { s.allowed_functions = mc.function_allowlist; };
  for (auto* p : [&] {
         std::vector<MaskPolicy*> all{&mc.default_policy};
         for (auto& x : mc.policies) all.push_back(&x);
         return all;
       }()) {
    share_allowlist(p->default_spec);
    for (auto& [k, s] : p->category_rules) share_allowlist(s);
    for (auto& [k, s] : p->column_rules) share_allowlist(s);
  }

  // The key: exactly one source when anything needs it.
  const bool from_file = !mc.hash_key_file.empty();
  const bool from_env = !mc.hash_key_env.empty();
  if (from_file && from_env) {
    w.issue(mp.key_env_at, "masking: set either hash_key_file or hash_key_env, not both");
    return;
  }
  if (!from_file && !from_env) {
    for (const auto& at : mp.keyed_rules) {
      w.issue(at,
              "masking: hash and pseudonym masks need a key: set masking.hash_key_file or "
              "masking.hash_key_env (at least 32 bytes)");
    }
    return;
  }
  std::optional<std::string> key;
  const YAML::Node& at = from_file ? mp.key_file_at : mp.key_env_at;
  if (from_file) {
    key = secrets.read_file ? secrets.read_file(mc.hash_key_file) : std::nullopt;
    if (!key) {
      w.issue(at, "masking.hash_key_file: cannot read \"" + mc.hash_key_file + "\"");
      return;
    }
  } else {
    key = secrets.get_env ? secrets.get_env(mc.hash_key_env) : std::nullopt;
    if (!key) {
      w.issue(at, "masking.hash_key_env: environment variable " + mc.hash_key_env + " is not set");
      return;
    }
  }
  while (!key->empty() && (key->back() == '\n' || key->back() == '\r')) key->pop_back();
  if (key->size() < min_master_key_length) {
    // The length only: the key itself is never printed.
    w.issue(at, "masking: the mask key is " + std::to_string(key->size()) + " bytes; at least " +
                    std::to_string(min_master_key_length) + " are needed (e.g. openssl rand -hex 32)");
    return;
  }
  mc.keys = derive_mask_keys(*key);
  std::fill(key->begin(), key->end(), '\0');
}

// --- auth and catalog -----------------------------------------------------------

// Positions for the cross-checks of auth and catalog, run after the walk.
struct AuthParse {
  YAML::Node auth_at;
  YAML::Node mode_at;
  YAML::Node query_at;
  YAML::Node catalog_at;
  YAML::Node user_at;
  YAML::Node password_at;
  YAML::Node password_file_at;
  YAML::Node dbname_at;
  YAML::Node refresh_interval_at;
};

void parse_auth(Walker& w, const YAML::Node& n, AuthConfig& a, AuthParse& ap) {
  ap.auth_at = n;
  w.mapping(
      n, "auth",
      {
          {"mode",
           [&](const YAML::Node& v) {
             ap.mode_at = v;
             w.enumeration(v, "auth.mode", a.mode,
                           {{"passthrough", AuthMode::passthrough}, {"scram", AuthMode::scram}});
           }},
          {"auth_query",
           [&](const YAML::Node& v) {
             ap.query_at = v;
             w.string(v, "auth.auth_query", a.auth_query);
           }},
          {"auth_dbname", [&](const YAML::Node& v) { w.string(v, "auth.auth_dbname", a.auth_dbname); }},
          {"verifier_cache_ttl",
           [&](const YAML::Node& v) { w.duration(v, "auth.verifier_cache_ttl", a.verifier_cache_ttl); }},
      });
}

void parse_catalog(Walker& w, const YAML::Node& n, CatalogConfig& cc, AuthParse& ap) {
  ap.catalog_at = n;
  w.mapping(n, "catalog",
            {
                {"user",
                 [&](const YAML::Node& v) {
                   ap.user_at = v;
                   w.string(v, "catalog.user", cc.user);
                 }},
                {"password",
                 [&](const YAML::Node& v) {
                   ap.password_at = v;
                   w.string(v, "catalog.password", cc.password);
                 }},
                {"password_file",
                 [&](const YAML::Node& v) {
                   ap.password_file_at = v;
                   w.string(v, "catalog.password_file", cc.password_file);
                 }},
                {"dbname",
                 [&](const YAML::Node& v) {
                   ap.dbname_at = v;
                   w.string(v, "catalog.dbname", cc.dbname);
                 }},
                {"refresh_interval",
                 [&](const YAML::Node& v) {
                   ap.refresh_interval_at = v;
                   w.duration(v, "catalog.refresh_interval", cc.refresh_interval);
                 }},
            });
}

// Masking reads the catalog of one database: it has to be named. A refresh
// interval below a second would keep the catalog login busy for nothing.
void check_catalog(Walker& w, const YAML::Node& root, const Config& c, const AuthParse& ap,
                   const YAML::Node& masking_at) {
  auto at = [](const YAML::Node& n, const YAML::Node& fallback) -> const YAML::Node& {
    return n.Mark().is_null() ? fallback : n;
  };
  const YAML::Node& catalog_at = at(ap.catalog_at, root);
  if (c.masking.enabled() && c.catalog.dbname.empty()) {
    w.issue(at(ap.dbname_at, at(ap.catalog_at, at(masking_at, root))),
            "masking.protected_columns needs catalog.dbname (the database whose catalog pgcloak reads to "
            "find the protected tables, their views and partitions)");
  }
  if (c.catalog.refresh_interval < std::chrono::seconds(1)) {
    w.issue(at(ap.refresh_interval_at, catalog_at), "catalog.refresh_interval must be at least 1s");
  }
}

// auth.mode scram needs a catalog login; the password file is read here so
// that --check-config catches an unreadable one.
void check_auth(Walker& w, const YAML::Node& root, Config& c, const AuthParse& ap,
                const SecretSources& secrets) {
  const bool scram = c.auth.mode == AuthMode::scram;
  // A default-constructed Node counts as defined; only a parsed one has a mark.
  auto at = [](const YAML::Node& n, const YAML::Node& fallback) -> const YAML::Node& {
    return n.Mark().is_null() ? fallback : n;
  };
  const YAML::Node& mode_at = at(ap.mode_at, at(ap.auth_at, root));
  const YAML::Node& catalog_at = at(ap.catalog_at, mode_at);
  const bool has_password = !c.catalog.password.empty();
  const bool has_file = !c.catalog.password_file.empty();
  if (has_password && has_file) {
    w.issue(ap.password_file_at, "catalog: set either password or password_file, not both");
  } else if (has_file) {
    std::optional<std::string> text =
        secrets.read_file ? secrets.read_file(c.catalog.password_file) : std::nullopt;
    if (!text) {
      w.issue(ap.password_file_at, "catalog.password_file: cannot read \"" + c.catalog.password_file + "\"");
    } else {
      std::string first = text->substr(0, text->find('\n'));
      if (!first.empty() && first.back() == '\r') first.pop_back();
      std::fill(text->begin(), text->end(), '\0');
      if (first.empty()) {
        w.issue(ap.password_file_at,
                "catalog.password_file: the first line of \"" + c.catalog.password_file + "\" is empty");
      }
      c.catalog.password = std::move(first);
    }
  } else if (scram && !has_password) {
    w.issue(catalog_at,
            "auth.mode scram needs a password for the catalog login: set catalog.password or "
            "catalog.password_file");
  }
  if (!scram) return;
  if (c.catalog.user.empty()) {
    w.issue(at(ap.user_at, catalog_at),
            "auth.mode scram needs catalog.user (the login pgcloak uses to look up SCRAM verifiers)");
  }
  if (c.auth.auth_query.find("$1") == std::string::npos) {
    w.issue(at(ap.query_at, mode_at),
            "auth.auth_query must take the login name as $1, e.g. SELECT usename, passwd FROM "
            "pgcloak.get_auth($1)");
  }
}

// --- audit ------------------------------------------------------------------------

// The keys of a syslog target (audit.syslog, detection.syslog): RFC 5424
// over TCP, optionally TLS. tls_at records where `tls` was set, for the
// cross-check that it comes with a CA file.
std::vector<std::pair<std::string_view, Walker::Handler>> syslog_keys(Walker& w, const std::string& prefix,
                                                                      AuditSyslogConfig& sl,
                                                                      YAML::Node& tls_at) {
  auto name = [prefix](std::string_view key) { return prefix + "." + std::string(key); };
  return {
      {"host", [&w, &sl, name](const YAML::Node& x) { w.string(x, name("host"), sl.host); }},
      {"port", [&w, &sl, name](const YAML::Node& x) { w.integer(x, name("port"), sl.port, 1, 65535); }},
      {"tls",
       [&w, &sl, &tls_at, name](const YAML::Node& x) {
         tls_at = x;
         w.boolean(x, name("tls"), sl.tls);
       }},
      {"ca_file", [&w, &sl, name](const YAML::Node& x) { w.string(x, name("ca_file"), sl.ca_file); }},
      {"app_name", [&w, &sl, name](const YAML::Node& x) { w.string(x, name("app_name"), sl.app_name); }},
      {"hostname", [&w, &sl, name](const YAML::Node& x) { w.string(x, name("hostname"), sl.hostname); }},
      {"facility",
       [&w, &sl, name](const YAML::Node& x) { w.integer(x, name("facility"), sl.facility, 0, 23); }},
      {"connect_timeout",
       [&w, &sl, name](const YAML::Node& x) {
         Duration d = sl.connect_timeout;
         w.duration(x, name("connect_timeout"), d);
         if (d < Duration(1)) {
           w.issue(x, name("connect_timeout") + " must be at least 1ms");
         } else {
           sl.connect_timeout = d;
         }
       }},
  };
}

// tls needs a CA to verify the receiver against, and the CA file must be
// readable.
void check_syslog_target(Walker& w, const std::string& prefix, const AuditSyslogConfig& sl,
                         const YAML::Node& tls_at, const YAML::Node& section_at) {
  if (sl.tls && sl.ca_file.empty()) {
    w.issue(tls_at.Mark().is_null() ? section_at : tls_at,
            prefix + ".tls needs " + prefix + ".ca_file (the CA that signed the receiver's certificate)");
  }
  if (!sl.ca_file.empty()) check_readable(w, section_at, sl.ca_file, prefix + ".ca_file");
}

// Positions for the cross-checks of the audit section, run after the walk.
struct AuditParse {
  YAML::Node section;
  YAML::Node enabled_at;
  YAML::Node key_file_at;
  YAML::Node key_env_at;
  YAML::Node log_parameters_at;
  YAML::Node parameter_key_file_at;
  YAML::Node file_at;
  YAML::Node file_path_at;
  YAML::Node syslog_at;
  YAML::Node syslog_tls_at;
};

// A size key where 0 means "off" and anything else must be at least `min`.
void size_or_zero(Walker& w, const YAML::Node& v, std::string_view name, uint64_t& out, uint64_t min,
                  std::string_view min_text) {
  std::string s;
  if (!w.scalar(v, name, s)) return;
  auto size = parse_size(s);
  if (!size) {
    w.issue(v, std::string(name) + ": " + size.error().message);
  } else if (*size != 0 && *size < min) {
    w.issue(v, std::string(name) + " must be 0 (never) or at least " + std::string(min_text));
  } else {
    out = *size;
  }
}

void parse_audit(Walker& w, const YAML::Node& n, AuditConfig& a, AuditParse& ap) {
  ap.section = n;
  // The section's presence turns audit on; `enabled: false` keeps it written
  // down but off.
  a.enabled = true;
  w.mapping(
      n, "audit",
      {
          {"enabled",
           [&](const YAML::Node& v) {
             ap.enabled_at = v;
             w.boolean(v, "audit.enabled", a.enabled);
           }},
          {"durability",
           [&](const YAML::Node& v) {
             w.enumeration(v, "audit.durability", a.durability,
                           {{"batched", AuditDurability::batched}, {"strict", AuditDurability::strict}});
           }},
          {"flush_interval",
           [&](const YAML::Node& v) {
             Duration d = a.flush_interval;
             w.duration(v, "audit.flush_interval", d);
             if (d < Duration(1) || d > Duration(60000)) {
               w.issue(v, "audit.flush_interval must be between 1ms and 60s");
             } else {
               a.flush_interval = d;
             }
           }},
          {"on_failure",
           [&](const YAML::Node& v) {
             w.enumeration(v, "audit.on_failure", a.on_failure,
                           {{"fail_closed", AuditOnFailure::fail_closed}, {"block", AuditOnFailure::block}});
           }},
          {"key_file",
           [&](const YAML::Node& v) {
             ap.key_file_at = v;
             w.string(v, "audit.key_file", a.key_file);
           }},
          {"key_env",
           [&](const YAML::Node& v) {
             ap.key_env_at = v;
             w.string(v, "audit.key_env", a.key_env);
           }},
          {"log_parameters",
           [&](const YAML::Node& v) {
             ap.log_parameters_at = v;
             w.boolean(v, "audit.log_parameters", a.log_parameters);
           }},
          {"parameter_key_file",
           [&](const YAML::Node& v) {
             ap.parameter_key_file_at = v;
             w.string(v, "audit.parameter_key_file", a.parameter_key_file);
           }},
          {"queue_limit",
           [&](const YAML::Node& v) { w.integer(v, "audit.queue_limit", a.queue_limit, 1, 100000000); }},
          {"stdout", [&](const YAML::Node& v) { w.boolean(v, "audit.stdout", a.stdout_sink); }},
          {"file",
           [&](const YAML::Node& v) {
             ap.file_at = v;
             AuditFileConfig& f = a.file;
             w.mapping(v, "audit.file",
                       {
                           {"path",
                            [&](const YAML::Node& x) {
                              ap.file_path_at = x;
                              w.string(x, "audit.file.path", f.path);
                            }},
                           {"rotate_size",
                            [&](const YAML::Node& x) {
                              size_or_zero(w, x, "audit.file.rotate_size", f.rotate_size, uint64_t{64} << 10,
                                           "64KiB");
                            }},
                           {"rotate_age",
                            [&](const YAML::Node& x) {
                              Duration d = f.rotate_age;
                              w.duration(x, "audit.file.rotate_age", d);
                              if (d.count() != 0 && d < Duration(60000)) {
                                w.issue(x, "audit.file.rotate_age must be 0 (never) or at least 1m");
                              } else {
                                f.rotate_age = d;
                              }
                            }},
                           {"compress",
                            [&](const YAML::Node& x) {
                              // true (the default format) and false stay valid:
                              // the key was a boolean when gzip was the only one.
                              w.enumeration(x, "audit.file.compress", f.compress,
                                            {{"zstd", AuditCompression::zstd},
                                             {"gzip", AuditCompression::gzip},
                                             {"none", AuditCompression::none},
                                             {"true", AuditCompression::zstd},
                                             {"false", AuditCompression::none}});
                            }},
                           {"retention_days",
                            [&](const YAML::Node& x) {
                              w.integer(x, "audit.file.retention_days", f.retention_days, 0, 36500);
                            }},
                       });
           }},
          {"syslog",
           [&](const YAML::Node& v) {
             ap.syslog_at = v;
             w.mapping(v, "audit.syslog", syslog_keys(w, "audit.syslog", a.syslog, ap.syslog_tls_at));
           }},
      });
}

// The chain key's two accepted shapes (proxy/audit_chain.h): 64 hex digits,
// or the ratcheted key file line "pgcloak-audit-key v1 epoch=N <64 hex>".
// Only the shape is checked here; the key is never copied into the config.
bool looks_like_audit_key(std::string_view text) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  constexpr std::string_view magic = "pgcloak-audit-key v1 epoch=";
  if (text.substr(0, magic.size()) == magic) {
    auto sp = text.rfind(' ');
    text = text.substr(sp + 1);
  }
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
         });
}

void check_audit(Walker& w, const YAML::Node& root, const AuditConfig& a, const AuditParse& ap,
                 const SecretSources& secrets) {
  if (!ap.section || !a.enabled) return;
  auto at = [](const YAML::Node& n, const YAML::Node& fallback) -> const YAML::Node& {
    return n.Mark().is_null() ? fallback : n;
  };
  const YAML::Node& section_at = at(ap.section, root);

  const bool from_file = !a.key_file.empty();
  const bool from_env = !a.key_env.empty();
  if (from_file && from_env) {
    w.issue(ap.key_env_at, "audit: set either key_file or key_env, not both");
  } else if (!from_file && !from_env) {
    w.issue(section_at,
            "audit needs a chain key: set audit.key_file or audit.key_env (32 bytes as 64 hex digits, e.g. "
            "openssl rand -hex 32)");
  } else {
    std::optional<std::string> text;
    if (from_file) {
      text = secrets.read_file ? secrets.read_file(a.key_file) : std::nullopt;
      if (!text) w.issue(ap.key_file_at, "audit.key_file: cannot read \"" + a.key_file + "\"");
    } else {
      text = secrets.get_env ? secrets.get_env(a.key_env) : std::nullopt;
      if (!text) w.issue(ap.key_env_at, "audit.key_env: environment variable " + a.key_env + " is not set");
    }
    if (text && !looks_like_audit_key(*text)) {
      w.issue(from_file ? ap.key_file_at : ap.key_env_at,
              "audit: the chain key must be 64 hex digits (32 bytes, e.g. openssl rand -hex 32)");
    }
    if (text) std::fill(text->begin(), text->end(), '\0');
  }

  if (!ap.file_at.Mark().is_null() && ap.file_at.IsMap() && a.file.path.empty()) {
    w.issue(at(ap.file_path_at, ap.file_at), "audit.file needs a path (e.g. /var/log/pgcloak/audit.jsonl)");
  } else if (a.file.path.empty() && !a.stdout_sink && !a.syslog.enabled()) {
    w.issue(section_at,
            "audit needs at least one sink: set audit.file.path, audit.stdout: true or audit.syslog.host");
  }
  if (a.log_parameters) {
    if (a.parameter_key_file.empty()) {
      w.issue(at(ap.log_parameters_at, section_at),
              "audit.log_parameters needs audit.parameter_key_file (32 bytes as 64 hex digits) to seal the "
              "values with");
    } else if (!(secrets.read_file && secrets.read_file(a.parameter_key_file))) {
      w.issue(ap.parameter_key_file_at,
              "audit.parameter_key_file: cannot read \"" + a.parameter_key_file + "\"");
    }
  }
  check_syslog_target(w, "audit.syslog", a.syslog, ap.syslog_tls_at, at(ap.syslog_at, section_at));
}

// --- metrics ----------------------------------------------------------------------

// Positions for the cross-checks of the metrics section, run after the walk.
struct MetricsParse {
  YAML::Node section;
  YAML::Node listen_at;
  YAML::Node token_file_at;
  YAML::Node token_env_at;
  YAML::Node tls_at;
};

void parse_metrics(Walker& w, const YAML::Node& n, MetricsConfig& m, MetricsParse& mp) {
  mp.section = n;
  w.mapping(
      n, "metrics",
      {
          {"enabled", [&](const YAML::Node& v) { w.boolean(v, "metrics.enabled", m.enabled); }},
          {"listen",
           [&](const YAML::Node& v) {
             mp.listen_at = v;
             std::string s;
             if (!w.scalar(v, "metrics.listen", s)) return;
             ListenAddress a;
             std::string why;
             if (!parse_listen(s, a, why)) {
               w.issue(v, "metrics.listen \"" + s + "\": " + why);
               return;
             }
             m.listen = a;
           }},
          {"token_file",
           [&](const YAML::Node& v) {
             mp.token_file_at = v;
             w.string(v, "metrics.token_file", m.token_file);
           }},
          {"token_env",
           [&](const YAML::Node& v) {
             mp.token_env_at = v;
             w.string(v, "metrics.token_env", m.token_env);
           }},
          {"tls",
           [&](const YAML::Node& v) {
             mp.tls_at = v;
             w.mapping(
                 v, "metrics.tls",
                 {
                     {"cert_file",
                      [&](const YAML::Node& x) { w.string(x, "metrics.tls.cert_file", m.tls_cert_file); }},
                     {"key_file",
                      [&](const YAML::Node& x) { w.string(x, "metrics.tls.key_file", m.tls_key_file); }},
                 });
           }},
          {"max_users",
           [&](const YAML::Node& v) { w.integer(v, "metrics.max_users", m.max_users, 1, 10000); }},
          {"max_databases",
           [&](const YAML::Node& v) { w.integer(v, "metrics.max_databases", m.max_databases, 1, 1000); }},
          {"max_relations",
           [&](const YAML::Node& v) { w.integer(v, "metrics.max_relations", m.max_relations, 1, 10000); }},
      });
}

// Loopback by address, without resolving names (rules/ does no I/O):
// 127.0.0.0/8, ::1 and "localhost".
bool is_loopback_host(const std::string& host) {
  if (host == "localhost" || host == "::1") return true;
  if (host.rfind("127.", 0) != 0) return false;
  return std::all_of(host.begin(), host.end(), [](char ch) { return (ch >= '0' && ch <= '9') || ch == '.'; });
}

// RFC 6750's b64token, so every HTTP client can send it unchanged, and long
// enough not to be guessed.
bool valid_bearer_token(std::string_view t) {
  constexpr size_t min_token_length = 16;
  if (t.size() < min_token_length || t.size() > 4096) return false;
  size_t end = t.size();
  while (end > 0 && t[end - 1] == '=') --end;
  return end > 0 && std::all_of(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(end), [](char ch) {
           return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '-' || ch == '.' || ch == '_' || ch == '~' || ch == '+' || ch == '/';
         });
}

void check_metrics(Walker& w, const YAML::Node& root, MetricsConfig& m, const MetricsParse& mp,
                   const SecretSources& secrets) {
  if (!m.enabled) return;
  auto at = [](const YAML::Node& n, const YAML::Node& fallback) -> const YAML::Node& {
    return n.Mark().is_null() ? fallback : n;
  };
  const YAML::Node& section_at = at(mp.section, root);

  const bool from_file = !m.token_file.empty();
  const bool from_env = !m.token_env.empty();
  if (from_file && from_env) {
    w.issue(mp.token_env_at, "metrics: set either token_file or token_env, not both");
  } else if (from_file || from_env) {
    std::optional<std::string> text;
    if (from_file) {
      text = secrets.read_file ? secrets.read_file(m.token_file) : std::nullopt;
      if (!text) w.issue(mp.token_file_at, "metrics.token_file: cannot read \"" + m.token_file + "\"");
    } else {
      text = secrets.get_env ? secrets.get_env(m.token_env) : std::nullopt;
      if (!text)
        w.issue(mp.token_env_at, "metrics.token_env: environment variable " + m.token_env + " is not set");
    }
    if (text) {
      std::string first = text->substr(0, text->find('\n'));
      if (!first.empty() && first.back() == '\r') first.pop_back();
      std::fill(text->begin(), text->end(), '\0');
      if (!valid_bearer_token(first)) {
        // The length and the rule only: the token itself is never printed.
        w.issue(from_file ? mp.token_file_at : mp.token_env_at,
                "metrics: the bearer token must be 16 to 4096 characters of A-Z a-z 0-9 - . _ ~ + / (e.g. "
                "openssl rand -hex 32)");
        std::fill(first.begin(), first.end(), '\0');
      } else {
        m.token = std::move(first);
      }
    }
  }
  // The metrics name users, databases and protected relations: off
  // loopback they are for the holder of a token only.
  if (!is_loopback_host(m.listen.host) && !from_file && !from_env) {
    w.issue(at(mp.listen_at, section_at),
            "metrics.listen " + m.listen.host +
                " is not a loopback address: set metrics.token_file or metrics.token_env (the metrics name "
                "users and protected relations), or listen on 127.0.0.1");
  }

  const YAML::Node& tls_at = at(mp.tls_at, section_at);
  if (m.tls_cert_file.empty() != m.tls_key_file.empty()) {
    w.issue(tls_at, "metrics.tls.cert_file and metrics.tls.key_file must be set together");
  }
  check_readable(w, tls_at, m.tls_cert_file, "metrics.tls.cert_file");
  check_readable(w, tls_at, m.tls_key_file, "metrics.tls.key_file");
}

// --- detection ------------------------------------------------------------------

// Positions for the cross-checks of the detection section, run after the walk.
struct DetectionRuleParse {
  YAML::Node at;
  std::string label;  // for messages: detection rule "name"
  bool detector_set = false;
  bool detector_unknown = false;
  bool window_set = false;
  bool warmup_set = false;
  bool block_for_set = false;
  YAML::Node name_at;
  YAML::Node action_at;
  YAML::Node block_for_at;
  YAML::Node learn_at;
  std::vector<std::pair<std::string, YAML::Node>> params;         // detector-specific keys present
  std::vector<std::pair<YAML::Node, std::string>> category_refs;  // must be known categories
};

struct DetectionParse {
  YAML::Node section;
  YAML::Node rules_at;
  YAML::Node webhook_at;
  YAML::Node syslog_at;
  YAML::Node syslog_tls_at;
  std::vector<DetectionRuleParse> rules;
};

// The keys each detector takes besides the common ones (name, detector,
// roles, exclude_roles, relations, categories, action, block_for, cooldown).
// A key of another detector is an error, not ignored: "max_rows" on a
// window_volume rule means the author expected a limit that would not exist.
const std::vector<std::string_view>& detector_params(DetectorKind k) {
  static const std::vector<std::string_view> statement_volume{"max_rows", "max_bytes"};
  static const std::vector<std::string_view> window_volume{"window", "sensitivity", "floor_rows", "warmup"};
  static const std::vector<std::string_view> slow_drip{"window", "max_distinct"};
  static const std::vector<std::string_view> first_access{"warmup"};
  static const std::vector<std::string_view> off_hours{"time_zone", "allowed"};
  static const std::vector<std::string_view> bulk_export{"copy_to", "full_scan", "min_rows"};
  static const std::vector<std::string_view> probing{"window", "max_denials", "max_predicates"};
  static const std::vector<std::string_view> service_account{"clients", "application_names", "learn",
                                                             "warmup"};
  switch (k) {
    case DetectorKind::statement_volume: return statement_volume;
    case DetectorKind::window_volume: return window_volume;
    case DetectorKind::slow_drip: return slow_drip;
    case DetectorKind::first_access: return first_access;
    case DetectorKind::off_hours: return off_hours;
    case DetectorKind::bulk_export: return bulk_export;
    case DetectorKind::probing: return probing;
    case DetectorKind::service_account: return service_account;
  }
  return statement_volume;
}

void seconds_key(Walker& w, const YAML::Node& v, const std::string& name, std::chrono::seconds& out,
                 std::chrono::seconds lo, std::chrono::seconds hi, std::string_view range) {
  Duration d{-1};
  w.duration(v, name, d);
  if (d.count() < 0) return;
  if (d.count() % 1000 != 0 || d < lo || d > hi) {
    w.issue(v, name + " must be whole seconds between " + std::string(range));
    return;
  }
  out = std::chrono::duration_cast<std::chrono::seconds>(d);
}

void name_list(Walker& w, const YAML::Node& v, const std::string& name, std::vector<std::string>& out,
               std::vector<YAML::Node>* positions = nullptr) {
  if (!v.IsSequence() || v.size() == 0) {
    w.issue(v, name + " must be a non-empty list of strings");
    return;
  }
  for (const auto& e : v) {
    std::string s;
    if (!w.scalar(e, name + " entry", s)) continue;
    if (s.empty()) {
      w.issue(e, name + " entries must not be empty");
      continue;
    }
    out.push_back(std::move(s));
    if (positions != nullptr) positions->push_back(e);
  }
}

// "07:00" -> 420. "24:00" only where allow_24 (the end of a day).
std::optional<unsigned> clock_minutes(std::string_view s, bool allow_24) {
  if (s.size() != 5 || s[2] != ':') return std::nullopt;
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (!digit(s[0]) || !digit(s[1]) || !digit(s[3]) || !digit(s[4])) return std::nullopt;
  const unsigned h = static_cast<unsigned>((s[0] - '0') * 10 + (s[1] - '0'));
  const unsigned m = static_cast<unsigned>((s[3] - '0') * 10 + (s[4] - '0'));
  if (m > 59) return std::nullopt;
  if (h == 24 && m == 0 && allow_24) return 24 * 60;
  if (h > 23) return std::nullopt;
  return h * 60 + m;
}

void parse_schedule(Walker& w, const YAML::Node& v, const std::string& name, std::vector<ScheduleSlot>& out) {
  if (!v.IsSequence() || v.size() == 0) {
    w.issue(v, name + " must be a non-empty list of {days, from, to}");
    return;
  }
  static const std::vector<std::string_view> day_names{"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  for (const auto& e : v) {
    ScheduleSlot slot;
    slot.days = 0x7f;
    YAML::Node from_at;
    bool from_set = false;
    bool to_set = false;
    w.mapping(e, name + " entry",
              {
                  {"days",
                   [&](const YAML::Node& d) {
                     std::vector<std::string> days;
                     name_list(w, d, name + ".days", days);
                     slot.days = 0;
                     for (const auto& day : days) {
                       auto it = std::find(day_names.begin(), day_names.end(), day);
                       if (it == day_names.end()) {
                         w.issue(d, name + ".days: \"" + day +
                                        "\" is not one of mon, tue, wed, thu, fri, sat, sun");
                         continue;
                       }
                       slot.days |= static_cast<uint8_t>(1U << (it - day_names.begin()));
                     }
                     if (slot.days == 0) slot.days = 0x7f;  // already reported
                   }},
                  {"from",
                   [&](const YAML::Node& x) {
                     from_at = x;
                     std::string s;
                     if (!w.scalar(x, name + ".from", s)) return;
                     auto m = clock_minutes(s, false);
                     if (!m) {
                       w.issue(x, name + ".from must be \"HH:MM\" (00:00-23:59), not \"" + s + "\"");
                       return;
                     }
                     slot.from_minute = *m;
                     from_set = true;
                   }},
                  {"to",
                   [&](const YAML::Node& x) {
                     std::string s;
                     if (!w.scalar(x, name + ".to", s)) return;
                     auto m = clock_minutes(s, true);
                     if (!m) {
                       w.issue(x, name + ".to must be \"HH:MM\" (00:00-24:00), not \"" + s + "\"");
                       return;
                     }
                     slot.to_minute = *m;
                     to_set = true;
                   }},
              });
    if (!e.IsMap()) continue;
    if (!from_set || !to_set) {
      w.issue(e, name + " entries need both from and to");
      continue;
    }
    // 00:00 to 24:00 is the whole day; equal times are nothing at all.
    if (slot.from_minute == slot.to_minute) {
      w.issue(from_at, name + ": from and to are the same time (write 00:00 to 24:00 for a whole day)");
      continue;
    }
    out.push_back(slot);
  }
}

void parse_detection_rule(Walker& w, const YAML::Node& n, size_t index, DetectionRule& r,
                          DetectionRuleParse& rp) {
  rp.at = n;
  rp.label = "detection.rules[" + std::to_string(index) + "]";
  if (!n.IsMap()) {
    w.issue(n, rp.label + " must be a mapping");
    return;
  }
  if (const YAML::Node name = n["name"]; name && name.IsScalar() && !name.Scalar().empty()) {
    rp.label = "detection rule \"" + name.Scalar() + "\"";
  }
  const std::string& l = rp.label;
  // Detector-specific keys are recorded, then checked against the detector
  // once the whole mapping is read (keys come in any order).
  auto param = [&](std::string_view key, std::function<void(const YAML::Node&)> h) {
    return std::pair<std::string_view, Walker::Handler>(key, [&rp, key, h](const YAML::Node& v) {
      rp.params.emplace_back(std::string(key), v);
      h(v);
    });
  };
  auto count = [&](const YAML::Node& v, const char* key, uint64_t& out, uint64_t lo) {
    w.integer(v, l + "." + key, out, lo, uint64_t{1} << 40);
  };
  w.mapping(
      n, l,
      {
          {"name",
           [&](const YAML::Node& v) {
             rp.name_at = v;
             w.string(v, l + ".name", r.name);
           }},
          {"detector",
           [&](const YAML::Node& v) {
             static const std::vector<std::pair<std::string_view, DetectorKind>> kinds{
                 {"statement_volume", DetectorKind::statement_volume},
                 {"window_volume", DetectorKind::window_volume},
                 {"slow_drip", DetectorKind::slow_drip},
                 {"first_access", DetectorKind::first_access},
                 {"off_hours", DetectorKind::off_hours},
                 {"bulk_export", DetectorKind::bulk_export},
                 {"probing", DetectorKind::probing},
                 {"service_account", DetectorKind::service_account}};
             std::string name;
             if (!w.scalar(v, l + ".detector", name)) return;
             auto k =
                 std::find_if(kinds.begin(), kinds.end(), [&](const auto& e) { return e.first == name; });
             if (k == kinds.end()) {
               // Reported here; the checks that depend on the detector are
               // then skipped rather than run against a guess.
               w.enumeration(v, l + ".detector", r.detector, kinds);
               rp.detector_unknown = true;
               return;
             }
             r.detector = k->second;
             rp.detector_set = true;
           }},
          {"roles", [&](const YAML::Node& v) { name_list(w, v, l + ".roles", r.roles); }},
          {"exclude_roles",
           [&](const YAML::Node& v) { name_list(w, v, l + ".exclude_roles", r.exclude_roles); }},
          {"relations",
           [&](const YAML::Node& v) {
             std::vector<std::string> names;
             std::vector<YAML::Node> at;
             name_list(w, v, l + ".relations", names, &at);
             for (size_t i = 0; i < names.size(); ++i) {
               std::string why;
               auto parts = parse_qualified_name(names[i], 2, why);
               if (!parts) {
                 w.issue(at[i], l + ".relations: \"" + names[i] + "\" is not schema.relation: " + why);
                 continue;
               }
               r.relations.push_back((*parts)[0] + "." + (*parts)[1]);
             }
           }},
          {"categories",
           [&](const YAML::Node& v) {
             std::vector<YAML::Node> at;
             name_list(w, v, l + ".categories", r.categories, &at);
             for (size_t i = 0; i < r.categories.size() && i < at.size(); ++i)
               rp.category_refs.emplace_back(at[i], r.categories[i]);
           }},
          {"action",
           [&](const YAML::Node& v) {
             rp.action_at = v;
             w.enumeration(v, l + ".action", r.action,
                           {{"alert", AlertAction::alert},
                            {"cancel", AlertAction::cancel},
                            {"terminate", AlertAction::terminate},
                            {"block", AlertAction::block}});
           }},
          {"block_for",
           [&](const YAML::Node& v) {
             rp.block_for_at = v;
             rp.block_for_set = true;
             seconds_key(w, v, l + ".block_for", r.block_for, std::chrono::seconds(1),
                         std::chrono::hours(24 * 30), "1s and 30 days");
           }},
          {"cooldown",
           [&](const YAML::Node& v) {
             seconds_key(w, v, l + ".cooldown", r.cooldown, std::chrono::seconds(0),
                         std::chrono::hours(24 * 7), "0s and 7 days");
           }},
          param("max_rows", [&](const YAML::Node& v) { count(v, "max_rows", r.max_rows, 1); }),
          param("max_bytes",
                [&](const YAML::Node& v) {
                  std::string s;
                  if (!w.scalar(v, l + ".max_bytes", s)) return;
                  auto size = parse_size(s);
                  if (!size || *size == 0) {
                    w.issue(v, l + ".max_bytes: " +
                                   (size ? std::string("must be at least 1 byte") : size.error().message));
                    return;
                  }
                  r.max_bytes = *size;
                }),
          param("window",
                [&](const YAML::Node& v) {
                  rp.window_set = true;
                  seconds_key(w, v, l + ".window", r.window, std::chrono::seconds(1), std::chrono::hours(24),
                              "1s and 24h");
                }),
          param("sensitivity",
                [&](const YAML::Node& v) {
                  std::string s;
                  if (!w.scalar(v, l + ".sensitivity", s)) return;
                  double d = 0;
                  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), d);
                  if (ec != std::errc{} || ptr != s.data() + s.size() || !(d >= 0.5 && d <= 100)) {
                    w.issue(v, l + ".sensitivity must be a number between 0.5 and 100, not \"" + s + "\"");
                    return;
                  }
                  r.sensitivity = d;
                }),
          param("floor_rows", [&](const YAML::Node& v) { count(v, "floor_rows", r.floor_rows, 0); }),
          param("warmup",
                [&](const YAML::Node& v) {
                  rp.warmup_set = true;
                  seconds_key(w, v, l + ".warmup", r.warmup, std::chrono::seconds(0),
                              std::chrono::hours(24 * 90), "0s and 90 days");
                }),
          param("max_distinct", [&](const YAML::Node& v) { count(v, "max_distinct", r.max_distinct, 1); }),
          param("time_zone",
                [&](const YAML::Node& v) {
                  std::string s;
                  if (!w.scalar(v, l + ".time_zone", s)) return;
                  auto tz = TimeZone::load(s);
                  if (!tz) {
                    w.issue(v, l + ".time_zone: " + tz.error().message);
                    return;
                  }
                  r.time_zone = *tz;
                }),
          param("allowed", [&](const YAML::Node& v) { parse_schedule(w, v, l + ".allowed", r.allowed); }),
          param("copy_to", [&](const YAML::Node& v) { w.boolean(v, l + ".copy_to", r.copy_to); }),
          param("full_scan", [&](const YAML::Node& v) { w.boolean(v, l + ".full_scan", r.full_scan); }),
          param("min_rows", [&](const YAML::Node& v) { count(v, "min_rows", r.min_rows, 0); }),
          param("max_denials", [&](const YAML::Node& v) { count(v, "max_denials", r.max_denials, 1); }),
          param("max_predicates",
                [&](const YAML::Node& v) { count(v, "max_predicates", r.max_predicates, 1); }),
          param("clients",
                [&](const YAML::Node& v) {
                  std::vector<std::string> nets;
                  std::vector<YAML::Node> at;
                  name_list(w, v, l + ".clients", nets, &at);
                  for (size_t i = 0; i < nets.size(); ++i) {
                    auto c = parse_cidr(nets[i]);
                    if (!c) {
                      w.issue(at[i], l + ".clients: \"" + nets[i] +
                                         "\" is not an address or network (e.g. 10.0.0.0/8, 2001:db8::/32)");
                      continue;
                    }
                    r.clients.push_back(*c);
                  }
                }),
          param("application_names",
                [&](const YAML::Node& v) { name_list(w, v, l + ".application_names", r.application_names); }),
          param("learn",
                [&](const YAML::Node& v) {
                  rp.learn_at = v;
                  w.boolean(v, l + ".learn", r.learn);
                }),
      });
}

void parse_detection(Walker& w, const YAML::Node& n, DetectionConfig& d, DetectionParse& dp) {
  dp.section = n;
  d.enabled = true;
  w.mapping(
      n, "detection",
      {
          {"enabled", [&](const YAML::Node& v) { w.boolean(v, "detection.enabled", d.enabled); }},
          {"state_file", [&](const YAML::Node& v) { w.string(v, "detection.state_file", d.state_file); }},
          {"save_interval",
           [&](const YAML::Node& v) {
             seconds_key(w, v, "detection.save_interval", d.save_interval, std::chrono::seconds(1),
                         std::chrono::hours(24), "1s and 24h");
           }},
          {"time_zone",
           [&](const YAML::Node& v) {
             std::string s;
             if (!w.scalar(v, "detection.time_zone", s)) return;
             auto tz = TimeZone::load(s);
             if (!tz) {
               w.issue(v, "detection.time_zone: " + tz.error().message);
               return;
             }
             d.time_zone = *tz;
           }},
          {"max_tracked",
           [&](const YAML::Node& v) {
             w.integer(v, "detection.max_tracked", d.max_tracked, 100, 100000000);
           }},
          {"webhook",
           [&](const YAML::Node& v) {
             dp.webhook_at = v;
             DetectionWebhook& h = d.webhook;
             w.mapping(
                 v, "detection.webhook",
                 {
                     {"url", [&](const YAML::Node& x) { w.string(x, "detection.webhook.url", h.url); }},
                     {"slack",
                      [&](const YAML::Node& x) { w.boolean(x, "detection.webhook.slack", h.slack); }},
                     {"ca_file",
                      [&](const YAML::Node& x) { w.string(x, "detection.webhook.ca_file", h.ca_file); }},
                     {"token_file",
                      [&](const YAML::Node& x) {
                        w.string(x, "detection.webhook.token_file", h.token_file);
                      }},
                     {"token_env",
                      [&](const YAML::Node& x) { w.string(x, "detection.webhook.token_env", h.token_env); }},
                     {"timeout",
                      [&](const YAML::Node& x) {
                        Duration t{};
                        w.duration(x, "detection.webhook.timeout", t);
                        h.timeout = t;
                      }},
                     {"queue_limit",
                      [&](const YAML::Node& x) {
                        w.integer(x, "detection.webhook.queue_limit", h.queue_limit, 1, 1000000);
                      }},
                 });
           }},
          {"syslog",
           [&](const YAML::Node& v) {
             dp.syslog_at = v;
             auto keys = syslog_keys(w, "detection.syslog", d.syslog, dp.syslog_tls_at);
             keys.emplace_back("queue_limit", [&w, &d](const YAML::Node& x) {
               w.integer(x, "detection.syslog.queue_limit", d.syslog_queue_limit, 1, 1000000);
             });
             w.mapping(v, "detection.syslog", keys);
           }},
          {"rules",
           [&](const YAML::Node& v) {
             dp.rules_at = v;
             if (!v.IsSequence()) {
               w.issue(v, "detection.rules must be a list of rules");
               return;
             }
             for (size_t i = 0; i < v.size(); ++i) {
               d.rules.emplace_back();
               dp.rules.emplace_back();
               parse_detection_rule(w, v[i], i, d.rules.back(), dp.rules.back());
             }
           }},
      });
}

// The webhook's URL shape and token (the sink checks the rest when it
// starts: loopback for http://, the CA file).
void check_detection_webhook(Walker& w, DetectionWebhook& h, const YAML::Node& at,
                             const SecretSources& secrets) {
  if (!at.IsDefined() || at.IsNull()) return;
  if (h.url.empty()) {
    w.issue(at, "detection.webhook needs a url (https://...)");
    return;
  }
  if (h.url.rfind("https://", 0) != 0 && h.url.rfind("http://", 0) != 0) {
    w.issue(at, "detection.webhook.url must start with https:// (or http:// to a loopback address)");
  }
  if (!h.token_file.empty() && !h.token_env.empty()) {
    w.issue(at, "detection.webhook: set either token_file or token_env, not both");
    return;
  }
  std::optional<std::string> text;
  if (!h.token_file.empty()) {
    text = secrets.read_file ? secrets.read_file(h.token_file) : std::nullopt;
    if (!text) w.issue(at, "detection.webhook.token_file: cannot read \"" + h.token_file + "\"");
  } else if (!h.token_env.empty()) {
    text = secrets.get_env ? secrets.get_env(h.token_env) : std::nullopt;
    if (!text)
      w.issue(at, "detection.webhook.token_env: environment variable " + h.token_env + " is not set");
  }
  if (text) {
    std::string t = text->substr(0, text->find('\n'));
    while (!t.empty() && (t.back() == '\r' || t.back() == ' ')) t.pop_back();
    if (t.empty()) w.issue(at, "detection.webhook: the token is empty");
    h.token = std::move(t);
  }
}

void check_detection(Walker& w, const YAML::Node& root, DetectionConfig& d, const DetectionParse& dp,
                     const MaskingConfig& masking) {
  std::vector<std::string> seen;
  for (size_t i = 0; i < d.rules.size() && i < dp.rules.size(); ++i) {
    DetectionRule& r = d.rules[i];
    const DetectionRuleParse& rp = dp.rules[i];
    if (!rp.at.IsMap()) continue;
    const std::string& l = rp.label;
    const YAML::Node& at = rp.at;
    if (r.name.empty()) {
      w.issue(at, l + " needs a name");
    } else if (std::find(seen.begin(), seen.end(), r.name) != seen.end()) {
      w.issue(rp.name_at,
              l + ": another rule has the same name (alerts and saved baselines are keyed by it)");
    } else {
      seen.push_back(r.name);
    }
    if (rp.detector_unknown) continue;
    if (!rp.detector_set) {
      w.issue(at,
              l + " needs a detector (statement_volume, window_volume, slow_drip, first_access, off_hours, "
                  "bulk_export, probing or service_account)");
      continue;
    }
    const auto& allowed = detector_params(r.detector);
    for (const auto& [key, node] : rp.params) {
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      std::string known;
      for (auto k : allowed) known += (known.empty() ? "" : ", ") + std::string(k);
      w.issue(node, l + ": " + key + " does not apply to detector " + std::string(detector_name(r.detector)) +
                        " (its keys: " + known + ")");
    }
    if (r.action == AlertAction::block && r.block_for.count() == 0) {
      w.issue(rp.action_at, l + ": action block needs block_for (e.g. 15m)");
    }
    if (r.action != AlertAction::block && rp.block_for_set) {
      w.issue(rp.block_for_at, l + ": block_for only applies with action: block");
    }
    for (const auto& [node, category] : rp.category_refs) {
      const auto& builtin = builtin_mask_categories();
      if (std::find(builtin.begin(), builtin.end(), category) == builtin.end() &&
          std::find(masking.categories.begin(), masking.categories.end(), category) ==
              masking.categories.end()) {
        w.issue(node, l + ": unknown category \"" + category + "\"");
      }
    }
    // Per-detector defaults and what each needs. A key that was given but
    // failed its own check has been reported already.
    auto given = [&](std::string_view key) {
      return std::any_of(rp.params.begin(), rp.params.end(), [&](const auto& p) { return p.first == key; });
    };
    using namespace std::chrono_literals;
    switch (r.detector) {
      case DetectorKind::statement_volume:
        if (r.max_rows == 0 && r.max_bytes == 0)
          w.issue(at, l + ": statement_volume needs max_rows or max_bytes");
        break;
      case DetectorKind::window_volume:
        if (!rp.window_set) r.window = 60s;
        if (!rp.warmup_set) r.warmup = 48h;
        break;
      case DetectorKind::slow_drip:
        if (!rp.window_set) r.window = 600s;
        if (r.max_distinct == 0 && !given("max_distinct")) w.issue(at, l + ": slow_drip needs max_distinct");
        break;
      case DetectorKind::first_access:
        if (!rp.warmup_set) r.warmup = 24h;
        break;
      case DetectorKind::off_hours:
        if (r.allowed.empty())
          w.issue(at, l + ": off_hours needs allowed (the schedule when access is normal)");
        break;
      case DetectorKind::bulk_export:
        if (!r.copy_to && !r.full_scan)
          w.issue(at, l + ": bulk_export with copy_to and full_scan both off never fires");
        break;
      case DetectorKind::probing:
        if (!rp.window_set) r.window = 300s;
        if (r.max_denials == 0 && r.max_predicates == 0 && !given("max_denials") && !given("max_predicates"))
          w.issue(at, l + ": probing needs max_denials or max_predicates");
        break;
      case DetectorKind::service_account:
        if (!rp.warmup_set) r.warmup = 24h;
        if (r.roles.empty()) {
          w.issue(at, l + ": service_account needs roles (the service accounts it watches)");
        }
        if (r.clients.empty() && r.application_names.empty() && !r.learn) {
          w.issue(at, l + ": service_account needs clients, application_names or learn: true");
        }
        if (r.learn && r.warmup.count() == 0) {
          w.issue(rp.learn_at,
                  l + ": learn needs a warmup longer than 0s (what is learned is what it sees then)");
        }
        break;
    }
  }
  (void)root;
}

}  // namespace

ConfigLoad parse_config(std::string_view yaml_text) {
  return parse_config(yaml_text, system_secret_sources());
}

ConfigLoad parse_config(std::string_view yaml_text, const SecretSources& secrets) {
  ConfigLoad load;
  Config& c = load.config;
  Walker w(load.issues);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::ParserException& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, "YAML syntax error: " + e.msg});
    return load;
  }
  if (root.IsNull()) return load;  // an empty file means all defaults

  YAML::Node tls_node;
  YAML::Node upstream_node;
  YAML::Node pool_node;
  MaskingParse masking_parse;
  AuthParse auth_parse;
  AuditParse audit_parse;
  MetricsParse metrics_parse;
  DetectionParse detection_parse;
  try {
    w.mapping(
        root, "the top level",
        {
            {"listen",
             [&](const YAML::Node& n) {
               if (!n.IsSequence() || n.size() == 0) {
                 w.issue(n, "listen must be a non-empty list of \"host:port\" strings");
                 return;
               }
               c.listen.clear();
               for (const auto& e : n) {
                 std::string s;
                 if (!w.scalar(e, "listen entry", s)) continue;
                 ListenAddress a;
                 std::string why;
                 if (!parse_listen(s, a, why)) {
                   w.issue(e, "listen entry \"" + s + "\": " + why);
                   continue;
                 }
                 c.listen.push_back(a);
               }
             }},
            {"unix_socket_dir",
             [&](const YAML::Node& n) { w.string(n, "unix_socket_dir", c.unix_socket_dir); }},
            {"threads", [&](const YAML::Node& n) { w.integer(n, "threads", c.threads, 0, 256); }},
            {"io_uring",
             [&](const YAML::Node& n) {
               w.enumeration(n, "io_uring", c.io_uring,
                             {{"auto", Config::IoUring::auto_}, {"off", Config::IoUring::off}});
             }},
            {"max_connections",
             [&](const YAML::Node& n) { w.integer(n, "max_connections", c.max_connections, 1, 1000000); }},
            {"tls",
             [&](const YAML::Node& n) {
               tls_node = n;
               w.mapping(
                   n, "tls",
                   {
                       {"cert_file",
                        [&](const YAML::Node& v) { w.string(v, "tls.cert_file", c.tls.cert_file); }},
                       {"key_file",
                        [&](const YAML::Node& v) { w.string(v, "tls.key_file", c.tls.key_file); }},
                       {"require", [&](const YAML::Node& v) { w.boolean(v, "tls.require", c.tls.require); }},
                       {"client_ca_file",
                        [&](const YAML::Node& v) {
                          w.string(v, "tls.client_ca_file", c.tls.client_ca_file);
                        }},
                       {"min_version",
                        [&](const YAML::Node& v) {
                          if (w.scalar(v, "tls.min_version", c.tls.min_version) &&
                              c.tls.min_version != "1.2" && c.tls.min_version != "1.3") {
                            w.issue(v, "tls.min_version must be \"1.2\" or \"1.3\"");
                          }
                        }},
                   });
             }},
            {"upstream",
             [&](const YAML::Node& n) {
               upstream_node = n;
               w.mapping(
                   n, "upstream",
                   {
                       {"host", [&](const YAML::Node& v) { w.string(v, "upstream.host", c.upstream.host); }},
                       {"port",
                        [&](const YAML::Node& v) {
                          w.integer(v, "upstream.port", c.upstream.port, 1, 65535);
                        }},
                       {"sslmode",
                        [&](const YAML::Node& v) {
                          w.enumeration(v, "upstream.sslmode", c.upstream.sslmode,
                                        {{"disable", SslMode::disable},
                                         {"prefer", SslMode::prefer},
                                         {"require", SslMode::require},
                                         {"verify-full", SslMode::verify_full}});
                        }},
                       {"sslrootcert",
                        [&](const YAML::Node& v) {
                          w.string(v, "upstream.sslrootcert", c.upstream.sslrootcert);
                        }},
                       {"connect_timeout",
                        [&](const YAML::Node& v) {
                          w.duration(v, "upstream.connect_timeout", c.upstream.connect_timeout);
                        }},
                       {"pool",
                        [&](const YAML::Node& v) {
                          auto& p = c.upstream.pool;
                          auto at_least_1s = [&](const YAML::Node& x, std::string_view name, Duration& d) {
                            Duration parsed = d;
                            w.duration(x, name, parsed);
                            if (parsed < std::chrono::seconds(1)) {
                              w.issue(x, std::string(name) + " must be at least 1s");
                            } else {
                              d = parsed;
                            }
                          };
                          w.mapping(v, "upstream.pool",
                                    {
                                        {"enabled",
                                         [&](const YAML::Node& x) {
                                           pool_node = x;
                                           w.boolean(x, "upstream.pool.enabled", p.enabled);
                                         }},
                                        {"max_idle",
                                         [&](const YAML::Node& x) {
                                           w.integer(x, "upstream.pool.max_idle", p.max_idle, 1, 100000);
                                         }},
                                        {"idle_timeout",
                                         [&](const YAML::Node& x) {
                                           at_least_1s(x, "upstream.pool.idle_timeout", p.idle_timeout);
                                         }},
                                        {"max_lifetime",
                                         [&](const YAML::Node& x) {
                                           at_least_1s(x, "upstream.pool.max_lifetime", p.max_lifetime);
                                         }},
                                        {"reset_timeout",
                                         [&](const YAML::Node& x) {
                                           at_least_1s(x, "upstream.pool.reset_timeout", p.reset_timeout);
                                         }},
                                    });
                        }},
                   });
             }},
            {"timeouts",
             [&](const YAML::Node& n) {
               w.mapping(n, "timeouts",
                         {
                             {"handshake",
                              [&](const YAML::Node& v) {
                                w.duration(v, "timeouts.handshake", c.timeouts.handshake);
                              }},
                             {"client_idle",
                              [&](const YAML::Node& v) {
                                w.duration(v, "timeouts.client_idle", c.timeouts.client_idle);
                              }},
                             {"shutdown_grace",
                              [&](const YAML::Node& v) {
                                w.duration(v, "timeouts.shutdown_grace", c.timeouts.shutdown_grace);
                              }},
                         });
             }},
            {"limits",
             [&](const YAML::Node& n) {
               w.mapping(n, "limits",
                         {
                             {"max_message_size",
                              [&](const YAML::Node& v) {
                                std::string s;
                                if (!w.scalar(v, "limits.max_message_size", s)) return;
                                auto size = parse_size(s);
                                if (!size) {
                                  w.issue(v, "limits.max_message_size: " + size.error().message);
                                } else if (*size < 8192 || *size > (uint64_t{1} << 30)) {
                                  w.issue(v, "limits.max_message_size must be between 8KiB and 1GiB");
                                } else {
                                  // 1GiB itself means PostgreSQL's own ceiling, which is one byte less.
                                  c.limits.max_message_size = static_cast<uint32_t>(
                                      std::min<uint64_t>(*size, protocol::default_max_message_length));
                                }
                              }},
                         });
             }},
            {"log",
             [&](const YAML::Node& n) {
               w.mapping(n, "log",
                         {
                             {"level",
                              [&](const YAML::Node& v) {
                                w.enumeration(v, "log.level", c.log.level,
                                              {{"debug", LogLevel::debug},
                                               {"info", LogLevel::info},
                                               {"warn", LogLevel::warn},
                                               {"error", LogLevel::error}});
                              }},
                         });
             }},
            {"masking", [&](const YAML::Node& n) { parse_masking(w, n, c.masking, masking_parse); }},
            {"auth", [&](const YAML::Node& n) { parse_auth(w, n, c.auth, auth_parse); }},
            {"catalog", [&](const YAML::Node& n) { parse_catalog(w, n, c.catalog, auth_parse); }},
            {"audit", [&](const YAML::Node& n) { parse_audit(w, n, c.audit, audit_parse); }},
            {"metrics", [&](const YAML::Node& n) { parse_metrics(w, n, c.metrics, metrics_parse); }},
            {"detection", [&](const YAML::Node& n) { parse_detection(w, n, c.detection, detection_parse); }},
        });
  } catch (const YAML::Exception& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, e.msg});
  }

  // Cross-field checks.
  const YAML::Node& tls_at = tls_node ? tls_node : root;
  if (c.tls.cert_file.empty() != c.tls.key_file.empty()) {
    w.issue(tls_at, "tls.cert_file and tls.key_file must be set together");
  }
  if (c.tls.require && !c.tls.enabled()) {
    w.issue(tls_at, "tls.require is true but no tls.cert_file/key_file is configured");
  }
  if (!c.tls.client_ca_file.empty() && !c.tls.enabled()) {
    w.issue(tls_at, "tls.client_ca_file needs tls.cert_file and tls.key_file");
  }
  check_readable(w, tls_at, c.tls.cert_file, "tls.cert_file");
  check_readable(w, tls_at, c.tls.key_file, "tls.key_file");
  check_readable(w, tls_at, c.tls.client_ca_file, "tls.client_ca_file");
  const YAML::Node& up_at = upstream_node ? upstream_node : root;
  if (c.upstream.host.empty()) w.issue(up_at, "upstream.host must not be empty");
  // Host names, addresses and socket directories never contain white space;
  // finding some usually means a quote was left open and swallowed the lines
  // after it.
  if (std::any_of(c.upstream.host.begin(), c.upstream.host.end(),
                  [](unsigned char ch) { return ch <= ' ' || ch == 0x7f; })) {
    w.issue(up_at, "upstream.host contains white space or control characters (an unclosed quote?)");
  }
  if (c.upstream.sslmode == SslMode::verify_full && c.upstream.sslrootcert.empty()) {
    w.issue(up_at,
            "upstream.sslmode verify-full needs upstream.sslrootcert (the CA that signed PostgreSQL's "
            "certificate)");
  }
  check_readable(w, up_at, c.upstream.sslrootcert, "upstream.sslrootcert");
  if (c.upstream.pool.enabled && c.auth.mode != AuthMode::scram) {
    // In passthrough mode PostgreSQL authenticates each client on its own
    // backend; handing that backend to another client would skip it.
    w.issue(pool_node ? pool_node : up_at,
            "upstream.pool.enabled needs auth.mode scram: only when pgcloak authenticates clients itself "
            "can a PostgreSQL connection be reused for another client");
  }
  try {
    check_masking(w, c.masking, masking_parse, secrets);
  } catch (const YAML::Exception& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, e.msg});
  }
  try {
    check_auth(w, root, c, auth_parse, secrets);
  } catch (const YAML::Exception& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, e.msg});
  }
  try {
    check_catalog(w, root, c, auth_parse, masking_parse.section);
  } catch (const YAML::Exception& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, e.msg});
  }
  try {
    check_audit(w, root, c.audit, audit_parse, secrets);
  } catch (const YAML::Exception& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, e.msg});
  }
  try {
    check_metrics(w, root, c.metrics, metrics_parse, secrets);
  } catch (const YAML::Exception& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, e.msg});
  }
  try {
    check_detection(w, root, c.detection, detection_parse, c.masking);
    check_detection_webhook(w, c.detection.webhook, detection_parse.webhook_at, secrets);
    if (detection_parse.syslog_at.IsDefined() && !detection_parse.syslog_at.IsNull()) {
      if (c.detection.syslog.host.empty())
        w.issue(detection_parse.syslog_at, "detection.syslog needs a host (the syslog receiver)");
      check_syslog_target(w, "detection.syslog", c.detection.syslog, detection_parse.syslog_tls_at,
                          detection_parse.syslog_at);
    }
  } catch (const YAML::Exception& e) {
    load.issues.push_back({e.mark.line + 1, e.mark.column + 1, e.msg});
  }
  std::sort(load.issues.begin(), load.issues.end(),
            [](const ConfigIssue& a, const ConfigIssue& b) { return a.line < b.line; });
  return load;
}

ConfigLoad load_config_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    ConfigLoad load;
    load.issues.push_back({0, 0, "cannot open config file"});
    return load;
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  return parse_config(ss.str());
}

}  // namespace pgcloak::rules
