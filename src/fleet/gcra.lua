-- GCRA with a quantity, evaluated atomically in Redis (docs/ARCHITECTURE.md §15), as
-- redis-cell does: one key per limit, holding its theoretical arrival time (TAT) in
-- microseconds of the server's clock, so that the instances' clocks never matter.
--
-- KEYS[1]  the limit's key (one key: a hash tag in it keeps it on one Redis Cluster slot)
-- ARGV[1]  emission interval: microseconds per token (1e6 / rps)
-- ARGV[2]  capacity in tokens (rps + burst): how far the TAT may run ahead of now
-- ARGV[3]  tokens wanted (a lease)
-- Returns {granted, retry_after_ms}: granted in 0..wanted; retry_after_ms > 0 only when none.
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then
  tat = now
end
local free = math.floor((now + capacity * interval - tat) / interval)
if free > wanted then
  free = wanted
end
if free <= 0 then
  local wait_us = tat + interval - now - capacity * interval
  return {0, math.max(1, math.ceil(wait_us / 1000))}
end
tat = tat + free * interval
-- Integers only: tostring() of a large Lua number would lose digits.
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {free, 0}
