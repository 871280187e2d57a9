// Evaluation harness for exfiltration detection (docs/detection.md,
// "Evaluation"). Replays a deterministic simulated shop through the real
// Detector in accelerated time: a training period, then an evaluation period
// of normal traffic alone (false alerts) and the same period with each attack
// scenario injected (detected or not, and how fast). The detection policy is
// bench/exfil_eval.yaml, read with pgcloak's own configuration loader.
//
// The traffic is written from what each group of people does, not from the
// detectors: support staff work tickets in shifts, analysts run daily and
// weekly reports and ad-hoc queries, the shop's application serves customers
// around the clock with a daily and weekly rhythm and a nightly batch, an
// admin shows up now and then. Everyone has the odd late evening, the odd
// refused statement, the odd big list.
//
//   exfil_eval [--config FILE] [--train-days N] [--days N] [--seed N]
//              [--scenario NAME] [--no-cost] [--verbose]
//
// Exit status 0 when every goal holds: every injection detected, a bulk dump
// within 1 s of stream time, everything else within 60 s, at most one false
// alert per simulated day of normal traffic.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "rules/config.h"
#include "rules/detection.h"

namespace {

using namespace pgcloak::rules;
using Ms = int64_t;

constexpr Ms second = 1000;
constexpr Ms minute = 60 * second;
constexpr Ms hour = 60 * minute;
constexpr Ms day = 24 * hour;

// --- Deterministic randomness ---------------------------------------------------
// Our own distributions on top of mt19937_64, so the traffic is the same on
// every standard library.

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  double uniform() { return static_cast<double>(g_() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int64_t integer(int64_t lo, int64_t hi) {  // inclusive
    return lo + static_cast<int64_t>(uniform() * static_cast<double>(hi - lo + 1));
  }
  bool chance(double p) { return uniform() < p; }
  double exponential(double mean) { return -mean * std::log(1.0 - uniform()); }
  int poisson(double lambda) {
    if (lambda > 60) return std::max(0, static_cast<int>(std::lround(lambda + std::sqrt(lambda) * normal())));
    const double limit = std::exp(-lambda);
    int k = 0;
    for (double p = uniform(); p > limit; p *= uniform()) ++k;
    return k;
  }
  double normal() {
    const double u = 1.0 - uniform();
    const double v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2 * std::numbers::pi * v);
  }

 private:
  std::mt19937_64 g_;
};

uint64_t seed_of(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t z = a * 0x9e3779b97f4a7c15ULL ^ (b + 0x632be59bd9b4e019ULL) * 0xbf58476d1ce4e5b9ULL ^
               (c + 0x85ebca6b) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return z;
}

// --- The shop -----------------------------------------------------------------------

constexpr int64_t customers = 100000;

// Statement templates: what each kind of statement reads, as the proxy would
// derive it (statement_facts()) from the analysis of its text.
enum Tmpl : uint16_t {
  // support (masked: email, phone, card, birth date, SSN, notes)
  s_by_email,   // SELECT id, full_name, email, phone FROM customers WHERE email = $1
  s_by_id,      // SELECT * FROM customers WHERE id = $1
  s_by_name,    // SELECT id, full_name, email FROM customers WHERE full_name ILIKE $1 LIMIT 20
  s_orders,     // SELECT ... FROM orders WHERE customer_id = $1   (nothing protected)
  s_payments,   // SELECT paid_at, amount, card_number FROM payments WHERE customer_id = $1
  s_callbacks,  // SELECT id, full_name, phone FROM customers WHERE callback_due <= $1
  // analysts (email hashed, the rest redacted)
  a_report,   // SELECT email, birth_date, address FROM customers WHERE created_at >= $1
  a_cohort,   // SELECT c.email, count(*) FROM customers c JOIN orders o ON ... WHERE ... GROUP BY 1
  a_years,    // SELECT date_trunc('year', birth_date), count(*) FROM customers GROUP BY 1 (unfiltered)
  a_segment,  // SELECT email, address FROM customers WHERE id = ANY($1)
  // application (unmasked)
  p_customer,    // SELECT * FROM customers WHERE id = $1
  p_card,        // SELECT card_number FROM payments WHERE customer_id = $1 ORDER BY paid_at DESC LIMIT 1
  p_orders,      // order history (nothing protected)
  p_login,       // SELECT id, full_name, email FROM customers WHERE email = $1
  p_newsletter,  // SELECT id, email, full_name FROM customers WHERE newsletter AND id > $1 ORDER BY id LIMIT
                 // 2000
  // admin (unmasked)
  d_customer,   // SELECT * FROM customers WHERE id = $1
  d_payments,   // SELECT * FROM payments WHERE customer_id = $1
  d_employees,  // SELECT * FROM hr.employees WHERE id = $1
  d_search,     // SELECT id, email FROM customers WHERE email LIKE $1
  // attacks
  x_dump_all,       // SELECT * FROM customers                        (unfiltered)
  x_dump_where,     // SELECT * FROM customers WHERE created_at > $1   (filtered, evades full_scan)
  x_union,          // app: ... UNION SELECT full_name, email, card_number FROM customers  (SQL injection)
  x_page,           // SELECT * FROM customers WHERE id > $1 ORDER BY id LIMIT 900
  x_page_segment,   // SELECT email, address FROM customers WHERE id > $1 ORDER BY id LIMIT 900
  x_ssn_probe,      // SELECT id FROM customers WHERE ssn LIKE $1 (masked for the session)
  x_email_probe,    // SELECT id FROM customers WHERE email = $1  (hashed for analysts)
  x_copy_table,     // COPY customers TO STDOUT
  x_copy_query,     // COPY (SELECT full_name, phone FROM customers WHERE created_at > $1) TO STDOUT
  x_copy_payments,  // COPY payments TO STDOUT
  x_payments,       // SELECT * FROM payments WHERE customer_id = $1
  x_customer_all,   // SELECT full_name, phone, ssn, notes FROM customers WHERE id = $1
  x_employees,      // SELECT * FROM hr.employees WHERE id = $1
  template_count
};

const std::vector<std::string> all_customer = {"address",   "birth_date",  "card_number", "email",
                                               "free_text", "national_id", "person_name", "phone"};

struct TemplateDef {
  const char* name;
  std::string relation;  // "" = nothing protected
  std::vector<std::string> categories;
  bool unfiltered = false;
  bool copy_to = false;
  bool masked_predicate = false;
};

std::vector<StatementFacts> build_templates() {
  std::vector<TemplateDef> defs(template_count);
  defs[s_by_email] = {"s_by_email", "public.customers", {"email", "person_name", "phone"}, false, false,
                      true};
  defs[s_by_id] = {"s_by_id", "public.customers", all_customer};
  defs[s_by_name] = {"s_by_name", "public.customers", {"email", "person_name"}};
  defs[s_orders] = {"s_orders", "", {}};
  defs[s_payments] = {"s_payments", "public.payments", {"card_number"}};
  defs[s_callbacks] = {"s_callbacks", "public.customers", {"person_name", "phone"}};
  defs[a_report] = {"a_report", "public.customers", {"address", "birth_date", "email"}};
  defs[a_cohort] = {"a_cohort", "public.customers", {"email"}};
  defs[a_years] = {"a_years", "public.customers", {"birth_date"}, true};
  defs[a_segment] = {"a_segment", "public.customers", {"address", "email"}};
  defs[p_customer] = {"p_customer", "public.customers", all_customer};
  defs[p_card] = {"p_card", "public.payments", {"card_number"}};
  defs[p_orders] = {"p_orders", "", {}};
  defs[p_login] = {"p_login", "public.customers", {"email", "person_name"}};
  defs[p_newsletter] = {"p_newsletter", "public.customers", {"email", "person_name"}};
  defs[d_customer] = {"d_customer", "public.customers", all_customer};
  defs[d_payments] = {"d_payments", "public.payments", {"card_number"}};
  defs[d_employees] = {"d_employees", "hr.employees", {"address", "birth_date", "national_id"}};
  defs[d_search] = {"d_search", "public.customers", {"email"}};
  defs[x_dump_all] = {"x_dump_all", "public.customers", all_customer, true};
  defs[x_dump_where] = {"x_dump_where", "public.customers", all_customer};
  defs[x_union] = {"x_union", "public.customers", {"card_number", "email", "person_name"}, true};
  defs[x_page] = {"x_page", "public.customers", all_customer};
  defs[x_page_segment] = {"x_page_segment", "public.customers", {"address", "email"}};
  defs[x_ssn_probe] = {"x_ssn_probe", "public.customers", {"national_id"}, false, false, true};
  defs[x_email_probe] = {"x_email_probe", "public.customers", {"email"}, false, false, true};
  defs[x_copy_table] = {"x_copy_table", "public.customers", all_customer, true, true};
  defs[x_copy_query] = {"x_copy_query", "public.customers", {"person_name", "phone"}, false, true};
  defs[x_copy_payments] = {"x_copy_payments", "public.payments", {"card_number"}, true, true};
  defs[x_payments] = {"x_payments", "public.payments", {"card_number"}};
  defs[x_customer_all] = {
      "x_customer_all", "public.customers", {"free_text", "national_id", "person_name", "phone"}};
  defs[x_employees] = {"x_employees", "hr.employees", {"address", "birth_date", "national_id"}};
  std::vector<StatementFacts> out(template_count);
  for (size_t i = 0; i < defs.size(); ++i) {
    StatementFacts& f = out[i];
    f.shape = detection_hash(defs[i].name);
    f.copy_to = defs[i].copy_to;
    f.predicate_on_masked = defs[i].masked_predicate;
    if (!defs[i].relation.empty())
      f.reads.push_back({defs[i].relation, defs[i].categories, defs[i].unfiltered});
  }
  return out;
}

struct Actor {
  DetectIdentity who;
};

enum class Kind : uint8_t { connect, disconnect, statement, denial };

struct Event {
  Ms t = 0;
  Kind kind = Kind::statement;
  uint16_t tmpl = 0;
  uint32_t actor = 0;
  uint64_t session = 0;
  uint64_t key = 0;
  uint64_t rows = 0;
  double rate = 50000;  // rows per second while streaming
  int32_t injection = -1;
};

// Simulated calendar: day 0 is Monday 2025-03-17 in the shop's zone.
class Calendar {
 public:
  explicit Calendar(const TimeZone& zone) : zone_(zone) {}
  // UTC milliseconds of local `hours` after midnight of day d.
  Ms at(int d, double hours) const {
    const Ms local = (days_from_civil(2025, 3, 17) + d) * day + static_cast<Ms>(hours * hour);
    const Ms guess = local - zone_.offset_at(local / 1000) * 1000LL;
    return local - zone_.offset_at(guess / 1000) * 1000LL;
  }
  static int weekday(int d) { return d % 7; }  // 0 = Monday
  static bool weekend(int d) { return weekday(d) >= 5; }
  std::string describe(Ms t) const {
    const LocalTime lt = zone_.local(t / 1000);
    static const char* days[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%s %02u-%02u %02u:%02u", days[lt.weekday], lt.month, lt.day,
                  lt.minute_of_day / 60, lt.minute_of_day % 60);
    return buf;
  }

