// hiapi-sim: flags, signals and wiring only. See README.md and --help.

#include <event2/event.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string>

#include "config.h"
#include "sim.h"

namespace {

void onSignal(evutil_socket_t, short, void* arg) {
  event_base_loopbreak(static_cast<event_base*>(arg));
}

// Writes the port to `path` atomically (temp file in the same directory, then rename).
bool writePortFile(const std::string& path, int port) {
  std::string tmp = path + ".tmp." + std::to_string(getpid());
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (f == nullptr) {
    return false;
  }
  bool ok = std::fprintf(f, "%d\n", port) > 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  hiapi::sim::SimConfig cfg;
  bool help = false;
  std::string error;
  if (!hiapi::sim::parseArgs(argc, argv, cfg, &help, &error)) {
    std::fprintf(stderr, "hiapi-sim: %s (see --help)\n", error.c_str());
    return 2;
  }
  if (help) {
    std::fputs(hiapi::sim::helpText().c_str(), stdout);
    return 0;
  }
  if (std::signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
    std::fprintf(stderr, "hiapi-sim: cannot ignore SIGPIPE\n");
  }

  event_base* base = event_base_new();
  if (base == nullptr) {
    std::fprintf(stderr, "hiapi-sim: event_base_new failed\n");
    return 1;
  }
  int rc = 0;
  event* sigterm = nullptr;
  event* sigint = nullptr;
  {
    hiapi::sim::Simulator sim(base, cfg);
    if (!sim.start(&error)) {
      std::fprintf(stderr, "hiapi-sim: %s\n", error.c_str());
      rc = 1;
    } else {
      sigterm = evsignal_new(base, SIGTERM, onSignal, base);
      sigint = evsignal_new(base, SIGINT, onSignal, base);
      if (sigterm == nullptr || sigint == nullptr || evsignal_add(sigterm, nullptr) != 0 ||
          evsignal_add(sigint, nullptr) != 0) {
        std::fprintf(stderr, "hiapi-sim: cannot install signal handlers\n");
        rc = 1;
      } else {
        std::string addr = cfg.listen.find(':') != std::string::npos && cfg.listen.front() != '['
                               ? "[" + cfg.listen + "]"
                               : cfg.listen;
        // Exactly this line (parsed by tests and scripts); extras go to stderr. It is out before
        // the port file: whoever waited for the file may read the line at once.
        std::printf("hiapi-sim listening on %s:%d\n", addr.c_str(), sim.port());
        std::fflush(stdout);
        if (!cfg.port_file.empty() && !writePortFile(cfg.port_file, sim.port())) {
          std::fprintf(stderr, "hiapi-sim: cannot write port file %s\n", cfg.port_file.c_str());
          rc = 1;
        } else {
          if (!cfg.tls_cert.empty()) {
            std::fprintf(stderr, "hiapi-sim: serving HTTPS with %s\n", cfg.tls_cert.c_str());
          }
          if (event_base_dispatch(base) < 0) {
            std::fprintf(stderr, "hiapi-sim: event loop failed\n");
            rc = 1;
          }
        }
      }
    }
  }  // the simulator frees its listener, timers and connections before the base goes
  // Stopping already: a second SIGTERM/SIGINT during the teardown (a test's stop() right after
  // its SIGINT) must not turn the clean exit into a death by signal. Freeing a signal event
  // restores the default action, so block both first and ignore them after.
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  sigaddset(&block, SIGINT);
  sigprocmask(SIG_BLOCK, &block, nullptr);
  if (sigterm != nullptr) {
    event_free(sigterm);
  }
  if (sigint != nullptr) {
    event_free(sigint);
  }
  std::signal(SIGTERM, SIG_IGN);
  std::signal(SIGINT, SIG_IGN);
  event_base_free(base);
  return rc;
}
