"""Small random-weight model files in the real formats RVC users have: WebUI `.pth` synthesizer checkpoints,
Hugging Face HuBERT directories, fairseq `hubert_base.pt`, RVC-named faiss indexes and `rmvpe.pt` state dicts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from services.rvc_service.engines.synthesizer import SynthConfig, Synthesizer

# Upsampling per output rate: the product is sr / 100 (10 ms F0 frames), as in the WebUI's configs.
UPSAMPLE = {
    32000: ([10, 8, 2, 2], [20, 16, 4, 4]),
    40000: ([10, 10, 2, 2], [16, 16, 4, 4]),
    48000: ([12, 10, 2, 2], [24, 20, 4, 4]),
}

# Layers the WebUI wraps in torch.nn.utils.weight_norm (saved as weight_g / weight_v).
_WEIGHT_NORMED = re.compile(
    r"^(dec\.ups\.\d+|dec\.resblocks\.\d+\.convs[12]?\.\d+"
    r"|flow\.flows\.\d+\.enc\.(in_layers\.\d+|res_skip_layers\.\d+|cond_layer))\.weight$"
)


def tiny_config(sr: int = 40000, speakers: int = 2, resblock: str = "1") -> list[object]:
    ups, kernels = UPSAMPLE[sr]
    dil = [[1, 3, 5]] * 2 if resblock == "1" else [[1, 2]] * 2
    # spec, segment, inter, hidden, filter, heads, layers, kernel, dropout, resblock, rb kernels, rb dilations,
    # upsample rates, upsample initial channels, upsample kernels, speakers, gin channels, sr
    return [1025, 32, 8, 16, 32, 2, 2, 3, 0, resblock, [3, 5], dil, ups, 32, kernels, speakers, 8, sr]


def random_synthesizer(version: str, use_f0: bool, sr: int, seed: int = 0, speakers: int = 2) -> Synthesizer:
    torch.manual_seed(seed)
    net = Synthesizer(SynthConfig.from_list(tiny_config(sr, speakers)), 256 if version == "v1" else 768, use_f0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            # Random everywhere (the zero-initialised relative embeddings and flow outputs too), scaled so the
            # signal neither dies nor saturates through the stack.
            if "gamma" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() >= 2:
                fan_in = p[0].numel() if "ups" not in name else p.shape[0] * p.shape[2] // max(p.shape[1], 1)
                p.copy_(torch.randn_like(p) / max(fan_in, 1) ** 0.5)
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return net.eval()


def webui_state_dict(state: dict[str, torch.Tensor], half: bool = True, new_naming: bool = False) -> dict:
    """Plain weights -> what the WebUI saves: weight-norm pairs (g = per-slice norm, v = direction), fp16."""
    out: dict[str, torch.Tensor] = {}
    for key, w in state.items():
        if _WEIGHT_NORMED.match(key):
            prefix = key[: -len(".weight")]
            g = w.norm(dim=tuple(range(1, w.dim())), keepdim=True)
            if new_naming:
                out[prefix + ".parametrizations.weight.original0"] = g
                out[prefix + ".parametrizations.weight.original1"] = w.clone()
            else:
                out[prefix + ".weight_g"] = g
                out[prefix + ".weight_v"] = w.clone()
        else:
            out[key] = w.clone()
    return {k: (v.half() if half and v.is_floating_point() else v) for k, v in out.items()}


def write_checkpoint(
    path: Path, version: str = "v2", use_f0: bool = True, sr: int = 40000, seed: int = 0, new_naming: bool = False
) -> Path:
    net = random_synthesizer(version, use_f0, sr, seed)
    ckpt = {
        "weight": webui_state_dict(net.state_dict(), new_naming=new_naming),
        "config": tiny_config(sr),
        "info": "tiny random test model",
        "sr": f"{sr // 1000}k",
        "f0": int(use_f0),
        "version": version,
    }
    torch.save(ckpt, path)
    return path


def write_hf_hubert(directory: Path, seed: int = 0) -> Path:
    """A 2-layer HuBERT with the real 768-dim hidden size and a 256-dim final_proj, saved with save_pretrained."""
    from torch import nn
    from transformers import HubertConfig, HubertModel

    class HubertWithFinalProj(HubertModel):
        def __init__(self, config: HubertConfig) -> None:
            super().__init__(config)
            self.final_proj = nn.Linear(config.hidden_size, config.classifier_proj_size)

    torch.manual_seed(seed)
    cfg = HubertConfig(
        hidden_size=768,
        num_hidden_layers=2,
        num_attention_heads=12,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=16,
        classifier_proj_size=256,
    )
    HubertWithFinalProj(cfg).eval().save_pretrained(str(directory))
    return directory


def write_fairseq_hubert(path: Path, seed: int = 0) -> Path:
    """A 2-layer fairseq HuBERT checkpoint with config, weights and the task's label dictionary, as hubert_base.pt."""
    from fairseq.data import Dictionary
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: F401  (import check)
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    model_cfg = HubertConfig(
        encoder_layers=2,
        encoder_embed_dim=768,
        encoder_ffn_embed_dim=64,
        encoder_attention_heads=12,
        conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
        conv_pos=16,
        conv_pos_groups=16,
        final_dim=256,
        label_rate=50.0,  # the dataclass default is an interpolation of the task's value
    )
    task_cfg = HubertPretrainingConfig(data=str(path.parent), labels=["km"], label_rate=50.0, sample_rate=16000)
    dictionary = Dictionary()
    for i in range(20):
        dictionary.add_symbol(str(i))
    model = HubertModel(model_cfg, task_cfg, [dictionary])
    cfg = OmegaConf.create(
        {
            "common": {},
            "task": {
                **OmegaConf.to_container(OmegaConf.structured(task_cfg), enum_to_str=True),
                "_name": "hubert_pretraining",
            },
            "model": {**OmegaConf.to_container(OmegaConf.structured(model_cfg), enum_to_str=True), "_name": "hubert"},
        }
    )
    state = {
        "args": None,
        "cfg": cfg,
        "model": model.state_dict(),
        "task_state": {"dictionaries": [dictionary]},
        "optimizer_history": [
            {
                "criterion_name": "HubertCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {},
                "num_updates": 0,
            }
        ],
        "extra_state": {},
        "last_optimizer_state": None,
    }
    torch.save(state, path)
    return path


def write_index(path: Path, dim: int, n: int = 300, seed: int = 0, vectors: np.ndarray | None = None) -> Path:
    """An IVF-Flat faiss index the way the WebUI trains one (nprobe 1), written with faiss.write_index."""
    import faiss

    rng = np.random.default_rng(seed)
    x = vectors if vectors is not None else rng.standard_normal((n, dim)).astype(np.float32)
    n_ivf = max(1, min(int(16 * np.sqrt(len(x))), len(x) // 39))
    index = faiss.index_factory(dim, f"IVF{n_ivf},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(x)
    index.add(x)
    faiss.write_index(index, str(path))
    return path


def harmonic_tone(f0: float = 220.0, sr: int = 16000, seconds: float = 1.0, harmonics: int = 6) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = sum((0.5 / k) * np.sin(2 * np.pi * f0 * k * t) for k in range(1, harmonics + 1))
    return (0.5 * x / np.abs(x).max()).astype(np.float32)