 private:
  const TimeZone& zone_;
};

class World {
 public:
  World(const TimeZone& zone, uint64_t seed) : cal(zone), zone_(&zone), seed_(seed) {
    auto person = [&](std::string user, std::vector<std::string> groups, std::string ip, std::string app) {
      Actor a;
      a.who.user = user;
      a.who.roles = std::move(groups);
      a.who.roles.insert(a.who.roles.begin(), user);
      a.who.client_ip = std::move(ip);
      a.who.application_name = std::move(app);
      actors.push_back(std::move(a));
      return static_cast<uint32_t>(actors.size() - 1);
    };
    for (int i = 0; i < 6; ++i)
      support.push_back(person("support" + std::to_string(i + 1), {"support_team"},
                               "10.0.2." + std::to_string(21 + i), "crm-desk"));
    for (int i = 0; i < 3; ++i)
      analysts.push_back(person("analyst" + std::to_string(i + 1), {"bi_readers", "analytics_team"},
                                "10.0.3." + std::to_string(31 + i), "metabase"));
    for (int i = 0; i < 3; ++i)
      app_web.push_back(person("app", {"app_services"}, "10.0.1." + std::to_string(10 + i), "shop-web"));
    app_worker = person("app", {"app_services"}, "10.0.1.13", "shop-worker");
    admin = person("admin", {"data_admins"}, "10.0.5.7", "psql");
  }

  Calendar cal;
  std::vector<Actor> actors;
  std::vector<uint32_t> support, analysts, app_web;
  // What made a day unusual (absences, late evenings), for --verbose.
  std::vector<std::string> notes;
  uint32_t app_worker = 0, admin = 0;

