#pragma once
// The Lua scripts the shared store runs in Redis, and helpers of redis_store*.cc. Each reads Redis' own clock
// (TIME), never the instance's, so instances whose clocks disagree still agree on the budget and
// on lease expiries. Private to src/shell.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>

#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "hiapi/core/clock.h"
#include "hiapi/shell/redis_store.h"

namespace hiapi::shell {

// The key's token bucket, in Redis' own time (TIME), so that instances whose clocks disagree
// share one bucket. State: tokens at ts (µs); a pause after an upstream 429 moves ts into the
// future with no tokens, so no instance gets one before it ends.
// ARGV: rate/s, burst, tokens wanted, tokens given back, pause ms, key TTL ms, phase margin in
// tokens (a token is granted only once the bucket holds it and the margin behind it, as the
// local bucket admits: arrival jitter cannot land a request before the upstream's token), the
// tokens a missing bucket starts with (the burst, or none just after an outage: see
// core/shared_budget.h), the calling instance's id, the tokens it holds (after what it gives
// back), how long that figure is kept (ms).
// The bucket refills only up to the burst less the tokens all instances hold (fields "h:<id>",
// "tokens expiry_ms"): the gateway's bucket has not seen them spent, and it stops at the burst.
// Grants all it is asked for, else what it has when that is at least one token, else nothing.
// Reply: {granted in millionths of a token, µs until enough is there when short, µs of pause
// left} (integers: Redis truncates a script's numbers).
constexpr const char* kBudgetScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local give = tonumber(ARGV[4])
local pause = tonumber(ARGV[5]) * 1000
local me = 'h:' .. ARGV[9]
local mine = tonumber(ARGV[10])
local now_ms = math.floor(now / 1000)
local held = mine
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all - 1, 2 do
  if string.sub(all[i], 1, 2) == 'h:' and all[i] ~= me then
    local h, expiry = string.match(all[i + 1], '^([%d.]+) (%d+)$')
    if h == nil or tonumber(expiry) <= now_ms then
      redis.call('HDEL', KEYS[1], all[i])
    else
      held = held + tonumber(h)
    end
  end
end
local cap = math.max(0, burst - held)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or math.min(burst, tonumber(ARGV[8]))
local ts = tonumber(v[2]) or now
if now > ts then
  tokens = tokens + (now - ts) * rate / 1000000
  ts = now
end
tokens = math.min(cap, tokens + give)
if pause > 0 and now + pause > ts then
  ts = now + pause
  tokens = 0
end
local granted = 0
local margin = tonumber(ARGV[7])
if now >= ts and want > 0 then
  if tokens + 0.000001 >= want + margin then
    granted = want
  elseif tokens >= 1 + margin then
    granted = tokens - margin
  end
  tokens = math.max(0, tokens - granted)
end
local retry = 0
if granted < want then
  retry = math.max(0, ts - now) +
          math.ceil(math.max(0, math.min(want, 1) + margin - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts',
           string.format('%.0f', ts))
if mine + granted > 0.000001 then
  redis.call('HSET', KEYS[1], me, string.format('%.6f %d', mine + granted,
                                                  now_ms + tonumber(ARGV[11])))
else
  redis.call('HDEL', KEYS[1], me)
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {math.floor(granted * 1000000), retry, math.max(0, ts - now)}
)lua";

// An instance's heartbeat: its expiry (Redis time, ms) in a sorted set; expired ones are
// dropped. ARGV: instance id, lifetime ms. Reply: live instances.
constexpr const char* kHeartbeatScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
)lua";

// A tier's leases: lease name -> expiry (Redis time, ms). Expired leases are dropped, then as many
// of the asked names as the ceiling allows are added. ARGV: ceiling, lifetime ms, names...
// Reply: {granted, ms until the earliest lease expires (when short)}.
constexpr const char* kAcquireScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
local ceiling = tonumber(ARGV[1])
local life = tonumber(ARGV[2])
local granted = 0
for i = 3, #ARGV do
  if n >= ceiling then break end
  redis.call('ZADD', KEYS[1], now + life, ARGV[i])
  n = n + 1
  granted = granted + 1
end
redis.call('PEXPIRE', KEYS[1], life * 2)
local retry = 0
if granted < #ARGV - 2 then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then retry = math.max(0, tonumber(first[2]) - now) end
end
return {granted, retry}
)lua";

