"""CosyVoice2 engine code: LLM, flow matching and HiFT vocoder with the published parameter names.

This package's __init__ imports nothing heavy (no torch), like the registry and the catalog, so both may read
`LAYOUT`; the engines are in the submodules (`llm`, `flow`, `hift`).
"""

from __future__ import annotations

from voice_triton.registry import Layout

# The published CosyVoice2-0.5B checkpoint directory (FunAudioLLM/CosyVoice2-0.5B) as the backend loads it; the
# registry's `cosyvoice2` entry takes this once its Triton models exist. spk2info.pt (preset speakers) is optional.
LAYOUT = Layout(
    (
        "cosyvoice2.yaml",
        "llm.pt",
        "flow.pt",
        "hift.pt",
        "campplus.onnx",
        "speech_tokenizer_v2.onnx",
        "CosyVoice-BlankEN/config.json",
        "CosyVoice-BlankEN/model.safetensors",
        # The Qwen2 tokenizer CosyVoice's QwenTokenizer loads: published as the slow files (vocab.json, merges.txt);
        # a fast tokenizer.json (what the tiny writers produce) serves as well.
        "CosyVoice-BlankEN/tokenizer_config.json",
        "CosyVoice-BlankEN/vocab.json|CosyVoice-BlankEN/tokenizer.json",
        "CosyVoice-BlankEN/merges.txt|CosyVoice-BlankEN/tokenizer.json",
    )
)
