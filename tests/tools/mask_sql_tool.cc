// A test helper for tests/integration/test_mask_expressions.py: builds a
// masking config around one rule (through the real config parser), then
// either prints the SQL expression for a column type, or applies the C++
// mask (mask_text_value) to values read from stdin.
//
//   mask_sql_tool sql    --rule JSON --category C --oid N --typmod N --type-name T --typcategory X
//                        [--key K] [--value-sql EXPR]
//   mask_sql_tool values (same options)  < lines: hex of the UTF-8 value, or "-" for NULL
//                                        > lines: hex of the masked value, or "-" for NULL
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include "rules/config.h"
#include "rules/mask_sql.h"
#include "rules/mask_value.h"

namespace {

using namespace pgcloak::rules;

std::string from_hex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2)
    out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

std::string hex(const std::string& s) {
  return to_hex(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

int usage() {
  std::cerr << "usage: mask_sql_tool sql|values --rule JSON --category C --oid N --typmod N --type-name T "
               "--typcategory X [--key K] [--value-sql EXPR]\n";
  return 64;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  std::map<std::string, std::string> opt{{"--value-sql", "v"}, {"--typmod", "-1"}, {"--typcategory", "S"}};
  for (int i = 2; i + 1 < argc; i += 2) opt[argv[i]] = argv[i + 1];
  for (const char* k : {"--rule", "--category", "--oid", "--type-name"}) {
    if (!opt.count(k)) return usage();
  }
  std::string yaml = "masking:\n";
  if (opt.count("--key")) yaml += "  hash_key_env: MASK_TOOL_KEY\n";
  if (opt["--category"] == "loyalty_number") yaml += "  categories: [loyalty_number]\n";
  yaml += "  protected_columns:\n    - {column: s.t.c, category: " + opt["--category"] + "}\n";
  yaml +=
      "  policies:\n    - name: tool\n      roles: [tool]\n      rules:\n        s.t.c: " + opt["--rule"] +
      "\n";
  yaml += "catalog:\n  dbname: tool\n";  // masking needs one; never connected to
  SecretSources secrets;
  secrets.get_env = [&](const std::string&) -> std::optional<std::string> { return opt["--key"]; };
  auto load = parse_config(yaml, secrets);
  if (!load.ok()) {
    std::cerr << load.format("rule");
    return 2;
  }
  const auto& masking = load.config.masking;
  const MaskSpec spec = masking.policies.at(0).spec_for(QualifiedColumn{"s", "t", "c"}, opt["--category"]);
  ColumnType type;
  type.oid = static_cast<uint32_t>(std::stoul(opt["--oid"]));
  type.typmod = std::stoi(opt["--typmod"]);
  type.sql_name = opt["--type-name"];
  type.category = opt["--typcategory"].empty() ? 'X' : opt["--typcategory"][0];

  if (mode == "sql") {
    auto expr = mask_sql_expression(spec, type, opt["--value-sql"], masking.keys);
    if (!expr) {
      std::cerr << expr.error().sqlstate << ": " << expr.error().message << "\n";
      if (!expr.error().hint.empty()) std::cerr << "HINT: " << expr.error().hint << "\n";
      return 3;
    }
    std::cout << *expr << "\n";
    return 0;
  }
  if (mode == "values") {
    std::string line;
    while (std::getline(std::cin, line)) {
      std::optional<std::string> out = line == "-"
                                           ? mask_null_value(spec, type)
                                           : mask_text_value(spec, type, from_hex(line), masking.keys);
      std::cout << (out ? hex(*out) : "-") << "\n";
    }
    return 0;
  }
  return usage();
}
