"""The per-order rules: what each exchange answer means for a record and its next step.

Pure functions: a record and an answer in, the record to store and the line to join next
out; no Redis, no clock but the `now_ms` given. worker.turns applies a decision in one write
(worker.records). The exchange facts behind them: docs/exchange.md, "What each answer means
here" and "Statuses".

After a DELETE (the record is marked "DELETE under way", one more attempt):

| answer                       | record                                  | next               |
|------------------------------|-----------------------------------------|--------------------|
| 200, terminal status         | that state, snapshot                    | done               |
| 200, CANCELLATION_RAISED     | CANCELLATION_RAISED, accepted           | confirm (learned)  |
| 200, still RAISED            | CANCELLATION_RAISED, accepted           | confirm (learned)  |
| 200, a status we do not know | CANCELLATION_RAISED (not accepted)      | status read        |
| 5xx, timeout, malformed body | still under way, unknown streak + 1     | status read now    |
|   ... MAX_UNKNOWN_SENDS times | UNCONFIRMED, exchange_unavailable      | slow re-check      |
| 429                          | not under way                           | its place in line  |
| 401 / 403                    | FAILED(auth)                            | done               |
| other 4xx (refused, unknown) | not under way, refused                  | status read now    |

After a status read:

| answer                       | record                                  | next               |
|------------------------------|-----------------------------------------|--------------------|
| terminal status              | that state, snapshot                    | done               |
| RAISED, no DELETE accepted   | snapshot, not under way                 | DELETE again (1)   |
| still pending, or 5xx / 429  | one more look (UNCONFIRMED when spent)  | status read, later |
| not found                    | one more "not found" (FAILED on the 2nd)| status read        |
| 401 / 403                    | FAILED(auth)                            | done               |

(1) REFUSED_OPEN_RETRY_S later if the last DELETE was refused: the order may be just placed.

Two rules matter most: an unknown outcome is never answered by a blind re-send (the status
decides), and once the exchange has accepted a DELETE, no second one is ever sent.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

from worker.errors import (
    AuthError,
    ExchangeError,
    OrderNotFound,
    OutcomeUnknown,
    RateLimited,
    Refused,
)
from worker.models import (
    EXCHANGE_CANCEL_PENDING,
    EXCHANGE_OPEN,
    EXCHANGE_TERMINAL,
    CancelRecord,
    ErrorCode,
    OrderState,
)
from worker.settings import Settings

MAX_UNKNOWN_SENDS = 5  # DELETEs in a row with unknown outcome before slow re-checks
NOT_FOUND_CHECKS = 2  # an unknown id is final only after this many "not found" answers
REFUSED_OPEN_RETRY_S = 0.5  # a refused cancel of a still-open order (just placed) waits this
ERROR_MESSAGE_CHARS = 300


class Move(enum.Enum):
    """Which line an order joins after a turn."""

    DONE = "done"  # final, or nothing left to do for this turn
    CANCEL = "cancel"  # wait for a DELETE turn
    CHECK = "check"  # wait for a status turn (an accepted order: the order lists first)


class Answer(enum.Enum):
    """What the exchange said, by what the rules must do about it."""

    ORDER = "order"  # a usable order snapshot
    UNKNOWN = "unknown"  # 5xx, timeout, malformed: it may have happened
    RATE_LIMITED = "rate_limited"
    AUTH = "auth"  # 401/403
    REFUSED = "refused"  # another 4xx on a DELETE (final, mid-cancel, just placed, unknown id)
    NOT_FOUND = "not_found"  # a status read of an id the exchange does not know


@dataclass(frozen=True)
class Reply:
    """One exchange answer: its kind, and the order or the error text."""

    kind: Answer
    order: dict[str, Any] | None = None
    error: str = ""
    status_code: int | None = None

    @classmethod
    def of(cls, call: Any) -> Reply:
        """Make the call (a function returning an order) and classify what came back."""
        try:
            return cls(Answer.ORDER, order=call())
        except ExchangeError as exc:
            for kind, types in _KINDS:
                if isinstance(exc, types):
                    return cls(kind, error=str(exc), status_code=exc.status_code)
            raise


_KINDS: tuple[tuple[Answer, Any], ...] = (
    (Answer.UNKNOWN, OutcomeUnknown),
    (Answer.RATE_LIMITED, RateLimited),
    (Answer.AUTH, AuthError),
    (Answer.NOT_FOUND, OrderNotFound),
    (Answer.REFUSED, Refused),
)


@dataclass(frozen=True)
class Decision:
    """A record to store (None: as it is) and where the order goes next.

    `delay_s` None means: when the exchange usually confirms an accepted cancel (learned,
    worker.confirmation). `event` names the log line worth writing about it.
    """

    record: CancelRecord | None
    move: Move
    delay_s: float | None = 0.0
    event: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _error(code: ErrorCode, message: str) -> dict[str, str]:
    return {"code": code.value, "message": message[:ERROR_MESSAGE_CHARS]}


def _changed(record: CancelRecord, **values: Any) -> CancelRecord:
    new = copy.deepcopy(record)
    for name, value in values.items():
        setattr(new, name, value)
    return new


def poll_delay_s(settings: Settings, polls: int) -> float:
    """Growing, capped delay before the next status read."""
    return float(min(settings.poll_max_delay_s, settings.poll_initial_delay_s * 2**polls))


def after_delete(record: CancelRecord, reply: Reply, settings: Settings) -> Decision:
    """The first table: a DELETE's answer, for a record marked as under way."""
    kind = reply.kind
    if kind is Answer.ORDER:
        assert reply.order is not None
        return _after_snapshot(record, reply.order, settings, accepted_if_open=True)
    if kind is Answer.UNKNOWN:
        streak = record.unknown_sends + 1
        if streak >= MAX_UNKNOWN_SENDS:
            return unconfirmed(
                _changed(record, unknown_sends=streak),
                ErrorCode.EXCHANGE_UNAVAILABLE,
                "exchange kept failing",
                settings,
            )
        changed = _changed(record, unknown_sends=streak)
        return Decision(changed, Move.CHECK, 0.0, "cancel.outcome_unknown", {"error": reply.error})
    if kind is Answer.RATE_LIMITED:
        return Decision(_changed(record, delete_in_flight=False), Move.CANCEL)
    if kind is Answer.AUTH:
        return failed(record, ErrorCode.AUTH, reply.error)
    changed = _changed(record, delete_in_flight=False, refused=True)
    fields = {"http_status": reply.status_code, "error": reply.error}
    return Decision(changed, Move.CHECK, 0.0, "cancel.refused", fields)


