#include "rules/mask.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "rules/hmac_sha256.h"

namespace pgcloak::rules {

namespace {

constexpr std::pair<MaskKind, std::string_view> mask_names[] = {
    {MaskKind::allow, "allow"},
    {MaskKind::deny, "deny"},
    {MaskKind::redact, "redact"},
    {MaskKind::null, "null"},
    {MaskKind::partial, "partial"},
    {MaskKind::email, "email"},
    {MaskKind::last4, "last4"},
    {MaskKind::hash, "hash"},
    {MaskKind::pseudonym, "pseudonym"},
    {MaskKind::generalize, "generalize"},
    {MaskKind::redact_patterns, "redact_patterns"},
    {MaskKind::custom, "custom"},
};

}  // namespace

std::string_view to_string(MaskKind kind) {
  for (const auto& [k, n] : mask_names) {
    if (k == kind) return n;
  }
  return "?";
}

std::optional<MaskKind> mask_kind_from_string(std::string_view name) {
  for (const auto& [k, n] : mask_names) {
    if (n == name) return k;
  }
  return std::nullopt;
}

bool mask_nulls_supported(MaskKind kind) {
  return kind == MaskKind::redact || kind == MaskKind::null || kind == MaskKind::custom;
}

std::string_view to_string(DatePart part) {
  switch (part) {
    case DatePart::year: return "year";
    case DatePart::month: return "month";
    case DatePart::day: return "day";
  }
  return "?";
}

std::string_view to_string(PseudonymKind kind) {
  switch (kind) {
    case PseudonymKind::name: return "name";
    case PseudonymKind::first_name: return "first_name";
    case PseudonymKind::last_name: return "last_name";
    case PseudonymKind::email: return "email";
  }
  return "?";
}

bool is_string_type(const ColumnType& t) {
  return t.category == 'S' || t.oid == type_oid::text || t.oid == type_oid::varchar ||
         t.oid == type_oid::bpchar;
}

bool is_integer_type(const ColumnType& t) {
  return t.oid == type_oid::int2 || t.oid == type_oid::int4 || t.oid == type_oid::int8;
}

bool is_datetime_type(const ColumnType& t) {
  return t.oid == type_oid::date || t.oid == type_oid::timestamp || t.oid == type_oid::timestamptz;
}

namespace {

// Result rows need a MAC per value (output masking, the backstop). Each
// thread keeps the prepared pads (HmacSha256) of the last few keys.
class HmacStates {
 public:
  bool digest(const std::array<uint8_t, 32>& key, std::string_view data, std::array<uint8_t, 32>& out) {
    for (auto& k : keys_) {
      if (k.hmac && k.key == key) return k.hmac->mac({data}, out);
    }
    Prepared& k = keys_[next_];
    next_ = (next_ + 1) % keys_.size();
    k.key = key;
    k.hmac = std::make_unique<HmacSha256>(key);
    return k.hmac->mac({data}, out);
  }

 private:
  struct Prepared {
    std::array<uint8_t, 32> key{};
    std::unique_ptr<HmacSha256> hmac;
  };
  std::array<Prepared, 4> keys_{};
  size_t next_ = 0;
};

}  // namespace

std::array<uint8_t, 32> hmac_sha256(const std::array<uint8_t, 32>& key, std::string_view data) {
  std::array<uint8_t, 32> out{};
  thread_local HmacStates states;
  if (states.digest(key, data, out)) return out;
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(), &len);
  return out;
}

MaskKeys derive_mask_keys(std::string_view master_key) {
  auto derive = [&](std::string_view label) {
    std::array<uint8_t, 32> out{};
    unsigned int len = 0;
    HMAC(EVP_sha256(), master_key.data(), static_cast<int>(master_key.size()),
         reinterpret_cast<const unsigned char*>(label.data()), label.size(), out.data(), &len);
    return out;
  };
  MaskKeys k;
  k.present = true;
  k.hash_key = derive("pgcloak mask hash v1");
  k.pseudonym_key = derive("pgcloak mask pseudonym v1");
  return k;
}

std::string to_hex(const uint8_t* data, size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 0xf];
  }
  return out;
}

const std::vector<std::string_view>& pseudonym_first_names() {
  static const std::vector<std::string_view> names{
      "James",     "Mary",     "John",    "Patricia", "Robert",  "Jennifer", "Michael", "Linda",   "William",
      "Elizabeth", "David",    "Barbara", "Richard",  "Susan",   "Joseph",   "Jessica", "Thomas",  "Sarah",
      "Charles",   "Karen",    "Daniel",  "Nancy",    "Matthew", "Lisa",     "Anthony", "Betty",   "Mark",
      "Margaret",  "Paul",     "Sandra",  "Steven",   "Ashley",  "Andrew",   "Emily",   "Joshua",  "Donna",
      "Kevin",     "Michelle", "Brian",   "Carol",    "George",  "Amanda",   "Edward",  "Melissa", "Ronald",
      "Deborah",   "Timothy",  "Laura",   "Jason",    "Rebecca",
  };
  return names;
}

const std::vector<std::string_view>& pseudonym_last_names() {
  static const std::vector<std::string_view> names{
      "Smith",     "Johnson",  "Williams",  "Brown",   "Jones",    "Garcia",   "Miller",   "Davis",
      "Rodriguez", "Martinez", "Hernandez", "Lopez",   "Gonzalez", "Wilson",   "Anderson", "Thomas",
      "Taylor",    "Moore",    "Jackson",   "Martin",  "Lee",      "Perez",    "Thompson", "White",
      "Harris",    "Sanchez",  "Clark",     "Ramirez", "Lewis",    "Robinson", "Walker",   "Young",
      "Allen",     "King",     "Wright",    "Scott",   "Torres",   "Nguyen",   "Hill",     "Flores",
      "Green",     "Adams",    "Nelson",    "Baker",   "Hall",     "Rivera",   "Campbell", "Mitchell",
      "Carter",    "Roberts",
  };
  return names;
}

}  // namespace pgcloak::rules
