"""A real redis-server of the tests' own on 127.0.0.1, and a TCP proxy that makes it slow.

* :class:`RedisServer` -- starts ``redis-server`` (from the system: ``apt-get install
  redis-server``; ``.ci/run`` installs it) on a free loopback port with no persistence, in a
  temporary directory. :meth:`RedisServer.kill` ends it with SIGKILL (a crash: everything in
  memory lost) and :meth:`RedisServer.start` brings it back on the same port;
  :meth:`RedisServer.pause` stops it answering (SIGSTOP) until :meth:`RedisServer.resume`.
* :class:`DelayProxy` -- a TCP forwarder on 127.0.0.1 in front of it that holds every chunk
  for ``delay`` seconds while :attr:`DelayProxy.delay` is above zero: a Redis that answers
  slowly.

Without redis-server the tests that need it skip, unless ``HTTPX_RESILIENCE_REQUIRE_REDIS=1``
(set by ``.ci/run``) turns the skip into a failure. Nothing listens anywhere but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LOOPBACK", "DelayProxy", "RedisServer", "redis_server_or_skip"]

LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 10.0
_PORT_TRIES = 5


def find_redis_server() -> str | None:
    """The redis-server executable, or None."""
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server")
         if os.access(p, os.X_OK)),
        None,
    )  # fmt: skip


def redis_server_or_skip() -> str:
    """The redis-server executable, or skip the test (fail under
    ``HTTPX_RESILIENCE_REQUIRE_REDIS=1``)."""
    import pytest

    found = find_redis_server()
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("HTTPX_RESILIENCE_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


class RedisServer:
    """A redis-server process on 127.0.0.1 (``redis://127.0.0.1:PORT/0``), no persistence.

    Usable as a context manager; `stop` is idempotent.
    """

    def __init__(self, executable: str | None = None) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self._executable = found
        self._dir = Path(tempfile.mkdtemp(prefix="test-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it: on a free port the first time, on the same port after `kill`."""
        for _ in range(_PORT_TRIES):  # another process may take the port between probe and bind
            port = self.port or _free_port()
            self._process = subprocess.Popen(
                [
                    self._executable, "--bind", LOOPBACK, "--port", str(port),
                    "--save", "", "--appendonly", "no", "--dir", str(self._dir),
                    "--protected-mode", "yes", "--logfile", str(self._dir / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            deadline = time.monotonic() + _START_TIMEOUT
            while self._process.poll() is None and time.monotonic() < deadline:
                if _ping(port):
                    self.port = port
                    return self
                time.sleep(0.02)
            self._terminate()
        raise RuntimeError(f"redis-server did not start; log:\n{self.log()[-2000:]}")

    def log(self) -> str:
        path = self._dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the server dies at once, losing everything it held."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and its state but answers nothing (a
        Redis stalled, every call times out) until `resume`."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: a paused server answers again, with its state intact."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class DelayProxy:
    """A TCP forwarder on 127.0.0.1 in front of ``127.0.0.1:upstream_port`` that holds each
    chunk, both ways, for :attr:`delay` seconds (0: forwards at once). Runs its own event loop
    on a thread; `close` stops it."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self.delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="redis-delay-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("delay proxy did not start")

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, LOOPBACK, 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        writers = [writer]
        pumps: list[asyncio.Future[None]] = []
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self._upstream)
            writers.append(up_writer)
            pumps = [
                asyncio.ensure_future(self._pump(reader, up_writer)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            if pumps:
                await asyncio.wait(pumps)
            for stream in writers:
                stream.close()
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await stream.wait_closed()
            self._handlers.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()

    def close(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            if handlers:
                await asyncio.wait(handlers, timeout=_START_TIMEOUT)

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(_START_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_START_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
