#pragma once
// An event loop on a thread of its own, for a server under test. Set the server up on base()
// before start() and tear it down after stop(), so that libevent is only ever used by one thread
// at a time. A 20 ms tick keeps the loop from blocking for long, so that stop() is seen.

#include <atomic>
#include <thread>

#include <event2/event.h>

namespace hiapi::test {

class LoopThread {
public:
  LoopThread() : base_(event_base_new()) {
    tick_ = event_new(base_, -1, EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr);
    const timeval tv{0, 20'000};
    event_add(tick_, &tv);
  }
  ~LoopThread() {
    stop();
    event_free(tick_);
    event_base_free(base_);
  }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  event_base* base() const { return base_; }
  void start() {
    thread_ = std::thread([this] {
      while (!stop_) {
        event_base_loop(base_, EVLOOP_ONCE);
      }
    });
  }
  /// Returns once the loop thread has ended (no-op when it never started).
  void stop() {
    stop_ = true;
    if (thread_.joinable()) {
      thread_.join();
    }
  }

private:
  event_base* base_;
  event* tick_ = nullptr;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace hiapi::test
