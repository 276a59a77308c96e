#include "hiapi/shell/daemon.h"
#include "hiapi/shell/redis_store.h"
#include "hiapi/shell/deferred_service.h"

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <random>

#include <sys/resource.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <systemd/sd-daemon.h>

#include "hiapi/core/config_reload.h"
#include "hiapi/core/http_rules.h"
#include "hiapi/core/key_name.h"
#include "hiapi/shell/admin_server.h"
#include "hiapi/shell/buffer_budget.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/proxy_server.h"
#include "hiapi/shell/state_file.h"
#include "hiapi/shell/task_service.h"
#include "hiapi/shell/upstream_pool.h"
#include "hiapi/version.h"

namespace hiapi::shell {
namespace {

double seconds(core::Duration d) { return core::toSeconds(d); }

std::vector<std::string> tierNames(const core::Config& cfg) {
  std::vector<std::string> out;
  for (const auto& t : cfg.limits.tiers) {
    out.push_back(t.name);
  }
  return out;
}

}  // namespace

Daemon::Daemon(DaemonOptions opts, core::ConfigSharedPtr cfg, Logger& log)
    : opts_(std::move(opts)), cfg_(std::move(cfg)), log_(log),
      random_(std::random_device{}()) {}

Daemon::~Daemon() {
  admin_.reset();
  if (proxy_) {
    proxy_->setDeferHook(nullptr);
  }
  if (tasks_) {
    tasks_->on_task_ended = nullptr;
  }
  deferred_.reset();
  tasks_.reset();
  proxy_.reset();
  if (limiter_) {
    limiter_->setStore(nullptr);
  }
  store_.reset();
  limiter_.reset();
  pool_.reset();
  reply_budget_.reset();
  for (event* e : {sigterm_, sigint_, sighup_, drain_tick_, watchdog_}) {
    if (e != nullptr) {
      event_free(e);
    }
  }
  if (base_ != nullptr) {
    event_base_free(base_);
  }
}

void Daemon::notify(const std::string& state) {
  // A no-op (returns 0) when not started by systemd with NOTIFY_SOCKET.
  const int r = sd_notify(0, state.c_str());
  if (r < 0) {
    log_.warn("sd_notify failed", {{"error", std::strerror(-r)}});
  }
}

bool Daemon::writePortFile() {
  if (opts_.port_file.empty()) {
    return true;
  }
  const std::string tmp = opts_.port_file + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    if (!f) {
      return false;
    }
    f << "proxy=" << proxy_->port() << "\n";
    f << "admin=" << (admin_ ? admin_->port() : 0) << "\n";
  }
  return std::rename(tmp.c_str(), opts_.port_file.c_str()) == 0;
}

void Daemon::declareKeys() {
  for (const core::KeyConfig& k : cfg_->keys) {
    limiter_->addKey(k.name);
    metrics_->declareKey(k.name, tierNames(*cfg_));
  }
}

