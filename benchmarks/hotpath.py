"""Benchmark 2: the hot path, a cancel that meets a free budget, beside Celery alone.

Each variant runs in a process of its own (`python -m benchmarks.hotpath VARIANT`: the
service reads REDIS_URL once), with a fresh Redis, the sandbox in the bench process (cancels
and status reads 1000/1s: the budget is free) and `cancel-worker worker` (its two Celery
workers, threads pool):
- `one`: one redis-server, the default account only;
- `accounts`: the same with 300 more (idle) accounts configured on the worker;
- `sentinel`: a primary, a replica and three Sentinels (worker.stack.SentinelLayout): the
  service confirms each request and each send time on the replica before going on.

The sandbox runs in a process of its own (as an exchange would: the strategy's process does
not serve it), stamping each request's arrival on the machine's monotonic clock, which the
bench process shares. One cancel at a time, each timed on an idle worker (the one before
has stored its answer), round by round in a rotating order:
a. `request_cancel` → the DELETE's arrival at the sandbox (perf_counter);
b. a cancel sent by name, `send_task("cancel_worker.cancel_order", [id])`, as a Node.js or
   Go service does → arrival;
c. the anchor, Celery alone: a Celery app configured as the service's is (late acks,
   prefetch 1, task events; benchmarks.plain_app with PLAIN_AS_SERVICE=1) on the same
   Redis, threads pool -c 4, whose task signs and sends the same DELETE with the same
   client: `send_task` → arrival;
d. a direct signed DELETE with requests from this process → arrival;
and how long the calls (a) and (c) block their caller.

Also, in this process (`one`'s Redis): a hand-out's cost, `Scheduler.release()` with 1, 100
and 1,000 accounts served, nothing waiting and one cancel waiting; and one cancel's trace:
the Redis commands it causes, from the request to the DELETE (MONITOR).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

import redis
import requests

from benchmarks import fmt
from benchmarks.common import (
    ORDER_FIELDS,
    BenchError,
    Processes,
    apply_env,
    celery_worker_args,
    exit_on_sigterm,
    percentile,
    quiet_logging,
    say,
    service_env,
    wait_until,
    wait_workers_ready,
)
from benchmarks.report import Axes, Figures, Goal, Report, Results, Table
from tests.redis_server import free_ports, redis_server
from worker.exchange import ORDER_PATH
from worker.sandbox import AdminClient, SandboxConfig, generate_keypair, run_sandbox
from worker.signing import Signer

VARIANTS = ("one", "accounts", "sentinel")
RATE = "1000/1s"  # cancels and status reads: the budget is free
CONFIRM_DELAY_MS = 200
IDLE_ACCOUNTS = 300
WARMUP = 5  # rounds first and not measured (connections, imports, scripts, learning)
ARRIVAL_TIMEOUT_S = 10.0
PROCESS_TIMEOUT_S = 600.0
ANCHOR_CONCURRENCY = 4
HANDOUT_ACCOUNTS = (1, 100, 1000)
HANDOUT_CALLS = 200  # release() calls timed per setting
TRACE_SETTLE_S = 1.5  # the earlier cancels' status reads are over before the traced one
KINDS = ("service", "by_name", "anchor", "direct")


def run(*, smoke: bool, work_dir: Path) -> dict[str, Any]:
    """Each variant in a process of its own, then the hand-out cost; the figures."""
    procs = Processes(work_dir)
    variants: dict[str, Any] = {}
    try:
        for variant in VARIANTS:
            out = work_dir / f"hotpath-{variant}.json"
            args = [sys.executable, "-m", "benchmarks.hotpath", variant, "--out", str(out)]
            args += ["--log-dir", str(work_dir)] + (["--smoke"] if smoke else [])
            say(f"hotpath: {variant}")
            proc = procs.start(f"hotpath-{variant}", args, os.environ)
            wait_until(_ended(proc), PROCESS_TIMEOUT_S, f"{variant} to end")
            if proc.returncode != 0:
                tail = procs.log_tail(f"hotpath-{variant}")
                raise BenchError(f"hotpath {variant} exited with {proc.returncode}:\n{tail}")
            variants[variant] = json.loads(out.read_text())
    finally:
        procs.stop_all()
    return {"variants": variants, "handout": _handout_cost(smoke=smoke)}


class RemoteSandbox:
    """The sandbox in a child process, with a probe of when each request arrives there.

    The child stamps arrivals with `time.perf_counter` (CLOCK_MONOTONIC on Linux, one clock
    for every process of the machine) and passes them over a queue.
    """

    def __init__(self, config: SandboxConfig, api_keys: list[str]) -> None:
        context = multiprocessing.get_context("fork")  # before this process starts threads
        self._arrivals: Any = context.Queue()
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(config, api_keys, self._arrivals, child), daemon=True
        )
        self._process.start()
        if not parent.poll(ARRIVAL_TIMEOUT_S):
            raise BenchError("the sandbox process did not start")
        self.url: str = parent.recv()
        self.admin = AdminClient(self.url)
        self._times: dict[str, list[float]] = {}

    def count(self, endpoint: str) -> int:
        """How many requests to `endpoint` have arrived so far."""
        self._drain(block_s=0.0)
        return len(self._times.get(endpoint, []))

    def wait_for(self, endpoint: str, count: int, timeout_s: float) -> float:
        """Wait until the `count`-th request to `endpoint` has arrived; return its time."""
        deadline = time.monotonic() + timeout_s
        while len(self._times.get(endpoint, [])) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{endpoint} request #{count} did not arrive in {timeout_s:g}s")
            self._drain(block_s=left)
        return self._times[endpoint][count - 1]

    def _drain(self, *, block_s: float) -> None:
        try:
            endpoint, at = (
                self._arrivals.get(timeout=block_s) if block_s else self._arrivals.get_nowait()
            )
        except queue.Empty:
            return
        self._times.setdefault(endpoint, []).append(at)
        while True:
            try:
                endpoint, at = self._arrivals.get_nowait()
            except queue.Empty:
                return
            self._times.setdefault(endpoint, []).append(at)

    def stop(self) -> None:
        """End the sandbox process."""
        self._process.terminate()
        self._process.join(ARRIVAL_TIMEOUT_S)


def _serve(config: SandboxConfig, api_keys: list[str], arrivals: Any, ready: Any) -> None:
    """The child: run the sandbox, put every arrival on the queue, until terminated."""
    quiet_logging()
    with run_sandbox(config, api_keys=api_keys) as sandbox:
        stats = sandbox.app.stats
        original = stats.arrival

        def arrival(endpoint: str, *args: Any, **kwargs: Any) -> Any:
            arrivals.put((endpoint, time.perf_counter()))
            return original(endpoint, *args, **kwargs)

        stats.arrival = arrival  # type: ignore[method-assign]  # a probe on this instance only
        ready.send(sandbox.url)
        threading.Event().wait()


def _ended(proc: Any) -> Callable[[], bool]:
    return lambda: proc.poll() is not None


# ---- one variant, in its own process -------------------------------------------------------


def run_main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.hotpath VARIANT --out FILE --log-dir DIR [--smoke]`."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hotpath")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    quiet_logging()
    exit_on_sigterm()
    rounds = 20 if args.smoke else 200
    result = measure(args.variant, rounds, args.log_dir / f"hotpath-{args.variant}")
    args.out.write_text(json.dumps(result))
    return 0


def measure(variant: str, rounds: int, log_dir: Path) -> dict[str, Any]:
    """Start Redis (or Sentinels), the sandbox, the worker and the anchor; time the rounds."""
    log_dir.mkdir(parents=True, exist_ok=True)
    api_key, secret_key = generate_keypair()
    config = SandboxConfig(cancel_limit=RATE, status_limit=RATE, confirm_delay_ms=CONFIRM_DELAY_MS)
    procs = Processes(log_dir)
    with ExitStack() as stack:
        stack.callback(procs.stop_all)
        sandbox = RemoteSandbox(config, [api_key])
        stack.callback(sandbox.stop)
        redis_url, primary_url = _redis(variant, stack, procs, log_dir)
        env = service_env(
            redis_url=redis_url,
            sandbox_url=sandbox.url,
            api_key=api_key,
            secret_key=secret_key,
            cancel_rate=RATE,
            status_rate=RATE,
            PLAIN_REDIS_URL=primary_url,
            PLAIN_AS_SERVICE="1",
            PLAIN_RATE_LIMIT="",
        )
        apply_env(env)
        worker_env = {**os.environ, **(_idle_accounts() if variant == "accounts" else {})}
        supervisor = procs.start(
            "worker", [sys.executable, "-m", "worker.cli", "worker"], worker_env
        )
        anchor = celery_worker_args(
            "benchmarks.plain_app", "plain_cancels", "anchor", ANCHOR_CONCURRENCY
        )
        procs.start("anchor", anchor, os.environ)
        from benchmarks import plain_app
        from worker.celery_app import app

        wait_workers_ready(app, [f"cancels-{supervisor.pid}", f"polls-{supervisor.pid}"], procs)
        wait_workers_ready(plain_app.app, ["anchor"], procs)
        figures = _rounds(sandbox, rounds, api_key, secret_key)
        if variant == "one":
            figures["trace"] = _trace(sandbox, primary_url)
        return figures


def _redis(variant: str, stack: ExitStack, procs: Processes, log_dir: Path) -> tuple[str, str]:
    """REDIS_URL for the service, and the primary's plain URL (for the anchor)."""
    if variant != "sentinel":
        url = stack.enter_context(redis_server())
        return url, url
    from worker.stack import SentinelLayout, redis_answers, replica_in_sync

    ports = free_ports(5)
    layout = SentinelLayout(ports[0], ports[1], (ports[2], ports[3], ports[4]))
    for name, command in layout.commands(log_dir / "sentinel").items():
        procs.start(name, command, os.environ)
    wait_until(lambda: redis_answers(layout.redis_url), 30, "the Sentinels' primary")
    wait_until(lambda: replica_in_sync(layout.replica_port), 30, "the replica")
    return layout.redis_url, f"redis://127.0.0.1:{layout.primary_port}/0"


