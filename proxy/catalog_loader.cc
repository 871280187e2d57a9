#include "proxy/catalog_loader.h"

#include <charconv>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace pgcloak::proxy {

namespace {

// --- the queries ---------------------------------------------------------------
// Unqualified names resolve in pg_catalog only: the transaction sets
// search_path to "pg_catalog, pg_temp" first (see load_catalog), so objects a
// user creates elsewhere, or a temporary pg_class, cannot stand in for the
// system catalogs.

// Relations pgcloak may have to protect: tables, partitioned tables, views,
// materialized views and foreign tables, outside PostgreSQL's own schemas
// (pg_toast also covers the per-session pg_toast_temp_N).
constexpr std::string_view relations_sql = R"(
SELECT c.oid, n.nspname, c.relname, c.relkind
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_toast'
ORDER BY c.oid)";

// Their user columns in attnum order (system columns have attnum < 0;
// dropped ones keep their slot with attisdropped set). The type as the
// masks need it: OID, typmod, the SQL spelling and pg_type.typcategory.
constexpr std::string_view columns_sql = R"(
SELECT a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod,
       format_type(a.atttypid, a.atttypmod), t.typcategory
FROM pg_attribute AS a
JOIN pg_class AS c ON c.oid = a.attrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
JOIN pg_type AS t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_toast'
  AND a.attnum > 0
  AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum)";

// Inheritance parents and partition parents alike (declarative partitions
// are recorded in pg_inherits too). Rows for indexes are skipped later: their
// inhrelid is not one of the relations above.
constexpr std::string_view parents_sql = R"(
SELECT inhrelid, inhparent
FROM pg_inherits
ORDER BY inhrelid, inhseqno)";

// What a view or materialized view reads: the dependencies of its _RETURN
// rewrite rule on columns of other relations (refobjsubid = attnum; 0 = the
// whole relation, e.g. a whole-row reference). The rule's dependency on the
// view itself is left out.
constexpr std::string_view view_reads_sql = R"(
SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid
FROM pg_rewrite AS r
JOIN pg_class AS v ON v.oid = r.ev_class
JOIN pg_depend AS d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
WHERE v.relkind IN ('v', 'm')
  AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid <> r.ev_class
ORDER BY 1, 2, 3)";

// Roles. pg_authid is readable by superusers only; pg_roles is the public
// view of it, and pg_auth_members is public.
constexpr std::string_view roles_sql = R"(
SELECT oid, rolname
FROM pg_roles
ORDER BY oid)";

constexpr std::string_view memberships_sql = R"(
SELECT member, roleid
FROM pg_auth_members
ORDER BY member, roleid)";

// Functions that are not PostgreSQL's own, whatever their language: a
// SECURITY DEFINER function, or one that reads tables, runs with rights the
// masked session does not see.
constexpr std::string_view user_functions_sql = R"(
SELECT DISTINCT p.proname
FROM pg_proc AS p
JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1)";

// Operators that can run user code: defined outside pg_catalog, or
// implemented by a function outside pg_catalog, and implemented in SQL or a
// procedural language. Operators implemented in C or internal code (citext's
// =, <, ~~ ... from extensions) run no SQL and are not listed; listing them
// would refuse every statement that compares two values.
constexpr std::string_view user_operators_sql = R"(
SELECT DISTINCT o.oprname
FROM pg_operator AS o
JOIN pg_namespace AS opn ON opn.oid = o.oprnamespace
JOIN pg_proc AS p ON p.oid = o.oprcode
JOIN pg_namespace AS pn ON pn.oid = p.pronamespace
JOIN pg_language AS l ON l.oid = p.prolang
WHERE (opn.nspname <> 'pg_catalog' OR pn.nspname <> 'pg_catalog')
  AND l.lanname NOT IN ('internal', 'c')
ORDER BY 1)";

