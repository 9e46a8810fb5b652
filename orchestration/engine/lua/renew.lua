-- Extend a running attempt's lease, if the attempt still holds it.
-- KEYS: 1 unit hash, 2 leases, 3... the holds sets of the attempt's limits
-- ARGV: 1 field prefix, 2 token, 3 lease ms, 4 lease member, 5 its holder in those sets
-- Returns 1 if renewed, 0 if the lease was lost (the stage must stop).
local p = ARGV[1]
if redis.call('HGET', KEYS[1], p .. 'token') ~= ARGV[2]
    or redis.call('HGET', KEYS[1], p .. 'state') ~= S.RUNNING then
  return 0
end
local now_ms = clock()
local exp = now_ms + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], p .. 'lease_exp', exp)
redis.call('ZADD', KEYS[2], exp, ARGV[4])
for i = 3, #KEYS do redis.call('ZADD', KEYS[i], 'XX', exp, ARGV[5]) end
return 1
