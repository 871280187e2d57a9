// pgcloak command line: run, check a config, or print the version.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "proxy/log.h"
#include "proxy/server.h"
#include "rules/config.h"

#ifndef PGCLOAK_VERSION
#define PGCLOAK_VERSION "unknown"
#endif

namespace {

void usage(std::FILE* to) {
  (void)std::fprintf(to,
                     "Usage: pgcloak --config FILE        run the gateway in the foreground\n"
                     "       pgcloak --check-config FILE  validate FILE and report every problem by line\n"
                     "       pgcloak --version            print the version\n");
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
