"""The dead man's switch: silent strategies' orders come off the book, and nothing else."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from tests.conftest import SANDBOX_CONFIG, SERVICE_ENV
from tests.support import place_orders, wait_for
from tests.test_cli import cli
from worker.deadman import (
    Deadman,
    SwitchState,
    SwitchTripped,
    arm_deadman,
    deadman_status,
    disarm,
    heartbeat,
)
from worker.errors import InvalidRequest
from worker.keys import CANCEL_QUEUE, POLL_QUEUE, Keys
from worker.models import BatchState
from worker.owners import track_orders
from worker.producer import get_batch, get_records
from worker.sandbox import SandboxConfig, SandboxHandle, generate_keypair, run_sandbox
from worker.services import get_services

pytestmark = pytest.mark.integration

TIMEOUT_S = 3.0
BEAT_EVERY_S = 0.75
NOBODYS = "ZZZUSDT"  # a symbol no other test trades: a switch firing on it cancels nothing


def unique(request: pytest.FixtureRequest, prefix: str) -> str:
    """A name of this test's own: no switch or line of another test shares it."""
    return f"{prefix}_{zlib.crc32(request.node.nodeid.encode()):08x}"


# --- without workers: arming, beating, refusing ---------------------------------------------


def test_a_beat_keeps_it_armed_and_a_late_one_hears_it_tripped(
    redis_url: str, request: pytest.FixtureRequest
) -> None:
    """A heartbeat pushes the deadline a timeout ahead; once it has passed, a beat does not
    re-arm the switch and raises SwitchTripped. Of the 2 s, over 1.5 s are left when arming
    returns and over 1.9 s just after a beat sent 1 s in: each is read one Redis round trip
    after its write, so 0.5 s and 0.1 s are slack for a loaded 2-core machine."""
    name = unique(request, "sw")
    switch = arm_deadman(name, 2, [NOBODYS])
    assert switch.state is SwitchState.ARMED and switch.symbols == (NOBODYS,)
    assert 1500 < (switch.left_ms or 0) <= 2000
    time.sleep(1.0)  # half the timeout, to see the beat push the deadline
    assert heartbeat(name) == 2000
    assert (deadman_status(name)[0].left_ms or 0) > 1900
    wait_for(lambda: deadman_status(name)[0].left_ms is None, 5, "the deadline to pass")
    with pytest.raises(SwitchTripped):
        heartbeat(name)
    disarm(name)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: arm_deadman("bad name!", 10), "name"),
        (lambda: arm_deadman("ok-name", 1.5), "timeout_s"),
        (lambda: arm_deadman("ok-name", 3601), "timeout_s"),
        (lambda: arm_deadman("ok-name", 10, ["BTC-USDT"]), "symbol"),
        (lambda: arm_deadman("ok-name", 10, account="nobody"), "account"),
        (lambda: heartbeat("never-armed"), "name"),
        (lambda: disarm("never-armed"), "name"),
    ],
)
def test_bad_input_arms_nothing(redis_url: str, call: Callable[[], Any], field: str) -> None:
    """A malformed name, symbol or account, a timeout out of 2-3600 s, or an unknown switch
    raises InvalidRequest naming it, and nothing is armed."""
    with pytest.raises(InvalidRequest) as info:
        call()
    assert info.value.field == field
    assert not {"ok-name", "never-armed"} & {s.name for s in deadman_status()}


def test_a_disarmed_switch_never_fires(redis_url: str, request: pytest.FixtureRequest) -> None:
    """Past its deadline, a disarmed switch is not claimed and sends nothing."""
    name = unique(request, "sw")
    arm_deadman(name, 2, [NOBODYS])
    disarm(name)
    time.sleep(2.2)  # beyond its timeout: the point is that nothing happens
    deadman = Deadman(get_services())
    deadman.check()
    switch = deadman_status(name)[0]
    assert switch.state is SwitchState.DISARMED and switch.batches == ()


