#include "proxy/server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "protocol/backend.h"
#include "proxy/alert_hub.h"
#include "proxy/alert_syslog.h"
#include "proxy/alert_webhook.h"
#include "proxy/audit_analyzer.h"
#include "proxy/audit_chain.h"
#include "proxy/audit_seal.h"
#include "proxy/audit_syslog.h"
#include "proxy/console_assets.h"
#include "proxy/http_endpoint.h"
#include "proxy/log.h"
#include "proxy/run_blocking.h"
#include "proxy/session.h"
#include "proxy/stream.h"
#include "proxy/tls_context.h"

namespace pgcloak::proxy {

void SessionRegistry::add(uint64_t id, const std::shared_ptr<Session>& s) {
  std::lock_guard lock(mu_);
  sessions_[id] = s;
}

void SessionRegistry::remove(uint64_t id) {
  std::lock_guard lock(mu_);
  sessions_.erase(id);
}

size_t SessionRegistry::size() const {
  std::lock_guard lock(mu_);
  return sessions_.size();
}

std::vector<std::shared_ptr<Session>> SessionRegistry::snapshot() const {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Session>> out;
  out.reserve(sessions_.size());
  for (const auto& [id, w] : sessions_) {
    if (auto s = w.lock()) out.push_back(std::move(s));
  }
  return out;
}

void UpstreamHealth::note_ok() {
  std::lock_guard lock(mu_);
  problem_.clear();
}

void UpstreamHealth::note_failure(std::string why) {
  std::lock_guard lock(mu_);
  problem_ = std::move(why);
}

std::string UpstreamHealth::problem() const {
  std::lock_guard lock(mu_);
  return problem_;
}

Server::Server(rules::Config config, std::string config_path) : config_path_(std::move(config_path)) {
  state_.config = std::make_shared<const rules::Config>(std::move(config));
}

void Server::note_reload(std::string_view result, const std::string& reason) {
  if (state_.metrics) {
    state_.metrics->on_config_reload(result == "applied" ? ReloadResult::applied : ReloadResult::rejected);
  }
  if (!state_.audit) return;
  AuditEvent ev;
  ev.kind = "config_reload";
  ev.detail = {{"result", result}, {"path", config_path_}};
  if (!reason.empty()) ev.detail["reason"] = reason;
  state_.audit->submit(std::move(ev));
}

void Server::reload_config() {
  if (config_path_.empty()) return;
  // An invalid file changes nothing: the running policy stays, and the log
  // says why (issue: "an invalid file keeps the old policy and reports why").
  auto load = rules::load_config_file(config_path_);
  if (!load.ok()) {
    log::error("SIGHUP: " + config_path_ + " is invalid; keeping the running configuration:\n" +
               load.format(config_path_));
    note_reload("rejected", load.format(config_path_));
    return;
  }
  // Masking: rebuilt only when its section changed, because a rebuild
  // starts every session's decision cache again.
  // (state_.config stays what the process started with: sessions read it
  // without a lock. What is in force is asked of the policy store and the
  // detector.)
  const bool masking_changed =
      state_.policies ? !(load.config.masking == *state_.policies->masking()) : load.config.masking.enabled();
  if (masking_changed) {
    if (!state_.policies) {
      log::warn("SIGHUP: masking is not set up in this process; restart pgcloak to apply changes");
      note_reload("rejected", "masking is not set up in this process");
      return;
    }
    if (auto st = state_.policies->reload_masking(
            std::make_shared<const rules::MaskingConfig>(load.config.masking));
        !st) {
      log::error("SIGHUP: " + st.error().message + "; keeping the running configuration");
      note_reload("rejected", st.error().message);
      return;
    }
  }
  // Detection rules (thresholds, scopes, actions, `enabled`) apply from each
  // session's next statement; learned state is kept per rule name, detector
  // and window (Detector::reload). Where alerts go and where state is kept
  // are opened once, at start.
  std::string detection_note;
  const auto& was = state_.config->detection;  // sinks and state file: as opened at start
  const auto& now = load.config.detection;
  if (state_.detector) {
    state_.detector->reload(std::make_shared<const rules::DetectionConfig>(now));
    detection_note = now.enabled ? "; detection: " + std::to_string(now.rules.size()) + " rules"
                                 : "; detection switched off (enabled: false)";
    if (now.webhook.url != was.webhook.url || now.webhook.slack != was.webhook.slack ||
        now.webhook.ca_file != was.webhook.ca_file || now.webhook.token != was.webhook.token ||
        now.syslog.host != was.syslog.host || now.syslog.port != was.syslog.port ||
        now.state_file != was.state_file || now.save_interval != was.save_interval) {
      log::warn(
          "SIGHUP: detection.webhook, detection.syslog, detection.state_file and detection.save_interval "
          "take effect after a restart; the running process keeps its alert sinks and state file");
    }
  } else if (now.enabled) {
    log::warn("SIGHUP: detection was off when pgcloak started; restart pgcloak to turn it on");
  }
  note_reload("applied", "");
  log::info("SIGHUP: reloaded " + config_path_ + ": " +
            (masking_changed ? "masking rules apply from each session's next statement"
                             : "masking rules unchanged") +
            detection_note + "; other sections take effect after a restart");
}

Server::~Server() {
  stop_http();
}

Status Server::start() {
  const auto& cfg = *state_.config;
  if (cfg.tls.enabled()) {
    auto ctx = make_client_facing_context(cfg.tls);
    if (!ctx) return std::move(ctx).error();
    state_.client_tls = std::move(ctx).value();
  }
  if (cfg.upstream.sslmode != rules::SslMode::disable) {
    auto ctx = make_upstream_context(cfg.upstream);
    if (!ctx) return std::move(ctx).error();
    state_.upstream_tls = std::move(ctx).value();
  }

  state_.blocking = std::make_unique<asio::thread_pool>(blocking_pool_threads);
  state_.policies = std::make_unique<PolicyStore>(state_.config);
  if (state_.policies->enabled()) {
    log::info("masking " + std::to_string(cfg.masking.protected_columns.size()) + " protected columns with " +
              std::to_string(cfg.masking.policies.size()) + " policies; catalog read from database \"" +
              cfg.catalog.dbname + "\" every " + std::to_string(cfg.catalog.refresh_interval.count() / 1000) +
              "s");
  }
  if (cfg.audit.enabled) {
    if (auto st = open_audit(); !st) return st;
  }
  if (cfg.metrics.enabled) {
    if (auto st = open_metrics(); !st) return st;
  }
  if (cfg.detection.enabled) {
    if (auto st = open_detection(); !st) return st;
  }
  if (cfg.auth.mode == rules::AuthMode::scram) {
    PgSideParams side = PgSideParams::catalog(cfg, "");
    // A lookup that outlives the client's handshake is of no use to anyone.
    side.statement_timeout = cfg.timeouts.handshake;
    state_.catalog = std::make_unique<PgSidePool>(std::move(side));
    state_.auth_lookup = std::make_unique<AuthLookup>(cfg, *state_.catalog);
  }

  unsigned threads = cfg.threads != 0 ? cfg.threads : std::max(1U, std::thread::hardware_concurrency());
  // Relay loops: by default half the cores. A relay thread that has more
  // sessions batches more events per wake-up; measured on 2 cores shared
  // with PostgreSQL and pgbench, one loop used 40% less CPU and half the
  // context switches of two, at higher throughput. An explicit `threads`
  // sets both.
  const unsigned relay_loops =
      cfg.threads != 0 ? cfg.threads : std::max(1U, std::thread::hardware_concurrency() / 2);
  if (auto st = state_.relays.start(relay_loops, cfg.io_uring == rules::Config::IoUring::auto_); !st)
    return st;
  for (unsigned i = 0; i < threads; ++i) {
    workers_.push_back(std::make_unique<asio::io_context>(1));
    guards_.push_back(asio::make_work_guard(*workers_.back()));
  }
  auto& main_ctx = *workers_.front();
  if (cfg.upstream.pool.enabled) {
    state_.upstream_pool = std::make_unique<ServerPool>(cfg.upstream.pool, main_ctx.get_executor());
    if (state_.metrics) {
      state_.metrics->add_scrape_hook([pool = state_.upstream_pool.get(), m = state_.metrics.get()] {
        m->set_pool_stats(pool->stats());
      });
    }
    log::info("upstream pool: up to " + std::to_string(cfg.upstream.pool.max_idle) +
              " idle PostgreSQL connections, idle_timeout " +
              std::to_string(cfg.upstream.pool.idle_timeout.count() / 1000) + "s, max_lifetime " +
              std::to_string(cfg.upstream.pool.max_lifetime.count() / 1000) + "s");
  }

  for (const auto& l : cfg.listen) {
    error_code ec;
    auto addr = asio::ip::make_address(l.host, ec);
    tcp::endpoint ep;
    if (ec) {
      tcp::resolver resolver(main_ctx);
      auto results = resolver.resolve(l.host, std::to_string(l.port), ec);
      if (ec || results.empty()) {
        return Error::make(sqlstate::config_file_error, "cannot resolve listen address \"" + l.host + "\"");
      }
      ep = *results.begin();
    } else {
      ep = tcp::endpoint(addr, l.port);
    }
    auto acc = std::make_unique<tcp::acceptor>(main_ctx);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec && ep.address().is_v6()) acc->set_option(asio::ip::v6_only(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return Error::make(sqlstate::config_file_error,
                         "cannot listen on " + l.host + ":" + std::to_string(l.port) + ": " + ec.message());
    }
    log::info("listening on " + l.host + ":" + std::to_string(l.port));
    tcp_acceptors_.push_back(std::move(acc));
  }

  if (!cfg.unix_socket_dir.empty()) {
    unix_socket_path_ = cfg.unix_socket_dir + "/.s.PGSQL." + std::to_string(cfg.listen.front().port);
    // A socket file left by a crashed pgcloak would make bind fail; remove
    // it, but never remove anything that is not a socket.
    struct stat st {};
    if (::lstat(unix_socket_path_.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return Error::make(sqlstate::config_file_error, unix_socket_path_ + " exists and is not a socket");
      }
      ::unlink(unix_socket_path_.c_str());
    }
    error_code ec;
    unix_acceptor_ = std::make_unique<unix_stream::acceptor>(main_ctx);
    unix_acceptor_->open(unix_stream(), ec);
    if (!ec) unix_acceptor_->bind(unix_stream::endpoint(unix_socket_path_), ec);
    if (!ec) unix_acceptor_->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return Error::make(sqlstate::config_file_error,
                         "cannot listen on Unix socket " + unix_socket_path_ + ": " + ec.message());
    }
    // Same default as PostgreSQL's unix_socket_permissions (0777): access is
    // decided by authentication, not by the file mode.
    ::chmod(unix_socket_path_.c_str(), 0777);
    log::info("listening on Unix socket " + unix_socket_path_);
  }

