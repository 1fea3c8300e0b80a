--! uses: common
-- Arm (or re-arm) a switch: its settings, its first deadline, an event; wake the watchers.
-- KEYS: [1] switch hash, [2] beat key, [3] armed set, [4] names set, [5] events, [6] wake
-- ARGV: [1] name, [2] account, [3] exchange, [4] symbols (comma-separated), [5] timeout ms,
--       [6] events maxlen, [7] owner or ""
-- Returns: the arming time (ms, Redis clock).
local now = clock()
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'account', ARGV[2], 'exchange', ARGV[3], 'symbols', ARGV[4],
  'timeout_ms', ARGV[5], 'state', 'ARMED', 'armed_at', now, 'owner', ARGV[7])
redis.call('SET', KEYS[2], now, 'PX', tonumber(ARGV[5]))
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'deadman', 'name', ARGV[1],
  'account', ARGV[2], 'symbols', ARGV[4], 'state', 'ARMED', 'at', now, 'batches', '',
  'owner', ARGV[7])
wake(KEYS[6])
return now
