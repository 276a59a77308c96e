#include "hiapi/core/admission_queue.h"

#include <algorithm>

namespace hiapi::core {

const char* priorityName(Priority p) {
  switch (p) {
    case Priority::Retry: return "retry";
    case Priority::Poll: return "poll";
    case Priority::Create: return "create";
    case Priority::Other: return "other";
    case Priority::Background: return "background";
  }
  return "other";
}

const char* routeKindName(RouteKind r) {
  switch (r) {
    case RouteKind::Create: return "create";
    case RouteKind::Poll: return "poll";
    case RouteKind::List: return "list";
    case RouteKind::Other: return "other";
  }
  return "other";
}

size_t AdmissionQueue::classOf(Priority p) {
  switch (p) {
    case Priority::Retry: return 0;
    case Priority::Poll:
    case Priority::Create:
    case Priority::Other: return 1;
    case Priority::Background: return 2;
  }
  return 1;
}

AdmissionQueue::AdmissionQueue(size_t max_size, size_t max_per_client)
    : max_size_(std::max<size_t>(max_size, 1)), max_per_client_(max_per_client) {}

void AdmissionQueue::setLimits(size_t max_size, size_t max_per_client) {
  max_size_ = std::max<size_t>(max_size, 1);
  max_per_client_ = max_per_client;
}

size_t AdmissionQueue::laneSize(std::optional<size_t> lane) const {
  auto it = per_lane_.find(lane);
  return it == per_lane_.end() ? 0 : it->second;
}

size_t AdmissionQueue::clientSize(const std::string& client) const {
  auto it = per_client_.find(client);
  return it == per_client_.end() ? 0 : it->second;
}

const QueueEntry* AdmissionQueue::find(uint64_t id) const {
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second.entry;
}

std::optional<MonotonicTime> AdmissionQueue::nextDeadline() const {
  if (by_deadline_.empty()) {
    return std::nullopt;
  }
  return by_deadline_.begin()->first;
}

EnqueueResult AdmissionQueue::push(QueueEntry entry) {
  if (entries_.count(entry.id) != 0) {
    return EnqueueResult::DuplicateId;
  }
  if (entries_.size() >= max_size_) {
    return EnqueueResult::QueueFull;
  }
  if (max_per_client_ != 0 && clientSize(entry.client) >= max_per_client_) {
    return EnqueueResult::ClientFull;
  }
  link(std::move(entry));
  return EnqueueResult::Queued;
}

void AdmissionQueue::link(QueueEntry entry) {
  entry.seq = next_seq_++;
  PriorityClass& cls = classes_[classOf(entry.priority)];
  ClientQueue& cq = cls.clients[entry.client];
  if (cq.count == 0) {
    cq.tag = cq.last_served ? std::max(cls.vtime, *cq.last_served + 1) : cls.vtime;
    cq.activation = entry.seq;
    cls.order.emplace(cq.tag, cq.activation, entry.client);
    ++cls.active;
  }
  std::list<uint64_t>& lane = cq.lanes[LaneKey{entry.priority, entry.lane}];
  lane.push_back(entry.id);
  ++cq.count;
  ++cls.count;
  ++per_priority_[static_cast<size_t>(entry.priority)];
  ++per_client_[entry.client];
  ++per_lane_[entry.lane];
  by_deadline_.emplace(entry.deadline, entry.id);
  if (entry.priority == Priority::Background) {
    background_by_until_.emplace(entry.background_until, entry.id);
    if (entry.lane && entry.unblock_at != MonotonicTime::max()) {
      background_by_lane_.emplace(*entry.lane, entry.unblock_at, entry.id);
    }
  }
  const uint64_t id = entry.id;
  entries_.emplace(id, Stored{std::move(entry), std::prev(lane.end())});
}

void AdmissionQueue::unlink(Stored& stored) {
  const QueueEntry& e = stored.entry;
  PriorityClass& cls = classes_[classOf(e.priority)];
  auto cit = cls.clients.find(e.client);
  ClientQueue& cq = cit->second;
  auto lit = cq.lanes.find(LaneKey{e.priority, e.lane});
  lit->second.erase(stored.pos);
  if (lit->second.empty()) {
    cq.lanes.erase(lit);
  }
  --cq.count;
  --cls.count;
  --per_priority_[static_cast<size_t>(e.priority)];
  if (cq.count == 0) {
    cls.order.erase(OrderKey{cq.tag, cq.activation, e.client});
    --cls.active;
    if (!cq.last_served) {
      cls.clients.erase(cit);  // never served: nothing to remember
    }
  }
  if (--per_client_[e.client] == 0) {
    per_client_.erase(e.client);
  }
  if (--per_lane_[e.lane] == 0) {
    per_lane_.erase(e.lane);
  }
  by_deadline_.erase({e.deadline, e.id});
  if (e.priority == Priority::Background) {
    background_by_until_.erase({e.background_until, e.id});
    if (e.lane) {
      background_by_lane_.erase({*e.lane, e.unblock_at, e.id});
    }
  }
}

size_t AdmissionQueue::promoteBackground(MonotonicTime now, Priority to) {
  size_t moved = 0;
  while (!background_by_until_.empty() && background_by_until_.begin()->first <= now) {
    promote(background_by_until_.begin()->second, to);  // unlink() drops it from the index
    ++moved;
  }
  return moved;
}

size_t AdmissionQueue::promoteBackgroundOnLane(size_t lane, MonotonicTime now, Priority to) {
  size_t moved = 0;
  for (auto it = background_by_lane_.lower_bound({lane, MonotonicTime::min(), 0});
       it != background_by_lane_.end() && std::get<0>(*it) == lane && std::get<1>(*it) <= now;
       it = background_by_lane_.lower_bound({lane, MonotonicTime::min(), 0})) {
    promote(std::get<2>(*it), to);  // unlink() drops it from the index
    ++moved;
  }
  return moved;
}

void AdmissionQueue::promote(uint64_t id, Priority to) {
  std::optional<QueueEntry> e = remove(id);
  e->priority = to;
  link(std::move(*e));
}

std::optional<MonotonicTime> AdmissionQueue::nextUnblockAt(size_t lane) const {
  auto it = background_by_lane_.lower_bound({lane, MonotonicTime::min(), 0});
  if (it == background_by_lane_.end() || std::get<0>(*it) != lane) {
    return std::nullopt;
  }
  return std::get<1>(*it);
}

std::optional<MonotonicTime> AdmissionQueue::nextBackgroundUntil() const {
  if (background_by_until_.empty() ||
      background_by_until_.begin()->first == MonotonicTime::max()) {
    return std::nullopt;
  }
  return background_by_until_.begin()->first;
}

std::optional<QueueEntry> AdmissionQueue::remove(uint64_t id) {
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    return std::nullopt;
  }
  unlink(it->second);
  QueueEntry out = std::move(it->second.entry);
  entries_.erase(it);
  return out;
}

