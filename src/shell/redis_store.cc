#include "hiapi/shell/redis_store.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include <event2/dns.h>
#include <event2/util.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>
#include <unistd.h>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/key_name.h"
#include "hiapi/shell/event_util.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/tls.h"
#include "redis_conn.h"
#include "redis_internal.h"

namespace hiapi::shell {
RedisStore::RedisStore(event_base* base, const core::Clock& clock, uint64_t seed,
                       const core::StoreConfig& cfg, Logger& log, Metrics* metrics,
                       std::function<void(const std::string&)> pump)
    : base_(base), cfg_(cfg), log_(log), metrics_(metrics), pump_(std::move(pump)),
      clock_(clock), random_(seed) {
  char host[64] = {};
  ::gethostname(host, sizeof host - 1);
  instance_id_ = std::string(host) + ":" + std::to_string(::getpid()) + ":" +
                 std::to_string(static_cast<uint64_t>(random_.uniform() * 1e12));
  budget_sha_ = sha1Hex(kBudgetScript);
  heartbeat_sha_ = sha1Hex(kHeartbeatScript);
  acquire_sha_ = sha1Hex(kAcquireScript);
  renew_sha_ = sha1Hex(kRenewScript);
  durations_sha_ = sha1Hex(kDurationsScript);
  waiting_sha_ = sha1Hex(kWaitingScript);
  timer_ = event_new(base_, -1, EV_PERSIST, &RedisStore::onTimer, this);
  if (metrics_ != nullptr) {
    metrics_->setStoreState(1, true);
  }
}

RedisStore::~RedisStore() {
  closing_ = true;
  conn_.reset();  // its commands' callbacks are dropped, not called
  retired_.reset();
  if (timer_ != nullptr) {
    event_free(timer_);
  }
  if (dns_ != nullptr) {
    evdns_base_free(dns_, 1);
  }
}

bool RedisStore::start(std::string& error) {
  identity_ = KeyIdentity::fromFile(cfg_.key_secret_file, error);
  if (!identity_) {
    error = "store.key_secret_file " + cfg_.key_secret_file + ": " + error;
    return false;
  }
  if (cfg_.tls) {
    try {
      tls_ = std::make_unique<TlsClientContext>(cfg_.ca_file, core::TlsMinVersion::Tls12);
    } catch (const std::exception& e) {
      error = std::string("store.tls: ") + e.what();
      return false;
    }
  }
  const timeval tv = toTimeval(kTick);
  event_add(timer_, &tv);
  resolve();
  return true;
}

core::RateBudgetPtr RedisStore::makeBudget(const std::string& key, double rate, double burst,
                                           core::Duration phase_margin,
                                           core::MonotonicTime now) {
  auto b = std::make_unique<core::SharedBudget>(rate, burst, cfg_.reserve_window, now,
                                                instances_);
  b->setPhaseMargin(phase_margin);
  Entry& e = keys_[key];
  e.budget = b.get();
  if (degraded_ || !connected_) {
    b->onStoreDown(now);
  }
  return b;
}

void RedisStore::bindKey(const std::string& key, std::string_view authorization) {
  auto it = keys_.find(key);
  if (it == keys_.end() || !it->second.redis_id.empty() || !identity_) {
    return;
  }
  it->second.redis_id = keyIdOf(authorization);
  if (connected_ && !degraded_) {
    it->second.budget->onStoreUp(clock_.now());
    if (it->second.slots) {
      it->second.slots->onStoreUp();
    }
  }
}

void RedisStore::adjustSnapshot(const std::string& key, core::Snapshot& snap) const {
  auto it = keys_.find(key);
  if (it == keys_.end() || !it->second.slots) {
    return;
  }
  for (size_t t = 0; t < snap.tiers.size(); ++t) {
    const std::vector<core::SlotId> ids = it->second.slots->placeholderIds(t);
    core::TierSnapshot& tier = snap.tiers[t];
    tier.running -= std::min<uint32_t>(tier.running, static_cast<uint32_t>(ids.size()));
    std::erase_if(tier.leases, [&](const auto& lease) {
      return std::find(ids.begin(), ids.end(), lease.first) != ids.end();
    });
  }
}

void RedisStore::forgetKey(const std::string& key) { keys_.erase(key); }

void RedisStore::afterPump(const std::string& key, core::KeyScheduler& sched) {
  auto it = keys_.find(key);
  if (it == keys_.end()) {
    return;
  }
  Entry& e = it->second;
  if (const double local = e.budget->takeLocalSpent(); local > 0 && metrics_ != nullptr) {
    metrics_->storeTokens(key, "local", local);
  }
  const core::MonotonicTime now = clock_.now();
  if (e.bad_until && now >= *e.bad_until && connected_) {
    e.bad_until.reset();
    e.budget->onStoreUp(now);
    if (e.slots) {
      e.slots->onStoreUp();
    }
  }
  if (!connected_ || e.redis_id.empty() || e.bad_until) {
    return;
  }
  const size_t wanted = sched.tokensWanted(now);
  const std::optional<core::Duration> pause = e.budget->pauseToShare(now);
  const std::optional<double> want = e.budget->reservationToSend(now, wanted);
  const double give = e.budget->surplusToReturn(now, wanted);
  // With nothing to ask or give, a call may still be due to tell the store what is held here.
  if (want || give > 0 || pause || e.budget->heldReportDue(now, entryLife())) {
    reserve(key, e, want.value_or(0), give, pause);
  }
}

void RedisStore::beforePump(const std::string& key, core::KeyScheduler& sched) {
  if (auto it = keys_.find(key); it != keys_.end()) {
    syncSlots(key, it->second, sched);
  }
}

void RedisStore::syncSlots(const std::string& key, Entry& e, core::KeyScheduler& sched) {
  const bool usable = connected_ && !e.redis_id.empty() && !e.bad_until;
  if (!e.slots) {
    e.slots = std::make_unique<core::SharedSlots>(instances_, true);
    if (usable) {
      e.slots->onStoreUp();
    }
  }
  if (e.tier_names.size() != sched.tiers().size()) {
    e.tier_names.clear();
    for (const core::TierConfig& t : sched.tiers().tiers()) {
      e.tier_names.push_back(t.name);
    }
  }
  std::vector<core::SharedSlots::Request> requests;
  const core::MonotonicTime now = clock_.now();
  e.slots->sync(sched, now, requests);
  if (usable && e.slots->needsReconcile()) {
    renewLeases(e);
    e.slots->reconciled();
  }
  for (const core::SharedSlots::Request& r : requests) {
    sendSlots(key, e, r);
  }
  // Creates waiting here for a tier are news for the instances holding its slots: written when
  // they change (at most every kWaitingWriteGap; the heartbeat writes them anyway).
  e.waiting.assign(e.tier_names.size(), 0);
  for (size_t t = 0; t < e.waiting.size(); ++t) {
    e.waiting[t] = sched.waitingCreates(t);
  }
  if (usable && e.waiting != e.waiting_written && now >= e.waiting_write_after) {
    sendWaiting(key, e);
  }
  applyOthersWaiting(e, sched);
}

void RedisStore::applyOthersWaiting(const Entry& e, core::KeyScheduler& sched) const {
  const bool known = connected_ && !e.bad_until && clock_.now() < e.others_until;
  for (size_t t = 0; t < e.tier_names.size(); ++t) {
    size_t n = 0;
    if (known) {
      if (auto it = e.others_waiting.find(e.tier_names[t]); it != e.others_waiting.end()) {
        n = it->second;
      }
    }
    sched.setRemoteWaiting(t, n);
  }
}

void RedisStore::sendWaiting(const std::string& key, Entry& e) {
  if (e.redis_id.empty() || e.tier_names.empty()) {
    return;
  }
  const core::MonotonicTime now = clock_.now();
  const int64_t life = ms(entryLife());
  std::vector<std::string> argv = {"EVALSHA", waiting_sha_, "1", waitingKey(e), instance_id_,
                                   std::to_string(life)};
  for (size_t t = 0; t < e.tier_names.size(); ++t) {
    argv.push_back(e.tier_names[t]);
    argv.push_back(std::to_string(t < e.waiting.size() ? e.waiting[t] : 0));
  }
  e.waiting_written = e.waiting;
  e.waiting_write_after = now + kWaitingWriteGap;
  command(std::move(argv), [this, key, life](redisReply* r) {
    auto it = keys_.find(key);
    if (r == nullptr || it == keys_.end()) {
      return;
    }
    Entry& en = it->second;
    if (r->type != REDIS_REPLY_ARRAY) {
      badEntry(key, en, r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len)
                                                     : "unexpected reply type");
      return;
    }
    std::unordered_map<std::string, size_t> others;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
      const redisReply* name = r->element[i];
      const redisReply* count = r->element[i + 1];
      if (name->type == REDIS_REPLY_STRING && count->type == REDIS_REPLY_INTEGER &&
          count->integer > 0) {
        others[std::string(name->str, name->len)] = static_cast<size_t>(count->integer);
      }
    }
    // Their fields live three heartbeats after they were written: so does what they said.
    en.others_until = clock_.now() + std::chrono::milliseconds(life);
    if (others != en.others_waiting) {
      en.others_waiting = std::move(others);
      pump_(key);
    }
  });
}

