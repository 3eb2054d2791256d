"""Custom metrics on Triton's metrics port, labelled with the model's name."""

from __future__ import annotations

import contextlib
import threading
from typing import Any


class Metric:
    """One labelled series; updates go through the model's Triton lock when it has one (an update is a message to
    the server, and the python backend of Triton 2.51 crashed when threads sent messages at once)."""

    def __init__(self, family: Any, labels: dict[str, str], lock: threading.Lock | None) -> None:
        # The family must outlive its metrics (Triton refuses updates of a metric whose family was deleted), so each
        # metric keeps its family alive, whatever the caller keeps.
        self._family = family
        self._metric = family.Metric(labels=labels)
        self._lock = lock

    def increment(self, value: float = 1.0) -> None:
        with self._lock or contextlib.nullcontext():
            self._metric.increment(value)

    def set(self, value: float) -> None:
        with self._lock or contextlib.nullcontext():
            self._metric.set(value)


class MetricSet:
    """The metric families of one model, each created once, with the model's name as a label of every series."""

    def __init__(self, model_name: str, lock: threading.Lock | None = None) -> None:
        self.labels = {"model": model_name}
        self._lock = lock
        self._families: dict[str, Any] = {}

    def _family(self, name: str, description: str, kind: str) -> Any:
        import triton_python_backend_utils as pb_utils

        family = self._families.get(name)
        if family is None:
            family = pb_utils.MetricFamily(
                name=name, description=description, kind=getattr(pb_utils.MetricFamily, kind)
            )
            self._families[name] = family
        return family

    def counter(self, name: str, description: str, **labels: str) -> Metric:
        family = self._family(name, description, "COUNTER")
        return Metric(family, {**self.labels, **labels}, self._lock)

    def gauge(self, name: str, description: str, **labels: str) -> Metric:
        family = self._family(name, description, "GAUGE")
        return Metric(family, {**self.labels, **labels}, self._lock)
