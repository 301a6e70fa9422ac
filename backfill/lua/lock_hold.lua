-- Keep what a window whose Airflow run is in flight holds: its DAG's lock (taken back if it
-- had expired and is free) and its throttle slots (kept or taken back whatever the limit: the
-- run is there). Nothing is kept for a window that has ended or a backfill that is cancelled:
-- a step that was looking at its run when a cancel freed them must not take them back.
-- KEYS: lock hash, backfill hash, windows hash, then each slot set.
-- ARGV: token, lock ttl ms, now ms (or ""), member, slot ttl ms, window index.
-- Returns nothing, "ended" (nothing kept), or the token of another live holder of the lock
-- (the slots are kept anyway).
local now = now_ms(ARGV[3])
local gone = window_gone(KEYS[2], KEYS[3], ARGV[6])
if gone then return 'ended' end
-- Nor for a window no longer in flight (a failed attempt waiting for its retry): the watcher
-- renews what a parked window left (park:hold) until its message is published, maybe later.
local raw = redis.call('HGET', KEYS[3], ARGV[6])
if raw then
  local state = cjson.decode(raw)['state']
  if state ~= 'triggered' and state ~= 'running' then return 'ended' end
end
local ttl = tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'token', 'until')
local other = false
if cur[1] and cur[1] ~= ARGV[1] and tonumber(cur[2]) > now then
  other = cur[1]
else
  if cur[1] ~= ARGV[1] then redis.call('DEL', KEYS[1]) end
  redis.call('HSET', KEYS[1], 'token', ARGV[1], 'until', now + ttl)
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
end
for i = 4, #KEYS do redis.call('ZADD', KEYS[i], now + tonumber(ARGV[5]), ARGV[4]) end
return other
