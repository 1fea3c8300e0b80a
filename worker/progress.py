"""How long: where a waiting order stands in line, and what `cancel --wait` prints meanwhile."""

from __future__ import annotations

import json
import time
from typing import Any, TextIO

from worker.estimates import Estimates, Waiting
from worker.models import (
    DEFAULT_ACCOUNT,
    BatchRecord,
    BatchState,
    Bucket,
    CancelRecord,
    Priority,
)

WAIT_REPORT_S = 5.0  # how often --wait says when the next send is expected (not on a TTY)
TTY_REPORT_S = 0.5  # how often the live progress line is redrawn on a TTY
CLEAR_LINE = "\r\x1b[2K"


def where(estimates: Estimates, record: CancelRecord) -> Waiting | None:
    """Where an unfinished order waits: in line for a DELETE, or for a status read."""
    if record.is_final:
        return None
    for bucket in (Bucket.CANCEL, Bucket.STATUS):
        waiting = estimates.waiting(record.account, bucket, record.order_id)
        if waiting is not None:
            return waiting
    return None


def duration(seconds: float) -> str:
    """A short human duration: 4.2s, 3m05s, 2h07m."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def waiting_text(waiting: Waiting) -> str:
    """`place 7 of 30 in line for a DELETE, expected in ~36.0s (12:03:04)`."""
    what = "a DELETE" if waiting.bucket is Bucket.CANCEL else "a status read"
    eta = duration((waiting.eta_ms - waiting.now_ms) / 1000)
    clock = time.strftime("%H:%M:%S", time.localtime(waiting.eta_ms / 1000))
    if waiting.place is None:
        return f"{what} after a countdown, expected in ~{eta} ({clock})"
    place = f"place {waiting.place} of {waiting.ready}"
    return f"{place} in line for {what}, expected in ~{eta} ({clock})"


def waiting_json(waiting: Waiting | None) -> dict[str, Any] | None:
    """The `waiting` field of `status --json`."""
    if waiting is None:
        return None
    return {
        "bucket": waiting.bucket.value,
        "place": waiting.place,
        "in_line": waiting.ready,
        "eta_ms": waiting.eta_ms,
    }


def record_line(record: CancelRecord) -> str:
    """One line per record for people: id, state, and what is unusual about it."""
    line = f"{record.order_id}  {record.state.value}"
    if record.error:
        line += f"  error={record.error.get('code')}: {record.error.get('message')}"
    if record.attempts:
        line += f"  attempts={record.attempts}"
    if record.account != DEFAULT_ACCOUNT:
        line += f"  account={record.account}"
    if record.priority != Priority.NORMAL.value:
        line += f"  priority={record.priority}"
    if record.batch_id:  # the cancel-all that cancelled it: how Flower's search finds it
        line += f"  batch={record.batch_id}"
    return line


def show(record: CancelRecord, as_json: bool, out: TextIO) -> None:
    """Print a record as a JSON line or a line for people."""
    print(json.dumps(record.public()) if as_json else record_line(record), file=out, flush=True)


def batch_line(batch: BatchRecord) -> str:
    """One line per cancel-all for people."""
    scope = batch.symbol or "every symbol"
    line = f"{batch.batch_id}  {batch.state.value}  {scope}"
    if batch.orders_ids or batch.state is BatchState.ACCEPTED:
        line += f"  orders={len(batch.orders_ids)}"
    if batch.account != DEFAULT_ACCOUNT:
        line += f"  account={batch.account}"
    if batch.priority != Priority.NORMAL.value:
        line += f"  priority={batch.priority}"
    if batch.reconstructed:
        line += "  (orders found by listing: the exchange's answer was lost)"
    if batch.error:
        line += f"  error={batch.error.get('code')}: {batch.error.get('message')}"
    return line


def show_batch(batch: BatchRecord, as_json: bool, out: TextIO) -> None:
    """Print a cancel-all as a JSON line or a line for people."""
    print(json.dumps(batch.public()) if as_json else batch_line(batch), file=out, flush=True)


class Progress:
    """What `cancel --wait` prints while it waits: state changes, and when sends are due.

    On a TTY one live line is redrawn; otherwise a plain line every WAIT_REPORT_S.
    """

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.tty = out.isatty() and not as_json
        self._every_s = TTY_REPORT_S if self.tty else WAIT_REPORT_S
        self._next_report = time.monotonic() + self._every_s
        self._live = False

    def changed(self, record: CancelRecord) -> None:
        """An order moved to a new state."""
        self._clear()
        show(record, self.as_json, self.out)

    def report(self, estimates: Estimates, pending: list[CancelRecord]) -> None:
        """Say how many are pending and when the next DELETE (else status read) is due."""
        now = time.monotonic()
        if now < self._next_report or not pending:
            return
        self._next_report = now + self._every_s
        places = [w for w in (where(estimates, r) for r in pending) if w is not None]
        deletes = [w for w in places if w.bucket is Bucket.CANCEL]
        soonest = min(deletes or places, key=lambda w: w.eta_ms, default=None)
        if self.as_json:
            line = json.dumps(
                {"pending": len(pending), "in_line": len(deletes), "next": waiting_json(soonest)}
            )
        else:
            line = f"waiting: {len(pending)} not final, {len(deletes)} in line for a DELETE"
            if soonest is not None:
                line += "; next " + waiting_text(soonest)
        if self.tty:
            self.out.write(CLEAR_LINE + line)
            self.out.flush()
            self._live = True
        else:
            print(line, file=self.out, flush=True)

    def batch_report(self, batch: BatchRecord, records: list[CancelRecord | None]) -> None:
        """Say how many of a cancel-all's orders are final yet."""
        now = time.monotonic()
        if now < self._next_report or batch.state is not BatchState.ACCEPTED:
            return
        self._next_report = now + self._every_s
        final = sum(1 for r in records if r is not None and r.is_final)
        if self.as_json:
            line = json.dumps({"batch_id": batch.batch_id, "final": final, "orders": len(records)})
        else:
            line = f"waiting: {final} of {len(records)} orders final"
        if self.tty:
            self.out.write(CLEAR_LINE + line)
            self.out.flush()
            self._live = True
        else:
            print(line, file=self.out, flush=True)

    def summary(self, records: list[CancelRecord | None]) -> None:
        """The count of orders by state (final, or still pending)."""
        self._clear()
        counts: dict[str, int] = {}
        for record in records:
            state = "NO_RECORD" if record is None else record.state.value
            counts[state] = counts.get(state, 0) + 1
        if self.as_json:
            print(json.dumps({"summary": counts}), file=self.out, flush=True)
        else:
            text = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            print(f"summary: {text or 'no orders'}", file=self.out, flush=True)

    def _clear(self) -> None:
        if self._live:
            self.out.write(CLEAR_LINE)
            self._live = False
