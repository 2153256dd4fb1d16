"""The demo (``python -m httpx_resilience demo``): its figures against the upstream's own counts
and against the seeded fault plan, its determinism, and its command line."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from httpx_resilience.__main__ import main
from httpx_resilience._demo import scenarios
from httpx_resilience._demo.cli import Options, run_demo
from httpx_resilience._demo.report import WIDTH, Report, Row, ScenarioReport, render_table
from httpx_resilience._demo.servers import ServerPair, ServerThread
from httpx_resilience._demo.upstream import Fault, FaultPlan, Upstream

# Enough requests for the outage scenario to open its circuit, probe and close it again.
REQUESTS = 40
SEED = 3
FAILING = {Fault.UNAVAILABLE, Fault.DROP, Fault.DOWN, Fault.STALL}
RATE_LIMITED = {Fault.RATE_LIMIT_SECONDS, Fault.RATE_LIMIT_DATE}


async def run(
    names: Sequence[str], requests: int = REQUESTS, seed: int = SEED
) -> tuple[Report, Upstream]:
    app = Upstream(FaultPlan(seed, requests))
    with ServerPair(app) as servers:
        report = await run_demo(Options(requests, seed, tuple(names)), app, servers)
    return report, app


def rows(report: Report, name: str) -> dict[str, Row]:
    [scenario] = [s for s in report.scenarios if s.name == name]
    return {row.client: row for row in scenario.rows}


def first_arrival_fails(plan: FaultPlan, name: str, faults: set[Fault]) -> int:
    """Requests whose first arrival meets one of ``faults``: what plain httpx must report."""
    return sum(1 for rid in range(plan.requests) if plan.fault(name, rid, 1) in faults)


@pytest.mark.anyio
async def test_figures_match_the_upstream_and_the_fault_plan() -> None:
    report, app = await run(scenarios.names())
    plan = app.plan
    assert [s.name for s in report.scenarios] == list(scenarios.names())

    for scenario_report in report.scenarios:
        check_consistent(scenario_report, app)

    flaky = rows(report, "flaky")
    assert flaky["plain httpx"].failed == first_arrival_fails(plan, "flaky", FAILING)
    assert flaky["plain httpx"].failed > 0
    assert flaky["httpx + ResilientTransport"].failed == all_fail(plan, "flaky")

    limited = rows(report, "rate-limit")
    assert limited["plain httpx"].failed == first_arrival_fails(plan, "rate-limit", RATE_LIMITED)
    assert set(limited["plain httpx"].failures) == {"429"}
    resilient = limited["httpx + ResilientTransport"]
    assert resilient.succeeded == REQUESTS
    assert resilient.early_retries == 0  # counted by the upstream: Retry-After was honoured
    assert resilient.upstream_received == REQUESTS + limited["plain httpx"].failed

    check_outage(rows(report, "outage"), plan)
    check_posts(rows(report, "post"), plan)

    deadline = rows(report, "deadline")
    stalled = first_arrival_fails(plan, "deadline", {Fault.STALL})
    assert stalled > 0
    assert deadline["plain httpx, timeout 5 s"].succeeded == REQUESTS
    assert deadline["plain httpx, timeout 0.3 s"].failures == {"timeout": stalled}
    resilient = deadline["ResilientTransport, total_timeout 0.8"]
    assert resilient.upstream_received > REQUESTS

    check_verdicts(render_table(report), report)


def check_verdicts(table: str, report: Report) -> None:
    """One verdict per scenario, with the figures of the table, saying why where
    ResilientTransport ties with plain httpx on purpose."""
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    verdicts = verdict_texts(lines)
    assert len(verdicts) == len(report.scenarios)
    text = dict(zip([s.name for s in report.scenarios], verdicts, strict=True))

    flaky = rows(report, "flaky")
    assert text["flaky"].startswith(
        f"ResilientTransport: {flaky['httpx + ResilientTransport'].failed} failed instead of "
        f"{flaky['plain httpx'].failed}, for "
    )
    outage = rows(report, "outage")
    tied = outage["httpx + ResilientTransport"].failed == outage["plain httpx"].failed
    assert tied
    assert text["outage"].startswith(
        "Retries cannot revive a server that is down: ResilientTransport fails the same "
        f"{outage['plain httpx'].failed} calls as plain httpx, and its retry budget held the "
    )
    breaker = outage["AsyncAPIClient + CircuitBreaker"]
    assert f"the circuit breaker failed {breaker.failed_fast} calls fast" in text["outage"]
    posts = rows(report, "post")
    assert posts["httpx + ResilientTransport"].failed == posts["plain httpx"].failed
    assert text["post"] == (
        f"ResilientTransport fails the same {posts['plain httpx'].failed} POSTs as plain httpx, "
        "on purpose: it never resends a POST the server may have processed "
        f"({posts['httpx + ResilientTransport'].lost_answers} were), where the naive loop "
        f"processed {posts['httpx + naive retry loop'].duplicate_posts} orders twice. With an "
        f"Idempotency-Key: {posts['ResilientTransport + Idempotency-Key'].failed} failed, 0 "
        "duplicates."
    )
    assert "(not one retry came early)" in text["rate-limit"]
    assert text["deadline"].startswith("ResilientTransport: 0 failed, the slowest call over in")


def verdict_texts(lines: list[str]) -> list[str]:
    """Each ``verdict:`` of the table, its wrapped lines joined."""
    verdicts: list[str] = []
    for line in lines:
        if line.startswith("  verdict: "):
            verdicts.append(line.removeprefix("  verdict: "))
        elif verdicts and line.startswith(" " * 11) and not line.startswith(" " * 12):
            verdicts[-1] += " " + line.strip()
    return verdicts


def check_consistent(scenario: ScenarioReport, app: Upstream) -> None:
    """What every row must satisfy, checked against the upstream's own records."""
    for index, row in enumerate(scenario.rows):
        arrivals = app.arrivals(scenario.name, index)
        assert row.succeeded + row.failed == row.requests == REQUESTS
        assert row.upstream_received == len(arrivals) == app.received(scenario.name, index)
        # Every attempt a client sent reached the upstream, and nothing else did.
        assert row.client_attempts == row.upstream_received
        assert sum(row.failures.values()) == row.failed
        assert {a.rid for a in arrivals} <= set(range(REQUESTS))
        if row.client.startswith("plain httpx"):
            assert row.upstream_received == REQUESTS
            assert [a.number for a in arrivals] == [1] * REQUESTS
        assert sum(row.http_versions.values()) <= row.requests
        assert set(row.http_versions) <= {scenario.protocol}
        assert row.p50_ms <= row.p99_ms <= row.max_ms


