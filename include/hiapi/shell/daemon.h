#pragma once
// Wiring: the event loop, the listener, the upstream pool, the limiter and task service, the
// admin listener with its metrics, signals (drain on SIGTERM/SIGINT, reload on SIGHUP) and
// systemd notification.

#include <map>
#include <memory>
#include <string>

#include <event2/event.h>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/key_scheduler.h"
#include "hiapi/shell/admin_server.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/timers.h"

namespace hiapi::shell {

class UpstreamPool;
class ProxyServer;
class Limiter;
class TaskService;
class DeferredService;
class Metrics;
class AdminServer;
class BufferBudget;
class RedisStore;
struct RequestCtx;

struct DaemonOptions {
  std::string config_path;
  std::string port_file;  ///< when set, "proxy=<port>\nadmin=<port>\n" is written there
};

/// Thread-safety: run() on one thread; signals are delivered through the loop.
class Daemon {
public:
  Daemon(DaemonOptions opts, core::ConfigSharedPtr cfg, Logger& log);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// Runs until SIGTERM/SIGINT and the drain that follows. @return the process exit code.
  int run();

private:
  // run()'s start-up steps, in order. Each logs its own failure and returns false on it.
  /// Ignores SIGPIPE and SIGXFSZ; raises the descriptor limit.
  void prepareProcess();
  bool createEventBase();
  /// The metrics, the upstream pool, the timers and the client-facing server.
  bool createServer();
  /// The limiter (and shared store), the task service and the deferred service, wired together.
  bool createLimits();
  /// Declares the keys, restores state, opens the journal and starts listening for clients.
  bool startServices();
  bool startAdmin();
  /// SIGTERM/SIGINT/SIGHUP through the loop, and the systemd watchdog when asked for.
  bool installSignals();
  /// Counts an answered client request in the metrics.
  void countFinished(const RequestCtx& ctx, int status);

  static void onSignal(evutil_socket_t sig, short, void* arg);
  static void onDrainTick(evutil_socket_t, short, void* arg);
  static void onWatchdog(evutil_socket_t, short, void* arg);
  void beginShutdown(int sig);
  void reload();
  /// Puts @p next in force everywhere (reload, runtime limit changes).
  void apply(core::ConfigSharedPtr next);
  /// Admin PUT /limits/keys/<name> or /limits/tiers/<name>: changes a key's rate/burst or a
  /// tier's ceiling in the running configuration, until the next reload. Logged as an audit line
  /// (daemon_limits.cc).
  AdminServer::LimitsReply changeLimits(std::string_view rest, std::string_view body,
                                        const std::string& peer);
  bool writePortFile();
  /// The metrics gauges (daemon_status.cc): refreshed before each scrape and /status.
  void refreshGauges();
  /// The /status document (daemon_status.cc).
  std::string statusJson();
  void writeDeferredStatus(rapidjson::Writer<rapidjson::StringBuffer>& w) const;
  /// store.kind: redis: creates the shared store and hands it to the limiter (daemon_store.cc).
  /// @return false when it cannot start (an unreadable key secret; an unreachable Redis is not).
  bool startStore();
  /// @return whether a reload changes the store's settings (they apply on restart only).
  static bool storeChanged(const core::StoreConfig& next, const core::StoreConfig& running);
  /// The "store" object of /status (daemon_store.cc).
  void writeStoreStatus(rapidjson::Writer<rapidjson::StringBuffer>& w) const;
  void notify(const std::string& state);
  void declareKeys();

  DaemonOptions opts_;
  core::ConfigSharedPtr cfg_;
  Logger& log_;
  event_base* base_ = nullptr;
  core::SteadyClock clock_;
  core::SeededRandom random_;
  /// Every shell object's timers: libevent's, on clock_ (set up with base_).
  std::unique_ptr<EventTimers> timers_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<BufferBudget> reply_budget_;
  std::unique_ptr<UpstreamPool> pool_;
  std::unique_ptr<ProxyServer> proxy_;
  std::unique_ptr<RedisStore> store_;  ///< store.kind: redis (daemon_store.cc)
  std::unique_ptr<Limiter> limiter_;
  std::unique_ptr<TaskService> tasks_;
  std::unique_ptr<DeferredService> deferred_;
  std::unique_ptr<AdminServer> admin_;
  event* sigterm_ = nullptr;
  event* sigint_ = nullptr;
  event* sighup_ = nullptr;
  event* drain_tick_ = nullptr;
  event* watchdog_ = nullptr;
  core::MonotonicTime drain_deadline_{};
  core::MonotonicTime started_{};
  bool shutting_down_ = false;
  bool aborted_ = false;
  bool ready_ = false;
  /// Top-level sections of the running configuration's file: a reload must keep them all.
  std::vector<std::string> config_sections_;
  /// Scheduler counters already turned into metric increments, per key.
  std::map<std::string, core::SchedulerCounters> seen_counters_;
  std::map<std::string, std::vector<uint64_t>> seen_lease_expiries_;
};

}  // namespace hiapi::shell
