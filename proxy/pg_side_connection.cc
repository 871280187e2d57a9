#include "proxy/pg_side_connection.h"

#include <libpq-fe.h>

#include <algorithm>
#include <set>

namespace pgcloak::proxy {

namespace {

// Error::sqlstate is a string_view into static storage; codes that come from
// PostgreSQL are kept here for the life of the process (a handful at most).
std::string_view intern_sqlstate(const char* code) {
  if (code == nullptr) return sqlstate::connection_failure;
  std::string_view v(code);
  if (v.size() != 5 || !std::all_of(v.begin(), v.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z');
      })) {
    return sqlstate::internal_error;
  }
  static std::mutex mu;
  static std::set<std::string, std::less<>> codes;
  std::lock_guard lock(mu);
  return *codes.emplace(v).first;
}

// libpq's messages end in a newline and may span several lines.
std::string one_line(const char* text) {
  std::string s = text != nullptr ? text : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  std::string out;
  for (char c : s) {
    if (c == '\n') {
      out += "; ";
    } else {
      out += c;
    }
  }
  return out.empty() ? "unknown error" : out;
}

std::string_view libpq_sslmode(const rules::UpstreamConfig& u) {
  // Unix sockets never use TLS (libpq does not try it there either).
  if (u.is_unix_socket()) return "disable";
  return rules::to_string(u.sslmode);  // disable, prefer, require, verify-full: libpq's spelling
}

}  // namespace

PgSideParams PgSideParams::catalog(const rules::Config& config, std::string dbname) {
  PgSideParams p;
  p.upstream = config.upstream;
  p.user = config.catalog.user;
  p.password = config.catalog.password;
  p.dbname = std::move(dbname);
  return p;
}

std::string PgSideParams::describe() const {
  return upstream.describe() + " database \"" + dbname + "\" user \"" + user + "\"";
}

bool is_connection_error(const Error& error) {
  return error.sqlstate.substr(0, 2) == "08" || error.sqlstate == sqlstate::admin_shutdown ||
         error.sqlstate == "57P02" || error.sqlstate == "57P03";
}

void PgSideConnection::Closer::operator()(pg_conn* conn) const {
  PQfinish(conn);
}

Result<PgSideConnection> PgSideConnection::open(const PgSideParams& params) {
  // libpq counts connect_timeout in whole seconds (and treats 1 as 2).
  const auto ms = std::max<int64_t>(params.upstream.connect_timeout.count(), 1);
  const std::string timeout = std::to_string(std::max<int64_t>((ms + 999) / 1000, 2));
  const std::string port = std::to_string(params.upstream.port);
  const std::string options = params.statement_timeout.count() > 0
                                  ? "-c statement_timeout=" + std::to_string(params.statement_timeout.count())
                                  : std::string();
  const std::string sslmode(libpq_sslmode(params.upstream));
  // Everything is given explicitly, so PG* environment variables and a
  // pgpass file cannot change where pgcloak connects or as whom.
  std::vector<const char*> keys{"host",           "port",
                                "dbname",         "user",
                                "password",       "connect_timeout",
                                "sslmode",        "application_name",
                                "passfile",       "gssencmode",
                                "client_encoding"};
  std::vector<const char*> values{params.upstream.host.c_str(),
                                  port.c_str(),
                                  params.dbname.c_str(),
                                  params.user.c_str(),
                                  params.password.c_str(),
                                  timeout.c_str(),
                                  sslmode.c_str(),
                                  params.application_name.c_str(),
                                  "/dev/null",
                                  "disable",
                                  "UTF8"};
  if (!params.upstream.sslrootcert.empty()) {
    keys.push_back("sslrootcert");
    values.push_back(params.upstream.sslrootcert.c_str());
  }
  if (!options.empty()) {
    keys.push_back("options");
    values.push_back(options.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);

  PgSideConnection conn(PQconnectdbParams(keys.data(), values.data(), 0));
  if (!conn.conn_) {
    return Error::make(sqlstate::connection_failure, "cannot connect to PostgreSQL: out of memory");
  }
  if (PQstatus(conn.conn_.get()) != CONNECTION_OK) {
    return Error::make(sqlstate::connection_failure, "cannot connect to PostgreSQL at " + params.describe() +
                                                         ": " + one_line(PQerrorMessage(conn.conn_.get())));
  }
  return conn;
}

bool PgSideConnection::healthy() const {
  return conn_ && PQstatus(conn_.get()) == CONNECTION_OK;
}

Result<PgRows> PgSideConnection::query(std::string_view sql, const std::vector<PgValue>& params) {
  if (!healthy()) {
    return Error::make(sqlstate::connection_failure, "the connection to PostgreSQL is broken");
  }
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  const std::string text(sql);
  struct ResultFree {
    void operator()(PGresult* r) const { PQclear(r); }
  };
  std::unique_ptr<PGresult, ResultFree> res(PQexecParams(conn_.get(), text.c_str(),
                                                         static_cast<int>(values.size()), nullptr,
                                                         values.data(), nullptr, nullptr, 0));
  const ExecStatusType status = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    const char* code = res ? PQresultErrorField(res.get(), PG_DIAG_SQLSTATE) : nullptr;
    const char* primary = res ? PQresultErrorField(res.get(), PG_DIAG_MESSAGE_PRIMARY) : nullptr;
    Error e;
    e.sqlstate = intern_sqlstate(code);
    e.severity = Severity::error;
    e.message = primary != nullptr ? std::string(primary) : one_line(PQerrorMessage(conn_.get()));
    if (const char* d = res ? PQresultErrorField(res.get(), PG_DIAG_MESSAGE_DETAIL) : nullptr) e.detail = d;
    if (const char* h = res ? PQresultErrorField(res.get(), PG_DIAG_MESSAGE_HINT) : nullptr) e.hint = h;
    if (!healthy()) e.sqlstate = sqlstate::connection_failure;
    return e;
  }
  PgRows rows;
  const int n = PQntuples(res.get());
  const int cols = PQnfields(res.get());
  rows.reserve(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    PgRow row;
    row.reserve(static_cast<size_t>(cols));
    for (int c = 0; c < cols; ++c) {
      if (PQgetisnull(res.get(), r, c) != 0) {
        row.emplace_back(std::nullopt);
      } else {
        row.emplace_back(
            std::string(PQgetvalue(res.get(), r, c), static_cast<size_t>(PQgetlength(res.get(), r, c))));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

PgSidePool::Slot& PgSidePool::slot(const std::string& dbname) {
  std::lock_guard lock(mu_);
  auto& s = slots_[dbname];
  if (!s) s = std::make_unique<Slot>();
  return *s;
}

Result<PgRows> PgSidePool::query(const std::string& dbname, std::string_view sql,
                                 const std::vector<PgValue>& params) {
  Slot& s = slot(dbname);
  std::lock_guard lock(s.mu);
  for (int attempt = 0;; ++attempt) {
    const bool reused = s.conn.has_value() && s.conn->healthy();
    if (!reused) {
      s.conn.reset();
      PgSideParams p = base_;
      p.dbname = dbname;
      auto opened = PgSideConnection::open(p);
      if (!opened) return std::move(opened).error();
      s.conn.emplace(std::move(opened).value());
    }
    auto rows = s.conn->query(sql, params);
    if (rows || !is_connection_error(rows.error())) return rows;
    s.conn.reset();
    if (!reused || attempt > 0) return rows;
  }
}

}  // namespace pgcloak::proxy
