#include "proxy/session.h"

#include <algorithm>
#include <array>

#include "protocol/backend.h"
#include "protocol/frontend.h"
#include "protocol/message_type.h"
#include "proxy/alert_hub.h"
#include "proxy/audit_chain.h"
#include "proxy/log.h"
#include "proxy/upstream.h"
#include "rules/session_settings.h"
#include "rules/startup_options.h"

namespace pgcloak::proxy {

namespace {

// Who a session is for the detection rules: the login plus the groups the
// rules name that it belongs to (nested groups included, from the catalog
// in force), and the client's address without the port.
std::shared_ptr<const rules::DetectIdentity> make_detect_identity(const std::string& user,
                                                                  const std::string& client_address,
                                                                  const std::string& application_name,
                                                                  uint64_t session_id, PolicyStore* store,
                                                                  const rules::Detector& detector) {
  auto who = std::make_shared<rules::DetectIdentity>();
  who->user = user;
  who->roles.push_back(user);
  std::shared_ptr<const rules::Protection> protection =
      store != nullptr && store->enabled() ? store->protection() : nullptr;
  if (protection) {
    std::vector<std::string> named;
    for (const auto& r : detector.config()->rules) {
      named.insert(named.end(), r.roles.begin(), r.roles.end());
      named.insert(named.end(), r.exclude_roles.begin(), r.exclude_roles.end());
    }
    std::sort(named.begin(), named.end());
    named.erase(std::unique(named.begin(), named.end()), named.end());
    for (const auto& g : named) {
      if (g != user && protection->catalog().is_member(user, g)) who->roles.push_back(g);
    }
  }
  std::string ip = client_address;
  if (!ip.empty() && ip.front() == '[') {
    ip = ip.substr(1, ip.find(']') - 1);
  } else if (auto colon = ip.rfind(':'); colon != std::string::npos && ip.find(':') == colon) {
    ip.resize(colon);
  }
  if (ip == "unix") ip.clear();
  who->client_ip = std::move(ip);
  who->application_name = application_name;
  who->session_id = session_id;
  return who;
}

}  // namespace

namespace {

namespace fe = protocol::fe;
namespace be = protocol::be;
using protocol::Buffer;
using protocol::Bytes;
using protocol::printable_type;

// Authentication messages from clients are small (a SCRAM message is well
// under 1 KiB); PostgreSQL caps them at 64 KiB as well (PG_MAX_AUTH_TOKEN_LENGTH).
constexpr uint32_t max_auth_message = 65536;

Buffer encode_error(const Error& e) {
  Buffer out;
  protocol::ErrorResponse::from_error(e).encode(out);
  return out;
}

bool truthy_replication(const std::string& v) {
  // PostgreSQL accepts a boolean or "database" (logical replication).
  return !(v == "0" || v == "false" || v == "off" || v == "no" || v == "f" || v == "n");
}

}  // namespace

void Session::Inbound::consume(size_t n) {
  begin += n;
  if (begin == data.size()) {
    data.clear();
    begin = 0;
  }
}

Session::Session(ServerState& server, std::unique_ptr<Stream> client, uint64_t id)
    : server_(server),
      config_(server.config),
      client_(std::move(client)),
      executor_(client_->executor()),
      id_(id),
      handshake_deadline_(executor_) {
  identity_.client_address = client_->peer_address();
  if (server_.metrics) connection_metrics_ = server_.metrics->on_connection_opened();
}

Session::~Session() {
  if (registered_key_) server_.cancels.remove(client_key_);
  server_.sessions.remove(id_);
}

awaitable<void> Session::run(std::shared_ptr<Session> self) {
  try {
    co_await self->main();
    // Outside relaying nothing else reads the client, so a TLS close can
    // be done in place (relaying does its own in the writer).
    if (self->phase_ != Phase::ready && self->phase_ != Phase::closing)
      co_await self->close_client_gracefully();
  } catch (const std::exception& e) {
    log::error(std::string("session ended by an internal error: ") + e.what(), self->id_);
  }
  self->close_all();
}

awaitable<void> Session::main() {
  log::debug("connection from " + identity_.client_address, id_);
  handshake_deadline_.arm(config_->timeouts.handshake, [this] {
    log::warn("handshake timeout (" + std::to_string(config_->timeouts.handshake.count()) +
                  " ms) expired before authentication completed; closing",
              id_);
    handshake_timed_out_ = true;
    if (phase_ == Phase::tls) {  // no protocol to speak yet
      close_all();
      return;
    }
    // Abort what the handshake is waiting for; main() then tells the client
    // why. Should even that stall, the connection is closed shortly after.
    client_->cancel();
    if (upstream_) upstream_->cancel();
    handshake_deadline_.arm(std::chrono::seconds(2), [this] { close_all(); });
  });
  audit_event("connection_opened", nlohmann::json::object());
  const bool ready = co_await negotiate_startup() && co_await connect_and_authenticate();
  if (phase_ == Phase::auth || ready) {
    nlohmann::json d = {
        {"result", ready ? "ok" : "failed"},
        {"method", config_->auth.mode == rules::AuthMode::scram ? "scram (pgcloak)" : "passthrough"}};
    if (!ready)
      d["sqlstate"] =
          last_error_sqlstate_.empty() ? std::string(sqlstate::connection_failure) : last_error_sqlstate_;
    audit_event("auth", std::move(d));
    connection_metrics_.on_auth(ready);
  }
  if (!ready) {
    audit_event("disconnect", {{"statements", 0}});
    // Only a client that got as far as authentication is owed an answer; one
    // that never sent a StartupMessage (or sent a CancelRequest) is not.
    if (handshake_timed_out_ && !closing_ && phase_ == Phase::auth) {
      co_await send_error(Error::make(
          sqlstate::connection_failure,
          "pgcloak closed the connection: the client did not finish connecting and authenticating within " +
              std::to_string(config_->timeouts.handshake.count()) + " ms",
          Severity::fatal, "The limit is timeouts.handshake in pgcloak's configuration."));
    }
    co_return;
  }
  handshake_deadline_.disarm();
  co_await relay();
}

// --- startup phase --------------------------------------------------------

awaitable<protocol::FrameResult> Session::read_frame(Stream& stream, Inbound& in, bool startup,
                                                     uint32_t max_length) {
  for (;;) {
    auto r = startup ? protocol::decode_startup_frame(in.view(), max_length)
                     : protocol::decode_frame(in.view(), max_length);
    if (r.status != protocol::FrameStatus::need_more) co_return r;
    if (&stream == client_.get() && !co_await flush_client()) {
      co_return protocol::FrameResult{
          protocol::FrameStatus::error,
          {},
          Error::make(sqlstate::connection_failure, "client went away", Severity::fatal)};
    }
    if (in.begin > 0 && in.begin == in.data.size()) in.consume(0);
    size_t have = in.data.size();
    in.data.resize(have + 8192);
    auto [ec, n] = co_await stream.read_some(asio::buffer(in.data.data() + have, 8192));
    in.data.resize(have + n);
    if (ec) {
      co_return protocol::FrameResult{
          protocol::FrameStatus::error,
          {},
          Error::make(sqlstate::connection_failure, "connection closed: " + ec.message(), Severity::fatal)};
    }
  }
}

awaitable<bool> Session::negotiate_startup() {
  bool ssl_done = false;
  bool gss_done = false;
  for (;;) {
    auto fr = co_await read_frame(*client_, client_in_, true, protocol::max_startup_length);
    if (fr.status == protocol::FrameStatus::error) {
      if (fr.error.sqlstate != sqlstate::connection_failure) co_await send_error(fr.error);
      log::debug("startup failed: " + fr.error.message, id_);
      co_return false;
    }
    auto packet = protocol::decode_startup_packet(fr.frame.body);
    const size_t frame_size = fr.frame.size();
    if (!packet) {
      co_await send_error(packet.error());
      co_return false;
    }
    client_in_.consume(frame_size);

    if (std::holds_alternative<protocol::SSLRequest>(*packet) ||
        std::holds_alternative<protocol::GSSENCRequest>(*packet)) {
      const bool is_ssl = std::holds_alternative<protocol::SSLRequest>(*packet);
      if ((is_ssl && ssl_done) || (!is_ssl && gss_done) || client_->is_tls()) {
        co_await send_error(Error::protocol("encryption negotiation repeated after it was settled"));
        co_return false;
      }
      // Security: bytes that arrived behind the request were sent before
      // encryption was agreed, so a man in the middle could have injected
      // them; PostgreSQL refuses them for this reason (CVE-2021-23214).
      if (!client_in_.view().empty()) {
        Error e = Error::protocol(std::string("received unencrypted data after ") +
                                  (is_ssl ? "SSL request" : "GSSAPI encryption request"));
        e.detail =
            "This could be either a client-software bug or evidence of an attempted man-in-the-middle "
            "attack.";
        log::warn(e.message + " from " + identity_.client_address, id_);
        co_await send_error(e);
        co_return false;
      }
      if (!is_ssl) {
        gss_done = true;
        queue_to_client(protocol::as_bytes("N"));  // pgcloak does not do GSSAPI encryption
        continue;
      }
      ssl_done = true;
      if (!server_.client_tls || client_->is_unix()) {
        queue_to_client(protocol::as_bytes("N"));
        continue;
      }
      queue_to_client(protocol::as_bytes("S"));
      if (!co_await flush_client()) co_return false;
      phase_ = Phase::tls;
      auto ec = co_await client_->tls_accept(*server_.client_tls);
      if (ec) {
        log::info("TLS handshake with " + identity_.client_address + " failed: " + ec.message(), id_);
        co_return false;
      }
      identity_.tls = true;
      identity_.tls_info = client_->tls_info();
      connection_metrics_.set_tls();
      audit_event("tls", {{"version", identity_.tls_info.version},
                          {"cipher", identity_.tls_info.cipher},
                          {"client_cert_subject", identity_.tls_info.client_cert_subject}});
      phase_ = Phase::startup;
      continue;
    }

    if (auto* cancel = std::get_if<protocol::CancelRequest>(&*packet)) {
      co_await handle_cancel(*cancel);
      co_return false;
    }

    startup_ = std::move(std::get<protocol::StartupMessage>(*packet));
    break;
  }

  // tls.require guards the network. A Unix socket never leaves the host, and
  // PostgreSQL itself offers no TLS there, so local clients are exempt.
  // A configured client CA means every network client must prove itself
  // with a certificate, which only TLS can carry: plaintext would bypass it.
  const bool mtls = !config_->tls.client_ca_file.empty();
  if ((config_->tls.require || mtls) && !identity_.tls && !client_->is_unix()) {
    co_await send_error(Error::make(
        sqlstate::invalid_authorization_specification,
        mtls ? "pgcloak accepts only TLS connections with a client certificate"
             : "pgcloak accepts only TLS-encrypted connections",
        Severity::fatal,
        mtls ? "Connect with sslmode=require and sslcert/sslkey set to a certificate signed by pgcloak's "
               "client CA."
             : "Connect with sslmode=require (or verify-full with pgcloak's CA certificate)."));
    co_return false;
  }

  // Protocol 3.x with x > 0, or "_pq_." options: say which version and
  // options we speak and carry on, as PostgreSQL does (protocol docs,
  // "Protocol Versions").
  protocol::NegotiateProtocolVersion npv;
  npv.newest_minor = protocol::protocol_minor;
  std::vector<std::pair<std::string, std::string>> forwarded;
  for (auto& [k, v] : startup_.parameters) {
    if (k.rfind("_pq_.", 0) == 0) {
      npv.unrecognized_options.push_back(k);
    } else {
      forwarded.emplace_back(k, v);
    }
  }
  if (startup_.minor != protocol::protocol_minor || !npv.unrecognized_options.empty()) {
    Buffer b;
    npv.encode(b);
    queue_to_client(b);
  }
  startup_.minor = protocol::protocol_minor;
  startup_.parameters = std::move(forwarded);

  const std::string* user = startup_.find("user");
  if (user == nullptr || user->empty()) {
    co_await send_error(Error::make(sqlstate::invalid_authorization_specification,
                                    "no PostgreSQL user name specified in startup packet", Severity::fatal));
    co_return false;
  }
  if (const std::string* repl = startup_.find("replication"); repl != nullptr && truthy_replication(*repl)) {
    // Replication streams whole tables past any statement-level policy.
    co_await send_error(Error::make(
        sqlstate::feature_not_supported, "replication connections are not allowed through pgcloak",
        Severity::fatal, "Connect replication clients to PostgreSQL directly from a trusted host."));
    co_return false;
  }
  identity_.user = *user;
  const std::string* db = startup_.find("database");
  identity_.database = db != nullptr && !db->empty() ? *db : *user;
  if (const std::string* app = startup_.find("application_name")) identity_.application_name = *app;
  identity_.startup_parameters = startup_.parameters;
  co_return true;
}

awaitable<void> Session::handle_cancel(const protocol::CancelRequest& request) {
  // Unknown keys are dropped without a word, as PostgreSQL does: an answer
  // would let a scanner tell live keys from dead ones.
  auto upstream_key = server_.cancels.find({request.process_id, request.secret_key});
  if (!upstream_key) {
    log::debug("cancel request with an unknown key ignored", id_);
    co_return;
  }
  if (co_await deliver_cancel(*upstream_key, "cannot forward cancel request: ")) {
    log::info("cancel request forwarded to PostgreSQL", id_);
  }
}

awaitable<bool> Session::deliver_cancel(BackendKey key, std::string_view failure) {
  auto conn = co_await connect_upstream(config_->upstream, server_.upstream_tls.get());
  if (!conn) {
    log::warn(std::string(failure) + conn.error().message, id_);
    co_return false;
  }
  Buffer b;
  protocol::CancelRequest{key.process_id, key.secret_key}.encode(b);
  auto& up = **conn;
  auto [ec, n] = co_await up.write(asio::buffer(b));
  if (ec) {
    log::warn(std::string(failure) + ec.message(), id_);
    co_return false;
  }
  // PostgreSQL signals the backend, then closes the connection: wait for
  // that (bounded), so that what follows comes after the cancel.
  Deadline wait(executor_);
  wait.arm(std::chrono::seconds(5), [&up] { up.close(); });
  std::array<uint8_t, 64> sink{};
  for (int i = 0; i < 16; ++i) {
    auto [rec, rn] = co_await up.read_some(asio::buffer(sink));
    if (rec) break;
  }
  co_return true;
}

// --- authentication phase -------------------------------------------------

awaitable<bool> Session::open_upstream() {
  auto conn = co_await connect_upstream(config_->upstream, server_.upstream_tls.get());
  if (!conn) {
    log::warn(conn.error().message, id_);
    if (server_.metrics) server_.metrics->on_upstream_connect_error();
    server_.upstream_health.note_failure(conn.error().message);
    co_await send_error(conn.error());
    co_return false;
  }
  server_.upstream_health.note_ok();
  upstream_ = std::move(conn).value();
  upstream_born_ = std::chrono::steady_clock::now();
  if (server_.metrics) server_.metrics->on_upstream_connection(false);
  identity_.upstream_tls = upstream_->is_tls();
  Buffer b;
  startup_.encode(b);
  if (!co_await write_upstream(b)) {
    co_await send_error(Error::make(sqlstate::connection_failure,
                                    "lost the connection to PostgreSQL while starting the session",
                                    Severity::fatal));
    co_return false;
  }
  co_return true;
}

awaitable<bool> Session::lost_upstream() {
  if (handshake_timed_out_) co_return false;  // main() reports the timeout
  co_await send_error(Error::make(sqlstate::connection_failure,
                                  "lost the connection to PostgreSQL during authentication",
                                  Severity::fatal));
  co_return false;
}

awaitable<std::optional<protocol::Frame>> Session::next_upstream_frame() {
  auto fr = co_await read_frame(*upstream_, upstream_in_, false, config_->limits.max_message_size);
  if (fr.status != protocol::FrameStatus::error) co_return fr.frame;
  if (fr.error.sqlstate == sqlstate::connection_failure) {
    co_await lost_upstream();
  } else {
    co_await send_error(fr.error);
  }
  co_return std::nullopt;
}

namespace {

// What a masked login may not ask for in its StartupMessage, read as
// PostgreSQL reads the parameters and the options string
// (rules/startup_options.h): switching identity, making the server print
// its parse trees and plans (which hold the rewritten statement and with it
// the hash mask's key material), changing how string literals are lexed, a
// client-only encoding. Anything not on the allow-list of common session
// settings is refused (rules/session_settings.h).
struct StartupViolation {
  std::string setting;  // as the client spelled it
  std::string why;
};
std::optional<StartupViolation> masked_startup_violation(const protocol::StartupMessage& startup) {
  auto settings = rules::requested_settings(startup.parameters);
  if (!settings) {
    return StartupViolation{"options",
                            "pgcloak reads options only as -c name=value and --name=value settings"};
  }
  for (const auto& s : *settings) {
    if (s.other_switch) {
      return StartupViolation{s.shown, "server switches other than -c and -- can turn on debugging output"};
    }
    if (auto why = rules::masked_startup_refusal(s.name, s.value)) return StartupViolation{s.shown, *why};
  }
  return std::nullopt;
}

}  // namespace

awaitable<bool> Session::connect_and_authenticate() {
  phase_ = Phase::auth;
  if (server_.policies && server_.policies->enabled()) {
    if (auto bad = masked_startup_violation(startup_)) {
      auto policy = server_.policies->for_user(identity_.user);
      const bool masked = !policy || (*policy && (*policy)->masks_anything());
      if (masked) {
        log::warn("refusing startup setting " + bad->setting + " for masked login \"" + identity_.user + "\"",
                  id_);
        audit_event("denial", {{"rule", "deny:startup-setting"}, {"setting", bad->setting}});
        if (server_.metrics) server_.metrics->on_denial("deny:startup-setting");
        if (server_.console) {
          server_.console->on_denial({std::chrono::system_clock::now(), id_, identity_.user,
                                      identity_.client_address, "deny:startup-setting",
                                      "startup setting " + bad->setting + " refused for a masked login"});
        }
        Error e = Error::make(sqlstate::insufficient_privilege,
                              "pgcloak: the startup setting " + bad->setting + " is not allowed for role \"" +
                                  identity_.user + "\", whose data is masked",
                              Severity::fatal,
                              "Remove it from the connection parameters (PGOPTIONS, PGCLIENTENCODING, ...).");
        e.detail = "Why: " + bad->why + ".";
        co_await send_error(e);
        co_return false;
      }
    }
  }
  // auth.mode scram: pgcloak authenticates the client itself (auth_scram.cc).
  if (config_->auth.mode == rules::AuthMode::scram) co_return co_await authenticate_scram();
  if (!co_await open_upstream()) co_return false;

  // Relays one client 'p' message after an authentication request.
  auto relay_client_response = [&](protocol::AuthCode code) -> awaitable<bool> {
    auto fr = co_await read_frame(*client_, client_in_, false, max_auth_message);
    if (fr.status == protocol::FrameStatus::error) {
      if (fr.error.sqlstate != sqlstate::connection_failure) co_await send_error(fr.error);
      co_return false;
    }
    if (fr.frame.type() != fe::password) {
      // A client may give up (Terminate) instead of answering.
      if (fr.frame.type() != fe::terminate) {
        co_await send_error(Error::protocol("expected a password or SASL response, got message type " +
                                            printable_type(fr.frame.type())));
      }
      co_return false;
    }
    if (code == protocol::AuthCode::sasl) {
      auto init = protocol::SASLInitialResponse::decode(fr.frame.body);
      if (!init) {
        co_await send_error(init.error());
        co_return false;
      }
      if (init->mechanism != "SCRAM-SHA-256") {
        co_await send_error(Error::make(
            sqlstate::protocol_violation,
            "client selected SASL mechanism \"" + init->mechanism + "\", which pgcloak did not offer",
            Severity::fatal));
        co_return false;
      }
      // A libpq client with TLS and channel_binding=prefer says "y": it
      // could bind but believes the server cannot. PostgreSQL then fails the
      // login when its own connection is TLS, since to it that looks like a
      // downgrade (RFC 5802, section 6). Say so plainly instead.
      if (init->data && !init->data->empty() && (*init->data)[0] == 'y' && upstream_->is_tls()) {
        log::info("refusing SCRAM login of user \"" + identity_.user +
                      "\": the client asked for channel binding (gs2 flag y) and the upstream leg is TLS",
                  id_);
        co_await send_error(Error::make(
            sqlstate::invalid_authorization_specification,
            "SCRAM channel binding cannot pass through pgcloak while its connection to PostgreSQL uses TLS",
            Severity::fatal,
            "Connect with channel_binding=disable, or run the pgcloak-to-PostgreSQL leg over a Unix "
            "socket or loopback with upstream.sslmode: disable."));
        co_return false;
      }
    }
    const size_t size = fr.frame.size();
    bool ok = co_await write_upstream(client_in_.view().first(size));
    client_in_.consume(size);
    co_return ok;
  };

  // Authentication exchange: requests from PostgreSQL go to the client and
  // the client's answers go back, until AuthenticationOk or an error.
  bool password_requested = false;
  for (bool authenticated = false; !authenticated;) {
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
        const auto code = auth->code;
        switch (code) {
          case protocol::AuthCode::ok:
            if (!password_requested && !client_->is_unix()) {
              // pgcloak relays authentication; a trust rule in PostgreSQL's
              // pg_hba.conf for pgcloak's address therefore opens the door to
              // every network client of pgcloak. Make that visible.
              log::warn(
                  "PostgreSQL let user \"" + identity_.user + "\" in without a password (trust); " +
                      "every client that reaches pgcloak gets the same. Use scram-sha-256 in pg_hba.conf " +
                      "for pgcloak's address.",
                  id_);
            }
            queue_to_client(upstream_in_.view().first(size));
            upstream_in_.consume(size);
            authenticated = true;
            break;
          case protocol::AuthCode::cleartext_password:
          case protocol::AuthCode::md5_password:
          case protocol::AuthCode::sasl_continue:
            password_requested = true;
            queue_to_client(upstream_in_.view().first(size));
            upstream_in_.consume(size);
            if (!co_await relay_client_response(code)) co_return false;
            break;
          case protocol::AuthCode::sasl: {
            password_requested = true;
            // TLS ends at pgcloak, so a client binding to our certificate
            // could never match PostgreSQL's: offer only unbound SCRAM.
            protocol::Authentication offer = *auth;
            std::erase(offer.mechanisms, std::string("SCRAM-SHA-256-PLUS"));
            if (std::find(offer.mechanisms.begin(), offer.mechanisms.end(), "SCRAM-SHA-256") ==
                offer.mechanisms.end()) {
              co_await send_error(
                  Error::make(sqlstate::feature_not_supported,
                              "PostgreSQL offered no SASL mechanism that can pass through pgcloak",
                              Severity::fatal, "pgcloak relays SCRAM-SHA-256 without channel binding."));
              co_return false;
            }
            upstream_in_.consume(size);
            Buffer b;
            offer.encode(b);
            queue_to_client(b);
            if (!co_await relay_client_response(code)) co_return false;
            break;
          }
          case protocol::AuthCode::sasl_final:
            queue_to_client(upstream_in_.view().first(size));
            upstream_in_.consume(size);
            break;
          default:
            co_await send_error(
                Error::make(sqlstate::feature_not_supported,
                            "PostgreSQL asked for an authentication method (code " +
                                std::to_string(static_cast<int>(code)) +
                                ") that pgcloak cannot relay; use scram-sha-256, md5 or password",
                            Severity::fatal));
            co_return false;
        }
        break;
      }
      case be::error_response:
        // A failed login: relay PostgreSQL's own error unchanged, so the
        // client sees exactly what a direct connection would show.
        note_upstream_error(frame.body);
        queue_to_client(upstream_in_.view().first(size));
        upstream_in_.consume(size);
        co_await flush_client();
        log::info(
            "authentication failed for user \"" + identity_.user + "\" from " + identity_.client_address,
            id_);
        co_return false;
      case be::notice_response:
      case be::negotiate_protocol_version:
        queue_to_client(upstream_in_.view().first(size));
        upstream_in_.consume(size);
        break;
      default:
        co_await send_error(Error::protocol("unexpected message type " + printable_type(frame.type()) +
                                            " from PostgreSQL during authentication"));
        co_return false;
    }
  }
  co_return co_await relay_session_setup();
}