  signals_ = std::make_unique<asio::signal_set>(main_ctx, SIGTERM, SIGINT, SIGHUP);
  // Whether the relay batches its socket calls (io_uring) and, if it was
  // asked to but cannot, why: a container's seccomp profile often refuses
  // io_uring, and the relay then makes one system call per read and write.
  const std::string relay_io =
      state_.relays.batching() ? "socket calls batched with io_uring"
                               : (cfg.io_uring == rules::Config::IoUring::off
                                      ? "io_uring off"
                                      : "one system call per read and write; " + state_.relays.batch_error());
  log::info("upstream PostgreSQL at " + cfg.upstream.describe() + " (sslmode " +
            std::string(rules::to_string(cfg.upstream.sslmode)) + "); " + std::to_string(threads) +
            " io threads, " + std::to_string(relay_loops) + " relay loops (" + relay_io + "); client TLS " +
            (cfg.tls.enabled() ? (cfg.tls.require ? "required" : "optional") : "off") + "; auth " +
            (cfg.auth.mode == rules::AuthMode::scram
                 ? "scram (verifiers via the catalog login \"" + cfg.catalog.user + "\")"
                 : std::string("passthrough")));
  return ok_status();
}

Status Server::open_audit() {
  const auto& cfg = state_.config->audit;
  std::shared_ptr<const ParameterSealer> sealer;
  if (cfg.log_parameters) {
    auto s = ParameterSealer::from_key_file(cfg.parameter_key_file);
    if (!s) return std::move(s).error();
    sealer = std::move(s).value();
  }
  // Statement records name the protected columns of the protection in
  // force when the writer analyses them (reloads included).
  PolicyStore* store = state_.policies.get();
  auto analyzer = make_audit_analyzer(
      [store]() -> std::shared_ptr<const rules::Protection> {
        return store != nullptr && store->enabled() ? store->protection() : nullptr;
      },
      std::move(sealer));
  std::vector<std::unique_ptr<AuditSink>> extra;
  if (cfg.syslog.enabled()) {
    auto sink = make_syslog_sink(cfg.syslog);
    if (!sink) return std::move(sink).error();
    extra.push_back(std::move(sink).value());
  }
  auto log = AuditLog::open(cfg, std::move(analyzer), std::move(extra));
  if (!log) return std::move(log).error();
  state_.audit = std::move(log).value();
  log::info(
      std::string("audit trail on: durability ") +
      (cfg.durability == rules::AuditDurability::strict ? "strict" : "batched") + ", on_failure " +
      (cfg.on_failure == rules::AuditOnFailure::fail_closed ? "fail_closed" : "block") +
      (cfg.file.path.empty() ? std::string() : ", file " + cfg.file.path) +
      (cfg.syslog.enabled() ? ", syslog " + cfg.syslog.host + ":" + std::to_string(cfg.syslog.port) : "") +
      (cfg.stdout_sink ? ", stdout" : "") + (cfg.log_parameters ? ", parameters sealed" : ""));
  return ok_status();
}

