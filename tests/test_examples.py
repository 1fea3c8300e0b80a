"""The examples under examples/ work against real workers, as the README shows them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SERVICE_ENV
from tests.support import ROOT, place_orders
from worker.deadman import SwitchState, deadman_status
from worker.models import OrderState
from worker.producer import get_record
from worker.sandbox import SandboxHandle

pytestmark = pytest.mark.integration

NODE_EXAMPLE = ROOT / "examples" / "node"
NODE_TIMEOUT_S = 60


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_strategy_tracks_cancels_and_guards_itself(
    workers: Path, exchange: SandboxHandle
) -> None:
    """examples/node/strategy.js (celery-node from npm) tracks an order to its owner, cancels
    it by task name (final record CANCELLED, owner kept), arms a switch for its owner,
    beats it with the one Redis command and disarms it: the switch never fires."""
    assert (NODE_EXAMPLE / "node_modules" / "celery-node").is_dir(), (
        "the example's packages are missing: make node-example (npm ci in examples/node)"
    )
    order_id = place_orders(exchange.admin, 1)[0]
    result = subprocess.run(
        ["node", "strategy.js", order_id],
        cwd=NODE_EXAMPLE,
        env={**os.environ, "REDIS_URL": SERVICE_ENV["REDIS_URL"], "OWNER": "strat-node"},
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    steps = {s["step"]: s for s in map(json.loads, result.stdout.splitlines())}
    assert list(steps) == ["tracked", "cancelled", "armed", "disarmed"]
    assert steps["armed"]["beats"] == 3
    record = get_record(order_id)
    assert record is not None and record.state is OrderState.CANCELLED
    assert record.owner == "strat-node"
    assert exchange.admin.order(order_id)["order"]["status"] == "CANCELLED"
    switch = deadman_status("strat-node-switch")[0]
    assert switch.state is SwitchState.DISARMED and switch.owner == "strat-node"
    assert switch.batches == ()
