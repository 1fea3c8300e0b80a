--! uses: common budget
-- After a 429: no turn of this budget for one window, for any worker.
-- KEYS: [1] pause, [2] stats, [3] margin
-- ARGV: [1] period ms, [2] margin floor, [3] ceiling, [4] stats TTL s
-- Returns: the pause in ms.
local ms = tonumber(ARGV[1]) + margin_of(KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3]))
redis.call('SET', KEYS[1], '429', 'PX', ms)
redis.call('HINCRBY', KEYS[2], 'rate_limited', 1)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return ms