Status Server::open_metrics() {
  const auto& m = state_.config->metrics;
  state_.metrics = std::make_unique<Metrics>(
      MetricsOptions{PGCLOAK_VERSION, m.max_users, m.max_databases, m.max_relations});
  state_.console = std::make_unique<ConsoleState>();
  if (state_.audit) {
    // Queue depth, write latency and failures are read when scraped:
    // cheaper than pushing them on every record.
    AuditLog* log = state_.audit.get();
    Metrics* metrics = state_.metrics.get();
    const uint64_t limit = state_.config->audit.queue_limit;
    metrics->add_scrape_hook([log, metrics, limit] { metrics->set_audit_stats(log->stats(), limit); });
  }
  HttpEndpointOptions o;
  o.host = m.listen.host;
  o.port = m.listen.port;
  o.token = m.token;
  if (m.tls_enabled()) {
    auto tls = make_http_tls_context(m.tls_cert_file, m.tls_key_file);
    if (!tls) return std::move(tls).error();
    o.tls = std::move(tls).value();
  }
  http_ctx_ = std::make_unique<asio::io_context>(1);
  http_ = std::make_unique<HttpEndpoint>(*http_ctx_, std::move(o));
  add_http_routes();
  if (auto st = http_->start(); !st) return st;
  const auto ep = http_->local_endpoint();
  log::info(std::string("metrics and console on ") + (m.tls_enabled() ? "https" : "http") + "://" +
            (ep.address().is_v6() ? "[" + ep.address().to_string() + "]" : ep.address().to_string()) + ":" +
            std::to_string(ep.port()) + " (/metrics, /healthz, /readyz, /console)" +
            (m.token.empty() ? "" : "; bearer token required"));
  return ok_status();
}

