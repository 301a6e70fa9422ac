-- Claim the parked messages that are due (their deadline passed, or their run started or
-- ended): each gets a new deadline a lease ahead, so a watcher dying before it publishes them
-- leaves them to the next one; park_done.lua removes them once published. A claimed deadline
-- is a whole millisecond plus a half: a park (whole milliseconds) never equals it, so
-- park_done.lua cannot take a message parked again for the one it published.
-- KEYS: due (zset), messages (hash). ARGV: now (ms, or '' for Redis's clock), lease (ms), limit.
-- Returns a flat list: key, claimed score, message, ...
local now = now_ms(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
local score = now + tonumber(ARGV[2]) + 0.5
for _, key in ipairs(due) do
  local message = redis.call('HGET', KEYS[2], key)
  if message then
    redis.call('ZADD', KEYS[1], score, key)
    out[#out + 1] = key
    out[#out + 1] = tostring(score)
    out[#out + 1] = message
  else
    redis.call('ZREM', KEYS[1], key)
  end
end
return out
