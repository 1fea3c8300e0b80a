--! uses: common
-- A switch's cancel-alls exist: it is TRIPPED; the event that says what it cancelled.
-- KEYS: [1] switch hash, [2] firing zset, [3] events, [4] stats hash
-- ARGV: [1] name, [2] batch ids (comma-separated), [3] events maxlen
-- Returns: 1 if tripped now, 0 if it was no longer firing.
if redis.call('HGET', KEYS[1], 'state') ~= 'FIRING' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
local now = clock()
redis.call('HSET', KEYS[1], 'state', 'TRIPPED', 'tripped_at', now, 'batches', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'deadman', 'name', ARGV[1],
  'account', redis.call('HGET', KEYS[1], 'account'), 'symbols',
  redis.call('HGET', KEYS[1], 'symbols'), 'state', 'DEADMAN_TRIGGERED', 'at', now,
  'fired_at', redis.call('HGET', KEYS[1], 'fired_at'), 'batches', ARGV[2])
redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
return 1
