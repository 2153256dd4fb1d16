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

__all__ = [
    "WIDTH",
    "Report",
    "Row",
    "ScenarioReport",
    "build_rows",
    "render_table",
    "to_json",
    "verdict",
]


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

# (top line of the header, bottom line, width, alignment): two header lines, so that no header
# needs a space inside a line, and two spaces between columns.
_COLUMNS = (
    ("", "client", 39, "<"),
    ("", "ok", 4, ">"),
    ("", "failed", 6, ">"),
    ("upstream", "requests", 8, ">"),
    ("duplicate", "POSTs", 9, ">"),
    ("p50", "ms", 5, ">"),
    ("p99", "ms", 5, ">"),
)
#: The widest line of the table: it fits an 88-column terminal (and the docs' code blocks).
WIDTH = 88
_LEGEND = (
    "ok, failed: calls that ended in a 2xx, or in anything else. upstream requests: what the "
    "upstream received, by its own count; above the calls, the difference is retries. "
    "duplicate POSTs: orders the upstream processed more than once. p50, p99 ms: half of the "
    "calls, and 99 in 100, ended within this time, retries and their waits included (of {n} "
    "calls, the p99 is the {rank} slowest)."
)


def render_table(report: Report) -> str:
    """The report as a table with a verdict per scenario, then a few lines per scenario on
    how each client's calls failed."""
    lines = [
        *_wrap(
            f"httpx-resilience demo: seed {report.seed}, {report.requests} "
            f"request{'' if report.requests == 1 else 's'} per client and scenario, "
            f"{report.seconds:.1f} s. Real servers on 127.0.0.1 inject the faults; every client "
            "meets the same ones.",
            "",
            more="",
        ),
        *_wrap(
            f"Retry waits are scaled down for the demo: {_retry_description()}; Retry-After is "
            "honoured as sent. Counts repeat for a seed; latencies are measured.",
            "",
            more="",
        ),
        "",
        _line([top for top, _, _, _ in _COLUMNS]),
        _line([bottom for _, bottom, _, _ in _COLUMNS]),
        _line(["-" * width for _, _, width, _ in _COLUMNS]),
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
                        str(row.upstream_received),
                        "-" if row.duplicate_posts is None else str(row.duplicate_posts),
                        _ms(row.p50_ms),
                        _ms(row.p99_ms),
                    ]
                )
            )
        lines += _wrap(f"verdict: {verdict(scenario)}", "  ", more="         ")
    lines.append("")
    lines += _wrap(_LEGEND.format(n=report.requests, rank=_rank(report.requests)), "", more="")
    lines.append("")
    for number, scenario in enumerate(report.scenarios, 1):
        lines += _wrap(f"{number} {scenario.name}: {scenario.upstream}.", "")
        for row in scenario.rows:
            lines += _wrap(f"{row.client}: {_notes(scenario, row)}", "  ")
    return "\n".join(lines)


def _rank(calls: int) -> str:
    """Which call, counted from the slowest, is the (nearest-rank) p99 of ``calls`` calls."""
    rank = calls - max(0, math.ceil(0.99 * calls) - 1)
    suffix = "th" if 10 <= rank % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(rank % 10, "th")
    return f"{rank}{suffix}"


def _line(cells: list[str]) -> str:
    return "  ".join(
        f"{cell:{align}{width}}" for cell, (_, _, width, align) in zip(cells, _COLUMNS, strict=True)
    ).rstrip()


def _wrap(text: str, indent: str, more: str = "    ") -> list[str]:
    lines = textwrap.wrap(
        text,
        WIDTH,
        initial_indent=indent,
        subsequent_indent=indent + more,
        break_on_hyphens=False,
    )
    return [line.replace(_NBSP, " ") for line in lines]


_NBSP = "\u00a0"  # joins a number to its unit, so that no line ends between them


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.2f}{_NBSP}s"


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


# --- verdicts --------------------------------------------------------------------------------


def verdict(scenario: ScenarioReport) -> str:
    """One sentence on what the scenario shows: failures, extra upstream load, duplicates, and
    why where httpx-resilience ties with plain httpx on purpose."""
    rows = scenario.rows
    plain = rows[0]
    if plain.failed == 0 and all(row.failed == 0 for row in rows):
        return "no call met a fault in this short run; run more requests to see a difference."
    if scenario.name == "flaky":
        resilient = rows[1]
        return (
            f"ResilientTransport: {_failed(resilient, plain)}, for {_load(resilient, plain)}: "
            "its retries (a GET is safe to send again)."
        )
    if scenario.name == "rate-limit":
        resilient = rows[1]
        early = resilient.early_retries
        text = f"ResilientTransport: {_failed(resilient, plain)}"
        if resilient.upstream_received > resilient.requests:
            came_early = "not one retry came early" if early == 0 else f"{early} came early"
            text += (
                f"; it waited as each 429's Retry-After asked ({came_early}), and that wait "
                f"is its p99 of {_seconds(resilient.p99_ms)}"
            )
        return text + "."
    if scenario.name == "outage":
        resilient, breaker = rows[1], rows[2]
        tie = resilient.failed == plain.failed
        text = (
            "retries cannot revive a server that is down: ResilientTransport "
            + (f"fails the same {resilient.failed} calls as plain httpx" if tie else
               _failed(resilient, plain))
            + f", and its retry budget held the extra load to {_load(resilient, plain)}; "
        )  # fmt: skip
        if breaker.failed_fast:
            less = plain.upstream_received - breaker.upstream_received
            text += (
                f"the circuit breaker failed {breaker.failed_fast} calls fast without sending "
                f"them: {_share(less, plain.upstream_received)} fewer upstream requests than "
                "plain httpx."
            )
        else:
            text += "the circuit breaker never opened in this run."
        return text[0].upper() + text[1:]
    if scenario.name == "post":
        naive, resilient, keyed = rows[1], rows[2], rows[3]
        if resilient.failed == plain.failed:
            text = f"ResilientTransport fails the same {resilient.failed} POSTs as plain httpx, "
        else:
            text = f"ResilientTransport: {_failed(resilient, plain)}, "
        text += (
            f"on purpose: it never resends a POST the server may have processed "
            f"({resilient.lost_answers} were), where the naive loop processed "
            f"{naive.duplicate_posts} orders twice. With an Idempotency-Key: {keyed.failed} "
            f"failed, {keyed.duplicate_posts} duplicates."
        )
        return text
    if scenario.name == "deadline":
        patient, short, resilient = rows[0], rows[1], rows[2]
        return (
            f"ResilientTransport: {resilient.failed} failed, the slowest call over in "
            f"{_seconds(resilient.max_ms)}; httpx's 0.3{_NBSP}s timeout alone fails "
            f"{short.failed}, its 5{_NBSP}s timeout waits out every stall "
            f"(slowest {_seconds(patient.max_ms)})."
        )
    return ""


def _failed(row: Row, plain: Row) -> str:
    if row.failed == plain.failed:
        return f"the same {row.failed} failed as plain httpx"
    return f"{row.failed} failed instead of {plain.failed}"


def _load(row: Row, plain: Row) -> str:
    extra = row.upstream_received - plain.upstream_received
    if extra <= 0:
        return "no extra upstream requests"
    return f"{_share(extra, plain.upstream_received)} more upstream requests"


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "0%"


# --- notes -----------------------------------------------------------------------------------


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