def test_the_cli_arms_warns_and_refuses(redis_url: str, request: pytest.FixtureRequest) -> None:
    """`deadman arm` warns that a switch without symbols guards the whole account; bad input
    exits 2 naming it; an unknown switch cannot be beaten."""
    name = unique(request, "cli")
    armed = cli("deadman", "arm", name, "--timeout", "60", "--account", "beta")
    assert armed.returncode == 0, armed.stderr
    assert "guards the whole account" in armed.stderr and "EVERY open order" in armed.stderr
    assert cli("deadman", "disarm", name).returncode == 0
    bad = cli("deadman", "arm", name, "--timeout", "0.5")
    assert bad.returncode == 2 and "timeout_s 0.5" in bad.stderr
    unknown = cli("deadman", "beat", f"{name}-x")
    assert unknown.returncode == 2 and "is not armed" in unknown.stderr


# --- with workers and an exchange: firing ---------------------------------------------------


@dataclass
class Guarded:
    """A sandbox, workers for one account of the test's own, and its key."""

    sandbox: SandboxHandle
    api_key: str
    account: str
    workers: list[Any]

    def place(self, count: int, symbol: str) -> list[str]:
        return place_orders(self.sandbox.admin, count, api_key=self.api_key, symbol=symbol)

    def cancel_alls(self) -> list[int]:
        return self.arrivals("cancel_all")

    def arrivals(self, endpoint: str) -> list[int]:
        stats = self.sandbox.admin.stats()["endpoints"][endpoint]["by_key"]
        return list(stats.get(self.api_key[:8], {"arrivals_ms": []})["arrivals_ms"])

    def status(self, order_id: str) -> str:
        return str(self.sandbox.admin.order(order_id)["order"]["status"])


@pytest.fixture
def guarded(own_workers: Callable[..., Any], request: pytest.FixtureRequest) -> Iterator[Guarded]:
    """Two worker processes (both consume both queues; no beat) for an account of this
    test's own, on a sandbox of its own."""
    account = unique(request, "dm")
    api_key, secret_key = generate_keypair()
    seed = zlib.crc32(request.node.nodeid.encode())
    with ExitStack() as stack:
        sandbox = stack.enter_context(
            run_sandbox(dataclasses.replace(SANDBOX_CONFIG, port=0, seed=seed), api_keys=[api_key])
        )
        env = {
            "COINSWITCH_BASE_URL": sandbox.url,
            "COINSWITCH_API_KEY": "",
            "COINSWITCH_SECRET_KEY": "",
            "COINSWITCH_ACCOUNTS": account,
            f"COINSWITCH_{account.upper()}_API_KEY": api_key,
            f"COINSWITCH_{account.upper()}_SECRET_KEY": secret_key,
        }
        queues = f"{CANCEL_QUEUE},{POLL_QUEUE}"
        workers = [own_workers("dm0", queues=queues, extra_env=env, wait=False)]
        workers.append(own_workers("dm1", queues=queues, extra_env=env))
        yield Guarded(sandbox, api_key, account, workers)


def test_a_beaten_switch_holds_and_a_silent_one_fires_on_time(guarded: Guarded) -> None:
    """Beaten every 0.75 s for 10 s, a 3 s switch on one symbol cancels nothing; when the
    beats stop, its cancel-all reaches the exchange within timeout + 1 s (4 s) of the last
    beat, other symbols stay open, and each cancelled order ends with a final record. The
    watcher wakes at the deadline itself (p99 41 ms to the cancel-all, BENCHMARKS.md (8)), so
    the 1 s is slack for a loaded 2-core machine."""
    mine = guarded.place(4, "BTCUSDT")
    others = guarded.place(3, "ETHUSDT")
    name = f"{guarded.account}-sw"
    arm_deadman(name, TIMEOUT_S, ["BTCUSDT"], account=guarded.account)
    last_beat = time.time()
    stop = time.monotonic() + 10
    while time.monotonic() < stop:
        time.sleep(BEAT_EVERY_S)  # the strategy's own pace, not a wait for a condition
        heartbeat(name)
        last_beat = time.time()
    assert guarded.cancel_alls() == []
    assert {guarded.status(i) for i in mine} == {"RAISED"}

    arrived = wait_for(guarded.cancel_alls, TIMEOUT_S + 5, "the switch's cancel-all")[0]
    assert arrived / 1000 - last_beat <= TIMEOUT_S + 1.0, arrived / 1000 - last_beat
    switch = deadman_status(name)[0]
    assert switch.state is SwitchState.TRIPPED and len(switch.batches) == 1
    batch = wait_for(
        lambda: (b := get_batch(switch.batches[0])) and b.is_final and b, 20, "the batch"
    )
    assert batch.state is BatchState.DONE and sorted(batch.orders_ids) == sorted(mine)
    assert batch.priority == "urgent" and batch.symbol == "BTCUSDT"
    for order_id, record in zip(mine, get_records(mine), strict=True):
        assert record is not None and record.is_final
        assert record.state.value == guarded.status(order_id)
    assert {guarded.status(i) for i in others} == {"RAISED"}
    with pytest.raises(SwitchTripped):
        heartbeat(name)  # a late beat is told, and does not re-arm it
    assert len(guarded.cancel_alls()) == 1


