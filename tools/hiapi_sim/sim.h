#pragma once
// The HiAPI simulator: one evhttp server on one event loop. Tasks, per-key limits, idempotency,
// callbacks, faults and the accounting behind GET /__stats.

#include <event2/event.h>
#include <event2/http.h>
#include <openssl/ssl.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "config.h"
#include "sim_limits.h"
#include "util.h"

namespace hiapi::sim {

/// Which API route a request hit (for accounting).
enum class Route { Create, Detail, List, Other };

/// A reply being built; sent now or after a hold (create delay, stall).
struct Reply {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::function<void()> on_sent;  ///< run right after the reply is handed to evhttp
};

/// One simulated task. Its status is derived from the clock; `terminal` flips when its timer fires.
struct Task {
  std::string id;
  std::string key;
  std::string model;  ///< resolved, e.g. "x@pro"
  std::string route;  ///< body route, echoed when given
  std::string storage;
  Tier tier = Tier::Light;
  bool will_fail = false;
  double created_s = 0;   ///< since simulator start (monotonic)
  double duration_s = 0;  ///< creation to terminal
  int64_t created_unix_ms = 0;
  bool terminal = false;
  double terminal_s = 0;
  int64_t completed_unix_ms = 0;
  std::string callback_url;
};

/// Per-key state: its bucket, its running tasks and its counters.
struct KeyState {
  KeyLimiter limiter;
  WindowMax window;                      ///< admitted (non-429) requests per 1 s window
  std::array<int, 2> running{0, 0};      ///< by Tier
  std::array<int, 2> max_running{0, 0};  ///< by Tier
  std::array<std::multiset<double>, 2> ends;  ///< terminal times of running tasks, by Tier
  std::vector<Task*> tasks;                   ///< creation order
  uint64_t requests = 0;
  uint64_t admitted = 0;
  uint64_t rejected_rate = 0;
  uint64_t rejected_concurrency = 0;
};

/// Everything GET /__stats reports that is not derived from keys and tasks.
struct Stats {
  uint64_t requests = 0;
  std::map<std::string, uint64_t> by_method;
  std::map<std::string, uint64_t> by_route;
  std::map<std::string, uint64_t> by_status;
  std::map<std::string, std::map<std::string, uint64_t>> by_route_status;
  uint64_t rejected_rate = 0;
  uint64_t rejected_concurrency = 0;
  uint64_t retry_after_sent = 0;
  uint64_t tasks_created = 0;
  uint64_t duplicate_creations = 0;
  std::unordered_map<std::string, uint64_t> prompts;
  std::array<int, 2> running{0, 0};
  std::array<int, 2> max_running{0, 0};
  uint64_t callbacks_delivered = 0;
  uint64_t callbacks_failed = 0;
  uint64_t callback_attempts = 0;
  uint64_t callbacks_refused = 0;
  uint64_t fault_5xx = 0;
  uint64_t fault_reset = 0;
  uint64_t fault_stall = 0;
  uint64_t fault_latency = 0;
  uint64_t idem_replays = 0;
  uint64_t idem_mismatches = 0;
  uint64_t idem_processing = 0;
};

class Simulator {
public:
  Simulator(event_base* base, SimConfig cfg);
  ~Simulator();
  Simulator(const Simulator&) = delete;
  Simulator& operator=(const Simulator&) = delete;

  /// Creates the listener (and TLS context). @return false with *error on failure.
  bool start(std::string* error);
  /// @return the bound port (after start()).
  int port() const { return port_; }

private:
  struct Timer;
  struct Delivery;

  // ---- event plumbing ----
  static void onRequestThunk(evhttp_request* req, void* arg);
  static void onTimerThunk(evutil_socket_t fd, short what, void* arg);
  static bufferevent* onBevThunk(event_base* base, void* arg);
  static void onDeliveryDoneThunk(evhttp_request* req, void* arg);
  /// Runs `fn` after `seconds` on the loop (0: next loop turn). Owned here, freed at shutdown.
  void after(double seconds, std::function<void()> fn);

  // ---- request path ----
  void onRequest(evhttp_request* req);
  void process(evhttp_request* req, Route route);
  Reply handleApi(evhttp_request* req, Route route, const std::string& key, double now,
                  double* hold_s);
  Reply handleCreate(evhttp_request* req, KeyState& ks, const std::string& key,
                     const std::string& body, double now, double* hold_s, bool* concurrency_429);
  Reply handleDetail(const std::string& path, const std::string& key, double now);
  Reply handleList(evhttp_request* req, KeyState& ks, double now);
  void handleAdmin(evhttp_request* req, const std::string& path);
  void resetConnection(evhttp_request* req);
  void send(evhttp_request* req, Reply reply, double hold_s);
  void sendNow(evhttp_request* req, const Reply& reply);
  void count(const char* method, Route route, int status);

  // ---- replies ----
  Reply errorReply(int status, const char* code, const std::string& message);
  void addRetryAfter(Reply& r, double seconds);
  void addRateLimitHeaders(Reply& r, KeyState& ks, double now);
  /// The configured per-key limit (--rate, --burst, --window).
  LimitParams limitParams() const {
    LimitParams p;
    p.rate = cfg_.rate_per_s;
    p.burst = cfg_.burst;
    p.window = cfg_.window_s;
    return p;
  }
  std::string detailJson(const Task& t, double now) const;
  std::string statsJson(double now) const;

  // ---- tasks ----
  void onTaskTerminal(const std::string& task_id, uint64_t epoch);
  void deliver(uint64_t delivery_id);
  void onDeliveryDone(Delivery* d, evhttp_request* req);
  void resetState();
  void reseedDurations();

  double nowS() const;
  int64_t unixMs() const;

  event_base* base_;
  SimConfig cfg_;
  Rng rng_;
  /// One stream of run times per tier (light, heavy), seeded from --seed again at every
  /// /__reset: the n-th task of a tier since a reset gets the same run time whatever else came
  /// before or between, so runs through different clients or proxies meet the same tasks, and
  /// a schedule computed afterwards (tools/bench/ideal.py) can give each its own.
  std::array<Rng, 2> duration_rng_;
  evhttp* http_ = nullptr;
  SSL_CTX* ssl_ctx_ = nullptr;
  int port_ = 0;
  std::chrono::steady_clock::time_point start_;
  int64_t start_unix_ms_ = 0;
  uint64_t epoch_ = 0;  ///< bumped by /__reset; stale task timers check it
  uint64_t next_timer_id_ = 1;
  uint64_t next_request_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Timer>> timers_;
  uint64_t next_delivery_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Delivery>> deliveries_;  ///< pending callbacks
  std::unordered_map<std::string, std::unique_ptr<Task>> tasks_;
  std::vector<Task*> task_order_;
  double reset_s_ = 0;  ///< nowS() at the last /__reset (0: never reset)
  /// nowS() of the first request counted against a key's limit since the last reset (< 0:
  /// none yet): where a run began in the fixed windows' grid (see statsJson()).
  double first_limited_s_ = -1;
  std::map<std::string, KeyState> keys_;
  struct IdemRecord {
    std::string body;
    std::string task_id;
    bool processing = false;  ///< true until the create's (held) reply has been sent
    double reply_at_s = 0;    ///< when that reply is due (for Retry-After)
    double expires_s = 0;  ///< forgotten after this
  };
  std::map<std::pair<std::string, std::string>, IdemRecord> idem_;
  Stats stats_;
};

}  // namespace hiapi::sim