def after_status(record: CancelRecord, reply: Reply, settings: Settings, now_ms: int) -> Decision:
    """The second table: a status read's answer."""
    kind = reply.kind
    if kind is Answer.AUTH:
        return failed(record, ErrorCode.AUTH, reply.error)
    if kind is Answer.NOT_FOUND:
        seen = record.not_found + 1
        if seen >= NOT_FOUND_CHECKS:
            return failed(_changed(record, not_found=seen), ErrorCode.ORDER_NOT_FOUND, reply.error)
        return Decision(_changed(record, not_found=seen), Move.CHECK, settings.poll_initial_delay_s)
    if kind is not Answer.ORDER:  # unknown, 429: look again later
        event = "poll.outcome_unknown" if kind is Answer.UNKNOWN else None
        return still_pending(record, settings, now_ms, event=event)
    assert reply.order is not None
    status = reply.order["status"]
    if status in EXCHANGE_TERMINAL:
        return settled(record, reply.order)
    if status == EXCHANGE_OPEN and not record.cancel_accepted:
        # No DELETE took effect (refused, lost, or never sent): cancel again.
        changed = _changed(record, order=reply.order, delete_in_flight=False)
        return Decision(changed, Move.CANCEL, REFUSED_OPEN_RETRY_S if record.refused else 0.0)
    event = None if status in (EXCHANGE_OPEN, EXCHANGE_CANCEL_PENDING) else "order.unknown_status"
    return still_pending(record, settings, now_ms, order=reply.order, event=event)


