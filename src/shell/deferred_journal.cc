// DeferredService's journal: where it lives, opening and replaying it at start, appending
// accepted creates with one fdatasync per batch, compacting it, and turning deferring off (with
// backoff) when the disk refuses.

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hiapi/shell/deferred_service.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/task_service.h"

namespace hiapi::shell {
namespace {

namespace fs = std::filesystem;

// A journal that failed is tried again after this, doubling up to kStoreBackoffMax.
constexpr core::Duration kStoreBackoffMin = std::chrono::seconds(5);
constexpr core::Duration kStoreBackoffMax = std::chrono::minutes(5);
bool writeAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool syncDir(const std::string& file) {
  const std::string dir = fs::path(file).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    return false;
  }
  const bool ok = ::fsync(dfd) == 0;
  ::close(dfd);
  return ok;
}

}  // namespace

bool DeferredService::start(std::string* error) {
  path_ = cfg_->deferred.journal;
  if (path_.empty() && !cfg_->tasks.state_file.empty()) {
    path_ = (fs::path(cfg_->tasks.state_file).parent_path() / "deferred.journal").string();
  }
  if (path_.empty()) {
    if (const char* dir = std::getenv("STATE_DIRECTORY"); dir != nullptr && *dir != '\0') {
      const std::string first(dir, std::strcspn(dir, ":"));
      path_ = (fs::path(first) / "deferred.journal").string();
    }
  }
  bool any_defers = false;
  for (const core::TierConfig& t : cfg_->limits.tiers) {
    any_defers = any_defers || t.defer;
  }
  if (path_.empty()) {
    if (any_defers) {
      log_.warn("deferred creates are off: no place to keep them (set deferred.journal or "
                "tasks.state_file); creates wait for their slot on the connection instead");
    }
    if (metrics_ != nullptr) {
      metrics_->setDeferredStoreReady(false);
    }
    return true;
  }
  std::string fatal;
  if (!openJournal(&fatal)) {
    if (!fatal.empty()) {
      *error = path_ + ": " + fatal;
      return false;
    }
    return true;  // deferring stays off until the journal can be opened (sweep retries)
  }
  // What the journal holds goes on: queued creates are submitted again (with their idempotency
  // key, so one that reached HiAPI before a crash is not created twice), and the tasks they
  // became hold their slots again until seen ended.
  size_t queued = 0;
  size_t adopted = 0;
  const int64_t now_ms = wallMs();
  for (const core::DeferredRecord* r : book_.all()) {
    if (r->state == core::DeferredState::Queued) {
      ++queued;
      submit(*r);
    } else if (r->state == core::DeferredState::Submitted && !r->task_ended) {
      if (auto tier = tierIndex(r->tier)) {
        tasks_.adopt(r->key, *tier, r->task_id, r->model,
                     std::chrono::milliseconds(std::max<int64_t>(0, now_ms - r->ended_ms)));
        ++adopted;
      }
    }
  }
  log_.info("deferred journal opened", {{"path", path_},
                                        {"records", static_cast<uint64_t>(book_.size())},
                                        {"queued", static_cast<uint64_t>(queued)},
                                        {"running", static_cast<uint64_t>(adopted)}});
  return true;
}

bool DeferredService::openJournal(std::string* fatal) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    // A FIFO or a device would block or never end: not a file the proxy can keep promises in.
    storeFailed("the deferred journal is not a regular file", EINVAL);
    return false;
  }
  const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    storeFailed("cannot open the deferred journal", errno);
    return false;
  }
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(text.size()));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      storeFailed("cannot read the deferred journal", err);
      return false;
    }
    if (n == 0) {
      break;
    }
    text.append(buf, static_cast<size_t>(n));
  }
  core::DeferredBook book;
  const core::JournalLoad load = core::loadJournal(text, book);
  if (!load.ok) {
    ::close(fd);
    // Never overwrite what we cannot read: it may hold creates a newer version accepted.
    *fatal = load.error + "; refusing to start rather than overwrite it";
    return false;
  }
  if (load.skipped > 0) {
    log_.warn("deferred journal: unreadable lines skipped",
              {{"path", path_}, {"skipped", static_cast<uint64_t>(load.skipped)}});
  }
  if (fd_ >= 0) {
    ::close(fd_);
  }
  fd_ = fd;
  book_ = std::move(book);
  store_ok_ = true;
  store_backoff_ = {};
  // Start from a clean file: the live records only, no torn tail to append after.
  if (!compact()) {
    return false;
  }
  if (metrics_ != nullptr) {
    metrics_->setDeferredStoreReady(true);
  }
  return true;
}

