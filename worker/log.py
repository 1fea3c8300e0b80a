"""One logging set-up for everything: structlog JSON lines (console on a TTY), stdlib included.

Celery's own log lines go through the same renderer (the worker's `setup_logging` signal
calls `configure_logging`), and a last processor masks the secret key wherever it appears.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

DEFAULT_LEVEL = "INFO"
MASK = "***"


def _mask_secret(secret: str | None) -> structlog.types.Processor:
    def processor(_: Any, __: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        if secret:
            for name, value in event.items():
                if isinstance(value, str) and secret in value:
                    event[name] = value.replace(secret, MASK)
        return event

    return processor


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """Route structlog and stdlib logging to stderr as JSON (or console lines on a TTY)."""
    level_name = (level or os.environ.get("CANCEL_WORKER_LOG_LEVEL") or DEFAULT_LEVEL).upper()
    if json is None:
        default_format = "console" if sys.stderr.isatty() else "json"
        json = (os.environ.get("CANCEL_WORKER_LOG_FORMAT") or default_format).lower() != "console"
    secret = os.environ.get("COINSWITCH_SECRET_KEY") or None
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _mask_secret(secret),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_name)
    for noisy in ("urllib3", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
