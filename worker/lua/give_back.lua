--! uses: common budget lines
-- Free a turn that was not used; its line gets a look now if jobs wait in it.
-- KEYS: [1] schedule, [2] the line's owners, [3] active index, [4] wake
-- ARGV: [1] member, [2] budget id
-- Returns: 1 if the turn was still booked.
local freed = redis.call('ZREM', KEYS[1], ARGV[1])
if freed == 1 and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('ZADD', KEYS[3], 'LT', clock(), ARGV[2])
  wake(KEYS[4])
end
return freed
