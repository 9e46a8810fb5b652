-- Start one attempt of a stage (or of one fan-out item), fenced by a fresh token.
-- KEYS: 1 run, 2 states, 3 unit hash (stage hash, or the stage's items hash), 4 events,
--       5 parked, 6 leases, 7 outputs, 8 hooks stream, 9 stage hash
-- ARGV: 1 JSON object A: stage, item (number or null), attempt, host, queue, task_id, lease_ms,
--       max_crashes, payload (parked while paused), lease (member of the leases set),
--       reads (ids whose outputs the stage reads: returned with the token, one round trip),
--       notify (hook entries to enqueue when the attempt starts), gate (a stage with limits:
--       _limits.lua; KEYS 10... are the keys it names)
-- Returns {'run', token, outputs} | {'parked'} | {'drop', why} | {'dup', why}
--       | {'poison', token, crashes, outputs} | {'wait', label} (the gate parked the message);
--       with a gate, 'run' and 'poison' end with the GPU devices given ('0,1', or '')
local A = cjson.decode(ARGV[1])
local run_status = redis.call('HGET', KEYS[1], 'status')
if not run_status then return {'drop', 'no such run'} end
if run_status == R.PAUSED then
  redis.call('SADD', KEYS[5], A.payload)
  return {'parked'}
end
if run_status ~= R.RUNNING then return {'drop', 'run is ' .. run_status} end

local item = ''
if A.item ~= nil and A.item ~= cjson.null then item = tostring(A.item) end
local p = field_prefix(item)
local unit = redis.call('HMGET', KEYS[3], p .. 'state', p .. 'attempt', p .. 'lease_exp')
local state = unit[1]
if TERMINAL[state] then return {'dup', 'already ' .. state} end
if item ~= '' then
  -- an item's stage: its state and item count, from the stage hash (a fan-out stage's `state` there
  -- is written with its entry in the states hash, by every script that changes it)
  local fan = redis.call('HMGET', KEYS[9], 'state', 'items_total')
  if fan[1] ~= S.RUNNING then return {'drop', 'stage is ' .. tostring(fan[1])} end
  if tonumber(item) >= tonumber(fan[2] or '0') then return {'drop', 'item ' .. item .. ' is out of range'} end
else
  -- A stage not ready here (pending: a parent's commit is not in) must not run on what it would
  -- read: a message sent before a failover, its parents' commits lost with the old primary, is sent
  -- again by the commit that makes it ready.
  local stage_state = redis.call('HGET', KEYS[2], A.stage)
  if stage_state ~= S.QUEUED and stage_state ~= S.RETRYING and stage_state ~= S.RUNNING then
    return {'drop', 'stage is ' .. tostring(stage_state) .. ', not ready'}
  end
end

local attempt = tonumber(A.attempt)
local current = tonumber(unit[2] or '0')
if attempt < current then return {'dup', 'attempt ' .. attempt .. ' is superseded by ' .. current} end
if attempt > current + 1 then
  return {'drop', 'attempt ' .. attempt .. ' is neither the current attempt (' .. current .. ') nor the next'}
end
if state == S.RETRYING and attempt == current then return {'dup', 'attempt ' .. attempt .. ' failed already'} end

local now_ms, now, _, now_us = clock()
if state == S.RUNNING then
  -- Someone holds or held this attempt. A live lease means a duplicate delivery (whatever attempt
  -- number it carries); an expired one means its worker died: it is counted below (a poison
  -- message is quarantined).
  local lease_exp = tonumber(unit[3] or '0')
  if lease_exp > now_ms then return {'dup', 'running elsewhere'} end
end
-- A stage with limits (capacity, pools, keys, rates, max_parallel: _limits.lua) is admitted only
-- while every one has room; else its message waits in Redis, and this delivery ends.
local G = A.gate
if G == cjson.null then G = nil end
if G then
  local refusal = gate_refusal(G, KEYS[3], p, now_ms)
  if refusal then
    if state == S.RUNNING then redis.call('ZREM', KEYS[6], A.lease) end  -- it waits, it is not lost
    return {'wait', gate_park(G, refusal, A.payload, KEYS[3], p, now_ms, now, G.who)}
  end
end
-- what the stage reads, before the first write (in batches: a fan-in may read thousands)
local inputs = hmget_all(KEYS[7], A.reads)
for i = 1, #inputs do if not inputs[i] then inputs[i] = 'null' end end

local crashes = 0
if state == S.RUNNING then crashes = redis.call('HINCRBY', KEYS[3], p .. 'crashes', 1) end

-- The token: the run's fence counter and an epoch, Redis's clock in microseconds. After a failover
-- to a replica that missed writes the counter can repeat; the pair does not, so a token handed out
-- before the failover never matches one handed out after it.
local token = redis.call('HINCRBY', KEYS[1], 'fence', 1) .. '.' .. now_us
local fields = {p .. 'state', S.RUNNING, p .. 'token', token, p .. 'attempt', attempt, p .. 'host', A.host,
  p .. 'queue', A.queue, p .. 'task_id', A.task_id, p .. 'started_at', now, p .. 'lease_exp', now_ms + A.lease_ms}
local devices  -- with a gate: what it was admitted with (its GPUs, also last in the reply)
if G then
  devices = gate_take(G, A.lease .. '#' .. token, KEYS[3], p, now_ms + A.lease_ms, now_ms)
  fields[#fields + 1] = p .. 'gpus'
  fields[#fields + 1] = devices
end
redis.call('HSET', KEYS[3], unpack(fields))
if state then redis.call('HDEL', KEYS[3], p .. 'finished_at') end  -- an earlier attempt's end
if item == '' then redis.call('HSET', KEYS[2], A.stage, S.RUNNING) end
redis.call('ZADD', KEYS[6], now_ms + A.lease_ms, A.lease)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'kind', 'stage', 'stage', A.stage, 'item', item,
  'state', S.RUNNING, 'attempt', tostring(attempt), 'host', A.host, 't', now)
for _, entry in ipairs(A.notify or {}) do
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', HOOKS_MAXLEN, '*', 'e', entry)
end
if G then
  if crashes >= A.max_crashes then return {'poison', token, crashes, inputs, devices} end
  return {'run', token, inputs, devices}
end
if crashes >= A.max_crashes then return {'poison', token, crashes, inputs} end
return {'run', token, inputs}
