"""Model artifact transport: weights and metadata in a JetStream Object Store, a signed pointer
to the current version in a KV bucket (compare-and-swap), a fast chunk download.

Layout: object ``<name>/v<version>/weights.safetensors`` and ``<name>/v<version>/meta.json``
in bucket ``hive_models``; key ``<name>`` in bucket ``hive_pointer`` holding a
:class:`SignedPointer`. A pointer has a ``serial`` that only grows: a rollback is a *new*
pointer (higher serial) to an older version, so an agent refuses any replayed older pointer.

**Which pointer is current** must not depend on what an agent happens to see first: anyone who
can write the KV key could put an old, validly signed pointer back. Every pointer write is
followed by a ``ModelPublished`` announcement on ``hive.models.<name>`` (subjects only the
distiller may publish, on an append-only log) carrying the pointer's signature. So
:meth:`ModelStore.current` takes the pointer the *latest announcement* names (looked up in the
KV key's history) — or a pointer of a higher serial not announced yet (the distiller writes the
KV first) — and never an older announced one, whatever the key's current value is. Writers take
their serial from :meth:`ModelStore.next_serial`: above every serial in the key's history and
every announcement, so a rollback is accepted by agents holding any earlier pointer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
)
from pydantic import BaseModel, ConfigDict, Field

from ._codec import DecodeError, decode
from ._connect import default_replicas
from ._consumer import LogReader
from ._events import Metrics, ModelPublished, Name, Sha256, utcnow
from ._signing import SignatureError, sign, verify
from ._subjects import MODEL_BUCKET, POINTER_BUCKET, STREAM

POINTER_HISTORY = 64
"""Pointer writes the KV keeps per key (the most NATS allows): where the current one is looked up."""
_ROLLBACK_ID = re.compile(r"/rollback-(\d+)$")

CHUNK_BYTES = 1024 * 1024 - 8192
"""Object chunk size (just under the default 1 MB max_payload of a NATS server)."""


class ArtifactError(RuntimeError):
    """A model artifact failed a check (size, digest, signature, serial) or is missing."""


class ModelPointer(BaseModel):
    """What the signature covers: which version is current and how to check its bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    name: Name
    serial: int = Field(ge=1, description="grows with every pointer write, rollbacks included")
    version: int = Field(ge=1)
    parent_version: int = Field(default=0, ge=0)
    weights: str
    weights_sha256: Sha256
    weights_size: int = Field(ge=0)
    meta: str
    meta_sha256: Sha256
    meta_size: int = Field(ge=0)
    trained_through_seq: int = Field(default=0, ge=0)
    dataset_size: int = Field(default=0, ge=0)
    eval: Metrics = Field(default_factory=dict)
    issued_at: datetime = Field(default_factory=utcnow)
    note: str = Field(default="", max_length=200)

    def signed_bytes(self) -> bytes:
        """The canonical bytes the Ed25519 signature is computed over."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


class SignedPointer(BaseModel):
    """A pointer and its signature, as stored in the KV bucket."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    pointer: ModelPointer
    signature: str = ""

    def check(self, public_key: Any) -> ModelPointer:
        """The pointer if the signature verifies with the pinned key; raises SignatureError."""
        verify(public_key, self.pointer.signed_bytes(), self.signature)
        return self.pointer


def object_names(name: str, version: int) -> tuple[str, str]:
    """Object names of a version's weights and metadata."""
    return f"{name}/v{version}/weights.safetensors", f"{name}/v{version}/meta.json"


