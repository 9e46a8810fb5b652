-- Start a fan-out stage: record its item count and window, once.
-- KEYS: 1 states, 2 stage hash, 3 events, 4 run, 5 items hash, 6 the broker's queue list
-- ARGV: 1 stage id, 2 items total, 3 window, 4 queue, 5 the item message template ('' = none;
--       engine/messages.py: ITEM_MARK stands for the item's index), 6 chunk: at most this many
--       consecutive items per message (then the template also has COUNT_MARK)
-- Returns {0} if this call did not start it (not queued, or the run is not running);
-- {1, {}} when it started and items 0 .. window-1 are to be sent; {1, {i, j, ...}} when items kept
-- by a retried run are skipped and these are the first to send (a list: never unpacked); {2} when every item was kept
-- (the caller commits the stage from the kept outputs); {3} when it started and enqueued the
-- first items itself, from the template (atomically with the start: nothing is left to send).
if redis.call('HGET', KEYS[4], 'status') ~= R.RUNNING then return {0} end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= S.QUEUED then return {0} end
local total, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local done, first, next_item, kept_bytes = 0, {}, window, 0
if redis.call('EXISTS', KEYS[5]) == 1 then
  -- a retried run: items that succeeded before are kept, not run again
  next_item = total
  for i = 0, total - 1 do
    if KEPT_ON_RETRY[redis.call('HGET', KEYS[5], i .. ':state')] then
      done = done + 1
      kept_bytes = kept_bytes + redis.call('HSTRLEN', KEYS[5], i .. ':output') + 1
    elseif #first < window then
      first[#first + 1] = i
    elseif next_item == total then
      next_item = i
    end
  end
  if done == total then return {2} end
end
local _, now = clock()
redis.call('HSET', KEYS[1], ARGV[1], S.RUNNING)
redis.call('HSET', KEYS[2], 'state', S.RUNNING, 'items_total', total, 'items_done', done,
  'next_item', next_item, 'started_at', now, 'queue', ARGV[4], 'attempt', 1, 'items_bytes', kept_bytes)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 't', now, 'kind', 'stage', 'stage', ARGV[1],
  'state', S.RUNNING, 'items', ARGV[2])
if ARGV[5] ~= '' then
  if #first == 0 and done == 0 then
    for i = 0, window - 1 do first[#first + 1] = i end
  end
  local chunk = tonumber(ARGV[6] or '1') or 1
  local batch = {}
  local function push(start, count)
    local text = string.gsub(ARGV[5], ITEM_MARK, tostring(start))
    if chunk > 1 then text = string.gsub(text, COUNT_MARK, tostring(count)) end
    batch[#batch + 1] = text
    if #batch == 500 then
      redis.call('LPUSH', KEYS[6], unpack(batch))
      batch = {}
    end
  end
  -- runs of consecutive items, `chunk` at most per message (a retried run's kept items break runs)
  local start, count = nil, 0
  for _, i in ipairs(first) do
    if start ~= nil and i == start + count and count < chunk then
      count = count + 1
    else
      if start ~= nil then push(start, count) end
      start, count = i, 1
    end
  end
  if start ~= nil then push(start, count) end
  if #batch > 0 then redis.call('LPUSH', KEYS[6], unpack(batch)) end
  return {3}
end
return {1, first}
