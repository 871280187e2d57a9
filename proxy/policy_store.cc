#include "proxy/policy_store.h"

#include <algorithm>
#include <exception>
#include <utility>

#include "proxy/catalog_loader.h"
#include "proxy/log.h"
#include "proxy/run_blocking.h"

namespace pgcloak::proxy {

namespace {

// Distinct logins with a cached policy; past this the cache starts over, so
// a flood of logins cannot grow it without bound.
constexpr size_t max_cached_users = 10000;
// The catalog connection's statement_timeout: a load that takes longer is
// stuck (a lock on a catalog table) and is retried later.
constexpr rules::Duration catalog_statement_timeout{30000};
// Requested refreshes (after DDL) start at least this long after the
// previous load ended, so a burst of DDL cannot keep a blocking thread busy.
constexpr auto min_request_gap = std::chrono::milliseconds(250);
// The first retry after a failed load; it doubles up to refresh_interval.
constexpr auto first_retry = std::chrono::milliseconds(1000);

// The default loader: one side connection, kept between loads and reopened
// after any failure (a failed load may have left it inside a transaction).
PolicyStore::Loader connection_loader(PgSideParams params) {
  struct Source {
    PgSideParams params;
    std::optional<PgSideConnection> conn;
  };
  auto src = std::make_shared<Source>(Source{std::move(params), std::nullopt});
  return [src]() -> Result<std::shared_ptr<rules::Catalog>> {
    for (int attempt = 0;; ++attempt) {
      const bool reused = src->conn.has_value() && src->conn->healthy();
      if (!reused) {
        src->conn.reset();
        auto opened = PgSideConnection::open(src->params);
        if (!opened) return std::move(opened).error();
        src->conn.emplace(std::move(opened).value());
      }
      auto catalog = load_catalog(*src->conn);
      if (catalog) return catalog;
      src->conn.reset();
      // PostgreSQL may have restarted since the last load: one retry on a
      // fresh connection.
      if (!reused || attempt > 0 || !is_connection_error(catalog.error())) return catalog;
    }
  };
}

std::string describe_failure(const Error& e) {
  std::string s = e.message;
  if (!e.detail.empty()) s += " (" + e.detail + ")";
  return s;
}

}  // namespace

PolicyStore::PolicyStore(std::shared_ptr<const rules::Config> config)
    : masking_(config, &config->masking), refresh_interval_(config->catalog.refresh_interval) {
  enabled_ = masking_->enabled();
  PgSideParams params = PgSideParams::catalog(*config, config->catalog.dbname);
  params.application_name = "pgcloak catalog";
  params.statement_timeout = catalog_statement_timeout;
  source_ = params.describe();
  loader_ = connection_loader(std::move(params));
}

PolicyStore::PolicyStore(std::shared_ptr<const rules::MaskingConfig> masking,
                         rules::Duration refresh_interval, Loader loader, std::string source)
    : masking_(std::move(masking)),
      refresh_interval_(refresh_interval),
      loader_(std::move(loader)),
      source_(std::move(source)) {
  enabled_ = masking_->enabled();
}

std::shared_ptr<const rules::MaskingConfig> PolicyStore::masking() const {
  std::lock_guard lock(mu_);
  return masking_;
}

Status PolicyStore::reload_masking(std::shared_ptr<const rules::MaskingConfig> masking) {
  if (masking->enabled() != enabled_) {
    return Error::make(sqlstate::config_file_error, std::string("the new configuration would turn masking ") +
                                                        (enabled_ ? "off" : "on") + "; that takes a restart");
  }
  std::shared_ptr<const rules::Catalog> catalog;
  {
    std::lock_guard lock(mu_);
    masking_ = masking;
    if (protection_) catalog = protection_->catalog_ptr();
  }
  if (!catalog) return ok_status();  // the first catalog load will use the new rules
  const uint64_t gen = next_generation_.fetch_add(1) + 1;
  auto protection = rules::Protection::build(std::move(masking), std::move(catalog));
  {
    std::lock_guard lock(mu_);
    if (gen <= generation_.load()) return ok_status();  // a newer load already used the new rules
    protection_ = protection;
    by_user_.clear();
    generation_.store(gen);
  }
  for (const auto& w : protection->warnings) log::warn("masking: " + w);
  log::info("masking rules reloaded (generation " + std::to_string(gen) +
            "): " + std::to_string(protection->relations().size()) + " protected relations");
  return ok_status();
}

Result<std::shared_ptr<const rules::SessionPolicy>> PolicyStore::for_user(const std::string& user) {
  if (!enabled()) return std::shared_ptr<const rules::SessionPolicy>();
  std::shared_ptr<const rules::Protection> protection;
  {
    std::lock_guard lock(mu_);
    if (!protection_) {
      // Fail closed. The reason stays coarse: the full error (host, database,
      // login) is in pgcloak's log, not for clients.
      std::string reason = last_error_.empty() ? "the first load has not finished"
                                               : "the last attempt failed, see pgcloak's log";
      return Error::make(
          sqlstate::cannot_connect_now,
          "pgcloak cannot determine the masking policy yet: the catalog has not loaded (" + reason + ")");
    }
    if (auto it = by_user_.find(user); it != by_user_.end()) return it->second;
    protection = protection_;
  }
  // Built outside the lock: other logins need not wait for it.
  auto policy = std::make_shared<const rules::SessionPolicy>(protection, user);
  std::lock_guard lock(mu_);
  if (protection_ != protection) return policy;  // a refresh came in meanwhile: do not cache a stale one
  if (by_user_.size() >= max_cached_users) by_user_.clear();
  return by_user_.emplace(user, std::move(policy)).first->second;
}

std::shared_ptr<const rules::Protection> PolicyStore::protection() const {
  std::lock_guard lock(mu_);
  return protection_;
}

Status PolicyStore::refresh() {
  const uint64_t ticket = requests_.fetch_add(1) + 1;
  std::lock_guard serial(refresh_mu_);
  // A load that started after this call was made has read a catalog at least
  // as new as the one this caller asked for.
  if (last_outcome_ && covered_ >= ticket) return *last_outcome_;
  const uint64_t covers = requests_.load();
  const uint64_t marks = stale_marks_.load();
  const auto started = std::chrono::steady_clock::now();
  auto loaded = loader_ ? loader_()
                        : Result<std::shared_ptr<rules::Catalog>>(
                              Error::make(sqlstate::internal_error, "no catalog loader configured"));
  Status outcome = ok_status();
  if (loaded) {
    install(std::move(loaded).value(), std::chrono::steady_clock::now() - started);
    uint64_t seen = fresh_through_.load();
    while (seen < marks && !fresh_through_.compare_exchange_weak(seen, marks)) {
    }
  } else {
    const Error& e = loaded.error();
    bool first = false;
    bool loaded_before = false;
    {
      std::lock_guard lock(mu_);
      first = !failed_before_ && !protection_;
      loaded_before = protection_ != nullptr;
      failed_before_ = true;
      last_error_ = describe_failure(e);
    }
    if (first) {
      log::error("cannot load the masking catalog from " + source_ + ": " + describe_failure(e) +
                 "; sessions are refused until it loads");
    } else if (loaded_before) {
      log::warn("masking catalog refresh from " + source_ + " failed, keeping generation " +
                std::to_string(generation()) + ": " + describe_failure(e));
    } else {
      log::warn("masking catalog still not loaded from " + source_ + ": " + describe_failure(e));
    }
    outcome = e;
  }
  covered_ = covers;
  last_outcome_ = outcome;
  return outcome;
}

void PolicyStore::install(std::shared_ptr<rules::Catalog> catalog, std::chrono::steady_clock::duration took) {
  const uint64_t gen = next_generation_.fetch_add(1) + 1;
  catalog->generation = gen;
  const size_t relations = catalog->relations.size();
  const size_t roles = catalog->roles.size();
  auto protection = rules::Protection::build(masking(), std::move(catalog));
  bool warnings_changed = false;
  {
    std::lock_guard lock(mu_);
    if (gen <= generation_.load()) return;  // a newer catalog is already in use
    protection_ = protection;
    by_user_.clear();
    last_error_.clear();
    generation_.store(gen);
    if (protection->warnings != logged_warnings_) {
      logged_warnings_ = protection->warnings;
      warnings_changed = true;
    }
  }
  if (warnings_changed) {
    for (const auto& w : protection->warnings) log::warn("masking: " + w);
    if (protection->warnings.empty() && gen > 1)
      log::info("masking: every protected column is in the catalog again");
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
  log::info("masking catalog generation " + std::to_string(gen) + " loaded from " + source_ + " in " +
            std::to_string(ms) + " ms: " + std::to_string(relations) + " relations (" +
            std::to_string(protection->relations().size()) + " protected), " + std::to_string(roles) +
            " roles");
}

void PolicyStore::mark_stale() {
  stale_marks_.fetch_add(1);
  request_refresh();
}

void PolicyStore::request_refresh() {
  refresh_requested_.store(true);
  wake();
}

void PolicyStore::stop() {
  stopping_.store(true);
  wake();
}

void PolicyStore::attach(Waker waker) {
  std::lock_guard lock(waker_mu_);
  waker_ = std::move(waker);
}

void PolicyStore::detach() {
  std::lock_guard lock(waker_mu_);
  waker_.reset();
}

void PolicyStore::wake() {
  std::lock_guard lock(waker_mu_);
  if (!waker_) return;
  // The timer belongs to the refresher's io thread: cancel it there, and
  // only if the refresher is still attached when the handler runs (it may
  // have ended, and its timer with it, in the meantime).
  asio::post(waker_->executor, [this] {
    std::lock_guard inner(waker_mu_);
    if (waker_) waker_->timer->cancel();
  });
}

awaitable<void> catalog_refresher(PolicyStore& store, asio::thread_pool& blocking) {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex);
  store.attach({ex, &timer});
  // Detached before the timer is destroyed, also when the io_context
  // destroys this frame at shutdown.
  struct Detach {
    PolicyStore& store;
    ~Detach() { store.detach(); }
  } detach{store};

  auto retry = std::chrono::duration_cast<rules::Duration>(first_retry);
  while (!store.stopping()) {
    store.take_request();
    Status loaded = ok_status();
    try {
      loaded = co_await run_blocking(blocking, [&store] { return store.refresh(); });
    } catch (const std::exception& e) {
      // Only allocation failures get here; the refresher must outlive them.
      log::error(std::string("masking catalog refresh failed: ") + e.what());
      loaded = Error::make(sqlstate::internal_error, e.what());
    }
    const auto ended = std::chrono::steady_clock::now();
    rules::Duration wait = store.refresh_interval();
    if (loaded) {
      retry = std::chrono::duration_cast<rules::Duration>(first_retry);
    } else {
      wait = std::min(wait, retry);
      retry = std::min(retry * 2, store.refresh_interval());
    }
    // Until the next periodic load, a request or stop().
    timer.expires_after(wait);
    if (!store.requested() && !store.stopping()) co_await timer.async_wait(use_nothrow);
    // A request: keep the minimum gap to the previous load.
    while (store.requested() && !store.stopping() &&
           std::chrono::steady_clock::now() < ended + min_request_gap) {
      timer.expires_at(ended + min_request_gap);
      co_await timer.async_wait(use_nothrow);
    }
  }
}

}  // namespace pgcloak::proxy
