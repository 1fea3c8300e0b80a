"""The `cancel-worker` CLI as a user runs it: a real process against the running stack."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SERVICE_ENV
from tests.support import ROOT, place_orders
from worker.sandbox import SandboxHandle

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 60


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `cancel-worker ARGS` with the service environment; capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def place(exchange: SandboxHandle) -> str:
    order = exchange.admin.create_order(
        symbol="BTCUSDT", side="SELL", order_type="LIMIT", quantity="0.01", price="99000"
    )
    return str(order["order_id"])


def test_cancel_wait_shows_progress_and_final_state(workers: Path, exchange: SandboxHandle) -> None:
    """`cancel ID --wait` prints each state as it happens, then a summary, and exits 0."""
    order_id = place(exchange)
    result = cli("cancel", order_id, "--wait", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith("waiting:")]
    assert lines[0].startswith(f"{order_id}  QUEUED")
    assert lines[-2].startswith(f"{order_id}  CANCELLED")
    assert lines[-1] == "summary: 1 CANCELLED"


def test_cancel_wait_says_when_the_next_send_is_due(workers: Path, exchange: SandboxHandle) -> None:
    """While cancels wait for budget, `cancel --wait` piped prints a plain line every few
    seconds saying how many are pending and when the next one is expected to go."""
    order_ids = place_orders(exchange.admin, 40)
    result = cli("cancel", *order_ids, "--wait", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    waiting = [line for line in result.stdout.splitlines() if line.startswith("waiting: ")]
    delete_form = re.compile(
        r"waiting: \d+ not final, \d+ in line for a DELETE; next place \d+ of \d+ in line "
        r"for a DELETE, expected in ~\d+\.\ds \(\d\d:\d\d:\d\d\)"
    )
    assert any(delete_form.fullmatch(line) for line in waiting), result.stdout
    assert "\r" not in result.stdout
    assert result.stdout.splitlines()[-1] == "summary: 40 CANCELLED"


def test_cancel_wait_on_a_terminal_draws_a_live_line(
    workers: Path, exchange: SandboxHandle
) -> None:
    """On a TTY, `cancel --wait` redraws one progress line in place instead of printing."""
    order_ids = place_orders(exchange.admin, 25)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "cancel", *order_ids, "--wait", "--timeout", "60"],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV},
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    assert proc.wait(timeout=CLI_TIMEOUT_S) == 0, proc.stderr.read() if proc.stderr else ""
    os.close(controller)
    text = screen.decode()
    assert "\r\x1b[2Kwaiting: " in text  # the live line, redrawn in place
    assert "summary: 25 CANCELLED" in text


def test_cancel_wait_exits_nonzero_on_failed(workers: Path, exchange: SandboxHandle) -> None:
    """`--wait` exits 1 when an order ends FAILED."""
    result = cli("cancel", str(uuid.uuid4()), "--wait", "--timeout", "30", "--json")
    assert result.returncode == 1, result.stderr
    *_, last, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert last["state"] == "FAILED" and last["error"]["code"] == "order_not_found"
    assert summary == {"summary": {"FAILED": 1}}


def test_status_json_prints_the_contract_record(workers: Path, exchange: SandboxHandle) -> None:
    """`status ID --json` prints one JSON record with every field the README documents."""
    order_id = place(exchange)
    assert cli("cancel", order_id, "--wait", "--timeout", "30").returncode == 0
    result = cli("status", order_id, "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert set(record) >= {
        "order_id", "exchange", "state", "attempts", "requested_at", "updated_at",
        "final_at", "order", "error", "history",
    }  # fmt: skip
    assert record["state"] == "CANCELLED" and record["final_at"] >= record["requested_at"]
    assert record["order"]["order_id"] == order_id


def json_lines(stdout: str) -> list[dict[str, Any]]:
    """stdout as JSON Lines: every line one JSON object (fails on anything else)."""
    lines = stdout.splitlines()
    assert lines, "no output"
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_every_json_output_is_pure_json(
    workers: Path, exchange: SandboxHandle, log_format: str
) -> None:
    """With --json, stdout holds only what the README promises, whatever the log format and
    level (logs go to stderr): JSON Lines from cancel, cancel-all, status and deadman
    status; one JSON document from limits, deadman arm and deadman disarm."""
    env = {"CANCEL_WORKER_LOG_FORMAT": log_format, "CANCEL_WORKER_LOG_LEVEL": "INFO"}
    name = f"json-{log_format}-{uuid.uuid4().hex[:8]}"

    def run(*args: str) -> str:
        result = cli(*args, "--json", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    first, second = place(exchange), place(exchange)
    queued = json_lines(run("cancel", first))
    assert [r["order_id"] for r in queued] == [first]
    waited = json_lines(run("cancel", second, "--wait", "--timeout", "30"))
    assert waited[-1] == {"summary": {"CANCELLED": 1}}
    place_orders(exchange.admin, 2, symbol="ETHUSDT")
    batch_lines = json_lines(run("cancel-all", "--symbol", "ETHUSDT", "--wait", "--timeout", "30"))
    batch_id = batch_lines[0]["batch_id"]
    assert set(batch_lines[-1]["summary"]) <= {"CANCELLED", "EXECUTED", "PARTIALLY_EXECUTED"}
    shown = json_lines(run("status", first, second, batch_id))
    assert {r.get("order_id") or r.get("batch_id") for r in shown} == {first, second, batch_id}

    armed = cli("deadman", "arm", name, "--timeout", "60", "--symbol", "ETHUSDT", "--json", env=env)
    try:
        assert armed.returncode == 0, armed.stderr
        assert json.loads(armed.stdout)["name"] == name
        assert "deadman.armed" in armed.stderr  # the log line, on stderr
        assert [s["name"] for s in json_lines(run("deadman", "status", name))] == [name]
    finally:
        disarmed = run("deadman", "disarm", name)
    assert json.loads(disarmed)["state"] == "DISARMED"

    limits = json.loads(run("limits"))
    assert set(limits) == {"budgets", "margin", "queues", "watched_by_sweeper"}


def test_bad_input_is_refused_with_exit_2(redis_url: str) -> None:
    """A bad id exits 2 with a message naming it, and nothing is enqueued."""
    result = cli("cancel", str(uuid.uuid4()), "definitely-not-an-id")
    assert result.returncode == 2
    assert "'definitely-not-an-id'" in result.stderr and "nothing was enqueued" in result.stderr


def test_unreachable_redis_is_a_clear_error() -> None:
    """With Redis down, `cancel` exits 4 and says Redis is unavailable."""
    from tests.redis_server import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = cli("cancel", str(uuid.uuid4()), env={"REDIS_URL": dead})
    assert result.returncode == 4
    assert "Redis unavailable" in result.stderr and "nothing enqueued" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("cancel", str(uuid.UUID(int=1, version=4))),
        ("status", str(uuid.UUID(int=1, version=4))),
        ("limits",),
        ("metrics", "--port", "0"),
    ],
)
def test_every_command_fails_cleanly_without_redis(args: tuple[str, ...]) -> None:
    """Redis unreachable: one line naming where, exit 4, no traceback."""
    from tests.redis_server import free_port

    result = cli(*args, env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert result.returncode == 4, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("cancel-worker: error: ") and "Redis unavailable at" in lines[0]


#: Malformed REDIS_URLs (ports never listened on) → the part the error must quote.
BAD_REDIS_URLS = {
    "nonsense": "'nonsense' is not a Redis URL",
    "redis://127.0.0.1:notaport/0": "port 'notaport' is not a number",
    "redis://127.0.0.1:99999/0": "port '99999' is not a number",
    "redis://127.0.0.1:1/abc": "database 'abc' (the path) is not a number",
    "redis://127.0.0.1:1/0?db=two": "database 'two' (db=) is not a number",
    "http://127.0.0.1:1/0": "scheme 'http' is not one of redis://",
    "sentinel://127.0.0.1:1;sentinel://127.0.0.1:x/0": "port 'x' is not a number",
    "sentinel://127.0.0.1:1/abc": "database 'abc' (the path) is not a number",
}


@pytest.mark.parametrize(
    "args",
    [
        ("cancel", str(uuid.UUID(int=1, version=4))),
        ("cancel-all", "--symbol", "BTCUSDT"),
        ("status", str(uuid.UUID(int=1, version=4))),
        ("limits", "--json"),
        ("metrics", "--port", "0"),
        ("worker",),
        ("run", "--data-dir", "/nonexistent/cw-never-created"),
        ("deadman", "arm", "strat-1", "--timeout", "5", "--symbol", "BTCUSDT"),
        ("deadman", "beat", "strat-1"),
        ("deadman", "disarm", "strat-1"),
        ("deadman", "status", "--json"),
    ],
    ids=lambda args: "-".join(args[:2]),
)
@pytest.mark.parametrize("url", list(BAD_REDIS_URLS))
def test_every_command_refuses_a_malformed_redis_url(args: tuple[str, ...], url: str) -> None:
    """A REDIS_URL with a bad port, database or scheme stops every command that uses Redis
    with exit 4 and one line naming REDIS_URL and the bad part, before it connects."""
    result = cli(*args, env={"REDIS_URL": url})
    assert result.returncode == 4, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("cancel-worker: error: REDIS_URL: "), lines[0]
    assert BAD_REDIS_URLS[url] in lines[0], lines[0]


def test_status_of_an_unknown_order_is_a_json_line(redis_url: str) -> None:
    """`status ID --json` for an order with no record prints a JSON line with state null."""
    order_id = str(uuid.uuid4())
    result = cli("status", order_id, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"order_id": order_id, "state": None}


#: Enough ids that `status` prints more than a pipe holds (64 KiB on Linux): it is still
#: writing when the reader goes, as with `| head -1` on a long list.
MANY_IDS = 2000


@pytest.mark.parametrize("as_json", [False, True])
def test_a_reader_that_stops_early_ends_status_quietly(redis_url: str, as_json: bool) -> None:
    """`status ID... | head -1`: once the reader closes the pipe, status exits 141 (128 +
    SIGPIPE, as `yes | head -1` does) with nothing on stderr, not a BrokenPipeError
    traceback."""
    order_ids = [str(uuid.uuid4()) for _ in range(MANY_IDS)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "status",
            *order_ids,
            *(["--json"] if as_json else []),
        ],
        cwd=ROOT,
        env={**os.environ, **SERVICE_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    assert proc.wait(timeout=CLI_TIMEOUT_S) == 141, proc.stderr.read()
    stderr = proc.stderr.read()
    assert stderr == "", stderr
    assert order_ids[0] in first


def test_status_of_a_bad_id_says_nothing_about_enqueueing() -> None:
    """A bad id given to `status` exits 2 naming it; nothing was going to be enqueued."""
    result = cli("status", "not-a-uuid")
    assert result.returncode == 2
    assert "'not-a-uuid'" in result.stderr and "enqueued" not in result.stderr


def test_read_only_commands_need_no_keys(workers: Path) -> None:
    """`limits`, `status` and `metrics` work with REDIS_URL alone: no key, no secret; the
    accounts come from the registry the workers keep."""
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("COINSWITCH_", "CANCEL_"))}
    bare["REDIS_URL"] = SERVICE_ENV["REDIS_URL"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            cwd=ROOT, env=bare, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        )  # fmt: skip

    limits = run("limits", "--json")
    assert limits.returncode == 0, limits.stderr
    accounts = {row["account"] for row in json.loads(limits.stdout)["budgets"]}
    assert {"default", "alpha", "beta"} <= accounts
    assert run("status", str(uuid.uuid4())).returncode == 1  # no record: a clean answer


def test_bad_configuration_names_the_variable() -> None:
    """A malformed rate variable stops the command with a message naming it."""
    result = cli("status", str(uuid.uuid4()), env={"COINSWITCH_CANCEL_RATE_LIMIT": "lots"})
    assert result.returncode == 4
    assert "COINSWITCH_CANCEL_RATE_LIMIT" in result.stderr


def test_limits_shows_budgets_per_account_and_queues(workers: Path) -> None:
    """`limits --json` reports each account's budgets, the margin and each queue's backlog."""
    result = cli("limits", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # one document
    budgets = {(row["account"], row["bucket"]): row for row in report["budgets"]}
    assert {account for account, _ in budgets} >= {"default", "alpha", "beta"}
    cancel = budgets[("default", "cancel")]
    assert cancel["limit"] == 10 and cancel["period_s"] == 2
    assert budgets[("alpha", "status")]["limit"] == 20
    assert budgets[("beta", "cancel_all")]["limit"] == 10  # the documented default
    margin = report["margin"]
    assert margin["floor_ms"] <= margin["ms"] <= margin["ceiling_ms"]
    assert set(report["queues"]) == {"cancels", "polls"}
    assert isinstance(report["watched_by_sweeper"], int)


@pytest.mark.parametrize("command", ["cancel", "status", "limits", "worker", "metrics", "run"])
def test_every_command_has_help_with_exit_codes(command: str) -> None:
    """Each sub-command explains itself with --help, including its exit codes, and exits 0."""
    result = cli(command, "--help")
    assert result.returncode == 0
    assert "usage: cancel-worker" in result.stdout
    assert "exit codes:" in result.stdout and "  4  Redis unreachable" in result.stdout


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    """The top-level parser and every sub-command's, each with its command line."""
    from worker.cli import build_parser

    found, pending = [], [("cancel-worker", build_parser())]
    while pending:
        name, parser = pending.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return found


def test_no_help_text_shows_a_second_or_an_empty_default() -> None:
    """No option of any command says "(default:" twice (its own words, then argparse's) or
    shows a default that is no value: None, False, []."""
    parsers = every_parser()
    assert len(parsers) >= 12  # every command and the deadman actions
    for name, parser in parsers:
        text = " ".join(parser.format_help().split())
        for empty in ("(default: None)", "(default: False)", "(default: [])"):
            assert empty not in text, (name, empty)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help:
                said = formatter._expand_help(action)
                assert said.count("(default:") <= 1, (name, said)


def test_sandbox_has_help() -> None:
    """`sandbox --help` explains every knob and exits 0."""
    result = cli("sandbox", "--help")
    assert result.returncode == 0 and "--latency-jitter-ms" in result.stdout
