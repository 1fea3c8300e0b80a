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
from typing import TYPE_CHECKING, Any

import structlog

from worker.cancellation import settled as settled_decision
from worker.cancellation import still_pending
from worker.errors import AuthError, ExchangeError
from worker.exchange import LIST_LIMIT, LIST_WINDOW_MS
from worker.models import DEFAULT_EXCHANGE, EXCHANGE_TERMINAL, Bucket, CancelRecord, Priority
from worker.records import Next, now_ms
from worker.scheduler import Scheduler
from worker.scripts import script
from worker.services import Services
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.turns import Turn

CLOSED = Bucket.CLOSED_ORDERS  # the list a pass reads: orders just final are there
CONFIRM_JOB = "confirm"  # the list pass of one account; `confirm@<to_time>` continues it
LIST_MIN_ORDERS = 3  # fewer awaiting confirmation: a status read each instead
#: A status read waits twice the closed-orders slot interval behind the pass it backs up
#: (6 s at the real 20/60s), at least long enough for a pass's few page reads, at most 30 s.
LIST_FIRST_S = 0.5
LIST_LAST_S = 30.0  # and at most this long, however slow the closed-orders budget
MAX_ORDERS_PER_PASS = 500  # orders one pass looks for, at most
MAX_PAGES_PER_PASS = 4  # pages one pass reads before the status reads take over
CLOCK_SKEW_MS = 5000  # our clock and the exchange's may differ this much (its advice)
RETRY_AFTER_FAULT_S = 1.0  # a pass whose list call failed looks again after this
#: The first status read of an accepted order goes when the exchange usually confirms one:
#: the largest of the fleet's recent confirm times with headroom, within these bounds (the
#: configured initial poll delay until there is history).
CONFIRM_FLOOR_MS = 20
CONFIRM_CEILING_MS = 5000
CONFIRM_HEADROOM = 1.2
CONFIRM_SAMPLES = 32
CONFIRM_MEMORY_S = 3600

log = structlog.get_logger(__name__)


def behind_ms(scheduler: Scheduler, account: str) -> int:
    """How long a status read waits behind the list pass it backs up."""
    return round(
        min(LIST_LAST_S, max(LIST_FIRST_S, 2 * pass_interval_s(scheduler, account))) * 1000
    )


def confirm_step(
    record: CancelRecord,
    delay_ms: int,
    scheduler: Scheduler,
    settings: Settings,
    *,
    looked: bool = False,
) -> Next:
    """The confirmation an accepted order joins (store.lua / confirm.lua carry it out): due
    after `delay_ms` (-1: when the exchange usually confirms), offered to the account's list
    pass when enough wait, with a status read behind."""
    return Next(
        "confirm",
        Priority(record.priority),
        record.owner or "",
        delay_ms,
        looked=looked,
        confirm={
            "job": CONFIRM_JOB,
            "min_orders": LIST_MIN_ORDERS,
            "behind_ms": behind_ms(scheduler, record.account),
            "floor_ms": CONFIRM_FLOOR_MS,
            "ceiling_ms": CONFIRM_CEILING_MS,
            "default_ms": round(settings.poll_initial_delay_s * 1000),
            **(
                {"lists": lists}
                if (lists := scheduler.budget_spec(record.account, CLOSED)[1])
                else {}
            ),
        },
    )


def await_many(
    services: Services,
    scheduler: Scheduler,
    records: list[CancelRecord],
    delay_s: float,
) -> None:
    """Accepted orders of one account await their final state (a list pass first when enough
    wait, a status read behind each), in one call whatever their number."""
    if not records:
        return
    account = records[0].account
    keys = services.keys
    closed = scheduler.line(account, Bucket.CLOSED_ORDERS)
    status = scheduler.line(account, Bucket.STATUS)
    lists = scheduler.budget_spec(account, CLOSED)
    args: list[Any] = [
        *closed.args,
        *status.args,
        CONFIRM_JOB,
        LIST_MIN_ORDERS,
        behind_ms(scheduler, account),
        round(delay_s * 1000),
        "0",
        ",".join(map(str, lists[1])),
    ]
    for record in records:
        args += [record.order_id, Priority(record.priority).rank, record.owner or ""]
    script(services.redis, "await")(
        keys=[
            keys.confirm(account),
            keys.confirm_pass(account),
            *closed.keys,
            *status.keys,
            status.active,
            keys.wake,
            *lists[0],
        ],
        args=args,
    )


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
    store = services.store
    for order in page.orders:
        order_id = str(order["order_id"]).lower()
        if order_id in wanted and order["status"] in EXCHANGE_TERMINAL:
            store.update(order_id, lambda r, o=order: settled_decision(r, o).record, scheduler)
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
    settings = services.settings
    for order_id in wanted:
        if order_id not in settled:
            # Not final yet: counts as a look, like a status read (UNCONFIRMED when spent).
            store.update(order_id, lambda r: _looked(r, settings, scheduler), scheduler)
    _again(services, scheduler, account, None)


def _looked(
    record: CancelRecord, settings: Settings, scheduler: Scheduler
) -> tuple[CancelRecord | None, Next | None]:
    """An order a pass looked for and did not find final: one more look, due again later."""
    decision = still_pending(record, settings, now_ms())
    after = decision.record or record
    delay_ms = round((decision.delay_s or 0.0) * 1000)
    return decision.record, confirm_step(after, delay_ms, scheduler, settings, looked=True)


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
