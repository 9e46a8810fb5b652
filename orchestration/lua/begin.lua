-- Start one attempt of a stage (or of one fan-out item), fenced by a fresh token.
-- KEYS: 1 run, 2 states, 3 unit hash (stage hash, or the stage's items hash), 4 events,
--       5 parked, 6 leases, 7 outputs
-- ARGV: 1 stage id, 2 item index or '', 3 attempt, 4 host, 5 queue, 6 task id, 7 lease ms,
--       8 max crashes, 9 message payload (parked while paused), 10 lease member,
--       11... ids whose outputs the stage reads (returned with the token: one round trip)
-- Returns {'run', token, outputs} | {'parked'} | {'drop', why} | {'dup', why}
--       | {'poison', token, crashes, outputs}
local run_status = redis.call('HGET', KEYS[1], 'status')
if not run_status then return {'drop', 'no such run'} end
if run_status == 'paused' then
  redis.call('SADD', KEYS[5], ARGV[9])
  return {'parked'}
end
if run_status ~= 'running' then return {'drop', 'run is ' .. run_status} end

local p = ''
if ARGV[2] ~= '' then p = ARGV[2] .. ':' end
local state = redis.call('HGET', KEYS[3], p .. 'state')
if state == 'succeeded' or state == 'failed' or state == 'skipped' or state == 'cancelled'
    or state == 'upstream_failed' or state == 'fallback' then
  return {'dup', 'already ' .. state}
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) ~= 'running' then
  return {'drop', 'stage is ' .. tostring(redis.call('HGET', KEYS[2], ARGV[1]))}
end

local attempt = tonumber(ARGV[3])
local current = tonumber(redis.call('HGET', KEYS[3], p .. 'attempt') or '0')
if attempt < current then return {'dup', 'attempt ' .. attempt .. ' is superseded by ' .. current} end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local crashes = 0
if state == 'running' then
  -- Someone holds or held this attempt. A live lease means a duplicate delivery;
  -- an expired one means its worker died: count it, and quarantine a poison message.
  local lease_exp = tonumber(redis.call('HGET', KEYS[3], p .. 'lease_exp') or '0')
  if lease_exp > now_ms and attempt == current then return {'dup', 'running elsewhere'} end
  crashes = redis.call('HINCRBY', KEYS[3], p .. 'crashes', 1)
end

local token = redis.call('HINCRBY', KEYS[1], 'fence', 1)
local now = string.format('%.3f', now_ms / 1000)
redis.call('HSET', KEYS[3], p .. 'state', 'running', p .. 'token', token, p .. 'attempt', attempt,
  p .. 'host', ARGV[4], p .. 'queue', ARGV[5], p .. 'task_id', ARGV[6], p .. 'started_at', now,
  p .. 'lease_exp', now_ms + tonumber(ARGV[7]))
redis.call('HDEL', KEYS[3], p .. 'finished_at')
if ARGV[2] == '' then redis.call('HSET', KEYS[2], ARGV[1], 'running') end
redis.call('ZADD', KEYS[6], now_ms + tonumber(ARGV[7]), ARGV[10])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', '200000', '*', 'kind', 'stage', 'stage', ARGV[1], 'item', ARGV[2],
  'state', 'running', 'attempt', ARGV[3], 'host', ARGV[4], 't', now)
local inputs = {}
if #ARGV > 10 then
  local needs = {}
  for i = 11, #ARGV do needs[#needs + 1] = ARGV[i] end
  inputs = redis.call('HMGET', KEYS[7], unpack(needs))
  for i = 1, #inputs do if not inputs[i] then inputs[i] = 'null' end end
end
if crashes >= tonumber(ARGV[8]) then return {'poison', token, crashes, inputs} end
return {'run', token, inputs}
