"""Charts drawn on the server as SVG: geometry and markup here (`chart_html`).

No script draws them, so the content security policy stays strict; each chart
has a title, a description and its numbers as a table. Builders take plain
figures (keys.selectors.usage reads them) and return a `Chart`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils import formats
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH = 720
HEIGHT = 200
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 10, 26
PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM
PALETTE = 8  # CSS classes c0..c7


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    css: str
    tip: str


@dataclass(frozen=True)
class Line:
    points: str
    css: str
    tip: str


@dataclass(frozen=True)
class Marker:
    x: float
    css: str
    tip: str


@dataclass(frozen=True)
class Tick:
    at: float
    text: str


@dataclass(frozen=True)
class Legend:
    css: str
    text: str


@dataclass
class Chart:
    id: str
    title: str
    description: str
    height: int = HEIGHT
    rects: list[Rect] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    labels: list[Tick] = field(default_factory=list)  # row labels at the left (timelines)
    legend: list[Legend] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    empty: str = ""  # said instead of the drawing when there is nothing to draw

    width: int = WIDTH
    left: int = LEFT
    right_edge: int = WIDTH - RIGHT
    plot_bottom: int = HEIGHT - BOTTOM


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times 10^n at or above `value` (an axis's top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def number(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _y_ticks(top: float, unit: str = "") -> list[Tick]:
    return [Tick(TOP + PLOT_H - PLOT_H * i / 4, f"{number(top * i / 4)}{unit}") for i in range(5)]


def stacked_bars(
    *,
    id: str,
    title: str,
    description: str,
    columns: Sequence[str],
    column_ticks: Sequence[Tick],
    series: Sequence[tuple[str, str, Sequence[float]]],
    unit: str,
    head: list[str],
    rows: list[list[str]],
    empty: str,
) -> Chart:
    """Bars per column, one segment per series (name, css class, value per column)."""
    chart = Chart(id, title, description, head=head, rows=rows)
    totals = [sum(s[2][i] for s in series) for i in range(len(columns))]
    if not any(totals):
        chart.empty = empty
        return chart
    top = nice_max(max(totals))
    step = PLOT_W / max(len(columns), 1)
    width = max(step * 0.8, 1.0)
    for i, column in enumerate(columns):
        base = float(TOP + PLOT_H)
        for name, css, values in series:
            value = values[i]
            if not value:
                continue
            h = PLOT_H * value / top
            base -= h
            chart.rects.append(
                Rect(
                    round(LEFT + i * step + (step - width) / 2, 2),
                    round(base, 2),
                    round(width, 2),
                    round(h, 2),
                    css,
                    f"{column}: {number(value)} {name} {unit}".strip(),
                )
            )
    chart.y_ticks = _y_ticks(top)
    chart.x_ticks = [Tick(round(LEFT + t.at * step, 2), t.text) for t in column_ticks]
    chart.legend = [Legend(css, name) for name, css, values in series if any(values)]
    return chart


def ratio_line(
    *,
    id: str,
    title: str,
    description: str,
    columns: Sequence[str],
    column_ticks: Sequence[Tick],
    ratios: Sequence[float | None],
    head: list[str],
    rows: list[list[str]],
    empty: str,
) -> Chart:
    """A 0 to 100 % line, broken where a column has no figure."""
    chart = Chart(id, title, description, head=head, rows=rows)
    if all(r is None for r in ratios):
        chart.empty = empty
        return chart
    step = PLOT_W / max(len(columns), 1)
    run: list[str] = []
    runs: list[list[str]] = []
    for i, ratio in enumerate(ratios):
        if ratio is None:
            if run:
                runs.append(run)
            run = []
            continue
        x = LEFT + (i + 0.5) * step
        y = TOP + PLOT_H * (1 - ratio)
        run.append(f"{x:.1f},{y:.1f}")
    if run:
        runs.append(run)
    for points in runs:
        if len(points) == 1:  # a lone figure: draw a short tick so it shows
            at, height = points[0].split(",")
            points = [f"{float(at) - 2:.1f},{height}", f"{float(at) + 2:.1f},{height}"]
        chart.lines.append(Line(" ".join(points), "c0", "cache hit ratio"))
    chart.y_ticks = _y_ticks(100, " %")
    chart.x_ticks = [Tick(round(LEFT + t.at * step, 2), t.text) for t in column_ticks]
    chart.legend = [Legend("c0", "Hits among key lookups")]
    return chart


@dataclass(frozen=True)
class Span:
    """A bar on a timeline: a key version's life, or a segment of a bound."""

    label: str
    start: datetime
    end: datetime
    css: str
    tip: str


@dataclass(frozen=True)
class Event:
    at: datetime
    css: str
    tip: str


ROW = 22


