// The HiAPI simulator's event-loop side: routing, the API handlers, faults, callbacks, /__stats.
//
// Order of checks for a /v1 request (documented in README.md):
//   fault 5xx / fault reset  →  latency  →  401 key  →  rate limit (429 rate)  →  413 body
//   →  route: create (400 → idempotency 422/409/replay → tier ceiling 429 → task) | detail | list
//   →  stall (reply held back)
// No exceptions on this path: RapidJSON is read with FindMember + Is*() checks only.

#include "sim.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "hiapi/shell/evhttp_method.h"

namespace hiapi::sim {
namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr double kHardBodyCapFactor = 4.0;  // evhttp refuses (uncounted) beyond max-body × this
constexpr int64_t kOutputLifetimeS = 7 * 24 * 3600;
constexpr size_t kMaxListedDurations = 100000;  // per tier, in /__stats
const char* const kVideoPatterns[] = {"seedance-*", "seedance-2.5/*", "wan2.7-video/*",
                                      "happyhorse-*", "veo-*", "kling-*", "hailuo-*"};

void writeString(JsonWriter& w, const std::string& s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

const char* routeName(Route r) {
  switch (r) {
    case Route::Create:
      return "create";
    case Route::Detail:
      return "detail";
    case Route::List:
      return "list";
    case Route::Other:
      return "other";
  }
  return "other";
}

/// The wire name of a request's method, as the proxy's evhttp servers name it (a string
/// literal, so NUL-terminated for printf).
const char* methodName(evhttp_cmd_type cmd) {
  return hiapi::shell::evhttpMethodName(cmd).data();
}

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 409:
      return "Conflict";
    case 413:
      return "Payload Too Large";
    case 422:
      return "Unprocessable Entity";
    case 429:
      return "Too Many Requests";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

std::string lower(const char* s) {
  std::string out(s);
  for (auto& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// Path of the request, without the query. "" when the URI is unusable.
std::string requestPath(evhttp_request* req) {
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
  if (uri == nullptr) {
    return "";
  }
  const char* p = evhttp_uri_get_path(uri);
  return p == nullptr ? "" : p;
}

// Bearer key from Authorization, "" when absent or malformed.
std::string bearerKey(evhttp_request* req) {
  const char* auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
  if (auth == nullptr || strncasecmp(auth, "Bearer ", 7) != 0) {
    return "";
  }
  std::string key(auth + 7);
  size_t b = key.find_first_not_of(' ');
  size_t e = key.find_last_not_of(' ');
  return b == std::string::npos ? "" : key.substr(b, e - b + 1);
}

timeval toTimeval(double seconds) {
  if (seconds < 0) {
    seconds = 0;
  }
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - static_cast<double>(tv.tv_sec)) * 1e6);
  return tv;
}

void logOpenSslErrors(const char* what) {
  unsigned long e = 0;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    std::fprintf(stderr, "hiapi-sim: %s: %s\n", what, buf);
  }
}

}  // namespace

// A one-shot timer owned by the simulator (freed at shutdown even if it never fired).
struct Simulator::Timer {
  Simulator* sim = nullptr;
  uint64_t id = 0;
  event* ev = nullptr;
  std::function<void()> fn;
};

// One callback to deliver, across its attempts.
struct Simulator::Delivery {
  Simulator* sim = nullptr;
  uint64_t id = 0;
  std::string host;
  int port = 80;
  std::string path;
  std::string body;
  int attempt = 0;
  evhttp_connection* evcon = nullptr;  // live while an attempt is in flight
};

Simulator::Simulator(event_base* base, SimConfig cfg)
    : base_(base),
      cfg_(std::move(cfg)),
      rng_(cfg_.seed),
      duration_rng_{Rng(cfg_.seed), Rng(cfg_.seed)},
      start_(std::chrono::steady_clock::now()) {
  reseedDurations();
  start_unix_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
}

Simulator::~Simulator() {
  for (auto& [id, d] : deliveries_) {
    if (d->evcon != nullptr) {
      evhttp_connection_free(d->evcon);
    }
  }
  deliveries_.clear();
  for (auto& [id, t] : timers_) {
    event_free(t->ev);
  }
  timers_.clear();
  if (http_ != nullptr) {
    evhttp_free(http_);
  }
  if (ssl_ctx_ != nullptr) {
    SSL_CTX_free(ssl_ctx_);
  }
}

double Simulator::nowS() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

int64_t Simulator::unixMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool Simulator::start(std::string* error) {
  if (!isLoopbackHost(cfg_.listen)) {
    *error = "refusing to listen on non-loopback address \"" + cfg_.listen + "\"";
    return false;
  }
  std::string addr = cfg_.listen;
  if (strcasecmp(addr.c_str(), "localhost") == 0) {
    addr = "127.0.0.1";
  }
  if (addr.size() >= 2 && addr.front() == '[') {
    addr = addr.substr(1, addr.size() - 2);
  }
  http_ = evhttp_new(base_);
  if (http_ == nullptr) {
    *error = "evhttp_new failed";
    return false;
  }
  evhttp_set_gencb(http_, &Simulator::onRequestThunk, this);
  evhttp_set_max_body_size(http_, static_cast<ev_ssize_t>(cfg_.max_body_bytes * kHardBodyCapFactor));
  evhttp_set_allowed_methods(http_, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH |
                                        EVHTTP_REQ_OPTIONS);
  evhttp_set_timeout(http_, 120);

  if (!cfg_.tls_cert.empty()) {
    ssl_ctx_ = SSL_CTX_new(TLS_server_method());
    if (ssl_ctx_ == nullptr) {
      logOpenSslErrors("SSL_CTX_new");
      *error = "SSL_CTX_new failed";
      return false;
    }
    if (SSL_CTX_set_min_proto_version(ssl_ctx_, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ssl_ctx_, cfg_.tls_cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ssl_ctx_, cfg_.tls_key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ssl_ctx_) != 1) {
      logOpenSslErrors("TLS set-up");
      *error = "cannot load TLS certificate/key (" + cfg_.tls_cert + ", " + cfg_.tls_key + ")";
      return false;
    }
    evhttp_set_bevcb(http_, &Simulator::onBevThunk, this);
  }

  evhttp_bound_socket* handle = evhttp_bind_socket_with_handle(
      http_, addr.c_str(), static_cast<ev_uint16_t>(cfg_.port));
  if (handle == nullptr) {
    *error = "cannot bind " + addr + ":" + std::to_string(cfg_.port);
    return false;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  evutil_socket_t fd = evhttp_bound_socket_get_fd(handle);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    *error = "getsockname failed";
    return false;
  }
  if (ss.ss_family == AF_INET) {
    port_ = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  } else {
    port_ = ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  }
  return true;
}

