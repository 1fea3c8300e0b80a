--! uses: common
-- Claim every armed switch whose deadline passed (and retry fires that stalled).
-- KEYS: [1] armed set, [2] firing zset
-- ARGV: [1] switch hash prefix, [2] beat key prefix, [3] firing retry ms
-- Returns: {ms until the next deadline (-1: none), names to fire...}
local now = clock()
local fire, next_ms = {}, -1
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local left = redis.call('PTTL', ARGV[2] .. name)
  if left == -2 then
    redis.call('HSET', ARGV[1] .. name, 'state', 'FIRING', 'fired_at', now)
    redis.call('SREM', KEYS[1], name)
    redis.call('ZADD', KEYS[2], now, name)
    fire[#fire + 1] = name
  elseif left >= 0 and (next_ms < 0 or left < next_ms) then
    next_ms = left
  end
end
local stalled = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
for _, name in ipairs(stalled) do
  redis.call('ZADD', KEYS[2], now, name)
  fire[#fire + 1] = name
end
table.insert(fire, 1, next_ms)
return fire
