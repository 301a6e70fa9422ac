-- Drop a DAG's lock if the token holds it. KEYS: lock hash. ARGV: token. Returns 1 if dropped.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