// ---- event plumbing --------------------------------------------------------------------------

void Simulator::onRequestThunk(evhttp_request* req, void* arg) {
  static_cast<Simulator*>(arg)->onRequest(req);
}

bufferevent* Simulator::onBevThunk(event_base* base, void* arg) {
  auto* self = static_cast<Simulator*>(arg);
  SSL* ssl = SSL_new(self->ssl_ctx_);
  if (ssl == nullptr) {
    logOpenSslErrors("SSL_new");
    return nullptr;  // evhttp falls back to a plain bufferevent; the handshake then fails
  }
  bufferevent* bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                    BEV_OPT_CLOSE_ON_FREE);
  if (bev == nullptr) {
    std::fprintf(stderr, "hiapi-sim: bufferevent_openssl_socket_new failed\n");
  }
  return bev;
}

void Simulator::onTimerThunk(evutil_socket_t, short, void* arg) {
  auto* t = static_cast<Timer*>(arg);
  Simulator* self = t->sim;
  std::function<void()> fn = std::move(t->fn);
  event_free(t->ev);
  self->timers_.erase(t->id);  // frees t
  fn();
}

void Simulator::after(double seconds, std::function<void()> fn) {
  auto t = std::make_unique<Timer>();
  t->sim = this;
  t->id = next_timer_id_++;
  t->fn = std::move(fn);
  t->ev = evtimer_new(base_, &Simulator::onTimerThunk, t.get());
  if (t->ev == nullptr) {
    std::fprintf(stderr, "hiapi-sim: evtimer_new failed; running now\n");
    t->fn();
    return;
  }
  timeval tv = toTimeval(seconds);
  if (evtimer_add(t->ev, &tv) != 0) {
    std::fprintf(stderr, "hiapi-sim: evtimer_add failed; running now\n");
    event_free(t->ev);
    t->fn();
    return;
  }
  timers_.emplace(t->id, std::move(t));
}

// ---- request path ------------------------------------------------------------------------------

void Simulator::onRequest(evhttp_request* req) {
  std::string path = requestPath(req);
  if (cfg_.verbose) {
    std::fprintf(stderr, "hiapi-sim: %.3f %s %s\n", nowS(),
                 methodName(evhttp_request_get_command(req)), evhttp_request_get_uri(req));
  }
  if (path.rfind("/__", 0) == 0) {
    handleAdmin(req, path);
    return;
  }
  evhttp_cmd_type cmd = evhttp_request_get_command(req);
  Route route = Route::Other;
  if (path == "/v1/tasks") {
    route = cmd == EVHTTP_REQ_POST ? Route::Create
            : cmd == EVHTTP_REQ_GET ? Route::List
                                    : Route::Other;
  } else if (path.rfind("/v1/tasks/", 0) == 0 && path.size() > 10 &&
             path.find('/', 10) == std::string::npos && cmd == EVHTTP_REQ_GET) {
    route = Route::Detail;
  }

  // Faults come before any processing: the request has no effect at all.
  if (cfg_.fault_5xx > 0 && rng_.uniform() < cfg_.fault_5xx) {
    stats_.fault_5xx++;
    bool is_502 = rng_.uniform() < 0.5;
    Reply r = is_502 ? errorReply(502, "BAD_GATEWAY", "Simulated upstream failure")
                     : errorReply(503, "SERVICE_UNAVAILABLE", "Simulated unavailability");
    count(methodName(cmd), route, r.status);
    sendNow(req, r);
    return;
  }
  if (cfg_.fault_reset > 0 && rng_.uniform() < cfg_.fault_reset) {
    stats_.fault_reset++;
    count(methodName(cmd), route, 0);
    // Reset from the next loop turn: evhttp must not be inside this request's callback then.
    after(0, [this, req] { resetConnection(req); });
    return;
  }
  double delay = cfg_.latency_s;
  if (cfg_.latency_jitter_s > 0) {
    delay += cfg_.latency_jitter_s * rng_.uniform();
  }
  if (delay > 0) {
    stats_.fault_latency++;
    after(delay, [this, req, route] { process(req, route); });
    return;
  }
  process(req, route);
}

void Simulator::resetConnection(evhttp_request* req) {
  evhttp_connection* evcon = evhttp_request_get_connection(req);
  if (evcon == nullptr) {
    // The client is gone already; sending frees the orphaned request.
    evhttp_send_reply(req, 500, "Gone", nullptr);
    return;
  }
  bufferevent* bev = evhttp_connection_get_bufferevent(evcon);
  evutil_socket_t fd = bev != nullptr ? bufferevent_getfd(bev) : -1;
  if (fd >= 0) {
    linger lg{};
    lg.l_onoff = 1;
    lg.l_linger = 0;  // close() now sends RST instead of FIN
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0) {
      std::fprintf(stderr, "hiapi-sim: setsockopt(SO_LINGER) failed\n");
    }
  }
  evhttp_connection_free(evcon);  // frees req too
}

void Simulator::process(evhttp_request* req, Route route) {
  double now = nowS();
  const char* method = methodName(evhttp_request_get_command(req));
  std::string key = bearerKey(req);
  double hold = 0;
  Reply r = handleApi(req, route, key, now, &hold);
  count(method, route, r.status);
  if (cfg_.stall_ratio > 0 && rng_.uniform() < cfg_.stall_ratio) {
    stats_.fault_stall++;
    hold += cfg_.stall_time_s;
  }
  send(req, std::move(r), hold);
}