int Daemon::run() {
  std::signal(SIGPIPE, SIG_IGN);
  // A file over RLIMIT_FSIZE (the journal, the state file) is a failed write the proxy handles,
  // as it handles a full disk, not a reason to die.
  std::signal(SIGXFSZ, SIG_IGN);
  // Every queued client holds a socket: raise the soft descriptor limit to the hard one, as
  // nginx's worker_rlimit_nofile does (the systemd unit sets LimitNOFILE).
  rlimit nofile{};
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    const rlim_t was = nofile.rlim_cur;
    nofile.rlim_cur = nofile.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nofile) == 0) {
      log_.debug("raised the open file limit", {{"from", static_cast<uint64_t>(was)},
                                                {"to", static_cast<uint64_t>(nofile.rlim_cur)}});
    }
  }
  started_ = clock_.now();
  {
    std::string text, error;
    if (readRegularFile(opts_.config_path, text, error) == ReadFileResult::Ok) {
      config_sections_ = core::configSections(text);
    }
  }
  // The changelist coalesces the read/write interest evhttp turns on and off several times per
  // request into at most one epoll_ctl per descriptor and loop turn (B3 showed ~6 per request).
  // Its one caveat, dup()ed descriptors, does not apply: every socket here is our own.
  event_config* ev_cfg = event_config_new();
  if (ev_cfg != nullptr) {
    event_config_set_flag(ev_cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    base_ = event_base_new_with_config(ev_cfg);
    event_config_free(ev_cfg);
  }
  if (base_ == nullptr) {
    base_ = event_base_new();
  }
  if (base_ == nullptr) {
    log_.error("event_base_new failed");
    return 1;
  }
  metrics_ = std::make_unique<Metrics>();
  try {
    pool_ = std::make_unique<UpstreamPool>(base_, cfg_->upstream, log_);
  } catch (const std::exception& e) {
    log_.error("cannot set up the upstream", {{"error", e.what()}});
    return 1;
  }
  timers_ = std::make_unique<EventTimers>(base_, clock_);
  proxy_ = std::make_unique<ProxyServer>(base_, *timers_, random_, cfg_, *pool_, log_);
  reply_budget_ = std::make_unique<BufferBudget>(base_, cfg_->listen.max_reply_buffer_bytes);
  pool_->setBufferBudget(reply_budget_.get());
  proxy_->setBufferBudget(reply_budget_.get());
  if (!cfg_->tasks.state_file.empty()) {
    // Restored tasks stay under their passthrough keys' names: the names' secret persists.
    const std::string secret_path = cfg_->tasks.state_file + ".secret";
    std::string error;
    if (auto id = KeyIdentity::fromFile(secret_path, error)) {
      proxy_->setKeyIdentity(*id);
    } else {
      log_.warn("cannot keep the passthrough key-name secret: names change on restart",
                {{"path", secret_path}, {"error", error}});
    }
  }
  limiter_ = std::make_unique<Limiter>(*timers_, random_, cfg_, log_, metrics_.get());
  if (!startStore()) {
    return 1;
  }
  proxy_->setAdmission(limiter_.get());
  tasks_ = std::make_unique<TaskService>(*timers_, cfg_, *limiter_, *proxy_, log_, metrics_.get());
  proxy_->setPollHook(tasks_.get());
  limiter_->on_task_created = [this](const RequestCtx& ctx, const std::string& task_id) {
    tasks_->onCreated(ctx, task_id);
  };
  limiter_->on_lease_expired = [this](const std::string& key, uint64_t slot) {
    tasks_->onLeaseExpired(key, slot);
  };
  proxy_->on_finished = [this](const RequestCtx& ctx, int status) {
    if (ctx.internal) {
      return;
    }
    const std::string_view key =
        ctx.key_name.empty() ? std::string_view("none") : std::string_view(ctx.key_name);
    metrics_->clientResponse(key, core::routeName(ctx.route.kind), status);
    metrics_->clientRequest(core::routeName(ctx.route.kind),
                            seconds(clock_.now() - ctx.received), ctx.bytes_in,
                            ctx.bytes_out);
    if (ctx.proxy_error) {
      metrics_->proxyError(*ctx.proxy_error);
      // A refusal is counted where its answer is: once per client answered, as errors_total
      // and the clients' 429s count it (joined polls share one rejected fetch; the proxy's own
      // polls answer nobody).
      if (*ctx.proxy_error == core::ProxyError::QueueFull) {
        metrics_->throttle(key, "queue_full");
      } else if (*ctx.proxy_error == core::ProxyError::QueueTimeout) {
        metrics_->throttle(key, "queue_timeout");
      }
    }
    if (!ctx.cache_result.empty()) {
      metrics_->pollCache(ctx.cache_result);
    }
    if (ctx.poll_held) {
      metrics_->pollHeld(ctx.key_name);
    }
  };
  deferred_ = std::make_unique<DeferredService>(*timers_, random_, cfg_, *proxy_, *limiter_,
                                                *tasks_, log_, metrics_.get());
  proxy_->setDeferHook(deferred_.get());
  tasks_->on_task_ended = [this](const std::string& key, const std::string& task_id) {
    deferred_->taskEnded(key, task_id);
  };
  declareKeys();
  tasks_->restore();
  if (std::string error; !deferred_->start(&error)) {
    log_.error("cannot use the deferred journal", {{"error", error}});
    return 1;
  }
  if (!proxy_->listen()) {
    return 1;
  }
  if (cfg_->admin.enabled) {
    admin_ = std::make_unique<AdminServer>(
        base_, *metrics_, [this] { return statusJson(); }, [this] { return ready_; },
        [this] { refreshGauges(); });
    admin_->setConfigDump([this] { return cfg_->dump(); });
    admin_->setLimitsHandler([this](std::string_view rest, std::string_view body,
                                    const std::string& peer) {
      return changeLimits(rest, body, peer);
    });
    if (!admin_->listen(cfg_->admin.address, cfg_->admin.port)) {
      log_.error("cannot listen for admin", {{"address", cfg_->admin.address},
                                             {"port", cfg_->admin.port},
                                             {"error", admin_->lastError()}});
      return 1;
    }
  }
  sigterm_ = evsignal_new(base_, SIGTERM, &Daemon::onSignal, this);
  sigint_ = evsignal_new(base_, SIGINT, &Daemon::onSignal, this);
  sighup_ = evsignal_new(base_, SIGHUP, &Daemon::onSignal, this);
  for (event* e : {sigterm_, sigint_, sighup_}) {
    if (e == nullptr || event_add(e, nullptr) != 0) {
      log_.error("cannot install signal handlers");
      return 1;
    }
  }
  uint64_t watchdog_usec = 0;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
    watchdog_ = event_new(base_, -1, EV_PERSIST, &Daemon::onWatchdog, this);
    const timeval tv{static_cast<time_t>(watchdog_usec / 2 / 1'000'000),
                     static_cast<suseconds_t>((watchdog_usec / 2) % 1'000'000)};
    event_add(watchdog_, &tv);
  }
  if (!writePortFile()) {
    log_.error("cannot write the port file", {{"path", opts_.port_file}});
    return 1;
  }
  ready_ = true;
  metrics_->setReady(true);
  log_.info("listening", {{"address", cfg_->listen.address},
                          {"port", proxy_->port()},
                          {"admin_port", admin_ ? admin_->port() : 0},
                          {"upstream", cfg_->upstream.url},
                          {"config", opts_.config_path},
                          {"version", HIAPI_PROXY_VERSION}});
  notify("READY=1\nSTATUS=listening on " + cfg_->listen.address + ":" +
         std::to_string(proxy_->port()) + ", upstream " + cfg_->upstream.url);
  event_base_dispatch(base_);
  tasks_->save();
  log_.info("stopped", {{"aborted", aborted_ ? "true" : "false"}});
  return 0;
}

