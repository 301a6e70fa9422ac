-- Move a window to a state (backfill.record.Record.transition): the window, its DAG's counters
-- and the event log at once; a terminal state is final.
-- A window in flight (triggered, running) is not sent back to waiting unless ARGV[4] is "force"
-- (its run was deleted): a duplicate delivery reading an older state cannot undo it. A null
-- field does not erase what is recorded (a cancel does not forget the run it cancels); an empty
-- reason ("", as JSON null would be a truthy userdata here) clears the recorded one and is not
-- stored (a 73,000-window record is kept small, bench B3).
-- KEYS: windows hash, DAG hash, events stream.
-- ARGV: window index, new fields (JSON), the event's fields and values (a JSON array of strings),
-- "force" or "", fields to erase (a JSON array, or ""), a field that must hold a value or "",
-- that value (JSON; null = absent): a retry is scheduled by one of two racing deliveries only.
-- Returns 0 (terminal already, in flight and not forced, or not the expected value: nothing
-- changed), 1 (same state and reason), 2 (a change).
local old = redis.call('HGET', KEYS[1], ARGV[1])
local new = cjson.decode(ARGV[2])
local reason = new['reason']
local event = cjson.decode(ARGV[3])
local merged = new
local changed = true
if old then
  local prev = cjson.decode(old)
  if terminal[prev['state']] then return 0 end
  if ARGV[6] and ARGV[6] ~= '' then
    local have, want = prev[ARGV[6]], cjson.decode(ARGV[7])
    if have == cjson.null then have = nil end
    if want == cjson.null then want = nil end
    if have ~= want then return 0 end
  end
  if new['state'] == 'waiting' and (prev['state'] == 'triggered' or prev['state'] == 'running')
      and ARGV[4] ~= 'force' then
    return 0
  end
  changed = prev['state'] ~= new['state'] or (prev['reason'] or '') ~= reason
  for k, v in pairs(new) do
    if v ~= cjson.null then prev[k] = v end
  end
  if ARGV[5] and ARGV[5] ~= '' then
    for _, k in ipairs(cjson.decode(ARGV[5])) do prev[k] = nil end
  end
  merged = prev
end
if merged['reason'] == '' then merged['reason'] = nil end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(merged))
if not changed then return 1 end
-- One counter per terminal state (the prelude's set): DagRecord.counts reads them.
if terminal[new['state']] then redis.call('HINCRBY', KEYS[2], new['state'], 1) end
redis.call('HSET', KEYS[2], 'current', ARGV[1], 'current_state', new['state'], 'reason', reason)
if redis.call('HGET', KEYS[2], 'state') == 'pending' then
  redis.call('HSET', KEYS[2], 'state', 'running', 'started_at', event[2])  -- its "t": when
end
redis.call('XADD', KEYS[3], '*', unpack(event))
return 2
