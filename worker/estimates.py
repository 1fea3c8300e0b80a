"""How long: where a job waits, when its turn is expected, what a budget has used.

Read-only, for `status`, `limits`, `cancel --wait` and metrics. One script (estimate.lua)
reads a line and its budget and works the answer out with the same slot arithmetic and the
same order of owners that hand-outs use, so an estimate cannot drift from what the
scheduler does. An estimate is never earlier than the line's next look (a dispatcher's),
nor than the end of a pause: work that cannot go now never says "~0 s".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.models import Bucket
from worker.scheduler import Scheduler
from worker.scripts import script

ESTIMATE_SIMULATED_SLOTS = 10_000  # past this, slot estimates are extrapolated


@dataclass(frozen=True)
class Waiting:
    """Where a job waits: its place in its line and when its turn is expected."""

    account: str
    bucket: Bucket
    place: int | None  # 1 = next; None while its countdown runs (not yet in line)
    ready: int  # jobs in line in this line
    eta_ms: int  # expected send time, Unix ms (Redis clock)
    now_ms: int


@dataclass(frozen=True)
class BucketUsage:
    """A snapshot of one budget and its line, for `cancel-worker limits` and metrics."""

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
    counting_down: int  # waiting for a countdown before they join
    drain_s: float  # until the last job in line is expected to go
    sent: int
    rate_limited: int
    #: Jobs in line per owner ("" for jobs with none): (ready, urgent).
    owners: dict[str, tuple[int, int]] = field(default_factory=dict)


class Estimates:
    """Estimates over the lines and budgets of the accounts a scheduler knows."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._estimate = script(scheduler.client, "estimate")

    def _read(self, account: str, bucket: Bucket, job: str) -> list[int | str]:
        scheduler = self.scheduler
        line = scheduler.line(account, bucket)
        schedule, pause, stats = scheduler.budget_keys(account, bucket)
        rate = scheduler.accounts[account].rates[bucket]
        reply = self._estimate(
            keys=[*line.keys, schedule, pause, scheduler.keys.margin, stats, line.active],
            args=[
                *line.args,
                rate.count,
                rate.period_ms,
                scheduler.margin_floor_ms,
                scheduler.margin_ceiling_ms,
                job,
                ESTIMATE_SIMULATED_SLOTS,
            ],
        )
        return list(reply)

    def waiting(self, account: str, bucket: Bucket, job: str) -> Waiting | None:
        """Where a job waits in this line, with its expected send time; None if absent."""
        if account not in self.scheduler.accounts:
            return None
        reply = self._read(account, bucket, job)
        now, ready, place, eta = int(reply[0]), int(reply[7]), int(reply[11]), int(reply[12])
        if eta < 0:
            return None
        return Waiting(account, bucket, place or None, ready, eta, now)

    def usage(self, account: str, bucket: Bucket) -> BucketUsage:
        """How much of the current window is spent, what waits (per owner), and when the
        line drains."""
        rate = self.scheduler.accounts[account].rates[bucket]
        reply = self._read(account, bucket, "")
        numbers = [int(value) for value in reply[:13]]
        owners = {
            str(reply[i]): (int(reply[i + 1]), int(reply[i + 2])) for i in range(13, len(reply), 3)
        }
        return BucketUsage(
            account=account,
            bucket=bucket,
            limit=rate.count,
            period_s=rate.period_s,
            margin_ms=numbers[1],
            used_in_window=numbers[3],
            booked_ahead=numbers[4],
            paused_ms=numbers[2],
            waiting=numbers[7],
            waiting_urgent=numbers[8],
            counting_down=numbers[9],
            drain_s=numbers[10] / 1000,
            sent=numbers[5],
            rate_limited=numbers[6],
            owners=owners,
        )
