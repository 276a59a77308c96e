#pragma once
// Wiring: the event loop, the listener, the upstream pool, signals and the drain on shutdown.

#include <memory>
#include <string>

#include <event2/event.h>

#include "hiapi/core/config.h"
#include "hiapi/shell/log.h"

namespace hiapi::shell {

class UpstreamPool;
class ProxyServer;
class Limiter;
class TaskService;

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
  static void onSignal(evutil_socket_t sig, short, void* arg);
  static void onDrainTick(evutil_socket_t, short, void* arg);
  void beginShutdown(int sig);
  void reload();
  bool writePortFile();

  DaemonOptions opts_;
  core::ConfigSharedPtr cfg_;
  Logger& log_;
  event_base* base_ = nullptr;
  std::unique_ptr<UpstreamPool> pool_;
  std::unique_ptr<ProxyServer> proxy_;
  std::unique_ptr<Limiter> limiter_;
  std::unique_ptr<TaskService> tasks_;
  event* sigterm_ = nullptr;
  event* sigint_ = nullptr;
  event* sighup_ = nullptr;
  event* drain_tick_ = nullptr;
  core::MonotonicTime drain_deadline_{};
  bool shutting_down_ = false;
  bool aborted_ = false;
};

}  // namespace hiapi::shell
