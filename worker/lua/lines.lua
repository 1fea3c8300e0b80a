-- Lines: who waits for a budget's turns, and in which order. Only the scheduler's scripts
-- (and scripts that join or leave a line through these functions) touch a line's keys.
-- Uses: common, budget.
--
-- A line is one (account, budget). Each job (an order id, a batch, a list pass) waits in its
-- owner's queue (a strategy's name; "" for jobs with none), a sorted set by
-- rank * STRIDE + request time: urgent before normal, then oldest first. The owners with
-- jobs waiting are a sorted set too, by their head's rank and their virtual time (start-time
-- fair queuing): the next turn goes to the urgent head of the owner that has had the least
-- service for its share, else the normal head of that owner. One owner's backlog therefore
-- never holds another's job for more than a turn per owner, and with one owner the line is
-- plain urgent-first, first-come-first-served. A job that may not go before a time (a
-- poll's countdown) waits in `later` until then. `jobs` maps every waiting job to
-- "rank:since:pos:owner", so any job can be found, moved up or forgotten.

-- A line from 4 keys and 3 arguments: owners, later, jobs, clock; budget id, the key prefix
-- of its owners' queues, and the owners' shares ("name=weight,..."; others weigh 1).
local function line_at(keys, k, args, a, active)
  local shares = {}
  for name, weight in string.gmatch(args[a + 2], '([^=,]*)=(%d+)') do
    shares[name] = tonumber(weight)
  end
  return {
    owners = keys[k], later = keys[k + 1], jobs = keys[k + 2], clock = keys[k + 3],
    budget = args[a], queue = args[a + 1], shares = shares, active = active,
  }
end

local function line_score(rank, since, pos)
  return rank * STRIDE + math.max(0, since - EPOCH) * SUB + pos
end

local function meta_of(meta)
  local r, s, p, o = string.match(meta, '^(%d+):(%d+):(%d+):(.*)$')
  return tonumber(r), tonumber(s), tonumber(p), o
end

local function vt_of(L, owner)
  return tonumber(redis.call('HGET', L.clock, owner) or '0')
end

-- Place an owner among the owners by its head's rank and its virtual time; drop it if idle.
local function rescore(L, owner)
  local head = redis.call('ZRANGE', L.queue .. owner, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('ZREM', L.owners, owner)
    return
  end
  local rank = math.floor(tonumber(head[2]) / STRIDE)
  redis.call('ZADD', L.owners, rank * STRIDE + vt_of(L, owner), owner)
end

-- Put a job in its owner's queue (ready for a turn); a better place already held is kept.
local function enqueue(L, job, rank, since, pos, owner)
  local queue = L.queue .. owner
  local score = line_score(rank, since, pos)
  local current = tonumber(redis.call('ZSCORE', queue, job))
  if current ~= nil and current <= score then return end
  if redis.call('ZSCORE', L.owners, owner) == false then
    -- An owner coming back starts at the line's virtual clock: idling earns no credit.
    local vt = math.max(vt_of(L, owner), vt_of(L, '*'))
    redis.call('HSET', L.clock, owner, vt)
  end
  redis.call('ZADD', queue, score, job)
  rescore(L, owner)
end

-- Join a line: ready now, or not before ready_at. A job already waiting keeps its owner and
-- the better of its places (joining twice never loses a place), and stays ready if it is.
local function join(L, job, rank, ready_at, since, pos, owner, now)
  local meta = redis.call('HGET', L.jobs, job)
  local ready = false
  if meta then
    local r, s, p, o = meta_of(meta)
    owner = o
    if line_score(r, s, p) < line_score(rank, since, pos) then rank, since, pos = r, s, p end
    ready = redis.call('ZSCORE', L.later, job) == false
  end
  redis.call('HSET', L.jobs, job, rank .. ':' .. since .. ':' .. pos .. ':' .. owner)
  if ready or ready_at <= now then
    redis.call('ZREM', L.later, job)
    enqueue(L, job, rank, since, pos, owner)
    redis.call('ZADD', L.active, 'LT', now, L.budget)
  else
    redis.call('ZADD', L.later, 'LT', ready_at, job)
    redis.call('ZADD', L.active, 'LT', tonumber(redis.call('ZSCORE', L.later, job)), L.budget)
  end
end

-- Move a waiting job up to `rank` if that is more urgent; returns 1 if it moved.
local function upgrade(L, job, rank)
  local meta = redis.call('HGET', L.jobs, job)
  if not meta then return 0 end
  local r, s, p, o = meta_of(meta)
  if r <= rank then return 0 end
  redis.call('HSET', L.jobs, job, rank .. ':' .. s .. ':' .. p .. ':' .. o)
  if redis.call('ZSCORE', L.later, job) == false then
    redis.call('ZADD', L.queue .. o, line_score(rank, s, p), job)
    rescore(L, o)
  end
  return 1
end

-- Take a job out of the line wherever it waits; returns 1 if it was there.
local function forget(L, job)
  local meta = redis.call('HGET', L.jobs, job)
  if not meta then return 0 end
  local _, _, _, owner = meta_of(meta)
  redis.call('HDEL', L.jobs, job)
  redis.call('ZREM', L.later, job)
  if redis.call('ZREM', L.queue .. owner, job) == 1 then rescore(L, owner) end
  return 1
end

-- Jobs whose countdown ended join their owners' queues (at most `max`).
local function promote(L, now, max)
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', L.later, '-inf', now, 'LIMIT', 0, max)) do
    redis.call('ZREM', L.later, job)
    local meta = redis.call('HGET', L.jobs, job)
    if meta then
      local r, s, p, o = meta_of(meta)
      enqueue(L, job, r, s, p, o)
    end
  end
end

-- The next job to serve: owner, job, rank; nil when nobody is ready.
local function head(L)
  while true do
    local first = redis.call('ZRANGE', L.owners, 0, 0)
    if #first == 0 then return nil end
    local owner = first[1]
    local job = redis.call('ZRANGE', L.queue .. owner, 0, 0, 'WITHSCORES')
    if #job > 0 then return owner, job[1], math.floor(tonumber(job[2]) / STRIDE) end
    redis.call('ZREM', L.owners, owner)
  end
end

-- Serve the head: it leaves the line; its owner's virtual time advances by its share.
local function pop(L, owner, job)
  redis.call('ZREM', L.queue .. owner, job)
  redis.call('HDEL', L.jobs, job)
  local vt = vt_of(L, owner)
  local share = L.shares[owner] or 1
  redis.call('HSET', L.clock, '*', vt, owner, vt + math.ceil(SHARE_UNIT / share))
  rescore(L, owner)
  if redis.call('HLEN', L.jobs) == 0 then redis.call('DEL', L.clock) end
end

-- Hand the budget's next free slot to the line's head if the slot comes within `lead` ms
-- (and, with urgent_only, only to an urgent head). Returns the turn {job, member, slot,
-- owner}, or nil and the slot the head waits for (nil too when nobody is ready).
local function release_one(L, B, now, lead, urgent_only, name)
  local owner, job, rank = head(L)
  if owner == nil or (urgent_only and rank > 0) then return nil, nil end
  local slot = slot_of(B, rank > 0)
  if slot > now + lead then return nil, slot end
  pop(L, owner, job)
  local member = job .. '@' .. name
  book(B, member, slot)
  return {job, member, slot, owner}, nil
end

-- When the line next needs a dispatcher's look (its blocked head's slot, its next
-- countdown, or never: then it leaves the active index). Returns that time or nil.
local function next_look(L, blocked, now)
  local at = nil
  if redis.call('ZCARD', L.owners) > 0 then
    at = blocked or now
  else
    local first = redis.call('ZRANGE', L.later, 0, 0, 'WITHSCORES')
    if #first > 0 then at = tonumber(first[2]) end
  end
  if at == nil then
    redis.call('ZREM', L.active, L.budget)
  else
    redis.call('ZADD', L.active, at, L.budget)
  end
  return at
end
