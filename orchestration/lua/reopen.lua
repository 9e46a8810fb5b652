-- Retry a failed or cancelled run from the point of failure, under the same id.
-- Stages that succeeded, were skipped or fell back keep their outputs; every other stage
-- goes back to pending with a fresh attempt count, its previous record kept in 'history'.
-- KEYS: 1 run, 2 states, 3 pending, 4 events, 5 outbox
-- ARGV: 1 prefix of stage hashes ('<p>:run:<id>:'), 2 run id, 3 needs: JSON {stage: [needs...]}
-- Returns {'ok', stages to send now} or {'noop', status}
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'cancelled' then return {'noop', tostring(status)} end
local KEEP = {succeeded = true, skipped = true, fallback = true}
local needs = cjson.decode(ARGV[3])
local states = redis.call('HGETALL', KEYS[2])
local state_of, rerun = {}, {}
for i = 1, #states, 2 do state_of[states[i]] = states[i + 1] end
local t = redis.call('TIME')
local now = string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1e6)
local count = 0
for sid, st in pairs(state_of) do
  if not KEEP[st] then rerun[sid] = true; count = count + 1 end
end
local ready = {}
for sid, _ in pairs(rerun) do
  local h = ARGV[1] .. 'stage:' .. sid
  local old = redis.call('HGETALL', h)
  local record, history = {}, '[]'
  for i = 1, #old, 2 do
    if old[i] == 'history' then history = old[i + 1] else record[old[i]] = old[i + 1] end
  end
  local list = cjson.decode(history)
  if next(record) ~= nil then list[#list + 1] = record end
  redis.call('DEL', h, ARGV[1] .. 'items:' .. sid)
  redis.call('HSET', h, 'history', cjson.encode(list), 'state', 'pending')
  local left = 0
  for _, need in ipairs(needs[sid] or {}) do
    if rerun[need] then left = left + 1 end
  end
  redis.call('HSET', KEYS[3], sid, left)
  if left == 0 then
    redis.call('HSET', KEYS[2], sid, 'queued')
    redis.call('ZADD', KEYS[5], tonumber(t[1]), ARGV[2] .. '|' .. sid)
    ready[#ready + 1] = sid
  else
    redis.call('HSET', KEYS[2], sid, 'pending')
  end
end
redis.call('HSET', KEYS[1], 'status', 'running', 'remaining', count, 'retried_at', now)
redis.call('HINCRBY', KEYS[1], 'retries', 1)
redis.call('HDEL', KEYS[1], 'failed_stage', 'finished_at')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '200000', '*', 't', now, 'kind', 'run', 'state', 'running',
  'retry', '1')
return {'ok', ready}
