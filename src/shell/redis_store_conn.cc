// The shared store's connection: resolving, connecting, the handshake, reconnecting with
// backoff, heartbeats and the command pipeline with its timeout (see redis_store.h).

#include <algorithm>

#include <event2/dns.h>
#include <event2/util.h>
#include <hiredis/hiredis.h>

#include "hiapi/core/http_rules.h"
#include "hiapi/shell/event_util.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/tls.h"
#include "redis_conn.h"
#include "redis_internal.h"

namespace hiapi::shell {

// ---- connection ---------------------------------------------------------------------------------

void RedisStore::resolve() {
  connect_started_ = clock_.now();
  reconnect_at_.reset();
  in6_addr a6{};
  in_addr a4{};
  if (inet_pton(AF_INET, cfg_.host.c_str(), &a4) == 1 ||
      inet_pton(AF_INET6, cfg_.host.c_str(), &a6) == 1) {
    connectTo(cfg_.host);
    return;
  }
  if (dns_ == nullptr) {
    dns_ = evdns_base_new(base_, EVDNS_BASE_INITIALIZE_NAMESERVERS);
  }
  if (dns_ == nullptr) {
    lost("connect", "no DNS resolver (resolv.conf)");
    return;
  }
  evutil_addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  evdns_getaddrinfo(dns_, cfg_.host.c_str(), nullptr, &hints, &RedisStore::onResolved, this);
}

void RedisStore::onResolved(int err, evutil_addrinfo* res, void* arg) {
  auto* self = static_cast<RedisStore*>(arg);
  if (err == EVUTIL_EAI_CANCEL) {
    return;  // the store is going away
  }
  if (err != 0 || res == nullptr) {
    self->lost("connect", std::string("cannot resolve the host: ") + evutil_gai_strerror(err));
    return;
  }
  char ip[INET6_ADDRSTRLEN] = {};
  const void* addr = res->ai_family == AF_INET6
                         ? static_cast<const void*>(
                               &reinterpret_cast<sockaddr_in6*>(res->ai_addr)->sin6_addr)
                         : &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  evutil_inet_ntop(res->ai_family, addr, ip, sizeof ip);
  evutil_freeaddrinfo(res);
  self->connectTo(ip);
}

void RedisStore::connectTo(const std::string& ip) {
  retired_.reset();
  SSL* ssl = nullptr;
  if (tls_) {
    std::string error;
    // The certificate must name the host as configured (a name, or the address itself).
    ssl = tls_->newSsl(cfg_.host, error);
    if (ssl == nullptr) {
      lost("connect", "TLS: " + error);
      return;
    }
  }
  transport_up_ = false;
  conn_ = std::make_unique<RedisConn>(
      base_, [this] { onConnected(); },
      [this](const std::string& why) { onConnectionFailed(why); });
  std::string error;
  if (!conn_->connect(ip, cfg_.port, ssl, error)) {
    lost("connect", error);
  }
}

void RedisStore::onConnected() {
  transport_up_ = true;
  handshake();
}

void RedisStore::onConnectionFailed(const std::string& why) {
  if (closing_) {
    return;
  }
  lost(transport_up_ ? "disconnect" : "connect", (tls_ ? "TLS: " : "") + why);
}

void RedisStore::handshake() {
  if (!cfg_.password.empty()) {
    command({"AUTH", cfg_.password.reveal()}, [this](redisReply* r) {
      if (r != nullptr && r->type == REDIS_REPLY_ERROR) {
        if (metrics_ != nullptr) {
          metrics_->storeError("auth");
        }
        // Redis' own words (WRONGPASS, or "no password is set") name the cause; they never
        // contain the password.
        lost("auth", "authentication refused (check store.password): " +
                         std::string(r->str, std::min<size_t>(r->len, 120)));
      }
    });
  }
  if (cfg_.db != 0) {
    command({"SELECT", std::to_string(cfg_.db)}, [](redisReply*) {});
  }
  command({"SCRIPT", "LOAD", kBudgetScript}, [](redisReply*) {});
  command({"SCRIPT", "LOAD", kAcquireScript}, [](redisReply*) {});
  command({"SCRIPT", "LOAD", kRenewScript}, [](redisReply*) {});
  command({"SCRIPT", "LOAD", kDurationsScript}, [](redisReply*) {});
  command({"SCRIPT", "LOAD", kWaitingScript}, [](redisReply*) {});
  command({"SCRIPT", "LOAD", kHeartbeatScript}, [this](redisReply* r) {
    if (r != nullptr && r->type == REDIS_REPLY_STRING) {
      ready();
    } else if (r != nullptr && conn_ != nullptr) {
      lost("reply", r->type == REDIS_REPLY_ERROR ? std::string(r->str, std::min<size_t>(r->len, 120))
                                                 : "unexpected reply to SCRIPT LOAD");
    }
  });
}

void RedisStore::ready() {
  if (connected_) {
    return;
  }
  connected_ = true;
  // The other instances that lost the store retry on backoffs like this one's: each should be
  // back within the current backoff, and counted within a heartbeat after that.
  settle_until_ = clock_.now() + backoffBase(attempts_) + cfg_.heartbeat_interval;
  attempts_ = 0;
  next_heartbeat_ = clock_.now();
  heartbeat();
  setDegraded(false, "");
}

void RedisStore::lost(std::string_view reason, const std::string& detail) {
  if (metrics_ != nullptr && reason != "auth") {
    metrics_->storeError(reason);
  }
  connected_ = false;
  sent_.clear();
  if (conn_ != nullptr) {
    conn_->close();  // its commands' callbacks are not called any more
    retired_ = std::move(conn_);
  }
  setDegraded(true, std::string(reason) + ": " + detail);
  scheduleReconnect();
}

void RedisStore::scheduleReconnect() {
  if (reconnect_at_) {
    return;
  }
  // Jittered exponential backoff: instances that lost the same Redis do not all come back in
  // the same millisecond.
  const double base = core::toSeconds(backoffBase(attempts_));
  ++attempts_;
  reconnect_at_ = clock_.now() + core::fromSeconds(base * (0.5 + 0.5 * random_.uniform()));
}

void RedisStore::setDegraded(bool degraded, const std::string& why) {
  const core::MonotonicTime now = clock_.now();
  if (degraded) {
    last_error_ = why;
  }
  if (degraded == degraded_ && announced_) {
    return;
  }
  // The first outcome is announced either way: a store unreachable from the start says so.
  announced_ = true;
  degraded_ = degraded;
  if (degraded) {
    log_.warn("shared store unusable: each key runs on its local share until it is back",
              {{"store", cfg_.host + ":" + std::to_string(cfg_.port)}, {"error", why},
               {"instances", static_cast<int64_t>(instances_)}});
  } else {
    log_.info("shared store connected: keys share one budget again",
              {{"store", cfg_.host + ":" + std::to_string(cfg_.port)},
               {"instances", static_cast<int64_t>(instances_)}});
  }
  if (metrics_ != nullptr) {
    metrics_->setStoreState(instances_, degraded_);
  }
  for (auto& [key, e] : keys_) {
    if (degraded) {
      e.budget->onStoreDown(now);
      if (e.slots) {
        e.slots->onStoreDown();
      }
    } else if (!e.redis_id.empty() && !e.bad_until) {
      e.budget->onStoreUp(now, settle_until_ && now < *settle_until_ ? *settle_until_ - now
                                                                      : core::Duration::zero());
      if (e.slots) {
        e.slots->onStoreUp();  // the next pump writes the running tasks' leases again
      }
    }
  }
  // Pumped after the loop: a pump may submit and create keys.
  std::vector<std::string> names;
  for (const auto& [key, e] : keys_) {
    names.push_back(key);
  }
  for (const std::string& k : names) {
    pump_(k);
  }
}

void RedisStore::heartbeat() {
  for (auto& [key, e] : keys_) {
    if (!e.bad_until) {
      renewLeases(e);
      sendWaiting(key, e);
    }
  }
  sendDurations();
  const int64_t life = ms(entryLife());
  command({"EVALSHA", heartbeat_sha_, "1", instancesKey(), instance_id_, std::to_string(life)},
          [this](redisReply* r) {
            if (r == nullptr) {
              return;
            }
            if (r->type != REDIS_REPLY_INTEGER) {
              if (metrics_ != nullptr) {
                metrics_->storeError(unusableReason(r));
              }
              return;
            }
            const uint32_t n = static_cast<uint32_t>(std::max<long long>(1, r->integer));
            const core::MonotonicTime now = clock_.now();
            if (settle_until_ && (now >= *settle_until_ || n >= instances_)) {
              settle_until_.reset();
              for (auto& [key, e] : keys_) {
                e.budget->endSettling();
              }
            }
            // While settling the count only grows: an instance not back yet is still spending
            // its local share, sized by the count from before the outage.
            if (n != instances_ && !(settle_until_ && n < instances_)) {
              instances_ = n;
              for (auto& [key, e] : keys_) {
                e.budget->setInstances(n, now);
                if (e.slots) {
                  e.slots->setInstances(n);
                }
              }
            }
            if (metrics_ != nullptr) {
              metrics_->setStoreState(instances_, degraded_);
            }
          });
}

void RedisStore::onTimer(evutil_socket_t, short, void* arg) { static_cast<RedisStore*>(arg)->tick(); }

void RedisStore::tick() {
  retired_.reset();
  const core::MonotonicTime now = clock_.now();
  if (reconnect_at_ && now >= *reconnect_at_) {
    resolve();
    return;
  }
  if (conn_ != nullptr && !connected_ && now - connect_started_ > cfg_.connect_timeout) {
    lost("timeout", "no connection within store.connect_timeout");
    return;
  }
  if (!sent_.empty() && now - sent_.front() > cfg_.command_timeout) {
    lost("timeout", "no answer within store.command_timeout");
    return;
  }
  if (!connected_) {
    return;
  }
  if (now >= next_heartbeat_) {
    next_heartbeat_ = now + cfg_.heartbeat_interval;
    heartbeat();
  }
  // Unspent tokens of keys that went quiet go back to the shared bucket; a full tier is asked
  // again when the store said to wait (a slot another instance frees is not announced); the
  // store hears again what a key holds when its figure went stale or is about to expire.
  std::vector<std::string> idle;
  for (const auto& [key, e] : keys_) {
    if (e.budget->held() > 0.0 || (e.slots && e.slots->wantsLeases(now)) ||
        e.budget->heldReportDue(now, entryLife())) {
      idle.push_back(key);
    }
  }
  for (const std::string& k : idle) {
    pump_(k);
  }
}

bool RedisStore::command(std::vector<std::string> argv, std::function<void(redisReply*)> done) {
  if (conn_ == nullptr) {
    return false;
  }
  const core::MonotonicTime sent = clock_.now();
  const bool queued = conn_->command(argv, [this, sent, done = std::move(done)](redisReply* r) {
    if (!sent_.empty()) {
      sent_.pop_front();
    }
    if (r != nullptr && metrics_ != nullptr) {
      metrics_->storeRoundTrip(core::toSeconds(clock_.now() - sent));
    }
    done(r);
  });
  if (!queued) {
    return false;
  }
  sent_.push_back(sent);
  ++commands_;
  return true;
}

bool RedisStore::eval(const char* script, const std::vector<std::string>& keys,
                      const std::vector<std::string>& args, std::function<void(redisReply*)> done) {
  if (!connected_) {
    return false;
  }
  std::vector<std::string> argv = {"EVAL", script, std::to_string(keys.size())};
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  return command(std::move(argv), std::move(done));
}

std::string RedisStore::keyIdOf(std::string_view authorization) const {
  if (!identity_) {
    return {};
  }
  const std::optional<std::string> token = core::bearerToken(authorization);
  return identity_->nameOf(token ? *token : std::string(authorization));
}

void RedisStore::unusableReply(std::string_view what, const redisReply* r) {
  if (metrics_ != nullptr) {
    metrics_->storeError(r != nullptr ? unusableReason(r) : "reply");
  }
  std::string text = r == nullptr ? "no reply"
                     : r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STATUS
                         ? std::string(r->str, r->len).substr(0, 120)
                         : "reply of type " + std::to_string(r->type);
  log_.warn("shared store: unusable answer", {{"for", std::string(what)}, {"error", text}});
}

RedisStore::Status RedisStore::status() const {
  return Status{connected_, degraded_, instances_, degraded_ ? last_error_ : "", commands_};
}

}  // namespace hiapi::shell
