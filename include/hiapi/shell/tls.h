#pragma once
// Verified TLS to the upstream (and to a shared store's Redis), after OpenSSL's demos/guide/tls-client-block.c: the chain is
// verified against the system store or a configured CA file, the host name is checked with
// SSL_set1_host, SNI is sent, and nothing older than TLS 1.2 is spoken.

#include <memory>
#include <string>

#include <openssl/ssl.h>

#include "hiapi/core/config.h"

namespace hiapi::shell {

/// Thread-safety: one loop thread.
class TlsClientContext {
public:
  /// @throws std::runtime_error with OpenSSL's reason when the context cannot be built (control
  ///         plane only: at start or reload).
  explicit TlsClientContext(const core::UpstreamConfig& cfg)
      : TlsClientContext(cfg.ca_file, cfg.tls_min_version) {}
  /// @param ca_file PEM CA certificates to trust; empty = the system trust store.
  TlsClientContext(const std::string& ca_file, core::TlsMinVersion min);
  ~TlsClientContext();
  TlsClientContext(const TlsClientContext&) = delete;
  TlsClientContext& operator=(const TlsClientContext&) = delete;

  /// @return a new SSL object for @p host with SNI and host-name verification set, or nullptr
  ///         (the reason is in @p error).
  SSL* newSsl(const std::string& host, std::string& error) const;

private:
  SSL_CTX* ctx_ = nullptr;
};

/// Drains OpenSSL's error queue into one human-readable string ("" when empty).
std::string drainOpensslErrors();

/// Describes why a handshake on @p ssl failed: the certificate verification result when it
/// failed, else the drained error queue, else @p fallback.
std::string describeTlsFailure(SSL* ssl, unsigned long bev_error, const std::string& fallback);

}  // namespace hiapi::shell
