-- Close a DAG's part of a backfill, once; with the last DAG, the backfill.
-- KEYS: DAG hash, backfill hash, events stream. ARGV: state, now (s), event (JSON).
-- Returns the DAGs left, or -1 if this DAG was closed already.
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[2]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
redis.call('XADD', KEYS[3], '*', 'e', ARGV[3])
local left = redis.call('HINCRBY', KEYS[2], 'dags_left', -1)
if ARGV[1] == 'cancelled' then redis.call('HSET', KEYS[2], 'any_cancelled', '1')
elseif ARGV[1] ~= 'succeeded' then redis.call('HSET', KEYS[2], 'any_failed', '1') end
if left == 0 then
  local state = 'succeeded'
  if redis.call('HGET', KEYS[2], 'cancelled') == '1' then state = 'cancelled'
  elseif redis.call('HGET', KEYS[2], 'any_failed') == '1' then state = 'failed'
  elseif redis.call('HGET', KEYS[2], 'any_cancelled') == '1' then state = 'cancelled' end
  redis.call('HSET', KEYS[2], 'state', state, 'finished_at', ARGV[2])
end
return left
