-- The last check before a trigger, in one step: the backfill is not cancelled, the window has
-- not ended (a duplicate delivery may have ended it), the token still holds the DAG's lock and
-- its slots are still held; then all of them are renewed for a full ttl (which the settings
-- keep above the longest trigger) and the lock marked armed: a cancel does not free an armed
-- lock (the trigger may be on its way); lock_disarm.lua clears the mark once it is recorded.
-- KEYS: lock hash, backfill hash, windows hash, then each slot set.
-- ARGV: token, lock ttl ms, now ms (or ""), member, slot ttl ms, window index.
-- Returns "ok", "cancelled", "ended", "lost" (the lock) or "slot" (a slot expired).
local now = now_ms(ARGV[3])
local ttl = tonumber(ARGV[2])
local gone = window_gone(KEYS[2], KEYS[3], ARGV[6])
if gone then return gone end
local cur = redis.call('HMGET', KEYS[1], 'token', 'until')
if cur[1] ~= ARGV[1] or tonumber(cur[2]) <= now then return 'lost' end
for i = 4, #KEYS do
  local until_ = redis.call('ZSCORE', KEYS[i], ARGV[4])
  if not until_ or tonumber(until_) <= now then return 'slot' end
end
redis.call('HSET', KEYS[1], 'until', now + ttl, 'armed', now)
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], now + tonumber(ARGV[5]), ARGV[4]) end
return 'ok'
