"""The anchor's table: one row per figure, streamapp beside Restate, their ratio, and who is ahead.

Each row is a ``bench.common.Figure`` whose ``value`` is streamapp's and
``baseline`` Restate's, so the result file has the shape of every other
bench result (``python -m bench.table`` reads it too). The ratio is always
streamapp / Restate; ``higher_is_better`` says which way is better, and the
``ahead`` column says it in words (``streamapp 1.3x``: streamapp is better by
that factor; ``even`` within 2%).
"""

from __future__ import annotations

from bench.common import Figure, Result, fmt

HEADER = ("part", "figure", "streamapp", "Restate", "streamapp/Restate", "better", "ahead")
EVEN = 0.02  # a ratio within 2% of 1 is a tie


def ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def ahead(f: Figure) -> str:
    """Who has the better figure, and by what factor (``""`` when either side is missing or zero)."""
    if f.value is None or f.baseline is None or f.value <= 0 or f.baseline <= 0:
        return ""
    r = f.value / f.baseline
    if abs(r - 1) <= EVEN:
        return "even"
    streamapp_better = r > 1 if f.higher_is_better else r < 1
    factor = r if r > 1 else 1 / r
    return f"{'streamapp' if streamapp_better else 'Restate'} {factor:.2f}x" if factor < 10 else \
        f"{'streamapp' if streamapp_better else 'Restate'} {factor:,.0f}x"


def cell(value: float | None, unit: str) -> str:
    return f"{fmt(value)} {unit}" if value is not None else "-"


def row(part: str, f: Figure) -> tuple[str, ...]:
    return (part, f.name, cell(f.value, f.unit), cell(f.baseline, f.unit), ratio_text(f.ratio),
            "higher" if f.higher_is_better else "lower", ahead(f))


def table(parts: list[Result]) -> str:
    """The printed table: every figure of every part (a part without figures says why)."""
    rows: list[tuple[str, ...]] = [HEADER]
    for res in parts:
        if not res.figures:
            rows.append((res.scenario, "(no figures)", "", "", "", "", "FAILED" if not res.ok else ""))
        for i, f in enumerate(res.figures):
            rows.append(row(res.scenario if i == 0 else "", f))
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for n, cells in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
