-- Record a finished run for its pipeline, and the assets it provided, past the run's own TTL:
-- the pipeline's last run end and last success, and each provided asset's last provision.
--
-- Idempotent and order-proof: a field only ever moves to a later end, so a run_complete
-- delivered twice, or two senders delivering out of order, leave the same record.
--
-- KEYS: 1 the run record, 2 the pipeline's state hash, 3 the assets hash
-- ARGV: 1 run id
-- Returns 1 when the run had ended (and was recorded), 0 when it had not or is gone.
local status, finished, provides, pipeline =
  unpack(redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'provides', 'pipeline'))
if not finished or (status ~= R.SUCCEEDED and status ~= R.FAILED and status ~= R.CANCELLED) then
  return 0
end
local at = tonumber(finished)

local function later(hash, field)
  local seen = redis.call('HGET', hash, field)
  return (not seen) or tonumber(seen) <= at
end

if later(KEYS[2], 'last_finished_at') then
  redis.call('HSET', KEYS[2], 'last_finished_id', ARGV[1], 'last_finished_status', status,
    'last_finished_at', finished)
end
if status ~= R.SUCCEEDED then return 1 end
if later(KEYS[2], 'last_success_at') then
  redis.call('HSET', KEYS[2], 'last_success_id', ARGV[1], 'last_success_at', finished)
end
if provides and provides ~= '' then
  for _, asset in ipairs(cjson.decode(provides)) do
    local known = redis.call('HGET', KEYS[3], asset)
    if (not known) or tonumber(cjson.decode(known).at) <= at then
      redis.call('HSET', KEYS[3], asset, cjson.encode({run_id = ARGV[1], pipeline = pipeline, at = at}))
    end
  end
end
return 1
