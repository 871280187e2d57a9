// auth.mode scram: pgcloak terminates SCRAM-SHA-256 itself (scram.h explains
// why and how). The message flow:
//
//   client                        pgcloak                       PostgreSQL
//     | <- AuthenticationSASL -----|  (verifier from auth_query)
//     | -- SASLInitialResponse --> |
//     | <- SASLContinue -----------|
//     | -- SASLResponse ---------> |  proof checked: ClientKey known
//     | <- SASLFinal --------------|
//     |                            | -- StartupMessage ----------> |
//     |                            | <- AuthenticationSASL ------- |
//     |                            |    ... ScramClient(ClientKey)  |
//     |                            | <- AuthenticationSASLFinal -- |
//     | <- AuthenticationOk, ParameterStatus..., ReadyForQuery --- |
//
// AuthenticationOk is PostgreSQL's, forwarded only once PostgreSQL accepted
// the login, so a client is never told it is in before it is.
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "protocol/backend.h"
#include "protocol/frontend.h"
#include "protocol/message_type.h"
#include "proxy/log.h"
#include "proxy/run_blocking.h"
#include "proxy/server_pool.h"
#include "proxy/session.h"

namespace pgcloak::proxy {

namespace {

namespace fe = protocol::fe;
namespace be = protocol::be;
using protocol::Buffer;
using protocol::Bytes;

// As in session.cc: PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH.
constexpr uint32_t max_auth_message = 65536;

Buffer encode_auth(protocol::AuthCode code, std::string_view data = {}) {
  protocol::Authentication m;
  m.code = code;
  m.data = protocol::as_bytes(data);
  Buffer b;
  m.encode(b);
  return b;
}

Error password_failed(const std::string& user) {
  // Word for word what PostgreSQL sends (auth.c, auth_failed()).
  return Error::make(sqlstate::invalid_password, "password authentication failed for user \"" + user + "\"",
                     Severity::fatal);
}

}  // namespace

awaitable<std::optional<Buffer>> Session::read_client_auth_message() {
  auto fr = co_await read_frame(*client_, client_in_, false, max_auth_message);
  if (fr.status == protocol::FrameStatus::error) {
    if (fr.error.sqlstate != sqlstate::connection_failure) co_await send_error(fr.error);
    co_return std::nullopt;
  }
  if (fr.frame.type() != fe::password) {
    // A client may give up (Terminate) instead of answering.
    if (fr.frame.type() != fe::terminate) {
      co_await send_error(Error::protocol("expected a SASL response, got message type " +
                                          protocol::printable_type(fr.frame.type())));
    }
    co_return std::nullopt;
  }
  Buffer body(fr.frame.body.begin(), fr.frame.body.end());
  client_in_.consume(fr.frame.size());
  co_return body;
}

awaitable<bool> Session::authenticate_scram() {
  AuthLookup& lookup = *server_.auth_lookup;
  const std::string& user = identity_.user;
  const std::string lookup_db = lookup.database_for(identity_.database);

  // 1. The verifier: from the cache, else from auth_query on a pool thread.
  std::optional<ScramVerifier> verifier = lookup.cached(lookup_db, user);
  const bool from_cache = verifier.has_value();
  std::string mock_reason;
  if (!verifier) {
    VerifierLookup found = co_await run_blocking(
        *server_.blocking, [&lookup, &lookup_db, &user] { return lookup.fetch(lookup_db, user); });
    if (closing_) co_return false;
    switch (found.outcome) {
      case VerifierLookup::Outcome::found: verifier = std::move(found.verifier); break;
      case VerifierLookup::Outcome::no_verifier: mock_reason = std::move(found.reason); break;
      case VerifierLookup::Outcome::unavailable:
        log::warn("cannot authenticate user \"" + user +
                      "\": looking up its SCRAM verifier failed: " + found.reason,
                  id_);
        co_await send_error(Error::make(
            sqlstate::connection_failure,
            "pgcloak could not look up the credentials of user \"" + user +
                "\": its catalog connection to PostgreSQL failed",
            Severity::fatal,
            "pgcloak's log names the cause. Check catalog.user, catalog.password and auth.auth_dbname in "
            "pgcloak's configuration."));
        co_return false;
    }
  }

  // 2. SCRAM with the client. Without a usable verifier the exchange still
  // runs in full against a mock one (PostgreSQL's mock authentication), so
  // an unknown user cannot be told from a wrong password.
  const bool mock = !verifier;
  ScramServerOptions options;
  options.user = user;
  if (client_->is_tls()) {
    if (X509* cert = SSL_get_certificate(client_->ssl()); cert != nullptr) {
      auto hash = tls_server_end_point_hash(cert);
      if (hash) {
        options.tls_server_end_point = std::move(hash).value();
      } else {
        log::debug("not offering SCRAM-SHA-256-PLUS: " + hash.error().message, id_);
      }
    }
  }
  ScramServer server(mock ? mock_scram_verifier(user) : *verifier, std::move(options));
  if (verifier) {
    OPENSSL_cleanse(verifier->stored_key.data(), verifier->stored_key.size());
    OPENSSL_cleanse(verifier->server_key.data(), verifier->server_key.size());
  }
  {
    protocol::Authentication offer;
    offer.code = protocol::AuthCode::sasl;
    offer.mechanisms = server.mechanisms();
    Buffer b;
    offer.encode(b);
    queue_to_client(b);
  }
  auto fail = [&](const Error& e) -> awaitable<bool> {
    if (mock) {
      log::info("authentication failed for user \"" + user + "\" from " + identity_.client_address + ": " +
                    mock_reason,
                id_);
    } else {
      log::info("authentication failed for user \"" + user + "\" from " + identity_.client_address + ": " +
                    e.message,
                id_);
      // Perhaps the password changed since the verifier was cached.
      if (from_cache) lookup.forget(lookup_db, user);
    }
    co_await send_error(e);
    co_return false;
  };

  auto first_body = co_await read_client_auth_message();
  if (!first_body) co_return false;
  auto init = protocol::SASLInitialResponse::decode(*first_body);
  if (!init) {
    co_await send_error(init.error());
    co_return false;
  }
  Buffer client_first;
  if (init->data) {
    client_first.assign(init->data->begin(), init->data->end());
  } else {
    // No initial response: ask for it with an empty challenge, as
    // PostgreSQL does; it then comes as a SASLResponse.
    queue_to_client(encode_auth(protocol::AuthCode::sasl_continue));
    auto body = co_await read_client_auth_message();
    if (!body) co_return false;
    client_first = std::move(*body);
  }
  auto server_first = server.handle_client_first(init->mechanism, client_first);
  if (!server_first) co_return co_await fail(server_first.error());
  queue_to_client(encode_auth(protocol::AuthCode::sasl_continue, *server_first));

  auto final_body = co_await read_client_auth_message();
  if (!final_body) co_return false;
  auto response = protocol::SASLResponse::decode(*final_body);
  if (!response) {
    co_await send_error(response.error());
    co_return false;
  }
  auto server_final = server.handle_client_final(response->data);
  if (!server_final) co_return co_await fail(server_final.error());
  if (mock || !server.client_key())
    co_return co_await fail(password_failed(user));  // cannot happen: random keys
  log::debug(
      "client proved user \"" + user + "\"'s SCRAM secret (" +
          (server.channel_binding_used() ? std::string("SCRAM-SHA-256-PLUS") : std::string("SCRAM-SHA-256")) +
          (from_cache ? ", cached verifier)" : ")"),
      id_);
  // SASLFinal now; AuthenticationOk only once PostgreSQL agrees.
  queue_to_client(encode_auth(protocol::AuthCode::sasl_final, *server_final));
  if (!co_await flush_client()) co_return false;

  // 3. A parked connection PostgreSQL authenticated for this very role and
  // start-up earlier (upstream.pool, server_pool.h), else a new one,
  // authenticated with the ClientKey the client proved.
  if (server_.upstream_pool) {
    pool_key_ = ServerPool::key_for(startup_.parameters);
    if (auto pooled = server_.upstream_pool->checkout(pool_key_)) {
      const BackendKey key = pooled->key;
      const auto born = pooled->born;
      auto parameters = std::move(pooled->parameters);
      if (auto stream = Stream::adopt(executor_, std::move(pooled->stream))) {
        upstream_ = std::move(stream);
        upstream_born_ = born;
        upstream_reused_ = true;
        if (server_.metrics) server_.metrics->on_upstream_connection(true);
        co_return co_await resume_pooled_session(key, std::move(parameters));
      }
    }
  }
  if (!co_await open_upstream()) co_return false;
  if (!co_await authenticate_upstream_scram(*server.client_key(), server.verifier(), lookup_db))
    co_return false;
  co_return co_await relay_session_setup();
}

awaitable<bool> Session::resume_pooled_session(BackendKey key,
                                               std::vector<std::pair<std::string, std::string>> parameters) {
  identity_.upstream_tls = upstream_->is_tls();
  queue_to_client(encode_auth(protocol::AuthCode::ok));
  for (auto& [name, value] : parameters) {
    Buffer b;
    protocol::ParameterStatus{name, value}.encode(b);
    queue_to_client(b);
    identity_.server_parameters[std::move(name)] = std::move(value);
  }
  upstream_key_ = key;
  client_key_ = server_.cancels.add(upstream_key_);
  registered_key_ = true;
  Buffer b;
  protocol::BackendKeyData{client_key_.process_id, client_key_.secret_key}.encode(b);
  queue_to_client(b);
  Buffer ready;
  protocol::ReadyForQuery{'I'}.encode(ready);
  log::debug("reusing PostgreSQL backend " + std::to_string(key.process_id) + " from the upstream pool", id_);
  co_return co_await finish_session_setup(std::move(ready));
}

awaitable<bool> Session::authenticate_upstream_scram(const ScramKey& client_key,
                                                     const ScramVerifier& verifier,
                                                     const std::string& lookup_db) {
  const std::string& user = identity_.user;
  std::optional<ScramClient> scram;
  // PostgreSQL refused, or we refused PostgreSQL: tell the client why.
  auto fail = [&](const Error& e) -> awaitable<bool> {
    log::info("PostgreSQL did not accept user \"" + user + "\" after pgcloak authenticated it: " + e.message,
              id_);
    if (e.sqlstate == sqlstate::invalid_authorization_specification ||
        e.sqlstate == sqlstate::invalid_password) {
      server_.auth_lookup->forget(lookup_db, user);
    }
    co_await send_error(e);
    co_return false;
  };
  auto send_upstream = [&](const Buffer& b) -> awaitable<bool> {
    if (co_await write_upstream(b)) co_return true;
    co_return co_await lost_upstream();
  };

  for (;;) {
    auto next = co_await next_upstream_frame();
    if (!next) co_return false;
    const auto& frame = *next;
    const size_t size = frame.size();
    switch (frame.type()) {
      case be::authentication: {
        auto auth = protocol::Authentication::decode(frame.body);
        if (!auth) {
          co_await send_error(auth.error());
          co_return false;
        }
        switch (auth->code) {
          case protocol::AuthCode::ok:
            // Fail closed: a server that skips SASLFinal has not proved it
            // holds the verifier.
            if (scram && !scram->done()) {
              co_return co_await fail(Error::protocol("PostgreSQL ended SCRAM authentication early"));
            }
            if (scram) {
              log::debug(
                  "PostgreSQL accepted user \"" + user + "\" (" + std::string(scram->mechanism()) + ")", id_);
            } else {
              log::debug("PostgreSQL let user \"" + user +
                             "\" in without a password (trust); pgcloak had "
                             "authenticated the client already",
                         id_);
            }
            queue_to_client(upstream_in_.view().first(size));
            upstream_in_.consume(size);
            co_return true;
          case protocol::AuthCode::sasl: {
            if (scram) co_return co_await fail(Error::protocol("PostgreSQL restarted SASL authentication"));
            ScramClientOptions options;
            if (upstream_->is_tls()) {
              // Bind to PostgreSQL's certificate (SCRAM-SHA-256-PLUS).
              if (X509* cert = SSL_get0_peer_certificate(upstream_->ssl()); cert != nullptr) {
                auto hash = tls_server_end_point_hash(cert);
                if (hash) options.tls_server_end_point = std::move(hash).value();
              }
            }
            scram.emplace(client_key, verifier, std::move(options));
            auto mechanism = scram->select_mechanism(auth->mechanisms);
            if (!mechanism) co_return co_await fail(mechanism.error());
            auto first = scram->client_first();
            if (!first) co_return co_await fail(first.error());
            upstream_in_.consume(size);
            protocol::SASLInitialResponse init;
            init.mechanism = *mechanism;
            init.data = protocol::as_bytes(*first);
            Buffer b;
            init.encode(b);
            if (!co_await send_upstream(b)) co_return false;
            break;
          }
          case protocol::AuthCode::sasl_continue: {
            if (!scram) co_return co_await fail(Error::protocol("PostgreSQL sent SASLContinue out of order"));
            auto final_message = scram->handle_server_first(auth->data);
            if (!final_message) co_return co_await fail(final_message.error());
            upstream_in_.consume(size);
            Buffer b;
            protocol::SASLResponse{protocol::as_bytes(*final_message)}.encode(b);
            if (!co_await send_upstream(b)) co_return false;
            break;
          }
          case protocol::AuthCode::sasl_final: {
            if (!scram) co_return co_await fail(Error::protocol("PostgreSQL sent SASLFinal out of order"));
            auto st = scram->handle_server_final(auth->data);
            if (!st) co_return co_await fail(st.error());
            upstream_in_.consume(size);
            break;
          }
          case protocol::AuthCode::cleartext_password:
          case protocol::AuthCode::md5_password: {
            // pgcloak never sees the password in this mode, so it cannot
            // answer these.
            const bool md5 = auth->code == protocol::AuthCode::md5_password;
            log::warn(std::string("PostgreSQL asked for ") + (md5 ? "an MD5" : "a cleartext") +
                          " password for user \"" + user +
                          "\"; auth.mode scram needs scram-sha-256 in pg_hba.conf for pgcloak's connections",
                      id_);
            co_await send_error(Error::make(
                sqlstate::invalid_authorization_specification,
                std::string("PostgreSQL asked pgcloak for ") + (md5 ? "an MD5" : "a cleartext") +
                    " password for user \"" + user + "\", which pgcloak does not have with auth.mode scram",
                Severity::fatal,
                "auth.mode scram needs the pg_hba.conf line that matches pgcloak's connections to say "
                "scram-sha-256."));
            co_return false;
          }
          default:
            co_await send_error(Error::make(sqlstate::feature_not_supported,
                                            "PostgreSQL asked for an authentication method (code " +
                                                std::to_string(static_cast<int>(auth->code)) +
                                                ") that pgcloak cannot answer; use scram-sha-256",
                                            Severity::fatal));
            co_return false;
        }
        break;
      }
      case be::error_response:
        // PostgreSQL's own error (e.g. the role lost its LOGIN attribute or
        // the password changed in between), unchanged.
        note_upstream_error(frame.body);
        queue_to_client(upstream_in_.view().first(size));
        upstream_in_.consume(size);
        co_await flush_client();
        server_.auth_lookup->forget(lookup_db, user);
        log::info("PostgreSQL refused user \"" + user + "\" after pgcloak authenticated it", id_);
        co_return false;
      case be::notice_response:
      case be::negotiate_protocol_version:
        queue_to_client(upstream_in_.view().first(size));
        upstream_in_.consume(size);
        break;
      default:
        co_await send_error(Error::protocol("unexpected message type " +
                                            protocol::printable_type(frame.type()) +
                                            " from PostgreSQL during authentication"));
        co_return false;
    }
  }
}

}  // namespace pgcloak::proxy
