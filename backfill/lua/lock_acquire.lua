-- Take or renew a DAG's lock. KEYS: lock hash. ARGV: token, ttl ms, now ms (or "").
-- Returns nothing when the token holds it now, else the live holder's token.
local now = now_ms(ARGV[3])
local ttl = tonumber(ARGV[2])
local cur = redis.call('HMGET', KEYS[1], 'token', 'until')
if cur[1] and cur[1] ~= ARGV[1] and tonumber(cur[2]) > now then return cur[1] end
if cur[1] ~= ARGV[1] then redis.call('DEL', KEYS[1]) end  -- a new holder starts unarmed
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'until', now + ttl)
-- Garbage collection only: 'until', on the same clock, decides who holds the lock.
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return false