// Target types of casts that run user code: the cast function lives outside
// pg_catalog and is written in SQL or a procedural language. Binary-coercible
// and I/O casts (castfunc = 0) run no function and drop out of the join.
constexpr std::string_view user_casts_sql = R"(
SELECT DISTINCT t.typname
FROM pg_cast AS c
JOIN pg_proc AS p ON p.oid = c.castfunc
JOIN pg_namespace AS pn ON pn.oid = p.pronamespace
JOIN pg_language AS l ON l.oid = p.prolang
JOIN pg_type AS t ON t.oid = c.casttarget
WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema')
  AND l.lanname NOT IN ('internal', 'c')
ORDER BY 1)";

// --- reading the rows -------------------------------------------------------------

// One query's result, read field by field. Each getter checks the value
// (not NULL, parses whole, fits the type) and returns false on the first bad
// one; error() then names the part, row and column.
class Rows {
 public:
  Rows(std::string_view part, PgRows rows) : part_(part), rows_(std::move(rows)) {}
  size_t size() const { return rows_.size(); }

  bool text(size_t row, size_t col, std::string& out) {
    if (col >= rows_[row].size() || !rows_[row][col]) return fail(row, col);
    out = std::move(*rows_[row][col]);
    return true;
  }
  template <class Int>
  bool integer(size_t row, size_t col, Int& out) {
    if (col >= rows_[row].size() || !rows_[row][col]) return fail(row, col);
    const std::string& s = *rows_[row][col];
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (ec != std::errc{} || ptr != s.data() + s.size()) return fail(row, col);
    return true;
  }
  // "char" columns (relkind, typcategory): exactly one byte.
  bool character(size_t row, size_t col, char& out) {
    if (col >= rows_[row].size() || !rows_[row][col] || rows_[row][col]->size() != 1) return fail(row, col);
    out = (*rows_[row][col])[0];
    return true;
  }

  Error error() const {
    return Error::make(sqlstate::internal_error, "catalog: unexpected value in " + std::string(part_) +
                                                     " (row " + std::to_string(bad_row_ + 1) + ", column " +
                                                     std::to_string(bad_col_ + 1) + ")");
  }

 private:
  bool fail(size_t row, size_t col) {
    bad_row_ = row;
    bad_col_ = col;
    return false;
  }
  std::string_view part_;
  PgRows rows_;
  size_t bad_row_ = 0;
  size_t bad_col_ = 0;
};

Result<Rows> run(PgSideConnection& conn, std::string_view part, std::string_view sql) {
  auto rows = conn.query(sql);
  if (!rows) {
    Error e = std::move(rows).error();
    e.message = "reading " + std::string(part) + " from the catalog: " + e.message;
    return e;
  }
  return Rows(part, std::move(rows).value());
}

// A one-column list of names (functions, operators, cast target types).
Result<std::vector<std::string>> names(PgSideConnection& conn, std::string_view part, std::string_view sql) {
  auto rows = run(conn, part, sql);
  if (!rows) return std::move(rows).error();
  std::vector<std::string> out(rows->size());
  for (size_t i = 0; i < rows->size(); ++i) {
    if (!rows->text(i, 0, out[i])) return rows->error();
  }
  return out;
}

Status load_relations(PgSideConnection& conn, rules::Catalog& cat) {
  std::unordered_map<uint32_t, size_t> index;
  auto relations = run(conn, "relations", relations_sql);
  if (!relations) return std::move(relations).error();
  cat.relations.resize(relations->size());
  for (size_t i = 0; i < relations->size(); ++i) {
    rules::CatalogRelation& r = cat.relations[i];
    if (!relations->integer(i, 0, r.oid) || !relations->text(i, 1, r.schema) ||
        !relations->text(i, 2, r.name) || !relations->character(i, 3, r.kind)) {
      return relations->error();
    }
    index[r.oid] = i;
  }

  auto columns = run(conn, "columns", columns_sql);
  if (!columns) return std::move(columns).error();
  for (size_t i = 0; i < columns->size(); ++i) {
    uint32_t relid = 0;
    rules::CatalogColumn c;
    if (!columns->integer(i, 0, relid) || !columns->integer(i, 1, c.attnum) || !columns->text(i, 2, c.name) ||
        !columns->integer(i, 3, c.type.oid) || !columns->integer(i, 4, c.type.typmod) ||
        !columns->text(i, 5, c.type.sql_name) || !columns->character(i, 6, c.type.category)) {
      return columns->error();
    }
    if (auto it = index.find(relid); it != index.end())
      cat.relations[it->second].columns.push_back(std::move(c));
  }

  auto parents = run(conn, "inheritance and partitions", parents_sql);
  if (!parents) return std::move(parents).error();
  for (size_t i = 0; i < parents->size(); ++i) {
    uint32_t child = 0;
    uint32_t parent = 0;
    if (!parents->integer(i, 0, child) || !parents->integer(i, 1, parent)) return parents->error();
    if (auto it = index.find(child); it != index.end()) cat.relations[it->second].parents.push_back(parent);
  }

  auto reads = run(conn, "view dependencies", view_reads_sql);
  if (!reads) return std::move(reads).error();
  for (size_t i = 0; i < reads->size(); ++i) {
    uint32_t view = 0;
    uint32_t base = 0;
    int16_t attnum = 0;
    if (!reads->integer(i, 0, view) || !reads->integer(i, 1, base) || !reads->integer(i, 2, attnum)) {
      return reads->error();
    }
    if (auto it = index.find(view); it != index.end())
      cat.relations[it->second].reads.emplace_back(base, attnum);
  }
  return ok_status();
}

