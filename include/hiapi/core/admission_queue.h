#pragma once
// AdmissionQueue: requests that cannot go upstream yet wait here instead of failing.
//
// Order:
//  1. Three strict tiers: retries first (they have waited already), then everything a client
//     asked for, then background work (reconcile polls, early polls). promoteBackground() moves
//     background entries up at their background_until (the scheduler: a poll's likely end, at
//     most three quarters of the deadline).
//  2. In the middle tier, fair across client classes by start-time fair queueing with unit cost:
//     a client's head carries a virtual tag; a client that becomes active gets the current
//     virtual time (or one past its own last service, whichever is later), and serving a client
//     moves its tag up by one. So a client with 1,000 waiting requests of any kind and one that
//     just arrived with one request alternate, and the newcomer goes at the very next admission:
//     one service's polls can no more hold back another service's create than its creates can.
//  3. Within a client: Poll > Create > Other (a client's own polls, which free tier slots, go
//     before its own creates), then FIFO within a lane.
// Lanes: an entry may wait on a lane (a tier's concurrency gate). popNext() takes a predicate that
// says which lanes are open; entries on closed lanes are skipped, so a create waiting for a full
// heavy gate never blocks polls, light creates, or the same client's later light creates. A
// ranked list may name lanes whose client requests go ahead of the other client requests, in
// that order (the scheduler names the tiers whose gate is the bottleneck, the one with the most
// work left first: a freed slot there is taken at once).
// Entries hold no reservations: tokens and slots are taken only when an entry is popped
// (KeyScheduler commits both or neither), so removing an entry frees nothing here.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "hiapi/core/clock.h"

namespace hiapi::core {

/// What a request is, as HiAPI sees it (every kind draws on the key's one budget).
enum class RouteKind { Create, Poll, List, Other };

/// Queue priority classes, most urgent first.
enum class Priority : uint8_t { Retry = 0, Poll = 1, Create = 2, Other = 3, Background = 4 };
inline constexpr size_t kPriorityCount = 5;

/// @return a stable lower-case name ("retry", "poll", ...). Thread-safety: pure.
const char* priorityName(Priority p);
/// @return a stable lower-case name ("create", "poll", "list", "other"). Thread-safety: pure.
const char* routeKindName(RouteKind r);

/// One waiting request.
struct QueueEntry {
  uint64_t id = 0;                  ///< caller's request id, unique among waiting entries
  std::string client;               ///< client class (header value, or a shared default)
  Priority priority = Priority::Other;
  MonotonicTime deadline{};         ///< popExpired() returns it at or after this time
  std::optional<size_t> lane;       ///< tier gate it waits on; nullopt = needs only a token
  MonotonicTime enqueued{};         ///< for wait-time metrics
  /// Background entries: promoteBackground() moves them up from this time on.
  MonotonicTime background_until = MonotonicTime::max();
  /// Background entries on a lane: promoteBackgroundOnLane() may move them up from this time on
  /// (the caller decides when the lane deserves it); max = never.
  MonotonicTime unblock_at = MonotonicTime::max();
  uint64_t seq = 0;                 ///< set by push(): global arrival order
};

enum class EnqueueResult { Queued, QueueFull, ClientFull, DuplicateId };

/// Thread-safety: not thread-safe (single event-loop thread).
class AdmissionQueue {
public:
  /// Which lanes may be served now (nullopt = the token-only lane).
  using LaneOpen = std::function<bool(std::optional<size_t> lane)>;

  /// @param max_size bound on waiting entries (>= 1)
  /// @param max_per_client bound per client class; 0 = none
  explicit AdmissionQueue(size_t max_size, size_t max_per_client = 0);

  /// Adds an entry at the tail of its client's lane.
  /// @return Queued, or why not (nothing changed then).
  EnqueueResult push(QueueEntry entry);

  /// Removes a waiting entry (client gone, or the caller admits it another way).
  /// @return the entry, or nullopt when @p id is not waiting.
  std::optional<QueueEntry> remove(uint64_t id);

  /// Moves every Background entry whose background_until is at or before @p now to priority
  /// @p to (the tail of its client's lane there; id, deadline, lane and enqueued time kept; no
  /// bound is checked again): background work must not wait forever behind a budget that never
  /// has a spare token, nor past the time it stops being background work. O(log n) per entry.
  /// @return how many moved.
  size_t promoteBackground(MonotonicTime now, Priority to);
  /// As promoteBackground(), for the Background entries on @p lane whose unblock_at is at or
  /// before @p now. O(log n) per entry.
  size_t promoteBackgroundOnLane(size_t lane, MonotonicTime now, Priority to);
  /// @return the earliest unblock_at of a Background entry on @p lane, if any.
  std::optional<MonotonicTime> nextUnblockAt(size_t lane) const;
  /// @return the earliest background_until of a Background entry (promoteBackground()), if any.
  std::optional<MonotonicTime> nextBackgroundUntil() const;

