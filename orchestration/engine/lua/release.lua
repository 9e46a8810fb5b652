-- Give back what attempts hold of their limits when no commit of theirs will (a cancelled run:
-- its running stages are stopped with SIGTERM and never commit), and wake who waits; first drop
-- the waiting entries of runs that have ended, so no slot is given to, and nothing waits (or asks
-- an autoscaler for a worker) for, a run that will never start another stage.
-- KEYS: what the releases and the drops name
-- ARGV: 1 JSON list of releases (_limits.lua)
--       2 JSON list of drops: {run = the run hash, sets = {{k = a waiting or delay set, members}},
--         stages = {stage hashes whose 'waiting' label goes}}; a drop is skipped while its run is
--         running or paused (its run was retried meanwhile)
-- Returns how many waiting entries it dropped.
local now_ms = clock()
local dropped = 0
for _, d in ipairs(cjson.decode(ARGV[2] or '[]')) do
  local status = redis.call('HGET', KEYS[d.run], 'status')
  if not status or not RUN_ACTIVE[status] then
    for _, s in ipairs(d.sets or {}) do
      for _, m in ipairs(s.members or {}) do dropped = dropped + redis.call('ZREM', KEYS[s.k], m) end
    end
    for _, h in ipairs(d.stages or {}) do redis.call('HDEL', KEYS[h], 'waiting', 'waiting_since') end
  end
end
for _, r in ipairs(cjson.decode(ARGV[1])) do gate_release(r, now_ms) end
return dropped