Status load_roles(PgSideConnection& conn, rules::Catalog& cat) {
  std::unordered_map<uint32_t, size_t> index;
  auto roles = run(conn, "roles", roles_sql);
  if (!roles) return std::move(roles).error();
  cat.roles.resize(roles->size());
  for (size_t i = 0; i < roles->size(); ++i) {
    if (!roles->integer(i, 0, cat.roles[i].oid) || !roles->text(i, 1, cat.roles[i].name))
      return roles->error();
    index[cat.roles[i].oid] = i;
  }
  auto members = run(conn, "role memberships", memberships_sql);
  if (!members) return std::move(members).error();
  for (size_t i = 0; i < members->size(); ++i) {
    uint32_t member = 0;
    uint32_t group = 0;
    if (!members->integer(i, 0, member) || !members->integer(i, 1, group)) return members->error();
    if (auto it = index.find(member); it != index.end()) cat.roles[it->second].member_of.push_back(group);
  }
  return ok_status();
}

Result<std::shared_ptr<rules::Catalog>> load_in_transaction(PgSideConnection& conn) {
  auto cat = std::make_shared<rules::Catalog>();
  if (auto st = load_relations(conn, *cat); !st) return std::move(st).error();
  if (auto st = load_roles(conn, *cat); !st) return std::move(st).error();
  auto functions = names(conn, "functions", user_functions_sql);
  if (!functions) return std::move(functions).error();
  auto operators = names(conn, "operators", user_operators_sql);
  if (!operators) return std::move(operators).error();
  auto casts = names(conn, "casts", user_casts_sql);
  if (!casts) return std::move(casts).error();
  cat->user_function_names = std::move(functions).value();
  cat->user_operator_names = std::move(operators).value();
  cat->user_cast_target_types = std::move(casts).value();
  cat->finalize();
  return cat;
}

}  // namespace

Result<std::shared_ptr<rules::Catalog>> load_catalog(PgSideConnection& conn) {
  // One snapshot for every part. READ ONLY: the catalog login never writes.
  if (auto r = conn.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"); !r) {
    Error e = std::move(r).error();
    e.message = "reading the catalog: " + e.message;
    return e;
  }
  // SET LOCAL: the connection's search_path is back to its own at the end.
  auto result = [&]() -> Result<std::shared_ptr<rules::Catalog>> {
    if (auto r = conn.query("SET LOCAL search_path = pg_catalog, pg_temp"); !r) return std::move(r).error();
    return load_in_transaction(conn);
  }();
  // Nothing to commit. A ROLLBACK that fails leaves the connection in an
  // unknown state (a later BEGIN would only warn and keep the old snapshot),
  // so it fails the load and the caller drops the connection.
  auto end = conn.query("ROLLBACK");
  if (!result) return result;
  if (!end) {
    Error e = std::move(end).error();
    e.message = "reading the catalog: ending the transaction: " + e.message;
    return e;
  }
  return result;
}

}  // namespace pgcloak::proxy
