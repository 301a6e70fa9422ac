-- Park a window's next message until ARGV[2] ms from now (Redis's clock judges every deadline),
-- replacing any message parked for the same window: duplicate deliveries collapse into one.
-- The run a wake left for the window (park:ended) was read by the step parking now, or is stale.
-- A cancelled backfill's window is due at once (a cancel's wake may have come before this park).
-- What the watcher renews while the window sleeps (its lock and slots) replaces the old, or goes.
-- KEYS: due (zset), messages (hash), runs (hash), ended (hash), the backfill's hash, holds (hash).
-- ARGV: key, delay (ms), message, run ([dag, run id, since, running]), now, hold ("" for none).
local at = now_ms(ARGV[5]) + tonumber(ARGV[2])
if redis.call('HGET', KEYS[5], 'cancelled') == '1' then at = 1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[1])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[6], ARGV[1], ARGV[6]) else redis.call('HDEL', KEYS[6], ARGV[1]) end
redis.call('ZADD', KEYS[1], at, ARGV[1])
return at