def check_outage(outage: dict[str, Row], plan: FaultPlan) -> None:
    down = len(plan.outage)
    assert outage["plain httpx"].failed == down
    retrying = outage["httpx + ResilientTransport"]
    assert retrying.failed == down
    assert retrying.upstream_received > REQUESTS  # retries on a dead upstream add load...
    assert retrying.upstream_received < REQUESTS + 3 * down  # ...capped by the retry budget
    breaker = outage["AsyncAPIClient + CircuitBreaker"]
    assert breaker.failed_fast > 0
    # Failed fast, and the request whose failure opened the circuit (its retry was refused).
    assert breaker.failures["circuit open"] == breaker.failed_fast + 1
    assert breaker.upstream_received == REQUESTS + 3 - breaker.failed_fast  # 3: first retries
    assert breaker.circuit is not None
    steps = [(t["from"], t["to"]) for t in breaker.circuit]
    assert steps[0] == ("closed", "open")
    assert steps[-2:] == [("open", "half-open"), ("half-open", "closed")]
    assert all(step in {("open", "half-open"), ("half-open", "open")} for step in steps[1:-2])
    opened_at = breaker.circuit[0]["request"]
    assert opened_at == plan.outage.start + 1  # the 5th failure: 4 attempts, then 1
    assert breaker.circuit[-1]["request"] >= plan.outage.stop  # closed once the upstream is back
    assert "circuit" not in outage["plain httpx"].failures


