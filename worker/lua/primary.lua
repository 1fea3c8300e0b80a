-- Note which primary serves now, and whether a replica confirmed its send times.
-- KEYS: [1] primary hash   ARGV: [1] run id, [2] "1" if replicas are connected now
-- Returns: 0 same primary (or the first seen); 1 a new primary after one whose send times
-- a replica confirmed; 2 a new primary after one without replicas (a restart).
local seen = redis.call('HGET', KEYS[1], 'run_id')
local replicated = redis.call('HGET', KEYS[1], 'replicated')
if seen ~= ARGV[1] or replicated ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'run_id', ARGV[1], 'replicated', ARGV[2])
end
if not seen or seen == ARGV[1] then return 0 end
if replicated == '1' then return 1 end
return 2