Status Server::open_detection() {
  const auto& d = state_.config->detection;
  if (!state_.policies || !state_.policies->enabled()) {
    log::warn(
        "detection: no protected columns are configured (masking.protected_columns), so no rule can "
        "see protected data; the detection rules are loaded but idle");
  }
  state_.detector = std::make_unique<rules::Detector>(
      std::make_shared<const rules::DetectionConfig>(state_.config->detection));
  if (!d.state_file.empty() && std::filesystem::exists(d.state_file)) {
    std::ifstream in(d.state_file);
    nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    Status st = j.is_discarded() ? Status(Error::make(sqlstate::config_file_error, "not valid JSON"))
                                 : state_.detector->load_state(j);
    if (!st) {
      // Learned baselines are worth keeping, but not worth refusing to
      // start over: detection starts learning again, and says so.
      log::warn("detection: ignoring the state in " + d.state_file + " (" + st.error().message +
                "); baselines and first-access history start empty");
    } else {
      log::info("detection: state loaded from " + d.state_file);
    }
  }
  if (d.webhook.enabled()) {
    WebhookOptions o;
    o.url = d.webhook.url;
    o.slack = d.webhook.slack;
    o.ca_file = d.webhook.ca_file;
    o.bearer_token = d.webhook.token;
    o.timeout = d.webhook.timeout;
    o.queue_limit = d.webhook.queue_limit;
    auto w = AlertWebhook::start(std::move(o));
    if (!w) return std::move(w).error();
    state_.webhook = std::move(w).value();
  }
  if (d.syslog.enabled()) {
    auto s = AlertSyslog::open(d.syslog, d.syslog_queue_limit);
    if (!s) return std::move(s).error();
    state_.alert_syslog = std::move(s).value();
  }
  state_.alerts =
      std::make_unique<AlertHub>(AlertHubSinks{state_.metrics.get(), state_.console.get(), state_.audit.get(),
                                               state_.webhook.get(), state_.alert_syslog.get()});
  log::info("detection: " + std::to_string(d.rules.size()) + " rules" +
            (state_.webhook ? ", alerts to the webhook " + state_.webhook->describe() : std::string()) +
            (state_.alert_syslog ? ", syslog " + state_.alert_syslog->describe() : std::string()) +
            (state_.audit ? ", the audit trail" : std::string()) + " and the log" +
            (d.state_file.empty() ? std::string("; state in memory only") : "; state in " + d.state_file));
  return ok_status();
}

