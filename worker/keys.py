"""Every Redis key, channel and queue name cancel-worker uses, in one place.

Our keys live under one namespace prefix (`cw:` by default). Budgets are keyed by a
fingerprint of the API key (two account names for one key share its budget); lines by
account name, which is all a producer knows. Kombu's own keys (broker queues, the unacked
hash) are named here too, because metrics read them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: Celery queues: cancels and polls apart, so a poll never delays a cancel.
CANCEL_QUEUE = "cancels"
POLL_QUEUE = "polls"

#: Kombu's Redis transport keys (set explicitly in celery_app's transport options).
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
KOMBU_UNACKED_MUTEX = "unacked_mutex"


def key_fingerprint(api_key: str) -> str:
    """A short, stable id for an API key, so key names never carry the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Keys:
    """Key names under one namespace; build once from settings and pass around."""

    namespace: str = "cw"

    def record(self, order_id: str) -> str:
        """String: the JSON record of one cancellation."""
        return f"{self.namespace}:record:{order_id}"

    def owner_of(self, order_id: str) -> str:
        """String with the record's TTL: the owner (a strategy) an order is tracked to."""
        return f"{self.namespace}:owner:{order_id}"

    def owned(self, account: str, owner: str) -> str:
        """Sorted set: the orders tracked to one owner of one account → when tracked (ms)."""
        return f"{self.namespace}:owned:{account}:{owner}"

    def batch(self, batch_id: str) -> str:
        """String: the JSON record of one cancel-all request."""
        return f"{self.namespace}:batch:{batch_id}"

    def batch_lease(self, batch_id: str) -> str:
        """String: which delivery may send this batch's cancel-all right now."""
        return f"{self.namespace}:lease:batch:{batch_id}"

    def batch_pending(self, batch_id: str) -> str:
        """Set: the orders of a cancel-all that have no final record yet."""
        return f"{self.namespace}:batch:{batch_id}:pending"

    def confirm(self, account: str) -> str:
        """Sorted set: orders awaiting confirmation that the order lists may settle → due ms."""
        return f"{self.namespace}:confirm:{account}"

    def confirm_pass(self, account: str) -> str:
        """String with a TTL of one pass interval: a list pass began (ms); the next waits it out."""
        return f"{self.namespace}:confirm:{account}:last"

    @property
    def events(self) -> str:
        """Stream: every record transition, for strategy services' consumer groups."""
        return f"{self.namespace}:events"

    @property
    def due(self) -> str:
        """Sorted set: order ids by the time (ms) the sweeper must look at them again."""
        return f"{self.namespace}:due"

    @property
    def dead_letters(self) -> str:
        """List: task messages that could not be understood, kept for an operator."""
        return f"{self.namespace}:dead"

    @property
    def state_counts(self) -> str:
        """Hash: how many records are in each state (kept in step with every transition)."""
        return f"{self.namespace}:stats:states"

    @property
    def time_to_final(self) -> str:
        """Hash: histogram of request → final times (fields `le:<s>`, `sum_ms`, `count`)."""
        return f"{self.namespace}:stats:time_to_final"

    def cancel_lease(self, order_id: str) -> str:
        """String: which delivery may send the DELETE for this order right now."""
        return f"{self.namespace}:lease:cancel:{order_id}"

    def poll_lease(self, order_id: str) -> str:
        """String: which delivery may read this order's status right now."""
        return f"{self.namespace}:lease:poll:{order_id}"

    @property
    def workers(self) -> str:
        """Hash: worker node name → JSON (queues it consumes, last seen ms), for metrics."""
        return f"{self.namespace}:workers"

    @property
    def accounts(self) -> str:
        """Hash: account name → JSON (key fingerprint, budgets, last seen), kept by workers."""
        return f"{self.namespace}:accounts"

    # --- the budget scheduler ----------------------------------------------------------

    def schedule(self, fingerprint: str, bucket: str) -> str:
        """Sorted set: send times (ms) of one budget: sends made and turns handed out."""
        return f"{self.namespace}:rl:{fingerprint}:{bucket}"

    def pause(self, fingerprint: str, bucket: str) -> str:
        """String with a TTL: set after a 429; no turn is handed out before it expires."""
        return f"{self.schedule(fingerprint, bucket)}:pause"

    def bucket_stats(self, fingerprint: str, bucket: str) -> str:
        """Hash: counters of one budget (sends made, 429s seen)."""
        return f"{self.schedule(fingerprint, bucket)}:stats"

    def line_owners(self, account: str, bucket: str) -> str:
        """Sorted set: the owners with jobs ready in one line, in the order they are served."""
        return f"{self.namespace}:line:{account}:{bucket}:owners"

    def line_queue(self, account: str, bucket: str, owner: str) -> str:
        """Sorted set: one owner's jobs ready in one line, most urgent, then oldest, first.
        (`line_queue(account, bucket, "")` is also the prefix scripts add an owner to.)"""
        return f"{self.namespace}:line:{account}:{bucket}:q:{owner}"

    def line_later(self, account: str, bucket: str) -> str:
        """Sorted set: jobs of one line that may not go before a time (ms): a countdown."""
        return f"{self.namespace}:line:{account}:{bucket}:later"

    def line_jobs(self, account: str, bucket: str) -> str:
        """Hash: every job waiting in one line → `rank:since:position:owner`."""
        return f"{self.namespace}:line:{account}:{bucket}:jobs"

    def line_clock(self, account: str, bucket: str) -> str:
        """Hash: each owner's virtual time in one line, and the line's own (field `*`)."""
        return f"{self.namespace}:line:{account}:{bucket}:clock"

    @property
    def active(self) -> str:
        """Sorted set: `account|bucket` of every line with jobs → when it next needs a look (ms)."""
        return f"{self.namespace}:lines:active"

    @property
    def wake(self) -> str:
        """List of at most one token: a job joined a line; one dispatcher looks at once."""
        return f"{self.namespace}:wake"

    @property
    def spans(self) -> str:
        """List: recent spans (ms) from a turn being taken to the exchange's answer."""
        return f"{self.namespace}:net:spans"

    @property
    def margin(self) -> str:
        """String: the margin (ms) added to every window, learned from the spans."""
        return f"{self.namespace}:net:margin"

    @property
    def confirm_times(self) -> str:
        """List: recent times (ms) from a cancel accepted to the exchange showing it final."""
        return f"{self.namespace}:net:confirm_times"

    @property
    def confirm_delay(self) -> str:
        """String: when (ms after acceptance) an order's first status read goes, learned."""
        return f"{self.namespace}:net:confirm_delay"

    # --- dead man's switches ------------------------------------------------------------

    def deadman(self, name: str) -> str:
        """Hash: one switch's settings and state."""
        return f"{self.namespace}:deadman:switch:{name}"

    def deadman_beat(self, name: str) -> str:
        """String with a TTL: the switch's deadline is its expiry; a heartbeat pushes it."""
        return f"{self.namespace}:deadman:beat:{name}"

    @property
    def deadman_armed(self) -> str:
        """Set: the switches being watched."""
        return f"{self.namespace}:deadman:armed"

    @property
    def deadman_names(self) -> str:
        """Set: every switch ever armed, for `deadman status`."""
        return f"{self.namespace}:deadman:names"

    @property
    def deadman_wake(self) -> str:
        """List of at most one token: a switch was armed; one watcher looks at once."""
        return f"{self.namespace}:deadman:wake"

    @property
    def deadman_firing(self) -> str:
        """Sorted set: switches claimed for firing → when (ms); retried if one stalls."""
        return f"{self.namespace}:deadman:firing"

    @property
    def deadman_stats(self) -> str:
        """Hash: how many times each switch has fired."""
        return f"{self.namespace}:stats:deadman"

    @property
    def sync_point(self) -> str:
        """Counter written before `WAIT`: once a replica has it, it has every earlier write."""
        return f"{self.namespace}:repl:sync"

    @property
    def primary(self) -> str:
        """Hash: the run id of the primary last seen (to notice a failover), and whether a
        replica confirmed its send times."""
        return f"{self.namespace}:repl:primary"

    @property
    def sweep_lock(self) -> str:
        """String with a TTL: the dispatcher that sweeps during this interval."""
        return f"{self.namespace}:lock:sweep"
