"""Model artifact transport: weights and metadata in a JetStream Object Store, a signed pointer
to the current version in a KV bucket (compare-and-swap), a fast chunk download.

Layout: object ``<name>/v<version>/weights.safetensors`` and ``<name>/v<version>/meta.json``
in bucket ``hive_models``; key ``<name>`` in bucket ``hive_pointer`` holding a
:class:`SignedPointer`. A pointer has a ``serial`` that only grows: a rollback is a *new*
pointer (higher serial) to an older version, so an agent refuses any replayed older pointer.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import orjson
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from ._consumer import LogReader
from ._events import Metrics, Name, Sha256, utcnow
from ._signing import SignatureError, sign, verify
from ._subjects import MODEL_BUCKET, POINTER_BUCKET

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

    async def open(self, *, create: bool = False) -> ModelStore:
        """Bind the buckets (creating them when ``create``; only the distiller does)."""
        try:
            self.obs = await self.js.object_store(MODEL_BUCKET)
        except (NotFoundError, BadRequestError):
            if not create:
                raise ArtifactError(
                    f"object store {MODEL_BUCKET!r} does not exist yet (no model published)"
                ) from None
            self.obs = await self.js.create_object_store(MODEL_BUCKET, description="hive model artifacts")
        try:
            self.kv = await self.js.key_value(POINTER_BUCKET)
        except (NotFoundError, BadRequestError):
            if not create:
                raise ArtifactError(f"KV bucket {POINTER_BUCKET!r} does not exist yet") from None
            self.kv = await self.js.create_key_value(
                bucket=POINTER_BUCKET, history=16, description="hive current-model pointers"
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