def _idle_accounts() -> dict[str, str]:
    """300 more accounts for the worker (keys of their own; none ever cancels)."""
    names = [f"idle{i:03d}" for i in range(IDLE_ACCOUNTS)]
    env = {"COINSWITCH_ACCOUNTS": ",".join(names)}
    for name in names:
        env[f"COINSWITCH_{name.upper()}_API_KEY"] = secrets.token_hex(32)
        env[f"COINSWITCH_{name.upper()}_SECRET_KEY"] = secrets.token_hex(32)
    return env


def _rounds(sandbox: RemoteSandbox, rounds: int, api_key: str, secret_key: str) -> dict[str, Any]:
    """Every kind once per round, in a rotating order; latencies and call times (ms)."""
    from benchmarks import plain_app
    from worker.celery_app import CANCEL_TASK, app
    from worker.producer import request_cancel

    signer = Signer(api_key, secret_key)
    session = requests.Session()

    def direct(order_id: str) -> None:
        body = json.dumps({"exchange": "EXCHANGE_2", "order_id": order_id})
        headers = signer.headers("DELETE", ORDER_PATH)
        session.delete(sandbox.url + ORDER_PATH, data=body, headers=headers, timeout=10)

    calls: dict[str, Callable[[str], Any]] = {
        "service": request_cancel,
        "by_name": lambda order_id: app.send_task(CANCEL_TASK, args=[order_id]),
        "anchor": lambda order_id: plain_app.app.send_task(plain_app.TASK_NAME, args=[order_id]),
        "direct": direct,
    }
    results = redis.Redis.from_url(plain_app.REDIS_URL)
    done: dict[str, Callable[[str], bool]] = {
        "service": lambda order_id: _answer_stored(order_id),
        "by_name": lambda order_id: _answer_stored(order_id),
        "anchor": lambda order_id: results.llen(plain_app.RESULTS_KEY) > 0,
        "direct": lambda order_id: True,
    }
    latency: dict[str, list[float]] = {kind: [] for kind in KINDS}
    call_ms: dict[str, list[float]] = {kind: [] for kind in KINDS}
    order_ids = _place(sandbox, (rounds + WARMUP) * len(KINDS))
    for r in range(rounds + WARMUP):
        order = KINDS[r % len(KINDS) :] + KINDS[: r % len(KINDS)]
        for kind in order:
            order_id = order_ids.pop()
            results.delete(plain_app.RESULTS_KEY)
            seen = sandbox.count("cancel")
            started = time.perf_counter()
            calls[kind](order_id)
            returned = time.perf_counter()
            arrived = sandbox.wait_for("cancel", seen + 1, ARRIVAL_TIMEOUT_S)
            # The next cancel starts once this one's worker stored the answer: each is timed
            # on an idle worker, whatever the kind before it left behind.
            wait_until(partial(done[kind], order_id), ARRIVAL_TIMEOUT_S, "the answer")
            if r >= WARMUP:
                latency[kind].append((arrived - started) * 1000)
                call_ms[kind].append((returned - started) * 1000)
    results.close()
    session.close()
    return {
        "rounds": rounds,
        "latency_ms": latency,
        "call_ms": {kind: call_ms[kind] for kind in ("service", "anchor")},
        "p50": {kind: percentile(latency[kind], 50) for kind in KINDS},
        "p90": {kind: percentile(latency[kind], 90) for kind in KINDS},
        "call_p50": {kind: percentile(call_ms[kind], 50) for kind in ("service", "anchor")},
    }


