#pragma once
// One bound on the reply bytes the proxy holds for all its clients together: bodies being read
// from the upstream and replies waiting to be written to clients. Over the bound, upstream
// connections stop reading (their replies wait in the kernel, and the upstream's sends block)
// until clients have taken enough; so clients that do not read cannot grow the daemon without
// end (issue 24: ten clients not reading 60 MB replies grew it from 76 to 690 MB).

#include <cstdint>
#include <functional>
#include <unordered_map>

#include <event2/event.h>

namespace hiapi::shell {

/// Thread-safety: the event loop thread only.
class BufferBudget {
public:
  /// @param limit bytes; 0 = no bound.
  BufferBudget(event_base* base, uint64_t limit);
  ~BufferBudget();
  BufferBudget(const BufferBudget&) = delete;
  BufferBudget& operator=(const BufferBudget&) = delete;

  void setLimit(uint64_t limit);
  /// Moves a holder's share from @p counted to @p now_bytes (and sets @p counted to it).
  void adjust(uint64_t& counted, uint64_t now_bytes);
  /// @return whether the bytes held are at or over the bound.
  bool over() const { return limit_ != 0 && used_ >= limit_; }
  /// @return whether a reader holding @p own of the bytes should pause: the others hold the
  ///         bound. Its own bytes never stop it, so a reply larger than the bound still
  ///         completes (bounded by the reply size limit).
  bool overFor(uint64_t own) const { return limit_ != 0 && used_ - own >= limit_; }
  uint64_t used() const { return used_; }
  uint64_t limit() const { return limit_; }
  /// Calls @p resume once, from the loop, after bytes have been freed (or the bound raised):
  /// the waiter checks overFor() again and reads or waits again. One wait per @p who.
  void wait(const void* who, std::function<void()> resume);
  void cancel(const void* who) { waiters_.erase(who); }

private:
  static void onWake(evutil_socket_t, short, void* arg);

  event* wake_ = nullptr;
  uint64_t limit_;
  uint64_t used_ = 0;
  std::unordered_map<const void*, std::function<void()>> waiters_;
};

}  // namespace hiapi::shell
