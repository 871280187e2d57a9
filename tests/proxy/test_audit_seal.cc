// Sealing of audit values with AES-256-GCM: round trips, wrong keys,
// tampering, fresh nonces, and key loading errors.
#include "proxy/audit_seal.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace pgcloak::proxy {
namespace {

constexpr std::string_view key_a = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
constexpr std::string_view key_b = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

std::shared_ptr<const ParameterSealer> sealer(std::string_view hex) {
  auto s = ParameterSealer::from_hex(hex);
  EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
  return s.ok() ? *s : nullptr;
}

TEST(AuditSeal, RoundTrip) {
  auto s = sealer(key_a);
  ASSERT_NE(s, nullptr);
  for (std::string_view text :
       {std::string_view("SELECT * FROM customers WHERE email = 'alice@example.com'"), std::string_view(""),
        std::string_view("[\"4242424242424242\",null]"), std::string_view("\x00\xff binary\n", 10)}) {
    auto sealed = s->seal(text);
    ASSERT_TRUE(sealed.ok());
    EXPECT_EQ(sealed->rfind("v1.", 0), 0U) << *sealed;
    if (!text.empty()) {
      EXPECT_EQ(sealed->find(text), std::string::npos);
    }
    auto opened = s->unseal(*sealed);
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    EXPECT_EQ(*opened, text);
  }
}

TEST(AuditSeal, CompactFormat) {
  auto s = sealer(key_a);
  ASSERT_NE(s, nullptr);
  auto sealed = s->seal("alice@example.com");
  ASSERT_TRUE(sealed.ok());
  // v1.<16 chars of base64 nonce>.<base64 of 17 + 16 bytes>
  const size_t dot = sealed->find('.', 3);
  ASSERT_NE(dot, std::string::npos);
  EXPECT_EQ(dot - 3, 16U);
  EXPECT_EQ(sealed->size() - dot - 1, 44U);
  EXPECT_EQ(sealed->find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=.v"),
            std::string::npos);
}

TEST(AuditSeal, TwoSealsOfTheSameTextDiffer) {
  auto s = sealer(key_a);
  ASSERT_NE(s, nullptr);
  auto a = s->seal("4242424242424242");
  auto b = s->seal("4242424242424242");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_NE(a->substr(0, a->find('.', 3)), b->substr(0, b->find('.', 3)));  // fresh nonce
  EXPECT_EQ(*s->unseal(*a), *s->unseal(*b));
}

TEST(AuditSeal, ForkedChildDrawsItsOwnNonces) {
  auto s = sealer(key_a);
  ASSERT_NE(s, nullptr);
  ASSERT_TRUE(s->seal("warm up the nonce batch").ok());
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto sealed = s->seal("x");
    const std::string nonce = sealed.ok() ? sealed->substr(0, sealed->find('.', 3)) : "";
    const ssize_t n = write(fds[1], nonce.data(), nonce.size());
    _exit(n == static_cast<ssize_t>(nonce.size()) ? 0 : 1);
  }
  close(fds[1]);
  auto sealed = s->seal("x");
  ASSERT_TRUE(sealed.ok());
  const std::string parent_nonce = sealed->substr(0, sealed->find('.', 3));
  std::string child_nonce(64, '\0');
  const ssize_t n = read(fds[0], child_nonce.data(), child_nonce.size());
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_GT(n, 3);
  child_nonce.resize(static_cast<size_t>(n));
  EXPECT_NE(child_nonce, parent_nonce);
}

TEST(AuditSeal, WrongKeyFails) {
  auto a = sealer(key_a);
  auto b = sealer(key_b);
  ASSERT_TRUE(a != nullptr && b != nullptr);
  auto sealed = a->seal("123-45-6789");
  ASSERT_TRUE(sealed.ok());
  auto opened = b->unseal(*sealed);
  ASSERT_FALSE(opened.ok());
  EXPECT_NE(opened.error().message.find("wrong key or altered value"), std::string::npos);
  EXPECT_EQ(opened.error().message.find("123-45-6789"), std::string::npos);
}

