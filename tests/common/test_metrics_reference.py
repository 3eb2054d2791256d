"""docs/metrics.md lists exactly the metrics the services register, with the same type and labels."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from prometheus_client import REGISTRY

from services.common.metrics import publish_build_info

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
# Importing these registers every metric each service defines (the metric objects are module-level).
SERVICE_MODULES = ("services.tts_gateway.app", "services.rvc_service.__main__", "services.http_edge.app")
STANDARD_PREFIXES = ("process_", "python_")  # prometheus-client's own collectors


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    section = ""
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("## "):
            section = line
        match = re.match(r"\| `(\w+)` \| (\w+) \| ([^|]*) \|", line)
        if match and "Triton" not in section:
            name, kind, labels = match.groups()
            assert name not in rows, f"{name} is listed twice"
            rows[name] = (kind, tuple(sorted(label.strip() for label in labels.split(",") if label.strip())))
    return rows


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    for module in SERVICE_MODULES:
        importlib.import_module(module)
    publish_build_info("test")  # an Info metric has its labels only once set, as each service does at start
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family in REGISTRY.collect():
        if family.name.startswith(STANDARD_PREFIXES):
            continue
        exposed = {"counter": f"{family.name}_total", "info": f"{family.name}_info"}.get(family.type, family.name)
        kind = "gauge" if family.type == "info" else family.type
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le", "quantile"}
        collector = REGISTRY._names_to_collectors.get(exposed) or REGISTRY._names_to_collectors.get(family.name)
        declared = getattr(collector, "_labelnames", ())
        found[exposed] = (kind, tuple(sorted(labels | set(declared))))
    return found


def test_every_registered_metric_is_documented_with_its_type_and_labels() -> None:
    docs, code = documented(), registered()
    missing = sorted(set(code) - set(docs))
    stale = sorted(set(docs) - set(code))
    assert not missing, f"add to docs/metrics.md: {missing}"
    assert not stale, f"documented but not registered by any service: {stale}"
    wrong = {name: (docs[name], code[name]) for name in code if docs[name] != code[name]}
    assert not wrong, f"type or labels differ (docs, code): {wrong}"


def test_reference_lists_the_autoscaling_and_alerting_signals() -> None:
    """The signals the deployment's HPA and alerts are built on are among the documented ones."""
    docs = documented()
    for name in ("tts_gateway_active_streams", "rvc_admitted_load_workers", "rvc_pool_queue_depth"):
        assert name in docs
