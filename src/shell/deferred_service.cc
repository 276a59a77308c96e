#include "hiapi/shell/deferred_service.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/proxy_error.h"
#include "hiapi/core/retry_policy.h"
#include "hiapi/core/task_json.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/task_service.h"

namespace hiapi::shell {
namespace {

namespace fs = std::filesystem;

// Expiry, resubmissions, journal retries and compaction run this often.
constexpr core::Duration kSweep = std::chrono::seconds(1);
// A journal that failed is tried again after this, doubling up to kStoreBackoffMax.
constexpr core::Duration kStoreBackoffMin = std::chrono::seconds(5);
constexpr core::Duration kStoreBackoffMax = std::chrono::minutes(5);
// A submission HiAPI turned away for now (429, 409 processing, 5xx, network) goes again after
// this, doubling with each attempt up to kResubmitMax (the key's cooldown paces it too).
constexpr core::Duration kResubmitMin = std::chrono::seconds(2);
constexpr core::Duration kResubmitMax = std::chrono::minutes(1);
// The journal is rewritten when it holds this many lines and four times the live records.
constexpr size_t kCompactLines = 1000;

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

// The `page` query parameter of @p target (1 when absent or unreadable).
long pageOf(std::string_view target) {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) {
    return 1;
  }
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view kv = query.substr(0, amp);
    if (kv.substr(0, 5) == "page=") {
      const std::string v(kv.substr(5));
      char* end = nullptr;
      const long p = std::strtol(v.c_str(), &end, 10);
      return end != v.c_str() && p >= 1 ? p : 1;
    }
    if (amp == std::string_view::npos) {
      break;
    }
    query.remove_prefix(amp + 1);
  }
  return 1;
}

// A cancel of task @p id: `DELETE /v1/tasks/{id}` or `POST /v1/tasks/{id}/cancel`.
std::optional<std::string> cancelTarget(std::string_view method, std::string_view target) {
  std::string_view path = target.substr(0, target.find('?'));
  constexpr std::string_view kTasks = "/v1/tasks/";
  if (path.substr(0, kTasks.size()) != kTasks) {
    return std::nullopt;
  }
  path.remove_prefix(kTasks.size());
  constexpr std::string_view kCancel = "/cancel";
  if (method == "POST" && path.size() > kCancel.size() &&
      path.substr(path.size() - kCancel.size()) == kCancel) {
    path.remove_suffix(kCancel.size());
  } else if (method != "DELETE") {
    return std::nullopt;
  }
  if (path.empty() || path.find('/') != std::string_view::npos) {
    return std::nullopt;
  }
  return std::string(path);
}

}  // namespace

DeferredService::DeferredService(Timers& timers, core::Random& random, core::ConfigSharedPtr cfg,
                                 ProxyServer& proxy, Limiter& limiter, TaskService& tasks,
                                 Logger& log, Metrics* metrics)
    : timers_(timers), cfg_(std::move(cfg)), proxy_(proxy), limiter_(limiter), tasks_(tasks),
      log_(log), metrics_(metrics), clock_(timers.clock()), random_(random) {
  due_timer_ = timers_.make([this] { deferDue(); });
  sweep_ = timers_.make([this] { onSweep(); });
  sweep_->armAt(clock_.now() + kSweep);
}

DeferredService::~DeferredService() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

int64_t DeferredService::wallMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             clock_.wallNow().time_since_epoch())
      .count();
}

void DeferredService::reconfigure(core::ConfigSharedPtr cfg) { cfg_ = std::move(cfg); }

// ---- journal -------------------------------------------------------------------------------

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

// ---- deferring -----------------------------------------------------------------------------

std::optional<size_t> DeferredService::tierIndex(const std::string& name) const {
  const auto& tiers = cfg_->limits.tiers;
  for (size_t i = 0; i < tiers.size(); ++i) {
    if (tiers[i].name == name) {
      return i;
    }
  }
  return std::nullopt;
}

void DeferredService::waiting(RequestCtx& ctx) {
  // With a journal configured but not writable now, the check still runs: a create that would
  // have been deferred is counted (deferred_refused_total{reason="store"}) and keeps waiting.
  if (path_.empty() || !ctx.tier || ctx.attempts > 0) {
    return;
  }
  const auto& tiers = cfg_->limits.tiers;
  const core::TierConfig& t = tiers[std::min(*ctx.tier, tiers.size() - 1)];
  if (!t.defer) {
    return;
  }
  due_.emplace(clock_.now() + t.defer_after, ctx.id);
  armDue();
}