  uint32_t add_actor(const std::string& user, std::vector<std::string> groups, std::string ip,
                     std::string app) {
    Actor a;
    a.who.user = user;
    a.who.roles = std::move(groups);
    a.who.roles.insert(a.who.roles.begin(), user);
    a.who.client_ip = std::move(ip);
    a.who.application_name = std::move(app);
    actors.push_back(std::move(a));
    return static_cast<uint32_t>(actors.size() - 1);
  }

  uint64_t next_session() { return ++sessions_; }
  // Injected sessions are numbered apart from normal ones, so normal
  // traffic is identical with and without injections.
  uint64_t next_injected_session() { return ++injected_sessions_; }

  // Normal traffic of one simulated day.
  void generate_day(int d, std::vector<Event>& out) {
    sessions_ = static_cast<uint64_t>(d + 1) << 32;
    for (size_t i = 0; i < support.size(); ++i) support_day(d, static_cast<int>(i), out);
    for (size_t i = 0; i < analysts.size(); ++i) analyst_day(d, static_cast<int>(i), out);
    app_day(d, out);
    admin_day(d, out);
  }

 private:
  static uint64_t customer_key(int64_t id) { return detection_hash(std::to_string(id), 0x5bd1e995); }

  void statement(std::vector<Event>& out, Ms t, uint32_t actor, uint64_t session, uint16_t tmpl, uint64_t key,
                 uint64_t rows, double rate = 50000) {
    Event e;
    e.t = t;
    e.kind = Kind::statement;
    e.actor = actor;
    e.session = session;
    e.tmpl = tmpl;
    e.key = key;
    e.rows = rows;
    e.rate = rate;
    out.push_back(e);
  }
  void session_edge(std::vector<Event>& out, Ms t, uint32_t actor, uint64_t session, Kind k) {
    Event e;
    e.t = t;
    e.kind = k;
    e.actor = actor;
    e.session = session;
    out.push_back(e);
  }

  // Support: two shifts on weekdays with a lunch break; a ticket every few
  // minutes (find the customer, look at them, their orders, sometimes their
  // payments); a callback list on Fridays; now and then a refused statement;
  // rarely a long evening.
  void support_day(int d, int i, std::vector<Event>& out) {
    if (Calendar::weekend(d)) return;
    Rng rng(seed_of(seed_, static_cast<uint64_t>(d), 100 + static_cast<uint64_t>(i)));
    const uint32_t a = support[static_cast<size_t>(i)];
    if (rng.chance(0.06)) {  // off sick, on leave
      notes.push_back(cal.describe(cal.at(d, 0)).substr(0, 9) + " " + actors[a].who.user + " absent");
      return;
    }
    const bool late = i >= 3;
    double start = (late ? 10.5 : 8.0) + rng.uniform(-0.25, 0.25);
    double end = (late ? 19.0 : 16.5) + rng.uniform(-0.2, 0.3);
    if (rng.chance(0.04)) {  // stayed late
      end += rng.uniform(0.5, 1.5);
      notes.push_back(cal.describe(cal.at(d, end)) + " " + actors[a].who.user + " works until then");
    }
    const double lunch = (late ? 14.0 : 12.0) + rng.uniform(0, 0.5);
    const uint64_t session = next_session();
    session_edge(out, cal.at(d, start), a, session, Kind::connect);
    for (double h = start + rng.exponential(0.1); h < end; h += rng.exponential(6.0 / 60)) {
      if (h >= lunch && h < lunch + 0.75) continue;
      Ms t = cal.at(d, h);
      const int64_t id = rng.integer(1, customers);
      const double how = rng.uniform();
      if (how < 0.6) {
        statement(out, t, a, session, s_by_email, customer_key(id) ^ 1, rng.integer(0, 1));
      } else if (how < 0.85) {
        statement(out, t, a, session, s_by_name, detection_hash(std::to_string(rng.integer(1, 5000))),
                  static_cast<uint64_t>(rng.integer(0, 20)));
      }
      t += static_cast<Ms>(rng.uniform(5, 40) * second);
      statement(out, t, a, session, s_by_id, customer_key(id), 1);
      const int orders = static_cast<int>(rng.integer(1, 3));
      for (int k = 0; k < orders; ++k) {
        t += static_cast<Ms>(rng.uniform(5, 30) * second);
        statement(out, t, a, session, s_orders, customer_key(id) ^ static_cast<uint64_t>(k + 7),
                  static_cast<uint64_t>(rng.integer(1, 30)));
      }
      if (rng.chance(0.5)) {
        t += static_cast<Ms>(rng.uniform(5, 30) * second);
        statement(out, t, a, session, s_payments, customer_key(id),
                  static_cast<uint64_t>(rng.integer(1, 10)));
      }
      if (rng.chance(0.015)) {
        Event e;
        e.t = t + 10 * second;
        e.kind = Kind::denial;
        e.actor = a;
        e.session = session;
        out.push_back(e);
      }
    }
    if (Calendar::weekday(d) == 4) {
      statement(out, cal.at(d, start + 0.5), a, session, s_callbacks, rng.integer(1, 1000000),
                static_cast<uint64_t>(rng.integer(200, 800)));
    }
    session_edge(out, cal.at(d, end), a, session, Kind::disconnect);
  }

  // Analysts: the first runs the daily report in the morning and the weekly
  // one on Mondays, the second a daily report after lunch; all run ad-hoc
  // cohorts and segment look-ups, and a birth-year histogram now and then.
  void analyst_day(int d, int i, std::vector<Event>& out) {
    if (Calendar::weekend(d)) return;
    Rng rng(seed_of(seed_, static_cast<uint64_t>(d), 200 + static_cast<uint64_t>(i)));
    const uint32_t a = analysts[static_cast<size_t>(i)];
    if (rng.chance(0.06)) {
      notes.push_back(cal.describe(cal.at(d, 0)).substr(0, 9) + " " + actors[a].who.user + " absent");
      return;
    }
    const double start = 8.5 + rng.uniform(-0.3, 0.5);
    double end = 17.5 + rng.uniform(-0.5, 0.5);
    if (rng.chance(0.04)) {  // a deadline
      end += rng.uniform(1.0, 3.0);
      notes.push_back(cal.describe(cal.at(d, end)) + " " + actors[a].who.user + " works until then");
    }
    const uint64_t session = next_session();
    session_edge(out, cal.at(d, start), a, session, Kind::connect);
    if (i == 0) {
      statement(out, cal.at(d, start + rng.uniform(0.2, 0.6)), a, session, a_report, rng.integer(1, 1000000),
                static_cast<uint64_t>(rng.integer(2000, 8000)));
      if (Calendar::weekday(d) == 0) {
        statement(out, cal.at(d, 11.0 + rng.uniform(0, 0.5)), a, session, a_report, rng.integer(1, 1000000),
                  static_cast<uint64_t>(rng.integer(28000, 36000)));
      }
    }
    if (i == 1) {
      statement(out, cal.at(d, 14.0 + rng.uniform(0, 0.5)), a, session, a_report, rng.integer(1, 1000000),
                static_cast<uint64_t>(rng.integer(3000, 6000)));
    }
    for (double h = start + rng.exponential(0.5); h < end; h += rng.exponential(0.5)) {
      const double how = rng.uniform();
      const Ms t = cal.at(d, h);
      if (how < 0.45) {
        statement(out, t, a, session, a_cohort, rng.integer(1, 1000000),
                  static_cast<uint64_t>(rng.integer(50, 800)));
      } else if (how < 0.9) {
        statement(out, t, a, session, a_segment, rng.integer(1, 1000000),
                  static_cast<uint64_t>(rng.integer(10, 200)));
      } else {
        statement(out, t, a, session, a_years, 0, 80);
      }
    }
    session_edge(out, cal.at(d, end), a, session, Kind::disconnect);
  }

