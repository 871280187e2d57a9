// What an audit statement record says about one statement, without its
// literals: libpg_query's fingerprint, the text normalised to placeholders,
// a pgAudit-style class, the command tag, the relations touched and the
// protected columns referenced (docs/audit.md, "Statement analysis").
//
// The redaction is a guarantee, not a best effort: the normalised text is
// scanned again after libpg_query's normaliser, every constant or comment
// that survived is replaced, and a text that cannot be parsed or scanned
// yields no normalised text at all. Nothing here ever returns a substring of
// a literal or comment of the input.
//
// Pure computation on the audit writer thread; no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rules/protection.h"

namespace pgcloak::rules {

struct ParsedText;  // statement_audit.cc

// pgAudit's statement classes (pgAudit README, "pgaudit.log").
enum class AuditClass { read, write, function, role, ddl, misc };
std::string_view audit_class_name(AuditClass c);  // "READ", "WRITE", ...

struct CopyAudit {
  bool from = false;   // COPY ... FROM: rows go into the table
  bool query = false;  // COPY (query) TO
  // Where the rows go or come from: "stdin", "stdout", "file" or "program".
  // The file name or command is a literal and is never reported.
  std::string endpoint;
};

struct StatementAudit {
  // The text could not be parsed (or normalised): normalized and
  // fingerprint are empty and nothing below is known.
  bool parse_error = false;
  // No statement at all (an empty Query): PostgreSQL answers
  // EmptyQueryResponse.
  bool empty = false;
  std::string fingerprint;  // 16 hex digits
  std::string normalized;   // literals as $n, comments removed, one line
  AuditClass audit_class = AuditClass::misc;
  std::string command;  // PostgreSQL's command tag: "SELECT", "CREATE TABLE", ...
  // "schema.name" when the catalog resolves the name, as written otherwise;
  // in order of first appearance, without duplicates.
  std::vector<std::string> relations;
  // "schema.table.column", sorted: the protected columns the statement
  // reads, writes or names, including the configured columns a protected
  // partition or view column comes from.
  std::vector<std::string> protected_columns;
  // The same reads as (relation oid, column index in the relation) of the
  // relation the statement names, for per-category counts, and the
  // relations ("schema.name") they belong to, sorted by oid.
  std::vector<std::pair<uint32_t, uint32_t>> protected_refs;
  std::vector<std::string> protected_relations;
  // The protected relations (a subset of protected_relations, same order)
  // whose rows the statement returns without anything restricting them: the
  // query reading them has no WHERE and no LIMIT, no JOIN condition applies
  // on their side, and no enclosing query filters them either (a full scan).
  // COPY of a whole table counts; subqueries inside WHERE and rows that go
  // into a table (INSERT ... SELECT, CREATE TABLE AS) do not, since they
  // return nothing to the client. For bulk-export detection.
  std::vector<std::string> unfiltered_relations;
  // The protected columns referenced in WHERE, JOIN ... ON, HAVING (and
  // MERGE's ON), subqueries there included, as in protected_columns and as
  // (relation oid, column index): what can test a value the session may
  // only see masked. A * there (EXISTS (SELECT * ...)) tests nothing and is
  // not counted. For probing detection.
  std::vector<std::string> predicate_columns;
  std::vector<std::pair<uint32_t, uint32_t>> predicate_refs;
  std::optional<CopyAudit> copy;
  // Cursors. A FETCH returns rows of the query its DECLARE named, and
  // names no relation itself: exfiltration detection charges its rows to the
  // DECLARE's reads (docs/detection.md, "Cursors"). MOVE returns no rows and
  // is not a fetch. close with an empty name: CLOSE ALL or DISCARD ALL.
  enum class CursorOp : uint8_t { none, declare, fetch, close };
  CursorOp cursor_op = CursorOp::none;
  std::string cursor_name;  // as PostgreSQL resolves it (unquoted names folded)
  // The statement's bytes within the analysed text, for callers that seal
  // the original. length npos = to the end of the text (the last or only
  // statement, or a text that could not be split).
  size_t offset = 0;
  size_t length = std::string_view::npos;
  // How many statements the whole text holds (0 when it does not parse):
  // callers walking a multi-statement Query know when they are past the last.
  unsigned statements_in_text = 0;

  // Rough heap footprint, for cache accounting.
  size_t bytes() const;
};

// Analyses statement `index` (0-based) of sql, one Query or Parse message
// that may hold several statements. protection null = no masking configured:
// relations stay as written and no column is protected. Never throws.
StatementAudit audit_statement(std::string_view sql, unsigned index, const Protection* protection);

// audit_statement() with the results of recent statements kept, keyed by
// (text, index): prepared statements and ORM or pgbench loops repeat the same
// texts, and a hit costs a hash lookup instead of four libpg_query passes.
// Bounded in bytes, least recently used out first. A different protection
// (a reload or catalog refresh) empties it, so results never outlive the
// catalog they were computed with. Thread-compatible: one per writer
// thread, or external locking.
class StatementAuditCache {
 public:
  explicit StatementAuditCache(size_t max_bytes = size_t{16} << 20) : max_bytes_(max_bytes) {}

  std::shared_ptr<const StatementAudit> get(std::string_view sql, unsigned index,
                                            const std::shared_ptr<const Protection>& protection);

  size_t bytes() const { return bytes_; }
  size_t entries() const { return map_.size(); }
  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }

 private:
  struct Entry {
    std::string key;  // index, '\0', text
    std::shared_ptr<const StatementAudit> audit;
    size_t bytes = 0;
  };
  void clear();
  void evict();

  size_t max_bytes_;
  size_t bytes_ = 0;
  uint64_t hits_ = 0;
  uint64_t misses_ = 0;
  std::shared_ptr<const Protection> protection_;
  std::list<Entry> lru_;  // front = most recent
  std::unordered_map<std::string_view, std::list<Entry>::iterator> map_;
  // The parse of the last multi-statement text: its records arrive one
  // after another, and each needs the whole text parsed to find its part.
  std::string last_text_;
  std::shared_ptr<const ParsedText> last_parsed_;
};

}  // namespace pgcloak::rules
