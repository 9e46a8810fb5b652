-- Run control: cancel, pause, resume.
-- KEYS: 1 run, 2 states, 3 events, 4 parked   ARGV: 1 op, 2 prefix of stage hashes ('<p>:run:<id>:')
-- cancel -> {'ok', task ids to revoke} ; pause -> {'ok'} ; resume -> {'ok', parked payloads}
-- or {'noop', status} when the run is not in a state the op applies to.
local op = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'noop', 'missing'} end
local t = redis.call('TIME')
local now = string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1e6)
local function event(state)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '200000', '*', 't', now, 'kind', 'run', 'state', state)
end

if op == 'pause' then
  if status ~= 'running' then return {'noop', status} end
  redis.call('HSET', KEYS[1], 'status', 'paused', 'paused_at', now)
  event('paused')
  return {'ok', {}}
elseif op == 'resume' then
  if status ~= 'paused' then return {'noop', status} end
  redis.call('HSET', KEYS[1], 'status', 'running')
  local parked = redis.call('SMEMBERS', KEYS[4])
  redis.call('DEL', KEYS[4])
  event('running')
  return {'ok', parked}
elseif op == 'cancel' then
  if status ~= 'running' and status ~= 'paused' then return {'noop', status} end
  local TERMINAL = {succeeded = true, failed = true, skipped = true, cancelled = true,
                    upstream_failed = true, fallback = true}
  local revoke = {}
  local states = redis.call('HGETALL', KEYS[2])
  for i = 1, #states, 2 do
    local sid, st = states[i], states[i + 1]
    if not TERMINAL[st] then
      local h = ARGV[2] .. 'stage:' .. sid
      if st == 'running' or st == 'retrying' then
        local tid = redis.call('HGET', h, 'task_id')
        if tid then revoke[#revoke + 1] = tid end
        local items = redis.call('HGETALL', ARGV[2] .. 'items:' .. sid)
        for j = 1, #items, 2 do
          if string.sub(items[j], -8) == ':task_id' then revoke[#revoke + 1] = items[j + 1] end
        end
      end
      redis.call('HSET', KEYS[2], sid, 'cancelled')
      redis.call('HSET', h, 'state', 'cancelled', 'finished_at', now)
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', '200000', '*', 't', now, 'kind', 'stage', 'stage', sid,
        'state', 'cancelled')
    end
  end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now, 'remaining', 0)
  redis.call('DEL', KEYS[4])
  event('cancelled')
  return {'ok', revoke}
end
return redis.error_reply('unknown op ' .. tostring(op))
