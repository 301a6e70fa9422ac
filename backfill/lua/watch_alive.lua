-- Whether a watcher holds its lease now (windows park only then). KEYS: lease. ARGV: now.
local till = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if till > now_ms(ARGV[1]) then return 1 end
return 0