awaitable<bool> Session::relay_session_setup() {
  // Session setup: ParameterStatus, BackendKeyData, then ReadyForQuery.
  for (;;) {
    auto next = co_await next_upstream_frame();
    if (!next) co_return false;
    const auto& frame = *next;
    const size_t size = frame.size();
    switch (frame.type()) {
      case be::parameter_status: {
        auto ps = protocol::ParameterStatus::decode(frame.body);
        if (!ps) {
          co_await send_error(ps.error());
          co_return false;
        }
        identity_.server_parameters[ps->name] = ps->value;
        queue_to_client(upstream_in_.view().first(size));
        break;
      }
      case be::backend_key_data: {
        auto key = protocol::BackendKeyData::decode(frame.body);
        if (!key) {
          co_await send_error(key.error());
          co_return false;
        }
        upstream_key_ = {key->process_id, key->secret_key};
        client_key_ = server_.cancels.add(upstream_key_);
        registered_key_ = true;
        Buffer b;
        protocol::BackendKeyData{client_key_.process_id, client_key_.secret_key}.encode(b);
        queue_to_client(b);
        break;
      }
      case be::notice_response: queue_to_client(upstream_in_.view().first(size)); break;
      case be::error_response:
        note_upstream_error(frame.body);
        queue_to_client(upstream_in_.view().first(size));
        co_await flush_client();
        co_return false;
      case be::ready_for_query: {
        auto rfq = protocol::ReadyForQuery::decode(frame.body);
        if (!rfq) {
          co_await send_error(rfq.error());
          co_return false;
        }
        Buffer ready(upstream_in_.view().begin(), upstream_in_.view().begin() + static_cast<ptrdiff_t>(size));
        upstream_in_.consume(size);
        co_return co_await finish_session_setup(std::move(ready));
      }
      default:
        co_await send_error(Error::protocol("unexpected message type " + printable_type(frame.type()) +
                                            " from PostgreSQL during session start"));
        co_return false;
    }
    upstream_in_.consume(size);
  }
}