void DeferredService::armDue() {
  if (due_.empty()) {
    due_timer_->cancel();
    return;
  }
  due_timer_->armAt(due_.begin()->first);
}

void DeferredService::deferDue() {
  const auto now = clock_.now();
  std::vector<uint64_t> ids;
  while (!due_.empty() && due_.begin()->first <= now) {
    ids.push_back(due_.begin()->second);
    due_.erase(due_.begin());
  }
  // Every create due now is written with one fsync, then all of them are answered.
  std::vector<core::DeferredRecord> records;
  std::vector<uint64_t> request_ids;
  std::string lines;
  const int64_t now_ms = wallMs();
  for (uint64_t id : ids) {
    RequestCtx* ctx = proxy_.find(id);
    if (ctx == nullptr || ctx->answered || ctx->client_gone || !ctx->tier ||
        !limiter_.isWaiting(*ctx)) {
      continue;  // sent, answered or gone meanwhile
    }
    if (!storeReady()) {
      if (metrics_ != nullptr) {
        metrics_->deferredRefused("store");
      }
      continue;
    }
    if (book_.queued() + records.size() >= cfg_->deferred.max_total ||
        book_.queuedFor(ctx->key_name) + records.size() >= cfg_->deferred.max_per_key) {
      if (metrics_ != nullptr) {
        metrics_->deferredRefused("full");
      }
      continue;  // it waits as any create does (and may hear queue_full / queue_timeout)
    }
    core::DeferredRecord r;
    r.id = core::makeDeferredId(now_ms, random_);
    r.key = ctx->key_name;
    r.client = ctx->client;
    const auto& tiers = cfg_->limits.tiers;
    r.tier = tiers[std::min(*ctx->tier, tiers.size() - 1)].name;
    r.model = ctx->model;
    r.target = ctx->upstream.target;
    r.body = ctx->upstream.body;
    r.accepted_ms = now_ms;
    bool has_key = false;
    for (const Header& h : ctx->upstream.headers) {
      if (core::iequals(h.name, "Authorization")) {
        continue;
      }
      has_key = has_key || core::iequals(h.name, "Idempotency-Key");
      r.headers.emplace_back(h.name, h.value);
    }
    if (!has_key) {
      // HiAPI dedupes by key and raw body: a submission repeated after a crash finds the task
      // the first one made.
      r.headers.emplace_back("Idempotency-Key", "hiapi-proxy-" + r.id);
    }
    bool configured = false;
    for (const core::KeyConfig& k : cfg_->keys) {
      configured = configured || k.name == r.key;
    }
    if (!configured) {
      r.auth = ctx->authorization;
    }
    lines += core::journalAccept(r);
    records.push_back(std::move(r));
    request_ids.push_back(id);
  }
  if (!records.empty()) {
    if (!append(lines)) {
      if (metrics_ != nullptr) {
        for (size_t i = 0; i < records.size(); ++i) {
          metrics_->deferredRefused("store");
        }
      }
      records.clear();  // not kept, so not promised: they go on waiting
    }
    for (size_t i = 0; i < records.size(); ++i) {
      core::DeferredRecord& r = records[i];
      const std::string id = r.id;
      const std::string key = r.key;
      const std::string tier = r.tier;
      book_.add(std::move(r));
      if (!proxy_.answerDeferred(request_ids[i], core::renderDeferredCreate(id))) {
        // Nothing ran between the check and here; should it ever, the record is not promised.
        book_.markCancelled(id, now_ms);
        append(core::journalCancelled(id, now_ms));
        continue;
      }
      if (metrics_ != nullptr) {
        metrics_->deferredOutcome(key, tier, "accepted");
      }
      log_.info("create deferred", {{"task", id}, {"key", key}, {"tier", tier}});
      submit(*book_.find(id));
    }
  }
  armDue();
}

std::string DeferredService::authFor(const core::DeferredRecord& r) const {
  if (!r.auth.empty()) {
    return r.auth;
  }
  for (const core::KeyConfig& k : cfg_->keys) {
    if (k.name == r.key) {
      return "Bearer " + k.key.reveal();
    }
  }
  return {};
}

