#include "hiapi/shell/buffer_budget.h"

namespace hiapi::shell {

BufferBudget::BufferBudget(event_base* base, uint64_t limit)
    : wake_(event_new(base, -1, 0, &BufferBudget::onWake, this)), limit_(limit) {}

BufferBudget::~BufferBudget() {
  if (wake_ != nullptr) {
    event_free(wake_);
  }
}

void BufferBudget::setLimit(uint64_t limit) {
  const bool looser = limit == 0 || limit > limit_;
  limit_ = limit;
  if (looser && !waiters_.empty() && wake_ != nullptr) {
    event_active(wake_, EV_TIMEOUT, 0);
  }
}

void BufferBudget::adjust(uint64_t& counted, uint64_t now_bytes) {
  const bool freed = now_bytes < counted;
  used_ = used_ - counted + now_bytes;
  counted = now_bytes;
  // Each waiter judges for itself whether it may go on (its own bytes do not count against
  // it); resumed from the loop, never from inside the caller (a write or read in progress).
  if (freed && !waiters_.empty() && wake_ != nullptr) {
    event_active(wake_, EV_TIMEOUT, 0);
  }
}

void BufferBudget::wait(const void* who, std::function<void()> resume) {
  waiters_[who] = std::move(resume);
}

void BufferBudget::onWake(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<BufferBudget*>(arg);
  std::unordered_map<const void*, std::function<void()>> run;
  run.swap(self->waiters_);
  for (auto& [who, resume] : run) {
    resume();  // reads again, or waits again
  }
}

}  // namespace hiapi::shell
