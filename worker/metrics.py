"""Prometheus metrics read from Redis at scrape time, for the whole fleet at once.

Budgets are labelled by account and bucket; accounts come from the registry workers keep.

Flower's own /metrics sees only what its event stream shows and not the queues' reserved
and countdown messages on Redis; these come straight from the keys the workers share.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping

import redis
import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from worker.deadman import Deadman, SwitchState
from worker.estimates import Estimates
from worker.keys import CANCEL_QUEUE, KOMBU_UNACKED, POLL_QUEUE
from worker.models import Bucket, OrderState
from worker.services import Services

UNACKED_SCAN_LIMIT = 100_000  # reserved/countdown messages inspected per scrape, at most
WORKER_STALE_S = 30.0  # a worker that has not said which queues it consumes for this long
PREFIX = "cancel_worker"
OWNER_SERIES = 20  # owners shown by name per line; the rest are summed as "other"
NO_OWNER = "none"  # the label of jobs requested without an owner

log = structlog.get_logger(__name__)


class FleetCollector(Collector):
    """Budgets per account, the margin, queue depth, orders by state, time to final."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        """Read every figure from Redis now (one scrape = a handful of round trips).

        If Redis does not answer, only `cancel_worker_redis_up 0` is reported.
        """
        up = GaugeMetricFamily(f"{PREFIX}_redis_up", "1 if Redis answered this scrape")
        try:
            metrics = [
                *self._buckets(),
                *self._queues(),
                *self._workers(),
                *self._orders(),
                *self._deadman(),
            ]
        except redis.RedisError as exc:
            log.warning("metrics.redis_unavailable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _buckets(self) -> Iterator[Metric]:
        labels = ["account", "bucket"]

        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=labels)

        used = gauge("budget_used", "Requests sent in the current window")
        limit = gauge("budget_limit", "Requests allowed per window")
        ahead = gauge("budget_booked_ahead", "Turns handed out, not yet sent")
        paused = gauge("budget_paused_seconds", "Pause left after a 429")
        waiting = gauge("waiting", "Jobs in line for a turn of this budget")
        urgent = gauge("waiting_urgent", "Urgent jobs in line for a turn of this budget")
        drain = gauge("drain_seconds", "Until the last job now in line is expected to go")
        by_owner = GaugeMetricFamily(
            f"{PREFIX}_waiting_by_owner",
            "Jobs in line per owner (a strategy sharing the account; only owners waiting)",
            labels=[*labels, "owner"],
        )
        sent = CounterMetricFamily(f"{PREFIX}_requests", "Requests sent", labels=labels)
        limited = CounterMetricFamily(
            f"{PREFIX}_rate_limited", "429 answers from the exchange", labels=labels
        )
        observer = self.services.observer()
        estimates = Estimates(observer)
        for account in sorted(observer.accounts):
            for bucket in Bucket:
                usage = estimates.usage(account, bucket)
                values = [account, bucket.value]
                used.add_metric(values, usage.used_in_window)
                limit.add_metric(values, usage.limit)
                ahead.add_metric(values, usage.booked_ahead)
                paused.add_metric(values, usage.paused_ms / 1000)
                waiting.add_metric(values, usage.waiting + usage.counting_down)
                urgent.add_metric(values, usage.waiting_urgent)
                drain.add_metric(values, usage.drain_s)
                for owner, count in owner_series(usage.owners).items():
                    by_owner.add_metric([*values, owner], count)
                sent.add_metric(values, usage.sent)
                limited.add_metric(values, usage.rate_limited)
        margin = GaugeMetricFamily(
            f"{PREFIX}_budget_margin_seconds",
            "Added to every window so network delay never shows limit + 1 (learned)",
        )
        margin.add_metric([], observer.margin_ms() / 1000)
        yield from (used, limit, ahead, paused, waiting, urgent, drain, by_owner, sent, limited)
        yield margin

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Messages per queue: waiting in Redis, or held by a worker (running, reserved, "
            "or waiting for a countdown)",
            labels=["queue", "where"],
        )
        held = dict.fromkeys((CANCEL_QUEUE, POLL_QUEUE), 0)
        redis = self.services.redis
        for scanned, (_, raw) in enumerate(redis.hscan_iter(KOMBU_UNACKED, count=1000)):
            if scanned >= UNACKED_SCAN_LIMIT:
                break
            try:
                routing_key = json.loads(raw)[2]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key in held:
                held[routing_key] += 1
        for queue in (CANCEL_QUEUE, POLL_QUEUE):
            depth.add_metric([queue, "waiting"], int(redis.llen(queue)))
            depth.add_metric([queue, "held"], held[queue])
        yield depth

    def _workers(self) -> Iterator[Metric]:
        consumers = GaugeMetricFamily(
            f"{PREFIX}_consumers",
            "Workers consuming each queue (seen in the last 30 s)",
            labels=["queue"],
        )
        dead = GaugeMetricFamily(
            f"{PREFIX}_dead_letters", "Task messages that could not be used, kept in cw:dead"
        )
        services = self.services
        counts = dict.fromkeys((CANCEL_QUEUE, POLL_QUEUE), 0)
        now = time.time() * 1000
        for raw in services.redis.hgetall(services.keys.workers).values():
            seen = json.loads(raw)
            if now - int(seen.get("seen_ms", 0)) <= WORKER_STALE_S * 1000:
                for queue in seen.get("queues", []):
                    counts[queue] = counts.get(queue, 0) + 1
        for queue, count in sorted(counts.items()):
            consumers.add_metric([queue], count)
        dead.add_metric([], int(services.redis.llen(services.keys.dead_letters)))
        yield from (consumers, dead)

    def _deadman(self) -> Iterator[Metric]:
        deadman = Deadman(self.services)
        states = GaugeMetricFamily(
            f"{PREFIX}_deadman_switches", "Dead man's switches by state", labels=["state"]
        )
        left = GaugeMetricFamily(
            f"{PREFIX}_deadman_seconds_left",
            "Until an armed switch fires without a beat",
            labels=["name"],
        )
        fired = CounterMetricFamily(
            f"{PREFIX}_deadman_triggered",
            "Times a switch fired (sent its cancel-alls)",
            labels=["name"],
        )
        switches = deadman.all()
        for state in SwitchState:
            states.add_metric([state.value], sum(1 for s in switches if s.state is state))
        for switch in switches:
            if switch.left_ms is not None:
                left.add_metric([switch.name], switch.left_ms / 1000)
        # Every known switch gets a sample, 0 until it fires: `increase()` in the alert
        # needs a sample before the first firing to see it.
        counts = {switch.name: 0 for switch in switches} | deadman.fired_counts()
        for name, count in sorted(counts.items()):
            fired.add_metric([name], count)
        yield from (states, left, fired)

    def _orders(self) -> Iterator[Metric]:
        store = self.services.store
        orders = GaugeMetricFamily(f"{PREFIX}_orders", "Records by state", labels=["state"])
        counts = store.state_counts()
        for state in OrderState:
            orders.add_metric([state.value], max(0, counts.get(state.value, 0)))
        yield orders
        buckets, count, total_s = store.time_to_final()
        histogram = HistogramMetricFamily(
            f"{PREFIX}_time_to_final_seconds", "From request to final record"
        )
        histogram.add_metric(
            [], [(str(bound), n) for bound, n in buckets] + [("+Inf", count)], total_s
        )
        yield histogram


def owner_series(owners: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """Waiting jobs per owner label: the OWNER_SERIES busiest by name, the rest as "other",
    so a desk with many strategies cannot blow up the number of series."""
    ranked = sorted(owners.items(), key=lambda item: (-item[1][0], item[0]))
    shown = {NO_OWNER: 0}  # always one series per line, so the metric is never absent
    shown.update({owner or NO_OWNER: waiting for owner, (waiting, _) in ranked[:OWNER_SERIES]})
    rest = sum(waiting for _, (waiting, _) in ranked[OWNER_SERIES:])
    return {**shown, "other": rest} if rest else shown
