--! uses: common budget lines
-- Move waiting jobs up to a more urgent rank, keeping their time (jobs not waiting are
-- skipped), and wake a dispatcher if any moved.
-- KEYS: [1..4] the line, [5] active index, [6] wake
-- ARGV: [1..3] line args, [4] rank, [5..] jobs
-- Returns: how many jobs moved up.
local L = line_at(KEYS, 1, ARGV, 1, KEYS[5])
local moved = 0
for i = 5, #ARGV do moved = moved + upgrade(L, ARGV[i], tonumber(ARGV[4])) end
if moved > 0 then wake(KEYS[6]) end
return moved
