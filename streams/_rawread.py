"""Reading the log over the raw NATS protocol: the same :class:`LogReader`, without nats-py per message.

nats-py spends a good part of the reader's CPU on each delivered message: a coroutine per
message, the stored ``Nats-Msg-Id`` header parsed into a dict, a ``Msg`` object, a queue put
(measured in ``BENCHMARKS.md``). :class:`RawLogReader` keeps everything of :class:`LogReader`
(the consumer, the sequence checks, gaps proven with the stream, resets) and changes only the
transport of the pull requests and of the deliveries: a second, plain TCP connection subscribed
to the reader's inbox, whose frames are split in bulk from 256 KiB reads (a reset subscribes a
fresh inbox on it). The pull requests go out on that connection too: a request to a consumer
that is gone gets its "no responders" status only on the connection that sent it. A data
message's headers are not parsed (the reader needs none of them); a status message
(``NATS/1.0 404 No Messages``...) gets ``Status`` and ``Description`` as nats-py gives them.

If that connection closes or errors, the reader sees a ``503`` status (the consumer is lost),
so the caller re-reads after the last sequence it was given, on a fresh connection: nothing is
skipped or handed out twice. :func:`open_log_reader` uses it only where it can: a plain
``nats://`` server that asks for no authentication and no TLS (others get the nats-py reader),
and never with ``HIVE_RAW_READER=0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from typing import Any

import orjson
from nats.aio.client import Client

from ._consumer import ConsumerLost, LogReader

RAW_READER_ENV = "HIVE_RAW_READER"
"""``0`` turns the raw-protocol reader off (every reader is nats-py's)."""
_READ_SIZE = 1 << 18


class _Frame:
    """A delivery as :meth:`LogReader._take` reads it (the attributes of nats-py's ``Msg`` it uses)."""

    __slots__ = ("data", "headers", "reply", "subject")

    def __init__(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        self.subject = subject
        self.reply = reply
        self.data = data
        self.headers = headers


def _lost(why: str) -> _Frame:
    """The frame queued when the connection ends: a 503 status, which the reader treats as a lost
    consumer (the caller resets and re-reads from its checkpoint)."""
    return _Frame("", "", b"", {"Status": "503", "Description": f"raw reader connection lost: {why}"})


def _status(hdr: bytes) -> dict[str, str] | None:
    """``Status``/``Description`` of an inline status header (``NATS/1.0 404 No Messages``), else None."""
    if hdr[8:9] != b" ":
        return None
    line = hdr[9 : hdr.find(b"\r\n")].decode(errors="replace")
    code, _, desc = line.partition(" ")
    out = {"Status": code}
    if desc:
        out["Description"] = desc
    return out


class _RawSubscription:
    """One inbox subscription on the reader's raw connection: the queue its frames go to."""

    def __init__(self, conn: _RawConnection, subject: str, sid: int) -> None:
        self.subject = subject
        self.sid = sid
        self._conn = conn
        self._pending_queue: asyncio.Queue[Any] = asyncio.Queue()
        self._pending_size = 0

    async def unsubscribe(self) -> None:
        """Stop this subscription (its deliveries still in flight are dropped by the pump)."""
        self._conn.subs.pop(self.sid, None)
        if not self._conn.closed:
            with contextlib.suppress(Exception):
                self._conn.writer.write(b"UNSUB %d\r\n" % self.sid)


class _RawConnection:
    """A plain NATS protocol connection that only subscribes: frames are split in bulk and
    routed by subscription id; a PING is answered; the end of the connection (EOF, reset,
    ``-ERR``) queues a 503 for every subscription."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.subs: dict[int, _RawSubscription] = {}
        self.closed = False
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._next_sid = 0
        self._task = asyncio.ensure_future(self._pump())

    @classmethod
    async def open(cls, host: str, port: int) -> _RawConnection:
        """Connect, say CONNECT (headers on) and wait for the server's PONG."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 22), 10)
        try:
            await asyncio.wait_for(reader.readline(), 10)  # INFO
            connect = {
                "verbose": False,
                "pedantic": False,
                "tls_required": False,
                "name": "hive-log-reader",
                "lang": "python-raw",
                "version": "1",
                "protocol": 1,
                "headers": True,
                "no_responders": True,
            }
            writer.write(b"CONNECT " + orjson.dumps(connect) + b"\r\nPING\r\n")
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), 10)
                if not line or line.startswith(b"-ERR"):
                    raise ConnectionError(f"raw reader refused: {line.decode(errors='replace').strip()}")
                if line.startswith(b"PONG"):
                    break
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer)

    async def subscribe(self, subject: str) -> _RawSubscription:
        """Subscribe to ``subject`` and wait until the server has the subscription."""
        self._next_sid += 1
        sub = _RawSubscription(self, subject, self._next_sid)
        self.subs[sub.sid] = sub
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)
        self.writer.write(b"SUB %s %d\r\nPING\r\n" % (subject.encode(), sub.sid))
        await asyncio.wait_for(pong, 10)
        return sub

    async def close(self) -> None:
        """Close the connection and stop the pump."""
        self.closed = True
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def _end(self, why: str) -> None:
        self.closed = True
        for sub in self.subs.values():
            sub._pending_queue.put_nowait(_lost(why))
        while self._pongs:
            pong = self._pongs.popleft()
            if not pong.done():
                pong.set_exception(ConnectionError(why))

    async def _pump(self) -> None:
        subs = self.subs
        buf = b""
        try:
            while True:
                chunk = await self.reader.read(_READ_SIZE)
                if not chunk:
                    self._end("closed by the server")
                    return
                buf = buf + chunk if buf else chunk
                pos = 0
                n = len(buf)
                while True:
                    nl = buf.find(b"\r\n", pos)
                    if nl < 0:
                        break
                    op = buf[pos : pos + 4]
                    if op == b"HMSG":
                        parts = buf[pos:nl].split(b" ")
                        start = nl + 2
                        end = start + int(parts[-1])
                        if end + 2 > n:
                            break  # the rest of this frame is still on the wire
                        sub = subs.get(int(parts[2]))
                        if sub is not None:
                            hlen = int(parts[-2])
                            reply = parts[3].decode() if len(parts) == 6 else ""
                            headers = _status(buf[start : start + hlen])
                            frame = _Frame(parts[1].decode(), reply, buf[start + hlen : end], headers)
                            sub._pending_queue.put_nowait(frame)
                        pos = end + 2
                    elif op == b"MSG ":
                        parts = buf[pos:nl].split(b" ")
                        start = nl + 2
                        end = start + int(parts[-1])
                        if end + 2 > n:
                            break
                        sub = subs.get(int(parts[2]))
                        if sub is not None:
                            reply = parts[3].decode() if len(parts) == 5 else ""
                            sub._pending_queue.put_nowait(
                                _Frame(parts[1].decode(), reply, buf[start:end], None)
                            )
                        pos = end + 2
                    else:
                        line = buf[pos:nl]
                        pos = nl + 2
                        if line.startswith(b"PING"):
                            self.writer.write(b"PONG\r\n")
                        elif line.startswith(b"PONG"):
                            if self._pongs:
                                pong = self._pongs.popleft()
                                if not pong.done():
                                    pong.set_result(None)
                        elif line.startswith(b"-ERR"):
                            self._end(line.decode(errors="replace"))
                            return
                        # +OK, INFO: nothing to do
                buf = buf[pos:]
        except asyncio.CancelledError:
            raise
        except Exception as e:  # reset by peer, …: the reader re-reads on a new connection
            self._end(f"{type(e).__name__}: {e}")


