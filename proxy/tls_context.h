// OpenSSL contexts built from the config: one for accepting clients, one for
// connecting to PostgreSQL. Built once at start-up; failures are reported
// with the file and OpenSSL's reason so a bad key does not surface later as a
// mysterious handshake error.
#pragma once

#include <memory>

#include "protocol/result.h"
#include "proxy/asio.h"
#include "rules/config.h"

namespace pgcloak::proxy {

Result<std::shared_ptr<ssl::context>> make_client_facing_context(const rules::TlsConfig& config);
Result<std::shared_ptr<ssl::context>> make_upstream_context(const rules::UpstreamConfig& config);

}  // namespace pgcloak::proxy
