"""The budget scheduler: which job takes each send slot of each (account, bucket) budget.

Why not a limiter that books a send time per caller and makes it sleep (what this module
replaced): a caller that books a slot far ahead holds a worker thread the whole time, so an
urgent cancel or another account's cancel waits for a thread as well as for budget, and a
time booked with one margin cannot grow when the network turns out slower.

Instead:
- **Waiting rooms.** A job (an order to cancel, an order to confirm) waits in Redis, in a
  sorted set per (account, bucket): urgent before normal, then oldest first. A job that may
  not go before a time (a poll's countdown) waits in a second set until then. Waiting holds
  no thread and no broker message.
- **Release.** Dispatchers (one thread in every worker process, see worker.dispatcher)
  call RELEASE: one Lua call that, for every budget at once, hands the next free slot to the
  head of its room and books it in the budget's schedule. The freed job is published as a
  Celery task at once; the broker only ever holds work whose turn has come. A join leaves
  one wake token that one dispatcher takes, so a busy fleet does not wake every host.
- **Commit at send time.** Just before its request, the task calls COMMIT: the send time
  becomes *now* (Redis `TIME`, one clock for every host) and is refused while the window
  `(now - period - margin, now]` already holds `limit` other sends. Every commit checks the
  window behind it, and commits happen in time order, so no window of `period + margin`
  ever holds more than `limit` sends, whatever happened between release and send.
- **A margin learned from the network.** A request reaches the exchange somewhere between
  its commit and its answer, so the span from taking the turn to the answer bounds how far
  its arrival can drift. OBSERVE keeps the fleet's recent spans; the margin is the largest
  times a headroom, within a configured floor and ceiling. Arrivals then vary by less than
  the margin, and the exchange never counts `limit + 1` in one `period`.
- **Urgent first, with a reserve.** Urgent jobs go ahead of normal ones in every line, and
  a normal job never takes a window's last free slot unless that window frees again within
  one slot interval (period ÷ limit). So an urgent job waits at most one interval, however
  long the normal backlog; a short normal burst still goes at once, and a long one settles
  into sends one interval apart at the full rate.
- A 429 pauses the budget for one window for every worker (someone else spent it).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import structlog

from worker.accounts import AccountInfo
from worker.errors import ExchangeError, RateLimited
from worker.keys import Keys
from worker.models import Bucket, Priority

if TYPE_CHECKING:
    from worker.connection import Replication

#: A job's place in line is one number: rank, then the time it is ordered by, then its
#: position within a request (so a batch keeps its order inside one millisecond):
#: score = rank * RANK_STRIDE + (since_ms - LINE_EPOCH_MS) * LINE_SUB + position.
#: Every score stays below 2**53, so Redis keeps it exact.
LINE_EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LINE_SUB = 1024  # positions within one millisecond (a larger batch spills into the next)
RANK_STRIDE = 2**49  # urgent (rank 0) scores sit below this, normal (rank 1) above
RELEASE_LEAD_MS = 5  # a turn may be handed out this early, to cover the task's pick-up
PROMOTE_PER_CALL = 500  # later → ready moves per budget per RELEASE, at most
MAX_HOLD_S = 2.0  # a task waits this long at most for its turn to clear; then it queues again
REPLICA_HOLD_MS = 1000  # a budget waits this long after no replica confirmed a send time
SPAN_SAMPLES = 64  # recent request spans the margin is learned from (fleet-wide)
MARGIN_HEADROOM = 1.2  # margin = largest recent span x this, within floor and ceiling
MARGIN_MEMORY_S = 600  # spans older than this are forgotten: the margin falls back to its floor
STATS_TTL_S = 7 * 24 * 3600
ESTIMATE_SIMULATED_SLOTS = 10_000  # past this, slot estimates are extrapolated
#: Budgets whose jobs (order or batch ids) the sweeper watches while their turn is under way.
WATCHED_BUCKETS = frozenset({Bucket.CANCEL, Bucket.STATUS, Bucket.CANCEL_ALL})

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Lua shared by the scripts below (and by the record store's create script).
LIBRARY = f"""
local STRIDE, EPOCH, SUB = {RANK_STRIDE}, {LINE_EPOCH_MS}, {LINE_SUB}
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function margin_of(key, floor, ceiling)
  local m = tonumber(redis.call('GET', key))
  if m == nil or m < floor then return floor end
  if m > ceiling then return ceiling end
  return m