def test_it_fires_with_a_worker_killed_and_no_beat_process(guarded: Guarded) -> None:
    """With one of two worker processes SIGKILLed before the deadline (and no beat anywhere),
    the other still fires the switch on time: its cancel-all arrives within timeout + 1 s
    (4 s) of arming. Its watcher wakes at the deadline itself, so the 1 s is slack for a
    loaded 2-core machine."""
    mine = guarded.place(3, "SOLUSDT")
    name = f"{guarded.account}-sw"
    arm_deadman(name, TIMEOUT_S, ["SOLUSDT"], account=guarded.account)
    armed_at = time.time()
    guarded.workers[0].send_signal(signal.SIGKILL)
    guarded.workers[0].wait(timeout=10)
    arrived = wait_for(guarded.cancel_alls, TIMEOUT_S + 5, "the switch's cancel-all")[0]
    assert arrived / 1000 - armed_at <= TIMEOUT_S + 1.0
    wait_for(lambda: all(r and r.is_final for r in get_records(mine)), 20, "final records")


def test_two_switches_fire_independently(guarded: Guarded) -> None:
    """Of two switches on two symbols, the one still beaten holds while the silent one
    fires; disarming the first before its deadline means it never fires. The silent one is
    TRIPPED when the beats end, timeout + 1.5 s (4.5 s) after arming: claiming and tripping
    it at its deadline are Redis calls alone, so 1.5 s is slack for a loaded 2-core machine."""
    btc, eth = guarded.place(2, "BTCUSDT"), guarded.place(2, "ETHUSDT")
    kept, silent = f"{guarded.account}-kept", f"{guarded.account}-silent"
    arm_deadman(kept, TIMEOUT_S, ["BTCUSDT"], account=guarded.account)
    arm_deadman(silent, TIMEOUT_S, ["ETHUSDT"], account=guarded.account)
    stop = time.monotonic() + TIMEOUT_S + 1.5
    while time.monotonic() < stop:
        time.sleep(BEAT_EVERY_S)
        heartbeat(kept)
    disarm(kept)
    assert deadman_status(silent)[0].state is SwitchState.TRIPPED
    wait_for(lambda: all(r and r.is_final for r in get_records(eth)), 20, "ETH final")
    time.sleep(TIMEOUT_S)  # past the disarmed switch's deadline: nothing may happen
    assert deadman_status(kept)[0].state is SwitchState.DISARMED
    assert {guarded.status(i) for i in btc} == {"RAISED"}
    assert len(guarded.cancel_alls()) == 1


