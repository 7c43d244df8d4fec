"""The explorer's inline SVG charts: a response's novelty per row with its E/X phases and
cycles, and a model's GMF histogram."""

from __future__ import annotations

from .markup import esc, is_number


def phase_chart(rows: list, width: int = 760, height: int = 150) -> str:
    """Novelty slope per analysed row, E rows shaded, cycles as bars above the plot
    (green: credited, grey dashed: not credited), as in the evaluation's phase plots."""
    analysed = [r for r in rows if r["label"] is not None]
    if not analysed:
        return "<p class=\"muted\">No analysed rows (the response had too few rows).</p>"
    left, right, top, bottom = 44, 10, 30, 24
    n = max(len(rows), 1)
    slopes = [r["slope"] for r in analysed if is_number(r["slope"])]
    peak = max(slopes + [1e-9])
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / n

    def x(row: float) -> float:
        return left + (row + 0.5) * step

    def y(value: float) -> float:
        return top + plot_h * (1 - value / peak)

    parts = [f'<svg class="phase-chart" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="novelty slope per row">']
    for r in analysed:
        if r["label"] == "E":
            parts.append(f'<rect x="{left + r["row"] * step:.1f}" y="{top}" '
                         f'width="{step:.2f}" height="{plot_h}" fill="#f5a04a" '
                         f'fill-opacity="0.35"/>')
    cycles: dict[int, list] = {}
    for r in analysed:
        if r["cycle"] >= 0:
            cycles.setdefault(r["cycle"], []).append(r)
    for number, (cycle, members) in enumerate(sorted(cycles.items())):
        credited = members[0]["credited"]
        colour = "#2ca02c" if credited else "#8c8c8c"
        dash = "" if credited else ' stroke-dasharray="4 2"'
        first, last = members[0]["row"], members[-1]["row"]
        bar_y = top - (8 if number % 2 else 16)
        parts.append(f'<line x1="{left + first * step + 1:.1f}" x2="{left + (last + 1) * step - 1:.1f}" '
                     f'y1="{bar_y}" y2="{bar_y}" stroke="{colour}" '
                     f'stroke-width="{5 if credited else 3}"{dash}>'
                     f'<title>cycle {cycle}: rows {first}-{last}, '
                     f'{"credited" if credited else "not credited"}</title></line>')
        parts.append(f'<line x1="{left + first * step:.1f}" x2="{left + first * step:.1f}" '
                     f'y1="{top}" y2="{top + plot_h}" stroke="{colour}" stroke-width="1.2"{dash}/>')
    points = " ".join(f"{x(r['row']):.1f},{y(r['slope']):.1f}" for r in analysed
                      if is_number(r["slope"]))
    parts.append(f'<polyline points="{points}" fill="none" stroke="#111" stroke-width="1.2"/>')
    for r in analysed:
        if is_number(r["slope"]):
            parts.append(f'<circle cx="{x(r["row"]):.1f}" cy="{y(r["slope"]):.1f}" r="1.8" '
                         f'fill="#111"><title>row {r["row"]}: {r["label"]}, novelty slope '
                         f'{r["slope"]:.3f}</title></circle>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" stroke="#999"/>')
    parts.append(f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak:.2f}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left}" y="{height - 6}">row 0</text>')
    parts.append(f'<text x="{width - right}" y="{height - 6}" text-anchor="end">row {n - 1}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
                 'novelty slope per row</text>')
    parts.append("</svg>")
    return "".join(parts)


def phase_legend() -> str:
    return ("<p class=\"legend\"><span><i class=\"swatch\" style=\"background:#fde3c8\"></i>"
            "E row (explore)</span><span><i class=\"swatch\" style=\"background:#fff;"
            "border:1px solid #ccc\"></i>X row (exploit)</span><span><i class=\"swatch\" "
            "style=\"background:#2ca02c\"></i>credited cycle</span><span><i class=\"swatch\" "
            "style=\"background:repeating-linear-gradient(90deg,#8c8c8c 0 4px,#fff 4px 6px)\">"
            "</i>cycle without credit</span><span class=\"muted\">a cycle: an E run and the X "
            "run after it</span></p>")


def histogram(values: list, bins: int = 20, width: int = 520, height: int = 170) -> str:
    """An SVG histogram of GMF values in [0, 1] (non-finite values left out and counted)."""
    finite = [float(v) for v in values if is_number(v)]
    counts = [0] * bins
    for v in finite:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    left, bottom, top = 40, 28, 10
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak = max(counts + [1])
    step = plot_w / bins
    parts = [f'<svg class="histogram" width="{width}" height="{height}" viewBox="0 0 {width} '
             f'{height}" role="img" aria-label="GMF histogram">']
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        parts.append(f'<rect x="{left + i * step + 1:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{step - 2:.1f}" height="{h:.1f}" fill="#4c78a8"><title>GMF '
                     f'{i / bins:.2f}-{(i + 1) / bins:.2f}: {c} responses</title></rect>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" '
                 f'y2="{top + plot_h}" stroke="#999"/>')
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{left + tick * plot_w:.1f}" y="{height - 12}" '
                     f'text-anchor="middle">{tick:g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 1}" text-anchor="middle">'
                 'GMF</text></svg>')
    missing = len(values) - len(finite)
    caption = f"{len(finite):,} scored responses" + (
        f"; {missing:,} without a GMF (empty) left out" if missing else "")
    return "".join(parts) + f"<p class=\"muted\">{esc(caption)}</p>"