void Daemon::onWatchdog(evutil_socket_t, short, void* arg) {
  static_cast<Daemon*>(arg)->notify("WATCHDOG=1");
}

void Daemon::onSignal(evutil_socket_t sig, short, void* arg) {
  auto* self = static_cast<Daemon*>(arg);
  if (sig == SIGHUP) {
    self->reload();
    return;
  }
  self->beginShutdown(static_cast<int>(sig));
}

void Daemon::apply(core::ConfigSharedPtr next) {
  proxy_->setConfig(next);
  reply_budget_->setLimit(next->listen.max_reply_buffer_bytes);
  limiter_->reconfigure(next);
  tasks_->reconfigure(next);
  deferred_->reconfigure(next);
  cfg_ = std::move(next);
  declareKeys();
  std::vector<std::string> keys;
  for (const auto& [name, snap] : limiter_->snapshots()) {
    keys.push_back(name);
  }
  metrics_->retainKeys(keys);
}

namespace {

std::string jsonError(const std::string& message) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("error");
  w.String(message.c_str(), static_cast<rapidjson::SizeType>(message.size()));
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize()) + "\n";
}

/// A rate given as "2/s" (the file's grammar) or a number of requests per second.
std::optional<core::Rate> rateFrom(const rapidjson::Value& v) {
  if (v.IsString()) {
    return core::parseRate(v.GetString());
  }
  if (v.IsNumber() && v.GetDouble() > 0 && std::isfinite(v.GetDouble())) {
    return core::Rate{v.GetDouble()};
  }
  return std::nullopt;
}

}  // namespace

