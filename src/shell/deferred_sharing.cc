// DeferredService and the shared store: the records of configured keys kept in Redis, so that an
// instance whose pod goes away does not take its queued creates with it, and any instance
// answers polls and cancels of their proxy ids. The store's rules are in deferred_share.h.

#include <algorithm>

#include "hiapi/core/proxy_error.h"
#include "hiapi/shell/deferred_service.h"
#include "hiapi/shell/deferred_share.h"
#include "hiapi/shell/metrics.h"

namespace hiapi::shell {
namespace {

// A cancel asked of the instance holding the task is answered once that instance decided (it
// hears of it at its next sweep), or with store_unavailable after this.
constexpr core::Duration kCancelWait = std::chrono::seconds(10);
// Queued records taken from gone instances in one sync at most (the rest at the next ones).
constexpr size_t kTakeAtOnce = 100;

}  // namespace

void DeferredService::shareThrough(RedisStore& store) {
  share_ = std::make_unique<DeferredShare>(store);
}

void DeferredService::share(const std::string& id) {
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr || !shared(*r)) {
    return;
  }
  unshared_.insert(id);
  if (!share_->usable() || sharing_.count(id) > 0) {
    return;  // at the next sweep, or once the write in flight is answered
  }
  const std::string key_id = share_->keyId(authFor(*r));
  if (key_id.empty()) {
    return;
  }
  unshared_.erase(id);
  sharing_.insert(id);
  const core::Duration life = r->state == core::DeferredState::Queued
                                  ? cfg_->deferred.max_age + cfg_->deferred.keep
                                  : cfg_->deferred.keep;
  share_->write(key_id, *r, life,
                [this, id](DeferredShare::Written w, std::optional<core::DeferredRecord> remote) {
                  sharing_.erase(id);
                  switch (w) {
                  case DeferredShare::Written::Mine:
                    if (unshared_.count(id) > 0) {
                      share(id);  // it changed while being written
                    }
                    break;
                  case DeferredShare::Written::Failed:
                    unshared_.insert(id);
                    break;
                  case DeferredShare::Written::Elsewhere:
                    handOver(id);
                    break;
                  case DeferredShare::Written::Ended:
                    if (remote) {
                      adoptEnded(*remote);
                    }
                    break;
                  }
                });
}

void DeferredService::syncShared() {
  if (!share_->usable()) {
    return;
  }
  const std::vector<std::string> pending(unshared_.begin(), unshared_.end());
  for (const std::string& id : pending) {
    share(id);
  }
  if (syncs_ > 0) {
    return;  // the last sync is not answered yet
  }
  for (const core::KeyConfig& k : cfg_->keys) {
    std::vector<std::string> held;
    for (const core::DeferredRecord* r : book_.all()) {
      if (r->state == core::DeferredState::Queued && shared(*r) && r->key == k.name) {
        held.push_back(r->id);
      }
    }
    const size_t total = cfg_->deferred.max_total;
    const size_t per_key = cfg_->deferred.max_per_key;
    const size_t room =
        std::min({kTakeAtOnce, total - std::min(total, book_.queued()),
                  per_key - std::min(per_key, book_.queuedFor(k.name))});
    ++syncs_;
    share_->sync(share_->keyId("Bearer " + k.key.reveal()), held, room,
                 [this, name = k.name](bool ok, DeferredShare::Sync s) {
                   --syncs_;
                   if (!ok) {
                     return;
                   }
                   for (const std::string& id : s.missing) {
                     share(id);
                   }
                   for (const std::string& id : s.lost) {
                     handOver(id);
                   }
                   for (const std::string& id : s.cancel) {
                     cancelHeld(id);  // on its way to HiAPI already: HiAPI's answer is written
                   }
                   for (const core::DeferredRecord& r : s.ended) {
                     adoptEnded(r);
                   }
                   for (core::DeferredRecord& r : s.taken) {
                     takeOver(std::move(r), name);
                   }
                 });
  }
}

void DeferredService::adoptEnded(const core::DeferredRecord& remote) {
  const core::DeferredRecord* r = book_.find(remote.id);
  if (r == nullptr || r->state != core::DeferredState::Queued) {
    return;
  }
  const std::string id = remote.id;
  if (auto it = inflight_.find(id); it != inflight_.end()) {
    if (!proxy_.withdraw(it->second)) {
      return;  // on the wire: HiAPI's answer decides, and is written over the store's
    }
    inflight_.erase(it);
  }
  const int64_t at = remote.ended_ms;
  std::string line;
  switch (remote.state) {
  case core::DeferredState::Queued:
    return;
  case core::DeferredState::Submitted:
    line = core::journalSubmitted(id, remote.task_id, at);
    book_.markSubmitted(id, remote.task_id, at);
    break;
  case core::DeferredState::Failed:
    line = core::journalFailed(id, remote.fail_status, remote.fail_code, remote.fail_message, at);
    book_.markFailed(id, remote.fail_status, remote.fail_code, remote.fail_message, at);
    break;
  case core::DeferredState::Cancelled:
    line = core::journalCancelled(id, at);
    book_.markCancelled(id, at);
    break;
  case core::DeferredState::Expired:
    line = core::journalExpired(id, at);
    book_.markExpired(id, at);
    break;
  }
  append(line);
  retry_at_.erase(id);
  attempts_.erase(id);
  log_.info("deferred create ended at another instance",
            {{"task", id}, {"state", std::string(core::deferredStateName(remote.state))}});
}

