"""Latency-vs-throughput plot: a self-contained HTML page with an inline SVG and the results table
(no scripts, no downloads, opens anywhere), plus a PNG: matplotlib's when it is installed, else a
plain one drawn by bench/png.py. A point whose level did not stabilise is drawn hollow and
labelled "(unstable)".

Several series can share one plot (e.g. tritonpy and Triton measured in the same run), which is
what `scripts/bench_suite.py` does.
"""
from __future__ import annotations

import html
import os
from typing import Sequence

from . import png

# name, [(throughput, p50 µs, p99 µs, label[, stable])]; a point without `stable` counts as stable.
Series = tuple[str, Sequence[tuple]]

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
W, H, L, R, T, B = 760, 460, 70, 170, 40, 50


def _ticks(top: float) -> list[float]:
    if top <= 0:
        return [0.0]
    raw = top / 5
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(top / step) + 2)]


def _stable(point: tuple) -> bool:
    return bool(point[4]) if len(point) > 4 else True


def _scale(series: Sequence[Series]):
    """Grid ticks and the data-to-pixel maps shared by the SVG and the PNG."""
    xs = [p[0] for _, pts in series for p in pts] or [1.0]
    ys = [p[2] for _, pts in series for p in pts] or [1.0]
    xt, yt = _ticks(max(xs) * 1.05), _ticks(max(ys) * 1.05)
    xmax, ymax = xt[-1] or 1.0, yt[-1] or 1.0
    pw, ph = W - L - R, H - T - B

    def px(x: float) -> float:
        return L + x / xmax * pw

    def py(y: float) -> float:
        return T + ph - y / ymax * ph

    return xt, yt, px, py


def svg(series: Sequence[Series], title: str) -> str:
    xt, yt, px, py = _scale(series)
    pw, ph = W - L - R, H - T - B

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12"><rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{html.escape(title)}</text>']
    for x in xt:
        out.append(f'<line x1="{px(x):.1f}" y1="{T}" x2="{px(x):.1f}" y2="{T + ph}" stroke="#eee"/>'
                   f'<text x="{px(x):.1f}" y="{T + ph + 16}" text-anchor="middle">{x:g}</text>')
    for y in yt:
        out.append(f'<line x1="{L}" y1="{py(y):.1f}" x2="{L + pw}" y2="{py(y):.1f}" stroke="#eee"/>'
                   f'<text x="{L - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{L + pw / 2}" y="{H - 10}" text-anchor="middle">throughput (infer/s)</text>')
    out.append(f'<text transform="translate(16 {T + ph / 2}) rotate(-90)" text-anchor="middle">'
               'latency (µs): solid p50, dashed p99</text>')
    for i, (name, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        for idx, dash in ((1, ""), (2, ' stroke-dasharray="5 4"')):
            path = " ".join(f"{px(p[0]):.1f},{py(p[idx]):.1f}" for p in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for p in pts:
            label = p[3] if _stable(p) else f"{p[3]} (unstable)"
            fill = colour if _stable(p) else "white"
            out.append(f'<circle cx="{px(p[0]):.1f}" cy="{py(p[1]):.1f}" r="3" fill="{fill}" stroke="{colour}">'
                       f'<title>{html.escape(label)}: {p[0]:,.0f} infer/s, p50 {p[1]:.0f} µs, '
                       f'p99 {p[2]:.0f} µs</title></circle>')
            out.append(f'<text x="{px(p[0]) + 4:.1f}" y="{py(p[1]) - 4:.1f}" font-size="10" '
                       f'fill="{colour}">{html.escape(label)}</text>')
        ly = T + 14 + i * 18
        out.append(f'<line x1="{L + pw + 12}" y1="{ly}" x2="{L + pw + 32}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{L + pw + 36}" y="{ly + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def table_html(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<table border='1' cellspacing='0' cellpadding='4' style='border-collapse:collapse;"
            f"text-align:right;font-family:sans-serif;font-size:13px'><tr>{head}</tr>{body}</table>")


def write_html(path: str, series: Sequence[Series], title: str, facts_text: str = "",
               table: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None) -> list[str]:
    """Write the HTML page (plot, results `table` of (headers, rows), run facts) and `<path stem>.png`.
    Returns the files written."""
    results = table_html(*table) if table is not None else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body>{svg(series, title)}{results}<pre>{html.escape(facts_text)}</pre></body></html>\n")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return [path, write_png(os.path.splitext(path)[0] + ".png", series, title)]


def write_png(path: str, series: Sequence[Series], title: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a plain PNG, so that there is always an image
        xt, yt, px, py = _scale(series)
        coloured = [(name, pts, COLOURS[i % len(COLOURS)]) for i, (name, pts) in enumerate(series)]
        return png.draw(path, (W, H), (L, T, W - R, H - B), (xt, yt), px, py, coloured)
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=colour, label=f"{name} p50")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "--", color=colour, label=f"{name} p99")
        shaky = [p for p in pts if not _stable(p)]
        if shaky:
            ax.plot([p[0] for p in shaky], [p[1] for p in shaky], "o", color="white", markeredgecolor=colour,
                    label=f"{name} unstable")
    ax.set_xlabel("throughput (infer/s)")
    ax.set_ylabel("latency (µs)")
    ax.set_title(title)
    ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
