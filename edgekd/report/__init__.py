"""Reports: ``report.json`` and what is done with it.

- ``schema``: ``Entry`` and ``Report`` (every model and artifact of a run with its quality
  metrics, size, latency and memory), ``load_report``, the Markdown table;
- ``html``: ``edgekd report --html``, one self-contained page with tables and plots;
- ``compare``: ``edgekd compare``, per-metric deltas between two reports.
"""

from edgekd.report.schema import SCHEMA_VERSION, Entry, Report, environment, load_report

__all__ = ["SCHEMA_VERSION", "Entry", "Report", "environment", "load_report"]
