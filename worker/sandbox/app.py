"""The request pipeline, free of HTTP plumbing: route -> auth -> rate limit -> faults -> handler.

`SandboxApp.handle` turns one parsed request into a `Reply` (status, JSON, plus how long to
stall and whether to drop the connection); `server.py` does the socket work and logging.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from worker.sandbox.auth import INVALID_ACCESS, AuthError, AuthHeaders, Verifier
from worker.sandbox.book import (
    CancelRefusedError,
    Clock,
    OrderBook,
    OrderNotOpenError,
    UnknownOrderError,
    system_clock_ms,
)
from worker.sandbox.config import ENDPOINTS, RUNTIME_KNOBS, SandboxConfig
from worker.sandbox.faults import FAULT_KINDS, Fault, FaultPlan
from worker.sandbox.orders import ON_CANCEL, STATUSES, TRIGGER_TYPES
from worker.sandbox.ratelimit import SlidingWindowLimiter
from worker.sandbox.stats import Stats
from worker.sandbox.validation import (
    ValidationError,
    choice_field,
    decimal_field,
    exchange_field,
    id_field,
    int_field,
    invalid,
    missing,
    parse_cancel,
    parse_list,
    parse_place,
    symbol_field,
)

TIME_PATH: Final = "/trade/api/v2/time"
ADMIN_PREFIX: Final = "/_sandbox/"
MSG_NOT_FOUND: Final = "Not found"
MSG_METHOD: Final = "Method not allowed"
MSG_RATE_LIMITED: Final = "Too many requests"
MSG_INTERNAL: Final = "Internal server error"
MSG_ORDER_NOT_FOUND: Final = "Order not found"
MSG_BAD_BODY: Final = "Request body must be a JSON object"

# path -> {method: endpoint name}
ROUTES: Final[dict[str, dict[str, str]]] = {}
for _name, (_method, _path) in ENDPOINTS.items():
    ROUTES.setdefault(_path, {})[_method] = _name

ADMIN_ORDER_DEFAULTS: Final[dict[str, Any]] = {
    "exchange": "EXCHANGE_2",
    "symbol": "DOGEUSDT",
    "side": "BUY",
    "order_type": "LIMIT",
}
ADMIN_LIMIT_DEFAULTS: Final[dict[str, Any]] = {"quantity": "22", "price": "0.28"}
ADMIN_TRIGGER_DEFAULTS: Final[dict[str, Any]] = {"quantity": "0", "reduce_only": True}


@dataclass(frozen=True)
class Request:
    """One HTTP request as received."""

    method: str
    target: str  # the raw request-target, query in received order
    headers: AuthHeaders
    body: bytes
    client_ip: str


@dataclass(frozen=True)
class Reply:
    """What to answer, and how (stall first, or drop the connection unanswered)."""

    status: int
    payload: Any = None
    raw: bytes | None = None  # sent as-is instead of the JSON payload (malformed fault)
    delay_ms: int = 0
    drop: bool = False
    endpoint: str | None = None
    fault: str | None = None
    note: str | None = None  # why, for the log line only

    def body(self) -> bytes:
        """The response body bytes."""
        if self.raw is not None:
            return self.raw
        return json.dumps(self.payload).encode()


def _message(status: int, text: str, **extra: Any) -> Reply:
    return Reply(status, {"message": text}, **extra)


def _json_object(body: bytes) -> dict[str, Any] | None:
    """Parse a JSON object body (empty = {}); None when it is not one."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _order_ids(
    endpoint: str, query: dict[str, list[str]], body: dict[str, Any] | None
) -> tuple[str | None, str | None]:
    """(order_id, client_order_id) a request names, read before auth and validation.

    Per-order counters and order-targeted faults use them, whatever the answer will be.
    """
    if endpoint == "status":
        return query.get("order_id", [None])[0], query.get("client_order_id", [None])[0]
    if body is None:
        return None, None
    order_id = body.get("order_id")
    client_order_id = body.get("client_order_id")
    return (
        order_id if isinstance(order_id, str) else None,
        client_order_id if isinstance(client_order_id, str) else None,
    )


