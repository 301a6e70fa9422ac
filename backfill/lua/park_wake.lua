-- Make parked windows due now, with the run each was woken for as listed (park:ended, read by
-- the woken step with its snapshot, forgotten at its next park or its end). Only windows still parked and not claimed: a claimed one (its
-- deadline a half millisecond) is being published already. A window woken at its run's start
-- and not yet published takes its run's end instead, listed later.
-- KEYS: due (zset), ended (hash). ARGV: key, run (JSON), ended ('1' or '0'), ...
local woken = 0
for i = 1, #ARGV, 3 do
  local key = ARGV[i]
  local score = tonumber(redis.call('ZSCORE', KEYS[1], key))
  if score and score == math.floor(score) then
    if score > 0 then
      redis.call('ZADD', KEYS[1], 0, key)
      redis.call('HSET', KEYS[2], key, ARGV[i + 1])
      woken = woken + 1
    elseif ARGV[i + 2] == '1' then
      redis.call('HSET', KEYS[2], key, ARGV[i + 1])
    end
  end
end
return woken
