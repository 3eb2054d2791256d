"""config.pbtxt read and written through Triton's own model-config protobuf (text format), never by pattern matching.

The message class comes from tritonclient (`tritonclient.grpc.model_config_pb2`), which the launcher's environment
has anyway (nvidia-pytriton depends on it; the CUDA image installs it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _message_class() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelConfig


def parse_config(text: str) -> Any:
    from google.protobuf import text_format

    return text_format.Parse(text, _message_class()())


def read_config(path: Path) -> Any:
    return parse_config(path.read_text(encoding="utf-8"))


def format_config(config: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def string_parameters(config: Any) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def apply_overrides(config: Any, parameters: Mapping[str, str] | None = None, instance_count: int | None = None) -> Any:
    """`config` with string parameters set (added when it does not declare them) and every instance group's count
    set; the message is changed in place and returned."""
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    if instance_count is not None:
        for group in config.instance_group:
            group.count = instance_count
    return config
