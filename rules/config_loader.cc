// YAML -> Config. yaml-cpp reports positions through Node::Mark(), which we
// carry into every issue so --check-config can point at the offending line.
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "rules/config.h"

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
                       "invalid duration \"" + std::string(text) + "\": use e.g. 500ms, 10s, 5m, 1h");
  }
  std::string_view unit(ptr, text.data() + text.size() - ptr);
  static const std::map<std::string_view, uint64_t> units{{"", 1},      {"ms", 1},      {"s", 1000},
                                                          {"m", 60000}, {"min", 60000}, {"h", 3600000}};
  auto it = units.find(unit);
  if (it == units.end()) {
    return Error::make(sqlstate::config_file_error,
                       "invalid duration unit \"" + std::string(unit) + "\": use ms, s, m or h");
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

  void boolean(const YAML::Node& n, std::string_view name, bool& out) {
    std::string s;
    if (!scalar(n, name, s)) return;
    if (s == "true" || s == "yes" || s == "on") {
      out = true;
    } else if (s == "false" || s == "no" || s == "off") {
      out = false;
    } else {
      issue(n, std::string(name) + " must be true or false, not \"" + s + "\"");
    }
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

}  // namespace

ConfigLoad parse_config(std::string_view yaml_text) {
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
