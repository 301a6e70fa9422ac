-- Forget parked messages that were published, unless parked again since (a new deadline):
-- the delivery just published may already have run and parked its next look.
-- KEYS: due (zset), messages (hash), runs (hash), holds (hash). ARGV: key, claimed score, ...
local removed = 0
for i = 1, #ARGV, 2 do
  local key = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], key)
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], key)
    redis.call('HDEL', KEYS[2], key)
    redis.call('HDEL', KEYS[3], key)
    redis.call('HDEL', KEYS[4], key)
    removed = removed + 1
  end
end
return removed
