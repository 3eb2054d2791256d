"""Content encoders: HuBERT / ContentVec in Hugging Face format (a directory) or fairseq format (hubert_base.pt).

RVC v1 models consume layer 9 passed through the pre-training projection `final_proj` (256-dim); v2 models consume
layer 12 as is (768-dim). Features come at 50 frames/s (320-sample hop at 16 kHz).

A forward pass over a long input is one call into torch; to stop it soon after a cancel, every convolution layer of
the feature extractor and every transformer layer gets a pre-hook that checks the calling thread's `should_stop`.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cancel import ShouldStop, check_stop
from .params import ModelLoadError, public_reason

OUTPUT_LAYER = {"v1": 9, "v2": 12}
# Layers checked for a cancel before they run (HF and fairseq name them alike).
_CHECKED_LAYERS = re.compile(r"(^|\.)(conv_layers|layers)\.\d+$")


class ContentEncoder:
    """A loaded content encoder; `extract` is safe to call from several threads (inference only)."""

    def __init__(self, model: nn.Module, final_proj: nn.Module | None, kind: str, device: torch.device, path: Path):
        self.model = model
        self.final_proj = final_proj
        self.kind = kind  # "hf" or "fairseq"
        self.device = device
        self.path = path
        # The hooks are shared by all threads; each thread's extract() sets its own cancel check here. They close over
        # this thread-local only (not self), so the model and its encoder form no reference cycle.
        self._calls = calls = threading.local()

        def check_stop_hook(_module: nn.Module, _args: Any) -> None:
            check_stop(getattr(calls, "should_stop", None))

        for name, module in model.named_modules():
            if _CHECKED_LAYERS.search(name):
                module.register_forward_pre_hook(check_stop_hook)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> ContentEncoder:
        """A directory loads as Hugging Face HubertModel (offline); a file as a fairseq HuBERT checkpoint."""
        p, dev = Path(path), torch.device(device)
        try:
            if p.is_dir():
                return cls._load_hf(p, dev)
            if p.is_file():
                return cls._load_fairseq(p, dev)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"content encoder {p.name!r} does not load ({public_reason(exc)})") from exc
        raise ModelLoadError(f"no content encoder named {p.name!r}")

    @classmethod
    def _load_hf(cls, path: Path, device: torch.device) -> ContentEncoder:
        from transformers import HubertModel

        class HubertWithFinalProj(HubertModel):
            # The ContentVec/HuBERT HF ports keep the pre-training projection under `final_proj`.
            def __init__(self, config: Any) -> None:
                super().__init__(config)
                self.final_proj = nn.Linear(config.hidden_size, config.classifier_proj_size)

        model, info = HubertWithFinalProj.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
        final_proj = None if any(k.startswith("final_proj") for k in info["missing_keys"]) else model.final_proj
        return cls(model.eval().to(device), final_proj, "hf", device, path)

    @classmethod
    def _load_fairseq(cls, path: Path, device: torch.device) -> ContentEncoder:
        from fairseq import checkpoint_utils

        # torch >= 2.6 defaults to weights_only=True, which rejects fairseq's pickled config objects; this is the
        # user's own trusted model file, so load it fully and hand the state to fairseq.
        state = torch.load(str(path), map_location="cpu", weights_only=False)
        state = checkpoint_utils._upgrade_state_dict(state)  # what fairseq's own loader applies after torch.load
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)], suffix="", state=state)
        model = models[0].eval().to(device)
        return cls(model, getattr(model, "final_proj", None), "fairseq", device, path)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def extract(self, audio: torch.Tensor, version: str, should_stop: ShouldStop | None = None) -> torch.Tensor:
        """audio [1, samples] float at 16 kHz on self.device -> features [1, frames, 256 (v1) or 768 (v2)].
        Raises JobCancelled at the next layer once `should_stop()` is true."""
        self._calls.should_stop = should_stop
        try:
            return self._extract(audio, version)
        finally:
            self._calls.should_stop = None

    @torch.inference_mode()
    def _extract(self, audio: torch.Tensor, version: str) -> torch.Tensor:
        layer = OUTPUT_LAYER[version]
        if version == "v1" and self.final_proj is None:
            raise ModelLoadError("this content encoder has no final_proj, which v1 models need")
        if self.kind == "fairseq":
            mask = torch.zeros(audio.shape, dtype=torch.bool, device=audio.device)
            feats = self.model.extract_features(source=audio, padding_mask=mask, output_layer=layer)[0]
        else:
            hidden = self.model(audio, output_hidden_states=True).hidden_states
            feats = hidden[min(layer, len(hidden) - 1)]  # small test encoders have fewer than 12 layers
        return self.final_proj(feats) if version == "v1" else feats
