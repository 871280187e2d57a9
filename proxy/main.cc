// pgcloak command line: run, check a config, verify the audit trail, or
// print the version.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "proxy/audit_chain.h"
#include "proxy/audit_verify.h"
#include "proxy/log.h"
#include "proxy/server.h"
#include "rules/config.h"

#ifndef PGCLOAK_VERSION
#define PGCLOAK_VERSION "unknown"
#endif

namespace {

void usage(std::FILE* to) {
  (void)std::fprintf(
      to,
      "Usage: pgcloak --config FILE        run the gateway in the foreground\n"
      "       pgcloak --check-config FILE  validate FILE and report every problem by line\n"
      "       pgcloak --version            print the version\n"
      "       pgcloak audit verify [--key-file F | --key-env VAR] [--expect-stopped] FILES...\n"
      "                                    check the audit trail's MAC chain across FILES (rotated\n"
      "                                    and .gz files in any order) with the INITIAL chain key;\n"
      "                                    exit 0 when intact, 1 with the first problem by file and line\n");
}

// pgcloak audit verify ...: argv[3..] are options and files.
int audit_verify(int argc, char** argv) {
  std::string key_file;
  std::string key_env;
  pgcloak::proxy::AuditVerifyOptions options;
  std::vector<std::string> files;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--key-file" || a == "--key-env") && i + 1 < argc) {
      (a == "--key-file" ? key_file : key_env) = argv[++i];
    } else if (a == "--expect-stopped") {
      options.expect_stopped = true;
    } else if (a == "--") {
      for (++i; i < argc; ++i) files.emplace_back(argv[i]);
    } else if (!a.empty() && a[0] == '-') {
      usage(stderr);
      return 2;
    } else {
      files.push_back(a);
    }
  }
  if (files.empty() || key_file.empty() == key_env.empty()) {
    (void)std::fputs(
        "pgcloak audit verify: give the initial key (--key-file or --key-env, not both) and at "
        "least one file\n",
        stderr);
    usage(stderr);
    return 2;
  }
  auto key = pgcloak::proxy::load_audit_key(key_file, key_env);
  if (!key) {
    (void)std::fprintf(stderr, "pgcloak audit verify: %s\n", key.error().message.c_str());
    return 2;
  }
  auto report = pgcloak::proxy::verify_audit_files(files, *key, options);
  (void)std::fputs(report.format().c_str(), report.ok() ? stdout : stderr);
  return report.ok() ? 0 : 1;
}

int check_config(const std::string& path) {
  auto load = pgcloak::rules::load_config_file(path);
  if (!load.ok()) {
    (void)std::fputs(load.format(path).c_str(), stderr);
    return 1;
  }
  (void)std::printf("%s: OK\n", path.c_str());
  return 0;
}

int run(const std::string& path) {
  auto load = pgcloak::rules::load_config_file(path);
  if (!load.ok()) {
    (void)std::fputs(load.format(path).c_str(), stderr);
    return 1;
  }
  pgcloak::log::set_level(load.config.log.level);
  // Writes to a closed socket must be an error code, not a signal.
  (void)std::signal(SIGPIPE, SIG_IGN);
  pgcloak::log::info(std::string("pgcloak ") + PGCLOAK_VERSION + " starting with " + path);
  pgcloak::proxy::Server server(std::move(load.config), path);
  if (auto st = server.start(); !st) {
    pgcloak::log::error(st.error().message);
    return 1;
  }
  return server.run();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::strcmp(argv[1], "--version") == 0 || std::strcmp(argv[1], "-V") == 0)) {
    (void)std::printf("pgcloak %s\n", PGCLOAK_VERSION);
    return 0;
  }
  if (argc == 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc == 3 && std::strcmp(argv[1], "--check-config") == 0) return check_config(argv[2]);
  if (argc >= 3 && std::strcmp(argv[1], "audit") == 0 && std::strcmp(argv[2], "verify") == 0) {
    try {
      return audit_verify(argc, argv);
    } catch (const std::exception& e) {
      (void)std::fprintf(stderr, "pgcloak audit verify: %s\n", e.what());
      return 2;
    }
  }
  if (argc == 3 && std::strcmp(argv[1], "--config") == 0) {
    try {
      return run(argv[2]);
    } catch (const std::exception& e) {
      pgcloak::log::error(std::string("fatal: ") + e.what());
      return 1;
    }
  }
  usage(stderr);
  return 2;
}
