#include "hiapi/shell/daemon.h"
#include "hiapi/shell/redis_store.h"
#include "hiapi/shell/deferred_service.h"

#include <csignal>
#include <cstdio>
#include <fstream>
#include <random>

#include <sys/resource.h>

#include <systemd/sd-daemon.h>

#include "hiapi/core/config_reload.h"
#include "hiapi/core/http_rules.h"
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

void Daemon::prepareProcess() {
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
}

bool Daemon::createEventBase() {
  // The changelist coalesces the read/write interest evhttp turns on and off several times per
  // request into at most one epoll_ctl per descriptor and loop turn (about six per request
  // without it).
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
    return false;
  }
  return true;
}

bool Daemon::createServer() {
  metrics_ = std::make_unique<Metrics>();
  try {
    pool_ = std::make_unique<UpstreamPool>(base_, clock_, cfg_->upstream, log_);
  } catch (const std::exception& e) {
    log_.error("cannot set up the upstream", {{"error", e.what()}});
    return false;
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
  return true;
}

bool Daemon::createLimits() {
  limiter_ = std::make_unique<Limiter>(*timers_, random_, cfg_, log_, metrics_.get());
  if (!startStore()) {
    return false;
  }
  proxy_->setAdmission(limiter_.get());
  tasks_ = std::make_unique<TaskService>(*timers_, cfg_, *limiter_, *proxy_, log_, metrics_.get());
  proxy_->setPollHook(tasks_.get());
  if (store_) {
    store_->shareDurations([this] { return tasks_->tracker().knownDurations(); },
                           [this](const std::vector<core::NamedDuration>& others) {
                             tasks_->adoptDurations(others);
                           });
  }
  limiter_->on_task_created = [this](const RequestCtx& ctx, const std::string& task_id) {
    tasks_->onCreated(ctx, task_id);
  };
  limiter_->on_lease_expired = [this](const std::string& key, uint64_t slot) {
    tasks_->onLeaseExpired(key, slot);
  };
  proxy_->on_finished = [this](const RequestCtx& ctx, int status) { countFinished(ctx, status); };
  deferred_ = std::make_unique<DeferredService>(*timers_, random_, cfg_, *proxy_, *limiter_,
                                                *tasks_, log_, metrics_.get());
  proxy_->setDeferHook(deferred_.get());
  if (store_) {
    deferred_->shareThrough(*store_);
  }
  tasks_->on_task_ended = [this](const std::string& key, const std::string& task_id) {
    deferred_->taskEnded(key, task_id);
  };
  return true;
}

void Daemon::countFinished(const RequestCtx& ctx, int status) {
  if (ctx.internal) {
    return;
  }
  const std::string_view key =
      ctx.key_name.empty() ? std::string_view("none") : std::string_view(ctx.key_name);
  metrics_->clientResponse(key, core::routeName(ctx.route.kind), status);
  metrics_->clientRequest(core::routeName(ctx.route.kind), seconds(clock_.now() - ctx.received),
                          ctx.bytes_in, ctx.bytes_out);
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
}

bool Daemon::startServices() {
  declareKeys();
  tasks_->restore();
  if (std::string error; !deferred_->start(&error)) {
    log_.error("cannot use the deferred journal", {{"error", error}});
    return false;
  }
  return proxy_->listen();
}

bool Daemon::startAdmin() {
  if (!cfg_->admin.enabled) {
    return true;
  }
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
    return false;
  }
  return true;
}

bool Daemon::installSignals() {
  sigterm_ = evsignal_new(base_, SIGTERM, &Daemon::onSignal, this);
  sigint_ = evsignal_new(base_, SIGINT, &Daemon::onSignal, this);
  sighup_ = evsignal_new(base_, SIGHUP, &Daemon::onSignal, this);
  for (event* e : {sigterm_, sigint_, sighup_}) {
    if (e == nullptr || event_add(e, nullptr) != 0) {
      log_.error("cannot install signal handlers");
      return false;
    }
  }
  uint64_t watchdog_usec = 0;
  if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
    watchdog_ = event_new(base_, -1, EV_PERSIST, &Daemon::onWatchdog, this);
    const timeval tv{static_cast<time_t>(watchdog_usec / 2 / 1'000'000),
                     static_cast<suseconds_t>((watchdog_usec / 2) % 1'000'000)};
    event_add(watchdog_, &tv);
  }
  return true;
}

int Daemon::run() {
  prepareProcess();
  started_ = clock_.now();
  {
    std::string text, error;
    if (readRegularFile(opts_.config_path, text, error) == ReadFileResult::Ok) {
      config_sections_ = core::configSections(text);
    }
  }
  // Each step logs its own failure; the order is the order of dependence.
  if (!createEventBase() || !createServer() || !createLimits() || !startServices() ||
      !startAdmin() || !installSignals()) {
    return 1;
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

}  // namespace hiapi::shell
