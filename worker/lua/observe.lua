-- Learn from one sample (a request's span, an order's confirm time): keep the fleet's
-- recent samples and set the value derived from the largest, with headroom, within a floor
-- and a ceiling.
-- KEYS: [1] samples list, [2] the learned value
-- ARGV: [1] sample ms, [2] samples kept, [3] floor, [4] ceiling, [5] headroom, [6] memory s
-- Returns: the learned value in ms.
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
local largest = 0
for _, sample in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if tonumber(sample) > largest then largest = tonumber(sample) end
end
local value = math.ceil(largest * tonumber(ARGV[5]))
value = math.max(tonumber(ARGV[3]), math.min(tonumber(ARGV[4]), value))
redis.call('SET', KEYS[2], value, 'EX', tonumber(ARGV[6]))
return value
