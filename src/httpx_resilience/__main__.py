"""The ``httpx-resilience`` command (also ``python -m httpx_resilience``).

    python -m httpx_resilience demo [--requests N] [--seed S] [--scenario NAME] [--json]

``demo`` needs the ``demo`` extra: ``pip install 'httpx-resilience[demo]'``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._demo import cli

__all__ = ["main"]

_DEMO = """\
Runs real servers on 127.0.0.1 (Hypercorn: HTTP/1.1, and HTTP/2 over TLS with a throwaway CA)
that inject faults, and sends the same load through plain httpx and through httpx-resilience.
Prints, per scenario and client: requests succeeded and failed, requests the upstream received,
POSTs processed twice, p50/p99 latency and circuit transitions.

scenarios:
  flaky       a share of requests answer 503 or drop the connection
  rate-limit  429 with Retry-After, as delta-seconds and as an HTTP-date
  outage      the upstream goes down and comes back: the circuit opens, probes, closes
  post        POSTs through a flaky upstream: how many were processed twice
  deadline    a slow upstream against an overall deadline
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = argparse.ArgumentParser(
        prog="httpx-resilience",
        description="httpx-resilience: a resilient transport for httpx.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="plain httpx vs. httpx-resilience against fault-injecting local servers",
        description=_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Needs the demo extra: {cli.INSTALL_EXTRA}\n"
        "Exit status: 0 when every scenario ran, 1 when the demo cannot start or a scenario "
        "fails.",
    )
    cli.add_arguments(demo)
    args = parser.parse_args(argv)
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