  // The application: three web connections and a worker from the app
  // subnet, recycled by the pool about hourly; statements follow the shop's
  // day (quiet nights, lunch and evening peaks, busier weekends); the worker
  // sends the newsletter at 02:00 in pages of 2,000.
  void app_day(int d, std::vector<Event>& out) {
    Rng rng(seed_of(seed_, static_cast<uint64_t>(d), 300));
    std::vector<uint32_t> conns = app_web;
    conns.push_back(app_worker);
    std::vector<uint64_t> session(conns.size());
    std::vector<Ms> recycle(conns.size());
    const Ms day_start = cal.at(d, 0);
    const Ms day_end = cal.at(d + 1, 0);
    for (size_t c = 0; c < conns.size(); ++c) {
      session[c] = next_session();
      session_edge(out, day_start + static_cast<Ms>(c) * second, conns[c], session[c], Kind::connect);
      recycle[c] = day_start + static_cast<Ms>(rng.uniform(45, 75) * minute);
    }
    static const double per_hour[24] = {18,  12,  10, 10, 12, 20,  35,  55,  70,  80, 85, 95,
                                        120, 115, 90, 85, 90, 105, 125, 135, 120, 90, 60, 35};
    const double weekend = Calendar::weekend(d) ? 1.25 : 1.0;
    for (Ms m = day_start; m < day_end; m += minute) {
      const LocalTime lt = cal_zone_local(m);
      const double lambda = per_hour[lt.minute_of_day / 60] * weekend * rng.uniform(0.85, 1.15);
      const int n = rng.poisson(lambda);
      for (int k = 0; k < n; ++k) {
        const Ms t = m + static_cast<Ms>(rng.uniform() * minute);
        const size_t c = static_cast<size_t>(rng.integer(0, static_cast<int64_t>(app_web.size()) - 1));
        const int64_t id = rng.integer(1, customers);
        const double how = rng.uniform();
        if (how < 0.5) {
          statement(out, t, conns[c], session[c], p_customer, customer_key(id), 1);
        } else if (how < 0.75) {
          statement(out, t, conns[c], session[c], p_orders, customer_key(id),
                    static_cast<uint64_t>(rng.integer(0, 25)));
        } else if (how < 0.85) {
          statement(out, t, conns[c], session[c], p_card, customer_key(id), 1);
        } else {
          statement(out, t, conns[c], session[c], p_login, customer_key(id) ^ 3, rng.integer(0, 1));
        }
      }
      for (size_t c = 0; c < conns.size(); ++c) {
        if (m < recycle[c]) continue;
        session_edge(out, m, conns[c], session[c], Kind::disconnect);
        session[c] = next_session();
        session_edge(out, m + 50, conns[c], session[c], Kind::connect);
        recycle[c] = m + static_cast<Ms>(rng.uniform(45, 75) * minute);
      }
    }
    // The newsletter: about 50,000 subscribers, 2,000 per page, paced.
    const size_t w = conns.size() - 1;
    Ms t = cal.at(d, 2.0) + static_cast<Ms>(rng.uniform(0, 120) * second);
    const int pages = static_cast<int>(rng.integer(24, 26));
    for (int p = 0; p < pages; ++p) {
      statement(out, t, conns[w], session[w], p_newsletter, static_cast<uint64_t>(p) * 2000, 2000);
      t += static_cast<Ms>(rng.uniform(8, 15) * second);
    }
    for (size_t c = 0; c < conns.size(); ++c)
      session_edge(out, day_end - 1, conns[c], session[c], Kind::disconnect);
  }

  // The admin: on a few weekdays, a short session of escalations, payment
  // checks, searches and the odd look at the employee table.
  void admin_day(int d, std::vector<Event>& out) {
    if (Calendar::weekend(d)) return;
    Rng rng(seed_of(seed_, static_cast<uint64_t>(d), 400));
    if (!rng.chance(0.45)) return;
    const double start = rng.uniform(9.5, 16.0);
    const uint64_t session = next_session();
    session_edge(out, cal.at(d, start), admin, session, Kind::connect);
    const int n = static_cast<int>(rng.integer(5, 15));
    double h = start;
    for (int k = 0; k < n; ++k) {
      h += rng.uniform(0.5, 4) / 60;
      const Ms t = cal.at(d, h);
      const double how = rng.uniform();
      if (how < 0.4) {
        statement(out, t, admin, session, d_customer, customer_key(rng.integer(1, customers)), 1);
      } else if (how < 0.7) {
        statement(out, t, admin, session, d_payments, customer_key(rng.integer(1, customers)),
                  static_cast<uint64_t>(rng.integer(1, 10)));
      } else if (how < 0.85) {
        statement(out, t, admin, session, d_search, rng.integer(1, 1000000),
                  static_cast<uint64_t>(rng.integer(0, 50)));
      } else {
        statement(out, t, admin, session, d_employees, rng.integer(1, 300), 1);
      }
    }
    session_edge(out, cal.at(d, h + 0.1), admin, session, Kind::disconnect);
  }

  LocalTime cal_zone_local(Ms t) const { return zone_->local(t / 1000); }

