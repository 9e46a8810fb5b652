-- Record a failed attempt that will be tried again; park long delays in the delay set.
-- KEYS: 1 unit hash, 2 states, 3 events, 4 delayed, 5 leases
-- ARGV: 1 stage id, 2 item or '', 3 token, 4 error JSON, 5 next attempt, 6 delay ms,
--       7 '1' to park in the delay set, 8 payload, 9 lease member
-- Returns {'ok', due_ms} or {'stale'}
local p = ''
if ARGV[2] ~= '' then p = ARGV[2] .. ':' end
if redis.call('HGET', KEYS[1], p .. 'token') ~= ARGV[3]
    or redis.call('HGET', KEYS[1], p .. 'state') ~= 'running' then
  return {'stale'}
end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now_ms + tonumber(ARGV[6])
redis.call('HSET', KEYS[1], p .. 'state', 'retrying', p .. 'error', ARGV[4],
  p .. 'retry_at', string.format('%.3f', due / 1000), p .. 'failed_at', string.format('%.3f', now_ms / 1000))
redis.call('ZREM', KEYS[5], ARGV[9])
if ARGV[2] == '' then redis.call('HSET', KEYS[2], ARGV[1], 'retrying') end
if ARGV[7] == '1' then redis.call('ZADD', KEYS[4], due, ARGV[8]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '200000', '*', 'kind', 'stage', 'stage', ARGV[1], 'item', ARGV[2],
  'state', 'retrying', 'attempt', ARGV[5], 'delay_ms', ARGV[6], 'error', ARGV[4],
  't', string.format('%.3f', now_ms / 1000))
return {'ok', due}
