"""``edgekd report REPORT.json --html out.html``: one self-contained page of tables and plots.

The page needs nothing but a browser: plots are PNGs made with matplotlib (Agg backend) and
embedded as data URIs, styles are inline. Sections:

1. the artifact table (size, params, the task's quality metric, agreement, latency, memory, accelerator
   coverage), estimated rows labelled "estimated";
2. latency distribution per artifact (box plots of the raw samples kept in the report);
3. quality (accuracy for classifiers) vs p50 latency across artifacts and targets, marker area
   proportional to file size;
4. per-op breakdown: the slowest ops of each artifact profiled with ``--profile``.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from edgekd import atomic
from edgekd.report.schema import Report, _ms, _pct
from edgekd.units import format_size

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f3f7; } td:first-child, th:first-child { text-align: left; }
.estimated { color: #8a5a00; font-style: italic; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def render_html(report: Report, title: str = "edgekd report") -> str:
    """The page for ``report`` as an HTML string."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>created {html.escape(report.created_at)}; targets: "
             f"{html.escape(', '.join(report.targets) or '-')}; "
             f"{html.escape(str(report.environment.get('cpu', '')))}</p>",
             "<h2>Artifacts</h2>", "<div style='overflow-x:auto'>" + _table(report) + "</div>"]
    latency = _latency_plot(report)
    if latency:
        parts += ["<h2>Latency distribution</h2>", _img(latency, "latency distribution per artifact")]
    tradeoff = _tradeoff_plot(report)
    if tradeoff:
        metric = html.escape(report.quality_metric)
        parts += [f"<h2>{metric.capitalize()} vs latency vs size</h2>",
                  "<p class='note'>marker area is proportional to the artifact's file size</p>",
                  _img(tradeoff, f"{metric} vs latency")]
    ops = _ops_plot(report)
    if ops:
        parts += ["<h2>Per-op breakdown</h2>", _img(ops, "slowest ops per artifact")]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: Report, path: str | Path, title: str = "edgekd report") -> Path:
    return atomic.write_text(path, render_html(report, title))


def _table(report: Report) -> str:
    head = ("<table><tr><th>artifact</th><th>runtime</th><th>target</th><th>size</th><th>params</th>"
            f"<th>{html.escape(report.quality_metric)}</th><th>agreement</th><th>p50</th><th>p90</th><th>peak memory</th>"
            "<th>accelerator coverage</th></tr>")
    rows = [head]
    for e in report.entries:
        lat = e.latency or {}
        estimated = bool(e.info.get("estimated"))
        cls = " class='estimated'" if estimated else ""
        coverage = e.info.get("accelerator_coverage")
        cells = [e.name + (" (estimated)" if estimated else ""), e.runtime or ("-" if estimated else "pytorch"),
                 e.target or "-",
                 format_size(e.size_bytes), "-" if e.params is None else f"{e.params:,}",
                 _pct(e.quality(report.quality_metric)),
                 _pct(e.agreement), _ms(lat.get("p50_ms")), _ms(lat.get("p90_ms")),
                 format_size(e.peak_memory_bytes), _pct(coverage)]
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def _label(e) -> str:
    return f"{e.name} @{e.target}" if e.target else e.name


def _figure(height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(11, height), dpi=100)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _latency_plot(report: Report) -> bytes | None:
    measured = [e for e in report.entries if (e.latency or {}).get("samples_ms") and not e.info.get("estimated")]
    if not measured:
        return None
    fig, ax = _figure(0.45 * len(measured) + 1.2)
    ax.boxplot([e.latency["samples_ms"] for e in measured], orientation="horizontal", showfliers=False,
               patch_artist=True, boxprops={"facecolor": "#9ecae1"})
    ax.set_yticks(range(1, len(measured) + 1), [_label(e) for e in measured])
    ax.set_xscale("log")
    ax.set_xlabel("latency per inference (ms, log scale); box: p25-p75, whiskers: 1.5 IQR")
    return _png(fig)


def _tradeoff_plot(report: Report) -> bytes | None:
    metric = report.quality_metric
    points = [e for e in report.entries if e.quality(metric) is not None and (e.latency or {}).get("p50_ms")]
    if not points:
        return None
    fig, ax = _figure(5.5)
    sizes = [max(e.size_bytes or 0, 1) for e in points]
    biggest = max(sizes)
    colors = {t: c for t, c in zip(sorted({e.target or "-" for e in points}), ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"] * 10)}
    for e, size in zip(points, sizes):
        marker = "^" if e.info.get("estimated") else "o"
        ax.scatter(e.latency["p50_ms"], 100 * e.quality(metric), s=40 + 900 * size / biggest, marker=marker,
                   color=colors[e.target or "-"], alpha=0.6, edgecolors="black", linewidths=0.5)
        ax.annotate(e.name, (e.latency["p50_ms"], 100 * e.quality(metric)), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    for target, color in colors.items():
        ax.scatter([], [], color=color, label=target)
    ax.legend(title="target", loc="lower right")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale); triangles: estimated")
    ax.set_ylabel("top-1 accuracy (%)" if metric == "accuracy" else f"{metric} (%)")
    return _png(fig)


def _ops_plot(report: Report) -> bytes | None:
    profiled = [e for e in report.entries if e.info.get("profile")]
    if not profiled:
        return None
    rows = []
    for e in profiled:
        for op in e.info["profile"][:8]:
            rows.append((f"{_label(e)}: {op['name'][:40]} ({op['op']})", op["mean_ms"]))
    fig, ax = _figure(0.3 * len(rows) + 1.2)
    ax.barh(range(len(rows)), [ms for _, ms in rows], color="#fd8d3c")
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("mean time per inference (ms), top ops of each profiled artifact")
    return _png(fig)


__all__ = ["render_html", "write_html"]
