"""The README tells the truth about what the code reads and keeps."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

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


#: A citation of the design notes or exchange notes kept outside the repository (built so
#: this file does not match itself).
OUTSIDE_NOTES = re.compile(r"\b(?:DESIGN|API)" + re.escape(".md"))
#: Files allowed to cite notes outside the repository (none: docs/exchange.md has the facts).
PENDING_CITATIONS: set[str] = set()
#: The section named after the file name and a comma, quoted or not, over line breaks.
EXCHANGE_CITATION = re.compile(r"docs/exchange\.md,\s+\"?([A-Z][^\")]*)")


def repository_files() -> list[Path]:
    """Every file of the repository, tracked or new (ignored ones left out), as text."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def text_of(path: Path) -> str | None:
    """A file's text, or None for a binary file."""
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return None


def test_no_file_cites_notes_outside_the_repository() -> None:
    """Docstrings and docs cite docs/exchange.md, which ships with the code, not the design
    or exchange notes that live outside the repository (files being rewritten excepted)."""
    citing = {
        str(path.relative_to(ROOT))
        for path in repository_files()
        if OUTSIDE_NOTES.search(text_of(path) or "")
    }
    assert citing <= PENDING_CITATIONS, sorted(citing - PENDING_CITATIONS)


def test_exchange_citations_name_sections_that_exist() -> None:
    """Every citation of docs/exchange.md that names a section names one it has."""
    sections = set(re.findall(r"^## (.+)$", (ROOT / "docs/exchange.md").read_text(), re.M))
    cited = {
        (str(path.relative_to(ROOT)), " ".join(section.split()))
        for path in repository_files()
        for section in EXCHANGE_CITATION.findall(text_of(path) or "")
    }
    assert len(cited) >= 10  # the citations are found
    unknown = sorted(c for c in cited if c[1] not in sections)
    assert not unknown, unknown


def test_every_served_metric_is_in_the_readme() -> None:
    """Each metric family `cancel-worker metrics` serves is named in the README's Metrics
    list (in full, or as `_suffix` after a sibling), counters with their `_total`."""
    from prometheus_client.core import CounterMetricFamily

    from worker.metrics import FleetCollector
    from worker.services import get_services

    metrics = README.split("- **Metrics**", 1)[1].split("\n- **", 1)[0]
    names = {
        family.name + ("_total" if isinstance(family, CounterMetricFamily) else "")
        for family in FleetCollector(get_services()).collect()
    }
    assert {"cancel_worker_orders", "cancel_worker_deadman_switches"} <= names  # Redis answered
    missing = {
        name
        for name in names
        if f"`{name}" not in metrics and f"`{name.removeprefix('cancel_worker')}" not in metrics
    }
    assert not missing, sorted(missing)


def test_every_status_json_field_is_in_the_readme() -> None:
    """`status --json` prints a record's public fields and `waiting`: each is named in the
    README's paragraph about it."""
    from worker.models import CancelRecord, OrderState

    paragraph = README.split("`cancel-worker status ID --json` prints the record:", 1)[1]
    paragraph = paragraph.split("\n\n", 1)[0]
    record = CancelRecord(
        "0193688e-5212-7493-be58-4f83644772e8", "EXCHANGE_2", OrderState.QUEUED, 0, 0
    )
    fields = {*record.public(), "waiting"}
    assert "batch_id" in fields
    missing = {name for name in fields if f"`{name}`" not in paragraph}
    assert not missing, sorted(missing)
