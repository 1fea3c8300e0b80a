"""The README tells the truth about what the code reads and keeps."""

from __future__ import annotations

import re
import tomllib

from tests.support import ROOT
from worker.accounts import ACCOUNTS_VARIABLE, RATE_VARIABLES
from worker.records import DEFAULT_EVENTS_MAXLEN
from worker.settings import TUNING

README = (ROOT / "README.md").read_text()


def configuration_table() -> str:
    """The README's configuration section."""
    return README.split("## Configuration", 1)[1].split("\n## ", 1)[0]


def test_every_variable_is_in_the_configuration_table() -> None:
    """Each variable the service reads has a row in the README's configuration table."""
    table = configuration_table()
    names = {f"CANCEL_WORKER_{name.upper()}" for name, _ in TUNING}
    names |= {f"COINSWITCH_{suffix}" for suffix in RATE_VARIABLES.values()}
    names |= {"REDIS_URL", "COINSWITCH_BASE_URL", "COINSWITCH_API_KEY", "COINSWITCH_SECRET_KEY"}
    names |= {ACCOUNTS_VARIABLE, "CANCEL_WORKER_NAMESPACE", "CANCEL_WORKER_LOG_FORMAT"}
    names |= {"CANCEL_WORKER_LOG_LEVEL", "FLOWER_BASIC_AUTH"}
    documented = set(re.findall(r"`([A-Z][A-Z0-9_<>]+)`", table))
    assert names <= documented, sorted(names - documented)


def test_event_stream_docs_give_the_cap_and_the_ack() -> None:
    """The README says how many events the stream keeps and shows a consumer acking them."""
    events = README.split("## Records and events", 1)[1].split("\n## ", 1)[0]
    assert f"{DEFAULT_EVENTS_MAXLEN:,}" in events
    assert "XACK cw:events" in events and "XREADGROUP GROUP" in events


def test_license_is_an_spdx_string() -> None:
    """project.license is an SPDX string (a table is deprecated and warns at every build)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
