"""Server-side SVG charts for the dashboard: no JavaScript, no external library.

Every chart is an ``<svg role="img">`` with a ``<title>`` and ``<desc>`` summarising it for
screen readers; the dashboard also prints the numbers as a table beside each chart. Text is
escaped here because the markup is passed to the template as safe HTML.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

# Colour-blind-safe palette (Okabe-Ito), then greys for overflow series.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#999999",
    "#666666",
)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        top = step * magnitude
        if top >= value:
            return float(top)
    return float(value)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}"


def stacked_bars(
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    width: int = 1180,
    height: int = 260,
) -> Markup:
    """Vertical stacked bars: one bar per category (e.g. day), one colour per series."""
    legend_rows = _legend_rows(list(series), 44, width)
    height += 18 * max(0, legend_rows - 1)
    left, right, top, bottom = 44, 10, 10, 30 + 18 * legend_rows
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s[i] for s in series.values()) for i in range(len(categories))]
    ymax = _nice_max(max(totals, default=0))
    n = max(1, len(categories))
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.75)
    parts = [
        _head(title, f"{sum(totals):,.0f} in total over {len(categories)} periods", width, height)
    ]
    for k in range(5):
        v = ymax * k / 4
        y = top + plot_h - plot_h * v / ymax
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">{_fmt(v)}</text>'
        )
    label_every = max(1, n // 10)
    for i, cat in enumerate(categories):
        x = left + slot * i + (slot - bar_w) / 2
        y = top + plot_h
        for j, (name, values) in enumerate(series.items()):
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / ymax
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(cat)} · {escape(name)}: '
                f"{_fmt(v)}</title></rect>"
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h + 14}" class="axis" '
                f'text-anchor="middle">{escape(cat[5:] if len(cat) == 10 else cat)}</text>'
            )
    parts.append(_legend(list(series), left, top + plot_h + 36, width))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped


def hbars(
    title: str,
    items: Sequence[tuple[str, float]],
    *,
    width: int = 340,
    unit: str = "",
    max_value: float | None = None,
    color: str = PALETTE[0],
    label_w: int = 120,
) -> Markup:
    """Horizontal bars with labels: top-N lists, rates (``max_value=1`` and unit ``%``)."""
    row_h, value_w = 24, 80
    max_chars = max(6, label_w // 7)
    height = max(1, len(items)) * row_h + 8
    vmax = max_value if max_value is not None else _nice_max(max((v for _, v in items), default=0))
    plot_w = width - label_w - value_w
    desc = "; ".join(f"{k}: {_value(v, unit)}" for k, v in items[:10]) or "no data"
    parts = [_head(title, desc, width, height)]
    if not items:
        parts.append('<text x="4" y="18" class="axis">No data in this range</text>')
    for i, (label, v) in enumerate(items):
        y = 4 + i * row_h
        w = 0 if vmax <= 0 else plot_w * min(v, vmax) / vmax
        short = label if len(label) <= max_chars else label[: max_chars - 1] + "…"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" class="label" text-anchor="end">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{plot_w}" height="{row_h - 8}" class="track"/>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{color}">'
            f"<title>{escape(label)}: {_value(v, unit)}</title></rect>"
            f'<text x="{label_w + plot_w + 6}" y="{y + 15}" class="value">{_value(v, unit)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped


def paired_bars(
    title: str,
    items: Sequence[tuple[str, float | None, float | None]],
    *,
    width: int = 1180,
    unit: str = "s",
) -> Markup:
    """Two bars per row (median and 90th percentile), e.g. stage durations in seconds."""
    row_h, label_w, value_w = 34, 170, 110
    height = max(1, len(items)) * row_h + 30
    vmax = _nice_max(max((b or a or 0 for _, a, b in items), default=0))
    plot_w = width - label_w - value_w
    desc = "; ".join(f"{k}: median {_value(a, unit)}, p90 {_value(b, unit)}" for k, a, b in items)
    parts = [_head(title, desc, width, height)]
    for i, (label, p50, p90) in enumerate(items):
        y = 4 + i * row_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" class="label" text-anchor="end">'
            f"{escape(label)}</text>"
        )
        for j, (v, color) in enumerate(((p50, PALETTE[0]), (p90, PALETTE[1]))):
            w = 0 if not v or vmax <= 0 else plot_w * v / vmax
            parts.append(
                f'<rect x="{label_w}" y="{y + 4 + j * 12}" width="{w:.1f}" height="10" '
                f'fill="{color}"><title>{escape(label)} {"median" if j == 0 else "p90"}: '
                f"{_value(v, unit)}</title></rect>"
            )
        parts.append(
            f'<text x="{label_w + plot_w + 6}" y="{y + 17}" class="value">'
            f"{_value(p50, unit)} / {_value(p90, unit)}</text>"
        )
    parts.append(_legend(["median", "90th percentile"], label_w, height - 8, width))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped


def reliability(title: str, bins: Sequence[Mapping[str, float]], *, size: int = 300) -> Markup:
    """Reliability diagram: per confidence bin, a bar at the bin's accuracy and a dot at its
    mean confidence; the diagonal is perfect calibration. ``bins`` as made by
    ``classifiers.evaluation.reliability_bins`` (lower, upper, count, confidence, accuracy)."""
    left, bottom, top, right = 40, 34, 8, 8
    plot = size - left - right
    height = top + plot + bottom

    def x(v: float) -> float:
        return left + plot * v

    def y(v: float) -> float:
        return top + plot * (1 - v)

    desc = "; ".join(
        f"confidence {b['lower']:.1f}-{b['upper']:.1f}: {int(b['count'])} predictions, "
        f"accuracy {b['accuracy'] * 100:.0f}%, mean confidence {b['confidence'] * 100:.0f}%"
        for b in bins
    )
    parts = [_head(title, desc or "no predictions", size, height)]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(
            f'<line x1="{x(0)}" x2="{x(1)}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" class="axis" text-anchor="end">'
            f"{tick:.2f}</text>"
            f'<text x="{x(tick):.1f}" y="{top + plot + 14}" class="axis" text-anchor="middle">'
            f"{tick:.2f}</text>"
        )
    parts.append(
        f'<text x="{x(0.5):.1f}" y="{height - 4}" class="axis" text-anchor="middle">'
        "confidence</text>"
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="{PALETTE[8]}" '
        'stroke-dasharray="4 3"/>'
    )
    for b in bins:
        x0, x1 = x(b["lower"]) + 1, x(b["upper"]) - 1
        tip = (
            f"{b['lower']:.1f}-{b['upper']:.1f}: {int(b['count'])} predictions, accuracy "
            f"{b['accuracy'] * 100:.1f}%, mean confidence {b['confidence'] * 100:.1f}%"
        )
        parts.append(
            f'<rect x="{x0:.1f}" y="{y(b["accuracy"]):.1f}" width="{max(0.0, x1 - x0):.1f}" '
            f'height="{plot * b["accuracy"]:.1f}" fill="{PALETTE[0]}" fill-opacity="0.75">'
            f"<title>{escape(tip)}</title></rect>"
            f'<circle cx="{x(b["confidence"]):.1f}" cy="{y(b["confidence"]):.1f}" r="3" '
            f'fill="{PALETTE[5]}"><title>{escape(tip)}</title></circle>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped


def _value(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "%":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return duration(v)
    return _fmt(v) + (f" {unit}" if unit else "")


def duration(seconds: float | None) -> str:
    """Seconds as a short human duration: 42 s, 7 min, 3.5 h, 2.1 d."""
    if seconds is None:
        return "n/a"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _head(title: str, desc: str, width: int, height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" class="chart" '
        f'preserveAspectRatio="xMinYMin meet">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>"
    )


def _legend_items(names: list[str], x0: int, width: int) -> list[tuple[int, int, str]]:
    """(row, x, label) for each legend entry, wrapping to new rows at the chart's width."""
    out = []
    x, row = x0, 0
    for name in names:
        label = name.replace("_", " ")
        label = label if len(label) <= 24 else label[:23] + "…"
        w = 22 + 7 * len(label)
        if x + w > width and x > x0:
            x, row = x0, row + 1
        out.append((row, x, label))
        x += w
    return out


def _legend_rows(names: list[str], x0: int, width: int) -> int:
    items = _legend_items(names, x0, width)
    return (items[-1][0] + 1) if items else 1


def _legend(names: list[str], x0: int, y: int, width: int) -> str:
    out = []
    for j, (row, x, label) in enumerate(_legend_items(names, x0, width)):
        yy = y + 18 * row
        out.append(
            f'<rect x="{x}" y="{yy - 9}" width="10" height="10" '
            f'fill="{PALETTE[j % len(PALETTE)]}"/>'
            f'<text x="{x + 14}" y="{yy}" class="legend">{escape(label)}</text>'
        )
    return "".join(out)
