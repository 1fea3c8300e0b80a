"""Owners: orders tracked to a strategy, all or none, forgotten when final; requests that
carry an owner. Each test has a redis-server of its own and no worker, so what a call wrote
can be read exactly as it left it."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import SERVICE_ENV
from tests.redis_server import redis_server
from tests.test_cli import cli
from worker.errors import InvalidRequest
from worker.models import CancelRecord, OrderState, Priority
from worker.owners import owned, owners_of, track
from worker.producer import enqueue
from worker.services import Services
from worker.settings import Settings

pytestmark = pytest.mark.integration

SEED = 20261206


def order_ids(count: int, seed: int = SEED) -> list[str]:
    """Deterministic order ids (UUID v4 from a seeded generator)."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]


@pytest.fixture
def services() -> Iterator[Services]:
    """Services on a redis-server of this test's own, a DELETE a minute (nothing is sent:
    no worker runs)."""
    with redis_server() as url:
        env = {**SERVICE_ENV, "REDIS_URL": url, "COINSWITCH_CANCEL_RATE_LIMIT": "1/60s"}
        yield Services(Settings.from_env(env))


def test_tracking_is_all_or_none_and_names_the_other_owner(services: Services) -> None:
    """A batch is tracked in one call; one order of it tracked to another owner refuses the
    whole batch, naming that order and owner, and tracks none of the others."""
    a_ids, fresh = order_ids(3), order_ids(2, SEED + 1)
    assert track(services, a_ids, "strat-a", "default") == 3
    assert track(services, a_ids, "strat-a", "default") == 0  # again: nothing new
    with pytest.raises(InvalidRequest) as refused:
        track(services, [*fresh, a_ids[1]], "strat-b", "default")
    assert a_ids[1] in str(refused.value) and "'strat-a'" in str(refused.value)
    assert set(owners_of(services, fresh).values()) == {None}
    assert {o.order_id for o in owned(services, "strat-a", "default")} == set(a_ids)


def test_a_final_record_forgets_its_owner(services: Services) -> None:
    """When an order's record becomes final, the order leaves its owner's list and its
    owner key goes; the other orders stay tracked."""
    ids = order_ids(2)
    track(services, ids, "strat-a", "default")
    enqueue(services, ids, "EXCHANGE_2", "default", Priority.NORMAL)

    def cancelled(record: CancelRecord) -> CancelRecord:
        record.state = OrderState.CANCELLED
        return record

    services.store.update(ids[0], cancelled, services.scheduler)
    assert owners_of(services, ids) == {ids[0]: None, ids[1]: "strat-a"}
    assert [o.order_id for o in owned(services, "strat-a", "default")] == [ids[1]]


def test_a_request_names_the_owner_or_is_refused(services: Services) -> None:
    """A request with an owner tracks its untracked orders and records the owner; one for an
    order tracked to someone else records that owner without being told, and one naming a
    different owner is refused with nothing written."""
    mine, theirs = order_ids(1), order_ids(1, SEED + 2)
    track(services, theirs, "strat-b", "default")
    made = enqueue(services, mine, "EXCHANGE_2", "default", Priority.NORMAL, "strat-a")
    assert made.records[0].owner == "strat-a"
    assert owners_of(services, mine) == {mine[0]: "strat-a"}
    told = enqueue(services, theirs, "EXCHANGE_2", "default", Priority.NORMAL)
    assert told.records[0].owner == "strat-b"
    other = order_ids(1, SEED + 3)
    track(services, other, "strat-b", "default")
    with pytest.raises(InvalidRequest) as refused:
        enqueue(
            services,
            [*order_ids(1, SEED + 4), *other],
            "EXCHANGE_2",
            "default",
            Priority.NORMAL,
            "strat-a",
        )
    assert other[0] in str(refused.value) and "'strat-b'" in str(refused.value)
    assert services.store.get_many([order_ids(1, SEED + 4)[0], other[0]]) == [None, None]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["track", "Strat A", "1b5f2a8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b"], "owner 'Strat A'"),
        (["track", "strat-a"], "the following arguments are required"),
        (["track", "strat-a", "not-an-id"], "order_id 'not-an-id'"),
        (
            ["track", "strat-a", "1b5f2a8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "--account", "nobody"],
            "account 'nobody'",
        ),
        (["cancel", "1b5f2a8e-3c4d-4e5f-8a9b-0c1d2e3f4a5b", "--owner", "-bad"], "owner"),
        (["cancel-all", "--owner", "A"], "owner 'A'"),
        (["status", "--owner", "x" * 65], "owner"),
    ],
)
def test_bad_owner_input_exits_2_naming_it(args: list[str], named: str) -> None:
    """A malformed owner, id or account, or no ids: exit 2 naming the value."""
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr


def test_the_cli_tracks_and_lists_an_owners_orders() -> None:
    """`track` tracks ids to an owner (JSON: one document), `status --owner --json` lists
    them, and tracking one to another owner exits 2 naming the owner it has."""
    ids = order_ids(2, SEED + 5)
    tracked = cli("track", "strat-cli", *ids, "--json")
    assert tracked.returncode == 0, tracked.stderr
    assert json.loads(tracked.stdout) == {
        "owner": "strat-cli", "account": "default", "tracked": 2, "new": 2
    }  # fmt: skip
    listed = cli("status", "--owner", "strat-cli", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {r["order_id"] for r in rows} == set(ids) and {r["state"] for r in rows} == {None}
    refused = cli("track", "strat-other", ids[0])
    assert refused.returncode == 2 and "'strat-cli'" in refused.stderr


def test_tracking_nothing_is_refused_before_redis() -> None:
    """An empty id list or a malformed owner is refused naming it, before any Redis call."""
    from worker.owners import track_orders

    with pytest.raises(InvalidRequest, match="order_ids"):
        track_orders([], "strat-a")
    with pytest.raises(InvalidRequest, match="owner 'Strat A'"):
        track_orders(order_ids(1), "Strat A")
