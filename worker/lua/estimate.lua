--! uses: common budget lines
-- Read one line and its budget (writes nothing): what waits, per owner, and when a job (or
-- the last job in line) is expected to get its turn, by the same slot arithmetic and the
-- same order of owners that hand-outs use.
-- KEYS: [1..4] the line, [5] schedule, [6] pause, [7] margin, [8] stats, [9] active index
-- ARGV: [1..3] line args, [4] limit, [5] period ms, [6] margin floor, [7] ceiling, [8] job or
--       "", [9] slots simulated at most (later ones are extrapolated)
-- Returns: {now, margin, paused ms, used in window, booked ahead, sent, rate limited, ready,
--   urgent, counting down, drain ms, place (0: not in line), eta ms (-1: not waiting),
--   then per owner: name, ready, urgent}
local now = clock()
local L = line_at(KEYS, 1, ARGV, 1, KEYS[9])
local limit, period = tonumber(ARGV[4]), tonumber(ARGV[5])
local margin = margin_of(KEYS[7], tonumber(ARGV[6]), tonumber(ARGV[7]))
local window, max_sim, job = period + margin, tonumber(ARGV[9]), ARGV[8]
local raw = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. (now - window), '+inf', 'WITHSCORES')
local times, used, ahead = {}, 0, 0
for i = 2, #raw, 2 do
  local t = tonumber(raw[i])
  times[#times + 1] = t
  if t <= now then used = used + 1 else ahead = ahead + 1 end
end
local paused = math.max(0, redis.call('PTTL', KEYS[6]))
local look = tonumber(redis.call('ZSCORE', KEYS[9], L.budget)) or now
local stats = redis.call('HMGET', KEYS[8], 'sent', 'rate_limited')

-- The n-th (0-based) free slot from now: simulated, then one window per `limit` sends.
local function nth_slot(n, reserve)
  local sim, slot = {}, now
  for i = 1, #times do sim[i] = times[i] end
  local steps = math.min(n, max_sim - 1)
  for _ = 0, steps do
    slot = next_slot(sim, now + paused, limit, window, now, reserve)
    insert_time(sim, slot)
  end
  if n > steps then slot = slot + math.ceil((n - steps) / limit) * window end
  return math.max(slot, look)
end

-- Owners in line: how many each has ready and urgent, their virtual times and shares.
local owners, ready, urgent = {}, 0, 0
local names = redis.call('ZRANGE', L.owners, 0, -1)
for _, owner in ipairs(names) do
  local queue = L.queue .. owner
  local o = {
    name = owner, ready = redis.call('ZCARD', queue),
    urgent = redis.call('ZCOUNT', queue, '-inf', '(' .. STRIDE),
    vt = vt_of(L, owner), step = math.ceil(SHARE_UNIT / (L.shares[owner] or 1)), served = 0,
  }
  owners[#owners + 1] = o
  ready, urgent = ready + o.ready, urgent + o.urgent
end
local later = redis.call('ZCARD', L.later)

-- A job's place: serve owners in the order hand-outs would (urgent heads first, then the
-- least virtual time, then the name) until the job's turn comes.
local function place_of(owner, index)
  local place = 0
  while true do
    local best, best_key = nil, nil
    for _, o in ipairs(owners) do
      if o.served < o.ready then
        local rank = o.served < o.urgent and 0 or 1
        local key = rank * STRIDE + o.vt
        if best == nil or key < best_key or (key == best_key and o.name < best.name) then
          best, best_key = o, key
        end
      end
    end
    if best == nil then return 0 end
    place = place + 1
    if best.name == owner and best.served == index then return place end
    best.served = best.served + 1
    best.vt = best.vt + best.step
  end
end

local out = {now, margin, paused, used, ahead, tonumber(stats[1]) or 0, tonumber(stats[2]) or 0,
  ready, urgent, later, 0, 0, -1}
if ready > 0 then out[11] = nth_slot(ready - 1, true) - now end
local meta = job ~= '' and redis.call('HGET', L.jobs, job) or false
if meta then
  local rank, _, _, owner = meta_of(meta)
  local later_at = tonumber(redis.call('ZSCORE', L.later, job))
  if later_at == nil then
    local index = redis.call('ZRANK', L.queue .. owner, job)
    out[12] = place_of(owner, index)
    out[13] = nth_slot(out[12] - 1, rank > 0)
  else
    out[13] = math.max(later_at, nth_slot(ready, true))
  end
end
for _, o in ipairs(owners) do
  out[#out + 1], out[#out + 2], out[#out + 3] = o.name, o.ready, o.urgent
end
return out