def _answer_stored(order_id: str) -> bool:
    """Whether the service stored the DELETE's answer (the record moved on from QUEUED)."""
    from worker.producer import get_record

    record = get_record(order_id)
    return record is not None and record.attempts > 0 and not record.delete_in_flight


def _place(sandbox: RemoteSandbox, count: int) -> list[str]:
    """Open `count` resting LIMIT orders; return their ids."""
    return [str(sandbox.admin.create_order(**ORDER_FIELDS)["order_id"]) for _ in range(count)]


def _trace(sandbox: RemoteSandbox, redis_url: str) -> list[list[Any]]:
    """One cancel's Redis commands from the request to the DELETE: (ms, client, command)."""
    from worker.producer import request_cancel

    order_id = _place(sandbox, 1)[0]
    seen: list[dict[str, Any]] = []
    ready, stop = threading.Event(), threading.Event()

    def monitor() -> None:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        with client.monitor() as feed:
            ready.set()
            for command in feed.listen():
                seen.append(command)
                if stop.is_set():
                    return

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(TRACE_SETTLE_S)  # a settle, not a condition: idle chatter before the cancel
    count = sandbox.count("cancel")
    started = time.time()
    request_cancel(order_id)
    sandbox.wait_for("cancel", count + 1, ARRIVAL_TIMEOUT_S)
    arrived = time.time()
    stop.set()
    redis.Redis.from_url(redis_url).ping()  # one more command ends the listener
    thread.join(5)
    clients: dict[str, int] = {}
    rows = []
    for command in seen:
        if not started <= command["time"] <= arrived or command.get("client_type") == "lua":
            continue
        words = command["command"].split()
        if words[0] in ("MONITOR", "PING") or command["db"] is None:
            continue
        client = clients.setdefault(
            command["client_address"] + command["client_port"], len(clients) + 1
        )
        target = words[1] if len(words) > 1 and words[0] != "EVALSHA" else ""
        rows.append(
            [round((command["time"] - started) * 1000, 2), client, f"{words[0]} {target}".strip()]
        )
    return rows


