// The daemon's part of the shared store: creating it and its /status object.

#include <random>

#include "hiapi/shell/daemon.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/redis_store.h"

namespace hiapi::shell {

bool Daemon::startStore() {
  if (cfg_->store.kind != core::StoreKind::Redis) {
    return true;
  }
  store_ = std::make_unique<RedisStore>(base_, clock_, std::random_device{}(), cfg_->store, log_,
                                        metrics_.get(), [this](const std::string& key) {
                                          if (limiter_) {
                                            limiter_->pumpKey(key);
                                          }
                                        });
  std::string error;
  if (!store_->start(error)) {
    log_.error("cannot start the shared store", {{"error", error}});
    store_.reset();
    return false;
  }
  limiter_->setStore(store_.get());
  log_.info("shared store: keys share their budget through Redis",
            {{"store", cfg_->store.host + ":" + std::to_string(cfg_->store.port)},
             {"key_prefix", cfg_->store.key_prefix}, {"tls", cfg_->store.tls}});
  return true;
}

bool Daemon::storeChanged(const core::StoreConfig& next, const core::StoreConfig& running) {
  return next.kind != running.kind || next.url != running.url ||
         next.password.reveal() != running.password.reveal() ||
         next.tls != running.tls || next.ca_file != running.ca_file ||
         next.key_prefix != running.key_prefix || next.key_secret_file != running.key_secret_file ||
         next.connect_timeout != running.connect_timeout ||
         next.command_timeout != running.command_timeout ||
         next.heartbeat_interval != running.heartbeat_interval ||
         next.reserve_window != running.reserve_window;
}

void Daemon::writeStoreStatus(rapidjson::Writer<rapidjson::StringBuffer>& w) const {
  w.Key("store");
  w.StartObject();
  w.Key("kind");
  w.String(store_ ? "redis" : "local");
  if (store_) {
    const RedisStore::Status s = store_->status();
    w.Key("connected");
    w.Bool(s.connected);
    w.Key("degraded");
    w.Bool(s.degraded);
    w.Key("instances");
    w.Uint(s.instances);
    w.Key("round_trips");
    w.Uint64(s.commands);
    if (!s.last_error.empty()) {
      w.Key("error");
      w.String(s.last_error.c_str());
    }
  }
  w.EndObject();
}

}  // namespace hiapi::shell
