#include "hiapi/shell/deferred_share.h"

#include <hiredis/hiredis.h>

#include "hiapi/shell/redis_store.h"
#include "redis_internal.h"

namespace hiapi::shell {
namespace {

// Every script reads Redis' clock and judges an instance alive while its heartbeat (an expiry
// in the instances set, see kHeartbeatScript) is in the future. Record keys other than KEYS are
// built inside the scripts from the prefix: the store is one Redis, not a cluster.
#define HIAPI_LUA_PRELUDE                                                        \
  "if redis.replicate_commands then redis.replicate_commands() end\n"           \
  "local t0 = redis.call('TIME')\n"                                              \
  "local now = tonumber(t0[1]) * 1000 + math.floor(tonumber(t0[2]) / 1000)\n"    \
  "local function alive(inst, who)\n"                                            \
  "  local exp = redis.call('ZSCORE', inst, who)\n"                              \
  "  return exp and tonumber(exp) > now\n"                                       \
  "end\n"

// KEYS: record, queue, instances. ARGV: me, id, state, text, accepted ms, life ms.
// Reply: {'mine'} | {'elsewhere'} | {'ended', text, state, ended ms}.
constexpr const char* kWriteScript = HIAPI_LUA_PRELUDE R"lua(
local cur = redis.call('HMGET', KEYS[1], 't', 's', 'o', 'e')
local me, id, state = ARGV[1], ARGV[2], ARGV[3]
local answered = state == 'submitted' or state == 'failed'
if cur[2] and cur[2] ~= 'queued' and cur[2] ~= state and not answered then
  return {'ended', cur[1] or '', cur[2], cur[4] or '0'}
end
if state == 'queued' then
  if cur[3] and cur[3] ~= me and alive(KEYS[3], cur[3]) then
    return {'elsewhere'}
  end
  redis.call('HSET', KEYS[1], 't', ARGV[4], 's', 'queued', 'o', me)
  redis.call('ZADD', KEYS[2], ARGV[5], id)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
else
  redis.call('HSET', KEYS[1], 't', ARGV[4], 's', state, 'o', me)
  redis.call('HDEL', KEYS[1], 'c', 'e')
  redis.call('ZREM', KEYS[2], id)
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {'mine'}
)lua";

// KEYS: record. Reply: {text, state, ended ms} (false for what the record lacks).
constexpr const char* kLookupScript = R"lua(
return redis.call('HMGET', KEYS[1], 't', 's', 'e')
)lua";

