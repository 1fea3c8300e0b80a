--! uses: common budget lines records
-- A request: create the records that do not exist yet (each with its first event, state
-- count and sweeper watch) and give each new one its DELETE turn at once while the budget
-- has room and nobody waits in its line (a free budget: no line, no dispatcher, no wait);
-- the others join the line, whose free turns are then handed out too. Jobs left waiting
-- wake one dispatcher.
-- An order tracked to an owner (track.lua) goes in line as that owner's; an owner given
-- with the request tracks the orders not tracked yet, and is refused (nothing written) for
-- an order tracked to another.
-- KEYS: [1] events, [2] state counts, [3] due, [4] active index, [5] wake, [6] the batch's
--       pending set, [7..10] the cancel line, [11] schedule, [12] pause, [13] margin,
--       [14] the given owner's set of orders, then per order: record key, owner key
-- ARGV: [1] record TTL s, [2] watch-at ms or "", [3] events maxlen, [4] account, [5] state,
--       [6] rank, [7] owner, [8] "1" to join the line, [9] batch id or "",
--       [10..12] line args, [13] "1" to hand out turns, [14] limit, [15] period ms,
--       [16] margin floor, [17] ceiling, [18] lead ms, [19] watch ms, then per record key:
--       order id, request time ms, JSON, event JSON; then per prepared turn (a job whose
--       messages the caller built ahead, worker.publisher.Prepared): job, member, count,
--       and count Redis commands of 3 words (lpush/publish/pexpire, key or topic, value)
-- Returns: {"ok", created flags ("1"/"0" per record), replicas, each record's owner (","
--          between), then per turn: job, member, slot, "1" if its prepared messages were
--          published here}; or {"conflict", order id, the owner it is tracked to}
local now = clock()
local R = {
  ttl = tonumber(ARGV[1]), events = KEYS[1], counts = KEYS[2], due = KEYS[3],
  maxlen = ARGV[3], state = ARGV[5], pending = KEYS[6], batch_id = ARGV[9],
  watch_at = ARGV[2] ~= '' and tonumber(ARGV[2]) or nil,
}
local L = line_at(KEYS, 7, ARGV, 10, KEYS[4])
local rank, joins = tonumber(ARGV[6]), ARGV[8] == '1'
local lead, watch = tonumber(ARGV[18]), tonumber(ARGV[19])
local records = (#KEYS - 14) / 2
local given, owners = ARGV[7], {}
for r = 1, records do
  local tracked = redis.call('GET', KEYS[14 + r * 2])
  if tracked and given ~= '' and tracked ~= given then
    return {'conflict', ARGV[20 + (r - 1) * 4], tracked}
  end
  owners[r] = tracked or given
end
local prepared, a = {}, 20 + records * 4
while a <= #ARGV do
  local job, member, count = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  prepared[job] = {member = member, at = a + 3, count = count}
  a = a + 3 + count * 3
end
local SENDS = {lpush = true, publish = true, pexpire = true}
local B = nil
if joins and ARGV[13] == '1' then
  B = budget_at(KEYS[11], KEYS[12], margin_of(KEYS[13], tonumber(ARGV[16]), tonumber(ARGV[17])),
    tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[17]), now)
end
local out, created, joined = {'ok', '', 0, ''}, {}, 0
local name, n = clock_us(), 0
for r = 1, records do
  local a = 20 + (r - 1) * 4
  local order_id, owner, body, event = ARGV[a], owners[r], ARGV[a + 2], cjson.decode(ARGV[a + 3])
  if owner ~= given then  -- tracked to its owner: the new record says so (it is ours: no [])
    local record = cjson.decode(body)
    record.owner = owner
    body, event[#event] = cjson.encode(record), owner
  end
  if owner ~= '' and owner == given and redis.call('EXISTS', KEYS[14 + r * 2]) == 0 then
    redis.call('SET', KEYS[14 + r * 2], owner, 'EX', R.ttl)  -- the request tracks it
    redis.call('ZADD', KEYS[14], 'NX', now, order_id)
    redis.call('EXPIRE', KEYS[14], R.ttl)
  end
  if not create_record(R, KEYS[13 + r * 2], order_id, body, event) then
    created[#created + 1] = '0'
  else
    created[#created + 1] = '1'
    local turn = false
    if B ~= nil and joined == 0 and redis.call('ZCARD', L.owners) == 0 then
      local slot = slot_of(B, rank > 0)
      if slot <= now + lead then
        n = n + 1
        local ready, sent = prepared[order_id], '0'
        local member = ready and ready.member or (order_id .. '@' .. name .. '#' .. n)
        book(B, member, slot)
        if not R.watch_at then redis.call('ZADD', R.due, now + watch, order_id) end
        if ready then  -- the turn's task and its event, as kombu would have sent them
          for c = 0, ready.count - 1 do
            local at = ready.at + c * 3
            if SENDS[ARGV[at]] then redis.call(ARGV[at], ARGV[at + 1], ARGV[at + 2]) end
          end
          sent = '1'
        end
        out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = order_id, member, slot, sent
        turn = true
      end
    end
    if joins and not turn then
      join(L, order_id, rank, now, tonumber(ARGV[a + 1]), r - 1, owner, now)
      joined = joined + 1
    end
  end
end
out[2], out[4] = table.concat(created), table.concat(owners, ',')
if joined > 0 and B ~= nil then
  local blocked = nil
  while true do
    n = n + 1
    local turn, wait = release_one(L, B, now, lead, false, name .. '#' .. n)
    if turn == nil then
      blocked = wait
      break
    end
    redis.call('ZADD', R.due, now + watch, turn[1])
    out[#out + 1], out[#out + 2], out[#out + 3], out[#out + 4] = turn[1], turn[2], turn[3], '0'

  end
  if next_look(L, blocked, now) ~= nil then wake(KEYS[5]) end
elseif joined > 0 then
  wake(KEYS[5])
end
out[3] = replicas()
return out