  const TimeZone* zone_;
  uint64_t seed_;
  uint64_t sessions_ = 0;
  uint64_t injected_sessions_ = uint64_t{1} << 62;
};

// --- Scenarios ------------------------------------------------------------------

struct Injection {
  std::string scenario;
  int day = 0;      // evaluation day
  double hour = 0;  // local time
  std::string who;  // description
  Ms start = 0;
  Ms end = 0;
  uint64_t session = 0;
  std::string user;
};

struct Scenario {
  std::string name;
  std::string description;
  Ms goal;  // time to detect
};

const std::vector<Scenario>& scenarios() {
  static const std::vector<Scenario> s = {
      {"bulk dump", "one statement streaming 100,000 customer rows at 20,000 rows/s", 1 * second},
      {"slow drip", "customer-by-customer enumeration at 2-4 lookups/s for 20 minutes", 60 * second},
      {"off-hours read", "a few ordinary look-ups at night or on the weekend", 60 * second},
      {"first-access burst", "reads of tables and categories the account never read", 60 * second},
      {"COPY export", "COPY of protected data TO STDOUT", 60 * second},
      {"probing", "distinct conditions on masked columns, or repeated refused statements", 60 * second},
      {"service account misuse", "the application's login from a new address or tool", 60 * second},
      {"paged dump", "900 rows at a time, under the per-statement limit, every 2-3 s", 60 * second},
  };
  return s;
}

// Builds the events of one injection and fills in its timing.
void inject(World& w, Injection& inj, int eval_first_day, std::vector<Event>& out) {
  const int d = eval_first_day + inj.day;
  const Ms t0 = w.cal.at(d, inj.hour);
  inj.start = t0;
  auto actor_of = [&](const std::string& user) -> uint32_t {
    for (uint32_t i = 0; i < w.actors.size(); ++i) {
      if (w.actors[i].who.user == user) return i;
    }
    return 0;
  };
  auto add = [&](Kind k, Ms t, uint32_t actor, uint16_t tmpl, uint64_t key, uint64_t rows, double rate) {
    Event e;
    e.t = t;
    e.kind = k;
    e.actor = actor;
    e.session = inj.session;
    e.tmpl = tmpl;
    e.key = key;
    e.rows = rows;
    e.rate = rate;
    e.injection = 1;
    out.push_back(e);
    inj.end = std::max(inj.end, t + static_cast<Ms>(static_cast<double>(rows) / rate * 1000));
  };
  inj.session = w.next_injected_session();
  Rng rng(seed_of(0xa77ac4, static_cast<uint64_t>(d), static_cast<uint64_t>(inj.hour * 100)));
  uint32_t a = actor_of(inj.user);
  const std::string& s = inj.scenario;
  if (s == "service account misuse") {
    // The app's login from somewhere else: inj.who holds "ip app".
    const auto sp = inj.who.find(' ');
    a = w.add_actor("app", {"app_services"}, inj.who.substr(0, sp), inj.who.substr(sp + 1));
  }
  // The session opens a little before the attack; time to detect counts
  // from the first malicious act (for a service account misused, the
  // connection itself).
  const bool analyst = inj.user.rfind("analyst", 0) == 0;
  add(Kind::connect, s == "service account misuse" ? t0 : t0 - 5 * second, a, 0, 0, 0, 1);
  if (s == "bulk dump") {
    const uint16_t tmpl = inj.user == "app" ? x_union : (inj.who == "filtered" ? x_dump_where : x_dump_all);
    add(Kind::statement, t0, a, tmpl, rng.integer(1, 1000000), 100000, 20000);
  } else if (s == "slow drip") {
    const double rate = inj.who == "2/s" ? 2 : inj.who == "3/s" ? 3 : 4;
    const int64_t first = rng.integer(1, customers - 5000);
    const int n = static_cast<int>(rate * 20 * 60);
    for (int k = 0; k < n; ++k) {
      // With the statement the account normally uses: nothing but the
      // enumeration itself is unusual.
      add(Kind::statement, t0 + static_cast<Ms>(k * 1000 / rate), a, analyst ? a_segment : s_by_id,
          detection_hash(std::to_string(first + k), 0x5bd1e995), 1, 50000);
    }
  } else if (s == "off-hours read") {
    for (int k = 0; k < 6; ++k) {
      add(Kind::statement, t0 + k * 40 * second, a, analyst ? a_segment : s_by_id,
          detection_hash(std::to_string(rng.integer(1, customers))), 1, 50000);
    }
  } else if (s == "first-access burst") {
    const uint16_t seq[] = {x_customer_all, x_payments, x_employees, x_customer_all, x_payments, x_employees};
    for (int k = 0; k < 20; ++k) {
      add(Kind::statement, t0 + k * 3 * second, a, seq[(k + (inj.who == "hr" ? 2 : 0)) % 6],
          detection_hash(std::to_string(rng.integer(1, customers))), 1, 50000);
    }
  } else if (s == "COPY export") {
    const uint16_t tmpl = inj.who == "query"      ? x_copy_query
                          : inj.who == "payments" ? x_copy_payments
                                                  : x_copy_table;
    add(Kind::statement, t0, a, tmpl, 0, 100000, 50000);
  } else if (s == "probing") {
    if (inj.who == "denials") {
      for (int k = 0; k < 20; ++k) {
        Event e;
        e.t = t0 + k * 3 * second;
        e.kind = Kind::denial;
        e.actor = a;
        e.session = inj.session;
        e.injection = 1;
        out.push_back(e);
        inj.end = std::max(inj.end, e.t);
      }
    } else {
      const double rate = inj.who == "email 2/s" ? 2 : 1;
      for (int k = 0; k < 90; ++k) {
        add(Kind::statement, t0 + static_cast<Ms>(k * 1000 / rate), a,
            inj.who == "email 2/s" ? x_email_probe : x_ssn_probe, detection_hash("probe" + std::to_string(k)),
            static_cast<uint64_t>(rng.integer(0, 40)), 50000);
      }
    }
  } else if (s == "service account misuse") {
    for (int k = 0; k < 5; ++k) {
      add(Kind::statement, t0 + (k + 1) * 20 * second, a, p_customer,
          detection_hash(std::to_string(rng.integer(1, customers))), 1, 50000);
    }
  } else if (s == "paged dump") {
    const double every = inj.who == "every 2s" ? 2 : 3;
    for (int k = 0; k < 60; ++k) {
      add(Kind::statement, t0 + static_cast<Ms>(k * every * 1000), a, analyst ? x_page_segment : x_page,
          static_cast<uint64_t>(k) * 900 + 1, 900, 50000);
    }
  }
  Event bye;
  bye.t = inj.end + second;
  bye.kind = Kind::disconnect;
  bye.actor = a;
  bye.session = inj.session;
  bye.injection = 1;
  out.push_back(bye);
}

std::vector<Injection> injections_for(const std::string& scenario, int eval_days) {
  struct Plan {
    const char* scenario;
    int day;
    double hour;
    const char* user;
    const char* who;
  };
  // Evaluation day 0 is the Monday after the training week (with the
  // default --train-days 7). Each scenario has an instance on day 0 or 1,
  // so a 2-day run still covers all of them.
  static const Plan plans[] = {
      {"bulk dump", 0, 10.33, "support2", "unfiltered"},
      {"bulk dump", 1, 11.67, "app", "sql injection"},
      {"bulk dump", 2, 15.08, "support5", "filtered"},
      {"bulk dump", 4, 3.17, "support1", "filtered"},
      {"slow drip", 0, 14.17, "support4", "3/s"},
      {"slow drip", 1, 9.5, "analyst2", "4/s"},
      {"slow drip", 3, 16.0, "support3", "2/s"},
      {"off-hours read", 0, 22.67, "support1", "weeknight"},
      {"off-hours read", 3, 23.5, "analyst3", "weeknight"},
      {"off-hours read", 5, 14.0, "support6", "Saturday"},
      {"first-access burst", 1, 10.08, "analyst1", "customers"},
      {"first-access burst", 2, 13.5, "support3", "hr"},
      {"first-access burst", 4, 9.17, "analyst3", "hr"},
      {"COPY export", 0, 16.75, "analyst2", "table"},
      {"COPY export", 2, 11.0, "support6", "query"},
      {"COPY export", 3, 15.5, "analyst1", "payments"},
      {"probing", 0, 11.5, "support4", "ssn 1/s"},
      {"probing", 2, 14.33, "support2", "denials"},
      {"probing", 4, 10.75, "analyst3", "email 2/s"},
      {"service account misuse", 0, 21.25, "app", "192.168.50.23 psql"},
      {"service account misuse", 1, 13.0, "app", "10.0.1.77 psql"},
      {"service account misuse", 3, 2.5, "app", "203.0.113.9 shop-web"},
      {"paged dump", 1, 15.5, "support5", "every 3s"},
      {"paged dump", 3, 10.17, "analyst2", "every 2s"},
  };
  std::vector<Injection> out;
  for (const auto& p : plans) {
    if (scenario != p.scenario || p.day >= eval_days) continue;
    Injection inj;
    inj.scenario = p.scenario;
    inj.day = p.day;
    inj.hour = p.hour;
    inj.user = p.user;
    inj.who = p.who;
    out.push_back(inj);
  }
  return out;
}

// --- Running -------------------------------------------------------------------------

struct Recorded {
  Alert alert;
  int injection = -1;  // index into the pass's injections, -1 = a false alert
};

struct Runner {
  World& world;
  std::vector<StatementFacts>& templates;
  Detector& detector;
  std::vector<Recorded> alerts;
  uint64_t statements = 0;
  uint64_t batches = 0;