def check_posts(posts: dict[str, Row], plan: FaultPlan) -> None:
    plain = posts["plain httpx"]
    failing_first = first_arrival_fails(plan, "post", {Fault.UNAVAILABLE, Fault.DROP})
    assert plain.failed == failing_first
    assert plain.duplicate_posts == 0
    dropped_first = first_arrival_fails(plan, "post", {Fault.DROP})
    assert plain.lost_answers == dropped_first

    transport = posts["httpx + ResilientTransport"]
    assert transport.duplicate_posts == 0
    assert transport.upstream_received == REQUESTS  # a POST is never retried without a key
    assert transport.failed == plain.failed

    keyed = posts["ResilientTransport + Idempotency-Key"]
    assert keyed.duplicate_posts == 0
    assert keyed.failed == all_fail(plan, "post")
    processed = processed_when_every_failure_is_retried(plan)
    assert keyed.idempotent_replays == sum(n - 1 for n in processed if n > 1)

    naive = posts["httpx + naive retry loop"]
    assert naive.duplicate_posts == sum(1 for n in processed if n > 1) > 0


def all_fail(plan: FaultPlan, name: str) -> int:
    """Requests whose four attempts (3 retries) all meet a fault."""
    return sum(
        1
        for rid in range(plan.requests)
        if all(plan.fault(name, rid, n) is not Fault.OK for n in range(1, 5))
    )


def processed_when_every_failure_is_retried(plan: FaultPlan) -> list[int]:
    """How often the upstream processes each POST when every failure is retried (3 times):
    once per arrival that is answered or dropped after processing."""
    counts = []
    for rid in range(plan.requests):
        processed = 0
        for number in range(1, scenarios.NAIVE_RETRIES + 2):
            fault = plan.fault("post", rid, number)
            processed += fault in (Fault.OK, Fault.DROP)
            if fault is Fault.OK:
                break
        counts.append(processed)
    return counts


