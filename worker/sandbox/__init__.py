"""A local imitation of the CoinSwitch PRO futures API, quirks included (docs/exchange.md).

Start one in-process with `run_sandbox()`, or from the shell with `cancel-worker sandbox`.
"""

from __future__ import annotations

from worker.sandbox.admin import AdminClient
from worker.sandbox.app import SandboxApp
from worker.sandbox.auth import generate_keypair
from worker.sandbox.config import ENDPOINTS, SandboxConfig, parse_rate
from worker.sandbox.server import SandboxHandle, run_sandbox, start_sandbox

__all__ = [
    "ENDPOINTS",
    "AdminClient",
    "SandboxApp",
    "SandboxConfig",
    "SandboxHandle",
    "generate_keypair",
    "parse_rate",
    "run_sandbox",
    "start_sandbox",
]
