#include "rules/session_settings.h"

#include <algorithm>
#include <iterator>

namespace pgcloak::rules {

namespace {

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// clean_encoding_name (src/common/encnames.c): only letters and digits
// count, without regard to case, so "Shift_JIS", "shift-jis" and "SJIS"
// are compared as "shiftjis" and "sjis".
std::string clean_encoding_name(std::string_view name) {
  std::string out;
  for (char c : name) {
    if (c >= 'A' && c <= 'Z') {
      out += static_cast<char>(c - 'A' + 'a');
    } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      out += c;
    }
  }
  return out;
}

// pg_encname_tbl (src/common/encnames.c), the names and aliases of the
// client-only encodings: SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030 and
// JOHAB.
constexpr std::string_view client_only_names[] = {
    "big5",   "gb18030", "gbk",    "johab",  "mskanji",    "shiftjis",   "shiftjis2004", "sjis",      "uhc",
    "win932", "win936",  "win949", "win950", "windows932", "windows936", "windows949",   "windows950"};

// The same table's names and aliases of the server encodings, every one of
// them ASCII-safe.
constexpr std::string_view server_encoding_names[] = {
    "abc",         "alt",         "euccn",       "eucjis2004",  "eucjp",       "euckr",       "euctw",
    "iso88591",    "iso885910",   "iso885913",   "iso885914",   "iso885915",   "iso885916",   "iso88592",
    "iso88593",    "iso88594",    "iso88595",    "iso88596",    "iso88597",    "iso88598",    "iso88599",
    "koi8",        "koi8r",       "koi8u",       "latin1",      "latin10",     "latin2",      "latin3",
    "latin4",      "latin5",      "latin6",      "latin7",      "latin8",      "latin9",      "muleinternal",
    "sqlascii",    "tcvn",        "tcvn5712",    "unicode",     "utf8",        "vscii",       "win",
    "win1250",     "win1251",     "win1252",     "win1253",     "win1254",     "win1255",     "win1256",
    "win1257",     "win1258",     "win866",      "win874",      "windows1250", "windows1251", "windows1252",
    "windows1253", "windows1254", "windows1255", "windows1256", "windows1257", "windows1258", "windows866",
    "windows874"};

template <size_t N>
bool listed(const std::string_view (&list)[N], std::string_view name) {
  return std::find(std::begin(list), std::end(list), name) != std::end(list);
}

// on, true, yes, 1 and their unambiguous prefixes (parse_bool in
// src/backend/utils/adt/bool.c): the only values of
// standard_conforming_strings a masked session may ask for.
bool boolean_on(std::string_view value) {
  const std::string v = lower_ascii(value);
  if (v.empty()) return false;
  auto prefix_of = [&](std::string_view word, size_t min) {
    return v.size() >= min && v.size() <= word.size() && word.substr(0, v.size()) == v;
  };
  return v == "1" || v == "on" || prefix_of("true", 1) || prefix_of("yes", 1);
}

// client_min_messages levels below NOTICE send the server's DEBUG and LOG
// messages to the client, and those describe the statement PostgreSQL ran:
// the rewritten one, with the masking expressions (docs/masking.md).
bool quiet_message_level(std::string_view value) {
  const std::string v = lower_ascii(value);
  return v == "notice" || v == "warning" || v == "error" || v == "info";
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Settings that make the server describe the statement it ran, or how it
// ran it, to the client: parse trees and plans (debug_*), sort and lock
// traces (trace_*), and log lines (log_*, all superuser-only but refused
// outright so that no spelling needs to be known).
bool server_trace_setting(std::string_view name) {
  return starts_with(name, "debug_") || starts_with(name, "trace_") || starts_with(name, "log_") ||
         name == "wal_debug";
}

// What a masked login may set in its StartupMessage without pgcloak having
// to think about it: what libpq, pgjdbc, psycopg, asyncpg and
// node-postgres send, and the session defaults applications set.
constexpr std::string_view startup_allowed[] = {"application_name",
                                                "client_encoding",
                                                "datestyle",
                                                "timezone",
                                                "intervalstyle",
                                                "extra_float_digits",
                                                "search_path",
                                                "statement_timeout",
                                                "lock_timeout",
                                                "idle_in_transaction_session_timeout",
                                                "idle_session_timeout",
                                                "default_transaction_isolation",
                                                "default_transaction_read_only",
                                                "default_transaction_deferrable",
                                                "bytea_output",
                                                "lc_messages",
                                                "lc_monetary",
                                                "lc_numeric",
                                                "lc_time",
                                                "client_min_messages",
                                                "standard_conforming_strings",
                                                "escape_string_warning",
                                                "geqo",
                                                "jit",
                                                "work_mem",
                                                "temp_buffers",
                                                "synchronous_commit",
                                                "default_text_search_config",
                                                "xmlbinary",
                                                "xmloption",
                                                "timezone_abbreviations",
                                                "array_nulls",
                                                "gin_fuzzy_search_limit",
                                                "cursor_tuple_fraction"};

}  // namespace

EncodingReading encoding_reading(std::string_view name) {
  const std::string clean = clean_encoding_name(name);
  if (listed(client_only_names, clean)) return EncodingReading::client_only;
  if (listed(server_encoding_names, clean)) return EncodingReading::same;
  return EncodingReading::unknown;
}

std::string setting_key(std::string_view name) {
  return lower_ascii(name);
}

std::optional<std::string> masked_set_refusal(std::string_view name, std::optional<std::string_view> value) {
  if (server_trace_setting(name)) {
    return "it makes the server describe the statements it runs, which are the rewritten ones with the "
           "masking expressions and their keys, or how their values sort and compare";
  }
  if (name == "client_min_messages") {
    // RESET returns to the session's start value, which pgcloak has
    // vetted; DEBUG and LOG notices are dropped for masked sessions too.
    if (!value || quiet_message_level(*value)) return std::nullopt;
    return "levels below NOTICE send the server's DEBUG and LOG messages, which describe the rewritten "
           "statement with the masking keys";
  }
  if (name == "standard_conforming_strings") {
    // RESET and DEFAULT can mean off (a role or database default), and a
    // value only PostgreSQL would read as on is not worth guessing.
    if (value && boolean_on(*value)) return std::nullopt;
    return "pgcloak reads statements with standard strings, as PostgreSQL does by default; with backslash "
           "escapes PostgreSQL would read a statement differently from what pgcloak checked";
  }
  if (name == "backslash_quote") return "it changes how PostgreSQL reads quotes in string literals";
  if (name == "client_encoding") {
    // RESET returns to the session's start value; a masked session whose
    // start value is not ASCII-safe has every statement refused.
    if (!value || encoding_reading(*value) == EncodingReading::same) return std::nullopt;
    return "in the client-only encodings (SJIS, BIG5, GBK, UHC, GB18030, JOHAB, SHIFT_JIS_2004) a "
           "character's second byte can be a quote or backslash, so PostgreSQL would read a statement "
           "differently from what pgcloak checked; use UTF8";
  }
  return std::nullopt;
}

std::optional<std::string> masked_startup_refusal(std::string_view name, std::string_view value) {
  if (!listed(startup_allowed, name)) {
    return "only common session settings may be set at startup by a masked login";
  }
  return masked_set_refusal(name, value);
}

void SessionReading::note(std::string_view name, std::string_view value) {
  if (name == "client_encoding") {
    encoding_same = encoding_reading(value) == EncodingReading::same;
    names_in_utf8 = value == "UTF8" || value == "SQL_ASCII";
  } else if (name == "standard_conforming_strings") {
    standard_strings = value != "off";
  }
}

std::optional<ReadingRefusal> reading_refusal(const SessionReading& reading, std::string_view sql,
                                              const Protection& protection) {
  if (!reading.standard_strings || !reading.start_standard_strings) {
    return ReadingRefusal{
        "standard-strings",
        Error::make(sqlstate::feature_not_supported,
                    "pgcloak: masked sessions need standard_conforming_strings = on; this session has it off",
                    Severity::error,
                    "Remove the standard_conforming_strings setting for this role or database (ALTER "
                    "ROLE/DATABASE ... RESET standard_conforming_strings) and reconnect.")};
  }
  if (!reading.encoding_same || !reading.start_encoding_same) {
    return ReadingRefusal{
        "encoding",
        Error::make(
            sqlstate::feature_not_supported,
            "pgcloak: masked sessions need an ASCII-safe client_encoding such as UTF8; this session "
            "started with or uses a client-only encoding (SJIS, BIG5, GBK, UHC, GB18030, JOHAB or "
            "SHIFT_JIS_2004)",
            Severity::error,
            "Connect with client_encoding=UTF8, and remove any client_encoding setting for this role or "
            "database (ALTER ROLE/DATABASE ... RESET client_encoding).")};
  }
  const auto high = [](char c) { return (static_cast<unsigned char>(c) & 0x80) != 0; };
  if (!reading.names_in_utf8 && protection.has_non_ascii_names() &&
      std::any_of(sql.begin(), sql.end(), high)) {
    // The catalog's names are UTF-8; in another client encoding a
    // protected name with a byte above 0x7F is spelled with other bytes,
    // which the analysis would not match and PostgreSQL would.
    return ReadingRefusal{
        "encoding",
        Error::make(sqlstate::feature_not_supported,
                    "pgcloak: in this database protected names have non-ASCII characters, so masked "
                    "sessions must send statements with non-ASCII characters in UTF8",
                    Severity::error, "SET client_encoding = 'UTF8' (or connect with it) and retry.")};
  }
  return std::nullopt;
}

}  // namespace pgcloak::rules
