#include "rules/hmac_sha256.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace pgcloak::rules {
namespace {

std::string hex(const std::array<uint8_t, 32>& b) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (uint8_t c : b) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::vector<uint8_t> bytes(std::string_view s) {
  return {s.begin(), s.end()};
}

std::string mac_hex(const std::vector<uint8_t>& key, std::initializer_list<std::string_view> parts) {
  HmacSha256 h(key);
  EXPECT_TRUE(h.ok());
  std::array<uint8_t, 32> out{};
  EXPECT_TRUE(h.mac(parts, out));
  return hex(out);
}

// RFC 4231 section 4, the test cases whose keys fit one block.
TEST(HmacSha256Test, Rfc4231Vectors) {
  EXPECT_EQ(mac_hex(std::vector<uint8_t>(20, 0x0b), {"Hi There"}),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(mac_hex(bytes("Jefe"), {"what do ya want ", "for nothing?"}),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(mac_hex(std::vector<uint8_t>(20, 0xaa), {std::string(50, '\xdd')}),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
}

TEST(HmacSha256Test, KeysLongerThanABlockAreRefused) {
  // RFC 2104 would hash them first; pgcloak's keys are 32 bytes.
  HmacSha256 h(std::vector<uint8_t>(65, 0xaa));
  EXPECT_FALSE(h.ok());
  std::array<uint8_t, 32> out{};
  EXPECT_FALSE(h.mac({"x"}, out));
}

TEST(HmacSha256Test, MatchesOpenSslForAnySplitAndRepeatedUse) {
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    std::vector<uint8_t> key(1 + rng() % 64);
    for (auto& b : key) b = static_cast<uint8_t>(rng());
    HmacSha256 h(key);
    for (int msg = 0; msg < 5; ++msg) {
      std::string data(rng() % 300, '\0');
      for (auto& c : data) c = static_cast<char>(rng());
      std::array<uint8_t, 32> want{};
      unsigned int len = 0;
      HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), want.data(), &len);
      const size_t cut = data.empty() ? 0 : rng() % data.size();
      std::array<uint8_t, 32> got{};
      ASSERT_TRUE(h.mac({std::string_view(data).substr(0, cut), std::string_view(data).substr(cut)}, got));
      EXPECT_EQ(hex(got), hex(want)) << "key " << key.size() << " bytes, data " << data.size() << ", cut "
                                     << cut;
    }
  }
}

}  // namespace
}  // namespace pgcloak::rules
