// Which prepared statements a simple-protocol Query removes, without
// parsing it: `DEALLOCATE [PREPARE] name`, `DEALLOCATE [PREPARE] ALL` and
// `DISCARD ALL` (PostgreSQL 15, sql-deallocate.html and sql-discard.html).
// Drivers such as psycopg drop their named statements this way rather than
// with the protocol's Close, so whatever remembers statements by name (the
// audit records of later Executes) must forget them too.
//
// Deliberately narrow: one statement, optionally ending in ';', only
// white space around the words (no comments). Anything else is "not a
// deallocation", so a caller never forgets a statement that still exists.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace pgcloak::rules {

struct Deallocation {
  bool all = false;  // every prepared statement
  std::string name;  // else this one, as PostgreSQL folds it
};

std::optional<Deallocation> deallocation_of(std::string_view sql);

}  // namespace pgcloak::rules