std::vector<QueueEntry> AdmissionQueue::popExpired(MonotonicTime now) {
  std::vector<QueueEntry> out;
  while (!by_deadline_.empty() && by_deadline_.begin()->first <= now) {
    const uint64_t id = by_deadline_.begin()->second;
    if (auto e = remove(id)) {
      out.push_back(std::move(*e));
    }
  }
  return out;
}

std::optional<QueueEntry> AdmissionQueue::popNext(const LaneOpen& open,
                                                  const std::vector<size_t>& first,
                                                  bool first_only, bool background) {
  // Retries, then client requests on `first` lanes (in that order), then all client requests,
  // then background work.
  if (auto e = popFrom(classes_[0], open)) {
    return e;
  }
  for (size_t lane : first) {
    if (classes_[1].count == 0) {
      break;
    }
    const auto this_one = [&](std::optional<size_t> l) { return l == lane && open(l); };
    if (auto e = popFrom(classes_[1], this_one)) {
      return e;
    }
  }
  if (first_only) {
    return std::nullopt;
  }
  for (size_t c = 1; c < (background ? kClassCount : kClassCount - 1); ++c) {
    if (auto e = popFrom(classes_[c], open)) {
      return e;
    }
  }
  return std::nullopt;
}

std::optional<QueueEntry> AdmissionQueue::popFrom(PriorityClass& cls, const LaneOpen& open) {
  if (cls.count == 0) {
    return std::nullopt;
  }
  for (const OrderKey& key : cls.order) {
    ClientQueue& cq = cls.clients.find(std::get<2>(key))->second;
    // The client's most urgent entry among its open lanes, oldest first within a priority.
    std::optional<uint64_t> best_id;
    std::pair<Priority, uint64_t> best{};
    for (auto& [lane, ids] : cq.lanes) {
      if (ids.empty() || !open(lane.second)) {
        continue;
      }
      const std::pair<Priority, uint64_t> cand{lane.first, entries_.at(ids.front()).entry.seq};
      if (!best_id || cand < best) {
        best_id = ids.front();
        best = cand;
      }
    }
    if (!best_id) {
      continue;
    }
    const std::string client = std::get<2>(key);
    const uint64_t served_tag = cq.tag;
    auto it = entries_.find(*best_id);
    unlink(it->second);  // may erase `key` from cls.order: do not touch it after this
    QueueEntry out = std::move(it->second.entry);
    entries_.erase(it);
    cls.vtime = std::max(cls.vtime, served_tag);
    ClientQueue& served = cls.clients[client];
    served.last_served = served_tag;
    if (served.count != 0) {
      cls.order.erase(OrderKey{served.tag, served.activation, client});
      served.tag = served_tag + 1;
      cls.order.emplace(served.tag, served.activation, client);
    }
    prune(cls);
    return out;
  }
  return std::nullopt;
}

