-- Claim the items of a chunk message before they begin, or keep the claim: each item's lease
-- member gets an expiry one lease ahead (never moved back: ZADD GT), so if the worker dies
-- before an item began, the reaper sends that item again when the claim runs out.
-- KEYS: 1 leases   ARGV: 1 lease ms, 2... lease members
-- Returns the new expiry (ms, Redis's clock).
local now_ms = clock()
local exp = now_ms + tonumber(ARGV[1])
for i = 2, #ARGV, 500 do
  local batch = {}
  for j = i, math.min(i + 499, #ARGV) do
    batch[#batch + 1] = exp
    batch[#batch + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[1], 'GT', unpack(batch))
end
return exp
