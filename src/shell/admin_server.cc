#include "hiapi/shell/event_util.h"
#include "hiapi/shell/admin_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <exception>
#include <string_view>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "hiapi/shell/metrics.h"

namespace hiapi::shell {

namespace {
constexpr std::string_view kLimitsPrefix = "/limits/";
}  // namespace

namespace {

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

void reply(evhttp_request* req, int status, const char* reason, const char* content_type,
           std::string_view body) {
  evkeyvalq* out = evhttp_request_get_output_headers(req);
  evhttp_add_header(out, "Content-Type", content_type);
  evhttp_add_header(out, "Cache-Control", "no-store");
  evbuffer* buf = evbuffer_new();
  if (buf == nullptr) {
    evhttp_send_error(req, 500, "Internal Server Error");
    return;
  }
  evbuffer_add(buf, body.data(), body.size());
  evhttp_send_reply(req, status, reason, buf);
  evbuffer_free(buf);
}

}  // namespace

AdminServer::AdminServer(event_base* base, Metrics& metrics,
                         std::function<std::string()> status_json, std::function<bool()> ready,
                         std::function<void()> before_scrape)
    : base_(base),
      metrics_(metrics),
      status_json_(std::move(status_json)),
      ready_(std::move(ready)),
      before_scrape_(std::move(before_scrape)) {}

AdminServer::~AdminServer() { close(); }

bool AdminServer::listen(const std::string& address, uint16_t port) {
  close();
  last_error_.clear();
  http_ = evhttp_new(base_);
  if (http_ == nullptr) {
    last_error_ = "evhttp_new failed";
    return false;
  }
  // Scrapes and probes are small GETs: small limits keep a misbehaving client cheap.
  evhttp_set_max_headers_size(http_, 16 * 1024);
  evhttp_set_max_body_size(http_, 4 * 1024);
  evhttp_set_allowed_methods(http_, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                                        EVHTTP_REQ_OPTIONS);
  evhttp_set_default_content_type(http_, nullptr);
  evhttp_set_timeout(http_, 30);
  evhttp_set_gencb(http_, &AdminServer::onRequest, this);
  evhttp_bound_socket* bound = evhttp_bind_socket_with_handle(http_, address.c_str(), port);
  if (bound == nullptr) {
    last_error_ = "cannot bind " + address + ":" + std::to_string(port);
    evhttp_free(http_);
    http_ = nullptr;
    return false;
  }
  port_ = boundPort(evhttp_bound_socket_get_fd(bound));
  return true;
}

void AdminServer::close() {
  if (http_ != nullptr) {
    evhttp_free(http_);
    http_ = nullptr;
  }
  port_ = 0;
}

void AdminServer::onRequest(evhttp_request* req, void* arg) {
  static_cast<AdminServer*>(arg)->handle(req);
}

void AdminServer::handle(evhttp_request* req) {
  ++served_;
  const char* uri = evhttp_request_get_uri(req);
  std::string_view path = uri != nullptr ? uri : "";
  if (const size_t q = path.find_first_of("?#"); q != std::string_view::npos) {
    path = path.substr(0, q);
  }
  const evhttp_cmd_type method = evhttp_request_get_command(req);
  if (limits_ && path.rfind(kLimitsPrefix, 0) == 0) {
    handleLimits(req, method, path.substr(kLimitsPrefix.size()));
    return;
  }
  const bool known = path == "/metrics" || path == "/healthz" || path == "/readyz" ||
                     path == "/status" || (path == "/config" && config_yaml_);
  if (!known) {
    reply(req, 404, "Not Found", "text/plain; charset=utf-8", "not found\n");
    return;
  }
  if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
    reply(req, 405, "Method Not Allowed", "text/plain; charset=utf-8", "method not allowed\n");
    return;
  }
  try {
    if (path == "/metrics") {
      if (before_scrape_) {
        before_scrape_();
      }
      reply(req, 200, "OK", kMetricsContentType, metrics_.serialize());
    } else if (path == "/healthz") {
      reply(req, 200, "OK", "text/plain; charset=utf-8", "ok\n");
    } else if (path == "/readyz") {
      if (ready_ && ready_()) {
        reply(req, 200, "OK", "text/plain; charset=utf-8", "ready\n");
      } else {
        reply(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "not ready\n");
      }
    } else if (path == "/config") {
      reply(req, 200, "OK", "application/yaml; charset=utf-8", config_yaml_());
    } else {
      const std::string body = status_json_ ? status_json_() : std::string("{}");
      reply(req, 200, "OK", "application/json", body);
    }
  } catch (const std::exception&) {
    // A callback failed: answer rather than leave the request hanging.
    reply(req, 500, "Internal Server Error", "text/plain; charset=utf-8", "internal error\n");
  }
}

void AdminServer::handleLimits(evhttp_request* req, int method, std::string_view rest) {
  if (method != EVHTTP_REQ_PUT && method != EVHTTP_REQ_POST) {
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "PUT, POST");
    reply(req, 405, "Method Not Allowed", "application/json",
          R"({"error":"PUT (or POST) a JSON body to change a limit"})" "\n");
    return;
  }
  // The peer, whatever the listener's address: a sidecar's admin port may face a pod network.
  char* host = nullptr;
  ev_uint16_t port = 0;
  evhttp_connection_get_peer(evhttp_request_get_connection(req), &host, &port);
  const std::string peer = host != nullptr ? host : "";
  in_addr v4{};
  in6_addr v6{};
  const bool loopback =
      (inet_pton(AF_INET, peer.c_str(), &v4) == 1 && (ntohl(v4.s_addr) >> 24) == 127) ||
      (inet_pton(AF_INET6, peer.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6)) ||
      peer == "::ffff:127.0.0.1";
  if (!loopback) {
    reply(req, 403, "Forbidden", "application/json",
          R"({"error":"limits change only from a loopback address"})" "\n");
    return;
  }
  evbuffer* in = evhttp_request_get_input_buffer(req);
  std::string body(evbuffer_get_length(in), '\0');
  evbuffer_copyout(in, body.data(), body.size());
  try {
    const LimitsReply r = limits_(rest, body, peer + ":" + std::to_string(port));
    reply(req, r.status, r.status == 200 ? "OK" : "Error", "application/json", r.body);
  } catch (const std::exception&) {
    reply(req, 500, "Internal Server Error", "application/json",
          R"({"error":"internal error"})" "\n");
  }
}

}  // namespace hiapi::shell
