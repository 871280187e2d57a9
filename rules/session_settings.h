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

}  // namespace pgcloak::rules
