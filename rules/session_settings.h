// Which session settings a masked session may have and change, because
// they decide how PostgreSQL reads a statement or what it tells the client
// about the statement it ran (docs/masking.md, "Parser differentials").
//
// pgcloak analyses a statement's bytes with libpg_query, which lexes them
// as PostgreSQL does with standard_conforming_strings on and an
// ASCII-safe encoding. PostgreSQL itself first converts the bytes from
// client_encoding to the server encoding and then lexes them with the
// session's settings. The two readings agree exactly when:
//  - standard_conforming_strings is on;
//  - client_encoding is one of PostgreSQL's server-capable encodings. In
//    those, every byte below 0x80 is the ASCII character itself, so the
//    quotes, backslashes, comment marks and operators pgcloak sees are the
//    ones PostgreSQL sees after conversion. In the client-only encodings
//    (SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB; src/common/
//    wchar.c, pg_encoding_is_client_only) the second byte of a character
//    can be 0x5C or a quote, which the raw bytes show as `\` or `'`.
// pgcloak does not convert client-only encodings itself: its conversion
// would have to match PostgreSQL's own tables byte for byte (vendor
// extensions, GB18030's four-byte ranges), and any difference would be a
// new way past the analysis. Masked sessions are refused them instead.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "protocol/error.h"
#include "rules/protection.h"

namespace pgcloak::rules {

enum class EncodingReading {
  same,         // ASCII-safe: PostgreSQL reads the statement as pgcloak does
  client_only,  // a multi-byte character can hide a quote or backslash
  unknown,      // not a name PostgreSQL knows: refused, since pgcloak cannot be sure
};

// A client_encoding value (any spelling PostgreSQL accepts: "Shift_JIS",
// "win932", "utf-8", ...), classified as PostgreSQL's pg_char_to_encoding
// would find it.
EncodingReading encoding_reading(std::string_view name);

// A setting name as PostgreSQL matches it (without regard to case).
std::string setting_key(std::string_view name);

// Why a masked session may not SET (or SET LOCAL, or ALTER DATABASE ...
// SET) `name`; nullopt when it may. `value` is the value as one string, or
// nullopt for RESET, SET ... TO DEFAULT and values pgcloak does not read
// (lists): each check says what it does with those. `name` is a
// setting_key().
std::optional<std::string> masked_set_refusal(std::string_view name, std::optional<std::string_view> value);

// Why a masked login may not ask for `name` = `value` in its
// StartupMessage (a parameter or an options switch); nullopt when it may.
// An allow-list: startup settings are few and well known, and anything
// else a login asks for at startup is refused rather than understood.
std::optional<std::string> masked_startup_refusal(std::string_view name, std::string_view value);

// How PostgreSQL reads a session's statements, as its ParameterStatus
// messages reported it, now and at the session's start (the values RESET,
// RESET ALL and DISCARD ALL return to).
struct SessionReading {
  bool standard_strings = true;
  bool encoding_same = true;  // client_encoding reads as pgcloak does (ASCII-safe)
  bool start_standard_strings = true;
  bool start_encoding_same = true;
  // Statement bytes above 0x7F spell names as the catalog does: UTF8, or
  // SQL_ASCII, which PostgreSQL does not convert.
  bool names_in_utf8 = true;

  // Follows a ParameterStatus (name, value); set_start() after the
  // session's first ones.
  void note(std::string_view name, std::string_view value);
  void set_start() {
    start_standard_strings = standard_strings;
    start_encoding_same = encoding_same;
  }
  // What PostgreSQL reads differently from pgcloak now, whatever the
  // statement: a reading pgcloak refuses every route to.
  bool unsafe_now() const { return !standard_strings || !encoding_same; }
};

struct ReadingRefusal {
  std::string rule;  // "standard-strings" or "encoding"
  Error error;
};

// Why a masked session's statement `sql` cannot be analysed under
// `reading`, or nullopt: standard strings off, or a client-only encoding,
// now or at the start (0A000); bytes above 0x7F outside UTF8 when a name
// the analysis matches is not ASCII (Protection::has_non_ascii_names).
std::optional<ReadingRefusal> reading_refusal(const SessionReading& reading, std::string_view sql,
                                              const Protection& protection);

}  // namespace pgcloak::rules
