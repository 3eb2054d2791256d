"""Command-line flags that also read environment variables, so one definition serves a shell, compose and k8s."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false/1/0), got {text!r}")


class EnvArgumentParser(argparse.ArgumentParser):
    """ArgumentParser whose options default to an environment variable named PREFIX_OPTION.

    Precedence: command line, then environment, then the coded default. `--help` shows the variable and the default
    of every option.
    """

    def __init__(self, *args: Any, env_prefix: str, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.env_prefix = env_prefix.rstrip("_").upper()
        self.env_names: dict[str, str] = {}

    def env_name(self, flag: str) -> str:
        return f"{self.env_prefix}_{flag.lstrip('-').upper().replace('-', '_')}"

    def add_option(
        self,
        flag: str,
        *,
        type: Callable[[str], Any] = str,
        default: Any = None,
        help: str,
        env: str | None = None,
        choices: Sequence[Any] | None = None,
        metavar: str | None = None,
    ) -> None:
        env_name = env or self.env_name(flag)
        raw = os.environ.get(env_name)
        if raw is not None:
            try:
                default = type(raw)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                self.error(f"environment variable {env_name}={raw!r} is invalid for {flag}: {exc}")
        dest = flag.lstrip("-").replace("-", "_")
        self.env_names[dest] = env_name
        self.add_argument(
            flag,
            type=type,
            default=default,
            choices=choices,
            metavar=metavar,
            help=f"{help} [env {env_name}]",
        )

    def add_list_option(self, flag: str, *, help: str, env: str | None = None, metavar: str | None = None) -> None:
        """A repeatable option collecting strings; its variable holds the same values separated by commas. Values
        given on the command line come after the variable's."""
        env_name = env or self.env_name(flag)
        dest = flag.lstrip("-").replace("-", "_")
        self.env_names[dest] = env_name
        initial = [item.strip() for item in os.environ.get(env_name, "").split(",") if item.strip()]
        self.add_argument(
            flag, action="append", default=initial, metavar=metavar, help=f"{help} (repeatable) [env {env_name}]"
        )