Reply Simulator::handleApi(evhttp_request* req, Route route, const std::string& key, double now,
                           double* hold_s) {
  if (key.empty()) {
    return errorReply(401, "UNAUTHORIZED", "Missing or malformed Authorization: Bearer key");
  }
  if (!cfg_.keys.empty() && std::find(cfg_.keys.begin(), cfg_.keys.end(), key) == cfg_.keys.end()) {
    return errorReply(401, "UNAUTHORIZED", "Invalid API key");
  }
  KeyState& ks = keys_[key];
  ks.requests++;
  if (first_limited_s_ < 0) {
    first_limited_s_ = now;
  }

  // One unit of the key's limit per request, whatever the route.
  const LimitParams limit = limitParams();
  if (!ks.limiter.consume(cfg_.limiter, limit, now)) {
    double wait = ks.limiter.secondsUntilAllowed(cfg_.limiter, limit, now);
    if (cfg_.count_rejected) {
      ks.limiter.forceConsume(cfg_.limiter, limit, now);
    }
    ks.rejected_rate++;
    stats_.rejected_rate++;
    Reply r = errorReply(429, "RATE_LIMIT_EXCEEDED", "Rate limit exceeded, slow down");
    addRetryAfter(r, wait);
    addRateLimitHeaders(r, ks, now);
    return r;
  }

  Reply r;
  bool concurrency_429 = false;
  evbuffer* in = evhttp_request_get_input_buffer(req);
  size_t body_len = evbuffer_get_length(in);
  if (static_cast<double>(body_len) > cfg_.max_body_bytes) {
    r = errorReply(413, "PAYLOAD_TOO_LARGE",
                   "Request body exceeds " + std::to_string(static_cast<long long>(cfg_.max_body_bytes)) +
                       " bytes");
  } else {
    switch (route) {
      case Route::Create: {
        const unsigned char* p = body_len > 0 ? evbuffer_pullup(in, -1) : nullptr;
        std::string body = p != nullptr ? std::string(reinterpret_cast<const char*>(p), body_len)
                                        : std::string();
        r = handleCreate(req, ks, key, body, now, hold_s, &concurrency_429);
        break;
      }
      case Route::Detail:
        r = handleDetail(requestPath(req), key, now);
        break;
      case Route::List:
        r = handleList(req, ks, now);
        break;
      case Route::Other:
        r = errorReply(404, "NOT_FOUND", "No such endpoint");
        break;
    }
  }
  if (concurrency_429) {
    if (!cfg_.count_rejected) {
      ks.limiter.refund(cfg_.limiter, limit, now);  // a 429 costs nothing
    }
    ks.rejected_concurrency++;
    stats_.rejected_concurrency++;
  } else {
    ks.admitted++;
    ks.window.add(now);
  }
  addRateLimitHeaders(r, ks, now);
  return r;
}

