"""The ``demo`` command: start the servers, run the scenarios, print the table (or JSON).

Exit status: 0 when every scenario ran; 1, with one line on stderr, when the demo cannot start
(the ``demo`` extra is missing, a port is taken, a server fails to start) or a scenario fails.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

import anyio

from . import scenarios as _scenarios
from .report import Report, build_rows, render_table, to_json
from .scenarios import SCENARIOS, Target, run_scenario
from .upstream import FaultPlan, Upstream

if TYPE_CHECKING:
    from .servers import ServerPair

__all__ = ["EXTRA_HINT", "INSTALL_EXTRA", "Options", "add_arguments", "main", "run_demo"]

PROG = "httpx-resilience demo"
INSTALL_EXTRA = "pip install 'httpx-resilience[demo]'"
EXTRA_HINT = f"install the demo extra: {INSTALL_EXTRA}"
DEFAULT_REQUESTS = 200
DEFAULT_SEED = 1
MAX_REQUESTS = 5_000


@dataclass(frozen=True, slots=True)
class Options:
    """What to run: requests per client and scenario, the seed, the scenarios by name."""

    requests: int = DEFAULT_REQUESTS
    seed: int = DEFAULT_SEED
    scenarios: tuple[str, ...] = field(default_factory=lambda: tuple(_scenarios.names()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` command's options."""
    parser.add_argument(
        "--requests",
        type=_count,
        default=DEFAULT_REQUESTS,
        metavar="N",
        help=f"requests per client and scenario (default {DEFAULT_REQUESTS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="S",
        help="seed of the fault pattern; the same seed gives the same faults and counts "
        f"(default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=_scenarios.names(),
        metavar="NAME",
        help="run only this scenario (repeat for several): " + ", ".join(_scenarios.names()),
    )
    parser.add_argument(
        "--json", action="store_true", help="print the figures as JSON instead of a table"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=0,
        metavar="PORT",
        help="serve HTTP/1.1 on 127.0.0.1:PORT and HTTP/2 on PORT+1 (default: ports the OS picks)",
    )


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_REQUESTS:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_REQUESTS}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65534:
        raise argparse.ArgumentTypeError("must be from 0 to 65534")
    return value


def main(
    args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the demo as the command line asked; return the exit status."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    missing = _missing_extra()
    if missing is not None:
        print(f"{PROG}: {missing} is not installed; {EXTRA_HINT}", file=err)
        return 1
    from .servers import ServerPair

    options = Options(args.requests, args.seed, tuple(args.scenario or _scenarios.names()))
    app = Upstream(FaultPlan(options.seed, options.requests))
    try:
        servers = ServerPair(app, port=args.port).start()
    except OSError as exc:
        print(f"{PROG}: cannot start: {_bind_error(exc)}", file=err)
        return 1
    except RuntimeError as exc:
        print(f"{PROG}: cannot start: {exc}", file=err)
        return 1
    try:
        report = anyio.run(run_demo, options, app, servers, Progress(err))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=err)
        return 130
    except Exception as exc:
        print(f"{PROG}: a scenario failed: {type(exc).__name__}: {exc}", file=err)
        return 1
    finally:
        servers.stop()
    if args.json:
        print(json.dumps(to_json(report), indent=2), file=out)
    else:
        print(render_table(report), file=out)
    return 0


def _missing_extra() -> str | None:
    """The first module of the ``demo`` extra that cannot be imported, if any."""
    for name in ("hypercorn", "trustme"):
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def _bind_error(exc: OSError) -> str:
    where = exc.filename or "127.0.0.1"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use (pick another --port, or none)"
    return f"cannot listen on {where}: {exc.strerror or exc}"


async def run_demo(
    options: Options, app: Upstream, servers: ServerPair, progress: Progress | None = None
) -> Report:
    """Run the chosen scenarios against ``servers`` (which serve ``app``) and gather the
    figures. Runs under asyncio or trio."""
    started = time.perf_counter()
    chosen = [s for s in SCENARIOS if s.name in options.scenarios]
    reports = []
    for number, scenario in enumerate(chosen, 1):
        server = servers.h2 if scenario.protocol == "HTTP/2" else servers.h1
        target = Target(server.url, scenario.protocol, servers.ssl_context)
        if progress is not None:
            progress.scenario(number, len(chosen), scenario)
        runs = await run_scenario(
            scenario,
            target,
            requests=options.requests,
            seed=options.seed,
            progress=progress or _quiet,
        )
        reports.append(build_rows(scenario, runs, app))
    return Report(options.seed, options.requests, reports, time.perf_counter() - started)


def _quiet(label: str, done: int, total: int, failed: int) -> None:
    pass


class Progress:
    """Progress on stderr: a line per scenario and per client; a live count on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = stream.isatty()
        self._started = 0.0

    def scenario(self, number: int, total: int, scenario: _scenarios.Scenario) -> None:
        self._write(f"[{number}/{total}] {scenario.title} ({scenario.protocol}, {scenario.load})\n")

    def __call__(self, label: str, done: int, total: int, failed: int) -> None:
        # Says how many calls failed, not just how many ended: "200/200" alone reads as "all
        # succeeded" when 40 failed.
        if done == 0:
            self._started = time.perf_counter()
        if done == total:
            elapsed = time.perf_counter() - self._started
            self._write(
                f"\r      {label:<38} {total} calls in {elapsed:.1f} s: "
                f"{total - failed} ok, {failed} failed\n"
            )
        elif self._live and (done % 10 == 0):
            self._write(f"\r      {label:<38} {done} of {total} calls, {failed} failed so far")

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