void RedisStore::sendSlots(const std::string& key, Entry& e,
                           const core::SharedSlots::Request& r) {
  std::vector<std::string> argv;
  if (r.kind == core::SharedSlots::Request::Release) {
    argv = {"ZREM", slotsKey(e, r.tier)};
    for (core::SharedSlots::LeaseId id : r.leases) {
      argv.push_back(leaseName(id));
    }
    command(std::move(argv), [](redisReply*) {});
    return;
  }
  argv = {"EVALSHA", acquire_sha_, "1", slotsKey(e, r.tier), std::to_string(r.ceiling),
          std::to_string(ms(entryLife()))};
  for (core::SharedSlots::LeaseId id : r.leases) {
    argv.push_back(leaseName(id));
  }
  const bool sent = command(std::move(argv), [this, key, r](redisReply* reply) {
    auto it = keys_.find(key);
    if (it == keys_.end() || !it->second.slots) {
      return;
    }
    Entry& en = it->second;
    if (reply == nullptr) {
      en.slots->onAcquireFailed(r.tier);
      return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_INTEGER) {
      en.slots->onAcquireFailed(r.tier);
      badEntry(key, en, reply->type == REDIS_REPLY_ERROR ? std::string(reply->str, reply->len)
                                                         : "unexpected reply type");
      return;
    }
    const core::Duration retry =
        std::min<core::Duration>(std::chrono::milliseconds(reply->element[1]->integer),
                                 kSlotRetryMax);
    en.slots->onAcquired(r.tier, r.leases, static_cast<size_t>(reply->element[0]->integer),
                         retry, clock_.now());
    pump_(key);
  });
  if (!sent) {
    e.slots->onAcquireFailed(r.tier);
  }
}