# ---- the hand-out's cost, in this process ----------------------------------------------------


def _handout_cost(*, smoke: bool) -> dict[str, Any]:
    """release() time (ms, p50) with N accounts served: nothing waiting, and one job."""
    from tests.support import scheduler_for
    from worker.keys import Keys
    from worker.models import Bucket
    from worker.rates import Rate

    calls = 50 if smoke else HANDOUT_CALLS
    figures: dict[str, Any] = {"calls": calls, "idle_ms": {}, "one_ms": {}}
    with redis_server() as url:
        client = redis.Redis.from_url(url, decode_responses=True)
        for accounts in HANDOUT_ACCOUNTS:
            client.flushdb()
            names = tuple(f"acct{i:04d}" for i in range(accounts))
            rates = {bucket: Rate(1000, 1.0) for bucket in Bucket}
            scheduler = scheduler_for(client, Keys("bench"), accounts=names, rates=rates)
            idle, one = [], []
            for i in range(calls):
                started = time.perf_counter()
                scheduler.release()
                idle.append((time.perf_counter() - started) * 1000)
                scheduler.join(names[-1], Bucket.CANCEL, [f"job-{uuid.uuid4().hex}-{i}"])
                started = time.perf_counter()
                turns, _ = scheduler.release()
                one.append((time.perf_counter() - started) * 1000)
                if len(turns) != 1:
                    raise BenchError(f"release with {accounts} accounts handed out {len(turns)}")
            figures["idle_ms"][str(accounts)] = percentile(idle, 50)
            figures["one_ms"][str(accounts)] = percentile(one, 50)
        client.close()
    return figures