void DeferredService::submit(const core::DeferredRecord& r) {
  const std::string auth = authFor(r);
  if (auth.empty()) {
    fail(r.id, 0, "KEY_UNAVAILABLE",
         "the key '" + r.key + "' this task was accepted for is no longer configured");
    return;
  }
  const core::Duration age = std::chrono::milliseconds(wallMs() - r.accepted_ms);
  const core::Duration left = cfg_->deferred.max_age - age;
  if (left <= core::Duration::zero()) {
    return;  // the sweep expires it
  }
  DeferredSubmission s;
  s.deferred_id = r.id;
  // A passthrough key's name comes from a secret that may have changed with a restart: the
  // submission goes under the name the key has now, with the requests its clients send.
  s.key_name = r.auth.empty() ? r.key : proxy_.keyNameFor(r.auth);
  s.authorization = auth;
  s.client = r.client;
  s.target = r.target;
  for (const auto& [name, value] : r.headers) {
    s.headers.push_back(Header{name, value});
  }
  s.body = r.body;
  s.time_left = left;
  retry_at_.erase(r.id);
  const std::string id = r.id;
  inflight_[id] = 0;  // set below; submitDeferred may answer at once (a full queue)
  const uint64_t request = proxy_.submitDeferred(s);
  if (auto it = inflight_.find(id); it != inflight_.end()) {
    it->second = request;
  }
}

void DeferredService::resubmitLater(const std::string& id) {
  const int n = ++attempts_[id];
  // Full jitter: many deferred creates turned away together do not come back together.
  retry_at_[id] = clock_.now() + kResubmitMin / 2 +
                  core::fullJitterBackoff(kResubmitMin, kResubmitMax, static_cast<uint32_t>(n),
                                          random_);
}

void DeferredService::fail(const std::string& id, int status, std::string code,
                           std::string message) {
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr) {
    return;
  }
  const int64_t now_ms = wallMs();
  append(core::journalFailed(id, status, code, message, now_ms));
  log_.warn("deferred create failed",
            {{"task", id}, {"key", r->key}, {"status", status}, {"code", code}});
  if (metrics_ != nullptr) {
    metrics_->deferredOutcome(r->key, r->tier, "failed");
  }
  book_.markFailed(id, status, std::move(code), std::move(message), now_ms);
  attempts_.erase(id);
  retry_at_.erase(id);
}

void DeferredService::submitted(RequestCtx& ctx, const UpstreamResponse& resp) {
  const std::string id = ctx.deferred_id;
  inflight_.erase(id);
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr || r->state != core::DeferredState::Queued) {
    return;
  }
  const int status = resp.error == UpstreamError::None ? resp.status : 0;
  if (status >= 200 && status < 300) {
    std::optional<std::string> task = core::parseCreatedTaskId(resp.body);
    if (!task) {
      fail(id, status, "UPSTREAM_REPLY_UNREADABLE",
           "HiAPI accepted the create but its reply named no taskId");
      return;
    }
    const int64_t now_ms = wallMs();
    // Not fatal if lost: after a restart the resubmission is answered with this same task.
    append(core::journalSubmitted(id, *task, now_ms));
    if (metrics_ != nullptr) {
      metrics_->deferredOutcome(r->key, r->tier, "submitted");
      metrics_->deferredWait(r->tier, static_cast<double>(now_ms - r->accepted_ms) / 1000.0);
    }
    log_.info("deferred create submitted", {{"task", id}, {"upstream_task", *task},
                                            {"key", r->key}, {"request_id", ctx.request_id}});
    book_.markSubmitted(id, std::move(*task), now_ms);
    attempts_.erase(id);
    return;
  }
  // What waiting can fix goes again; what it cannot is the task's answer.
  const bool transient = status == 0 || status == 408 || status == 409 || status == 425 ||
                         status == 429 || status >= 500;
  if (transient) {
    resubmitLater(id);
    return;
  }
  const core::UpstreamErrorFields f = core::parseUpstreamError(resp.body);
  std::string code = f.code ? *f.code : "HTTP_" + std::to_string(status);
  std::string message = f.message ? *f.message : "HiAPI refused the create";
  if (!ctx.upstream_request_id.empty()) {
    message += " (request_id " + ctx.upstream_request_id + ")";
  }
  fail(id, status, std::move(code), std::move(message));
}

void DeferredService::rejected(RequestCtx& ctx, core::ProxyError e) {
  const std::string id = ctx.deferred_id;
  inflight_.erase(id);
  if (e == core::ProxyError::ShuttingDown) {
    return;  // kept in the journal: the next start submits it
  }
  const core::DeferredRecord* r = book_.find(id);
  if (r != nullptr && r->state == core::DeferredState::Queued) {
    resubmitLater(id);  // the sweep expires it once deferred.max_age has passed
  }
}

void DeferredService::taskEnded(const std::string& key, const std::string& task_id) {
  const core::DeferredRecord* r = book_.byTask(key, task_id);
  if (r == nullptr || r->task_ended) {
    return;
  }
  const std::string id = r->id;
  book_.markTaskEnded(id);
  append(core::journalEnded(id));
}

// ---- sweep ---------------------------------------------------------------------------------

