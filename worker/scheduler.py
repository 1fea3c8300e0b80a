"""The budget scheduler: which job takes each send slot of each (account, budget).

Why not a limiter that books a send time per caller and makes it sleep: a caller that books a
slot far ahead holds a worker thread the whole time, so an urgent cancel or another
account's cancel waits for a thread as well as for budget. Instead:

- **Lines.** A job (an order to cancel, an order to confirm, a cancel-all) waits in Redis,
  in the line of its (account, budget): urgent before normal, then oldest first, and
  between owners (strategies sharing the account) by turns, weighted by their shares. A job
  that may not go before a time (a poll's countdown) waits until then. Waiting holds no
  thread and no broker message. worker/lua/lines.lua keeps the order; only this module's
  methods and scripts that use lines.lua change a line.
- **Hand-outs.** A turn is a slot of the budget given to the head of its line, booked in
  the budget's schedule and published as one Celery task. When the budget is free, the
  request itself hands its turn out (worker.producer), so a cancel costs one broker hop.
  Otherwise dispatchers (a thread in every worker, worker.dispatcher) call `release`, which
  looks only at lines the active index says are due: its cost grows with the work waiting,
  not with the accounts served.
- **Commit at send time.** Just before its request a task commits its send time (Redis
  `TIME`, one clock for every host): refused while the window `(now - period - margin,
  now]` already holds `limit` other sends. Every commit checks the window behind it, and
  commits happen in time order, so no window of `period + margin` ever holds `limit + 1`,
  whatever happened between hand-out and send (worker/lua/budget.lua).
- **A margin learned from the network.** A request reaches the exchange somewhere between
  its commit and its answer, so that span bounds how far its arrival can drift; the margin
  is the largest recent span with headroom, within a floor and a ceiling.
- **Urgent first, with a reserve.** A normal job never takes a window's last free slot
  unless that window frees again within one slot interval (period / limit): an urgent job
  waits at most one interval, however long the normal backlog.
- A 429 pauses the budget for one window for every worker.

Read-side estimates (place in line, expected send, what a budget has used) are in
worker.estimates; the task side of a turn is worker.turns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from worker.accounts import AccountInfo
from worker.keys import Keys
from worker.learning import Learning
from worker.models import Bucket, Priority
from worker.scripts import script

if TYPE_CHECKING:
    from worker.connection import Replication

RELEASE_LEAD_MS = 5  # a turn may be handed out this early, to cover the task's pick-up
PROMOTE_PER_CALL = 500  # countdowns ended → ready, per line per hand-out, at most
REPLICA_HOLD_MS = 1000  # a budget waits this long after no replica confirmed a send time
SPAN_SAMPLES = 64  # recent request spans the margin is learned from (fleet-wide)
MARGIN_HEADROOM = 1.2  # margin = largest recent span x this, within floor and ceiling
MARGIN_MEMORY_S = 600  # spans older than this are forgotten: the margin falls back to its floor
STATS_TTL_S = 7 * 24 * 3600
#: Budgets whose jobs (order or batch ids) the sweeper watches while their turn is under way.
WATCHED_BUCKETS = frozenset({Bucket.CANCEL, Bucket.STATUS, Bucket.CANCEL_ALL})


def budget_id(account: str, bucket: Bucket) -> str:
    """How the active index names one (account, bucket) line."""
    return f"{account}|{bucket.value}"


def shares_arg(shares: Mapping[str, int]) -> str:
    """Owners' shares as lines.lua reads them: `name=weight,...`."""
    return ",".join(f"{owner}={weight}" for owner, weight in sorted(shares.items()))


@dataclass(frozen=True)
class Line:
    """One (account, budget) line as scripts take it: 4 keys, then 3 arguments."""

    account: str
    bucket: Bucket
    keys: tuple[str, str, str, str]  # owners, later, jobs, clock
    args: tuple[str, str, str]  # budget id, owners' queue prefix, shares
    active: str  # the index of lines due for a look, which every line's script keeps

    def queue(self, owner: str) -> str:
        """The key of one owner's queue in this line."""
        return self.args[1] + owner


@dataclass(frozen=True)
class Released:
    """A turn handed out: `job` may use the budget's slot booked as `member`."""

    account: str
    bucket: Bucket
    job: str
    member: str
    slot_ms: int


