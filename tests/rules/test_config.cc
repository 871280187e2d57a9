#include "rules/config.h"

#include <gtest/gtest.h>

#include <string>

namespace pgcloak::rules {
namespace {

bool has_issue(const ConfigLoad& load, int line, const std::string& needle) {
  for (const auto& i : load.issues) {
    if (i.line == line && i.message.find(needle) != std::string::npos) return true;
  }
  return false;
}

std::string dump(const ConfigLoad& load) {
  return load.format("cfg");
}

TEST(ConfigTest, EmptyFileGivesSafeDefaults) {
  auto load = parse_config("");
  ASSERT_TRUE(load.ok()) << dump(load);
  const Config& c = load.config;
  ASSERT_EQ(c.listen.size(), 1U);
  EXPECT_EQ(c.listen[0].host, "127.0.0.1");  // loopback unless asked otherwise
  EXPECT_EQ(c.listen[0].port, 6432);
  EXPECT_FALSE(c.tls.enabled());
  EXPECT_EQ(c.upstream.sslmode, SslMode::prefer);
  EXPECT_EQ(c.timeouts.handshake, Duration(10000));
  EXPECT_EQ(c.timeouts.client_idle, Duration(0));
  EXPECT_EQ(c.limits.max_message_size, protocol::default_max_message_length);
}

TEST(ConfigTest, FullFileParsesEveryKey) {
  auto load = parse_config(R"(
listen: ["0.0.0.0:7000", "[::1]:7001"]
unix_socket_dir: /run/pgcloak
threads: 3
max_connections: 50
upstream:
  host: db.internal
  port: 5433
  sslmode: require
  connect_timeout: 1500ms
timeouts:
  handshake: 3s
  client_idle: 5m
  shutdown_grace: 1h
limits:
  max_message_size: 16MiB
log:
  level: debug
)");
  ASSERT_TRUE(load.ok()) << dump(load);
  const Config& c = load.config;
  ASSERT_EQ(c.listen.size(), 2U);
  EXPECT_EQ(c.listen[0].host, "0.0.0.0");
  EXPECT_EQ(c.listen[0].port, 7000);
  EXPECT_EQ(c.listen[1].host, "::1");
  EXPECT_EQ(c.listen[1].port, 7001);
  EXPECT_EQ(c.unix_socket_dir, "/run/pgcloak");
  EXPECT_EQ(c.threads, 3U);
  EXPECT_EQ(c.max_connections, 50U);
  EXPECT_EQ(c.upstream.host, "db.internal");
  EXPECT_EQ(c.upstream.port, 5433);
  EXPECT_EQ(c.upstream.sslmode, SslMode::require);
  EXPECT_EQ(c.upstream.connect_timeout, Duration(1500));
  EXPECT_EQ(c.timeouts.handshake, Duration(3000));
  EXPECT_EQ(c.timeouts.client_idle, Duration(300000));
  EXPECT_EQ(c.timeouts.shutdown_grace, Duration(3600000));
  EXPECT_EQ(c.limits.max_message_size, 16U << 20);
  EXPECT_EQ(c.log.level, LogLevel::debug);
}

TEST(ConfigTest, UnknownKeyIsReportedWithItsLine) {
  auto load = parse_config("threads: 2\ntls:\n  requre: true\n");
  ASSERT_FALSE(load.ok());
  EXPECT_TRUE(has_issue(load, 3, "unknown key \"requre\" in tls")) << dump(load);
  EXPECT_EQ(load.issues[0].column, 3);
}

TEST(ConfigTest, EveryProblemIsListedNotJustTheFirst) {
  auto load = parse_config("threads: many\nupstream:\n  sslmode: sometimes\n  port: 99999\nbogus: 1\n");
  EXPECT_TRUE(has_issue(load, 1, "threads must be a non-negative integer")) << dump(load);
  EXPECT_TRUE(has_issue(load, 3, "upstream.sslmode must be one of")) << dump(load);
  EXPECT_TRUE(has_issue(load, 4, "upstream.port must be between 1 and 65535")) << dump(load);
  EXPECT_TRUE(has_issue(load, 5, "unknown key \"bogus\"")) << dump(load);
  EXPECT_EQ(load.issues.size(), 4U);
}

TEST(ConfigTest, FormatIsFileLineColumn) {
  auto load = parse_config("\n\nthreads: x\n");
  EXPECT_EQ(load.format("a.yaml").rfind("a.yaml:3:10: threads", 0), 0U) << dump(load);
}

TEST(ConfigTest, YamlSyntaxErrorHasALine) {
  auto load = parse_config("listen: [\"127.0.0.1:1\"\nthreads: 2\n");
  ASSERT_FALSE(load.ok());
  EXPECT_NE(load.issues[0].message.find("YAML syntax error"), std::string::npos);
  EXPECT_GT(load.issues[0].line, 0);
}

TEST(ConfigTest, TopLevelMustBeAMapping) {
  auto load = parse_config("- a\n- b\n");
  ASSERT_FALSE(load.ok());
  EXPECT_NE(load.issues[0].message.find("must be a mapping"), std::string::npos);
}

TEST(ConfigTest, ListenEntriesAreValidated) {
  EXPECT_TRUE(has_issue(parse_config("listen: [\"127.0.0.1\"]\n"), 1, "expected host:port"));
  EXPECT_TRUE(has_issue(parse_config("listen: [\":6432\"]\n"), 1, "host is empty"));
  EXPECT_TRUE(has_issue(parse_config("listen: [\"127.0.0.1:0\"]\n"), 1, "port must be 1-65535"));
  EXPECT_TRUE(has_issue(parse_config("listen: [\"[::1:5\"]\n"), 1, "IPv6"));
  EXPECT_TRUE(has_issue(parse_config("listen: []\n"), 1, "non-empty list"));
  EXPECT_TRUE(has_issue(parse_config("listen: \"127.0.0.1:5\"\n"), 1, "non-empty list"));
}

TEST(ConfigTest, TlsKeysMustComeTogether) {
  EXPECT_TRUE(has_issue(parse_config("tls:\n  cert_file: /nonexistent.pem\n"), 2,
                        "tls.cert_file and tls.key_file must be set together"));
  EXPECT_TRUE(has_issue(parse_config("tls:\n  require: true\n"), 2, "no tls.cert_file"));
  EXPECT_TRUE(has_issue(parse_config("tls:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n"),
                        2, "cannot read \"/nonexistent.pem\""));
  EXPECT_TRUE(has_issue(parse_config("tls:\n  min_version: \"1.1\"\n"), 2, "tls.min_version"));
  EXPECT_TRUE(has_issue(parse_config("tls:\n  require: maybe\n"), 2, "must be true or false"));
}

TEST(ConfigTest, VerifyFullNeedsARootCert) {
  auto load = parse_config("upstream:\n  sslmode: verify-full\n");
  EXPECT_TRUE(has_issue(load, 2, "needs upstream.sslrootcert")) << dump(load);
}

TEST(ConfigTest, UnclosedQuoteIsCaught) {
  // yaml-cpp lets an unclosed double quote run on over the next lines.
  auto load = parse_config("upstream:\n  host: \"127.0.0.1\n  port: 5432\n");
  EXPECT_FALSE(load.ok());
}

TEST(ConfigTest, UnixSocketUpstreamIsRecognised) {
  auto load = parse_config("upstream:\n  host: /var/run/postgresql\n  port: 5433\n");
  ASSERT_TRUE(load.ok()) << dump(load);
  EXPECT_TRUE(load.config.upstream.is_unix_socket());
  EXPECT_EQ(load.config.upstream.unix_socket_path(), "/var/run/postgresql/.s.PGSQL.5433");
}

TEST(ConfigTest, MessageSizeBounds) {
  EXPECT_TRUE(has_issue(parse_config("limits:\n  max_message_size: 1KiB\n"), 2, "between 8KiB and 1GiB"));
  EXPECT_TRUE(has_issue(parse_config("limits:\n  max_message_size: 2GiB\n"), 2, "between 8KiB and 1GiB"));
  EXPECT_TRUE(has_issue(parse_config("limits:\n  max_message_size: lots\n"), 2, "invalid size"));
  EXPECT_TRUE(parse_config("limits:\n  max_message_size: 8192\n").ok());
  // The documented default must be accepted as written.
  auto gib = parse_config("limits:\n  max_message_size: 1GiB\n");
  ASSERT_TRUE(gib.ok()) << dump(gib);
  EXPECT_EQ(gib.config.limits.max_message_size, protocol::default_max_message_length);
}

TEST(DurationTest, UnitsAndErrors) {
  EXPECT_EQ(*parse_duration("0"), Duration(0));
  EXPECT_EQ(*parse_duration("250"), Duration(250));
  EXPECT_EQ(*parse_duration("250ms"), Duration(250));
  EXPECT_EQ(*parse_duration("2s"), Duration(2000));
  EXPECT_EQ(*parse_duration("3m"), Duration(180000));
  EXPECT_EQ(*parse_duration("3min"), Duration(180000));
  EXPECT_EQ(*parse_duration("1h"), Duration(3600000));
  EXPECT_FALSE(parse_duration("").ok());
  EXPECT_FALSE(parse_duration("s").ok());
  EXPECT_FALSE(parse_duration("-1s").ok());
  EXPECT_FALSE(parse_duration("10 s").ok());
  EXPECT_FALSE(parse_duration("10d").ok());
  EXPECT_FALSE(parse_duration("99999999999999999999s").ok());
}

TEST(SizeTest, UnitsAndErrors) {
  EXPECT_EQ(*parse_size("0"), 0U);
  EXPECT_EQ(*parse_size("4096"), 4096U);
  EXPECT_EQ(*parse_size("64KiB"), 65536U);
  EXPECT_EQ(*parse_size("64kB"), 65536U);
  EXPECT_EQ(*parse_size("16MiB"), 16U << 20);
  EXPECT_EQ(*parse_size("1GiB"), 1U << 30);
  EXPECT_FALSE(parse_size("1TB").ok());
  EXPECT_FALSE(parse_size("KiB").ok());
  EXPECT_FALSE(parse_size("-5").ok());
}

}  // namespace
}  // namespace pgcloak::rules