TEST(AuditSeal, TamperingFails) {
  auto s = sealer(key_a);
  ASSERT_NE(s, nullptr);
  auto sealed = s->seal("Alice Smith");
  ASSERT_TRUE(sealed.ok());
  const std::string good = *sealed;
  // Every single-character change anywhere in the value, nonce and tag
  // included, must fail to open.
  const std::string alphabet = "AB";
  size_t tried = 0;
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = bad[i] == alphabet[0] ? alphabet[1] : alphabet[0];
    if (bad == good) continue;
    ++tried;
    auto opened = s->unseal(bad);
    EXPECT_FALSE(opened.ok() && *opened == "Alice Smith") << "position " << i << ": " << bad;
    EXPECT_FALSE(opened.ok()) << "position " << i;
  }
  EXPECT_GT(tried, 40U);
  // Truncated, extended, swapped parts, other versions.
  const size_t dot = good.find('.', 3);
  EXPECT_FALSE(s->unseal(good.substr(0, good.size() - 4)).ok());
  EXPECT_FALSE(s->unseal(good + "AAAA").ok());
  EXPECT_FALSE(s->unseal("v2." + good.substr(3)).ok());
  EXPECT_FALSE(s->unseal(good.substr(0, dot)).ok());
  EXPECT_FALSE(s->unseal("v1." + good.substr(dot + 1) + "." + good.substr(3, dot - 3)).ok());
  EXPECT_FALSE(s->unseal("").ok());
  EXPECT_FALSE(s->unseal("v1..").ok());
  // A body shorter than a tag.
  EXPECT_FALSE(s->unseal(good.substr(0, dot) + ".AAAA").ok());
}

TEST(AuditSeal, KeyMustBe64HexCharacters) {
  EXPECT_TRUE(ParameterSealer::from_hex(std::string(key_a) + "\n").ok());
  EXPECT_TRUE(ParameterSealer::from_hex(std::string(key_a) + "\r\n").ok());
  std::string upper(key_a);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_TRUE(ParameterSealer::from_hex(upper).ok());
  auto short_key = ParameterSealer::from_hex(key_a.substr(0, 62));
  ASSERT_FALSE(short_key.ok());
  EXPECT_NE(short_key.error().message.find("64 hexadecimal characters"), std::string::npos);
  EXPECT_NE(short_key.error().message.find("found 62"), std::string::npos);
  EXPECT_NE(short_key.error().hint.find("openssl rand -hex 32"), std::string::npos);
  EXPECT_FALSE(ParameterSealer::from_hex(std::string(key_a) + "00").ok());
  std::string bad(key_a);
  bad[10] = 'g';
  auto not_hex = ParameterSealer::from_hex(bad);
  ASSERT_FALSE(not_hex.ok());
  EXPECT_NE(not_hex.error().message.find("character 11"), std::string::npos) << not_hex.error().message;
  // The key itself is never in an error.
  EXPECT_EQ(not_hex.error().message.find("0a0b0c"), std::string::npos);
  EXPECT_FALSE(ParameterSealer::from_hex("").ok());
}

TEST(AuditSeal, KeyFile) {
  char path[] = "/tmp/pgcloak_test_seal_key_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    std::ofstream f(path);
    f << key_a << "\n";
  }
  auto from_file = ParameterSealer::from_key_file(path);
  ASSERT_TRUE(from_file.ok()) << from_file.error().message;
  auto direct = sealer(key_a);
  auto sealed = (*from_file)->seal("alice@example.com");
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(*direct->unseal(*sealed), "alice@example.com");
  {
    std::ofstream f(path);
    f << "not a key\n";
  }
  auto bad = ParameterSealer::from_key_file(path);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find(path), std::string::npos) << bad.error().message;
  EXPECT_NE(bad.error().message.find("64 hexadecimal characters"), std::string::npos);
  std::remove(path);
  auto missing = ParameterSealer::from_key_file(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("audit.parameter_key_file"), std::string::npos);
  EXPECT_NE(missing.error().message.find("cannot read"), std::string::npos);
}

}  // namespace
}  // namespace pgcloak::proxy
