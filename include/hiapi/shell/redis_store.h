#pragma once
// The shared store (store.kind: redis): Redis on the proxy's own libevent loop. It carries the
// core's SharedBudget decisions to Redis and back (reservations, returns, shared pauses), counts
// live instances from heartbeats, and falls back to each budget's local share whenever Redis
// cannot be used: unreachable, refusing our password, too slow, or answering with nonsense.
// Nothing here blocks the loop: the host name is resolved with evdns, connects and commands are
// asynchronous, and a command not answered within store.command_timeout counts as an outage.
// With store.tls (rediss://) the connection is verified TLS, as the upstream's is.

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <event2/event.h>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/duration_estimator.h"
#include "hiapi/core/shared_budget.h"
#include "hiapi/core/shared_slots.h"
#include "hiapi/shell/key_identity.h"
#include "hiapi/shell/log.h"

struct redisReply;
struct evdns_base;
struct evutil_addrinfo;

namespace hiapi::shell {

class Metrics;
class RedisConn;
class TlsClientContext;

/// Thread-safety: not thread-safe; the loop's thread only.
class RedisStore {
public:
  /// @param clock the loop's clock (must outlive the store): leases, heartbeats, reconnect
  ///        backoff and round-trip times are measured on it.
  /// @param seed seeds the reconnect jitter and the instance id's random part.
  /// @param pump called with a key name when its budget changed (a reply came, the store went
  ///        down or up): the limiter dispatches that key again.
  RedisStore(event_base* base, const core::Clock& clock, uint64_t seed,
             const core::StoreConfig& cfg, Logger& log, Metrics* metrics,
             std::function<void(const std::string& key)> pump);
  ~RedisStore();
  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  /// Loads store.key_secret_file and starts connecting (never fails the start: an unreachable
  /// Redis means starting degraded). @return false only when the key secret cannot be read.
  bool start(std::string& error);

  /// A budget for @p key, drawing on the store; owned by the caller's scheduler, which must
  /// call forgetKey() before destroying it.
  core::RateBudgetPtr makeBudget(const std::string& key, double rate, double burst,
                                 core::Duration phase_margin, core::MonotonicTime now);
  /// Names @p key's Redis entries after its API key (an HMAC under the shared secret: the raw
  /// key never reaches Redis). Until a key is bound its budget runs on the local share.
  void bindKey(const std::string& key, std::string_view authorization);
  void forgetKey(const std::string& key);
  /// Before the limiter dispatches @p key: acquires and releases tier leases as its
  /// SharedSlots decides, and sets the placeholders in @p sched's gates that stand for the
  /// slots this instance does not hold (so the dispatch that follows admits only into held ones).
  void beforePump(const std::string& key, core::KeyScheduler& sched);
  /// After the limiter dispatched @p key: asks for tokens, gives unspent ones back, shares a
  /// pause, as the key's SharedBudget decides.
  void afterPump(const std::string& key, core::KeyScheduler& sched);

  /// Carries learned tier durations between instances: at each heartbeat what @p mine returns
  /// is written, and @p theirs gets every instance's (this one's too) from the same round trip.
  void shareDurations(std::function<std::vector<core::NamedDuration>()> mine,
                      std::function<void(const std::vector<core::NamedDuration>&)> theirs) {
    mine_ = std::move(mine);
    theirs_ = std::move(theirs);
  }

  /// @return placeholder slots in @p key's gate of @p tier (slots this instance does not hold).
  size_t placeholders(const std::string& key, size_t tier) const {
    auto it = keys_.find(key);
    return it == keys_.end() || !it->second.slots ? 0 : it->second.slots->placeholders(tier);
  }

  /// Takes @p key's placeholder slots out of @p snap (/status and metrics show this instance's
  /// tasks; the ceiling still says what the key allows).
  void adjustSnapshot(const std::string& key, core::Snapshot& snap) const;

  // ---- for deferred creates kept in the store (DeferredShare) ----

  /// @return whether commands may be sent now (connected and not degraded).
  bool usable() const { return connected_ && !degraded_; }
  /// @return the name in Redis of the key @p authorization carries ("" before start()).
  std::string keyIdOf(std::string_view authorization) const;
  const std::string& instanceId() const { return instance_id_; }
  const std::string& keyPrefix() const { return cfg_.key_prefix; }
  std::string instancesKeyName() const { return instancesKey(); }
  /// Runs @p script with EVAL. @p done gets the reply (nullptr when the connection went away).
  /// @return false when nothing was sent (not connected); @p done is not called then.
  bool eval(const char* script, const std::vector<std::string>& keys,
            const std::vector<std::string>& args, std::function<void(redisReply*)> done);
  /// Counts and logs a reply of the store that made no sense (the caller uses its local view).
  void unusableReply(std::string_view what, const redisReply* r);

