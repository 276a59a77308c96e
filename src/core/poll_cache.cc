#include "hiapi/core/poll_cache.h"

#include <algorithm>
#include <memory>

namespace hiapi::core {

uint64_t PollCache::cost(const CachedReply& reply) {
  constexpr uint64_t kReplyOverhead = 128;
  constexpr uint64_t kHeaderOverhead = 32;
  uint64_t bytes = kReplyOverhead + reply.body.size();
  for (const auto& [name, value] : reply.headers) {
    bytes += kHeaderOverhead + name.size() + value.size();
  }
  return bytes;
}

Duration PollCache::age(const TaskRecord& r, MonotonicTime now) {
  return std::max(Duration::zero(), Duration(now - r.reply_at));
}

void PollCache::store(TaskRecord& r, const CachedReply& reply, MonotonicTime now,
                      std::string status, bool terminal, uint64_t max_bytes) {
  drop(r);
  const uint64_t bytes = cost(reply);
  if (bytes > max_bytes) {
    return;
  }
  r.reply = std::make_shared<const CachedReply>(reply);
  r.reply_at = now;
  r.reply_bytes = bytes;
  r.reply_terminal = terminal;
  r.reply_status = std::move(status);
  bytes_ += bytes;
  ++entries_;
}

void PollCache::drop(TaskRecord& r) {
  if (r.reply) {
    bytes_ -= r.reply_bytes;
    --entries_;
  }
  r.reply.reset();
  r.reply_bytes = 0;
  r.reply_status.clear();
  r.reply_terminal = false;
}

PollDecision PollCache::begin(TaskRecord& r, uint64_t waiter, bool fresh, MonotonicTime now) {
  PollDecision out;
  if (fresh && r.reply) {
    out.action = PollAction::Hit;
    out.reply = r.reply;
    out.age = age(r, now);
    return out;
  }
  if (std::find(r.waiters.begin(), r.waiters.end(), waiter) == r.waiters.end()) {
    r.waiters.push_back(waiter);
  }
  if (r.in_flight) {
    out.action = PollAction::Join;
    return out;
  }
  r.in_flight = true;
  r.last_upstream_poll = std::max(r.last_upstream_poll, now);
  out.action = PollAction::Fetch;
  return out;
}

std::vector<uint64_t> PollCache::finish(TaskRecord& r) {
  std::vector<uint64_t> waiters = std::move(r.waiters);
  r.waiters.clear();
  r.in_flight = false;
  return waiters;
}

bool PollCache::cancel(TaskRecord& r, uint64_t waiter) {
  auto it = std::find(r.waiters.begin(), r.waiters.end(), waiter);
  if (it == r.waiters.end()) {
    return false;
  }
  r.waiters.erase(it);
  return true;
}

uint64_t PollCache::enforceBounds(TaskRegistry& registry, size_t max_records,
                                  uint64_t max_bytes) {
  auto over = [&] { return registry.size() > max_records || bytes_ > max_bytes; };
  uint64_t evictions = 0;
  const TaskRegistry::LruList& lru = registry.lru();
  for (auto it = lru.begin(); it != lru.end() && over();) {
    TaskRecord& r = **it;
    ++it;  // r may be erased below
    if (r.in_flight || !r.waiters.empty()) {
      continue;  // someone waits on it
    }
    if (r.slot) {
      // The slot record must survive; only its reply may go, and only for the byte bound.
      if (r.reply && bytes_ > max_bytes) {
        drop(r);
        ++evictions;
      }
      continue;
    }
    drop(r);
    registry.erase(r);
    ++evictions;
  }
  return evictions;
}

}  // namespace hiapi::core
