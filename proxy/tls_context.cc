#include "proxy/tls_context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace pgcloak::proxy {

namespace {

Error tls_error(const std::string& what, const boost::system::system_error& e) {
  return Error::make(sqlstate::config_file_error, what + ": " + e.code().message());
}

void harden(ssl::context& ctx, int min_version) {
  // TLS 1.2 is the floor (issue 2); compression off (CRIME) and no
  // renegotiation, which PostgreSQL itself disables as well.
  SSL_CTX_set_min_proto_version(ctx.native_handle(), min_version);
  SSL_CTX_set_options(ctx.native_handle(),
                      SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
}

}  // namespace

Result<std::shared_ptr<ssl::context>> make_client_facing_context(const rules::TlsConfig& config) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  harden(*ctx, config.min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  try {
    ctx->use_certificate_chain_file(config.cert_file);
  } catch (const boost::system::system_error& e) {
    return tls_error("cannot load tls.cert_file \"" + config.cert_file + "\"", e);
  }
  try {
    ctx->use_private_key_file(config.key_file, ssl::context::pem);
  } catch (const boost::system::system_error& e) {
    return tls_error("cannot load tls.key_file \"" + config.key_file + "\"", e);
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    return Error::make(sqlstate::config_file_error, "tls.key_file does not match tls.cert_file");
  }
  if (!config.client_ca_file.empty()) {
    try {
      ctx->load_verify_file(config.client_ca_file);
    } catch (const boost::system::system_error& e) {
      return tls_error("cannot load tls.client_ca_file \"" + config.client_ca_file + "\"", e);
    }
    // Tell clients which CAs we accept so libpq picks the right certificate.
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.client_ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(ctx->native_handle(), names);
    }
    ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  // Session ids must be scoped to this application for resumption with mTLS.
  static const unsigned char sid_ctx[] = "pgcloak";
  SSL_CTX_set_session_id_context(ctx->native_handle(), sid_ctx, sizeof sid_ctx - 1);
  return ctx;
}

Result<std::shared_ptr<ssl::context>> make_upstream_context(const rules::UpstreamConfig& config) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
  harden(*ctx, TLS1_2_VERSION);
  if (config.sslmode == rules::SslMode::verify_full) {
    try {
      ctx->load_verify_file(config.sslrootcert);
    } catch (const boost::system::system_error& e) {
      return tls_error("cannot load upstream.sslrootcert \"" + config.sslrootcert + "\"", e);
    }
    ctx->set_verify_mode(ssl::verify_peer);
  } else {
    // prefer/require encrypt without authenticating the server, exactly as
    // libpq does for those modes without a root certificate.
    ctx->set_verify_mode(ssl::verify_none);
  }
  return ctx;
}

}  // namespace pgcloak::proxy
