"""Confirmation through the order lists: many orders settled per request.

An order whose cancel the exchange accepted waits for its final state. One Closed Orders
call returns up to 50 orders with their final status, where a status read returns one, and
it spends a budget of its own. So while several orders of an account await confirmation,
they are offered first to its list pass (a `confirm` job in the closed-orders line, paced
one slot interval of that budget apart so a trickle of orders cannot spend it in a burst),
and a status read waits behind each for whatever the lists cannot settle: an order created
outside their 7-day window, one beyond the pages read, a list call that failed. One or two
orders get a status read each straight away: as cheap, and sooner. The pass narrows the list
to one symbol and to the orders' creation times where it can, pages by `cursor` (dropping the
repeated boundary order), and settles only orders it lists as final: absence settles nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from worker.cancellation import still_pending
from worker.errors import AuthError, ExchangeError
from worker.exchange import LIST_LIMIT, LIST_WINDOW_MS
from worker.models import DEFAULT_EXCHANGE, EXCHANGE_TERMINAL, Bucket, CancelRecord, Priority
from worker.records import now_ms
from worker.scheduler import Scheduler, Turn
from worker.services import Services

CONFIRM_JOB = "confirm"  # the list pass of one account; `confirm@<to_time>` continues it
LIST_MIN_ORDERS = 3  # fewer awaiting confirmation: a status read each instead
LIST_FIRST_S = 3.0  # a status read waits at least this long behind the pass it backs up
LIST_LAST_S = 30.0  # and at most this long, however slow the closed-orders budget
MAX_ORDERS_PER_PASS = 500  # orders one pass looks for, at most
MAX_PAGES_PER_PASS = 4  # pages one pass reads before the status reads take over
CLOCK_SKEW_MS = 5000  # our clock and the exchange's may differ this much (its advice)
RETRY_AFTER_FAULT_S = 1.0  # a pass whose list call failed looks again after this

log = structlog.get_logger(__name__)


def await_confirmation(
    services: Services,
    scheduler: Scheduler,
    record: CancelRecord,
    delay_s: float,
    *,
    looked: bool = False,
) -> None:
    """Queue an accepted order's confirmation: a list pass first, a status read behind it.

    An order the lists just looked for (`looked`) is due again after `delay_s`; otherwise an
    earlier due time it already has is kept.
    """
    await_many(services, scheduler, [record], delay_s, looked=looked)


def await_many(
    services: Services,
    scheduler: Scheduler,
    records: list[CancelRecord],
    delay_s: float,
    *,
    looked: bool = False,
) -> None:
    """`await_confirmation` for orders of one account, in a few calls whatever their number."""
    if not records:
        return
    account = records[0].account
    urgent = any(r.priority == Priority.URGENT.value for r in records)
    priority = Priority.URGENT if urgent else Priority.NORMAL
    key = services.keys.confirm(account)
    awaiting = int(services.redis.zcard(key))
    due = now_ms() + int(delay_s * 1000)
    services.redis.zadd(key, {r.order_id: due for r in records}, lt=not looked)
    status_delay_s = delay_s
    if awaiting + len(records) >= LIST_MIN_ORDERS:
        join_pass(services, scheduler, account, priority, delay_s)
        behind_s = min(LIST_LAST_S, max(LIST_FIRST_S, 2 * pass_interval_s(scheduler, account)))
        status_delay_s = delay_s + behind_s
    for rank in (Priority.URGENT, Priority.NORMAL):
        jobs = [r.order_id for r in records if Priority(r.priority) is rank]
        scheduler.join(account, Bucket.STATUS, jobs, priority=rank, delay_s=status_delay_s)


def pass_interval_s(scheduler: Scheduler, account: str) -> float:
    """How far apart list passes go: one slot interval of the closed-orders budget."""
    info = scheduler.accounts.get(account)
    return info.rates[Bucket.CLOSED_ORDERS].interval_s if info else LIST_FIRST_S


def join_pass(
    services: Services, scheduler: Scheduler, account: str, priority: Priority, delay_s: float
) -> None:
    """Queue the account's next list pass: after `delay_s`, and a slot interval after the last."""
    paced_s = max(0, int(services.redis.pttl(services.keys.confirm_pass(account)))) / 1000
    wait_s = max(delay_s, paced_s)
    scheduler.join(account, Bucket.CLOSED_ORDERS, [CONFIRM_JOB], priority=priority, delay_s=wait_s)


@dataclass(frozen=True)
class Scope:
    """What one list call asks for: a symbol if all share one, and a creation window."""

    symbol: str | None
    from_time: int
    to_time: int


