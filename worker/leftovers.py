"""Leftovers: work an earlier run left in Redis, said at `cancel-worker run`'s start, or dropped.

A stopped `run` can leave cancels in line and orders awaiting confirmation in a persistent
Redis. Against the real exchange they are real work and go on; against a new sandbox (it keeps
its orders in memory) they can only end FAILED(order_not_found), after spending the new
sandbox's budgets. `run` says how many wait, on which account, and about how long they will
hold its budgets; `run --drop-leftovers` ends them FAILED with error code `dropped` first
(never a state the exchange did not show) and takes them out of every line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from worker.cancellation import failed
from worker.models import (
    BatchState,
    Bucket,
    CancelRecord,
    ErrorCode,
    OrderState,
    is_batch_id,
)
from worker.progress import duration
from worker.rates import Rate
from worker.services import Services

SCAN_LIMIT = 1_000_000  # watched ids read at most (the sweeper's set holds every unfinished one)
DROPPED = "dropped at start by `cancel-worker run --drop-leftovers` (left by an earlier run)"


@dataclass(frozen=True)
class AccountLeftovers:
    """What an earlier run left waiting on one account."""

    account: str
    to_cancel: int  # records still needing their DELETE
    to_confirm: int  # accepted or unconfirmed: status reads and list passes to come
    batches: int  # cancel-alls not done
    hold_s: float  # about how long they keep its budgets busy at the configured rates

    def text(self) -> str:
        """One line for `run`'s banner."""
        parts = [f"{self.to_cancel} to cancel", f"{self.to_confirm} to confirm"]
        if self.batches:
            parts.append(f"{self.batches} cancel-all(s)")
        return (
            f"account {self.account}: {', '.join(parts)}, holding its budgets "
            f"~{duration(self.hold_s)}"
        )


def find(services: Services) -> list[AccountLeftovers]:
    """Unfinished records and batches by account, oldest watch first (none: an empty list)."""
    ids = [str(i) for i in services.redis.zrange(services.keys.due, 0, SCAN_LIMIT - 1)]
    orders = [r for r in services.store.get_many(i for i in ids if not is_batch_id(i)) if r]
    batches = [services.batches.get(i) for i in ids if is_batch_id(i)]
    by_account: dict[str, list[CancelRecord]] = {}
    for record in orders:
        if not record.is_final:
            by_account.setdefault(record.account, []).append(record)
    open_batches: dict[str, int] = {}
    for batch in batches:
        if batch is not None and not batch.is_final:
            open_batches[batch.account] = open_batches.get(batch.account, 0) + 1
    found = []
    for account in sorted(set(by_account) | set(open_batches)):
        records = by_account.get(account, [])
        to_cancel = sum(1 for r in records if r.state is OrderState.QUEUED)
        rates = _rates(services, account)
        found.append(
            AccountLeftovers(
                account=account,
                to_cancel=to_cancel,
                to_confirm=len(records) - to_cancel,
                batches=open_batches.get(account, 0),
                hold_s=hold_s(to_cancel, len(records) - to_cancel, rates),
            )
        )
    return found


def hold_s(to_cancel: int, to_confirm: int, rates: Mapping[Bucket, Rate]) -> float:
    """How long a budget stays busy with this much work, at least: whole windows of the
    cancel budget for the DELETEs, of the status budget for one read per order."""
    windows = [
        math.ceil(count / rates[bucket].count) * rates[bucket].period_s if count else 0.0
        for bucket, count in ((Bucket.CANCEL, to_cancel), (Bucket.STATUS, to_confirm))
    ]
    return max(windows)


def drop(services: Services) -> tuple[int, int]:
    """End every unfinished record FAILED(dropped) and every open batch FAILED; return how
    many orders and batches were dropped. Their places in lines, watches and owners go too."""
    ids = [str(i) for i in services.redis.zrange(services.keys.due, 0, SCAN_LIMIT - 1)]
    dropped, batches = 0, 0
    for order_id in ids:
        if is_batch_id(order_id):
            ended = services.batches.transition(
                order_id,
                BatchState.FAILED,
                in_flight=False,
                error={"code": ErrorCode.DROPPED.value, "message": DROPPED},
            )
            if ended is not None and (ended.error or {}).get("code") == ErrorCode.DROPPED:
                batches += 1
                services.scheduler.forget(ended.account, Bucket.CANCEL_ALL, [order_id])
            services.store.unschedule([order_id])
            continue

        def change(record: CancelRecord) -> CancelRecord | None:
            if record.is_final:
                return None
            return failed(record, ErrorCode.DROPPED, DROPPED).record

        record = services.store.update(order_id, change, services.scheduler)
        if record is not None and record.error and record.error["code"] == ErrorCode.DROPPED:
            dropped += 1
        elif record is None:
            services.store.unschedule([order_id])
    return dropped, batches


def _rates(services: Services, account: str) -> Mapping[Bucket, Rate]:
    """The account's budgets as this run configures them (the global ones if it does not)."""
    found = services.settings.accounts.get(account)
    return found.rates if found is not None else services.settings.rates
