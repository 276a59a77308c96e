#include "hiapi/core/send_log.h"

#include <algorithm>

namespace hiapi::core {

SendLog::SendLog(size_t limit, Duration window)
    : limit_(std::max<size_t>(limit, 1)), window_(std::max(window, Duration(1))) {}

void SendLog::expire(MonotonicTime now) const {
  while (!sends_.empty() && sends_.front() + window_ <= now) {
    sends_.pop_front();
  }
}

bool SendLog::allows(MonotonicTime now) const {
  expire(now);
  return sends_.size() < limit_;
}

MonotonicTime SendLog::nextAllowed(MonotonicTime now) const {
  expire(now);
  if (sends_.size() < limit_) {
    return now;
  }
  // The send that must leave the window first so that one more fits.
  return sends_[sends_.size() - limit_] + window_;
}

void SendLog::setShape(size_t limit, Duration window) {
  limit_ = std::max<size_t>(limit, 1);
  window_ = std::max(window, Duration(1));
}

void SendLog::record(MonotonicTime now) {
  expire(now);
  sends_.push_back(now);
}

void SendLog::unrecord() {
  if (!sends_.empty()) {
    sends_.pop_back();
  }
}

}  // namespace hiapi::core