  void record(std::vector<Alert>& got) {
    for (auto& a : got) alerts.push_back({std::move(a), -1});
    got.clear();
  }

  void run(std::vector<Event>& events) {
    std::stable_sort(events.begin(), events.end(), [](const Event& a, const Event& b) { return a.t < b.t; });
    std::vector<Alert> got;
    StatementFacts facts;
    for (const Event& e : events) {
      DetectIdentity& who = world.actors[e.actor].who;
      who.session_id = e.session;
      const TimePoint t{std::chrono::milliseconds(e.t)};
      switch (e.kind) {
        case Kind::connect: {
          auto a = detector.on_connect(who, t);
          record(a);
          break;
        }
        case Kind::disconnect: detector.on_disconnect(who); break;
        case Kind::denial: {
          auto a = detector.on_denial(who, "function_not_allowed", t);
          record(a);
          break;
        }
        case Kind::statement: {
          ++statements;
          // Only the key differs per statement; the template is reused
          // (the relay builds facts once per statement text, too).
          StatementFacts& f = templates[e.tmpl];
          f.key = e.key;
          StatementWatch watch = detector.on_statement(who, f, t, got);
          bool stopped = stop_requested(got);
          record(got);
          // Rows arrive in batches of 256 (a 64 KiB read of ~250-byte rows);
          // the relay checks the watch after each.
          uint64_t rows = 0;
          Ms now = e.t;
          while (!stopped && rows < e.rows) {
            rows = std::min(e.rows, rows + 256);
            ++batches;
            now = e.t + static_cast<Ms>(static_cast<double>(rows) / e.rate * 1000.0);
            if (watch.exceeded(rows, rows * 250)) {
              auto a = detector.limit_alert(who, f, watch, rows, rows * 250,
                                            TimePoint{std::chrono::milliseconds(now)});
              stopped = stop_requested(a);
              record(a);
            }
          }
          detector.on_statement_end(who, f, watch, rows, rows * 250,
                                    TimePoint{std::chrono::milliseconds(now)}, got);
          record(got);
          break;
        }
      }
    }
  }

  // cancel, terminate and block end the statement: the relay stops it.
  static bool stop_requested(const std::vector<Alert>& a) {
    return std::any_of(a.begin(), a.end(), [](const Alert& x) { return x.action != AlertAction::alert; });
  }
};

std::string fmt_seconds(Ms ms) {
  char buf[32];
  if (ms < 10 * second) {
    std::snprintf(buf, sizeof(buf), "%.2f s", static_cast<double>(ms) / 1000);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f s", static_cast<double>(ms) / 1000);
  }
  return buf;
}

struct Options {
  std::string config = PGCLOAK_EXFIL_EVAL_CONFIG;
  int train_days = 7;
  int days = 7;
  uint64_t seed = 20250317;
  std::string only;
  bool cost = true;
  bool verbose = false;
  double proxy_us_per_tx = 39.6;  // bench/results: pgcloak CPU per pgbench -S transaction (simple protocol)
};

// Whether an alert belongs to an injection: raised in its session, or by a
// per-user detector on the same user while it ran (its other sessions feel
// it too: windows, distinct counts, first reads).
bool belongs(const Alert& a, const Injection& inj) {
  if (a.session_id == inj.session) return true;
  const bool per_user =
      a.detector == "window_volume" || a.detector == "slow_drip" || a.detector == "first_access";
  const Ms at = std::chrono::duration_cast<std::chrono::milliseconds>(a.at.time_since_epoch()).count();
  return per_user && a.user == inj.user && at >= inj.start && at <= inj.end + hour;
}

Ms alert_ms(const Alert& a) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(a.at.time_since_epoch()).count();
}

