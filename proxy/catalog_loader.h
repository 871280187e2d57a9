// Reads rules::Catalog from PostgreSQL 15's system catalogs over one of
// pgcloak's side connections: relations and columns, inheritance and
// partition parents, the columns views read, roles and memberships, and the
// functions, operators and casts that are not PostgreSQL's own.
//
// Blocking (libpq): call it through run_blocking(), never on an io thread.
#pragma once

#include <memory>

#include "protocol/result.h"
#include "proxy/pg_side_connection.h"
#include "rules/catalog.h"

namespace pgcloak::proxy {

// Runs every query in one read-only REPEATABLE READ transaction, so the parts
// come from one snapshot (a table created between two queries cannot show up
// without its columns). Needs no privilege beyond CONNECT: everything it
// reads is visible to any role. Returns a finalized catalog with generation
// 0; the caller (PolicyStore) numbers it. Errors are the failing statement's,
// with the part being read in the message.
Result<std::shared_ptr<rules::Catalog>> load_catalog(PgSideConnection& conn);

}  // namespace pgcloak::proxy
