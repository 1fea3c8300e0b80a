-- Cancel records: one JSON string per order. Python decides every change (worker.cancellation)
-- and these functions store it with what goes with it, in the same script.
-- Uses: common, budget, lines.

-- Whether cjson can decode and re-encode a record unchanged: it turns an empty array into
-- an object, and keeps 14 significant digits. Ours never hold either (an exchange snapshot
-- could); such a record is changed by Python instead.
local function reencodable(body)
  return not string.find(body, '[]', 1, true)
    and not string.find(body, '%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d')
end

local function add_event(events, maxlen, fields)
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(fields))
end

-- Store a new record unless one exists, with its first event, its state count and the
-- sweeper's watch. Returns true if it was created.
local function create_record(R, key, order_id, body, event)
  if not redis.call('SET', key, body, 'NX', 'EX', R.ttl) then return false end
  add_event(R.events, R.maxlen, event)
  redis.call('HINCRBY', R.counts, R.state, 1)
  if R.watch_at then redis.call('ZADD', R.due, R.watch_at, order_id) end
  if R.batch_id ~= '' then redis.call('SADD', R.pending, order_id) end
  return true
end
