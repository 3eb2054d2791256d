"""Device and dtype choice from the `device` / `*_dtype` parameters ("auto": CUDA when torch sees a GPU)."""

from __future__ import annotations

from typing import Any

from voice_triton.params import ConfigError


def pick_device(name: str) -> Any:
    import torch

    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:N): {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device: set device to auto or cpu")
    return device


def pick_dtype(name: str, device: Any) -> Any:
    """ "auto": bfloat16 on CUDA, float32 on CPU; otherwise a torch dtype name (float16, bfloat16, float32)."""
    import torch

    name = (name or "auto").strip()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype {name!r} is not a torch dtype (auto, float32, float16, bfloat16)")
    return dtype