def timeline(
    *,
    id: str,
    title: str,
    description: str,
    spans: Sequence[Span],
    events: Sequence[Event],
    start: datetime,
    end: datetime,
    tick_format: str,
    legend: list[Legend],
    head: list[str],
    rows: list[list[str]],
    empty: str,
    rows_share_one_line: bool = False,
) -> Chart:
    """Spans on rows (one per label) over [start, end], with events as markers."""
    labels = list(dict.fromkeys(s.label for s in spans))
    lines = 1 if rows_share_one_line else max(len(labels), 1)
    height = TOP + lines * ROW + BOTTOM
    chart = Chart(id, title, description, height=height, head=head, rows=rows, legend=legend)
    chart.plot_bottom = height - BOTTOM
    if not spans:
        chart.empty = empty
        return chart
    total = max((end - start).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return round(LEFT + PLOT_W * min(max((at - start).total_seconds() / total, 0), 1), 2)

    for span in spans:
        row = 0 if rows_share_one_line else labels.index(span.label)
        left, right = x(span.start), x(span.end)
        chart.rects.append(
            Rect(left, TOP + row * ROW + 3, max(right - left, 1.5), ROW - 6, span.css, span.tip)
        )
    if not rows_share_one_line:
        chart.labels = [Tick(TOP + i * ROW + ROW / 2 + 4, label) for i, label in enumerate(labels)]
    chart.markers = [Marker(x(e.at), e.css, e.tip) for e in events if start <= e.at <= end]
    chart.x_ticks = [
        Tick(
            x(start + timedelta(seconds=total * i / 4)),
            (start + timedelta(seconds=total * i / 4)).strftime(tick_format),
        )
        for i in range(5)
    ]
    return chart


# -- markup -------------------------------------------------------------------------------
#
# Drawn here rather than by a template loop: a timeline of a hundred key versions
# is a few thousand values, and the template engine's per-node cost made the
# chart most of the Keys page's time. The markup is the one
# templates/keys/_chart.html used to spell out; every value is escaped.


def _v(value: object) -> str:
    if isinstance(value, str):
        return escape(value)
    if type(value) in (int, float):
        # SVG wants a plain number with a dot whatever the language; str() is
        # what localize() gives here without grouping, and far cheaper.
        text = str(value)
        if "e" not in text:
            return text
    return escape(formats.localize(value))


def _attrs(**values: object) -> str:
    return "".join(f' {name.rstrip("_").replace("_", "-")}="{_v(v)}"' for name, v in values.items())


def chart_html(chart: Chart) -> SafeString:
    """The chart's figure: its SVG, description, legend and the table of its numbers."""
    c = chart
    out = [f'<figure class="chart" data-testid="chart-{_v(c.id)}">']
    out.append(f'<figcaption id="{_v(c.id)}-caption"><strong>{_v(c.title)}</strong></figcaption>')
    if c.empty:
        out.append(f'<p class="muted" data-testid="chart-empty">{_v(c.empty)}</p>')
    else:
        out.append(
            f'<svg viewBox="0 0 {_v(c.width)} {_v(c.height)}" role="img" '
            f'aria-labelledby="{_v(c.id)}-title {_v(c.id)}-desc" class="chart-svg" '
            'preserveAspectRatio="xMinYMin meet">'
        )
        out.append(f'<title id="{_v(c.id)}-title">{_v(c.title)}</title>')
        out.append(f'<desc id="{_v(c.id)}-desc">{_v(c.description)}</desc>')
        label_x = c.left - 6
        for t in c.y_ticks:
            out.append(
                f'<line class="grid"{_attrs(x1=c.left, x2=c.right_edge, y1=t.at, y2=t.at)}/>'
                f'<text class="tick"{_attrs(x=label_x, y=t.at)} dy="4" text-anchor="end">'
                f"{_v(t.text)}</text>"
            )
        for t in c.labels:
            out.append(
                f'<text class="tick"{_attrs(x=label_x, y=t.at)} text-anchor="end">'
                f"{_v(t.text)}</text>"
            )
        for r in c.rects:
            out.append(
                f"<rect{_attrs(class_=r.css, x=r.x, y=r.y, width=r.w, height=r.h)}>"
                f"<title>{_v(r.tip)}</title></rect>"
            )
        for line in c.lines:
            out.append(
                f'<polyline class="line {_v(line.css)}" points="{_v(line.points)}">'
                f"<title>{_v(line.tip)}</title></polyline>"
            )
        for m in c.markers:
            out.append(
                f'<line class="marker {_v(m.css)}"{_attrs(x1=m.x, x2=m.x)} y1="4"'
                f"{_attrs(y2=c.plot_bottom)}><title>{_v(m.tip)}</title></line>"
            )
        out.append(
            f'<line class="axis"{_attrs(x1=c.left, x2=c.right_edge)}'
            f"{_attrs(y1=c.plot_bottom, y2=c.plot_bottom)}/>"
        )
        tick_y = c.plot_bottom + 16
        for t in c.x_ticks:
            out.append(
                f'<text class="tick"{_attrs(x=t.at, y=tick_y)} text-anchor="middle">'
                f"{_v(t.text)}</text>"
            )
        out.append("</svg>")
        out.append(f'<p class="muted chart-desc">{_v(c.description)}</p>')
        if c.legend:
            out.append('<ul class="legend">')
            for item in c.legend:
                out.append(
                    f'<li><span class="swatch {_v(item.css)}" aria-hidden="true"></span>'
                    f"{_v(item.text)}</li>"
                )
            out.append("</ul>")
    if c.rows:
        out.append(
            '<details class="chart-numbers"><summary>Show the numbers</summary>'
            f'<table class="table"><caption class="sr-only">{_v(c.title)}</caption>'
            "<thead><tr>"
        )
        out.extend(f'<th scope="col">{_v(h)}</th>' for h in c.head)
        out.append("</tr></thead><tbody>")
        for row in c.rows:
            cells = [f'<th scope="row">{_v(row[0])}</th>' if row else ""]
            cells.extend(f"<td>{_v(cell)}</td>" for cell in row[1:])
            out.append(f"<tr>{''.join(cells)}</tr>")
        out.append("</tbody></table></details>")
    out.append("</figure>")
    # Every value above went through escape().
    return mark_safe("".join(out))  # noqa: S308
