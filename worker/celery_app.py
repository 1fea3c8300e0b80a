"""The Celery app and its configuration: JSON only, late acks, short holds.

Task names and queues are part of the public contract: non-Python producers `send_task`
them by name with plain JSON arguments. Budgets are not Celery's `rate_limit` (a bucket per
worker node): worker.scheduler enforces them in Redis for the whole fleet.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import redis
from celery import Celery
from celery.signals import setup_logging
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis

from worker.connection import broker_transport_options, is_sentinel_url
from worker.keys import (
    CANCEL_QUEUE,
    KOMBU_UNACKED,
    KOMBU_UNACKED_INDEX,
    KOMBU_UNACKED_MUTEX,
    POLL_QUEUE,
)
from worker.log import configure_logging
from worker.settings import Settings

#: Public names: any producer may send these by name, with plain JSON arguments.
CANCEL_TASK = "cancel_worker.cancel_order"
POLL_TASK = "cancel_worker.poll_order_status"
CANCEL_ALL_TASK = "cancel_worker.cancel_all"
TRACK_TASK = "cancel_worker.track_orders"
SWEEP_TASK = "cancel_worker.sweep"
DEADMAN_ARM_TASK = "cancel_worker.deadman_arm"
DEADMAN_HEARTBEAT_TASK = "cancel_worker.deadman_heartbeat"
DEADMAN_DISARM_TASK = "cancel_worker.deadman_disarm"
#: Internal names: the turns handed out (only the scheduler's hand-outs publish these).
CANCEL_TURN_TASK = "cancel_worker.cancel_turn"
STATUS_TURN_TASK = "cancel_worker.status_turn"
CANCEL_ALL_TURN_TASK = "cancel_worker.cancel_all_turn"
LIST_TASK = "cancel_worker.list_orders"  # a turn of an order-list budget

UNACKED_RESTORE_INTERVAL_S = 2  # how often a worker scans for messages of dead workers
UNACKED_MUTEX_EXPIRE_S = 15  # a worker killed during that scan blocks restores this long
# A worker that lost the broker tries again after 0.5 s, then 1, 1.5, 2, 2... (kombu's
# defaults, 2, 4, 6... s, would add seconds to a failover the Sentinels finish in two).
RECONNECT_FIRST_S = 0.5
RECONNECT_STEP_S = 0.5
RECONNECT_MAX_S = 2.0


class Consumer(CeleryConsumer):
    """Celery's consumer, reconnecting to a lost broker sooner (see RECONNECT_FIRST_S)."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=RECONNECT_FIRST_S,
            interval_step=RECONNECT_STEP_S,
            interval_max=RECONNECT_MAX_S,
        )
        return super().ensure_connected(conn)


class SentinelChannel(kombu_redis.SentinelChannel):
    """kombu's Sentinel channel, failing like a lost connection once its own is released.

    kombu 5.x: after a lost primary, Celery releases the connection, and the old channel,
    closed again or asked to ack or reject a message it delivered, rebuilds a pool from the
    released transport (whose client is None). That AttributeError is not one of kombu's
    connection errors, so Celery calls it unrecoverable and the worker exits. As a
    connection error it is logged and passed over; the messages come back by the visibility
    timeout and the sweep.
    """

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis.ConnectionError("this channel's broker connection was released")
        return dict(super()._connparams(asynchronous=asynchronous))  # type: ignore[no-untyped-call]


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport with the channel above."""

    Channel = SentinelChannel


def make_app(settings: Settings) -> Celery:
    """Build the Celery app for these settings (the module-level `app` uses the environment)."""
    app = Celery("cancel_worker", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=POLL_QUEUE,
        task_routes={
            CANCEL_TASK: {"queue": CANCEL_QUEUE},
            CANCEL_TURN_TASK: {"queue": CANCEL_QUEUE},
            CANCEL_ALL_TASK: {"queue": CANCEL_QUEUE},
            CANCEL_ALL_TURN_TASK: {"queue": CANCEL_QUEUE},
            TRACK_TASK: {"queue": CANCEL_QUEUE},
            POLL_TASK: {"queue": POLL_QUEUE},
            STATUS_TURN_TASK: {"queue": POLL_QUEUE},
            LIST_TASK: {"queue": POLL_QUEUE},
            SWEEP_TASK: {"queue": POLL_QUEUE},
            DEADMAN_ARM_TASK: {"queue": POLL_QUEUE},
            DEADMAN_HEARTBEAT_TASK: {"queue": POLL_QUEUE},
            DEADMAN_DISARM_TASK: {"queue": POLL_QUEUE},
        },
        broker_transport_options={
            **broker_transport_options(settings),
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
            "unacked_key": KOMBU_UNACKED,
            "unacked_index_key": KOMBU_UNACKED_INDEX,
            "unacked_mutex_key": KOMBU_UNACKED_MUTEX,
        },
        broker_connection_retry_on_startup=True,
        broker_transport=f"{__name__}:SentinelTransport"
        if is_sentinel_url(settings.redis_url)
        else None,
        worker_consumer=f"{__name__}:Consumer",
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Let Celery's own log lines use our structlog renderer instead of Celery's format."""
    configure_logging()


_apps: list[tuple[Settings, Celery]] = []
_apps_lock = threading.Lock()


def app_for(settings: Settings) -> Celery:
    """The Celery app of these settings, built once (a producer's, or the worker's own)."""
    with _apps_lock:
        for known, app in _apps:
            if known == settings:
                return app
        app = make_app(settings)
        _apps.append((settings, app))
        return app


def __getattr__(name: str) -> Any:
    """`app` and `settings` from the environment, built on first use (PEP 562): importing
    this module reads no configuration, so a bad variable is reported by what needs it."""
    if name == "settings":
        return _env_settings()
    if name == "app":
        return app_for(_env_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _env_settings() -> Settings:
    return Settings.from_env()
