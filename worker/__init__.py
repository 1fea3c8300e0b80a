"""cancel-worker: reliable, rate-limited cancellation of CoinSwitch PRO futures orders.

`celery -A worker worker` finds the Celery app here; strategy services call
`request_cancel` / `request_cancels` / `request_cancel_all`, read records with
`get_record` / `get_records` / `get_batch`, track their orders to a strategy (`track_orders`,
`owned_orders`), and guard themselves with a dead man's switch (`arm_deadman`, `heartbeat`,
`disarm`, `deadman_status`).
Names are loaded on first use, so `cancel-worker sandbox` or `--help` never needs the
service's configuration, and a bad variable is reported by the command that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "app": "worker.celery_app",
    "CANCEL_TASK": "worker.celery_app",
    "POLL_TASK": "worker.celery_app",
    "SWEEP_TASK": "worker.celery_app",
    "request_cancel": "worker.producer",
    "request_cancels": "worker.producer",
    "get_record": "worker.producer",
    "get_records": "worker.producer",
    "request_cancel_all": "worker.producer",
    "get_batch": "worker.producer",
    "BatchRecord": "worker.models",
    "BatchState": "worker.models",
    "Priority": "worker.models",
    "track_orders": "worker.owners",
    "owned_orders": "worker.owners",
    "Owned": "worker.owners",
    "arm_deadman": "worker.deadman",
    "heartbeat": "worker.deadman",
    "disarm": "worker.deadman",
    "deadman_status": "worker.deadman",
    "Switch": "worker.deadman",
    "SwitchTripped": "worker.deadman",
    "CancelRecord": "worker.models",
    "OrderState": "worker.models",
    "FINAL_STATES": "worker.models",
    "CancelWorkerError": "worker.errors",
    "ConfigError": "worker.errors",
    "InvalidRequest": "worker.errors",
    "BrokerUnavailable": "worker.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
