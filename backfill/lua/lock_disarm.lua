-- The trigger (or clear) armed for has been recorded: the run is in Airflow, where any other
-- backfill's busy check sees it, so a cancel may free the lock again.
-- KEYS: lock hash. ARGV: token. Returns 1 if the token holds the lock.
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'armed')
  return 1
end
return 0