awaitable<bool> Session::finish_session_setup(Buffer ready_for_query) {
  identity_.authenticated = true;
  if (auto it = identity_.server_parameters.find("application_name");
      it != identity_.server_parameters.end()) {
    identity_.application_name = it->second;
  }
  // Before the client hears ReadyForQuery: a blocked user never gets a
  // usable session.
  if (!co_await detection_admits()) co_return false;
  queue_to_client(ready_for_query);
  log::info("session ready: user=" + identity_.user + " database=" + identity_.database +
                " application_name=\"" + identity_.application_name +
                "\" client=" + identity_.client_address +
                (identity_.tls ? " tls=" + identity_.tls_info.version + "/" + identity_.tls_info.cipher
                               : std::string(" tls=off")) +
                (identity_.tls_info.client_cert_subject.empty()
                     ? std::string()
                     : " client_cert=\"" + identity_.tls_info.client_cert_subject + "\"") +
                " upstream_tls=" + (identity_.upstream_tls ? "on" : "off") +
                (pool_key_.empty()  ? std::string()
                 : upstream_reused_ ? " upstream=pooled"
                                    : " upstream=new"),
            id_);
  co_return true;
}

// --- output helpers -------------------------------------------------------

awaitable<bool> Session::flush_client() {
  if (client_out_.empty()) co_return true;
  auto [ec, n] = co_await client_->write(asio::buffer(client_out_));
  client_out_.clear();
  co_return !ec;
}