end
-- Leave one wake token: one waiting dispatcher takes it and looks at every line.
local function wake(key)
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, 0)
end
-- A batch larger than SUB spills into the next milliseconds, keeping its order.
local function line_score(rank, since, pos)
  return rank * STRIDE + math.max(0, since - EPOCH) * SUB + pos
end
-- Put a job in a room (ready now, or not before ready_at); an entry already there keeps
-- the more urgent rank and the earlier place, so joining twice never loses a place. The
-- active index learns when this line next needs a dispatcher's look.
local function join(ready, later, info, active, budget, job, rank, ready_at, since, pos, now)
  if ready_at <= now then
    local cur = redis.call('ZSCORE', ready, job)
    local score = line_score(rank, since, pos)
    if cur == false or score < tonumber(cur) then redis.call('ZADD', ready, score, job) end
    redis.call('ZREM', later, job)
    redis.call('HDEL', info, job)
    redis.call('ZADD', active, 'LT', now, budget)
  elseif redis.call('ZSCORE', ready, job) == false then
    redis.call('ZADD', later, 'LT', ready_at, job)
    local meta = redis.call('HGET', info, job)
    if meta then
      local r = tonumber(string.match(meta, '^(%d+):'))
      if r < rank then rank = r end
    end
    redis.call('HSET', info, job, rank .. ':' .. since .. ':' .. pos)
    redis.call('ZADD', active, 'LT', ready_at, budget)
  end
end
-- The earliest send time >= now that keeps every window of `window` ms at `limit` sends.
-- With `reserve` (a normal job), the window's last free slot is taken only if the window
-- frees again within one slot interval: an urgent job never waits longer than that.
local function next_slot(schedule, pause, limit, window, now, reserve)
  local slot = now
  local p = redis.call('PTTL', pause)
  if p > 0 then slot = now + p end
  local count = redis.call('ZCARD', schedule)
  if count > 0 then
    local last = redis.call('ZRANGE', schedule, -1, -1, 'WITHSCORES')
    if tonumber(last[2]) > slot then slot = tonumber(last[2]) end
  end
  if count >= limit then
    local nth = redis.call('ZRANGE', schedule, count - limit, count - limit, 'WITHSCORES')
    local earliest = tonumber(nth[2]) + window
    if earliest > slot then slot = earliest end
  end
  if reserve and limit > 1 then
    local interval = math.ceil(window / limit)
    for _ = 1, 3 do
      local inside = redis.call('ZRANGEBYSCORE', schedule, '(' .. (slot - window), slot,
        'WITHSCORES', 'LIMIT', 0, limit)
      if #inside / 2 < limit - 1 then break end
      local need = tonumber(inside[2]) + window - interval
      if need <= slot then break end
      slot = need
    end
  end
  return slot
end
"""

#: Put jobs into one room and wake a dispatcher.
#: KEYS: [1] ready zset, [2] later zset, [3] info hash, [4] active index, [5] wake list
#: ARGV: [1] budget id, [2] rank, [3] delay ms, [4] since ms or "" (= when ready), [5..] jobs
#: Returns: how many jobs were given.
JOIN_LUA = (
    LIBRARY
    + """
local now = clock()
local rank, ready_at = tonumber(ARGV[2]), now + tonumber(ARGV[3])
local since = ready_at
if ARGV[4] ~= '' then since = tonumber(ARGV[4]) end
for i = 5, #ARGV do
  join(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[i], rank, ready_at, since, i - 5, now)
end
wake(KEYS[5])
return #ARGV - 4
"""
)

#: Move waiting jobs to a more urgent rank, keeping their time (jobs not waiting are skipped).
#: KEYS: [1] ready zset, [2] later zset, [3] info hash
#: ARGV: [1] rank, [2..] jobs
#: Returns: how many jobs moved up.
UPGRADE_LUA = (
    LIBRARY
    + """
