-- The reaper's sweep of waiting stages (once a tick, by the one reaper): wake whoever waits for room
-- that a holder left without a commit (its lease ran out: its worker died), or that no release
-- will give (a worker that just started, or one idle while the waiters fit it).
-- KEYS: 1 limits-waited hash, 2 delayed, then per limit in A.limits its holds and waiting sets,
--       then per capacity class in A.classes its waiting set followed by the holds and held keys
--       of each live worker serving it
-- ARGV: 1 JSON A: limits = {{id, cap}}, classes = {{workers = {{devices, memory_gb}}}}
-- Returns how many waiting stages it woke.
local A = cjson.decode(ARGV[1])
local now_ms = clock()
local woken = 0
local k = 3
for _, l in ipairs(A.limits or {}) do
  local holds, waiting = k, k + 1
  k = k + 2
  drop_expired(KEYS[holds], nil, now_ms)
  local before = redis.call('ZCARD', KEYS[waiting])
  wake_count(waiting, 2, l.cap - redis.call('ZCARD', KEYS[holds]), now_ms)
  local after = redis.call('ZCARD', KEYS[waiting])
  woken = woken + before - after
  if after == 0 then redis.call('HDEL', KEYS[1], l.id) end
end
for _, c in ipairs(A.classes or {}) do
  local waiting = k
  k = k + 1
  local free = {}
  for i, w in ipairs(c.workers or {}) do
    local devs, gb = ledger_free({k = k, h = k + 1, devices = w.devices, memory_gb = w.memory_gb}, now_ms)
    free[i] = {#devs, gb}
    k = k + 2
  end
  for _, raw in ipairs(redis.call('ZRANGE', KEYS[waiting], 0, 99)) do
    local ok, w = pcall(cjson.decode, raw)
    if not ok or type(w) ~= 'table' then
      redis.call('ZREM', KEYS[waiting], raw)
    else
      local g, m = tonumber(w.gpu) or 0, tonumber(w.memory_gb) or 0
      for _, f in ipairs(free) do
        if g <= f[1] and m <= f[2] + 1e-9 then
          redis.call('ZREM', KEYS[waiting], raw)
          wake(2, w.p, now_ms)
          f[1], f[2] = f[1] - g, f[2] - m
          woken = woken + 1
          break
        end
      end
    end
  end
end
return woken