// Atomically: a crash while writing leaves the previous state.
void Server::save_detection_state() {
  const auto& path = state_.config->detection.state_file;
  if (!state_.detector || path.empty()) return;
  // The periodic save (blocking pool) and a lifted block (HTTP thread)
  // share the temporary file.
  std::lock_guard lock(detection_save_mu_);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << state_.detector->save_state(std::chrono::system_clock::now()).dump();
    out.flush();
    if (!out) {
      log::warn("detection: cannot write " + tmp + "; the state is saved at the next interval");
      return;
    }
  }
  ::chmod(tmp.c_str(), 0600);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    log::warn("detection: cannot replace " + path + ": " + std::strerror(errno));
  }
}

awaitable<void> Server::save_detection_state_periodically() {
  asio::steady_timer t(co_await asio::this_coro::executor);
  for (;;) {
    t.expires_after(state_.config->detection.save_interval);
    if (auto [ec] = co_await t.async_wait(use_nothrow); ec) co_return;
    if (state_.draining.load()) co_return;
    // Serialising walks every user's state under its shard lock: off the io
    // threads, on the blocking pool.
    co_await run_blocking(*state_.blocking, [this] {
      save_detection_state();
      return 0;
    });
  }
}

// Why pgcloak should not get new connections right now, or "" when it
// should (docs/metrics.md, "/readyz").
std::string Server::not_ready_reason() const {
  if (state_.draining.load()) return "shutting down";
  if (std::string up = state_.upstream_health.problem(); !up.empty()) return "upstream unreachable: " + up;
  if (state_.audit) {
    const AuditStats st = state_.audit->stats();
    if (!st.healthy || !state_.audit->accepting()) {
      return "the audit sink is failing; statements are " +
             std::string(state_.config->audit.on_failure == rules::AuditOnFailure::fail_closed ? "refused"
                                                                                               : "held");
    }
  }
  return {};
}