void print_false_alerts(const std::vector<Recorded>& alerts, const Calendar& cal, bool verbose) {
  for (const auto& r : alerts) {
    if (r.injection >= 0) continue;
    if (!verbose) {
      std::printf("    %s  %-12s %-10s %s\n", cal.describe(alert_ms(r.alert)).c_str(), r.alert.rule.c_str(),
                  r.alert.user.c_str(), r.alert.message.c_str());
    }
  }
}

// Per-statement cost of the detector, the figure the pgbench -S budget is
// about: statements that read nothing protected (all of pgbench -S), and a
// protected point lookup through every rule.
void measure_cost(const std::shared_ptr<const DetectionConfig>& cfg,
                  const std::vector<StatementFacts>& templates, double proxy_us) {
  Detector d(cfg);
  DetectIdentity who;
  who.user = "app";
  who.roles = {"app", "app_services"};
  who.client_ip = "10.0.1.10";
  who.application_name = "shop-web";
  who.session_id = 1;
  std::vector<Alert> alerts;
  StatementFacts none;
  const TimePoint base{std::chrono::hours(24 * 20000)};
  auto time = [](auto&& body, int n) {
    const auto a = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) body(i);
    const auto b = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::nano>(b - a).count() / n;
  };
  uint64_t sink = 0;
  const double unprotected = time(
      [&](int i) {
        StatementWatch w = d.on_statement(who, none, base + std::chrono::milliseconds(i), alerts);
        sink += w.exceeded(1, 100);
        d.on_statement_end(who, none, w, 1, 100, base + std::chrono::milliseconds(i), alerts);
      },
      2000000);
  StatementFacts f = templates[p_customer];
  const double protected_lookup = time(
      [&](int i) {
        f.key = static_cast<uint64_t>(i);
        StatementWatch w = d.on_statement(who, f, base + std::chrono::milliseconds(i), alerts);
        sink += w.exceeded(1, 250);
        d.on_statement_end(who, f, w, 1, 250, base + std::chrono::milliseconds(i), alerts);
      },
      300000);
  StatementWatch w = d.on_statement(who, f, base, alerts);
  const double check = time([&](int i) { sink += w.exceeded(static_cast<uint64_t>(i), 250); }, 20000000);
  std::printf("\nCost per statement (this machine; %zu rules):\n", cfg->rules.size());
  std::printf(
      "  reads nothing protected (pgbench -S):  %7.1f ns  = %.3f%% of pgcloak's %.1f us per pgbench -S tx\n",
      unprotected, unprotected / (proxy_us * 10), proxy_us);
  std::printf("  protected point lookup, start + end:   %7.1f ns  = %.2f%%\n", protected_lookup,
              protected_lookup / (proxy_us * 10));
  std::printf("  per row batch while streaming:         %7.2f ns  (exceeded(): two integer compares)\n",
              check);
  if (sink == 42) std::printf(" ");
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--config") {
      opt.config = value();
    } else if (a == "--train-days") {
      opt.train_days = std::stoi(value());
    } else if (a == "--days") {
      opt.days = std::stoi(value());
    } else if (a == "--seed") {
      opt.seed = std::stoull(value());
    } else if (a == "--scenario") {
      opt.only = value();
    } else if (a == "--no-cost") {
      opt.cost = false;
    } else if (a == "--verbose") {
      opt.verbose = true;
    } else if (a == "--proxy-us-per-tx") {
      opt.proxy_us_per_tx = std::stod(value());
    } else {
      std::fprintf(
          stderr,
          "usage: exfil_eval [--config FILE] [--train-days N] [--days N] [--seed N] [--scenario NAME] "
          "[--no-cost] [--verbose] [--proxy-us-per-tx US]\n");
      return 2;
    }
  }
  if (opt.train_days < 2 || opt.days < 1 || opt.days > 28) {
    std::fprintf(stderr, "--train-days must be at least 2 (the warm-up) and --days 1..28\n");
    return 2;
  }
  auto load = load_config_file(opt.config);
  if (!load.ok()) {
    std::fprintf(stderr, "%s", load.format(opt.config).c_str());
    return 2;
  }
  auto cfg = std::make_shared<const DetectionConfig>(load.config.detection);
  auto templates = build_templates();
  const auto wall = std::chrono::steady_clock::now();

  // Training: the detector learns from normal traffic, as after deployment.
  World train_world(*cfg->time_zone, opt.seed);
  Detector trainee(cfg);
  Runner trainer{train_world, templates, trainee, {}, 0, 0};
  for (int d = 0; d < opt.train_days; ++d) {
    std::vector<Event> events;
    train_world.generate_day(d, events);
    trainer.run(events);
  }
  const TimePoint trained{std::chrono::milliseconds(train_world.cal.at(opt.train_days, 0))};
  if (opt.verbose) {
    for (const auto& n : train_world.notes) std::printf("training: %s\n", n.c_str());
    for (const auto& r : trainer.alerts) {
      std::printf("training alert: %s %s %s\n", train_world.cal.describe(alert_ms(r.alert)).c_str(),
                  r.alert.rule.c_str(), r.alert.message.c_str());
    }
  }
  // Through text, as through the state file across a restart.
  const std::string state = trainee.save_state(trained).dump();

  std::printf("pgcloak exfiltration detection: evaluation\n");
  std::printf("config %s (%zu rules), seed %llu\n", opt.config.c_str(), cfg->rules.size(),
              static_cast<unsigned long long>(opt.seed));
  std::printf("training %d days from %s, evaluation %d days from %s (%s)\n", opt.train_days,
              train_world.cal.describe(train_world.cal.at(0, 0)).c_str(), opt.days,
              train_world.cal.describe(train_world.cal.at(opt.train_days, 0)).c_str(),
              cfg->time_zone->name().c_str());
  std::printf(
      "training: %llu statements, %zu alerts (most rules learn during the warm-up), state %zu bytes\n",
      static_cast<unsigned long long>(trainer.statements), trainer.alerts.size(), state.size());

  // One evaluation pass: the trained state, the evaluation days' normal
  // traffic (identical in every pass), and the given injections.
  struct Pass {
    std::vector<Injection> injections;
    std::vector<Recorded> alerts;
    uint64_t statements = 0;
    std::vector<std::string> notes;
  };
  auto evaluate = [&](std::vector<Injection> injections) {
    World world(*cfg->time_zone, opt.seed);
    Detector det(cfg);
    auto st = det.load_state(nlohmann::json::parse(state));
    if (!st.ok()) {
      std::fprintf(stderr, "load_state: %s\n", st.error().message.c_str());
      std::exit(2);
    }
    Runner runner{world, templates, det, {}, 0, 0};
    for (int d = opt.train_days; d < opt.train_days + opt.days; ++d) {
      std::vector<Event> events;
      world.generate_day(d, events);
      for (auto& inj : injections) {
        if (opt.train_days + inj.day == d) inject(world, inj, opt.train_days, events);
      }
      runner.run(events);
    }
    Pass p;
    p.injections = std::move(injections);
    p.alerts = std::move(runner.alerts);
    p.statements = runner.statements;
    p.notes = std::move(world.notes);
    for (auto& r : p.alerts) {
      for (size_t i = 0; i < p.injections.size(); ++i) {
        if (belongs(r.alert, p.injections[i])) {
          r.injection = static_cast<int>(i);
          break;
        }
      }
    }
    return p;
  };

  bool ok = true;
  const Calendar& cal = train_world.cal;
  Pass clean = evaluate({});
  std::vector<int> per_day(static_cast<size_t>(opt.days));
  for (const auto& r : clean.alerts) {
    const Ms at = alert_ms(r.alert);
    for (int d = 0; d < opt.days; ++d) {
      if (at >= cal.at(opt.train_days + d, 0) && at < cal.at(opt.train_days + d + 1, 0))
        ++per_day[static_cast<size_t>(d)];
    }
  }
  const double false_rate = static_cast<double>(clean.alerts.size()) / opt.days;
  const int worst_day = per_day.empty() ? 0 : *std::max_element(per_day.begin(), per_day.end());
  std::printf(
      "\nNormal traffic only: %llu statements in %d days, %zu false alerts (%.2f per day, at most %d on one "
      "day)\n",
      static_cast<unsigned long long>(clean.statements), opt.days, clean.alerts.size(), false_rate,
      worst_day);
  print_false_alerts(clean.alerts, cal, false);
  if (opt.verbose) {
    for (const auto& n : clean.notes) std::printf("  evaluation: %s\n", n.c_str());
  }
  // "At most one false alert per simulated day": on average and on every day.
  if (false_rate > 1.0 || worst_day > 1) ok = false;

  std::printf("\n| %-22s | %-8s | %-14s | %-16s | %-9s | %-4s | %s\n", "scenario", "detected",
              "time to detect", "goal", "false/day", "met", "rules that fired");
  std::printf("|%s|%s|%s|%s|%s|%s|%s\n", std::string(24, '-').c_str(), std::string(10, '-').c_str(),
              std::string(16, '-').c_str(), std::string(18, '-').c_str(), std::string(11, '-').c_str(),
              std::string(6, '-').c_str(), std::string(18, '-').c_str());
  std::vector<std::string> details;
  for (const auto& sc : scenarios()) {
    if (!opt.only.empty() && opt.only != sc.name) continue;
    auto injections = injections_for(sc.name, opt.days);
    if (injections.empty()) continue;
    Pass p = evaluate(injections);
    int detected = 0;
    Ms worst = 0;
    std::set<std::string> fired;
    size_t unattributed = 0;
    for (const auto& r : p.alerts) {
      if (r.injection < 0) ++unattributed;
    }
    for (size_t i = 0; i < p.injections.size(); ++i) {
      const Injection& inj = p.injections[i];
      std::optional<Ms> first;
      std::string first_rule;
      std::set<std::string> rules;
      for (const auto& r : p.alerts) {
        if (r.injection != static_cast<int>(i)) continue;
        rules.insert(r.alert.rule);
        fired.insert(r.alert.rule);
        const Ms ttd = alert_ms(r.alert) - inj.start;
        if (!first || ttd < *first) {
          first = ttd;
          first_rule = r.alert.rule;
        } else if (ttd == *first && first_rule.find(r.alert.rule) == std::string::npos) {
          first_rule += ", " + r.alert.rule;  // raised at the same moment
        }
      }
      std::string rl;
      for (const auto& r : rules) rl += (rl.empty() ? "" : ", ") + r;
      char line[512];
      if (first) {
        ++detected;
        worst = std::max(worst, *first);
        std::snprintf(line, sizeof(line), "  %-24s %-15s %-10s %-22s detected after %-8s by %s (all: %s)%s",
                      sc.name.c_str(), cal.describe(inj.start).c_str(), inj.user.c_str(), inj.who.c_str(),
                      fmt_seconds(*first).c_str(), first_rule.c_str(), rl.c_str(),
                      *first > sc.goal ? "  <-- too slow" : "");
        if (*first > sc.goal) ok = false;
      } else {
        std::snprintf(line, sizeof(line), "  %-24s %-15s %-10s %-22s NOT DETECTED", sc.name.c_str(),
                      cal.describe(inj.start).c_str(), inj.user.c_str(), inj.who.c_str());
        ok = false;
      }
      details.push_back(line);
    }
    std::string rl;
    for (const auto& r : fired) rl += (rl.empty() ? "" : ", ") + r;
    char det[32];
    std::snprintf(det, sizeof(det), "%d/%zu", detected, p.injections.size());
    char fa[32];
    std::snprintf(fa, sizeof(fa), "%.2f", static_cast<double>(unattributed) / opt.days);
    const bool all = detected == static_cast<int>(p.injections.size());
    const bool met = all && worst <= sc.goal;
    const std::string goal = "<= " + fmt_seconds(sc.goal) + (sc.goal <= second ? " stream" : "");
    std::printf("| %-22s | %-8s | %-14s | %-16s | %-9s | %-4s | %s\n", sc.name.c_str(), det,
                detected > 0 ? ("max " + fmt_seconds(worst)).c_str() : "-", goal.c_str(), fa,
                met ? "yes" : "NO", rl.c_str());
  }
  std::printf("\nInjections (local time, %s):\n", cfg->time_zone->name().c_str());
  for (const auto& l : details) std::printf("%s\n", l.c_str());

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();
  std::printf("\nsimulated %d + %d days per pass in %.1f s of wall time\n", opt.train_days, opt.days, secs);
  if (opt.cost) measure_cost(cfg, templates, opt.proxy_us_per_tx);
  std::printf("\n%s\n", ok ? "all goals met" : "GOALS MISSED");
  return ok ? 0 : 1;
}