class SandboxApp:
    """The simulated exchange's state and behaviour, shared by all handler threads."""

    def __init__(
        self,
        config: SandboxConfig,
        api_keys: Sequence[str],
        clock: Clock = system_clock_ms,
    ) -> None:
        if not api_keys:
            raise ValueError("at least one API key is required")
        self._config = config
        self._config_lock = threading.Lock()
        self._clock = clock
        self.verifier = Verifier(api_keys)
        self.book = OrderBook(config.seed, clock)
        self.limiter = SlidingWindowLimiter()
        self.stats = Stats()
        self.faults = FaultPlan(config.seed)
        self._jitter = random.Random(f"{config.seed}:jitter")
        self._jitter_lock = threading.Lock()

    @property
    def config(self) -> SandboxConfig:
        """The current effective configuration."""
        with self._config_lock:
            return self._config

    def reconfigure(self, **knobs: Any) -> SandboxConfig:
        """Swap in a new config with some runtime knobs changed; ValueError if invalid."""
        unknown = sorted(set(knobs) - RUNTIME_KNOBS)
        if unknown:
            raise ValueError(f"not a runtime knob: {', '.join(unknown)}")
        with self._config_lock:
            self._config = dataclasses.replace(self._config, **knobs)
            return self._config

    def reset(self) -> None:
        """Forget orders, counters, faults and windows; keep keys and config."""
        seed = self.config.seed
        self.book.reset(seed)
        self.stats.reset()
        self.faults.reset(seed)
        self.limiter.reset()
        with self._jitter_lock:
            self._jitter = random.Random(f"{seed}:jitter")

    def handle(self, req: Request) -> Reply:
        """Answer one request."""
        path = urlsplit(req.target).path
        if path.startswith(ADMIN_PREFIX):
            return self._admin(req, path)
        if path == TIME_PATH:
            if req.method != "GET":
                return _message(405, MSG_METHOD)
            return Reply(200, {"serverTime": self._clock()})
        methods = ROUTES.get(path)
        if methods is None:
            return _message(404, MSG_NOT_FOUND)
        endpoint = methods.get(req.method)
        if endpoint is None:
            return _message(405, MSG_METHOD)
        return self._exchange(endpoint, req)

    # ---- exchange endpoints ----------------------------------------------------------

    def network_delay_ms(self, cfg: SandboxConfig) -> float:
        """The next one-way delay (ms) of a network that varies by up to J ms (seeded)."""
        if cfg.latency_jitter_ms <= 0:
            return 0.0
        with self._jitter_lock:
            return self._jitter.uniform(0, cfg.latency_jitter_ms)

    def _exchange(self, endpoint: str, req: Request) -> Reply:
        cfg = self.config
        delay_ms = self.network_delay_ms(cfg)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)  # the request is still on its way to the exchange
        now = self._clock()
        limit, period_s = cfg.limit_for(endpoint)
        period_ms = max(1, round(period_s * 1000))
        claimed_key = (req.headers.api_key or "-").lower()
        bucket = claimed_key if cfg.rate_scope == "key" else req.client_ip
        self.stats.arrival(endpoint, bucket, now, period_ms)
        query = parse_qs(urlsplit(req.target).query, keep_blank_values=True)
        body = _json_object(req.body) if endpoint != "status" else {}
        order_id, client_order_id = _order_ids(endpoint, query, body)
        if endpoint in ("cancel", "status"):  # per-order counters see every request
            self.book.note_request(endpoint, order_id=order_id, client_order_id=client_order_id)
        extra: dict[str, Any] = {"endpoint": endpoint, "delay_ms": cfg.latency_ms}

        try:
            api_key = self.verifier.verify(
                req.method,
                req.target,
                req.headers,
                now,
                max_skew_ms=cfg.max_skew_ms,
                missing_epoch_status=cfg.missing_epoch_status,
            )
        except AuthError as exc:
            self.stats.count(endpoint, "unauthorized")
            return _message(exc.status, exc.message, note=exc.reason, **extra)
        if not self.limiter.admit(bucket, endpoint, now, limit, period_ms):
            self.stats.count(endpoint, "rate_limited", bucket)
            return _message(429, MSG_RATE_LIMITED, **extra)

        fault = self.faults.next(endpoint, cfg, order_id, client_order_id)
        if fault is None:
            return dataclasses.replace(self._operate(endpoint, api_key, query, body, cfg), **extra)
        self.stats.count(endpoint, "faulted")
        extra["fault"] = fault.kind
        result = self._operate(endpoint, api_key, query, body, cfg) if fault.applied else None
        if fault.kind == "latency":
            assert result is not None
            extra["delay_ms"] += fault.latency_ms
            return dataclasses.replace(result, **extra)
        if fault.kind == "malformed":
            assert result is not None
            text = result.body()
            return Reply(200, raw=text[: max(1, len(text) // 2)], **extra)
        if fault.kind.startswith("timeout"):
            extra["delay_ms"] = cfg.timeout_ms
            return Reply(0, drop=True, **extra)
        if fault.kind == "body":
            assert fault.body is not None
            return Reply(fault.status, raw=fault.body.encode(), **extra)
        if fault.kind == "rate_limited":
            return _message(429, MSG_RATE_LIMITED, **extra)
        if fault.kind == "unauthorized":
            return _message(401, INVALID_ACCESS, **extra)
        return _message(fault.status, MSG_INTERNAL, **extra)

    def _operate(
        self,
        endpoint: str,
        api_key: str,
        query: dict[str, list[str]],
        body: dict[str, Any] | None,
        cfg: SandboxConfig,
    ) -> Reply:
        """Run the endpoint's operation and map its errors to the exchange's answers."""
        if body is None:
            return _message(400, MSG_BAD_BODY)
        try:
            return self._dispatch(endpoint, api_key, query, body, cfg)
        except ValidationError as exc:
            return _message(exc.status, exc.message)
        except UnknownOrderError:
            return _message(cfg.unknown_order_status, MSG_ORDER_NOT_FOUND)
        except CancelRefusedError as exc:
            return _message(cfg.refuse_status, exc.message)

    def _dispatch(
        self,
        endpoint: str,
        api_key: str,
        query: dict[str, list[str]],
        body: dict[str, Any],
        cfg: SandboxConfig,
    ) -> Reply:
        if endpoint == "place":
            order, _ = self.book.place(api_key, parse_place(body), cfg)
            return Reply(200, {"data": order.status_shape()})
        if endpoint == "cancel":
            order = self.book.cancel(api_key, parse_cancel(body), cfg)
            return Reply(200, {"data": order.cancel_shape()})
        if endpoint == "status":
            order_id = query.get("order_id", [""])[0] or None
            client_id = query.get("client_order_id", [""])[0] or None
            if order_id is None and client_id is None:
                raise missing("order_id")
            order = self.book.get(api_key, order_id, client_id)
            return Reply(200, {"data": {"order": order.status_shape()}})
        if endpoint == "cancel_all":
            exchange_field(body)
            symbol = symbol_field(body, required=False)
            ids = self.book.cancel_all(api_key, symbol, cfg)
            return Reply(200, {"data": {"orders_ids": ids}})
        closed = endpoint == "closed"
        listing = parse_list(body, closed=closed, now_ms=self._clock())
        orders = self.book.list_orders(api_key, listing, closed=closed)
        cursor = orders[-1].created_at if orders else None
        shapes = [o.status_shape() for o in orders]
        return Reply(200, {"data": {"orders": shapes, "cursor": cursor}})

    # ---- admin endpoints -------------------------------------------------------------

    def _admin(self, req: Request, path: str) -> Reply:
        """Unsigned, unlimited, never faulted: the test harness's side door."""
        parts = [p for p in path[len(ADMIN_PREFIX) :].split("/") if p]
        method = req.method
        body = _json_object(req.body) if method == "POST" else {}
        if body is None:
            return _message(400, MSG_BAD_BODY)
        try:
            return self._admin_route(method, parts, body)
        except (ValidationError, ValueError, TypeError) as exc:
            text = exc.message if isinstance(exc, ValidationError) else str(exc)
            return _message(422, text)
        except UnknownOrderError:
            return _message(404, MSG_ORDER_NOT_FOUND)
        except OrderNotOpenError:
            return _message(409, "Order is not open")

    def _admin_route(self, method: str, parts: list[str], body: dict[str, Any]) -> Reply:
        routes: dict[tuple[str, ...], dict[str, Any]] = {
            ("health",): {"GET": lambda: Reply(200, {"status": "ok"})},
            ("orders",): {"POST": lambda: self._admin_create(body)},
            ("faults",): {"POST": lambda: self._admin_inject(body)},
            ("config",): {
                "GET": lambda: Reply(200, {"data": self.config.to_dict()}),
                "POST": lambda: self._admin_configure(body),
            },
            ("stats",): {"GET": self._admin_stats},
            ("reset",): {"POST": self._admin_reset},
        }
        if len(parts) == 2 and parts[0] == "orders":
            routes[tuple(parts)] = {"GET": lambda: self._admin_order(parts[1])}
        if len(parts) == 3 and parts[0] == "orders" and parts[2] == "fill":
            routes[tuple(parts)] = {"POST": lambda: self._admin_fill(parts[1], body)}
        handlers = routes.get(tuple(parts))
        if handlers is None:
            return _message(404, MSG_NOT_FOUND)
        handler = handlers.get(method)
        if handler is None:
            return _message(405, MSG_METHOD)
        reply: Reply = handler()
        return reply

    def _admin_create(self, body: dict[str, Any]) -> Reply:
        order_type = str(body.get("order_type", "LIMIT")).upper()
        defaults = ADMIN_TRIGGER_DEFAULTS if order_type in TRIGGER_TYPES else ADMIN_LIMIT_DEFAULTS
        fields = {**ADMIN_ORDER_DEFAULTS, **defaults, **body}
        req = parse_place(fields)
        status = choice_field(fields, "status", STATUSES) or "RAISED"
        on_cancel = fields.get("on_cancel")
        if on_cancel is not None and on_cancel not in ON_CANCEL:
            raise invalid("on_cancel")
        owner = id_field(fields, "api_key")
        keys = self.verifier.api_keys
        if owner is not None and owner.lower() not in keys:
            raise invalid("api_key")
        order = self.book.create(
            owner.lower() if owner is not None else keys[0],
            req,
            self.config,
            status=status,
            on_cancel=on_cancel,
            exec_quantity=decimal_field(fields, "exec_quantity"),
            created_at=int_field(fields, "created_at"),
        )
        return Reply(200, {"data": order.status_shape()})

    def _admin_order(self, order_id: str) -> Reply:
        return Reply(200, {"data": self.book.get(None, order_id).admin_view()})

    def _admin_fill(self, order_id: str, body: dict[str, Any]) -> Reply:
        order = self.book.fill(order_id, decimal_field(body, "quantity", positive=True))
        return Reply(200, {"data": order.status_shape()})

    def _admin_inject(self, body: dict[str, Any]) -> Reply:
        endpoint = body.get("endpoint")
        kind = body.get("kind")
        if endpoint not in ENDPOINTS:
            raise invalid("endpoint")
        if kind not in FAULT_KINDS:
            raise invalid("kind")
        count = int_field(body, "count", minimum=1) or 1
        status = int_field(body, "status") or 503
        latency_ms = int_field(body, "latency_ms") or 0
        fault = Fault(
            str(kind),
            status,
            latency_ms,
            order_id=id_field(body, "order_id"),
            client_order_id=id_field(body, "client_order_id"),
            body=body["body"] if isinstance(body.get("body"), str) else None,
        )
        queued = self.faults.inject(str(endpoint), fault, count)
        return Reply(200, {"data": {"endpoint": endpoint, "kind": kind, "queued": queued}})

    def _admin_configure(self, body: dict[str, Any]) -> Reply:
        knobs = {k: float(v) if isinstance(v, Decimal) else v for k, v in body.items()}
        return Reply(200, {"data": self.reconfigure(**knobs).to_dict()})

    def _admin_stats(self) -> Reply:
        data = {
            "endpoints": self.stats.snapshot(self.config),
            "orders": self.book.status_counts(),
            "faults_queued": self.faults.queued(),
        }
        return Reply(200, {"data": data})

    def _admin_reset(self) -> Reply:
        self.reset()
        return Reply(200, {"data": {"reset": True}})
