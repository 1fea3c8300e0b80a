--! uses: common budget
-- Take a turn: make its send time now, unless the window behind now is full or paused.
-- KEYS: [1] schedule, [2] pause, [3] stats, [4] margin
-- ARGV: [1] member, [2] limit, [3] period ms, [4] margin floor, [5] ceiling, [6] stats TTL s
-- Returns: {1, now ms, margin ms} to send now, or {0, ms to wait, margin ms}.
local ok, value, margin = commit(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), clock())
return {ok, value, margin}