awaitable<bool> Session::write_upstream(Bytes bytes) {
  auto [ec, n] = co_await upstream_->write(asio::buffer(bytes.data(), bytes.size()));
  co_return !ec;
}

awaitable<void> Session::send_error(const Error& error) {
  last_error_sqlstate_ = std::string(error.sqlstate);
  Buffer b = encode_error(error);
  queue_to_client(b);
  co_await flush_client();
}

std::shared_ptr<const AuditSession> Session::audit_session() {
  // Fixed once authenticated; before that each event gets what is known.
  if (audit_session_ && audit_session_complete_) return audit_session_;
  auto s = std::make_shared<AuditSession>();
  s->session_id = id_;
  s->client_addr = identity_.client_address;
  s->user = identity_.user;
  s->database = identity_.database;
  s->application_name = identity_.application_name;
  s->tls = identity_.tls;
  if (server_.policies && server_.policies->enabled() && !identity_.user.empty()) {
    if (auto p = server_.policies->for_user(identity_.user); p && *p) s->policy = (*p)->policy().name;
  }
  audit_session_ = s;
  audit_session_complete_ = identity_.authenticated;
  return s;
}

void Session::note_upstream_error(Bytes body) {
  if (auto e = protocol::ErrorResponse::decode(body)) {
    if (const std::string* code = e->find(protocol::field::sqlstate)) last_error_sqlstate_ = *code;
  }
}