local rank, moved = tonumber(ARGV[1]), 0
for i = 2, #ARGV do
  local job = ARGV[i]
  local cur = redis.call('ZSCORE', KEYS[1], job)
  if cur and math.floor(tonumber(cur) / STRIDE) > rank then
    redis.call('ZADD', KEYS[1], rank * STRIDE + tonumber(cur) % STRIDE, job)
    moved = moved + 1
  elseif cur == false then
    local meta = redis.call('HGET', KEYS[3], job)
    if meta then
      local r, rest = string.match(meta, '^(%d+):(.*)$')
      if tonumber(r) > rank then
        redis.call('HSET', KEYS[3], job, rank .. ':' .. rest)
        moved = moved + 1
      end
    end
  end
end
return moved
"""
)

#: Hand the free slots of every budget whose line needs a look to the heads of their rooms:
#: urgent heads of every line first, then the rest, one turn per line per round, so a burst
#: on one account is never queued ahead of another account's turn.
#: KEYS: [1] due zset, [2] margin, [3] active index, then 6 per budget: schedule, pause,
#:       stats, ready, later, info
#: ARGV: [1] margin floor ms, [2] margin ceiling ms, [3] lead ms, [4] watch ms, [5] promote
#:       max, then 4 per budget: budget id, limit, period ms, "1" if its jobs are watched
#: Returns: {next_wait_ms (-1: nothing waits), then per turn: budget index, job, member, slot}
RELEASE_LUA = (
    LIBRARY
    + """
local now = clock()
local floor, ceiling = tonumber(ARGV[1]), tonumber(ARGV[2])
local lead, watch, promote = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local margin = margin_of(KEYS[2], floor, ceiling)
local index = {}
for b = 1, (#KEYS - 3) / 6 do index[ARGV[6 + (b - 1) * 4]] = b end
local out, next_wait = {}, -1
local function soonest(at)
  local w = math.max(0, at - now)
  if next_wait < 0 or w < next_wait then next_wait = w end
end
local function keys_of(b)
  local k = 3 + (b - 1) * 6
  return KEYS[k + 1], KEYS[k + 2], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]
end
local function params_of(b)
  local a = 6 + (b - 1) * 4
  return ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
