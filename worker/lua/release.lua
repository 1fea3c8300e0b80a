--! uses: common budget lines
-- Hand the free slots of the given lines (those the active index says are due) to their
-- heads: urgent heads of every line first, then any head, one turn per line per round, so a
-- burst on one line is never published ahead of another line's turn.
-- KEYS: [1] due, [2] margin, [3] active index, then 6 per line: owners, later, jobs, clock,
--       schedule, pause
-- ARGV: [1] margin floor ms, [2] ceiling ms, [3] lead ms, [4] watch ms, [5] promote max,
--       then 6 per line: budget id, queue prefix, shares, limit, period ms, "1" if watched
-- Returns: {next look ms from now (-1: no line waits), then per turn: line index, job,
--          member, slot}
local now = clock()
local ceiling, lead, watch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local margin = margin_of(KEYS[2], tonumber(ARGV[1]), ceiling)
local lines = {}
for b = 1, (#KEYS - 3) / 6 do
  local k, a = 4 + (b - 1) * 6, 6 + (b - 1) * 6
  local L = line_at(KEYS, k, ARGV, a, KEYS[3])
  promote(L, now, tonumber(ARGV[5]))
  local B = budget_at(KEYS[k + 4], KEYS[k + 5], margin, tonumber(ARGV[a + 3]),
    tonumber(ARGV[a + 4]), ceiling, now)
  lines[b] = {L = L, B = B, watched = ARGV[a + 5] == '1'}
end
local out, blocked, name, n = {-1}, {}, clock_us(), 0
for phase = 0, 1 do
  local progress = true
  while progress do
    progress = false
    for b, line in ipairs(lines) do
      if blocked[b] == nil then
        n = n + 1
        local turn, wait = release_one(line.L, line.B, now, lead, phase == 0, name .. '#' .. n)
        if turn ~= nil then
          if line.watched then redis.call('ZADD', KEYS[1], now + watch, turn[1]) end
          out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = b, turn[1], turn[2], turn[3]
          progress = true
        elseif wait ~= nil then
          blocked[b] = wait
        end
      end
    end
  end
end
for b, line in ipairs(lines) do
  local at = next_look(line.L, blocked[b], now)
  if at ~= nil and (out[1] < 0 or at - now < out[1]) then out[1] = math.max(0, at - now) end
end
return out