AdminServer::LimitsReply Daemon::changeLimits(std::string_view rest, std::string_view body,
                                              const std::string& peer) {
  // keys/<name> {"rate": "2/s", "burst": 3}   tiers/<name> {"max_running": 4}
  const size_t slash = rest.find('/');
  const std::string_view kind = rest.substr(0, slash);
  const std::string name(slash == std::string_view::npos ? "" : rest.substr(slash + 1));
  if ((kind != "keys" && kind != "tiers") || name.empty()) {
    return {404, jsonError("PUT /limits/keys/<key name> or /limits/tiers/<tier name>")};
  }
  rapidjson::Document d;
  if (d.Parse(body.data(), body.size()).HasParseError() || !d.IsObject()) {
    return {400, jsonError("the body must be a JSON object")};
  }
  auto next = std::make_shared<core::Config>(*cfg_);
  std::vector<LogField> audit{{"peer", peer}, {"target", std::string(kind)}, {"name", name}};
  if (kind == "keys") {
    auto k = std::find_if(next->keys.begin(), next->keys.end(),
                          [&](const core::KeyConfig& c) { return c.name == name; });
    if (k == next->keys.end()) {
      return {404, jsonError("no configured key is named '" + name + "'")};
    }
    for (auto m = d.MemberBegin(); m != d.MemberEnd(); ++m) {
      const std::string_view field(m->name.GetString(), m->name.GetStringLength());
      if (field == "rate") {
        const std::optional<core::Rate> r = rateFrom(m->value);
        if (!r) {
          return {400, jsonError("rate: expected a rate like \"2/s\" or \"90/min\", or a "
                                 "number of requests per second")};
        }
        k->rate = r;
        audit.emplace_back("rate_per_second", r->per_second);
      } else if (field == "burst") {
        if (!m->value.IsNumber() || !(m->value.GetDouble() >= 1) ||
            !std::isfinite(m->value.GetDouble())) {
          return {400, jsonError("burst: expected a number of at least 1")};
        }
        k->burst = m->value.GetDouble();
        audit.emplace_back("burst", *k->burst);
      } else {
        return {400, jsonError("unknown field '" + std::string(field) + "' (rate, burst)")};
      }
    }
  } else {
    auto t = std::find_if(next->limits.tiers.begin(), next->limits.tiers.end(),
                          [&](const core::TierConfig& c) { return c.name == name; });
    if (t == next->limits.tiers.end()) {
      return {404, jsonError("no tier is named '" + name + "'")};
    }
    for (auto m = d.MemberBegin(); m != d.MemberEnd(); ++m) {
      const std::string_view field(m->name.GetString(), m->name.GetStringLength());
      if (field != "max_running") {
        return {400, jsonError("unknown field '" + std::string(field) + "' (max_running)")};
      }
      if (!m->value.IsUint() || m->value.GetUint() < 1 || m->value.GetUint() > 100000) {
        return {400, jsonError("max_running: expected an integer from 1 to 100000")};
      }
      t->max_running = m->value.GetUint();
      audit.emplace_back("max_running", t->max_running);
    }
  }
  if (audit.size() == 3) {
    return {400, jsonError("nothing to change")};
  }
  apply(next);
  // The audit trail: who changed what. It lasts until the next reload or restart.
  log_.log(core::LogLevel::Warn, "limits changed at runtime (until the next reload)", audit);
  return {200, "{\"ok\":true}\n"};
}