end
-- Lines due for a look: promote countdowns that ended, note who has jobs in line.
local lines, due = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES'), {}
for l = 1, #lines, 2 do
  local b, look_at = index[lines[l]], tonumber(lines[l + 1])
  if b ~= nil and look_at > now + lead then
    soonest(look_at)
  elseif b ~= nil then
    local schedule, pause, ready, later, info = keys_of(b)
    local budget, limit, period = params_of(b)
    for _, job in ipairs(redis.call('ZRANGEBYSCORE', later, '-inf', now, 'LIMIT', 0, promote)) do
      local rank, since, pos = 1, now, 0
      local meta = redis.call('HGET', info, job)
      if meta then
        local r, s, p = string.match(meta, '^(%d+):(%d+):(%d+)$')
        rank, since, pos = tonumber(r), tonumber(s), tonumber(p)
      end
      join(ready, later, info, KEYS[3], budget, job, rank, now, since, pos, now)
    end
    redis.call('ZREMRANGEBYSCORE', schedule, '-inf', now - period - ceiling)
    due[#due + 1] = b
  end
end
-- Rounds: urgent heads of every line, then any head; one turn per line per round.
local blocked = {}
for phase = 0, 1 do
  local progress = true
  while progress do
    progress = false
    for _, b in ipairs(due) do
      local schedule, pause, ready = keys_of(b)
      local _, limit, period, watched = params_of(b)
      local first = blocked[b] == nil and redis.call('ZRANGE', ready, 0, 0, 'WITHSCORES') or {}
      if #first > 0 then
        local head, normal = first[1], tonumber(first[2]) >= STRIDE
        if phase == 1 or not normal then
          local slot = next_slot(schedule, pause, limit, period + margin, now, normal)
          if slot > now + lead then
            blocked[b] = slot
          else
            redis.call('ZREM', ready, head)
            local member = head .. '@' .. now .. '#' .. #out
            redis.call('ZADD', schedule, slot, member)
            redis.call('PEXPIRE', schedule, period + ceiling + 60000)
            if watched then redis.call('ZADD', KEYS[1], now + watch, head) end
            out[#out + 1] = b
            out[#out + 1] = head
            out[#out + 1] = member
            out[#out + 1] = slot
            progress = true
          end
        end
      end
    end
  end
end
-- When each line next needs a look: its next slot, its next countdown, or never.
for _, b in ipairs(due) do
  local _, _, ready, later = keys_of(b)
  local budget = params_of(b)
  if redis.call('ZCARD', ready) > 0 then
    local at = blocked[b] or now
    redis.call('ZADD', KEYS[3], at, budget)
    soonest(at)
  else
    local first = redis.call('ZRANGE', later, 0, 0, 'WITHSCORES')
    if #first > 0 then
      redis.call('ZADD', KEYS[3], tonumber(first[2]), budget)
      soonest(tonumber(first[2]))
    else
      redis.call('ZREM', KEYS[3], budget)
    end
  end
end
table.insert(out, 1, next_wait)
return out
"""
)

#: Take a turn: make its send time now, unless the window behind now is full or paused.
#: KEYS: [1] schedule, [2] pause, [3] stats, [4] margin
#: ARGV: [1] member, [2] limit, [3] period ms, [4] margin floor, [5] margin ceiling,
#:       [6] stats TTL s
#: Returns: {1, now_ms, margin_ms} to send now, or {0, wait_ms, margin_ms} to wait first.
COMMIT_LUA = (
    LIBRARY
    + """
local now = clock()
local limit, period = tonumber(ARGV[2]), tonumber(ARGV[3])
local margin = margin_of(KEYS[4], tonumber(ARGV[4]), tonumber(ARGV[5]))
local p = redis.call('PTTL', KEYS[2])
if p > 0 then return {0, p, margin} end
local window = period + margin
local inside = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - window), now, 'WITHSCORES')
local others = {}
for i = 1, #inside, 2 do
  if inside[i] ~= ARGV[1] then others[#others + 1] = tonumber(inside[i + 1]) end
end
if #others < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], period + tonumber(ARGV[5]) + 60000)
  redis.call('HINCRBY', KEYS[3], 'sent', 1)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
  return {1, now, margin}
end
return {0, others[#others - limit + 1] + window - now, margin}
"""
)

#: Free a turn that was not used; its line gets a look now if jobs wait in it.
#: KEYS: [1] schedule, [2] ready zset, [3] active index, [4] wake list
#: ARGV: [1] member, [2] budget id
#: Returns: 1 if the turn was still booked.
GIVE_BACK_LUA = (
    LIBRARY
    + """
local freed = redis.call('ZREM', KEYS[1], ARGV[1])
if freed == 1 and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('ZADD', KEYS[3], 'LT', clock(), ARGV[2])
  wake(KEYS[4])
end
return freed
"""
)

#: After a 429: no turn of this budget for one window, for any worker.
#: KEYS: [1] pause, [2] stats, [3] margin   ARGV: [1] period ms, [2] floor, [3] ceiling, [4] TTL
#: Returns: the pause in ms.
PAUSE_LUA = (
    LIBRARY
    + """
local ms = tonumber(ARGV[1]) + margin_of(KEYS[3], tonumber(ARGV[2]), tonumber(ARGV[3]))
redis.call('SET', KEYS[1], '429', 'PX', ms)
redis.call('HINCRBY', KEYS[2], 'rate_limited', 1)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return ms
"""
)

#: Learn from one request's span; set the margin every budget's window uses.
#: KEYS: [1] spans list, [2] margin
#: ARGV: [1] span ms, [2] samples kept, [3] floor, [4] ceiling, [5] headroom, [6] memory s
#: Returns: the margin in ms.
OBSERVE_LUA = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
local largest = 0
for _, span in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if tonumber(span) > largest then largest = tonumber(span) end
end
local margin = math.ceil(largest * tonumber(ARGV[5]))
margin = math.max(tonumber(ARGV[3]), math.min(tonumber(ARGV[4]), margin))
redis.call('SET', KEYS[2], margin, 'EX', tonumber(ARGV[6]))
return margin
"""


def budget_id(account: str, bucket: Bucket) -> str:
    """How the active index names one (account, bucket) line."""
    return f"{account}|{bucket.value}"


def room_keys(keys: Keys, account: str, bucket: Bucket) -> list[str]:
    """[ready, later, info, active index] of one (account, bucket) line."""
    return [
        keys.room_ready(account, bucket),
        keys.room_later(account, bucket),
        keys.room_info(account, bucket),
        keys.active,
    ]


def future_slots(
    booked: Sequence[int],
    now_ms: int,
    limit: int,
    window_ms: int,
    not_before_ms: int,
    count: int,
    *,
    reserve: bool = False,
) -> list[int]:
    """The next `count` send times after `booked`, as RELEASE hands them out.

    With `reserve` (normal jobs), a window's last free slot is taken only within one slot
    interval of that window freeing again, which keeps an urgent job's wait under one
    interval; a long backlog then settles into sends one interval apart.
    """
    times = sorted(booked)
    interval = -(-window_ms // limit)
    slots: list[int] = []
    for _ in range(count):
        slot = max(now_ms, not_before_ms, times[-1] if times else now_ms)
        if len(times) >= limit:
            slot = max(slot, times[-limit] + window_ms)
        if reserve and limit > 1:
            for _ in range(3):
                inside = [t for t in times if slot - window_ms < t <= slot][:limit]
                if len(inside) < limit - 1 or inside[0] + window_ms - interval <= slot:
                    break
                slot = inside[0] + window_ms - interval
        bisect.insort(times, slot)
        slots.append(slot)
    return slots


def nth_slot(
    booked: Sequence[int],
    now_ms: int,
    limit: int,
    window_ms: int,
    not_before_ms: int,
    n: int,
    *,
    reserve: bool = False,
) -> int:
    """The n-th (0-based) future send time: simulated, then one window per `limit` sends."""
    simulated = min(n, ESTIMATE_SIMULATED_SLOTS - 1) + 1
    slots = future_slots(
        booked, now_ms, limit, window_ms, not_before_ms, simulated, reserve=reserve
    )
    if n < simulated:
        return slots[n]
    extra = n - (simulated - 1)
    return slots[-1] + -(-extra // limit) * window_ms


@dataclass(frozen=True)
class Released:
    """A turn handed out: `job` may use the budget's slot booked as `member`."""

    account: str
    bucket: Bucket
    job: str
    member: str
    slot_ms: int


@dataclass(frozen=True)
class Waiting:
    """Where a job waits: its place in the room and when its turn is expected."""

    account: str
    bucket: Bucket
    place: int | None  # 1 = next; None while its countdown runs (not yet in line)
    ready: int  # jobs in line in this room
    eta_ms: int  # expected send time, Unix ms (Redis clock)
    now_ms: int


@dataclass(frozen=True)
class BucketUsage:
    """A snapshot of one budget, for `cancel-worker limits` and metrics."""

    account: str
    bucket: Bucket
    limit: int
    period_s: float
    margin_ms: int
    used_in_window: int
    booked_ahead: int
    paused_ms: int
    waiting: int  # in line now
    waiting_urgent: int
    counting_down: int  # waiting for a countdown before they queue
    drain_s: float  # until the last job in line is expected to go
    sent: int
    rate_limited: int


class Scheduler:
    """Rooms, turns and budgets of the given accounts; every operation is one Lua call."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        accounts: Mapping[str, AccountInfo],
        *,
        margin_floor_ms: int,
        margin_ceiling_ms: int,
        watch_ms: int,
        replication: Replication | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.accounts = dict(accounts)
        self.replication = replication  # send times reach a replica before their request
        self.margin_floor_ms = margin_floor_ms
        self.margin_ceiling_ms = margin_ceiling_ms
        self.watch_ms = watch_ms
        self._join = client.register_script(JOIN_LUA)
        self._upgrade = client.register_script(UPGRADE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._commit = client.register_script(COMMIT_LUA)
        self._pause = client.register_script(PAUSE_LUA)
        self._give_back = client.register_script(GIVE_BACK_LUA)
        self._observe = client.register_script(OBSERVE_LUA)
        self._budgets = [(name, bucket) for name in sorted(self.accounts) for bucket in Bucket]

    def room_keys(self, account: str, bucket: Bucket) -> list[str]:
        """[ready, later, info, active index] of one room (what JOIN and the create script use)."""
        return room_keys(self.keys, account, bucket)

    def _budget_keys(self, account: str, bucket: Bucket) -> list[str]:
        fingerprint = self.accounts[account].fingerprint
        return [
            self.keys.schedule(fingerprint, bucket),
            self.keys.pause(fingerprint, bucket),
            self.keys.bucket_stats(fingerprint, bucket),
        ]

    def join(
        self,
        account: str,
        bucket: Bucket,
        jobs: Iterable[str],
        *,
        priority: Priority = Priority.NORMAL,
        delay_s: float = 0.0,
        since_ms: int | None = None,
    ) -> None:
        """Queue jobs for a turn of this budget (after `delay_s`), most urgent first."""
        args = [
            budget_id(account, bucket),
            priority.rank,
            max(0, round(delay_s * 1000)),
            "" if since_ms is None else since_ms,
            *jobs,
        ]
        if len(args) > 4:
            self._join(keys=[*self.room_keys(account, bucket), self.keys.wake], args=args)

    def upgrade(self, account: str, bucket: Bucket, jobs: Sequence[str], priority: Priority) -> int:
        """Move jobs already waiting to `priority` if it is more urgent; return how many."""
        if not jobs:
            return 0
        room = self.room_keys(account, bucket)[:3]
        return int(self._upgrade(keys=room, args=[priority.rank, *jobs]))

    def release(self, only: str | None = None) -> tuple[list[Released], float | None]:
        """Hand out every free slot to its room's head; return the turns and the next wait (s).

        `only` limits it to one account's budgets (a producer handing out its own request's
        turns). The wait is None when no job waits anywhere (the caller sleeps until woken).
        """
        budgets = [(a, b) for a, b in self._budgets if only is None or a == only]
        keys = [self.keys.due, self.keys.margin, self.keys.active]
        args: list[Any] = [
            self.margin_floor_ms,
            self.margin_ceiling_ms,
            RELEASE_LEAD_MS,
            self.watch_ms,
            PROMOTE_PER_CALL,
        ]
        for account, bucket in budgets:
            rate = self.accounts[account].rates[bucket]
            keys += self._budget_keys(account, bucket) + self.room_keys(account, bucket)[:3]
            watched = "1" if bucket in WATCHED_BUCKETS else "0"
            args += [budget_id(account, bucket), rate.count, rate.period_ms, watched]
        if not budgets:
            return [], None
        reply = self._release(keys=keys, args=args)
        next_wait_ms = int(reply[0])
        turns = []
        for i in range(1, len(reply), 4):
            account, bucket = budgets[int(reply[i]) - 1]
            job, member, slot = str(reply[i + 1]), str(reply[i + 2]), int(reply[i + 3])
            turns.append(Released(account, bucket, job, member, slot))
        return turns, None if next_wait_ms < 0 else next_wait_ms / 1000

    def commit(self, account: str, bucket: Bucket, member: str) -> tuple[bool, int]:
        """Make this turn's send time now if the window allows.

        Returns (True, now_ms) to send now, or (False, wait_ms) to wait first.
        """
        rate = self.accounts[account].rates[bucket]
        ok, value, _margin = self._commit(
            keys=[*self._budget_keys(account, bucket), self.keys.margin],
            args=[
                member,
                rate.count,
                rate.period_ms,
                self.margin_floor_ms,
                self.margin_ceiling_ms,
                STATS_TTL_S,
            ],
        )
        return bool(ok), int(value)

    def give_back(self, account: str, bucket: Bucket, member: str) -> None:
        """Return a turn that was not used: its slot is free again, for the next in line."""
        schedule = self.keys.schedule(self.accounts[account].fingerprint, bucket)
        ready, _, _, active = self.room_keys(account, bucket)
        self._give_back(
            keys=[schedule, ready, active, self.keys.wake],
            args=[member, budget_id(account, bucket)],
        )

    def pause(self, account: str, bucket: Bucket) -> int:
        """After a 429: hand out no turn of this budget, to any worker, for one window (ms)."""
        _, pause, stats = self._budget_keys(account, bucket)
        rate = self.accounts[account].rates[bucket]
        return int(
            self._pause(
                keys=[pause, stats, self.keys.margin],
                args=[rate.period_ms, self.margin_floor_ms, self.margin_ceiling_ms, STATS_TTL_S],
            )
        )

    def hold(self, account: str, bucket: Bucket, ms: int, why: str) -> None:
        """Hand out no turn of this budget for `ms` (a longer pause, from a 429, stays)."""
        self.client.set(self._budget_keys(account, bucket)[1], why, px=ms, nx=True)

    def hold_all(self) -> int:
        """Hand out no turn of any budget for one window (after a failover); return how many."""
        margin = self.margin_ms()
        pipe = self.client.pipeline(transaction=False)
        for account, bucket in self._budgets:
            rate = self.accounts[account].rates[bucket]
            pause = self._budget_keys(account, bucket)[1]
            pipe.set(pause, "failover", px=rate.period_ms + margin)
        pipe.execute()
        return len(self._budgets)

    def observe(self, span_ms: float) -> int:
        """Learn from one request's span, from taking its turn to its answer; return the margin."""
        return int(
            self._observe(
                keys=[self.keys.spans, self.keys.margin],
                args=[
                    max(0, round(span_ms)),
                    SPAN_SAMPLES,
                    self.margin_floor_ms,
                    self.margin_ceiling_ms,
                    MARGIN_HEADROOM,
                    MARGIN_MEMORY_S,
                ],
            )
        )

    def margin_ms(self) -> int:
        """The margin every window uses right now."""
        raw = self.client.get(self.keys.margin)
        value = int(raw) if raw is not None else self.margin_floor_ms
        return max(self.margin_floor_ms, min(self.margin_ceiling_ms, value))

    def turn(self, account: str, bucket: Bucket, member: str) -> Turn:
        """The turn a released task holds, to take just before its request."""
        return Turn(self, account, bucket, member)

    def _snapshot(self, account: str, bucket: Bucket, job: str | None) -> dict[str, Any]:
        """One pipelined read of a budget and its room."""
        schedule, pause, stats = self._budget_keys(account, bucket)
        ready, later, _, _ = self.room_keys(account, bucket)
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(schedule, 0, -1, withscores=True)
        pipe.pttl(pause)
        pipe.get(self.keys.margin)
        pipe.zcard(ready)
        pipe.zcount(ready, "-inf", f"({RANK_STRIDE}")
        pipe.zcard(later)
        pipe.hgetall(stats)
        if job is not None:
            pipe.zrank(ready, job)
            pipe.zscore(later, job)
        values = pipe.execute()
        seconds, micros = values[0]
        margin = int(values[3]) if values[3] is not None else self.margin_floor_ms
        result = {
            "now": int(seconds) * 1000 + int(micros) // 1000,
            "booked": [int(score) for _, score in values[1]],
            "paused_ms": max(0, int(values[2])),
            "margin": max(self.margin_floor_ms, min(self.margin_ceiling_ms, margin)),
            "ready": int(values[4]),
            "urgent": int(values[5]),
            "later": int(values[6]),
            "stats": values[7],
        }
        if job is not None:
            result["rank"], result["later_at"] = values[8], values[9]
        return result

    def _slot(
        self, account: str, bucket: Bucket, snap: dict[str, Any], n: int, *, urgent: bool
    ) -> int:
        rate = self.accounts[account].rates[bucket]
        now = snap["now"]
        return nth_slot(
            snap["booked"],
            now,
            rate.count,
            rate.period_ms + snap["margin"],
            now + snap["paused_ms"],
            n,
            reserve=not urgent,
        )

    def waiting(self, account: str, bucket: Bucket, job: str) -> Waiting | None:
        """Where a job waits in this budget's room, with its expected send time; None if absent."""
        if account not in self.accounts:
            return None
        snap = self._snapshot(account, bucket, job)
        if snap["rank"] is not None:
            place = int(snap["rank"]) + 1
            urgent = place <= snap["urgent"]
            eta = self._slot(account, bucket, snap, place - 1, urgent=urgent)
            return Waiting(account, bucket, place, snap["ready"], eta, snap["now"])
        if snap["later_at"] is not None:
            after_line = self._slot(account, bucket, snap, snap["ready"], urgent=False)
            eta = max(int(snap["later_at"]), after_line)
            return Waiting(account, bucket, None, snap["ready"], eta, snap["now"])
        return None

    def usage(self, account: str, bucket: Bucket) -> BucketUsage:
        """How much of the current window is spent, what waits, and when the line drains."""
        rate = self.accounts[account].rates[bucket]
        snap = self._snapshot(account, bucket, None)
        now, window = snap["now"], rate.period_ms + snap["margin"]
        drain_s = 0.0
        if snap["ready"]:
            last = self._slot(account, bucket, snap, snap["ready"] - 1, urgent=False)
            drain_s = max(0, last - now) / 1000
        return BucketUsage(
            account=account,
            bucket=bucket,
            limit=rate.count,
            period_s=rate.period_s,
            margin_ms=snap["margin"],
            used_in_window=sum(1 for t in snap["booked"] if now - window < t <= now),
            booked_ahead=sum(1 for t in snap["booked"] if t > now),
            paused_ms=snap["paused_ms"],
            waiting=snap["ready"],
            waiting_urgent=snap["urgent"],
            counting_down=snap["later"],
            drain_s=drain_s,
            sent=int(snap["stats"].get("sent", 0)),
            rate_limited=int(snap["stats"].get("rate_limited", 0)),
        )


class Turn:
    """A slot handed to one task: taken (committed) just before the request, or given back."""

    def __init__(self, scheduler: Scheduler, account: str, bucket: Bucket, member: str) -> None:
        self.scheduler = scheduler
        self.account = account
        self.bucket = bucket
        self.member = member
        self.taken = False
        self.sent_at_ms = 0  # Redis clock: when the turn was taken (the request's send time)
        self._taken_at = 0.0

    def take(
        self, *, max_hold_s: float = MAX_HOLD_S, sleep: Callable[[float], None] = time.sleep
    ) -> bool:
        """Commit the send time now, waiting (at most `max_hold_s`) while the window is full.

        False means the wait would be longer (a 429 pause), or no replica confirmed the send
        time (a failover could forget it): give the turn back and queue again.
        """
        replication = self.scheduler.replication
        if replication is not None and not replication.healthy and not replication.confirmed():
            return self._hold_for_replica()  # spend no slot while no replica answers
        held_s = 0.0
        while True:
            started = time.monotonic()
            ok, value = self.scheduler.commit(self.account, self.bucket, self.member)
            if ok:
                self.taken, self._taken_at, self.sent_at_ms = True, started, value
                if replication is not None and not replication.confirmed():
                    # The send time may be on the primary only: a failover could forget it
                    # and hand its slot out again. The slot stays spent; nothing is sent.
                    return self._hold_for_replica()
                return True
            wait_s = value / 1000
            if held_s + wait_s > max_hold_s:
                return False
            sleep(wait_s)
            held_s += wait_s

    def _hold_for_replica(self) -> bool:
        log.warning("budget.replica_unconfirmed", account=self.account, bucket=self.bucket.value)
        self.scheduler.hold(self.account, self.bucket, REPLICA_HOLD_MS, "replica")
        return False

    def request(self, call: Callable[[], T]) -> T:
        """Make the turn's exchange request; learn from its span, and pause on a 429."""
        try:
            result = call()
        except RateLimited:
            self.answered()
            self.rate_limited()
            raise
        except ExchangeError as exc:
            if exc.status_code is not None:  # a timeout or a dropped connection says nothing
                self.answered()
            raise
        self.answered()
        return result

    def answered(self) -> None:
        """The exchange answered: teach the margin how long the request was under way."""
        if self.taken:
            self.scheduler.observe((time.monotonic() - self._taken_at) * 1000)

    def give_back(self) -> None:
        """Free the slot if the turn was not taken (the job went no further)."""
        if not self.taken:
            self.scheduler.give_back(self.account, self.bucket, self.member)

    def rate_limited(self) -> None:
        """The exchange answered 429: pause this budget for every worker."""
        paused_ms = self.scheduler.pause(self.account, self.bucket)
        log.warning("budget.paused", account=self.account, bucket=self.bucket.value, ms=paused_ms)
