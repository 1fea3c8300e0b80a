"""Every Lua script cancel-worker runs, kept as files in worker/lua and loaded once.

A script's first line may name the libraries it uses (`--! uses: common budget lines`);
the loader puts before it the constants Lua shares with Python (below), then those
libraries in that order. So each concept's Lua lives in one file (the scheduler's lines in
lines.lua, a budget's slots in budget.lua, records in records.lua), and a script that needs
several, like the producer's one call that records, queues and hands out a turn, composes
them instead of pasting them.

Each script file is headed by a `KEYS: / ARGV: / Returns:` comment.
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path
from typing import Any

import redis

from worker.models import FINAL_STATES

LUA_DIR = Path(__file__).with_name("lua")
USES = "--! uses:"

#: A job's place in a line is one number: rank, then the time it is ordered by, then its
#: position within a request (so a batch keeps its order inside one millisecond):
#: score = rank * RANK_STRIDE + (since_ms - LINE_EPOCH_MS) * LINE_SUB + position.
#: Every score stays below 2**53, so Redis keeps it exact.
LINE_EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
LINE_SUB = 1024  # positions within one millisecond (a larger batch spills into the next)
RANK_STRIDE = 2**49  # urgent (rank 0) scores sit below this, normal (rank 1) above
#: An owner's virtual time advances by SHARE_UNIT / its share per turn it is given.
SHARE_UNIT = 1000


def preamble() -> str:
    """The constants every script sees, from their one definition here (and worker.models)."""
    final = ", ".join(f"{state.value} = true" for state in sorted(FINAL_STATES))
    return (
        f"local STRIDE, EPOCH, SUB = {RANK_STRIDE}, {LINE_EPOCH_MS}, {LINE_SUB}\n"
        f"local SHARE_UNIT = {SHARE_UNIT}\n"
        f"local FINAL = {{{final}}}\n"
    )


@functools.cache
def source(name: str) -> str:
    """The full text of script `name` (worker/lua/<name>.lua): preamble, libraries, body."""
    body = (LUA_DIR / f"{name}.lua").read_text()
    first, _, _ = body.partition("\n")
    libraries = first[len(USES) :].split() if first.startswith(USES) else []
    parts = [preamble(), *((LUA_DIR / f"{lib}.lua").read_text() for lib in libraries), body]
    return "\n".join(parts)


_registered: weakref.WeakKeyDictionary[redis.Redis, dict[str, Any]] = weakref.WeakKeyDictionary()


def script(client: redis.Redis, name: str) -> Any:
    """Script `name` registered on `client` (EVALSHA, loaded into Redis on first use), once
    per client: a turn's script is not hashed again for every turn."""
    scripts = _registered.setdefault(client, {})
    found = scripts.get(name)
    if found is None:
        found = scripts[name] = client.register_script(source(name))
    return found
