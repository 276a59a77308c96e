// The upstream section: where requests go, and how (TLS, timeouts, pool).

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <functional>

#include "config_parser.h"

namespace hiapi::core::config_internal {
namespace {

constexpr size_t kMaxCaFileBytes = 16 * 1024 * 1024;

/// Fails the url with a reason (throws).
using Bad = std::function<void(const std::string&)>;

struct HostPort {
  std::string host;       ///< lower-cased; an IPv6 literal without brackets
  std::string port_text;  ///< empty when the url names no port
  bool v6 = false;
};

/// The `host[:port]` or `[v6]:port` part of a url.
HostPort splitAuthority(const std::string& rest, const Bad& bad) {
  HostPort out;
  if (!rest.empty() && rest[0] == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos) {
      bad("unterminated IPv6 literal");
    }
    out.host = rest.substr(1, close - 1);
    in6_addr a{};
    if (inet_pton(AF_INET6, out.host.c_str(), &a) != 1) {
      bad("invalid IPv6 literal");
    }
    out.v6 = true;
    const std::string after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        bad("unexpected text after the IPv6 literal");
      }
      out.port_text = after.substr(1);
      if (out.port_text.empty()) {
        bad("empty port");
      }
    }
    return out;
  }
  const size_t colon = rest.find(':');
  out.host = rest.substr(0, colon);
  if (colon != std::string::npos) {
    out.port_text = rest.substr(colon + 1);
    if (out.port_text.empty()) {
      bad("empty port");
    }
  }
  const std::string& host = out.host;
  const bool ok = std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
  if (host.empty() || !ok || host.front() == '.' || host.front() == '-') {
    bad("invalid host");
  }
  out.host = lower(out.host);
  return out;
}

uint16_t portOf(const std::string& port_text, uint16_t default_port, const Bad& bad) {
  if (port_text.empty()) {
    return default_port;
  }
  unsigned p = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), p);
  if (ec != std::errc() || ptr != port_text.data() + port_text.size() || p == 0 || p > 65535) {
    bad("the port must be between 1 and 65535");
  }
  return static_cast<uint16_t>(p);
}

}  // namespace

void Parser::parseUrl(const Field& f, UpstreamConfig& out) const {
  const std::string url = str(f);
  const Bad bad = [&](const std::string& why) {
    fail(f, "invalid url " + quote(url) + ": " + why);
  };
  const size_t sep = url.find("://");
  if (sep == std::string::npos) {
    bad("expected http://host[:port] or https://host[:port]");
  }
  const std::string scheme = lower(url.substr(0, sep));
  if (scheme != "http" && scheme != "https") {
    bad("the scheme must be http or https");
  }
  std::string rest = url.substr(sep + 3);
  if (!rest.empty() && rest.back() == '/') {
    rest.pop_back();  // `https://api.hiapi.ai/` is the same upstream
  }
  if (rest.find_first_of("/?#") != std::string::npos) {
    bad("must not have a path, query or fragment (clients' /v1/... paths are forwarded as they "
        "are)");
  }
  if (rest.find('@') != std::string::npos) {
    bad("must not contain user information");
  }
  const HostPort hp = splitAuthority(rest, bad);
  const uint16_t default_port = scheme == "https" ? 443 : 80;
  const uint16_t port = portOf(hp.port_text, default_port, bad);
  out.scheme = scheme;
  out.host = hp.host;
  out.port = port;
  out.authority = hp.v6 ? "[" + hp.host + "]" : hp.host;
  if (port != default_port) {
    out.authority += ":" + std::to_string(port);
  }
  out.url = scheme + "://" + out.authority;
}

const FieldTable<UpstreamConfig>& upstreamFields() {
  using S = UpstreamConfig;
  static const FieldTable<S> table = {
      {"url", [](const Parser& p, const Field& f, S& s) { p.parseUrl(f, s); }},
      {"ca_file",
       [](const Parser& p, const Field& f, S& s) {
         const std::string path_text = p.optionalStr(f);
         if (path_text.empty()) {
           s.ca_file.clear();
           return;
         }
         const fs::path path = p.resolve(path_text);
         std::string err;
         std::optional<std::string> content = readFile(path, kMaxCaFileBytes, err);
         if (!content) {
           p.fail(f, "cannot read CA file '" + path.string() + "': " + err);
         }
         if (content->empty()) {
           p.fail(f, "CA file '" + path.string() + "' is empty");
         }
         s.ca_file = path.string();
       }},
      bindChoice("tls_min_version", &S::tls_min_version,
                 {{"1.2", TlsMinVersion::Tls12}, {"1.3", TlsMinVersion::Tls13}}, "1.2 or 1.3"),
      bindValue("connect_timeout", &S::connect_timeout, &Parser::positiveDuration),
      bindValue("response_timeout", &S::response_timeout, &Parser::positiveDuration),
      bindInteger("pool_size", &S::pool_size, 1, 65535),
      bindValue("idle_timeout", &S::idle_timeout, &Parser::positiveDuration),
  };
  return table;
}

}  // namespace hiapi::core::config_internal