Reply Simulator::handleCreate(evhttp_request* req, KeyState& ks, const std::string& key,
                              const std::string& body, double now, double* hold_s,
                              bool* concurrency_429) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError()) {
    return errorReply(400, "INVALID_REQUEST",
                      std::string("Body is not valid JSON: ") +
                          rapidjson::GetParseError_En(doc.GetParseError()) + " at offset " +
                          std::to_string(doc.GetErrorOffset()));
  }
  if (!doc.IsObject()) {
    return errorReply(400, "INVALID_REQUEST", "Body must be a JSON object");
  }
  auto m_model = doc.FindMember("model");
  if (m_model == doc.MemberEnd() || !m_model->value.IsString() ||
      m_model->value.GetStringLength() == 0) {
    return errorReply(400, "INVALID_REQUEST", "'model' is required and must be a string");
  }
  auto m_input = doc.FindMember("input");
  if (m_input == doc.MemberEnd() || !m_input->value.IsObject()) {
    return errorReply(400, "INVALID_REQUEST", "'input' is required and must be an object");
  }
  std::string model(m_model->value.GetString(), m_model->value.GetStringLength());
  std::string route, storage, callback_url;
  auto m_route = doc.FindMember("route");
  if (m_route != doc.MemberEnd()) {
    if (!m_route->value.IsString()) {
      return errorReply(400, "INVALID_REQUEST", "'route' must be a string");
    }
    route.assign(m_route->value.GetString(), m_route->value.GetStringLength());
  }
  auto m_storage = doc.FindMember("storage");
  if (m_storage != doc.MemberEnd()) {
    if (!m_storage->value.IsString()) {
      return errorReply(400, "INVALID_REQUEST", "'storage' must be a string");
    }
    storage.assign(m_storage->value.GetString(), m_storage->value.GetStringLength());
  }
  auto m_cb = doc.FindMember("callback");
  if (m_cb != doc.MemberEnd() && !m_cb->value.IsNull()) {
    if (!m_cb->value.IsObject()) {
      return errorReply(400, "INVALID_REQUEST", "'callback' must be an object");
    }
    auto m_url = m_cb->value.FindMember("url");
    if (m_url == m_cb->value.MemberEnd() || !m_url->value.IsString()) {
      return errorReply(400, "INVALID_REQUEST", "'callback.url' is required");
    }
    auto m_when = m_cb->value.FindMember("when");
    if (m_when != m_cb->value.MemberEnd() &&
        (!m_when->value.IsString() || std::strcmp(m_when->value.GetString(), "final") != 0)) {
      return errorReply(400, "INVALID_REQUEST", "'callback.when' accepts only \"final\"");
    }
    callback_url.assign(m_url->value.GetString(), m_url->value.GetStringLength());
  }
  // The prompt, for duplicate detection: a string as is, anything else as its JSON text.
  std::string prompt;
  bool has_prompt = false;
  auto m_prompt = m_input->value.FindMember("prompt");
  if (m_prompt != m_input->value.MemberEnd()) {
    has_prompt = true;
    if (m_prompt->value.IsString()) {
      prompt.assign(m_prompt->value.GetString(), m_prompt->value.GetStringLength());
    } else {
      rapidjson::StringBuffer sb;
      JsonWriter w(sb);
      m_prompt->value.Accept(w);
      prompt = sb.GetString();
    }
  }

  // Idempotency: raw body bytes compared; mismatch first, then "still processing", then replay.
  const char* ikey_c =
      evhttp_find_header(evhttp_request_get_input_headers(req), "Idempotency-Key");
  std::string ikey = ikey_c != nullptr ? ikey_c : "";
  if (ikey_c != nullptr && (ikey.empty() || ikey.size() > 255)) {
    return errorReply(400, "INVALID_REQUEST", "Idempotency-Key must be 1 to 255 bytes");
  }
  if (!ikey.empty()) {
    auto it = idem_.find({key, ikey});
    if (it != idem_.end() && now >= it->second.expires_s) {
      idem_.erase(it);
      it = idem_.end();
    }
    if (it != idem_.end()) {
      const IdemRecord& rec = it->second;
      if (rec.body != body) {
        stats_.idem_mismatches++;
        return errorReply(422, "IDEMPOTENCY_KEY_MISMATCH",
                          "Idempotency-Key reused with a different request body");
      }
      if (rec.processing) {
        stats_.idem_processing++;
        Reply r = errorReply(409, "IDEMPOTENCY_KEY_PROCESSING",
                             "A request with this Idempotency-Key is still being processed");
        double wait = std::max(1.0, std::ceil(rec.reply_at_s - now));
        r.headers.emplace_back("Retry-After", std::to_string(static_cast<long long>(wait)));
        return r;
      }
      stats_.idem_replays++;
      Reply r;
      r.body = "{\"code\":200,\"message\":\"success\",\"data\":{\"taskId\":\"" + rec.task_id + "\"}}";
      r.headers.emplace_back("Idempotent-Replay", "true");
      return r;
    }
  }

  // Tier ceiling, counted from creation until terminal.
  Tier tier = classifyTier(model, route, cfg_.heavy_patterns);
  int ti = static_cast<int>(tier);
  int limit = tier == Tier::Heavy ? cfg_.heavy_max : cfg_.light_max;
  if (limit > 0 && ks.running[ti] >= limit) {
    *concurrency_429 = true;
    Reply r = errorReply(429, "CONCURRENCY_LIMIT_EXCEEDED",
                         std::string("Too many running ") + tierName(tier) + " tasks");
    double wait = ks.ends[ti].empty() ? 1.0 : std::max(0.0, *ks.ends[ti].begin() - now);
    addRetryAfter(r, wait);
    return r;
  }

  // Create the task.
  auto task = std::make_unique<Task>();
  int64_t now_ms = unixMs();
  for (int i = 0; i < 8; ++i) {
    task->id = "tk-hiapi-" + makeUlid(static_cast<uint64_t>(now_ms), rng_);
    if (tasks_.find(task->id) == tasks_.end()) {
      break;
    }
  }
  task->key = key;
  task->model = model;
  if (!route.empty() && model.find('@') == std::string::npos) {
    task->model = model + "@" + route;
  }
  task->route = route;
  task->storage = storage;
  task->tier = tier;
  task->callback_url = callback_url;
  double base = tier == Tier::Heavy ? cfg_.heavy_duration_s : cfg_.light_duration_s;
  Rng& draw = duration_rng_[ti];
  if (cfg_.duration_lognormal) {
    task->duration_s = std::max(0.001, lognormalDuration(base, cfg_.duration_sigma, draw.normal()));
  } else {
    double factor = 1.0;
    if (cfg_.duration_jitter > 0) {
      factor += cfg_.duration_jitter * (2.0 * draw.uniform() - 1.0);
    }
    task->duration_s = std::max(0.001, base * factor);
  }
  task->will_fail = cfg_.fail_ratio > 0 && rng_.uniform() < cfg_.fail_ratio;
  task->created_s = now;
  task->created_unix_ms = now_ms;

  ks.running[ti]++;
  ks.max_running[ti] = std::max(ks.max_running[ti], ks.running[ti]);
  ks.ends[ti].insert(task->created_s + task->duration_s);
  stats_.running[ti]++;
  stats_.max_running[ti] = std::max(stats_.max_running[ti], stats_.running[ti]);
  stats_.tasks_created++;
  if (has_prompt && ++stats_.prompts[prompt] > 1) {
    stats_.duplicate_creations++;
  }
  std::string id = task->id;
  ks.tasks.push_back(task.get());
  task_order_.push_back(task.get());
  uint64_t epoch = epoch_;
  after(task->duration_s, [this, id, epoch] { onTaskTerminal(id, epoch); });
  tasks_.emplace(id, std::move(task));

  *hold_s = cfg_.create_delay_s;
  Reply r;
  r.body = "{\"code\":200,\"message\":\"success\",\"data\":{\"taskId\":\"" + id + "\"}}";
  if (!ikey.empty()) {
    IdemRecord rec;
    rec.body = body;
    rec.task_id = id;
    rec.processing = cfg_.create_delay_s > 0;
    rec.reply_at_s = now + cfg_.create_delay_s;
    rec.expires_s = now + cfg_.idempotency_ttl_s;
    idem_[{key, ikey}] = std::move(rec);
    if (cfg_.create_delay_s > 0) {
      // "Processing" ends when the held reply actually goes out (not by the clock: timers may
      // fire a hair early), so a client that retries after the reply always gets the replay.
      r.on_sent = [this, key, ikey, epoch] {
        auto it = idem_.find({key, ikey});
        if (epoch == epoch_ && it != idem_.end()) {
          it->second.processing = false;
        }
      };
    }
  }
  return r;
}

Reply Simulator::handleDetail(const std::string& path, const std::string& key, double now) {
  std::string raw = path.substr(10);
  size_t len = 0;
  char* decoded = evhttp_uridecode(raw.c_str(), 0, &len);
  std::string id = decoded != nullptr ? std::string(decoded, len) : raw;
  std::free(decoded);
  auto it = tasks_.find(id);
  if (it == tasks_.end() || it->second->key != key) {
    return errorReply(404, "TASK_NOT_FOUND", "Task not found");  // another key's task too
  }
  Reply r;
  r.body = "{\"code\":200,\"message\":\"success\",\"data\":" + detailJson(*it->second, now) + "}";
  return r;
}