def test_an_owners_switch_cancels_its_orders_and_no_one_elses(guarded: Guarded) -> None:
    """BTCUSDT holds 12 orders of A and 8 of B, ETHUSDT 10 of A, SOLUSDT 6 of B, all tracked.
    A's switch (3 s) fires when its beat dies: the first cancel reaches the exchange within
    timeout + 1.5 s of the last beat; ETHUSDT (only A's) goes by one cancel-all and A's
    BTCUSDT orders by one DELETE each, urgent; every A order has a final record equal to the
    exchange's truth within 15 s; no B order is touched; no 429. The 0.5 s over a plain
    switch's 1 s is the open-orders read before the first cancel; 12 DELETEs at 10/2s take
    about one window, so 15 s is slack for a loaded 2-core machine."""
    a_btc, b_btc = guarded.place(12, "BTCUSDT"), guarded.place(8, "BTCUSDT")
    a_eth, b_sol = guarded.place(10, "ETHUSDT"), guarded.place(6, "SOLUSDT")
    track_orders(a_btc + a_eth, "strat-a", guarded.account)
    track_orders(b_btc + b_sol, "strat-b", guarded.account)
    name = f"{guarded.account}-a"
    arm_deadman(name, TIMEOUT_S, account=guarded.account, owner="strat-a")
    heartbeat(name)
    last_beat = time.time()

    first = wait_for(lambda: guarded.arrivals("cancel") + guarded.cancel_alls(), 10, "a cancel")
    assert min(first) / 1000 - last_beat <= TIMEOUT_S + 1.5, min(first) / 1000 - last_beat
    switch = deadman_status(name)[0]
    assert switch.state is SwitchState.TRIPPED and len(switch.batches) == 1
    batch = wait_for(
        lambda: (b := get_batch(switch.batches[0])) and b.is_final and b, 15, "A's orders final"
    )
    assert batch.state is BatchState.DONE and batch.owner == "strat-a", batch
    assert sorted(batch.orders_ids) == sorted(a_btc) and batch.foreign == []
    child = get_batch(batch.batches[0])
    assert len(batch.batches) == 1 and child is not None and child.parent == batch.batch_id
    assert child.symbol == "ETHUSDT" and sorted(child.orders_ids) == sorted(a_eth)
    for order_id, record in zip(a_btc + a_eth, get_records(a_btc + a_eth), strict=True):
        assert record is not None and record.is_final and record.owner == "strat-a"
        assert record.state.value == guarded.status(order_id)
    assert {guarded.status(i) for i in b_btc + b_sol} == {"RAISED"}
    assert len(guarded.arrivals("cancel")) == len(a_btc)  # no DELETE of ETHUSDT's or B's
    assert len(guarded.cancel_alls()) == 1  # ETHUSDT's: none of BTCUSDT, SOLUSDT or all
    endpoints = guarded.sandbox.admin.stats()["endpoints"]
    assert sum(e["rate_limited"] for e in endpoints.values()) == 0


def test_a_switch_survives_a_redis_restart_and_fires_for_lost_beats(
    own_workers: Callable[..., Any], log_dir: Any
) -> None:
    """An armed switch outlives a Redis restart (AOF); when no beat could land for longer
    than its timeout, it fires once workers run again: the safe side."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from tests.conftest import API_KEY, SECRET_KEY
    from tests.redis_server import RedisServer
    from tests.support import ROOT

    with (
        tempfile.TemporaryDirectory(prefix="cw-aof-") as data_dir,
        run_sandbox(SandboxConfig(confirm_delay_ms=200), api_keys=[API_KEY]) as sandbox,
    ):
        server = RedisServer(Path(data_dir), appendonly=True)
        server.start()
        try:
            mine = place_orders(sandbox.admin, 3, symbol="ADAUSDT")
            env = {**os.environ, **SERVICE_ENV, "REDIS_URL": server.url}
            armed = subprocess.run(
                [sys.executable, "-m", "worker.cli", "deadman", "arm", "restart-sw",
                 "--timeout", "2", "--symbol", "ADAUSDT"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert armed.returncode == 0, armed.stderr
            server.stop()
            time.sleep(2.5)  # Redis is down for longer than the timeout: no beat can land
            server.start()
            client = redis.Redis.from_url(server.url, decode_responses=True)
            assert client.hget(Keys().deadman("restart-sw"), "state") == "ARMED"
            own_workers(
                "dmrestart",
                extra_env={
                    "REDIS_URL": server.url,
                    "COINSWITCH_BASE_URL": sandbox.url,
                    "COINSWITCH_API_KEY": API_KEY,
                    "COINSWITCH_SECRET_KEY": SECRET_KEY,
                    "COINSWITCH_ACCOUNTS": "",
                },
            )

            def fired() -> bool:
                stats = sandbox.admin.stats()["endpoints"]["cancel_all"]
                return bool(stats["arrivals_ms"])

            wait_for(fired, 30, "the switch to fire after the restart")
            wait_for(
                lambda: (
                    {sandbox.admin.order(i)["order"]["status"] for i in mine}
                    <= {"CANCELLED", "EXECUTED", "PARTIALLY_EXECUTED"}
                ),
                20,
                "the orders cancelled",
            )
            assert client.hget(Keys().deadman("restart-sw"), "state") == "TRIPPED"
        finally:
            server.stop()
