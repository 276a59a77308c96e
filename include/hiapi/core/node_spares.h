#pragma once
// Erased nodes of an unordered map or set, kept for the next insert. The proxy's per-request
// maps (open exchanges, requests, waiters, upstream attempts) gain and lose one entry per
// request: with their nodes kept, the steady state allocates nothing for them, and a kept
// node's value keeps what it owns (a string's capacity, say) for the next request.
//
// Under AddressSanitizer nothing is kept, so that a use after erase still reads freed memory and
// is reported rather than reading the next request's entry.

#include <cstddef>
#include <utility>
#include <vector>

namespace hiapi::core {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr size_t kNodeSparesDefault = 0;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr size_t kNodeSparesDefault = 0;
#else
inline constexpr size_t kNodeSparesDefault = 256;
#endif
#else
inline constexpr size_t kNodeSparesDefault = 256;
#endif

/// Thread-safety: none (one per container, used where the container is).
template <class Container>
class NodeSpares {
public:
  using Node = typename Container::node_type;
  using Key = typename Container::key_type;

  /// @param keep how many erased nodes to keep at most (more are freed).
  explicit NodeSpares(size_t keep = kNodeSparesDefault) : keep_(keep) { spares_.reserve(keep); }

  /// Erases @p it from @p c, keeping its node.
  void erase(Container& c, typename Container::const_iterator it) {
    Node n = c.extract(it);
    if (spares_.size() < keep_) {
      spares_.push_back(std::move(n));
    }
  }

  /// Erases @p key from @p c, keeping its node. @return whether it was there.
  bool erase(Container& c, const Key& key) {
    auto it = c.find(key);
    if (it == c.end()) {
      return false;
    }
    erase(c, it);
    return true;
  }

  /// A map's insert: @p key with @p value, in a kept node when there is one (its old value is
  /// assigned @p value). @return the mapped value. @p key must not be in @p c.
  template <class V>
  auto& put(Container& c, const Key& key, V&& value) {
    if (spares_.empty()) {
      return c.emplace(key, std::forward<V>(value)).first->second;
    }
    Node n = take();
    n.key() = key;
    n.mapped() = std::forward<V>(value);
    return c.insert(std::move(n)).position->second;
  }

  /// A map's insert of @p key into a kept node as it is (its old value, for the caller to
  /// reset: what it owns is kept), or a new one value-initialised. @p key must not be in @p c.
  auto& reuse(Container& c, const Key& key) {
    if (spares_.empty()) {
      return c.try_emplace(key).first->second;
    }
    Node n = take();
    n.key() = key;
    return c.insert(std::move(n)).position->second;
  }

  /// A set's insert. @return whether @p key was new.
  bool insert(Container& c, const Key& key) {
    if (spares_.empty() || c.count(key) != 0) {
      return c.insert(key).second;
    }
    Node n = take();
    n.value() = key;
    return c.insert(std::move(n)).inserted;
  }

  size_t kept() const { return spares_.size(); }

private:
  Node take() {
    Node n = std::move(spares_.back());
    spares_.pop_back();
    return n;
  }

  size_t keep_;
  std::vector<Node> spares_;
};

}  // namespace hiapi::core
