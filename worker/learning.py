"""Values the fleet learns from its own recent samples, within a floor and a ceiling.

Two are learned, each from the samples every worker adds to one Redis list:
- the margin every budget's window gets (worker.scheduler), from request spans: the
  largest recent span with headroom, so arrivals never drift past it;
- when an accepted cancel's first status read goes (worker.confirmation), from the time the
  exchange took to show it final: a high quantile with headroom, so the first read usually
  finds it final without waiting a fixed half second.
Samples are forgotten after a quiet spell: the value falls back to its default.
learn.lua keeps the samples and sets the value in one step.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.models import EXCHANGE_CANCEL_PENDING, CancelRecord, OrderState


@dataclass(frozen=True)
class Learning:
    """How one value is learned from its samples (all times in ms)."""

    kept: int  # the most recent samples the value is derived from
    quantile: float  # of those samples (1.0: the largest)
    headroom: float  # the value = that quantile x this, within floor and ceiling
    floor_ms: int
    ceiling_ms: int
    memory_s: int  # samples (and the value) older than this are forgotten

    def args(self, sample_ms: float) -> list[float | int]:
        """learn.lua's arguments for one sample."""
        return [
            max(0, round(sample_ms)),
            self.kept,
            self.floor_ms,
            self.ceiling_ms,
            self.headroom,
            self.memory_s,
            self.quantile,
        ]


#: The first status read after an accepted cancel: the 90th percentile of the last 32
#: confirm times x 1.2 (a read that comes too early costs one more read, one too late costs
#: time to final), never under 20 ms nor over 5 s.
CONFIRM_LEARNING = Learning(
    kept=32, quantile=0.9, headroom=1.2, floor_ms=20, ceiling_ms=5000, memory_s=3600
)


def confirm_time_ms(before: CancelRecord, after: CancelRecord) -> int | None:
    """How long the exchange took to show an accepted cancel final, if this change tells.

    Best from the exchange's own clock: the final snapshot's `updated_at` after the accepted
    one's. Else, from ours, only when the first look after acceptance found it final (an
    upper bound: later looks say more about our back-off than about the exchange).
    """
    if before.is_final or not after.is_final or not before.cancel_accepted:
        return None
    if after.state is OrderState.FAILED:
        return None
    snapshot = before.order or {}
    accepted, final = snapshot.get("updated_at"), (after.order or {}).get("updated_at")
    pending = snapshot.get("status") == EXCHANGE_CANCEL_PENDING
    if pending and isinstance(accepted, int) and isinstance(final, int) and final > accepted:
        return final - accepted
    raised = [int(h["at"]) for h in before.history if h["state"] == OrderState.CANCELLATION_RAISED]
    if before.polls == 0 and raised:
        return max(0, after.updated_at - raised[-1])
    return None