void Daemon::reload() {
  if (shutting_down_) {
    return;
  }
  log_.info("reload requested", {{"config", opts_.config_path}});
  notify("RELOADING=1\nSTATUS=reloading " + opts_.config_path);
  try {
    // One read: what is checked is what is parsed.
    std::string text, error;
    if (readRegularFile(opts_.config_path, text, error) != ReadFileResult::Ok) {
      throw core::ConfigError(opts_.config_path, 0, 0, "",
                              "cannot read the config file: " + (error.empty() ? "missing" : error));
    }
    auto next = std::make_shared<const core::Config>(core::parseConfig(text, opts_.config_path));
    core::checkReloadable(text, opts_.config_path, config_sections_);
    // What lives in sockets and TLS contexts stays until a restart; say so instead of
    // silently ignoring it.
    if (next->listen.address != cfg_->listen.address || next->listen.port != cfg_->listen.port ||
        next->admin.address != cfg_->admin.address || next->admin.port != cfg_->admin.port ||
        next->admin.enabled != cfg_->admin.enabled || next->upstream.url != cfg_->upstream.url ||
        next->upstream.ca_file != cfg_->upstream.ca_file) {
      log_.warn("listen, admin and upstream settings change only on restart; the rest applies");
    }
    if (storeChanged(next->store, cfg_->store)) {
      log_.warn("store settings change only on restart; the rest applies");
    }
    log_.setFormat(next->log.format);
    log_.setLevel(next->log.level);
    apply(next);
    config_sections_ = core::configSections(text);
    metrics_->configReload(true);
    log_.info("reload ok", {{"summary", cfg_->summary()}});
    notify("READY=1\nSTATUS=reloaded: " + cfg_->summary());
  } catch (const core::ConfigError& e) {
    metrics_->configReload(false);
    log_.error("reload failed, keeping the running configuration", {{"error", e.what()}});
    // STATUS= is one line: the first error, and how many more the log has.
    const size_t errors = e.all().size();
    notify(std::string("READY=1\nSTATUS=reload failed, running the previous configuration: ") +
           e.all().front().what() +
           (errors > 1 ? " (and " + std::to_string(errors - 1) + " more)" : std::string()));
  }
}