void Server::add_http_routes() {
  Metrics* metrics = state_.metrics.get();
  http_->add_route("/metrics", [metrics](const HttpRequest&) {
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = metrics->serialize();
    return r;
  });
  http_->add_route("/healthz", [](const HttpRequest&) {
    return HttpResponse{200, "text/plain; charset=utf-8", "ok\n", {}};
  });
  http_->add_route("/readyz", [this](const HttpRequest&) {
    const std::string why = not_ready_reason();
    if (why.empty()) return HttpResponse{200, "text/plain; charset=utf-8", "ready\n", {}};
    return HttpResponse{503, "text/plain; charset=utf-8", "not ready: " + why + "\n", {}};
  });
  // The console: static assets compiled in (no CDN), under a policy that
  // allows nothing but themselves and same-origin API calls, so that even
  // a user name crafted as markup cannot run script in the page.
  for (const ConsoleAsset& a : console_assets()) {
    http_->add_route(std::string(a.path), [a](const HttpRequest&) {
      HttpResponse r;
      r.content_type = std::string(a.content_type);
      r.body = std::string(a.body);
      r.headers = {
          {"Content-Security-Policy",
           "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' "
           "data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"},
          {"X-Frame-Options", "DENY"},
          {"Referrer-Policy", "no-referrer"}};
      return r;
    });
  }
  // Blocks set by the detection's block action: listed, and lifted by an
  // administrator (POST with the bearer token; see HttpEndpoint::add_action).
  http_->add_route("/api/blocks", [this](const HttpRequest&) {
    nlohmann::json list = nlohmann::json::array();
    if (state_.detector) {
      for (const auto& [user, until] : state_.detector->blocks(std::chrono::system_clock::now())) {
        list.push_back({{"user", user}, {"until", format_audit_ts(until)}});
      }
    }
    HttpResponse r;
    r.content_type = "application/json";
    r.body = nlohmann::json{{"blocks", std::move(list)}}.dump(-1, ' ', false,
                                                              nlohmann::json::error_handler_t::replace);
    return r;
  });
  http_->add_action("/api/blocks/lift", [this](const HttpRequest& req) {
    std::string user;
    // ?user=<name>, percent-encoded.
    for (std::string_view q = req.query; !q.empty();) {
      const std::string_view part = q.substr(0, q.find('&'));
      q.remove_prefix(std::min(q.size(), part.size() + 1));
      if (part.rfind("user=", 0) != 0) continue;
      const std::string_view v = part.substr(5);
      for (size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '%' && i + 2 < v.size() && std::isxdigit(static_cast<unsigned char>(v[i + 1])) != 0 &&
            std::isxdigit(static_cast<unsigned char>(v[i + 2])) != 0) {
          user += static_cast<char>(std::stoi(std::string(v.substr(i + 1, 2)), nullptr, 16));
          i += 2;
        } else {
          user += v[i] == '+' ? ' ' : v[i];
        }
      }
    }
    if (user.empty())
      return HttpResponse{400, "text/plain; charset=utf-8", "name the user: ?user=<login>\n", {}};
    if (!state_.detector || !state_.detector->unblock(user, std::chrono::system_clock::now())) {
      return HttpResponse{404, "text/plain; charset=utf-8", "no block in force for that user\n", {}};
    }
    log::warn("detection: the block of user \"" + user + "\" was lifted by an administrator (HTTP)");
    if (state_.audit) {
      AuditEvent ev;
      ev.kind = "block_lifted";
      ev.detail = {{"user", user}, {"by", "http"}};
      state_.audit->submit(std::move(ev));
    }
    save_detection_state();
    return HttpResponse{200, "text/plain; charset=utf-8", "lifted\n", {}};
  });
  http_->add_route("/api/console", [this](const HttpRequest&) {
    ConsoleState::Status st;
    st.version = PGCLOAK_VERSION;
    st.not_ready_reason = not_ready_reason();
    st.ready = st.not_ready_reason.empty();
    st.uptime = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_);
    HttpResponse r;
    r.content_type = "application/json";
    r.body = state_.console->snapshot(st).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return r;
  });
}

