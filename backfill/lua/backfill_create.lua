-- Store a new backfill's plan, all of it or nothing (a crash half-way would leave a backfill
-- without a state or DAG counters, which a redelivered submit takes as recorded).
-- KEYS: backfill hash, index, events stream, then each DAG's hash.
-- ARGV: params (JSON), now (s), record ttl (s), event (JSON), DAG count, then each DAG's window count.
-- Returns 1 if stored, 0 if a backfill with that id exists already.
if redis.call('HSETNX', KEYS[1], 'params', ARGV[1]) == 0 then return 0 end
local now = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'running', 'created_at', ARGV[2], 'dags_left', ARGV[5])
for i = 4, #KEYS do
  redis.call('HSET', KEYS[i], 'state', 'pending', 'total', ARGV[i + 2])
end
local id = string.match(KEYS[1], ':bf:(.*)$')
redis.call('ZADD', KEYS[2], now, id)
redis.call('ZREMRANGEBYSCORE', KEYS[2], 0, now - tonumber(ARGV[3]))  -- their records expired too
redis.call('XADD', KEYS[3], '*', 'e', ARGV[4])
return 1
