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
