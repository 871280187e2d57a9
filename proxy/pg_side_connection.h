// pgcloak's own connections to PostgreSQL (libpq), as opposed to the client
// sessions it relays: SCRAM verifier lookups (auth.auth_query) and, later,
// the masking catalog. They log in as catalog.user and reach PostgreSQL the
// way the sessions do (upstream.host/port/sslmode/sslrootcert).
//
// Every call here blocks (libpq's synchronous API), so from an io thread
// call it through run_blocking() (run_blocking.h), never directly.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "protocol/result.h"
#include "rules/config.h"

struct pg_conn;  // libpq's PGconn

namespace pgcloak::proxy {

struct PgSideParams {
  rules::UpstreamConfig upstream;  // host or socket dir, port, sslmode, sslrootcert, connect_timeout
  std::string user;
  std::string password;
  std::string dbname;
  std::string application_name = "pgcloak";
  rules::Duration statement_timeout{0};  // 0 = PostgreSQL's setting

  // The catalog login of `config` (catalog.user/password) for `dbname`.
  static PgSideParams catalog(const rules::Config& config, std::string dbname);
  // "host:port database "x" user "y"", for log lines; never the password.
  std::string describe() const;
};

using PgValue = std::optional<std::string>;  // nullopt = SQL NULL
using PgRow = std::vector<PgValue>;
using PgRows = std::vector<PgRow>;

// True for errors that mean the connection itself failed (SQLSTATE class 08,
// or an administrator shutting the server down) rather than the statement.
bool is_connection_error(const Error& error);

// One libpq connection. Errors: 08006 with libpq's message when connecting
// or the connection breaks; PostgreSQL's SQLSTATE, message, detail and hint
// when a statement fails.
class PgSideConnection {
 public:
  static Result<PgSideConnection> open(const PgSideParams& params);

  // PQexecParams with text parameters and text results; any statement that
  // returns rows (or none). Values are copied out, the PGresult is freed.
  Result<PgRows> query(std::string_view sql, const std::vector<PgValue>& params = {});

  // False once libpq has seen the connection break.
  bool healthy() const;

 private:
  struct Closer {
    void operator()(pg_conn* conn) const;
  };
  explicit PgSideConnection(pg_conn* conn) : conn_(conn) {}
  std::unique_ptr<pg_conn, Closer> conn_;
};

// One reusable connection per database, opened on first use and reopened
// when it broke. Thread-safe; queries to one database run one at a time.
class PgSidePool {
 public:
  // `base` without a dbname: each query names its database.
  explicit PgSidePool(PgSideParams base) : base_(std::move(base)) {}

  // Opens or reuses the connection for `dbname` and runs the query. A reused
  // connection that turns out to be broken is reopened and the query retried
  // once (PostgreSQL may have restarted since it was last used).
  Result<PgRows> query(const std::string& dbname, std::string_view sql,
                       const std::vector<PgValue>& params = {});

 private:
  struct Slot {
    std::mutex mu;
    std::optional<PgSideConnection> conn;
  };
  Slot& slot(const std::string& dbname);

  PgSideParams base_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Slot>> slots_;
};

}  // namespace pgcloak::proxy
