// The settings a StartupMessage asks PostgreSQL to apply, read the way the
// server reads them, so that a check on them cannot be passed by a spelling
// PostgreSQL accepts and pgcloak does not.
//
// PostgreSQL takes settings from two places in the StartupMessage
// (protocol docs, "StartupMessage"; src/backend/postmaster/postmaster.c,
// ProcessStartupPacket):
//  - every parameter other than user, database, options, replication and
//    the "_pq_." protocol options is a setting; its name is matched without
//    regard to case, as every setting name is;
//  - "options" is a command line. pg_split_opts (src/backend/utils/init/
//    postinit.c) splits it on white space, a backslash taking the next
//    character literally, and process_postgres_switches
//    (src/backend/tcop/postgres.c) reads the words with getopt over the
//    server's own switches "B:bC:c:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:".
//    `-c name=value` and `--name=value` set a setting, with dashes in the
//    name read as underscores (ParseLongOption); switches can be grouped
//    (`-Ec name=value`) and an argument can follow its switch directly
//    (`-cname=value`). The other switches set settings too (`-d 5` turns
//    on debug_print_rewritten, `-S` sets work_mem, `-e` DateStyle).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pgcloak::rules {

struct RequestedSetting {
  std::string name;   // as PostgreSQL looks it up: lower case; dashes as underscores where it converts them
  std::string value;  // empty for a switch that is not a named setting
  std::string shown;  // how the client spelled it, for messages: "options -c debug_print_rewritten"
  // A switch other than -c and --: PostgreSQL applies it (name is "-d",
  // "-S", ...), and pgcloak reads no setting name out of it.
  bool other_switch = false;
};

// The words of an options string, as pg_split_opts makes them.
std::vector<std::string> split_startup_options(std::string_view options);

// Every setting a StartupMessage's parameters ask for, options included.
// nullopt when the options string is not one PostgreSQL accepts as a whole
// (a word that is not a switch, a switch without its argument, -c without
// '='): PostgreSQL refuses such a startup, and pgcloak cannot say what it
// would have set.
std::optional<std::vector<RequestedSetting>> requested_settings(
    const std::vector<std::pair<std::string, std::string>>& parameters);

}  // namespace pgcloak::rules
