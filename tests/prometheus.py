"""Reading a service's Prometheus endpoint in tests: one scraper and one sample reader for every test package."""

from __future__ import annotations

import re
import urllib.request

# One sample line of the text format: name, optional {labels}, value (timestamps are not used by our services).
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called exactly `name` (as the exposition spells it: prometheus_client's own parser would
    rename Triton's nv_* counters to *_total) whose labels include `labels`; 0 when none."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            found = dict(_LABEL.findall(match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
    return total
