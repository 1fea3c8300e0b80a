--! uses: common budget lines
-- Put jobs in a line (after a delay), most urgent first, and wake a dispatcher.
-- KEYS: [1..4] the line, [5] active index, [6] wake
-- ARGV: [1..3] line args, [4] rank, [5] delay ms, [6] since ms or "" (= when ready),
--       [7] owner, [8..] jobs
-- Returns: how many jobs were given.
local now = clock()
local L = line_at(KEYS, 1, ARGV, 1, KEYS[5])
local rank, ready_at = tonumber(ARGV[4]), now + tonumber(ARGV[5])
local since = ARGV[6] ~= '' and tonumber(ARGV[6]) or ready_at
for i = 8, #ARGV do
  join(L, ARGV[i], rank, ready_at, since, i - 8, ARGV[7], now)
end
wake(KEYS[6])
return #ARGV - 7