void DeferredService::handOver(const std::string& id) {
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr || r->state != core::DeferredState::Queued) {
    return;
  }
  if (auto it = inflight_.find(id); it != inflight_.end()) {
    if (!proxy_.withdraw(it->second)) {
      return;  // on the wire: HiAPI's answer is written over the store's
    }
    inflight_.erase(it);
  }
  log_.info("deferred create held by another instance: left to it",
            {{"task", id}, {"key", r->key}});
  append(core::journalForget(id));
  book_.forget(id);
  retry_at_.erase(id);
  attempts_.erase(id);
  unshared_.erase(id);
}

void DeferredService::takeOver(core::DeferredRecord r, const std::string& key) {
  if (book_.find(r.id) != nullptr || r.state != core::DeferredState::Queued) {
    return;
  }
  r.key = key;
  r.auth.clear();
  const std::string id = r.id;
  const std::string tier = r.tier;
  // Kept in this journal too: should this instance restart, it resumes the record (and the
  // store tells it whether another instance holds it by then).
  if (!append(core::journalAccept(r))) {
    log_.warn("deferred create taken over but not written to the journal", {{"task", id}});
  }
  book_.add(std::move(r));
  if (metrics_ != nullptr) {
    metrics_->deferredOutcome(key, tier, "taken_over");
  }
  log_.info("deferred create taken over from a gone instance",
            {{"task", id}, {"key", key}, {"tier", tier}});
  submit(*book_.find(id));
}

bool DeferredService::lookUpShared(RequestCtx& ctx) {
  if (share_ == nullptr) {
    return false;
  }
  if (!share_->usable()) {
    proxy_.replyProxyError(ctx, core::ProxyError::StoreUnavailable,
                           "task " + ctx.route.task_id +
                               " is not held by this instance, and the shared store that "
                               "would know cannot be reached now");
    return true;
  }
  const uint64_t request = ctx.id;
  share_->lookup(share_->keyId(ctx.authorization), ctx.route.task_id,
                 [this, request](bool ok, std::optional<core::DeferredRecord> r) {
                   RequestCtx* c = proxy_.find(request);
                   if (c == nullptr || c->answered || c->client_gone) {
                     return;
                   }
                   if (!ok) {
                     proxy_.replyProxyError(*c, core::ProxyError::StoreUnavailable);
                     return;
                   }
                   if (!r) {
                     proxy_.replyProxyError(*c, core::ProxyError::TaskNotFound,
                                            "Task not found: no task " + c->route.task_id +
                                                " for this key");
                     return;
                   }
                   found_.emplace(request, std::move(*r));
                   proxy_.resume(request);
                   found_.erase(request);  // served (or gone) by now
                 });
  return true;
}

bool DeferredService::cancelShared(RequestCtx& ctx, const std::string& id) {
  if (share_ == nullptr) {
    return false;
  }
  if (!share_->usable()) {
    proxy_.replyProxyError(ctx, core::ProxyError::StoreUnavailable,
                           "task " + id +
                               " is not held by this instance, and the shared store that "
                               "would know cannot be reached now");
    return true;
  }
  const uint64_t request = ctx.id;
  const std::string key_id = share_->keyId(ctx.authorization);
  share_->cancel(
      key_id, id, cfg_->deferred.keep,
      [this, request, key_id, id](DeferredShare::Cancel c, std::optional<core::DeferredRecord> r) {
        RequestCtx* ctx = proxy_.find(request);
        if (ctx == nullptr || ctx->answered || ctx->client_gone) {
          return;
        }
        switch (c) {
        case DeferredShare::Cancel::Missing:
          proxy_.replyProxyError(*ctx, core::ProxyError::TaskNotFound,
                                 "Task not found: no task " + id + " for this key");
          return;
        case DeferredShare::Cancel::Failed:
          proxy_.replyProxyError(*ctx, core::ProxyError::StoreUnavailable);
          return;
        case DeferredShare::Cancel::Asked:
          cancel_waits_[request] = CancelWait{key_id, id, clock_.now() + kCancelWait};
          return;
        case DeferredShare::Cancel::Cancelled:
          if (r && metrics_ != nullptr) {
            metrics_->deferredOutcome(ctx->key_name, r->tier, "cancelled");
          }
          log_.info("deferred create cancelled in the shared store", {{"task", id}});
          [[fallthrough]];
        case DeferredShare::Cancel::Ended:
          if (r) {
            replyNotQueued(*ctx, *r);
          } else {
            proxy_.replyProxyError(*ctx, core::ProxyError::StoreUnavailable);
          }
          return;
        }
      });
  return true;
}

void DeferredService::checkCancelWaits() {
  const core::MonotonicTime now = clock_.now();
  for (auto it = cancel_waits_.begin(); it != cancel_waits_.end();) {
    const uint64_t request = it->first;
    RequestCtx* ctx = proxy_.find(request);
    if (ctx == nullptr || ctx->answered || ctx->client_gone) {
      it = cancel_waits_.erase(it);
      continue;
    }
    if (now >= it->second.until || !share_->usable()) {
      proxy_.replyProxyError(*ctx, core::ProxyError::StoreUnavailable,
                             "the instance holding task " + it->second.id +
                                 " did not answer the cancel in time; ask again");
      it = cancel_waits_.erase(it);
      continue;
    }
    share_->lookup(it->second.key_id, it->second.id,
                   [this, request](bool ok, std::optional<core::DeferredRecord> r) {
                     auto wait = cancel_waits_.find(request);
                     RequestCtx* c = proxy_.find(request);
                     if (wait == cancel_waits_.end() || c == nullptr || c->answered) {
                       return;
                     }
                     if (ok && r && r->state != core::DeferredState::Queued) {
                       cancel_waits_.erase(wait);
                       replyNotQueued(*c, *r);
                     } else if (ok && !r) {
                       cancel_waits_.erase(wait);
                       proxy_.replyProxyError(*c, core::ProxyError::TaskNotFound);
                     }
                   });
    ++it;
  }
}

}  // namespace hiapi::shell
