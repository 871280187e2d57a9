#include "rules/startup_options.h"

#include <algorithm>
#include <cctype>

#include "rules/session_settings.h"

namespace pgcloak::rules {

namespace {

// process_postgres_switches' getopt string (src/backend/tcop/postgres.c):
// a letter followed by ':' takes an argument.
constexpr std::string_view server_switches = "B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:";

// The StartupMessage parameters PostgreSQL reads itself rather than as
// settings (ProcessStartupPacket compares these names exactly).
bool startup_keyword(std::string_view name) {
  return name == "user" || name == "database" || name == "options" || name == "replication" ||
         name.substr(0, 5) == "_pq_.";
}

// ParseLongOption (src/backend/utils/misc/guc.c): the name runs to the first
// '=', with every '-' in it read as '_'. nullopt without '=': PostgreSQL
// refuses "-c name" and "--name" with no value.
std::optional<std::pair<std::string, std::string>> long_option(std::string_view arg) {
  const size_t eq = arg.find('=');
  if (eq == std::string_view::npos) return std::nullopt;
  std::string name = setting_key(arg.substr(0, eq));
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  return std::make_pair(std::move(name), std::string(arg.substr(eq + 1)));
}

// Whether `flag` is one of the server's switches, and whether it takes an
// argument.
std::optional<bool> switch_takes_argument(char flag) {
  if (flag == ':') return std::nullopt;
  const size_t at = server_switches.find(flag);
  if (at == std::string_view::npos) return std::nullopt;
  return at + 1 < server_switches.size() && server_switches[at + 1] == ':';
}

// getopt over the words: false when PostgreSQL would refuse them.
bool read_switches(const std::vector<std::string>& words, std::vector<RequestedSetting>& out) {
  for (size_t w = 0; w < words.size(); ++w) {
    const std::string& word = words[w];
    // A word that is not a switch (getopt's "--" and "-" included) is a
    // command-line argument the server refuses from a client ("invalid
    // command-line argument for server process").
    if (word.size() < 2 || word[0] != '-' || word == "--") return false;
    for (size_t k = 1; k < word.size(); ++k) {
      const char flag = word[k];
      const auto takes = switch_takes_argument(flag);
      if (!takes) return false;
      if (!*takes) {
        out.push_back({std::string("-") + flag, {}, std::string("options -") + flag, true});
        continue;
      }
      // The argument is the rest of this word, else the next word.
      std::string arg;
      if (k + 1 < word.size()) {
        arg = word.substr(k + 1);
      } else if (w + 1 < words.size()) {
        arg = words[++w];
      } else {
        return false;
      }
      if (flag == 'c' || flag == '-') {
        auto kv = long_option(arg);
        if (!kv) return false;
        std::string shown = (flag == 'c' ? "options -c " : "options --") + kv->first;
        out.push_back({std::move(kv->first), std::move(kv->second), std::move(shown), false});
      } else {
        out.push_back({std::string("-") + flag, std::move(arg), std::string("options -") + flag, true});
      }
      break;  // the argument ended this word
    }
  }
  return true;
}

}  // namespace

std::vector<std::string> split_startup_options(std::string_view options) {
  // pg_split_opts: isspace() separates words unless escaped; a backslash
  // makes the next character literal (itself included) and is dropped.
  std::vector<std::string> words;
  size_t i = 0;
  const size_t n = options.size();
  while (i < n) {
    while (i < n && std::isspace(static_cast<unsigned char>(options[i])) != 0) ++i;
    if (i == n) break;
    std::string word;
    bool escaped = false;
    for (; i < n; ++i) {
      const char c = options[i];
      if (!escaped && std::isspace(static_cast<unsigned char>(c)) != 0) break;
      if (!escaped && c == '\\') {
        escaped = true;
      } else {
        escaped = false;
        word += c;
      }
    }
    words.push_back(std::move(word));
  }
  return words;
}

std::optional<std::vector<RequestedSetting>> requested_settings(
    const std::vector<std::pair<std::string, std::string>>& parameters) {
  std::vector<RequestedSetting> out;
  for (const auto& [name, value] : parameters) {
    if (name == "options") {
      // pg_split_opts splits with the backend's isspace(), which depends on
      // the database's LC_CTYPE for bytes above 0x7F (0xA0 is a space in
      // some single-byte locales): such bytes make the words uncertain.
      if (std::any_of(value.begin(), value.end(),
                      [](char c) { return (static_cast<unsigned char>(c) & 0x80) != 0; }))
        return std::nullopt;
      if (!read_switches(split_startup_options(value), out)) return std::nullopt;
      continue;
    }
    if (startup_keyword(name)) continue;
    out.push_back({setting_key(name), value, name, false});
  }
  return out;
}

}  // namespace pgcloak::rules
