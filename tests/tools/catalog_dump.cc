// A test helper for tests/integration/test_catalog_loader.py: loads the
// masking catalog from a real PostgreSQL the way pgcloak does (PolicyStore
// over a side connection, proxy/catalog_loader.cc), builds the Protection
// from a config file's masking section, and prints what it found as JSON
// lines.
//
//   catalog_dump --config FILE [--host H] [--port N] [--user U] [--dbname D]
//                [--sslmode M] [--login NAME]... [--reload]
//
// Connection settings default to the config's upstream.* and catalog.*;
// CATALOG_DUMP_PASSWORD (environment) overrides catalog.password, so no
// password is needed on the command line. With --reload, every line read
// from stdin triggers a refresh and another dump; EOF ends the tool.
//
// Output, one JSON object per line, each with a "kind":
//   relation   name, oid, relkind, columns [{name, attnum, type, type_oid,
//              typmod, typcategory}], parents [names], reads [{relation, attnum,
//              column}]
//   role       name, member_of [direct groups], groups [transitive, self excluded]
//   user_objects functions, operators, casts
//   protection relation, columns [{name, category, source, derived, derived_from}]
//   warning    message
//   policy     login, policy, masks_anything
//   error      sqlstate, message (the load failed)
//   end        generation (after each dump)
#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "proxy/log.h"
#include "proxy/policy_store.h"
#include "rules/config.h"

