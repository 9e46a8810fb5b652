-- Start a fan-out stage: record its item count and window, once.
-- KEYS: 1 states, 2 stage hash, 3 events, 4 run   ARGV: 1 stage id, 2 items total, 3 window, 4 queue
-- Returns 1 if this call started it, 0 if it was not queued (already started, or the run ended).
if redis.call('HGET', KEYS[4], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'queued' then return 0 end
local t = redis.call('TIME')
local now = string.format('%.3f', tonumber(t[1]) + tonumber(t[2]) / 1e6)
redis.call('HSET', KEYS[1], ARGV[1], 'running')
redis.call('HSET', KEYS[2], 'state', 'running', 'items_total', ARGV[2], 'items_done', 0,
  'next_item', ARGV[3], 'started_at', now, 'queue', ARGV[4], 'attempt', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '200000', '*', 't', now, 'kind', 'stage', 'stage', ARGV[1],
  'state', 'running', 'items', ARGV[2])
return 1
