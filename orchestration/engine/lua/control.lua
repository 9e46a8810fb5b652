-- Run control: cancel, pause, resume.
-- KEYS: 1 run, 2 states, 3 events, 4 parked, 5 hooks outbox,
--       6... with cancel: the stage hash then the items hash of each stage in ARGV[4], in order,
--       last: the run ends stream
-- ARGV: 1 op, 2 run id, 3 pipeline name, 4 with cancel: JSON array of the stage ids
-- cancel -> {'ok', task ids to revoke} ; pause -> {'ok'} ; resume -> {'ok', parked payloads}
-- or {'noop', status} when the run is not in a state the op applies to.
-- Each change also enqueues its hook event (run_complete with status 'cancelled', run_paused,
-- run_resumed) in the hooks outbox, always: which Python hooks the workers have is not known here.
local op = ARGV[1]
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'noop', 'missing'} end
local _, now = clock()
local function event(state)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 't', now, 'kind', 'run', 'state', state)
  redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', 100, '*', 't', now, 'kind', 'run', 'state', state)
end
local function hook(kind, run_status)
  local pipeline = ARGV[3]
  if pipeline == nil or pipeline == '' then pipeline = redis.call('HGET', KEYS[1], 'pipeline') or '' end
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', HOOKS_MAXLEN, '*', 'e',
    cjson.encode({kind = kind, run_id = ARGV[2], pipeline = pipeline, status = run_status}))
end

if op == 'pause' then
  if status ~= R.RUNNING then return {'noop', status} end
  redis.call('HSET', KEYS[1], 'status', R.PAUSED, 'paused_at', now)
  event(R.PAUSED)
  hook('run_paused', R.PAUSED)
  return {'ok', {}}
elseif op == 'resume' then
  if status ~= R.PAUSED then return {'noop', status} end
  redis.call('HSET', KEYS[1], 'status', R.RUNNING)
  local parked = redis.call('SMEMBERS', KEYS[4])
  redis.call('DEL', KEYS[4])
  event(R.RUNNING)
  hook('run_resumed', R.RUNNING)
  return {'ok', parked}
elseif op == 'cancel' then
  if not RUN_ACTIVE[status] then return {'noop', status} end
  local hash_of, items_of = {}, {}
  for i, sid in ipairs(cjson.decode(ARGV[4] or '[]')) do
    hash_of[sid] = KEYS[4 + 2 * i]
    items_of[sid] = KEYS[5 + 2 * i]
  end
  local revoke = {}
  local states = redis.call('HGETALL', KEYS[2])
  for i = 1, #states, 2 do
    local sid, st = states[i], states[i + 1]
    if not TERMINAL[st] then
      if not hash_of[sid] then return redis.error_reply('internal: stage ' .. sid .. ' not declared') end
    end
  end
  for i = 1, #states, 2 do
    local sid, st = states[i], states[i + 1]
    if not TERMINAL[st] then
      local h = hash_of[sid]
      if st == S.RUNNING or st == S.RETRYING then
        local tid = redis.call('HGET', h, 'task_id')
        if tid then revoke[#revoke + 1] = tid end
        local items = redis.call('HGETALL', items_of[sid])
        for j = 1, #items, 2 do
          if string.sub(items[j], -8) == ':task_id' then revoke[#revoke + 1] = items[j + 1] end
        end
      end
      redis.call('HSET', KEYS[2], sid, S.CANCELLED)
      redis.call('HSET', h, 'state', S.CANCELLED, 'finished_at', now)
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 't', now, 'kind', 'stage', 'stage', sid,
        'state', S.CANCELLED)
    end
  end
  redis.call('HSET', KEYS[1], 'status', R.CANCELLED, 'finished_at', now, 'remaining', 0)
  redis.call('DEL', KEYS[4])
  event(R.CANCELLED)
  hook('run_complete', R.CANCELLED)
  return {'ok', revoke}
end
return redis.error_reply('unknown op ' .. tostring(op))
