-- Take or renew the watcher's lease (a hash: holder, until in ms on the scripts' clock). The
-- lease is also the heartbeat windows read before they park (watch_alive.lua).
-- KEYS: lease. ARGV: holder, ttl (ms), now.
local now = now_ms(ARGV[3])
local holder = redis.call('HGET', KEYS[1], 'holder')
local till = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if holder and holder ~= ARGV[1] and till > now then return 0 end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'until', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))  -- only to clean up after the last watcher
return 1