void RedisStore::renewLeases(Entry& e) {
  if (!e.slots || e.redis_id.empty()) {
    return;
  }
  for (const auto& [tier, ids] : e.slots->held()) {
    std::vector<std::string> argv = {"EVALSHA", renew_sha_, "1", slotsKey(e, tier),
                                     std::to_string(ms(entryLife()))};
    for (core::SharedSlots::LeaseId id : ids) {
      argv.push_back(leaseName(id));
    }
    command(std::move(argv), [](redisReply*) {});
  }
}

void RedisStore::sendDurations() {
  if (!mine_ || !theirs_) {
    return;
  }
  std::vector<std::string> argv = {"EVALSHA",     durations_sha_, "1", durationsKey(),
                                   instance_id_, std::to_string(ms(kDurationLife))};
  for (const core::NamedDuration& d : mine_()) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d.known.estimate);
    argv.push_back(d.tier);
    argv.push_back(std::to_string(us.count()) + " " + std::to_string(d.known.samples));
  }
  command(std::move(argv), [this](redisReply* r) {
    if (r == nullptr) {
      return;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
      if (metrics_ != nullptr) {
        metrics_->storeError(unusableReason(r));
      }
      return;
    }
    std::vector<core::NamedDuration> theirs;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
      const redisReply* f = r->element[i];
      const redisReply* v = r->element[i + 1];
      if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
        continue;
      }
      const std::string_view field(f->str, f->len);
      const std::string_view value(v->str, v->len);
      const size_t cut = field.rfind('\n');
      const size_t space = value.find(' ');
      int64_t us = 0;
      uint32_t samples = 0;
      if (cut == std::string_view::npos || space == std::string_view::npos ||
          std::from_chars(value.data(), value.data() + space, us).ec != std::errc() ||
          std::from_chars(value.data() + space + 1, value.data() + value.size(), samples).ec !=
              std::errc() ||
          us <= 0) {
        continue;  // not written by this version: skip, as an unknown tier would be
      }
      theirs.push_back({std::string(field.substr(0, cut)),
                        {std::chrono::microseconds(us), samples}});
    }
    theirs_(theirs);
  });
}

