-- A heartbeat: push the deadline one timeout ahead, only if the switch is armed and alive.
-- KEYS: [1] switch hash, [2] beat key
-- Returns: {1, timeout_ms} beaten; {2} tripped or firing (or its deadline passed);
--          {3} disarmed; {0} unknown.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0} end
if state == 'DISARMED' then return {3} end
if state ~= 'ARMED' then return {2} end
local timeout = tonumber(redis.call('HGET', KEYS[1], 'timeout_ms'))
if not redis.call('SET', KEYS[2], redis.call('TIME')[1], 'PX', timeout, 'XX') then
  return {2}
end
return {1, timeout}
