"""The `cancel-worker` command line: cancel, status, limits, sandbox.

Exit codes: 0 every order ended well (or, without --wait, was enqueued); 1 an order ended
FAILED; 2 bad input (nothing enqueued); 3 --wait timed out; 4 Redis or configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from worker import stack
from worker.errors import BrokerUnavailable, ConfigError, InvalidRequest
from worker.models import (
    DEFAULT_ACCOUNT,
    DEFAULT_EXCHANGE,
    Bucket,
    CancelRecord,
    OrderState,
    Priority,
)
from worker.sandbox import cli as sandbox_cli
from worker.scheduler import Scheduler, Waiting

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TIMEOUT = 3
EXIT_UNAVAILABLE = 4

DEFAULT_WAIT_TIMEOUT_S = 120.0
WAIT_POLL_INTERVAL_S = 0.1  # how often --wait re-reads the records (one MGET each time)
WAIT_REPORT_S = 5.0  # how often --wait says when the next send is expected (not on a TTY)
TTY_REPORT_S = 0.5  # how often the live progress line is redrawn on a TTY


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
        help="enqueue cancels for one or more orders",
        description="Validate the order ids, record them QUEUED and enqueue their cancels. "
        "A repeat request for an order in flight enqueues nothing and shows its record.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        "--wait", action="store_true", help="show progress until every order is final"
    )
    cancel.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT_S,
        metavar="S",
        help="with --wait, give up after S seconds (exit 3)",
    )
    cancel.add_argument("--json", action="store_true", help="print one JSON record per line")
    cancel.set_defaults(func=_cancel)

    status = commands.add_parser(
        "status",
        help="print the records of one or more orders",
        description="Print what is known about each order's cancellation.",
    )
    status.add_argument("order_ids", nargs="+", metavar="ORDER_ID", help="exchange order id (UUID)")
    status.add_argument("--json", action="store_true", help="print one JSON record per line")
    status.set_defaults(func=_status)

    limits = commands.add_parser(
        "limits",
        help="show each rate-limit bucket's use and the queue backlog",
        description="Show the fleet-wide budgets: use in the current window, slots booked "
        "ahead, any 429 pause, and how many messages wait in each queue.",
    )
    limits.add_argument("--json", action="store_true", help="print one JSON object per line")
    limits.set_defaults(func=_limits)

    worker = commands.add_parser(
        "worker",
        help="run the Celery workers (one per queue) of one host",
        description="Start two Celery workers, one for the cancels queue and one for the "
        "polls queue, so a poll waiting for status budget never delays a cancel. Run one "
        "per host (or container) and scale by adding hosts. Each worker also runs a "
        "dispatcher that hands out budget turns and sweeps: no beat is needed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    worker.add_argument(
        "--cancel-concurrency", type=int, default=stack.DEFAULT_CANCEL_CONCURRENCY, metavar="N"
    )
    worker.add_argument(
        "--poll-concurrency", type=int, default=stack.DEFAULT_POLL_CONCURRENCY, metavar="N"
    )
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=_worker)

    metrics = commands.add_parser(
        "metrics",
        help="serve Prometheus metrics for the whole fleet",
        description="Serve /metrics: budget use per bucket, 429s, queue depth (waiting and "
        "held by workers), orders by state and time to final, read from Redis per scrape.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    metrics.add_argument("--host", default="127.0.0.1")
    metrics.add_argument("--port", type=int, default=stack.DEFAULT_METRICS_PORT)
    metrics.set_defaults(func=_metrics)

    run = commands.add_parser(
        "run",
        help="run the whole stack on this machine (Redis, sandbox, workers, Flower, metrics)",
        description="Use REDIS_URL if it answers, else start redis-server on its port with "
        "data in --data-dir; without COINSWITCH_API_KEY/SECRET_KEY start the sandbox "
        "exchange (and say so); start the workers, Flower and the metrics endpoint. "
        "Ctrl-C stops everything.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--data-dir", type=Path, default=Path(stack.DEFAULT_DATA_DIR))
    run.add_argument("--sandbox-port", type=int, default=stack.DEFAULT_SANDBOX_PORT)
    run.add_argument("--flower-port", type=int, default=stack.DEFAULT_FLOWER_PORT)
    run.add_argument("--metrics-port", type=int, default=stack.DEFAULT_METRICS_PORT)
    run.set_defaults(func=_run)

    sandbox_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except InvalidRequest as exc:
        print(f"cancel-worker: error: {exc}; nothing was enqueued", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (BrokerUnavailable, ConfigError) as exc:
        print(f"cancel-worker: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return code


def _record_line(record: CancelRecord) -> str:
    line = f"{record.order_id}  {record.state.value}"
    if record.error:
        line += f"  error={record.error.get('code')}: {record.error.get('message')}"
    if record.attempts:
        line += f"  attempts={record.attempts}"
    if record.account != DEFAULT_ACCOUNT:
        line += f"  account={record.account}"
    if record.priority != Priority.NORMAL.value:
        line += f"  priority={record.priority}"
    return line


def _show(record: CancelRecord, as_json: bool, out: TextIO) -> None:
    print(json.dumps(record.public()) if as_json else _record_line(record), file=out, flush=True)


def _where(observer: Scheduler, record: CancelRecord) -> Waiting | None:
    """Where an unfinished order waits: in line for a DELETE, or for a status read."""
    if record.is_final:
        return None
    for bucket in (Bucket.CANCEL, Bucket.STATUS):
        waiting = observer.waiting(record.account, bucket, record.order_id)
        if waiting is not None:
            return waiting
    return None


def _in(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _waiting_text(waiting: Waiting) -> str:
    what = "a DELETE" if waiting.bucket is Bucket.CANCEL else "a status read"
    eta = _in((waiting.eta_ms - waiting.now_ms) / 1000)
    clock = time.strftime("%H:%M:%S", time.localtime(waiting.eta_ms / 1000))
    if waiting.place is None:
        return f"{what} after a countdown, expected in ~{eta} ({clock})"
    return (
        f"place {waiting.place} of {waiting.ready} in line for {what}, expected in ~{eta} ({clock})"
    )


def _waiting_json(waiting: Waiting) -> dict[str, Any]:
    return {
        "bucket": waiting.bucket.value,
        "place": waiting.place,
        "in_line": waiting.ready,
        "eta_ms": waiting.eta_ms,
    }


class Progress:
    """What `cancel --wait` prints while it waits: state changes, and when sends are due.

    On a TTY one live line is redrawn; otherwise a plain line every WAIT_REPORT_S.
    """

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.tty = out.isatty() and not as_json
        self.next_report = time.monotonic() + (TTY_REPORT_S if self.tty else WAIT_REPORT_S)
        self._live = False

    def changed(self, record: CancelRecord) -> None:
        self._clear()
        _show(record, self.as_json, self.out)

    def report(self, observer: Scheduler, pending: list[CancelRecord]) -> None:
        """Say how many are pending and when the soonest send of one of them is expected."""
        now = time.monotonic()
        if now < self.next_report or not pending:
            return
        self.next_report = now + (TTY_REPORT_S if self.tty else WAIT_REPORT_S)
        places = [w for w in (_where(observer, r) for r in pending) if w is not None]
        soonest = min(places, key=lambda w: w.eta_ms, default=None)
        if self.as_json:
            line = json.dumps(
                {"pending": len(pending), "next": _waiting_json(soonest) if soonest else None}
            )
        else:
            line = f"waiting: {len(pending)} not final"
            if soonest is not None:
                line += "; next " + _waiting_text(soonest)
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
            self.out.flush()
            self._live = True
        else:
            print(line, file=self.out, flush=True)

    def summary(self, records: list[CancelRecord | None]) -> None:
        """The count of orders by final state (or still pending)."""
        self._clear()
        counts: dict[str, int] = {}
        for record in records:
            state = "NO_RECORD" if record is None else record.state.value
            counts[state] = counts.get(state, 0) + 1
        if self.as_json:
            print(json.dumps({"summary": counts}), file=self.out, flush=True)
        else:
            text = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            print(f"summary: {text}", file=self.out, flush=True)

    def _clear(self) -> None:
        if self._live:
            self.out.write("\r\x1b[2K")
            self._live = False


def _cancel(args: argparse.Namespace) -> int:
    from worker.producer import get_records, request_cancels
    from worker.services import get_services

    records = request_cancels(
        args.order_ids, args.exchange, account=args.account, priority=args.priority
    )
    for record in records:
        _show(record, args.json, sys.stdout)
    if not args.wait:
        return EXIT_OK
    observer = get_services().observer()
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
        progress.report(observer, pending)
        time.sleep(WAIT_POLL_INTERVAL_S)


def _status(args: argparse.Namespace) -> int:
    from worker.producer import get_records
    from worker.services import get_services

    code = EXIT_OK
    observer = get_services().observer()
    for order_id, record in zip(args.order_ids, get_records(args.order_ids), strict=True):
        if record is None:
            print(f"{order_id}  no cancel requested (or its record expired)", file=sys.stderr)
            code = EXIT_FAILED
            continue
        waiting = _where(observer, record)
        if args.json:
            data = record.public()
            data["waiting"] = _waiting_json(waiting) if waiting is not None else None
            print(json.dumps(data), flush=True)
        else:
            line = _record_line(record)
            if waiting is not None:
                line += "  " + _waiting_text(waiting)
            print(line, flush=True)
    return code


def _limits(args: argparse.Namespace) -> int:
    from worker.keys import CANCEL_QUEUE, POLL_QUEUE
    from worker.services import get_services

    services = get_services()
    observer = services.observer()
    rows: list[dict[str, Any]] = []
    for account in sorted(observer.accounts):
        for bucket in Bucket:
            usage = observer.usage(account, bucket)
            row = {**usage.__dict__, "bucket": bucket.value}
            row.pop("margin_ms")
            rows.append(row)
    rows.append(
        {
            "margin_ms": observer.margin_ms(),
            "margin_floor_ms": services.settings.rate_margin_ms,
            "margin_ceiling_ms": services.settings.rate_margin_max_ms,
        }
    )
    for queue in (CANCEL_QUEUE, POLL_QUEUE):
        rows.append({"queue": queue, "waiting": int(services.redis.llen(queue))})
    rows.append({"watched_by_sweeper": services.store.count_due()})
    if not observer.accounts:
        print("no accounts registered yet: start a worker (cancel-worker worker)", file=sys.stderr)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        elif "bucket" in row:
            line = (
                f"{row['account']:<10} {row['bucket']:<13} {row['used_in_window']}/{row['limit']} "
                f"per {row['period_s']:g}s  in line {row['waiting']}"
            )
            if row["waiting_urgent"]:
                line += f" ({row['waiting_urgent']} urgent)"
            if row["waiting"]:
                line += f", drains in ~{_in(row['drain_s'])}"
            if row["counting_down"]:
                line += f"  counting down {row['counting_down']}"
            line += (
                f"  paused {row['paused_ms']} ms  sent {row['sent']}  429s {row['rate_limited']}"
            )
            print(line)
        elif "margin_ms" in row:
            print(
                f"margin     {row['margin_ms']} ms added to every window (learned from "
                f"response times; floor {row['margin_floor_ms']}, ceiling "
                f"{row['margin_ceiling_ms']})"
            )
        else:
            print("  ".join(f"{k} {v}" for k, v in row.items()))
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
    import signal

    from prometheus_client import REGISTRY, start_http_server

    from worker.log import configure_logging
    from worker.metrics import FleetCollector
    from worker.services import get_services

    configure_logging()
    REGISTRY.register(FleetCollector(get_services()))
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # delivered to sigwait below
    server, _ = start_http_server(args.port, addr=args.host)
    print(f"metrics on http://{args.host}:{args.port}/metrics", flush=True)
    signal.sigwait(stop_signals)
    server.shutdown()
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from worker.log import configure_logging

    configure_logging()
    options = stack.RunOptions(
        data_dir=args.data_dir,
        sandbox_port=args.sandbox_port,
        flower_port=args.flower_port,
        metrics_port=args.metrics_port,
    )
    return stack.run_stack(options)


if __name__ == "__main__":
    sys.exit(main())
