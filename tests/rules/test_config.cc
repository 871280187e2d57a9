#include "rules/config.h"

#include <gtest/gtest.h>

#include <fstream>
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

TEST(ConfigTest, IoUringIsAutoUnlessTurnedOff) {
  auto none = parse_config("threads: 1\n");
  ASSERT_TRUE(none.ok()) << dump(none);
  EXPECT_EQ(none.config.io_uring, Config::IoUring::auto_);
  auto on = parse_config("io_uring: auto\n");
  ASSERT_TRUE(on.ok()) << dump(on);
  EXPECT_EQ(on.config.io_uring, Config::IoUring::auto_);
  auto off = parse_config("io_uring: off\n");
  ASSERT_TRUE(off.ok()) << dump(off);
  EXPECT_EQ(off.config.io_uring, Config::IoUring::off);
  auto bad = parse_config("\nio_uring: sometimes\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(has_issue(bad, 2, "io_uring must be one of")) << dump(bad);
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

TEST(ConfigTest, UpstreamPoolIsOffByDefaultAndParses) {
  auto off = parse_config("");
  ASSERT_TRUE(off.ok()) << dump(off);
  EXPECT_FALSE(off.config.upstream.pool.enabled);

  auto load = parse_config(
      "auth:\n  mode: scram\ncatalog:\n  user: pgcloak\n  password: x\n"
      "upstream:\n  pool:\n    enabled: true\n    max_idle: 7\n    idle_timeout: 30s\n"
      "    max_lifetime: 2h\n    reset_timeout: 3s\n");
  ASSERT_TRUE(load.ok()) << dump(load);
  const auto& p = load.config.upstream.pool;
  EXPECT_TRUE(p.enabled);
  EXPECT_EQ(p.max_idle, 7U);
  EXPECT_EQ(p.idle_timeout, Duration(30'000));
  EXPECT_EQ(p.max_lifetime, Duration(7'200'000));
  EXPECT_EQ(p.reset_timeout, Duration(3'000));
}

TEST(ConfigTest, UpstreamPoolNeedsScramModeAndSaneLimits) {
  // Passthrough: PostgreSQL must authenticate every client on its own backend.
  auto passthrough = parse_config("upstream:\n  pool:\n    enabled: true\n");
  EXPECT_TRUE(has_issue(passthrough, 3, "upstream.pool.enabled needs auth.mode scram")) << dump(passthrough);
  EXPECT_TRUE(parse_config("upstream:\n  pool:\n    enabled: false\n").ok());

  const std::string scram =
      "auth:\n  mode: scram\ncatalog:\n  user: pgcloak\n  password: x\nupstream:\n  pool:\n";
  EXPECT_TRUE(has_issue(parse_config(scram + "    max_idle: 0\n"), 8, "between 1 and 100000"));
  EXPECT_TRUE(has_issue(parse_config(scram + "    idle_timeout: 100ms\n"), 8, "at least 1s"));
  EXPECT_TRUE(has_issue(parse_config(scram + "    max_lifetime: 0s\n"), 8, "at least 1s"));
  EXPECT_TRUE(
      has_issue(parse_config(scram + "    reset_timeout: never\n"), 8, "upstream.pool.reset_timeout"));
  EXPECT_TRUE(has_issue(parse_config(scram + "    size: 3\n"), 8, "unknown key \"size\""));
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
  EXPECT_EQ(*parse_duration("2d"), Duration(172800000));  // days: detection warm-ups
  EXPECT_FALSE(parse_duration("10w").ok());
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

// --- masking: ---------------------------------------------------------------------

const std::string kMaskKey = "0123456789abcdef0123456789abcdef";  // 32 bytes

SecretSources fake_secrets(std::optional<std::string> file = kMaskKey + "\n",
                           std::optional<std::string> env = kMaskKey) {
  SecretSources s;
  s.read_file = [file](const std::string& path) -> std::optional<std::string> {
    if (path != "/etc/pgcloak/mask.key") return std::nullopt;
    return file;
  };
  s.get_env = [env](const std::string& name) -> std::optional<std::string> {
    if (name != "PGCLOAK_MASK_KEY") return std::nullopt;
    return env;
  };
  return s;
}

// With the catalog.dbname that protected columns need (appended, so issue
// lines are unchanged).
ConfigLoad parse_masking(const std::string& yaml, const SecretSources& secrets = fake_secrets()) {
  return parse_config(yaml + "\ncatalog:\n  dbname: shop\n", secrets);
}

TEST(MaskingConfigTest, TheDocumentedExampleParses) {
  auto load = parse_masking(R"(
masking:
  hash_key_file: /etc/pgcloak/mask.key
  categories: [loyalty_number]
  protected_columns:
    - column: public.customers.email
      category: email
    - {column: public.customers.phone, category: phone}
    - {column: public.customers.card, category: card_number}
    - {column: public.customers.notes, category: free_text}
    - {column: 'Sales."Client List"."Loyalty ""No"""', category: loyalty_number}
  policies:
    - name: support
      roles: [support_team]
      default: redact
      rules:
        email: email
        phone: {mask: partial, keep_first: 0, keep_last: 2, fill: "*"}
        card_number: last4
        birth_date: {mask: generalize, to: year}
        national_id: redact
        person_name: allow
        loyalty_number: {mask: hash, length: 8}
        public.customers.notes: redact_patterns
    - name: analysts
      roles: [analyst, bi_reader]
      default: null
      rules:
        email: pseudonym
        free_text: {mask: custom, expression: "left({value}, 3) || '...'"}
  default_policy:
    default: deny
    rules: {}
  function_allowlist: [util.mask_iban, '"Util"."Fn"']
)");
  ASSERT_TRUE(load.ok()) << dump(load);
  const MaskingConfig& m = load.config.masking;
  EXPECT_TRUE(m.keys.present);
  EXPECT_EQ(m.keys.hash_key, derive_mask_keys(kMaskKey).hash_key);  // trailing newline trimmed
  ASSERT_EQ(m.protected_columns.size(), 5U);
  EXPECT_EQ(m.protected_columns[4].column, (QualifiedColumn{"sales", "Client List", "Loyalty \"No\""}));
  EXPECT_EQ(m.protected_columns[4].column.quoted(), "\"sales\".\"Client List\".\"Loyalty \"\"No\"\"\"");
  ASSERT_EQ(m.policies.size(), 2U);
  EXPECT_EQ(m.function_allowlist, (std::vector<std::string>{"util.mask_iban", "Util.Fn"}));

  const MaskPolicy& support = m.policies[0];
  const QualifiedColumn email{"public", "customers", "email"};
  const QualifiedColumn notes{"public", "customers", "notes"};
  EXPECT_EQ(support.spec_for(email, "email").kind, MaskKind::email);
  MaskSpec phone = support.spec_for({"public", "customers", "phone"}, "phone");
  EXPECT_EQ(phone.kind, MaskKind::partial);
  EXPECT_EQ(phone.keep_last, 2);
  // A column rule beats the category rule.
  EXPECT_EQ(support.spec_for(notes, "free_text").kind, MaskKind::redact_patterns);
  // Categories the policy does not list get its default.
  EXPECT_EQ(support.spec_for({"public", "customers", "addr"}, "address").kind, MaskKind::redact);
  EXPECT_EQ(support.spec_for({"public", "x", "y"}, "birth_date").to, DatePart::year);
  EXPECT_EQ(support.spec_for({"public", "x", "y"}, "loyalty_number").length, 8);

  const MaskPolicy& analysts = m.policies[1];
  EXPECT_EQ(analysts.default_spec.kind, MaskKind::null);
  EXPECT_EQ(analysts.spec_for(email, "email").pseudonym_kind, PseudonymKind::email);  // by category
  MaskSpec custom = analysts.spec_for(notes, "free_text");
  EXPECT_EQ(custom.kind, MaskKind::custom);
  EXPECT_EQ(custom.allowed_functions, m.function_allowlist);

  EXPECT_EQ(m.default_policy.default_spec.kind, MaskKind::deny);
  // First policy with a matching role wins, in config order.
  EXPECT_EQ(&m.policy_for([](std::string_view r) { return r == "bi_reader" || r == "support_team"; }),
            &m.policies[0]);
  EXPECT_EQ(&m.policy_for([](std::string_view r) { return r == "bi_reader"; }), &m.policies[1]);
  EXPECT_EQ(&m.policy_for([](std::string_view) { return false; }), &m.default_policy);
}

TEST(MaskingConfigTest, AbsentSectionMeansNothingProtectedAndRedactByDefault) {
  auto load = parse_masking("threads: 1\n");
  ASSERT_TRUE(load.ok()) << dump(load);
  EXPECT_FALSE(load.config.masking.enabled());
  EXPECT_FALSE(load.config.masking.keys.present);
  EXPECT_EQ(load.config.masking.default_policy.default_spec.kind, MaskKind::redact);
  EXPECT_TRUE(load.config.masking.default_policy.category_rules.empty());
}

TEST(MaskingConfigTest, KeyFromTheEnvironment) {
  auto load = parse_masking("masking:\n  hash_key_env: PGCLOAK_MASK_KEY\n");
  ASSERT_TRUE(load.ok()) << dump(load);
  EXPECT_EQ(load.config.masking.keys.pseudonym_key, derive_mask_keys(kMaskKey).pseudonym_key);
}

TEST(MaskingConfigTest, EveryMaskingProblemIsListedWithItsLine) {
  auto load = parse_masking(R"(masking:
  categories: [loyalty_number, email, Bad-Name]
  protected_columns:
    - {column: public.customers.email, category: email}
    - {column: PUBLIC.Customers.EMAIL, category: email}
    - {column: customers.email, category: email}
    - {column: 'public."unterminated.x', category: email}
    - {column: public.customers.x, category: shoe_size}
    - {column: public.customers.y}
  policies:
    - name: support
      roles: []
      rules:
        email: emial
        phone: {mask: partial, keep_first: -1, fill: "**"}
        birth_date: {mask: generalize, to: week}
        national_id: {mask: generalize, bucket: 0}
        card_number: {mask: generalize}
        address: {mask: custom, expression: "({value}"}
        person_name: hash
        public.customers.nope: redact
        public.customers.email: {mask: partial, keep: 2}
        hair_colour: redact
    - name: support
      roles: [a]
      default: {mask: pseudonym, kind: nickname}
  colour: blue
)",
                            fake_secrets());
  ASSERT_FALSE(load.ok());
  EXPECT_TRUE(has_issue(load, 2, "\"email\" is a built-in category")) << dump(load);
  EXPECT_TRUE(has_issue(load, 2, "\"Bad-Name\" is not a valid category name")) << dump(load);
  EXPECT_TRUE(has_issue(load, 5, "is listed twice")) << dump(load);  // identifier folding
  EXPECT_TRUE(has_issue(load, 6, "expected 3 dot-separated parts, found 2")) << dump(load);
  EXPECT_TRUE(has_issue(load, 7, "unterminated quoted identifier")) << dump(load);
  EXPECT_TRUE(has_issue(load, 8, "unknown category \"shoe_size\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 9, "needs a \"category\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 12, "roles must be a non-empty list")) << dump(load);
  EXPECT_TRUE(has_issue(load, 14, "unknown mask \"emial\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 15, "keep_first must be a non-negative integer")) << dump(load);
  EXPECT_TRUE(has_issue(load, 15, "fill must be exactly one character")) << dump(load);
  EXPECT_TRUE(has_issue(load, 16, "to must be one of year, month, day")) << dump(load);
  EXPECT_TRUE(has_issue(load, 17, "bucket must be a positive whole number")) << dump(load);
  EXPECT_TRUE(has_issue(load, 18, "needs \"to\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 19, "custom mask: does not parse")) << dump(load);
  EXPECT_TRUE(has_issue(load, 20, "need a key")) << dump(load);
  EXPECT_TRUE(has_issue(load, 21, "not in masking.protected_columns")) << dump(load);
  EXPECT_TRUE(has_issue(load, 22, "unknown key \"keep\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 23, "unknown category \"hair_colour\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 24, "duplicate policy name \"support\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 26, "kind must be one of")) << dump(load);
  EXPECT_TRUE(has_issue(load, 26, "need a key")) << dump(load);
  EXPECT_TRUE(has_issue(load, 27, "unknown key \"colour\" in masking")) << dump(load);
  EXPECT_EQ(load.issues.size(), 23U) << dump(load);
}

TEST(MaskingConfigTest, CustomTemplatesAreValidatedAgainstTheAllowlist) {
  const std::string head =
      "masking:\n  protected_columns: [{column: a.b.c, category: free_text}]\n"
      "  policies:\n    - name: p\n      roles: [r]\n      rules:\n        free_text: ";
  EXPECT_TRUE(has_issue(parse_masking(head + "{mask: custom, expression: \"util.f({value})\"}\n"), 7,
                        "function util.f is not allowed"));
  EXPECT_TRUE(parse_masking(head + "{mask: custom, expression: \"util.f({value})\"}\n"
                                   "  function_allowlist: [util.f]\n")
                  .ok());
  EXPECT_TRUE(has_issue(
      parse_masking(head + "{mask: custom, expression: \"query_to_xml({value}, true, true, '')\"}\n"), 7,
      "query_to_xml"));
  EXPECT_TRUE(has_issue(parse_masking(head + "{mask: custom, expression: \"(SELECT max(x) FROM t)\"}\n"), 7,
                        "must use {value}"));
  EXPECT_TRUE(has_issue(parse_masking(head + "custom\n"), 7, "needs an \"expression\""));
  EXPECT_TRUE(
      has_issue(parse_masking(head + "redact\n  function_allowlist: [f]\n"), 8, "write schema.function"));
}

// Issue 17: NULL stays NULL unless a rule says mask_nulls: true, which only
// masks that can give a NULL a stand-in accept (mask_nulls_supported()).
TEST(MaskingConfigTest, MaskNullsIsAPerRuleOptionDefaultingToFalse) {
  auto load = parse_masking(R"yaml(masking:
  protected_columns:
    - {column: public.customers.phone, category: phone}
    - {column: public.customers.ssn, category: national_id}
    - {column: public.customers.notes, category: free_text}
    - {column: public.customers.birth_date, category: birth_date}
  policies:
    - name: p
      roles: [r]
      default: {mask: redact, mask_nulls: yes}
      rules:
        phone: redact
        national_id: {mask: redact, value: "n/a", mask_nulls: true}
        free_text: {mask: custom, expression: "coalesce({value}, 'none')", mask_nulls: true}
        birth_date: {mask: null, mask_nulls: false}
        public.customers.phone: {mask: partial, keep_last: 2, mask_nulls: false}
)yaml");
  ASSERT_TRUE(load.ok()) << dump(load);
  const MaskPolicy& p = load.config.masking.policies.at(0);
  EXPECT_TRUE(p.default_spec.mask_nulls);
  EXPECT_FALSE(p.category_rules.at("phone").mask_nulls);  // the default
  MaskSpec ssn = p.spec_for({"public", "customers", "ssn"}, "national_id");
  EXPECT_TRUE(ssn.mask_nulls);
  EXPECT_EQ(ssn.value, "n/a");
  EXPECT_TRUE(p.spec_for({"public", "customers", "notes"}, "free_text").mask_nulls);
  EXPECT_FALSE(p.spec_for({"public", "customers", "birth_date"}, "birth_date").mask_nulls);
  EXPECT_FALSE(p.spec_for({"public", "customers", "phone"}, "phone").mask_nulls);
  EXPECT_TRUE(p.spec_for({"public", "customers", "x"}, "address").mask_nulls);  // policy default
  EXPECT_FALSE(MaskSpec::of(MaskKind::redact).mask_nulls);
  // A reload must see the change: it is part of the compared configuration.
  MaskSpec a = MaskSpec::of(MaskKind::redact);
  MaskSpec b = a;
  b.mask_nulls = true;
  EXPECT_NE(a, b);
}

TEST(MaskingConfigTest, MaskNullsIsRefusedWhereItCannotHideNulls) {
  const std::string head =
      "masking:\n  hash_key_env: PGCLOAK_MASK_KEY\n"
      "  protected_columns: [{column: a.b.c, category: free_text}]\n"
      "  policies:\n    - name: p\n      roles: [r]\n      rules:\n        free_text: ";
  for (const char* rule :
       {"{mask: allow, mask_nulls: true}", "{mask: deny, mask_nulls: true}",
        "{mask: partial, keep_last: 2, mask_nulls: true}", "{mask: email, mask_nulls: true}",
        "{mask: last4, mask_nulls: true}", "{mask: hash, mask_nulls: true}",
        "{mask: pseudonym, mask_nulls: true}", "{mask: generalize, to: year, mask_nulls: true}",
        "{mask: redact_patterns, mask_nulls: true}"}) {
    auto load = parse_masking(head + rule + "\n");
    EXPECT_TRUE(has_issue(load, 8, "mask_nulls: true")) << rule << "\n" << dump(load);
    EXPECT_TRUE(has_issue(load, 8, "redact, null or custom")) << rule << "\n" << dump(load);
    EXPECT_EQ(load.issues.size(), 1U) << rule << "\n" << dump(load);
  }
  for (const char* rule : {"{mask: redact, mask_nulls: true}", "{mask: null, mask_nulls: true}",
                           "{mask: custom, expression: \"upper({value})\", mask_nulls: true}",
                           "{mask: hash, mask_nulls: false}", "{mask: allow, mask_nulls: false}"}) {
    auto load = parse_masking(head + rule + "\n");
    EXPECT_TRUE(load.ok()) << rule << "\n" << dump(load);
  }
  EXPECT_TRUE(has_issue(parse_masking(head + "{mask: redact, mask_nulls: sometimes}\n"), 8,
                        "mask_nulls must be true or false"));
  EXPECT_TRUE(has_issue(parse_masking(head + "{mask: redact, mask_nulls: [true]}\n"), 8, "mask_nulls"));
  // The policy default is a rule like any other.
  EXPECT_TRUE(
      has_issue(parse_masking("masking:\n  default_policy: {default: {mask: hash, mask_nulls: true}}\n"
                              "  hash_key_env: PGCLOAK_MASK_KEY\n"),
                2, "mask_nulls: true"));
}

TEST(MaskingConfigTest, KeySourcesAreChecked) {
  const std::string hash_rule =
      "  protected_columns: [{column: a.b.c, category: email}]\n"
      "  policies: [{name: p, roles: [r], rules: {email: hash}}]\n";
  EXPECT_TRUE(has_issue(parse_masking("masking:\n" + hash_rule), 3, "need a key"));
  EXPECT_TRUE(parse_masking("masking:\n  hash_key_env: PGCLOAK_MASK_KEY\n" + hash_rule).ok());
  EXPECT_TRUE(has_issue(
      parse_masking("masking:\n  hash_key_file: /etc/pgcloak/mask.key\n  hash_key_env: PGCLOAK_MASK_KEY\n"),
      3, "either hash_key_file or hash_key_env"));
  EXPECT_TRUE(has_issue(parse_masking("masking:\n  hash_key_file: /nonexistent/key\n"), 2, "cannot read"));
  EXPECT_TRUE(has_issue(parse_masking("masking:\n  hash_key_env: OTHER\n"), 2, "OTHER is not set"));
  auto short_key = parse_masking("masking:\n  hash_key_env: PGCLOAK_MASK_KEY\n",
                                 fake_secrets(std::nullopt, std::string(31, 'k') + "\n"));
  EXPECT_TRUE(has_issue(short_key, 2, "is 31 bytes; at least 32")) << dump(short_key);
  EXPECT_EQ(dump(short_key).find("kkkk"), std::string::npos);  // the key is never printed
}

TEST(MaskingConfigTest, WrongShapesAreReported) {
  EXPECT_TRUE(has_issue(parse_masking("masking: [1]\n"), 1, "masking must be a mapping"));
  EXPECT_TRUE(has_issue(parse_masking("masking:\n  policies: {a: 1}\n"), 2, "policies must be a list"));
  EXPECT_TRUE(has_issue(parse_masking("masking:\n  policies:\n    - {roles: [a]}\n"), 3, "needs a \"name\""));
  EXPECT_TRUE(has_issue(parse_masking("masking:\n  default_policy: {rules: {email: [1]}}\n"), 2,
                        "must be a mask name or a mapping"));
  EXPECT_TRUE(has_issue(parse_masking("masking:\n  default_policy: {rules: {email: {keep_first: 1}}}\n"), 2,
                        "needs a \"mask\" key"));
  EXPECT_TRUE(has_issue(
      parse_masking("masking:\n  protected_columns:\n    - {column: 'a.\"\".c', category: email}\n"), 3,
      "zero-length quoted identifier"));
  EXPECT_TRUE(
      has_issue(parse_masking("masking:\n  protected_columns:\n    - {column: 'a.b c.d', category: email}\n"),
                3, "unexpected"));
}

TEST(QualifiedNameTest, PostgresIdentifierRules) {
  std::string why;
  auto c = parse_qualified_column("Public.\"MixedCase\".col_1$", why);
  ASSERT_TRUE(c) << why;
  EXPECT_EQ(*c, (QualifiedColumn{"public", "MixedCase", "col_1$"}));
  EXPECT_FALSE(parse_qualified_column("a.b.c.d", why));
  EXPECT_FALSE(parse_qualified_column("1a.b.c", why));
  EXPECT_FALSE(parse_qualified_column("a..c", why));
  EXPECT_FALSE(parse_qualified_column(std::string(64, 'a') + ".b.c", why));
  EXPECT_TRUE(parse_qualified_column("\"a.b\".c.d", why));
}

// --- auth and catalog -------------------------------------------------------

SecretSources password_file_secrets(std::optional<std::string> content) {
  SecretSources s;
  s.read_file = [content](const std::string& path) -> std::optional<std::string> {
    if (path != "/etc/pgcloak/catalog.pass") return std::nullopt;
    return content;
  };
  s.get_env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  return s;
}

TEST(AuthConfigTest, DefaultsArePassthrough) {
  auto load = parse_config("");
  ASSERT_TRUE(load.ok()) << dump(load);
  const Config& c = load.config;
  EXPECT_EQ(c.auth.mode, AuthMode::passthrough);
  EXPECT_EQ(c.auth.auth_query, "SELECT usename, passwd FROM pgcloak.get_auth($1)");
  EXPECT_EQ(c.auth.auth_dbname, "");
  EXPECT_EQ(c.auth.verifier_cache_ttl, Duration(60000));
  EXPECT_EQ(c.catalog.user, "pgcloak");
  EXPECT_EQ(c.catalog.password, "");
  EXPECT_EQ(c.catalog.password_file, "");
}

TEST(AuthConfigTest, ScramWithEveryKey) {
  auto load = parse_config(R"yaml(
auth:
  mode: scram
  auth_query: "SELECT u, p FROM my.lookup($1)"
  auth_dbname: postgres
  verifier_cache_ttl: 0
catalog:
  user: gateway
  password: s3cret
)yaml");
  ASSERT_TRUE(load.ok()) << dump(load);
  const Config& c = load.config;
  EXPECT_EQ(c.auth.mode, AuthMode::scram);
  EXPECT_EQ(c.auth.auth_query, "SELECT u, p FROM my.lookup($1)");
  EXPECT_EQ(c.auth.auth_dbname, "postgres");
  EXPECT_EQ(c.auth.verifier_cache_ttl, Duration(0));
  EXPECT_EQ(c.catalog.user, "gateway");
  EXPECT_EQ(c.catalog.password, "s3cret");
}

TEST(AuthConfigTest, PasswordFileFirstLineIsThePassword) {
  const std::string yaml = "auth:\n  mode: scram\ncatalog:\n  password_file: /etc/pgcloak/catalog.pass\n";
  auto load = parse_config(yaml, password_file_secrets("from-file\r\nsecond line\n"));
  ASSERT_TRUE(load.ok()) << dump(load);
  EXPECT_EQ(load.config.catalog.password, "from-file");
  EXPECT_EQ(load.config.catalog.password_file, "/etc/pgcloak/catalog.pass");

  auto unreadable = parse_config(yaml, password_file_secrets(std::nullopt));
  EXPECT_TRUE(has_issue(unreadable, 4, "catalog.password_file: cannot read")) << dump(unreadable);
  auto empty = parse_config(yaml, password_file_secrets("\n"));
  EXPECT_TRUE(has_issue(empty, 4, "is empty")) << dump(empty);
}

TEST(AuthConfigTest, ScramNeedsACatalogLogin) {
  auto no_password = parse_config("log:\n  level: info\nauth:\n  mode: scram\n");
  EXPECT_TRUE(has_issue(no_password, 4, "auth.mode scram needs a password for the catalog login"))
      << dump(no_password);
  EXPECT_EQ(no_password.issues.size(), 1U) << dump(no_password);

  auto no_user = parse_config("auth:\n  mode: scram\ncatalog:\n  user: \"\"\n  password: x\n");
  EXPECT_TRUE(has_issue(no_user, 4, "auth.mode scram needs catalog.user")) << dump(no_user);

  auto both = parse_config(
      "catalog:\n  password: x\n  password_file: /etc/pgcloak/catalog.pass\nauth:\n  mode: scram\n",
      password_file_secrets("y"));
  EXPECT_TRUE(has_issue(both, 3, "either password or password_file, not both")) << dump(both);

  auto no_param = parse_config("auth:\n  mode: scram\n  auth_query: SELECT 1, 2\ncatalog:\n  password: x\n");
  EXPECT_TRUE(has_issue(no_param, 3, "must take the login name as $1")) << dump(no_param);

  // Passthrough needs none of it.
  EXPECT_TRUE(parse_config("auth:\n  mode: passthrough\n").ok());
}

TEST(AuthConfigTest, WrongKeysAndValuesAreReportedWithTheirLines) {
  auto load = parse_config(R"(auth:
  mode: ldap
  verifier_cache_ttl: soon
  cache_ttl: 1s
catalog:
  usr: pgcloak
  password: [a, b]
)");
  ASSERT_FALSE(load.ok());
  EXPECT_TRUE(has_issue(load, 2, "auth.mode must be one of passthrough, scram, not \"ldap\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 3, "auth.verifier_cache_ttl")) << dump(load);
  EXPECT_TRUE(has_issue(load, 4, "unknown key \"cache_ttl\" in auth")) << dump(load);
  EXPECT_TRUE(has_issue(load, 6, "unknown key \"usr\" in catalog")) << dump(load);
  EXPECT_TRUE(has_issue(load, 7, "catalog.password must be a string")) << dump(load);
}

TEST(CatalogConfigTest, DbnameAndRefreshInterval) {
  auto defaults = parse_config("");
  ASSERT_TRUE(defaults.ok()) << dump(defaults);
  EXPECT_EQ(defaults.config.catalog.dbname, "");
  EXPECT_EQ(defaults.config.catalog.refresh_interval, Duration(60000));

  auto set = parse_config("catalog:\n  dbname: shop\n  refresh_interval: 5s\n");
  ASSERT_TRUE(set.ok()) << dump(set);
  EXPECT_EQ(set.config.catalog.dbname, "shop");
  EXPECT_EQ(set.config.catalog.refresh_interval, Duration(5000));

  auto too_short = parse_config("catalog:\n  refresh_interval: 500ms\n");
  EXPECT_TRUE(has_issue(too_short, 2, "catalog.refresh_interval must be at least 1s")) << dump(too_short);
  auto bad = parse_config("catalog:\n  refresh_interval: often\n");
  EXPECT_TRUE(has_issue(bad, 2, "catalog.refresh_interval")) << dump(bad);
}

TEST(CatalogConfigTest, ProtectedColumnsNeedADatabase) {
  const std::string masking = "masking:\n  protected_columns: [{column: a.b.c, category: email}]\n";
  auto missing = parse_config(masking, fake_secrets());
  EXPECT_TRUE(has_issue(missing, 2, "masking.protected_columns needs catalog.dbname")) << dump(missing);
  EXPECT_EQ(missing.issues.size(), 1U) << dump(missing);
  auto empty = parse_config(masking + "catalog:\n  dbname: \"\"\n", fake_secrets());
  EXPECT_TRUE(has_issue(empty, 4, "needs catalog.dbname")) << dump(empty);
  EXPECT_TRUE(parse_config(masking + "catalog:\n  dbname: shop\n", fake_secrets()).ok());
  // Without protected columns masking is off and no database is needed.
  EXPECT_TRUE(parse_config("masking:\n  policies: []\n", fake_secrets()).ok());
}

// --- audit ----------------------------------------------------------------------

const std::string audit_key_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

SecretSources audit_secrets(std::optional<std::string> key_file = audit_key_hex + "\n",
                            std::optional<std::string> env = std::nullopt) {
  SecretSources s;
  s.read_file = [key_file](const std::string& path) -> std::optional<std::string> {
    if (path == "/etc/pgcloak/audit.key") return key_file;
    if (path == "/etc/pgcloak/params.key") return audit_key_hex;
    return std::nullopt;
  };
  s.get_env = [env](const std::string& name) -> std::optional<std::string> {
    if (name != "PGCLOAK_AUDIT_KEY") return std::nullopt;
    return env;
  };
  return s;
}

TEST(AuditConfigTest, CompressTakesAFormatOrABoolean) {
  const std::pair<std::string, AuditCompression> cases[] = {{"zstd", AuditCompression::zstd},
                                                            {"gzip", AuditCompression::gzip},
                                                            {"none", AuditCompression::none},
                                                            {"true", AuditCompression::zstd},
                                                            {"false", AuditCompression::none}};
  for (const auto& [value, want] : cases) {
    auto load = parse_config(
        "audit:\n  key_file: /etc/pgcloak/audit.key\n  file:\n    path: /tmp/a.jsonl\n"
        "    compress: " +
            value + "\n",
        audit_secrets());
    ASSERT_TRUE(load.ok()) << value << ": " << dump(load);
    EXPECT_EQ(load.config.audit.file.compress, want) << value;
  }
  auto bad = parse_config(
      "audit:\n  key_file: /etc/pgcloak/audit.key\n  file:\n    path: /tmp/a.jsonl\n"
      "    compress: lz4\n",
      audit_secrets());
  EXPECT_TRUE(
      has_issue(bad, 5, "audit.file.compress must be one of zstd, gzip, none, true, false, not \"lz4\""))
      << dump(bad);
}

TEST(AuditConfigTest, AbsentSectionMeansAuditOff) {
  auto load = parse_config("threads: 1\n", audit_secrets());
  ASSERT_TRUE(load.ok()) << dump(load);
  const AuditConfig& a = load.config.audit;
  EXPECT_FALSE(a.enabled);
  EXPECT_EQ(a.durability, AuditDurability::batched);
  EXPECT_EQ(a.flush_interval, Duration(200));
  EXPECT_EQ(a.on_failure, AuditOnFailure::fail_closed);
  EXPECT_EQ(a.queue_limit, 100000U);
  EXPECT_EQ(a.file.rotate_size, uint64_t{256} << 20);
  EXPECT_EQ(a.file.rotate_age, Duration(24 * 3600 * 1000));
  EXPECT_EQ(a.file.compress, AuditCompression::zstd);
  EXPECT_EQ(a.syslog.port, 514);
}

TEST(AuditConfigTest, EveryKeyParses) {
  // syslog.ca_file is a certificate, read from disk like tls.cert_file.
  const std::string ca = ::testing::TempDir() + "/pgcloak-audit-test-ca.pem";
  { std::ofstream(ca) << "not checked here\n"; }
  std::string yaml = R"(
audit:
  durability: strict
  flush_interval: 50ms
  on_failure: block
  key_file: /etc/pgcloak/audit.key
  log_parameters: true
  parameter_key_file: /etc/pgcloak/params.key
  queue_limit: 5000
  stdout: true
  file:
    path: /var/log/pgcloak/audit.jsonl
    rotate_size: 64MiB
    rotate_age: 6h
    compress: false
    retention_days: 90
  syslog:
    host: logs.internal
    port: 6514
    tls: true
    ca_file: CA
    app_name: gw
    hostname: gw1
    facility: 10
    connect_timeout: 2s
)";
  yaml.replace(yaml.find("ca_file: CA") + 9, 2, ca);
  auto load = parse_config(yaml, audit_secrets());
  ASSERT_TRUE(load.ok()) << dump(load);
  const AuditConfig& a = load.config.audit;
  EXPECT_TRUE(a.enabled);
  EXPECT_EQ(a.durability, AuditDurability::strict);
  EXPECT_EQ(a.flush_interval, Duration(50));
  EXPECT_EQ(a.on_failure, AuditOnFailure::block);
  EXPECT_EQ(a.key_file, "/etc/pgcloak/audit.key");
  EXPECT_TRUE(a.log_parameters);
  EXPECT_EQ(a.parameter_key_file, "/etc/pgcloak/params.key");
  EXPECT_EQ(a.queue_limit, 5000U);
  EXPECT_TRUE(a.stdout_sink);
  EXPECT_EQ(a.file.path, "/var/log/pgcloak/audit.jsonl");
  EXPECT_EQ(a.file.rotate_size, uint64_t{64} << 20);
  EXPECT_EQ(a.file.rotate_age, Duration(6 * 3600 * 1000));
  EXPECT_EQ(a.file.compress, AuditCompression::none);
  EXPECT_EQ(a.file.retention_days, 90U);
  EXPECT_EQ(a.syslog.host, "logs.internal");
  EXPECT_EQ(a.syslog.port, 6514);
  EXPECT_TRUE(a.syslog.tls);
  EXPECT_EQ(a.syslog.app_name, "gw");
  EXPECT_EQ(a.syslog.hostname, "gw1");
  EXPECT_EQ(a.syslog.facility, 10U);
  EXPECT_EQ(a.syslog.connect_timeout, Duration(2000));
}

TEST(AuditConfigTest, KeyFromTheEnvironmentAndTheRatchetedKeyFileFormat) {
  auto env = parse_config("audit:\n  key_env: PGCLOAK_AUDIT_KEY\n  stdout: true\n",
                          audit_secrets(std::nullopt, audit_key_hex));
  ASSERT_TRUE(env.ok()) << dump(env);
  EXPECT_EQ(env.config.audit.key_env, "PGCLOAK_AUDIT_KEY");
  auto ratcheted = parse_config("audit:\n  key_file: /etc/pgcloak/audit.key\n  stdout: true\n",
                                audit_secrets("pgcloak-audit-key v1 epoch=12 " + audit_key_hex + "\n"));
  EXPECT_TRUE(ratcheted.ok()) << dump(ratcheted);
  // enabled: false keeps the section but turns audit off, without checks.
  auto off = parse_config("audit:\n  enabled: false\n", audit_secrets());
  ASSERT_TRUE(off.ok()) << dump(off);
  EXPECT_FALSE(off.config.audit.enabled);
}

TEST(AuditConfigTest, CrossChecksAreReportedWithTheirLines) {
  auto no_key = parse_config("threads: 1\naudit:\n  stdout: true\n", audit_secrets());
  EXPECT_TRUE(has_issue(no_key, 3, "audit needs a chain key")) << dump(no_key);
  EXPECT_EQ(no_key.issues.size(), 1U) << dump(no_key);

  auto both = parse_config(
      "audit:\n  key_file: /etc/pgcloak/audit.key\n  key_env: PGCLOAK_AUDIT_KEY\n  stdout: true\n",
      audit_secrets());
  EXPECT_TRUE(has_issue(both, 3, "either key_file or key_env, not both")) << dump(both);

  auto unreadable =
      parse_config("audit:\n  key_file: /etc/pgcloak/nope.key\n  stdout: true\n", audit_secrets());
  EXPECT_TRUE(has_issue(unreadable, 2, "audit.key_file: cannot read")) << dump(unreadable);
  auto unset = parse_config("audit:\n  key_env: PGCLOAK_AUDIT_KEY\n  stdout: true\n", audit_secrets());
  EXPECT_TRUE(has_issue(unset, 2, "PGCLOAK_AUDIT_KEY is not set")) << dump(unset);
  auto short_key = parse_config("audit:\n  key_file: /etc/pgcloak/audit.key\n  stdout: true\n",
                                audit_secrets("0123abcd\n"));
  EXPECT_TRUE(has_issue(short_key, 2, "must be 64 hex digits")) << dump(short_key);
  EXPECT_EQ(dump(short_key).find("0123abcd"), std::string::npos);  // never print the key

  auto no_sink = parse_config("audit:\n  key_file: /etc/pgcloak/audit.key\n", audit_secrets());
  EXPECT_TRUE(has_issue(no_sink, 2, "audit needs at least one sink")) << dump(no_sink);
  auto no_path = parse_config("audit:\n  key_file: /etc/pgcloak/audit.key\n  file:\n    compress: true\n",
                              audit_secrets());
  EXPECT_TRUE(has_issue(no_path, 4, "audit.file needs a path")) << dump(no_path);
  EXPECT_EQ(no_path.issues.size(), 1U) << dump(no_path);

  auto params =
      parse_config("audit:\n  key_file: /etc/pgcloak/audit.key\n  stdout: true\n  log_parameters: true\n",
                   audit_secrets());
  EXPECT_TRUE(has_issue(params, 4, "audit.log_parameters needs audit.parameter_key_file")) << dump(params);
  auto params_unreadable = parse_config(
      "audit:\n  key_file: /etc/pgcloak/audit.key\n  stdout: true\n  log_parameters: true\n  "
      "parameter_key_file: "
      "/nope\n",
      audit_secrets());
  EXPECT_TRUE(has_issue(params_unreadable, 5, "audit.parameter_key_file: cannot read"))
      << dump(params_unreadable);

  auto tls = parse_config(
      "audit:\n  key_file: /etc/pgcloak/audit.key\n  syslog:\n    host: 127.0.0.1\n    tls: true\n",
      audit_secrets());
  EXPECT_TRUE(has_issue(tls, 5, "audit.syslog.tls needs audit.syslog.ca_file")) << dump(tls);
  // A syslog sink alone is a sink.
  EXPECT_TRUE(parse_config("audit:\n  key_file: /etc/pgcloak/audit.key\n  syslog:\n    host: 127.0.0.1\n",
                           audit_secrets())
                  .ok());
}

TEST(AuditConfigTest, WrongKeysTypesAndValuesAreReportedWithTheirLines) {
  auto load = parse_config(R"(audit:
  durability: eventually
  flush_interval: 0
  on_failure: ignore
  queue_limit: 0
  stdout: maybe
  key_file: /etc/pgcloak/audit.key
  fsync: always
  file:
    path: [a]
    rotate_size: 10KiB
    rotate_age: 30s
    retention_days: -1
    compresss: true
  syslog:
    port: 70000
    facility: 24
    connect_timeout: soon
)",
                           audit_secrets());
  ASSERT_FALSE(load.ok());
  EXPECT_TRUE(has_issue(load, 2, "audit.durability must be one of batched, strict")) << dump(load);
  EXPECT_TRUE(has_issue(load, 3, "audit.flush_interval must be between 1ms and 60s")) << dump(load);
  EXPECT_TRUE(has_issue(load, 4, "audit.on_failure must be one of fail_closed, block")) << dump(load);
  EXPECT_TRUE(has_issue(load, 5, "audit.queue_limit must be between 1")) << dump(load);
  EXPECT_TRUE(has_issue(load, 6, "audit.stdout must be true or false")) << dump(load);
  EXPECT_TRUE(has_issue(load, 8, "unknown key \"fsync\" in audit")) << dump(load);
  EXPECT_TRUE(has_issue(load, 10, "audit.file.path must be a string")) << dump(load);
  EXPECT_TRUE(has_issue(load, 11, "audit.file.rotate_size must be 0 (never) or at least 64KiB"))
      << dump(load);
  EXPECT_TRUE(has_issue(load, 12, "audit.file.rotate_age must be 0 (never) or at least 1m")) << dump(load);
  EXPECT_TRUE(has_issue(load, 13, "audit.file.retention_days must be a non-negative integer")) << dump(load);
  EXPECT_TRUE(has_issue(load, 14, "unknown key \"compresss\" in audit.file")) << dump(load);
  EXPECT_TRUE(has_issue(load, 16, "audit.syslog.port must be between 1 and 65535")) << dump(load);
  EXPECT_TRUE(has_issue(load, 17, "audit.syslog.facility must be between 0 and 23")) << dump(load);
  EXPECT_TRUE(has_issue(load, 18, "audit.syslog.connect_timeout")) << dump(load);

  auto not_a_map = parse_config("audit: yes\n", audit_secrets());
  EXPECT_TRUE(has_issue(not_a_map, 1, "audit must be a mapping")) << dump(not_a_map);
}

// --- metrics --------------------------------------------------------------------

const std::string metrics_token = "0123456789abcdef0123456789abcdef";

SecretSources metrics_secrets(std::optional<std::string> token_file = metrics_token + "\n",
                              std::optional<std::string> env = std::nullopt) {
  SecretSources s;
  s.read_file = [token_file](const std::string& path) -> std::optional<std::string> {
    if (path == "/etc/pgcloak/metrics.token") return token_file;
    return std::nullopt;
  };
  s.get_env = [env](const std::string& name) -> std::optional<std::string> {
    if (name != "PGCLOAK_METRICS_TOKEN") return std::nullopt;
    return env;
  };
  return s;
}

TEST(MetricsConfigTest, OnByDefaultOnLoopbackWithoutAToken) {
  auto load = parse_config("threads: 1\n", metrics_secrets());
  ASSERT_TRUE(load.ok()) << dump(load);
  const MetricsConfig& m = load.config.metrics;
  EXPECT_TRUE(m.enabled);
  EXPECT_EQ(m.listen.host, "127.0.0.1");
  EXPECT_EQ(m.listen.port, 9930);
  EXPECT_TRUE(m.token.empty());
  EXPECT_FALSE(m.tls_enabled());
  EXPECT_EQ(m.max_users, 100U);
  EXPECT_EQ(m.max_databases, 20U);
  EXPECT_EQ(m.max_relations, 200U);
}

TEST(MetricsConfigTest, EveryKeyParses) {
  // Certificates are read from disk, like tls.cert_file.
  const std::string cert = ::testing::TempDir() + "/pgcloak-metrics-test-cert.pem";
  const std::string key = ::testing::TempDir() + "/pgcloak-metrics-test-key.pem";
  { std::ofstream(cert) << "not checked here\n"; }
  { std::ofstream(key) << "not checked here\n"; }
  const std::string yaml =
      "metrics:\n"
      "  enabled: true\n"
      "  listen: \"0.0.0.0:9187\"\n"
      "  token_file: /etc/pgcloak/metrics.token\n"
      "  tls:\n"
      "    cert_file: " +
      cert +
      "\n"
      "    key_file: " +
      key +
      "\n"
      "  max_users: 500\n"
      "  max_databases: 3\n"
      "  max_relations: 1000\n";
  auto load = parse_config(yaml, metrics_secrets());
  ASSERT_TRUE(load.ok()) << dump(load);
  const MetricsConfig& m = load.config.metrics;
  EXPECT_TRUE(m.enabled);
  EXPECT_EQ(m.listen.host, "0.0.0.0");
  EXPECT_EQ(m.listen.port, 9187);
  EXPECT_EQ(m.token_file, "/etc/pgcloak/metrics.token");
  EXPECT_EQ(m.token, metrics_token);  // the first line, without its newline
  EXPECT_TRUE(m.tls_enabled());
  EXPECT_EQ(m.tls_cert_file, cert);
  EXPECT_EQ(m.tls_key_file, key);
  EXPECT_EQ(m.max_users, 500U);
  EXPECT_EQ(m.max_databases, 3U);
  EXPECT_EQ(m.max_relations, 1000U);
}

TEST(MetricsConfigTest, TokenFromTheEnvironmentAndOffSkipsTheChecks) {
  auto env = parse_config("metrics:\n  listen: \"[::]:9930\"\n  token_env: PGCLOAK_METRICS_TOKEN\n",
                          metrics_secrets(std::nullopt, metrics_token));
  ASSERT_TRUE(env.ok()) << dump(env);
  EXPECT_EQ(env.config.metrics.listen.host, "::");
  EXPECT_EQ(env.config.metrics.token, metrics_token);
  // Loopback needs no token, IPv6 and "localhost" included.
  EXPECT_TRUE(parse_config("metrics:\n  listen: \"[::1]:9930\"\n", metrics_secrets()).ok());
  EXPECT_TRUE(parse_config("metrics:\n  listen: \"localhost:9930\"\n", metrics_secrets()).ok());
  EXPECT_TRUE(parse_config("metrics:\n  listen: \"127.0.0.2:9930\"\n", metrics_secrets()).ok());
  // enabled: false: nothing is served, so nothing is checked.
  auto off = parse_config("metrics:\n  enabled: false\n  listen: \"0.0.0.0:9930\"\n", metrics_secrets());
  ASSERT_TRUE(off.ok()) << dump(off);
  EXPECT_FALSE(off.config.metrics.enabled);
}

TEST(MetricsConfigTest, CrossChecksAreReportedWithTheirLines) {
  auto open = parse_config("threads: 1\nmetrics:\n  listen: \"0.0.0.0:9930\"\n", metrics_secrets());
  EXPECT_TRUE(has_issue(open, 3, "is not a loopback address: set metrics.token_file")) << dump(open);
  EXPECT_EQ(open.issues.size(), 1U) << dump(open);
  auto named = parse_config("metrics:\n  listen: \"metrics.internal:9930\"\n", metrics_secrets());
  EXPECT_TRUE(has_issue(named, 2, "is not a loopback address")) << dump(named);

  auto both =
      parse_config("metrics:\n  token_file: /etc/pgcloak/metrics.token\n  token_env: PGCLOAK_METRICS_TOKEN\n",
                   metrics_secrets(metrics_token, metrics_token));
  EXPECT_TRUE(has_issue(both, 3, "either token_file or token_env, not both")) << dump(both);

  auto unreadable = parse_config("metrics:\n  token_file: /etc/pgcloak/nope\n", metrics_secrets());
  EXPECT_TRUE(has_issue(unreadable, 2, "metrics.token_file: cannot read")) << dump(unreadable);
  auto unset = parse_config("metrics:\n  token_env: PGCLOAK_METRICS_TOKEN\n", metrics_secrets());
  EXPECT_TRUE(has_issue(unset, 2, "PGCLOAK_METRICS_TOKEN is not set")) << dump(unset);

  auto short_token =
      parse_config("metrics:\n  token_file: /etc/pgcloak/metrics.token\n", metrics_secrets("s3cret\n"));
  EXPECT_TRUE(has_issue(short_token, 2, "the bearer token must be 16 to 4096 characters"))
      << dump(short_token);
  EXPECT_EQ(dump(short_token).find("s3cret"), std::string::npos);  // never print the token
  EXPECT_TRUE(short_token.config.metrics.token.empty());
  // A space or a quote could not be sent in an Authorization header as is.
  auto bad_chars = parse_config("metrics:\n  token_env: PGCLOAK_METRICS_TOKEN\n",
                                metrics_secrets(std::nullopt, "0123456789abcdef 0123456789\""));
  EXPECT_TRUE(has_issue(bad_chars, 2, "the bearer token must be")) << dump(bad_chars);
  auto empty_first_line = parse_config("metrics:\n  token_file: /etc/pgcloak/metrics.token\n",
                                       metrics_secrets("\n" + metrics_token + "\n"));
  EXPECT_TRUE(has_issue(empty_first_line, 2, "the bearer token must be")) << dump(empty_first_line);
  // base64 padding is part of RFC 6750's b64token.
  EXPECT_TRUE(parse_config("metrics:\n  token_file: /etc/pgcloak/metrics.token\n",
                           metrics_secrets("QUJDREVGR0hJSktMTU5PUA==\r\n"))
                  .ok());

  auto half_tls = parse_config("metrics:\n  tls:\n    cert_file: /nonexistent/cert.pem\n", metrics_secrets());
  EXPECT_TRUE(has_issue(half_tls, 3, "metrics.tls.cert_file and metrics.tls.key_file must be set together"))
      << dump(half_tls);
  EXPECT_TRUE(has_issue(half_tls, 3, "metrics.tls.cert_file: cannot read")) << dump(half_tls);
}

TEST(MetricsConfigTest, WrongKeysTypesAndValuesAreReportedWithTheirLines) {
  auto load = parse_config(R"(metrics:
  enabled: sometimes
  listen: 9930
  max_users: 0
  max_databases: many
  max_relations: 10001
  token: abc
  tls:
    cert: x
)",
                           metrics_secrets());
  ASSERT_FALSE(load.ok());
  EXPECT_TRUE(has_issue(load, 2, "metrics.enabled must be true or false")) << dump(load);
  EXPECT_TRUE(has_issue(load, 3, "metrics.listen \"9930\": expected host:port")) << dump(load);
  EXPECT_TRUE(has_issue(load, 4, "metrics.max_users must be between 1 and 10000")) << dump(load);
  EXPECT_TRUE(has_issue(load, 5, "metrics.max_databases must be a non-negative integer")) << dump(load);
  EXPECT_TRUE(has_issue(load, 6, "metrics.max_relations must be between 1 and 10000")) << dump(load);
  EXPECT_TRUE(has_issue(load, 7, "unknown key \"token\" in metrics")) << dump(load);
  EXPECT_TRUE(has_issue(load, 9, "unknown key \"cert\" in metrics.tls")) << dump(load);

  auto not_a_map = parse_config("metrics: on\n", metrics_secrets());
  EXPECT_TRUE(has_issue(not_a_map, 1, "metrics must be a mapping")) << dump(not_a_map);
  auto bad_port = parse_config("metrics:\n  listen: \"127.0.0.1:0\"\n", metrics_secrets());
  EXPECT_TRUE(has_issue(bad_port, 2, "port must be 1-65535")) << dump(bad_port);
}

// --- detection ------------------------------------------------------------------

TEST(DetectionConfigTest, AbsentSectionMeansDetectionOff) {
  auto load = parse_config("threads: 1\n");
  ASSERT_TRUE(load.ok()) << dump(load);
  EXPECT_FALSE(load.config.detection.enabled);
  EXPECT_TRUE(load.config.detection.rules.empty());
  EXPECT_EQ(load.config.detection.time_zone->name(), "UTC");
}

TEST(DetectionConfigTest, EveryKeyParses) {
  auto load = parse_config(R"(
detection:
  state_file: /var/lib/pgcloak/detection.json
  save_interval: 30s
  time_zone: Europe/Berlin
  max_tracked: 5000
  rules:
    - name: bulk-read
      detector: statement_volume
      roles: [support_team]
      relations: [public.customers, '"Sales"."Leads"']
      categories: [email]
      action: block
      block_for: 15m
      cooldown: 1m
      max_rows: 1000
      max_bytes: 16MiB
    - {name: volume-1m, detector: window_volume, window: 1m, sensitivity: 4.5, floor_rows: 500, warmup: 2d}
    - {name: drip, detector: slow_drip, exclude_roles: [app_services], window: 10m, max_distinct: 200}
    - {name: new-table, detector: first_access, warmup: 1d}
    - name: night
      detector: off_hours
      time_zone: America/New_York
      allowed:
        - {days: [mon, tue, wed, thu, fri], from: "07:00", to: "20:00"}
        - {days: [sat], from: "22:00", to: "02:00"}
        - {from: "12:00", to: "24:00"}
        - {days: [sun], from: "00:00", to: "24:00"}
    - {name: export, detector: bulk_export, copy_to: true, full_scan: false, min_rows: 1000, action: cancel}
    - {name: probe, detector: probing, window: 5m, max_denials: 5, max_predicates: 30, action: terminate}
    - {name: app-misuse, detector: service_account, roles: [app_services], clients: [10.0.0.0/8, "2001:db8::/32", 192.0.2.7],
       application_names: [shop-web], learn: true, warmup: 1d}
)");
  ASSERT_TRUE(load.ok()) << dump(load);
  const DetectionConfig& d = load.config.detection;
  EXPECT_TRUE(d.enabled);
  EXPECT_EQ(d.state_file, "/var/lib/pgcloak/detection.json");
  EXPECT_EQ(d.save_interval, std::chrono::seconds(30));
  EXPECT_EQ(d.time_zone->name(), "Europe/Berlin");
  EXPECT_EQ(d.max_tracked, 5000U);
  ASSERT_EQ(d.rules.size(), 8U);
  const DetectionRule& bulk = d.rules[0];
  EXPECT_EQ(bulk.name, "bulk-read");
  EXPECT_EQ(bulk.detector, DetectorKind::statement_volume);
  EXPECT_EQ(bulk.roles, std::vector<std::string>{"support_team"});
  EXPECT_EQ(bulk.relations, (std::vector<std::string>{"public.customers", "Sales.Leads"}));
  EXPECT_EQ(bulk.categories, std::vector<std::string>{"email"});
  EXPECT_EQ(bulk.action, AlertAction::block);
  EXPECT_EQ(bulk.block_for, std::chrono::seconds(900));
  EXPECT_EQ(bulk.cooldown, std::chrono::seconds(60));
  EXPECT_EQ(bulk.max_rows, 1000U);
  EXPECT_EQ(bulk.max_bytes, 16U << 20);
  const DetectionRule& vol = d.rules[1];
  EXPECT_EQ(vol.window, std::chrono::seconds(60));
  EXPECT_DOUBLE_EQ(vol.sensitivity, 4.5);
  EXPECT_EQ(vol.floor_rows, 500U);
  EXPECT_EQ(vol.warmup, std::chrono::hours(48));
  EXPECT_EQ(vol.cooldown, std::chrono::seconds(300));  // the default
  EXPECT_EQ(d.rules[2].exclude_roles, std::vector<std::string>{"app_services"});
  EXPECT_EQ(d.rules[2].max_distinct, 200U);
  EXPECT_EQ(d.rules[3].warmup, std::chrono::hours(24));
  const DetectionRule& night = d.rules[4];
  EXPECT_EQ(night.time_zone->name(), "America/New_York");
  ASSERT_EQ(night.allowed.size(), 4U);
  EXPECT_EQ(night.allowed[3].from_minute, 0U);  // a whole Sunday
  EXPECT_EQ(night.allowed[3].to_minute, 1440U);
  EXPECT_EQ(night.allowed[0].days, 0x1f);
  EXPECT_EQ(night.allowed[0].from_minute, 420U);
  EXPECT_EQ(night.allowed[0].to_minute, 1200U);
  EXPECT_EQ(night.allowed[1].days, 0x20);
  EXPECT_EQ(night.allowed[1].to_minute, 120U);
  EXPECT_EQ(night.allowed[2].days, 0x7f);  // every day
  EXPECT_EQ(night.allowed[2].to_minute, 1440U);
  EXPECT_TRUE(d.rules[5].copy_to);
  EXPECT_FALSE(d.rules[5].full_scan);
  EXPECT_EQ(d.rules[5].min_rows, 1000U);
  EXPECT_EQ(d.rules[6].max_denials, 5U);
  EXPECT_EQ(d.rules[6].max_predicates, 30U);
  EXPECT_EQ(d.rules[6].action, AlertAction::terminate);
  const DetectionRule& app = d.rules[7];
  ASSERT_EQ(app.clients.size(), 3U);
  EXPECT_TRUE(app.clients[0].contains(*parse_ip("10.200.3.4")));
  EXPECT_FALSE(app.clients[0].contains(*parse_ip("11.0.0.1")));
  EXPECT_TRUE(app.clients[1].contains(*parse_ip("2001:db8:ffff::1")));
  EXPECT_TRUE(app.clients[2].contains(*parse_ip("192.0.2.7")));
  EXPECT_FALSE(app.clients[2].contains(*parse_ip("192.0.2.8")));
  EXPECT_TRUE(app.clients[0].contains(*parse_ip("::ffff:10.1.1.1")));  // IPv4-mapped
  EXPECT_EQ(app.application_names, std::vector<std::string>{"shop-web"});
  EXPECT_TRUE(app.learn);
}

TEST(DetectionConfigTest, WebhookParsesWithItsToken) {
  SecretSources secrets;
  secrets.read_file = [](const std::string& path) -> std::optional<std::string> {
    if (path == "/etc/pgcloak/webhook.token") return std::string("hook-token-123\n");
    return std::nullopt;
  };
  auto load = parse_config(R"(
detection:
  webhook:
    url: https://hooks.example.com/pgcloak
    slack: true
    ca_file: /etc/ssl/hooks-ca.pem
    token_file: /etc/pgcloak/webhook.token
    timeout: 3s
    queue_limit: 50
)",
                           secrets);
  ASSERT_TRUE(load.ok()) << dump(load);
  const DetectionWebhook& h = load.config.detection.webhook;
  EXPECT_TRUE(h.enabled());
  EXPECT_EQ(h.url, "https://hooks.example.com/pgcloak");
  EXPECT_TRUE(h.slack);
  EXPECT_EQ(h.ca_file, "/etc/ssl/hooks-ca.pem");
  EXPECT_EQ(h.token, "hook-token-123");
  EXPECT_EQ(h.timeout, std::chrono::seconds(3));
  EXPECT_EQ(h.queue_limit, 50U);

  auto bad = parse_config(R"(
detection:
  webhook:
    url: ftp://example.com/x
    token_file: /nonexistent
    retries: 3
)",
                          secrets);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(has_issue(bad, 6, "unknown key \"retries\" in detection.webhook")) << dump(bad);
  EXPECT_TRUE(has_issue(bad, 4, "detection.webhook.url must start with https://")) << dump(bad);
  EXPECT_TRUE(has_issue(bad, 4, "detection.webhook.token_file: cannot read \"/nonexistent\"")) << dump(bad);
  auto no_url = parse_config("detection:\n  webhook:\n    slack: true\n", secrets);
  EXPECT_TRUE(has_issue(no_url, 3, "detection.webhook needs a url")) << dump(no_url);
}

TEST(DetectionConfigTest, SyslogTargetParsesLikeTheAuditOne) {
  auto load = parse_config(R"(
detection:
  syslog:
    host: siem.example.com
    port: 6514
    facility: 4
    app_name: pgcloak-alerts
    connect_timeout: 2s
    queue_limit: 20
)");
  ASSERT_TRUE(load.ok()) << dump(load);
  const auto& d = load.config.detection;
  EXPECT_TRUE(d.syslog.enabled());
  EXPECT_EQ(d.syslog.host, "siem.example.com");
  EXPECT_EQ(d.syslog.port, 6514);
  EXPECT_EQ(d.syslog.facility, 4U);
  EXPECT_EQ(d.syslog.app_name, "pgcloak-alerts");
  EXPECT_EQ(d.syslog.connect_timeout, std::chrono::seconds(2));
  EXPECT_EQ(d.syslog_queue_limit, 20U);
  EXPECT_FALSE(parse_config("detection: {}\n").config.detection.syslog.enabled());

  auto bad = parse_config(R"(
detection:
  syslog:
    port: 70000
    tls: true
    facility: 24
    retries: 3
)");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(has_issue(bad, 4, "detection.syslog.port must be between 1 and 65535")) << dump(bad);
  EXPECT_TRUE(has_issue(bad, 5, "detection.syslog.tls needs detection.syslog.ca_file")) << dump(bad);
  EXPECT_TRUE(has_issue(bad, 6, "detection.syslog.facility must be between 0 and 23")) << dump(bad);
  EXPECT_TRUE(has_issue(bad, 7, "unknown key \"retries\" in detection.syslog")) << dump(bad);
  EXPECT_TRUE(has_issue(bad, 4, "detection.syslog needs a host")) << dump(bad);
}

TEST(DetectionConfigTest, PerDetectorDefaults) {
  auto load = parse_config(R"(
detection:
  rules:
    - {name: v, detector: window_volume}
    - {name: d, detector: slow_drip, max_distinct: 10}
    - {name: p, detector: probing, max_denials: 3}
    - {name: s, detector: service_account, roles: [app], learn: true}
)");
  ASSERT_TRUE(load.ok()) << dump(load);
  const auto& r = load.config.detection.rules;
  EXPECT_EQ(r[0].window, std::chrono::seconds(60));
  EXPECT_EQ(r[0].warmup, std::chrono::hours(48));
  EXPECT_DOUBLE_EQ(r[0].sensitivity, 6.0);
  EXPECT_EQ(r[0].floor_rows, 1000U);
  EXPECT_EQ(r[1].window, std::chrono::seconds(600));
  EXPECT_EQ(r[2].window, std::chrono::seconds(300));
  EXPECT_EQ(r[3].warmup, std::chrono::hours(24));
  EXPECT_EQ(r[0].time_zone, nullptr);  // detection.time_zone applies
  auto off = parse_config("detection:\n  enabled: false\n");
  ASSERT_TRUE(off.ok()) << dump(off);
  EXPECT_FALSE(off.config.detection.enabled);
}

TEST(DetectionConfigTest, WrongKeysTypesAndValuesAreReportedWithTheirLines) {
  auto load = parse_config(R"(detection:
  time_zone: Mars/Olympus_Mons
  colour: blue
  rules:
    - {name: a, detector: statement_volume, window: 1m, max_rows: 10}
    - {name: a, detector: statement_volume}
    - {detector: window_volume}
    - {name: c, detector: nosuch}
    - {name: d, detector: off_hours, time_zone: ../../etc/passwd, allowed: [{days: [someday], from: "7:00", to: "25:00"}]}
    - {name: e, detector: service_account, clients: [10.0.0.0/33, "not an address"]}
    - {name: f, detector: slow_drip, max_distinct: 0, action: block}
    - {name: g, detector: first_access, block_for: 5m, categories: [shoe_size], relations: ["a.b.c"]}
    - {name: h, detector: window_volume, window: 1500ms, sensitivity: lots, warmup: 2w}
    - {name: i, detector: probing}
    - {name: j, detector: bulk_export, copy_to: false, full_scan: false, max_denials: 3}
    - {name: k, detector: service_account, roles: [app], learn: true, warmup: 0s}
    - name
)");
  ASSERT_FALSE(load.ok());
  EXPECT_TRUE(has_issue(load, 2, "detection.time_zone: unknown time zone \"Mars/Olympus_Mons\""))
      << dump(load);
  EXPECT_TRUE(has_issue(load, 3, "unknown key \"colour\" in detection")) << dump(load);
  EXPECT_TRUE(has_issue(load, 5,
                        "window does not apply to detector statement_volume (its keys: max_rows, max_bytes)"))
      << dump(load);
  EXPECT_TRUE(has_issue(load, 6, "another rule has the same name")) << dump(load);
  EXPECT_TRUE(has_issue(load, 6, "statement_volume needs max_rows or max_bytes")) << dump(load);
  EXPECT_TRUE(has_issue(load, 7, "detection.rules[2] needs a name")) << dump(load);
  EXPECT_TRUE(has_issue(load, 8, "detection rule \"c\".detector must be one of statement_volume"))
      << dump(load);
  EXPECT_TRUE(has_issue(load, 9, "is not a time zone name")) << dump(load);
  EXPECT_TRUE(has_issue(load, 9, "\"someday\" is not one of mon")) << dump(load);
  EXPECT_TRUE(has_issue(load, 9, ".from must be \"HH:MM\"")) << dump(load);
  auto same = parse_config(R"(
detection:
  rules:
    - {name: n, detector: off_hours, allowed: [{from: "12:00", to: "12:00"}]}
)");
  EXPECT_TRUE(has_issue(same, 4, "from and to are the same time")) << dump(same);
  EXPECT_TRUE(has_issue(load, 9, ".to must be \"HH:MM\" (00:00-24:00), not \"25:00\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 10, "\"10.0.0.0/33\" is not an address or network")) << dump(load);
  EXPECT_TRUE(has_issue(load, 10, "\"not an address\" is not an address or network")) << dump(load);
  EXPECT_TRUE(has_issue(load, 10, "service_account needs roles")) << dump(load);
  EXPECT_TRUE(has_issue(load, 11, "max_distinct must be between 1 and")) << dump(load);
  EXPECT_TRUE(has_issue(load, 11, "action block needs block_for")) << dump(load);
  EXPECT_TRUE(has_issue(load, 12, "block_for only applies with action: block")) << dump(load);
  EXPECT_TRUE(has_issue(load, 12, "unknown category \"shoe_size\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 12, "\"a.b.c\" is not schema.relation")) << dump(load);
  EXPECT_TRUE(has_issue(load, 13, ".window must be whole seconds")) << dump(load);
  EXPECT_TRUE(has_issue(load, 13, ".sensitivity must be a number")) << dump(load);
  EXPECT_TRUE(has_issue(load, 13, "invalid duration unit \"w\"")) << dump(load);
  EXPECT_TRUE(has_issue(load, 14, "probing needs max_denials or max_predicates")) << dump(load);
  EXPECT_TRUE(has_issue(load, 15, "max_denials does not apply to detector bulk_export")) << dump(load);
  EXPECT_TRUE(has_issue(load, 15, "copy_to and full_scan both off never fires")) << dump(load);
  EXPECT_TRUE(has_issue(load, 16, "learn needs a warmup")) << dump(load);
  EXPECT_TRUE(has_issue(load, 17, "detection.rules[12] must be a mapping")) << dump(load);

  // Categories declared by masking are known.
  auto custom = parse_config(R"(
masking:
  categories: [loyalty_id]
detection:
  rules:
    - {name: x, detector: first_access, categories: [loyalty_id, email]}
)");
  for (const auto& i : custom.issues)
    EXPECT_EQ(i.message.find("unknown category"), std::string::npos) << i.message;
  auto not_a_list = parse_config("detection:\n  rules: {name: x}\n");
  EXPECT_TRUE(has_issue(not_a_list, 2, "detection.rules must be a list")) << dump(not_a_list);
}

}  // namespace
}  // namespace pgcloak::rules
