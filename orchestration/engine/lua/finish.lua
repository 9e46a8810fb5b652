-- Commit the end of an attempt, exactly once, and advance the graph.
--
-- Checks first, writes after: every input is checked (the fencing token, context types,
-- finite numbers, declared keys) before the first write, so a bad input never leaves a
-- half-written commit. A failed check writes nothing and returns {'invalid', why}; the
-- worker then commits the attempt as failed with that reason.
--
-- KEYS: 1 run, 2 states, 3 unit hash (stage hash, or the stage's items hash), 4 events,
--       5 outputs, 6 context, 7 metrics, 8 pending, 9 stage hash, 10 leases, 11 outbox,
--       12 hooks stream, 13 cache entry (any key when A.cache_ttl is 0), 14 run ends stream,
--       15... the stage hash then the items hash of each stage in A.others, in order
--       (the stages this commit may close besides its own: upstream_failed, fail-fast),
--       then the broker's queue lists named by A.queues, in order, then the stage hash of each
--       stage in A.in_place.stages (its key's number is in its entry)
-- ARGV: 1 JSON object A:
--   stage, item (number or null), token ('' = a commit decided outside any attempt),
--   outcome (succeeded | skipped | failed | fallback), output (JSON text or ''),
--   error (JSON text or ''), context ([[op, key, value]]: 's' set JSON, 'i' add a number),
--   metrics ([[name, delta]]), children, lone (the children whose one need is this stage: ready
--   without a count), descendants, others (stage ids), critical, fail_fast,
--   lease (member of the leases set), windowed, run_id, cache_ttl (s, 0 = no cache),
--   cached (a cache hit), notify (hook entries to enqueue), run_hook (enqueue run_complete),
--   pipeline, fanout_cap (bytes a fan-out's assembled output may reach; 0 = no cap),
--   messages ({child: [queue #, message, front]}: the broker text of a child's message,
--   engine/messages.py; its queue is the #th list after the others' keys; `front`: a stage on
--   the critical path goes to the front of its queue, the others to the back), next ([queue #,
--   template] of a windowed fan-out's next item, ITEM standing for its index), release (what the
--   attempt holds of its limits, given back: _limits.lua; its keys follow the queues' keys),
--   in_place ({host, queue, task_id, lease_ms, stages: [[child, key #, reads, notify, lease]]}:
--   children the committing worker would run itself; the first of them, in that order, that
--   becomes ready and has never run is started here as begin.lua would start it, not enqueued),
--   in_place_item ({item, host, queue, task_id, lease_ms, notify, lease}: the next item of the
--   committing worker's chunk message, started here as begin.lua would if it never ran)
-- A child with a message is enqueued here when it becomes ready, atomically with the commit;
-- a child without one (a fan-out, which Python starts) goes to the outbox and the ready list.
-- Returns {verdict, finalized, run status, ready children, task ids to revoke, next item or '',
--   the child (or the item of in_place_item) started in place: {stage, token, outputs of its
--   reads} or ''}
--   (next item: only when A.next did not come, so the caller must send it)
--   verdict: ok | item | stale | late | invalid (then 3rd element is the reason)
--   | already (this attempt's commit is already in: a commit sent again, see transitions.py)
local A = cjson.decode(ARGV[1])
local stage, token, outcome = A.stage, A.token, A.outcome
local item = ''
if A.item ~= nil and A.item ~= cjson.null then item = tostring(A.item) end
local p = field_prefix(item)
local released = false
local function let_go()
  -- give back what the attempt held (_limits.lua), once; a stale attempt's holder is its own too
  if not released and A.release and A.release ~= cjson.null then gate_release(A.release, (clock())) end
  released = true
end
local function refuse(verdict, why)
  if verdict == 'stale' or verdict == 'late' then let_go() end
  return {verdict, 0, why or '', {}, {}, ''}
end

-- 1. checks (no writes) -------------------------------------------------------------------
-- The states hash, read once and written once: the first state asked for brings this stage's, its
-- children's and (for a critical failure) its descendants' in one HMGET; `set_state` only notes a
-- change, and `save_states` writes them all in one HSET before the script returns.
local known, changed = {}, {}  -- stage id -> state (false: none); the stage ids changed, in order
local function state_of(sid)
  if known[sid] == nil then
    local ask = {sid, stage}
    for _, c in ipairs(A.children or {}) do ask[#ask + 1] = c end
    if outcome == S.FAILED and A.critical and not A.fail_fast then
      for _, d in ipairs(A.descendants or {}) do ask[#ask + 1] = d end
    end
    local got = hmget_all(KEYS[2], ask)
    for i, id in ipairs(ask) do if known[id] == nil then known[id] = got[i] end end
  end
  return known[sid]
end
local function set_state(sid, state)
  known[sid] = state
  changed[#changed + 1] = sid
end
local function save_states()
  local fields = {}
  for _, sid in ipairs(changed) do fields[#fields + 1] = sid; fields[#fields + 1] = known[sid] end
  for i = 1, #fields, 1000 do
    redis.call('HSET', KEYS[2], unpack(fields, i, math.min(i + 999, #fields)))
  end
  changed = {}
end

if token == '' then
  local st = state_of(stage)
  if st ~= S.QUEUED and st ~= S.RETRYING and st ~= S.RUNNING then return refuse('stale') end
  if st == S.RUNNING and item == '' and redis.call('HGET', KEYS[9], 'items_total') == false then
    return refuse('stale')  -- an attempt holds it: only that attempt commits it
  end
else
  local held = redis.call('HMGET', KEYS[3], p .. 'token', p .. 'state', p .. 'commit')
  -- this very commit, sent again (its first reply came back without enough replicas: WAIT)
  if held[3] == token then return {'already', 0, held[2] or '', {}, {}, ''} end
  if held[1] ~= token or held[2] ~= S.RUNNING then return refuse('stale') end
end

local hash_of, items_of = {}, {}
for i, sid in ipairs(A.others or {}) do
  hash_of[sid] = KEYS[13 + 2 * i]
  items_of[sid] = KEYS[14 + 2 * i]
end
hash_of[stage] = KEYS[9]
items_of[stage] = KEYS[3]
local queue_base = 14 + 2 * #(A.others or {})
local messages = A.messages or {}
if type(messages) ~= 'table' then messages = {} end
local function enqueue(spec, index)
  local text = spec[2]
  if index then text = string.gsub(text, ITEM_MARK, index) end
  -- kombu's consumer pops from the right: RPUSH puts a message first in line, LPUSH last
  redis.call(spec[3] and 'RPUSH' or 'LPUSH', KEYS[queue_base + spec[1]], text)
end

local context = {}  -- key -> value after this commit's own writes, as text
for i, w in ipairs(A.context or {}) do
  local op, key, value = w[1], w[2], w[3]
  if type(key) ~= 'string' or type(value) ~= 'string' then
    return refuse('invalid', 'context write #' .. i .. ' is malformed')
  end
  if op == 's' then
    context[key] = value
  elseif op == 'i' then
    local current = context[key]
    if current == nil then current = redis.call('HGET', KEYS[6], key) or '0' end
    local base, delta = tonumber(current), tonumber(value)
    if not finite(base) then
      return refuse('invalid', "ctx.context.incr('" .. key .. "'): the context value is " .. current
        .. ', not a number')
    end
    if not finite(delta) or not finite(base + delta) then
      return refuse('invalid', "ctx.context.incr('" .. key .. "', " .. value .. '): not a finite number')
    end
    context[key] = string.format('%.17g', base + delta)
  else
    return refuse('invalid', 'context write #' .. i .. ' has unknown op ' .. tostring(op))
  end
end
local metric_values = {}
for _, m in ipairs(A.metrics or {}) do
  local delta = tonumber(m[2])
  local base = tonumber(redis.call('HGET', KEYS[7], m[1]) or '0')
  if type(m[1]) ~= 'string' or not finite(delta) or not finite(base) or not finite(base + delta) then
    return refuse('invalid', "metric '" .. tostring(m[1]) .. "' += " .. tostring(m[2])
      .. ' is not a finite number')
  end
  metric_values[#metric_values + 1] = {m[1], delta}
end
local item_bytes = 0
-- an item's stage: {bytes of the items' outputs so far, items total, items done, next item, state},
-- read once (its `state` is written with its entry in the states hash); the counters this commit
-- moves are written back in one HSET
local fanout = {}
if item ~= '' then
  fanout = redis.call('HMGET', KEYS[9], 'items_bytes', 'items_total', 'items_done', 'next_item', 'state')
end
if item ~= '' and A.output ~= '' and (A.fanout_cap or 0) > 0 then
  item_bytes = #A.output + 1
  local so_far = tonumber(fanout[1] or '0')
  if so_far + item_bytes > A.fanout_cap then
    return refuse('invalid', 'the fan-out\'s assembled output would be over ' .. A.fanout_cap
      .. ' bytes (CHORDFLOW_FANOUT_OUTPUT_CAP_BYTES): its items have returned ' .. so_far
      .. ' bytes and this one ' .. #A.output .. '; return references to stored data instead')
  end
end
if outcome == S.FAILED and A.critical and not A.fail_fast then
  for _, sid in ipairs(A.descendants or {}) do
    if not hash_of[sid] then return refuse('invalid', 'internal: stage ' .. sid .. ' not declared') end
  end
end

local now_ms, now, now_s = clock()

-- An item of a stage that already ended (failed, or cancelled): its result, context
-- writes and metrics are dropped with it.
if item ~= '' and fanout[5] ~= S.RUNNING then
  if token ~= '' then
    redis.call('HSET', KEYS[3], p .. 'state', S.CANCELLED, p .. 'finished_at', now)
    redis.call('ZREM', KEYS[10], A.lease)
  end
  return refuse('late')
end

-- 2. writes -----------------------------------------------------------------------------
let_go()
local function event(...)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 't', now, ...)
end
local function notify(entry)
  redis.call('XADD', KEYS[12], 'MAXLEN', '~', HOOKS_MAXLEN, '*', 'e', entry)
end

if token ~= '' then
  local fields = {p .. 'state', outcome, p .. 'finished_at', now, p .. 'commit', token}
  if A.error ~= '' then fields[#fields + 1] = p .. 'error'; fields[#fields + 1] = A.error end
  if item ~= '' and A.output ~= '' then fields[#fields + 1] = p .. 'output'; fields[#fields + 1] = A.output end
  redis.call('HSET', KEYS[3], unpack(fields))
  redis.call('ZREM', KEYS[10], A.lease)
elseif A.error ~= '' then
  redis.call('HSET', KEYS[9], 'error', A.error)  -- decided outside an attempt: keep why
end
for key, value in pairs(context) do redis.call('HSET', KEYS[6], key, value) end
for _, m in ipairs(metric_values) do redis.call('HINCRBYFLOAT', KEYS[7], m[1], m[2]) end
if A.cached then redis.call('HSET', KEYS[9], 'cache', 'hit') end
if A.cache_ttl > 0 and outcome == S.SUCCEEDED and A.output ~= '' then
  redis.call('SET', KEYS[13], A.output, 'EX', math.max(1, math.floor(A.cache_ttl)))
end
for _, entry in ipairs(A.notify or {}) do notify(entry) end

-- An attempt started here, in place, for the committing worker to run next (a child in
-- A.in_place, the chunk's next item in A.in_place_item), as begin.lua starts a first attempt: a
-- fresh token, the lease, its `running` event and hook entries. Only a unit with no attempt yet
-- (no state in its hash, or `pending`: a retried run's, reopen.lua), else it goes through the
-- queue and begin.lua. Returns its token, or nil. `known_fresh`: the caller saw the stage
-- `pending` in the states hash, which no stage with an attempt is (begin.lua starts only a
-- queued or retrying stage; reopen.lua deletes a stage's hash before it makes it pending again),
-- so it is started without a look at its hash, and a token always comes back.
local function start_in_place(key, sid, item, how, lease, entries, known_fresh)
  local q = field_prefix(item)
  if not known_fresh then
    local unit = redis.call('HMGET', key, q .. 'state', q .. 'attempt')
    if (unit[1] and unit[1] ~= S.PENDING) or unit[2] then return nil end
  end
  local token = redis.call('HINCRBY', KEYS[1], 'fence', 1) .. '.' .. select(4, clock())
  redis.call('HSET', key, q .. 'state', S.RUNNING, q .. 'token', token, q .. 'attempt', 1, q .. 'host', how.host,
    q .. 'queue', how.queue, q .. 'task_id', how.task_id, q .. 'started_at', now, q .. 'lease_exp', now_ms + how.lease_ms)
  redis.call('ZADD', KEYS[10], now_ms + how.lease_ms, lease)
  event('kind', 'stage', 'stage', sid, 'item', item, 'state', S.RUNNING, 'attempt', '1', 'host', how.host)
  for _, entry in ipairs(entries or {}) do notify(entry) end
  return token
end

-- The next item of the committing worker's chunk, started for it: {stage, token, {}} or ''.
local function start_item(total)
  local N = A.in_place_item
  if N == nil or N == cjson.null then return '' end
  if tonumber(N.item) >= total or redis.call('HGET', KEYS[1], 'status') ~= R.RUNNING then return '' end
  local token = start_in_place(KEYS[3], stage, tostring(N.item), N, N.lease, N.notify)
  if not token then return '' end
  return {stage, token, {}}
end

local stage_outcome, stage_output = outcome, A.output
local next_item = ''
if item ~= '' then
  if token == '' and A.output ~= '' then redis.call('HSET', KEYS[3], p .. 'output', A.output) end
  local counters = {}
  if item_bytes > 0 then
    counters = {'items_bytes', tonumber(fanout[1] or '0') + item_bytes}
  end
  event('kind', 'item', 'stage', stage, 'item', item, 'state', outcome)
  local done, total = 0, tonumber(fanout[2])
  if outcome ~= S.FAILED then
    done = tonumber(fanout[3] or '0') + 1
    counters[#counters + 1] = 'items_done'
    counters[#counters + 1] = done
    if A.windowed then
      -- the next item not yet done (a retried run keeps the items that succeeded)
      local n = tonumber(fanout[4] or '0')
      while n < total and KEPT_ON_RETRY[redis.call('HGET', KEYS[3], n .. ':state')] do n = n + 1 end
      counters[#counters + 1] = 'next_item'
      counters[#counters + 1] = n + 1
      if n < total then
        if A.next and A.next ~= cjson.null then enqueue(A.next, tostring(n)) else next_item = tostring(n) end
      end
    end
  end
  if #counters > 0 then redis.call('HSET', KEYS[9], unpack(counters)) end
  if outcome ~= S.FAILED then
    if done < total then return {'item', 0, R.RUNNING, {}, {}, next_item, start_item(total)} end
    -- the stage's output: every item's, in order (HMGETs of 500 fields, not an HGET per item)
    local fields = {}
    for i = 0, total - 1 do fields[#fields + 1] = i .. ':output' end
    local parts = hmget_all(KEYS[3], fields)
    for i = 1, #parts do if not parts[i] then parts[i] = 'null' end end
    stage_outcome, stage_output = S.SUCCEEDED, '[' .. table.concat(parts, ',') .. ']'
  end
end

-- the stage
local closed = 0  -- stages this commit closed: the run's `remaining` goes down by as many, once
local function close(sid, state)
  if TERMINAL[state_of(sid)] then return false end
  set_state(sid, state)
  if sid ~= stage or item ~= '' or token == '' then  -- else the attempt's own write above has them
    redis.call('HSET', hash_of[sid], 'state', state, 'finished_at', now)
  end
  closed = closed + 1
  event('kind', 'stage', 'stage', sid, 'state', state)
  return true
end
local function count_closed()
  local remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -closed)
  closed = 0
  return remaining
end

if not close(stage, stage_outcome) then return refuse('stale') end
if item ~= '' and A.error ~= '' then redis.call('HSET', KEYS[9], 'error', A.error) end
if stage_output ~= '' then redis.call('HSET', KEYS[5], stage, stage_output) end

local run_fields = {}  -- the run record's other writes, in finalize's HSET or after the children
local function finalize(final, ...)
  redis.call('HSET', KEYS[1], 'status', final, 'finished_at', now, unpack(run_fields))
  run_fields = {}
  event('kind', 'run', 'state', final, ...)
  redis.call('XADD', KEYS[14], 'MAXLEN', '~', 100, '*', 't', now, 'kind', 'run', 'state', final, ...)
  if A.run_hook then
    notify(cjson.encode({kind = 'run_complete', run_id = A.run_id, pipeline = A.pipeline, status = final}))
  end
end

local ready, revoke = {}, {}
local run = redis.call('HMGET', KEYS[1], 'status', 'failed_stage')
local run_status, failed_stage = run[1], run[2]

-- A child started in place: the committing worker runs it next, in the same process, so its
-- message never goes through the queue. Started as begin.lua starts a first attempt (a fresh
-- token, the lease, its start's event and hooks); a child with an attempt already goes through
-- the queue, where begin.lua decides.
local here, wanted, taken = A.in_place, {}, ''
if here == cjson.null or run_status ~= R.RUNNING then here = nil end
for i, spec in ipairs(here and here.stages or {}) do wanted[spec[1]] = i end
local function start_here(spec)  -- a child this commit saw `pending` (state_of) and made ready
  local token = start_in_place(KEYS[spec[2]], spec[1], '', here, spec[5], spec[4], true)
  set_state(spec[1], S.RUNNING)
  -- what it reads: this commit's own output is at hand, the others' are read
  local inputs, ask, at = {}, {}, {}
  for i, sid in ipairs(spec[3]) do
    if sid == stage and stage_output ~= '' then inputs[i] = stage_output else ask[#ask + 1] = sid; at[#at + 1] = i end
  end
  local got = hmget_all(KEYS[5], ask)
  for j = 1, #ask do inputs[at[j]] = got[j] or 'null' end
  taken = {spec[1], token, inputs}
end

if stage_outcome ~= S.FAILED or not A.critical then
  local held = {}  -- ready children this worker could run itself: one is started, the rest enqueued
  local lone = {}  -- a child with one need is ready when it commits: no count of its own (runs.py)
  for _, child in ipairs(A.lone or {}) do lone[child] = true end
  for _, child in ipairs(A.children or {}) do
    local left = lone[child] and 0 or redis.call('HINCRBY', KEYS[8], child, -1)
    if left <= 0 and state_of(child) == S.PENDING and RUN_ACTIVE[run_status] then
      set_state(child, S.QUEUED)
      if messages[child] and wanted[child] then
        held[#held + 1] = child
      elseif messages[child] then
        enqueue(messages[child])
      else
        redis.call('ZADD', KEYS[11], now_s, outbox_member(A.run_id, child))
        ready[#ready + 1] = child
      end
    end
  end
  table.sort(held, function(a, b) return wanted[a] < wanted[b] end)
  for i, child in ipairs(held) do
    if i == 1 then start_here(here.stages[wanted[child]]) else enqueue(messages[child]) end
  end
else
  if not failed_stage then
    failed_stage = stage
    run_fields = {'failed_stage', stage}
  end
  if A.fail_fast then
    -- fail fast: cancel everything not finished, and revoke what runs
    local states = redis.call('HGETALL', KEYS[2])
    for i = 1, #states, 2 do
      local sid = states[i]
      if known[sid] == nil then known[sid] = states[i + 1] end  -- what this commit changed wins
      local st = known[sid]
      if not TERMINAL[st] and hash_of[sid] then
        if st == S.RUNNING then
          local tid = redis.call('HGET', hash_of[sid], 'task_id')
          if tid then revoke[#revoke + 1] = tid end
          local items = redis.call('HGETALL', items_of[sid])
          for j = 1, #items, 2 do
            if string.sub(items[j], -8) == ':task_id' then revoke[#revoke + 1] = items[j + 1] end
          end
        end
        close(sid, S.CANCELLED)
      end
    end
    save_states()
    count_closed()
    finalize(R.FAILED, 'stage', stage)
    return {'ok', 1, R.FAILED, ready, revoke, ''}
  end
  for _, sid in ipairs(A.descendants or {}) do close(sid, S.UPSTREAM_FAILED) end
end
save_states()

if count_closed() <= 0 and RUN_ACTIVE[run_status] then
  local final = R.SUCCEEDED
  if failed_stage then final = R.FAILED end
  finalize(final)
  return {'ok', 1, final, ready, revoke, next_item, taken}
end
if #run_fields > 0 then redis.call('HSET', KEYS[1], unpack(run_fields)) end
return {'ok', 0, run_status, ready, revoke, next_item, taken}