bool DeferredService::compact() {
  const std::string tmp = path_ + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    storeFailed("cannot write the deferred journal", errno);
    return false;
  }
  const std::string snapshot = core::journalSnapshot(book_);
  if (!writeAll(fd, snapshot) || ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    storeFailed("cannot write the deferred journal", err);
    return false;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path_.c_str()) != 0 || !syncDir(path_)) {
    const int err = errno;
    ::unlink(tmp.c_str());
    storeFailed("cannot replace the deferred journal", err);
    return false;
  }
  const int nfd = ::open(path_.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  if (nfd < 0) {
    storeFailed("cannot reopen the deferred journal", errno);
    return false;
  }
  if (fd_ >= 0) {
    ::close(fd_);
  }
  fd_ = nfd;
  journal_size_ = snapshot.size();
  journal_lines_ = static_cast<size_t>(std::count(snapshot.begin(), snapshot.end(), '\n'));
  return true;
}

bool DeferredService::append(const std::string& lines) {
  if (fd_ < 0 || !store_ok_) {
    return false;
  }
  if (!writeAll(fd_, lines) || ::fdatasync(fd_) != 0) {
    const int err = errno;
    // A partial line must not stay in front of the next one.
    if (::ftruncate(fd_, static_cast<off_t>(journal_size_)) != 0) {
      log_.error("cannot cut the deferred journal back after a failed write", {{"path", path_}});
    }
    storeFailed("cannot write the deferred journal", err);
    return false;
  }
  journal_size_ += lines.size();
  journal_lines_ += static_cast<size_t>(std::count(lines.begin(), lines.end(), '\n'));
  return true;
}

void DeferredService::storeFailed(const std::string& what, int err) {
  const bool was_ok = store_ok_ || store_backoff_ == core::Duration::zero();
  store_ok_ = false;
  store_backoff_ = store_backoff_ == core::Duration::zero()
                       ? kStoreBackoffMin
                       : std::min(store_backoff_ * 2, kStoreBackoffMax);
  store_retry_at_ = clock_.now() + store_backoff_;
  if (was_ok) {
    // Once per outage: the sweep retries quietly, and a success says so.
    log_.error(what + ": creates wait for their slot on the connection instead of being "
                      "deferred until it works again",
               {{"path", path_}, {"error", std::strerror(err)}});
  }
  if (metrics_ != nullptr) {
    metrics_->setDeferredStoreReady(false);
  }
}

void DeferredService::retryStore(core::MonotonicTime now) {
  if (path_.empty() || store_ok_ || now < store_retry_at_) {
    return;
  }
  // A journal that could not be opened is read now (nothing was deferred meanwhile); one
  // that failed a write is rewritten from the book, which holds every promise made.
  std::string fatal;
  if (fd_ < 0 ? openJournal(&fatal) : compact()) {
    store_ok_ = true;
    store_backoff_ = {};
    if (metrics_ != nullptr) {
      metrics_->setDeferredStoreReady(true);
    }
    log_.info("deferred journal writable again: creates may be deferred", {{"path", path_}});
  } else if (!fatal.empty()) {
    store_retry_at_ = now + kStoreBackoffMax;
    log_.error("deferred journal not usable", {{"path", path_}, {"error", fatal}});
  }
}

}  // namespace hiapi::shell
