"""Logging: JSON lines with bound context, and the secret key masked wherever it appears."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from worker.log import configure_logging

SECRET = "5e" * 32


def test_json_lines_carry_context_and_mask_the_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A structlog event and a stdlib (Celery-style) line both render as JSON, secret masked."""
    monkeypatch.setenv("COINSWITCH_SECRET_KEY", SECRET)
    configure_logging("INFO", json=True)
    with structlog.contextvars.bound_contextvars(order_id="o-1", task_id="t-1"):
        structlog.get_logger("test").info("exchange.response", detail=f"key={SECRET}")
    logging.getLogger("celery.worker").warning("stdlib line with %s", SECRET)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["order_id"] == "o-1" and lines[0]["task_id"] == "t-1"
    assert lines[0]["detail"] == "key=***"
    assert lines[1]["logger"] == "celery.worker" and SECRET not in lines[1]["event"]
