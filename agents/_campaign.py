"""Campaigns: a family's instances worked with a budget of experiments each.

A task spec names one instance (``hartmann6/0``), a range (``hartmann6/0-31``) or a comma list
(``hartmann6/0,hartmann6/3-5``); :func:`parse_campaign` turns it into instance refs (at most
:data:`MAX_INSTANCES`). Researchers work a campaign instance by instance: before each experiment
they take one unit of the instance's budget from a compare-and-swap counter in the JetStream KV
bucket :data:`CAMPAIGN_BUCKET` (one key per namespace and instance; created on first use, like
the run claims). A take that loses a race re-reads and retries, so however many agents race, no
instance runs more than its budget of experiments; once it is spent, an agent moves to the next
instance with budget left. Deployers take each new instance once (namespace ``deploy``, budget 1)
from their own range (:func:`parse_instances`), so no two deployers measure the same instance.

Under ``--secure`` agents need publish rights on ``$KV.hive_campaigns.>`` and the bucket must
exist before they start (the materializer provisions the agents' buckets).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import orjson
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

import streams

from ._backoff import Backoff, is_transient, retry_transient
from ._task import load_task

CAMPAIGN_BUCKET = streams.CAMPAIGN_BUCKET
"""KV bucket of per-instance experiment counters (no TTL: a spent budget stays spent)."""
MAX_INSTANCES = 10_000
"""Upper bound of the instances one spec may name."""
DEFAULT_INSTANCE_BUDGET = 200
"""Experiments per instance in a multi-instance campaign (``--instance-budget`` overrides it)."""

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def _expand(item: str) -> list[str]:
    """One comma-separated item: ``family/3``, ``family/0-31``, ``family`` or ``mod:Cls/2``."""
    family, sep, instance = item.strip().partition("/")
    if not family:
        raise ValueError(f"bad task spec item {item!r}: no family")
    m = _RANGE.match(instance) if sep else None
    if m is None:
        load_task(item.strip())  # ValueError with the reason (unknown family, bad instance)
        return [item.strip()]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise ValueError(f"bad instance range {instance!r} in {item!r}: {hi} < {lo}")
    if hi - lo + 1 > MAX_INSTANCES:
        raise ValueError(f"range {item!r} names {hi - lo + 1} instances; at most {MAX_INSTANCES}")
    first = load_task(f"{family}/{lo}")
    load_task(f"{family}/{hi}")
    base = first.ref.rsplit("/", 1)[0]
    return [f"{base}/{i}" for i in range(lo, hi + 1)]


def parse_campaign(spec: str) -> list[str]:
    """The instance refs a task spec names, in order, without duplicates.

    Raises ``ValueError`` (with the reason) for an empty spec, an unknown task, a bad instance or
    range, or more than :data:`MAX_INSTANCES` instances."""
    if not spec or not spec.strip():
        raise ValueError("empty task spec")
    refs: list[str] = []
    seen: set[str] = set()
    for item in spec.split(","):
        if not item.strip():
            raise ValueError(f"bad task spec {spec!r}: an empty item")
        for ref in _expand(item):
            if ref not in seen:
                seen.add(ref)
                refs.append(ref)
            if len(refs) > MAX_INSTANCES:
                raise ValueError(f"task spec {spec!r} names more than {MAX_INSTANCES} instances")
    return refs


def parse_instances(spec: str) -> range:
    """A deployer's instance range: ``1000-1999`` (inclusive) or one index ``1000``."""
    text = spec.strip()
    m = _RANGE.match(text)
    lo, hi = (int(m.group(1)), int(m.group(2))) if m else (None, None)
    if m is None and text.isdigit():
        lo = hi = int(text)
    if lo is None or hi is None or hi < lo:
        raise ValueError(f"bad instance range {spec!r}: use LOW-HIGH, e.g. 1000-1999")
    if hi - lo + 1 > 10 * MAX_INSTANCES:
        raise ValueError(f"instance range {spec!r} is larger than {10 * MAX_INSTANCES}")
    return range(lo, hi + 1)


