-- Take or renew a lease.
-- KEYS: [1] lease key   ARGV: [1] owner token, [2] TTL ms
-- Returns: 1 if the caller now holds the lease, 0 if another owner does.
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
