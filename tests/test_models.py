"""Models: input validation and the two exchange field namings."""

import pytest

from worker.errors import InvalidRequest
from worker.models import (
    CancelRecord,
    OrderState,
    Priority,
    normalise_order,
    validate_account,
    validate_exchange,
    validate_order_id,
    validate_priority,
)

ORDER_ID = "0193688e-5212-7493-be58-4f83644772e8"


def test_cancel_field_names_are_normalised() -> None:
    """avg_exec_price/exec_fee become avg_execution_price/execution_fee; status upper-cased."""
    order = normalise_order(
        {"avg_exec_price": "0", "exec_fee": "0.1", "status": "cancellation_raised"}
    )
    assert order == {
        "avg_execution_price": "0",
        "execution_fee": "0.1",
        "status": "CANCELLATION_RAISED",
    }


def test_order_id_canonical_lowercase() -> None:
    """A UUID in any case is accepted and lower-cased."""
    assert validate_order_id(ORDER_ID.upper()) == ORDER_ID


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not-a-uuid",
        ORDER_ID + "0",
        ORDER_ID + "\n",
        ORDER_ID.replace("-", ""),
        None,
        42,
        ["x"],
        "🙂" * 36,
    ],
)
def test_bad_order_id_names_value(bad: object) -> None:
    """Anything but a hyphenated UUID string is refused, naming the field."""
    with pytest.raises(InvalidRequest, match="order_id") as info:
        validate_order_id(bad)
    assert info.value.field == "order_id"


def test_exchange_any_case() -> None:
    """exchange_2 is accepted as EXCHANGE_2; other exchanges are refused by name."""
    assert validate_exchange("exchange_2") == "EXCHANGE_2"
    with pytest.raises(InvalidRequest, match="'EXCHANGE_1'"):
        validate_exchange("EXCHANGE_1")


def test_record_round_trip_and_public_view() -> None:
    """A record survives to_dict/from_dict; public() has the contract fields, no bookkeeping."""
    record = CancelRecord(ORDER_ID, "EXCHANGE_2", OrderState.QUEUED, 1, 1)
    assert CancelRecord.from_dict(record.to_dict()) == record
    public = record.public()
    assert set(public) == {
        "order_id", "exchange", "account", "priority", "state", "attempts", "requested_at",
        "updated_at", "final_at", "order", "error", "history", "batch_id", "owner",
    }  # fmt: skip


def test_record_of_an_older_version_reads_as_default_account() -> None:
    """A record stored before accounts existed reads as account default, priority normal."""
    old = {"order_id": ORDER_ID, "exchange": "EXCHANGE_2", "state": "QUEUED"}
    record = CancelRecord.from_dict({**old, "requested_at": 1, "updated_at": 1, "poll_seq": 3})
    assert (record.account, record.priority) == ("default", "normal")


@pytest.mark.parametrize(
    ("text", "priority"), [("urgent", Priority.URGENT), ("NORMAL", Priority.NORMAL)]
)
def test_priority_any_case(text: str, priority: Priority) -> None:
    """urgent and normal are accepted in any case."""
    assert validate_priority(text) is priority


@pytest.mark.parametrize("bad", ["high", "", None, 1, "urgent "])
def test_bad_priority_names_value(bad: object) -> None:
    """Any other priority is refused, naming the field and the value."""
    with pytest.raises(InvalidRequest, match="priority") as info:
        validate_priority(bad)
    assert info.value.field == "priority" and info.value.value == bad


@pytest.mark.parametrize("bad", ["", "1alpha", "al pha", "a" * 33, "alpha-1", None, 7])
def test_bad_account_names_value(bad: object) -> None:
    """An account name must be a letter, then letters, digits or _ (32 at most)."""
    with pytest.raises(InvalidRequest, match="account"):
        validate_account(bad)


def test_account_lower_cased() -> None:
    """Account names are case-insensitive: ALPHA is alpha."""
    assert validate_account("ALPHA") == "alpha"
