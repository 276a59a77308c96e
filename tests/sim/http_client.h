#pragma once
// A tiny blocking HTTP/1.1 client for tests: plain or TLS (verified against a test CA), one
// request at a time, Content-Length or chunked bodies, socket timeouts so a test can never hang.
// Not for production: no redirects, no pipelining, no proxy.

#include <openssl/ssl.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace hiapi::test {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct HttpResponse {
  int status = 0;                              ///< 0 when no response was read
  std::map<std::string, std::string> headers;  ///< names lowercased
  std::string body;
  std::string error;  ///< non-empty on a transport failure (reset, timeout, TLS, parse)
  bool ok() const { return error.empty() && status != 0; }
  /// @return the header value (name case-insensitive) or "" when absent.
  std::string header(const std::string& name) const;
  bool hasHeader(const std::string& name) const;
};

class HttpClient {
public:
  struct Options {
    std::string host = "127.0.0.1";
    int port = 0;
    bool tls = false;
    std::string ca_file;                 ///< PEM CA (or self-signed cert) to trust
    std::string verify_name = "localhost";  ///< name checked against the certificate (and SNI)
    int timeout_ms = 10000;              ///< per socket read/write
    bool keep_alive = false;             ///< reuse the connection between requests
  };

  explicit HttpClient(Options options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  /// Sends one request and reads its response.
  HttpResponse request(const std::string& method, const std::string& target,
                       const HeaderList& headers = {}, const std::string& body = "");
  /// Sends a request without waiting (then call receive()). @return "" or an error.
  std::string send(const std::string& method, const std::string& target,
                   const HeaderList& headers = {}, const std::string& body = "");
  /// Reads the response of the last send().
  HttpResponse receive();
  /// Closes the connection.
  void close();

private:
  std::string connect();
  bool writeAll(const std::string& data, std::string* error);
  // Reads more bytes into buf_. @return bytes read, 0 on EOF, -1 on error (sets *error).
  long readMore(std::string* error);

  Options options_;
  int fd_ = -1;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  std::string buf_;  ///< bytes read past the last response
  std::string last_method_;  ///< of the request whose response is next
};

/// Convenience: "Authorization: Bearer KEY" plus JSON content type.
HeaderList authHeaders(const std::string& key);

}  // namespace hiapi::test