void Daemon::beginShutdown(int sig) {
  if (shutting_down_) {
    log_.warn("second signal: stopping now", {{"signal", sig}});
    proxy_->abortPending();
    event_base_loopexit(base_, nullptr);
    return;
  }
  shutting_down_ = true;
  ready_ = false;
  metrics_->setReady(false);
  notify("STOPPING=1\nSTATUS=draining");
  log_.info("shutting down: draining", {{"signal", sig}, {"in_flight", proxy_->active()}});
  proxy_->stopAccepting();
  drain_deadline_ = clock_.now() + cfg_->drain_timeout;
  drain_tick_ = event_new(base_, -1, EV_PERSIST, &Daemon::onDrainTick, this);
  const timeval tick{0, 20'000};
  event_add(drain_tick_, &tick);
  onDrainTick(-1, 0, this);
}

void Daemon::onDrainTick(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Daemon*>(arg);
  if (self->proxy_->active() == 0) {
    // Give libevent one more turn to flush the last replies.
    const timeval flush{0, 50'000};
    event_del(self->drain_tick_);
    if (self->admin_) {
      self->admin_->close();
    }
    event_base_loopexit(self->base_, &flush);
    return;
  }
  if (self->clock_.now() >= self->drain_deadline_ && !self->aborted_) {
    self->aborted_ = true;
    self->log_.warn("drain timeout: answering the rest with 503",
                    {{"in_flight", self->proxy_->active()}});
    self->proxy_->abortPending();
  }
}

void Daemon::refreshGauges() {
  for (const auto& [key, snap] : limiter_->snapshots()) {
    Metrics::KeyGauges kg;
    kg.key = key;
    kg.configured_rate = snap.configured_rate;
    kg.effective_rate = snap.effective_rate;
    kg.tokens = snap.tokens;
    kg.cooldown_seconds = seconds(snap.cooldown_remaining);
    kg.queue_depth = snap.queue_depth;
    kg.advertised_limit = snap.advertised_limit;
    kg.advertised_remaining = snap.advertised_remaining;
    metrics_->setKeyGauges(kg);
    std::vector<uint64_t>& seen_leases = seen_lease_expiries_[key];
    seen_leases.resize(snap.tiers.size(), 0);
    for (size_t i = 0; i < snap.tiers.size(); ++i) {
      const core::TierSnapshot& t = snap.tiers[i];
      Metrics::TierGauges tg;
      tg.key = key;
      tg.tier = t.name;
      tg.running = t.running;
      tg.ceiling = t.ceiling;
      tg.effective_ceiling = t.effective_ceiling;
      tg.queued = t.queued;
      metrics_->setTierGauges(tg);
      if (t.leases_expired > seen_leases[i]) {
        const auto n = static_cast<double>(t.leases_expired - seen_leases[i]);
        metrics_->leaseExpired(key, t.name, n);
        metrics_->taskOutcome(key, t.name, "lease_expired", n);
        seen_leases[i] = t.leases_expired;
      }
    }
    // Throttle counters live in the scheduler: turn their growth into metric increments.
    core::SchedulerCounters& seen = seen_counters_[key];
    const core::SchedulerCounters& c = snap.counters;
    using Count = void (Metrics::*)(std::string_view, std::string_view, double);
    // clang 14 cannot capture a structured binding in a lambda (C++20 allows it, gcc does).
    const std::string& name = key;
    auto bump = [&](Count count, uint64_t now_v, uint64_t& was, std::string_view reason) {
      if (now_v > was) {
        (metrics_.get()->*count)(name, reason, static_cast<double>(now_v - was));
        was = now_v;
      }
    };
    bump(&Metrics::throttle, c.throttled_rate, seen.throttled_rate, "rate");
    bump(&Metrics::throttle, c.throttled_concurrency, seen.throttled_concurrency, "concurrency");
    bump(&Metrics::throttle, c.throttled_cooldown, seen.throttled_cooldown, "cooldown");
    // Shadow mode: what would have been held back, apart from what was.
    bump(&Metrics::shadowThrottle, c.shadow_rate, seen.shadow_rate, "rate");
    bump(&Metrics::shadowThrottle, c.shadow_concurrency, seen.shadow_concurrency, "concurrency");
    bump(&Metrics::shadowThrottle, c.shadow_cooldown, seen.shadow_cooldown, "cooldown");
  }
  metrics_->setTrackedTasks(tasks_->tracker().stats().tracked);
  metrics_->setUpstreamConnections(pool_->busyConnections(), pool_->idleConnections());
  metrics_->setInflight(proxy_->active());
  metrics_->setQueueCapacity(cfg_->queue.max_size);
  metrics_->setClientConnections(proxy_->clientConnections(), proxy_->clientConnectionsAccepted());
  deferred_->refreshGauges();
}

void Daemon::writeDeferredStatus(rapidjson::Writer<rapidjson::StringBuffer>& w) const {
  // Ids, key names, tiers and ages: never a key, never a body.
  const core::DeferredBook& book = deferred_->book();
  w.Key("deferred");
  w.StartObject();
  w.Key("journal");
  w.String(deferred_->journalPath().c_str());
  w.Key("store_ready");
  w.Bool(deferred_->storeReady());
  w.Key("records");
  w.Uint64(book.size());
  w.Key("queued");
  w.StartArray();
  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                            clock_.wallNow().time_since_epoch())
                            .count();
  for (const core::DeferredRecord* r : book.all()) {
    if (r->state != core::DeferredState::Queued) {
      continue;
    }
    const size_t position = book.position(r->id).value_or(0);
    w.StartObject();
    w.Key("task");
    w.String(r->id.c_str());
    w.Key("key");
    w.String(r->key.c_str());
    w.Key("tier");
    w.String(r->tier.c_str());
    w.Key("position");
    w.Uint64(position);
    w.Key("age_seconds");
    w.Int64(now_s - r->accepted_ms / 1000);
    if (auto start = deferred_->estimatedStart(*r, position)) {
      w.Key("estimated_start");
      w.Int64(*start);
    }
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
}

std::string Daemon::statusJson() {
  refreshGauges();
  const auto now = clock_.now();
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("version");
  w.String(HIAPI_PROXY_VERSION);
  w.Key("uptime_seconds");
  w.Double(seconds(now - started_));
  w.Key("ready");
  w.Bool(ready_);
  w.Key("draining");
  w.Bool(shutting_down_);
  w.Key("limits_mode");
  w.String(cfg_->limits.mode == core::LimitMode::Shadow ? "shadow" : "enforce");
  w.Key("in_flight");
  w.Uint64(proxy_->active());
  w.Key("buffered_reply_bytes");
  w.Uint64(reply_budget_->used());
  w.Key("upstream");
  w.StartObject();
  w.Key("url");
  w.String(cfg_->upstream.url.c_str());
  w.Key("connections_busy");
  w.Uint64(pool_->busyConnections());
  w.Key("connections_idle");
  w.Uint64(pool_->idleConnections());
  w.Key("waiting_for_connection");
  w.Uint64(pool_->waiting());
  w.EndObject();
  writeStoreStatus(w);
  w.Key("keys");
  w.StartArray();
  for (const auto& [key, snap] : limiter_->snapshots()) {
    w.StartObject();
    w.Key("name");
    const std::string_view shown = core::keyDisplayName(key);  // never the key
    w.String(shown.data(), static_cast<rapidjson::SizeType>(shown.size()));
    w.Key("configured_rate_per_s");
    w.Double(snap.configured_rate);
    w.Key("effective_rate_per_s");
    w.Double(snap.effective_rate);
    w.Key("tokens");
    w.Double(snap.tokens);
    w.Key("burst");
    w.Double(snap.burst);
    w.Key("cooldown_seconds");
    w.Double(seconds(snap.cooldown_remaining));
    w.Key("queue_depth");
    w.Uint64(snap.queue_depth);
    w.Key("tiers");
    w.StartArray();
    for (const core::TierSnapshot& t : snap.tiers) {
      w.StartObject();
      w.Key("name");
      w.String(t.name.c_str());
      w.Key("running");
      w.Uint(t.running);
      w.Key("ceiling");
      w.Uint(t.ceiling);
      w.Key("effective_ceiling");
      w.Uint(t.effective_ceiling);
      w.Key("queued");
      w.Uint64(t.queued);
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
  }
  w.EndArray();
  writeDeferredStatus(w);
  const core::TaskTracker::Stats ts = tasks_->tracker().stats();
  w.Key("tasks");
  w.StartObject();
  w.Key("tracked");
  w.Uint64(ts.tracked);
  w.Key("holding_slots");
  w.Uint64(ts.holding_slots);
  w.Key("cache_entries");
  w.Uint64(ts.cache_entries);
  w.Key("cache_bytes");
  w.Uint64(ts.cache_bytes);
  w.Key("running");
  w.StartArray();
  for (const core::TrackedTaskInfo& t : tasks_->tracker().running()) {
    w.StartObject();
    w.Key("key");
    const std::string_view key_shown = core::keyDisplayName(t.key);
    w.String(key_shown.data(), static_cast<rapidjson::SizeType>(key_shown.size()));
    w.Key("task_id");
    w.String(t.task_id.c_str());
    w.Key("tier");
    w.String(t.tier_name.c_str());
    w.Key("status");
    w.String(t.status.c_str());
    w.Key("age_seconds");
    w.Double(seconds(now - t.created));
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace hiapi::shell