void Session::audit_event(std::string kind, nlohmann::json detail) {
  if (!server_.audit) return;
  AuditEvent ev;
  ev.kind = std::move(kind);
  ev.session = audit_session();
  ev.detail = std::move(detail);
  server_.audit->submit(std::move(ev));
}

void Session::close_all() {
  closing_ = true;
  phase_ = Phase::closing;
  handshake_deadline_.disarm();
  if (upstream_) upstream_->close();
  client_->close();
}

// --- relaying -------------------------------------------------------------

awaitable<void> Session::relay() {
  phase_ = Phase::ready;
  // From here on the relay loop owns both connections; this coroutine only
  // waits for it to finish so the session's lifetime stays in one place.
  struct Done {
    explicit Done(asio::any_io_executor ex) : timer(ex) {}
    asio::steady_timer timer;
    bool done = false;
  };
  auto done = std::make_shared<Done>(executor_);
  done->timer.expires_at(asio::steady_timer::time_point::max());

  RelayStart start;
  start.session_id = id_;
  start.client = client_->detach();
  start.upstream = upstream_->detach();
  start.from_client.assign(client_in_.view().begin(), client_in_.view().end());
  client_in_ = Inbound{};
  start.to_client = std::move(client_out_);
  client_out_ = Buffer{};
  start.max_message_size = config_->limits.max_message_size;
  start.client_idle = config_->timeouts.client_idle;
  start.draining = draining_ || server_.draining.load();
  if (auto it = identity_.server_parameters.find("client_encoding"); it != identity_.server_parameters.end())
    start.client_encoding = it->second;
  if (auto it = identity_.server_parameters.find("server_encoding"); it != identity_.server_parameters.end())
    start.server_encoding = it->second;
  if (auto it = identity_.server_parameters.find("standard_conforming_strings");
      it != identity_.server_parameters.end())
    start.standard_conforming_strings = it->second;
  if (server_.policies && server_.policies->enabled()) {
    // Masking: the relay asks for this login's policy whenever the catalog
    // generation moves, so live sessions follow refreshes at their next
    // statement. Until a catalog has loaded the lookup fails and the relay
    // refuses every statement (fail closed).
    PolicyStore* store = server_.policies.get();
    start.policy.generation = [store] { return store->generation(); };
    start.policy.lookup = [store, user = identity_.user] {
      PolicyLookup found;
      auto r = store->for_user(user);
      if (r) {
        found.policy = std::move(r).value();
      } else {
        found.unavailable = r.error();
      }
      return found;
    };
    start.policy.catalog_changed = [store] { store->mark_stale(); };
    start.policy.stale = [store] { return store->stale(); };
  }
  if (server_.upstream_pool && !pool_key_.empty()) {
    // Session pooling: a clean exit hands the backend back. The old client's
    // cancel key dies first, so it can never cancel the next client's work.
    std::vector<std::pair<std::string, std::string>> parameters(identity_.server_parameters.begin(),
                                                                identity_.server_parameters.end());
    start.recycle_upstream = [pool = server_.upstream_pool.get(), cancels = &server_.cancels, key = pool_key_,
                              client_key = client_key_, upstream_key = upstream_key_, born = upstream_born_,
                              parameters = std::move(parameters)](DetachedStream stream) mutable {
      cancels->remove(client_key);
      PooledServer server;
      server.stream = std::move(stream);
      server.key = upstream_key;
      server.parameters = std::move(parameters);
      server.born = born;
      pool->give_back(std::move(key), std::move(server));
    };
  }
  start.on_closed = [ex = executor_, done] {
    asio::post(ex, [done] {
      done->done = true;
      done->timer.cancel();
    });
  };
  if (server_.audit) {
    start.audit.log = server_.audit.get();
    start.audit.session = audit_session();
    const auto& ac = config_->audit;
    start.audit.strict = ac.durability == rules::AuditDurability::strict;
    start.audit.fail_closed = ac.on_failure == rules::AuditOnFailure::fail_closed;
    start.audit.log_parameters = ac.log_parameters;
  }
  std::shared_ptr<LiveSession> live;
  if (server_.metrics) {
    start.observe.metrics = server_.metrics->session(identity_.user, identity_.database);
    PolicyStore* store = server_.policies.get();
    start.observe.protection = [store]() -> std::shared_ptr<const rules::Protection> {
      return store != nullptr && store->enabled() ? store->protection() : nullptr;
    };
  }
  if (server_.detector && detect_identity_) {
    start.observe.detector = server_.detector.get();
    start.observe.identity = detect_identity_;
    start.observe.refresh_identity = [user = identity_.user, client = identity_.client_address,
                                      app = identity_.application_name, id = id_,
                                      store = server_.policies.get(), det = server_.detector.get()] {
      return make_detect_identity(user, client, app, id, store, *det);
    };
    start.observe.alerts = server_.alerts.get();
    if (!start.observe.protection) {
      PolicyStore* store = server_.policies.get();
      start.observe.protection = [store]() -> std::shared_ptr<const rules::Protection> {
        return store != nullptr && store->enabled() ? store->protection() : nullptr;
      };
    }
    std::weak_ptr<Session> weak = weak_from_this();
    start.observe.cancel_upstream = [weak, ex = executor_](std::function<void()> on_done) {
      asio::post(ex, [weak, done = std::move(on_done)]() mutable {
        auto self = weak.lock();
        if (!self) {
          done();
          return;
        }
        // The coroutine holds the session alive until it is done.
        asio::co_spawn(
            self->executor_,
            [self, done = std::move(done)]() mutable -> awaitable<void> {
              co_await self->cancel_upstream_for_detection(std::move(done));
            },
            asio::detached);
      });
    };
  }
  if (server_.console) {
    live = std::make_shared<LiveSession>();
    live->id = id_;
    live->user = identity_.user;
    live->database = identity_.database;
    live->client = identity_.client_address;
    live->application_name = identity_.application_name;
    live->tls = identity_.tls;
    live->tls_version = identity_.tls_info.version;
    live->connected_at = connected_at_;
    if (auto s = audit_session(); s) live->set_policy(s->policy);
    start.observe.live = live;
    start.observe.console = server_.console.get();
    server_.console->open_session(live);
  }
  relay_ = server_.relays.pick().adopt(std::move(start));
  while (!done->done) co_await done->timer.async_wait(use_nothrow);
  if (live) server_.console->close_session(id_);
  if (server_.detector && detect_identity_) server_.detector->on_disconnect(*detect_identity_);
  phase_ = Phase::closing;
  closing_ = true;
  log::info("session closed: user=" + identity_.user + " client=" + identity_.client_address, id_);
}