# ---- its part of the report: goals (2), the (2) section, a latency plot -----------------------

LATENCY_P50_RATIO = 1.3  # ≤ this x Celery alone, p50 (the bound)
LATENCY_P90_RATIO = 1.6
CALL_RATIO = 1.3  # request_cancel ≤ this x send_task
HANDOUT_RATIO = 2.0  # a hand-out with 1,000 accounts ≤ this x with one
VARIANT_NAMES = {
    "one": "one Redis",
    "accounts": f"{IDLE_ACCOUNTS} idle accounts",
    "sentinel": "Sentinel, replica confirms",
}
KIND_NAMES = {
    "service": "request_cancel",
    "by_name": "sent by name",
    "anchor": "Celery alone",
    "direct": "direct request",
}
METHOD = (
    "- Hot path (2): one cancel at a time, budget free (cancels and status reads 1000/1s), "
    "each kind once per round in a rotating order, 5 rounds unmeasured; times are "
    "`perf_counter` in the bench process from the call to the sandbox handler receiving the "
    "DELETE. Celery alone is benchmarks.plain_app with PLAIN_AS_SERVICE=1: Celery set up as "
    "the service's app (late acks, prefetch 1, task events), threads pool -c 4, on the same "
    "Redis, its task signing and sending the same DELETE with the same exchange client. "
    "`cancel-worker worker` runs its two Celery workers (cancels -c 4, polls -c 8) at INFO. "
    "The hand-out's cost is `Scheduler.release()` timed in the bench process against a fresh "
    "redis-server, with N accounts served.",
)


def _ratio_goal(name: str, measured: float, anchor: float, bound: float, what: str) -> Goal:
    ratio = measured / anchor if anchor else float("nan")
    return Goal(
        name, fmt.ms(measured), f"{fmt.ms(anchor)} {what}", ratio, f"≤ {bound:g}", ratio <= bound
    )


def _goals(hp: Figures, results: Results) -> list[Goal]:
    """(2): the service and a cancel sent by name against Celery alone, p50 and p90, in each
    variant; the request call against send_task; a hand-out with 1,000 accounts against one."""
    goals = []
    for variant, figures in hp["variants"].items():
        where = VARIANT_NAMES[variant]
        p50, p90 = figures["p50"], figures["p90"]
        for kind in ("service", "by_name"):
            goals.append(
                _ratio_goal(
                    f"(2) {KIND_NAMES[kind]} → DELETE p50, {where}",
                    p50[kind], p50["anchor"], LATENCY_P50_RATIO, "Celery alone",
                )
            )  # fmt: skip
            goals.append(
                _ratio_goal(
                    f"(2) {KIND_NAMES[kind]} → DELETE p90, {where}",
                    p90[kind], p90["anchor"], LATENCY_P90_RATIO, "Celery alone",
                )
            )  # fmt: skip
        call = figures["call_p50"]
        goals.append(
            _ratio_goal(
                f"(2) request_cancel call p50, {where}",
                call["service"], call["anchor"], CALL_RATIO, "send_task",
            )
        )  # fmt: skip
    one = hp["handout"]["one_ms"]
    goals.append(
        _ratio_goal(
            "(2) a hand-out with 1,000 accounts, p50",
            one["1000"], one["1"], HANDOUT_RATIO, "with one account",
        )
    )  # fmt: skip
    return goals


