-- Waiting for the exchange to confirm accepted cancels (worker.confirmation): an order lists
-- can settle with many others waits for the account's list pass, with a status read behind
-- it; while few wait, a status read each.
-- Uses: common, budget, lines.

-- C: confirm (due zset), pass (the pass interval key), closed (the closed-orders line),
-- status (the status line), job (the pass's job name), min_orders, behind_ms, and lists:
-- the closed-orders budget ({schedule, pause, margin, limit, period, floor, ceiling}; nil
-- when unknown).

-- Whether a list pass can go by `by`: its budget has a slot by then.
local function pass_by(C, by, now, urgent)
  local lists = C.lists
  if lists == nil then return true end
  local margin = margin_of(lists.margin, lists.floor, lists.ceiling)
  local B = budget_at(lists.schedule, lists.pause, margin, lists.limit, lists.period,
    lists.ceiling, now)
  return slot_of(B, urgent > 0) <= by
end

-- orders: {{order_id, rank, owner}, ...}. `looked`: the lists just looked for these, so
-- their due time moves on; otherwise an earlier due time is kept.
local function await_confirmation(C, orders, delay_ms, looked, now)
  local waiting = redis.call('ZCARD', C.confirm)
  local due = now + delay_ms
  local urgent = 1
  for _, order in ipairs(orders) do
    if looked then
      redis.call('ZADD', C.confirm, due, order[1])
    else
      redis.call('ZADD', C.confirm, 'LT', due, order[1])
    end
    urgent = math.min(urgent, order[2])
  end
  local status_at = due
  if waiting + #orders >= C.min_orders then
    local pass_at = now + math.max(delay_ms, redis.call('PTTL', C.pass))
    join(C.closed, C.job, urgent, pass_at, pass_at, 0, '', now)
    -- The status read waits behind the pass only if the pass can go in that time: while
    -- the lists' budget is spent it would wait for nothing, look after look.
    if pass_by(C, pass_at + C.behind_ms / 2, now, urgent) then status_at = due + C.behind_ms end
  end
  for i, order in ipairs(orders) do
    join(C.status, order[1], order[2], status_at, status_at, i - 1, order[3], now)
  end
end
