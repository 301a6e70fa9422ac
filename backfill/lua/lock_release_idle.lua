-- For a cancel: drop a DAG's lock held by one of the backfill's windows, unless that window
-- armed it for a trigger and has not recorded the trigger yet (it may be on its way: freeing
-- the DAG now would let another backfill's busy check miss that run). That window releases it
-- itself when it sees the cancel, or it expires.
-- KEYS: lock hash. ARGV: token prefix, now ms (or "").
-- Returns 1 dropped, 0 not held by such a token, -1 left (armed).
local now = now_ms(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'token', 'armed', 'until')
if not cur[1] or string.sub(cur[1], 1, #ARGV[1]) ~= ARGV[1] then return 0 end
if cur[2] and tonumber(cur[3]) > now then return -1 end
redis.call('DEL', KEYS[1])
return 1
