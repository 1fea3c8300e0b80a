"""The budget scheduler on a real Redis: lines, turns, the commit check and the margin."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from tests.support import scheduler_for
from worker import estimates as estimates_module
from worker.estimates import Estimates
from worker.keys import Keys
from worker.models import Bucket, Priority
from worker.rates import Rate
from worker.scheduler import MARGIN_HEADROOM, Scheduler
from worker.turns import Turn

KEYS = Keys("t")
RATES = {bucket: Rate(3, 0.3) for bucket in Bucket}


def make(
    client: redis.Redis,
    *,
    accounts: tuple[str, ...] = ("default",),
    rates: dict[Bucket, Rate] | None = None,
    floor_ms: int = 20,
    ceiling_ms: int = 500,
    shares: dict[str, int] | None = None,
) -> Scheduler:
    return scheduler_for(
        client,
        KEYS,
        accounts=accounts,
        rates=rates or RATES,
        floor_ms=floor_ms,
        ceiling_ms=ceiling_ms,
        shares=shares,
    )


def jobs(n: int, prefix: str = "job") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def etas(
    scheduler: Scheduler,
    names: list[str],
    bucket: Bucket = Bucket.CANCEL,
    *,
    absolute: bool = False,
) -> list[int]:
    """Each job's expected send time as `status` would say it: from now (ms), or in Unix ms."""
    estimates = Estimates(scheduler)
    found = [estimates.waiting("default", bucket, name) for name in names]
    return [w.eta_ms - (0 if absolute else w.now_ms) for w in found if w is not None]


# --- slot arithmetic (budget.lua, through the estimates) -----------------------------------


def test_free_slots_keep_every_window_at_the_limit(redis_client: redis.Redis) -> None:
    """From an empty schedule, `limit` slots are free now, then one window apart each."""
    scheduler = make(redis_client, rates={b: Rate(2, 60.0) for b in Bucket})
    scheduler.join("default", Bucket.CANCEL, jobs(5), priority=Priority.URGENT)
    window = 60_000 + 20
    assert etas(scheduler, jobs(5)) == [0, 0, window, window, 2 * window]


def test_slots_respect_a_pause(redis_client: redis.Redis) -> None:
    """Nothing is expected before a 429 pause ends. The first job's estimate is the pause's
    length less at most 50 ms, for the join's and the estimate's round trips since it began:
    slack for two loopback calls, though thin on a loaded 2-core machine."""
    scheduler = make(redis_client, rates={b: Rate(2, 60.0) for b in Bucket})
    paused_ms = scheduler.pause("default", Bucket.CANCEL)
    scheduler.join("default", Bucket.CANCEL, jobs(3), priority=Priority.URGENT)
    assert paused_ms - 50 <= etas(scheduler, jobs(1))[0] <= paused_ms
    first, second, third = etas(scheduler, jobs(3), absolute=True)  # pause end: PTTL in ms
    assert abs(second - first) <= 1 and abs(third - first - (60_000 + 20)) <= 1


