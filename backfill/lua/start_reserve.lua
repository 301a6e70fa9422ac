-- A backfill's starts in the last hour (max_starts_per_hour): reserve one for a window, or peek.
-- KEYS: the backfill's starts (zset: window member -> start ms).
-- ARGV: member, limit, now ms (or ""), span ms (an hour), ttl s, "1" reserve / "0" peek /
-- "2" started (the trigger went out: its start is now).
-- Returns {1, now} when the window may start: reserved now, or before (a repeated step keeps its
-- reservation, moved to now, the step that may trigger; "started" moves it to the trigger's
-- time, so a start counts from about when it happened even if its record was lost).
-- Returns {0, at, at - now} when it may start at ms ``at`` (the oldest start leaves the span),
-- in that many ms on Redis's clock.
local now = now_ms(ARGV[3])
local span = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
if ARGV[6] == '2' or (ARGV[6] == '1' and redis.call('ZSCORE', KEYS[1], ARGV[1])) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return {1, now}
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {1, now} end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  if ARGV[6] == '1' then
    redis.call('ZADD', KEYS[1], now, ARGV[1])
    redis.call('EXPIRE', KEYS[1], ARGV[5])
  end
  return {1, now}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local at = tonumber(oldest[2]) + span
return {0, at, at - now}
