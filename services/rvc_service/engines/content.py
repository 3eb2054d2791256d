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


class HubertWithFinalProj:
    """Built lazily (transformers is heavy): HubertModel plus the pre-training projection `final_proj`."""

    _cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._cls is None:
            from transformers import HubertModel

            class _HubertWithFinalProj(HubertModel):  # type: ignore[no-untyped-call]  # transformers: unannotated __init_subclass__
                # The ContentVec/HuBERT HF ports keep the pre-training projection under `final_proj`.
                def __init__(self, config: Any) -> None:
                    super().__init__(config)
                    self.final_proj = nn.Linear(config.hidden_size, config.classifier_proj_size)

            cls._cls = _HubertWithFinalProj
        return cls._cls


# fairseq HuBERT parameter names -> transformers HubertModel names (the architectures match layer for layer).
_FAIRSEQ_TO_HF = [
    (re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.0\."), r"feature_extractor.conv_layers.\1.conv."),
    (re.compile(r"^feature_extractor\.conv_layers\.0\.2\."), "feature_extractor.conv_layers.0.layer_norm."),
    (re.compile(r"^post_extract_proj\."), "feature_projection.projection."),
    (re.compile(r"^layer_norm\."), "feature_projection.layer_norm."),
    (re.compile(r"^encoder\.pos_conv\.0\.weight_g$"), "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (re.compile(r"^encoder\.pos_conv\.0\.weight_v$"), "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (re.compile(r"^encoder\.pos_conv\.0\.bias$"), "encoder.pos_conv_embed.conv.bias"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.(\w)_proj\."), r"encoder.layers.\1.attention.\2_proj."),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\."), r"encoder.layers.\1.attention.out_proj."),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\."), r"encoder.layers.\1.layer_norm."),
    (re.compile(r"^encoder\.layers\.(\d+)\.fc1\."), r"encoder.layers.\1.feed_forward.intermediate_dense."),
    (re.compile(r"^encoder\.layers\.(\d+)\.fc2\."), r"encoder.layers.\1.feed_forward.output_dense."),
    (re.compile(r"^mask_emb$"), "masked_spec_embed"),
]


def fairseq_to_hf(model: Any) -> nn.Module:
    """The same HuBERT as a transformers model (for export: fairseq's encoder pads to an even length with Python
    arithmetic on shapes, which a traced graph cannot follow). Only the default (group-norm, post-LN) layout that
    hubert_base.pt and ContentVec use is converted; others raise ValueError. `model` is fairseq's HubertModel
    (fairseq is untyped)."""
    from transformers import HubertConfig

    convs = [layer[0] for layer in model.feature_extractor.conv_layers]
    first = model.feature_extractor.conv_layers[0]
    if len(first) != 4 or not isinstance(first[2], nn.GroupNorm) or model.encoder.layer_norm_first:
        raise ValueError("only the default HuBERT layout (group-norm feature extractor, post-LN encoder) converts")
    pos_conv = model.encoder.pos_conv[0]
    layer0 = model.encoder.layers[0]
    final_proj = getattr(model, "final_proj", None)
    config = HubertConfig(  # type: ignore[no-untyped-call]  # transformers: HubertConfig.__init__ is unannotated
        hidden_size=model.post_extract_proj.out_features,
        num_hidden_layers=len(model.encoder.layers),
        num_attention_heads=layer0.self_attn.num_heads,
        intermediate_size=layer0.fc1.out_features,
        hidden_act="gelu",
        conv_dim=tuple(c.out_channels for c in convs),
        conv_kernel=tuple(c.kernel_size[0] for c in convs),
        conv_stride=tuple(c.stride[0] for c in convs),
        conv_bias=convs[0].bias is not None,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=pos_conv.kernel_size[0],
        num_conv_pos_embedding_groups=pos_conv.groups,
        classifier_proj_size=final_proj.out_features if final_proj is not None else 256,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
    )
    hf: nn.Module = HubertWithFinalProj.get()(config)
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("label_embs") or (key.startswith("final_proj") and final_proj is None):
            continue
        for pattern, replacement in _FAIRSEQ_TO_HF:
            if pattern.search(key):
                key = pattern.sub(replacement, key)
                break
        state[key] = value
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (final_proj is None and k.startswith("final_proj"))]
    if missing or unexpected:
        raise ValueError(f"fairseq HuBERT does not map: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return hf.eval()


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
        model, info = HubertWithFinalProj.get().from_pretrained(
            str(path), local_files_only=True, output_loading_info=True
        )
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

    def to_half(self) -> ContentEncoder:
        """fp16 weights (what the WebUI's is_half does on CUDA); inputs are cast to match in extract."""
        self.model.half()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

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
        audio = audio.to(self.dtype)
        final_proj = None
        if version == "v1":
            if self.final_proj is None:
                raise ModelLoadError("this content encoder has no final_proj, which v1 models need")
            final_proj = self.final_proj
        feats: torch.Tensor
        if self.kind == "fairseq":
            fairseq_model: Any = self.model  # fairseq's HubertModel (untyped)
            mask = torch.zeros(audio.shape, dtype=torch.bool, device=audio.device)
            feats = fairseq_model.extract_features(source=audio, padding_mask=mask, output_layer=layer)[0]
        else:
            hidden = self.model(audio, output_hidden_states=True).hidden_states
            feats = hidden[min(layer, len(hidden) - 1)]  # small test encoders have fewer than 12 layers
        if final_proj is None:
            return feats
        projected: torch.Tensor = final_proj(feats)
        return projected
