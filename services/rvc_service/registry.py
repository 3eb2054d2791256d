"""Model registry: what voices the models directory holds, which are loaded, and an LRU under a memory budget.

Layout of the models directory:
    <dir>/<name>.pth                     RVC WebUI checkpoint (the name used in requests is the stem)
    <dir>/<name>.index                   optional faiss index, or the WebUI's own name for it:
    <dir>/added_IVF<n>_Flat_nprobe_<k>_<name>_v<1|2>.index
    <dir>/hubert/  or <dir>/hubert_base.pt   shared content encoder (HF directory preferred, else fairseq file)
    <dir>/rmvpe.pt                       optional RMVPE weights (enables f0_method "rmvpe")
Built-in WORLD voices are always listed and never evicted. All methods are thread-safe.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from services.common.contract import name_problem
from services.rvc_service.engines import (
    BUILTIN_VOICES,
    ContentEncoder,
    EngineError,
    F0Estimator,
    MethodUnavailable,
    ModelLoadError,
    RvcModel,
    VoiceModel,
)
from services.rvc_service.engines.onnx_runtime import OnnxContentEncoder, OnnxSettings

__all__ = [
    "InvalidModelName",
    "MethodUnavailable",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFound",
    "ModelRegistry",
]


class ModelNotFound(EngineError):
    """No model of that name (NOT_FOUND)."""


class InvalidModelName(EngineError, ValueError):
    """The name is a path or otherwise not a plain model name (INVALID_ARGUMENT)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Mirror of voice.v1.ModelInfo; `engine` is "rvc" or "world"."""

    name: str
    engine: str
    loaded: bool
    version: str = ""
    sample_rate_hz: int = 0
    uses_f0: bool = False
    has_index: bool = False
    speaker_count: int = 0
    size_bytes: int = 0
    memory_bytes: int = 0


def inside(models_dir: Path, path: Path) -> Path | None:
    """`path` resolved (symlinks followed) when it is a regular file directly in `models_dir`, else None. The one
    acceptance rule for every file a client can name, so listing never shows what loading would refuse."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # symlink loop
        return None
    return resolved if resolved.parent == models_dir and resolved.is_file() else None


def find_index(models_dir: Path, name: str) -> Path | None:
    """`<name>.index`, else the WebUI's `added_*_<name>_v1|v2.index` (the newest if several); only files that
    resolve inside `models_dir` count."""
    plain = models_dir / f"{name}.index"
    if plain.is_file():
        return plain if inside(models_dir, plain) else None
    pattern = re.compile(rf"^added_.*_{re.escape(name)}(_v[12])?\.index$")
    hits = [p for p in models_dir.glob("added_*.index") if pattern.match(p.name) and inside(models_dir, p)]
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def _shown(name: str, limit: int = 64) -> str:
    """A client-supplied name for an error message: repr'd and capped (echoes must not overflow the trailers)."""
    return repr(name if len(name) <= limit else name[:limit] + "…")


