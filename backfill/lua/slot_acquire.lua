-- Take (or keep) a slot of a fair counting semaphore (backfill.throttle).
-- KEYS: holders (member -> expiry ms), line (member -> ticket), seen (member -> last ask),
--       limit override (string, optional), ticket counter
-- ARGV: member, limit, now ms (or ""), ttl ms, stale ms, head start (places in line; a
--       backfill's priority: its windows are placed that many tickets earlier, so a later,
--       higher-priority window goes first, yet overtakes a waiting one only that many times)
-- Returns {granted 0/1, place in line, slots held, limit applied}.
local now = now_ms(ARGV[3])
local limit = tonumber(redis.call('GET', KEYS[4]) or ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return {1, 0, redis.call('ZCARD', KEYS[1]), limit}
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))) do
  redis.call('ZREM', KEYS[2], gone)
  redis.call('ZREM', KEYS[3], gone)
end
local held = redis.call('ZCARD', KEYS[1])
if limit <= 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return {1, 0, held + 1, limit}
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  -- A counter, not the clock: two windows asking in the same millisecond keep their order.
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[5]) - tonumber(ARGV[6] or '0'), ARGV[1])
  redis.call('EXPIRE', KEYS[5], 604800)  -- dropped a week after the last ask
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
if rank < limit - held then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
  return {1, 0, held + 1, limit}
end
return {0, rank + 1, held, limit}