// KEYS: queue, instances. ARGV: me, record key prefix, records to take at most, held ids...
// Reply: a flat list of {kind, id, text, state, ended ms}: 'missing', 'ended', 'lost' and
// 'cancel' for held ids, 'taken' for queued records whose holder is gone (now held by me).
constexpr const char* kSyncScript = HIAPI_LUA_PRELUDE R"lua(
local me, prefix, take = ARGV[1], ARGV[2], tonumber(ARGV[3])
local out = {}
local function add(kind, id, cur)
  out[#out + 1] = kind
  out[#out + 1] = id
  out[#out + 1] = cur and cur[1] or ''
  out[#out + 1] = cur and cur[2] or ''
  out[#out + 1] = cur and cur[4] or '0'
end
for i = 4, #ARGV do
  local id = ARGV[i]
  local cur = redis.call('HMGET', prefix .. id, 't', 's', 'o', 'e', 'c')
  if not cur[2] then
    add('missing', id, nil)
  elseif cur[2] ~= 'queued' then
    add('ended', id, cur)
  elseif cur[3] and cur[3] ~= me and alive(KEYS[2], cur[3]) then
    add('lost', id, nil)
  else
    if cur[3] ~= me then
      redis.call('HSET', prefix .. id, 'o', me)
    end
    if cur[5] then
      add('cancel', id, nil)
    end
  end
end
if take > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if take == 0 then
      break
    end
    local cur = redis.call('HMGET', prefix .. id, 't', 's', 'o', 'e')
    if not cur[2] or cur[2] ~= 'queued' then
      redis.call('ZREM', KEYS[1], id)
    elseif cur[3] ~= me and not (cur[3] and alive(KEYS[2], cur[3])) then
      redis.call('HSET', prefix .. id, 'o', me)
      add('taken', id, cur)
      take = take - 1
    end
  end
end
return out
)lua";

// KEYS: record, queue, instances. ARGV: me, id, life ms of an ended record.
// Reply: {'missing'} | {'asked'} | {'ended' or 'cancelled', text, state, ended ms}.
constexpr const char* kCancelScript = HIAPI_LUA_PRELUDE R"lua(
local cur = redis.call('HMGET', KEYS[1], 't', 's', 'o', 'e')
if not cur[2] then
  return {'missing'}
end
if cur[2] ~= 'queued' then
  return {'ended', cur[1] or '', cur[2], cur[4] or '0'}
end
if cur[3] and cur[3] ~= ARGV[1] and alive(KEYS[3], cur[3]) then
  redis.call('HSET', KEYS[1], 'c', '1')
  return {'asked'}
end
redis.call('HSET', KEYS[1], 's', 'cancelled', 'e', tostring(now))
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'cancelled', cur[1] or '', 'cancelled', tostring(now)}
)lua";

#undef HIAPI_LUA_PRELUDE

std::string text(const redisReply* r) {
  if (r != nullptr && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)) {
    return std::string(r->str, r->len);
  }
  return {};
}

// The record that @p lines hold, ended as @p state says when another instance ended it (a
// cancel, which writes only the state, not the lines).
std::optional<core::DeferredRecord> recordOf(const std::string& lines, const std::string& state,
                                             const std::string& ended_ms) {
  std::optional<core::DeferredRecord> r = core::parseRecord(lines);
  if (!r || state.empty() || state == core::deferredStateName(r->state)) {
    return r;
  }
  core::DeferredBook one;
  const std::string id = r->id;
  one.add(*r);
  const int64_t at = std::strtoll(ended_ms.c_str(), nullptr, 10);
  if (state == "cancelled") {
    one.markCancelled(id, at);
  } else if (state == "expired") {
    one.markExpired(id, at);
  }
  return *one.find(id);
}

bool isArray(const redisReply* r, size_t min) {
  return r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements >= min;
}

}  // namespace

DeferredShare::DeferredShare(RedisStore& store) : store_(store) {}

bool DeferredShare::usable() const { return store_.usable(); }

std::string DeferredShare::keyId(std::string_view authorization) const {
  return store_.keyIdOf(authorization);
}

std::string DeferredShare::recordKey(const std::string& key_id, const std::string& id) const {
  return store_.keyPrefix() + "d:" + key_id + ":" + id;
}

std::string DeferredShare::queueKey(const std::string& key_id) const {
  return store_.keyPrefix() + "dq:" + key_id;
}

void DeferredShare::write(const std::string& key_id, const core::DeferredRecord& r,
                          core::Duration life,
                          std::function<void(Written, std::optional<core::DeferredRecord>)> done) {
  const std::weak_ptr<int> alive = alive_;
  const bool sent = store_.eval(
      kWriteScript, {recordKey(key_id, r.id), queueKey(key_id), store_.instancesKeyName()},
      {store_.instanceId(), r.id, std::string(core::deferredStateName(r.state)),
       core::journalRecord(r), std::to_string(r.accepted_ms), std::to_string(ms(life))},
      [this, alive, done](redisReply* reply) {
        if (alive.expired()) {
          return;
        }
        const std::string kind = isArray(reply, 1) ? text(reply->element[0]) : std::string();
        if (kind == "mine") {
          done(Written::Mine, std::nullopt);
        } else if (kind == "elsewhere") {
          done(Written::Elsewhere, std::nullopt);
        } else if (kind == "ended" && isArray(reply, 4)) {
          done(Written::Ended, recordOf(text(reply->element[1]), text(reply->element[2]),
                                        text(reply->element[3])));
        } else {
          if (reply != nullptr) {
            store_.unusableReply("deferred record write", reply);
          }
          done(Written::Failed, std::nullopt);
        }
      });
  if (!sent) {
    done(Written::Failed, std::nullopt);
  }
}

