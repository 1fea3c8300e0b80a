-- A value learned from recent samples (worker.learning): keep the last samples, set the
-- value to their quantile times a headroom, within a floor and a ceiling. Returns the value.
local function learn(samples, value_key, sample, kept, floor, ceiling, headroom, memory, quantile)
  redis.call('LPUSH', samples, sample)
  redis.call('LTRIM', samples, 0, kept - 1)
  redis.call('EXPIRE', samples, memory)
  local sorted = {}
  for _, s in ipairs(redis.call('LRANGE', samples, 0, -1)) do sorted[#sorted + 1] = tonumber(s) end
  table.sort(sorted)
  local at = math.max(1, math.ceil(#sorted * quantile))
  local value = math.ceil(sorted[at] * headroom)
  value = math.max(floor, math.min(ceiling, value))
  redis.call('SET', value_key, value, 'EX', memory)
  return value
end
