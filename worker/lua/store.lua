--! uses: common budget lines records confirm learn
-- Store a record change Python decided, if the record is still the one it decided from, with
-- everything that goes with it: the event and state counts of a new state; for a final one,
-- the end of its watch, its places in lines, its batch's pending entry and the time-to-final
-- histogram; the lease of the turn that decided it; and the line the order joins next.
-- KEYS: [1] record, [2] events, [3] state counts, [4] due, [5] time-to-final histogram,
--       [6] confirm, [7] confirm pass, [8] batch pending, [9] lease, [10] active index,
--       [11] wake, [12..15] cancel line, [16..19] status line, [20..23] closed-orders line,
--       [24] the learned confirm delay, [25] the confirm times it is learned from,
--       [26] the closed-orders budget's schedule, [27] its pause, [28] margin, [29] the
--       order's owner key, [30] its owner's set of orders
-- ARGV: [1] the record decided from, [2] the record to store, [3] TTL s, [4] events maxlen,
--       [5] effects JSON (see worker.records.Effects), [6..8] cancel line args,
--       [9..11] status line args, [12..14] closed-orders line args, [15] order id
-- Returns: {"ok"}, or {"conflict", the record now ("" if none)}: decide again from it.
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then return {'conflict', current or ''} end
local effects = cjson.decode(ARGV[5])
local order_id = ARGV[15]
local now = clock()
local cancel = line_at(KEYS, 12, ARGV, 6, KEYS[10])
local status = line_at(KEYS, 16, ARGV, 9, KEYS[10])
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
if effects.event then
  add_event(KEYS[2], ARGV[4], effects.event)
  redis.call('HINCRBY', KEYS[3], effects.was, -1)
  redis.call('HINCRBY', KEYS[3], effects.now, 1)
end
if effects.final then
  redis.call('ZREM', KEYS[4], order_id)
  redis.call('ZREM', KEYS[6], order_id)
  redis.call('SREM', KEYS[8], order_id)
  forget(cancel, order_id)
  forget(status, order_id)
  redis.call('DEL', KEYS[29])  -- a final order forgets its owner
  redis.call('ZREM', KEYS[30], order_id)
  for _, field in ipairs(effects.histogram or {}) do redis.call('HINCRBY', KEYS[5], field, 1) end
  if effects.histogram then
    redis.call('HINCRBY', KEYS[5], 'count', 1)
    redis.call('HINCRBY', KEYS[5], 'sum_ms', effects.elapsed_ms)
  end
end
if effects.learn then  -- how long the exchange took to confirm it (worker.learning)
  local l = effects.learn
  learn(KEYS[25], KEYS[24], l[1], l[2], l[3], l[4], l[5], l[6], l[7])
end
if effects.lease and effects.lease ~= '' and redis.call('GET', KEYS[9]) == effects.lease then
  redis.call('DEL', KEYS[9])
end
local step = effects.next
if step then
  if step.kind == 'cancel' then
    join(cancel, order_id, step.rank, now + step.delay_ms, step.since, 0, step.owner, now)
  elseif step.kind == 'status' then
    local at = now + step.delay_ms
    join(status, order_id, step.rank, at, at, 0, step.owner, now)
  else
    local delay = step.delay_ms
    if delay < 0 then  -- when the exchange usually confirms (worker.confirmation)
      delay = tonumber(redis.call('GET', KEYS[24])) or step.default_ms
      delay = math.max(step.floor_ms, math.min(step.ceiling_ms, delay))
    end
    local C = {
      confirm = KEYS[6], pass = KEYS[7], closed = line_at(KEYS, 20, ARGV, 12, KEYS[10]),
      status = status, job = step.job, min_orders = step.min_orders, behind_ms = step.behind_ms,
    }
    if step.lists then
      local l = step.lists
      C.lists = {schedule = KEYS[26], pause = KEYS[27], margin = KEYS[28], limit = l[1],
        period = l[2], floor = l[3], ceiling = l[4]}
    end
    await_confirmation(C, {{order_id, step.rank, step.owner}}, delay, step.looked, now)
  end
  wake(KEYS[11])
end
return {'ok'}