awaitable<bool> Session::detection_admits() {
  if (!server_.detector) co_return true;
  auto who = make_detect_identity(identity_.user, identity_.client_address, identity_.application_name, id_,
                                  server_.policies.get(), *server_.detector);
  detect_identity_ = who;

  const auto now = std::chrono::system_clock::now();
  if (auto until = server_.detector->blocked_until(identity_.user, now)) {
    const auto minutes = std::chrono::ceil<std::chrono::minutes>(*until - now).count();
    log::warn("refusing login of blocked user \"" + identity_.user + "\" (" + std::to_string(minutes) +
                  " more minutes)",
              id_);
    audit_event("denial", {{"rule", "detection:blocked"}, {"blocked_until", format_audit_ts(*until)}});
    if (server_.metrics) server_.metrics->on_denial("detection:blocked");
    co_await send_error(
        Error::make(sqlstate::insufficient_privilege,
                    "pgcloak: user \"" + identity_.user + "\" is blocked for another " +
                        std::to_string(minutes) + " minutes after a possible data exfiltration alert",
                    Severity::fatal,
                    "An administrator can lift it: POST /api/blocks/lift?user=" + identity_.user +
                        " on pgcloak's metrics endpoint, with its token (docs/detection.md)."));
    co_return false;
  }
  auto alerts = server_.detector->on_connect(*who, now);
  const rules::Alert* strongest = nullptr;
  for (const auto& a : alerts) {
    if (server_.alerts) server_.alerts->raise(a, audit_session());
    if (strongest == nullptr || static_cast<int>(a.action) > static_cast<int>(strongest->action))
      strongest = &a;
  }
  if (strongest != nullptr && strongest->action != rules::AlertAction::alert) {
    co_await send_error(Error::make(sqlstate::insufficient_privilege,
                                    "pgcloak refused this login: rule \"" + strongest->rule + "\" (" +
                                        strongest->detector + "): " + strongest->message,
                                    Severity::fatal,
                                    "pgcloak watches service accounts for use from new places. If this is "
                                    "legitimate, ask your administrator to adjust the rule."));
    co_return false;
  }
  co_return true;
}