def settled(record: CancelRecord, order: dict[str, Any]) -> Decision:
    """A terminal status the exchange showed (a status read, a list, a cancel's answer)."""
    changed = _changed(
        record, state=OrderState(order["status"]), order=order, delete_in_flight=False
    )
    return Decision(changed, Move.DONE, event="order.final")


def _after_snapshot(
    record: CancelRecord, order: dict[str, Any], settings: Settings, *, accepted_if_open: bool
) -> Decision:
    status = order["status"]
    if status in EXCHANGE_TERMINAL:
        return settled(record, order)
    # CANCELLATION_RAISED, or still RAISED after a 200 (the exchange took the request).
    accepted = status == EXCHANGE_CANCEL_PENDING or (accepted_if_open and status == EXCHANGE_OPEN)
    changed = _changed(
        record,
        state=OrderState.CANCELLATION_RAISED,
        order=order,
        delete_in_flight=False,
        unknown_sends=0,
        cancel_accepted=record.cancel_accepted or accepted,
    )
    if not accepted and status != EXCHANGE_OPEN:
        # A status this version does not know: keep the snapshot, keep polling, never guess.
        delay_s = settings.poll_initial_delay_s
        return Decision(changed, Move.CHECK, delay_s, "order.unknown_status", {"status": status})
    return Decision(changed, Move.CHECK, None)


def failed(record: CancelRecord, code: ErrorCode, message: str) -> Decision:
    """FAILED, definitively (auth, or an order the exchange does not know)."""
    changed = _changed(
        record, state=OrderState.FAILED, error=_error(code, message), delete_in_flight=False
    )
    event = "order.failed_auth" if code is ErrorCode.AUTH else "order.failed"
    return Decision(changed, Move.DONE, event=event, fields={"code": code.value, "error": message})


def unconfirmed(
    record: CancelRecord, code: ErrorCode, message: str, settings: Settings
) -> Decision:
    """UNCONFIRMED: re-checked slowly until the exchange shows the truth; never invented."""
    changed = _changed(record, state=OrderState.UNCONFIRMED, error=_error(code, message))
    return Decision(changed, Move.CHECK, settings.recheck_interval_s, "order.unconfirmed")


def still_pending(
    record: CancelRecord,
    settings: Settings,
    now_ms: int,
    *,
    order: dict[str, Any] | None = None,
    event: str | None = None,
) -> Decision:
    """Not final yet: one more look counted; UNCONFIRMED once active confirmation is spent
    (too many looks, or past the deadline)."""
    accepted = record.cancel_accepted or (order or {}).get("status") == EXCHANGE_CANCEL_PENDING
    raised_at = next(
        (h["at"] for h in reversed(record.history) if h["state"] == "CANCELLATION_RAISED"),
        record.updated_at,
    )
    spent = record.polls + 1 >= settings.poll_max_attempts
    late = now_ms - raised_at > settings.poll_deadline_s * 1000
    if record.state is OrderState.UNCONFIRMED or spent or late:
        if record.state is not OrderState.UNCONFIRMED:
            event = "poll.unconfirmed"
        state, delay_s = OrderState.UNCONFIRMED, settings.recheck_interval_s
    elif record.state is OrderState.QUEUED and not accepted:
        state, delay_s = OrderState.QUEUED, poll_delay_s(settings, record.polls)
    else:
        state, delay_s = OrderState.CANCELLATION_RAISED, poll_delay_s(settings, record.polls)
    changed = _changed(
        record,
        state=state,
        order=order if order is not None else record.order,
        cancel_accepted=accepted,
        polls=record.polls + 1,
    )
    return Decision(changed, Move.CHECK, delay_s, event)


def put_back(record: CancelRecord) -> Decision:
    """Where an unfinished order whose turn was lost goes: its DELETE if none may have been
    sent, else a status read (which decides the rest)."""
    fresh = record.state is OrderState.QUEUED
    resend = fresh and not record.delete_in_flight and not record.cancel_accepted
    return Decision(None, Move.CANCEL if resend else Move.CHECK)