Reply Simulator::handleList(evhttp_request* req, KeyState& ks, double now) {
  long page = 1, size = 20;
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
  const char* query = uri != nullptr ? evhttp_uri_get_query(uri) : nullptr;
  if (query != nullptr) {
    evkeyvalq params;
    TAILQ_INIT(&params);
    if (evhttp_parse_query_str(query, &params) != 0) {
      evhttp_clear_headers(&params);
      return errorReply(400, "INVALID_REQUEST", "Malformed query string");
    }
    bool ok = true;
    for (auto [name, out] : {std::pair<const char*, long*>{"page", &page}, {"size", &size}}) {
      const char* v = evhttp_find_header(&params, name);
      if (v != nullptr) {
        char* end = nullptr;
        long n = std::strtol(v, &end, 10);
        if (*v == '\0' || *end != '\0') {
          ok = false;
        }
        *out = n;
      }
    }
    evhttp_clear_headers(&params);
    if (!ok) {
      return errorReply(400, "INVALID_REQUEST", "'page' and 'size' must be integers");
    }
  }
  if (page < 1 || size < 1 || size > 100) {
    return errorReply(400, "INVALID_REQUEST", "'page' must be >= 1 and 'size' 1 to 100");
  }
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  w.StartObject();
  w.Key("code");
  w.Int(200);
  w.Key("message");
  w.String("success");
  w.Key("data");
  w.StartObject();
  w.Key("page");
  w.Int64(page);
  w.Key("size");
  w.Int64(size);
  w.Key("total");
  w.Uint64(ks.tasks.size());
  w.Key("items");
  w.StartArray();
  size_t total = ks.tasks.size();
  size_t skip = static_cast<size_t>(page - 1) * static_cast<size_t>(size);
  for (size_t i = skip; i < total && i < skip + static_cast<size_t>(size); ++i) {
    const std::string d = detailJson(*ks.tasks[total - 1 - i], now);  // newest first
    w.RawValue(d.data(), d.size(), rapidjson::kObjectType);
  }
  w.EndArray();
  w.EndObject();
  w.EndObject();
  Reply r;
  r.body = sb.GetString();
  return r;
}

std::string Simulator::detailJson(const Task& t, double now) const {
  const char* status = "queued";
  if (t.terminal) {
    status = t.will_fail ? "fail" : "success";
  } else {
    double f = (now - t.created_s) / t.duration_s;
    status = f < 0.15 ? "queued" : f < 0.85 ? "handling" : "archiving";
  }
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  w.StartObject();
  w.Key("taskId");
  writeString(w, t.id);
  w.Key("model");
  writeString(w, t.model);
  w.Key("status");
  w.String(status);
  w.Key("created");
  w.Int64(t.created_unix_ms / 1000);
  w.Key("completed");
  w.Int64(t.terminal ? t.completed_unix_ms / 1000 : 0);
  w.Key("output");
  w.StartArray();
  if (t.terminal && !t.will_fail) {
    std::string base, suffix;
    splitModel(t.model, &base, &suffix);
    bool video = false;
    for (const char* p : kVideoPatterns) {
      video = video || globMatch(p, base);
    }
    w.StartObject();
    w.Key("url");
    writeString(w, "https://cdn.hiapi.invalid/" + t.id + (video ? "/0.mp4" : "/0.png"));
    w.Key("type");
    w.String(video ? "video" : "image");
    w.Key("expireAt");
    w.Int64(t.completed_unix_ms / 1000 + kOutputLifetimeS);
    w.EndObject();
  }
  w.EndArray();
  w.Key("error");
  if (t.terminal && t.will_fail) {
    w.StartObject();
    w.Key("code");
    w.String("GENERATION_FAILED");
    w.Key("message");
    w.String("Simulated generation failure");
    w.EndObject();
  } else {
    w.Null();
  }
  if (!t.storage.empty()) {
    w.Key("storage");
    writeString(w, t.storage);
  }
  if (!t.route.empty()) {
    w.Key("route");
    writeString(w, t.route);
  }
  w.EndObject();
  return sb.GetString();
}

// ---- replies -----------------------------------------------------------------------------------

Reply Simulator::errorReply(int status, const char* code, const std::string& message) {
  char rid[48];
  std::snprintf(rid, sizeof rid, "req_%011llx%08llx",
                static_cast<unsigned long long>(start_unix_ms_),
                static_cast<unsigned long long>(next_request_id_++));
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  w.StartObject();
  if (cfg_.envelope != Envelope::Guide) {
    w.Key("code");
    w.Int(status);
    w.Key("message");
    writeString(w, message);
    w.Key("data");
    w.Null();
    w.Key("error_code");
    w.String(code);
  }
  if (cfg_.envelope != Envelope::Docs) {
    w.Key("error");
    w.StartObject();
    w.Key("type");
    w.String("hiapi_error");
    w.Key("code");
    writeString(w, lower(code));
    w.Key("message");
    writeString(w, message);
    w.Key("request_id");
    w.String(rid);
    w.EndObject();
  }
  w.EndObject();
  Reply r;
  r.status = status;
  r.body = sb.GetString();
  r.headers.emplace_back("X-Request-Id", rid);
  return r;
}

void Simulator::addRetryAfter(Reply& r, double seconds) {
  if (cfg_.retry_after_ratio <= 0) {
    return;
  }
  if (cfg_.retry_after_ratio < 1 && rng_.uniform() >= cfg_.retry_after_ratio) {
    return;
  }
  stats_.retry_after_sent++;
  double whole = std::max(1.0, std::ceil(seconds));
  std::string value;
  switch (cfg_.retry_after_format) {
    case RetryAfterFormat::Seconds:
      value = std::to_string(static_cast<long long>(whole));
      break;
    case RetryAfterFormat::Decimal: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.3f", std::max(0.001, seconds));
      value = buf;
      break;
    }
    case RetryAfterFormat::Date: {
      // Round up to the next whole second so the date never lies earlier than the wait.
      int64_t at_ms = unixMs() + static_cast<int64_t>(whole * 1000);
      value = httpDate((at_ms + 999) / 1000);
      break;
    }
  }
  r.headers.emplace_back("Retry-After", value);
}