class Scheduler:
    """Lines, turns and budgets of the given accounts; every change is one Lua call."""

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
        self._join = script(client, "join")
        self._upgrade = script(client, "upgrade")
        self._forget = script(client, "forget")
        self._release = script(client, "release")
        self._commit = script(client, "commit")
        self._pause = script(client, "pause")
        self._give_back = script(client, "give_back")
        self._observe = script(client, "observe")
        self._served = {
            budget_id(name, bucket): (name, bucket) for name in self.accounts for bucket in Bucket
        }
        self._lines: dict[tuple[str, Bucket], Line] = {}

    # --- lines -----------------------------------------------------------------------------

    def line(self, account: str, bucket: Bucket) -> Line:
        """The line of one (account, budget); the account's owners' shares if it is known."""
        line = self._lines.get((account, bucket))
        if line is None:
            line = self._lines[(account, bucket)] = self._line(account, bucket)
        return line

    def _line(self, account: str, bucket: Bucket) -> Line:
        keys = self.keys
        info = self.accounts.get(account)
        return Line(
            account,
            bucket,
            (
                keys.line_owners(account, bucket),
                keys.line_later(account, bucket),
                keys.line_jobs(account, bucket),
                keys.line_clock(account, bucket),
            ),
            (
                budget_id(account, bucket),
                keys.line_queue(account, bucket, ""),
                shares_arg(info.shares) if info is not None else "",
            ),
            keys.active,
        )

    def join(
        self,
        account: str,
        bucket: Bucket,
        jobs: Iterable[str],
        *,
        priority: Priority = Priority.NORMAL,
        delay_s: float = 0.0,
        since_ms: int | None = None,
        owner: str = "",
    ) -> None:
        """Queue jobs for a turn of this budget (after `delay_s`), most urgent first.

        A job ordered by `since_ms` (a cancel: its request time) keeps that place; without
        it, by when it becomes ready.
        """
        line = self.line(account, bucket)
        args = [
            *line.args,
            priority.rank,
            max(0, round(delay_s * 1000)),
            "" if since_ms is None else since_ms,
            owner,
            *jobs,
        ]
        if len(args) > 7:
            keys = [*line.keys, line.active, self.keys.wake]
            self._join(keys=keys, args=args)

    def upgrade(self, account: str, bucket: Bucket, jobs: Sequence[str], priority: Priority) -> int:
        """Move jobs already waiting to `priority` if it is more urgent; return how many."""
        if not jobs:
            return 0
        line = self.line(account, bucket)
        keys = [*line.keys, line.active, self.keys.wake]
        return int(self._upgrade(keys=keys, args=[*line.args, priority.rank, *jobs]))

    def forget(self, account: str, bucket: Bucket, jobs: Sequence[str]) -> int:
        """Take jobs out of this line wherever they wait; return how many were there."""
        if not jobs:
            return 0
        line = self.line(account, bucket)
        return int(self._forget(keys=[*line.keys, line.active], args=[*line.args, *jobs]))

    def waiting(self, lines: Sequence[tuple[str, Bucket, str]]) -> list[bool]:
        """For each (account, budget, job): whether the job waits in that line (one trip)."""
        pipe = self.client.pipeline(transaction=False)
        for account, bucket, job in lines:
            pipe.hexists(self.keys.line_jobs(account, bucket), job)
        return [bool(found) for found in pipe.execute()]

    def look_now(self) -> None:
        """Every line of the accounts served is due for a look now (a dispatcher starting:
        a look time left by an earlier fleet, another key's window, must not hold a line)."""
        pipe = self.client.pipeline(transaction=False)
        for budget in self._served:
            pipe.zadd(self.keys.active, {budget: 0}, xx=True)
        pipe.execute()

    # --- hand-outs -------------------------------------------------------------------------

    def release(self) -> tuple[list[Released], float | None]:
        """Hand out every free slot of the lines due for a look; return the turns and the
        next wait in seconds (None when no line of these accounts waits).

        One read of the active index, then one call for the lines it says are due, so the
        cost follows the work waiting, not the number of accounts.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(self.keys.active, 0, -1, withscores=True)
        (seconds, micros), active = pipe.execute()
        now = int(seconds) * 1000 + int(micros) // 1000
        due: list[tuple[str, Bucket]] = []
        waits: list[float] = []
        for budget, look_at in active:
            served = self._served.get(budget)
            if served is None:
                continue  # another fleet's line: left alone
            if look_at <= now + RELEASE_LEAD_MS:
                due.append(served)
            else:
                waits.append((look_at - now) / 1000)
        turns: list[Released] = []
        if due:
            turns, wait_s = self._release_lines(due)
            if wait_s is not None:
                waits.append(wait_s)
        return turns, min(waits) if waits else None

    def _release_lines(
        self, due: Sequence[tuple[str, Bucket]]
    ) -> tuple[list[Released], float | None]:
        keys = [self.keys.due, self.keys.margin, self.keys.active]
        args: list[Any] = [
            self.margin_floor_ms,
            self.margin_ceiling_ms,
            RELEASE_LEAD_MS,
            self.watch_ms,
            PROMOTE_PER_CALL,
        ]
        for account, bucket in due:
            line = self.line(account, bucket)
            schedule, pause, _ = self.budget_keys(account, bucket)
            rate = self.accounts[account].rates[bucket]
            keys += [*line.keys, schedule, pause]
            watched = "1" if bucket in WATCHED_BUCKETS else "0"
            args += [*line.args, rate.count, rate.period_ms, watched]
        reply = self._release(keys=keys, args=args)
        turns = []
        for i in range(1, len(reply), 4):
            account, bucket = due[int(reply[i]) - 1]
            turns.append(
                Released(account, bucket, str(reply[i + 1]), str(reply[i + 2]), int(reply[i + 3]))
            )
        next_ms = int(reply[0])
        return turns, None if next_ms < 0 else next_ms / 1000

    # --- budgets ---------------------------------------------------------------------------

    def budget_keys(self, account: str, bucket: Bucket) -> tuple[str, str, str]:
        """Schedule, pause and stats keys of a budget (keyed by its API key's fingerprint)."""
        fingerprint = self.accounts[account].fingerprint
        keys = self.keys
        return (
            keys.schedule(fingerprint, bucket),
            keys.pause(fingerprint, bucket),
            keys.bucket_stats(fingerprint, bucket),
        )

    def budget_spec(self, account: str, bucket: Bucket) -> tuple[list[str], list[int]]:
        """A budget as budget.lua's budget_at reads it: [schedule, pause, margin] and [limit,
        period ms, margin floor, ceiling]; the second is [] for an account this scheduler
        does not know (and the keys name no budget)."""
        if account not in self.accounts:
            nowhere = self.keys.schedule("-", bucket)
            return [nowhere, nowhere, self.keys.margin], []
        schedule, pause, _ = self.budget_keys(account, bucket)
        rate = self.accounts[account].rates[bucket]
        spec = [rate.count, rate.period_ms, self.margin_floor_ms, self.margin_ceiling_ms]
        return [schedule, pause, self.keys.margin], spec

    def commit_args(self, account: str, bucket: Bucket, member: str) -> tuple[list[str], list[Any]]:
        """Keys and arguments of a commit (commit.lua; take.lua begins with the same)."""
        rate = self.accounts[account].rates[bucket]
        keys = [*self.budget_keys(account, bucket), self.keys.margin]
        args = [
            member,
            rate.count,
            rate.period_ms,
            self.margin_floor_ms,
            self.margin_ceiling_ms,
            STATS_TTL_S,
        ]
        return keys, args

    def commit(self, account: str, bucket: Bucket, member: str) -> tuple[bool, int]:
        """Make this turn's send time now if the window allows.

        Returns (True, now_ms) to send now, or (False, wait_ms) to wait first.
        """
        keys, args = self.commit_args(account, bucket, member)
        ok, value, _margin = self._commit(keys=keys, args=args)
        return bool(ok), int(value)

    def give_back(self, account: str, bucket: Bucket, member: str) -> None:
        """Return a turn that was not used: its slot is free again, for the next in line."""
        schedule, _, _ = self.budget_keys(account, bucket)
        line = self.line(account, bucket)
        self._give_back(
            keys=[schedule, line.keys[0], self.keys.active, self.keys.wake],
            args=[member, budget_id(account, bucket)],
        )

    def pause(self, account: str, bucket: Bucket) -> int:
        """After a 429: hand out no turn of this budget, to any worker, for one window (ms)."""
        _, pause, stats = self.budget_keys(account, bucket)
        rate = self.accounts[account].rates[bucket]
        return int(
            self._pause(
                keys=[pause, stats, self.keys.margin],
                args=[rate.period_ms, self.margin_floor_ms, self.margin_ceiling_ms, STATS_TTL_S],
            )
        )

    def hold(self, account: str, bucket: Bucket, ms: int, why: str) -> None:
        """Hand out no turn of this budget for `ms` (a longer pause, from a 429, stays)."""
        self.client.set(self.budget_keys(account, bucket)[1], why, px=ms, nx=True)

    def hold_all(self) -> int:
        """Hand out no turn of any budget for one window (after a failover); return how many."""
        margin = self.margin_ms()
        pipe = self.client.pipeline(transaction=False)
        for account, bucket in self._served.values():
            rate = self.accounts[account].rates[bucket]
            pause = self.budget_keys(account, bucket)[1]
            pipe.set(pause, "failover", px=rate.period_ms + margin)
        pipe.execute()
        return len(self._served)

    def observe(self, span_ms: float) -> int:
        """Learn from one request's span, from taking its turn to its answer; return the
        margin."""
        learning = Learning(
            SPAN_SAMPLES,
            1.0,
            MARGIN_HEADROOM,
            self.margin_floor_ms,
            self.margin_ceiling_ms,
            MARGIN_MEMORY_S,
        )
        keys = [self.keys.spans, self.keys.margin]
        return int(self._observe(keys=keys, args=learning.args(span_ms)))

    def margin_ms(self) -> int:
        """The margin every window uses right now."""
        raw = self.client.get(self.keys.margin)
        value = int(raw) if raw is not None else self.margin_floor_ms
        return max(self.margin_floor_ms, min(self.margin_ceiling_ms, value))
