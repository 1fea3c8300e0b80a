--! uses: common budget lines confirm
-- Accepted orders of one account await their final state (see confirm.lua), in one call
-- whatever their number; wakes a dispatcher.
-- KEYS: [1] confirm, [2] confirm pass, [3..6] closed-orders line, [7..10] status line,
--       [11] active index, [12] wake, [13] the closed-orders budget's schedule, [14] its
--       pause, [15] margin
-- ARGV: [1..3] closed-orders line args, [4..6] status line args, [7] pass job, [8] orders
--       at which a pass is worth it, [9] status read behind a pass ms, [10] delay ms,
--       [11] "1" if the lists just looked, [12] the closed-orders budget as
--       "limit,period,floor,ceiling" ("" if unknown), then per order: id, rank, owner
-- Returns: how many orders.
local now = clock()
local C = {
  confirm = KEYS[1], pass = KEYS[2], closed = line_at(KEYS, 3, ARGV, 1, KEYS[11]),
  status = line_at(KEYS, 7, ARGV, 4, KEYS[11]), job = ARGV[7], min_orders = tonumber(ARGV[8]),
  behind_ms = tonumber(ARGV[9]),
}
if ARGV[12] ~= '' then
  local l = {}
  for n in string.gmatch(ARGV[12], '%d+') do l[#l + 1] = tonumber(n) end
  C.lists = {schedule = KEYS[13], pause = KEYS[14], margin = KEYS[15], limit = l[1],
    period = l[2], floor = l[3], ceiling = l[4]}
end
local orders = {}
for a = 13, #ARGV, 3 do orders[#orders + 1] = {ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]} end
await_confirmation(C, orders, tonumber(ARGV[10]), ARGV[11] == '1', now)
wake(KEYS[12])
return #orders
