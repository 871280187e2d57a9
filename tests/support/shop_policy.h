// The shop fixture (deploy/fixture/shop.sql) as rules/ sees it: a Catalog
// built by hand with the same relations, columns, partitions, view and role
// graph, and the masking config the demo uses. Lets rewriter tests run
// without a database.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "rules/catalog.h"
#include "rules/config.h"
#include "rules/protection.h"
#include "rules/session_policy.h"

namespace pgcloak::testing {

inline rules::ColumnType pg_type(std::string_view name) {
  using namespace rules;
  if (name == "bigint") return {type_oid::int8, -1, "bigint", 'N'};
  if (name == "integer") return {type_oid::int4, -1, "integer", 'N'};
  if (name == "text") return {type_oid::text, -1, "text", 'S'};
  if (name == "date") return {type_oid::date, -1, "date", 'D'};
  if (name == "timestamptz") return {type_oid::timestamptz, -1, "timestamp with time zone", 'D'};
  if (name == "numeric(10,2)") return {type_oid::numeric, (10 << 16 | 2) + 4, "numeric(10,2)", 'N'};
  ADD_FAILURE() << "unknown type " << name;
  return {};
}

inline rules::CatalogRelation relation(uint32_t oid, std::string schema, std::string name, char kind,
                                       std::vector<std::pair<std::string, std::string>> cols) {
  rules::CatalogRelation r;
  r.oid = oid;
  r.schema = std::move(schema);
  r.name = std::move(name);
  r.kind = kind;
  int16_t attnum = 1;
  for (auto& [n, t] : cols) r.columns.push_back({n, attnum++, pg_type(t)});
  return r;
}

inline std::shared_ptr<rules::Catalog> shop_catalog() {
  auto c = std::make_shared<rules::Catalog>();
  c->relations.push_back(relation(16400, "public", "customers", 'r',
                                  {{"id", "bigint"},
                                   {"full_name", "text"},
                                   {"email", "text"},
                                   {"phone", "text"},
                                   {"ssn", "text"},
                                   {"card_number", "text"},
                                   {"birth_date", "date"},
                                   {"address", "text"},
                                   {"notes", "text"},
                                   {"created_at", "timestamptz"}}));
  c->relations.push_back(relation(16410, "public", "orders", 'r',
                                  {{"id", "bigint"},
                                   {"customer_id", "bigint"},
                                   {"amount", "numeric(10,2)"},
                                   {"status", "text"},
                                   {"created_at", "timestamptz"}}));
  auto view = relation(16420, "public", "customer_contacts", 'v',
                       {{"id", "bigint"}, {"full_name", "text"}, {"email", "text"}, {"phone", "text"}});
  view.reads = {{16400, 1}, {16400, 2}, {16400, 3}, {16400, 4}};
  c->relations.push_back(view);
  // A view computing from a protected column: its output cannot be masked.
  auto computed = relation(16425, "public", "contact_labels", 'v', {{"id", "bigint"}, {"label", "text"}});
  computed.reads = {{16400, 1}, {16400, 2}, {16400, 3}};
  c->relations.push_back(computed);
  c->relations.push_back(relation(16430, "public", "payments", 'p',
                                  {{"id", "bigint"},
                                   {"customer_id", "bigint"},
                                   {"card_number", "text"},
                                   {"amount", "numeric(10,2)"},
                                   {"paid_at", "timestamptz"}}));
  auto part = relation(16431, "public", "payments_2025_01", 'r',
                       {{"id", "bigint"},
                        {"customer_id", "bigint"},
                        {"card_number", "text"},
                        {"amount", "numeric(10,2)"},
                        {"paid_at", "timestamptz"}});
  part.parents = {16430};
  c->relations.push_back(part);
  c->roles = {{10, "postgres", {}},     {20, "data_admins", {}},    {21, "app_services", {}},
              {22, "support_team", {}}, {23, "analytics_team", {}}, {24, "bi_readers", {23}},
              {30, "admin", {20}},      {31, "app", {21}},          {32, "support", {22}},
              {33, "analyst", {24}},    {34, "nobody", {}}};
  c->user_function_names = {"get_auth", "leak_customers"};
  c->finalize();
  return c;
}

inline constexpr std::string_view shop_masking_yaml = R"(
masking:
  hash_key_env: PGCLOAK_TEST_MASK_KEY
  protected_columns:
    - {column: public.customers.full_name, category: person_name}
    - {column: public.customers.email, category: email}
    - {column: public.customers.phone, category: phone}
    - {column: public.customers.ssn, category: national_id}
    - {column: public.customers.card_number, category: card_number}
    - {column: public.customers.birth_date, category: birth_date}
    - {column: public.customers.address, category: address}
    - {column: public.customers.notes, category: free_text}
    - {column: public.payments.card_number, category: card_number}
  policies:
    - name: admins
      roles: [data_admins, app_services]
      default: allow
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
        free_text: redact_patterns
    - name: analytics
      roles: [analytics_team]
      default: redact
      rules:
        email: hash
        national_id: deny
  default_policy:
    default: redact
catalog:
  dbname: shop
)";

// A masking config (the shop's, or one built from it) over a catalog.
inline std::shared_ptr<const rules::Protection> protection_from(
    std::string_view yaml, std::shared_ptr<const rules::Catalog> catalog) {
  rules::SecretSources secrets;
  secrets.read_file = [](const std::string&) { return std::optional<std::string>(); };
  secrets.get_env = [](const std::string&) {
    return std::optional<std::string>("test-mask-key-test-mask-key-test-mask-key");
  };
  auto load = rules::parse_config(std::string(yaml), secrets);
  EXPECT_TRUE(load.ok()) << load.format("shop");
  auto cfg = std::make_shared<rules::MaskingConfig>(load.config.masking);
  return rules::Protection::build(cfg, std::move(catalog));
}

inline std::shared_ptr<const rules::Protection> shop_protection() {
  return protection_from(shop_masking_yaml, shop_catalog());
}

}  // namespace pgcloak::testing
