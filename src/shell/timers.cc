#include "hiapi/shell/timers.h"

#include <tuple>

#include "hiapi/shell/event_util.h"

namespace hiapi::shell {

namespace {

class EventTimer final : public Timer {
public:
  EventTimer(event_base* base, const core::Clock& clock, std::function<void()> fire)
      : clock_(clock), fire_(std::move(fire)), ev_(evtimer_new(base, &EventTimer::onFire, this)) {}
  ~EventTimer() override { event_free(ev_); }
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;

  void armAt(core::MonotonicTime at) override {
    due_ = at;
    const timeval tv = toTimeval(at - clock_.now());
    evtimer_add(ev_, &tv);
  }
  void cancel() override {
    due_.reset();
    evtimer_del(ev_);
  }
  bool armed() const override { return due_.has_value(); }
  std::optional<core::MonotonicTime> due() const override { return due_; }

private:
  static void onFire(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<EventTimer*>(arg);
    self->due_.reset();
    self->fire_();  // may destroy self: nothing after this
  }

  const core::Clock& clock_;
  std::function<void()> fire_;
  event* ev_;
  std::optional<core::MonotonicTime> due_;
};

}  // namespace

std::unique_ptr<Timer> EventTimers::make(std::function<void()> fire) {
  return std::make_unique<EventTimer>(base_, clock_, std::move(fire));
}

class ManualTimers::ManualTimer final : public Timer {
public:
  ManualTimer(ManualTimers* owner, std::function<void()> fire)
      : owner_(owner), fire_(std::move(fire)) {
    owner_->live_.insert(this);
  }
  ~ManualTimer() override {
    if (owner_ != nullptr) {
      cancel();
      owner_->live_.erase(this);
    }
  }
  void armAt(core::MonotonicTime at) override {
    if (owner_ == nullptr) {
      return;
    }
    cancel();
    entry_ = std::make_tuple(at, owner_->seq_++, this);
    owner_->armed_.insert(*entry_);
  }
  void cancel() override {
    if (owner_ != nullptr && entry_) {
      owner_->armed_.erase(*entry_);
    }
    entry_.reset();
  }
  bool armed() const override { return entry_.has_value(); }
  std::optional<core::MonotonicTime> due() const override {
    return entry_ ? std::optional(std::get<0>(*entry_)) : std::nullopt;
  }
  void fire() {
    entry_.reset();
    fire_();  // may destroy this
  }
  void orphan() { owner_ = nullptr; entry_.reset(); }

private:
  ManualTimers* owner_;
  std::function<void()> fire_;
  std::optional<std::tuple<core::MonotonicTime, uint64_t, ManualTimer*>> entry_;
};

ManualTimers::~ManualTimers() {
  for (ManualTimer* t : live_) {
    t->orphan();  // a timer that outlives its Timers never fires
  }
}

std::unique_ptr<Timer> ManualTimers::make(std::function<void()> fire) {
  return std::make_unique<ManualTimer>(this, std::move(fire));
}

std::optional<core::MonotonicTime> ManualTimers::nextDue() const {
  if (armed_.empty()) {
    return std::nullopt;
  }
  return std::get<0>(*armed_.begin());
}

size_t ManualTimers::advance(core::Duration d, size_t max_fires) {
  const core::MonotonicTime target = clock_.now() + d;
  size_t fired = 0;
  while (fired < max_fires && !armed_.empty() && std::get<0>(*armed_.begin()) <= target) {
    auto [at, seq, timer] = *armed_.begin();
    armed_.erase(armed_.begin());
    if (at > clock_.now()) {
      clock_.advance(at - clock_.now());
    }
    ++fired;
    timer->fire();
  }
  if (target > clock_.now()) {
    clock_.advance(target - clock_.now());
  }
  return fired;
}

}  // namespace hiapi::shell
