"""Does a smaller event on the wire pay? Issue 12, step 4: compact encodings against today's JSON.

Three measurements, side by side in one run, on ``--events`` realistic ~1 KB events (the ingest
bench's ``ExperimentFinished`` mix, encoded as hive's ``streams.encode`` does):

1. **Encodings**, per event: bytes, encode and decode CPU µs (to a plain dict), for today's JSON
   (orjson), MessagePack (msgspec), and each with per-message zlib (level 1). Decode to a dict
   is the like-for-like step: hive's strict validation comes after either.
2. **Publish rate against payload size**: plain nats-py ``publish_async`` with ``Nats-Msg-Id``
   (the raw baseline of ``hive bench ingest``) of payloads the size of each encoding, alternated
   in rounds on one embedded server, every ack awaited. If the rate barely moves with the size,
   the per-message cost dominates and fewer bytes do not buy speed.
3. **JetStream's own storage compression** (``compression: s2`` on a file stream): the bytes on
   disk for the same JSON payloads, and its publish rate beside an uncompressed stream; no code
   change for clients, and outside clients keep reading JSON.

Prints JSON and a human line. usage: ``python bench/wire_encoding.py --events 20000 --rounds 3``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import msgspec
import orjson

import streams
from hive._bench_ingest import realistic_events


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def encodings(payloads: list[bytes]) -> dict[str, dict[str, float]]:
    """Bytes and CPU µs per event of each encoding (encode from the dict, decode back to a dict)."""
    dicts = [orjson.loads(p) for p in payloads]
    n = len(dicts)
    mp_enc, mp_dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    arms: dict[str, tuple[Any, Any]] = {
        "json": (orjson.dumps, orjson.loads),
        "msgpack": (mp_enc.encode, mp_dec.decode),
        "json+zlib": (
            lambda d: zlib.compress(orjson.dumps(d), 1),
            lambda b: orjson.loads(zlib.decompress(b)),
        ),
        "msgpack+zlib": (
            lambda d: zlib.compress(mp_enc.encode(d), 1),
            lambda b: mp_dec.decode(zlib.decompress(b)),
        ),
    }
    out: dict[str, dict[str, float]] = {}
    for name, (enc, dec) in arms.items():
        best_enc = best_dec = float("inf")
        for _ in range(3):  # best of three passes: the least disturbed by other load
            t = time.process_time()
            blobs = [enc(d) for d in dicts]
            best_enc = min(best_enc, time.process_time() - t)
            t = time.process_time()
            for b in blobs:
                dec(b)
            best_dec = min(best_dec, time.process_time() - t)
        assert dec(blobs[0]) == dicts[0], name  # a faithful round trip
        out[name] = {
            "bytes_per_event": round(sum(map(len, blobs)) / n, 1),
            "encode_us": round(best_enc / n * 1e6, 2),
            "decode_us": round(best_dec / n * 1e6, 2),
        }
    return out


async def _publish(js: Any, subject: str, payloads: list[bytes], tag: str) -> float:
    """Messages per second of pipelined ``publish_async`` with msg ids, every ack awaited."""
    t = time.perf_counter()
    for i, p in enumerate(payloads):
        await js.publish_async(f"{subject}.a{i % 16}", p, headers={"Nats-Msg-Id": f"{tag}-{i}"})
    await js.publish_async_completed()
    return len(payloads) / (time.perf_counter() - t)


async def publish_rates(url: str, sizes: dict[str, int], n: int, rounds: int) -> dict[str, list[float]]:
    """Raw publish rate of ``n`` payloads of each size (bytes), the arms alternated ``rounds`` times."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    rates: dict[str, list[float]] = {k: [] for k in sizes}
    try:
        js = nc.jetstream(publish_async_max_pending=512)
        for r in range(rounds):
            for arm, size in sizes.items():
                name = f"WIRE_{arm.upper().replace('+', '_')}_{r}"
                await js.add_stream(
                    StreamConfig(name=name, subjects=[f"{name.lower()}.>"], storage=StorageType.FILE)
                )
                payload = os.urandom(size // 2).hex().encode()[:size]
                rates[arm].append(await _publish(js, name.lower(), [payload] * n, f"{arm}-{r}"))
                await js.delete_stream(name)
    finally:
        await nc.close()
    return rates


async def storage_compression(url: str, store: Path, payloads: list[bytes], rounds: int) -> dict[str, Any]:
    """Disk bytes per event and publish rate of a file stream without and with ``compression: s2``."""
    import nats
    from nats.js.api import StorageType, StoreCompression, StreamConfig

    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    out: dict[str, Any] = {"none": {"rates": []}, "s2": {"rates": []}}
    try:
        js = nc.jetstream(publish_async_max_pending=512)
        for r in range(rounds):
            for arm, comp in (("none", StoreCompression.NONE), ("s2", StoreCompression.S2)):
                name = f"WIRECOMP_{arm.upper()}_{r}"
                await js.add_stream(
                    StreamConfig(
                        name=name, subjects=[f"{name.lower()}.>"], storage=StorageType.FILE, compression=comp
                    )
                )
                out[arm]["rates"].append(await _publish(js, name.lower(), payloads, f"c{arm}{r}"))
                await asyncio.sleep(0.5)  # let the server flush the block
                found = [p for p in store.rglob(name) if p.is_dir()]
                out[arm]["disk_bytes_per_event"] = (
                    round(_dir_bytes(found[0]) / len(payloads), 1) if found else None
                )
                await js.delete_stream(name)
    finally:
        await nc.close()
    for arm in out.values():
        arm["median_rate"] = round(statistics.median(arm["rates"]))
        arm["rates"] = [round(x) for x in arm["rates"]]
    return out


def main() -> None:
    """Run the three measurements and print the JSON and the human line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    load_before = os.getloadavg()[0]
    payloads = [streams.encode(ev) for ev in realistic_events(a.events)]
    enc = encodings(payloads)
    sizes = {name: round(v["bytes_per_event"]) for name, v in enc.items()} | {"tiny": 100}
    server = streams.EmbeddedServer(http_port=None).start()
    try:
        rates = asyncio.run(publish_rates(server.url, sizes, a.events, a.rounds))
        comp = asyncio.run(storage_compression(server.url, server.store_dir, payloads, a.rounds))
    finally:
        server.stop()
    publish: dict[str, dict[str, Any]] = {
        arm: {
            "payload_bytes": sizes[arm],
            "rates": [round(x) for x in r],
            "median_rate": round(statistics.median(r)),
        }
        for arm, r in rates.items()
    }
    report: dict[str, Any] = {
        "events": a.events,
        "rounds": a.rounds,
        "encodings": enc,
        "publish_by_size": publish,
        "rate_ratio_msgpack_vs_json": round(
            publish["msgpack"]["median_rate"] / publish["json"]["median_rate"], 3
        ),
        "rate_ratio_tiny_vs_json": round(publish["tiny"]["median_rate"] / publish["json"]["median_rate"], 3),
        "storage_compression": comp,
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(report, indent=2))
    j, m = enc["json"], enc["msgpack"]
    print(
        f"json {j['bytes_per_event']:.0f} B (enc {j['encode_us']} + dec {j['decode_us']} µs), "
        f"msgpack {m['bytes_per_event']:.0f} B (enc {m['encode_us']} + dec {m['decode_us']} µs); "
        f"raw publish {publish['json']['median_rate']}/s at JSON size, {publish['msgpack']['median_rate']}/s "
        f"at msgpack size ({report['rate_ratio_msgpack_vs_json']}x), {publish['tiny']['median_rate']}/s at "
        f"100 B; s2 storage {comp['s2']['disk_bytes_per_event']} vs {comp['none']['disk_bytes_per_event']} "
        f"B/event on disk, {comp['s2']['median_rate']} vs {comp['none']['median_rate']}/s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