void Simulator::addRateLimitHeaders(Reply& r, KeyState& ks, double now) {
  if (!cfg_.ratelimit_headers) {
    return;
  }
  const LimitCounters c = ks.limiter.counters(cfg_.limiter, limitParams(), now);
  char reset[32];
  // Rounded up to the millisecond: a reset announced early would let a client send too soon.
  std::snprintf(reset, sizeof reset, "%.3f", std::ceil(c.reset_s * 1000.0) / 1000.0);
  r.headers.emplace_back("X-RateLimit-Limit", std::to_string(c.limit));
  r.headers.emplace_back("X-RateLimit-Remaining", std::to_string(c.remaining));
  r.headers.emplace_back("X-RateLimit-Reset", reset);
}

void Simulator::send(evhttp_request* req, Reply reply, double hold_s) {
  if (hold_s > 0) {
    after(hold_s, [this, req, reply = std::move(reply)] { sendNow(req, reply); });
    return;
  }
  sendNow(req, reply);
}

void Simulator::sendNow(evhttp_request* req, const Reply& reply) {
  evkeyvalq* out = evhttp_request_get_output_headers(req);
  if (evhttp_add_header(out, "Content-Type", "application/json") != 0) {
    std::fprintf(stderr, "hiapi-sim: evhttp_add_header failed\n");
  }
  for (const auto& [name, value] : reply.headers) {
    if (evhttp_add_header(out, name.c_str(), value.c_str()) != 0) {
      std::fprintf(stderr, "hiapi-sim: evhttp_add_header(%s) failed\n", name.c_str());
    }
  }
  evbuffer* buf = evbuffer_new();
  if (buf == nullptr || evbuffer_add(buf, reply.body.data(), reply.body.size()) != 0) {
    std::fprintf(stderr, "hiapi-sim: evbuffer allocation failed\n");
  }
  evhttp_send_reply(req, reply.status, reasonPhrase(reply.status), buf);
  if (cfg_.verbose) {
    // The task id, model and status a reply carries, if any: enough to follow tasks in a trace.
    const std::string_view body(reply.body);
    auto field = [body](std::string_view name) {
      const size_t at = body.find(name);
      if (at == std::string_view::npos) {
        return std::string_view();
      }
      const size_t from = at + name.size();
      const size_t to = body.find('"', from);
      return to == std::string_view::npos ? std::string_view() : body.substr(from, to - from);
    };
    const std::string_view id = field("\"taskId\":\"");
    const std::string_view model = field("\"model\":\"");
    const std::string_view status = field("\"status\":\"");
    std::fprintf(stderr, "hiapi-sim: %.3f -> %d %.*s %.*s %.*s\n", nowS(), reply.status,
                 static_cast<int>(id.size()), id.data(), static_cast<int>(model.size()),
                 model.data(), static_cast<int>(status.size()), status.data());
  }
  if (buf != nullptr) {
    evbuffer_free(buf);
  }
  if (reply.on_sent) {
    reply.on_sent();
  }
}

void Simulator::count(const char* method, Route route, int status) {
  std::string st = status == 0 ? "reset" : std::to_string(status);
  stats_.requests++;
  stats_.by_method[method]++;
  stats_.by_route[routeName(route)]++;
  stats_.by_status[st]++;
  stats_.by_route_status[routeName(route)][st]++;
}

// ---- admin -------------------------------------------------------------------------------------

void Simulator::handleAdmin(evhttp_request* req, const std::string& path) {
  evhttp_cmd_type cmd = evhttp_request_get_command(req);
  Reply r;
  if (path == "/__stats" && cmd == EVHTTP_REQ_GET) {
    r.body = statsJson(nowS());
  } else if (path == "/__reset" && cmd == EVHTTP_REQ_POST) {
    resetState();
    r.body = "{\"ok\":true}";
  } else if (path == "/__config" && cmd == EVHTTP_REQ_GET) {
    r.body = configJson(cfg_);
  } else if (path == "/__config" && cmd == EVHTTP_REQ_POST) {
    evbuffer* in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const unsigned char* p = len > 0 ? evbuffer_pullup(in, -1) : nullptr;
    std::string error;
    if (p == nullptr || !applyConfigJson(cfg_, reinterpret_cast<const char*>(p), len, &error)) {
      rapidjson::StringBuffer sb;
      JsonWriter w(sb);
      w.StartObject();
      w.Key("error");
      writeString(w, p == nullptr ? std::string("empty body") : error);
      w.EndObject();
      r.status = 400;
      r.body = sb.GetString();
    } else {
      evhttp_set_max_body_size(http_,
                               static_cast<ev_ssize_t>(cfg_.max_body_bytes * kHardBodyCapFactor));
      r.body = configJson(cfg_);
    }
  } else {
    r.status = 404;
    r.body = "{\"error\":\"unknown admin endpoint\"}";
  }
  sendNow(req, r);
}

void Simulator::resetState() {
  epoch_++;  // pending task timers become no-ops
  for (auto& [id, d] : deliveries_) {
    if (d->evcon != nullptr) {
      evhttp_connection_free(d->evcon);  // cancels the attempt; its callback is not run
    }
  }
  deliveries_.clear();
  tasks_.clear();
  task_order_.clear();
  keys_.clear();
  idem_.clear();
  stats_ = Stats{};
  reset_s_ = nowS();
  first_limited_s_ = -1;
  reseedDurations();
}

void Simulator::reseedDurations() {
  for (size_t t = 0; t < duration_rng_.size(); ++t) {
    duration_rng_[t].reseed(cfg_.seed ^ (0x9E3779B97F4A7C15ULL * (t + 1)));
  }
}