  struct Status {
    bool connected = false;
    bool degraded = true;
    uint32_t instances = 1;
    std::string last_error;   ///< why degraded (never a secret)
    uint64_t commands = 0;    ///< commands sent so far (round trips)
  };
  Status status() const;

private:
  struct Entry {
    core::SharedBudget* budget = nullptr;
    std::string redis_id;                       ///< empty until bound
    std::optional<core::MonotonicTime> bad_until;  ///< the key's entry answered nonsense
    std::unique_ptr<core::SharedSlots> slots;      ///< created at the first pump
    std::vector<std::string> tier_names;           ///< as of the last pump
    /// Creates waiting here for each tier, as of the last pump, and as last written.
    std::vector<size_t> waiting;
    std::vector<size_t> waiting_written;
    core::MonotonicTime waiting_write_after{};
    /// Creates the other instances hold waiting for each tier (by tier name), valid until
    /// others_until: what the last answer said, for as long as their fields live in Redis.
    std::unordered_map<std::string, size_t> others_waiting;
    core::MonotonicTime others_until{};
  };
  void resolve();
  void connectTo(const std::string& ip);
  void onConnected();
  void onConnectionFailed(const std::string& why);
  void handshake();
  void ready();
  void lost(std::string_view reason, const std::string& detail);
  void scheduleReconnect();
  void setDegraded(bool degraded, const std::string& why);
  void heartbeat();
  void sendDurations();
  void tick();
  void reserve(const std::string& key, Entry& e, double want, double give,
               std::optional<core::Duration> pause);
  void onBudgetReply(const std::string& key, double asked, redisReply* r);
  void syncSlots(const std::string& key, Entry& e, core::KeyScheduler& sched);
  void sendSlots(const std::string& key, Entry& e, const core::SharedSlots::Request& r);
  void renewLeases(Entry& e);
  /// Writes @p key's waiting creates per tier and reads the other instances'.
  void sendWaiting(const std::string& key, Entry& e);
  /// Gives @p sched the other instances' waiting creates (none while they are not known).
  void applyOthersWaiting(const Entry& e, core::KeyScheduler& sched) const;
  /// Counts and logs an error reply for @p key's entry; it runs on its local share a while.
  void badEntry(const std::string& key, Entry& e, const std::string& text);
  std::string slotsKey(const Entry& e, size_t tier) const {
    return cfg_.key_prefix + "s:" + e.redis_id + ":" +
           (tier < e.tier_names.size() ? e.tier_names[tier] : std::to_string(tier));
  }
  std::string leaseName(core::SharedSlots::LeaseId id) const {
    return instance_id_ + "/" + std::to_string(id);
  }
  /// Sends a command; @p done gets the reply (nullptr when the connection went away).
  bool command(std::vector<std::string> argv, std::function<void(redisReply*)> done);
  std::string bucketKey(const Entry& e) const { return cfg_.key_prefix + "b:" + e.redis_id; }
  /// How long what an instance writes to the store (its heartbeat, its leases, the tokens it
  /// holds, its waiting creates) lives there unless written again: three heartbeats, so that
  /// one late heartbeat loses nothing and a killed instance's entries soon lapse.
  core::Duration entryLife() const { return cfg_.heartbeat_interval * 3; }
  std::string instancesKey() const { return cfg_.key_prefix + "instances"; }
  std::string durationsKey() const { return cfg_.key_prefix + "durations"; }
  std::string waitingKey(const Entry& e) const { return cfg_.key_prefix + "w:" + e.redis_id; }

  static void onResolved(int err, evutil_addrinfo* res, void* arg);
  static void onTimer(evutil_socket_t, short, void* arg);

  event_base* base_;
  core::StoreConfig cfg_;
  Logger& log_;
  Metrics* metrics_;
  std::function<void(const std::string&)> pump_;
  const core::Clock& clock_;
  core::SeededRandom random_;
  std::optional<KeyIdentity> identity_;
  std::string instance_id_;
  std::unordered_map<std::string, Entry> keys_;

  evdns_base* dns_ = nullptr;
  std::unique_ptr<TlsClientContext> tls_;  ///< store.tls
  std::unique_ptr<RedisConn> conn_;
  /// A connection given up, freed on the next tick: it may have been given up from inside one of
  /// its own callbacks.
  std::unique_ptr<RedisConn> retired_;
  bool transport_up_ = false;  ///< conn_ is connected (TLS handshake included)
  bool connected_ = false;   ///< handshake done: commands may be sent
  bool degraded_ = true;
  bool closing_ = false;
  bool announced_ = false;  ///< the state was logged once (the first outcome always is)
  uint32_t attempts_ = 0;    ///< failed connects in a row (backoff)
  uint32_t instances_ = 1;
  std::string last_error_ = "not connected yet";
  uint64_t commands_ = 0;
  std::deque<core::MonotonicTime> sent_;  ///< send times of unanswered commands, oldest first
  core::MonotonicTime connect_started_{};
  core::MonotonicTime next_heartbeat_{};
  std::optional<core::MonotonicTime> reconnect_at_;
  /// Back from an outage: budgets keep to their local share too until then, or until the
  /// heartbeats count the instances known before it again (core::SharedBudget::onStoreUp()).
  std::optional<core::MonotonicTime> settle_until_;
  event* timer_ = nullptr;
  std::string budget_sha_;
  std::string heartbeat_sha_;
  std::string acquire_sha_;
  std::string renew_sha_;
  std::string durations_sha_;
  std::string waiting_sha_;
  std::function<std::vector<core::NamedDuration>()> mine_;
  std::function<void(const std::vector<core::NamedDuration>&)> theirs_;
};

}  // namespace hiapi::shell
