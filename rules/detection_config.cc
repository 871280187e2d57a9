#include "rules/detection_config.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace pgcloak::rules {

std::string_view detector_name(DetectorKind k) {
  switch (k) {
    case DetectorKind::statement_volume: return "statement_volume";
    case DetectorKind::window_volume: return "window_volume";
    case DetectorKind::slow_drip: return "slow_drip";
    case DetectorKind::first_access: return "first_access";
    case DetectorKind::off_hours: return "off_hours";
    case DetectorKind::bulk_export: return "bulk_export";
    case DetectorKind::probing: return "probing";
    case DetectorKind::service_account: return "service_account";
  }
  return "?";
}

std::string_view action_name(AlertAction a) {
  switch (a) {
    case AlertAction::alert: return "alert";
    case AlertAction::cancel: return "cancel";
    case AlertAction::terminate: return "terminate";
    case AlertAction::block: return "block";
  }
  return "?";
}

std::optional<std::array<uint8_t, 16>> parse_ip(std::string_view text) {
  // inet_pton needs a NUL-terminated string; addresses are short.
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof(buf)) return std::nullopt;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  std::array<uint8_t, 16> out{};
  in_addr v4{};
  if (inet_pton(AF_INET, buf, &v4) == 1) {
    out[10] = 0xff;
    out[11] = 0xff;
    std::memcpy(out.data() + 12, &v4, 4);
    return out;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, buf, &v6) == 1) {
    std::memcpy(out.data(), &v6, 16);
    return out;
  }
  return std::nullopt;
}

std::optional<Cidr> parse_cidr(std::string_view text) {
  const size_t slash = text.find('/');
  const std::string_view addr = text.substr(0, slash);
  auto ip = parse_ip(addr);
  if (!ip) return std::nullopt;
  const bool v4 = addr.find(':') == std::string_view::npos;
  Cidr c;
  c.address = *ip;
  c.prefix = 128;
  if (slash != std::string_view::npos) {
    const std::string_view p = text.substr(slash + 1);
    unsigned bits = 0;
    auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), bits);
    if (p.empty() || ec != std::errc{} || ptr != p.data() + p.size() || bits > (v4 ? 32U : 128U))
      return std::nullopt;
    c.prefix = v4 ? bits + 96 : bits;
  }
  // Host bits set ("10.1.2.3/8") are a typo more often than not; PostgreSQL's
  // pg_hba.conf accepts them and masks, and so does this.
  for (unsigned i = c.prefix; i < 128; ++i) c.address[i / 8] &= static_cast<uint8_t>(~(0x80U >> (i % 8)));
  return c;
}

bool Cidr::contains(const std::array<uint8_t, 16>& ip) const {
  const unsigned full = prefix / 8;
  if (std::memcmp(ip.data(), address.data(), full) != 0) return false;
  const unsigned rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<uint8_t>(0xff00U >> rest);
  return (ip[full] & mask) == (address[full] & mask);
}

}  // namespace pgcloak::rules
