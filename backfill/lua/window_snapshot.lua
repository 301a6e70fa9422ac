-- What one step of a window reads, in one command (a pipeline of the same reads cost the
-- worker a command each, bench B4): the window, the backfill's cancel flag, the DAG's learnt
-- durations, its lock's holder and milliseconds to live, and a field of a hash, taken (the
-- run the watcher woke the window for: read once, a stale one would outlive its attempt).
-- KEYS: windows hash, backfill hash, DAG hash, lock hash, the taken field's hash (or any key).
-- ARGV: window index, now ms (or ""), the taken field (or ""), then the pace fields.
-- Returns {window or false, cancelled or false, {pace values}, holder or false, ms to live, taken or false}.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local cancelled = redis.call('HGET', KEYS[2], 'cancelled')
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local pace = redis.call('HMGET', KEYS[3], unpack(fields))
local lock = redis.call('HMGET', KEYS[4], 'token', 'until')
local ttl = -2
if lock[1] and lock[2] then ttl = tonumber(lock[2]) - now_ms(ARGV[2]) end
local taken = false
if ARGV[3] ~= '' then
  taken = redis.call('HGET', KEYS[5], ARGV[3])
  if taken then redis.call('HDEL', KEYS[5], ARGV[3]) end
end
return {raw, cancelled, pace, lock[1], ttl, taken}
