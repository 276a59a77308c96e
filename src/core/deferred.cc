#include "hiapi/core/deferred.h"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <functional>

namespace hiapi::core {
namespace {

using rapidjson::Value;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr unsigned kParseFlags = rapidjson::kParseIterativeFlag;
constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
constexpr size_t kIdChars = 26;

// The journal keeps bodies as base64: they are forwarded byte for byte (idempotency hashes the
// raw bytes), and nothing says a client's body is valid UTF-8.
constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) |
                       static_cast<unsigned char>(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) {
      out.push_back(kB64[(v >> s) & 63]);
    }
  }
  if (i < in.size()) {
    uint32_t v = uint32_t{static_cast<unsigned char>(in[i])} << 16;
    if (i + 1 < in.size()) {
      v |= uint32_t{static_cast<unsigned char>(in[i + 1])} << 8;
    }
    out.push_back(kB64[(v >> 18) & 63]);
    out.push_back(kB64[(v >> 12) & 63]);
    out.push_back(i + 1 < in.size() ? kB64[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

std::optional<std::string> unbase64(std::string_view in) {
  if (in.size() % 4 != 0) {
    return std::nullopt;
  }
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    uint32_t v = 0;
    int pad = 0;
    for (size_t k = 0; k < 4; ++k) {
      const char c = in[i + k];
      uint32_t d = 0;
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        ++pad;
      } else if (const char* p = c != '\0' ? std::char_traits<char>::find(kB64, 64, c) : nullptr;
                 p != nullptr && pad == 0) {
        d = static_cast<uint32_t>(p - kB64);
      } else {
        return std::nullopt;
      }
      v = (v << 6) | d;
    }
    out.push_back(static_cast<char>((v >> 16) & 0xFF));
    if (pad < 2) {
      out.push_back(static_cast<char>((v >> 8) & 0xFF));
    }
    if (pad < 1) {
      out.push_back(static_cast<char>(v & 0xFF));
    }
  }
  return out;
}

void str(JsonWriter& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

const Value* member(const Value& obj, const char* name) {
  if (!obj.IsObject()) {
    return nullptr;
  }
  const auto it = obj.FindMember(name);
  return it == obj.MemberEnd() ? nullptr : &it->value;
}

std::string stringOr(const Value& obj, const char* name, std::string fallback = {}) {
  const Value* v = member(obj, name);
  return v != nullptr && v->IsString() ? std::string(v->GetString(), v->GetStringLength())
                                       : std::move(fallback);
}

int64_t intOr(const Value& obj, const char* name, int64_t fallback = 0) {
  const Value* v = member(obj, name);
  return v != nullptr && v->IsInt64() ? v->GetInt64() : fallback;
}

template <typename Fill>
std::string jsonLine(Fill fill) {
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  w.StartObject();
  fill(w);
  w.EndObject();
  std::string out(sb.GetString(), sb.GetSize());
  out.push_back('\n');
  return out;
}

std::string opLine(std::string_view op, std::string_view id, int64_t at_ms) {
  return jsonLine([&](JsonWriter& w) {
    w.Key("op");
    str(w, op);
    w.Key("id");
    str(w, id);
    if (at_ms != 0) {
      w.Key("at");
      w.Int64(at_ms);
    }
  });
}

std::string bookKey(std::string_view key, std::string_view task) {
  std::string k(key);
  k.push_back('\n');
  k.append(task);
  return k;
}

}  // namespace

std::string makeDeferredId(int64_t wall_ms, Random& random) {
  std::string id(kDeferredIdPrefix);
  // 10 characters of time (50 bits, the top two zero), then 16 of randomness (80 bits).
  const uint64_t t = static_cast<uint64_t>(std::max<int64_t>(wall_ms, 0));
  for (int i = 9; i >= 0; --i) {
    id.push_back(kCrockford[(t >> (5 * i)) & 31]);
  }
  for (size_t i = 0; i < 16; ++i) {
    id.push_back(kCrockford[static_cast<int>(random.uniform() * 32) & 31]);
  }
  return id;
}

bool isDeferredId(std::string_view id) {
  if (!looksDeferred(id) || id.size() != kDeferredIdPrefix.size() + kIdChars) {
    return false;
  }
  for (char c : id.substr(kDeferredIdPrefix.size())) {
    if (std::char_traits<char>::find(kCrockford, 32, c) == nullptr || c == '\0') {
      return false;
    }
  }
  return true;
}

std::string_view deferredStateName(DeferredState s) {
  switch (s) {
  case DeferredState::Queued:
    return "queued";
  case DeferredState::Submitted:
    return "submitted";
  case DeferredState::Failed:
    return "failed";
  case DeferredState::Cancelled:
    return "cancelled";
  case DeferredState::Expired:
    return "expired";
  }
  return "queued";
}

// ---- DeferredBook ----------------------------------------------------------------------------

bool DeferredBook::add(DeferredRecord r) {
  if (records_.count(r.id) != 0) {
    return false;
  }
  r.seq = next_seq_++;
  if (r.state == DeferredState::Queued) {
    ++queued_total_;
    ++queued_by_key_[r.key];
  }
  const std::string id = r.id;
  records_.emplace(id, std::move(r));
  return true;
}

const DeferredRecord* DeferredBook::find(std::string_view id) const {
  const auto it = records_.find(id);
  return it == records_.end() ? nullptr : &it->second;
}

DeferredRecord* DeferredBook::get(std::string_view id) {
  const auto it = records_.find(id);
  return it == records_.end() ? nullptr : &it->second;
}

const DeferredRecord* DeferredBook::byTask(std::string_view key, std::string_view task_id) const {
  const auto it = by_task_.find(bookKey(key, task_id));
  return it == by_task_.end() ? nullptr : find(it->second);
}

void DeferredBook::leaveQueue(DeferredRecord& r, DeferredState to, int64_t at_ms) {
  if (r.state == DeferredState::Queued) {
    --queued_total_;
    if (auto it = queued_by_key_.find(r.key); it != queued_by_key_.end() && --it->second == 0) {
      queued_by_key_.erase(it);
    }
  }
  r.state = to;
  r.ended_ms = at_ms;
}

bool DeferredBook::markSubmitted(std::string_view id, std::string task_id, int64_t at_ms) {
  DeferredRecord* r = get(id);
  if (r == nullptr || r->state != DeferredState::Queued) {
    return false;
  }
  leaveQueue(*r, DeferredState::Submitted, at_ms);
  r->task_id = std::move(task_id);
  by_task_[bookKey(r->key, r->task_id)] = r->id;
  return true;
}

bool DeferredBook::markFailed(std::string_view id, int status, std::string code,
                              std::string message, int64_t at_ms) {
  DeferredRecord* r = get(id);
  if (r == nullptr || r->state != DeferredState::Queued) {
    return false;
  }
  leaveQueue(*r, DeferredState::Failed, at_ms);
  r->fail_status = status;
  r->fail_code = std::move(code);
  r->fail_message = std::move(message);
  return true;
}

bool DeferredBook::markCancelled(std::string_view id, int64_t at_ms) {
  DeferredRecord* r = get(id);
  if (r == nullptr || r->state != DeferredState::Queued) {
    return false;
  }
  leaveQueue(*r, DeferredState::Cancelled, at_ms);
  r->fail_code = "CANCELLED";
  r->fail_message = "cancelled by the client before hiapi-proxy submitted it";
  return true;
}

bool DeferredBook::markExpired(std::string_view id, int64_t at_ms) {
  DeferredRecord* r = get(id);
  if (r == nullptr || r->state != DeferredState::Queued) {
    return false;
  }
  leaveQueue(*r, DeferredState::Expired, at_ms);
  r->fail_code = "DEFERRED_EXPIRED";
  r->fail_message = "no slot freed for this task within hiapi-proxy's deferred.max_age: it was "
                    "never submitted";
  return true;
}

bool DeferredBook::markTaskEnded(std::string_view id) {
  DeferredRecord* r = get(id);
  if (r == nullptr || r->state != DeferredState::Submitted || r->task_ended) {
    return false;
  }
  r->task_ended = true;
  return true;
}

bool DeferredBook::forget(std::string_view id) {
  const auto it = records_.find(id);
  if (it == records_.end()) {
    return false;
  }
  leaveQueue(it->second, it->second.state, it->second.ended_ms);
  if (!it->second.task_id.empty()) {
    by_task_.erase(bookKey(it->second.key, it->second.task_id));
  }
  records_.erase(it);
  return true;
}

size_t DeferredBook::queuedFor(std::string_view key) const {
  const auto it = queued_by_key_.find(std::string(key));
  return it == queued_by_key_.end() ? 0 : it->second;
}

std::optional<size_t> DeferredBook::position(std::string_view id) const {
  const DeferredRecord* r = find(id);
  if (r == nullptr || r->state != DeferredState::Queued) {
    return std::nullopt;
  }
  size_t ahead = 0;
  for (const auto& [other_id, o] : records_) {
    if (o.state == DeferredState::Queued && o.seq < r->seq && o.key == r->key &&
        o.tier == r->tier) {
      ++ahead;
    }
  }
  return ahead + 1;
}

std::vector<const DeferredRecord*> DeferredBook::all() const {
  std::vector<const DeferredRecord*> out;
  out.reserve(records_.size());
  for (const auto& [id, r] : records_) {
    out.push_back(&r);
  }
  std::sort(out.begin(), out.end(),
            [](const DeferredRecord* a, const DeferredRecord* b) { return a->seq < b->seq; });
  return out;
}

DeferredBook::Due DeferredBook::due(int64_t now_ms, Duration max_age, Duration keep) const {
  const auto ms = [](Duration d) {
    return static_cast<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
  };
  Due d;
  for (const auto& [id, r] : records_) {
    if (r.state == DeferredState::Queued) {
      if (now_ms - r.accepted_ms >= ms(max_age)) {
        d.expire.push_back(id);
      }
    } else if (now_ms - r.ended_ms >= ms(keep)) {
      d.forget.push_back(id);
    }
  }
  return d;
}

// ---- journal ---------------------------------------------------------------------------------

std::string journalHeader() {
  return jsonLine([](JsonWriter& w) {
    w.Key("hiapi_proxy_deferred");
    w.Int(kJournalVersion);
  });
}

std::string journalAccept(const DeferredRecord& r) {
  return jsonLine([&](JsonWriter& w) {
    w.Key("op");
    w.String("accept");
    w.Key("id");
    str(w, r.id);
    w.Key("key");
    str(w, r.key);
    if (!r.auth.empty()) {
      w.Key("auth");
      str(w, r.auth);
    }
    w.Key("client");
    str(w, r.client);
    w.Key("tier");
    str(w, r.tier);
    w.Key("model");
    str(w, r.model);
    w.Key("at");
    w.Int64(r.accepted_ms);
    w.Key("target");
    str(w, r.target);
    w.Key("headers");
    w.StartArray();
    for (const auto& [name, value] : r.headers) {
      w.StartArray();
      str(w, name);
      str(w, value);
      w.EndArray();
    }
    w.EndArray();
    w.Key("body");
    str(w, base64(r.body));
  });
}

std::string journalSubmitted(std::string_view id, std::string_view task_id, int64_t at_ms) {
  return jsonLine([&](JsonWriter& w) {
    w.Key("op");
    w.String("submitted");
    w.Key("id");
    str(w, id);
    w.Key("task");
    str(w, task_id);
    w.Key("at");
    w.Int64(at_ms);
  });
}

std::string journalFailed(std::string_view id, int status, std::string_view code,
                          std::string_view message, int64_t at_ms) {
  return jsonLine([&](JsonWriter& w) {
    w.Key("op");
    w.String("failed");
    w.Key("id");
    str(w, id);
    w.Key("status");
    w.Int(status);
    w.Key("code");
    str(w, code);
    w.Key("message");
    str(w, message);
    w.Key("at");
    w.Int64(at_ms);
  });
}

std::string journalCancelled(std::string_view id, int64_t at_ms) {
  return opLine("cancelled", id, at_ms);
}
std::string journalExpired(std::string_view id, int64_t at_ms) {
  return opLine("expired", id, at_ms);
}
std::string journalEnded(std::string_view id) { return opLine("ended", id, 0); }
std::string journalForget(std::string_view id) { return opLine("forget", id, 0); }

std::string journalRecord(const DeferredRecord& r) {
  std::string out = journalAccept(r);
  switch (r.state) {
  case DeferredState::Queued:
    break;
  case DeferredState::Submitted:
    out += journalSubmitted(r.id, r.task_id, r.ended_ms);
    if (r.task_ended) {
      out += journalEnded(r.id);
    }
    break;
  case DeferredState::Failed:
    out += journalFailed(r.id, r.fail_status, r.fail_code, r.fail_message, r.ended_ms);
    break;
  case DeferredState::Cancelled:
    out += journalCancelled(r.id, r.ended_ms);
    break;
  case DeferredState::Expired:
    out += journalExpired(r.id, r.ended_ms);
    break;
  }
  return out;
}

std::string journalSnapshot(const DeferredBook& book) {
  std::string out = journalHeader();
  for (const DeferredRecord* r : book.all()) {
    out += journalRecord(*r);
  }
  return out;
}

std::optional<DeferredRecord> parseRecord(std::string_view lines) {
  DeferredBook book;
  const JournalLoad load = loadJournal(journalHeader() + std::string(lines), book);
  const std::vector<const DeferredRecord*> all = book.all();
  if (!load.ok || load.skipped > 0 || load.torn_tail || all.size() != 1) {
    return std::nullopt;
  }
  return *all.front();
}

namespace {

// Applies one journal line to @p book. @return false when it cannot be read.
bool applyLine(const rapidjson::Document& d, DeferredBook& book) {
  const std::string op = stringOr(d, "op");
  const std::string id = stringOr(d, "id");
  if (id.empty()) {
    return false;
  }
  const int64_t at = intOr(d, "at");
  if (op == "accept") {
    DeferredRecord r;
    r.id = id;
    r.key = stringOr(d, "key");
    r.auth = stringOr(d, "auth");
    r.client = stringOr(d, "client");
    r.tier = stringOr(d, "tier");
    r.model = stringOr(d, "model");
    r.target = stringOr(d, "target", "/v1/tasks");
    r.accepted_ms = at;
    const Value* hs = member(d, "headers");
    if (hs == nullptr || !hs->IsArray() || r.key.empty()) {
      return false;
    }
    for (const Value& h : hs->GetArray()) {
      if (!h.IsArray() || h.Size() != 2 || !h[0].IsString() || !h[1].IsString()) {
        return false;
      }
      r.headers.emplace_back(std::string(h[0].GetString(), h[0].GetStringLength()),
                             std::string(h[1].GetString(), h[1].GetStringLength()));
    }
    auto body = unbase64(stringOr(d, "body"));
    if (!body) {
      return false;
    }
    r.body = std::move(*body);
    return book.add(std::move(r));
  }
  if (op == "submitted") {
    const std::string task = stringOr(d, "task");
    return !task.empty() && book.markSubmitted(id, task, at);
  }
  if (op == "failed") {
    return book.markFailed(id, static_cast<int>(intOr(d, "status")), stringOr(d, "code"),
                           stringOr(d, "message"), at);
  }
  if (op == "cancelled") {
    return book.markCancelled(id, at);
  }
  if (op == "expired") {
    return book.markExpired(id, at);
  }
  if (op == "ended") {
    return book.markTaskEnded(id);
  }
  if (op == "forget") {
    return book.forget(id);
  }
  return false;
}

}  // namespace

JournalLoad loadJournal(std::string_view text, DeferredBook& book) {
  JournalLoad out;
  bool header_seen = false;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) {
      out.torn_tail = true;  // never acknowledged: its create was not answered
      break;
    }
    const std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (line.empty()) {
      continue;
    }
    ++out.lines;
    rapidjson::Document d;
    d.Parse<kParseFlags>(line.data(), line.size());
    if (d.HasParseError() || !d.IsObject()) {
      if (!header_seen) {
        out.ok = false;
        out.error = "the first line is not a hiapi-proxy deferred journal header";
        return out;
      }
      ++out.skipped;
      continue;
    }
    if (!header_seen) {
      const Value* v = member(d, "hiapi_proxy_deferred");
      if (v == nullptr || !v->IsInt()) {
        out.ok = false;
        out.error = "the first line is not a hiapi-proxy deferred journal header";
        return out;
      }
      out.version = v->GetInt();
      if (out.version > kJournalVersion || out.version < 1) {
        out.ok = false;
        out.error = "written by a newer hiapi-proxy (journal version " +
                    std::to_string(out.version) + ", this one reads up to " +
                    std::to_string(kJournalVersion) + ")";
        return out;
      }
      header_seen = true;
      continue;
    }
    if (!applyLine(d, book)) {
      ++out.skipped;
    }
  }
  return out;
}

}  // namespace hiapi::core
