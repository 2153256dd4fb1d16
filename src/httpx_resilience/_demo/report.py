"""The demo's figures: one row per scenario and client, printed as a table or as JSON.

A row joins what the client saw (successes, failures, latencies, circuit transitions) with what
the upstream counted on its own side (requests received, POSTs processed twice, retries that
came before their ``Retry-After``).
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from .scenarios import DEMO_RETRY, ClientRun, Scenario, Transition
from .upstream import Upstream

__all__ = ["Report", "Row", "ScenarioReport", "build_rows", "render_table", "to_json"]


@dataclass(frozen=True, slots=True)
class Row:
    """One client's figures for one scenario."""

    client: str
    requests: int
    succeeded: int
    failed: int
    upstream_received: int  # counted by the upstream
    client_attempts: int  # the attempts the client says it sent
    failed_fast: int  # calls that failed without sending anything (an open circuit)
    duplicate_posts: int | None  # POSTs the upstream processed twice or more (POST scenario)
    lost_answers: int | None  # POSTs processed although the caller saw a failure
    idempotent_replays: int | None  # retried POSTs the upstream answered from its key record
    early_retries: int  # retries that came before their Retry-After (counted by the upstream)
    p50_ms: float
    p99_ms: float
    max_ms: float
    failures: dict[str, int]
    http_versions: dict[str, int]  # final responses by HTTP version
    circuit: list[dict[str, Any]] | None  # transitions, None without a circuit breaker

    @property
    def amplification(self) -> float:
        return self.upstream_received / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class ScenarioReport:
    name: str
    title: str
    upstream: str
    protocol: str
    load: str
    rows: list[Row]


@dataclass(frozen=True, slots=True)
class Report:
    seed: int
    requests: int
    scenarios: list[ScenarioReport]
    seconds: float


def build_rows(scenario: Scenario, runs: list[ClientRun], app: Upstream) -> ScenarioReport:
    """Join each client's run with the upstream's own counts."""
    rows = []
    for run in runs:
        arrivals = app.arrivals(scenario.name, run.client)
        failed = sum(1 for o in run.outcomes if not o.ok)
        post = scenario.method == "POST"
        processed = Counter(a.rid for a in arrivals if a.processed)
        lost = sum(1 for rid, o in enumerate(run.outcomes) if not o.ok and processed[rid])
        replays = sum(1 for a in arrivals if a.replayed)
        rows.append(
            Row(
                client=run.label,
                requests=len(run.outcomes),
                succeeded=len(run.outcomes) - failed,
                failed=failed,
                upstream_received=len(arrivals),
                client_attempts=sum(o.attempts for o in run.outcomes),
                failed_fast=sum(1 for o in run.outcomes if o.attempts == 0),
                duplicate_posts=app.duplicate_posts(scenario.name, run.client) if post else None,
                lost_answers=lost if post else None,
                idempotent_replays=replays if post else None,
                early_retries=app.too_early(scenario.name, run.client),
                p50_ms=_percentile(run.seconds, 0.50) * 1000,
                p99_ms=_percentile(run.seconds, 0.99) * 1000,
                max_ms=max(run.seconds, default=0.0) * 1000,
                failures=dict(sorted(run.failures.items())),
                http_versions=dict(sorted(run.http_versions.items())),
                circuit=None if run.transitions is None else [_t(t) for t in run.transitions],
            )
        )
    return ScenarioReport(
        scenario.name, scenario.title, scenario.upstream, scenario.protocol, scenario.load, rows
    )


def _t(t: Transition) -> dict[str, Any]:
    return {"request": t.rid, "from": t.old.value, "to": t.new.value}


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- JSON ------------------------------------------------------------------------------------


def to_json(report: Report) -> dict[str, Any]:
    """The report as plain data, for ``--json``."""
    return {
        "seed": report.seed,
        "requests": report.requests,
        "retry_config": _retry_description(),
        "seconds": round(report.seconds, 2),
        "scenarios": [
            {
                "name": s.name,
                "title": s.title,
                "upstream": s.upstream,
                "protocol": s.protocol,
                "load": s.load,
                "clients": [_row_json(row) for row in s.rows],
            }
            for s in report.scenarios
        ],
    }


def _row_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    for name in ("p50_ms", "p99_ms", "max_ms"):
        data[name] = round(data[name], 2)
    data["amplification"] = round(row.amplification, 3)
    return data