namespace {

using namespace pgcloak;

std::string json(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          constexpr std::string_view hex = "0123456789abcdef";
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string json_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + json(items[i]);
  return out + "]";
}

std::string qualified(const rules::Catalog& cat, uint32_t oid) {
  const auto* r = cat.find(oid);
  return r != nullptr ? r->schema + "." + r->name : "oid:" + std::to_string(oid);
}

std::string column_name(const rules::Catalog& cat, uint32_t oid, int16_t attnum) {
  const auto* r = cat.find(oid);
  if (r == nullptr || attnum == 0) return "";
  for (const auto& c : r->columns) {
    if (c.attnum == attnum) return c.name;
  }
  return "";
}

std::string qualified_column(const rules::QualifiedColumn& c) {
  return c.schema + "." + c.table + "." + c.column;
}

void dump_catalog(const rules::Catalog& cat) {
  std::vector<const rules::CatalogRelation*> rels;
  for (const auto& r : cat.relations) rels.push_back(&r);
  std::sort(rels.begin(), rels.end(), [](const auto* a, const auto* b) {
    return std::tie(a->schema, a->name) < std::tie(b->schema, b->name);
  });
  for (const auto* r : rels) {
    std::string line = "{\"kind\":\"relation\",\"name\":" + json(r->schema + "." + r->name) +
                       ",\"oid\":" + std::to_string(r->oid) +
                       ",\"relkind\":" + json(std::string(1, r->kind)) + ",\"columns\":[";
    for (size_t i = 0; i < r->columns.size(); ++i) {
      const auto& c = r->columns[i];
      line += std::string(i ? "," : "") + "{\"name\":" + json(c.name) +
              ",\"attnum\":" + std::to_string(c.attnum) + ",\"type\":" + json(c.type.sql_name) +
              ",\"type_oid\":" + std::to_string(c.type.oid) + ",\"typmod\":" + std::to_string(c.type.typmod) +
              ",\"typcategory\":" + json(std::string(1, c.type.category)) + "}";
    }
    std::vector<std::string> parents;
    for (uint32_t p : r->parents) parents.push_back(qualified(cat, p));
    line += "],\"parents\":" + json_list(parents) + ",\"reads\":[";
    for (size_t i = 0; i < r->reads.size(); ++i) {
      const auto [oid, attnum] = r->reads[i];
      line += std::string(i ? "," : "") + "{\"relation\":" + json(qualified(cat, oid)) +
              ",\"attnum\":" + std::to_string(attnum) + ",\"column\":" + json(column_name(cat, oid, attnum)) +
              "}";
    }
    std::cout << line << "]}\n";
  }

  std::map<uint32_t, std::string> role_names;
  for (const auto& r : cat.roles) role_names[r.oid] = r.name;
  for (const auto& r : cat.roles) {
    std::vector<std::string> direct;
    for (uint32_t g : r.member_of) direct.push_back(role_names.count(g) ? role_names[g] : std::to_string(g));
    std::vector<std::string> groups;
    for (const auto& g : cat.roles) {
      if (g.oid != r.oid && cat.is_member(r.name, g.name)) groups.push_back(g.name);
    }
    std::sort(groups.begin(), groups.end());
    std::cout << "{\"kind\":\"role\",\"name\":" << json(r.name) << ",\"oid\":" << r.oid
              << ",\"member_of\":" << json_list(direct) << ",\"groups\":" << json_list(groups) << "}\n";
  }
  std::cout << "{\"kind\":\"user_objects\",\"functions\":" << json_list(cat.user_function_names)
            << ",\"operators\":" << json_list(cat.user_operator_names)
            << ",\"casts\":" << json_list(cat.user_cast_target_types) << "}\n";
}

void dump_protection(const rules::Protection& p) {
  for (const auto& rp : p.relations()) {
    std::string line =
        "{\"kind\":\"protection\",\"relation\":" + json(rp.relation->schema + "." + rp.relation->name) +
        ",\"columns\":[";
    for (size_t i = 0; i < rp.columns.size(); ++i) {
      const auto& c = rp.columns[i];
      std::vector<std::string> from;
      for (const auto& [col, cat] : c.derived_from) from.push_back(qualified_column(col) + ":" + cat);
      line += std::string(i ? "," : "") + "{\"name\":" + json(rp.relation->columns[i].name) +
              ",\"category\":" + (c.category ? json(*c.category) : "null") +
              ",\"source\":" + (c.category ? json(qualified_column(c.source)) : "null") +
              ",\"derived\":" + (c.derived ? "true" : "false") + ",\"derived_from\":" + json_list(from) + "}";
    }
    std::cout << line << "]}\n";
  }
  for (const auto& w : p.warnings) std::cout << "{\"kind\":\"warning\",\"message\":" << json(w) << "}\n";
}

bool dump(proxy::PolicyStore& store, const std::vector<std::string>& logins) {
  Status st = store.refresh();
  if (!st) {
    std::cout << "{\"kind\":\"error\",\"sqlstate\":" << json(st.error().sqlstate)
              << ",\"message\":" << json(st.error().message) << "}\n";
  } else {
    auto protection = store.protection();
    dump_catalog(protection->catalog());
    dump_protection(*protection);
    for (const auto& login : logins) {
      auto policy = store.for_user(login);
      if (!policy || !*policy) {
        std::cout << "{\"kind\":\"error\",\"sqlstate\":\"XX000\",\"message\":"
                  << json("no policy for " + login) << "}\n";
        continue;
      }
      std::cout << "{\"kind\":\"policy\",\"login\":" << json(login)
                << ",\"policy\":" << json((*policy)->policy().name)
                << ",\"masks_anything\":" << ((*policy)->masks_anything() ? "true" : "false") << "}\n";
    }
  }
  std::cout << "{\"kind\":\"end\",\"generation\":" << store.generation() << "}\n" << std::flush;
  return st.ok();
}

int usage() {
  std::cerr
      << "usage: catalog_dump --config FILE [--host H] [--port N] [--user U] [--dbname D] [--sslmode M] "
         "[--login NAME]... [--reload]\n";
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt;
  std::vector<std::string> logins;
  bool reload = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--reload") {
      reload = true;
    } else if (i + 1 < argc && a == "--login") {
      logins.emplace_back(argv[++i]);
    } else if (i + 1 < argc && a.rfind("--", 0) == 0) {
      opt[a] = argv[++i];
    } else {
      return usage();
    }
  }
  if (!opt.count("--config")) return usage();
  if (logins.empty()) logins = {"admin", "app", "support", "analyst"};

  auto load = rules::load_config_file(opt["--config"]);
  if (!load.ok()) {
    std::cerr << load.format(opt["--config"]);
    return 2;
  }
  rules::Config cfg = load.config;
  if (opt.count("--host")) cfg.upstream.host = opt["--host"];
  if (opt.count("--port")) cfg.upstream.port = static_cast<uint16_t>(std::stoi(opt["--port"]));
  if (opt.count("--user")) cfg.catalog.user = opt["--user"];
  if (opt.count("--dbname")) cfg.catalog.dbname = opt["--dbname"];
  if (opt.count("--sslmode")) {
    const std::string m = opt["--sslmode"];
    cfg.upstream.sslmode = m == "disable"   ? rules::SslMode::disable
                           : m == "require" ? rules::SslMode::require
                                            : rules::SslMode::prefer;
  }
  if (const char* pw = std::getenv("CATALOG_DUMP_PASSWORD")) cfg.catalog.password = pw;
  if (!cfg.masking.enabled()) {
    std::cerr << "catalog_dump: the config protects no column\n";
    return 2;
  }

  proxy::PolicyStore store(std::make_shared<const rules::Config>(std::move(cfg)));
  bool ok = dump(store, logins);
  if (reload) {
    std::string line;
    while (std::getline(std::cin, line)) ok = dump(store, logins);
  }
  return ok ? 0 : 1;
}