def test_same_seed_same_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Faults and counts repeat for a seed, retries and the circuit breaker included; only the
    latencies differ from run to run."""
    argv = ["demo", "--json", "--requests", "30", "--seed", "11"]
    argv += ["--scenario", "flaky", "--scenario", "outage", "--scenario", "post"]
    runs = []
    for _ in range(2):
        assert main(argv) == 0
        runs.append(counts(json.loads(capsys.readouterr().out)))
    assert runs[0] == runs[1]


def counts(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {name: value for name, value in client.items() if not name.endswith("_ms")}
        for scenario in data["scenarios"]
        for client in scenario["clients"]
    ]


def test_fault_plan_is_keyed_by_request_and_arrival() -> None:
    plan = FaultPlan(seed=1, requests=1000)
    faults = Counter(plan.fault("flaky", rid, 1) for rid in range(1000))
    assert faults == Counter(FaultPlan(1, 1000).fault("flaky", rid, 1) for rid in range(1000))
    assert 100 < faults[Fault.UNAVAILABLE] + faults[Fault.DROP] < 300  # about 20 %
    assert plan.outage == range(300, 700)
    assert all(plan.fault("rate-limit", rid, 2) is Fault.OK for rid in range(1000))
    other = [FaultPlan(2, 1000).fault("flaky", rid, 1) for rid in range(1000)]
    assert other != [plan.fault("flaky", rid, 1) for rid in range(1000)]
    with pytest.raises(ValueError, match="no such scenario"):
        plan.fault("nope", 0, 1)


# --- the command line ------------------------------------------------------------------------


def test_json_output_for_chosen_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--json", "--scenario", "post", "--scenario", "flaky", "--requests", "12"]
    assert main([*argv, "--seed", "5"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["requests"] == 12
    assert data["seed"] == 5
    assert [s["name"] for s in data["scenarios"]] == ["flaky", "post"]  # the demo's order
    for scenario in data["scenarios"]:
        for client in scenario["clients"]:
            assert client["succeeded"] + client["failed"] == 12
            assert client["upstream_received"] == client["client_attempts"]
    [post] = [s for s in data["scenarios"] if s["name"] == "post"]
    by_client = {c["client"]: c for c in post["clients"]}
    assert by_client["httpx + ResilientTransport"]["duplicate_posts"] == 0
    assert "[1/2] flaky upstream (HTTP/2, sequential)" in err  # progress goes to stderr
    # Each client's progress line says how its calls ended, failures included.
    progress = [line.strip() for line in err.splitlines() if " calls in " in line]
    expected = [
        (client["client"], client["succeeded"], client["failed"])
        for scenario in data["scenarios"]
        for client in scenario["clients"]
    ]
    assert len(progress) == len(expected)
    for line, (label, ok, failed) in zip(progress, expected, strict=True):
        assert re.fullmatch(
            rf"{re.escape(label)} +12 calls in \d+\.\d s: {ok} ok, {failed} failed", line
        ), line
    assert any(failed for _, _, failed in expected)  # "12 calls" never reads as "12 ok"


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--scenario", "outage", "--requests", "40"]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("httpx-resilience demo: seed 1, 40 requests per client")
    assert max(len(line) for line in lines) <= WIDTH == 88  # an 80-odd-column terminal
    at = next(number for number, line in enumerate(lines) if line.startswith("client "))
    # Two header lines; within each, cells are two or more spaces apart, so none runs into
    # its neighbour; read down, each column has one name.
    top, bottom, rule = lines[at - 1], lines[at], lines[at + 1]
    assert re.split(r" {2,}", top.strip()) == ["upstream", "duplicate", "p50", "p99"]
    assert re.split(r" {2,}", bottom) == ["client", "ok", "failed", "requests", "POSTs", "ms", "ms"]
    for word in ("upstream", "duplicate", "p50", "p99"):  # each stands over its column
        assert bottom[top.index(word) + len(word) - 1] != " "
    assert set(rule) == {"-", " "}
    assert "1 outage and recovery (HTTP/1.1, sequential)" in lines
    [breaker] = [line for line in lines if line.startswith("  AsyncAPIClient + CircuitBreaker ")]
    assert re.split(r" {2,}", breaker.strip())[1:4] == ["23", "17", "28"]
    [verdict] = verdict_texts(lines)
    assert verdict.startswith("Retries cannot revive a server that is down: ")
    assert "the circuit breaker failed 15 calls fast without sending them: 30% fewer" in verdict
    legend = " ".join(lines[lines.index("") + 1 :])
    assert "p50, p99 ms: half of the calls, and 99 in 100, ended within this time" in legend
    assert "(of 40 calls, the p99 is the 1st slowest)" in legend
    assert any("circuit opened at #13" in line for line in lines)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("--requests N", "--seed S", "--scenario NAME", "--json", "--port PORT"):
        assert text in out
    for name in scenarios.names():
        assert f"\n  {name} " in out


@pytest.mark.parametrize("argv", [["demo", "--requests", "0"], ["demo", "--scenario", "nope"], []])
def test_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["hypercorn", "trustme"])
def test_missing_extra(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" fail
    assert main(["demo"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"httpx-resilience demo: {module} is not installed; "
        "install the demo extra: pip install 'httpx-resilience[demo]'\n"
    )


def test_without_the_extra_nothing_imports_hypercorn_or_trustme() -> None:
    """In a process where Hypercorn and trustme cannot be imported at all, the library, the
    command and its --help work, and the demo says what to install."""
    code = (
        "import sys\n"
        "sys.modules['hypercorn'] = sys.modules['trustme'] = None\n"
        "import httpx_resilience\n"
        "from httpx_resilience.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = [sys.executable, "-c", code]
    helped = subprocess.run([*run, "demo", "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0, helped.stderr
    assert "--scenario NAME" in helped.stdout
    refused = subprocess.run([*run, "demo"], capture_output=True, text=True, check=False)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        "httpx-resilience demo: hypercorn is not installed; "
        "install the demo extra: pip install 'httpx-resilience[demo]'\n"
    )


def test_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"httpx-resilience demo: cannot start: 127.0.0.1:{port} is already in use "
        "(pick another --port, or none)"
    ]


def test_server_that_cannot_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(self: ServerThread) -> ServerThread:
        raise RuntimeError(f"server on {self.url} failed to start")

    monkeypatch.setattr(ServerThread, "start", fail)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith("httpx-resilience demo: cannot start: server on http://127.0.0.1:")


def test_python_dash_m_and_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "httpx_resilience", "demo", "--scenario", "flaky", "--requests",
         "5", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["scenarios"][0]["name"] == "flaky"
    script = Path(sys.executable).with_name("httpx-resilience")
    if not script.exists():
        pytest.skip("the package is not installed with its console script")
    result = subprocess.run(
        [str(script), "demo", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: httpx-resilience demo")
