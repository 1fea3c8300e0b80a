-- Track orders to an owner (a strategy), all or none: an order tracked to another owner is
-- refused, naming that owner, and nothing is written. The tracking lives as long as a record.
-- KEYS: [1] the owner's set of orders, [2..] each order's owner key
-- ARGV: [1] owner, [2] TTL s, [3] now ms, then the order ids, in KEYS' order
-- Returns: {"ok", how many were new} or {"conflict", order id, its owner}.
for i = 2, #KEYS do
  local owner = redis.call('GET', KEYS[i])
  if owner and owner ~= ARGV[1] then return {'conflict', ARGV[i + 2], owner} end
end
local new = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'EX', tonumber(ARGV[2]), 'GET') == false then
    new = new + 1
  end
  redis.call('ZADD', KEYS[1], 'NX', tonumber(ARGV[3]), ARGV[i + 2])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return {'ok', new}
