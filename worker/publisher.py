"""Turns become Celery tasks here, and only here: the one door a turn takes to a worker.

Every turn handed out (by a request meeting a free budget, or by a dispatcher) is published
as the internal task of its budget, in one pipelined round trip for all of them with their
task-sent events (kombu's `Producer.batch`), so Flower sees each at once. A task id starts
with the budget and the job (`cancel-<order_id>-...`), so Flower's list and search find an
order's DELETE and status reads at a glance. Celery is loaded on the first publish, not when
a strategy imports the client.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from worker.models import Bucket
from worker.scheduler import Released
from worker.settings import Settings

PUBLISH_BATCH_COMMANDS = 1000  # turns (with their events) per pipelined flush, at most


def task_of(turn: Released) -> tuple[str, tuple[str, ...], dict[str, str], dict[str, str], str]:
    """The task that uses a turn: name, args, kwargs, what Flower shows of them, task id."""
    from worker import celery_app as names

    suffix = uuid.uuid4().hex[:8]
    if turn.bucket in (Bucket.CANCEL, Bucket.STATUS):
        name = names.CANCEL_TURN_TASK if turn.bucket is Bucket.CANCEL else names.STATUS_TURN_TASK
        kwargs = {"account": turn.account, "turn": turn.member}
        shown = {"account": turn.account}
        return name, (turn.job,), kwargs, shown, f"{turn.bucket.value}-{turn.job}-{suffix}"
    if turn.bucket is Bucket.CANCEL_ALL:
        kwargs = {"batch": turn.job, "account": turn.account, "turn": turn.member}
        shown = {"batch": turn.job, "account": turn.account}
        task_id = f"{turn.bucket.value}-{turn.job}-{suffix}"
        return names.CANCEL_ALL_TURN_TASK, (), kwargs, shown, task_id
    kwargs = {
        "job": turn.job,
        "account": turn.account,
        "bucket": turn.bucket.value,
        "turn": turn.member,
    }
    shown = {"job": turn.job, "account": turn.account}
    return names.LIST_TASK, (), kwargs, shown, f"{turn.bucket.value}-{turn.account}-{suffix}"


class Publisher:
    """Publishes turns with the Celery app of the given settings (built on first use)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._app: Any = None

    @property
    def app(self) -> Any:
        """The Celery app (shared with the worker's own when the settings are the same)."""
        if self._app is None:
            from worker.celery_app import app_for

            self._app = app_for(self.settings)
        return self._app

    def publish(self, turns: Sequence[Released]) -> None:
        """Publish every turn, with its task-sent event, in one pipelined round trip."""
        if not turns:
            return
        app = self.app
        with (
            app.producer_or_acquire() as producer,
            producer.batch(max_size=PUBLISH_BATCH_COMMANDS),
        ):
            for turn in turns:
                name, args, kwargs, shown, task_id = task_of(turn)
                app.send_task(
                    name,
                    args,
                    kwargs,
                    task_id=task_id,
                    kwargsrepr=repr(shown),
                    producer=producer,
                )