awaitable<void> Session::cancel_upstream_for_detection(std::function<void()> done) {
  // Whatever happens, the relay must be told: it holds the client's next
  // statements until then.
  struct Done {
    std::function<void()> f;
    ~Done() {
      if (f) f();
    }
  } guard{std::move(done)};
  // Once PostgreSQL has closed the cancel connection the signal is sent,
  // and the client's next statement can go.
  if (co_await deliver_cancel(upstream_key_, "cancel action: cannot cancel the statement in PostgreSQL: ")) {
    log::info("cancel action: CancelRequest delivered to PostgreSQL", id_);
  }
}

awaitable<void> Session::close_client_gracefully() {
  if (!client_->is_tls() || !client_->is_open()) co_return;
  // PostgreSQL ends TLS with close_notify, so clients tell a deliberate
  // close from a truncated stream; do the same, bounded in time.
  Deadline deadline(executor_);
  deadline.arm(std::chrono::seconds(2), [this] { client_->close(); });
  co_await client_->tls_shutdown();
}

void Session::drain() {
  draining_ = true;
  if (relay_) relay_->drain();
}

void Session::terminate(Error reason) {
  if (relay_) {
    relay_->terminate(std::move(reason));
    return;
  }
  close_all();
}

}  // namespace pgcloak::proxy