void DeferredShare::lookup(const std::string& key_id, const std::string& id,
                           std::function<void(bool, std::optional<core::DeferredRecord>)> done) {
  const std::weak_ptr<int> alive = alive_;
  const bool sent = store_.eval(
      kLookupScript, {recordKey(key_id, id)}, {}, [this, alive, done](redisReply* reply) {
        if (alive.expired()) {
          return;
        }
        if (!isArray(reply, 3)) {
          if (reply != nullptr) {
            store_.unusableReply("deferred record lookup", reply);
          }
          done(false, std::nullopt);
          return;
        }
        const std::string lines = text(reply->element[0]);
        done(true, lines.empty() ? std::nullopt
                                 : recordOf(lines, text(reply->element[1]),
                                            text(reply->element[2])));
      });
  if (!sent) {
    done(false, std::nullopt);
  }
}

void DeferredShare::sync(const std::string& key_id, const std::vector<std::string>& held,
                         size_t take, std::function<void(bool, Sync)> done) {
  std::vector<std::string> args = {store_.instanceId(), store_.keyPrefix() + "d:" + key_id + ":",
                                   std::to_string(take)};
  args.insert(args.end(), held.begin(), held.end());
  const std::weak_ptr<int> alive = alive_;
  const bool sent = store_.eval(
      kSyncScript, {queueKey(key_id), store_.instancesKeyName()}, args,
      [this, alive, done](redisReply* reply) {
        if (alive.expired()) {
          return;
        }
        if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements % 5 != 0) {
          if (reply != nullptr) {
            store_.unusableReply("deferred records sync", reply);
          }
          done(false, Sync{});
          return;
        }
        Sync s;
        for (size_t i = 0; i + 5 <= reply->elements; i += 5) {
          const std::string kind = text(reply->element[i]);
          std::string id = text(reply->element[i + 1]);
          if (kind == "missing") {
            s.missing.push_back(std::move(id));
          } else if (kind == "lost") {
            s.lost.push_back(std::move(id));
          } else if (kind == "cancel") {
            s.cancel.push_back(std::move(id));
          } else if (auto r = recordOf(text(reply->element[i + 2]), text(reply->element[i + 3]),
                                       text(reply->element[i + 4]))) {
            (kind == "taken" ? s.taken : s.ended).push_back(std::move(*r));
          }
        }
        done(true, std::move(s));
      });
  if (!sent) {
    done(false, Sync{});
  }
}

void DeferredShare::cancel(const std::string& key_id, const std::string& id, core::Duration keep,
                           std::function<void(Cancel, std::optional<core::DeferredRecord>)> done) {
  const std::weak_ptr<int> alive = alive_;
  const bool sent = store_.eval(
      kCancelScript, {recordKey(key_id, id), queueKey(key_id), store_.instancesKeyName()},
      {store_.instanceId(), id, std::to_string(ms(keep))},
      [this, alive, done](redisReply* reply) {
        if (alive.expired()) {
          return;
        }
        const std::string kind = isArray(reply, 1) ? text(reply->element[0]) : std::string();
        if (kind == "missing") {
          done(Cancel::Missing, std::nullopt);
        } else if (kind == "asked") {
          done(Cancel::Asked, std::nullopt);
        } else if ((kind == "ended" || kind == "cancelled") && isArray(reply, 4)) {
          done(kind == "ended" ? Cancel::Ended : Cancel::Cancelled,
               recordOf(text(reply->element[1]), text(reply->element[2]),
                        text(reply->element[3])));
        } else {
          if (reply != nullptr) {
            store_.unusableReply("deferred record cancel", reply);
          }
          done(Cancel::Failed, std::nullopt);
        }
      });
  if (!sent) {
    done(Cancel::Failed, std::nullopt);
  }
}

}  // namespace hiapi::shell
