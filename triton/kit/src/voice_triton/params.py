"""Typed access to a model's config.pbtxt parameters, with ranges: a bad value fails the load naming the key."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """The model config is wrong; raised from initialize, so Triton reports the model as failed with this message."""


class ModelParams:
    """The string parameters of one model config, read as the types the model needs."""

    def __init__(self, model_name: str, values: Mapping[str, str], config: Mapping[str, Any] | None = None) -> None:
        self.model_name = model_name
        self.values = dict(values)
        self.config: Mapping[str, Any] = config or {}

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> ModelParams:
        """From the `args` Triton passes to initialize."""
        config = json.loads(args["model_config"])
        values = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        return cls(args["model_name"], values, config)

    @property
    def decoupled(self) -> bool:
        return bool(self.config.get("model_transaction_policy", {}).get("decoupled", False))

    def _fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.model_name}: config parameter {key} {problem}")

    def text(self, key: str, default: str = "") -> str:
        value = self.values.get(key, "").strip()
        return value or default

    def required(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise self._fail(key, "must be set")
        return value

    def number(self, key: str, default: float, low: float | None = None, high: float | None = None) -> float:
        raw = self.text(key)
        try:
            value = float(raw) if raw else float(default)
        except ValueError:
            raise self._fail(key, f"must be a number, got {raw!r}") from None
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            raise self._fail(key, f"must be between {low if low is not None else '-inf'} and "
                             f"{high if high is not None else 'inf'}, got {raw or default!r}")  # fmt: skip
        return value

    def integer(self, key: str, default: int, low: int | None = None, high: int | None = None) -> int:
        raw = self.text(key)
        try:
            value = int(raw) if raw else int(default)
        except ValueError:
            raise self._fail(key, f"must be a whole number, got {raw!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise self._fail(key, f"must be between {low} and {high}, got {value}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        raw = self.text(key).lower()
        if not raw:
            return default
        if raw not in ("true", "false", "1", "0", "yes", "no"):
            raise self._fail(key, f"must be true or false, got {raw!r}")
        return raw in ("true", "1", "yes")

    def names(self, key: str) -> list[str]:
        """A comma-separated list, blanks dropped."""
        return [item.strip() for item in self.text(key).split(",") if item.strip()]

    def interval(self, key: str) -> tuple[float, float]:
        """A "low,high" pair (keys named `<name>_range`)."""
        parts = self.names(key)
        try:
            low, high = (float(part) for part in parts)
        except ValueError:
            raise self._fail(key, f"must be 'low,high', got {self.text(key)!r}") from None
        if not low <= high:
            raise self._fail(key, f"has low {low:g} above high {high:g}")
        return low, high