  /// Removes and returns every entry whose deadline is at or before @p now, earliest first.
  std::vector<QueueEntry> popExpired(MonotonicTime now);

  /// Removes and returns the next entry to serve among open lanes (see the file comment).
  /// @param open which lanes may be served
  /// @param first client requests on these lanes go before the other client requests, lane by
  ///        lane in this order (still after the first class, and fair across clients within a
  ///        lane)
  /// @param first_only serve only retries and the client requests on @p first lanes (no other
  ///        client requests, no background work)
  /// @param background whether background work may be served
  /// @return nullopt when no entry is on an open lane.
  std::optional<QueueEntry> popNext(const LaneOpen& open, const std::vector<size_t>& first = {},
                                    bool first_only = false, bool background = true);

  /// @return whether some waiting entry is on a lane for which @p open is true.
  bool hasEligible(const LaneOpen& open) const;

  /// Re-labels lanes (tier indexes after a reload); FIFO order within a client is kept by seq.
  /// @param map gives an entry's new lane
  void remapLanes(const std::function<std::optional<size_t>(const QueueEntry&)>& map);

  /// Changes the bounds; entries already waiting stay.
  void setLimits(size_t max_size, size_t max_per_client);

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  size_t maxSize() const { return max_size_; }
  /// @return waiting entries of priority @p p.
  size_t size(Priority p) const { return per_priority_[static_cast<size_t>(p)]; }
  /// @return waiting entries on lane @p lane (all classes).
  size_t laneSize(std::optional<size_t> lane) const;
  /// @return waiting entries of client @p client (all classes).
  size_t clientSize(const std::string& client) const;
  bool contains(uint64_t id) const { return entries_.count(id) != 0; }
  /// @return the entry with id @p id, if waiting.
  const QueueEntry* find(uint64_t id) const;
  /// @return the earliest deadline among waiting entries.
  std::optional<MonotonicTime> nextDeadline() const;
  /// @return whether any waiting entry is on lane @p lane.
  bool hasLane(std::optional<size_t> lane) const { return laneSize(lane) != 0; }

private:
  struct Stored {
    QueueEntry entry;
    std::list<uint64_t>::iterator pos;
  };
  using LaneKey = std::pair<Priority, std::optional<size_t>>;  // priority first: serve order
  struct ClientQueue {
    std::map<LaneKey, std::list<uint64_t>> lanes;
    size_t count = 0;
    uint64_t tag = 0;                     ///< virtual start tag of its head (while active)
    uint64_t activation = 0;              ///< tie-break: when it became active
    std::optional<uint64_t> last_served;  ///< tag of its last service
  };
  using OrderKey = std::tuple<uint64_t, uint64_t, std::string>;  // tag, activation, client
  struct PriorityClass {
    std::unordered_map<std::string, ClientQueue> clients;
    std::set<OrderKey> order;  ///< active clients, next to serve first
    uint64_t vtime = 0;
    size_t count = 0;
    size_t active = 0;
  };

  static constexpr size_t kClassCount = 3;  ///< retries, client requests, background
  static size_t classOf(Priority p);
  void prune(PriorityClass& cls);
  void link(QueueEntry entry);  ///< push() past its checks
  /// Moves waiting entry @p id to priority @p to (the tail of its client's lane there).
  void promote(uint64_t id, Priority to);
  std::optional<QueueEntry> popFrom(PriorityClass& cls, const LaneOpen& open);
  void unlink(Stored& stored);

  size_t max_size_;
  size_t max_per_client_;
  uint64_t next_seq_ = 1;
  std::unordered_map<uint64_t, Stored> entries_;
  std::set<std::pair<MonotonicTime, uint64_t>> by_deadline_;
  /// Background entries by (background_until, id), earliest first (promoteBackground).
  std::set<std::pair<MonotonicTime, uint64_t>> background_by_until_;
  /// Background entries with a lane and an unblock_at, by (lane, unblock_at, id).
  std::set<std::tuple<size_t, MonotonicTime, uint64_t>> background_by_lane_;
  std::array<PriorityClass, kClassCount> classes_;
  std::array<size_t, kPriorityCount> per_priority_{};
  std::unordered_map<std::string, size_t> per_client_;
  std::map<std::optional<size_t>, size_t> per_lane_;
};

}  // namespace hiapi::core