// With no client connecting, only a probe notices that PostgreSQL went
// away (or came back). A bare TCP connect, closed without sending a byte:
// PostgreSQL does not log connections that send nothing.
awaitable<void> Server::probe_upstream() {
  const auto& up = state_.config->upstream;
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer wait(ex);
  for (;;) {
    // Declared before the deadline's handler, which may close them, and
    // alive until the end of the iteration, after that handler has run.
    tcp::socket tsock(ex);
    unix_stream::socket usock(ex);
    asio::steady_timer deadline(ex);
    deadline.expires_after(up.connect_timeout);
    bool timed_out = false;
    deadline.async_wait([&](const error_code& e) {
      if (e) return;
      timed_out = true;
      error_code ignored;
      tsock.close(ignored);
      usock.close(ignored);
    });
    error_code ec;
    if (up.is_unix_socket()) {
      std::tie(ec) = co_await usock.async_connect(unix_stream::endpoint(up.unix_socket_path()), use_nothrow);
    } else {
      tcp::resolver resolver(ex);
      auto [rec, results] = co_await resolver.async_resolve(up.host, std::to_string(up.port), use_nothrow);
      ec = rec;
      if (!ec) std::tie(ec, std::ignore) = co_await asio::async_connect(tsock, results, use_nothrow);
    }
    deadline.cancel();
    if (ec) {
      state_.upstream_health.note_failure("cannot connect to " + up.describe() + ": " +
                                          (timed_out ? std::string("timed out") : ec.message()));
    } else {
      state_.upstream_health.note_ok();
    }
    wait.expires_after(std::chrono::seconds(5));
    if (auto [wec] = co_await wait.async_wait(use_nothrow); wec) co_return;
  }
}

void Server::stop_http() {
  if (http_) http_->stop();
  if (http_ctx_) http_ctx_->stop();
  if (http_thread_.joinable()) http_thread_.join();
}

asio::io_context& Server::next_worker() {
  auto& ctx = *workers_[next_worker_];
  next_worker_ = (next_worker_ + 1) % workers_.size();
  return ctx;
}

int Server::run() {
  auto& main_ctx = *workers_.front();
  for (auto& acc : tcp_acceptors_) asio::co_spawn(main_ctx, accept_tcp(*acc), asio::detached);
  if (unix_acceptor_) asio::co_spawn(main_ctx, accept_unix(*unix_acceptor_), asio::detached);
  asio::co_spawn(main_ctx, handle_signals(), asio::detached);
  if (state_.policies->enabled()) {
    asio::co_spawn(main_ctx, catalog_refresher(*state_.policies, *state_.blocking), asio::detached);
  }
  if (state_.detector && !state_.config->detection.state_file.empty()) {
    asio::co_spawn(main_ctx, save_detection_state_periodically(), asio::detached);
  }
  if (state_.upstream_pool) asio::co_spawn(main_ctx, state_.upstream_pool->run(), asio::detached);

  if (http_) {
    asio::co_spawn(*http_ctx_, probe_upstream(), asio::detached);
    http_thread_ = std::thread([ctx = http_ctx_.get()] { ctx->run(); });
  }

  std::vector<std::thread> threads;
  for (size_t i = 1; i < workers_.size(); ++i) {
    threads.emplace_back([ctx = workers_[i].get()] { ctx->run(); });
  }
  main_ctx.run();
  for (auto& t : threads) t.join();
  // Before the audit log closes: the scrape hook reads its stats.
  stop_http();
  // Calls still running finish (libpq timeouts bound them); their sessions
  // are not resumed, as the io threads have stopped.
  state_.blocking->join();
  state_.relays.stop();
  // Learned baselines survive the restart; undelivered webhook alerts get
  // a few seconds (they are in the audit trail either way).
  save_detection_state();
  if (state_.webhook) state_.webhook->stop(std::chrono::seconds(5));
  if (state_.alert_syslog) state_.alert_syslog->stop(std::chrono::seconds(5));
  // After the relays: their sessions' last records (disconnects) are in.
  if (state_.audit) state_.audit->close();
  return exit_code_;
}

awaitable<void> Server::reject(std::unique_ptr<Stream> stream, Error error) {
  protocol::Buffer b;
  protocol::ErrorResponse::from_error(error).encode(b);
  co_await stream->write(asio::buffer(b));
  stream->close();
}

