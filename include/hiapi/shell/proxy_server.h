#pragma once
// The client-facing side: routes /v1/... to the upstream, answers everything else itself with a
// proxy error, answers every request exactly once, and drops requests whose clients went away so
// that they are never sent. HTTP/1.1 itself is HttpServer's.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>

#include <event2/event.h>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/http_rules.h"
#include "hiapi/core/node_spares.h"
#include "hiapi/core/proxy_error.h"
#include "hiapi/core/task_tracker.h"
#include "hiapi/core/string_hash.h"
#include "hiapi/shell/http_server.h"
#include "hiapi/shell/key_identity.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/timers.h"
#include "hiapi/shell/upstream_pool.h"

namespace hiapi::shell {

/// One client request from arrival to answer. Owned by ProxyServer.
/// The longest User-Agent the access log keeps.
inline constexpr size_t kMaxLoggedUserAgent = 256;

struct RequestCtx {
  uint64_t id = 0;
  std::string request_id;  ///< the proxy's id, "hp-…", in logs and proxy errors
  /// The client's open exchange with HttpServer (its id is also this request's id); 0 for the
  /// proxy's own requests, and once answered or the client has gone.
  uint64_t exchange = 0;
  bool client_gone = false;
  bool answered = false;
  std::string method;
  core::RouteMatch route;
  std::string client;        ///< fairness class from the client header, "" = shared
  std::string key_name;      ///< config name or KeyIdentity::nameOf(key); never the key
  UpstreamRequest upstream;  ///< what goes out (headers filtered, key set)
  core::MonotonicTime received{};
  core::MonotonicTime deadline{};  ///< the answer must be sent by then
  core::Duration queued{};
  core::Duration upstream_time{};
  int attempts = 0;
  uint64_t pool_handle = 0;
  std::string upstream_request_id;
  // Set by the limiter.
  core::GatePermit slot;          ///< a create's tier slot while the request holds it
  std::optional<size_t> tier;     ///< a create's tier
  uint64_t admission_seq = 0;     ///< the scheduler's Admitted::seq of the attempt in flight
  /// Shadow mode: what would have held it back (rate, concurrency, cooldown), "" if nothing.
  std::string_view shadow;
  std::string model;              ///< a create's model (from a parsed copy of the body)
  bool has_idempotency_key = false;
  // Set by the task service.
  bool internal = false;          ///< the proxy's own request (reconcile poll): no client
  /// A poll: the tier whose gate it may free a slot of. An internal poll with one is urgent
  /// (creates wait on its answer); without one it is a reconcile poll.
  std::optional<size_t> unblocks;
  bool poll_joined = false;       ///< waits for another request's fetch of the same task
  bool poll_fetcher = false;      ///< fetches a task detail for itself and the joiners
  /// Its task is most likely still running until then: the fetch yields to creates until then.
  std::optional<core::MonotonicTime> poll_early_until;
  /// The proxy's own look for held polls: not sent after this (the held polls then fetch).
  std::optional<core::MonotonicTime> wait_until;
  std::string cache_result;       ///< X-HiAPI-Proxy-Cache: hit | coalesced | miss
  std::string authorization;      ///< the Authorization value sent upstream (memory only)
  /// A client poll held until its task's likely end (tasks.hold_near_end): fires once, then the
  /// poll is served as if it arrived then (poll_held keeps it from being held twice).
  std::unique_ptr<Timer> hold_timer;
  bool poll_held = false;
  // Deferred creates (DeferHook).
  std::string deferred_id;  ///< the proxy's submission of deferred task "hp-tk-…" (internal)
  std::string alias_id;     ///< a client's poll of deferred task "hp-tk-…", sent as HiAPI's id
  bool list_merge = false;  ///< a list whose reply shows the key's deferred tasks too
  /// Short word for the log: forwarded, cache_hit, coalesced, a proxy error code (queue_timeout,
  /// ...), client_gone.
  std::string outcome;
  // For the access log and the client metrics.
  std::string peer;        ///< the client's "address:port"
  /// The request path of one that was not forwarded (a forwarded one's is in upstream.target).
  std::string path;
  uint64_t bytes_in = 0;   ///< request body bytes
  uint64_t bytes_out = 0;  ///< response body bytes
  std::optional<core::ProxyError> proxy_error;  ///< set when the proxy answered itself
};

/// What admission decided for a request: send it upstream now, or answer it with a proxy error.
struct AdmissionDecision {
  uint64_t id = 0;
  std::optional<core::ProxyError> refuse;  ///< nullopt: send it
  int retry_after_s = -1;                  ///< with refuse: the Retry-After to give, -1 = default
};

/// Where admission's decisions go: the owner of the requests (ProxyServer). One entry point for
/// every request instead of a pair of callbacks per request.
class AdmissionSink {
public:
  virtual ~AdmissionSink() = default;
  /// Acts on @p d. It may submit more requests to admission from inside this call.
  virtual void decided(const AdmissionDecision& d) = 0;
};

/// Decides when a request may go upstream. The default lets everything through at once; the
/// limiter plugs in here. Thread-safety: loop thread only.
class AdmissionHook {
public:
  virtual ~AdmissionHook() = default;
  /// Where decide() reports; set by ProxyServer::setAdmission before any admit().
  virtual void setSink(AdmissionSink* sink) = 0;
  /// Called once per request ready to go. Exactly one decision for @p ctx reaches the sink
  /// (now or later), unless clientGone() says first that the client left.
  virtual void admit(RequestCtx& ctx) = 0;
  /// The client of a request still waiting in admit() has gone: forget it and return its
  /// reservations; no decision for it follows.
  virtual void clientGone(RequestCtx& ctx) = 0;
  /// The upstream answered (or failed): for budgets, cooldowns and retries.
  /// @return true when the hook takes the request back to retry it (a decision follows again).
  virtual bool completed(RequestCtx& ctx, const UpstreamResponse& resp) = 0;
  /// @return whether @p ctx waits for admission (not yet sent, not in a retry delay).
  virtual bool isWaiting(const RequestCtx& ctx) const = 0;
};

/// What the poll hook decided for a client poll; ProxyServer carries it out.
struct ClientPollDecision {
  enum class Action {
    Fetch,  ///< fetch the detail itself, through admission
    Join,   ///< wait for another request's fetch of the same task (answered with its reply)
    Hit,    ///< answer now with `reply`
    Hold,   ///< hold it for `hold`, then serve it again as if it arrived then
  };
  Action action = Action::Fetch;
  core::CachedReplyPtr reply;  ///< Hit
  core::Duration age{};        ///< Hit: how old the reply is (the Age header)
  core::Duration hold{};       ///< Hold
};

/// Poll coalescing and task tracking plug in here. Thread-safety: loop thread only.
class PollHook {
public:
  virtual ~PollHook() = default;
  /// A client poll arrived (or a held one is served again): what to do with it.
  virtual ClientPollDecision beginClientPoll(RequestCtx& ctx) = 0;
  /// The fetch of a poll ended (after any retries): answer the requests that joined it.
  virtual void fetchDone(RequestCtx& ctx, const UpstreamResponse& resp) = 0;
  /// The fetch was turned away by admission (queue full or timeout): the joiners get @p e too.
  virtual void fetchRejected(RequestCtx& ctx, core::ProxyError e, int retry_after_s) = 0;
  /// The client of a joined poll, or of a fetcher, went away. @p fetch_continues: the fetcher's
  /// request is already on the wire and will still complete.
  virtual void pollerGone(RequestCtx& ctx, bool fetch_continues) = 0;
  /// Every final upstream reply passes here (statuses in details and lists).
  virtual void observe(RequestCtx& ctx, const UpstreamResponse& resp) = 0;
};

/// Deferred creates plug in here (DeferredService). Thread-safety: loop thread only.
class DeferHook {
public:
  virtual ~DeferHook() = default;
  /// A prepared client request, before polls and admission: the hook answers requests about
  /// its own tasks (polls of queued ones, cancels) and marks the rest that need its help
  /// (alias_id, list_merge). @return true when it answered.
  virtual bool intercept(RequestCtx& ctx) = 0;
  /// A client's create went into admission and waits there.
  virtual void waiting(RequestCtx& ctx) = 0;
  /// The final upstream reply (after any retries) of a deferred submission.
  virtual void submitted(RequestCtx& ctx, const UpstreamResponse& resp) = 0;
  /// A deferred submission ended without an upstream reply: the proxy's own error @p e.
  virtual void rejected(RequestCtx& ctx, core::ProxyError e) = 0;
  /// The body a client gets for an upstream reply of an alias poll or a merged list.
  /// @return nullopt to send the upstream body unchanged.
  virtual std::optional<std::string> rewrite(const RequestCtx& ctx, std::string_view body) = 0;
};

/// What a deferred create is submitted with (DeferredService keeps it durably).
struct DeferredSubmission {
  std::string deferred_id;
  std::string key_name;
  std::string authorization;
  std::string client;
  std::string target;
  Headers headers;  ///< end-to-end, Idempotency-Key included; not Authorization
  std::string body;
  core::Duration time_left{};  ///< until it expires
};

/// Thread-safety: loop thread only.
class ProxyServer : private HttpServer::Handler, private AdmissionSink {
public:
  /// @param base the loop its client connections live on. @param timers its timers and clock.
  /// @param random salts its request ids.
  ProxyServer(event_base* base, Timers& timers, core::Random& random, core::ConfigSharedPtr cfg,
              UpstreamPool& pool, Logger& log);
  ~ProxyServer() override;
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;

