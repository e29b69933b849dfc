"""`eval/report.html`: one self-contained page (inline SVG, no scripts) to look at a render's scores."""

from __future__ import annotations

import html
from pathlib import Path

from ..atomic import atomic_write_bytes
from .report import METRICS, Report

BAR_WIDTH, CHART_HEIGHT, HIST_BINS = 14, 160, 12
_STYLE = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}svg{background:#fafafa;margin:4px 12px 4px 0}
.bar{fill:#4a78b5}.mean{stroke:#c33;stroke-width:1.5}.ci{fill:#c33;fill-opacity:.12}
text{font-size:10px}h2{margin-top:1.6em}"""


def write_html(report: Report, path: Path) -> None:
    summary = report.summary()
    parts = [f"<!doctype html><meta charset='utf-8'><title>levo-batch evaluation</title><style>{_STYLE}</style>",
             f"<h1>Evaluation of {_e(report.save_dir)}</h1>",
             f"<p>{len(report.songs)} songs from {_e(report.results_jsonl)}"
             + (f"; without audio: {_e(', '.join(report.missing))}" if report.missing else "") + "</p>",
             _settings_table(report.settings), "<h2>Summary</h2>", _summary_table(summary)]
    for key, (label, definition) in METRICS.items():
        values = [(song["idx"], song.get(key)) for song in report.songs]
        if all(v is None for _, v in values):
            continue
        parts.append(f"<h2>{_e(label)}</h2><p>{_e(definition)}</p>")
        parts.append(_bars(values, summary[key]) + _histogram([v for _, v in values if v is not None]))
    parts += ["<h2>Songs</h2>", _songs_table(report, summary)]
    atomic_write_bytes(path, "\n".join(parts).encode("utf-8"))


def _settings_table(settings: dict) -> str:
    rows = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in settings.items())
    return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>"


def _summary_table(summary: dict) -> str:
    head = "<tr><th>metric</th><th>songs</th><th>mean</th><th>95 % CI</th><th>std</th><th>pooled</th></tr>"
    rows = []
    for key, (label, definition) in METRICS.items():
        s = summary[key]
        if not s["n"]:
            continue
        ci = f"{_fmt(s['ci95_low'])} to {_fmt(s['ci95_high'])}" if s["ci95_low"] is not None else ""
        rows.append(f"<tr><td title='{_e(definition)}'>{_e(label)}</td><td>{s['n']}</td><td>{_fmt(s['mean'])}"
                    f"</td><td>{ci}</td><td>{_fmt(s['std'])}</td><td>{_fmt(s.get('pooled'))}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _songs_table(report: Report, summary: dict) -> str:
    keys = [key for key in METRICS if summary[key]["n"]]
    head = "".join(f"<th>{_e(METRICS[key][0])}</th>" for key in keys)
    rows = []
    for song in report.songs:
        cells = "".join(f"<td>{_fmt(song.get(key))}</td>" for key in keys)
        rows.append(f"<tr><td>{_e(song['idx'])}</td>{cells}<td style='text-align:left'>"
                    f"{_e(song.get('transcript', ''))}</td></tr>")
    return f"<table><tr><th>idx</th>{head}<th>transcript</th></tr>{''.join(rows)}</table>"


def _bars(values: list[tuple[str, float | None]], stats: dict) -> str:
    """One bar per song (in report order), the mean as a line and its 95 % CI as a band."""
    present = [v for _, v in values if v is not None]
    lo, hi = min(0.0, *present), max(0.0, *present)
    span = (hi - lo) or 1.0
    width = 40 + BAR_WIDTH * len(values)

    def y(v: float) -> float:
        return 10 + (hi - v) / span * CHART_HEIGHT

    out = [f"<svg width='{width}' height='{CHART_HEIGHT + 40}' role='img'>",
           f"<text x='2' y='{y(hi) + 4:.1f}'>{_fmt(hi)}</text><text x='2' y='{y(lo):.1f}'>{_fmt(lo)}</text>"]
    if stats["ci95_low"] is not None:
        top, bottom = y(min(stats["ci95_high"], hi)), y(max(stats["ci95_low"], lo))
        out.append(f"<rect class='ci' x='36' y='{top:.1f}' width='{width - 36}' height='{bottom - top:.1f}'/>")
    for i, (idx, v) in enumerate(values):
        x = 38 + i * BAR_WIDTH
        if v is not None:
            top, bottom = sorted((y(v), y(0.0)))
            out.append(f"<rect class='bar' x='{x}' y='{top:.1f}' width='{BAR_WIDTH - 3}' "
                       f"height='{max(bottom - top, 0.5):.1f}'><title>{_e(idx)}: {_fmt(v)}</title></rect>")
        out.append(f"<text x='{x}' y='{CHART_HEIGHT + 24}'>{_e(idx)[:3]}</text>")
    if stats["mean"] is not None:
        out.append(f"<line class='mean' x1='36' x2='{width}' y1='{y(stats['mean']):.1f}' "
                   f"y2='{y(stats['mean']):.1f}'><title>mean {_fmt(stats['mean'])}</title></line>")
    return "".join(out) + "</svg>"


def _histogram(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    step = (hi - lo) / HIST_BINS or 1.0
    counts = [0] * HIST_BINS
    for v in values:
        counts[min(int((v - lo) / step), HIST_BINS - 1)] += 1
    width, top = 20 * HIST_BINS + 20, max(counts)
    out = [f"<svg width='{width}' height='{CHART_HEIGHT + 40}' role='img'>"]
    for i, c in enumerate(counts):
        h = c / top * CHART_HEIGHT
        out.append(f"<rect class='bar' x='{10 + 20 * i}' y='{10 + CHART_HEIGHT - h:.1f}' width='17' "
                   f"height='{h:.1f}'><title>{_fmt(lo + i * step)} to {_fmt(lo + (i + 1) * step)}: {c}</title>"
                   f"</rect>")
    out.append(f"<text x='10' y='{CHART_HEIGHT + 24}'>{_fmt(lo)}</text>"
               f"<text x='{width - 50}' y='{CHART_HEIGHT + 24}'>{_fmt(hi)}</text>")
    return "".join(out) + "</svg>"


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.4g}"


def _e(v: object) -> str:
    return html.escape(str(v), quote=True)
