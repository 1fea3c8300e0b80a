"""Prometheus metrics read from Redis at scrape time, for the whole fleet at once.

Flower's own /metrics sees only what its event stream shows and not the queues' reserved
and countdown messages on Redis; these come straight from the keys the workers share.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from worker.keys import CANCEL_QUEUE, KOMBU_UNACKED, POLL_QUEUE
from worker.models import OrderState
from worker.services import CANCEL, CANCEL_ALL, STATUS, Services

UNACKED_SCAN_LIMIT = 100_000  # reserved/countdown messages inspected per scrape, at most
PREFIX = "cancel_worker"


class FleetCollector(Collector):
    """Budget use, 429s, queue depth (waiting and held), orders by state, time to final."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        """Read every figure from Redis now (one scrape = a handful of round trips)."""
        yield from self._buckets()
        yield from self._queues()
        yield from self._orders()

    def _buckets(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            f"{PREFIX}_budget_used", "Requests sent in the current window", labels=["bucket"]
        )
        limit = GaugeMetricFamily(
            f"{PREFIX}_budget_limit", "Requests allowed per window", labels=["bucket"]
        )
        ahead = GaugeMetricFamily(
            f"{PREFIX}_budget_booked_ahead", "Sends booked for later", labels=["bucket"]
        )
        paused = GaugeMetricFamily(
            f"{PREFIX}_budget_paused_seconds", "Pause left after a 429", labels=["bucket"]
        )
        granted = CounterMetricFamily(
            f"{PREFIX}_requests", "Send slots granted by the limiter", labels=["bucket"]
        )
        limited = CounterMetricFamily(
            f"{PREFIX}_rate_limited", "429 answers from the exchange", labels=["bucket"]
        )
        for bucket in (CANCEL, STATUS, CANCEL_ALL):
            usage = self.services.limiter.usage(bucket)
            used.add_metric([bucket], usage.used_in_window)
            limit.add_metric([bucket], usage.limit)
            ahead.add_metric([bucket], usage.booked_ahead)
            paused.add_metric([bucket], usage.paused_ms / 1000)
            granted.add_metric([bucket], usage.granted)
            limited.add_metric([bucket], usage.rate_limited)
        yield from (used, limit, ahead, paused, granted, limited)

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