def scope_of(services: Services, records: list[CancelRecord]) -> Scope:
    """The narrowest list query that can contain every one of these orders.

    An order's creation time comes from the exchange's snapshot; an order a cancel-all
    named has none yet, but it was created before its record was.
    """
    symbols: set[str | None] = set()
    created: list[int] = []
    latest: list[int] = []
    batches = {r.batch_id for r in records if r.batch_id and not r.order}
    batch_symbol = {
        b: batch.symbol for b in batches if (batch := services.batches.get(b)) is not None
    }
    for record in records:
        order = record.order or {}
        created_at = order.get("created_at")
        if isinstance(created_at, int):
            created.append(created_at)
            latest.append(created_at)
        else:
            latest.append(record.requested_at)
        symbol = order.get("symbol")
        if symbol is None and record.batch_id:
            symbol = batch_symbol.get(record.batch_id)
        symbols.add(symbol if isinstance(symbol, str) else None)
    to_time = max(latest) + CLOCK_SKEW_MS
    earliest = to_time - LIST_WINDOW_MS + 1
    if len(created) == len(records):
        earliest = max(earliest, min(created) - CLOCK_SKEW_MS)
    only = next(iter(symbols)) if len(symbols) == 1 else None
    return Scope(only, earliest, to_time)


def confirm_turn(services: Services, account: str, job: str, turn: Turn) -> None:
    """Use a closed-orders turn: settle every due order of the account the list shows final."""
    scheduler = services.scheduler
    key = services.keys.confirm(account)
    due = services.redis.zrangebyscore(key, "-inf", now_ms(), 0, MAX_ORDERS_PER_PASS)
    ids = [str(order_id) for order_id in due]
    records = {r.order_id: r for r in services.store.get_many(ids) if r is not None}
    for order_id in ids:
        if order_id not in records or records[order_id].is_final:
            services.redis.zrem(key, order_id)
    wanted = {i: r for i, r in records.items() if not r.is_final}
    if not wanted:
        _again(services, scheduler, account, None)
        return
    scope = scope_of(services, list(wanted.values()))
    paging = parse_page(job)
    to_time = paging[0] if paging else scope.to_time
    exchange = next(iter(wanted.values())).exchange or DEFAULT_EXCHANGE
    urgent = any(r.priority == Priority.URGENT.value for r in wanted.values())
    if "@" not in job and not services.redis.set(
        services.keys.confirm_pass(account),
        now_ms(),
        nx=True,
        px=max(1, int(pass_interval_s(scheduler, account) * 1000)),
    ):  # another new pass began less than an interval ago (joined before it claimed this)
        _again(services, scheduler, account, urgent)
        return
    if not turn.take():
        _again(services, scheduler, account, urgent)
        return
    client = services.exchange(account)
    try:
        page = turn.request(
            lambda: client.list_orders(
                closed=True,
                exchange=exchange,
                symbol=scope.symbol,
                from_time=scope.from_time,
                to_time=to_time,
            )
        )
    except ExchangeError as exc:
        log_call = log.error if isinstance(exc, AuthError) else log.warning
        log_call("confirm.list_failed", account=account, error=str(exc))
        _again(services, scheduler, account, urgent, delay_s=RETRY_AFTER_FAULT_S)
        return
    settled: set[str] = set()
    for order in page.orders:
        order_id = str(order["order_id"]).lower()
        if order_id in wanted and order["status"] in EXCHANGE_TERMINAL:
            services.store.settle(order_id, order)
            settled.add(order_id)
    log.info("confirm.pass", account=account, looked_for=len(wanted), settled=len(settled))
    remaining = len(wanted) - len(settled)
    pages = paging[1] if paging else 1
    full = len(page.orders) >= LIST_LIMIT and page.cursor is not None
    if remaining and full and pages < MAX_PAGES_PER_PASS:
        assert page.cursor is not None
        # The boundary order comes again (to_time is inclusive); if the whole page shares
        # one creation time, step past it rather than read the same page forever.
        same = all(o.get("created_at") == page.cursor for o in page.orders)
        next_to = page.cursor - 1 if same else page.cursor
        scheduler.join(
            account,
            Bucket.CLOSED_ORDERS,
            [f"{CONFIRM_JOB}@{next_to}#{pages + 1}"],
            priority=Priority.URGENT if urgent else Priority.NORMAL,
        )
        return
    for order_id, record in wanted.items():
        if order_id not in settled:
            # Not final yet: counts as a look, like a status read (UNCONFIRMED when spent).
            step = still_pending(services, record)
            await_confirmation(
                services, scheduler, step.record or record, step.delay_s, looked=True
            )
    _again(services, scheduler, account, None)


def parse_page(job: str) -> tuple[int, int] | None:
    """(to_time, page number) of a pass continued past its first page, `confirm@<ms>#<n>`."""
    if "@" not in job:
        return None
    to_time, _, page = job.split("@", 1)[1].partition("#")
    return int(to_time), int(page or 2)


def _again(
    services: Services,
    scheduler: Scheduler,
    account: str,
    urgent: bool | None,
    *,
    delay_s: float | None = None,
) -> None:
    """Queue the account's next list pass for when its soonest order is due (if any is)."""
    first = services.redis.zrange(services.keys.confirm(account), 0, 0, withscores=True)
    if not first:
        return
    wait_s = max(0.0, (float(first[0][1]) - now_ms()) / 1000)
    if delay_s is not None:
        wait_s = max(wait_s, delay_s)
    priority = Priority.URGENT if urgent else Priority.NORMAL
    join_pass(services, scheduler, account, priority, wait_s)
