-- Commit the end of an attempt, exactly once, and advance the graph.
--
-- One script so that the fencing check, the output, the buffered context and
-- metrics writes, the children's counter joins and the run's completion either
-- all happen or none do. A late commit from a superseded attempt (wrong token,
-- or the unit no longer running) changes nothing.
--
-- KEYS: 1 run, 2 states, 3 unit hash, 4 events, 5 outputs, 6 context, 7 metrics,
--       8 pending, 9 stage hash, 10 leases, 11 outbox (ready stages until their message is sent)
-- ARGV: 1 stage id, 2 item index or '', 3 token ('' = coordinator commit of a queued stage),
--       4 outcome: succeeded | skipped | failed | fallback, 5 output JSON or '',
--       6 error JSON or '', 7 context writes: JSON array of [op, key, value] (op 's' set, 'i' incr),
--       8 metric increments: JSON array of [name, delta], 9 children: JSON array of stage ids,
--       10 descendants: JSON array (marked upstream_failed on a critical failure without fail_fast),
--       11 critical '1'|'0', 12 fail_fast '1'|'0', 13 lease member, 14 windowed fan-out '1'|'0',
--       15 key prefix for other stages' hashes ('<prefix>:run:<id>:'), 16 run id
-- Returns {verdict, finalized, run status, ready children, task ids to revoke, next item or ''}
local stage, item, token, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local p = ''
if item ~= '' then p = item .. ':' end
local TERMINAL = {succeeded = true, failed = true, skipped = true, cancelled = true,
                  upstream_failed = true, fallback = true}

if token == '' then
  if redis.call('HGET', KEYS[2], stage) ~= 'queued' then return {'stale', 0, '', {}, {}, ''} end
else
  if redis.call('HGET', KEYS[3], p .. 'token') ~= token
      or redis.call('HGET', KEYS[3], p .. 'state') ~= 'running' then
    return {'stale', 0, '', {}, {}, ''}
  end
end

local t = redis.call('TIME')
local now = string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1e6)

-- An item of a stage that already ended (failed, or cancelled): its result, context
-- writes and metrics are dropped with it.
if item ~= '' and redis.call('HGET', KEYS[2], stage) ~= 'running' then
  redis.call('HSET', KEYS[3], p .. 'state', 'cancelled', p .. 'finished_at', now)
  redis.call('ZREM', KEYS[10], ARGV[13])
  return {'late', 0, '', {}, {}, ''}
end
local function event(...)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', '200000', '*', 't', now, ...)
end

-- the unit itself
if token ~= '' then
  redis.call('HSET', KEYS[3], p .. 'state', outcome, p .. 'finished_at', now)
  redis.call('ZREM', KEYS[10], ARGV[13])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], p .. 'error', ARGV[6]) end
end
for _, w in ipairs(cjson.decode(ARGV[7])) do
  if w[1] == 's' then redis.call('HSET', KEYS[6], w[2], w[3])
  else redis.call('HINCRBYFLOAT', KEYS[6], w[2], w[3]) end
end
for _, m in ipairs(cjson.decode(ARGV[8])) do
  redis.call('HINCRBYFLOAT', KEYS[7], m[1], m[2])
end

local stage_outcome, stage_output = outcome, ARGV[5]
local next_item = ''
if item ~= '' then
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], p .. 'output', ARGV[5]) end
  event('kind', 'item', 'stage', stage, 'item', item, 'state', outcome)
  if outcome ~= 'failed' then
    local done = redis.call('HINCRBY', KEYS[9], 'items_done', 1)
    local total = tonumber(redis.call('HGET', KEYS[9], 'items_total'))
    if ARGV[14] == '1' then
      local n = redis.call('HINCRBY', KEYS[9], 'next_item', 1) - 1
      if n < total then next_item = tostring(n) end
    end
    if done < total then return {'item', 0, 'running', {}, {}, next_item} end
    local parts = {}
    for i = 0, total - 1 do
      parts[#parts + 1] = redis.call('HGET', KEYS[3], i .. ':output') or 'null'
    end
    stage_outcome, stage_output = 'succeeded', '[' .. table.concat(parts, ',') .. ']'
  end
end

-- the stage
local remaining = 0
local function close(sid, state)
  local prev = redis.call('HGET', KEYS[2], sid)
  if TERMINAL[prev] then return false end
  redis.call('HSET', KEYS[2], sid, state)
  redis.call('HSET', ARGV[15] .. 'stage:' .. sid, 'state', state, 'finished_at', now)
  remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
  event('kind', 'stage', 'stage', sid, 'state', state)
  return true
end

if not close(stage, stage_outcome) then return {'stale', 0, '', {}, {}, ''} end
if item ~= '' and ARGV[6] ~= '' then redis.call('HSET', KEYS[9], 'error', ARGV[6]) end
if stage_output ~= '' then redis.call('HSET', KEYS[5], stage, stage_output) end

local ready, revoke = {}, {}
local run_status = redis.call('HGET', KEYS[1], 'status')
if stage_outcome ~= 'failed' or ARGV[11] == '0' then
  for _, child in ipairs(cjson.decode(ARGV[9])) do
    local left = redis.call('HINCRBY', KEYS[8], child, -1)
    if left <= 0 and redis.call('HGET', KEYS[2], child) == 'pending'
        and (run_status == 'running' or run_status == 'paused') then
      redis.call('HSET', KEYS[2], child, 'queued')
      redis.call('ZADD', KEYS[11], tonumber(t[1]), ARGV[16] .. '|' .. child)
      ready[#ready + 1] = child
    end
  end
else
  if not redis.call('HGET', KEYS[1], 'failed_stage') then
    redis.call('HSET', KEYS[1], 'failed_stage', stage)
  end
  if ARGV[12] == '1' then
    -- fail fast: cancel everything not finished, and revoke what runs
    local states = redis.call('HGETALL', KEYS[2])
    for i = 1, #states, 2 do
      local sid, st = states[i], states[i + 1]
      if not TERMINAL[st] then
        local h = ARGV[15] .. 'stage:' .. sid
        if st == 'running' then
          local tid = redis.call('HGET', h, 'task_id')
          if tid then revoke[#revoke + 1] = tid end
          local items = redis.call('HGETALL', ARGV[15] .. 'items:' .. sid)
          for j = 1, #items, 2 do
            if string.sub(items[j], -8) == ':task_id' then revoke[#revoke + 1] = items[j + 1] end
          end
        end
        close(sid, 'cancelled')
      end
    end
    redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', now)
    event('kind', 'run', 'state', 'failed', 'stage', stage)
    return {'ok', 1, 'failed', ready, revoke, ''}
  end
  for _, sid in ipairs(cjson.decode(ARGV[10])) do close(sid, 'upstream_failed') end
end

if remaining <= 0 and (run_status == 'running' or run_status == 'paused') then
  local final = 'succeeded'
  if redis.call('HGET', KEYS[1], 'failed_stage') then final = 'failed' end
  redis.call('HSET', KEYS[1], 'status', final, 'finished_at', now)
  event('kind', 'run', 'state', final)
  return {'ok', 1, final, ready, revoke, next_item}
end
return {'ok', 0, run_status, ready, revoke, next_item}
