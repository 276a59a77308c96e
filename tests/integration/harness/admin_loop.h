#pragma once
// An AdminServer on an event loop of its own thread, for tests of the admin listener. It is set
// up before the thread starts and torn down after it stops, so that libevent is only ever used by
// one thread at a time.

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <event2/event.h>

#include "hiapi/shell/admin_server.h"
#include "hiapi/shell/metrics.h"

namespace hiapi::test {

class AdminLoop {
public:
  AdminLoop(shell::Metrics& m, std::function<std::string()> status, std::function<bool()> ready,
            std::function<void()> before_scrape) {
    base_ = event_base_new();
    server_ = std::make_unique<shell::AdminServer>(base_, m, std::move(status), std::move(ready),
                                                   std::move(before_scrape));
    ok_ = server_->listen("127.0.0.1", 0);
    tick_ = event_new(base_, -1, EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr);
    const timeval tv{0, 20'000};
    event_add(tick_, &tv);
    thread_ = std::thread([this] {
      while (!stop_) {
        event_base_loop(base_, EVLOOP_ONCE);
      }
    });
  }
  ~AdminLoop() {
    stop_ = true;
    thread_.join();
    server_.reset();
    event_free(tick_);
    event_base_free(base_);
  }
  AdminLoop(const AdminLoop&) = delete;
  AdminLoop& operator=(const AdminLoop&) = delete;

  bool ok() const { return ok_; }
  uint16_t port() const { return server_->port(); }

private:
  event_base* base_ = nullptr;
  event* tick_ = nullptr;
  std::unique_ptr<shell::AdminServer> server_;
  bool ok_ = false;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace hiapi::test