def test_the_reserve_keeps_an_urgent_wait_under_one_interval(redis_client: redis.Redis) -> None:
    """With the reserve, a normal backlog's expected sends never leave a window full for
    longer than one slot interval, and still send `limit` per window in the long run."""
    limit, window = 10, 60_020
    scheduler = make(redis_client, rates={b: Rate(limit, 60.0) for b in Bucket})
    scheduler.join("default", Bucket.CANCEL, jobs(120))
    slots = etas(scheduler, jobs(120))
    interval = -(-window // limit)
    assert slots[:9] == [0] * 9  # a short burst still goes at once
    for t in range(0, slots[-1], 997):  # an urgent job arriving at any moment
        inside = [s for s in slots if t - window < s <= t]
        if len(inside) >= limit:
            assert inside[-limit] + window - t <= interval
    steady = slots[40:]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert rate == pytest.approx(limit / window, rel=0.02)


def test_far_slots_are_extrapolated_past_the_simulation(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the simulated slots, one window per `limit` sends: a far place costs no more to
    estimate, and is never earlier than the simulation says, nor later by a window."""
    scheduler = make(redis_client, rates={b: Rate(2, 60.0) for b in Bucket})
    scheduler.join("default", Bucket.CANCEL, jobs(30), priority=Priority.URGENT)
    exact = etas(scheduler, jobs(30))
    monkeypatch.setattr(estimates_module, "ESTIMATE_SIMULATED_SLOTS", 7)
    far = etas(scheduler, jobs(30))
    assert far[:7] == exact[:7]
    assert all(e <= f <= e + 60_020 for e, f in zip(exact, far, strict=True))


# --- lines and turns ---------------------------------------------------------------------------


def test_urgent_jobs_get_turns_first_then_first_come(redis_client: redis.Redis) -> None:
    """Turns go to urgent jobs before normal ones, and in arrival order within each."""
    scheduler = make(redis_client)
    scheduler.join("default", Bucket.CANCEL, jobs(4, "n"))
    scheduler.join("default", Bucket.CANCEL, jobs(3, "u"), priority=Priority.URGENT)
    turns, wait_s = scheduler.release()
    assert [t.job for t in turns] == ["u000", "u001", "u002"]  # the 3 free slots
    assert wait_s is not None and 0 < wait_s <= 0.3 + 0.02 + 0.01


def test_normal_jobs_leave_the_last_slot_for_urgent_work(redis_client: redis.Redis) -> None:
    """A normal backlog takes a window's last free slot only within one slot interval of the
    window freeing, so an urgent job arriving any time before waits for nothing."""
    scheduler = make(redis_client)  # 3 per 300 ms + 20 ms margin: a slot interval of 107 ms
    scheduler.join("default", Bucket.CANCEL, jobs(5, "n"))
    turns, wait_s = scheduler.release()
    assert [t.job for t in turns] == ["n000", "n001"]
    assert wait_s is not None and 0.2 <= wait_s <= 0.32 - 0.1
    scheduler.join("default", Bucket.CANCEL, ["u"], priority=Priority.URGENT)
    urgent, _ = scheduler.release()
    assert [t.job for t in urgent] == ["u"]


def test_a_line_is_served_only_when_its_window_frees(redis_client: redis.Redis) -> None:
    """After `limit` turns, the next comes one window (period + margin) after the first.
    The empty release must come within that 320 ms window of the first, after three takes:
    a few loopback calls, so the rest is slack for a loaded 2-core machine."""
    scheduler = make(redis_client)
    scheduler.join("default", Bucket.CANCEL, jobs(4), priority=Priority.URGENT)
    first, _ = scheduler.release()
    for turn in first:
        assert Turn(scheduler, "default", Bucket.CANCEL, turn.member).take()
    assert scheduler.release()[0] == []
    time.sleep(0.33)  # one window: 300 ms + the 20 ms margin floor
    second, _ = scheduler.release()
    assert [t.job for t in second] == ["job003"]


def test_commit_refuses_a_send_over_the_limit(redis_client: redis.Redis) -> None:
    """Whatever turns were handed out, no window ever holds more than `limit` sends: a
    surplus commit is told how long to wait. That wait, the 320 ms window less the time since
    the first commit, must be >= 300 ms: the four commits get 20 ms, thin slack for a loaded
    2-core machine."""
    scheduler = make(redis_client)
    members = [f"m{i}" for i in range(4)]
    results = [scheduler.commit("default", Bucket.CANCEL, m) for m in members]
    assert [ok for ok, _ in results] == [True, True, True, False]
    wait_ms = results[3][1]
    assert 300 <= wait_ms <= 320 + 5


def test_concurrent_commits_never_exceed_the_limit(redis_client: redis.Redis) -> None:
    """Eight threads committing as fast as they can keep every window at the limit, and
    commit at least 9 times (3 windows of 320 ms, ~0.64 s) in their 1.2 s: the other ~0.5 s
    is slack for a loaded 2-core machine."""
    params = redis_client.connection_pool.connection_kwargs
    stop = time.monotonic() + 1.2
    sent: list[int] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        scheduler = make(redis.Redis(**params))
        i = 0
        while time.monotonic() < stop:
            ok, value = scheduler.commit("default", Bucket.CANCEL, f"t{n}-{i}")
            i += 1
            if ok:
                with lock:
                    sent.append(value)
            else:
                time.sleep(value / 1000)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    times = sorted(sent)
    window = 300 + 20
    assert len(times) >= 9  # about 3 windows' worth
    assert all(times[i + 3] - times[i] >= window for i in range(len(times) - 3))


def test_a_pause_holds_every_turn(redis_client: redis.Redis) -> None:
    """After a 429, no turn is handed out and no commit passes until the pause ends. Both are
    told to wait over 250 ms of the 320 ms pause, leaving 70 ms for the join, release and
    commit round trips: slack for a loaded 2-core machine, if not much."""
    scheduler = make(redis_client)
    paused_ms = scheduler.pause("default", Bucket.CANCEL)
    assert paused_ms == 300 + 20
    scheduler.join("default", Bucket.CANCEL, jobs(1))
    turns, wait_s = scheduler.release()
    assert turns == [] and wait_s is not None and wait_s > 0.25
    ok, wait_ms = scheduler.commit("default", Bucket.CANCEL, "x")
    assert not ok and wait_ms > 250
    assert Estimates(scheduler).usage("default", Bucket.CANCEL).rate_limited == 1


def test_a_turn_given_back_frees_its_slot(redis_client: redis.Redis) -> None:
    """A turn its job did not use (the order was final) is free for the next job at once."""
    scheduler = make(redis_client)
    scheduler.join("default", Bucket.CANCEL, jobs(4), priority=Priority.URGENT)
    turns, _ = scheduler.release()
    Turn(scheduler, "default", Bucket.CANCEL, turns[0].member).give_back()
    again, _ = scheduler.release()
    assert [t.job for t in again] == ["job003"]


def test_a_countdown_job_queues_when_due_with_its_rank(redis_client: redis.Redis) -> None:
    """A job joined with a delay waits out its countdown, then goes ahead of normal jobs if
    it is urgent."""
    scheduler = make(redis_client, rates={b: Rate(1, 0.2) for b in Bucket})
    scheduler.join("default", Bucket.STATUS, ["busy"])
    first, _ = scheduler.release()
    assert [t.job for t in first] == ["busy"]
    scheduler.join("default", Bucket.STATUS, ["later"], priority=Priority.URGENT, delay_s=0.1)
    scheduler.join("default", Bucket.STATUS, ["normal"])
    time.sleep(0.25)
    turns, _ = scheduler.release()
    assert [t.job for t in turns] == ["later"]


def test_joining_twice_keeps_the_earlier_place(redis_client: redis.Redis) -> None:
    """A job already in line keeps its place when it joins again (a duplicate request)."""
    scheduler = make(redis_client, rates={b: Rate(1, 60.0) for b in Bucket})
    scheduler.join("default", Bucket.CANCEL, ["a", "b"])
    scheduler.join("default", Bucket.CANCEL, ["a"])
    assert redis_client.zrange(KEYS.line_queue("default", Bucket.CANCEL, ""), 0, -1) == ["a", "b"]


def test_one_accounts_line_never_holds_anothers(redis_client: redis.Redis) -> None:
    """A long line on one account does not delay another account's first turn."""
    scheduler = make(redis_client, accounts=("alpha", "beta"))
    scheduler.join("alpha", Bucket.CANCEL, jobs(30, "a"), priority=Priority.URGENT)
    scheduler.join("beta", Bucket.CANCEL, ["b0"])
    turns, _ = scheduler.release()
    assert [t.job for t in turns if t.account == "beta"] == ["b0"]
    assert len([t for t in turns if t.account == "alpha"]) == 3


def test_another_fleets_lines_are_left_alone(redis_client: redis.Redis) -> None:
    """A dispatcher hands out no turn for an account it does not serve, and does not spin
    on that line."""
    other = make(redis_client, accounts=("gamma",))
    other.join("gamma", Bucket.CANCEL, jobs(2))
    ours = make(redis_client)
    turns, wait_s = ours.release()
    assert turns == [] and wait_s is None
    assert other.waiting([("gamma", Bucket.CANCEL, j) for j in jobs(2)]) == [True, True]


def test_waiting_reports_place_and_expected_time(redis_client: redis.Redis) -> None:
    """A job's place in line and expected send time follow the budget: an urgent 7th job of
    a 3-per-window line goes two windows from now; normal jobs as the reserve paces them."""
    scheduler = make(redis_client, rates={b: Rate(3, 60.0) for b in Bucket})
    scheduler.join("default", Bucket.CANCEL, jobs(8), priority=Priority.URGENT)
    estimates = Estimates(scheduler)
    waiting = estimates.waiting("default", Bucket.CANCEL, "job006")
    assert waiting is not None
    assert (waiting.place, waiting.ready) == (7, 8)
    assert waiting.eta_ms - waiting.now_ms == 2 * (60_000 + 20)
    scheduler.join("default", Bucket.CANCEL, ["normal"])
    usage = estimates.usage("default", Bucket.CANCEL)
    paced = etas(scheduler, ["normal"])[0]  # the 9th, after the urgent eight
    assert usage.waiting == 9 and usage.waiting_urgent == 8
    assert usage.drain_s == pytest.approx(paced / 1000, abs=0.01)
    assert usage.owners == {"": (9, 8)}
    assert estimates.waiting("default", Bucket.CANCEL, "nobody") is None


# --- the margin --------------------------------------------------------------------------------


def test_margin_learns_from_spans_within_floor_and_ceiling(redis_client: redis.Redis) -> None:
    """The margin is the largest recent span with headroom, never below the floor nor above
    the ceiling, and every window widens with it."""
    scheduler = make(redis_client, floor_ms=20, ceiling_ms=500)
    assert scheduler.margin_ms() == 20
    assert scheduler.observe(5) == 20  # loopback-fast: the floor
    assert scheduler.observe(150) == round(150 * MARGIN_HEADROOM)
    assert scheduler.observe(10) == round(150 * MARGIN_HEADROOM)  # the largest recent span
    assert scheduler.observe(5000) == 500
    assert scheduler.margin_ms() == 500
    assert scheduler.pause("default", Bucket.CANCEL) == 300 + 500
    assert redis_client.ttl(KEYS.margin) > 0  # forgotten after a quiet spell


def test_accounts_take_turns_and_urgent_heads_go_first(redis_client: redis.Redis) -> None:
    """One release hands out urgent heads of every account first, then one turn per line per
    round, so a burst on one account is not published ahead of another account's turn."""
    scheduler = make(redis_client, accounts=("alpha", "beta"))
    scheduler.join("alpha", Bucket.CANCEL, jobs(5, "a"))
    scheduler.join("beta", Bucket.CANCEL, jobs(5, "b"))
    scheduler.join("beta", Bucket.CANCEL, ["urgent"], priority=Priority.URGENT)
    turns, _ = scheduler.release()
    assert [t.job for t in turns] == ["urgent", "a000", "b000", "a001"]


# --- owners: turns within a line (lines.lua, start-time fair queuing) ----------------------

WIDE = {bucket: Rate(100, 60.0) for bucket in Bucket}  # room for every turn in one release


def test_an_owner_with_one_job_waits_one_turn_not_a_backlog(redis_client: redis.Redis) -> None:
    """An owner's single job, joining behind another owner's 20, gets the next turn but one
    (the owner already served holds no credit over a newcomer), not the 21st."""
    scheduler = make(redis_client, rates=WIDE)
    scheduler.join("default", Bucket.CANCEL, jobs(20, "a"), owner="strat-a")
    first, _ = scheduler.release()
    scheduler.join("default", Bucket.CANCEL, jobs(20, "a2"), owner="strat-a")
    scheduler.join("default", Bucket.CANCEL, ["b000"], owner="strat-b")
    turns, _ = scheduler.release()
    order = [t.job for t in turns]
    assert len(first) == 20 and order.index("b000") <= 1, order


def test_owners_alternate_by_their_shares(redis_client: redis.Redis) -> None:
    """With shares strat-a:3 and strat-b:1 (and jobs with no owner weighing 1), turns go
    3:1:1 while all three have jobs waiting, each owner's jobs in request order."""
    scheduler = make(redis_client, rates=WIDE, shares={"strat-a": 3, "strat-b": 1})
    scheduler.join("default", Bucket.CANCEL, jobs(12, "a"), owner="strat-a")
    scheduler.join("default", Bucket.CANCEL, jobs(12, "b"), owner="strat-b")
    scheduler.join("default", Bucket.CANCEL, jobs(12, "n"))
    turns, _ = scheduler.release()
    first = [t.job[0] for t in turns[:15]]
    assert (first.count("a"), first.count("b"), first.count("n")) == (9, 3, 3), first
    for owner in "abn":
        mine = [t.job for t in turns if t.job[0] == owner]
        assert mine == sorted(mine)


def test_urgent_goes_first_whatever_the_owner(redis_client: redis.Redis) -> None:
    """An urgent job of an owner that had many turns still goes before every normal job of
    an owner that had none."""
    scheduler = make(redis_client, rates=WIDE)
    scheduler.join("default", Bucket.CANCEL, jobs(10, "a"), owner="strat-a")
    scheduler.release()
    scheduler.join("default", Bucket.CANCEL, jobs(5, "b"), owner="strat-b")
    scheduler.join(
        "default", Bucket.CANCEL, ["a-urgent"], owner="strat-a", priority=Priority.URGENT
    )
    turns, _ = scheduler.release()
    assert turns[0].job == "a-urgent"


def test_waiting_is_counted_per_owner(redis_client: redis.Redis) -> None:
    """The line's use says how many jobs each owner has waiting, and how many are urgent."""
    scheduler = make(redis_client)
    scheduler.join("default", Bucket.CANCEL, jobs(6, "a"), owner="strat-a")
    scheduler.join("default", Bucket.CANCEL, ["b"], owner="strat-b", priority=Priority.URGENT)
    scheduler.join("default", Bucket.CANCEL, ["n"])
    usage = Estimates(scheduler).usage("default", Bucket.CANCEL)
    assert usage.owners == {"strat-a": (6, 0), "strat-b": (1, 1), "": (1, 0)}


def test_a_line_waiting_for_a_look_is_never_said_to_go_now(redis_client: redis.Redis) -> None:
    """A line whose next look lies ahead (left by an earlier fleet) estimates its jobs at
    that look, never ~0 s; a starting dispatcher's look_now brings the look back to now."""
    scheduler = make(redis_client)
    scheduler.join("default", Bucket.CANCEL, ["left"])
    line = scheduler.line("default", Bucket.CANCEL)
    (seconds, micros) = redis_client.time()
    ahead_ms = seconds * 1000 + micros // 1000 + 40_000
    redis_client.zadd(line.active, {line.args[0]: ahead_ms})
    assert etas(scheduler, ["left"], absolute=True)[0] >= ahead_ms
    scheduler.look_now()
    assert etas(scheduler, ["left"])[0] <= 100
