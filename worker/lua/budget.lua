-- A budget (one exchange endpoint of one API key): its schedule of send times, the slot
-- arithmetic every hand-out and estimate uses, and the commit at send time.
-- Uses: common.

-- The margin every window uses: learned from the network, within floor and ceiling.
local function margin_of(key, floor, ceiling)
  local m = tonumber(redis.call('GET', key))
  if m == nil or m < floor then return floor end
  if m > ceiling then return ceiling end
  return m
end

-- Index of the first time in the sorted array above t (#times + 1 if none).
local function first_above(times, t)
  local lo, hi = 1, #times + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if times[mid] > t then hi = mid else lo = mid + 1 end
  end
  return lo
end

local function insert_time(times, t)
  table.insert(times, first_above(times, t), t)
end

-- The earliest send time >= now that keeps every window of `window` ms at `limit` sends,
-- given the sorted send times already booked. With `reserve` (a normal job), a window's
-- last free slot is taken only if that window frees again within one slot interval
-- (window / limit): an urgent job then never waits longer than that for a slot.
local function next_slot(times, pause_until, limit, window, now, reserve)
  local slot = math.max(now, pause_until)
  local n = #times
  if n > 0 and times[n] > slot then slot = times[n] end
  if n >= limit and times[n - limit + 1] + window > slot then
    slot = times[n - limit + 1] + window
  end
  if reserve and limit > 1 then
    local interval = math.ceil(window / limit)
    for _ = 1, 3 do
      local first = first_above(times, slot - window)
      local inside = math.min(first_above(times, slot) - first, limit)
      if inside < limit - 1 then break end
      local need = times[first] + window - interval
      if need <= slot then break end
      slot = need
    end
  end
  return slot
end

-- A budget as hand-outs see it: the sends of its window and those booked ahead (older ones
-- are trimmed; they cannot move a slot from now on), its pause, and its window.
local function budget_at(schedule, pause, margin, limit, period, ceiling, now)
  redis.call('ZREMRANGEBYSCORE', schedule, '-inf', now - period - ceiling)
  local window = period + margin
  local last = redis.call('ZRANGE', schedule, -1, -1, 'WITHSCORES')
  local p = redis.call('PTTL', pause)
  return {
    schedule = schedule,
    limit = limit,
    window = window,
    now = now,
    pause_until = p > 0 and now + p or now,
    keep = period + ceiling + 60000,
    recent = redis.call('ZCOUNT', schedule, '(' .. (now - window), '+inf'),
    last = #last > 0 and tonumber(last[2]) or 0,
    times = nil,  -- loaded when a slot is not plainly free
  }
end

-- The budget's sends from (now - window) on, sorted: all next_slot ever needs.
local function times_of(B)
  if B.times == nil then
    local raw = redis.call('ZRANGEBYSCORE', B.schedule, '(' .. (B.now - B.window), '+inf',
      'WITHSCORES')
    B.times = {}
    for i = 2, #raw, 2 do B.times[#B.times + 1] = tonumber(raw[i]) end
  end
  return B.times
end

-- The next free slot for a job (with `reserve`: a normal one). When the window plainly has
-- room (no pause, nothing booked ahead, fewer sends than the reserve allows) it is now,
-- found without reading the schedule: a free budget costs a hand-out a few lookups.
local function slot_of(B, reserve)
  local room = (reserve and B.limit > 1) and B.limit - 1 or B.limit
  if B.pause_until <= B.now and B.last <= B.now and B.recent < room then return B.now end
  return next_slot(times_of(B), B.pause_until, B.limit, B.window, B.now, reserve)
end

-- Book `slot` for a turn named `member`.
local function book(B, member, slot)
  redis.call('ZADD', B.schedule, slot, member)
  redis.call('PEXPIRE', B.schedule, B.keep)
  if B.times ~= nil then insert_time(B.times, slot) end
  B.recent = B.recent + 1
  if slot > B.last then B.last = slot end
end

-- Commit a turn's send time: now, unless the window (now - period - margin, now] already
-- holds `limit` other sends (or a pause runs). Every commit checks the window behind it and
-- commits happen in time order, so no window ever holds limit + 1, whatever was handed out.
-- Returns 1, now, margin to send now; or 0, ms to wait, margin.
local function commit(schedule, pause, stats, margin_key, member, limit, period, floor, ceiling,
                      stats_ttl, now)
  local margin = margin_of(margin_key, floor, ceiling)
  local p = redis.call('PTTL', pause)
  if p > 0 then return 0, p, margin end
  local window = period + margin
  local low = '(' .. (now - window)
  local others = redis.call('ZCOUNT', schedule, low, now)
  local own = tonumber(redis.call('ZSCORE', schedule, member))
  if own ~= nil and own > now - window and own <= now then others = others - 1 end
  if others < limit then
    redis.call('ZADD', schedule, now, member)
    redis.call('PEXPIRE', schedule, period + ceiling + 60000)
    redis.call('HINCRBY', stats, 'sent', 1)
    redis.call('EXPIRE', stats, stats_ttl)
    return 1, now, margin
  end
  -- Wait until the send that must leave the window first has left it.
  local skip = others - limit
  local inside = redis.call('ZRANGEBYSCORE', schedule, low, now, 'WITHSCORES', 'LIMIT', 0, skip + 2)
  for i = 1, #inside, 2 do
    if inside[i] ~= member then
      if skip == 0 then return 0, tonumber(inside[i + 1]) + window - now, margin end
      skip = skip - 1
    end
  end
  return 0, window, margin
end
