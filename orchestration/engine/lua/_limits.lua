-- Admission and release of capacity (engine/limits.py builds the gate), shared by begin, finish,
-- retry, renew and sweep. Loaded after _common.lua, only into the scripts that use it.
--
-- A holder ('<lease member>#<token>') sits in a sorted set per limit, scored by its lease's expiry
-- (Redis's clock): renewed with the lease, removed at the attempt's commit, and no longer counted
-- once its lease ran out (its worker died), so nothing leaks.
--
-- gate (begin): {holder?, counts = {{k, w, cap, id, label}}, rates = {{k, interval, label}},
--   worker = {k, h, w, devices = {ids}, memory_gb, gpu, need_gb, host}, delayed, stage_hash, waited}
--   k/w/h/... are indices into KEYS: holds, waiting, held hash, rate hash, ...
-- release (finish, retry): {holder, counts = {{k, w, cap}}, worker = {k, h, w, devices, memory_gb},
--   delayed}

local function drop_expired(holds, held, now_ms)
  local gone = redis.call('ZRANGEBYSCORE', holds, '-inf', now_ms)
  for i = 1, #gone, 500 do
    local last = math.min(i + 499, #gone)
    redis.call('ZREM', holds, unpack(gone, i, last))
    if held then redis.call('HDEL', held, unpack(gone, i, last)) end
  end
  return #gone
end

-- the worker's ledger: {free device ids, free GB}, after dropping expired holders
local function ledger_free(W, now_ms)
  drop_expired(KEYS[W.k], KEYS[W.h], now_ms)
  local used_dev, used_gb = {}, 0
  for _, raw in ipairs(redis.call('HVALS', KEYS[W.h])) do
    local h = cjson.decode(raw)
    for _, d in ipairs(h.gpus or {}) do used_dev[tostring(d)] = true end
    used_gb = used_gb + (tonumber(h.memory_gb) or 0)
  end
  local free = {}
  for _, d in ipairs(W.devices or {}) do
    if not used_dev[tostring(d)] then free[#free + 1] = tostring(d) end
  end
  return free, (tonumber(W.memory_gb) or 0) - used_gb
end

-- a rate's state lives an hour past its last reservation
local function keep_rate(key, now_ms)
  local st = redis.call('HMGET', key, 'tat', 'horizon')
  local last = math.max(tonumber(st[1] or '0'), tonumber(st[2] or '0'), now_ms)
  redis.call('PEXPIRE', key, math.ceil(last - now_ms) + 3600000)
end

local function wake(delayed, payload, now_ms)
  redis.call('ZADD', KEYS[delayed], now_ms, payload)
end

-- wake the waiters of a capacity class that fit in what this worker has free (oldest first)
local function wake_fitting(waiting, delayed, free_gpus, free_gb, now_ms)
  local waiters = redis.call('ZRANGE', KEYS[waiting], 0, 99)
  for _, raw in ipairs(waiters) do
    if free_gpus <= 0 and free_gb <= 0 then break end
    local ok, w = pcall(cjson.decode, raw)
    if ok and type(w) == 'table' then
      local g, m = tonumber(w.gpu) or 0, tonumber(w.memory_gb) or 0
      if g <= free_gpus and m <= free_gb + 1e-9 then
        redis.call('ZREM', KEYS[waiting], raw)
        wake(delayed, w.p, now_ms)
        free_gpus, free_gb = free_gpus - g, free_gb - m
      end
    else
      redis.call('ZREM', KEYS[waiting], raw)
    end
  end
end

-- wake up to `free` waiters of a counted limit (oldest first)
local function wake_count(waiting, delayed, free, now_ms)
  if free <= 0 then return end
  local popped = redis.call('ZPOPMIN', KEYS[waiting], free)
  for i = 1, #popped, 2 do wake(delayed, popped[i], now_ms) end
end

-- Check every limit without taking any; nil when all admit, else {kind, spec, label}.
local function gate_refusal(G, unit_key, p, now_ms)
  if G.worker then
    local W = G.worker
    local free, free_gb = ledger_free(W, now_ms)
    W.free = free  -- gate_take gives out these devices: the ledger is read once per begin
    if #free < (W.gpu or 0) or (W.need_gb or 0) > free_gb + 1e-9 then
      local what = {}
      if (W.gpu or 0) > 0 then what[#what + 1] = W.gpu .. ' GPU (' .. #free .. ' of ' .. #W.devices .. ' free)' end
      if (W.need_gb or 0) > 0 then
        what[#what + 1] = W.need_gb .. ' GB (' .. string.format('%g', math.max(0, free_gb)) .. ' of '
          .. W.memory_gb .. ' free)'
      end
      return {'worker', W, 'capacity ' .. W.queue .. ': needs ' .. table.concat(what, ', ') .. ' on ' .. W.host}
    end
  end
  for _, c in ipairs(G.counts or {}) do
    drop_expired(KEYS[c.k], nil, now_ms)
    local n = redis.call('ZCARD', KEYS[c.k])
    if n >= c.cap then return {'count', c, c.label .. ' ' .. n .. '/' .. c.cap} end
  end
  for _, r in ipairs(G.rates or {}) do
    local st = redis.call('HMGET', KEYS[r.k], 'tat', 'horizon')
    local tat, horizon = tonumber(st[1] or '0'), tonumber(st[2] or '0')
    local reserved = redis.call('HGET', unit_key, p .. 'rate_slot')
    if now_ms < tat or (not reserved and horizon > now_ms) then
      return {'rate', r, r.label, tat, horizon, reserved}
    end
  end
  return nil
end

-- Take every limit (after gate_refusal said yes, in the same script); returns the GPU devices given, as 'a,b' ('' if none).
local function gate_take(G, holder, unit_key, p, lease_exp, now_ms)
  local devices = ''
  if G.worker then
    local W = G.worker
    local free = W.free
    local mine = {}
    for i = 1, (W.gpu or 0) do mine[i] = free[i] end
    devices = table.concat(mine, ',')
    redis.call('ZADD', KEYS[W.k], lease_exp, holder)
    redis.call('HSET', KEYS[W.h], holder, cjson.encode({gpus = mine, memory_gb = W.need_gb or 0}))
  end
  for _, c in ipairs(G.counts or {}) do redis.call('ZADD', KEYS[c.k], lease_exp, holder) end
  for _, r in ipairs(G.rates or {}) do
    local tat = tonumber(redis.call('HGET', KEYS[r.k], 'tat') or '0')
    redis.call('HSET', KEYS[r.k], 'tat', math.max(tat, now_ms) + r.interval)
    keep_rate(KEYS[r.k], now_ms)
  end
  redis.call('HDEL', unit_key, p .. 'rate_slot', p .. 'waiting')
  redis.call('HDEL', KEYS[G.stage_hash], 'waiting', 'waiting_since')
  return devices
end

-- Park a refused stage's message where it waits: a limit's waiting set, its capacity class's, or
-- (a rate) the delay set at the slot reserved for it. Nothing spins: it is woken by a release,
-- by the reaper's sweep (a holder whose lease ran out), or by its slot's time.
local function gate_park(G, refusal, payload, unit_key, p, now_ms, now, who)
  local kind, spec, label = refusal[1], refusal[2], refusal[3]
  if kind == 'worker' then
    who.p = payload
    redis.call('ZADD', KEYS[spec.w], now_ms, cjson.encode(who))
  elseif kind == 'count' then
    redis.call('ZADD', KEYS[spec.w], now_ms, payload)
    redis.call('HSET', KEYS[G.waited], spec.id, spec.cap)
  else
    -- a stage that holds a reserved slot and came a little early keeps it; any other gets the
    -- next free slot after every reservation (FIFO, one wake per slot: no herd)
    local slot = math.max(refusal[4], now_ms)
    if not refusal[6] then
      slot = math.max(slot, refusal[5])
      redis.call('HSET', KEYS[spec.k], 'horizon', slot + spec.interval)
      keep_rate(KEYS[spec.k], now_ms)
    end
    redis.call('HSET', unit_key, p .. 'rate_slot', slot)
    wake(G.delayed, payload, slot)
  end
  redis.call('HSET', unit_key, p .. 'waiting', label)
  redis.call('HSET', KEYS[G.stage_hash], 'waiting', label, 'waiting_since', now)
  return label
end

-- Give back what an attempt holds and wake who waits for it.
local function gate_release(R, now_ms)
  if not R then return end
  if R.worker then
    local W = R.worker
    redis.call('ZREM', KEYS[W.k], R.holder)
    redis.call('HDEL', KEYS[W.h], R.holder)
    local free, free_gb = ledger_free(W, now_ms)
    wake_fitting(W.w, R.delayed, #free, free_gb, now_ms)
  end
  for _, c in ipairs(R.counts or {}) do
    redis.call('ZREM', KEYS[c.k], R.holder)
    drop_expired(KEYS[c.k], nil, now_ms)
    wake_count(c.w, R.delayed, c.cap - redis.call('ZCARD', KEYS[c.k]), now_ms)
  end
end