def _retry_description() -> str:
    return (
        f"RetryConfig(base_delay={DEMO_RETRY.base_delay}, max_delay={DEMO_RETRY.max_delay}), "
        "otherwise the defaults"
    )


# --- the table -------------------------------------------------------------------------------

_COLUMNS = (
    ("client", 39, "<"),
    ("ok", 4, ">"),
    ("failed", 6, ">"),
    ("upstream saw", 12, ">"),
    ("dup POSTs", 9, ">"),
    ("p50 ms", 6, ">"),
    ("p99 ms", 6, ">"),
    ("circuit", 15, "<"),
)
_WIDTH = 100


def render_table(report: Report) -> str:
    """The report as a table, then a few lines per scenario on what the figures mean."""
    lines = [
        f"httpx-resilience demo: seed {report.seed}, {report.requests} "
        f"request{'' if report.requests == 1 else 's'} per client and scenario, "
        f"{report.seconds:.1f} s.",
        "Real servers on 127.0.0.1 inject the faults; every client meets the same ones.",
        *_wrap(
            f"Retry waits are scaled down for the demo: {_retry_description()}; Retry-After is "
            "honoured as sent. Counts repeat for a seed; latencies are measured.",
            "",
            more="",
        ),
        "",
        _line([name for name, _, _ in _COLUMNS]),
        _line(["-" * width for _, width, _ in _COLUMNS]),
    ]
    for number, scenario in enumerate(report.scenarios, 1):
        lines.append(f"{number} {scenario.title} ({scenario.protocol}, {scenario.load})")
        for row in scenario.rows:
            lines.append(
                _line(
                    [
                        f"  {row.client}",
                        str(row.succeeded),
                        str(row.failed),
                        f"{row.upstream_received} ({row.amplification:.2f}x)",
                        "-" if row.duplicate_posts is None else str(row.duplicate_posts),
                        _ms(row.p50_ms),
                        _ms(row.p99_ms),
                        _circuit_summary(row.circuit),
                    ]
                )
            )
    lines.append("")
    for number, scenario in enumerate(report.scenarios, 1):
        lines += _wrap(f"{number} {scenario.name}: {scenario.upstream}.", "")
        for row in scenario.rows:
            lines += _wrap(f"{row.client}: {_notes(scenario, row)}", "  ")
    return "\n".join(lines)


def _line(cells: list[str]) -> str:
    return " ".join(
        f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, _COLUMNS, strict=True)
    ).rstrip()


def _wrap(text: str, indent: str, more: str = "    ") -> list[str]:
    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent=indent,
        subsequent_indent=indent + more,
        break_on_hyphens=False,
    )


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _circuit_summary(circuit: list[dict[str, Any]] | None) -> str:
    if circuit is None:
        return "-"
    opened = sum(1 for t in circuit if t["to"] == "open")
    closed = sum(1 for t in circuit if t["to"] == "closed")
    return f"{opened} open, {closed} close"


def _notes(scenario: ScenarioReport, row: Row) -> str:
    notes = []
    if row.failures:
        notes.append("failed: " + ", ".join(f"{kind} x{n}" for kind, n in row.failures.items()))
    else:
        notes.append("no failures")
    if row.failed_fast:
        notes.append(f"{row.failed_fast} failed fast without being sent")
    if scenario.name == "rate-limit" and row.upstream_received > row.requests:
        notes.append(f"retries before Retry-After: {row.early_retries}")
    if row.lost_answers:
        notes.append(f"{row.lost_answers} reported failed were processed all the same")
    if row.idempotent_replays:
        notes.append(
            f"{row.idempotent_replays} retries answered from the upstream's Idempotency-Key record"
        )
    if scenario.name == "deadline":
        notes.append(f"slowest call {row.max_ms / 1000:.2f} s")
    if row.circuit:
        notes.append(f"circuit {_timeline(row.circuit)}")
    return "; ".join(notes)


def _timeline(circuit: list[dict[str, Any]]) -> str:
    """``opened at #61, probe at #77 failed, ..., probe at #141 closed it``."""
    parts: list[str] = []
    for t in circuit:
        if t["to"] == "half-open":
            parts.append(f"probe at #{t['request']}")
        elif t["from"] == "half-open":
            parts[-1] += " failed" if t["to"] == "open" else " closed it"
        else:
            parts.append(f"opened at #{t['request']}")
    return ", ".join(parts)
