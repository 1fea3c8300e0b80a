--! uses: common budget lines records
-- Take an order's turn, just before its request: in one step, check the record, take the
-- order's lease (so a duplicate delivery stands down), commit the send time (refused while
-- the window is full) and, for a DELETE, mark the record "DELETE under way" with one more
-- attempt, so nothing but signing stands between the turn and the send.
-- KEYS: [1] record, [2] lease, [3] schedule, [4] pause, [5] stats, [6] margin
-- ARGV: [1] lease owner, [2] lease TTL ms, [3] turn member, [4] limit, [5] period ms,
--       [6] margin floor, [7] ceiling, [8] stats TTL s, [9] "1" for a DELETE, [10] now ms
--       (the record's clock), [11] record TTL s
-- Returns: {"gone"}; {"final"|"accepted"|"in_flight"|"leased", record}; {"wait", ms,
--          record}; {"go", now ms, margin ms, record, replicas}; or {"go_unmarked", ...}
--          when a DELETE's record must be marked by the caller (see reencodable)
local body = redis.call('GET', KEYS[1])
if not body then return {'gone'} end
local record = cjson.decode(body)
if FINAL[record.state] then return {'final', body} end
local delete = ARGV[9] == '1'
if delete and record.cancel_accepted then return {'accepted', body} end
if delete and record.delete_in_flight then return {'in_flight', body} end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return {'leased', body} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
local now = clock()
local ok, value, margin = commit(KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), now)
if ok == 0 then return {'wait', value, body} end
local code = 'go'
if delete and reencodable(body) then
  record.attempts = record.attempts + 1
  record.delete_in_flight = true
  record.refused = false
  record.updated_at = tonumber(ARGV[10])
  body = cjson.encode(record)
  redis.call('SET', KEYS[1], body, 'EX', tonumber(ARGV[11]))
elseif delete then
  code = 'go_unmarked'
end
return {code, now, margin, body, replicas()}
