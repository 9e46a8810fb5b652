-- Give back what attempts hold of their limits when no commit of theirs will (a cancelled run:
-- its running stages are stopped with SIGTERM and never commit), and wake who waits.
-- KEYS: what the releases name   ARGV: 1 JSON list of releases (_limits.lua)
local now_ms = clock()
for _, r in ipairs(cjson.decode(ARGV[1])) do gate_release(r, now_ms) end
return 1