class ModelRegistry:
    """Names -> voices. `get(name)` returns a loaded voice, loading it (and evicting least-recently-used RVC voices
    to stay within `memory_budget_bytes`) on demand."""

    def __init__(
        self,
        models_dir: str | Path,
        device: torch.device | str = "cpu",
        memory_budget_bytes: int = 4 << 30,
        onnx: OnnxSettings | None = None,
        half: bool = False,
    ) -> None:
        """`onnx`: run RVC voices' content encoder and synthesizer in ONNX Runtime (CPU) instead of torch.
        `half`: fp16 weights for the content encoder and synthesizers (torch backend; meant for CUDA)."""
        self.models_dir = Path(models_dir).resolve()
        self.onnx = onnx
        self.half = half
        self.device = torch.device(device)
        self.memory_budget_bytes = memory_budget_bytes
        self._lock = threading.RLock()
        self._loaded: OrderedDict[str, RvcModel] = OrderedDict()  # most recently used last
        self._encoder: ContentEncoder | OnnxContentEncoder | None = None
        rmvpe = self.models_dir / "rmvpe.pt"
        self.f0 = F0Estimator(self.device, rmvpe if rmvpe.is_file() else None)

    # ------------------------------------------------------------------------------------------------ names

    def _check_name(self, name: str) -> None:
        if name_problem(name, allow_spaces=True) is not None:  # also refuses separators, ".." and NUL
            shown = _shown(name) if isinstance(name, str) else type(name).__name__
            raise InvalidModelName(f"invalid model name {shown}: use a name from ListModels, not a path")

    def _checkpoint(self, name: str) -> Path:
        self._check_name(name)
        link = self.models_dir / f"{name}.pth"
        path = inside(self.models_dir, link)
        if path is None:
            if link.is_file():  # exists, but a symlink leads out of the directory
                raise InvalidModelName(f"model {_shown(name)} resolves outside the models directory")
            raise ModelNotFound(f"no model named {_shown(name)}")
        return path

    def _available(self) -> list[str]:
        """Checkpoint names LoadModel accepts: a plain name whose .pth resolves to a file inside the directory."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            p.stem
            for p in self.models_dir.glob("*.pth")
            if name_problem(p.stem, allow_spaces=True) is None and inside(self.models_dir, p)
        )

    # ---------------------------------------------------------------------------------------------- queries

    def list(self) -> list[ModelInfo]:
        """Built-in voices first, then every checkpoint in the directory (loaded or not)."""
        infos = [
            ModelInfo(v.name, "world", True, "", v.sample_rate, True, False, 1, 0, 0) for v in BUILTIN_VOICES.values()
        ]
        with self._lock:
            for name in self._available():
                infos.append(self._info(name))
        return infos

    def info(self, name: str) -> ModelInfo:
        if name in BUILTIN_VOICES:
            v = BUILTIN_VOICES[name]
            return ModelInfo(v.name, "world", True, "", v.sample_rate, True, False, 1, 0, 0)
        self._checkpoint(name)
        with self._lock:
            return self._info(name)

    def _info(self, name: str) -> ModelInfo:
        path = inside(self.models_dir, self.models_dir / f"{name}.pth")
        if path is None:  # removed (or re-pointed outside) since it was listed
            return ModelInfo(name, "rvc", False)
        index = find_index(self.models_dir, name)
        size = path.stat().st_size + (index.stat().st_size if index else 0)
        m = self._loaded.get(name)
        if m is None:
            return ModelInfo(name, "rvc", False, has_index=index is not None, size_bytes=size)
        return ModelInfo(
            name, "rvc", True, m.version, m.sample_rate, m.uses_f0, m.has_index, m.speaker_count, size, m.memory_bytes
        )

    @property
    def memory_used_bytes(self) -> int:
        with self._lock:
            return sum(m.memory_bytes for m in self._loaded.values())

    # ------------------------------------------------------------------------------------------ load/unload

    def content_encoder(self) -> ContentEncoder | OnnxContentEncoder:
        """The shared content encoder, loaded once: <dir>/hubert/ (HF) preferred over <dir>/hubert_base.pt."""
        with self._lock:
            if self._encoder is None:
                hf, fs = self.models_dir / "hubert", self.models_dir / "hubert_base.pt"
                if hf.is_dir():
                    encoder = ContentEncoder.load(hf, self.device)
                elif fs.is_file():
                    encoder = ContentEncoder.load(fs, self.device)
                else:
                    raise ModelLoadError(
                        "no content encoder: put an HF HuBERT/ContentVec in hubert/ or hubert_base.pt in the models "
                        "directory"
                    )
                if self.half:
                    encoder.to_half()
                self._encoder = encoder if self.onnx is None else OnnxContentEncoder(encoder, self.onnx)
            return self._encoder

    def get(self, name: str) -> VoiceModel:
        """A ready voice (loads on first use; refreshes its LRU position)."""
        if name in BUILTIN_VOICES:
            return BUILTIN_VOICES[name]
        return self.load(name)

    def load(self, name: str) -> VoiceModel:
        """Load (or touch) a voice. Raises InvalidModelName, ModelNotFound, ModelLoadError."""
        if name in BUILTIN_VOICES:
            return BUILTIN_VOICES[name]
        path = self._checkpoint(name)
        with self._lock:
            # Loading under the lock keeps one copy per name; loads are rare next to conversions, which never lock.
            model = self._loaded.get(name)
            if model is not None:
                self._loaded.move_to_end(name)
                return model
            # The checkpoint first: an unreadable file is the problem to report, not the missing encoder.
            checkpoint = RvcModel.read_checkpoint(path, name)
            model = RvcModel.from_checkpoint(
                checkpoint,
                name,
                self.device,
                content_encoder=self.content_encoder(),
                f0_estimator=self.f0,
                index_path=find_index(self.models_dir, name),
                onnx=self.onnx,
                half=self.half,
            )
            del checkpoint  # the fp16 WebUI weights; the model holds its own copy
            if model.memory_bytes > self.memory_budget_bytes:
                raise ModelLoadError(
                    f"model {name!r} needs {model.memory_bytes} bytes, over the budget of {self.memory_budget_bytes}"
                )
            self._loaded[name] = model
            self._evict(keep=name)
            return model

    def unload(self, name: str) -> bool:
        """Drop a loaded voice; False if it was not loaded. Built-in voices cannot be unloaded (returns False)."""
        if name in BUILTIN_VOICES:
            return False
        self._checkpoint(name)
        with self._lock:
            return self._loaded.pop(name, None) is not None

    def _evict(self, keep: str) -> None:
        # Conversions already holding an evicted model keep their reference; memory returns when they finish.
        while self.memory_used_bytes > self.memory_budget_bytes:
            victim = next((n for n in self._loaded if n != keep), None)
            if victim is None:
                break
            del self._loaded[victim]
