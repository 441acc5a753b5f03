"""A node's status page on its metrics port: `/` (page.html, status.js, status.css: plain
HTML and JavaScript, no build step, nothing fetched from elsewhere) polls `/status.json`,
which `StatusSampler` rebuilds on the node's loop once a second (docs/observability.md, "The
status page"). kvnet/metrics.py serves both."""
from kvnet.status.snapshot import HISTORY_S, INTERVAL_S, StatusSampler

__all__ = ["StatusSampler", "INTERVAL_S", "HISTORY_S"]
