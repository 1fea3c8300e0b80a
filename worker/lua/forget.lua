--! uses: common budget lines
-- Take jobs out of a line wherever they wait (their work is done or dropped).
-- KEYS: [1..4] the line, [5] active index
-- ARGV: [1..3] line args, [4..] jobs
-- Returns: how many were waiting.
local L = line_at(KEYS, 1, ARGV, 1, KEYS[5])
local gone = 0
for i = 4, #ARGV do gone = gone + forget(L, ARGV[i]) end
return gone