class ModelStore:
    """Read and write model versions and the pointer. Writers need the distiller's permissions."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.obs: Any = None
        self.kv: Any = None

    def _replicas(self) -> int:
        """R3 on a cluster of three or more nodes (a model survives the loss of one), else R1."""
        return default_replicas(self.nc)

    async def open(self, *, create: bool = False) -> ModelStore:
        """Bind the buckets (creating them when ``create``; only the distiller does)."""
        try:
            self.obs = await self.js.object_store(MODEL_BUCKET)
        except (NotFoundError, BadRequestError):
            if not create:
                raise ArtifactError(
                    f"object store {MODEL_BUCKET!r} does not exist yet (no model published)"
                ) from None
            self.obs = await self.js.create_object_store(
                MODEL_BUCKET,
                config=ObjectStoreConfig(
                    bucket=MODEL_BUCKET, description="hive model artifacts", replicas=self._replicas()
                ),
            )
        try:
            self.kv = await self.js.key_value(POINTER_BUCKET)
        except (NotFoundError, BadRequestError):
            if not create:
                raise ArtifactError(f"KV bucket {POINTER_BUCKET!r} does not exist yet") from None
            self.kv = await self.js.create_key_value(
                bucket=POINTER_BUCKET,
                history=POINTER_HISTORY,
                description="hive current-model pointers",
                replicas=self._replicas(),
            )
        return self

    # ------------------------------------------------------------------ writing (distiller)
    async def put_version(self, name: str, version: int, weights: bytes, meta: bytes) -> dict[str, Any]:
        """Store a version's files; returns the object names, sizes and sha256 digests."""
        w_name, m_name = object_names(name, version)
        from nats.js.api import ObjectMeta, ObjectMetaOptions

        # Large chunks: a 10 MB model is ~10 messages per reader instead of ~80 (well under the
        # server's max_payload, 1 MB by default).
        chunk = min(CHUNK_BYTES, max(1024, self.nc.max_payload - 4096))
        for obj, data in ((w_name, weights), (m_name, meta)):
            options = ObjectMetaOptions(max_chunk_size=chunk)
            await self.obs.put(obj, data, meta=ObjectMeta(name=obj, options=options))
        return {
            "weights": w_name,
            "weights_sha256": hashlib.sha256(weights).hexdigest(),
            "weights_size": len(weights),
            "meta": m_name,
            "meta_sha256": hashlib.sha256(meta).hexdigest(),
            "meta_size": len(meta),
        }

    async def read_pointer(self, name: str) -> tuple[SignedPointer, int] | None:
        """The stored pointer and its KV revision, or None if none was ever written."""
        try:
            entry = await self.kv.get(name)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return SignedPointer.model_validate_json(entry.value), entry.revision

    async def write_pointer(
        self, pointer: ModelPointer, private_key: Any, expect_revision: int | None
    ) -> int:
        """Sign and write the pointer, failing if someone else wrote since ``expect_revision``
        (compare-and-swap; None = the key must not exist)."""
        signed = SignedPointer(pointer=pointer, signature=sign(private_key, pointer.signed_bytes()))
        data = signed.model_dump_json().encode()
        try:
            if expect_revision is None:
                return int(await self.kv.create(pointer.name, data))
            return int(await self.kv.update(pointer.name, data, last=expect_revision))
        except KeyWrongLastSequenceError:
            raise ArtifactError("the model pointer changed concurrently (compare-and-swap failed)") from None

    async def history(self, name: str, public_key: Any = None) -> list[SignedPointer]:
        """The pointers the KV still keeps for ``name``, oldest first (unparsable ones skipped;
        with ``public_key``, only those whose signature verifies)."""
        try:
            entries = await self.kv.history(name)
        except (NoKeysError, NotFoundError):
            return []
        out: list[SignedPointer] = []
        for entry in entries:
            if not entry.value:
                continue
            try:
                signed = SignedPointer.model_validate_json(entry.value)
                if public_key is not None:
                    signed.check(public_key)
            except (ValueError, SignatureError):
                continue
            out.append(signed)
        return out

    async def announcements(self, name: str) -> list[ModelPublished]:
        """The ``ModelPublished`` events of ``name`` on the log, in log order (none if the log
        does not exist)."""
        subject = f"hive.models.{name}"
        try:  # where to stop reading: the subject's last message now
            end = (await self.js.get_last_msg(STREAM, subject)).seq or 0
        except NotFoundError:  # no such stream, or nothing on the subject
            return []
        reader = LogReader(self.nc, filter_subject=subject, stream=STREAM)
        out: list[ModelPublished] = []
        try:
            await reader.start()
            while reader.last_seq < end:
                batch = await reader.fetch(1000, timeout=2.0)
                if not batch:
                    break
                for entry in batch:
                    try:
                        ev = decode(entry.data, entry.subject)
                    except DecodeError:
                        continue
                    if isinstance(ev, ModelPublished) and ev.name == name:
                        out.append(ev)
        finally:
            await reader.close()
        return out

    async def current(self, name: str, public_key: Any) -> SignedPointer | None:
        """The current pointer of ``name`` by the log, not by whatever the KV key holds now.

        It is the pointer whose signature the latest ``ModelPublished`` carries (found in the
        key's history), unless the history holds a validly signed pointer of a higher serial
        that no announcement names yet (written, its announcement still in flight). With no
        announcement at all, the key's current value. ``None`` when the announced pointer is no
        longer in the history (the caller keeps what it has)."""
        history = await self.history(name, public_key)
        announced = await self.announcements(name)
        if not announced:
            return history[-1] if history else None
        latest = announced[-1].signature
        match = next((p for p in reversed(history) if p.signature == latest), None)
        if match is None:
            return None
        names = {a.signature for a in announced}
        newer = [p for p in history if p.signature not in names and p.pointer.serial > match.pointer.serial]
        return max(newer, key=lambda p: p.pointer.serial) if newer else match

    async def next_serial(self, name: str, public_key: Any) -> int:
        """A serial above every one ever written for ``name``: every validly signed pointer in
        the key's history, every rollback announced (its event id carries the serial), and the
        number of announcements (each write is announced once, with a serial of its own)."""
        serials = [p.pointer.serial for p in await self.history(name, public_key)]
        announced = await self.announcements(name)
        for a in announced:
            m = _ROLLBACK_ID.search(a.event_id)
            if m:
                serials.append(int(m.group(1)))
        return max([len(announced), *serials]) + 1

    async def versions(self, name: str) -> list[int]:
        """Versions whose weights are in the store."""
        try:
            infos = await self.obs.list()
        except Exception:
            return []
        out = set()
        for info in infos:
            parts = info.name.split("/")
            if len(parts) == 3 and parts[0] == name and parts[1].startswith("v") and not info.deleted:
                out.add(int(parts[1][1:]))
        return sorted(out)

    # ------------------------------------------------------------------ reading (agents)
    async def fetch(self, object_name: str, *, size: int, sha256: str) -> bytes:
        """Download an object by pulling its chunks in batches (``ObjectStore.get`` copies
        quadratically), then check its size and sha256; raises ArtifactError on any mismatch."""
        try:
            info = await self.obs.get_info(object_name)
        except Exception as e:
            raise ArtifactError(f"object {object_name!r} not found: {e}") from None
        if info.size != size:
            raise ArtifactError(f"{object_name}: size {info.size} != announced {size}")
        reader = LogReader(
            self.nc, filter_subject=f"$O.{MODEL_BUCKET}.C.{info.nuid}", stream=f"OBJ_{MODEL_BUCKET}"
        )
        await reader.start()
        parts: list[bytes] = []
        h = hashlib.sha256()
        got = 0
        try:
            while len(parts) < (info.chunks or 0):
                batch = await reader.fetch(256, timeout=2.0)
                if not batch:
                    raise ArtifactError(f"{object_name}: chunks stopped after {len(parts)} of {info.chunks}")
                for entry in batch:
                    parts.append(entry.data)
                    h.update(entry.data)
                    got += len(entry.data)
        finally:
            await reader.close()
        if got != size:
            raise ArtifactError(f"{object_name}: got {got} bytes, announced {size}")
        if h.hexdigest() != sha256:
            raise ArtifactError(f"{object_name}: sha256 mismatch (tampered or corrupt)")
        return b"".join(parts)

    async def watch(self, name: str) -> AsyncIterator[SignedPointer | None]:
        """Yield the current pointer (or None), then every new one as it is written."""
        watcher = await self.kv.watch(name)
        try:
            async for entry in watcher:
                if entry is None:  # caught up
                    continue
                if entry.value:
                    try:
                        yield SignedPointer.model_validate_json(entry.value)
                    except ValueError:
                        yield None
        finally:
            await watcher.stop()


def accept_pointer(signed: SignedPointer, public_key: Any, current_serial: int) -> ModelPointer:
    """Verify a pointer an agent received: signature by the pinned key and a serial newer than
    the one it holds. Raises :class:`ArtifactError` (with the reason) otherwise."""
    try:
        pointer = signed.check(public_key)
    except SignatureError as e:
        raise ArtifactError(str(e)) from None
    if pointer.serial <= current_serial:
        raise ArtifactError(f"replayed or stale pointer: serial {pointer.serial} <= held {current_serial}")
    return pointer