def budget_key(namespace: str, ref: str) -> str:
    """The counter's key: the namespace and a hash of the instance ref (refs may hold ``:``)."""
    return f"{namespace}.{hashlib.sha256(ref.encode()).hexdigest()[:32]}"


class Campaign:
    """Per-instance budgets through compare-and-swap counters (see the module docstring).

    ``refs``: the instances in the order this agent visits them, starting at ``start`` (agents
    start at different places so they spread over the campaign). ``budget``: experiments per
    instance; ``None`` means unlimited (no bucket is used)."""

    def __init__(
        self,
        js: Any,
        refs: Sequence[str],
        budget: int | None,
        *,
        namespace: str = "research",
        start: int = 0,
        backoff: Backoff | None = None,
    ) -> None:
        if not refs:
            raise ValueError("a campaign needs at least one instance")
        if budget is not None and budget < 1:
            raise ValueError(f"instance budget must be >= 1, not {budget}")
        self.js = js
        self.refs = list(refs)
        self.budget = budget
        self.namespace = namespace
        self.index = start % len(self.refs)
        self.spent: set[str] = set()
        self.kv: Any = None
        self.backoff = backoff or Backoff()

    @property
    def current(self) -> str:
        """The instance this agent works now."""
        return self.refs[self.index]

    async def open(self) -> Campaign:
        """Bind (or create) the campaign bucket; nothing to do for an unlimited budget."""
        if self.budget is not None:
            await retry_transient(self._open, what="open campaign bucket", backoff=self.backoff)
        return self

    async def _open(self) -> None:
        try:
            self.kv = await self.js.key_value(CAMPAIGN_BUCKET)
        except (NotFoundError, BadRequestError):
            try:
                self.kv = await self.js.create_key_value(bucket=CAMPAIGN_BUCKET, history=1)
            except BadRequestError:  # created by someone else meanwhile
                self.kv = await self.js.key_value(CAMPAIGN_BUCKET)

    async def used(self, ref: str) -> int:
        """Experiments taken on ``ref`` so far (by every agent)."""
        if self.kv is None:
            return 0
        try:
            entry = await retry_transient(
                lambda: self.kv.get(budget_key(self.namespace, ref)),
                what="campaign get",
                backoff=self.backoff,
            )
        except KeyNotFoundError:
            return 0
        return int(orjson.loads(entry.value)["used"]) if entry.value else 0

    async def take(self, ref: str) -> bool:
        """Take one experiment of ``ref``'s budget; False when it is spent (compare-and-swap)."""
        if self.budget is None:
            return True
        if ref in self.spent:
            return False
        key = budget_key(self.namespace, ref)
        for _ in range(1000):  # each lost race means another agent took one: bounded by the budget
            try:
                entry = await retry_transient(
                    lambda: self.kv.get(key), what="campaign get", backoff=self.backoff
                )
                used, revision = int(orjson.loads(entry.value)["used"]), entry.revision
            except KeyNotFoundError:
                used, revision = 0, None
            if used >= self.budget:
                self.spent.add(ref)
                return False
            value = orjson.dumps({"ref": ref, "used": used + 1})
            try:
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
                return True
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                # someone else moved the counter (or its entry vanished while nats-py's refused
                # create read it back, as claims saw in CI): read it again
                continue
            except Exception as e:  # a write that timed out may have landed: read it again (an
                if not is_transient(e):  # over-count only wastes a unit, never exceeds the budget)
                    raise
        return False

    async def next_instance(self) -> str | None:
        """Take one experiment on the current instance, moving on to the next instance with budget
        left when it is spent; returns that instance, or None when the whole campaign is spent."""
        for step in range(len(self.refs)):
            ref = self.refs[(self.index + step) % len(self.refs)]
            if await self.take(ref):
                self.index = (self.index + step) % len(self.refs)
                return ref
        return None
