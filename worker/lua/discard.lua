--! uses: common budget lines
-- Undo a request no replica confirmed: remove its records that are still QUEUED and either
-- waiting in line or holding a turn this request was handed and never published (the slot
-- is freed). A record a worker has moved on is kept: its cancel is under way.
-- KEYS: [1] state counts, [2] due, [3..6] the cancel line, [7] active index, [8] schedule,
--       [9..] record keys
-- ARGV: [1..3] line args, then per record key: order id, turn member or ""
-- Returns: how many records were removed.
local L = line_at(KEYS, 3, ARGV, 1, KEYS[7])
local removed = 0
for i = 9, #KEYS do
  local a = 4 + (i - 9) * 2
  local order_id, member = ARGV[a], ARGV[a + 1]
  local body = redis.call('GET', KEYS[i])
  if body and cjson.decode(body)['state'] == 'QUEUED' then
    local gone = forget(L, order_id) == 1
    if member ~= '' and redis.call('ZREM', KEYS[8], member) == 1 then gone = true end
    if gone then
      redis.call('DEL', KEYS[i])
      redis.call('ZREM', KEYS[2], order_id)
      removed = removed + 1
    end
  end
end
if removed > 0 then redis.call('HINCRBY', KEYS[1], 'QUEUED', -removed) end
return removed
