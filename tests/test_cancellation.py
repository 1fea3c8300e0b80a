"""The per-order rules, table by table: each answer's record change and next line (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from worker.cancellation import (
    MAX_UNKNOWN_SENDS,
    NOT_FOUND_CHECKS,
    REFUSED_OPEN_RETRY_S,
    Answer,
    Move,
    Reply,
    after_delete,
    after_status,
    put_back,
    still_pending,
)
from worker.errors import AuthError, OrderNotFound, OutcomeUnknown, RateLimited, Refused
from worker.learning import confirm_time_ms
from worker.models import CancelRecord, ErrorCode, OrderState
from worker.settings import Settings

SETTINGS = Settings(
    poll_initial_delay_s=0.5, poll_max_delay_s=8, poll_max_attempts=5, poll_deadline_s=300
)
NOW = 1_800_000_000_000
ORDER_ID = "0193688e-5212-7493-be58-4f83644772e8"


def record(**fields: Any) -> CancelRecord:
    """A record as a turn finds it (marked "DELETE under way" unless told otherwise)."""
    values: dict[str, Any] = {
        "order_id": ORDER_ID,
        "exchange": "EXCHANGE_2",
        "state": OrderState.QUEUED,
        "requested_at": NOW - 1000,
        "updated_at": NOW - 1000,
        "history": [{"state": "QUEUED", "at": NOW - 1000}],
        "attempts": 1,
        "delete_in_flight": True,
    }
    return CancelRecord(**{**values, **fields})


def order(status: str, **fields: Any) -> Reply:
    return Reply(Answer.ORDER, order={"order_id": ORDER_ID, "status": status, **fields})


# --- after a DELETE -------------------------------------------------------------------------

DELETE_TABLE = [
    # answer, state, accepted, under way, next, delay
    (order("CANCELLED"), OrderState.CANCELLED, False, False, Move.DONE, 0.0),
    (order("EXECUTED"), OrderState.EXECUTED, False, False, Move.DONE, 0.0),
    (order("PARTIALLY_EXECUTED"), OrderState.PARTIALLY_EXECUTED, False, False, Move.DONE, 0.0),
    (order("CANCELLATION_RAISED"), OrderState.CANCELLATION_RAISED, True, False, Move.CHECK, None),
    (order("RAISED"), OrderState.CANCELLATION_RAISED, True, False, Move.CHECK, None),
    (order("SOMETHING_NEW"), OrderState.CANCELLATION_RAISED, False, False, Move.CHECK, 0.5),
    (Reply(Answer.UNKNOWN, error="502"), OrderState.QUEUED, False, True, Move.CHECK, 0.0),
    (Reply(Answer.RATE_LIMITED), OrderState.QUEUED, False, False, Move.CANCEL, 0.0),
    (Reply(Answer.AUTH, error="Invalid Access"), OrderState.FAILED, False, False, Move.DONE, 0.0),
    (Reply(Answer.REFUSED, status_code=400), OrderState.QUEUED, False, False, Move.CHECK, 0.0),
]


@pytest.mark.parametrize(
    ("reply", "state", "accepted", "under_way", "move", "delay"),
    DELETE_TABLE,
    ids=[f"{r.kind.value}-{(r.order or {}).get('status', '')}" for r, *_ in DELETE_TABLE],
)
def test_a_delete_answer_decides_the_record_and_the_next_line(
    reply: Reply,
    state: OrderState,
    accepted: bool,
    under_way: bool,
    move: Move,
    delay: float | None,
) -> None:
    """Each DELETE answer sets the state, the accepted and under-way marks and the next line
    as the table in worker.cancellation says (None: when the exchange usually confirms)."""
    decision = after_delete(record(), reply, SETTINGS)
    assert decision.record is not None
    assert decision.record.state is state
    assert (decision.record.cancel_accepted, decision.record.delete_in_flight) == (
        accepted,
        under_way,
    )
    assert (decision.move, decision.delay_s) == (move, delay)


def test_unknown_outcomes_in_a_row_give_way_to_slow_rechecks() -> None:
    """The MAX_UNKNOWN_SENDS-th unknown outcome in a row makes the order UNCONFIRMED, with
    the exchange named unavailable, re-checked slowly: no more DELETEs meanwhile."""
    tired = record(unknown_sends=MAX_UNKNOWN_SENDS - 1)
    decision = after_delete(tired, Reply(Answer.UNKNOWN, error="timeout"), SETTINGS)
    assert decision.record is not None and decision.record.state is OrderState.UNCONFIRMED
    assert decision.record.error == {
        "code": ErrorCode.EXCHANGE_UNAVAILABLE.value,
        "message": "exchange kept failing",
    }
    assert (decision.move, decision.delay_s) == (Move.CHECK, SETTINGS.recheck_interval_s)


def test_a_refused_delete_is_remembered_so_a_still_open_order_waits_before_the_next() -> None:
    """A refused DELETE marks the record refused; the status read that then finds the order
    still open sends the next DELETE REFUSED_OPEN_RETRY_S later (it may be just placed)."""
    refused = after_delete(record(), Reply(Answer.REFUSED, status_code=400), SETTINGS).record
    assert refused is not None and refused.refused
    decision = after_status(refused, order("RAISED"), SETTINGS, NOW)
    assert (decision.move, decision.delay_s) == (Move.CANCEL, REFUSED_OPEN_RETRY_S)


# --- after a status read --------------------------------------------------------------------


def test_a_terminal_status_settles_the_order_with_its_snapshot() -> None:
    """A terminal status is recorded as it is, with the snapshot; nothing comes next."""
    decision = after_status(record(), order("EXECUTED", exec_quantity="10"), SETTINGS, NOW)
    assert decision.record is not None and decision.record.state is OrderState.EXECUTED
    assert decision.record.order == {
        "order_id": ORDER_ID,
        "status": "EXECUTED",
        "exec_quantity": "10",
    }
    assert decision.move is Move.DONE


def test_an_open_order_no_delete_reached_is_cancelled_again_but_an_accepted_one_never() -> None:
    """RAISED with no DELETE accepted: cancel again (its DELETE was refused, lost or never
    sent). RAISED after the exchange accepted a DELETE: only look again, never a second
    DELETE."""
    again = after_status(record(), order("RAISED"), SETTINGS, NOW)
    assert (again.move, again.delay_s) == (Move.CANCEL, 0.0)
    accepted = record(state=OrderState.CANCELLATION_RAISED, cancel_accepted=True)
    look = after_status(accepted, order("RAISED"), SETTINGS, NOW)
    assert look.move is Move.CHECK


@pytest.mark.parametrize(
    "reply",
    [Reply(Answer.UNKNOWN), Reply(Answer.RATE_LIMITED), order("CANCELLATION_RAISED")],
    ids=["unknown", "rate_limited", "pending"],
)
def test_a_pending_or_failed_read_looks_again_later_and_counts_the_look(reply: Reply) -> None:
    """Still pending, a 5xx or a 429: one more look counted, the next a growing delay later."""
    first = record(state=OrderState.CANCELLATION_RAISED, cancel_accepted=True, polls=2)
    decision = after_status(first, reply, SETTINGS, NOW)
    assert decision.record is not None and decision.record.polls == 3
    assert (decision.move, decision.delay_s) == (Move.CHECK, 0.5 * 2**2)


def test_an_unknown_id_fails_only_on_the_second_not_found() -> None:
    """A fresh order can lag: the first "not found" only counts; the second is FAILED."""
    first = after_status(record(), Reply(Answer.NOT_FOUND, error="Order not found"), SETTINGS, NOW)
    assert first.record is not None and first.record.not_found == 1
    assert first.record.state is OrderState.QUEUED and first.move is Move.CHECK
    second = after_status(first.record, Reply(Answer.NOT_FOUND), SETTINGS, NOW)
    assert second.record is not None and second.record.state is OrderState.FAILED
    assert second.record.not_found == NOT_FOUND_CHECKS
    assert second.record.error is not None
    assert second.record.error["code"] == ErrorCode.ORDER_NOT_FOUND.value


def test_auth_failures_are_final_at_once() -> None:
    """401/403 on a status read is FAILED(auth): no retry storm."""
    decision = after_status(record(), Reply(Answer.AUTH, error="Invalid Access"), SETTINGS, NOW)
    assert decision.record is not None and decision.record.state is OrderState.FAILED
    assert decision.move is Move.DONE and decision.event == "order.failed_auth"


def test_spent_confirmation_turns_unconfirmed_and_never_invents_a_final_state() -> None:
    """Past its looks or its deadline, an order goes UNCONFIRMED (re-checked slowly), with
    the last snapshot kept; no final state is made up."""
    raised = [
        {"state": "QUEUED", "at": NOW - 9000},
        {"state": "CANCELLATION_RAISED", "at": NOW - 8000},
    ]
    spent = record(state=OrderState.CANCELLATION_RAISED, polls=SETTINGS.poll_max_attempts - 1)
    late = record(state=OrderState.CANCELLATION_RAISED, history=raised)
    for current, now in ((spent, NOW), (late, NOW + int(SETTINGS.poll_deadline_s * 1000))):
        decision = still_pending(current, SETTINGS, now)
        assert decision.record is not None and decision.record.state is OrderState.UNCONFIRMED
        assert decision.delay_s == SETTINGS.recheck_interval_s


def test_a_lost_turn_goes_back_to_its_delete_only_if_none_may_have_been_sent() -> None:
    """The sweeper's rule: a DELETE again only if none may have been sent; otherwise the
    status decides."""
    fresh = record(delete_in_flight=False, attempts=0)
    assert put_back(fresh).move is Move.CANCEL
    assert put_back(record()).move is Move.CHECK  # under way: outcome unknown
    assert put_back(record(cancel_accepted=True)).move is Move.CHECK


def test_exceptions_map_to_answers() -> None:
    """Reply.of turns each exchange error into the answer the tables are written for."""
    for error, kind in (
        (OutcomeUnknown("x"), Answer.UNKNOWN),
        (RateLimited("x", status_code=429), Answer.RATE_LIMITED),
        (AuthError("x", status_code=401), Answer.AUTH),
        (OrderNotFound("x", status_code=404), Answer.NOT_FOUND),
        (Refused("x", status_code=400), Answer.REFUSED),
    ):

        def fail(error: Exception = error) -> dict[str, Any]:
            raise error

        assert Reply.of(fail).kind is kind


# --- what a final state says about the exchange's confirm time -------------------------------


def test_confirm_times_come_from_the_exchange_clock_when_it_tells() -> None:
    """The exchange's own `updated_at`s (accepted, then final) give the confirm time; without
    them, our clock does, but only when the first look found the order final."""
    accepted = record(
        state=OrderState.CANCELLATION_RAISED,
        cancel_accepted=True,
        order={"status": "CANCELLATION_RAISED", "updated_at": NOW},
        history=[{"state": "CANCELLATION_RAISED", "at": NOW + 3}],
    )
    final = record(
        state=OrderState.CANCELLED, order={"status": "CANCELLED", "updated_at": NOW + 200}
    )
    final.updated_at = NOW + 260
    assert confirm_time_ms(accepted, final) == 200
    final.order = {"status": "CANCELLED"}
    assert confirm_time_ms(accepted, final) == 257  # our clock: accepted at NOW + 3
    accepted.polls = 1
    assert confirm_time_ms(accepted, final) is None  # a later look says little
    assert confirm_time_ms(record(), final) is None  # never accepted