  /// Binds the listener. @return false (and logs why) on failure.
  bool listen();
  /// @return the bound port (useful with port 0).
  uint16_t port() const { return port_; }
  /// Stops accepting new connections; in-flight requests continue.
  void stopAccepting();
  /// Answers every request still waiting with 503 shutting_down.
  void abortPending();
  /// @return requests received and not yet answered (deferred submissions, kept durably and
  ///         resumed after a restart, do not count).
  size_t active() const { return requests_.size() - deferred_live_; }
  /// @return client connections open, and accepted since the start.
  size_t clientConnections() const { return http_ ? http_->connections() : 0; }
  uint64_t clientConnectionsAccepted() const { return http_ ? http_->accepted() : 0; }
  bool draining() const { return draining_; }
  /// Names passthrough keys from now on (the daemon's per-install secret; a per-process one
  /// until then).
  void setKeyIdentity(const KeyIdentity& id) {
    key_identity_ = id;
    key_names_.clear();
  }

  /// Client replies waiting to be written count against @p budget. Call before listen().
  void setBufferBudget(BufferBudget* budget) { budget_ = budget; }
  void setAdmission(AdmissionHook* hook) {
    admission_ = hook;
    if (hook != nullptr) {
      hook->setSink(this);
    }
  }
  void setPollHook(PollHook* hook) { poll_hook_ = hook; }
  void setDeferHook(DeferHook* hook) { defer_hook_ = hook; }

