"""Turns become Celery tasks here, and only here: the one door a turn takes to a worker.

Every turn handed out (by a request meeting a free budget, or by a dispatcher) is published
as the internal task of its budget, in one pipelined round trip for all of them with their
task-sent events (kombu's `Producer.batch`), so Flower sees each at once. A task id starts
with the budget and the job (`cancel-<order_id>-...`), so Flower's list and search find an
order's DELETE and status reads at a glance. Celery is loaded on the first publish, not when
a strategy imports the client.

A request can also have its turn's messages prepared before it knows it gets the turn
(`prepare`): Celery builds them as for a publish, and the Redis commands kombu would send
(the LPUSH of the task, the PUBLISH of its task-sent event) are kept instead of sent, for the
request's own script to run if, and only if, it hands that turn out. A cancel meeting a free
budget then reaches its worker in the request's one round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from worker.models import Bucket
from worker.scheduler import Released
from worker.settings import Settings

PUBLISH_BATCH_COMMANDS = 1000  # turns (with their events) per pipelined flush, at most
#: The Redis commands a prepared publish may be: what kombu's Redis transport sends.
PREPARED_COMMANDS = frozenset({"lpush", "publish", "pexpire"})

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A turn's messages, built before the turn is known: its name (member) and the Redis
    commands that publish it, for a script to run when it hands the turn out."""

    job: str
    member: str
    commands: tuple[tuple[str, ...], ...]


def _recording(channel: Any) -> Any:
    """A kombu publish batch that keeps the final Redis commands instead of sending them."""
    from kombu.transport.redis import PublishBatch

    class Recording(PublishBatch):
        def __init__(self) -> None:  # no client, no pipeline: nothing is sent
            self.channel = channel
            self._collecting: list[tuple[str, tuple[Any, ...]]] | None = None
            self.commands: list[tuple[str, tuple[Any, ...]]] = []

        def publish(self, message: Any, **kwargs: Any) -> Any:
            collected: list[tuple[str, tuple[Any, ...]]] = []
            self._collecting = collected
            try:
                return self.channel.basic_publish(message, _publish_batch=self, **kwargs)
            finally:
                self._collecting = None
                self.commands += collected

        def flush(self) -> None:
            pass

        def discard(self) -> None:
            self.commands.clear()

        def close(self) -> None:
            pass

    return Recording()


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

    def prepare(self, turns: Sequence[Released]) -> list[Prepared]:
        """Build the messages of would-be turns and keep the commands that publish them.

        Returns [] if kombu's transport does not say which commands (another version, or a
        transport without publish batches): the turns are then published as usual.
        """
        app = self.app
        prepared: list[Prepared] = []
        with app.producer_or_acquire() as producer:
            channel = producer.channel
            if not hasattr(channel, "create_publish_batch"):
                return []
            recording = _recording(channel)
            channel.create_publish_batch = lambda max_size: recording
            try:
                with producer.batch(max_size=PUBLISH_BATCH_COMMANDS):
                    for turn in turns:
                        before = len(recording.commands)
                        _send(app, turn, producer)
                        commands = tuple(
                            (str(cmd), *map(_text, cmd_args))
                            for cmd, cmd_args in recording.commands[before:]
                        )
                        if not commands or any(c[0] not in PREPARED_COMMANDS for c in commands):
                            log.warning(
                                "publisher.cannot_prepare", commands=[c[0] for c in commands]
                            )
                            return []
                        prepared.append(Prepared(turn.job, turn.member, commands))
            finally:
                del channel.create_publish_batch
        return prepared

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
                _send(app, turn, producer)


def _send(app: Any, turn: Released, producer: Any) -> None:
    """Send one turn's task through `producer` (its batch, or its recording)."""
    name, args, kwargs, shown, task_id = task_of(turn)
    app.send_task(name, args, kwargs, task_id=task_id, kwargsrepr=repr(shown), producer=producer)


def _text(value: Any) -> str:
    """A command argument as a script takes it."""
    return value.decode() if isinstance(value, bytes) else str(value)
