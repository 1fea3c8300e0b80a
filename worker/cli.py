"""The `cancel-worker` command line: cancel, status, limits, worker, metrics, run, sandbox.

Exit codes, the same for every command: 0 ok; 1 an order ended FAILED or has no record (or
a process the command runs failed); 2 bad input, nothing written; 3 `--wait` timed out;
4 Redis unreachable or configuration error; 5 a dead man's switch tripped; 141 stdout
closed by its reader. Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from kombu.exceptions import OperationalError

from worker import stack
from worker.deadman import SwitchTripped
from worker.errors import BrokerUnavailable, ConfigError, InvalidRequest
from worker.estimates import Estimates
from worker.models import (
    BATCH_PREFIX,
    DEFAULT_ACCOUNT,
    DEFAULT_EXCHANGE,
    BatchState,
    Bucket,
    OrderState,
    Priority,
)
from worker.progress import (
    Progress,
    record_line,
    show,
    show_batch,
    waiting_json,
    waiting_text,
    where,
)
from worker.sandbox import cli as sandbox_cli
from worker.settings import DEFAULT_REDIS_URL, redact_url

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TIMEOUT = 3
EXIT_UNAVAILABLE = 4
EXIT_TRIPPED = 5
#: stdout was closed by its reader: 128 + SIGPIPE, what a shell shows for `yes | head -1`.
EXIT_STDOUT_CLOSED = 128 + int(signal.SIGPIPE)

#: Commands that do one job for a person or a script (not the long-running services, which
#: configure logging themselves): they log to stderr, warnings and errors only unless
#: CANCEL_WORKER_LOG_LEVEL says otherwise, since what they print says what happened.
SHORT_COMMANDS = frozenset({"cancel", "cancel-all", "status", "limits", "deadman"})
CLI_LOG_LEVEL = "WARNING"
DEFAULT_WAIT_TIMEOUT_S = 120.0
WAIT_POLL_INTERVAL_S = 0.1  # how often --wait re-reads the records (one MGET each time)

_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILED: "an order ended FAILED or has no record",
    EXIT_BAD_INPUT: "bad input: nothing was written",
    EXIT_TIMEOUT: "--wait timed out",
    EXIT_UNAVAILABLE: "Redis unreachable, or a configuration error",
    EXIT_TRIPPED: "the dead man's switch has tripped (its orders are being cancelled)",
}


def _exit_codes(*codes: int, failed: str | None = None) -> str:
    lines = [
        f"  {code}  {failed if code == EXIT_FAILED and failed else _CODES[code]}" for code in codes
    ]
    return "exit codes:\n" + "\n".join(lines)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown for every option that has one; the epilog (exit codes) kept as written.

    No default is added to a help text that already says its own ("(default: every
    symbol)"), nor for a flag or an option with no value by default: argparse would print
    "(default: None)", "(default: False)" or "(default: [])".
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "(default:" in text or default is None or default is False or default == []:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="cancel-worker",
        description="Cancel CoinSwitch PRO futures orders reliably, under the exchange's limits.",
        epilog="Configuration comes from the environment (REDIS_URL, COINSWITCH_*); see README.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cancel = commands.add_parser(
        "cancel",
        help="request cancels for one or more orders",
        description="Validate the order ids, record them QUEUED and put them in line for a "
        "DELETE turn. A repeat request for an order in flight sends nothing and shows its "
        "record (an urgent repeat moves a waiting cancel up).",
        epilog=_exit_codes(EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TIMEOUT, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    cancel.add_argument("order_ids", nargs="+", metavar="ORDER_ID", help="exchange order id (UUID)")
    cancel.add_argument("--exchange", default=DEFAULT_EXCHANGE, help="futures exchange, any case")
    cancel.add_argument(
        "--account",
        default=DEFAULT_ACCOUNT,
        help="the account (API key) the orders belong to: default, or one of the workers' "
        "COINSWITCH_ACCOUNTS",
    )
    cancel.add_argument(
        "--priority",
        default=Priority.NORMAL.value,
        choices=[p.value for p in Priority],
        help="urgent: take the next free DELETE slot ahead of every normal cancel",
    )
    cancel.add_argument(
        "--owner",
        default=None,
        help="the strategy the orders belong to, for its share of the budget (an order "
        "tracked already needs none; it tracks the others)",
    )
    cancel.add_argument(
        "--wait",
        action="store_true",
        help="print each state change and when the next send is expected, until every order "
        "is final; then a summary by state",
    )
    cancel.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="S",
        help="with --wait, give up after S seconds (exit 3)",
    )
    cancel.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines: a record per order; with --wait, each change, progress, the summary",
    )
    cancel.set_defaults(func=_cancel)

    cancel_all = commands.add_parser(
        "cancel-all",
        help="cancel every open order of a symbol (or of the account) with one exchange call",
        description="Record a cancel-all and put it in line for the account's cancel-all "
        "budget (10/60s by default). On its turn one POST /futures/cancel_all goes out, and "
        "every order the exchange names gets its own record, confirmed to its final state "
        "(through the order lists first). Without --symbol, every open order of the account "
        "is cancelled, not only a strategy's own; with --owner, only that strategy's.",
        epilog=_exit_codes(
            EXIT_OK,
            EXIT_FAILED,
            EXIT_BAD_INPUT,
            EXIT_TIMEOUT,
            EXIT_UNAVAILABLE,
            failed="the cancel-all failed, or one of its orders ended FAILED",
        ),
        formatter_class=_Formatter,
    )
    cancel_all.add_argument(
        "--symbol",
        dest="symbols",
        action="append",
        default=[],
        metavar="S",
        help="only this symbol, e.g. BTCUSDT; repeatable with --owner (none: every symbol)",
    )
    cancel_all.add_argument(
        "--owner",
        default=None,
        help="cancel only this strategy's open orders (tracked to it): one cancel-all where a "
        "symbol holds only its orders, its orders one by one where others' are open too",
    )
    cancel_all.add_argument(
        "--exchange", default=DEFAULT_EXCHANGE, help="futures exchange, any case"
    )
    cancel_all.add_argument(
        "--account", default=DEFAULT_ACCOUNT, help="the account (API key) to cancel orders of"
    )
    cancel_all.add_argument(
        "--priority",
        default=Priority.NORMAL.value,
        choices=[p.value for p in Priority],
        help="urgent: take the next free cancel-all slot ahead of normal ones",
    )
    cancel_all.add_argument(
        "--wait",
        action="store_true",
        help="print the batch's progress until every order it cancelled is final; then a "
        "summary by final state",
    )
    cancel_all.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="S",
        help="with --wait, give up after S seconds (exit 3)",
    )
    cancel_all.add_argument(
        "--json",
        action="store_true",
        help="JSON Lines: the batch record; with --wait, each change, progress, the summary",
    )
    cancel_all.set_defaults(func=_cancel_all)

    status = commands.add_parser(
        "status",
        help="print the records of one or more orders",
        description="Print what is known about each order's cancellation and, while it "
        "waits, its place in line and expected send time. Needs only REDIS_URL.",
        epilog=_exit_codes(EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    status.add_argument(
        "order_ids",
        nargs="*",
        metavar="ID",
        help="exchange order id (UUID), or a cancel-all's batch id (batch-<uuid>)",
    )
    status.add_argument(
        "--owner",
        default=None,
        help="list the orders tracked to this strategy (with --account) and their records",
    )
    status.add_argument(
        "--account", default=DEFAULT_ACCOUNT, help="with --owner: the account of its orders"
    )
    status.add_argument("--json", action="store_true", help="JSON Lines: one record per ID")
    status.set_defaults(func=_status)

    track = commands.add_parser(
        "track",
        help="track orders to a strategy (its share of the budget, its scope for mass actions)",
        description="Record that these orders belong to OWNER (a strategy's name), all or "
        "none: its cancels then take turns with other owners' in each budget, and a "
        "cancel-all or dead man's switch scoped to it touches only its orders. Call it when "
        "the orders are placed. An order tracked to another owner is refused, naming it. A "
        "tracked order forgets its owner when its record becomes final (or in 7 days).",
        epilog=_exit_codes(EXIT_OK, EXIT_BAD_INPUT, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    track.add_argument("owner", metavar="OWNER", help="the strategy, e.g. strat-a")
    track.add_argument("order_ids", nargs="+", metavar="ID", help="exchange order id (UUID)")
    track.add_argument("--account", default=DEFAULT_ACCOUNT, help="the account of the orders")
    track.add_argument(
        "--json", action="store_true", help='one document: {"owner", "account", "tracked", "new"}'
    )
    track.set_defaults(func=_track)

    limits = commands.add_parser(
        "limits",
        help="show each account's budgets, lines and the margin",
        description="Show every registered account's budgets: use in the current window, "
        "turns handed out, any 429 pause, how many wait in line and when the line drains; "
        "the margin added to every window; how many messages wait in each queue. Needs "
        "only REDIS_URL.",
        epilog=_exit_codes(EXIT_OK, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    limits.add_argument(
        "--json",
        action="store_true",
        help='one JSON document: {"budgets": [...], "margin": {...}, "queues": {...}, '
        '"watched_by_sweeper": N}',
    )
    limits.set_defaults(func=_limits)

    worker = commands.add_parser(
        "worker",
        help="run the Celery workers (one per queue) of one host",
        description="Start two Celery workers, one for the cancels queue and one for the "
        "polls queue, so a status read never holds a thread a cancel needs; restart one that "
        "dies. Each also runs a dispatcher that hands out budget turns and sweeps, so no "
        "beat is needed. Run one per host (or container); scale by adding hosts.",
        epilog=_exit_codes(EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, failed="a worker kept dying"),
        formatter_class=_Formatter,
    )
    worker.add_argument(
        "--cancel-concurrency",
        type=int,
        default=stack.DEFAULT_CANCEL_CONCURRENCY,
        metavar="N",
        help="threads sending DELETEs",
    )
    worker.add_argument(
        "--poll-concurrency",
        type=int,
        default=stack.DEFAULT_POLL_CONCURRENCY,
        metavar="N",
        help="threads reading statuses",
    )
    worker.add_argument("--loglevel", default="INFO", help="Celery's log level")
    worker.set_defaults(func=_worker)

    metrics = commands.add_parser(
        "metrics",
        help="serve Prometheus metrics for the whole fleet",
        description="Serve /metrics: per account and budget the use, lines and 429s; the "
        "margin; queue depth (waiting and held by workers); workers per queue; orders by "
        "state; dead letters; time to final; read from Redis at each scrape. Needs only "
        "REDIS_URL.",
        epilog=_exit_codes(EXIT_OK, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    metrics.add_argument("--host", default="127.0.0.1", help="address to listen on")
    metrics.add_argument(
        "--port", type=int, default=stack.DEFAULT_METRICS_PORT, help="port to listen on"
    )
    metrics.set_defaults(func=_metrics)

    run = commands.add_parser(
        "run",
        help="run the whole stack on this machine (Redis, sandbox, workers, Flower, metrics)",
        description="Use REDIS_URL if it answers (and say so, and whether that Redis keeps "
        "its data), else start redis-server on its port with data in --data-dir; without "
        "COINSWITCH_API_KEY/SECRET_KEY start the sandbox exchange (and say so); start the "
        "workers, Flower and the metrics endpoint, their output going to "
        f"DATA_DIR/{stack.RUN_LOG}. Ports already in use are refused before anything starts. "
        "Ctrl-C stops the workers, Flower and metrics first, then the sandbox and the Redis "
        "it started.",
        epilog=_exit_codes(EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, failed="a process died"),
        formatter_class=_Formatter,
    )
    run.add_argument(
        "--sentinel",
        action="store_true",
        help="start a Redis primary, a replica and three Sentinels (ports from REDIS_URL's: "
        "port, port + 1; Sentinels at port + 2..4) and use them, to try a failover",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=Path(stack.DEFAULT_DATA_DIR),
        help=f"where the embedded Redis keeps its AOF data, and {stack.RUN_LOG}",
    )
    run.add_argument(
        "--sandbox-port",
        type=int,
        default=stack.DEFAULT_SANDBOX_PORT,
        help="port of the sandbox exchange (when no keys are set)",
    )
    run.add_argument(
        "--flower-port", type=int, default=stack.DEFAULT_FLOWER_PORT, help="port of Flower"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=stack.DEFAULT_METRICS_PORT,
        help="port of the Prometheus metrics endpoint",
    )
    run.add_argument(
        "--cancel-concurrency",
        type=int,
        default=stack.DEFAULT_CANCEL_CONCURRENCY,
        metavar="N",
        help="threads sending DELETEs",
    )
    run.add_argument(
        "--poll-concurrency",
        type=int,
        default=stack.DEFAULT_POLL_CONCURRENCY,
        metavar="N",
        help="threads reading statuses",
    )
    run.add_argument(
        "--verbose",
        action="store_true",
        help="show what the workers, Flower, metrics, the sandbox and Redis print here, "
        f"instead of in DATA_DIR/{stack.RUN_LOG}",
    )
    run.add_argument(
        "--drop-leftovers",
        action="store_true",
        help="start with empty lines: cancels and confirmations an earlier run left in Redis "
        "end FAILED with error code `dropped` (start says how many wait otherwise; against a "
        "new sandbox they could only end FAILED(order_not_found), after using its budgets)",
    )
    run.set_defaults(func=_run)

    _add_deadman(commands)
    sandbox_cli.add_parser(commands, _Formatter)
    return parser


def _add_deadman(commands: Any) -> None:
    deadman = commands.add_parser(
        "deadman",
        help="a dead man's switch: cancel a strategy's orders when it stops beating",
        description="Arm a switch and beat it (every timeout / 4 is advised); when no beat "
        "comes within its timeout, the workers send an urgent cancel-all for each guarded "
        "symbol (every open order of the account when none is given). A tripped switch "
        "stays tripped until armed again. Disarm it before a planned stop.",
        formatter_class=_Formatter,
    )
    actions = deadman.add_subparsers(dest="action", required=True, metavar="ACTION")
    arm = actions.add_parser(
        "arm",
        help="arm (or re-arm) a switch",
        description="Arm a switch, or re-arm it with new settings (a tripped one too).",
        epilog=_exit_codes(EXIT_OK, EXIT_BAD_INPUT, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    arm.add_argument("name", metavar="NAME", help="the switch's name, e.g. strat-1")
    arm.add_argument(
        "--timeout", type=float, required=True, metavar="S", help="seconds without a beat, 2-3600"
    )
    arm.add_argument(
        "--symbol",
        dest="symbols",
        action="append",
        default=[],
        metavar="S",
        help="a symbol to guard, repeatable (none: EVERY open order of the account)",
    )
    arm.add_argument("--account", default=DEFAULT_ACCOUNT, help="the account whose orders")
    arm.add_argument(
        "--owner",
        default=None,
        help="guard only this strategy's open orders (tracked to it): when it fires, no "
        "other strategy's order is touched",
    )
    arm.add_argument("--exchange", default=DEFAULT_EXCHANGE, help="futures exchange")
    arm.add_argument("--json", action="store_true", help="print the switch as JSON")
    arm.set_defaults(func=_deadman_arm)
    beat = actions.add_parser(
        "beat",
        help="beat a switch until stopped (for shell scripts)",
        description="Beat the switch every S seconds until Ctrl-C or SIGTERM; then the "
        "switch fires after its timeout unless disarmed. Exits 5 if it has tripped.",
        epilog=_exit_codes(EXIT_OK, EXIT_BAD_INPUT, EXIT_UNAVAILABLE, EXIT_TRIPPED),
        formatter_class=_Formatter,
    )
    beat.add_argument("name", metavar="NAME", help="the switch's name")
    beat.add_argument(
        "--every",
        type=float,
        default=None,
        metavar="S",
        help="seconds between beats (default: the switch's timeout / 4)",
    )
    beat.set_defaults(func=_deadman_beat)
    disarm = actions.add_parser(
        "disarm",
        help="disarm a switch (before a planned stop)",
        epilog=_exit_codes(EXIT_OK, EXIT_BAD_INPUT, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    disarm.add_argument("name", metavar="NAME", help="the switch's name")
    disarm.add_argument("--json", action="store_true", help="print the switch as JSON")
    disarm.set_defaults(func=_deadman_disarm)
    status = actions.add_parser(
        "status",
        help="show switches",
        epilog=_exit_codes(EXIT_OK, EXIT_BAD_INPUT, EXIT_UNAVAILABLE),
        formatter_class=_Formatter,
    )
    status.add_argument("name", nargs="?", metavar="NAME", help="one switch (default: all)")
    status.add_argument("--json", action="store_true", help="JSON Lines: one switch per line")
    status.set_defaults(func=_deadman_status)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    A reader that stops early (`| head -1`) ends the command quietly with EXIT_STDOUT_CLOSED,
    as the Python docs advise for BrokenPipeError (SIGPIPE stays ignored, so a closed socket
    never kills a process silently).
    """
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where EPIPE prints a warning
    except BrokenPipeError:
        # Whatever is still buffered goes nowhere, so the final flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_STDOUT_CLOSED
    return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in SHORT_COMMANDS:
        # Logs go to stderr, so stdout holds only the command's output (pure JSON with
        # --json); structlog unconfigured would print them on stdout.
        from worker.log import configure_logging

        configure_logging(os.environ.get("CANCEL_WORKER_LOG_LEVEL") or CLI_LOG_LEVEL)
    try:
        code: int = args.func(args)
    except InvalidRequest as exc:
        written = {"cancel": "; nothing was enqueued", "cancel-all": "; nothing was enqueued"}
        written["deadman"] = "; nothing was armed or changed"
        suffix = written.get(args.command, "")
        print(f"cancel-worker: error: {exc}{suffix}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SwitchTripped as exc:
        print(f"cancel-worker: {exc}", file=sys.stderr)
        return EXIT_TRIPPED
    except (BrokerUnavailable, ConfigError) as exc:
        print(f"cancel-worker: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (redis.RedisError, OperationalError) as exc:
        where_to = redact_url(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
        print(f"cancel-worker: error: Redis unavailable at {where_to}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return code


def _cancel(args: argparse.Namespace) -> int:
    from worker.producer import get_records, request_cancels
    from worker.services import get_services

    records = request_cancels(
        args.order_ids,
        args.exchange,
        account=args.account,
        priority=args.priority,
        owner=args.owner,
    )
    for record in records:
        show(record, args.json, sys.stdout)
    if not args.wait:
        return EXIT_OK
    estimates = Estimates(get_services().observer())
    progress = Progress(sys.stdout, args.json)
    order_ids = [record.order_id for record in records]
    seen = {record.order_id: record.state for record in records}
    deadline = time.monotonic() + args.timeout
    while True:
        latest = get_records(order_ids)
        current = {r.order_id: r for r in latest if r is not None}
        for order_id, record in current.items():
            if seen.get(order_id) != record.state:
                seen[order_id] = record.state
                progress.changed(record)
        pending = [r for r in current.values() if not r.is_final]
        if not pending and len(current) == len(order_ids):
            progress.summary(list(latest))
            failed = any(r.state is OrderState.FAILED for r in current.values())
            return EXIT_FAILED if failed else EXIT_OK
        if time.monotonic() > deadline:
            progress.summary(list(latest))
            missing = [i for i in order_ids if i not in current or not current[i].is_final]
            print(
                f"cancel-worker: timed out after {args.timeout:g}s; not final yet: "
                + ", ".join(missing),
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        progress.report(estimates, pending)
        time.sleep(WAIT_POLL_INTERVAL_S)


def _cancel_all(args: argparse.Namespace) -> int:
    from worker.producer import get_batch, get_records, request_cancel_all

    if len(args.symbols) > 1 and args.owner is None:
        raise InvalidRequest(
            "symbol", args.symbols, "is given more than once: only with --owner (or one batch each)"
        )
    batch = request_cancel_all(
        args.exchange,
        args.symbols[0] if len(args.symbols) == 1 and args.owner is None else None,
        account=args.account,
        priority=args.priority,
        owner=args.owner,
        symbols=args.symbols if args.owner is not None else None,
    )
    show_batch(batch, args.json, sys.stdout)
    if not args.wait:
        return EXIT_OK
    progress = Progress(sys.stdout, args.json)
    deadline = time.monotonic() + args.timeout
    state = batch.state
    while True:
        current = get_batch(batch.batch_id) or batch
        if current.state != state:
            state = current.state
            show_batch(current, args.json, sys.stdout)
        ids = [*current.orders_ids]  # an owner's: its DELETEs, then its cancel-alls' orders
        for child in filter(None, map(get_batch, current.batches)):
            ids += child.orders_ids
        records = get_records(ids) if ids else []
        if current.is_final:
            progress.summary(records)
            failed = current.state is BatchState.FAILED or any(
                r is not None and r.state is OrderState.FAILED for r in records
            )
            return EXIT_FAILED if failed else EXIT_OK
        if time.monotonic() > deadline:
            progress.summary(records)
            print(
                f"cancel-worker: timed out after {args.timeout:g}s; {batch.batch_id} is "
                f"{current.state.value}",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        progress.batch_report(current, records)
        time.sleep(WAIT_POLL_INTERVAL_S)


def _track(args: argparse.Namespace) -> int:
    from worker.owners import track_orders

    new = track_orders(args.order_ids, args.owner, args.account)
    report = {"owner": args.owner, "account": args.account, "tracked": len(args.order_ids)}
    if args.json:
        print(json.dumps({**report, "new": new}), flush=True)
    else:
        print(f"{args.owner}: {len(args.order_ids)} tracked ({new} new) on {args.account}")
    return EXIT_OK


def _owned(args: argparse.Namespace) -> int:
    from worker.owners import owned_orders
    from worker.services import get_services

    estimates = Estimates(get_services().observer())
    owned = owned_orders(args.owner, args.account)
    if not owned and not args.json:
        print(f"no open order is tracked to {args.owner} on {args.account}", flush=True)
    for item in owned:
        record = item.record
        if record is None:
            if args.json:
                print(json.dumps({"order_id": item.order_id, "owner": args.owner, "state": None}))
            else:
                print(f"{item.order_id}  tracked to {args.owner}, no cancel requested")
            continue
        _show_record(record, estimates, args.json)
    return EXIT_OK


def _show_record(record: Any, estimates: Estimates, as_json: bool) -> None:
    """One record, with its place in line while it waits for a turn."""
    waiting = where(estimates, record)
    if as_json:
        print(json.dumps({**record.public(), "waiting": waiting_json(waiting)}), flush=True)
    else:
        line = record_line(record)
        print(line + ("  " + waiting_text(waiting) if waiting else ""), flush=True)


def _status(args: argparse.Namespace) -> int:
    from worker.producer import get_batch, get_records
    from worker.services import get_services

    if args.owner is not None:
        if args.order_ids:
            raise InvalidRequest("ID", args.order_ids, "is not taken with --owner")
        return _owned(args)
    if not args.order_ids:
        raise InvalidRequest("ID", [], "is missing: name an order or batch, or --owner")
    batch_ids = [i for i in args.order_ids if i.startswith(BATCH_PREFIX)]
    batches = {i: get_batch(i) for i in batch_ids}  # validates every batch id first
    order_ids = [i for i in args.order_ids if not i.startswith(BATCH_PREFIX)]
    records = dict(zip(order_ids, get_records(order_ids), strict=True))  # and every order id
    estimates = Estimates(get_services().observer())
    code = EXIT_OK
    for batch_id, batch in batches.items():
        if batch is None:
            code = EXIT_FAILED
            if args.json:
                print(json.dumps({"batch_id": batch_id, "state": None}), flush=True)
            else:
                print(f"{batch_id}  no such cancel-all (or its record expired)", flush=True)
            continue
        show_batch(batch, args.json, sys.stdout)
    for order_id, record in records.items():
        if record is None:
            code = EXIT_FAILED
            if args.json:
                print(json.dumps({"order_id": order_id.lower(), "state": None}), flush=True)
            else:
                print(f"{order_id}  no cancel requested (or its record expired)", flush=True)
            continue
        _show_record(record, estimates, args.json)
    return code


def _limits(args: argparse.Namespace) -> int:
    from worker.keys import CANCEL_QUEUE, POLL_QUEUE
    from worker.progress import duration
    from worker.services import get_services

    services = get_services()
    observer = services.observer()
    estimates = Estimates(observer)
    budgets: list[dict[str, Any]] = []
    for account in sorted(observer.accounts):
        for bucket in Bucket:
            row = {**estimates.usage(account, bucket).__dict__, "bucket": bucket.value}
            row.pop("margin_ms")  # the same for every budget: in "margin"
            row["owners"] = [
                {"owner": owner or None, "waiting": waiting, "urgent": urgent}
                for owner, (waiting, urgent) in sorted(row["owners"].items())
            ]
            budgets.append(row)
    margin = {
        "ms": observer.margin_ms(),
        "floor_ms": services.settings.rate_margin_ms,
        "ceiling_ms": services.settings.rate_margin_max_ms,
    }
    queues = {queue: int(services.redis.llen(queue)) for queue in (CANCEL_QUEUE, POLL_QUEUE)}
    watched = services.store.count_due()
    report = {"budgets": budgets, "margin": margin, "queues": queues, "watched_by_sweeper": watched}
    if not observer.accounts:
        print("no accounts registered yet: start a worker (cancel-worker worker)", file=sys.stderr)
    if args.json:
        print(json.dumps(report), flush=True)
        return EXIT_OK
    for row in budgets:
        line = (
            f"{row['account']:<10} {row['bucket']:<13} {row['used_in_window']}/{row['limit']} "
            f"per {row['period_s']:g}s  in line {row['waiting']}"
        )
        if row["waiting_urgent"]:
            line += f" ({row['waiting_urgent']} urgent)"
        if row["waiting"]:
            line += f", drains in ~{duration(row['drain_s'])}"
        if any(o["owner"] for o in row["owners"]):  # strategies sharing the account
            line += " [" + ", ".join(_owner_waiting(o) for o in row["owners"]) + "]"
        if row["counting_down"]:
            line += f"  counting down {row['counting_down']}"
        line += f"  paused {row['paused_ms']} ms  sent {row['sent']}"
        line += f"  429s {row['rate_limited']}"
        print(line)
    print(
        f"margin     {margin['ms']} ms added to every window (learned from response times; "
        f"floor {margin['floor_ms']}, ceiling {margin['ceiling_ms']})"
    )
    for queue, waiting in queues.items():
        print(f"queue {queue}  waiting {waiting}")
    print(f"watched_by_sweeper {watched}", flush=True)
    return EXIT_OK


def _owner_waiting(row: dict[str, Any]) -> str:
    text = f"{row['owner'] or '(no owner)'} {row['waiting']}"
    return text + (f" ({row['urgent']} urgent)" if row["urgent"] else "")


def _switch_line(switch: Any) -> str:
    scope = ",".join(switch.symbols) or "EVERY symbol of the account"
    if switch.owner:
        scope = f"owner={switch.owner}'s orders of " + (",".join(switch.symbols) or "every symbol")
    line = f"{switch.name}  {switch.state.value}  account={switch.account}  {scope}"
    line += f"  timeout {switch.timeout_s:g}s"
    if switch.left_ms is not None:
        line += f"  fires in {switch.left_ms / 1000:.1f}s without a beat"
    if switch.tripped_at:
        line += (
            f"  tripped at {time.strftime('%H:%M:%S', time.localtime(switch.tripped_at / 1000))}"
        )
    if switch.batches:
        line += f"  sent {', '.join(switch.batches)}"
    return line


def _show_switch(switch: Any, as_json: bool) -> None:
    print(json.dumps(switch.to_dict()) if as_json else _switch_line(switch), flush=True)


def _deadman_arm(args: argparse.Namespace) -> int:
    from worker.deadman import arm_deadman

    switch = arm_deadman(
        args.name,
        args.timeout,
        args.symbols,
        account=args.account,
        exchange=args.exchange,
        owner=args.owner,
    )
    if not switch.symbols and switch.owner is None:
        print(
            f"cancel-worker: warning: {switch.name} guards the whole account "
            f"{switch.account!r}: if it fires, EVERY open order of the account is cancelled, "
            "not only this strategy's (use --owner or --symbol to guard only yours)",
            file=sys.stderr,
        )
    _show_switch(switch, args.json)
    return EXIT_OK


def _deadman_beat(args: argparse.Namespace) -> int:
    from worker.deadman import deadman_status, heartbeat

    timeout_ms = heartbeat(args.name)
    every_s = args.every if args.every else timeout_ms / 4000
    print(
        f"beating {args.name} every {every_s:g}s (timeout {timeout_ms / 1000:g}s); "
        "stop with Ctrl-C: the switch then fires unless disarmed",
        flush=True,
    )
    stop = False

    def on_signal(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stop:
            time.sleep(every_s)
            if stop:
                break
            try:
                heartbeat(args.name)
            except SwitchTripped as exc:
                print(f"cancel-worker: {exc}", file=sys.stderr)
                return EXIT_TRIPPED
            except BrokerUnavailable as exc:  # keep trying; the switch fires if Redis stays away
                print(f"cancel-worker: error: {exc}; still trying", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    left = deadman_status(args.name)[0].left_ms
    when = f"in {left / 1000:.1f}s" if left is not None else "soon"
    print(f"stopped beating {args.name}: it fires {when} unless disarmed", flush=True)
    return EXIT_OK


def _deadman_disarm(args: argparse.Namespace) -> int:
    from worker.deadman import disarm

    _show_switch(disarm(args.name), args.json)
    return EXIT_OK


def _deadman_status(args: argparse.Namespace) -> int:
    from worker.deadman import deadman_status

    switches = deadman_status(args.name)
    if not switches and not args.json:
        print("no dead man's switch has been armed", flush=True)
    for switch in switches:
        _show_switch(switch, args.json)
    return EXIT_OK


def _worker(args: argparse.Namespace) -> int:
    from worker.log import configure_logging
    from worker.settings import Settings

    Settings.from_env().signing_accounts()  # fail here, naming the variable, not in a task
    configure_logging()
    supervisor = stack.Supervisor()
    commands = stack.worker_commands(args.cancel_concurrency, args.poll_concurrency, args.loglevel)
    for name, command in commands.items():
        supervisor.start(name, command, restart=True)
    return supervisor.run_until_stopped()


def _metrics(args: argparse.Namespace) -> int:
    from prometheus_client import REGISTRY, start_http_server

    from worker.log import configure_logging
    from worker.metrics import FleetCollector
    from worker.services import get_services

    services = get_services()
    services.redis.ping()  # refuse to start against a Redis that does not answer
    configure_logging()
    REGISTRY.register(FleetCollector(services))
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # delivered to sigwait below
    try:
        server, _ = start_http_server(args.port, addr=args.host)
    except OSError as exc:
        raise ConfigError("--port", f"cannot listen on {args.host}:{args.port}: {exc}") from None
    print(f"metrics on http://{args.host}:{args.port}/metrics", flush=True)
    signal.sigwait(stop_signals)
    server.shutdown()
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from worker.log import configure_logging
    from worker.settings import Settings

    Settings.from_env()  # a bad variable stops `run` naming it, before anything starts
    configure_logging()
    options = stack.RunOptions(
        sentinel=args.sentinel,
        data_dir=args.data_dir,
        sandbox_port=args.sandbox_port,
        flower_port=args.flower_port,
        metrics_port=args.metrics_port,
        cancel_concurrency=args.cancel_concurrency,
        poll_concurrency=args.poll_concurrency,
        verbose=args.verbose,
        drop_leftovers=args.drop_leftovers,
    )
    return stack.run_stack(options)


if __name__ == "__main__":
    sys.exit(main())
