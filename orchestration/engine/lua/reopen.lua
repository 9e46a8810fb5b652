-- Retry a failed or cancelled run from the point of failure, under the same id.
-- Stages that succeeded, were skipped or fell back keep their outputs; every other stage
-- goes back to pending with a fresh attempt count, its previous record kept in 'history'.
-- A fan-out stage keeps the items that succeeded (with their outputs): only the others run again.
-- KEYS: 1 run, 2 states, 3 pending, 4 events, 5 outbox,
--       6... the stage hash then the items hash of each stage, in the order of ARGV[2]'s keys,
--       last: the run ends stream
-- ARGV: 1 run id, 2 needs: JSON [[stage, [needs...]], ...]
-- Returns {'ok', stages to send now} or {'noop', status}
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= R.FAILED and status ~= R.CANCELLED then return {'noop', tostring(status)} end
local needs_list = cjson.decode(ARGV[2])
local needs, hash_of, items_of = {}, {}, {}
for i, entry in ipairs(needs_list) do
  needs[entry[1]] = entry[2]
  hash_of[entry[1]] = KEYS[4 + 2 * i]
  items_of[entry[1]] = KEYS[5 + 2 * i]
end
local states = redis.call('HGETALL', KEYS[2])
local state_of, rerun = {}, {}
for i = 1, #states, 2 do state_of[states[i]] = states[i + 1] end
local _, now, now_s = clock()
local count = 0
for sid, st in pairs(state_of) do
  if not KEPT_ON_RETRY[st] then rerun[sid] = true; count = count + 1 end
end
local ready = {}
for sid, _ in pairs(rerun) do
  local h = hash_of[sid]
  local old = redis.call('HGETALL', h)
  local record, history = {}, '[]'
  for i = 1, #old, 2 do
    if old[i] == 'history' then history = old[i + 1] else record[old[i]] = old[i + 1] end
  end
  local list = cjson.decode(history)
  if next(record) ~= nil then list[#list + 1] = record end
  -- keep the items that succeeded; drop every field of the others
  local items = redis.call('HGETALL', items_of[sid])
  local item_state = {}
  for i = 1, #items, 2 do
    local index, name = string.match(items[i], '^(%d+):(.+)$')
    if name == 'state' then item_state[index] = items[i + 1] end
  end
  local drop = {}
  for i = 1, #items, 2 do
    local index = string.match(items[i], '^(%d+):')
    if not KEPT_ON_RETRY[item_state[index]] then drop[#drop + 1] = items[i] end
  end
  for i = 1, #drop, 500 do
    redis.call('HDEL', items_of[sid], unpack(drop, i, math.min(i + 499, #drop)))
  end
  redis.call('DEL', h)
  redis.call('HSET', h, 'history', cjson.encode(list), 'state', S.PENDING)
  local left = 0
  for _, need in ipairs(needs[sid] or {}) do
    if rerun[need] then left = left + 1 end
  end
  redis.call('HSET', KEYS[3], sid, left)
  if left == 0 then
    redis.call('HSET', KEYS[2], sid, S.QUEUED)
    redis.call('ZADD', KEYS[5], now_s, outbox_member(ARGV[1], sid))
    ready[#ready + 1] = sid
  else
    redis.call('HSET', KEYS[2], sid, S.PENDING)
  end
end
redis.call('HSET', KEYS[1], 'status', R.RUNNING, 'remaining', count, 'retried_at', now)
redis.call('HINCRBY', KEYS[1], 'retries', 1)
redis.call('HDEL', KEYS[1], 'failed_stage', 'finished_at')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 't', now, 'kind', 'run', 'state', R.RUNNING,
  'retry', '1')
redis.call('XADD', KEYS[#KEYS], 'MAXLEN', '~', 100, '*', 't', now, 'kind', 'run', 'state', R.RUNNING, 'retry', '1')
return {'ok', ready}
