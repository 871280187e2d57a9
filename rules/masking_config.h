// The masking: section of the configuration: which columns are protected
// (and in which category), which policy applies to which roles, and what each
// policy does per category or per column. Parsed by config_loader.cc.
#pragma once

#include <compare>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "rules/mask.h"

namespace pgcloak::rules {

// Categories every configuration knows without declaring them.
const std::vector<std::string_view>& builtin_mask_categories();

// schema.table.column with PostgreSQL identifier rules applied: unquoted
// parts lowercased (ASCII), "Quoted" parts kept as written ("" -> ").
struct QualifiedColumn {
  std::string schema;
  std::string table;
  std::string column;
  auto operator<=>(const QualifiedColumn&) const =
      default;  // NOLINT(modernize-use-nullptr): false positive on a defaulted <=>
  // "public"."customers"."email"
  std::string quoted() const;
};

// Parses "schema.table.column" (exactly three parts). nullopt + why on error.
std::optional<QualifiedColumn> parse_qualified_column(std::string_view text, std::string& why);
// Parses a dotted name of `parts` identifiers, normalised, joined by '.'.
std::optional<std::vector<std::string>> parse_qualified_name(std::string_view text, size_t parts,
                                                             std::string& why);

struct ProtectedColumn {
  QualifiedColumn column;
  std::string category;
  bool operator==(const ProtectedColumn&) const = default;
};

struct MaskPolicy {
  std::string name;
  std::vector<std::string> roles;  // role names exactly as in pg_roles.rolname
  MaskSpec default_spec = MaskSpec::of(MaskKind::redact);
  std::map<std::string, MaskSpec> category_rules;
  std::map<QualifiedColumn, MaskSpec> column_rules;
  bool operator==(const MaskPolicy&) const = default;

  // The mask for one protected column: a column rule beats a category rule,
  // which beats the policy's default. A pseudonym without an explicit kind
  // gets one from the category (email -> email, otherwise name).
  MaskSpec spec_for(const QualifiedColumn& column, std::string_view category) const;
};

struct MaskingConfig {
  std::string hash_key_file;
  std::string hash_key_env;
  MaskKeys keys;                        // derived from the key; the master secret is not kept
  std::vector<std::string> categories;  // user-defined ones
  std::vector<ProtectedColumn> protected_columns;
  std::vector<MaskPolicy> policies;
  MaskPolicy default_policy{"default", {}, MaskSpec::of(MaskKind::redact), {}, {}};
  std::vector<std::string> function_allowlist;  // "schema.function", normalised

  // SIGHUP reloads masking only when this differs (Server::reload_config).
  bool operator==(const MaskingConfig&) const = default;

  bool enabled() const { return !protected_columns.empty(); }
  const ProtectedColumn* find_protected(const QualifiedColumn& column) const;
  // The first policy (config order) with a role the session user is a member
  // of, else default_policy.
  const MaskPolicy& policy_for(const std::function<bool(std::string_view role)>& is_member) const;
};

// Where the masking key comes from. The defaults read the file and the
// process environment; tests inject their own.
struct SecretSources {
  std::function<std::optional<std::string>(const std::string& path)> read_file;
  std::function<std::optional<std::string>(const std::string& name)> get_env;
};
SecretSources system_secret_sources();

}  // namespace pgcloak::rules
