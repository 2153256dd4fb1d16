"""A line chart as an SVG file, written with the standard library alone: requests per second
against concurrency, one line per client.

A benchmark script writes it from the numbers it has just measured and prints the same numbers
as a table, so the chart on the performance page and the table beside it always come from one
run. The data is embedded in the file (``<metadata>``, as JSON): ``tests/test_docs.py`` draws
the chart again from it and checks that the file is what this module writes, and that the page
shows the same numbers.

    write_chart(path, title, {"client": [(1, 1480.0), (10, 990.0)]}, note="one run, ...")
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["WIDTH", "read_chart_data", "render_svg", "write_chart"]

Series = Mapping[str, Sequence[tuple[int, float]]]

WIDTH, HEIGHT = 760, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 230, 56, 64  # margins around the plot area
# Okabe-Ito colours: told apart with the common colour-vision deficiencies.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
_MARKERS = ("circle", "square", "diamond", "triangle", "circle", "square", "diamond")


def render_svg(title: str, series: Series, *, note: str = "") -> str:
    """The chart as SVG text. Concurrency levels are spaced evenly, in order; the y axis
    starts at 0."""
    levels = sorted({level for points in series.values() for level, _ in points})
    if not levels:
        raise ValueError("render_svg: no data points")
    top = _nice_ceiling(max(value for points in series.values() for _, value in points))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def x(level: int) -> float:
        if len(levels) == 1:
            return _LEFT + plot_w / 2
        return _LEFT + plot_w * levels.index(level) / (len(levels) - 1)

    def y(value: float) -> float:
        return _TOP + plot_h * (1 - value / top)

    data = {
        "title": title,
        "note": note,
        "series": {k: [[int(a), float(b)] for a, b in v] for k, v in series.items()},
    }
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title chart-desc" '
        'font-family="Helvetica, Arial, sans-serif" font-size="13">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<desc id="chart-desc">{escape(_describe(series))}</desc>',
        f'<metadata id="chart-data">{escape(json.dumps(data))}</metadata>',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{_LEFT}" y="28" font-size="16" font-weight="bold" fill="#222">'
        f"{escape(title)}</text>",
    ]
    for step in range(6):  # horizontal grid lines and y labels
        value = top * step / 5
        out.append(
            f'<line x1="{_LEFT}" y1="{y(value):.1f}" x2="{_LEFT + plot_w}" y2="{y(value):.1f}" '
            f'stroke="{"#888" if step == 0 else "#ddd"}" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_LEFT - 8}" y="{y(value) + 4:.1f}" text-anchor="end" fill="#444">'
            f"{value:,.0f}</text>"
        )
    for level in levels:  # x labels
        out.append(
            f'<text x="{x(level):.1f}" y="{_TOP + plot_h + 20}" text-anchor="middle" '
            f'fill="#444">{level}</text>'
        )
    out.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 22}" text-anchor="middle" '
        'fill="#222">concurrent requests</text>'
    )
    out.append(
        f'<text x="18" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" fill="#222" '
        f'transform="rotate(-90 18 {_TOP + plot_h / 2:.1f})">requests per second</text>'
    )
    for index, (label, points) in enumerate(series.items()):
        colour, marker = _COLOURS[index % len(_COLOURS)], _MARKERS[index % len(_MARKERS)]
        ordered = sorted(points)
        path = " ".join(f"{x(level):.1f},{y(value):.1f}" for level, value in ordered)
        out.append(
            f'<polyline class="series" data-label="{escape(label)}" points="{path}" '
            f'fill="none" stroke="{colour}" stroke-width="2.5"/>'
        )
        for level, value in ordered:
            out.append(
                _marker(marker, x(level), y(value), colour)
                + f"<title>{escape(label)}: {value:,.0f} req/s at {level}</title></g>"
            )
        legend_y = _TOP + 10 + 24 * index
        legend_x = WIDTH - _RIGHT + 24
        out.append(
            f'<line x1="{legend_x}" y1="{legend_y}" x2="{legend_x + 24}" y2="{legend_y}" '
            f'stroke="{colour}" stroke-width="2.5"/>'
        )
        out.append(_marker(marker, legend_x + 12, legend_y, colour) + "</g>")
        out.append(
            f'<text x="{legend_x + 32}" y="{legend_y + 4}" fill="#222">{escape(label)}</text>'
        )
    if note:
        out.append(
            f'<text x="{_LEFT}" y="{HEIGHT - 4}" font-size="11" fill="#666">{escape(note)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_chart(path: str | Path, title: str, series: Series, *, note: str = "") -> None:
    """Write the chart to ``path`` (an ``.svg`` file)."""
    Path(path).write_text(render_svg(title, series, note=note), encoding="utf-8")


def read_chart_data(svg: str) -> dict[str, Any]:
    """The data a chart was drawn from: ``title``, ``note`` and ``series``."""
    from xml.etree import ElementTree

    root = ElementTree.fromstring(svg)
    [metadata] = [e for e in root if e.tag.endswith("metadata")]
    data: dict[str, Any] = json.loads(metadata.text or "")
    data["series"] = {k: [(int(a), float(b)) for a, b in v] for k, v in data["series"].items()}
    return data


def _marker(shape: str, cx: float, cy: float, colour: str) -> str:
    """An opening ``<g>`` with a point marker; the caller closes it."""
    if shape == "square":
        body = f'<rect x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" fill="{colour}"/>'
    elif shape == "diamond":
        body = (
            f'<polygon points="{cx:.1f},{cy - 5.5:.1f} {cx + 5.5:.1f},{cy:.1f} '
            f'{cx:.1f},{cy + 5.5:.1f} {cx - 5.5:.1f},{cy:.1f}" fill="{colour}"/>'
        )
    elif shape == "triangle":
        body = (
            f'<polygon points="{cx:.1f},{cy - 5.5:.1f} {cx + 5:.1f},{cy + 4:.1f} '
            f'{cx - 5:.1f},{cy + 4:.1f}" fill="{colour}"/>'
        )
    else:
        body = f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}"/>'
    return f"<g>{body}"


def _describe(series: Series) -> str:
    """The chart in words, for screen readers."""
    parts = []
    for label, points in series.items():
        values = ", ".join(f"{value:,.0f} at {level}" for level, value in sorted(points))
        parts.append(f"{label}: {values}")
    return "Requests per second by concurrency. " + "; ".join(parts) + "."


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value:
            return step * power
    return 10.0 * power
