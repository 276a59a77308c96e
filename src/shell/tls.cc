#include "hiapi/shell/tls.h"

#include <stdexcept>

#include <openssl/err.h>
#include <openssl/x509v3.h>

namespace hiapi::shell {

std::string drainOpensslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) {
      out += "; ";
    }
    out += buf;
  }
  return out;
}

TlsClientContext::TlsClientContext(const std::string& ca_file, core::TlsMinVersion min) {
  ctx_ = SSL_CTX_new(TLS_client_method());
  if (ctx_ == nullptr) {
    throw std::runtime_error("SSL_CTX_new failed: " + drainOpensslErrors());
  }
  SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  const int min_version =
      min == core::TlsMinVersion::Tls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
  if (SSL_CTX_set_min_proto_version(ctx_, min_version) != 1) {
    const std::string why = drainOpensslErrors();
    SSL_CTX_free(ctx_);
    throw std::runtime_error("cannot set the minimum TLS version: " + why);
  }
  const int ok = ca_file.empty()
                     ? SSL_CTX_set_default_verify_paths(ctx_)
                     : SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr);
  if (ok != 1) {
    const std::string why = drainOpensslErrors();
    SSL_CTX_free(ctx_);
    throw std::runtime_error(
        (ca_file.empty() ? std::string("cannot load the system trust store")
                         : "cannot load CA file " + ca_file) +
        ": " + why);
  }
  // Keep-alive connections are reused by the pool; sessions would only help new connections.
  SSL_CTX_set_session_cache_mode(ctx_, SSL_SESS_CACHE_OFF);
}

TlsClientContext::~TlsClientContext() { SSL_CTX_free(ctx_); }

SSL* TlsClientContext::newSsl(const std::string& host, std::string& error) const {
  SSL* ssl = SSL_new(ctx_);
  if (ssl == nullptr) {
    error = "SSL_new failed: " + drainOpensslErrors();
    return nullptr;
  }
  // SNI is for names only, never IP literals.
  const bool is_ip = host.find_first_not_of("0123456789.") == std::string::npos ||
                     host.find(':') != std::string::npos;
  if (!is_ip && SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) {
    error = "cannot set SNI: " + drainOpensslErrors();
    SSL_free(ssl);
    return nullptr;
  }
  // SSL_set1_host checks DNS names and IP addresses alike (X509_VERIFY_PARAM_set1_host /
  // X509_check_ip_asc): without it SSL_VERIFY_PEER accepts any name on a trusted chain.
  if (is_ip) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1) {
      error = "cannot set the expected IP address: " + drainOpensslErrors();
      SSL_free(ssl);
      return nullptr;
    }
  } else if (SSL_set1_host(ssl, host.c_str()) != 1) {
    error = "cannot set the expected host name: " + drainOpensslErrors();
    SSL_free(ssl);
    return nullptr;
  }
  return ssl;
}

std::string describeTlsFailure(SSL* ssl, unsigned long bev_error, const std::string& fallback) {
  std::string out;
  if (ssl != nullptr) {
    const long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
      out = std::string("certificate verify failed: ") + X509_verify_cert_error_string(verify);
    }
  }
  if (out.empty() && bev_error != 0) {
    char buf[256];
    ERR_error_string_n(bev_error, buf, sizeof buf);
    out = buf;
  }
  const std::string queue = drainOpensslErrors();
  if (out.empty()) {
    out = queue;
  }
  return out.empty() ? fallback : out;
}

}  // namespace hiapi::shell
