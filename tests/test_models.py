"""Models: input validation and the two exchange field namings."""

import pytest

from worker.errors import InvalidRequest
from worker.models import (
    CancelRecord,
    OrderState,
    normalise_order,
    validate_exchange,
    validate_order_id,
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
        "order_id", "exchange", "state", "attempts", "requested_at", "updated_at",
        "final_at", "order", "error", "history",
    }  # fmt: skip
