#include "rules/detection.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "rules/protection.h"
#include "rules/session_policy.h"

namespace pgcloak::rules {

namespace {

using Ms = int64_t;  // milliseconds since the epoch, the unit of all state
constexpr Ms never = std::numeric_limits<Ms>::min();
constexpr Ms day_ms = 86400000;

Ms to_ms(TimePoint t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

TimePoint from_ms(Ms ms) {
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(std::chrono::milliseconds(ms)));
}

Ms floor_div(Ms a, Ms b) {
  Ms q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

uint64_t mix(uint64_t a, uint64_t b) {
  // splitmix64 finaliser over a combination: keys of different shapes or
  // slots must not collide just because one of the parts is equal.
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

std::string human_duration(std::chrono::seconds s) {
  const auto n = s.count();
  if (n % 86400 == 0) return std::to_string(n / 86400) + "d";
  if (n % 3600 == 0) return std::to_string(n / 3600) + "h";
  if (n % 60 == 0) return std::to_string(n / 60) + "m";
  return std::to_string(n) + "s";
}

// --- Sliding counts --------------------------------------------------------------
// A window is kept as four sub-buckets of a quarter window each, so counts
// cover the last 3/4 to 1 window at any moment: a fixed window would let a
// slow attack straddle its boundary and reset halfway, and exact sliding
// windows need every timestamp.
constexpr int sub_buckets = 4;

struct SlidingCount {
  Ms bucket = never;
  std::array<uint32_t, sub_buckets> counts{};
  uint32_t total = 0;

  void roll(Ms b) {
    if (bucket == never || b - bucket >= sub_buckets) {
      counts.fill(0);
      total = 0;
      bucket = b;
      return;
    }
    while (bucket < b) {
      ++bucket;
      auto& c = counts[static_cast<size_t>(bucket % sub_buckets)];
      total -= c;
      c = 0;
    }
  }
  uint32_t add(Ms now, Ms window) {
    roll(floor_div(now, std::max<Ms>(window / sub_buckets, 1)));
    ++counts[static_cast<size_t>(bucket % sub_buckets)];
    return ++total;
  }
};

// HyperLogLog (Flajolet et al. 2007, with the small-range linear counting
// correction) over the sliding window: one sketch per sub-bucket, and their
// register-wise maximum, which is the sketch of the union, i.e. of the
// keys seen in the window. An add updates two registers; the estimate is
// recomputed only when the union changed. p = 12: 4,096 one-byte registers
// per sketch, 20 KiB in all, standard error 1.04 / sqrt(4096) = 1.6 %.
class DistinctSketch {
 public:
  static constexpr int p = 12;
  static constexpr size_t m = size_t{1} << p;

  void add(size_t sub, uint64_t key) {
    const uint64_t h = mix(key);
    const size_t j = static_cast<size_t>(h >> (64 - p));
    const uint64_t w = h << p;
    const auto rho = static_cast<uint8_t>(w == 0 ? 64 - p + 1 : std::countl_zero(w) + 1);
    uint8_t& s = sub_[sub][j];
    if (rho > s) s = rho;
    uint8_t& u = union_[j];
    if (rho > u) {
      --histogram_[u];
      ++histogram_[rho];
      u = rho;
      estimate_ = -1;
    }
  }
  // A sub-bucket expired: forget its keys, and rebuild the union of the
  // others (once per quarter window).
  void clear(size_t sub) {
    sub_[sub].fill(0);
    union_.fill(0);
    for (const auto& s : sub_) {
      for (size_t j = 0; j < m; ++j) union_[j] = std::max(union_[j], s[j]);
    }
    histogram_.fill(0);
    for (const uint8_t r : union_) ++histogram_[r];
    estimate_ = -1;
  }
  uint32_t count() {
    if (estimate_ < 0) {
      double sum = 0;
      for (size_t r = 0; r < histogram_.size(); ++r)
        sum += std::ldexp(static_cast<double>(histogram_[r]), -static_cast<int>(r));
      const double md = static_cast<double>(m);
      double e = (0.7213 / (1 + 1.079 / md)) * md * md / sum;
      if (e <= 2.5 * md && histogram_[0] != 0) e = md * std::log(md / histogram_[0]);
      estimate_ = e;
    }
    return static_cast<uint32_t>(std::min(estimate_ + 0.5, double{std::numeric_limits<uint32_t>::max()}));
  }

 private:
  // Keys are FNV-1a hashes of statement text or parameters (detection_hash):
  // their high bits, which pick the register, need mixing (splitmix64's
  // finalizer).
  static uint64_t mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
  }
  std::array<std::array<uint8_t, m>, sub_buckets> sub_{};
  std::array<uint8_t, m> union_{};
  // How many union registers hold each value: the estimate's sum without a
  // pass over the registers.
  std::array<uint32_t, 64 - p + 2> histogram_{static_cast<uint32_t>(m)};
  double estimate_ = 0;
};

// Distinct keys over the same sliding window: exact (a map of each key's
// last sub-bucket) up to exact_keys keys, then a DistinctSketch. Counting
// exactly is what small limits (probing's 30 predicates, a slow_drip limit
// of a few hundred) need; past that, an exact set would cost a cache miss
// and 40 bytes per key (a walk of a million-row table: 40 MB per user),
// where the sketch costs 20 KiB and two byte stores. Back to exact when a
// whole window passes without a key.
struct DistinctWindow {
  static constexpr size_t exact_keys = 512;
  Ms bucket = never;
  std::array<uint32_t, sub_buckets> counts{};
  uint32_t total = 0;
  std::unordered_map<uint64_t, Ms> last;  // key -> sub-bucket it was last seen in
  std::unique_ptr<DistinctSketch> sketch;

  void roll(Ms b) {
    if (bucket == never || b - bucket >= sub_buckets) {
      counts.fill(0);
      total = 0;
      last.clear();
      sketch.reset();
      bucket = b;
      return;
    }
    while (bucket < b) {
      ++bucket;
      const auto i = static_cast<size_t>(bucket % sub_buckets);
      total -= counts[i];
      counts[i] = 0;
      if (sketch) sketch->clear(i);
    }
  }
  void sweep() {
    for (auto it = last.begin(); it != last.end();) {
      it = it->second <= bucket - sub_buckets ? last.erase(it) : std::next(it);
    }
  }
  uint32_t add(uint64_t key, Ms now, Ms window) {
    const Ms b = floor_div(now, std::max<Ms>(window / sub_buckets, 1));
    if (b > bucket || bucket == never) roll(b);  // a late event counts in the newest bucket
    const auto current = static_cast<size_t>(bucket % sub_buckets);
    if (sketch) {
      sketch->add(current, key);
      return sketch->count();
    }
    auto it = last.find(key);
    if (it != last.end() && it->second > bucket - sub_buckets) {
      if (it->second != bucket) {
        --counts[static_cast<size_t>(it->second % sub_buckets)];
        ++counts[current];
        it->second = bucket;
      }
      return total;
    }
    if (it == last.end() && last.size() >= exact_keys) {
      sweep();
      if (last.size() >= exact_keys) {
        // Every key of the window goes into the sketch of the sub-bucket
        // it was last seen in; the map's memory is given back.
        sketch = std::make_unique<DistinctSketch>();
        for (const auto& [k, kb] : last) sketch->add(static_cast<size_t>(kb % sub_buckets), k);
        std::unordered_map<uint64_t, Ms>().swap(last);
        sketch->add(current, key);
        return sketch->count();
      }
    }
    last[key] = bucket;
    ++counts[current];
    return ++total;
  }
};

// --- Baselines ---------------------------------------------------------------------
// Per (user, relation, rule): the totals of past windows in which the user
// read anything, kept in two rings (work hours, the rest), and the largest
// window of each of the last 8 days.
//
// Why a ring with a true median and MAD rather than an EWMA: per-window
// totals of people are heavy-tailed (a quiet minute, then a 500-row report),
// and an EWMA mean is dragged by every report while a median of the last 32
// active windows is not; 32 integers cost less than the cache lines an EWMA
// would touch anyway, and the median is only recomputed when a window
// closes. Why the 8-day peak on top: a legitimate pattern that recurs daily
// or weekly (the Monday report, the nightly batch) is far above the median
// by design; having seen it in the last 8 days makes 1.5x its size normal.
// Why two rings: nightly quiet must not make daytime normal look anomalous,
// and daytime volume must not hide a night-time burst.
constexpr size_t ring_size = 32;
constexpr size_t min_samples = 8;
constexpr size_t peak_days = 8;
constexpr double peak_margin = 1.5;
constexpr double mad_scale = 1.4826;  // MAD -> standard deviation for normal data
// A spread of at least 10% of the median: a perfectly steady account would
// otherwise alert on its first busy minute.
constexpr double min_relative_spread = 0.1;

struct Ring {
  std::array<uint32_t, ring_size> v{};
  uint8_t n = 0;
  uint8_t head = 0;
  void push(uint64_t x) {
    v[head] = static_cast<uint32_t>(std::min<uint64_t>(x, UINT32_MAX));
    head = static_cast<uint8_t>((head + 1) % ring_size);
    if (n < ring_size) ++n;
  }
};

struct VolumeState {
  uint32_t slot = 0;
  Ms first_seen = 0;
  Ms window = never;  // index of the current window
  uint64_t total = 0;
  bool alerted = false;
  double threshold = 0;  // for the current window
  std::array<Ring, 2> rings;
  std::array<std::pair<int32_t, uint32_t>, peak_days> peaks{};  // (UTC day + 1, largest window); 0 = none
};

struct RelationState {
  Ms first_read = 0;  // 0 = never read (the state exists for another reason)
  std::vector<VolumeState> volume;
  std::vector<std::pair<uint32_t, DistinctWindow>> drip;
};

struct ProbeState {
  uint32_t slot = 0;
  SlidingCount denials;
  DistinctWindow predicates;
};

struct SessionState {
  uint64_t id = 0;
  std::vector<ProbeState> probes;
};

constexpr size_t max_learned_clients = 64;
constexpr size_t max_sessions_per_user = 4096;
constexpr size_t max_categories_per_user = 1024;

}  // namespace

struct DetectorRules {
  struct Rule {
    const DetectionRule* rule = nullptr;
    uint32_t slot = 0;
    Ms window = 60000;
    Ms cooldown = 300000;
    Ms warmup = 0;
    const TimeZone* zone = nullptr;
  };
  std::shared_ptr<const DetectionConfig> config;
  std::vector<Rule> rules;
  const TimeZone* zone = nullptr;
  Ms max_cooldown = 0;
  size_t shard_cap = 0;
  bool active = false;
};

struct Detector::UserState {
  Ms first_seen = 0;
  Ms last_seen = 0;
  StringMap<RelationState> relations;
  StringMap<Ms> categories;  // first read
  std::vector<SessionState> sessions;
  Ms account_first_seen = 0;  // first on_connect
  std::vector<std::pair<std::string, Ms>> clients;
  std::vector<std::pair<std::string, Ms>> apps;
  std::unordered_map<uint64_t, Ms> cooldown;  // mix(slot, key) -> last alert
  Ms blocked_until = 0;
  size_t tracked() const { return 1 + relations.size(); }
};

struct Detector::Shard {
  mutable std::mutex mu;
  StringMap<UserState> users;
  size_t tracked = 0;
};

namespace {

bool has_role(const std::vector<std::string>& wanted, const DetectIdentity& who) {
  for (const auto& r : who.roles) {
    if (std::find(wanted.begin(), wanted.end(), r) != wanted.end()) return true;
  }
  return std::find(wanted.begin(), wanted.end(), who.user) != wanted.end();
}

bool role_match(const DetectionRule& r, const DetectIdentity& who) {
  if (!r.exclude_roles.empty() && has_role(r.exclude_roles, who)) return false;
  return r.roles.empty() || has_role(r.roles, who);
}

bool in_scope(const DetectionRule& r, const ProtectedRead& read) {
  if (!r.relations.empty() &&
      std::find(r.relations.begin(), r.relations.end(), read.relation) == r.relations.end())
    return false;
  if (r.categories.empty()) return true;
  return std::any_of(read.categories.begin(), read.categories.end(), [&](const std::string& c) {
    return std::find(r.categories.begin(), r.categories.end(), c) != r.categories.end();
  });
}

std::string scoped_categories(const DetectionRule& r, const ProtectedRead& read) {
  if (r.categories.empty()) return join(read.categories);
  std::vector<std::string> out;
  for (const auto& c : read.categories) {
    if (std::find(r.categories.begin(), r.categories.end(), c) != r.categories.end()) out.push_back(c);
  }
  return join(out);
}

bool schedule_allows(const std::vector<ScheduleSlot>& slots, const LocalTime& lt) {
  const unsigned prev_day = (lt.weekday + 6) % 7;
  for (const auto& s : slots) {
    if (s.from_minute < s.to_minute) {
      if ((s.days >> lt.weekday & 1U) != 0 && lt.minute_of_day >= s.from_minute &&
          lt.minute_of_day < s.to_minute)
        return true;
    } else {
      // Spans midnight: belongs to the day it starts on.
      if ((s.days >> lt.weekday & 1U) != 0 && lt.minute_of_day >= s.from_minute) return true;
      if ((s.days >> prev_day & 1U) != 0 && lt.minute_of_day < s.to_minute) return true;
    }
  }
  return false;
}

// 0 = work hours (Monday to Friday, 07:00-19:00 local), 1 = the rest.
unsigned rhythm_class(const TimeZone& zone, Ms at) {
  const LocalTime lt = zone.local(floor_div(at, 1000));
  return lt.weekday < 5 && lt.minute_of_day >= 7 * 60 && lt.minute_of_day < 19 * 60 ? 0 : 1;
}

double median_of(std::vector<double>& v) {
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(mid), v.end());
  double m = v[mid];
  if (v.size() % 2 == 0) m = (m + *std::max_element(v.begin(), v.begin() + static_cast<long>(mid))) / 2;
  return m;
}

double compute_threshold(const VolumeState& v, const DetectionRule& r, unsigned klass, Ms at) {
  std::vector<double> samples;
  const Ring* use[2] = {&v.rings[klass], nullptr};
  if (v.rings[klass].n < min_samples) {
    use[0] = &v.rings[0];
    use[1] = &v.rings[1];
  }
  for (const Ring* ring : use) {
    if (ring == nullptr) continue;
    for (size_t i = 0; i < ring->n; ++i) samples.push_back(ring->v[i]);
  }
  double stat = 0;
  if (samples.size() >= min_samples) {
    const double med = median_of(samples);
    for (auto& x : samples) x = std::abs(x - med);
    const double mad = std::max({median_of(samples), min_relative_spread * med, 1.0});
    stat = med + r.sensitivity * mad_scale * mad;
  }
  const auto today = static_cast<int32_t>(floor_div(at, day_ms));
  uint32_t peak = 0;
  for (const auto& [day, value] : v.peaks) {
    if (day != 0 && day - 1 > today - static_cast<int32_t>(peak_days)) peak = std::max(peak, value);
  }
  return std::max({static_cast<double>(r.floor_rows), stat, peak_margin * peak});
}

// Closes windows up to `now`: the closed window's total is learned (capped
// at its threshold if it alerted, so an attack does not teach its own size)
// and the new window's threshold computed.
void roll_window(VolumeState& v, const DetectorRules::Rule& ri, const TimeZone& zone, Ms now) {
  const Ms idx = floor_div(now, ri.window);
  if (v.window != never && idx <= v.window) return;  // late events count in the current window
  if (v.window != never && v.total > 0) {
    const Ms start = v.window * ri.window;
    const uint64_t learned =
        v.alerted ? std::min<uint64_t>(v.total, static_cast<uint64_t>(v.threshold)) : v.total;
    v.rings[rhythm_class(zone, start)].push(learned);
    const auto day = static_cast<int32_t>(floor_div(start, day_ms));
    auto& slot = v.peaks[static_cast<size_t>(day % static_cast<int32_t>(peak_days))];
    if (slot.first != day + 1) slot = {day + 1, 0};
    slot.second = std::max(slot.second, static_cast<uint32_t>(std::min<uint64_t>(learned, UINT32_MAX)));
  }
  v.window = idx;
  v.total = 0;
  v.alerted = false;
  v.threshold = compute_threshold(v, *ri.rule, rhythm_class(zone, idx * ri.window), idx * ri.window);
}

VolumeState& volume_state(RelationState& rs, const DetectorRules::Rule& ri, Ms now) {
  for (auto& v : rs.volume) {
    if (v.slot == ri.slot) return v;
  }
  rs.volume.emplace_back();
  rs.volume.back().slot = ri.slot;
  rs.volume.back().first_seen = now;
  return rs.volume.back();
}

DistinctWindow& drip_state(RelationState& rs, uint32_t slot) {
  for (auto& [s, d] : rs.drip) {
    if (s == slot) return d;
  }
  rs.drip.emplace_back(slot, DistinctWindow{});
  return rs.drip.back().second;
}

ProbeState& probe_state(SessionState& ss, uint32_t slot) {
  for (auto& p : ss.probes) {
    if (p.slot == slot) return p;
  }
  ss.probes.emplace_back();
  ss.probes.back().slot = slot;
  return ss.probes.back();
}

bool learned(const std::vector<std::pair<std::string, Ms>>& v, std::string_view what) {
  return std::any_of(v.begin(), v.end(), [&](const auto& e) { return e.first == what; });
}

void learn(std::vector<std::pair<std::string, Ms>>& v, std::string_view what, Ms now) {
  if (learned(v, what) || v.size() >= max_learned_clients) return;
  v.emplace_back(std::string(what), now);
}

bool client_listed(const DetectionRule& r, std::string_view ip) {
  auto addr = parse_ip(ip);
  if (!addr) return false;
  return std::any_of(r.clients.begin(), r.clients.end(), [&](const Cidr& c) { return c.contains(*addr); });
}

}  // namespace

// --- Facts ---------------------------------------------------------------------------

uint64_t detection_hash(std::string_view bytes, uint64_t seed) {
  uint64_t h = seed;
  for (const char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t fingerprint_value(std::string_view fp) {
  uint64_t v = 0;
  if (fp.empty() || fp.size() > 16) return 0;
  for (const char c : fp) {
    unsigned d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<unsigned>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<unsigned>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      d = static_cast<unsigned>(c - 'A' + 10);
    } else {
      return 0;
    }
    v = v << 4 | d;
  }
  return v;
}

StatementFacts statement_facts(const StatementAudit& audit, const Protection& protection,
                               const SessionPolicy* policy) {
  StatementFacts f;
  f.statement_class = audit.audit_class;
  f.shape = fingerprint_value(audit.fingerprint);
  if (audit.parse_error || audit.protected_refs.empty()) return f;
  // DECLARE CURSOR is MISC to pgAudit, but its query's rows come back
  // through FETCH: it reads what its query reads.
  if (audit.audit_class != AuditClass::read && audit.audit_class != AuditClass::write &&
      audit.cursor_op != StatementAudit::CursorOp::declare)
    return f;
  if (audit.copy && audit.copy->from) return f;
  f.copy_to = audit.copy.has_value();
  // Per configured table: its categories, and whether any relation that
  // maps to it was read unfiltered.
  std::vector<std::pair<std::string, std::set<std::string>>> tables;
  std::set<std::string> unfiltered;
  auto table = [&](const QualifiedColumn& c) -> std::set<std::string>& {
    std::string name = c.schema + "." + c.table;
    for (auto& [n, cats] : tables) {
      if (n == name) return cats;
    }
    tables.emplace_back(std::move(name), std::set<std::string>{});
    return tables.back().second;
  };
  for (const auto& [oid, index] : audit.protected_refs) {
    const RelationProtection* rp = protection.find(oid);
    if (rp == nullptr || index >= rp->columns.size()) continue;
    const auto& col = rp->columns[index];
    const std::string read_name = rp->relation->schema + "." + rp->relation->name;
    const bool read_unfiltered =
        std::find(audit.unfiltered_relations.begin(), audit.unfiltered_relations.end(), read_name) !=
        audit.unfiltered_relations.end();
    if (col.category) {
      table(col.source).insert(*col.category);
      if (read_unfiltered) unfiltered.insert(col.source.schema + "." + col.source.table);
    }
    for (const auto& [src, category] : col.derived_from) {
      table(src).insert(category);
      if (read_unfiltered) unfiltered.insert(src.schema + "." + src.table);
    }
  }
  for (auto& [name, cats] : tables) {
    ProtectedRead r;
    r.unfiltered = unfiltered.count(name) != 0;
    r.relation = std::move(name);
    r.categories.assign(cats.begin(), cats.end());
    f.reads.push_back(std::move(r));
  }
  if (policy != nullptr) {
    for (const auto& [oid, index] : audit.predicate_refs) {
      const RelationMasks* m = policy->masks_for(oid);
      if (m == nullptr || index >= m->specs.size()) continue;
      if (m->specs[index].kind != MaskKind::allow || m->refused[index]) {
        f.predicate_on_masked = true;
        break;
      }
    }
  }
  return f;
}

const StatementFacts& StatementFactsCache::get(const std::shared_ptr<const StatementAudit>& audit,
                                               const std::shared_ptr<const Protection>& protection,
                                               const SessionPolicy* policy) {
  if (protection != protection_) {
    map_.clear();
    protection_ = protection;
  }
  const uint64_t policy_id = policy != nullptr ? policy->id() : 0;
  auto it = map_.find(audit.get());
  if (it != map_.end()) {
    for (const Entry& e : it->second) {
      if (e.policy_id == policy_id) return e.facts;
    }
    if (it->second.size() >= 16) it->second.clear();  // policies replaced many times over
  } else {
    if (map_.size() >= max_entries_) map_.clear();
    it = map_.emplace(audit.get(), std::vector<Entry>{}).first;
  }
  it->second.push_back({audit, policy_id, statement_facts(*audit, *protection, policy)});
  return it->second.back().facts;
}

void StatementWatch::rearm() {
  max_rows = std::numeric_limits<uint64_t>::max();
  max_bytes = std::numeric_limits<uint64_t>::max();
  for (size_t i = 0; i < count; ++i) {
    const Limit& l = limits[i];
    if (l.fired) continue;
    uint64_t& m = l.bytes ? max_bytes : max_rows;
    m = std::min(m, l.value);
  }
}

// --- Detector ------------------------------------------------------------------------

Detector::Detector(std::shared_ptr<const DetectionConfig> config) : shards_(new Shard[shard_count]) {
  reload(std::move(config));
}

Detector::~Detector() = default;

// Caller holds compile_mu_.
std::shared_ptr<const DetectorRules> Detector::compile(std::shared_ptr<const DetectionConfig> config) {
  if (config == nullptr) config = std::make_shared<DetectionConfig>();
  auto out = std::make_shared<DetectorRules>();
  out->config = config;
  out->zone = config->time_zone != nullptr ? config->time_zone.get() : TimeZone::utc().get();
  out->active = config->enabled && !config->rules.empty();
  out->shard_cap = std::max<size_t>(static_cast<size_t>(config->max_tracked / shard_count), 4);
  for (const auto& r : config->rules) {
    DetectorRules::Rule ri;
    ri.rule = &r;
    ri.window = std::max<Ms>(std::chrono::duration_cast<std::chrono::milliseconds>(r.window).count(), 1000);
    ri.cooldown = std::chrono::duration_cast<std::chrono::milliseconds>(r.cooldown).count();
    ri.warmup = std::chrono::duration_cast<std::chrono::milliseconds>(r.warmup).count();
    ri.zone = r.time_zone != nullptr ? r.time_zone.get() : out->zone;
    // State is keyed by name, detector and window: a rule whose window
    // changed must not compare against baselines of another window length.
    const std::string id =
        r.name + "/" + std::string(detector_name(r.detector)) + "/" + std::to_string(r.window.count());
    auto it = std::find(slot_ids_.begin(), slot_ids_.end(), id);
    if (it == slot_ids_.end()) {
      slot_ids_.push_back(id);
      it = slot_ids_.end() - 1;
    }
    ri.slot = static_cast<uint32_t>(it - slot_ids_.begin());
    out->max_cooldown = std::max(out->max_cooldown, ri.cooldown);
    out->rules.push_back(ri);
  }
  return out;
}

void Detector::reload(std::shared_ptr<const DetectionConfig> config) {
  std::lock_guard lock(compile_mu_);  // two reloads store their rules and flag in one order
  auto compiled = compile(std::move(config));
  const bool active = compiled->active;
  rules_.store(std::move(compiled));
  active_.store(active, std::memory_order_relaxed);
}

std::shared_ptr<const DetectionConfig> Detector::config() const {
  return rules()->config;
}

std::shared_ptr<const DetectorRules> Detector::rules() const {
  return rules_.load();
}

Detector::Shard& Detector::shard_for(std::string_view user) const {
  return shards_[std::hash<std::string_view>{}(user) % shard_count];
}

int64_t Detector::started(int64_t now_ms) {
  int64_t s = started_ms_.load(std::memory_order_relaxed);
  if (s != 0) return s;
  started_ms_.compare_exchange_strong(s, now_ms);
  return started_ms_.load();
}

Detector::UserState& Detector::user_state(Shard& s, const DetectIdentity& who, int64_t now,
                                          const DetectorRules& rules) {
  auto it = s.users.find(std::string_view(who.user));
  if (it == s.users.end()) {
    if (s.tracked + 1 > rules.shard_cap && !s.users.empty()) {
      // Forget the least recently active eighth of this shard's users: one
      // O(n) pass per eviction round, not per statement.
      std::vector<std::pair<Ms, const std::string*>> by_age;
      by_age.reserve(s.users.size());
      for (const auto& [name, u] : s.users) by_age.emplace_back(u.last_seen, &name);
      const size_t drop = std::max<size_t>(by_age.size() / 8, 1);
      std::nth_element(by_age.begin(), by_age.begin() + static_cast<long>(drop - 1), by_age.end());
      std::vector<std::string> victims;
      for (size_t i = 0; i < drop; ++i) victims.push_back(*by_age[i].second);
      for (const auto& v : victims) {
        auto vit = s.users.find(v);
        s.tracked -= vit->second.tracked();
        s.users.erase(vit);
      }
      evicted_.fetch_add(drop, std::memory_order_relaxed);
    }
    it = s.users.emplace(who.user, UserState{}).first;
    it->second.first_seen = now;
    s.tracked += 1;
  }
  it->second.last_seen = std::max(it->second.last_seen, now);
  return it->second;
}

namespace {

// Everything an alert needs from the context it is raised in.
struct AlertContext {
  const DetectIdentity& who;
  Ms now;
  std::vector<Alert>& out;
};

// Raises an alert unless an alert-only rule raised the same one within its
// cooldown. Rules that act report every act: the operator must see each
// cancelled statement and each block.
bool emit(std::unordered_map<uint64_t, Ms>& cooldown, Ms& blocked_until, const DetectorRules::Rule& ri,
          Ms max_cooldown, std::string_view key, AlertContext& ctx, std::string relation,
          std::string category, double observed, double baseline, std::string message) {
  const DetectionRule& r = *ri.rule;
  if (r.action == AlertAction::alert && ri.cooldown > 0) {
    const uint64_t k = mix(ri.slot, detection_hash(key));
    auto it = cooldown.find(k);
    if (it != cooldown.end() && ctx.now - it->second < ri.cooldown && ctx.now >= it->second) return false;
    if (cooldown.size() > 256) {
      for (auto c = cooldown.begin(); c != cooldown.end();) {
        c = ctx.now - c->second >= max_cooldown ? cooldown.erase(c) : std::next(c);
      }
    }
    cooldown[k] = ctx.now;
  }
  if (r.action == AlertAction::block) {
    blocked_until = std::max(blocked_until, ctx.now + static_cast<Ms>(r.block_for.count()) * 1000);
  }
  Alert a;
  a.rule = r.name;
  a.detector = std::string(detector_name(r.detector));
  a.action = r.action;
  a.user = ctx.who.user;
  a.client_ip = ctx.who.client_ip;
  a.application_name = ctx.who.application_name;
  a.relation = std::move(relation);
  a.category = std::move(category);
  a.observed = observed;
  a.baseline = baseline;
  a.session_id = ctx.who.session_id;
  a.at = from_ms(ctx.now);
  if (r.action == AlertAction::block) a.block_for = r.block_for;
  a.message = std::move(message);
  ctx.out.push_back(std::move(a));
  return true;
}

}  // namespace

std::vector<Alert> Detector::on_connect(const DetectIdentity& who, TimePoint now_tp) {
  std::vector<Alert> out;
  auto rules = this->rules();
  if (!rules->active) return out;
  const Ms now = to_ms(now_tp);
  started(now);
  bool any = false;
  for (const auto& ri : rules->rules) {
    if (ri.rule->detector == DetectorKind::service_account && role_match(*ri.rule, who)) any = true;
  }
  if (!any) return out;
  Shard& s = shard_for(who.user);
  std::lock_guard lock(s.mu);
  UserState& u = user_state(s, who, now, *rules);
  if (u.account_first_seen == 0) u.account_first_seen = now;
  AlertContext ctx{who, now, out};
  auto raise = [&](UserState& usr, const DetectorRules::Rule& ri, std::string_view key, std::string relation,
                   std::string category, double observed, double baseline, std::string message) {
    emit(usr.cooldown, usr.blocked_until, ri, rules->max_cooldown, key, ctx, std::move(relation),
         std::move(category), observed, baseline, std::move(message));
  };
  const std::string client = who.client_ip.empty() ? std::string("local") : who.client_ip;
  for (const auto& ri : rules->rules) {
    const DetectionRule& r = *ri.rule;
    if (r.detector != DetectorKind::service_account || !role_match(r, who)) continue;
    const bool check_client = !r.clients.empty() || r.learn;
    const bool check_app = !r.application_names.empty() || r.learn;
    const bool client_ok =
        !check_client || client_listed(r, who.client_ip) || (r.learn && learned(u.clients, client));
    const bool app_ok = !check_app ||
                        std::find(r.application_names.begin(), r.application_names.end(),
                                  who.application_name) != r.application_names.end() ||
                        (r.learn && learned(u.apps, who.application_name));
    if (r.learn && now - u.account_first_seen < ri.warmup) {
      // Learning: what the account does now is its normal.
      if (!client_ok) learn(u.clients, client, now);
      if (!app_ok) learn(u.apps, who.application_name, now);
      continue;
    }
    if (!client_ok) {
      raise(u, ri, "client:" + client, std::string(), std::string(), 0, 0,
            "service account " + who.user + " connected from " + client +
                ", an address it does not use (rule " + r.name + ")");
    }
    if (!app_ok) {
      raise(u, ri, "app:" + who.application_name, std::string(), std::string(), 0, 0,
            "service account " + who.user + " connected with application_name \"" + who.application_name +
                "\", which it does not use (rule " + r.name + ")");
    }
  }
  return out;
}

void Detector::on_disconnect(const DetectIdentity& who) {
  Shard& s = shard_for(who.user);
  std::lock_guard lock(s.mu);
  auto it = s.users.find(std::string_view(who.user));
  if (it == s.users.end()) return;
  auto& sessions = it->second.sessions;
  sessions.erase(std::remove_if(sessions.begin(), sessions.end(),
                                [&](const SessionState& ss) { return ss.id == who.session_id; }),
                 sessions.end());
}

namespace {

SessionState& session_state(std::vector<SessionState>& sessions, uint64_t id) {
  for (auto& ss : sessions) {
    if (ss.id == id) return ss;
  }
  // A proxy that never calls on_disconnect must not grow this forever.
  if (sessions.size() >= max_sessions_per_user) sessions.erase(sessions.begin());
  sessions.emplace_back();
  sessions.back().id = id;
  return sessions.back();
}

}  // namespace

std::vector<Alert> Detector::on_denial(const DetectIdentity& who, std::string_view denial_rule,
                                       TimePoint now_tp) {
  std::vector<Alert> out;
  auto rules = this->rules();
  if (!rules->active) return out;
  const Ms now = to_ms(now_tp);
  started(now);
  Shard& s = shard_for(who.user);
  std::lock_guard lock(s.mu);
  UserState* u = nullptr;
  AlertContext ctx{who, now, out};
  auto raise = [&](UserState& usr, const DetectorRules::Rule& ri, std::string_view key, std::string relation,
                   std::string category, double observed, double baseline, std::string message) {
    emit(usr.cooldown, usr.blocked_until, ri, rules->max_cooldown, key, ctx, std::move(relation),
         std::move(category), observed, baseline, std::move(message));
  };
  for (const auto& ri : rules->rules) {
    const DetectionRule& r = *ri.rule;
    if (r.detector != DetectorKind::probing || r.max_denials == 0 || !role_match(r, who)) continue;
    if (u == nullptr) u = &user_state(s, who, now, *rules);
    ProbeState& p = probe_state(session_state(u->sessions, who.session_id), ri.slot);
    const uint32_t n = p.denials.add(now, ri.window);
    if (n > r.max_denials) {
      raise(*u, ri, "session:" + std::to_string(who.session_id), std::string(), std::string(), n,
            static_cast<double>(r.max_denials),
            std::to_string(n) + " refused statements in one session within " + human_duration(r.window) +
                " (limit " + std::to_string(r.max_denials) + "; last refusal: " + std::string(denial_rule) +
                ")");
    }
  }
  return out;
}

StatementWatch Detector::on_statement(const DetectIdentity& who, const StatementFacts& facts,
                                      TimePoint now_tp, std::vector<Alert>& alerts) {
  StatementWatch w;
  if (facts.reads.empty()) return w;  // the common case: nothing protected, nothing to do
  auto rules = this->rules();
  if (!rules->active) return w;
  const Ms now = to_ms(now_tp);
  const Ms start = started(now);
  Shard& s = shard_for(who.user);
  std::lock_guard lock(s.mu);
  UserState& u = user_state(s, who, now, *rules);
  AlertContext ctx{who, now, alerts};
  auto raise = [&](UserState& usr, const DetectorRules::Rule& ri, std::string_view key, std::string relation,
                   std::string category, double observed, double baseline, std::string message) {
    emit(usr.cooldown, usr.blocked_until, ri, rules->max_cooldown, key, ctx, std::move(relation),
         std::move(category), observed, baseline, std::move(message));
  };
  auto relation = [&](const std::string& name) -> RelationState& {
    auto it = u.relations.find(std::string_view(name));
    if (it != u.relations.end()) return it->second;
    s.tracked += 1;
    return u.relations.emplace(name, RelationState{}).first->second;
  };
  auto add_limit = [&](uint32_t rule, size_t read, bool bytes, uint64_t value, double baseline,
                       uint64_t offset) {
    if (w.count >= StatementWatch::max_limits) return;
    StatementWatch::Limit& l = w.limits[w.count++];
    l.rule = rule;
    l.read = static_cast<uint16_t>(std::min<size_t>(read, UINT16_MAX));
    l.bytes = bytes;
    l.value = value;
    l.baseline = baseline;
    l.offset = offset;
  };
  const uint64_t lookup = mix(facts.shape, facts.key);

  for (uint32_t i = 0; i < rules->rules.size(); ++i) {
    const DetectorRules::Rule& ri = rules->rules[i];
    const DetectionRule& r = *ri.rule;
    if (r.detector == DetectorKind::service_account || !role_match(r, who)) continue;
    switch (r.detector) {
      case DetectorKind::statement_volume:
        for (size_t k = 0; k < facts.reads.size(); ++k) {
          if (!in_scope(r, facts.reads[k])) continue;
          if (r.max_rows != 0) add_limit(i, k, false, r.max_rows, static_cast<double>(r.max_rows), 0);
          if (r.max_bytes != 0) add_limit(i, k, true, r.max_bytes, static_cast<double>(r.max_bytes), 0);
          break;
        }
        break;
      case DetectorKind::window_volume:
        for (size_t k = 0; k < facts.reads.size(); ++k) {
          if (!in_scope(r, facts.reads[k])) continue;
          VolumeState& v = volume_state(relation(facts.reads[k].relation), ri, now);
          roll_window(v, ri, *rules->zone, now);
          if (now - v.first_seen < ri.warmup || v.alerted) continue;
          const auto threshold = static_cast<uint64_t>(v.threshold);
          if (v.total < threshold) add_limit(i, k, false, threshold - v.total, v.threshold, v.total);
        }
        break;
      case DetectorKind::slow_drip:
        for (const auto& read : facts.reads) {
          if (!in_scope(r, read)) continue;
          DistinctWindow& d = drip_state(relation(read.relation), ri.slot);
          const uint32_t n = d.add(lookup, now, ri.window);
          if (n > r.max_distinct) {
            raise(u, ri, read.relation, read.relation, scoped_categories(r, read), n,
                  static_cast<double>(r.max_distinct),
                  std::to_string(n) + " distinct lookups of " + read.relation + " within " +
                      human_duration(r.window) + " (limit " + std::to_string(r.max_distinct) + ")");
          }
        }
        break;
      case DetectorKind::first_access: {
        if (now - start < ri.warmup) break;
        for (const auto& read : facts.reads) {
          if (!in_scope(r, read)) continue;
          auto rel = u.relations.find(std::string_view(read.relation));
          if (rel == u.relations.end() || rel->second.first_read == 0) {
            raise(u, ri, read.relation, read.relation, scoped_categories(r, read), 1, 0,
                  who.user + " read " + read.relation + " for the first time");
            break;
          }
          std::string fresh;
          for (const auto& c : read.categories) {
            if (!r.categories.empty() &&
                std::find(r.categories.begin(), r.categories.end(), c) == r.categories.end())
              continue;
            if (u.categories.find(std::string_view(c)) == u.categories.end()) fresh = c;
          }
          if (!fresh.empty()) {
            raise(u, ri, "category:" + fresh, read.relation, fresh, 1, 0,
                  who.user + " read category " + fresh + " (in " + read.relation + ") for the first time");
            break;
          }
        }
        break;
      }
      case DetectorKind::off_hours: {
        const LocalTime lt = ri.zone->local(floor_div(now, 1000));
        if (schedule_allows(r.allowed, lt)) break;
        for (const auto& read : facts.reads) {
          if (!in_scope(r, read)) continue;
          char clock[16];
          (void)std::snprintf(clock, sizeof(clock), "%02u:%02u", lt.minute_of_day / 60,
                              lt.minute_of_day % 60);
          static constexpr const char* days[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
          // Keyed by user, not relation: the event is someone working at
          // night, and one late evening should be one alert, not one per table.
          raise(u, ri, "", read.relation, scoped_categories(r, read), 0, 0,
                who.user + " read " + read.relation + " on " + days[lt.weekday] + " at " + clock + " " +
                    ri.zone->name() + ", outside the allowed hours");
          break;
        }
        break;
      }
      case DetectorKind::bulk_export:
        for (size_t k = 0; k < facts.reads.size(); ++k) {
          const ProtectedRead& read = facts.reads[k];
          if (!in_scope(r, read)) continue;
          if (facts.copy_to && r.copy_to) {
            raise(u, ri, read.relation, read.relation, scoped_categories(r, read), 0, 0,
                  "COPY TO of protected data from " + read.relation);
            break;
          }
          if (read.unfiltered && r.full_scan) {
            if (r.min_rows == 0) {
              raise(u, ri, read.relation, read.relation, scoped_categories(r, read), 0, 0,
                    "unfiltered read of " + read.relation + " (no WHERE, JOIN condition or LIMIT)");
            } else {
              add_limit(i, k, false, r.min_rows - 1, static_cast<double>(r.min_rows), 0);
            }
            break;
          }
        }
        break;
      case DetectorKind::probing: {
        if (!facts.predicate_on_masked || r.max_predicates == 0) break;
        const ProtectedRead* read = nullptr;
        for (const auto& rd : facts.reads) {
          if (in_scope(r, rd)) {
            read = &rd;
            break;
          }
        }
        if (read == nullptr) break;
        ProbeState& p = probe_state(session_state(u.sessions, who.session_id), ri.slot);
        const uint32_t n = p.predicates.add(lookup, now, ri.window);
        if (n > r.max_predicates) {
          raise(u, ri, "session:" + std::to_string(who.session_id), read->relation,
                scoped_categories(r, *read), n, static_cast<double>(r.max_predicates),
                std::to_string(n) + " distinct conditions on masked columns in one session within " +
                    human_duration(r.window) + " (limit " + std::to_string(r.max_predicates) + ")");
        }
        break;
      }
      case DetectorKind::service_account: break;
    }
  }
  // History for first_access, after the rules looked at it.
  for (const auto& read : facts.reads) {
    RelationState& rs = relation(read.relation);
    if (rs.first_read == 0) rs.first_read = now;
    for (const auto& c : read.categories) {
      if (u.categories.size() < max_categories_per_user) u.categories.try_emplace(c, now);
    }
  }
  if (w.count != 0) {
    w.rules = std::move(rules);
    w.rearm();
  }
  return w;
}

std::vector<Alert> Detector::limit_alert(const DetectIdentity& who, const StatementFacts& facts,
                                         StatementWatch& watch, uint64_t rows, uint64_t bytes,
                                         TimePoint now_tp) {
  std::vector<Alert> out;
  if (watch.rules == nullptr) return out;
  const auto& rules = watch.rules;
  const Ms now = to_ms(now_tp);
  Shard& s = shard_for(who.user);
  std::lock_guard lock(s.mu);
  UserState& u = user_state(s, who, now, *rules);
  AlertContext ctx{who, now, out};
  auto raise = [&](UserState& usr, const DetectorRules::Rule& ri, std::string_view key, std::string relation,
                   std::string category, double observed, double baseline, std::string message) {
    emit(usr.cooldown, usr.blocked_until, ri, rules->max_cooldown, key, ctx, std::move(relation),
         std::move(category), observed, baseline, std::move(message));
  };
  for (size_t i = 0; i < watch.count; ++i) {
    StatementWatch::Limit& l = watch.limits[i];
    const uint64_t measure = l.bytes ? bytes : rows;
    if (l.fired || measure <= l.value || l.rule >= rules->rules.size() || l.read >= facts.reads.size())
      continue;
    l.fired = true;
    const DetectorRules::Rule& ri = rules->rules[l.rule];
    const DetectionRule& r = *ri.rule;
    const ProtectedRead& read = facts.reads[l.read];
    const std::string cats = scoped_categories(r, read);
    switch (r.detector) {
      case DetectorKind::statement_volume:
        raise(u, ri, read.relation, read.relation, cats, static_cast<double>(measure), l.baseline,
              "one statement returned more than " + std::to_string(l.value) + (l.bytes ? " bytes" : " rows") +
                  " of " + read.relation);
        break;
      case DetectorKind::window_volume: {
        auto rel = u.relations.find(std::string_view(read.relation));
        if (rel == u.relations.end()) break;
        VolumeState& v = volume_state(rel->second, ri, now);
        if (v.alerted) break;  // another statement of this window raised it
        v.alerted = true;
        raise(u, ri, read.relation, read.relation, cats, static_cast<double>(l.offset + measure), l.baseline,
              std::to_string(l.offset + measure) + " rows of " + read.relation + " within " +
                  human_duration(r.window) + ", above the learned " +
                  std::to_string(static_cast<uint64_t>(l.baseline)));
        break;
      }
      case DetectorKind::bulk_export:
        raise(u, ri, read.relation, read.relation, cats, static_cast<double>(measure), l.baseline,
              "unfiltered read of " + read.relation + " returned " + std::to_string(measure) +
                  " rows (no WHERE, JOIN condition or LIMIT)");
        break;
      default: break;
    }
  }
  watch.rearm();
  return out;
}

void Detector::on_statement_end(const DetectIdentity& who, const StatementFacts& facts, StatementWatch& watch,
                                uint64_t rows, uint64_t bytes, TimePoint now_tp, std::vector<Alert>& alerts) {
  if (facts.reads.empty()) return;
  if (watch.armed() && watch.exceeded(rows, bytes)) {
    auto more = limit_alert(who, facts, watch, rows, bytes, now_tp);
    for (auto& a : more) alerts.push_back(std::move(a));
  }
  auto rules = this->rules();
  if (!rules->active) return;
  const Ms now = to_ms(now_tp);
  Shard& s = shard_for(who.user);
  std::lock_guard lock(s.mu);
  UserState* u = nullptr;
  AlertContext ctx{who, now, alerts};
  auto raise = [&](UserState& usr, const DetectorRules::Rule& ri, std::string_view key, std::string relation,
                   std::string category, double observed, double baseline, std::string message) {
    emit(usr.cooldown, usr.blocked_until, ri, rules->max_cooldown, key, ctx, std::move(relation),
         std::move(category), observed, baseline, std::move(message));
  };
  for (const auto& ri : rules->rules) {
    const DetectionRule& r = *ri.rule;
    if (r.detector != DetectorKind::window_volume || !role_match(r, who)) continue;
    if (u == nullptr) u = &user_state(s, who, now, *rules);
    for (const auto& read : facts.reads) {
      if (!in_scope(r, read)) continue;
      auto rel = u->relations.find(std::string_view(read.relation));
      if (rel == u->relations.end()) {
        rel = u->relations.emplace(read.relation, RelationState{}).first;
        s.tracked += 1;
      }
      VolumeState& v = volume_state(rel->second, ri, now);
      roll_window(v, ri, *rules->zone, now);
      v.total += rows;
      if (now - v.first_seen < ri.warmup || v.alerted || static_cast<double>(v.total) <= v.threshold)
        continue;
      v.alerted = true;
      raise(*u, ri, read.relation, read.relation, scoped_categories(r, read), static_cast<double>(v.total),
            v.threshold,
            std::to_string(v.total) + " rows of " + read.relation + " within " + human_duration(r.window) +
                ", above the learned " + std::to_string(static_cast<uint64_t>(v.threshold)));
    }
  }
}

std::optional<TimePoint> Detector::blocked_until(std::string_view user, TimePoint now) const {
  Shard& s = shard_for(user);
  std::lock_guard lock(s.mu);
  auto it = s.users.find(user);
  if (it == s.users.end() || it->second.blocked_until <= to_ms(now)) return std::nullopt;
  return from_ms(it->second.blocked_until);
}

std::vector<std::pair<std::string, TimePoint>> Detector::blocks(TimePoint now) const {
  std::vector<std::pair<std::string, TimePoint>> out;
  for (size_t i = 0; i < shard_count; ++i) {
    Shard& s = shards_[i];
    std::lock_guard lock(s.mu);
    for (const auto& [user, u] : s.users) {
      if (u.blocked_until > to_ms(now)) out.emplace_back(user, from_ms(u.blocked_until));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool Detector::unblock(std::string_view user, TimePoint now) {
  Shard& s = shard_for(user);
  std::lock_guard lock(s.mu);
  auto it = s.users.find(user);
  if (it == s.users.end() || it->second.blocked_until <= to_ms(now)) return false;
  it->second.blocked_until = 0;
  return true;
}

Detector::Stats Detector::stats() const {
  Stats st;
  for (size_t i = 0; i < shard_count; ++i) {
    std::lock_guard lock(shards_[i].mu);
    st.users += shards_[i].users.size();
    st.tracked += shards_[i].tracked;
  }
  st.evicted_users = evicted_.load();
  return st;
}

// --- State file ------------------------------------------------------------------------

namespace {

constexpr std::string_view state_format = "pgcloak-detection-state";
constexpr int state_version = 1;

nlohmann::json ring_json(const Ring& r) {
  auto a = nlohmann::json::array();
  // Oldest first, so a reload keeps the ring's order.
  for (size_t i = 0; i < r.n; ++i) a.push_back(r.v[(r.head + ring_size - r.n + i) % ring_size]);
  return a;
}

void ring_from(const nlohmann::json& j, Ring& r) {
  if (!j.is_array()) return;
  for (const auto& x : j) {
    if (x.is_number_unsigned()) r.push(x.get<uint64_t>());
  }
}

nlohmann::json learned_json(const std::vector<std::pair<std::string, Ms>>& v) {
  auto o = nlohmann::json::object();
  for (const auto& [k, t] : v) o[k] = t;
  return o;
}

void learned_from(const nlohmann::json& j, std::vector<std::pair<std::string, Ms>>& v) {
  if (!j.is_object()) return;
  for (auto it = j.begin(); it != j.end() && v.size() < max_learned_clients; ++it) {
    if (it.value().is_number_integer()) v.emplace_back(it.key(), it.value().get<Ms>());
  }
}

}  // namespace

nlohmann::json Detector::save_state(TimePoint now) const {
  auto rules = this->rules();
  nlohmann::json doc;
  doc["format"] = state_format;
  doc["version"] = state_version;
  doc["saved_at"] = to_ms(now);
  doc["started"] = started_ms_.load();
  auto users = nlohmann::json::array();
  for (size_t i = 0; i < shard_count; ++i) {
    std::lock_guard lock(shards_[i].mu);
    for (const auto& [name, u] : shards_[i].users) {
      nlohmann::json ju;
      ju["user"] = name;
      ju["first_seen"] = u.first_seen;
      ju["last_seen"] = u.last_seen;
      if (u.blocked_until > to_ms(now)) ju["blocked_until"] = u.blocked_until;
      auto rels = nlohmann::json::object();
      for (const auto& [rel, rs] : u.relations) {
        nlohmann::json jr;
        jr["first_read"] = rs.first_read;
        auto vols = nlohmann::json::array();
        for (const auto& v : rs.volume) {
          const DetectorRules::Rule* ri = nullptr;
          for (const auto& r : rules->rules) {
            if (r.slot == v.slot) ri = &r;
          }
          if (ri == nullptr) continue;  // a rule no longer configured
          nlohmann::json jv;
          jv["rule"] = ri->rule->name;
          jv["window_s"] = ri->rule->window.count();
          jv["first_seen"] = v.first_seen;
          jv["window"] = v.window;
          jv["total"] = v.total;
          jv["alerted"] = v.alerted;
          jv["work_hours"] = ring_json(v.rings[0]);
          jv["other_hours"] = ring_json(v.rings[1]);
          auto peaks = nlohmann::json::array();
          for (const auto& [day, value] : v.peaks) {
            if (day != 0) peaks.push_back({day - 1, value});
          }
          jv["daily_peaks"] = std::move(peaks);
          vols.push_back(std::move(jv));
        }
        if (!vols.empty()) jr["volume"] = std::move(vols);
        rels[rel] = std::move(jr);
      }
      ju["relations"] = std::move(rels);
      auto cats = nlohmann::json::object();
      for (const auto& [c, t] : u.categories) cats[c] = t;
      ju["categories"] = std::move(cats);
      if (u.account_first_seen != 0) {
        ju["account"] = {{"first_seen", u.account_first_seen},
                         {"clients", learned_json(u.clients)},
                         {"application_names", learned_json(u.apps)}};
      }
      users.push_back(std::move(ju));
    }
  }
  doc["users"] = std::move(users);
  return doc;
}

Status Detector::load_state(const nlohmann::json& doc) {
  for (size_t i = 0; i < shard_count; ++i) {
    std::lock_guard lock(shards_[i].mu);
    shards_[i].users.clear();
    shards_[i].tracked = 0;
  }
  started_ms_.store(0);
  auto fail = [](std::string why) {
    return Error::make(sqlstate::object_not_in_prerequisite_state,
                       "detection state: " + why + "; starting fresh");
  };
  auto rules = this->rules();
  try {
    if (!doc.is_object() || doc.value("format", std::string()) != state_format) {
      return fail("not a pgcloak detection state");
    }
    const auto version = doc.value("version", 0);
    if (version != state_version) {
      return fail("version " + std::to_string(version) + " is not supported (this pgcloak writes version " +
                  std::to_string(state_version) + ")");
    }
    started_ms_.store(doc.value("started", Ms{0}));
    const auto& users = doc.at("users");
    if (!users.is_array()) return fail("\"users\" is not a list");
    for (const auto& ju : users) {
      const std::string name = ju.at("user").get<std::string>();
      Shard& s = shard_for(name);
      std::lock_guard lock(s.mu);
      if (s.tracked >= rules->shard_cap) continue;
      UserState& u = s.users[name];
      s.tracked += 1;
      u.first_seen = ju.value("first_seen", Ms{0});
      u.last_seen = ju.value("last_seen", Ms{0});
      u.blocked_until = ju.value("blocked_until", Ms{0});
      for (auto it = ju.at("relations").begin(); it != ju.at("relations").end(); ++it) {
        RelationState& rs = u.relations[it.key()];
        s.tracked += 1;
        const auto& jr = it.value();
        rs.first_read = jr.value("first_read", Ms{0});
        if (!jr.contains("volume")) continue;
        for (const auto& jv : jr.at("volume")) {
          const std::string rule = jv.at("rule").get<std::string>();
          const auto window_s = jv.at("window_s").get<int64_t>();
          const DetectorRules::Rule* ri = nullptr;
          for (const auto& r : rules->rules) {
            if (r.rule->name == rule && r.rule->detector == DetectorKind::window_volume &&
                r.rule->window.count() == window_s)
              ri = &r;
          }
          if (ri == nullptr) continue;  // the rule is gone or measures another window
          VolumeState v;
          v.slot = ri->slot;
          v.first_seen = jv.at("first_seen").get<Ms>();
          v.window = jv.at("window").get<Ms>();
          v.total = jv.at("total").get<uint64_t>();
          v.alerted = jv.at("alerted").get<bool>();
          ring_from(jv.at("work_hours"), v.rings[0]);
          ring_from(jv.at("other_hours"), v.rings[1]);
          for (const auto& p : jv.at("daily_peaks")) {
            const auto day = p.at(0).get<int32_t>();
            v.peaks[static_cast<size_t>(((day % static_cast<int32_t>(peak_days)) + peak_days) % peak_days)] =
                {day + 1, p.at(1).get<uint32_t>()};
          }
          v.threshold = compute_threshold(v, *ri->rule, rhythm_class(*rules->zone, v.window * ri->window),
                                          v.window * ri->window);
          rs.volume.push_back(std::move(v));
        }
      }
      for (auto it = ju.at("categories").begin(); it != ju.at("categories").end(); ++it) {
        if (u.categories.size() < max_categories_per_user) u.categories[it.key()] = it.value().get<Ms>();
      }
      if (ju.contains("account")) {
        const auto& ja = ju.at("account");
        u.account_first_seen = ja.value("first_seen", Ms{0});
        learned_from(ja.value("clients", nlohmann::json::object()), u.clients);
        learned_from(ja.value("application_names", nlohmann::json::object()), u.apps);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    for (size_t i = 0; i < shard_count; ++i) {
      std::lock_guard lock(shards_[i].mu);
      shards_[i].users.clear();
      shards_[i].tracked = 0;
    }
    started_ms_.store(0);
    return fail(std::string("malformed: ") + e.what());
  }
  return ok_status();
}

}  // namespace pgcloak::rules
