-- Remember facts about a window without changing its state (no event), in Redis: a cancel
-- that lands between a read and a write in Python would be overwritten. A terminal window is
-- left as it is. With an expected field, the facts are written only if that field holds the
-- expected value (JSON; null = absent): a claim that one of two racing deliveries wins.
-- KEYS: windows hash. ARGV: window index, fields (JSON object), expected field or "" (or "*":
-- several, the value a JSON object of field -> value), its value (JSON).
-- Returns 1 written, 0 terminal, -1 the expected value did not match.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local cur = {state = 'planned'}
if raw then cur = cjson.decode(raw) end
if terminal[cur['state']] then return 0 end
local function holds(field, want)
  local have = cur[field]
  if have == cjson.null then have = nil end
  if want == cjson.null then want = nil end
  return have == want
end
if ARGV[3] == '*' then  -- several fields: ARGV[4] is {field: value}
  for field, want in pairs(cjson.decode(ARGV[4])) do
    if not holds(field, want) then return -1 end
  end
elseif ARGV[3] ~= '' then
  if not holds(ARGV[3], cjson.decode(ARGV[4])) then return -1 end
end
for k, v in pairs(cjson.decode(ARGV[2])) do cur[k] = v end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(cur))
return 1