  /// Answers client create @p id, still waiting in admission, with a deferred create's reply
  /// (200, @p body) and withdraws it from admission, returning its reservations.
  /// @return false when it is no longer waiting (sent, answered or gone): nothing was done.
  bool answerDeferred(uint64_t id, std::string_view body);
  /// Sends deferred create @p s through admission as the proxy's own request.
  /// @return the request id.
  uint64_t submitDeferred(const DeferredSubmission& s);
  /// @return the key name a request with @p authorization (passthrough) is limited under: a
  ///         configured key's name, else its keyed identity.
  const std::string& keyNameFor(std::string_view authorization);
  /// Withdraws the proxy's own request @p id if it has not been sent yet.
  /// @return whether it was withdrawn (false: unknown, or on the wire).
  bool withdraw(uint64_t id);
  /// Answers @p ctx (a request the defer hook handles itself) with @p status and @p body.
  void replyLocal(RequestCtx& ctx, int status, std::string_view body,
                  const HeaderViews& extra = {}, std::string_view outcome = "proxy_answer");
  /// Answers @p ctx with a proxy error (for hooks).
  void replyProxyError(RequestCtx& ctx, core::ProxyError e, std::string_view message = {}) {
    replyError(ctx, e, message);
  }

  /// Answers request @p id with an upstream reply (a joined poll); @p cache is the
  /// X-HiAPI-Proxy-Cache value; @p age_s, when >= 0, the Age header.
  void replyWith(uint64_t id, const UpstreamResponse& resp, std::string_view cache, long age_s = -1);
  /// Answers request @p id with a proxy error.
  void replyErrorTo(uint64_t id, core::ProxyError e, std::string_view message = {}, int retry_after_s = -1);
  /// Sends request @p id through admission (a joined poll that must now fetch itself).
  void admitById(uint64_t id);
  /// Answers request @p id with a cached task detail @p reply, @p age old (a cache hit).
  void replyCached(uint64_t id, const core::CachedReply& reply, core::Duration age);
  /// Ends the hold of poll @p id now (its task was seen ended) and serves it.
  void serveHeldNow(uint64_t id);
  /// Serves client request @p id once the DeferHook that took it without answering (to ask the
  /// shared store about it) is ready: it passes the hooks again as if it had just arrived.
  void resume(uint64_t id);
  /// Issues the proxy's own poll of @p task_id with @p key_name's credentials: at the lowest
  /// priority, or, when it @p unblocks a tier (creates wait for that tier's full gate), as a
  /// client's poll that goes with that tier's creates (see core::RequestInfo::unblocks).
  /// @param wait_until when given, it is dropped (fetchRejected, QueueTimeout) if it has not
  ///        left the queue by then.
  /// @param spare_token waits for a token nobody else needs, even with @p unblocks (then it
  ///        goes with that tier's creates only while their gate is full).
  /// @return the request id.
  uint64_t internalPoll(const std::string& key_name, const std::string& authorization,
                        const std::string& task_id, std::optional<size_t> unblocks,
                        std::optional<core::MonotonicTime> wait_until = std::nullopt,
                        bool spare_token = false);
  /// @return the request, if it is still open.
  RequestCtx* find(uint64_t id);
  void setConfig(core::ConfigSharedPtr cfg);