// Renews (or, after an outage, writes again) leases this instance holds, whatever the ceiling:
// their tasks are running. ARGV: lifetime ms, names... Reply: how many.
constexpr const char* kRenewScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + life, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], life * 2)
return #ARGV - 1
)lua";

// Learned tier durations, shared: a field per tier and instance ("tier\ninstance"), its value
// "µs samples written_ms" (Redis time of the write). Fields not written for ARGV[2] ms are
// dropped: what an instance learned outlives it a while (the next instance to start need not
// learn it again), not for ever (models change). ARGV: instance id, lifetime ms, then pairs of
// tier name and "µs samples". Reply: the fields left, name then value.
constexpr const char* kDurationsScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[2])
for i = 3, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i] .. '\n' .. ARGV[1], ARGV[i + 1] .. ' ' .. now)
end
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all - 1, 2 do
  local at = tonumber(string.match(all[i + 1], '(%d+)$'))
  if at == nil or now - at > life then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
if #out > 0 then redis.call('PEXPIRE', KEYS[1], life) end
return out
)lua";

// Creates each instance holds waiting for a key's tiers: a field per tier and instance
// ("tier\ninstance"), its value "count expiry_ms" (Redis time). An instance writes its counts at
// every heartbeat and when they change, and drops its fields when nothing waits; the fields of an
// instance that stopped writing expire. ARGV: instance id, lifetime ms, then pairs of tier name
// and count. Reply: pairs of tier name and the other instances' count, for tiers where any waits.
constexpr const char* kWaitingScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[2])
for i = 3, #ARGV - 1, 2 do
  local field = ARGV[i] .. '\n' .. ARGV[1]
  if tonumber(ARGV[i + 1]) > 0 then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1] .. ' ' .. (now + life))
  else
    redis.call('HDEL', KEYS[1], field)
  end
end
local sums = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all - 1, 2 do
  local tier, instance = string.match(all[i], '^(.*)\n(.*)$')
  local count, expiry = string.match(all[i + 1], '^(%d+) (%d+)$')
  if tier == nil or count == nil or tonumber(expiry) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif instance ~= ARGV[1] then
    sums[tier] = (sums[tier] or 0) + tonumber(count)
  end
end
if redis.call('HLEN', KEYS[1]) > 0 then redis.call('PEXPIRE', KEYS[1], life) end
local out = {}
for tier, count in pairs(sums) do
  out[#out + 1] = tier
  out[#out + 1] = count
end
return out
)lua";

inline std::string sha1Hex(std::string_view text) {
  unsigned char md[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(text.data()), text.size(), md);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : md) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 0xF]);
  }
  return out;
}

/// @return the store_errors_total reason for an unusable reply @p r: wrong_type for Redis'
///         WRONGTYPE (a key of ours holds something else), else reply.
inline const char* unusableReason(const redisReply* r) {
  return r->type == REDIS_REPLY_ERROR &&
                 std::string_view(r->str, r->len).find("WRONGTYPE") != std::string_view::npos
             ? "wrong_type"
             : "reply";
}

inline std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6f", v);
  return buf;
}

inline int64_t ms(core::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

constexpr core::Duration kTick = std::chrono::milliseconds(50);
constexpr core::Duration kBackoffMin = std::chrono::milliseconds(100);
constexpr core::Duration kBackoffMax = std::chrono::seconds(30);
/// The reconnect backoff after @p attempts failed connects in a row, before its jitter.
inline core::Duration backoffBase(uint32_t attempts) {
  return core::fromSeconds(std::min(core::toSeconds(kBackoffMax),
                                    core::toSeconds(kBackoffMin) *
                                        std::pow(2.0, std::min(attempts, 20u))));
}
constexpr core::Duration kBadKeyRetry = std::chrono::seconds(5);
// How long a learned duration is kept in the store after its instance last wrote it.
constexpr core::Duration kDurationLife = std::chrono::minutes(10);
// A change in the creates waiting here is written at most this often between heartbeats.
constexpr core::Duration kWaitingWriteGap = std::chrono::milliseconds(200);
// A full tier is asked again this often at most (another instance's release is not announced).
constexpr core::Duration kSlotRetryMax = std::chrono::milliseconds(100);

}  // namespace hiapi::shell
