#include "hiapi/shell/daemon.h"

#include <csignal>
#include <cstdio>
#include <fstream>

#include "hiapi/shell/limiter.h"
#include "hiapi/shell/task_service.h"
#include "hiapi/shell/proxy_server.h"
#include "hiapi/shell/upstream_pool.h"

namespace hiapi::shell {

Daemon::Daemon(DaemonOptions opts, core::ConfigSharedPtr cfg, Logger& log)
    : opts_(std::move(opts)), cfg_(std::move(cfg)), log_(log) {}

Daemon::~Daemon() {
  tasks_.reset();
  proxy_.reset();
  limiter_.reset();
  pool_.reset();
  for (event* e : {sigterm_, sigint_, sighup_, drain_tick_}) {
    if (e != nullptr) {
      event_free(e);
    }
  }
  if (base_ != nullptr) {
    event_base_free(base_);
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
    f << "admin=0\n";
  }
  return std::rename(tmp.c_str(), opts_.port_file.c_str()) == 0;
}

int Daemon::run() {
  std::signal(SIGPIPE, SIG_IGN);
  base_ = event_base_new();
  if (base_ == nullptr) {
    log_.error("event_base_new failed");
    return 1;
  }
  try {
    pool_ = std::make_unique<UpstreamPool>(base_, cfg_->upstream, log_);
  } catch (const std::exception& e) {
    log_.error("cannot set up the upstream", {{"error", e.what()}});
    return 1;
  }
  proxy_ = std::make_unique<ProxyServer>(base_, cfg_, *pool_, log_);
  limiter_ = std::make_unique<Limiter>(base_, cfg_, log_);
  proxy_->setAdmission(limiter_.get());
  tasks_ = std::make_unique<TaskService>(base_, cfg_, *limiter_, *proxy_, log_);
  proxy_->setPollHook(tasks_.get());
  limiter_->on_task_created = [this](const RequestCtx& ctx, const std::string& task_id) {
    tasks_->onCreated(ctx, task_id);
  };
  limiter_->on_lease_expired = [this](const std::string& key, uint64_t slot) {
    tasks_->onLeaseExpired(key, slot);
  };
  tasks_->restore();
  if (!proxy_->listen()) {
    return 1;
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
  if (!writePortFile()) {
    log_.error("cannot write the port file", {{"path", opts_.port_file}});
    return 1;
  }
  log_.info("listening", {{"address", cfg_->listen.address},
                          {"port", proxy_->port()},
                          {"upstream", cfg_->upstream.url},
                          {"config", opts_.config_path}});
  event_base_dispatch(base_);
  tasks_->save();
  log_.info("stopped", {{"aborted", aborted_ ? "true" : "false"}});
  return 0;
}

void Daemon::onSignal(evutil_socket_t sig, short, void* arg) {
  auto* self = static_cast<Daemon*>(arg);
  if (sig == SIGHUP) {
    self->reload();
    return;
  }
  self->beginShutdown(static_cast<int>(sig));
}

void Daemon::reload() {
  log_.info("reload requested", {{"config", opts_.config_path}});
  try {
    auto next = std::make_shared<const core::Config>(core::loadConfig(opts_.config_path));
    log_.setFormat(next->log.format);
    log_.setLevel(next->log.level);
    proxy_->setConfig(next);
    limiter_->reconfigure(next);
    tasks_->reconfigure(next);
    cfg_ = next;
    log_.info("reload ok", {{"summary", cfg_->summary()}});
  } catch (const core::ConfigError& e) {
    log_.error("reload failed, keeping the running configuration", {{"error", e.what()}});
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
  log_.info("shutting down: draining", {{"signal", sig}, {"in_flight", proxy_->active()}});
  proxy_->stopAccepting();
  drain_deadline_ = core::MonotonicClock::now() + cfg_->drain_timeout;
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
    event_base_loopexit(self->base_, &flush);
    return;
  }
  if (core::MonotonicClock::now() >= self->drain_deadline_ && !self->aborted_) {
    self->aborted_ = true;
    self->log_.warn("drain timeout: answering the rest with 503",
                    {{"in_flight", self->proxy_->active()}});
    self->proxy_->abortPending();
  }
}

}  // namespace hiapi::shell
