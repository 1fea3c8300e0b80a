"""Metrics' pure parts: the per-owner series stay few whatever the number of strategies."""

from __future__ import annotations

from worker.metrics import OWNER_SERIES, owner_series


def test_owner_series_are_capped_and_never_absent() -> None:
    """Every line has a "none" series; past OWNER_SERIES owners the least busy are summed
    as "other", so the count of series stays bounded."""
    assert owner_series({}) == {"none": 0}
    assert owner_series({"": (2, 1), "strat-a": (5, 0)}) == {"none": 2, "strat-a": 5}
    many = {f"s{i:03d}": (i + 1, 0) for i in range(OWNER_SERIES + 5)}
    series = owner_series(many)
    assert len(series) == OWNER_SERIES + 2  # the busiest by name, "none" and "other"
    assert series["other"] == sum(range(1, 6)) and "s000" not in series
    assert sum(series.values()) == sum(w for w, _ in many.values())
