#pragma once
// An AdminServer on an event loop of its own thread (LoopThread), for tests of the admin
// listener.

#include <functional>
#include <memory>
#include <string>

#include <event2/event.h>

#include "harness/loop_thread.h"
#include "hiapi/shell/admin_server.h"
#include "hiapi/shell/metrics.h"

namespace hiapi::test {

class AdminLoop {
public:
  AdminLoop(shell::Metrics& m, std::function<std::string()> status, std::function<bool()> ready,
            std::function<void()> before_scrape) {
    server_ = std::make_unique<shell::AdminServer>(loop_.base(), m, std::move(status),
                                                   std::move(ready), std::move(before_scrape));
    ok_ = server_->listen("127.0.0.1", 0);
    loop_.start();
  }
  ~AdminLoop() {
    loop_.stop();
    server_.reset();
  }
  AdminLoop(const AdminLoop&) = delete;
  AdminLoop& operator=(const AdminLoop&) = delete;

  bool ok() const { return ok_; }
  uint16_t port() const { return server_->port(); }

private:
  LoopThread loop_;  // first: freed last, after the server
  std::unique_ptr<shell::AdminServer> server_;
  bool ok_ = false;
};

}  // namespace hiapi::test