void DeferredService::onSweep() {
  sweep_->armAt(clock_.now() + kSweep);
  sweep();
}

void DeferredService::sweep() {
  const auto now = clock_.now();
  if (!path_.empty() && !store_ok_ && now >= store_retry_at_) {
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
  const int64_t now_ms = wallMs();
  const core::DeferredBook::Due due =
      book_.due(now_ms, cfg_->deferred.max_age, cfg_->deferred.keep);
  for (const std::string& id : due.expire) {
    if (auto it = inflight_.find(id); it != inflight_.end()) {
      if (!proxy_.withdraw(it->second)) {
        continue;  // on the wire: its answer decides
      }
      inflight_.erase(it);
    }
    const core::DeferredRecord* r = book_.find(id);
    if (metrics_ != nullptr) {
      metrics_->deferredOutcome(r->key, r->tier, "expired");
    }
    log_.warn("deferred create expired", {{"task", id}, {"key", r->key}, {"tier", r->tier}});
    append(core::journalExpired(id, now_ms));
    book_.markExpired(id, now_ms);
    retry_at_.erase(id);
    attempts_.erase(id);
  }
  if (!due.forget.empty()) {
    std::string lines;
    for (const std::string& id : due.forget) {
      lines += core::journalForget(id);
      book_.forget(id);
    }
    append(lines);
  }
  std::vector<std::string> again;
  for (const auto& [id, at] : retry_at_) {
    if (at <= now) {
      again.push_back(id);
    }
  }
  for (const std::string& id : again) {
    retry_at_.erase(id);
    if (const core::DeferredRecord* r = book_.find(id);
        r != nullptr && r->state == core::DeferredState::Queued && inflight_.count(id) == 0) {
      submit(*r);
    }
  }
  if (store_ok_ && journal_lines_ > kCompactLines && journal_lines_ > 4 * book_.size()) {
    compact();
  }
}

void DeferredService::refreshGauges() {
  if (metrics_ == nullptr) {
    return;
  }
  std::map<std::pair<std::string, std::string>, size_t> counts;
  for (const core::KeyConfig& k : cfg_->keys) {
    for (const core::TierConfig& t : cfg_->limits.tiers) {
      counts[{k.name, t.name}] = 0;
    }
  }
  for (const core::DeferredRecord* r : book_.all()) {
    if (r->state == core::DeferredState::Queued) {
      ++counts[{r->key, r->tier}];
    }
  }
  for (const auto& [kt, n] : counts) {
    metrics_->setDeferredQueued(kt.first, kt.second, n);
  }
  metrics_->setDeferredStoreReady(storeReady());
}

// ---- what clients ask ----------------------------------------------------------------------

bool DeferredService::ownedBy(const core::DeferredRecord& r, const RequestCtx& ctx) const {
  // A passthrough key is matched on the whole Authorization value (its name may have changed
  // with a restart); a configured key on its name.
  return r.auth.empty() ? r.key == ctx.key_name : r.auth == ctx.authorization;
}

std::optional<int64_t> DeferredService::estimatedStart(const core::DeferredRecord& r,
                                                       size_t position) const {
  const std::optional<size_t> tier = tierIndex(r.tier);
  if (!tier) {
    return std::nullopt;
  }
  const core::TierConfig& t = cfg_->limits.tiers[*tier];
  core::Duration d = t.expected_duration;
  const auto durations = tasks_.tracker().tierDurations(clock_.now());
  if (*tier < durations.size() && durations[*tier]) {
    d = durations[*tier]->value;
  }
  if (d <= core::Duration::zero()) {
    return std::nullopt;
  }
  // Waves of the tier's ceiling ahead of it, each about one task duration long.
  const size_t waves = (position - 1) / std::max<uint32_t>(t.max_running, 1) + 1;
  return wallMs() / 1000 + static_cast<int64_t>(core::toSeconds(d * waves));
}

bool DeferredService::intercept(RequestCtx& ctx) {
  if (ctx.route.kind == core::RouteKind::Poll && core::looksDeferred(ctx.route.task_id)) {
    const core::DeferredRecord* r = book_.find(ctx.route.task_id);
    if (r == nullptr || !ownedBy(*r, ctx)) {
      proxy_.replyProxyError(ctx, core::ProxyError::TaskNotFound,
                             "Task not found: no task " + ctx.route.task_id + " for this key");
      return true;
    }
    if (r->state == core::DeferredState::Submitted) {
      // HiAPI holds it now: the poll goes as a poll of HiAPI's id (cache and coalescing
      // included), and the reply is given back under the id the client knows.
      const std::string_view target = ctx.upstream.target;
      const size_t q = target.find('?');
      ctx.alias_id = r->id;
      ctx.route.task_id = r->task_id;
      ctx.upstream.target = "/v1/tasks/" + core::percentEncodeSegment(r->task_id) +
                            (q == std::string_view::npos ? "" : std::string(target.substr(q)));
      return false;
    }
    const std::optional<size_t> position = book_.position(r->id);
    const std::optional<int64_t> start =
        position ? estimatedStart(*r, *position) : std::nullopt;
    const std::string pos = position ? std::to_string(*position) : std::string();
    HeaderViews extra{HeaderView{"X-HiAPI-Proxy-Deferred", core::deferredStateName(r->state)}};
    if (position) {
      extra.push_back(HeaderView{"X-HiAPI-Proxy-Queue-Position", pos});
    }
    proxy_.replyLocal(ctx, 200, core::renderDeferredDetail(*r, position, start), extra,
                      "deferred_detail");
    return true;
  }
  if (ctx.route.kind == core::RouteKind::Other && handleCancel(ctx)) {
    return true;
  }
  if (ctx.route.kind == core::RouteKind::List && book_.size() > 0) {
    ctx.list_merge = true;
  }
  return false;
}

bool DeferredService::handleCancel(RequestCtx& ctx) {
  const std::optional<std::string> raw = cancelTarget(ctx.method, ctx.upstream.target);
  if (!raw) {
    return false;
  }
  std::string id = *raw;
  if (auto decoded = core::percentDecode(id)) {
    id = std::move(*decoded);
  }
  if (!core::looksDeferred(id)) {
    return false;  // HiAPI's own task: its answer
  }
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr || !ownedBy(*r, ctx)) {
    proxy_.replyProxyError(ctx, core::ProxyError::TaskNotFound,
                           "Task not found: no task " + id + " for this key");
    return true;
  }
  if (r->state == core::DeferredState::Queued) {
    if (auto it = inflight_.find(id); it != inflight_.end()) {
      if (!proxy_.withdraw(it->second)) {
        proxy_.replyProxyError(ctx, core::ProxyError::TaskNotQueued,
                               "the task is being submitted to HiAPI right now");
        return true;
      }
      inflight_.erase(it);
    }
    const int64_t now_ms = wallMs();
    if (!append(core::journalCancelled(id, now_ms))) {
      log_.warn("deferred cancel not written to the journal: a restart would submit the task",
                {{"task", id}});
    }
    if (metrics_ != nullptr) {
      metrics_->deferredOutcome(r->key, r->tier, "cancelled");
    }
    log_.info("deferred create cancelled", {{"task", id}, {"key", r->key}});
    book_.markCancelled(id, now_ms);
    retry_at_.erase(id);
    attempts_.erase(id);
  }
  if (r->state != core::DeferredState::Cancelled) {
    proxy_.replyProxyError(ctx, core::ProxyError::TaskNotQueued,
                           r->state == core::DeferredState::Submitted
                               ? "the task was submitted to HiAPI as " + r->task_id +
                                     "; HiAPI has no cancel"
                               : "the task is no longer queued (" +
                                     std::string(core::deferredStateName(r->state)) + ")");
    return true;
  }
  proxy_.replyLocal(ctx, 200, core::renderDeferredCancelled(id),
                    {HeaderView{"X-HiAPI-Proxy-Deferred", "cancelled"}}, "deferred_cancel");
  return true;
}

std::optional<std::string> DeferredService::rewrite(const RequestCtx& ctx, std::string_view body) {
  if (!ctx.alias_id.empty()) {
    return core::rewriteDetail(body, ctx.alias_id);
  }
  if (!ctx.list_merge) {
    return std::nullopt;
  }
  std::map<std::string, std::string, std::less<>> alias;
  for (const core::DeferredRecord* r : book_.all()) {
    if (r->state == core::DeferredState::Submitted && ownedBy(*r, ctx)) {
      alias.emplace(r->task_id, r->id);
    }
  }
  std::vector<const core::DeferredRecord*> extra;
  if (pageOf(ctx.upstream.target) == 1) {
    const std::vector<const core::DeferredRecord*> records = book_.all();
    for (auto it = records.rbegin(); it != records.rend(); ++it) {  // newest first
      if ((*it)->state != core::DeferredState::Submitted && ownedBy(**it, ctx)) {
        extra.push_back(*it);
      }
    }
  }
  if (alias.empty() && extra.empty()) {
    return std::nullopt;
  }
  return core::rewriteList(body, alias, extra);
}

}  // namespace hiapi::shell
