-- Record a failed attempt that will be tried again; park long delays in the delay set.
-- KEYS: 1 unit hash, 2 states, 3 events, 4 delayed, 5 leases, 6 hooks stream
-- ARGV: 1 stage id, 2 item or '', 3 token, 4 error JSON, 5 next attempt, 6 delay ms,
--       7 '1' to park in the delay set, 8 payload, 9 lease member, 10 what the attempt holds of
--       its limits (JSON, _limits.lua, keys 7...; '' for none), 11... hook entries to enqueue
-- Returns {'ok', due_ms} or {'stale'}
local p = field_prefix(ARGV[2])
local now_ms, now = clock()
-- what the attempt held is given back even when it no longer holds the stage: the holder is its own
if ARGV[10] ~= '' then gate_release(cjson.decode(ARGV[10]), now_ms) end
if redis.call('HGET', KEYS[1], p .. 'token') ~= ARGV[3]
    or redis.call('HGET', KEYS[1], p .. 'state') ~= S.RUNNING then
  return {'stale'}
end
local due = now_ms + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], p .. 'state', S.RETRYING, p .. 'error', ARGV[4],
  p .. 'retry_at', string.format('%.3f', due / 1000), p .. 'failed_at', now)
redis.call('ZREM', KEYS[5], ARGV[9])
if ARGV[2] == '' then redis.call('HSET', KEYS[2], ARGV[1], S.RETRYING) end
if ARGV[7] == '1' then redis.call('ZADD', KEYS[4], due, ARGV[8]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'kind', 'stage', 'stage', ARGV[1], 'item', ARGV[2],
  'state', S.RETRYING, 'attempt', ARGV[5], 'delay_ms', ARGV[6], 'error', ARGV[4], 't', now)
for i = 11, #ARGV do
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', HOOKS_MAXLEN, '*', 'e', ARGV[i])
end
return {'ok', due}