def raw_reader_possible(nc: Client) -> bool:
    """Whether the raw reader can serve ``nc``'s server: plain ``nats://``, no credentials in the
    URL, no authentication or TLS required, and ``HIVE_RAW_READER`` is not ``0``."""
    if os.environ.get(RAW_READER_ENV, "1") == "0":
        return False
    url = nc.connected_url
    info: dict[str, Any] = getattr(nc, "_server_info", None) or {}
    return bool(
        url is not None
        and url.scheme == "nats"
        and not url.username
        and not url.password
        and url.hostname
        and not info.get("auth_required")
        and not info.get("tls_required")
        and not info.get("tls_available_required")
    )


class RawLogReader(LogReader):
    """:class:`LogReader` whose deliveries arrive on a raw-protocol connection of its own (see the
    module docstring); the pull requests, checks and resets are :class:`LogReader`'s. A reset
    subscribes a fresh inbox on the same connection (a new one only if it was lost)."""

    _conn: _RawConnection | None = None

    async def _subscribe(self) -> None:
        url = self.nc.connected_url
        if url is None or not url.hostname:  # between servers: the next fetch retries
            raise ConnectionError("not connected to a NATS server")
        if self._conn is None or self._conn.closed:
            if self._conn is not None:
                await self._conn.close()
            self._conn = await _RawConnection.open(url.hostname, url.port or 4222)
        inbox = self.nc.new_inbox()
        self._sub = await self._conn.subscribe(inbox)  # type: ignore[assignment]
        self._inbox = inbox

    async def _request(self, body: dict[str, object]) -> None:
        """Send the pull request on the raw connection: the server answers "no responders" (the
        consumer is gone) only to a subscription of the connection that asked."""
        conn = self._conn
        if conn is None or conn.closed:
            raise ConsumerLost("raw reader connection lost")
        data = orjson.dumps(body)
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer}"
        try:
            conn.writer.write(
                b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), self._inbox.encode(), len(data), data)
            )
            await conn.writer.drain()
        except OSError as e:  # the connection is gone: as a lost consumer, reset and re-read
            raise ConsumerLost(f"raw reader connection lost: {e}") from None

    async def close(self) -> None:
        """Delete the consumer and close the raw connection."""
        await super().close()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def open_log_reader(
    nc: Client,
    *,
    after_seq: int = 0,
    filter_subject: str = ">",
    inactive_threshold: float = 60.0,
) -> LogReader:
    """A :class:`RawLogReader` where :func:`raw_reader_possible`, else a :class:`LogReader`
    (not started: call ``start()``)."""
    cls = RawLogReader if raw_reader_possible(nc) else LogReader
    return cls(nc, after_seq=after_seq, filter_subject=filter_subject, inactive_threshold=inactive_threshold)