  /// Sends the request upstream now.
  void forward(RequestCtx& ctx);

  /// Observer of finished requests (metrics). Called once per request, before it is freed.
  std::function<void(const RequestCtx&, int status)> on_finished;

private:
  void onRequest(uint64_t exchange, InboundRequest& req) override;
  void onClientGone(uint64_t exchange) override;
  void decided(const AdmissionDecision& d) override;
  /// Holds client poll @p id for @p wait (its task likely ends then), then serves it as if it
  /// arrived then: from the cache, by joining a fetch, or by fetching. A client that goes away
  /// meanwhile is noticed as for any waiting request.
  void holdPoll(uint64_t id, core::Duration wait);
  void unhold(RequestCtx& ctx);
  /// Serves a prepared request: a poll through the poll hook (cache, join) or admission.
  void serve(RequestCtx& ctx);
  bool prepare(RequestCtx& ctx, InboundRequest& req);
  void onUpstream(uint64_t id, UpstreamResponse&& resp);
  /// @p age_s, when >= 0, the Age header (an answer from the cache).
  void replyUpstream(RequestCtx& ctx, const UpstreamResponse& resp, long age_s = -1);
  void replyError(RequestCtx& ctx, core::ProxyError e, std::string_view message = {},
                  int retry_after_s = -1);
  void sendReply(RequestCtx& ctx, int status, const HeaderViews& headers, std::string_view body,
                 bool close = false);
  void done(RequestCtx& ctx, int status);
  /// @return the access log's outcome word for @p ctx.
  static std::string_view outcomeOf(const RequestCtx& ctx);
  void admitCtx(RequestCtx& ctx);
  /// @param id the request's id; 0: a new internal one.
  RequestCtx& newCtx(uint64_t id = 0);

  event_base* base_;
  Timers& timers_;
  const core::Clock& clock_;
  core::ConfigSharedPtr cfg_;
  UpstreamPool& pool_;
  Logger& log_;
  std::unique_ptr<HttpServer> http_;
  uint16_t port_ = 0;
  bool draining_ = false;
  uint64_t next_id_ = 1;
  uint64_t id_salt_ = 0;
  BufferBudget* budget_ = nullptr;
  AdmissionHook* admission_ = nullptr;
  PollHook* poll_hook_ = nullptr;
  DeferHook* defer_hook_ = nullptr;
  size_t deferred_live_ = 0;  ///< open requests that are deferred submissions
  std::unordered_map<uint64_t, std::unique_ptr<RequestCtx>> requests_;
  /// Kept nodes hold their finished RequestCtx: the next request reuses it (see newCtx).
  core::NodeSpares<std::unordered_map<uint64_t, std::unique_ptr<RequestCtx>>> request_spares_;
  /// Passthrough mode: an Authorization value → the key's name (memory only, never logged).
  std::unordered_map<std::string, std::string, core::StringHash, std::equal_to<>> key_names_;
  KeyIdentity key_identity_;
};

}  // namespace hiapi::shell
