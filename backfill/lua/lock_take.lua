-- Take or renew a DAG's lock, first come (or by priority) among the windows that want it:
-- lock_acquire.lua with a line. A window that finds the lock held, or free but promised to a
-- window ahead of it in line, joins the line (once: it keeps its place while it keeps asking).
-- KEYS: lock hash, line (token -> ticket), seen (token -> last ask ms), ticket counter.
-- ARGV: token, ttl ms, now ms (or ""), stale ms (a waiter not seen for this long leaves the
-- line), head start (places: the backfill's priority).
-- Returns false when the token holds the lock now; else {who, "held" | "line"}: the live holder,
-- or the window first in line when the lock is free.
local now = now_ms(ARGV[3])
local ttl = tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'token', 'until')
local held = cur[1] and cur[1] ~= ARGV[1] and tonumber(cur[2]) > now
if cur[1] ~= ARGV[1] then
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]))) do
    redis.call('ZREM', KEYS[2], gone)
    redis.call('ZREM', KEYS[3], gone)
  end
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if held or (head and head ~= ARGV[1]) then
    if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
      redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]) - tonumber(ARGV[5]), ARGV[1])
      redis.call('EXPIRE', KEYS[4], 604800)
      head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
    end
    redis.call('ZADD', KEYS[3], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[2], 2 * ttl + tonumber(ARGV[4]))
    redis.call('PEXPIRE', KEYS[3], 2 * ttl + tonumber(ARGV[4]))
    if held then return {cur[1], 'held'} end
    if head ~= ARGV[1] then return {head, 'line'} end
  end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[1])  -- a new holder starts unarmed
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'until', now + ttl)
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return false
