"""What the CosyVoice2 Triton models share: the reference-clip input, the speaker a request speaks with (from a
reference or a preset speaker of spk2info.pt), and the onnxruntime providers.

Nothing here imports the Triton stub at module level (the models pass `pb_utils` in), so the rules are tested without
a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voice_triton.cosyvoice2.speech_lm import Prompt
from voice_triton.errors import RequestError
from voice_triton.params import ConfigError

SPK2INFO_FILE = "spk2info.pt"
EMBEDDING_SIZE = 192
MEL_BINS = 80
# One 25 ms fbank frame at 16 kHz: the shortest clip either front-end model can take.
MIN_CLIP_SAMPLES = 400


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for the `device` parameter: CUDA first where asked for (or "auto" and both
    onnxruntime's CUDA build and a GPU are there), CPU always as the fallback."""
    import onnxruntime

    name = (device or "auto").strip()
    available = onnxruntime.get_available_providers()
    wants_cuda = name.startswith("cuda") or name == "auto"
    if wants_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if name.startswith("cuda"):
        raise ConfigError(f"device {name!r}: this onnxruntime has no CUDA provider (it has {', '.join(available)})")
    return ["CPUExecutionProvider"]


def reference_clip(request: Any, pb_utils: Any) -> np.ndarray:
    """The `reference_wav` input cut to `reference_wav_len`, checked: RequestError for what the caller must fix."""
    wav = pb_utils.get_input_tensor_by_name(request, "reference_wav").as_numpy().reshape(-1)
    length_tensor = pb_utils.get_input_tensor_by_name(request, "reference_wav_len")
    length = wav.size if length_tensor is None else int(length_tensor.as_numpy().reshape(-1)[0])
    return checked_clip(wav, length)


def checked_clip(wav: np.ndarray, length: int) -> np.ndarray:
    if not 0 < length <= wav.size:
        raise RequestError(f"reference_wav_len {length} must be between 1 and {wav.size}")
    clip = np.ascontiguousarray(wav[:length], dtype=np.float32)
    if clip.size < MIN_CLIP_SAMPLES:
        raise RequestError(f"reference_wav holds {clip.size} samples; at least {MIN_CLIP_SAMPLES} (25 ms at 16 kHz)")
    if not np.isfinite(clip).all():
        raise RequestError("reference_wav holds NaN or infinite samples")
    return clip


@dataclass
class Speaker:
    """Who speaks: the LLM's prompt and the flow's (prompt speech tokens, their mel [T, 80], the x-vector)."""

    prompt: Prompt = field(default_factory=Prompt)
    flow_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    flow_feat: np.ndarray = field(default_factory=lambda: np.zeros((0, MEL_BINS), np.float32))
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING_SIZE, np.float32))

    def for_instruct(self, instruction_ids: list[int]) -> Speaker:
        """CosyVoice2's instruct form: the instruction (ending in <|endofprompt|>) is the LLM's prompt text and the LLM
        gets no prompt speech; the flow keeps the speaker's prompt."""
        return Speaker(Prompt(list(instruction_ids), []), self.flow_tokens, self.flow_feat, self.embedding)

    def cross_lingual(self) -> Speaker:
        """No transcript: the LLM gets no prompt (it would read the prompt's speech as the target language's)."""
        return Speaker(Prompt(), self.flow_tokens, self.flow_feat, self.embedding)


def _array(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy() if dtype == np.float32 else value.detach().cpu().numpy()
    return np.asarray(value).astype(dtype)


def speaker_from_spk2info(name: str, entry: Any) -> Speaker:
    """A preset speaker from an spk2info.pt entry. Two published forms: an SFT speaker (`embedding` only) and a
    saved zero-shot speaker (`prompt_text`, `llm_prompt_speech_token`, `flow_prompt_speech_token`,
    `prompt_speech_feat`, `llm_embedding`, `flow_embedding`)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"spk2info.pt: speaker {name!r} is a {type(entry).__name__}, not a dict of tensors")
    embedding = entry.get("flow_embedding", entry.get("embedding"))
    if embedding is None:
        raise ConfigError(f"spk2info.pt: speaker {name!r} has no embedding (keys: {', '.join(sorted(entry))})")
    vector = _array(embedding, np.float32).reshape(-1)
    if vector.size != EMBEDDING_SIZE:
        raise ConfigError(f"spk2info.pt: speaker {name!r} has a {vector.size}-d embedding; {EMBEDDING_SIZE} expected")
    speaker = Speaker(embedding=vector)
    if "prompt_speech_feat" in entry and "flow_prompt_speech_token" in entry:
        speaker.flow_tokens = _array(entry["flow_prompt_speech_token"], np.int32).reshape(-1)
        speaker.flow_feat = _array(entry["prompt_speech_feat"], np.float32).reshape(-1, MEL_BINS)
    if "prompt_text" in entry and "llm_prompt_speech_token" in entry:
        speaker.prompt = Prompt(
            _array(entry["prompt_text"], np.int64).reshape(-1).tolist(),
            _array(entry["llm_prompt_speech_token"], np.int64).reshape(-1).tolist(),
        )
    return speaker


def load_speakers(directory: Path, names: list[str]) -> dict[str, Speaker]:
    """The preset speakers the `speakers` parameter lists, from the checkpoint's spk2info.pt (every one must be in
    it: a misspelt name fails the load, listing the file's speakers)."""
    if not names:
        return {}
    path = Path(directory) / SPK2INFO_FILE
    if not path.is_file():
        raise ConfigError(f"parameter speakers lists {', '.join(names)} but {path} does not exist")
    import torch

    table = torch.load(path, map_location="cpu", weights_only=True)
    missing = [name for name in names if name not in table]
    if missing:
        raise ConfigError(
            f"{path} has no speaker {', '.join(missing)}; it has: {', '.join(sorted(map(str, table))) or 'none'}"
        )
    return {name: speaker_from_spk2info(name, table[name]) for name in names}


__all__ = [
    "MIN_CLIP_SAMPLES",
    "Speaker",
    "checked_clip",
    "load_speakers",
    "onnx_providers",
    "reference_clip",
    "speaker_from_spk2info",
]
