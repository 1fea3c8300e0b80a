-- Shared by every script: one clock for the whole fleet (Redis's), the dispatchers' wake
-- token, and how many replicas would confirm a write.

-- Redis TIME in milliseconds.
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Redis TIME in microseconds, as a string (unique within a fleet: turns are named with it).
local function clock_us()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

-- Leave one wake token: one waiting dispatcher takes it and looks at every line.
local function wake(key)
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, 0)
end

-- Replicas online now: a caller with any must WAIT for one before it acts on its writes.
local function replicas()
  local n = 0
  for _ in string.gmatch(redis.call('INFO', 'replication'), 'slave%d+:[^\r\n]*state=online') do
    n = n + 1
  end
  return n
end