def _latency_rows(hp: Figures) -> list[list[str]]:
    rows = []
    for variant, figures in hp["variants"].items():
        for kind in KINDS:
            row = [VARIANT_NAMES[variant], KIND_NAMES[kind]]
            row += [fmt.ms(figures["p50"][kind]), fmt.ms(figures["p90"][kind])]
            ratio = figures["p50"][kind] / figures["p50"]["anchor"]
            rows.append([*row, f"{ratio:.2f}"])
        calls = figures["call_ms"]
        anchor = percentile(calls["anchor"], 50)
        for kind, name in (("service", "request_cancel"), ("anchor", "send_task")):
            rows.append(
                [VARIANT_NAMES[variant], f"the call alone: {name}",
                 fmt.ms(percentile(calls[kind], 50)), fmt.ms(percentile(calls[kind], 90)),
                 f"{percentile(calls[kind], 50) / anchor:.2f} (÷ send_task)"]
            )  # fmt: skip
    return rows


LATENCY_HEADERS = ["variant", "kind", "p50", "p90", "p50 ÷ Celery alone"]
HANDOUT_HEADERS = ["accounts served", "release(), nothing waiting", "release(), one cancel"]


def _handout_rows(hp: Figures) -> list[list[str]]:
    handout = hp["handout"]
    return [
        [f"{int(n):,}", fmt.ms(handout["idle_ms"][n]), fmt.ms(handout["one_ms"][n])]
        for n in handout["idle_ms"]
    ]


def _tables(hp: Figures, results: Results) -> list[Table]:
    return [(LATENCY_HEADERS, _latency_rows(hp)), (HANDOUT_HEADERS, _handout_rows(hp))]


def _trace_lines(hp: Figures) -> list[str]:
    trace = hp["variants"].get("one", {}).get("trace", [])
    if not trace:
        return []
    rows = [[f"{at:.2f}", str(client), command] for at, client, command in trace]
    return [
        "One cancel's Redis commands, from `request_cancel` to the DELETE (MONITOR; commands "
        "inside a script not shown; client 1 is usually the caller):",
        "",
        fmt.md_table(["ms", "client", "command"], rows),
        "",
    ]


def _section(hp: Figures, results: Results) -> list[str]:
    rounds = next(iter(hp["variants"].values()))["rounds"]
    return [
        "## (2) The hot path: a cancel that meets a free budget",
        "",
        f"{rounds} rounds of one cancel each kind at a time (n per cell = {rounds}); "
        "Celery alone is the anchor every ratio is measured against, in the same run.",
        "",
        fmt.md_table(LATENCY_HEADERS, _latency_rows(hp)),
        "",
        *_replica_note(hp),
        "A hand-out's cost as the accounts served grow (`Scheduler.release()`, p50 of "
        f"{hp['handout']['calls']} calls):",
        "",
        fmt.md_table(HANDOUT_HEADERS, _handout_rows(hp)),
        "",
        *_trace_lines(hp),
    ]


def _replica_note(hp: Figures) -> list[str]:
    """What the Sentinel variant pays over Celery alone, and why, from this run's figures."""
    figures = hp["variants"].get("sentinel")
    if not figures:
        return []
    extra = figures["p50"]["service"] - figures["p50"]["anchor"]
    calls = figures["call_ms"]
    call_extra = percentile(calls["service"], 50) - percentile(calls["anchor"], 50)
    return [
        "With Sentinel, a replica confirms the request before `request_cancel` returns, and "
        "the turn's send time before its DELETE goes (so a failover cannot forget either): a "
        "`WAIT 1` pipelined with each script, twice a primary → replica → primary round trip "
        "that Celery alone never makes. Here that costs "
        f"{extra:.1f} ms at p50 on the way to the DELETE and {call_extra:.1f} ms on the "
        "call; the ratios to Celery alone carry it.",
        "",
    ]


def _plot(ax: Axes, hp: Figures) -> None:
    """(2): latency distributions of the plain variant, each kind."""
    figures = hp["variants"].get("one")
    if not figures:
        return
    for kind in KINDS:
        values = sorted(figures["latency_ms"][kind])
        ax.plot(values, [i / len(values) for i in range(len(values))], label=KIND_NAMES[kind])
    ax.set_title("(2) enqueue → DELETE, one cancel at a time, budget free (CDF)")
    ax.set_xlabel("ms")
    ax.set_ylim(bottom=0)


REPORT = Report(
    goals=_goals,
    section=_section,
    tables=_tables,
    panels=(_plot,),
    goals_note="(2) is a cancel's hot path against Celery alone",
    method=METHOD,
)


if __name__ == "__main__":
    raise SystemExit(run_main())