std::string Simulator::statsJson(double now) const {
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  auto counts = [&w](const std::map<std::string, uint64_t>& m) {
    w.StartObject();
    for (const auto& [k, v] : m) {
      writeString(w, k);
      w.Uint64(v);
    }
    w.EndObject();
  };
  w.StartObject();
  w.Key("uptime_ms");
  w.Int64(static_cast<int64_t>(now * 1000));
  w.Key("started_unix_ms");
  w.Int64(start_unix_ms_);
  w.Key("requests");
  w.StartObject();
  w.Key("total");
  w.Uint64(stats_.requests);
  w.Key("by_method");
  counts(stats_.by_method);
  w.Key("by_route");
  counts(stats_.by_route);
  w.Key("by_status");
  counts(stats_.by_status);
  w.Key("by_route_status");
  w.StartObject();
  for (const auto& [route, m] : stats_.by_route_status) {
    writeString(w, route);
    counts(m);
  }
  w.EndObject();
  w.EndObject();
  w.Key("rejected_429");
  w.StartObject();
  w.Key("rate");
  w.Uint64(stats_.rejected_rate);
  w.Key("concurrency");
  w.Uint64(stats_.rejected_concurrency);
  w.Key("with_retry_after");
  w.Uint64(stats_.retry_after_sent);
  w.EndObject();
  std::array<int, 2> max_per_key{0, 0};
  w.Key("keys");
  w.StartObject();
  for (const auto& [key, ks] : keys_) {
    writeString(w, key);
    w.StartObject();
    w.Key("requests");
    w.Uint64(ks.requests);
    w.Key("admitted");
    w.Uint64(ks.admitted);
    w.Key("rejected_429");
    w.Uint64(ks.rejected_rate + ks.rejected_concurrency);
    w.Key("rejected_rate");
    w.Uint64(ks.rejected_rate);
    w.Key("rejected_concurrency");
    w.Uint64(ks.rejected_concurrency);
    w.Key("max_admitted_1s");
    w.Uint64(ks.window.max());
    w.Key("tasks");
    w.Uint64(ks.tasks.size());
    for (const char* name : {"running", "max_running"}) {
      const auto& arr = std::strcmp(name, "running") == 0 ? ks.running : ks.max_running;
      w.Key(name);
      w.StartObject();
      w.Key("heavy");
      w.Int(arr[1]);
      w.Key("light");
      w.Int(arr[0]);
      w.EndObject();
    }
    w.EndObject();
    for (int t = 0; t < 2; ++t) {
      max_per_key[t] = std::max(max_per_key[t], ks.max_running[t]);
    }
  }
  w.EndObject();
  w.Key("tiers");
  w.StartObject();
  for (int t : {1, 0}) {
    w.Key(tierName(static_cast<Tier>(t)));
    w.StartObject();
    w.Key("running");
    w.Int(stats_.running[t]);
    w.Key("max_running");
    w.Int(stats_.max_running[t]);
    w.Key("max_running_per_key");
    w.Int(max_per_key[t]);
    w.EndObject();
  }
  w.EndObject();
  w.Key("tasks_created");
  w.Uint64(stats_.tasks_created);
  // When the last task created since the last reset ends (or ended), from that reset: the
  // upstream makespan of a run, which no client's poll pace lengthens.
  double last_end = 0;
  for (const Task* t : task_order_) {
    last_end = std::max(last_end, t->created_s + t->duration_s - reset_s_);
  }
  w.Key("tasks_last_end_ms");
  w.Int64(static_cast<int64_t>(last_end * 1000));
  // Each tier's run times in creation order (the first kMaxListedDurations): what an
  // omniscient schedule of the same tasks needs.
  w.Key("durations_ms");
  w.StartObject();
  for (Tier tier : {Tier::Light, Tier::Heavy}) {
    w.Key(tierName(tier));
    w.StartArray();
    size_t listed = 0;
    for (const Task* t : task_order_) {
      if (t->tier == tier && listed++ < kMaxListedDurations) {
        w.Int64(std::llround(t->duration_s * 1000));
      }
    }
    w.EndArray();
  }
  w.EndObject();
  // How far into its fixed window (--limiter fixed-window: windows run from the simulator's
  // start) the first request since the last reset came: an omniscient schedule of a run
  // against a fixed window needs where the run began in the windows' grid. null before any.
  w.Key("window_phase_ms");
  if (first_limited_s_ >= 0) {
    w.Double(std::fmod(first_limited_s_, limitParams().window_s()) * 1000.0);
  } else {
    w.Null();
  }
  w.Key("duplicate_creations");
  w.Uint64(stats_.duplicate_creations);
  w.Key("idempotency");
  w.StartObject();
  w.Key("replays");
  w.Uint64(stats_.idem_replays);
  w.Key("mismatches");
  w.Uint64(stats_.idem_mismatches);
  w.Key("processing");
  w.Uint64(stats_.idem_processing);
  w.EndObject();
  w.Key("callbacks");
  w.StartObject();
  w.Key("delivered");
  w.Uint64(stats_.callbacks_delivered);
  w.Key("failed");
  w.Uint64(stats_.callbacks_failed);
  w.Key("attempts");
  w.Uint64(stats_.callback_attempts);
  w.Key("refused");
  w.Uint64(stats_.callbacks_refused);
  w.Key("pending");
  w.Uint64(deliveries_.size());
  w.EndObject();
  w.Key("faults");
  w.StartObject();
  w.Key("http_5xx");
  w.Uint64(stats_.fault_5xx);
  w.Key("reset");
  w.Uint64(stats_.fault_reset);
  w.Key("stall");
  w.Uint64(stats_.fault_stall);
  w.Key("latency");
  w.Uint64(stats_.fault_latency);
  w.EndObject();
  w.Key("tasks");
  w.StartArray();
  for (const Task* t : task_order_) {
    w.StartObject();
    w.Key("taskId");
    writeString(w, t->id);
    w.Key("key");
    writeString(w, t->key);
    w.Key("model");
    writeString(w, t->model);
    w.Key("tier");
    w.String(tierName(t->tier));
    w.Key("status");
    w.String(!t->terminal ? "running" : t->will_fail ? "fail" : "success");
    w.Key("outcome");
    w.String(t->will_fail ? "fail" : "success");
    w.Key("created_ms");
    w.Int64(static_cast<int64_t>(t->created_s * 1000));
    w.Key("created_unix_ms");
    w.Int64(t->created_unix_ms);
    w.Key("terminal_ms");
    if (t->terminal) {
      w.Int64(static_cast<int64_t>(t->terminal_s * 1000));
    } else {
      w.Null();
    }
    w.Key("completed_unix_ms");
    if (t->terminal) {
      w.Int64(t->completed_unix_ms);
    } else {
      w.Null();
    }
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return sb.GetString();
}

// ---- tasks and callbacks -----------------------------------------------------------------------

void Simulator::onTaskTerminal(const std::string& task_id, uint64_t epoch) {
  if (epoch != epoch_) {
    return;  // cleared by /__reset
  }
  auto it = tasks_.find(task_id);
  if (it == tasks_.end() || it->second->terminal) {
    return;
  }
  Task& t = *it->second;
  t.terminal = true;
  t.terminal_s = nowS();
  t.completed_unix_ms = unixMs();
  int ti = static_cast<int>(t.tier);
  KeyState& ks = keys_[t.key];
  ks.running[ti]--;
  auto end_it = ks.ends[ti].find(t.created_s + t.duration_s);
  if (end_it != ks.ends[ti].end()) {
    ks.ends[ti].erase(end_it);
  }
  stats_.running[ti]--;

  if (t.callback_url.empty()) {
    return;
  }
  evhttp_uri* uri = evhttp_uri_parse(t.callback_url.c_str());
  const char* scheme = uri != nullptr ? evhttp_uri_get_scheme(uri) : nullptr;
  const char* host = uri != nullptr ? evhttp_uri_get_host(uri) : nullptr;
  if (uri == nullptr || scheme == nullptr || strcasecmp(scheme, "http") != 0 || host == nullptr ||
      !isLoopbackHost(host)) {
    // Only plain-HTTP loopback receivers: the simulator must never call out to the network.
    stats_.callbacks_refused++;
    if (uri != nullptr) {
      evhttp_uri_free(uri);
    }
    return;
  }
  auto d = std::make_unique<Delivery>();
  d->sim = this;
  d->id = next_delivery_id_++;
  d->host = host;
  if (d->host.size() >= 2 && d->host.front() == '[') {
    d->host = d->host.substr(1, d->host.size() - 2);
  }
  d->port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
  const char* path = evhttp_uri_get_path(uri);
  const char* query = evhttp_uri_get_query(uri);
  d->path = (path != nullptr && *path != '\0') ? path : "/";
  if (query != nullptr) {
    d->path += std::string("?") + query;
  }
  evhttp_uri_free(uri);
  d->body = detailJson(t, nowS());
  uint64_t id = d->id;
  deliveries_.emplace(id, std::move(d));
  deliver(id);
}

void Simulator::deliver(uint64_t delivery_id) {
  auto it = deliveries_.find(delivery_id);
  if (it == deliveries_.end()) {
    return;  // cancelled by /__reset
  }
  Delivery* d = it->second.get();
  d->attempt++;
  stats_.callback_attempts++;
  evhttp_connection* evcon =
      evhttp_connection_base_new(base_, nullptr, d->host.c_str(), static_cast<ev_uint16_t>(d->port));
  evhttp_request* req = evcon != nullptr ? evhttp_request_new(&Simulator::onDeliveryDoneThunk, d)
                                         : nullptr;
  if (req == nullptr) {
    std::fprintf(stderr, "hiapi-sim: cannot create callback connection/request\n");
    if (evcon != nullptr) {
      evhttp_connection_free(evcon);
    }
    onDeliveryDone(d, nullptr);
    return;
  }
  evhttp_connection_set_timeout(evcon, std::max(1, static_cast<int>(std::ceil(cfg_.callback_timeout_s))));
  evhttp_connection_free_on_completion(evcon);  // libevent frees it after the attempt
  evkeyvalq* h = evhttp_request_get_output_headers(req);
  std::string host_header = d->host + ":" + std::to_string(d->port);
  bool ok = evhttp_add_header(h, "Host", host_header.c_str()) == 0 &&
            evhttp_add_header(h, "Content-Type", "application/json") == 0 &&
            evhttp_add_header(h, "User-Agent", "hiapi-sim-callback/1") == 0;
  if (!cfg_.callback_secret.empty()) {
    std::string ts = std::to_string(unixMs() / 1000);
    std::string sig = hmacSha256Hex(cfg_.callback_secret, ts + "." + d->body);
    ok = ok && evhttp_add_header(h, "X-HiAPI-Timestamp", ts.c_str()) == 0 &&
         evhttp_add_header(h, "X-HiAPI-Signature", sig.c_str()) == 0;
  }
  ok = ok && evbuffer_add(evhttp_request_get_output_buffer(req), d->body.data(), d->body.size()) == 0;
  if (!ok) {
    std::fprintf(stderr, "hiapi-sim: cannot build callback request\n");
  }
  d->evcon = evcon;
  if (evhttp_make_request(evcon, req, EVHTTP_REQ_POST, d->path.c_str()) != 0) {
    std::fprintf(stderr, "hiapi-sim: evhttp_make_request (callback) failed\n");
    // The done callback may already have run (and even freed d): look it up again.
    auto again = deliveries_.find(delivery_id);
    if (again != deliveries_.end() && again->second->evcon == evcon) {
      again->second->evcon = nullptr;
      evhttp_request_free(req);
      evhttp_connection_free(evcon);
      onDeliveryDone(again->second.get(), nullptr);
    }
  }
}

void Simulator::onDeliveryDoneThunk(evhttp_request* req, void* arg) {
  auto* d = static_cast<Delivery*>(arg);
  d->evcon = nullptr;  // freed by libevent (free_on_completion)
  d->sim->onDeliveryDone(d, req);
}

void Simulator::onDeliveryDone(Delivery* d, evhttp_request* req) {
  int code = req != nullptr ? evhttp_request_get_response_code(req) : 0;
  uint64_t id = d->id;
  if (code >= 200 && code < 300) {
    stats_.callbacks_delivered++;
    deliveries_.erase(id);
    return;
  }
  if (d->attempt < cfg_.callback_attempts) {
    double delay = cfg_.callback_backoff_s * std::pow(2.0, d->attempt - 1);
    after(delay, [this, id] { deliver(id); });
    return;
  }
  stats_.callbacks_failed++;
  deliveries_.erase(id);
}

}  // namespace hiapi::sim