bool AdmissionQueue::hasEligible(const LaneOpen& open) const {
  for (const auto& [lane, count] : per_lane_) {
    if (count != 0 && open(lane)) {
      return true;
    }
  }
  return false;
}

void AdmissionQueue::prune(PriorityClass& cls) {
  // Idle clients whose last service is behind the virtual time are the same as new ones.
  if (cls.clients.size() <= 2 * cls.active + 64) {
    return;
  }
  for (auto it = cls.clients.begin(); it != cls.clients.end();) {
    const ClientQueue& cq = it->second;
    if (cq.count == 0 && (!cq.last_served || *cq.last_served + 1 <= cls.vtime)) {
      it = cls.clients.erase(it);
    } else {
      ++it;
    }
  }
}

void AdmissionQueue::remapLanes(
    const std::function<std::optional<size_t>(const QueueEntry&)>& map) {
  per_lane_.clear();
  for (PriorityClass& cls : classes_) {
    for (auto& [client, cq] : cls.clients) {
      std::vector<uint64_t> ids;
      ids.reserve(cq.count);
      for (auto& [lane, list] : cq.lanes) {
        ids.insert(ids.end(), list.begin(), list.end());
      }
      std::sort(ids.begin(), ids.end(), [this](uint64_t a, uint64_t b) {
        return entries_.at(a).entry.seq < entries_.at(b).entry.seq;
      });
      cq.lanes.clear();
      for (uint64_t id : ids) {
        Stored& s = entries_.at(id);
        s.entry.lane = map(s.entry);
        std::list<uint64_t>& lane = cq.lanes[LaneKey{s.entry.priority, s.entry.lane}];
        lane.push_back(id);
        s.pos = std::prev(lane.end());
        ++per_lane_[s.entry.lane];
      }
    }
  }
}

}  // namespace hiapi::core