void RedisStore::badEntry(const std::string& key, Entry& e, const std::string& text) {
  const bool wrong_type = text.find("WRONGTYPE") != std::string::npos;
  if (metrics_ != nullptr) {
    metrics_->storeError(wrong_type ? "wrong_type" : "reply");
  }
  if (!e.bad_until) {
    log_.warn("shared store: unusable answer for a key; it runs on its local share",
              {{"key", std::string(core::keyDisplayName(key))},
               {"error", text.substr(0, 120)},
               {"retry_in_s", static_cast<int64_t>(ms(kBadKeyRetry) / 1000)}});
  }
  if (text.rfind("NOSCRIPT", 0) == 0) {
    handshake();  // the scripts were flushed: load them again
  }
  const core::MonotonicTime now = clock_.now();
  e.bad_until = now + kBadKeyRetry;
  e.budget->onStoreDown(now);
  if (e.slots) {
    e.slots->onStoreDown();
  }
  pump_(key);
}

void RedisStore::reserve(const std::string& key, Entry& e, double want, double give,
                         std::optional<core::Duration> pause) {
  const double rate = e.budget->rate();
  const double burst = e.budget->burst();
  // The bucket refills in burst / rate; a day's idle key costs nothing to forget.
  const int64_t ttl = std::max<int64_t>(60'000, static_cast<int64_t>(burst / rate * 2000));
  if (give > 0 && metrics_ != nullptr) {
    metrics_->storeTokens(key, "returned", give);
  }
  const core::MonotonicTime now = clock_.now();
  const double held = e.budget->held();
  const bool sent = command(
      {"EVALSHA", budget_sha_, "1", bucketKey(e), num(rate), num(burst), num(want), num(give),
       std::to_string(pause ? std::max<int64_t>(1, ms(*pause)) : 0), std::to_string(ttl),
       num(e.budget->marginTokens()), num(e.budget->missingBucketTokens(now)), instance_id_,
       num(held), std::to_string(ms(entryLife()))},
      [this, key, want](redisReply* r) { onBudgetReply(key, want, r); });
  if (sent) {
    e.budget->onHeldSent(held, now);
  }
  if (!sent && want > 0) {
    e.budget->onStoreDown(now);
  }
}

void RedisStore::onBudgetReply(const std::string& key, double asked, redisReply* r) {
  auto it = keys_.find(key);
  if (it == keys_.end()) {
    return;  // forgotten meanwhile; the tokens come back to the bucket as it refills
  }
  Entry& e = it->second;
  const core::MonotonicTime now = clock_.now();
  if (r == nullptr) {
    e.budget->onStoreDown(now);  // the connection went; lost() has pumped every key
    return;
  }
  const bool ok = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
                  r->element[0]->type == REDIS_REPLY_INTEGER &&
                  r->element[1]->type == REDIS_REPLY_INTEGER &&
                  r->element[2]->type == REDIS_REPLY_INTEGER;
  if (!ok) {
    if (asked > 0) {
      e.budget->onReserved(0, core::Duration::zero(), now);  // nothing in flight any more
    }
    badEntry(key, e, r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len)
                                                  : "unexpected reply type");
    return;
  }
  const double granted = static_cast<double>(r->element[0]->integer) / 1e6;
  const core::Duration retry = std::chrono::microseconds(r->element[1]->integer);
  const core::Duration pause_left = std::chrono::microseconds(r->element[2]->integer);
  if (asked > 0) {
    e.budget->onReserved(granted, retry, now);
    if (metrics_ != nullptr && granted > 0) {
      metrics_->storeTokens(key, "granted", granted);
    }
  }
  if (pause_left > core::Duration::zero()) {
    e.budget->onSharedPause(now + pause_left);
  }
  pump_(key);
}

}  // namespace hiapi::shell