void Server::start_session(std::unique_ptr<Stream> stream, asio::io_context& ctx) {
  const auto& cfg = *state_.config;
  if (state_.sessions.size() >= cfg.max_connections) {
    log::warn("refusing connection from " + stream->peer_address() + ": max_connections (" +
              std::to_string(cfg.max_connections) + ") reached");
    asio::co_spawn(ctx,
                   reject(std::move(stream), Error::make(sqlstate::too_many_connections,
                                                         "sorry, too many clients already", Severity::fatal)),
                   asio::detached);
    return;
  }
  uint64_t id = state_.sessions.next_id();
  auto session = std::make_shared<Session>(state_, std::move(stream), id);
  state_.sessions.add(id, session);
  asio::co_spawn(ctx, Session::run(std::move(session)), asio::detached);
}

awaitable<void> Server::accept_tcp(tcp::acceptor& acceptor) {
  for (;;) {
    auto& ctx = next_worker();
    auto [ec, socket] = co_await acceptor.async_accept(ctx, use_nothrow);
    if (ec) {
      if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
      log::warn("accept failed: " + ec.message());
      // Out of descriptors: back off instead of spinning on the error.
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(100));
      co_await t.async_wait(use_nothrow);
      continue;
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    socket.set_option(asio::socket_base::keep_alive(true), ignored);
    start_session(std::make_unique<Stream>(std::move(socket)), ctx);
  }
}

awaitable<void> Server::accept_unix(unix_stream::acceptor& acceptor) {
  for (;;) {
    auto& ctx = next_worker();
    auto [ec, socket] = co_await acceptor.async_accept(ctx, use_nothrow);
    if (ec) {
      if (!acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
      log::warn("accept failed on Unix socket: " + ec.message());
      asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(100));
      co_await t.async_wait(use_nothrow);
      continue;
    }
    start_session(std::make_unique<Stream>(std::move(socket)), ctx);
  }
}

awaitable<void> Server::handle_signals() {
  for (;;) {
    auto [ec, signo] = co_await signals_->async_wait(use_nothrow);
    if (ec) co_return;
    if (signo == SIGHUP) {
      reload_config();
      continue;
    }
    log::info(std::string("received ") + (signo == SIGTERM ? "SIGTERM" : "SIGINT") + ", shutting down");
    co_await shutdown();
    co_return;
  }
}

awaitable<void> Server::shutdown() {
  state_.draining = true;
  if (state_.policies) state_.policies->stop();
  for (auto& acc : tcp_acceptors_) {
    error_code ignored;
    acc->close(ignored);
  }
  if (unix_acceptor_) {
    error_code ignored;
    unix_acceptor_->close(ignored);
    ::unlink(unix_socket_path_.c_str());
  }
  const auto grace = state_.config->timeouts.shutdown_grace;
  log::info("stopped accepting connections; draining " + std::to_string(state_.sessions.size()) +
            " sessions (grace " + std::to_string(grace.count()) + " ms)");
  // Idle sessions end at once; busy ones when their statement or
  // transaction finishes.
  for (auto& s : state_.sessions.snapshot()) {
    asio::post(s->executor(), [s] { s->drain(); });
  }
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer tick(ex);
  const auto until = std::chrono::steady_clock::now() + grace;
  while (state_.sessions.size() > 0 && std::chrono::steady_clock::now() < until) {
    tick.expires_after(std::chrono::milliseconds(50));
    co_await tick.async_wait(use_nothrow);
  }
  if (size_t left = state_.sessions.size(); left > 0) {
    log::warn("grace period over; terminating " + std::to_string(left) + " sessions");
    for (auto& s : state_.sessions.snapshot()) {
      asio::post(s->executor(), [s] {
        s->terminate(Error::make(sqlstate::admin_shutdown,
                                 "terminating connection due to administrator command", Severity::fatal));
      });
    }
    const auto hard = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (state_.sessions.size() > 0 && std::chrono::steady_clock::now() < hard) {
      tick.expires_after(std::chrono::milliseconds(50));
      co_await tick.async_wait(use_nothrow);
    }
  }
  // Sessions are gone; so is any reason to keep their backends.
  if (state_.upstream_pool) state_.upstream_pool->close_all();
  log::info("shutdown complete");
  signals_->cancel();
  for (auto& g : guards_) g.reset();
  for (auto& w : workers_) w->stop();
}

}  // namespace pgcloak::proxy
