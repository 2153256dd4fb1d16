"""HTTP/2 client work per request without sockets, TLS or a server process: the connection layer
(`AsyncConnectionPoolTransport(http2=True)`: ``handle_async_request`` and the body read) at
concurrency 50 against a fake peer in the same process, which answers each request's HEADERS
with an nginx-like response (HEADERS of eight fields, a 78-byte DATA) at the end of the event
loop's turn.

Timings on a shared machine move by 10 %; instruction counts repeat to within a few
instructions. Under valgrind, the difference of two runs is the layer's work per request:

    for n in 1000 3000; do PYTHONHASHSEED=0 valgrind --tool=cachegrind --cache-sim=no \\
        --cachegrind-out-file=/dev/null python benchmarks/h2_instructions.py --requests $n; done
    # instructions per request = (I refs of 3000 - I refs of 1000) / 2000

Without valgrind it prints the client CPU per request (``time.process_time``), the median of
``--rounds`` rounds. ``PYTHONPATH=<another checkout>/src`` measures another version of the
layer with the same script. The fake peer's own work (a few hundred instructions per request)
is counted too; it is the same for every version.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import time
from typing import Any

import httpx

import httpx_resilience._connection.pool as pool_module
from httpx_resilience import AsyncConnectionPoolTransport
from httpx_resilience._connection.connect import AsyncioStream

BODY = b'{"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "active": true}\n'
URL = "https://127.0.0.1:8443/data.json"


def _literal(index: int, value: bytes) -> bytes:
    """An HPACK literal without indexing, named from the static table (as nginx sends them)."""
    prefix = bytes([index]) if index < 15 else bytes([15, index - 15])
    return prefix + bytes([len(value)]) + value


# nginx's response heads, as it encodes them (`tests/support/hpack_samples.py` holds one
# captured byte for byte; here without Huffman coding): the first of a connection empties the
# dynamic table (a size update to 0), and ``server`` goes as a literal *with* incremental
# indexing, which the empty table then cannot keep.
_BLOCK = (
    b"\x88"  # :status 200
    + bytes([0x40 | 54, len(b"nginx/1.22.1")])
    + b"nginx/1.22.1"
    + _literal(33, b"Mon, 30 Nov 2026 09:20:00 GMT")
    + _literal(31, b"application/json")
    + _literal(28, str(len(BODY)).encode())
    + _literal(44, b"Mon, 30 Nov 2026 09:19:00 GMT")
    + _literal(34, b'"6789-4e"')
    + _literal(18, b"bytes")
)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


# SETTINGS: MAX_CONCURRENT_STREAMS 128, INITIAL_WINDOW_SIZE 65,536, MAX_FRAME_SIZE 2**24 - 1.
_SETTINGS = _frame(4, 0, 0, struct.pack(">HIHIHI", 3, 128, 4, 65536, 5, 2**24 - 1))
_SETTINGS_ACK = _frame(4, 1, 0, b"")
_PREFACE_LENGTH = 24


class _Peer(asyncio.Transport):
    """The fake server: what the client writes is parsed into frames; each HEADERS frame that
    ends its stream is answered, and SETTINGS acknowledged, in one delivery per turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: AsyncioStream) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._out = bytearray()
        self._pending = False
        self._preface = True
        self._closing = False
        self.answered = False  # the connection's first response head went out

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: the stream does not poll for unread bytes

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos = 0
        if self._preface:
            pos, self._preface = _PREFACE_LENGTH, False
        while pos < len(view):
            length = int.from_bytes(view[pos : pos + 3], "big")
            kind, flags = view[pos + 3], view[pos + 4]
            stream_id = int.from_bytes(view[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            if kind == 1 and flags & 0x1:
                block = _BLOCK if self.answered else b"\x20" + _BLOCK  # size update to 0
                self.answered = True
                self.send(_frame(1, 0x4, stream_id, block) + _frame(0, 0x1, stream_id, BODY))
            elif kind == 4 and not flags & 0x1:
                self.send(_SETTINGS_ACK)
            pos += 9 + length

    def send(self, data: bytes) -> None:
        self._out += data
        if not self._pending:
            self._pending = True
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._pending = False
        data = bytes(self._out)
        self._out.clear()
        if not self._closing:
            self._protocol.data_received(data)


async def _connect(*args: Any, **kwargs: Any) -> AsyncioStream:
    """Stands in for `connect.connect`: a stream on a `_Peer`, ALPN ``h2``."""
    loop = asyncio.get_running_loop()
    stream = AsyncioStream(loop)
    peer = _Peer(loop, stream)
    stream.connection_made(peer)
    stream.alpn = "h2"
    peer.send(_SETTINGS)
    return stream


async def _measure(transport: AsyncConnectionPoolTransport, total: int) -> float:
    request = httpx.Request("GET", URL)

    async def one() -> None:
        response = await transport.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        body = b"".join([chunk async for chunk in response.stream])
        await response.stream.aclose()
        if body != BODY:
            raise RuntimeError("unexpected body")

    async def worker(count: int) -> None:
        for _ in range(count):
            await one()

    started = time.process_time()
    await asyncio.gather(*(worker(total // 50) for _ in range(50)))
    return (time.process_time() - started) / (total // 50 * 50) * 1e6


async def main(requests: int, rounds: int) -> None:
    setattr(pool_module, "connect", _connect)  # noqa: B010 - the pool calls it by that name
    async with AsyncConnectionPoolTransport(http2=True) as transport:
        await _measure(transport, 500)  # the connection, the memos
        results = [await _measure(transport, requests) for _ in range(rounds)]
    print(
        f"the layer alone, HTTP/2 c50, {requests} requests a round: "
        f"{statistics.median(results):.1f} µs of client CPU per request (median of {rounds})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
