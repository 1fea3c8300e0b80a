--! uses: common
-- Disarm a switch (armed or tripped): no more watching; an event.
-- KEYS: [1] switch hash, [2] beat key, [3] armed set, [4] firing zset, [5] events
-- ARGV: [1] name, [2] events maxlen
-- Returns: the state it had ("" if unknown).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return '' end
if state == 'FIRING' then return state end
redis.call('HSET', KEYS[1], 'state', 'DISARMED')
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
if state ~= 'DISARMED' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[2], '*', 'kind', 'deadman', 'name', ARGV[1],
    'account', redis.call('HGET', KEYS[1], 'account'), 'symbols',
    redis.call('HGET', KEYS[1], 'symbols'), 'state', 'DISARMED', 'at', clock(), 'batches', '')
end
return state
