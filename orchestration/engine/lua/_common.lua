-- Helpers every script shares; loaded after the state names (S, R, TERMINAL, ...) that
-- orchestration/states.py generates and `outbox_member(run_id, stage_id)` from engine/keys.py, and
-- before the script itself (engine/scripts.py puts them together).
local clock_read  -- one TIME a script: its writes are one atomic step, at one time
local function clock()
  -- Redis's clock: (milliseconds, seconds as text with 3 decimals, whole seconds, microseconds as text)
  if not clock_read then
    local t = redis.call('TIME')
    local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    clock_read = {ms, string.format('%.3f', ms / 1000), tonumber(t[1]), t[1] .. string.format('%06d', tonumber(t[2]))}
  end
  return clock_read[1], clock_read[2], clock_read[3], clock_read[4]
end
local function finite(v)
  return v ~= nil and v == v and v ~= math.huge and v ~= -math.huge
end
local function field_prefix(item)
  if item == nil or item == '' then return '' end
  return tostring(item) .. ':'
end
local EVENTS_MAXLEN, HOOKS_MAXLEN = '200000', '100000'

-- HMGET of any number of fields, 500 a call: `unpack` of a long list overflows Lua's C stack
-- (about 8,000 values), so no script unpacks a list whose length a pipeline decides.
local function hmget_all(key, fields)
  local out = {}
  for i = 1, #fields, 500 do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + 499, #fields)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end
