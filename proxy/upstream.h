// Connecting to PostgreSQL: TCP or Unix socket, then the SSLRequest
// exchange according to upstream.sslmode (libpq docs, "SSL Mode
// Descriptions"; protocol docs, "SSL Session Encryption").
#pragma once

#include <memory>

#include "protocol/result.h"
#include "proxy/asio.h"
#include "proxy/stream.h"
#include "rules/config.h"

namespace pgcloak::proxy {

// Returns a connected stream, TLS already negotiated when sslmode asks for it,
// or an 08006 error whose message says what failed and where. The whole
// attempt is bounded by upstream.connect_timeout.
awaitable<Result<std::unique_ptr<Stream>>> connect_upstream(const rules::UpstreamConfig& config,
                                                            ssl::context* tls);

}  // namespace pgcloak::proxy
